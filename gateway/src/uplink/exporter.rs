//! The edge side: finished invocations out of the edge's store into `fnmesh-<edge>-rec`, and
//! the hub's stream that sources it.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use chrono::{DateTime, SecondsFormat, Utc};
use fnmesh_core::ids::InvocationId;
use fnmesh_core::subjects::{self, BusPrefix};
use fnmesh_store::{FinishedInvocation, MetadataStore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{MAX_BYTES, POSITION_HEADER, RETENTION};
use crate::catalog::CatalogError;

/// Only what finished at least this long ago is exported (see the module docs).
pub(crate) const SETTLE: Duration = Duration::from_secs(2);
/// How often the store is read when the last read found nothing more.
pub(crate) const POLL: Duration = Duration::from_secs(1);
/// Records read and published per round.
const BATCH: u32 = 256;
/// Longest pause after a failure.
const MAX_RETRY: Duration = Duration::from_secs(30);

/// An export position: `(updated_at, id)` of the last record exported.
type Position = (DateTime<Utc>, InvocationId);

/// Makes (or finds) `fnmesh-<region>-rec` and starts exporting into it; the hub's sourcing
/// stream is made in the background once the hub answers.
pub(crate) async fn start(
    client: async_nats::Client,
    region: &BusPrefix,
    hub: &BusPrefix,
    store: Arc<dyn MetadataStore>,
    stop: CancellationToken,
) -> Result<JoinHandle<()>, CatalogError> {
    let js = jetstream::new(client.clone());
    let name = subjects::records_stream(region);
    let stream = js
        .get_or_create_stream(stream::Config {
            name: name.clone(),
            description: Some(format!(
                "fnmesh: finished invocations of region {region}, sourced by hub {hub}"
            )),
            subjects: vec![subjects::bus_records(region)],
            retention: stream::RetentionPolicy::Limits,
            max_age: RETENTION,
            max_bytes: MAX_BYTES,
            discard: stream::DiscardPolicy::New,
            duplicate_window: Duration::from_secs(120),
            storage: stream::StorageType::File,
            num_replicas: 1,
            ..Default::default()
        })
        .await
        .map_err(|e| CatalogError::JetStream {
            what: format!("making the records stream {name}"),
            detail: e.to_string(),
        })?;
    let source = tokio::spawn(make_hub_source(
        client,
        region.clone(),
        hub.clone(),
        stop.clone(),
    ));
    let exporter = Exporter {
        js,
        stream,
        subject: subjects::bus_records(region),
        store,
    };
    Ok(tokio::spawn(async move {
        exporter.run(stop).await;
        let _ = source.await;
    }))
}

/// Makes the hub's stream sourcing this edge's records, retrying until the hub answers (the
/// link may be down when the edge starts).
async fn make_hub_source(
    client: async_nats::Client,
    region: BusPrefix,
    hub: BusPrefix,
    stop: CancellationToken,
) {
    let js = jetstream::with_domain(client, hub.as_str());
    let name = subjects::records_import_stream(&hub, &region);
    let mut pause = Duration::from_millis(500);
    loop {
        let made = js
            .get_or_create_stream(stream::Config {
                name: name.clone(),
                description: Some(format!("fnmesh: finished invocations of edge {region}")),
                sources: Some(vec![stream::Source {
                    name: subjects::records_stream(&region),
                    // (Not `domain`: the server takes the domain as an external API prefix.)
                    external: Some(stream::External {
                        api_prefix: subjects::jetstream_domain_api(&region),
                        delivery_prefix: None,
                    }),
                    ..Default::default()
                }]),
                retention: stream::RetentionPolicy::Limits,
                max_age: RETENTION,
                storage: stream::StorageType::File,
                num_replicas: 1,
                ..Default::default()
            })
            .await;
        match made {
            Ok(_) => {
                tracing::info!(nats.stream = %name, hub = %hub, "the hub sources this edge's records");
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, nats.stream = %name, "the hub's records stream is not made yet; retrying");
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(MAX_RETRY);
    }
}

struct Exporter {
    js: jetstream::Context,
    stream: stream::Stream,
    subject: String,
    store: Arc<dyn MetadataStore>,
}

impl Exporter {
    async fn run(self, stop: CancellationToken) {
        let mut position: Option<Option<Position>> = None;
        let mut pause = Duration::from_millis(500);
        loop {
            let wait = match self.round(&mut position).await {
                Ok(full) => {
                    pause = Duration::from_millis(500);
                    if full {
                        if stop.is_cancelled() {
                            return;
                        }
                        continue;
                    }
                    POLL
                }
                Err(e) => {
                    tracing::warn!(error = %e, "exporting finished invocations failed; retrying");
                    let wait = pause;
                    pause = (pause * 2).min(MAX_RETRY);
                    wait
                }
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Exports one batch after `position` (read from the stream first if unknown); whether it
    /// was full (more may wait).
    async fn round(&self, position: &mut Option<Option<Position>>) -> Result<bool, String> {
        let after = match position {
            Some(after) => *after,
            None => {
                let last = self.last_exported().await?;
                *position = Some(last);
                last
            }
        };
        let before = Utc::now() - SETTLE;
        let batch = self
            .store
            .finished_after(after, before, BATCH)
            .await
            .map_err(|e| format!("reading the store: {e}"))?;
        let mut acks = Vec::with_capacity(batch.len());
        for item in &batch {
            acks.push(self.publish(item).await?);
        }
        for ack in acks {
            ack.await.map_err(|e| format!("publishing a record: {e}"))?;
        }
        if let Some(last) = batch.last() {
            *position = Some(Some((last.updated_at, last.record.id)));
        }
        Ok(batch.len() == BATCH as usize)
    }

    async fn publish(
        &self,
        item: &FinishedInvocation,
    ) -> Result<jetstream::context::PublishAckFuture, String> {
        let body = serde_json::to_vec(item).map_err(|e| format!("encoding a record: {e}"))?;
        let mut headers = HeaderMap::new();
        let at = item.updated_at.to_rfc3339_opts(SecondsFormat::Nanos, true);
        headers.insert(POSITION_HEADER, format!("{at} {}", item.record.id).as_str());
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("{}:{}:{at}", item.record.id, item.record.attempt).as_str(),
        );
        self.js
            .publish_with_headers(self.subject.clone(), headers, body.into())
            .await
            .map_err(|e| format!("publishing a record: {e}"))
    }

    /// Where the last export stopped: the position of the stream's last message; with none,
    /// the records the stream would still hold (a stream emptied by age starts there).
    async fn last_exported(&self) -> Result<Option<Position>, String> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind;
        match self
            .stream
            .get_last_raw_message_by_subject(&self.subject)
            .await
        {
            Ok(message) => {
                let position = message
                    .headers
                    .get(POSITION_HEADER)
                    .and_then(|v| parse_position(v.as_str()));
                match position {
                    Some(position) => Ok(Some(position)),
                    None => Err("the records stream's last message has no position".into()),
                }
            }
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {
                // (Any id: records updated at exactly `since` are older than what is kept.)
                let since = Utc::now()
                    - chrono::Duration::from_std(RETENTION).unwrap_or(chrono::Duration::MAX);
                Ok(Some((since, InvocationId::new())))
            }
            Err(e) => Err(format!("reading the records stream: {e}")),
        }
    }
}

/// `<updated_at> <id>`, as [`Exporter::publish`] writes it.
fn parse_position(value: &str) -> Option<Position> {
    let (at, id) = value.split_once(' ')?;
    let at = DateTime::parse_from_rfc3339(at).ok()?.with_timezone(&Utc);
    Some((at, id.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_roundtrip() {
        let at = Utc::now();
        let id = InvocationId::new();
        let text = format!("{} {id}", at.to_rfc3339_opts(SecondsFormat::Nanos, true));
        assert_eq!(parse_position(&text), Some((at, id)));
        assert_eq!(parse_position("yesterday x"), None);
        assert_eq!(parse_position(""), None);
    }
}
