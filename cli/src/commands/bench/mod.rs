//! `fnmesh bench …`: benchmarks that print figures side by side with baselines run in the
//! same process (speed targets are measured here, never asserted in tests).
//!
//! - [`sandbox`] (`bench sandbox`): cold and warm starts through fnmesh's sandboxes next to
//!   `crun run`, bare `python3` and the handler called directly;
//! - [`mesh`] (`bench mesh`): a gateway and a node over a fresh `nats-server`, next to raw
//!   HTTP, NATS, JetStream and the warm sandbox;
//! - [`persistence`] (`bench persistence`): the metadata store's invocation writes;
//! - [`all`] (`bench all`): sandbox and mesh in one run, with ratios against the targets.

pub mod all;
pub mod mesh;
pub mod persistence;
pub mod sandbox;

pub use sandbox::enter_bench_namespace;
