//! Dead letters of a JetStream bus: the max-deliveries advisories captured by the dead-letter
//! stream, the bus's own record of a failed last attempt ([`LastAttempt`]), and turning an
//! advisory back into a [`DeadLetter`].

use std::sync::Arc;
use std::time::Duration;

use async_nats::header::HeaderMap;
use async_nats::jetstream::{self, consumer, AckKind};
use futures::StreamExt;
use serde::Deserialize;
use tokio::time::Instant;

use super::{backend, JetStreamBus, MIN_EXPIRY};
use crate::{BusError, DeadLetter};
use fnmesh_core::invocation::InvocationRequest;
use fnmesh_core::subjects;

/// The last allowed attempt of an invocation, watched by the bus that handed it out.
///
/// nats-server (2.9) publishes the max-deliveries advisory only when the consumer next looks
/// for a message for a waiting pull, so with no node pulling a dead letter would go unreported.
/// The bus that delivered the last attempt therefore records the same advisory itself (to the
/// same subject, captured by the dead-letter stream, deduplicated by `Nats-Msg-Id`) when that
/// attempt is nak'ed or its ack wait runs out unsettled. A record for a message that was acked
/// after all is skipped by [`Bus::pull_dead_letter`](crate::Bus::pull_dead_letter) (the
/// message is gone from the work stream).
pub(super) struct LastAttempt {
    js: jetstream::Context,
    advisory_subject: String,
    stream_seq: u64,
    deliveries: u32,
    ack_wait: Duration,
    /// Settled, or the dead letter recorded.
    done: std::sync::atomic::AtomicBool,
    extended: tokio::sync::Notify,
}

impl LastAttempt {
    /// The last attempt of the message at `stream_seq`, watched from now on: its dead letter is
    /// recorded to `advisory_subject` if it is not settled within `ack_wait` (restarted by
    /// progress).
    pub(super) fn watched(
        js: jetstream::Context,
        advisory_subject: String,
        stream_seq: u64,
        deliveries: u32,
        ack_wait: Duration,
    ) -> Arc<Self> {
        let last = Arc::new(Self {
            js,
            advisory_subject,
            stream_seq,
            deliveries,
            ack_wait,
            done: std::sync::atomic::AtomicBool::new(false),
            extended: tokio::sync::Notify::new(),
        });
        tokio::spawn(last.clone().watch());
        last
    }

    pub(super) fn settle(&self) {
        self.done.store(true, std::sync::atomic::Ordering::SeqCst);
        self.extended.notify_one();
    }

    pub(super) fn extend(&self) {
        self.extended.notify_one();
    }

    /// Records the dead letter (once).
    pub(super) async fn dead_now(&self) -> Result<(), BusError> {
        if self.done.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        self.extended.notify_one();
        let payload = serde_json::to_vec(&serde_json::json!({
            "type": "io.fnmesh.bus.v1.max_deliver",
            "stream_seq": self.stream_seq,
            "deliveries": self.deliveries,
        }))
        .map_err(|e| backend("encoding a dead-letter record", e))?;
        let mut headers = HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            subjects::dead_letter_msg_id(self.stream_seq),
        );
        self.js
            .publish_with_headers(self.advisory_subject.clone(), headers, payload.into())
            .await
            .map_err(|e| backend("recording a dead letter", e))?
            .await
            .map_err(|e| backend("recording a dead letter", e))?;
        tracing::debug!(
            bus.seq = self.stream_seq,
            "last attempt failed; dead letter recorded"
        );
        Ok(())
    }

    /// Waits out the ack wait (restarted by progress); records the dead letter if unsettled.
    async fn watch(self: Arc<Self>) {
        // A little slack so a just-in-time ack wins.
        let slack = Duration::from_millis(20);
        loop {
            if self.done.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            tokio::select! {
                () = self.extended.notified() => continue,
                () = tokio::time::sleep(self.ack_wait + slack) => {
                    if let Err(e) = self.dead_now().await {
                        tracing::error!(bus.seq = self.stream_seq, error = %e, "recording a dead letter failed; the server advisory remains");
                    }
                    return;
                }
            }
        }
    }
}

/// The max-deliveries advisory, as far as we read it.
#[derive(Deserialize)]
struct MaxDeliveries {
    stream_seq: u64,
    deliveries: u64,
}

impl JetStreamBus {
    /// Pulls the next dead letter, waiting up to `wait` (see the module docs of `jetstream`).
    pub(super) async fn next_dead_letter(
        &self,
        wait: Duration,
    ) -> Result<Option<DeadLetter>, BusError> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(advisory) =
                pull_one(self.dead()?, left, "pulling a dead-letter advisory").await?
            else {
                return Ok(None);
            };
            let parsed: MaxDeliveries = match serde_json::from_slice(&advisory.payload) {
                Ok(parsed) => parsed,
                Err(e) => {
                    tracing::error!(error = %e, "undecodable max-deliveries advisory; dropped");
                    let _ = advisory.ack_with(AckKind::Term).await;
                    continue;
                }
            };
            let seq = parsed.stream_seq;
            let message = match self.inner.work_stream.get_raw_message(seq).await {
                Ok(message) => Some(message),
                Err(e)
                    if matches!(
                        e.kind(),
                        jetstream::stream::LastRawMessageErrorKind::NoMessageFound
                    ) =>
                {
                    None
                }
                Err(e) => return Err(backend("fetching a dead-lettered invocation", e)),
            };
            let dead = match message {
                Some(message) => {
                    match serde_json::from_slice::<InvocationRequest>(&message.payload) {
                        Ok(request) => Some(DeadLetter {
                            request,
                            attempts: u32::try_from(parsed.deliveries).unwrap_or(u32::MAX),
                        }),
                        Err(e) => {
                            tracing::error!(bus.seq = seq, error = %e, "undecodable dead letter; dropped");
                            None
                        }
                    }
                }
                None => {
                    tracing::debug!(bus.seq = seq, "dead-lettered invocation already gone");
                    None
                }
            };
            // The dead letter is built (written) before the message is deleted.
            match self.inner.work_stream.delete_message(seq).await {
                Ok(_) => {}
                Err(e) => {
                    let gone = matches!(
                        e.kind(),
                        jetstream::stream::DeleteMessageErrorKind::JetStream(ref js)
                            if js.code() == 404 || js.to_string().contains("no message found")
                    );
                    if !gone {
                        return Err(backend("deleting a dead-lettered invocation", e));
                    }
                }
            }
            advisory
                .double_ack()
                .await
                .map_err(|e| backend("acking a dead-letter advisory", e))?;
            if let Some(dead) = dead {
                tracing::warn!(
                    invocation.id = %dead.request.id,
                    invocation.attempts = dead.attempts,
                    "invocation attempts ran out; dead-lettered"
                );
                return Ok(Some(dead));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }
}

/// Pulls at most one message from `consumer`, waiting up to `wait`.
async fn pull_one(
    consumer: &consumer::PullConsumer,
    wait: Duration,
    what: &str,
) -> Result<Option<jetstream::Message>, BusError> {
    let mut batch = consumer
        .batch()
        .max_messages(1)
        .expires(wait.max(MIN_EXPIRY))
        .messages()
        .await
        .map_err(|e| backend(what, e))?;
    match batch.next().await {
        None => Ok(None),
        Some(Ok(message)) => Ok(Some(message)),
        Some(Err(e)) => Err(backend(what, e)),
    }
}
