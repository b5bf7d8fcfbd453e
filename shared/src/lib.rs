//! fnmesh's common library: the domain types every crate speaks, and the backend traits
//! (metadata store, code store, bus, rate limiter, node registry) with their embedded
//! implementations and the conformance suites every implementation must pass.

pub mod archive;
pub mod bus;
pub mod checksum;
pub mod code;
pub mod function;
pub mod ids;
pub mod invocation;
pub mod metrics;
pub mod names;
pub mod nats;
pub mod random;
pub mod ratelimit;
pub mod registry;
pub mod secrets;
pub mod store;
pub mod subjects;
pub mod trace;

pub use checksum::Checksum;
pub use function::{CodeInfo, Function, FunctionConfig, Runtime};
pub use ids::{FunctionId, InvocationId, NodeId};
pub use invocation::{
    DeadLetterRecord, ErrorKind, InvocationError, InvocationLogs, InvocationMetrics,
    InvocationOutcome, InvocationRequest, InvocationResult, InvocationStatus, NodeEvent,
};
pub use names::{FunctionName, Namespace};
