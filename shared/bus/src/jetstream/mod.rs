//! The NATS JetStream [`Bus`]: durable, shared by every gateway and node of a deployment.
//!
//! Everything lives under a validated [`BusPrefix`], so buses with different prefixes on one
//! server never see each other's streams, consumers or subjects (tests use one prefix each;
//! regions and tenants will later). Names come from [`fnmesh_core::subjects`]:
//!
//! | what | name | shape |
//! |---|---|---|
//! | work stream | `fnmesh-<prefix>-inv` | work-queue retention, file storage, `max_msgs` = capacity, discard new, `duplicate_window` = dedupe window, subjects `fnmesh.v1.<prefix>.inv.>` |
//! | work consumer | `fnmesh-<prefix>-inv-c` | durable pull, explicit ack, `ack_wait`, `max_deliver` |
//! | event stream | `fnmesh-<prefix>-evt` | interest retention, file storage, `event_capacity` messages at most (100 000 by default), discard new, subjects `fnmesh.v1.<prefix>.evt.>` |
//! | event consumer | `fnmesh-<prefix>-evt-c` | durable pull for recorders, explicit ack, redelivered until acked |
//! | dead-letter stream | `fnmesh-<prefix>-dlq` | work-queue retention, file storage, `max_msgs` = 2 × capacity, discard new, captures `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<work stream>.<work consumer>` and the nodes' signed records on `fnmesh.v1.<prefix>.dlq` |
//!
//! **Invocations** are published to `fnmesh.v1.<prefix>.inv.<namespace>.<function>` with
//! `Nats-Msg-Id` = the invocation id (JetStream drops duplicates within the window, also when
//! the stream is full), the JSON of the [`InvocationRequest`] as payload, and for sync calls
//! the reply inbox in our own `Fnmesh-Reply-To` header, and the gateway's signature over all
//! of it in `Fnmesh-Signature` (see `signed`: a pulling bus runs nothing unsigned, altered,
//! replayed or signed by a key it does not trust), and the invocation's claim in
//! `Fnmesh-Claim` (see `reports`: the pulling node proves with it that it holds the delivery
//! when it reports on it). No other header is ever set (the
//! `Nats-*` namespace drives dedupe, rollups and expectations). Every publish waits for the
//! PubAck: an unacked publish is an error, never a silent success; a refusal for
//! `maximum messages` is [`BusError::Full`].
//!
//! **Pulls** ask the durable consumer for one message with an expiry of `wait` (at least 1 ms).
//! `Delivery::attempt` is the server's delivery count. Ackers map to `+ACK` / `-NAK {delay}` /
//! `+WPI` / `+TERM`, each sent as a request so the server confirms it (double ack); node
//! events are acked without a confirmation (a lost ack replays an event the recorder already
//! has, which it takes as a no-op).
//!
//! **Acks are not fenced** (nats-server#4786): JetStream ties an ack to the stream sequence,
//! not to the delivery, so the acker of a stale attempt can settle a later attempt of the same
//! message. The project fences in the metadata store on the attempt number instead; the shared
//! [`Bus`] contract says so.
//!
//! **Dead letters.** After `max_deliver` attempts JetStream stops delivering but keeps the
//! message; its only signal is the core-NATS max-deliveries advisory, which the dead-letter
//! stream persists. [`Bus::pull_dead_letter`] pulls one advisory, fetches the original message by
//! its stream sequence, builds the [`DeadLetter`], deletes the message from the work stream,
//! and only then acks the advisory (a crash in between redelivers the advisory; a message
//! already gone means it was handled, and the advisory is just acked). nats-server (2.9)
//! emits the advisory only when the consumer next looks for a message for a waiting pull, so
//! with no node pulling a dead letter would go unreported; the bus that delivered the last
//! attempt therefore records the same advisory itself when that attempt is nak'ed or its ack
//! wait runs out unsettled (see `LastAttempt`), on its own subject and signed as a report;
//! every advisory is checked against the work stream before anything is deleted (the message
//! at that sequence is signed work whose attempt limit was reached). Both records of one message resolve to one
//! dead letter: the second finds the message gone. Two concurrent `pull_dead_letter` callers
//! could in a narrow race both report one message, so dead-letter handling must be
//! idempotent on the invocation id.
//!
//! **Inboxes** are `<inbox prefix>.<nuid>.<n>` subjects on one core-NATS subscription per bus
//! (`<inbox prefix>.<nuid>.*`; the prefix is the connection's, `_FNMESH.gw` for connections made
//! by `fnmesh_core::nats::NatsOptions` for gateways, see `subjects::inbox_prefix`), each routed into a capacity-1 channel until its [`Inbox`] guard drops
//! (see `nats_inbox`). Replies are core NATS: at most once.
//!
//! **Layout.** This module holds the [`JetStreamBus`] type and its [`Bus`] impl, which
//! delegates to: `setup` (streams and consumers, created or updated), `scheduler` (publishing
//! work, per-function consumers pulled fairly with ready hints and sweeps), `acker` (settling
//! deliveries), `dead_letters` (max-deliveries advisories, the bus's own record of a failed
//! last attempt, the dead-letter stream) and `events` (the node event stream).

mod acker;
mod cancel;
mod dead_letters;
mod direct;
mod events;
pub(crate) mod reports;
mod scheduler;
mod setup;
mod signed;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::header::HeaderMap;
use async_nats::jetstream::{self, consumer, stream};
use async_trait::async_trait;
use futures::StreamExt;

use super::{
    Bus, BusConfig, BusError, CancelFeed, DeadLetter, Delivery, EventDelivery, Inbox, LogFeed,
    QueueStats, Receipt, ReplyTo, Sent,
};
use fnmesh_core::invocation::{FunctionLogs, InvocationOutcome, InvocationRequest, NodeEvent};
use fnmesh_core::names::{FunctionName, Namespace};
use fnmesh_core::subjects::{self, BusPrefix};
use fnmesh_core::InvocationId;

/// Our header carrying the reply inbox of a sync invocation.
pub const REPLY_HEADER: &str = "Fnmesh-Reply-To";

/// Shortest pull expiry (NATS needs a non-zero one).
const MIN_EXPIRY: Duration = Duration::from_millis(1);

/// The JetStream [`Bus`].
#[derive(Clone)]
pub struct JetStreamBus {
    inner: Arc<Inner>,
}

struct Inner {
    client: async_nats::Client,
    /// One context for every publish (each context owns a PubAck task).
    js: jetstream::Context,
    prefix: BusPrefix,
    max_deliver: u32,
    ack_wait: Duration,
    work_stream: stream::Stream,
    /// The recorders' consumers; `None` on a bus that does not manage its streams (a node's).
    events: Option<consumer::PullConsumer>,
    dead: Option<consumer::PullConsumer>,
    /// Function consumers this process made sure of, with the `max_ack_pending` they have and
    /// when (trusted for half of `consumer_idle`).
    ensured: std::sync::Mutex<HashMap<String, (i64, tokio::time::Instant)>>,
    /// How long a function consumer lives without pulls or acks before the server deletes it
    /// (`Duration::ZERO`: never).
    consumer_idle: Duration,
    /// The gateway side: repairs of function consumers nodes found missing.
    repairs: scheduler::Repairs,
    /// The pulling side (nodes): which function consumers may have work.
    pull: scheduler::PullState,
    /// Whether sync invocations are sent straight to a node first (`direct`).
    direct_sync: bool,
    /// The gateway side of the direct path: its calls in flight per function.
    direct_in_flight: direct::InFlight,
    /// The node side of the direct path: slots offered and work taken on them.
    direct_intake: direct::Intake,
    /// Sync callers' reply inboxes, on one subscription.
    inboxes: super::nats_inbox::Inboxes,
    /// Receipts for sync replies: those this node waits for, those this gateway owes.
    receipts: Arc<super::nats_receipts::Receipts>,
    /// Signs published work and checks pulled work.
    signatures: super::Signatures,
    /// Invocation ids delivered here, to refuse replays.
    replays: signed::ReplayGuard,
    /// The claims of the deliveries this bus handed out (nodes sign their reports with them).
    held: reports::HeldClaims,
    /// Checks nodes' reports (gateways).
    node_check: Arc<reports::NodeCheck>,
    /// One namespace's share of the work stream, and what this bus last counted of each.
    namespace_capacity: u64,
    namespace_held: scheduler::NamespaceHeld,
}

impl std::fmt::Debug for JetStreamBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamBus")
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

fn backend(what: &str, err: impl std::fmt::Display) -> BusError {
    BusError::Backend(format!("{what}: {err}"))
}

impl JetStreamBus {
    /// Connects to `url` and sets up (or reuses) the streams and consumers of `prefix`.
    pub async fn connect(url: &str, prefix: &str, config: BusConfig) -> Result<Self, BusError> {
        let client = async_nats::connect(url)
            .await
            .map_err(|e| backend("connecting to nats", e))?;
        Self::connect_with_client(client, prefix, config).await
    }

    /// Sets up (or reuses) the streams and consumers of `prefix` on an existing connection.
    pub async fn connect_with_client(
        client: async_nats::Client,
        prefix: &str,
        config: BusConfig,
    ) -> Result<Self, BusError> {
        Self::set_up(client, prefix, config).await
    }

    /// The prefix isolating this bus.
    pub fn prefix(&self) -> &BusPrefix {
        &self.inner.prefix
    }

    /// The underlying connection.
    pub fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }

    /// The event consumer (recorders); an error on a bus that only attaches.
    fn events(&self) -> Result<&consumer::PullConsumer, BusError> {
        self.inner.events.as_ref().ok_or_else(attached_only)
    }

    /// The dead-letter consumer (recorders); an error on a bus that only attaches.
    fn dead(&self) -> Result<&consumer::PullConsumer, BusError> {
        self.inner.dead.as_ref().ok_or_else(attached_only)
    }

    /// Publishes to a stream and waits for the PubAck.
    async fn publish(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: Vec<u8>,
        what: &str,
    ) -> Result<jetstream::publish::PublishAck, BusError> {
        // Disconnected: the client would buffer the message and the ack would time out; say
        // so at once instead (the caller answers 503, or keeps a stored request for later).
        if self.inner.client.connection_state() != async_nats::connection::State::Connected {
            return Err(BusError::Unavailable(format!(
                "{what}: not connected to NATS"
            )));
        }
        let ack = self
            .inner
            .js
            .publish_with_headers(subject, headers, payload.into())
            .await
            .map_err(|e| publish_error(what, &e))?;
        ack.await.map_err(|e| publish_error(what, &e))
    }
}

impl JetStreamBus {
    /// The headers of a node's report on attempt `attempt` of invocation `id` by `node_id`:
    /// its signature ([`reports`]; with the proof of holding when this bus handed out that
    /// delivery).
    fn report_headers(
        &self,
        subject: &str,
        body: &[u8],
        id: fnmesh_core::InvocationId,
        node_id: &str,
        attempt: u32,
    ) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let message = fnmesh_core::claims::NodeMessage { subject, body };
        let signature = self.inner.held.sign(
            &self.inner.signatures.signer,
            &message,
            id,
            node_id,
            attempt,
        );
        headers.insert(
            fnmesh_core::claims::NODE_SIGNATURE_HEADER,
            signature.as_str(),
        );
        headers
    }
}

impl JetStreamBus {
    /// A sync reply's subject (checked), body and signed headers.
    fn reply_message(
        &self,
        to: &ReplyTo,
        outcome: &InvocationOutcome,
    ) -> Result<(String, Vec<u8>, HeaderMap), BusError> {
        let subject = check_reply(to)?.to_owned();
        let payload = serde_json::to_vec(outcome).map_err(|e| backend("encoding a reply", e))?;
        let result = &outcome.result;
        let headers = self.report_headers(
            &subject,
            &payload,
            result.id,
            result.node_id.as_deref().unwrap_or(""),
            result.attempt,
        );
        Ok((subject, payload, headers))
    }
}

fn attached_only() -> BusError {
    BusError::Backend(
        "this bus attaches to a gateway's streams (BusConfig::manage_streams is off): it has no \
         event or dead-letter consumer"
            .to_owned(),
    )
}

/// The error of a publish refused because the stream (or the subject: one function) is at its
/// limits (discard new), if it was.
fn is_full(err: &jetstream::context::PublishError) -> Option<BusError> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(e) = source {
        if let Some(js) = e.downcast_ref::<jetstream::Error>() {
            return full_in(&js.to_string());
        }
        source = e.source();
    }
    full_in(&err.to_string())
}

/// A failed publish as a [`BusError`]: a full queue or lane, an unreachable broker (no
/// answer in time, connection lost, no JetStream to answer), or a backend error.
fn publish_error(what: &str, err: &jetstream::context::PublishError) -> BusError {
    use jetstream::context::PublishErrorKind as Kind;
    if let Some(full) = is_full(err) {
        return full;
    }
    match err.kind() {
        Kind::TimedOut | Kind::BrokenPipe | Kind::StreamNotFound => {
            BusError::Unavailable(format!("{what}: {err}"))
        }
        _ => backend(what, err),
    }
}

/// What a refusal's text says is full, if anything.
fn full_in(text: &str) -> Option<BusError> {
    if text.contains("maximum messages per subject") {
        Some(BusError::LaneFull(crate::Lane::Function))
    } else if text.contains("maximum messages") || text.contains("maximum bytes") {
        Some(BusError::Full)
    } else {
        None
    }
}

/// Validates a reply address: a sync-reply inbox ([`subjects::is_reply_inbox`]) of non-empty
/// tokens of ASCII letters, digits, `-` and `_` (no spaces, wildcards or control characters).
fn check_reply(to: &ReplyTo) -> Result<&str, BusError> {
    let s = to.0.as_str();
    let ok = s.len() <= 256
        && subjects::is_reply_inbox(s)
        && s.split('.').all(|token| {
            !token.is_empty()
                && token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(s)
    } else {
        Err(BusError::InvalidReply)
    }
}

#[async_trait]
impl Bus for JetStreamBus {
    fn ack_wait(&self) -> Duration {
        self.inner.ack_wait
    }

    async fn ping(&self) -> Result<(), BusError> {
        self.inner
            .client
            .flush()
            .await
            .map_err(|e| backend("ping", e))?;
        let mut stream = self.inner.work_stream.clone();
        stream
            .info()
            .await
            .map_err(|e| backend("work stream info", e))?;
        Ok(())
    }

    async fn publish_invocation(
        &self,
        request: &InvocationRequest,
        reply: Option<&ReplyTo>,
    ) -> Result<(), BusError> {
        self.publish_work(request, reply).await
    }

    async fn send_sync(
        &self,
        request: &InvocationRequest,
        reply: &ReplyTo,
    ) -> Result<Sent, BusError> {
        if self.inner.direct_sync && self.send_direct(request, reply).await? {
            return Ok(Sent::Direct);
        }
        self.publish_work(request, Some(reply)).await?;
        Ok(Sent::Queued)
    }

    async fn pull_invocation(&self, wait: Duration) -> Result<Option<Delivery>, BusError> {
        Ok(self.pull_work(1, wait).await?.into_iter().next())
    }

    async fn pull_invocations(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, BusError> {
        self.pull_work(max, wait).await
    }

    async fn open_inbox(&self) -> Result<Inbox, BusError> {
        self.inner
            .inboxes
            .open(
                &self.inner.client,
                &self.inner.node_check,
                &self.inner.receipts,
            )
            .await
    }

    async fn reply(&self, to: &ReplyTo, outcome: &InvocationOutcome) -> Result<(), BusError> {
        let (subject, payload, headers) = self.reply_message(to, outcome)?;
        self.inner
            .client
            .publish_with_headers(subject, headers, payload.into())
            .await
            .map_err(|e| backend("sending a reply", e))
    }

    async fn reply_with_receipt(
        &self,
        to: &ReplyTo,
        outcome: &InvocationOutcome,
    ) -> Result<Receipt, BusError> {
        let (subject, payload, headers) = self.reply_message(to, outcome)?;
        let result = &outcome.result;
        let node_id = result.node_id.as_deref().unwrap_or("");
        // A receipt is asked for only where the reply is authenticated with a report key.
        let expected = self
            .inner
            .receipts
            .expect(
                &self.inner.client,
                &self.inner.signatures.rejections,
                |inbox| {
                    self.inner
                        .held
                        .receipt(result.id, inbox, node_id, result.attempt)
                },
            )
            .await;
        let (sent, receipt) = match expected {
            Ok(Some((inbox, receipt))) => (
                self.inner
                    .client
                    .publish_with_reply_and_headers(subject, inbox, headers, payload.into())
                    .await,
                receipt,
            ),
            Ok(None) | Err(_) => (
                self.inner
                    .client
                    .publish_with_headers(subject, headers, payload.into())
                    .await,
                Receipt::none(),
            ),
        };
        sent.map_err(|e| backend("sending a reply", e))?;
        Ok(receipt)
    }

    async fn confirm_stored(&self, id: fnmesh_core::InvocationId) -> bool {
        self.inner.receipts.pay(&self.inner.client, id).await
    }

    fn report_key(&self) -> Option<String> {
        Some(self.inner.signatures.signer.public_key().to_owned())
    }

    async fn publish_event(&self, event: &NodeEvent) -> Result<(), BusError> {
        self.publish_node_event(event).await
    }

    async fn pull_events(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<EventDelivery>, BusError> {
        self.pull_event_batch(max, wait).await
    }

    async fn publish_logs(&self, logs: &FunctionLogs) -> Result<(), BusError> {
        let subject =
            subjects::bus_function_logs(&self.inner.prefix, &logs.namespace, &logs.function);
        let payload = serde_json::to_vec(logs).map_err(|e| backend("encoding logs", e))?;
        self.inner
            .client
            .publish(subject, payload.into())
            .await
            .map_err(|e| backend("publishing logs", e))
    }

    async fn follow_logs(
        &self,
        namespace: &Namespace,
        function: &FunctionName,
    ) -> Result<LogFeed, BusError> {
        let subject = subjects::bus_function_logs(&self.inner.prefix, namespace, function);
        let subscriber = self
            .inner
            .client
            .subscribe(subject)
            .await
            .map_err(|e| backend("following logs", e))?;
        let feed = subscriber.filter_map(|message| async move {
            match serde_json::from_slice::<FunctionLogs>(&message.payload) {
                Ok(logs) => Some(logs),
                Err(e) => {
                    tracing::debug!(error = %e, "undecodable log entry; skipped");
                    None
                }
            }
        });
        Ok(Box::pin(feed))
    }

    async fn cancel(&self, id: &InvocationId) -> Result<(), BusError> {
        self.send_cancel(id).await
    }

    async fn follow_cancellations(&self) -> Result<CancelFeed, BusError> {
        self.cancellations().await
    }

    async fn queue_stats(&self) -> Result<QueueStats, BusError> {
        self.stats().await
    }

    async fn pull_dead_letter(&self, wait: Duration) -> Result<Option<DeadLetter>, BusError> {
        self.next_dead_letter(wait).await
    }
}
