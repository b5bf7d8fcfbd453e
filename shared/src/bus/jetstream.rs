//! The NATS JetStream [`Bus`]: durable, shared by every gateway and node of a deployment.
//!
//! Everything lives under a validated [`BusPrefix`], so buses with different prefixes on one
//! server never see each other's streams, consumers or subjects (tests use one prefix each;
//! regions and tenants will later). Names come from [`crate::subjects`]:
//!
//! | what | name | shape |
//! |---|---|---|
//! | work stream | `fnmesh-<prefix>-inv` | work-queue retention, file storage, `max_msgs` = capacity, discard new, `duplicate_window` = dedupe window, subjects `fnmesh.v1.<prefix>.inv.>` |
//! | work consumer | `fnmesh-<prefix>-inv-c` | durable pull, explicit ack, `ack_wait`, `max_deliver` |
//! | event stream | `fnmesh-<prefix>-evt` | interest retention, file storage, 100 000 messages at most, discard new, subjects `fnmesh.v1.<prefix>.evt.>` |
//! | event consumer | `fnmesh-<prefix>-evt-c` | durable pull for recorders, explicit ack, redelivered until acked |
//! | dead-letter stream | `fnmesh-<prefix>-dlq` | work-queue retention, captures `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<work stream>.<work consumer>` |
//!
//! **Invocations** are published to `fnmesh.v1.<prefix>.inv.<namespace>.<function>` with
//! `Nats-Msg-Id` = the invocation id (JetStream drops duplicates within the window, also when
//! the stream is full), the JSON of the [`InvocationRequest`] as payload, and for sync calls
//! the reply inbox in our own `Fnmesh-Reply-To` header. No other header is ever set (the
//! `Nats-*` namespace drives dedupe, rollups and expectations). Every publish waits for the
//! PubAck: an unacked publish is an error, never a silent success; a refusal for
//! `maximum messages` is [`BusError::Full`].
//!
//! **Pulls** ask the durable consumer for one message with an expiry of `wait` (at least 1 ms).
//! `Delivery::attempt` is the server's delivery count. Ackers map to `+ACK` / `-NAK {delay}` /
//! `+WPI` / `+TERM`, each sent as a request so the server confirms it (double ack).
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
//! wait runs out unsettled (see `LastAttempt`). Both records of one message resolve to one
//! dead letter: the second finds the message gone. Two concurrent `pull_dead_letter` callers
//! could in a narrow race both report one message, so dead-letter handling must be
//! idempotent on the invocation id.
//!
//! **Inboxes** are core-NATS subscriptions on fresh `_INBOX.<nuid>` subjects, bridged into a
//! capacity-1 channel by a task that ends (and unsubscribes) when the [`Inbox`] guard drops.
//! Replies are core NATS: at most once.

use std::sync::Arc;
use std::time::Duration;

use async_nats::header::HeaderMap;
use async_nats::jetstream::{self, consumer, stream, AckKind};
use async_trait::async_trait;
use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::{Acker, Bus, BusConfig, BusError, DeadLetter, Delivery, EventDelivery, Inbox, ReplyTo};
use crate::ids::InvocationId;
use crate::invocation::{InvocationOutcome, InvocationRequest, NodeEvent};
use crate::subjects::{self, BusPrefix, BusRole};

/// Node events kept (unacked) at most.
pub const EVENT_CAPACITY: i64 = 100_000;

/// Our header carrying the reply inbox of a sync invocation.
pub const REPLY_HEADER: &str = "Fnmesh-Reply-To";

/// Unacked deliveries the work consumer allows at most.
const MAX_ACK_PENDING: i64 = 100_000;

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
    work: consumer::PullConsumer,
    events: consumer::PullConsumer,
    dead: consumer::PullConsumer,
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
        let prefix = BusPrefix::parse(prefix).map_err(|e| backend("bus prefix", e))?;
        let js = jetstream::new(client.clone());
        let max_deliver = i64::from(config.max_deliver.max(1));
        let capacity = i64::try_from(config.capacity.max(1)).unwrap_or(i64::MAX);

        let work_name = subjects::bus_stream(&prefix, BusRole::Invocations);
        js.create_or_update_stream(stream::Config {
            name: work_name.clone(),
            subjects: vec![subjects::bus_invocations_all(&prefix)],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            max_messages: capacity,
            discard: stream::DiscardPolicy::New,
            duplicate_window: config.dedupe_window,
            allow_direct: true,
            ..Default::default()
        })
        .await
        .map_err(|e| backend("creating the work stream", e))?;
        let work_stream = js
            .get_stream(&work_name)
            .await
            .map_err(|e| backend("getting the work stream", e))?;
        let work = create_consumer(
            &work_stream,
            subjects::bus_consumer(&prefix, BusRole::Invocations),
            config.ack_wait,
            max_deliver,
            MAX_ACK_PENDING.max(capacity),
        )
        .await?;

        let events_name = subjects::bus_stream(&prefix, BusRole::Events);
        js.create_or_update_stream(stream::Config {
            name: events_name.clone(),
            subjects: vec![subjects::bus_node_events_all(&prefix)],
            retention: stream::RetentionPolicy::Interest,
            storage: stream::StorageType::File,
            max_messages: EVENT_CAPACITY,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        })
        .await
        .map_err(|e| backend("creating the event stream", e))?;
        let events_stream = js
            .get_stream(&events_name)
            .await
            .map_err(|e| backend("getting the event stream", e))?;
        let events = create_consumer(
            &events_stream,
            subjects::bus_consumer(&prefix, BusRole::Events),
            config.ack_wait,
            -1,
            MAX_ACK_PENDING,
        )
        .await?;

        let dead_name = subjects::bus_stream(&prefix, BusRole::DeadLetters);
        js.create_or_update_stream(stream::Config {
            name: dead_name.clone(),
            subjects: vec![subjects::max_deliveries_advisory(&prefix)],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| backend("creating the dead-letter stream", e))?;
        let dead_stream = js
            .get_stream(&dead_name)
            .await
            .map_err(|e| backend("getting the dead-letter stream", e))?;
        let dead = create_consumer(
            &dead_stream,
            subjects::bus_consumer(&prefix, BusRole::DeadLetters),
            Duration::from_secs(30),
            -1,
            MAX_ACK_PENDING,
        )
        .await?;

        tracing::debug!(bus.prefix = %prefix, "jetstream bus ready");
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                js,
                prefix,
                max_deliver: config.max_deliver.max(1),
                ack_wait: config.ack_wait,
                work_stream,
                work,
                events,
                dead,
            }),
        })
    }

    /// The prefix isolating this bus.
    pub fn prefix(&self) -> &BusPrefix {
        &self.inner.prefix
    }

    /// The underlying connection.
    pub fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }

    /// Publishes to a stream and waits for the PubAck.
    async fn publish(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: Vec<u8>,
        what: &str,
    ) -> Result<jetstream::publish::PublishAck, BusError> {
        let ack = self
            .inner
            .js
            .publish_with_headers(subject, headers, payload.into())
            .await
            .map_err(|e| backend(what, e))?;
        ack.await.map_err(|e| {
            if is_full(&e) {
                BusError::Full
            } else {
                backend(what, e)
            }
        })
    }
}

async fn create_consumer(
    stream: &stream::Stream,
    name: String,
    ack_wait: Duration,
    max_deliver: i64,
    max_ack_pending: i64,
) -> Result<consumer::PullConsumer, BusError> {
    stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(name.clone()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait,
            max_deliver,
            max_ack_pending,
            ..Default::default()
        })
        .await
        .map_err(|e| backend(&format!("creating consumer {name}"), e))
}

/// Whether a publish was refused because the stream is at its limits (discard new).
fn is_full(err: &jetstream::context::PublishError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(e) = source {
        if let Some(js) = e.downcast_ref::<jetstream::Error>() {
            let text = js.to_string();
            return text.contains("maximum messages") || text.contains("maximum bytes");
        }
        source = e.source();
    }
    let text = err.to_string();
    text.contains("maximum messages") || text.contains("maximum bytes")
}

/// Validates a reply address: `_INBOX.` followed by non-empty tokens of ASCII letters, digits,
/// `-` and `_` (no spaces, wildcards or control characters).
fn check_reply(to: &ReplyTo) -> Result<&str, BusError> {
    let s = to.0.as_str();
    let Some(rest) = s.strip_prefix("_INBOX.") else {
        return Err(BusError::InvalidReply);
    };
    let ok = s.len() <= 256
        && rest.split('.').all(|token| {
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

fn event_id(event: &NodeEvent) -> InvocationId {
    match event {
        NodeEvent::Started { id, .. } => *id,
        NodeEvent::Finished(outcome) => outcome.result.id,
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

/// The `delivered` count of a JetStream message, as an attempt number.
fn attempt_of(message: &jetstream::Message) -> Result<u32, BusError> {
    let info = message.info().map_err(|e| backend("message info", e))?;
    Ok(u32::try_from(info.delivered.max(1)).unwrap_or(u32::MAX))
}

/// Settles one JetStream delivery; every kind is confirmed by the server.
struct JetStreamAcker {
    message: jetstream::Message,
    /// Set on the last allowed attempt of an invocation.
    last: Option<Arc<LastAttempt>>,
}

impl JetStreamAcker {
    async fn send(&self, kind: AckKind, what: &str) -> Result<(), BusError> {
        self.message
            .double_ack_with(kind)
            .await
            .map_err(|e| backend(what, e))
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
}

/// The last allowed attempt of an invocation, watched by the bus that handed it out.
///
/// nats-server (2.9) publishes the max-deliveries advisory only when the consumer next looks
/// for a message for a waiting pull, so with no node pulling a dead letter would go unreported.
/// The bus that delivered the last attempt therefore records the same advisory itself (to the
/// same subject, captured by the dead-letter stream, deduplicated by `Nats-Msg-Id`) when that
/// attempt is nak'ed or its ack wait runs out unsettled. A record for a message that was acked
/// after all is skipped by [`Bus::pull_dead_letter`] (the message is gone from the work stream).
struct LastAttempt {
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
    fn settle(&self) {
        self.done.store(true, std::sync::atomic::Ordering::SeqCst);
        self.extended.notify_one();
    }

    fn extend(&self) {
        self.extended.notify_one();
    }

    /// Records the dead letter (once).
    async fn dead_now(&self) -> Result<(), BusError> {
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
            format!("fnmesh-dead-{}", self.stream_seq),
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

/// Ends the inbox bridge task (which unsubscribes) when dropped.
struct InboxGuard {
    _stop: oneshot::Sender<()>,
}

/// The max-deliveries advisory, as far as we read it.
#[derive(Deserialize)]
struct MaxDeliveries {
    stream_seq: u64,
    deliveries: u64,
}

#[async_trait]
impl Bus for JetStreamBus {
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
        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, request.id.to_string());
        if let Some(reply) = reply {
            headers.insert(REPLY_HEADER, check_reply(reply)?);
        }
        let payload =
            serde_json::to_vec(request).map_err(|e| backend("encoding the invocation", e))?;
        let subject = subjects::bus_invocation(
            &self.inner.prefix,
            &request.function.namespace,
            &request.function.name,
        );
        let ack = self
            .publish(subject, headers, payload, "publishing an invocation")
            .await?;
        if ack.duplicate {
            tracing::debug!(invocation.id = %request.id, "duplicate publish ignored");
        }
        Ok(())
    }

    async fn pull_invocation(&self, wait: Duration) -> Result<Option<Delivery>, BusError> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(message) = pull_one(&self.inner.work, left, "pulling an invocation").await?
            else {
                return Ok(None);
            };
            let attempt = attempt_of(&message)?;
            let request: InvocationRequest = match serde_json::from_slice(&message.payload) {
                Ok(request) => request,
                Err(e) => {
                    // Nothing can ever run it: drop it loudly rather than redeliver forever.
                    tracing::error!(error = %e, subject = %message.subject, "undecodable invocation; terminated");
                    let _ = message.ack_with(AckKind::Term).await;
                    if Instant::now() >= deadline {
                        return Ok(None);
                    }
                    continue;
                }
            };
            let reply_to = message
                .headers
                .as_ref()
                .and_then(|h| h.get(REPLY_HEADER))
                .map(|v| ReplyTo(v.as_str().to_owned()))
                .filter(|r| {
                    let ok = check_reply(r).is_ok();
                    if !ok {
                        tracing::warn!(invocation.id = %request.id, "invalid reply header ignored");
                    }
                    ok
                });
            let last = if attempt >= self.inner.max_deliver {
                let stream_seq = message
                    .info()
                    .map_err(|e| backend("message info", e))?
                    .stream_sequence;
                let last = Arc::new(LastAttempt {
                    js: self.inner.js.clone(),
                    advisory_subject: subjects::max_deliveries_advisory(&self.inner.prefix),
                    stream_seq,
                    deliveries: attempt,
                    ack_wait: self.inner.ack_wait,
                    done: std::sync::atomic::AtomicBool::new(false),
                    extended: tokio::sync::Notify::new(),
                });
                tokio::spawn(last.clone().watch());
                Some(last)
            } else {
                None
            };
            return Ok(Some(Delivery {
                request,
                reply_to,
                attempt,
                acker: Box::new(JetStreamAcker { message, last }),
            }));
        }
    }

    async fn open_inbox(&self) -> Result<Inbox, BusError> {
        let client = &self.inner.client;
        let subject = client.new_inbox();
        let mut subscriber = client
            .subscribe(subject.clone())
            .await
            .map_err(|e| backend("subscribing an inbox", e))?;
        // Make sure the server knows the subscription before anyone can reply to it.
        client
            .flush()
            .await
            .map_err(|e| backend("subscribing an inbox", e))?;
        let (sender, receiver) = mpsc::channel(1);
        let (stop, mut stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    () = sender.closed() => break,
                    message = subscriber.next() => {
                        let Some(message) = message else { break };
                        match serde_json::from_slice::<InvocationOutcome>(&message.payload) {
                            Ok(outcome) => {
                                if sender.try_send(outcome).is_err() {
                                    tracing::debug!("reply dropped: inbox full");
                                }
                            }
                            Err(e) => tracing::warn!(error = %e, "undecodable reply ignored"),
                        }
                    }
                }
            }
            let _ = subscriber.unsubscribe().await;
        });
        Ok(Inbox {
            reply_to: ReplyTo(subject),
            receiver,
            guard: Some(Box::new(InboxGuard { _stop: stop })),
        })
    }

    async fn reply(&self, to: &ReplyTo, outcome: &InvocationOutcome) -> Result<(), BusError> {
        let subject = check_reply(to)?.to_owned();
        let payload = serde_json::to_vec(outcome).map_err(|e| backend("encoding a reply", e))?;
        self.inner
            .client
            .publish(subject, payload.into())
            .await
            .map_err(|e| backend("sending a reply", e))
    }

    async fn publish_event(&self, event: &NodeEvent) -> Result<(), BusError> {
        let payload = serde_json::to_vec(event).map_err(|e| backend("encoding an event", e))?;
        let subject = subjects::bus_node_event(&self.inner.prefix, &event_id(event));
        self.publish(subject, HeaderMap::new(), payload, "publishing an event")
            .await?;
        Ok(())
    }

    async fn pull_event(&self, wait: Duration) -> Result<Option<EventDelivery>, BusError> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(message) = pull_one(&self.inner.events, left, "pulling an event").await?
            else {
                return Ok(None);
            };
            match serde_json::from_slice::<NodeEvent>(&message.payload) {
                Ok(event) => {
                    return Ok(Some(EventDelivery {
                        event,
                        acker: Box::new(JetStreamAcker {
                            message,
                            last: None,
                        }),
                    }))
                }
                Err(e) => {
                    tracing::error!(error = %e, "undecodable node event; terminated");
                    let _ = message.ack_with(AckKind::Term).await;
                    if Instant::now() >= deadline {
                        return Ok(None);
                    }
                }
            }
        }
    }

    async fn pull_dead_letter(&self, wait: Duration) -> Result<Option<DeadLetter>, BusError> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(advisory) =
                pull_one(&self.inner.dead, left, "pulling a dead-letter advisory").await?
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
