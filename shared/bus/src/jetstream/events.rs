//! Node events of a JetStream bus: published to the event stream (signed by the node that
//! holds the delivery: `reports`), pulled in batches by recorders through the durable event
//! consumer; an event that fails the checks is terminated, logged and counted, never handed up.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;

use super::acker::JetStreamAcker;
use super::reports::reporter;
use super::{backend, JetStreamBus, MIN_EXPIRY};
use crate::{BusError, EventDelivery};
use fnmesh_core::invocation::NodeEvent;
use fnmesh_core::subjects;

impl JetStreamBus {
    /// Whether a pulled event is signed by its node, which holds (or held) its delivery
    /// ([`super::reports`]); a refusal is logged and counted.
    async fn report_checks(&self, message: &jetstream::Message, event: &NodeEvent) -> bool {
        let (node_id, attempt) = reporter(event);
        let checked = self
            .inner
            .node_check
            .check(
                message.headers.as_ref(),
                message.subject.as_str(),
                &message.payload,
                event.invocation_id(),
                node_id,
                attempt,
            )
            .await;
        match checked {
            Ok(()) => true,
            Err(reason) => {
                tracing::warn!(
                    invocation.id = %event.invocation_id(),
                    node.id = node_id,
                    attempt,
                    reason = %reason,
                    "node event refused: not recorded, terminated"
                );
                false
            }
        }
    }

    /// Publishes a node event to the event stream and waits for the PubAck.
    pub(super) async fn publish_node_event(&self, event: &NodeEvent) -> Result<(), BusError> {
        let payload = serde_json::to_vec(event).map_err(|e| backend("encoding an event", e))?;
        let subject = subjects::bus_node_event(&self.inner.prefix, &event.invocation_id());
        let (node_id, attempt) = reporter(event);
        let headers =
            self.report_headers(&subject, &payload, event.invocation_id(), node_id, attempt);
        self.publish(subject, headers, payload, "publishing an event")
            .await?;
        Ok(())
    }

    /// Pulls up to `max` node events, waiting up to `wait` for the first.
    pub(super) async fn pull_event_batch(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<EventDelivery>, BusError> {
        // Refused events are not handed up: while a pull brought only those, pull again for
        // what is left of the wait.
        let deadline = tokio::time::Instant::now() + wait;
        let mut left = wait;
        loop {
            let (events, refused) = self.pull_event_round(max, left).await?;
            left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if !events.is_empty() || refused == 0 || left.is_zero() {
                return Ok(events);
            }
        }
    }

    /// One pull: the events it brought that pass the checks, and how many did not.
    async fn pull_event_round(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<(Vec<EventDelivery>, usize), BusError> {
        // One pull request: with `no_wait` and an expiry the server waits up to the expiry for
        // a first message, then answers at once with every message ready, up to the batch.
        let mut request = self.events()?.fetch().max_messages(max.max(1));
        if !wait.is_zero() {
            request = request.expires(wait.max(MIN_EXPIRY));
        }
        let mut batch = request
            .messages()
            .await
            .map_err(|e| backend("pulling events", e))?;
        let mut events = Vec::new();
        let mut refused = 0;
        while let Some(message) = batch.next().await {
            let message = match message {
                Ok(message) => message,
                // What arrived is kept; the next pull reports an error that persists.
                Err(e) if !events.is_empty() => {
                    tracing::debug!(error = %e, "pulling events ended early");
                    break;
                }
                Err(e) => return Err(backend("pulling events", e)),
            };
            match serde_json::from_slice::<NodeEvent>(&message.payload) {
                Ok(event) if !self.report_checks(&message, &event).await => {
                    refused += 1;
                    let _ = message.ack_with(AckKind::Term).await;
                }
                Ok(event) => events.push(EventDelivery {
                    event,
                    acker: Box::new(JetStreamAcker {
                        message,
                        confirm: false,
                        last: None,
                        freed: None,
                    }),
                }),
                Err(e) => {
                    refused += 1;
                    tracing::error!(error = %e, "undecodable node event; terminated");
                    let _ = message.ack_with(AckKind::Term).await;
                }
            }
        }
        Ok((events, refused))
    }
}
