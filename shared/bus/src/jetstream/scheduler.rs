//! The work queue of a JetStream bus: publishing invocations, and pulling them fairly.
//!
//! Each function has its own durable consumer (made by `setup`), whose `max_ack_pending` is the
//! function's `max_concurrency`. A pulling node keeps a round-robin ring of the consumers that
//! may have work: core-NATS "ready" hints (sent on every publish and every settlement) make a
//! consumer hot, and a periodic sweep of the work stream's subjects that hold messages finds work
//! that became ready without a hint (redeliveries after an ack wait, ends of nak delays, lost
//! hints): its cost follows the functions with work, never the functions deployed. Each hot consumer
//! is fetched from once per round, so a flooded or slow function never holds up another.
//!
//! Each priority of a function is a lane of its own (subject and consumer,
//! [`subjects::bus_invocation_lane`]): a node keeps one ring per priority and shares each
//! pull's free slots between the priorities with hot consumers by
//! [`fnmesh_core::priority::Share`] (6 : 3 : 1, high first; what one leaves unfilled goes to
//! the others, high first).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, AckKind};
use futures::StreamExt;
use tokio::time::Instant;

use super::acker::JetStreamAcker;
use super::dead_letters::LastAttempt;
use super::{backend, check_reply, JetStreamBus, REPLY_HEADER};
use crate::{BusError, Delivery, FunctionQueue, QueueStats, ReplyTo};
use fnmesh_core::invocation::InvocationRequest;
use fnmesh_core::subjects;

/// How often a pulling node re-reads the function consumers (work that became ready without a
/// hint: redeliveries after an ack wait, ends of nak delays, hints lost on the wire).
const SWEEP_INTERVAL: Duration = Duration::from_millis(500);

/// How long a server may hold a fetch of a consumer at its max_ack_pending.
const FETCH_EXPIRY: Duration = Duration::from_millis(20);

/// What a ready hint says of a consumer; its payload is the prefix and the consumer's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Hint {
    /// New work was published to it (`w:`): nodes make it hot, unless they hold it capped
    /// (a fetch would only be held at the cap).
    Work,
    /// One of its deliveries was settled for good or for later (`f:`: an ack, a term, a nak
    /// with a delay), so a consumer at its cap has room again: only nodes holding it capped
    /// look at it again. Every other node either found nothing more when it last fetched or
    /// has it hot already; the settling node itself looks again
    /// ([`JetStreamBus::settled_here`]).
    Freed,
    /// One of its deliveries was given back for redelivery now (`r:`: a nak without a delay):
    /// room and work at once, so every node looks at it.
    Returned,
}

impl Hint {
    fn prefix(self) -> &'static str {
        match self {
            Self::Work => "w:",
            Self::Freed => "f:",
            Self::Returned => "r:",
        }
    }

    /// The hint and the consumer name a payload carries.
    fn parse(text: &str) -> Option<(Self, &str)> {
        [Self::Work, Self::Freed, Self::Returned]
            .into_iter()
            .find_map(|hint| text.strip_prefix(hint.prefix()).map(|name| (hint, name)))
    }
}

/// Hints naming consumers the last sweep did not list (new functions, or names made up by
/// anyone who may publish hints) taken between two sweeps; past it such hints are dropped and
/// counted, and the next sweep finds the real ones. Bounds the failed lookups a flood costs a
/// node to this many per [`SWEEP_INTERVAL`].
const UNKNOWN_HINT_BUDGET: usize = 32;

/// Consumer handles a node keeps at most; past it, a sweep keeps only those with work.
const MAX_KNOWN_CONSUMERS: usize = 10_000;

/// Function consumers a gateway makes again for nodes at most per second.
const REPAIR_BUDGET: usize = 256;

/// How long a node takes a function consumer it found missing for still missing (no lookup,
/// no report) unless a hint names it.
const MISSING_RETRY: Duration = Duration::from_secs(5);

/// How long a namespace's count of work in the stream is used before it is read again.
const NAMESPACE_RECOUNT: Duration = Duration::from_secs(1);

/// Namespaces' work in the stream as this bus last counted it (plus what it published since),
/// for [`crate::BusConfig::namespace_capacity`].
#[derive(Default)]
pub(super) struct NamespaceHeld {
    counts: std::sync::Mutex<HashMap<fnmesh_core::Namespace, (u64, Instant)>>,
}

impl NamespaceHeld {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<fnmesh_core::Namespace, (u64, Instant)>> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The gateway side of function consumers deleted while work waited for them.
#[derive(Default)]
pub(super) struct Repairs {
    /// Set up once: the listener of nodes' reports.
    listener: tokio::sync::OnceCell<()>,
    /// Repairs in the current second: when it began, how many, of which names.
    window: std::sync::Mutex<(Option<Instant>, std::collections::HashSet<String>)>,
}

impl Repairs {
    /// Whether a repair of `name` may run now ([`REPAIR_BUDGET`] a second, each name once).
    fn admit(&self, name: &str) -> bool {
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let (began, names) = &mut *window;
        if began.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
            *began = Some(Instant::now());
            names.clear();
        }
        if names.len() >= REPAIR_BUDGET || names.contains(name) {
            return false;
        }
        names.insert(name.to_owned());
        true
    }
}

/// Withdraws a pull's offer of slots to direct work when the pull ends.
struct Withdraw<'a>(&'a super::direct::Intake);

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        // Only the offer: direct work taken on it and not returned (the pull was dropped or
        // failed) is returned by the next pull.
        self.0.offer(0);
    }
}

/// Which function consumers a node should look at, round-robin.
#[derive(Default)]
pub(super) struct PullState {
    /// Set up once, by the first pull: the ready-hint listener.
    listener: tokio::sync::OnceCell<()>,
    /// Wakes a waiting pull: a hint came, or direct work was taken on its offer.
    pub(super) wake: tokio::sync::Notify,
    inner: std::sync::Mutex<Ring>,
}

#[derive(Default)]
struct Ring {
    /// Consumers that may have work, in round-robin order, one ring per priority (high first).
    order: [std::collections::VecDeque<String>; 3],
    /// How a pull's slots are shared between the priorities with hot consumers.
    share: fnmesh_core::priority::Share,
    /// Those consumers, with a counter bumped by every hint (a hint that arrives while a
    /// fetch comes back empty keeps the consumer hot).
    hot: HashMap<String, u64>,
    /// Consumers at their `max_ack_pending`: skipped until a delivery of theirs is settled
    /// (a "freed" hint) or a sweep shows room.
    capped: std::collections::HashSet<String>,
    /// Consumer handles by name.
    known: HashMap<String, consumer::PullConsumer>,
    /// The function consumers with messages in the stream at the last sweep.
    listed: std::collections::HashSet<String>,
    /// Consumers whose lookup found none while the sweep saw work for them (the server
    /// deleted them), when: not looked up again for [`MISSING_RETRY`] unless a hint names
    /// them (a gateway hints a consumer it made again), so thousands of them cost no lookups.
    missing: HashMap<String, Instant>,
    /// Hints for names neither in `listed` nor `known` taken since the last sweep
    /// ([`UNKNOWN_HINT_BUDGET`]).
    unknown_taken: usize,
    /// When the consumer list was last read from the server.
    last_sweep: Option<Instant>,
}

impl Ring {
    fn mark_hot(&mut self, name: &str) {
        match self.hot.get_mut(name) {
            Some(generation) => *generation += 1,
            None => {
                self.hot.insert(name.to_owned(), 0);
                self.order[lane_of(name)].push_back(name.to_owned());
            }
        }
    }
}

impl JetStreamBus {
    /// Publishes an invocation to its function's work subject (making sure of the function's
    /// consumer first) and hints pulling nodes that the consumer has work.
    pub(super) async fn publish_work(
        &self,
        request: &InvocationRequest,
        reply: Option<&ReplyTo>,
    ) -> Result<(), BusError> {
        let subject = subjects::bus_invocation_lane(
            &self.inner.prefix,
            &request.function.namespace,
            &request.function.name,
            request.priority,
        );
        let reply = reply.map(check_reply).transpose()?;
        self.check_namespace_room(&request.function.namespace)
            .await?;
        let (headers, payload) = self.work_message(request, &subject, reply)?;
        self.ensure_function_consumer(request).await?;
        let ack = self
            .publish(subject, headers, payload, "publishing an invocation")
            .await?;
        if ack.duplicate {
            tracing::debug!(invocation.id = %request.id, "duplicate publish ignored");
        } else {
            if let Some((held, _)) = self
                .inner
                .namespace_held
                .lock()
                .get_mut(&request.function.namespace)
            {
                *held += 1;
            }
            let f = &request.function;
            let consumer = subjects::bus_function_consumer_lane(
                &self.inner.prefix,
                &f.namespace,
                &f.name,
                request.priority,
            );
            self.hint(&consumer, Hint::Work).await;
        }
        Ok(())
    }

    /// Pulls up to `max` invocations (at least one unless `wait` ends first), round-robin over
    /// the function consumers with work, waiting up to `wait`. For as long as it runs, its
    /// `max` free slots are offered to direct sync work (see `direct`), which it returns as
    /// it comes, with what it fetched meanwhile: a pull can return up to twice `max` (a
    /// fetch asks for the slots still offered when it starts, and direct work may take them
    /// while it runs); the caller runs the rest as its slots free.
    pub(super) async fn pull_work(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, BusError> {
        self.start_listener().await?;
        self.start_direct().await?;
        let max = max.max(1);
        let deadline = Instant::now() + wait;
        let intake = &self.inner.direct_intake;
        intake.offer(max);
        // Withdrawn however this pull ends (also when its caller drops it).
        let _offer = Withdraw(intake);
        loop {
            // Registered before looking, so a hint (or direct work) that lands meanwhile is
            // not missed.
            let wake = self.inner.pull.wake.notified();
            tokio::pin!(wake);
            wake.as_mut().enable();
            // Direct work taken on the offer: run at once.
            if intake.has_taken() {
                return Ok(intake.withdraw());
            }
            let sweep_due = self
                .ring()
                .last_sweep
                .is_none_or(|at| at.elapsed() >= SWEEP_INTERVAL);
            if sweep_due {
                self.sweep().await?;
            }
            let messages = self.fetch_round(intake.offered().max(1)).await?;
            if !messages.is_empty() {
                let mut deliveries = intake.withdraw();
                for message in messages {
                    match self.delivery(message).await {
                        Ok(delivery) => deliveries.extend(delivery),
                        // Not settled: the server delivers it again after its ack wait.
                        Err(e) => {
                            tracing::warn!(error = %e, "a fetched work message could not be read")
                        }
                    }
                }
                if !deliveries.is_empty() {
                    return Ok(deliveries);
                }
                intake.offer(max);
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(intake.withdraw());
            }
            let next_sweep = self.ring().last_sweep.map_or(now, |at| at + SWEEP_INTERVAL);
            tokio::select! {
                () = &mut wake => {}
                () = tokio::time::sleep_until(next_sweep.min(deadline)) => {}
            }
        }
    }

    /// The work stream's and event consumer's counts, per function.
    pub(super) async fn stats(&self) -> Result<QueueStats, BusError> {
        let mut work = self.inner.work_stream.clone();
        let invocations = work
            .info()
            .await
            .map_err(|e| backend("work stream info", e))?
            .state
            .messages;
        // Only functions with messages in the stream have work queued or in flight: each one's
        // consumer is read.
        let mut functions = Vec::new();
        for (namespace, function, priority) in self.functions_with_messages().await? {
            let name = subjects::bus_function_consumer_lane(
                &self.inner.prefix,
                &namespace,
                &function,
                priority,
            );
            let Ok(info) = self.inner.work_stream.consumer_info(&name).await else {
                continue;
            };
            if info.num_pending == 0 && info.num_ack_pending == 0 {
                continue;
            }
            functions.push(FunctionQueue {
                namespace: namespace.to_string(),
                function: function.to_string(),
                priority,
                pending: info.num_pending,
                in_flight: u64::try_from(info.num_ack_pending).unwrap_or(0),
                max_in_flight: u64::try_from(info.config.max_ack_pending).unwrap_or(0),
            });
        }
        functions.sort_by(|a, b| {
            (&a.namespace, &a.function, a.priority).cmp(&(&b.namespace, &b.function, b.priority))
        });
        let mut events = self.events()?.clone();
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

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.inner
            .pull
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Tells pulling nodes that `consumer` may have work or room ([`Hint`]). Core NATS, best
    /// effort: a lost hint costs at most one sweep interval.
    pub(super) async fn hint(&self, consumer: &str, hint: Hint) {
        let subject = subjects::bus_work_ready(&self.inner.prefix);
        let payload = format!("{}{consumer}", hint.prefix());
        if let Err(e) = self.inner.client.publish(subject, payload.into()).await {
            tracing::debug!(error = %e, "work hint not sent");
        }
    }

    /// A delivery of `consumer` was settled on this node, which so has a slot free: its next
    /// pull fetches from the consumer again. That fetch waits at the server (up to its expiry)
    /// when nothing is pending, so the consumer's next message, published meanwhile, is
    /// delivered to it at once, without the publish's hint and a fetch after it: a function
    /// called steadily always has a fetch waiting. Measured (`fnmesh bench mesh`, one node,
    /// runs alternating): without it mesh c=1 p50 was 1,073–1,494 µs against 1,037–1,119.
    /// Only this node: a freed hint used to make every node fetch, each fetch held for its
    /// whole expiry and followed by a consumer-info request on all but one of them.
    pub(super) fn settled_here(&self, consumer: &str) {
        {
            let mut ring = self.ring();
            ring.capped.remove(consumer);
            ring.mark_hot(consumer);
        }
        self.inner.pull.wake.notify_one();
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
                        let Some((hint, name)) = Hint::parse(text) else {
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
                            let capped = ring.capped.contains(name);
                            let look = match hint {
                                Hint::Work => !capped,
                                Hint::Freed => capped,
                                Hint::Returned => true,
                            };
                            if !look {
                                continue;
                            }
                            if !ring.listed.contains(name) && !ring.known.contains_key(name) {
                                if ring.unknown_taken >= UNKNOWN_HINT_BUDGET {
                                    drop(ring);
                                    inner
                                        .signatures
                                        .rejections
                                        .count(fnmesh_core::signing::Rejection::UnknownConsumer);
                                    continue;
                                }
                                ring.unknown_taken += 1;
                            }
                            ring.missing.remove(name);
                            if hint != Hint::Work {
                                ring.capped.remove(name);
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

    /// The function lanes with messages in the work stream (pending, in flight or due for
    /// redelivery: a work-queue stream keeps a message until it is acked), from one stream-info
    /// request with a subjects filter, which lists only subjects holding messages.
    async fn functions_with_messages(
        &self,
    ) -> Result<
        Vec<(
            fnmesh_core::Namespace,
            fnmesh_core::FunctionName,
            fnmesh_core::Priority,
        )>,
        BusError,
    > {
        let prefix = &self.inner.prefix;
        let mut subjects = self
            .inner
            .work_stream
            .info_with_subjects(subjects::bus_invocations_all(prefix))
            .await
            .map_err(|e| backend("reading the work stream's subjects", e))?;
        let mut functions = Vec::new();
        while let Some(entry) = subjects.next().await {
            let (subject, _) =
                entry.map_err(|e| backend("reading the work stream's subjects", e))?;
            functions.extend(subjects::parse_bus_invocation(prefix, &subject));
        }
        Ok(functions)
    }

    /// Reads which functions have messages in the work stream (one stream-info request that
    /// lists only subjects holding messages: work pending, in flight or due for redelivery)
    /// and makes their consumers hot. This finds work that became ready without a hint:
    /// redeliveries after an ack wait, ends of nak delays, lost hints. Its cost grows with the
    /// functions that have work, not with the functions deployed (listing every consumer, as
    /// it did, made 10,000 idle functions cost most of a core across the mesh).
    async fn sweep(&self) -> Result<(), BusError> {
        let prefix = &self.inner.prefix;
        let found: std::collections::HashSet<String> = self
            .functions_with_messages()
            .await?
            .iter()
            .map(|(namespace, function, priority)| {
                subjects::bus_function_consumer_lane(prefix, namespace, function, *priority)
            })
            .collect();
        let mut ring = self.ring();
        // A consumer without a message in the stream has nothing in flight: not capped.
        ring.capped.retain(|name| found.contains(name));
        // Capped ones too: a redelivery (after a crashed node's ack wait) is delivered even at
        // the cap, and nothing else would look for it; a fetch tells capped from not.
        for name in &found {
            ring.mark_hot(name);
        }
        // Handles are kept (one lookup per consumer and process); a failed fetch drops one.
        if ring.known.len() > MAX_KNOWN_CONSUMERS {
            ring.known.retain(|name, _| found.contains(name));
        }
        ring.listed = found;
        ring.missing.retain(|_, at| at.elapsed() < MISSING_RETRY);
        ring.unknown_taken = 0;
        ring.last_sweep = Some(Instant::now());
        Ok(())
    }

    /// The handle of consumer `name` (looked up once). A consumer the server does not have
    /// while the last sweep saw work for it (deleted after its inactive threshold) is asked
    /// for: gateways make it again ([`JetStreamBus::serve_consumer_repairs`]).
    async fn consumer(&self, name: &str) -> Result<consumer::PullConsumer, BusError> {
        {
            let ring = self.ring();
            if let Some(c) = ring.known.get(name) {
                return Ok(c.clone());
            }
            if ring
                .missing
                .get(name)
                .is_some_and(|at| at.elapsed() < MISSING_RETRY)
            {
                return Err(BusError::Backend(format!(
                    "work consumer {name} does not exist (reported)"
                )));
            }
        }
        let c: consumer::PullConsumer = match self.inner.work_stream.get_consumer(name).await {
            Ok(c) => c,
            Err(e) => {
                let missing = e
                    .downcast_ref::<jetstream::context::ConsumerInfoError>()
                    .is_some_and(|e| {
                        matches!(
                            e.kind(),
                            jetstream::context::ConsumerInfoErrorKind::NotFound
                        )
                    });
                let listed = {
                    let mut ring = self.ring();
                    if missing {
                        ring.missing.insert(name.to_owned(), Instant::now());
                    }
                    ring.listed.contains(name)
                };
                if missing && listed {
                    let subject = subjects::bus_consumer_missing(&self.inner.prefix);
                    if let Err(e) = self
                        .inner
                        .client
                        .publish(subject, name.to_owned().into())
                        .await
                    {
                        tracing::debug!(error = %e, "missing consumer not reported");
                    }
                }
                return Err(backend("looking up a work consumer", e));
            }
        };
        self.ring().known.insert(name.to_owned(), c.clone());
        Ok(c)
    }

    /// Starts (once; gateways) the task that makes function consumers again when nodes find
    /// work without one: the server deleted it after its inactive threshold while no node had
    /// room, or between a publish and the pull that would have kept it. One gateway of the
    /// region takes each report (a queue group); the report names a consumer, and only a
    /// well-formed name of this bus whose subject holds work is acted on, at most
    /// [`REPAIR_BUDGET`] a second and once a second per name (anyone who may publish reports,
    /// every node, could make names up).
    pub(super) async fn serve_consumer_repairs(&self) -> Result<(), BusError> {
        self.inner
            .repairs
            .listener
            .get_or_try_init(|| async {
                let mut reports = self
                    .inner
                    .client
                    .queue_subscribe(
                        subjects::bus_consumer_missing(&self.inner.prefix),
                        "fnmesh-consumer-repairs".to_owned(),
                    )
                    .await
                    .map_err(|e| backend("subscribing to missing-consumer reports", e))?;
                let weak = Arc::downgrade(&self.inner);
                tokio::spawn(async move {
                    while let Some(message) = reports.next().await {
                        let Some(inner) = weak.upgrade() else { break };
                        let bus = JetStreamBus { inner };
                        let Ok(name) = std::str::from_utf8(&message.payload) else {
                            continue;
                        };
                        let Some((namespace, function, priority)) =
                            subjects::parse_function_consumer(&bus.inner.prefix, name)
                        else {
                            continue;
                        };
                        if !bus.inner.repairs.admit(name) {
                            continue;
                        }
                        match bus
                            .repair_function_consumer(&namespace, &function, priority)
                            .await
                        {
                            Ok(true) => {
                                tracing::info!(nats.consumer = %name, "work waited for a function consumer the server had deleted: made again");
                                bus.hint(name, Hint::Work).await;
                            }
                            Ok(false) => {}
                            Err(e) => {
                                tracing::warn!(nats.consumer = %name, error = %e, "a missing function consumer was not made again")
                            }
                        }
                    }
                });
                Ok::<(), BusError>(())
            })
            .await?;
        Ok(())
    }

    /// Fills up to `max` slots from the hot consumers: the slots are shared between the
    /// priorities with hot consumers by the ring's [`fnmesh_core::priority::Share`], each
    /// priority's share fetched from its ring ([`Self::fetch_lane_ring`]); slots a priority
    /// left unfilled (its consumers had less than they were asked for) go to the others, high
    /// first.
    async fn fetch_round(&self, max: usize) -> Result<Vec<jetstream::Message>, BusError> {
        let allot = {
            let mut ring = self.ring();
            let waiting = [0, 1, 2].map(|i| !ring.order[i].is_empty());
            ring.share.split(max, waiting)
        };
        let mut found = Vec::new();
        // Consumers that gave less than they were asked for this round: not fetched again in
        // it. A hint that names one meanwhile is most often the hint of a message this round
        // got already (the gateway hints after its PubAck, the server delivers at once); a
        // second fetch of it would find nothing and hold the round, and what it found, for the
        // whole fetch expiry. It stays hot for the next pull.
        let mut drained = std::collections::HashSet::new();
        for (lane, wanted) in allot.into_iter().enumerate() {
            if wanted > 0 {
                found.extend(self.fetch_lane_ring(lane, wanted, &mut drained).await?);
            }
        }
        for lane in 0..3 {
            let wanted = max.saturating_sub(found.len());
            if wanted == 0 {
                break;
            }
            found.extend(self.fetch_lane_ring(lane, wanted, &mut drained).await?);
        }
        Ok(found)
    }

    /// Tries the hot consumers of priority ring `lane` once each, round-robin, until `max` messages are found: each
    /// is asked for its share of what is still wanted (so one round trip can fill several
    /// slots, and a flooded function never takes every slot while others have work). A
    /// consumer that gave all it was asked for stays hot, at the back; one that gave less has
    /// nothing more right now and cools, unless a hint came meanwhile; it joins `drained` and
    /// is skipped (left hot, at the back) by later calls of the same round.
    async fn fetch_lane_ring(
        &self,
        lane: usize,
        max: usize,
        drained: &mut std::collections::HashSet<String>,
    ) -> Result<Vec<jetstream::Message>, BusError> {
        let rounds = self.ring().order[lane].len();
        let mut found = Vec::new();
        for tried in 0..rounds {
            let wanted = max.saturating_sub(found.len());
            if wanted == 0 {
                break;
            }
            let (name, generation) = {
                let mut ring = self.ring();
                let Some(name) = ring.order[lane].pop_front() else {
                    break;
                };
                if drained.contains(&name) {
                    ring.order[lane].push_back(name);
                    continue;
                }
                let generation = ring.hot.get(&name).copied().unwrap_or(0);
                (name, generation)
            };
            let share = wanted.div_ceil(rounds - tried);
            let started = Instant::now();
            let (got, held, again) = match self.consumer(&name).await {
                Ok(mut c) => {
                    let got = fetch_now(&c, share).await;
                    let (held, again) = match &got {
                        // An empty answer that took the whole expiry: the server held the
                        // request because the consumer has nothing pending (a fetch then waits
                        // out its expiry for new work), or because it is at its max_ack_pending,
                        // or this process was just slow (a busy node on a small machine). Only
                        // the consumer's counts tell; a consumer wrongly marked capped would
                        // ignore work hints until the next sweep. One with work pending and
                        // room again was freed since the server gave up on the request, and the
                        // freeing settlement's hint passes over consumers not held capped: it
                        // stays hot, to be fetched once more.
                        Ok(m) if m.is_empty() && started.elapsed() >= FETCH_EXPIRY => {
                            match room(&mut c).await {
                                Room::Capped => (true, false),
                                Room::Work => (false, true),
                                Room::Idle => (false, false),
                            }
                        }
                        // Less than asked while the server still had work for it: the cap
                        // stopped the delivery (or the fetch broke off). What came is settled
                        // on this node, and each settlement makes it hot again (`settled_here`).
                        Ok(m) if m.len() < share => {
                            let more = m
                                .last()
                                .and_then(|last| last.info().ok())
                                .is_some_and(|info| info.pending > 0);
                            (more, false)
                        }
                        _ => (false, false),
                    };
                    (got, held, again)
                }
                Err(e) => (Err(e), false, false),
            };
            let mut ring = self.ring();
            if got.is_ok() && !held {
                // Delivered, or answered at once: not at its cap.
                ring.capped.remove(&name);
            }
            match got {
                Ok(messages) if messages.len() >= share => {
                    // It may have more: keep it hot, at the back.
                    ring.order[lane].push_back(name);
                    found.extend(messages);
                }
                Ok(_) | Err(_) => {
                    drained.insert(name.clone());
                    if let Err(e) = &got {
                        tracing::debug!(consumer = %name, error = %e, "fetch failed; consumer cooled");
                        ring.known.remove(&name);
                    }
                    if held {
                        ring.capped.insert(name.clone());
                    }
                    if ring.hot.get(&name) == Some(&generation) && !again {
                        ring.hot.remove(&name);
                    } else {
                        // A hint arrived meanwhile (it woke the pull), or its cap may have
                        // freed (wake the pull for it): try it again.
                        ring.order[lane].push_back(name);
                        if again {
                            self.inner.pull.wake.notify_one();
                        }
                    }
                    if let Ok(messages) = got {
                        found.extend(messages);
                    }
                }
            }
        }
        Ok(found)
    }

    /// [`crate::BusError::LaneFull`] when `namespace` has as much work in the stream as its
    /// share allows. The count is read from the stream (one request for the namespace's
    /// subjects) at most once per [`NAMESPACE_RECOUNT`] and grows with each publish meanwhile;
    /// a count that cannot be read lets the publish through (the stream's own limits still hold).
    async fn check_namespace_room(
        &self,
        namespace: &fnmesh_core::Namespace,
    ) -> Result<(), BusError> {
        let cap = self.inner.namespace_capacity;
        let fresh = {
            let counts = self.inner.namespace_held.lock();
            counts
                .get(namespace)
                .filter(|(_, at)| at.elapsed() < NAMESPACE_RECOUNT)
                .map(|(n, _)| *n)
        };
        let held = match fresh {
            Some(n) => n,
            None => {
                let filter = subjects::bus_invocations_of_namespace(&self.inner.prefix, namespace);
                let counted = async {
                    let mut subjects = self
                        .inner
                        .work_stream
                        .info_with_subjects(filter)
                        .await
                        .map_err(|e| backend("counting a namespace's work", e))?;
                    let mut total = 0u64;
                    while let Some(entry) = subjects.next().await {
                        let (_, n) =
                            entry.map_err(|e| backend("counting a namespace's work", e))?;
                        total = total.saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
                    }
                    Ok::<u64, BusError>(total)
                }
                .await;
                match counted {
                    Ok(n) => {
                        let mut counts = self.inner.namespace_held.lock();
                        if counts.len() >= 10_000 {
                            counts.retain(|_, (_, at)| at.elapsed() < NAMESPACE_RECOUNT);
                        }
                        counts.insert(namespace.clone(), (n, Instant::now()));
                        n
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, namespace = %namespace, "namespace work not counted");
                        0
                    }
                }
            }
        };
        if held >= cap {
            return Err(BusError::LaneFull(crate::Lane::Namespace));
        }
        Ok(())
    }

    /// Turns a fetched work message into a delivery; `None` (after terminating it) for a
    /// message nothing can ever run.
    async fn delivery(&self, message: jetstream::Message) -> Result<Option<Delivery>, BusError> {
        let info = message.info().map_err(|e| backend("message info", e))?;
        let attempt = u32::try_from(info.delivered.max(1)).unwrap_or(u32::MAX);
        let consumer = info.consumer.to_owned();
        let stream_seq = info.stream_sequence;
        let (request, limits) = match self.check_work(&message, attempt, stream_seq) {
            Ok(checked) => checked,
            Err(reason) => {
                self.inner.signatures.rejections.count(reason);
                tracing::warn!(
                    subject = %message.subject,
                    stream.seq = stream_seq,
                    reason = %reason,
                    "work message refused: not run, terminated"
                );
                let _ = message.ack_with(AckKind::Term).await;
                return Ok(None);
            }
        };
        // Signed (see `signed`), so a reply header that is there is the gateway's own.
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
            Some(LastAttempt::watched(
                self.clone(),
                request.id,
                stream_seq,
                attempt,
                self.inner.ack_wait,
            ))
        } else {
            None
        };
        Ok(Some(Delivery {
            request,
            reply_to,
            attempt,
            expires_at: limits.expires_at(),
            acker: Box::new(JetStreamAcker {
                message,
                confirm: true,
                last,
                freed: Some((self.clone(), consumer)),
            }),
        }))
    }
}

/// The priority ring of a function consumer's name (index in [`fnmesh_core::Priority::ALL`]).
fn lane_of(name: &str) -> usize {
    subjects::function_consumer_priority(name).index()
}

/// Fetches at most `max` messages that are available right now (no waiting on the server).
async fn fetch_now(
    consumer: &consumer::PullConsumer,
    max: usize,
) -> Result<Vec<jetstream::Message>, BusError> {
    // `no_wait` answers at once with what is pending, but a consumer at its max_ack_pending
    // holds the request: the expiry bounds that wait (the server answers "request timeout").
    let mut batch = consumer
        .fetch()
        .max_messages(max)
        .expires(FETCH_EXPIRY)
        .messages()
        .await
        .map_err(|e| backend("fetching an invocation", e))?;
    let mut messages = Vec::new();
    while let Some(message) = batch.next().await {
        match message {
            Ok(message) => messages.push(message),
            // What came before the error was delivered: it is handed out, and its consumer
            // is tried again in the next round.
            Err(e) if !messages.is_empty() => {
                tracing::debug!(error = %e, "a fetch ended early");
                break;
            }
            Err(e) => return Err(backend("fetching an invocation", e)),
        }
    }
    Ok(messages)
}

/// What a consumer's counts say after a fetch came back empty.
enum Room {
    /// As many deliveries pending acknowledgement as its max_ack_pending allows (also when its
    /// counts cannot be read: the cautious answer, undone by the next sweep).
    Capped,
    /// Work pending and room for it.
    Work,
    /// Nothing pending.
    Idle,
}

/// Reads `consumer`'s counts ([`Room`]).
async fn room(consumer: &mut consumer::PullConsumer) -> Room {
    match consumer.info().await {
        Ok(info) => {
            let capped = info.config.max_ack_pending > 0
                && i64::try_from(info.num_ack_pending).unwrap_or(i64::MAX)
                    >= info.config.max_ack_pending;
            if capped {
                Room::Capped
            } else if info.num_pending > 0 {
                Room::Work
            } else {
                Room::Idle
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, "reading a work consumer's counts failed");
            Room::Capped
        }
    }
}
