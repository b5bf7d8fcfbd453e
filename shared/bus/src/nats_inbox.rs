//! Reply inboxes of the JetStream bus, multiplexed on one core-NATS subscription.
//!
//! A bus subscribes once to `<inbox>.*` (an inbox the connection makes, `_FNMESH.gw.<nuid>` on
//! gateways: see `subjects::inbox_prefix`; made on the first [`Inboxes::open`]) and hands out
//! `<inbox>.<n>` per sync invocation, routing each reply by its last token to the
//! invocation's channel. So a sync invocation costs no subscribe, flush and unsubscribe of its
//! own (each a message to the server, the flush a round trip), as async-nats' own `request`
//! does. A route is removed when its [`Inbox`] guard drops; a reply for a route that is gone
//! (its caller stopped waiting) is dropped, as a reply to a closed subscription would be.
//!
//! A reply is routed only when it is signed by the node that holds the delivery
//! (`jetstream::reports`); any other is dropped and counted, so a party that learnt an inbox
//! cannot answer a sync call in a node's place.
//!
//! A reply that names a reply subject asks for a receipt once its outcome is stored
//! (`nats_receipts`): the check gives the receipt, owed until [`crate::Bus::confirm_stored`]
//! pays it.
//!
//! If the subscription ends (the client closed for good), the next [`Inboxes::open`] makes a new
//! one under a new `nuid`; the inboxes of the old one see their channel close.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures::StreamExt;
use tokio::sync::mpsc;

use super::{BusError, Inbox, ReplyTo};
use crate::jetstream::reports::NodeCheck;
use crate::nats_receipts::Receipts;
use fnmesh_core::subjects;
use fnmesh_core::InvocationOutcome;

/// Routes of one multiplexed subscription (`<prefix>.*`), each `<prefix>.<n>` to its `T`:
/// the reply inboxes here, the receipt inboxes of `nats_receipts`.
pub(crate) struct Mux<T> {
    /// The inbox (`<connection prefix>.<nuid>`): every inbox subject is this plus `.<n>`.
    prefix: String,
    next: AtomicU64,
    routes: Mutex<HashMap<u64, T>>,
    /// False once the subscription has ended.
    alive: AtomicBool,
}

impl<T> Mux<T> {
    pub(crate) fn routes(&self) -> MutexGuard<'_, HashMap<u64, T>> {
        self.routes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A token no route of this subscription had, and its subject.
    pub(crate) fn next_inbox(&self) -> (u64, String) {
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        (token, subjects::reply_inbox(&self.prefix, token))
    }

    /// The token of `subject` if it is one of this subscription's.
    fn token_in(&self, subject: &str) -> Option<u64> {
        subject
            .strip_prefix(self.prefix.as_str())
            .and_then(|rest| rest.strip_prefix('.'))
            .and_then(|t| t.parse().ok())
    }
}

/// Removes its route when dropped (held by what waits on it: an [`Inbox`], a `Receipt`).
pub(crate) struct Route<T> {
    mux: Arc<Mux<T>>,
    token: u64,
}

impl<T> Route<T> {
    /// Routes `token` (from [`Mux::next_inbox`]) to `value` until the guard drops.
    pub(crate) fn insert(mux: Arc<Mux<T>>, token: u64, value: T) -> Self {
        mux.routes().insert(token, value);
        Self { mux, token }
    }
}

impl<T> Drop for Route<T> {
    fn drop(&mut self) {
        self.mux.routes().remove(&self.token);
    }
}

/// The live multiplexed subscription of one kind, made again when it has ended.
pub(crate) struct MuxSlot<T> {
    current: tokio::sync::Mutex<Option<Arc<Mux<T>>>>,
}

impl<T> Default for MuxSlot<T> {
    fn default() -> Self {
        Self {
            current: tokio::sync::Mutex::new(None),
        }
    }
}

impl<T: Send + 'static> MuxSlot<T> {
    /// The live subscription, if there is one.
    async fn current(&self) -> Option<Arc<Mux<T>>> {
        self.current.lock().await.clone()
    }

    /// The live subscription, made (and confirmed by a flush, so nothing sent to its inboxes
    /// can precede it) when there is none: `serve` reads its messages in a task of their own;
    /// when it returns (the subscription ended), the routes are dropped, so their waiters see
    /// nothing more come. `what` names the inboxes in errors.
    pub(crate) async fn get<F>(
        &self,
        client: &async_nats::Client,
        what: &str,
        serve: impl FnOnce(Arc<Mux<T>>, async_nats::Subscriber) -> F,
    ) -> Result<Arc<Mux<T>>, BusError>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let mut current = self.current.lock().await;
        if let Some(mux) = current.as_ref() {
            if mux.alive.load(Ordering::Acquire) {
                return Ok(mux.clone());
            }
        }
        let failed = |e: &dyn std::fmt::Display| {
            BusError::Backend(format!("subscribing the {what} inboxes: {e}"))
        };
        let prefix = client.new_inbox();
        let subscriber = client
            .subscribe(subjects::reply_inboxes_all(&prefix))
            .await
            .map_err(|e| failed(&e))?;
        client.flush().await.map_err(|e| failed(&e))?;
        let mux = Arc::new(Mux {
            prefix,
            next: AtomicU64::new(0),
            routes: Mutex::default(),
            alive: true.into(),
        });
        let served = serve(mux.clone(), subscriber);
        let routed = mux.clone();
        tokio::spawn(async move {
            served.await;
            routed.alive.store(false, Ordering::Release);
            routed.routes().clear();
        });
        *current = Some(mux.clone());
        Ok(mux)
    }
}

/// One inbox's channel, and what is held for as long as it is waited on (a direct call's
/// place in its function's count: see `jetstream::direct`).
struct Waiter {
    sender: mpsc::Sender<InvocationOutcome>,
    held: Option<Box<dyn Send>>,
}

/// The multiplexed inboxes of one bus.
#[derive(Default)]
pub(crate) struct Inboxes {
    slot: MuxSlot<Waiter>,
}

impl Inboxes {
    /// A fresh inbox on `client`.
    pub(crate) async fn open(
        &self,
        client: &async_nats::Client,
        check: &Arc<NodeCheck>,
        receipts: &Arc<Receipts>,
    ) -> Result<Inbox, BusError> {
        let check = check.clone();
        let receipts = receipts.clone();
        let mux = self
            .slot
            .get(client, "reply", |mux, subscriber| {
                serve_replies(mux, subscriber, check, receipts)
            })
            .await?;
        let (token, subject) = mux.next_inbox();
        let (sender, receiver) = mpsc::channel(1);
        let route = Route::insert(mux, token, Waiter { sender, held: None });
        Ok(Inbox {
            reply_to: ReplyTo(subject),
            receiver,
            guard: Some(Box::new(route)),
        })
    }

    /// Keeps `held` until the inbox `reply_to` (one of this bus's, still waited on) drops;
    /// dropped at once if there is no such inbox.
    pub(crate) async fn hold(&self, reply_to: &ReplyTo, held: Box<dyn Send>) {
        let Some(mux) = self.slot.current().await else {
            return;
        };
        let Some(token) = mux.token_in(&reply_to.0) else {
            return;
        };
        let mut routes = mux.routes();
        if let Some(waiter) = routes.get_mut(&token) {
            waiter.held = Some(held);
        }
    }
}

/// Routes the replies of `subscriber` to their inboxes of `mux` until it ends: only replies
/// `check` authenticates as from the node holding the delivery; the receipt a reply asks for
/// is owed in `receipts`.
async fn serve_replies(
    mux: Arc<Mux<Waiter>>,
    mut subscriber: async_nats::Subscriber,
    check: Arc<NodeCheck>,
    receipts: Arc<Receipts>,
) {
    while let Some(message) = subscriber.next().await {
        let token = token_of(message.subject.as_str());
        let Some(sender) = token.and_then(|t| mux.routes().get(&t).map(|w| w.sender.clone()))
        else {
            tracing::debug!(nats.subject = %message.subject, "reply for an inbox nobody waits on; dropped");
            continue;
        };
        match serde_json::from_slice::<InvocationOutcome>(&message.payload) {
            Ok(outcome) => {
                let result = &outcome.result;
                let node_id = result.node_id.as_deref().unwrap_or("");
                // A receipt only to the replying node's own inboxes.
                let receipt_inbox = message
                    .reply
                    .as_ref()
                    .map(|r| r.as_str())
                    .filter(|r| subjects::is_receipt_inbox(r, node_id));
                let checked = check
                    .check_reply(
                        message.headers.as_ref(),
                        message.subject.as_str(),
                        &message.payload,
                        result.id,
                        node_id,
                        result.attempt,
                        receipt_inbox,
                    )
                    .await;
                let receipt = match checked {
                    Ok(receipt) => receipt,
                    Err(reason) => {
                        tracing::warn!(
                            invocation.id = %result.id,
                            node.id = node_id,
                            reason = %reason,
                            "sync reply refused: dropped"
                        );
                        continue;
                    }
                };
                let id = result.id;
                if let (Some(receipt), Some(inbox)) = (receipt, receipt_inbox) {
                    receipts.owe(id, inbox.to_owned(), receipt);
                }
                if sender.try_send(outcome).is_err() {
                    receipts.forgive(id);
                    tracing::debug!("reply dropped: inbox full");
                }
            }
            Err(e) => tracing::warn!(error = %e, "undecodable reply ignored"),
        }
    }
    // The slot drops the routes next: their waiters see their channel close.
    tracing::warn!("the reply inbox subscription ended");
}

/// The token of `<inbox>.<n>`, one subject of a multiplexed subscription.
pub(crate) fn token_of(subject: &str) -> Option<u64> {
    subject.rsplit('.').next().and_then(|t| t.parse().ok())
}
