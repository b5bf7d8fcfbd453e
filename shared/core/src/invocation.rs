//! Invocations: the work item a gateway hands to the bus, and the result a node sends back.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::function::Function;
use crate::ids::InvocationId;
use crate::names::{FunctionName, Namespace};

/// Where an invocation is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
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
            _ => return None,
        })
    }

    /// Whether no further transition happens.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Timeout | Self::DeadLettered
        )
    }
}

/// Why an invocation did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
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
        }
    }
}

/// A failed invocation's error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvocationError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// A short, human-readable description (details go to the logs).
    pub message: String,
}

/// Per-phase timings of one invocation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvocationMetrics {
    /// From acceptance to a node starting it.
    pub queue_ms: u64,
    /// Sandbox create + start + handler load (0 when warm).
    pub init_ms: u64,
    /// Handler execution as seen by the node.
    pub duration_ms: u64,
    /// Whether a new sandbox was made for it.
    pub cold_start: bool,
    /// Peak memory of the sandbox during this invocation.
    pub memory_peak_bytes: u64,
    /// End to end: from acceptance (the gateway's clock) to the node finishing (its own).
    #[serde(default)]
    pub total_ms: u64,
    /// The same phases in microseconds, as a sync response's `Server-Timing` reports them:
    /// waiting for a node (`queue`) …
    #[serde(default)]
    pub queue_us: u64,
    /// … making a sandbox (`init`, 0 when warm) …
    #[serde(default)]
    pub init_us: u64,
    /// … the handler (`exec`) …
    #[serde(default)]
    pub exec_us: u64,
    /// … and all of it (`total`; also code fetch and the node's own work).
    #[serde(default)]
    pub total_us: u64,
}

/// The record of one invocation, as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvocationResult {
    /// Its id.
    pub id: InvocationId,
    /// The tenant.
    pub namespace: Namespace,
    /// The function invoked.
    pub function: FunctionName,
    /// The version that ran.
    pub version: u32,
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

/// One invocation's captured output, published by the node that ran it for live followers
/// (`GET /v1/functions/{name}/logs?follow=true`). Best effort: nothing is kept, a follower that
/// is not listening misses it (the logs are still recorded with the result).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
