//! fnmesh's core library: the domain types every crate speaks (names, ids, checksums,
//! functions, invocations, secrets), subject and key builders, safe code archives, metrics,
//! tracing and the NATS connection helpers. The backends live in their own crates:
//! `fnmesh-store` (metadata store), `fnmesh-code` (code store), `fnmesh-bus` (bus and node
//! registry) and `fnmesh-ratelimit` (rate limiter).

pub mod alias;
pub mod archive;
pub mod checksum;
pub mod claims;
pub mod destination;
pub mod function;
pub mod idempotency;
pub mod ids;
pub mod invocation;
pub mod metrics;
pub mod names;
pub mod nats;
pub mod priority;
pub mod random;
pub mod registry;
pub mod secrets;
pub mod signing;
pub mod subjects;
pub mod trace;

pub use alias::{Alias, Routing};
pub use checksum::Checksum;
pub use function::{CodeInfo, Function, FunctionConfig, ImageMode, ImageSpec, Runtime};
pub use idempotency::IdempotencyKey;
pub use ids::{FunctionId, InvocationId, NodeId};
pub use invocation::{
    DeadLetterRecord, ErrorKind, Execution, InvocationError, InvocationLogs, InvocationMetrics,
    InvocationOutcome, InvocationRequest, InvocationResult, InvocationStatus, NodeEvent,
};
pub use names::{AliasName, FunctionName, Namespace};
pub use priority::Priority;
