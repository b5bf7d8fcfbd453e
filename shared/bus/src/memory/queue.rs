//! The queue of the in-process bus: items with per-delivery ack deadlines in a timer heap,
//! queued in lanes (one per function and priority) and delivered round-robin over the lanes
//! with ready items and room under their in-flight cap, the priorities sharing deliveries by
//! [`fnmesh_core::priority::Share`] (as a JetStream bus's nodes share their slots).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use super::Work;
use crate::BusError;
use fnmesh_core::invocation::NodeEvent;
use fnmesh_core::priority::{Priority, Share};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Settle {
    Ack,
    Nak(Option<Duration>),
    InProgress,
    Term,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ItemState {
    /// In the ready deque.
    Ready,
    /// Nak'ed with a delay; ready again at the timer.
    Delayed,
    /// Delivered; redelivered at the timer unless settled.
    InFlight,
}

#[derive(Debug)]
pub(super) struct Item<T> {
    pub(super) payload: T,
    /// The lane it queues in.
    pub(super) lane: String,
    /// Deliveries made so far (the attempt number of the latest delivery).
    attempt: u32,
    pub(super) state: ItemState,
    /// Bumped on every state change; timers of an older generation are stale.
    generation: u64,
}

/// What a queue needs to know of a payload: the lane it queues in (one per function, so a
/// flooded function cannot hold up another) and how many of the lane's items may be in flight
/// at once (the function's `max_concurrency`, across every puller).
pub(super) trait Laned {
    fn lane(&self) -> (String, u32);
    /// The priority of the lane (work of each priority of a function queues apart).
    fn priority(&self) -> Priority {
        Priority::Normal
    }
}

impl Laned for Work {
    fn lane(&self) -> (String, u32) {
        let f = &self.request.function;
        let lane = match self.request.priority {
            Priority::Normal => format!("{}/{}", f.namespace, f.name),
            other => format!("{}/{}#{other}", f.namespace, f.name),
        };
        (lane, f.config.max_concurrency.max(1))
    }
    fn priority(&self) -> Priority {
        self.request.priority
    }
}

impl Laned for NodeEvent {
    fn lane(&self) -> (String, u32) {
        (String::new(), u32::MAX)
    }
}

/// One lane of a queue.
#[derive(Debug, Default)]
pub(super) struct Lane {
    /// Ready items in order (entries of items settled meanwhile are skipped).
    ready: VecDeque<u64>,
    /// Items delivered and not yet settled, expired or nak'ed.
    in_flight: u32,
    /// At most this many in flight.
    pub(super) cap: u32,
    /// Whether the lane is in the round-robin ring of its priority.
    in_ring: bool,
}

/// A work queue with per-delivery ack deadlines, fair across lanes: deliveries go round-robin
/// over the lanes with ready items and room under their in-flight cap.
#[derive(Debug)]
pub(super) struct Queue<T> {
    pub(super) items: HashMap<u64, Item<T>>,
    pub(super) lanes: HashMap<String, Lane>,
    /// Lanes that may have ready items, in round-robin order, per priority (high first).
    rings: [VecDeque<String>; 3],
    /// How deliveries are shared between the priorities with ready items.
    share: Share,
    /// (due, seq, generation), earliest first. Stale entries are skipped when they fire.
    timers: BinaryHeap<Reverse<(Instant, u64, u64)>>,
    next_seq: u64,
    capacity: usize,
    max_deliver: Option<u32>,
    /// Items held (queued or in flight) per lane and per group of lanes (a lane's group is
    /// what precedes its `/`: the namespace of a function lane), with their caps.
    held: HashMap<String, usize>,
    held_groups: HashMap<String, usize>,
    lane_capacity: usize,
    group_capacity: usize,
}

/// The group of a lane: the part before its `/` (the namespace of `namespace/function`).
fn group_of(lane: &str) -> &str {
    lane.split_once('/').map_or(lane, |(group, _)| group)
}

impl<T: Clone + Laned> Queue<T> {
    /// A queue of `capacity` items at most, `lane_capacity` per lane and `group_capacity` per
    /// group of lanes.
    pub(super) fn new(
        capacity: usize,
        max_deliver: Option<u32>,
        lane_capacity: usize,
        group_capacity: usize,
    ) -> Self {
        Self {
            items: HashMap::new(),
            lanes: HashMap::new(),
            rings: Default::default(),
            share: Share::default(),
            timers: BinaryHeap::new(),
            next_seq: 0,
            capacity,
            max_deliver,
            held: HashMap::new(),
            held_groups: HashMap::new(),
            lane_capacity,
            group_capacity,
        }
    }

    pub(super) fn push(&mut self, payload: T) -> Result<(), BusError> {
        let (lane, cap) = payload.lane();
        let group = group_of(&lane).to_owned();
        if self.held.get(&lane).copied().unwrap_or(0) >= self.lane_capacity {
            return Err(BusError::LaneFull(crate::Lane::Function));
        }
        if self.held_groups.get(&group).copied().unwrap_or(0) >= self.group_capacity {
            return Err(BusError::LaneFull(crate::Lane::Namespace));
        }
        if self.items.len() >= self.capacity {
            return Err(BusError::Full);
        }
        *self.held.entry(lane.clone()).or_default() += 1;
        *self.held_groups.entry(group).or_default() += 1;
        let seq = self.next_seq;
        self.next_seq += 1;
        // The latest published config of a function sets its cap.
        self.lanes.entry(lane.clone()).or_default().cap = cap;
        self.items.insert(
            seq,
            Item {
                payload,
                lane: lane.clone(),
                attempt: 0,
                state: ItemState::Ready,
                generation: 0,
            },
        );
        self.enqueue(&lane, seq);
        Ok(())
    }

    /// An item of `lane` left the queue (settled or dead-lettered).
    fn forget(&mut self, lane: &str) {
        for (counts, key) in [
            (&mut self.held, lane),
            (&mut self.held_groups, group_of(lane)),
        ] {
            if let Some(n) = counts.get_mut(key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    counts.remove(key);
                }
            }
        }
    }

    /// Puts `seq` at the back of its lane's ready items.
    fn enqueue(&mut self, lane: &str, seq: u64) {
        let item = self.items.get(&seq);
        let priority = item.map_or(Priority::Normal, |item| item.payload.priority());
        if !self.lanes.contains_key(lane) {
            let cap = item.map_or(u32::MAX, |item| item.payload.lane().1);
            self.lanes.insert(
                lane.to_owned(),
                Lane {
                    cap,
                    ..Lane::default()
                },
            );
        }
        let Some(entry) = self.lanes.get_mut(lane) else {
            return;
        };
        entry.ready.push_back(seq);
        if !entry.in_ring {
            entry.in_ring = true;
            self.rings[priority.index()].push_back(lane.to_owned());
        }
    }

    /// An item of `lane` stopped being in flight. Returns 1 if that lets a ready item of the
    /// lane be delivered (a puller should be woken), else 0.
    fn leave_flight(&mut self, lane: &str) -> usize {
        let Some(entry) = self.lanes.get_mut(lane) else {
            return 0;
        };
        let was_full = entry.in_flight >= entry.cap;
        entry.in_flight = entry.in_flight.saturating_sub(1);
        if entry.in_flight == 0 && entry.ready.is_empty() && !entry.in_ring {
            self.lanes.remove(lane);
            return 0;
        }
        usize::from(was_full && !entry.ready.is_empty())
    }

    /// Delivers the next ready item: (seq, attempt, payload). The priority is picked by the
    /// share among those with lanes in their ring (the others follow, high first, when none of
    /// its lanes can deliver), then round-robin over that priority's lanes with room.
    pub(super) fn take(&mut self, now: Instant, ack_wait: Duration) -> Option<(u64, u32, T)> {
        let waiting = [0, 1, 2].map(|i| !self.rings[i].is_empty());
        let first = self.share.next(waiting)?;
        let order = std::iter::once(first).chain(Priority::ALL.into_iter().filter(|p| *p != first));
        for priority in order {
            if let Some(taken) = self.take_from(priority.index(), now, ack_wait) {
                return Some(taken);
            }
        }
        None
    }

    /// Delivers the next ready item of ring `r`, round-robin over its lanes with room.
    fn take_from(&mut self, r: usize, now: Instant, ack_wait: Duration) -> Option<(u64, u32, T)> {
        for _ in 0..self.rings[r].len() {
            let lane_key = self.rings[r].pop_front()?;
            let Some(lane) = self.lanes.get_mut(&lane_key) else {
                continue;
            };
            // Skip entries of items settled (or re-queued) since they were made ready.
            while let Some(seq) = lane.ready.front() {
                match self.items.get(seq) {
                    Some(item) if item.state == ItemState::Ready => break,
                    _ => {
                        lane.ready.pop_front();
                    }
                }
            }
            if lane.ready.is_empty() {
                lane.in_ring = false;
                if lane.in_flight == 0 {
                    self.lanes.remove(&lane_key);
                }
                continue;
            }
            if lane.in_flight >= lane.cap {
                self.rings[r].push_back(lane_key);
                continue;
            }
            let seq = lane.ready.pop_front()?;
            lane.in_flight += 1;
            if lane.ready.is_empty() {
                lane.in_ring = false;
            } else {
                self.rings[r].push_back(lane_key);
            }
            let item = self.items.get_mut(&seq)?;
            item.attempt += 1;
            item.state = ItemState::InFlight;
            item.generation += 1;
            self.timers
                .push(Reverse((now + ack_wait, seq, item.generation)));
            return Some((seq, item.attempt, item.payload.clone()));
        }
        None
    }

    pub(super) fn next_due(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((due, _, _))| *due)
    }

    /// Makes an item ready again, or dead-letters it when its attempts ran out.
    /// Returns whether it became ready.
    fn retry(&mut self, seq: u64, dead: &mut Vec<(T, u32)>) -> bool {
        let Some(item) = self.items.get_mut(&seq) else {
            return false;
        };
        if self.max_deliver.is_some_and(|max| item.attempt >= max) {
            if let Some(item) = self.items.remove(&seq) {
                self.forget(&item.lane);
                dead.push((item.payload, item.attempt));
            }
            return false;
        }
        item.state = ItemState::Ready;
        item.generation += 1;
        let lane = item.lane.clone();
        self.enqueue(&lane, seq);
        true
    }

    /// Fires due timers; returns how many items became ready.
    pub(super) fn fire_timers(&mut self, now: Instant, dead: &mut Vec<(T, u32)>) -> usize {
        let mut ready = 0;
        while let Some(Reverse((due, seq, generation))) = self.timers.peek().copied() {
            if due > now {
                break;
            }
            self.timers.pop();
            let Some(item) = self.items.get_mut(&seq) else {
                continue;
            };
            if item.generation != generation {
                continue;
            }
            match item.state {
                ItemState::Delayed => {
                    item.state = ItemState::Ready;
                    item.generation += 1;
                    let lane = item.lane.clone();
                    self.enqueue(&lane, seq);
                    ready += 1;
                }
                ItemState::InFlight => {
                    tracing::debug!(
                        bus.seq = seq,
                        bus.attempt = item.attempt,
                        "ack wait expired"
                    );
                    let lane = item.lane.clone();
                    ready += self.leave_flight(&lane);
                    if self.retry(seq, dead) {
                        ready += 1;
                    }
                }
                ItemState::Ready => {}
            }
        }
        ready
    }

    /// Whether item `seq`'s lane has items ready (waiting for room under its cap, or for a
    /// puller). Entries of items settled meanwhile may count: it errs towards yes.
    pub(super) fn waits_behind(&self, seq: u64) -> bool {
        self.items
            .get(&seq)
            .and_then(|item| self.lanes.get(&item.lane))
            .is_some_and(|lane| !lane.ready.is_empty())
    }

    /// Applies an acker's decision, fenced on the attempt. Returns how many items became ready.
    pub(super) fn settle(
        &mut self,
        seq: u64,
        attempt: u32,
        how: Settle,
        now: Instant,
        ack_wait: Duration,
        dead: &mut Vec<(T, u32)>,
    ) -> usize {
        let Some(item) = self.items.get_mut(&seq) else {
            return 0; // already settled
        };
        if item.attempt != attempt {
            return 0; // a stale acker: the item was redelivered since
        }
        match how {
            // The work of this attempt is done, even if its ack wait just expired.
            Settle::Ack | Settle::Term => {
                let was_in_flight = item.state == ItemState::InFlight;
                let lane = item.lane.clone();
                self.items.remove(&seq);
                self.forget(&lane);
                if was_in_flight {
                    self.leave_flight(&lane)
                } else {
                    0
                }
            }
            Settle::Nak(delay) if item.state == ItemState::InFlight => {
                let lane = item.lane.clone();
                match delay {
                    Some(delay)
                        if !delay.is_zero()
                            && self.max_deliver.is_none_or(|m| item.attempt < m) =>
                    {
                        item.state = ItemState::Delayed;
                        item.generation += 1;
                        self.timers
                            .push(Reverse((now + delay, seq, item.generation)));
                        self.leave_flight(&lane)
                    }
                    _ => {
                        let freed = self.leave_flight(&lane);
                        freed + usize::from(self.retry(seq, dead))
                    }
                }
            }
            Settle::InProgress if item.state == ItemState::InFlight => {
                item.generation += 1;
                self.timers
                    .push(Reverse((now + ack_wait, seq, item.generation)));
                0
            }
            Settle::Nak(_) | Settle::InProgress => 0,
        }
    }
}
