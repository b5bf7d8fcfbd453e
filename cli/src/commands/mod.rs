//! One module per group of client commands; `up` runs the platform and `bench` the benchmark.

pub mod bench;
pub mod functions;
pub mod gateway;
pub mod invocations;
pub mod logs;
pub mod migrate;
pub mod nats;
pub mod node;
pub mod platform;
pub mod registries;
pub mod up;
