//! Reply inboxes of the in-process bus: `mem-inbox.<instance>.<id>` addresses (built by
//! [`fnmesh_core::subjects::memory_reply_inbox`]), each routed to a capacity-1 channel until
//! its [`Inbox`] guard drops. Replies are at most once. A reply that asks for a [`Receipt`]
//! and reached a waiting inbox leaves a one-shot sender by invocation id, which
//! [`MemoryBus::confirm_receipt`] fires once the gateway stored the outcome.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError, Weak};

use tokio::sync::{mpsc, oneshot};

use super::{MemoryBus, Shared};
use crate::{BusError, Inbox, Receipt, ReplyTo};
use fnmesh_core::ids::InvocationId;
use fnmesh_core::invocation::InvocationOutcome;
use fnmesh_core::subjects;

/// Receipts waited on past which those no node waits for any more are dropped.
const RECEIPTS_PRUNED_AT: usize = 4096;

/// Removes its inbox from the bus when dropped.
struct InboxGuard {
    shared: Weak<Shared>,
    id: u64,
}

impl Drop for InboxGuard {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            shared
                .inboxes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&self.id);
        }
    }
}

/// Reads a reply address of this bus type: (whether `instance` issued it, its inbox id).
pub(super) fn parse_reply(instance: u64, to: &ReplyTo) -> Result<(bool, u64), BusError> {
    let (inst, id) = subjects::parse_memory_reply_inbox(&to.0).ok_or(BusError::InvalidReply)?;
    Ok((inst == instance, id))
}

impl MemoryBus {
    /// A fresh inbox of this bus.
    pub(super) fn open_reply_inbox(&self) -> Result<Inbox, BusError> {
        let shared = &self.shared;
        shared.check_open()?;
        let id = shared.next_inbox.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = mpsc::channel(1);
        shared
            .inboxes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, sender);
        Ok(Inbox {
            reply_to: ReplyTo(subjects::memory_reply_inbox(shared.instance, id)),
            receiver,
            guard: Some(Box::new(InboxGuard {
                shared: Arc::downgrade(shared),
                id,
            })),
        })
    }

    /// Sends `outcome` to inbox `to` of this bus, asking for a receipt: one comes only if the
    /// reply reached a waiting inbox.
    pub(super) fn reply_for_receipt(
        &self,
        to: &ReplyTo,
        outcome: &InvocationOutcome,
    ) -> Result<Receipt, BusError> {
        let id = outcome.result.id;
        let (sender, received) = oneshot::channel();
        {
            let mut receipts = self.receipts();
            // Senders whose node stopped waiting go when the map grows.
            if receipts.len() >= RECEIPTS_PRUNED_AT {
                receipts.retain(|_, s| !s.is_closed());
            }
            receipts.insert(id, sender);
        }
        match self.send_reply(to, outcome) {
            Ok(true) => Ok(Receipt::on(received, None)),
            delivered => {
                self.receipts().remove(&id);
                delivered.map(|_| Receipt::none())
            }
        }
    }

    /// Sends the receipt the reply with the outcome of `id` asked for; whether there was one.
    pub(super) fn confirm_receipt(&self, id: InvocationId) -> bool {
        let sender = self.receipts().remove(&id);
        sender.is_some_and(|s| s.send(()).is_ok())
    }

    fn receipts(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<InvocationId, oneshot::Sender<()>>>
    {
        self.shared
            .receipts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends `outcome` to inbox `to` of this bus; whether an inbox took it.
    pub(super) fn send_reply(
        &self,
        to: &ReplyTo,
        outcome: &InvocationOutcome,
    ) -> Result<bool, BusError> {
        let shared = &self.shared;
        shared.check_open()?;
        let (ours, id) = parse_reply(shared.instance, to)?;
        if !ours {
            return Err(BusError::InvalidReply);
        }
        let sender = shared
            .inboxes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .cloned();
        match sender {
            // At most once: a full or closed inbox loses the reply (the event stream has it).
            Some(sender) => {
                if sender.try_send(outcome.clone()).is_err() {
                    tracing::debug!(reply.to = %to.0, "reply dropped: inbox full or closed");
                    return Ok(false);
                }
                Ok(true)
            }
            None => {
                tracing::debug!(reply.to = %to.0, "reply dropped: no such inbox");
                Ok(false)
            }
        }
    }
}
