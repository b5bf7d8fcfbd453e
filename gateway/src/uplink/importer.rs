//! The hub side: every edge's records, sourced into `fnmesh-<hub>-rec_<edge>`, stored in the
//! hub's store.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, AckKind};
use fnmesh_core::subjects::{self, BusPrefix};
use fnmesh_store::{FinishedInvocation, MetadataStore};
use futures::StreamExt as _;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

/// How often the hub looks for the streams of new edges.
pub(crate) const DISCOVER_EVERY: Duration = Duration::from_secs(10);
/// The longest a pull for records waits for a first one.
pub(crate) const FETCH_WAIT: Duration = Duration::from_secs(5);
/// The pause after a pull that found nothing.
pub(crate) const IDLE: Duration = Duration::from_millis(500);
/// Records stored per batch.
const BATCH: usize = 256;
/// Longest pause after a failure.
const MAX_RETRY: Duration = Duration::from_secs(30);

/// Starts importing the records of every edge of hub region `region`.
pub(crate) fn start(
    client: async_nats::Client,
    region: BusPrefix,
    store: Arc<dyn MetadataStore>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let js = jetstream::new(client);
        let mut edges = HashSet::new();
        let mut tasks = JoinSet::new();
        loop {
            match edges_of(&js, &region).await {
                Ok(found) => {
                    for (edge, stream) in found {
                        if edges.insert(edge.clone()) {
                            tracing::info!(edge = %edge, nats.stream = %stream, "importing an edge's records");
                            let importer = Importer {
                                js: js.clone(),
                                stream,
                                edge,
                                store: store.clone(),
                            };
                            tasks.spawn(importer.run(stop.clone()));
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "listing edges' records streams failed"),
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(DISCOVER_EVERY) => {}
            }
        }
        while tasks.join_next().await.is_some() {}
    })
}

/// The edges of `region` whose records streams exist in its domain, with those streams.
pub(crate) async fn edges_of(
    js: &jetstream::Context,
    region: &BusPrefix,
) -> Result<Vec<(BusPrefix, String)>, String> {
    let mut names = js.stream_names();
    let mut found = Vec::new();
    while let Some(name) = names.next().await {
        let name = name.map_err(|e| e.to_string())?;
        if let Some(edge) = subjects::parse_records_import_stream(region, &name) {
            found.push((edge, name));
        }
    }
    Ok(found)
}

struct Importer {
    js: jetstream::Context,
    stream: String,
    edge: BusPrefix,
    store: Arc<dyn MetadataStore>,
}

impl Importer {
    async fn run(self, stop: CancellationToken) {
        let mut pause = Duration::from_millis(500);
        loop {
            match self.import(&stop).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, edge = %self.edge, "importing an edge's records failed; retrying")
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(MAX_RETRY);
        }
    }

    /// Pulls and stores records until `stop`.
    async fn import(&self, stop: &CancellationToken) -> Result<(), String> {
        let stream = self
            .js
            .get_stream(&self.stream)
            .await
            .map_err(|e| format!("looking up {}: {e}", self.stream))?;
        let consumer: consumer::PullConsumer = stream
            .get_or_create_consumer(
                subjects::RECORDS_IMPORT_CONSUMER,
                consumer::pull::Config {
                    durable_name: Some(subjects::RECORDS_IMPORT_CONSUMER.to_owned()),
                    description: Some("fnmesh: hub gateways store edge records".to_owned()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(60),
                    max_ack_pending: 4 * BATCH as i64,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| format!("making the consumer of {}: {e}", self.stream))?;
        while !stop.is_cancelled() {
            let mut batch = consumer
                .fetch()
                .max_messages(BATCH)
                .expires(FETCH_WAIT)
                .messages()
                .await
                .map_err(|e| format!("pulling records: {e}"))?;
            let mut messages = Vec::new();
            loop {
                tokio::select! {
                    () = stop.cancelled() => return Ok(()),
                    next = batch.next() => match next {
                        Some(Ok(message)) => messages.push(message),
                        Some(Err(e)) => return Err(format!("pulling records: {e}")),
                        None => break,
                    },
                }
            }
            if messages.is_empty() {
                // A fetch answers at once, also with nothing: wait before asking again.
                tokio::select! {
                    () = stop.cancelled() => return Ok(()),
                    () = tokio::time::sleep(IDLE) => {}
                }
                continue;
            }
            self.store_batch(messages).await?;
        }
        Ok(())
    }

    /// Stores one batch and acks it (refused messages are terminated).
    async fn store_batch(&self, messages: Vec<jetstream::Message>) -> Result<(), String> {
        let mut items = Vec::with_capacity(messages.len());
        let mut taken = Vec::with_capacity(messages.len());
        for message in messages {
            match decode(&message.payload) {
                Ok(item) => {
                    items.push(item);
                    taken.push(message);
                }
                Err(why) => {
                    tracing::warn!(edge = %self.edge, why, "refused a record from an edge");
                    let _ = message.ack_with(AckKind::Term).await;
                }
            }
        }
        if items.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.store.import_finished(&items).await {
            for message in &taken {
                let _ = message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await;
            }
            return Err(format!("storing {} records: {e}", items.len()));
        }
        for message in taken {
            if let Err(e) = message.ack().await {
                tracing::debug!(error = %e, "acking an imported record failed (it comes again; importing is idempotent)");
            }
        }
        tracing::debug!(edge = %self.edge, records = items.len(), "stored an edge's records");
        Ok(())
    }
}

/// A record as an edge exported it, checked: finished, and its dead letter (if any) of the
/// same invocation. (Names are validated by their types when parsed.)
fn decode(payload: &[u8]) -> Result<FinishedInvocation, &'static str> {
    let item: FinishedInvocation = serde_json::from_slice(payload).map_err(|_| "not a record")?;
    if !item.record.status.is_terminal() {
        return Err("not finished");
    }
    if let Some(dead) = &item.dead_letter {
        let same = dead.id == item.record.id
            && dead.request.id == item.record.id
            && dead.namespace == item.record.namespace
            && dead.request.function.namespace == item.record.namespace;
        if !same {
            return Err("a dead letter of another invocation");
        }
    }
    Ok(item)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_a_finished_record() {
        assert_eq!(decode(b"{}").err(), Some("not a record"));
        assert_eq!(decode(b"\xff").err(), Some("not a record"));
    }
}
