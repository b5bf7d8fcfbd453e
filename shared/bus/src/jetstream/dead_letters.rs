//! Dead letters of a JetStream bus: the max-deliveries advisories captured by the dead-letter
//! stream, the bus's own record of a failed last attempt ([`LastAttempt`]), and turning an
//! advisory back into a [`DeadLetter`].

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, AckKind};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{backend, JetStreamBus, MIN_EXPIRY};
use crate::{BusError, DeadLetter};
use fnmesh_core::invocation::InvocationRequest;
use fnmesh_core::signing::{Envelope, Rejection, SIGNATURE_HEADER};
use fnmesh_core::subjects;
use fnmesh_core::InvocationId;

/// The last allowed attempt of an invocation, watched by the bus that handed it out.
///
/// nats-server (2.9) publishes the max-deliveries advisory only when the consumer next looks
/// for a message for a waiting pull, so with no node pulling a dead letter would go unreported.
/// The bus that delivered the last attempt therefore records the same itself (on
/// [`subjects::bus_dead_letter_records`], signed as a node report, captured by the dead-letter
/// stream, deduplicated by `Nats-Msg-Id`) when that attempt is nak'ed or its ack wait runs out
/// unsettled. A record for a message that was acked
/// after all is skipped by [`Bus::pull_dead_letter`](crate::Bus::pull_dead_letter) (the
/// message is gone from the work stream).
pub(super) struct LastAttempt {
    bus: JetStreamBus,
    id: InvocationId,
    stream_seq: u64,
    deliveries: u32,
    ack_wait: Duration,
    /// Settled, or the dead letter recorded.
    done: std::sync::atomic::AtomicBool,
    extended: tokio::sync::Notify,
}

impl LastAttempt {
    /// The last attempt of the message at `stream_seq` (invocation `id`), watched from now on:
    /// its dead letter is recorded (signed, to [`subjects::bus_dead_letter_records`]) if it is
    /// not settled within `ack_wait` (restarted by progress).
    pub(super) fn watched(
        bus: JetStreamBus,
        id: InvocationId,
        stream_seq: u64,
        deliveries: u32,
        ack_wait: Duration,
    ) -> Arc<Self> {
        let last = Arc::new(Self {
            bus,
            id,
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
        // Signed as the node that reported on the delivery (its first event): gateways take a
        // record only from a holder of that delivery's last attempt.
        let node_id = self.bus.inner.held.node_of(self.id).unwrap_or_default();
        let payload = serde_json::to_vec(&MaxDeliveries {
            kind: Some(NODE_RECORD.to_owned()),
            stream_seq: self.stream_seq,
            deliveries: u64::from(self.deliveries),
            invocation_id: Some(self.id),
            node_id: Some(node_id.clone()),
        })
        .map_err(|e| backend("encoding a dead-letter record", e))?;
        let subject = subjects::bus_dead_letter_records(&self.bus.inner.prefix);
        let mut headers =
            self.bus
                .report_headers(&subject, &payload, self.id, &node_id, self.deliveries);
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            subjects::dead_letter_msg_id(self.stream_seq),
        );
        self.bus
            .inner
            .js
            .publish_with_headers(subject, headers, payload.into())
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

/// `type` of a node's own dead-letter record.
const NODE_RECORD: &str = "io.fnmesh.bus.v1.max_deliver";

/// The max-deliveries advisory (the server's), or a node's record of the same, as far as we
/// read it.
#[derive(Serialize, Deserialize)]
struct MaxDeliveries {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    stream_seq: u64,
    deliveries: u64,
    /// Node records: the invocation and the node that held its last attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    invocation_id: Option<InvocationId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    node_id: Option<String>,
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
            let from_node =
                advisory.subject.as_str() == subjects::bus_dead_letter_records(&self.inner.prefix);
            if from_node && !self.node_record_checks(&advisory, &parsed).await {
                let _ = advisory.ack_with(AckKind::Term).await;
                continue;
            }
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
            if let Some(message) = &message {
                if let Err(reason) = self.exhausted(message, &parsed) {
                    self.inner.signatures.rejections.count(reason);
                    tracing::warn!(
                        bus.seq = seq,
                        reason = %reason,
                        "dead-letter advisory does not match the work stream; nothing deleted"
                    );
                    let _ = advisory.ack_with(AckKind::Term).await;
                    continue;
                }
            }
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

impl JetStreamBus {
    /// Whether a node's dead-letter record is signed by a node that held the last attempt of
    /// the invocation it names; a refusal is logged and counted.
    async fn node_record_checks(
        &self,
        record: &jetstream::Message,
        parsed: &MaxDeliveries,
    ) -> bool {
        let (Some(id), Some(node_id)) = (parsed.invocation_id, parsed.node_id.as_deref()) else {
            self.inner.signatures.rejections.count(Rejection::Invalid);
            tracing::warn!(
                bus.seq = parsed.stream_seq,
                "dead-letter record without invocation or node refused"
            );
            return false;
        };
        let attempt = u32::try_from(parsed.deliveries).unwrap_or(u32::MAX);
        let checked = self
            .inner
            .node_check
            .check(
                record.headers.as_ref(),
                record.subject.as_str(),
                &record.payload,
                id,
                node_id,
                attempt,
            )
            .await;
        match checked {
            Ok(()) => true,
            Err(reason) => {
                tracing::warn!(
                    invocation.id = %id,
                    node.id = node_id,
                    reason = %reason,
                    "dead-letter record refused: nothing deleted"
                );
                false
            }
        }
    }

    /// Checks an advisory against the work message it names: a message this bus's gateways
    /// signed (so it is work, not something else at that sequence), of the invocation a node
    /// record names, whose signed attempt limit the reported deliveries reached.
    fn exhausted(
        &self,
        message: &jetstream::message::StreamMessage,
        parsed: &MaxDeliveries,
    ) -> Result<(), Rejection> {
        let header = |name: &str| message.headers.get(name).map(|v| v.as_str());
        let envelope = Envelope {
            subject: message.subject.as_str(),
            reply: header(super::REPLY_HEADER),
            msg_id: header(async_nats::header::NATS_MESSAGE_ID.as_ref()).unwrap_or(""),
            body: &message.payload,
        };
        let deliveries = u32::try_from(parsed.deliveries).unwrap_or(u32::MAX);
        // Attempt 1 is always within the limit: only the signature is checked here.
        let limits =
            self.inner
                .signatures
                .trusted
                .verify(header(SIGNATURE_HEADER), &envelope, 1)?;
        if deliveries < limits.max_attempts {
            return Err(Rejection::Invalid);
        }
        if let Some(id) = parsed.invocation_id {
            if envelope.msg_id != subjects::invocation_msg_id(&id) {
                return Err(Rejection::Invalid);
            }
        }
        Ok(())
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
