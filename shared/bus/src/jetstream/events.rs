//! Node events of a JetStream bus: published to the event stream, pulled in batches by
//! recorders through the durable event consumer.

use std::time::Duration;

use async_nats::header::HeaderMap;
use async_nats::jetstream::AckKind;
use futures::StreamExt;

use super::acker::JetStreamAcker;
use super::{backend, JetStreamBus, MIN_EXPIRY};
use crate::{BusError, EventDelivery};
use fnmesh_core::invocation::NodeEvent;
use fnmesh_core::subjects;

impl JetStreamBus {
    /// Publishes a node event to the event stream and waits for the PubAck.
    pub(super) async fn publish_node_event(&self, event: &NodeEvent) -> Result<(), BusError> {
        let payload = serde_json::to_vec(event).map_err(|e| backend("encoding an event", e))?;
        let subject = subjects::bus_node_event(&self.inner.prefix, &event.invocation_id());
        self.publish(subject, HeaderMap::new(), payload, "publishing an event")
            .await?;
        Ok(())
    }

    /// Pulls up to `max` node events, waiting up to `wait` for the first.
    pub(super) async fn pull_event_batch(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<EventDelivery>, BusError> {
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
                    tracing::error!(error = %e, "undecodable node event; terminated");
                    let _ = message.ack_with(AckKind::Term).await;
                }
            }
        }
        Ok(events)
    }
}
