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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use tokio::sync::mpsc;

use super::{BusError, Inbox, ReplyTo};
use crate::jetstream::reports::NodeCheck;
use crate::nats_receipts::Receipts;
use fnmesh_core::subjects;
use fnmesh_core::InvocationOutcome;

/// Routes of one inbox subscription.
struct Mux {
    /// The inbox (`<connection prefix>.<nuid>`): every inbox subject is this plus `.<n>`.
    prefix: String,
    next: AtomicU64,
    routes: Mutex<HashMap<u64, Waiter>>,
    /// False once the subscription has ended.
    alive: std::sync::atomic::AtomicBool,
}

impl Mux {
    fn routes(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Waiter>> {
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
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
    current: tokio::sync::Mutex<Option<Arc<Mux>>>,
}

/// Removes its route when the [`Inbox`] drops.
struct Route {
    mux: Arc<Mux>,
    token: u64,
}

impl Drop for Route {
    fn drop(&mut self) {
        self.mux.routes().remove(&self.token);
    }
}

impl Inboxes {
    /// A fresh inbox on `client`.
    pub(crate) async fn open(
        &self,
        client: &async_nats::Client,
        check: &Arc<NodeCheck>,
        receipts: &Arc<Receipts>,
    ) -> Result<Inbox, BusError> {
        let mux = self.mux(client, check, receipts).await?;
        let token = mux.next.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = mpsc::channel(1);
        mux.routes().insert(token, Waiter { sender, held: None });
        Ok(Inbox {
            reply_to: ReplyTo(subjects::reply_inbox(&mux.prefix, token)),
            receiver,
            guard: Some(Box::new(Route { mux, token })),
        })
    }

    /// Keeps `held` until the inbox `reply_to` (one of this bus's, still waited on) drops;
    /// dropped at once if there is no such inbox.
    pub(crate) async fn hold(&self, reply_to: &ReplyTo, held: Box<dyn Send>) {
        let Some(mux) = self.current.lock().await.clone() else {
            return;
        };
        let token = reply_to
            .0
            .strip_prefix(mux.prefix.as_str())
            .and_then(|rest| rest.strip_prefix('.'))
            .and_then(|t| t.parse::<u64>().ok());
        let Some(token) = token else { return };
        let mut routes = mux.routes();
        if let Some(waiter) = routes.get_mut(&token) {
            waiter.held = Some(held);
        }
    }

    /// The live subscription, made (and confirmed by a flush, so no reply can precede it) when
    /// there is none.
    async fn mux(
        &self,
        client: &async_nats::Client,
        check: &Arc<NodeCheck>,
        receipts: &Arc<Receipts>,
    ) -> Result<Arc<Mux>, BusError> {
        let mut current = self.current.lock().await;
        if let Some(mux) = current.as_ref() {
            if mux.alive.load(Ordering::Acquire) {
                return Ok(mux.clone());
            }
        }
        let (prefix, mut subscriber) = subscribe_multiplexed(client, "reply").await?;
        let mux = Arc::new(Mux {
            prefix,
            next: AtomicU64::new(0),
            routes: Mutex::default(),
            alive: true.into(),
        });
        let routed = mux.clone();
        let check = check.clone();
        let receipts = receipts.clone();
        tokio::spawn(async move {
            while let Some(message) = subscriber.next().await {
                let token = token_of(message.subject.as_str());
                let Some(sender) =
                    token.and_then(|t| routed.routes().get(&t).map(|w| w.sender.clone()))
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
            routed.alive.store(false, Ordering::Release);
            // Waiters see their channel close.
            routed.routes().clear();
            tracing::warn!("the reply inbox subscription ended");
        });
        *current = Some(mux.clone());
        Ok(mux)
    }
}

/// Subscribes `<inbox>.*` for a fresh inbox of `client`, confirmed by a flush (so nothing sent
/// to one of its subjects can precede it): the inbox and the subscription. `what` names the
/// inboxes in errors.
pub(crate) async fn subscribe_multiplexed(
    client: &async_nats::Client,
    what: &str,
) -> Result<(String, async_nats::Subscriber), BusError> {
    let failed = |e: &dyn std::fmt::Display| {
        BusError::Backend(format!("subscribing the {what} inboxes: {e}"))
    };
    let prefix = client.new_inbox();
    let subscriber = client
        .subscribe(subjects::reply_inboxes_all(&prefix))
        .await
        .map_err(|e| failed(&e))?;
    client.flush().await.map_err(|e| failed(&e))?;
    Ok((prefix, subscriber))
}

/// The token of `<inbox>.<n>`, one subject of a multiplexed subscription.
pub(crate) fn token_of(subject: &str) -> Option<u64> {
    subject.rsplit('.').next().and_then(|t| t.parse().ok())
}
