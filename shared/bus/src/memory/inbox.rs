//! Reply inboxes of the in-process bus: `mem-inbox.<instance>.<id>` addresses (built by
//! [`fnmesh_core::subjects::memory_reply_inbox`]), each routed to a capacity-1 channel until
//! its [`Inbox`] guard drops. Replies are at most once.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError, Weak};

use tokio::sync::mpsc;

use super::{MemoryBus, Shared};
use crate::{BusError, Inbox, ReplyTo};
use fnmesh_core::invocation::InvocationOutcome;
use fnmesh_core::subjects;

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

    /// Sends `outcome` to inbox `to` of this bus.
    pub(super) fn send_reply(
        &self,
        to: &ReplyTo,
        outcome: &InvocationOutcome,
    ) -> Result<(), BusError> {
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
                }
            }
            None => tracing::debug!(reply.to = %to.0, "reply dropped: no such inbox"),
        }
        Ok(())
    }
}
