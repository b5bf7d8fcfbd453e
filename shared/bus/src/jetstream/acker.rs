//! Settling JetStream deliveries: `+ACK`, `-NAK {delay}`, `+WPI` and `+TERM`.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use async_trait::async_trait;

use super::dead_letters::LastAttempt;
use super::scheduler::Hint;
use super::{backend, JetStreamBus};
use crate::{Acker, BusError};

/// Settles one JetStream delivery: work deliveries with every kind confirmed by the server
/// (double ack); node events with a plain ack, since a lost one only replays an event, which
/// the recorder takes as a no-op.
pub(super) struct JetStreamAcker {
    pub(super) message: jetstream::Message,
    /// Whether the server confirms each settlement.
    pub(super) confirm: bool,
    /// Set on the last allowed attempt of an invocation.
    pub(super) last: Option<Arc<LastAttempt>>,
    /// For work deliveries: the bus and consumer to hint once this delivery no longer counts
    /// against the function's `max_ack_pending`.
    pub(super) freed: Option<(JetStreamBus, String)>,
}

impl JetStreamAcker {
    async fn send(&self, kind: AckKind, what: &str) -> Result<(), BusError> {
        if self.confirm {
            self.message.double_ack_with(kind).await
        } else {
            self.message.ack_with(kind).await
        }
        .map_err(|e| backend(what, e))?;
        let hint = match kind {
            AckKind::Progress => None,
            AckKind::Nak(None) => Some(Hint::Returned),
            _ => Some(Hint::Freed),
        };
        if let (Some((bus, consumer)), Some(hint)) = (&self.freed, hint) {
            if hint == Hint::Freed {
                bus.settled_here(consumer);
            }
            bus.hint(consumer, hint).await;
        }
        Ok(())
    }
}

#[async_trait]
impl Acker for JetStreamAcker {
    async fn ack(&self) -> Result<(), BusError> {
        self.send(AckKind::Ack, "ack").await?;
        if let Some(last) = &self.last {
            last.settle();
        }
        Ok(())
    }

    async fn nak(&self, delay: Option<Duration>) -> Result<(), BusError> {
        let delay = delay.filter(|d| !d.is_zero());
        self.send(AckKind::Nak(delay), "nak").await?;
        if let Some(last) = &self.last {
            // The server will never deliver it again: report it now.
            last.dead_now().await?;
        }
        Ok(())
    }

    async fn in_progress(&self) -> Result<(), BusError> {
        self.send(AckKind::Progress, "in progress").await?;
        if let Some(last) = &self.last {
            last.extend();
        }
        Ok(())
    }

    async fn term(&self) -> Result<(), BusError> {
        self.send(AckKind::Term, "term").await?;
        if let Some(last) = &self.last {
            last.settle();
        }
        Ok(())
    }

    /// From the delivery's metadata: the consumer's messages still to deliver when the server
    /// delivered it (a function consumer's are its lane's).
    fn holds_back_work(&self) -> bool {
        self.freed.is_some() && self.message.info().is_ok_and(|info| info.pending > 0)
    }
}
