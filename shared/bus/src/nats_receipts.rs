//! Receipts for sync replies on the JetStream bus ([`crate::Receipt`]), both sides.
//!
//! A node's sync reply names a reply subject: `<inbox>.<n>`, one of the node's own inboxes,
//! multiplexed on one subscription as the gateways' reply inboxes are (`nats_inbox`). The
//! gateway that checked the reply owes a receipt there: once its outcome is stored it
//! publishes an empty message whose [`RECEIPT_HEADER`] is an HMAC under the report key the
//! reply was authenticated with, over that subject, the invocation, the node and the attempt
//! ([`fnmesh_core::claims::ReportKey::receipt`]). The node accepts only that value, so nobody
//! but the gateway can tell it a result is stored. A node with a receipt publishes no
//! `Finished` event for that outcome; one without (late, lost, the store down, an older
//! gateway) publishes it as before.
//!
//! A gateway's permissions let it answer each message it received once (`allow_responses`),
//! which covers the receipt; it sends one only to an inbox of the node the reply names
//! ([`fnmesh_core::subjects::is_receipt_inbox`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::oneshot;

use crate::nats_inbox::{token_of, Mux, MuxSlot, Route};
use crate::{BusError, Receipt};
use fnmesh_core::claims::{receipt_matches, RECEIPT_HEADER};
use fnmesh_core::signing::{Rejection, Rejections};
use fnmesh_core::InvocationId;

/// Receipts owed past which those older than [`OWED_FOR`] are dropped.
const OWED_PRUNED_AT: usize = 4096;
/// How long a gateway keeps a receipt it owes (a node waits for one much less).
const OWED_FOR: Duration = Duration::from_secs(30);

/// One receipt a node waits for.
struct Expected {
    sender: oneshot::Sender<()>,
    receipt: [u8; 32],
}

/// A receipt a gateway owes.
struct Owed {
    inbox: String,
    receipt: [u8; 32],
    since: Instant,
}

/// Both sides of one bus's receipts.
#[derive(Default)]
pub(crate) struct Receipts {
    slot: MuxSlot<Expected>,
    owed: Mutex<HashMap<InvocationId, Owed>>,
}

impl Receipts {
    /// The node side: a fresh receipt inbox, and the receipt awaited on it, which
    /// `expected(inbox)` gives (`None`: no receipt can be asked for, and none is).
    pub(crate) async fn expect(
        &self,
        client: &async_nats::Client,
        rejections: &Rejections,
        expected: impl FnOnce(&str) -> Option<[u8; 32]>,
    ) -> Result<Option<(String, Receipt)>, BusError> {
        let rejections = rejections.clone();
        let mux = self
            .slot
            .get(client, "receipt", |mux, subscriber| {
                serve_receipts(mux, subscriber, rejections)
            })
            .await?;
        let (token, inbox) = mux.next_inbox();
        let Some(receipt) = expected(&inbox) else {
            return Ok(None);
        };
        let (sender, received) = oneshot::channel();
        let route = Route::insert(mux, token, Expected { sender, receipt });
        Ok(Some((inbox, Receipt::on(received, Some(Box::new(route))))))
    }

    /// The gateway side: a receipt `receipt` is owed on `inbox` once the outcome of `id` is
    /// stored.
    pub(crate) fn owe(&self, id: InvocationId, inbox: String, receipt: [u8; 32]) {
        let mut owed = self.owed();
        if owed.len() >= OWED_PRUNED_AT {
            owed.retain(|_, o| o.since.elapsed() < OWED_FOR);
        }
        owed.insert(
            id,
            Owed {
                inbox,
                receipt,
                since: Instant::now(),
            },
        );
    }

    /// The gateway side: forgets the receipt owed for `id` (its outcome will not be stored
    /// here).
    pub(crate) fn forgive(&self, id: InvocationId) {
        self.owed().remove(&id);
    }

    /// The gateway side: sends the receipt owed for `id`, if any; whether there was one.
    pub(crate) async fn pay(&self, client: &async_nats::Client, id: InvocationId) -> bool {
        let Some(owed) = self.owed().remove(&id) else {
            return false;
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            RECEIPT_HEADER,
            fnmesh_core::claims::encode_receipt(&owed.receipt).as_str(),
        );
        match client
            .publish_with_headers(owed.inbox, headers, bytes::Bytes::new())
            .await
        {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(invocation.id = %id, error = %e, "sending a receipt failed; the node publishes the outcome");
                false
            }
        }
    }

    fn owed(&self) -> MutexGuard<'_, HashMap<InvocationId, Owed>> {
        self.owed.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Hands each receipt of `subscriber` that checks to the node waiting on its inbox of `mux`,
/// until it ends; any other message there is ignored and counted in `rejections`. (The slot
/// then drops the routes: their waiters see their receipt never come.)
async fn serve_receipts(
    mux: Arc<Mux<Expected>>,
    mut subscriber: async_nats::Subscriber,
    rejections: Rejections,
) {
    while let Some(message) = subscriber.next().await {
        let token = token_of(message.subject.as_str());
        let header = message
            .headers
            .as_ref()
            .and_then(|h| h.get(RECEIPT_HEADER))
            .map(|v| v.as_str());
        let mut routes = mux.routes();
        let Some(expected) = token.and_then(|t| routes.get(&t)) else {
            continue;
        };
        if !receipt_matches(header, &expected.receipt) {
            drop(routes);
            rejections.count(Rejection::BadSignature);
            tracing::warn!(nats.subject = %message.subject, "a receipt that does not check was ignored");
            continue;
        }
        if let Some(expected) = token.and_then(|t| routes.remove(&t)) {
            let _ = expected.sender.send(());
        }
    }
}
