//! `fnmesh bench …`: benchmarks that print figures side by side with baselines run in the
//! same process (speed targets are measured here, never asserted in tests).
//!
//! - [`sandbox`] (`bench sandbox`): cold and warm starts through fnmesh's sandboxes next to
//!   `crun run`, bare `python3` and the handler called directly;
//! - [`mesh`] (`bench mesh`): a gateway and a node over a fresh `nats-server`, next to raw
//!   HTTP, NATS, JetStream and the warm sandbox;
//! - [`persistence`] (`bench persistence`): the metadata store's invocation writes;
//! - [`all`] (`bench all`): sandbox and mesh in one run, with ratios against the targets;
//! - [`image`] (`bench image`): image functions' cold start and first pull.

pub mod all;
pub mod image;
pub mod mesh;
pub mod persistence;
pub mod sandbox;

pub use sandbox::enter_bench_namespace;

use std::collections::BTreeMap;

use fnmesh_core::{Checksum, CodeInfo, Function, FunctionConfig, FunctionId, Namespace, Runtime};

/// Version 1 of a Python function `name` in the default namespace whose `main.py` is `source`
/// (handler `main.handle`), as the sandbox benchmarks run it.
fn python_function(name: fnmesh_core::FunctionName, source: &str) -> Function {
    let now = chrono::Utc::now();
    Function {
        image: None,
        id: FunctionId::new(),
        namespace: Namespace::default_ns(),
        name,
        version: 1,
        runtime: Runtime::Python3,
        handler: "main.handle".into(),
        code: CodeInfo {
            checksum: Checksum::of(source.as_bytes()),
            size: source.len() as u64,
            source_type: "inline".into(),
        },
        config: FunctionConfig::default(),
        metadata: BTreeMap::new(),
        created_at: now,
        updated_at: now,
    }
}
