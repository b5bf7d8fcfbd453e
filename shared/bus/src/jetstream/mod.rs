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
//! wait runs out unsettled (see `LastAttempt`). Both records of one message resolve to one
//! dead letter: the second finds the message gone. Two concurrent `pull_dead_letter` callers
//! could in a narrow race both report one message, so dead-letter handling must be
//! idempotent on the invocation id.
//!
//! **Inboxes** are `_INBOX.<nuid>.<n>` subjects on one core-NATS subscription per bus
//! (`_INBOX.<nuid>.*`), each routed into a capacity-1 channel until its [`Inbox`] guard drops
//! (see `nats_inbox`). Replies are core NATS: at most once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::header::HeaderMap;
use async_nats::jetstream::{self, consumer, stream, AckKind};
use async_trait::async_trait;
use futures::StreamExt;
use serde::Deserialize;
use tokio::time::Instant;

use super::{
    Acker, Bus, BusConfig, BusError, DeadLetter, Delivery, EventDelivery, FunctionQueue, Inbox,
    LogFeed, QueueStats, ReplyTo,
};
use fnmesh_core::invocation::{FunctionLogs, InvocationOutcome, InvocationRequest, NodeEvent};
use fnmesh_core::names::{FunctionName, Namespace};
use fnmesh_core::subjects::{self, BusPrefix, BusRole};

/// Our header carrying the reply inbox of a sync invocation.
pub const REPLY_HEADER: &str = "Fnmesh-Reply-To";

/// Unacked deliveries the event and dead-letter consumers allow at most.
const MAX_ACK_PENDING: i64 = 100_000;

/// How often a pulling node re-reads the function consumers (work that became ready without a
/// hint: redeliveries after an ack wait, ends of nak delays, hints lost on the wire).
const SWEEP_INTERVAL: Duration = Duration::from_millis(500);

/// How long a server may hold a fetch of a consumer at its max_ack_pending.
const FETCH_EXPIRY: Duration = Duration::from_millis(20);

/// Hint payload prefixes: new work on a consumer, or a delivery of it settled.
const HINT_WORK: &str = "w:";
const HINT_FREED: &str = "f:";

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
    events: consumer::PullConsumer,
    dead: consumer::PullConsumer,
    /// Function consumers this process made sure of, with the `max_ack_pending` they have.
    ensured: std::sync::Mutex<HashMap<String, i64>>,
    /// The pulling side (nodes): which function consumers may have work.
    pull: PullState,
    /// Sync callers' reply inboxes, on one subscription.
    inboxes: super::nats_inbox::Inboxes,
}

/// Which function consumers a node should look at, round-robin.
#[derive(Default)]
struct PullState {
    /// Set up once, by the first pull: the ready-hint listener.
    listener: tokio::sync::OnceCell<()>,
    wake: tokio::sync::Notify,
    inner: std::sync::Mutex<Ring>,
}

#[derive(Default)]
struct Ring {
    /// Consumers that may have work, in round-robin order.
    order: std::collections::VecDeque<String>,
    /// Those consumers, with a counter bumped by every hint (a hint that arrives while a
    /// fetch comes back empty keeps the consumer hot).
    hot: HashMap<String, u64>,
    /// Consumers at their `max_ack_pending`: skipped until a delivery of theirs is settled
    /// (a "freed" hint) or a sweep shows room.
    capped: std::collections::HashSet<String>,
    /// Consumer handles by name.
    known: HashMap<String, consumer::PullConsumer>,
    /// When the consumer list was last read from the server.
    last_sweep: Option<Instant>,
}

impl Ring {
    fn mark_hot(&mut self, name: &str) {
        match self.hot.get_mut(name) {
            Some(generation) => *generation += 1,
            None => {
                self.hot.insert(name.to_owned(), 0);
                self.order.push_back(name.to_owned());
            }
        }
    }
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

/// Creates or updates a stream, retrying a few times: when processes start together, their
/// creates race, and nats-server (2.9) can refuse the loser with "subjects overlap" or "name
/// in use" although the winner made the very same stream; the retry then finds and updates it.
async fn ensure_stream(
    js: &jetstream::Context,
    config: stream::Config,
    what: &str,
) -> Result<(), BusError> {
    const ATTEMPTS: u32 = 5;
    let mut attempt = 1;
    loop {
        match js.create_or_update_stream(config.clone()).await {
            Ok(_) => return Ok(()),
            Err(e) if attempt < ATTEMPTS => {
                tracing::debug!(stream = %config.name, attempt, error = %e, "{what} failed; retrying");
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                attempt += 1;
            }
            Err(e) => return Err(backend(what, e)),
        }
    }
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
        let capacity = i64::try_from(config.capacity.max(1)).unwrap_or(i64::MAX);

        let work_name = subjects::bus_stream(&prefix, BusRole::Invocations);
        ensure_stream(
            &js,
            stream::Config {
                name: work_name.clone(),
                subjects: vec![subjects::bus_invocations_all(&prefix)],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                max_messages: capacity,
                discard: stream::DiscardPolicy::New,
                duplicate_window: config.dedupe_window,
                allow_direct: true,
                ..Default::default()
            },
            "creating the work stream",
        )
        .await?;
        let work_stream = js
            .get_stream(&work_name)
            .await
            .map_err(|e| backend("getting the work stream", e))?;
        // Work is consumed per function (see `ensure_function_consumer`); the single consumer
        // of earlier versions would overlap their filters on a work-queue stream.
        let legacy = subjects::bus_consumer(&prefix, BusRole::Invocations);
        if work_stream.consumer_info(&legacy).await.is_ok() {
            work_stream
                .delete_consumer(&legacy)
                .await
                .map_err(|e| backend("removing the legacy work consumer", e))?;
        }

        let events_name = subjects::bus_stream(&prefix, BusRole::Events);
        ensure_stream(
            &js,
            stream::Config {
                name: events_name.clone(),
                subjects: vec![subjects::bus_node_events_all(&prefix)],
                retention: stream::RetentionPolicy::Interest,
                storage: stream::StorageType::File,
                max_messages: i64::try_from(config.event_capacity.max(1)).unwrap_or(i64::MAX),
                discard: stream::DiscardPolicy::New,
                ..Default::default()
            },
            "creating the event stream",
        )
        .await?;
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
        ensure_stream(
            &js,
            stream::Config {
                name: dead_name.clone(),
                subjects: vec![subjects::max_deliveries_advisories_all(&prefix)],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                ..Default::default()
            },
            "creating the dead-letter stream",
        )
        .await?;
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
                events,
                dead,
                ensured: std::sync::Mutex::new(HashMap::new()),
                pull: PullState::default(),
                inboxes: Default::default(),
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

    /// Makes sure the durable consumer of `request`'s function exists with the function's
    /// `max_concurrency` as `max_ack_pending` (the cap holds across every node together).
    /// Cached per process; a changed cap updates the consumer.
    async fn ensure_function_consumer(&self, request: &InvocationRequest) -> Result<(), BusError> {
        let f = &request.function;
        let name = subjects::bus_function_consumer(&self.inner.prefix, &f.namespace, &f.name);
        let cap = i64::from(f.config.max_concurrency.max(1));
        if self.ensured().get(&name) == Some(&cap) {
            return Ok(());
        }
        let config = consumer::pull::Config {
            durable_name: Some(name.clone()),
            filter_subject: subjects::bus_invocation(&self.inner.prefix, &f.namespace, &f.name),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: self.inner.ack_wait,
            max_deliver: i64::from(self.inner.max_deliver),
            max_ack_pending: cap,
            ..Default::default()
        };
        // Create-or-update: an existing consumer with another cap is updated.
        self.inner
            .work_stream
            .create_consumer(config)
            .await
            .map_err(|e| backend(&format!("creating consumer {name}"), e))?;
        self.ensured().insert(name, cap);
        Ok(())
    }

    fn ensured(&self) -> std::sync::MutexGuard<'_, HashMap<String, i64>> {
        self.inner
            .ensured
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.inner
            .pull
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Tells pulling nodes that `consumer` may have work (`freed`: one of its deliveries was
    /// settled, so a capped consumer has room again). Core NATS, best effort: a lost hint
    /// costs at most one sweep interval.
    async fn hint(&self, consumer: &str, freed: bool) {
        let subject = subjects::bus_work_ready(&self.inner.prefix);
        let payload = format!("{}{consumer}", if freed { HINT_FREED } else { HINT_WORK });
        if let Err(e) = self.inner.client.publish(subject, payload.into()).await {
            tracing::debug!(error = %e, "work hint not sent");
        }
    }

    /// Starts (once) the task that turns ready hints into hot consumers.
    async fn start_listener(&self) -> Result<(), BusError> {
        self.inner
            .pull
            .listener
            .get_or_try_init(|| async {
                let mut hints = self
                    .inner
                    .client
                    .subscribe(subjects::bus_work_ready(&self.inner.prefix))
                    .await
                    .map_err(|e| backend("subscribing to work hints", e))?;
                let weak = Arc::downgrade(&self.inner);
                let own = subjects::bus_function_consumer_prefix(&self.inner.prefix);
                tokio::spawn(async move {
                    while let Some(message) = hints.next().await {
                        let Some(inner) = weak.upgrade() else { break };
                        // Anyone on NATS can publish here: only well-formed names of our
                        // own consumers are taken.
                        let Ok(text) = std::str::from_utf8(&message.payload) else {
                            continue;
                        };
                        let (freed, name) = if let Some(name) = text.strip_prefix(HINT_FREED) {
                            (true, name)
                        } else if let Some(name) = text.strip_prefix(HINT_WORK) {
                            (false, name)
                        } else {
                            continue;
                        };
                        let valid = name.len() <= 200
                            && name.starts_with(&own)
                            && name.bytes().all(|b| {
                                b.is_ascii_lowercase()
                                    || b.is_ascii_digit()
                                    || b == b'-'
                                    || b == b'_'
                            });
                        if !valid {
                            continue;
                        }
                        {
                            let mut ring = inner
                                .pull
                                .inner
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner);
                            if freed {
                                ring.capped.remove(name);
                            } else if ring.capped.contains(name) {
                                continue;
                            }
                            ring.mark_hot(name);
                        }
                        inner.pull.wake.notify_one();
                    }
                });
                Ok::<(), BusError>(())
            })
            .await?;
        Ok(())
    }

    /// Reads the function consumers from the server: those with work (new, in flight or due
    /// for redelivery) become hot, and those at their cap are marked capped. This finds work
    /// that became ready without a hint: redeliveries after an ack wait, ends of nak delays,
    /// lost hints.
    async fn sweep(&self) -> Result<(), BusError> {
        let own = subjects::bus_function_consumer_prefix(&self.inner.prefix);
        let mut infos = self.inner.work_stream.consumers();
        let mut found = Vec::new();
        while let Some(info) = infos.next().await {
            let info = info.map_err(|e| backend("listing work consumers", e))?;
            if info.name.starts_with(&own) {
                let capped = info.config.max_ack_pending > 0
                    && info.num_ack_pending as i64 >= info.config.max_ack_pending;
                let work = info.num_pending > 0 || info.num_ack_pending > 0;
                found.push((info.name, work, capped));
            }
        }
        let mut ring = self.ring();
        ring.known
            .retain(|name, _| found.iter().any(|(n, _, _)| n == name));
        for (name, work, capped) in &found {
            if *capped {
                ring.capped.insert(name.clone());
            } else {
                ring.capped.remove(name);
            }
            // Capped ones too: a redelivery (after a crashed node's ack wait) is delivered even
            // at the cap, and nothing else would look for it.
            if *work {
                ring.mark_hot(name);
            }
        }
        ring.last_sweep = Some(Instant::now());
        Ok(())
    }

    /// The handle of consumer `name` (looked up once).
    async fn consumer(&self, name: &str) -> Result<consumer::PullConsumer, BusError> {
        if let Some(c) = self.ring().known.get(name) {
            return Ok(c.clone());
        }
        let c: consumer::PullConsumer = self
            .inner
            .work_stream
            .get_consumer(name)
            .await
            .map_err(|e| backend("looking up a work consumer", e))?;
        self.ring().known.insert(name.to_owned(), c.clone());
        Ok(c)
    }

    /// Tries the hot consumers once each, round-robin; the first message found wins.
    async fn fetch_round(&self) -> Result<Option<jetstream::Message>, BusError> {
        let rounds = self.ring().order.len();
        for _ in 0..rounds {
            let (name, generation) = {
                let mut ring = self.ring();
                let Some(name) = ring.order.pop_front() else {
                    return Ok(None);
                };
                let generation = ring.hot.get(&name).copied().unwrap_or(0);
                (name, generation)
            };
            let started = Instant::now();
            let (got, held) = match self.consumer(&name).await {
                Ok(mut c) => {
                    let got = fetch_now(&c).await;
                    // An empty answer that took the whole expiry: the server may have held the
                    // request because the consumer is at its max_ack_pending, or this process
                    // was just slow (a busy node on a small machine). Only the consumer's
                    // counts tell; a consumer wrongly marked capped would ignore work hints
                    // until the next sweep.
                    let held = matches!(got, Ok(None))
                        && started.elapsed() >= FETCH_EXPIRY
                        && at_cap(&mut c).await;
                    (got, held)
                }
                Err(e) => (Err(e), false),
            };
            let mut ring = self.ring();
            match got {
                Ok(Some(message)) => {
                    // It may have more: keep it hot, at the back.
                    ring.order.push_back(name);
                    return Ok(Some(message));
                }
                Ok(None) | Err(_) => {
                    if let Err(e) = &got {
                        tracing::debug!(consumer = %name, error = %e, "fetch failed; consumer cooled");
                        ring.known.remove(&name);
                    }
                    if held {
                        ring.capped.insert(name.clone());
                    }
                    if ring.hot.get(&name) == Some(&generation) {
                        ring.hot.remove(&name);
                    } else {
                        // A hint arrived meanwhile: try it again.
                        ring.order.push_back(name);
                    }
                }
            }
        }
        Ok(None)
    }

    /// Turns a fetched work message into a delivery; `None` (after terminating it) for a
    /// message nothing can ever run.
    async fn delivery(&self, message: jetstream::Message) -> Result<Option<Delivery>, BusError> {
        let info = message.info().map_err(|e| backend("message info", e))?;
        let attempt = u32::try_from(info.delivered.max(1)).unwrap_or(u32::MAX);
        let consumer = info.consumer.to_owned();
        let stream_seq = info.stream_sequence;
        let request: InvocationRequest = match serde_json::from_slice(&message.payload) {
            Ok(request) => request,
            Err(e) => {
                tracing::error!(error = %e, subject = %message.subject, "undecodable invocation; terminated");
                let _ = message.ack_with(AckKind::Term).await;
                return Ok(None);
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
            let last = Arc::new(LastAttempt {
                js: self.inner.js.clone(),
                advisory_subject: subjects::max_deliveries_advisory(&self.inner.prefix, &consumer),
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
        Ok(Some(Delivery {
            request,
            reply_to,
            attempt,
            acker: Box::new(JetStreamAcker {
                message,
                confirm: true,
                last,
                freed: Some((self.clone(), consumer)),
            }),
        }))
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

/// Fetches at most one message that is available right now (no waiting on the server).
async fn fetch_now(
    consumer: &consumer::PullConsumer,
) -> Result<Option<jetstream::Message>, BusError> {
    // `no_wait` answers at once when nothing is pending, but a consumer at its max_ack_pending
    // holds the request: the expiry bounds that wait (the server answers "request timeout").
    let mut batch = consumer
        .fetch()
        .max_messages(1)
        .expires(FETCH_EXPIRY)
        .messages()
        .await
        .map_err(|e| backend("fetching an invocation", e))?;
    match batch.next().await {
        None => Ok(None),
        Some(Ok(message)) => Ok(Some(message)),
        Some(Err(e)) => Err(backend("fetching an invocation", e)),
    }
}

/// Whether `consumer` has as many deliveries pending acknowledgement as its max_ack_pending
/// allows (true when its info cannot be read: the cautious answer, undone by the next sweep).
async fn at_cap(consumer: &mut consumer::PullConsumer) -> bool {
    match consumer.info().await {
        Ok(info) => {
            info.config.max_ack_pending > 0
                && i64::try_from(info.num_ack_pending).unwrap_or(i64::MAX)
                    >= info.config.max_ack_pending
        }
        Err(e) => {
            tracing::debug!(error = %e, "reading a work consumer's counts failed");
            true
        }
    }
}

/// Settles one JetStream delivery: work deliveries with every kind confirmed by the server
/// (double ack); node events with a plain ack, since a lost one only replays an event, which
/// the recorder takes as a no-op.
struct JetStreamAcker {
    message: jetstream::Message,
    /// Whether the server confirms each settlement.
    confirm: bool,
    /// Set on the last allowed attempt of an invocation.
    last: Option<Arc<LastAttempt>>,
    /// For work deliveries: the bus and consumer to hint once this delivery no longer counts
    /// against the function's `max_ack_pending`.
    freed: Option<(JetStreamBus, String)>,
}

impl JetStreamAcker {
    async fn send(&self, kind: AckKind, what: &str) -> Result<(), BusError> {
        if self.confirm {
            self.message.double_ack_with(kind).await
        } else {
            self.message.ack_with(kind).await
        }
        .map_err(|e| backend(what, e))?;
        if let (Some((bus, consumer)), false) = (&self.freed, matches!(kind, AckKind::Progress)) {
            bus.hint(consumer, true).await;
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

/// The max-deliveries advisory, as far as we read it.
#[derive(Deserialize)]
struct MaxDeliveries {
    stream_seq: u64,
    deliveries: u64,
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
        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, request.id.to_string());
        if let Some(reply) = reply {
            headers.insert(REPLY_HEADER, check_reply(reply)?);
        }
        // Built by the gateway from its own span (a validated type, never a client's header),
        // for NATS tooling; nodes read the same value from the request.
        if let Some(traceparent) = &request.traceparent {
            headers.insert(
                fnmesh_core::trace::TRACEPARENT_HEADER,
                traceparent.to_string().as_str(),
            );
        }
        let payload =
            serde_json::to_vec(request).map_err(|e| backend("encoding the invocation", e))?;
        let subject = subjects::bus_invocation(
            &self.inner.prefix,
            &request.function.namespace,
            &request.function.name,
        );
        self.ensure_function_consumer(request).await?;
        let ack = self
            .publish(subject, headers, payload, "publishing an invocation")
            .await?;
        if ack.duplicate {
            tracing::debug!(invocation.id = %request.id, "duplicate publish ignored");
        } else {
            let f = &request.function;
            let consumer =
                subjects::bus_function_consumer(&self.inner.prefix, &f.namespace, &f.name);
            self.hint(&consumer, false).await;
        }
        Ok(())
    }

    async fn pull_invocation(&self, wait: Duration) -> Result<Option<Delivery>, BusError> {
        self.start_listener().await?;
        let deadline = Instant::now() + wait;
        loop {
            let sweep_due = self
                .ring()
                .last_sweep
                .is_none_or(|at| at.elapsed() >= SWEEP_INTERVAL);
            if sweep_due {
                self.sweep().await?;
            }
            // Registered before looking, so a hint that lands meanwhile is not missed.
            let wake = self.inner.pull.wake.notified();
            tokio::pin!(wake);
            wake.as_mut().enable();
            if let Some(message) = self.fetch_round().await? {
                if let Some(delivery) = self.delivery(message).await? {
                    return Ok(Some(delivery));
                }
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let next_sweep = self.ring().last_sweep.map_or(now, |at| at + SWEEP_INTERVAL);
            tokio::select! {
                () = &mut wake => {}
                () = tokio::time::sleep_until(next_sweep.min(deadline)) => {}
            }
        }
    }

    async fn open_inbox(&self) -> Result<Inbox, BusError> {
        self.inner.inboxes.open(&self.inner.client).await
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
        let subject = subjects::bus_node_event(&self.inner.prefix, &event.invocation_id());
        self.publish(subject, HeaderMap::new(), payload, "publishing an event")
            .await?;
        Ok(())
    }

    async fn pull_events(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<EventDelivery>, BusError> {
        // One pull request: with `no_wait` and an expiry the server waits up to the expiry for
        // a first message, then answers at once with every message ready, up to the batch.
        let mut request = self.inner.events.fetch().max_messages(max.max(1));
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

    async fn queue_stats(&self) -> Result<QueueStats, BusError> {
        let mut work = self.inner.work_stream.clone();
        let invocations = work
            .info()
            .await
            .map_err(|e| backend("work stream info", e))?
            .state
            .messages;
        let mut functions = Vec::new();
        let mut consumers = self.inner.work_stream.consumers();
        while let Some(info) = consumers.next().await {
            let info = info.map_err(|e| backend("listing work consumers", e))?;
            let Some((namespace, function)) =
                subjects::parse_function_consumer(&self.inner.prefix, &info.name)
            else {
                continue;
            };
            if info.num_pending == 0 && info.num_ack_pending == 0 {
                continue;
            }
            functions.push(FunctionQueue {
                namespace: namespace.to_string(),
                function: function.to_string(),
                pending: info.num_pending,
                in_flight: u64::try_from(info.num_ack_pending).unwrap_or(0),
                max_in_flight: u64::try_from(info.config.max_ack_pending).unwrap_or(0),
            });
        }
        functions.sort_by(|a, b| (&a.namespace, &a.function).cmp(&(&b.namespace, &b.function)));
        let mut events = self.inner.events.clone();
        let events = events
            .info()
            .await
            .map_err(|e| backend("event consumer info", e))?;
        Ok(QueueStats {
            invocations,
            events: events.num_pending + u64::try_from(events.num_ack_pending).unwrap_or(0),
            functions,
        })
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
