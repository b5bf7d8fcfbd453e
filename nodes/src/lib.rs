//! fnmesh worker nodes: pull invocations from the bus, run them in hardened sandboxes kept warm
//! in a pool, and report results back over the bus.

pub mod sandbox;
