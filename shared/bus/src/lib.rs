//! The bus: the work queue between gateways and nodes, the reply path of sync calls, and the
//! stream of node events that recorders persist; in [`registry`], the node registry, and in
//! [`placements`], the feed of what is placed in a region (the other NATS/in-process engines).
//!
//! [`Bus`] is implemented by [`memory::MemoryBus`] (in-process, for `fnmesh up`) and by
//! [`jetstream::JetStreamBus`]; both must pass [`conformance`].
//!
//! Delivery semantics (shared by every implementation):
//! - `publish_invocation` is idempotent on the invocation id within the dedupe window: a
//!   retried publish never makes a second execution.
//! - A delivery not acked within the ack wait (unless `in_progress` extends it) or `nak`ed is
//!   delivered again, with `attempt` + 1, up to `max_deliver` attempts; then it is dropped from
//!   the queue and reported by [`Bus::pull_dead_letter`] (never silently lost).
//! - A full queue refuses the publish with [`BusError::Full`]; a function or namespace with as
//!   much work pending as its share allows, with [`BusError::LaneFull`] (other functions and
//!   namespaces go on); nothing accepted is dropped.
//! - Acks are not fenced by attempt: a stale delivery's ack (of an attempt that has since been
//!   redelivered) may settle a later delivery of the same invocation (JetStream,
//!   nats-server#4786). Records are fenced by attempt in the store. [`memory::MemoryBus`]
//!   happens to fence its ackers, but callers must not rely on it.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use fnmesh_core::ids::InvocationId;
use fnmesh_core::invocation::{FunctionLogs, InvocationOutcome, InvocationRequest, NodeEvent};
use fnmesh_core::names::{FunctionName, Namespace};
use fnmesh_core::signing::{Rejections, SigningKey, TrustedKeys};

pub mod jetstream;
pub mod memory;
mod nats_inbox;
mod nats_receipts;
pub mod placements;
pub mod registry;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

/// Errors of a bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The queue is at capacity; retry later.
    #[error("the invocation queue is full")]
    Full,
    /// One function's or one namespace's share of the queue is full; retry later (other
    /// functions and namespaces are not affected).
    #[error("the {0} has as much work pending as it may")]
    LaneFull(Lane),
    /// The bus is shutting down or disconnected.
    #[error("the bus is closed")]
    Closed,
    /// The broker cannot be reached (not connected, or it did not answer in time): nothing
    /// was published, or it is not known whether it was; retry later.
    #[error("the broker is unavailable: {0}")]
    Unavailable(String),
    /// A reply address this bus did not issue.
    #[error("invalid reply address")]
    InvalidReply,
    /// The backend failed.
    #[error("bus: {0}")]
    Backend(String),
}

/// Which share of the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// One function's pending work ([`BusConfig::function_capacity`]).
    Function,
    /// One namespace's pending work ([`BusConfig::namespace_capacity`]).
    Namespace,
}

impl std::fmt::Display for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Function => "function",
            Self::Namespace => "namespace",
        })
    }
}

/// Tunables every implementation honours.
#[derive(Debug, Clone)]
pub struct BusConfig {
    /// How long a delivery may go without ack or progress before it is redelivered.
    pub ack_wait: Duration,
    /// Attempts before an invocation is dead-lettered.
    pub max_deliver: u32,
    /// Invocations queued (not yet acked) at most, in all.
    pub capacity: usize,
    /// Invocations of one function queued (not yet acked) at most: past it, publishing one
    /// more of that function is [`BusError::LaneFull`] while other functions go on.
    pub function_capacity: usize,
    /// Invocations of one namespace queued (not yet acked) at most, likewise. The JetStream
    /// bus counts a namespace's work from the stream at most once a second and adds what it
    /// published since, so several gateways may overshoot it by what they publish in a second.
    pub namespace_capacity: usize,
    /// How long a published id is remembered for dedupe.
    pub dedupe_window: Duration,
    /// Node events kept (not yet recorded) at most; past it publishing an event is
    /// [`BusError::Full`] until the recorders catch up.
    pub event_capacity: usize,
    /// Whether this process creates and updates the bus's streams and the recorders'
    /// consumers (gateways), or only attaches to what a gateway made (nodes: their NATS
    /// credentials may not manage streams). An attaching JetStream bus waits up to
    /// [`ATTACH_WAIT`] for the work stream to appear, and cannot pull events or dead letters.
    pub manage_streams: bool,
    /// JetStream replicas of the streams a managing bus creates (1; 3 on a 3-server cluster).
    pub replicas: usize,
    /// How long a function's work consumer lives without pulls or acks before the JetStream
    /// server deletes it (the next publish, or a node finding work without one, makes it
    /// again): the server keeps consumers only for functions with recent traffic.
    /// `Duration::ZERO` keeps them for ever.
    pub function_consumer_idle: Duration,
    /// Whether sync invocations go straight to a node with a free slot when one takes them
    /// ([`Bus::send_sync`]; the JetStream bus), falling back to the work queue. Off by
    /// default: such calls count against `max_concurrency` per gateway and per node, not
    /// across the cluster as queued work does.
    pub direct_sync: bool,
    /// How work crossing processes is signed and checked (the JetStream bus; the in-process
    /// bus has no one to distrust).
    pub signatures: Signatures,
}

/// Signing of the work a bus publishes and checking of the work it pulls
/// ([`fnmesh_core::signing`]).
#[derive(Debug, Clone)]
pub struct Signatures {
    /// Signs every invocation this process publishes (a gateway's key).
    pub signer: Arc<SigningKey>,
    /// The keys whose signatures this process accepts on the work it pulls (a node's list of
    /// gateway keys); anything else is refused and counted.
    pub trusted: Arc<TrustedKeys>,
    /// Counts refused messages.
    pub rejections: Rejections,
    /// How long a published invocation may wait to start: signed as its expiry, after which a
    /// node reports it `timeout` ("expired") instead of running it (Lambda's maximum event age).
    pub max_age: Duration,
}

/// Default [`Signatures::max_age`]: 6 hours.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(6 * 3600);

impl Signatures {
    /// One key of this process, trusting only itself, shared by every bus of the process made
    /// with it (tests, `fnmesh up`): buses in other processes do not trust it.
    pub fn process_local() -> Self {
        static LOCAL: OnceLock<(Arc<SigningKey>, Arc<TrustedKeys>)> = OnceLock::new();
        let (signer, trusted) = LOCAL.get_or_init(|| {
            let key = SigningKey::generate();
            let mut trusted = TrustedKeys::default();
            #[allow(clippy::expect_used)] // a key just generated is a valid public key
            trusted
                .insert(key.public_key())
                .expect("the public key of a generated key");
            (Arc::new(key), Arc::new(trusted))
        });
        Self {
            signer: Arc::clone(signer),
            trusted: Arc::clone(trusted),
            rejections: Rejections::unregistered("node"),
            max_age: DEFAULT_MAX_AGE,
        }
    }

    /// Signing with `signer`, trusting `trusted` (plus `signer`'s own key).
    pub fn new(signer: SigningKey, mut trusted: TrustedKeys, rejections: Rejections) -> Self {
        #[allow(clippy::expect_used)] // the public key of a parsed key is valid
        trusted
            .insert(signer.public_key())
            .expect("the public key of a signing key");
        Self {
            signer: Arc::new(signer),
            trusted: Arc::new(trusted),
            rejections,
            max_age: DEFAULT_MAX_AGE,
        }
    }
}

/// How long a bus that does not manage its streams waits for a gateway to create them.
pub const ATTACH_WAIT: Duration = Duration::from_secs(60);

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            ack_wait: Duration::from_secs(30),
            max_deliver: 3,
            capacity: 100_000,
            function_capacity: 5_000,
            namespace_capacity: 10_000,
            dedupe_window: Duration::from_secs(600),
            event_capacity: 100_000,
            manage_streams: true,
            replicas: 1,
            function_consumer_idle: DEFAULT_FUNCTION_CONSUMER_IDLE,
            direct_sync: false,
            signatures: Signatures::process_local(),
        }
    }
}

/// Default [`BusConfig::function_consumer_idle`]: 5 minutes.
pub const DEFAULT_FUNCTION_CONSUMER_IDLE: Duration = Duration::from_secs(300);

/// An opaque reply address issued by [`Bus::open_inbox`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReplyTo(pub String);

/// A one-shot inbox for the outcome of a sync invocation.
pub struct Inbox {
    /// The address to publish with.
    pub reply_to: ReplyTo,
    /// Receives the outcome.
    pub receiver: mpsc::Receiver<InvocationOutcome>,
    /// Unsubscribes when dropped.
    pub guard: Option<Box<dyn Send + Sync>>,
}

/// A gateway's word that it stored the outcome a node replied with, asked for by
/// [`Bus::reply_with_receipt`]: a node that has it need not publish that outcome as a
/// `Finished` event (the recorders would only find it stored). Without one in time, the node
/// publishes the event as before, so an outcome the gateway could not store is still recorded.
pub struct Receipt {
    received: Option<tokio::sync::oneshot::Receiver<()>>,
    /// Keeps the bus's route to this receipt; removes it when dropped.
    _guard: Option<Box<dyn Send + Sync>>,
}

impl Receipt {
    /// No receipt will come (the bus has none, or the reply asked for none).
    pub fn none() -> Self {
        Self {
            received: None,
            _guard: None,
        }
    }

    /// A receipt that arrives on `received`; `guard` is dropped with it.
    pub fn on(
        received: tokio::sync::oneshot::Receiver<()>,
        guard: Option<Box<dyn Send + Sync>>,
    ) -> Self {
        Self {
            received: Some(received),
            _guard: guard,
        }
    }

    /// Whether one was asked for (it may still never come).
    pub fn expected(&self) -> bool {
        self.received.is_some()
    }

    /// Whether it came within `wait`.
    pub async fn stored(self, wait: Duration) -> bool {
        match self.received {
            Some(received) => matches!(tokio::time::timeout(wait, received).await, Ok(Ok(()))),
            None => false,
        }
    }
}

/// Acknowledgement of one delivery.
#[async_trait]
pub trait Acker: Send + Sync {
    /// Done: never deliver again.
    async fn ack(&self) -> Result<(), BusError>;
    /// Failed: deliver again (after `delay`, if given), counting an attempt.
    async fn nak(&self, delay: Option<Duration>) -> Result<(), BusError>;
    /// Still working: restart the ack wait.
    async fn in_progress(&self) -> Result<(), BusError>;
    /// Never deliver again, without success (e.g. after writing a dead letter).
    async fn term(&self) -> Result<(), BusError>;
    /// Whether [`Acker::nak`] has the work delivered again. False for a sync invocation sent
    /// straight to a node ([`Sent::Direct`]): nothing holds it but the node, so a node that
    /// cannot run it must answer the caller instead.
    fn redelivers(&self) -> bool {
        true
    }
    /// Whether work of this delivery's lane (its function and priority) waits behind it: now,
    /// where the bus can tell (in memory), else when it was delivered (over NATS, from its
    /// metadata). Until it is settled a delivery counts against its lane's cap
    /// (`max_concurrency`, across every node), so such work may be held back by it.
    fn holds_back_work(&self) -> bool {
        false
    }
}

/// How [`Bus::send_sync`] sent a sync invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Queued like any work (durable until a node settles it).
    Queued,
    /// Handed straight to a node with a free slot: nothing else holds it, so if no outcome
    /// comes the caller must keep the request to run it again (the node may have been lost).
    Direct,
}

/// One delivery of an invocation to a node.
pub struct Delivery {
    /// The work.
    pub request: InvocationRequest,
    /// Where to send the outcome, for sync calls.
    pub reply_to: Option<ReplyTo>,
    /// 1 on first delivery.
    pub attempt: u32,
    /// Not to be started after this: the signed expiry (`None` on the in-process bus).
    pub expires_at: Option<DateTime<Utc>>,
    /// Settles the delivery.
    pub acker: Box<dyn Acker>,
}

/// One delivery of a node event to a recorder.
pub struct EventDelivery {
    /// The event.
    pub event: NodeEvent,
    /// Settles the delivery.
    pub acker: Box<dyn Acker>,
}

/// An invocation whose attempts ran out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The work, with its payload.
    pub request: InvocationRequest,
    /// Attempts made.
    pub attempts: u32,
}

/// Depth of one function's work queue (of one priority).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FunctionQueue {
    /// The tenant.
    pub namespace: String,
    /// The function.
    pub function: String,
    /// The priority lane (each priority of a function queues apart).
    #[serde(default)]
    pub priority: fnmesh_core::Priority,
    /// Waiting to be delivered (including nak'ed work waiting out its delay).
    pub pending: u64,
    /// Delivered and not yet settled (running somewhere).
    pub in_flight: u64,
    /// Deliveries allowed in flight at once across all nodes (the function's `max_concurrency`).
    pub max_in_flight: u64,
}

/// Depths of the whole bus, for operators.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QueueStats {
    /// Invocations accepted and not yet settled.
    pub invocations: u64,
    /// Node events not yet recorded.
    pub events: u64,
    /// Per function with work queued or in flight.
    pub functions: Vec<FunctionQueue>,
}

/// A live feed of one function's output, from [`Bus::follow_logs`]. Ends when the bus closes.
pub type LogFeed = futures::stream::BoxStream<'static, FunctionLogs>;

/// The ids of invocations cancelled from now on, from [`Bus::follow_cancellations`]. Ends
/// when the bus closes.
pub type CancelFeed = futures::stream::BoxStream<'static, InvocationId>;

/// Entries a live log follower may fall behind by before it misses some.
pub const LOG_FEED_CAPACITY: usize = 1024;

/// The message bus.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Checks the bus is usable.
    async fn ping(&self) -> Result<(), BusError>;

    /// How long a delivery may go without ack or progress before it is redelivered (pullers
    /// send `in_progress` well within it).
    fn ack_wait(&self) -> Duration;

    /// Enqueues an invocation; `reply` is where the node sends the outcome of a sync call.
    async fn publish_invocation(
        &self,
        request: &InvocationRequest,
        reply: Option<&ReplyTo>,
    ) -> Result<(), BusError>;

    /// Sends a sync invocation whose outcome goes to `reply`: straight to a node with a free
    /// slot where the bus can ([`Sent::Direct`]: one core-NATS request instead of a durable
    /// publish, a pull and an ack), else queued as [`Bus::publish_invocation`] does.
    async fn send_sync(
        &self,
        request: &InvocationRequest,
        reply: &ReplyTo,
    ) -> Result<Sent, BusError> {
        self.publish_invocation(request, Some(reply)).await?;
        Ok(Sent::Queued)
    }

    /// Waits up to `wait` for one delivery. Nodes call it only when they have a free slot.
    async fn pull_invocation(&self, wait: Duration) -> Result<Option<Delivery>, BusError>;

    /// Waits up to `wait` for deliveries, and takes at most `max` (at least one, unless the
    /// wait ends first): nodes ask for as many as they have free slots, so one round trip to
    /// the broker can fill several. A bus without batches hands out one. A bus that offers
    /// the free slots to sync work sent straight to the node ([`Bus::send_sync`]) may return
    /// up to twice `max` (what it fetched and what was taken meanwhile); the caller runs the
    /// rest as its slots free.
    async fn pull_invocations(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, BusError> {
        let _ = max;
        Ok(self.pull_invocation(wait).await?.into_iter().collect())
    }

    /// Opens an inbox for one sync reply.
    async fn open_inbox(&self) -> Result<Inbox, BusError>;

    /// Sends an outcome to an inbox. At most once: a reply can be lost (the outcome is also
    /// recorded through the event stream).
    async fn reply(&self, to: &ReplyTo, outcome: &InvocationOutcome) -> Result<(), BusError>;

    /// Sends an outcome to an inbox as [`Bus::reply`] does, asking the gateway that waits on it
    /// for a [`Receipt`] once it has stored the outcome ([`Bus::confirm_stored`]). A bus
    /// without receipts replies and gives [`Receipt::none`].
    async fn reply_with_receipt(
        &self,
        to: &ReplyTo,
        outcome: &InvocationOutcome,
    ) -> Result<Receipt, BusError> {
        self.reply(to, outcome).await.map(|()| Receipt::none())
    }

    /// The gateway's side: the outcome of invocation `id`, received on one of this bus's
    /// inboxes, is stored; sends its node the receipt it asked for. Whether there was one to
    /// send (the node then publishes no `Finished` event for it, unless the receipt is late
    /// or lost). Call it only once the outcome is durable.
    async fn confirm_stored(&self, id: InvocationId) -> bool {
        let _ = id;
        false
    }

    /// The public key this bus signs node reports (events, replies) with, for the node's
    /// registry entry: gateways accept a node's reports only under the key it registered.
    /// `None` for buses that sign nothing (in-process).
    fn report_key(&self) -> Option<String> {
        None
    }

    /// Publishes a node event for the recorders (durable until acked).
    async fn publish_event(&self, event: &NodeEvent) -> Result<(), BusError>;

    /// Waits up to `wait` for node events, returning as soon as there is one: every event
    /// ready then, up to `max` (at least one). Empty when none came in time.
    async fn pull_events(&self, max: usize, wait: Duration)
        -> Result<Vec<EventDelivery>, BusError>;

    /// Waits up to `wait` for one node event.
    async fn pull_event(&self, wait: Duration) -> Result<Option<EventDelivery>, BusError> {
        Ok(self.pull_events(1, wait).await?.into_iter().next())
    }

    /// Waits up to `wait` for one invocation whose attempts ran out.
    async fn pull_dead_letter(&self, wait: Duration) -> Result<Option<DeadLetter>, BusError>;

    /// Queue depths, per function.
    async fn queue_stats(&self) -> Result<QueueStats, BusError>;

    /// Publishes one invocation's captured output for live followers, on every gateway of
    /// the bus. Best effort and at most once: nothing is kept for followers not listening (the
    /// logs are recorded with the result anyway).
    async fn publish_logs(&self, logs: &FunctionLogs) -> Result<(), BusError>;

    /// Follows the output of `function` in `namespace` published from now on. A follower more
    /// than [`LOG_FEED_CAPACITY`] entries behind misses entries.
    async fn follow_logs(
        &self,
        namespace: &Namespace,
        function: &FunctionName,
    ) -> Result<LogFeed, BusError>;

    /// Tells the nodes of the bus that invocation `id` was cancelled: a node running it kills
    /// it, a node that is handed it later settles it without running it. At most once, to
    /// the nodes listening then (the store keeps the record `cancelled` whatever a node
    /// reports afterwards). Over NATS the message is signed like work.
    async fn cancel(&self, id: &InvocationId) -> Result<(), BusError>;

    /// The cancellations ([`Bus::cancel`]) sent from now on; over NATS, only those signed by
    /// a trusted gateway key.
    async fn follow_cancellations(&self) -> Result<CancelFeed, BusError>;
}
