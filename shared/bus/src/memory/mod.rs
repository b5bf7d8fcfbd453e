//! The in-process bus used by `fnmesh up`: the same delivery semantics as JetStream, kept in
//! memory (nothing survives a restart).
//!
//! One mutex guards all queue state; nothing awaits while holding it. Two queues share one
//! implementation ([`Queue`]): invocations (bounded by [`BusConfig::capacity`], dead-lettered
//! after [`BusConfig::max_deliver`] attempts) and node events (bounded by
//! [`BusConfig::event_capacity`], redelivered until acked or termed). Ack-wait and nak-delay deadlines sit
//! in a timer heap that is processed lazily by every operation; pullers sleep until the earliest
//! deadline or a [`Notify`], so a waiting puller sees a redelivery on time without a background
//! task or a busy loop.
//!
//! Invocations queue in one lane per function and are delivered round-robin over the lanes
//! with ready work, each lane holding at most its function's `max_concurrency` deliveries in
//! flight: a flooded or slow function never holds up another (the same policy the JetStream
//! bus gets from one consumer per function).
//!
//! Every delivery carries its attempt number and its acker is fenced on it: a stale acker (of a
//! delivery that has since been redelivered) settles nothing.
//!
//! **Layout.** This module holds [`MemoryBus`], its shared state and its [`Bus`] impl; `queue`
//! is the laned queue with its timers, `inbox` the reply inboxes.

mod inbox;
mod queue;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use self::inbox::parse_reply;
use self::queue::{ItemState, Queue, Settle};
use super::{
    Acker, Bus, BusConfig, BusError, CancelFeed, DeadLetter, Delivery, EventDelivery,
    FunctionQueue, Inbox, LogFeed, QueueStats, Receipt, ReplyTo, LOG_FEED_CAPACITY,
};
use fnmesh_core::ids::InvocationId;
use fnmesh_core::invocation::{FunctionLogs, InvocationOutcome, InvocationRequest, NodeEvent};
use fnmesh_core::names::{FunctionName, Namespace};

/// Published invocation ids remembered for dedupe at most (the oldest are forgotten first).
pub const MAX_DEDUPE_IDS: usize = 1_000_000;

/// The in-process [`Bus`].
#[derive(Debug, Clone)]
pub struct MemoryBus {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    config: BusConfig,
    state: Mutex<State>,
    invocations_ready: Notify,
    events_ready: Notify,
    dead_ready: Notify,
    closed: AtomicBool,
    /// Distinguishes this bus's reply addresses from another instance's.
    instance: u64,
    next_inbox: AtomicU64,
    inboxes: Mutex<HashMap<u64, mpsc::Sender<InvocationOutcome>>>,
    /// Receipts asked for by replies that reached an inbox, by invocation id.
    receipts: Mutex<HashMap<InvocationId, tokio::sync::oneshot::Sender<()>>>,
    /// Live function output for followers (`follow_logs`); nothing is kept.
    logs: tokio::sync::broadcast::Sender<Arc<FunctionLogs>>,
    /// Cancelled invocation ids for nodes (`follow_cancellations`); nothing is kept.
    cancels: tokio::sync::broadcast::Sender<InvocationId>,
}

#[derive(Debug)]
struct State {
    invocations: Queue<Work>,
    events: Queue<NodeEvent>,
    dead: VecDeque<DeadLetter>,
    dedupe: HashMap<InvocationId, Instant>,
    dedupe_order: VecDeque<(Instant, InvocationId)>,
}

#[derive(Debug, Clone)]
struct Work {
    request: InvocationRequest,
    reply: Option<ReplyTo>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Invocations,
    Events,
}

impl MemoryBus {
    /// A new, empty bus.
    pub fn new(config: BusConfig) -> Self {
        let capacity = config.capacity.max(1);
        let max_deliver = config.max_deliver.max(1);
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    invocations: Queue::new(
                        capacity,
                        Some(max_deliver),
                        config.function_capacity.max(1),
                        config.namespace_capacity.max(1),
                    ),
                    events: Queue::new(config.event_capacity.max(1), None, usize::MAX, usize::MAX),
                    dead: VecDeque::new(),
                    dedupe: HashMap::new(),
                    dedupe_order: VecDeque::new(),
                }),
                config,
                invocations_ready: Notify::new(),
                events_ready: Notify::new(),
                dead_ready: Notify::new(),
                closed: AtomicBool::new(false),
                instance: rand::random(),
                next_inbox: AtomicU64::new(1),
                inboxes: Mutex::new(HashMap::new()),
                receipts: Mutex::new(HashMap::new()),
                logs: tokio::sync::broadcast::channel(LOG_FEED_CAPACITY).0,
                cancels: tokio::sync::broadcast::channel(LOG_FEED_CAPACITY).0,
            }),
        }
    }

    /// Closes the bus: waiting pullers return and every later call fails with
    /// [`BusError::Closed`]. Undelivered work is dropped (this bus is not durable).
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.invocations_ready.notify_waiters();
        self.shared.events_ready.notify_waiters();
        self.shared.dead_ready.notify_waiters();
        tracing::debug!("memory bus closed");
    }

    /// Invocations accepted and not yet settled (queued, in flight or waiting to be retried).
    pub fn queued_invocations(&self) -> usize {
        self.shared.lock().invocations.items.len()
    }

    fn stats(&self) -> QueueStats {
        let state = self.shared.lock();
        let mut functions: BTreeMap<&str, FunctionQueue> = BTreeMap::new();
        for item in state.invocations.items.values() {
            let entry = functions.entry(item.lane.as_str()).or_insert_with(|| {
                let f = &item.payload.request.function;
                FunctionQueue {
                    namespace: f.namespace.to_string(),
                    function: f.name.to_string(),
                    priority: item.payload.request.priority,
                    pending: 0,
                    in_flight: 0,
                    max_in_flight: state
                        .invocations
                        .lanes
                        .get(&item.lane)
                        .map_or(u64::from(f.config.max_concurrency), |l| u64::from(l.cap)),
                }
            });
            if item.state == ItemState::InFlight {
                entry.in_flight += 1;
            } else {
                entry.pending += 1;
            }
        }
        QueueStats {
            invocations: state.invocations.items.len() as u64,
            events: state.events.items.len() as u64,
            functions: functions.into_values().collect(),
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // No invariant spans a panic point, so a poisoned lock's state is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn check_open(&self) -> Result<(), BusError> {
        if self.closed.load(Ordering::SeqCst) {
            Err(BusError::Closed)
        } else {
            Ok(())
        }
    }

    fn notify(&self, which: Which, ready: usize) {
        let notify = match which {
            Which::Invocations => &self.invocations_ready,
            Which::Events => &self.events_ready,
        };
        for _ in 0..ready {
            notify.notify_one();
        }
    }

    /// Fires due timers of both queues: nak delays end, ack waits expire (redelivery or dead
    /// letter). Wakes whoever can use the result.
    fn process_timers(&self, state: &mut State, now: Instant) {
        let mut dead = Vec::new();
        let ready = state.invocations.fire_timers(now, &mut dead);
        self.notify(Which::Invocations, ready);
        self.dead_letter(state, dead);
        let mut never = Vec::new();
        let ready = state.events.fire_timers(now, &mut never);
        self.notify(Which::Events, ready);
    }

    fn dead_letter(&self, state: &mut State, dead: Vec<(Work, u32)>) {
        for (work, attempts) in dead {
            tracing::warn!(
                invocation.id = %work.request.id,
                invocation.attempts = attempts,
                "invocation attempts ran out; dead-lettered"
            );
            if state.dead.len() >= self.config.capacity.max(1) {
                if let Some(lost) = state.dead.pop_front() {
                    tracing::error!(
                        invocation.id = %lost.request.id,
                        "dead-letter queue full; oldest dead letter dropped"
                    );
                }
            }
            state.dead.push_back(DeadLetter {
                request: work.request,
                attempts,
            });
            self.dead_ready.notify_one();
        }
    }

    /// Waits up to `wait` for `take` to produce something, waking on `notify` and at the
    /// earliest timer of `which`.
    async fn wait_for<R>(
        &self,
        wait: Duration,
        notify: &Notify,
        which: Which,
        mut take: impl FnMut(&mut State, Instant) -> Option<R>,
    ) -> Result<Option<R>, BusError> {
        let deadline = Instant::now() + wait;
        loop {
            self.check_open()?;
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let next_due = {
                let mut state = self.lock();
                let now = Instant::now();
                self.process_timers(&mut state, now);
                if let Some(found) = take(&mut state, now) {
                    return Ok(Some(found));
                }
                match which {
                    Which::Invocations => state.invocations.next_due(),
                    Which::Events => state.events.next_due(),
                }
            };
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let wake = next_due.map_or(deadline, |due| due.min(deadline));
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    fn settle(&self, which: Which, seq: u64, attempt: u32, how: Settle) -> Result<(), BusError> {
        self.check_open()?;
        let mut state = self.lock();
        let now = Instant::now();
        self.process_timers(&mut state, now);
        let ack_wait = self.config.ack_wait;
        match which {
            Which::Invocations => {
                let mut dead = Vec::new();
                let ready = state
                    .invocations
                    .settle(seq, attempt, how, now, ack_wait, &mut dead);
                self.notify(Which::Invocations, ready);
                self.dead_letter(&mut state, dead);
            }
            Which::Events => {
                let mut never = Vec::new();
                let ready = state
                    .events
                    .settle(seq, attempt, how, now, ack_wait, &mut never);
                self.notify(Which::Events, ready);
            }
        }
        Ok(())
    }

    fn forget_expired_ids(&self, state: &mut State, now: Instant) {
        let window = self.config.dedupe_window;
        while let Some((at, id)) = state.dedupe_order.front().copied() {
            let expired = now.duration_since(at) >= window;
            if !expired && state.dedupe_order.len() <= MAX_DEDUPE_IDS {
                break;
            }
            state.dedupe_order.pop_front();
            if state.dedupe.get(&id) == Some(&at) {
                state.dedupe.remove(&id);
            }
        }
    }
}

// ---- ackers ----

struct MemoryAcker {
    shared: Arc<Shared>,
    which: Which,
    seq: u64,
    attempt: u32,
}

#[async_trait]
impl Acker for MemoryAcker {
    async fn ack(&self) -> Result<(), BusError> {
        self.shared
            .settle(self.which, self.seq, self.attempt, Settle::Ack)
    }

    async fn nak(&self, delay: Option<Duration>) -> Result<(), BusError> {
        self.shared
            .settle(self.which, self.seq, self.attempt, Settle::Nak(delay))
    }

    async fn in_progress(&self) -> Result<(), BusError> {
        self.shared
            .settle(self.which, self.seq, self.attempt, Settle::InProgress)
    }

    async fn term(&self) -> Result<(), BusError> {
        self.shared
            .settle(self.which, self.seq, self.attempt, Settle::Term)
    }

    fn holds_back_work(&self) -> bool {
        self.which == Which::Invocations && self.shared.lock().invocations.waits_behind(self.seq)
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn ping(&self) -> Result<(), BusError> {
        self.shared.check_open()
    }

    fn ack_wait(&self) -> Duration {
        self.shared.config.ack_wait
    }

    async fn publish_invocation(
        &self,
        request: &InvocationRequest,
        reply: Option<&ReplyTo>,
    ) -> Result<(), BusError> {
        let shared = &self.shared;
        shared.check_open()?;
        if let Some(reply) = reply {
            if !parse_reply(shared.instance, reply)?.0 {
                return Err(BusError::InvalidReply);
            }
        }
        let mut state = shared.lock();
        let now = Instant::now();
        shared.process_timers(&mut state, now);
        shared.forget_expired_ids(&mut state, now);
        if state.dedupe.contains_key(&request.id) {
            tracing::debug!(invocation.id = %request.id, "duplicate publish ignored");
            return Ok(());
        }
        state.invocations.push(Work {
            request: request.clone(),
            reply: reply.cloned(),
        })?;
        state.dedupe.insert(request.id, now);
        state.dedupe_order.push_back((now, request.id));
        shared.invocations_ready.notify_one();
        Ok(())
    }

    async fn pull_invocation(&self, wait: Duration) -> Result<Option<Delivery>, BusError> {
        let shared = &self.shared;
        let ack_wait = shared.config.ack_wait;
        let found = shared
            .wait_for(
                wait,
                &shared.invocations_ready,
                Which::Invocations,
                |state, now| state.invocations.take(now, ack_wait),
            )
            .await?;
        Ok(found.map(|(seq, attempt, work)| Delivery {
            request: work.request,
            reply_to: work.reply,
            attempt,
            expires_at: None,
            acker: Box::new(MemoryAcker {
                shared: shared.clone(),
                which: Which::Invocations,
                seq,
                attempt,
            }),
        }))
    }

    async fn open_inbox(&self) -> Result<Inbox, BusError> {
        self.open_reply_inbox()
    }

    async fn reply(&self, to: &ReplyTo, outcome: &InvocationOutcome) -> Result<(), BusError> {
        self.send_reply(to, outcome).map(|_| ())
    }

    async fn reply_with_receipt(
        &self,
        to: &ReplyTo,
        outcome: &InvocationOutcome,
    ) -> Result<Receipt, BusError> {
        self.reply_for_receipt(to, outcome)
    }

    async fn confirm_stored(&self, id: InvocationId) -> bool {
        self.confirm_receipt(id)
    }

    async fn publish_event(&self, event: &NodeEvent) -> Result<(), BusError> {
        let shared = &self.shared;
        shared.check_open()?;
        let mut state = shared.lock();
        shared.process_timers(&mut state, Instant::now());
        state.events.push(event.clone())?;
        shared.events_ready.notify_one();
        Ok(())
    }

    async fn pull_events(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<EventDelivery>, BusError> {
        let shared = &self.shared;
        let ack_wait = shared.config.ack_wait;
        let max = max.max(1);
        let found = shared
            .wait_for(wait, &shared.events_ready, Which::Events, |state, now| {
                let mut taken = Vec::new();
                while taken.len() < max {
                    match state.events.take(now, ack_wait) {
                        Some(item) => taken.push(item),
                        None => break,
                    }
                }
                (!taken.is_empty()).then_some(taken)
            })
            .await?;
        Ok(found
            .unwrap_or_default()
            .into_iter()
            .map(|(seq, attempt, event)| EventDelivery {
                event,
                acker: Box::new(MemoryAcker {
                    shared: shared.clone(),
                    which: Which::Events,
                    seq,
                    attempt,
                }),
            })
            .collect())
    }

    async fn queue_stats(&self) -> Result<QueueStats, BusError> {
        self.shared.check_open()?;
        Ok(self.stats())
    }

    async fn pull_dead_letter(&self, wait: Duration) -> Result<Option<DeadLetter>, BusError> {
        let shared = &self.shared;
        shared
            .wait_for(wait, &shared.dead_ready, Which::Invocations, |state, _| {
                state.dead.pop_front()
            })
            .await
    }

    async fn cancel(&self, id: &InvocationId) -> Result<(), BusError> {
        self.shared.check_open()?;
        // No receiver is not an error: no node is listening.
        let _ = self.shared.cancels.send(*id);
        Ok(())
    }

    async fn follow_cancellations(&self) -> Result<CancelFeed, BusError> {
        self.shared.check_open()?;
        let receiver = self.shared.cancels.subscribe();
        let feed = futures::stream::unfold(receiver, |mut receiver| async move {
            loop {
                match receiver.recv().await {
                    Ok(id) => return Some((id, receiver)),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "a node fell behind on cancellations");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        Ok(Box::pin(feed))
    }

    async fn publish_logs(&self, logs: &FunctionLogs) -> Result<(), BusError> {
        self.shared.check_open()?;
        // No receiver is not an error: nobody is following.
        let _ = self.shared.logs.send(Arc::new(logs.clone()));
        Ok(())
    }

    async fn follow_logs(
        &self,
        namespace: &Namespace,
        function: &FunctionName,
    ) -> Result<LogFeed, BusError> {
        self.shared.check_open()?;
        let receiver = self.shared.logs.subscribe();
        let (namespace, function) = (namespace.clone(), function.clone());
        let feed = futures::stream::unfold(receiver, move |mut receiver| {
            let (namespace, function) = (namespace.clone(), function.clone());
            async move {
                loop {
                    match receiver.recv().await {
                        Ok(logs) if logs.namespace == namespace && logs.function == function => {
                            return Some((FunctionLogs::clone(&logs), receiver));
                        }
                        Ok(_) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                            tracing::debug!(missed, "a log follower fell behind");
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        });
        Ok(Box::pin(feed))
    }
}
