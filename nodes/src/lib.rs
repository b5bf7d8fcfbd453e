//! fnmesh worker nodes: pull invocations from the bus, run them in hardened sandboxes kept warm
//! in a pool, and report results back over the bus.

pub mod cancel;
pub mod code_cache;
pub mod executor;
pub mod instance;
pub mod metrics;
pub mod node;
pub mod pool;
pub mod prepull;
pub mod registration;
pub mod runtimes;
pub mod sandbox;
pub mod telemetry;
pub mod worker;
