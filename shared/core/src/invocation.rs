//! Invocations: the work item a gateway hands to the bus, and the result a node sends back.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::function::Function;
use crate::ids::InvocationId;
use crate::names::{AliasName, FunctionName, Namespace};

/// Where an invocation is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum InvocationStatus {
    /// Accepted, waiting for a node.
    Queued,
    /// A node is running it.
    Running,
    /// The handler returned a result.
    Succeeded,
    /// The handler failed (see the error kind).
    Failed,
    /// It ran past its timeout and was killed.
    Timeout,
    /// Its delivery attempts ran out; it waits in the dead-letter queue (replay or delete).
    DeadLettered,
    /// Cancelled by a caller (`POST /v1/invocations/{id}/cancel`): never run if it was
    /// queued, killed if it was running. Final: nothing a node reports later replaces it.
    Cancelled,
}

impl InvocationStatus {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Timeout => "timeout",
            Self::DeadLettered => "dead_lettered",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "timeout" => Self::Timeout,
            "dead_lettered" => Self::DeadLettered,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }

    /// Whether no further transition happens.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Timeout | Self::DeadLettered | Self::Cancelled
        )
    }
}

/// Why an invocation did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ErrorKind {
    /// The handler raised or exited non-zero.
    HandlerError,
    /// It ran past `timeout_ms`.
    Timeout,
    /// The sandbox hit its memory limit.
    Oom,
    /// The sandbox died for another reason.
    Crashed,
    /// The handler's output is not JSON.
    InvalidResult,
    /// A caller cancelled it.
    Cancelled,
}

impl ErrorKind {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HandlerError => "handler_error",
            Self::Timeout => "timeout",
            Self::Oom => "oom",
            Self::Crashed => "crashed",
            Self::InvalidResult => "invalid_result",
            Self::Cancelled => "cancelled",
        }
    }
}

/// A failed invocation's error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InvocationError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// A short, human-readable description (details go to the logs).
    pub message: String,
}

/// Per-phase timings of one invocation, in microseconds, measured once on the node.
///
/// On the wire (API responses, stored rows, node events) each phase also appears in whole
/// milliseconds (`queue_ms`, `init_ms`, `duration_ms`, `total_ms` = µs / 1000), derived from the
/// µs value when serialized: the JSON keeps the shape clients and older builds know. Records
/// written before the `*_us` fields existed (only `*_ms`) read as ms × 1000.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "MetricsWire", into = "MetricsWire")]
pub struct InvocationMetrics {
    /// Waiting for a node: from acceptance (the gateway's clock) to a node starting it (its
    /// own); `queue` in `Server-Timing`.
    pub queue_us: u64,
    /// Making a sandbox: create + start + handler load (0 when warm); `init`.
    pub init_us: u64,
    /// The handler, as seen by the node around its request to the sandbox; `exec`.
    pub exec_us: u64,
    /// End to end: from acceptance to the node finishing, code fetch and the node's own work
    /// included; `total`.
    pub total_us: u64,
    /// Whether a new sandbox was made for it.
    pub cold_start: bool,
    /// Peak memory of the sandbox during this invocation.
    pub memory_peak_bytes: u64,
    /// CPU time the sandbox used for this invocation, user and system, from its cgroup's
    /// counter (0 where the node cannot read it).
    pub cpu_time_us: u64,
    /// An image function's cold start: pulling its image's blobs (part of `init_us`; 0 when
    /// they were cached, and for every other runtime).
    pub pull_us: u64,
    /// An image function's cold start: unpacking its image into a tree (part of `init_us`; 0
    /// when the tree was cached).
    pub unpack_us: u64,
}

impl InvocationMetrics {
    /// [`InvocationMetrics::queue_us`] in whole milliseconds (the wire's `queue_ms`).
    pub fn queue_ms(&self) -> u64 {
        self.queue_us / 1000
    }

    /// [`InvocationMetrics::init_us`] in whole milliseconds (the wire's `init_ms`).
    pub fn init_ms(&self) -> u64 {
        self.init_us / 1000
    }

    /// [`InvocationMetrics::exec_us`] in whole milliseconds (the wire's `duration_ms`).
    pub fn duration_ms(&self) -> u64 {
        self.exec_us / 1000
    }

    /// [`InvocationMetrics::total_us`] in whole milliseconds (the wire's `total_ms`).
    pub fn total_ms(&self) -> u64 {
        self.total_us / 1000
    }
}

/// [`InvocationMetrics`] as JSON: the field set and order of the API, `*_ms` then `*_us`.
#[derive(Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
struct MetricsWire {
    queue_ms: u64,
    init_ms: u64,
    duration_ms: u64,
    cold_start: bool,
    memory_peak_bytes: u64,
    #[serde(default)]
    total_ms: u64,
    #[serde(default)]
    queue_us: u64,
    #[serde(default)]
    init_us: u64,
    #[serde(default)]
    exec_us: u64,
    #[serde(default)]
    total_us: u64,
    #[serde(default)]
    cpu_time_us: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pull_ms: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    unpack_ms: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pull_us: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    unpack_us: u64,
}

// The API's shape of the metrics is [`MetricsWire`]'s.
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for InvocationMetrics {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        <MetricsWire as utoipa::PartialSchema>::schema()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for InvocationMetrics {
    fn name() -> std::borrow::Cow<'static, str> {
        std::borrow::Cow::Borrowed("InvocationMetrics")
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl From<MetricsWire> for InvocationMetrics {
    fn from(w: MetricsWire) -> Self {
        // A record from a node that predates the `*_us` fields has them 0 (absent).
        let us = |us: u64, ms: u64| if us > 0 { us } else { ms.saturating_mul(1000) };
        Self {
            queue_us: us(w.queue_us, w.queue_ms),
            init_us: us(w.init_us, w.init_ms),
            exec_us: us(w.exec_us, w.duration_ms),
            total_us: us(w.total_us, w.total_ms),
            cold_start: w.cold_start,
            memory_peak_bytes: w.memory_peak_bytes,
            cpu_time_us: w.cpu_time_us,
            pull_us: us(w.pull_us, w.pull_ms),
            unpack_us: us(w.unpack_us, w.unpack_ms),
        }
    }
}

impl From<InvocationMetrics> for MetricsWire {
    fn from(m: InvocationMetrics) -> Self {
        Self {
            queue_ms: m.queue_ms(),
            init_ms: m.init_ms(),
            duration_ms: m.duration_ms(),
            cold_start: m.cold_start,
            memory_peak_bytes: m.memory_peak_bytes,
            total_ms: m.total_ms(),
            queue_us: m.queue_us,
            init_us: m.init_us,
            exec_us: m.exec_us,
            total_us: m.total_us,
            cpu_time_us: m.cpu_time_us,
            pull_ms: m.pull_us / 1000,
            unpack_ms: m.unpack_us / 1000,
            pull_us: m.pull_us,
            unpack_us: m.unpack_us,
        }
    }
}

/// How one attempt of an invocation went on a node: made by the sandbox instance (status,
/// result or error, logs, peak memory, `exec_us`), completed by the executor (`cold_start`,
/// `init_us`), and turned into the record once, by [`InvocationOutcome::finished`]. Nodes only;
/// it never goes on the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct Execution {
    /// `Succeeded`, `Failed` or `Timeout`.
    pub status: InvocationStatus,
    /// The handler's JSON result, when it succeeded.
    pub result: Option<serde_json::Value>,
    /// Why it did not.
    pub error: Option<InvocationError>,
    /// Captured output.
    pub logs: InvocationLogs,
    /// Whether a new sandbox was made for it.
    pub cold_start: bool,
    /// Peak memory of the sandbox during this invocation.
    pub memory_peak_bytes: u64,
    /// Making the sandbox, in µs (0 when warm).
    pub init_us: u64,
    /// The handler, in µs.
    pub exec_us: u64,
    /// Pulling an image function's image, in µs (part of `init_us`; 0 when cached).
    pub pull_us: u64,
    /// Unpacking it, in µs (part of `init_us`; 0 when cached).
    pub unpack_us: u64,
    /// CPU time the sandbox used for it, µs (0 when unknown).
    pub cpu_time_us: u64,
}

impl Execution {
    /// An attempt that ended with `status` and `error` before (or instead of) a result.
    pub fn failed(status: InvocationStatus, error: InvocationError) -> Self {
        Self {
            status,
            result: None,
            error: Some(error),
            logs: InvocationLogs::default(),
            cold_start: false,
            memory_peak_bytes: 0,
            init_us: 0,
            exec_us: 0,
            pull_us: 0,
            unpack_us: 0,
            cpu_time_us: 0,
        }
    }
}

/// The record of one invocation, as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InvocationResult {
    /// Its id.
    pub id: InvocationId,
    /// The tenant.
    pub namespace: Namespace,
    /// The function invoked.
    pub function: FunctionName,
    /// The version that ran.
    pub version: u32,
    /// The alias invoked, when the caller named one (`version` is what it chose).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<AliasName>,
    /// The priority it queued at (records made before priorities existed read as `normal`).
    #[serde(default)]
    pub priority: crate::Priority,
    /// Current status.
    pub status: InvocationStatus,
    /// The handler's JSON result, when it succeeded.
    #[serde(default)]
    pub result: Option<serde_json::Value>,
    /// The error, when it did not.
    #[serde(default)]
    pub error: Option<InvocationError>,
    /// Timings, once it ran.
    #[serde(default)]
    pub metrics: Option<InvocationMetrics>,
    /// The node that ran it.
    #[serde(default)]
    pub node_id: Option<String>,
    /// Delivery attempt that produced this record (fences stale updates).
    #[serde(default)]
    pub attempt: u32,
    /// Accepted at.
    pub created_at: DateTime<Utc>,
    /// A node started it at.
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
    /// Finished at.
    #[serde(default)]
    pub completed_at: Option<DateTime<Utc>>,
}

impl InvocationResult {
    /// A fresh `queued` record for `request`.
    pub fn queued(request: &InvocationRequest) -> Self {
        Self {
            id: request.id,
            namespace: request.function.namespace.clone(),
            function: request.function.name.clone(),
            version: request.function.version,
            alias: request.alias.clone(),
            priority: request.priority,
            status: InvocationStatus::Queued,
            result: None,
            error: None,
            metrics: None,
            node_id: None,
            attempt: 0,
            created_at: request.created_at,
            started_at: None,
            completed_at: None,
        }
    }
}

/// Captured stdout/stderr of one invocation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InvocationLogs {
    /// The text (lossy UTF-8), at most the node's cap.
    pub text: String,
    /// Whether output beyond the cap was dropped.
    pub truncated: bool,
}

/// Default cap on captured logs per invocation.
pub const DEFAULT_LOG_CAP_BYTES: usize = 64 * 1024;

/// The work item published on the bus: everything a node needs, so it needs nothing but the bus
/// and the code store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvocationRequest {
    /// Invocation id (also the bus dedupe id).
    pub id: InvocationId,
    /// A snapshot of the function version to run.
    pub function: Function,
    /// The JSON payload (the event).
    pub payload: serde_json::Value,
    /// Accepted at.
    pub created_at: DateTime<Utc>,
    /// W3C trace id, when the call was traced.
    #[serde(default)]
    pub trace_id: Option<String>,
    /// W3C trace context of the gateway's span that published it (built by the gateway from
    /// its own span, never copied from a client), so the node's spans join the same trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<crate::trace::TraceParent>,
    /// The function's secrets, sealed: only the node that runs the invocation opens them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<crate::secrets::SealedSecrets>,
    /// The credential of the function's namespace for its image's registry, sealed for this
    /// version ([`crate::secrets::Keyring::seal_registry_for_invocation`]): a node that has
    /// to pull the image opens it. `None` for other runtimes and anonymous registries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_auth: Option<crate::secrets::SealedValue>,
    /// The region whose gateways run it for the region that accepted it (an edge's overflow
    /// to its hub), decided once when it is accepted so that every later publish of it goes
    /// there too; `None`: the accepting region's own nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarded_to: Option<String>,
    /// The alias the caller invoked (`function` is the version it chose), kept on the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<AliasName>,
    /// Its priority: the function's, or lower when the caller asked (see [`crate::priority`]).
    /// It picks the work lane the invocation queues in.
    #[serde(default, skip_serializing_if = "crate::Priority::is_normal")]
    pub priority: crate::Priority,
    /// Whether the destinations of `function.config` apply (async invocations; set by the
    /// gateway that accepts it): the store then keeps a delivery per destination with the
    /// `queued` record (see [`crate::destination`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub notify_destinations: bool,
}

/// What a node reports for one delivery attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum NodeEvent {
    /// A node started running the invocation.
    Started {
        /// Which invocation.
        id: InvocationId,
        /// Namespace, for routing the record update.
        namespace: Namespace,
        /// Delivery attempt.
        attempt: u32,
        /// The node.
        node_id: String,
        /// When.
        started_at: DateTime<Utc>,
    },
    /// The invocation reached a terminal status.
    Finished(Box<InvocationOutcome>),
    /// An attempt failed and the invocation will be delivered again (unless its attempts ran
    /// out, in which case it is dead-lettered with this error as its last error).
    Retrying {
        /// Which invocation.
        id: InvocationId,
        /// Namespace, for routing the record update.
        namespace: Namespace,
        /// The attempt that failed.
        attempt: u32,
        /// The node.
        node_id: String,
        /// Why the attempt failed.
        error: InvocationError,
    },
}

impl NodeEvent {
    /// The invocation this event is about.
    pub fn invocation_id(&self) -> InvocationId {
        match self {
            Self::Started { id, .. } | Self::Retrying { id, .. } => *id,
            Self::Finished(outcome) => outcome.result.id,
        }
    }

    /// The namespace of the invocation this event is about.
    pub fn namespace(&self) -> &Namespace {
        match self {
            Self::Started { namespace, .. } | Self::Retrying { namespace, .. } => namespace,
            Self::Finished(outcome) => &outcome.result.namespace,
        }
    }
}

/// An invocation whose delivery attempts ran out, kept for replay or deletion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterRecord {
    /// The invocation id.
    pub id: InvocationId,
    /// The tenant.
    pub namespace: Namespace,
    /// The function.
    pub function: FunctionName,
    /// The version that was tried.
    pub version: u32,
    /// Attempts made.
    pub attempts: u32,
    /// The last attempt's error, when a node reported one.
    #[serde(default)]
    pub last_error: Option<InvocationError>,
    /// The full request, with its payload (what a replay publishes again).
    pub request: InvocationRequest,
    /// When it was dead-lettered.
    pub dead_lettered_at: DateTime<Utc>,
}

/// A terminal result plus its logs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvocationOutcome {
    /// The final record.
    pub result: InvocationResult,
    /// Captured output.
    pub logs: InvocationLogs,
}

impl InvocationOutcome {
    /// The final record of attempt `attempt` of `request`, run by `node_id` from `started_at`
    /// to `completed_at`: what `execution` produced, its timings completed with the queue
    /// (acceptance to `started_at`) and the total (acceptance to `completed_at`).
    pub fn finished(
        request: &InvocationRequest,
        execution: Execution,
        node_id: &str,
        attempt: u32,
        started_at: DateTime<Utc>,
        completed_at: DateTime<Utc>,
    ) -> Self {
        let Execution {
            status,
            result,
            error,
            logs,
            cold_start,
            memory_peak_bytes,
            init_us,
            exec_us,
            pull_us,
            unpack_us,
            cpu_time_us,
        } = execution;
        let metrics = InvocationMetrics {
            queue_us: micros_between(request.created_at, started_at),
            init_us,
            exec_us,
            total_us: micros_between(request.created_at, completed_at),
            cold_start,
            memory_peak_bytes,
            cpu_time_us,
            pull_us,
            unpack_us,
        };
        Self {
            result: InvocationResult {
                status,
                result,
                error,
                metrics: Some(metrics),
                node_id: Some(node_id.to_owned()),
                attempt,
                started_at: Some(started_at),
                completed_at: Some(completed_at),
                ..InvocationResult::queued(request)
            },
            logs,
        }
    }
}

/// Microseconds from `from` to `to` (0 if `to` is earlier: the clocks of two machines).
fn micros_between(from: DateTime<Utc>, to: DateTime<Utc>) -> u64 {
    (to - from)
        .num_microseconds()
        .and_then(|us| u64::try_from(us).ok())
        .unwrap_or(0)
}

/// One invocation's captured output, published by the node that ran it for live followers
/// (`GET /v1/functions/{name}/logs?follow=true`). Best effort: nothing is kept, a follower that
/// is not listening misses it (the logs are still recorded with the result).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FunctionLogs {
    /// Which invocation printed it.
    pub invocation_id: InvocationId,
    /// The tenant.
    pub namespace: Namespace,
    /// The function.
    pub function: FunctionName,
    /// The version that ran.
    pub version: u32,
    /// Delivery attempt.
    pub attempt: u32,
    /// The node that ran it.
    pub node_id: String,
    /// The text (lossy UTF-8), at most the node's cap.
    pub text: String,
    /// Whether output beyond the cap was dropped.
    pub truncated: bool,
    /// When the invocation finished.
    pub at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn metrics() -> InvocationMetrics {
        InvocationMetrics {
            queue_us: 1_234,
            init_us: 250_999,
            exec_us: 3_456,
            total_us: 260_100,
            cold_start: true,
            memory_peak_bytes: 42,
            cpu_time_us: 0,
            pull_us: 0,
            unpack_us: 0,
        }
    }

    #[test]
    fn metrics_round_trip() {
        let m = metrics();
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<InvocationMetrics>(&json).unwrap(), m);
        let zero = InvocationMetrics::default();
        let json = serde_json::to_string(&zero).unwrap();
        assert_eq!(
            serde_json::from_str::<InvocationMetrics>(&json).unwrap(),
            zero
        );
    }

    #[test]
    fn metrics_json_keeps_the_api_field_set_and_order() {
        let json = serde_json::to_string(&metrics()).unwrap();
        assert_eq!(
            json,
            r#"{"queue_ms":1,"init_ms":250,"duration_ms":3,"cold_start":true,"memory_peak_bytes":42,"total_ms":260,"queue_us":1234,"init_us":250999,"exec_us":3456,"total_us":260100,"cpu_time_us":0}"#
        );
    }

    #[test]
    fn metrics_from_records_with_only_ms_read_as_microseconds() {
        let old: InvocationMetrics = serde_json::from_str(
            r#"{"queue_ms":2,"init_ms":0,"duration_ms":5,"cold_start":false,"memory_peak_bytes":7}"#,
        )
        .unwrap();
        assert_eq!(
            old,
            InvocationMetrics {
                queue_us: 2_000,
                init_us: 0,
                exec_us: 5_000,
                total_us: 0,
                cold_start: false,
                memory_peak_bytes: 7,
                cpu_time_us: 0,
                pull_us: 0,
                unpack_us: 0,
            }
        );
        let with_total: InvocationMetrics = serde_json::from_str(
            r#"{"queue_ms":2,"init_ms":3,"duration_ms":5,"cold_start":true,"memory_peak_bytes":0,"total_ms":11}"#,
        )
        .unwrap();
        assert_eq!(with_total.init_us, 3_000);
        assert_eq!(with_total.total_us, 11_000);
        assert_eq!(with_total.duration_ms(), 5);
    }

    #[test]
    fn metrics_prefer_the_microseconds_when_both_are_there() {
        let m: InvocationMetrics = serde_json::from_str(
            r#"{"queue_ms":2,"init_ms":0,"duration_ms":5,"cold_start":false,"memory_peak_bytes":0,"total_ms":9,"queue_us":2345,"init_us":0,"exec_us":4321,"total_us":9876,"cpu_time_us":0}"#,
        )
        .unwrap();
        assert_eq!(
            (m.queue_us, m.init_us, m.exec_us, m.total_us),
            (2_345, 0, 4_321, 9_876)
        );
    }

    #[test]
    fn finished_builds_the_record_from_the_execution() {
        let created_at = Utc::now();
        let function = Function {
            image: None,
            id: crate::ids::FunctionId::new(),
            namespace: Namespace::parse("acme").unwrap(),
            name: FunctionName::parse("resize").unwrap(),
            version: 3,
            runtime: crate::function::Runtime::Python3,
            handler: "main.handle".to_owned(),
            code: crate::function::CodeInfo {
                checksum: crate::Checksum::of(b"code"),
                size: 4,
                source_type: "inline".to_owned(),
            },
            config: crate::function::FunctionConfig::default(),
            metadata: Default::default(),
            created_at,
            updated_at: created_at,
        };
        let request = InvocationRequest {
            id: InvocationId::new(),
            function,
            payload: serde_json::json!({}),
            created_at,
            trace_id: None,
            traceparent: None,
            secrets: None,
            registry_auth: None,
            forwarded_to: None,
            alias: None,
            priority: Default::default(),
            notify_destinations: false,
        };
        let execution = Execution {
            status: InvocationStatus::Succeeded,
            result: Some(serde_json::json!({"ok": true})),
            error: None,
            logs: InvocationLogs {
                text: "hi\n".to_owned(),
                truncated: false,
            },
            cold_start: true,
            memory_peak_bytes: 1 << 20,
            init_us: 200_000,
            exec_us: 3_000,
            pull_us: 0,
            unpack_us: 0,
            cpu_time_us: 2_500,
        };
        let started_at = created_at + chrono::Duration::microseconds(1_500);
        let completed_at = started_at + chrono::Duration::microseconds(210_000);
        let outcome =
            InvocationOutcome::finished(&request, execution, "node-1", 2, started_at, completed_at);
        let r = &outcome.result;
        assert_eq!((r.id, r.version, r.attempt), (request.id, 3, 2));
        assert_eq!(r.function.as_str(), "resize");
        assert_eq!(r.status, InvocationStatus::Succeeded);
        assert_eq!(r.result, Some(serde_json::json!({"ok": true})));
        assert_eq!(r.node_id.as_deref(), Some("node-1"));
        assert_eq!(
            (r.started_at, r.completed_at),
            (Some(started_at), Some(completed_at))
        );
        assert_eq!(
            r.metrics,
            Some(InvocationMetrics {
                queue_us: 1_500,
                init_us: 200_000,
                exec_us: 3_000,
                total_us: 211_500,
                cold_start: true,
                memory_peak_bytes: 1 << 20,
                cpu_time_us: 2_500,
                pull_us: 0,
                unpack_us: 0,
            })
        );
        assert_eq!(outcome.logs.text, "hi\n");
        // The node's clock behind the gateway's: no negative queue.
        let early = InvocationOutcome::finished(
            &request,
            Execution::failed(
                InvocationStatus::Failed,
                InvocationError {
                    kind: ErrorKind::Crashed,
                    message: "x".to_owned(),
                },
            ),
            "node-1",
            1,
            created_at - chrono::Duration::seconds(1),
            created_at,
        );
        let m = early.result.metrics.unwrap();
        assert_eq!((m.queue_us, m.total_us), (0, 0));
    }
}
