//! `fnmesh nats init` and `fnmesh nats add-node`: map their arguments to
//! `fnmesh_core::nats::setup` and say what was written (paths only: seeds are never printed).

use anyhow::{Context, Result};
use fnmesh_core::ids::NodeId;
use fnmesh_core::nats::setup::{self, InitOptions};
use fnmesh_core::subjects::BusPrefix;

use crate::args::{NatsAddNodeArgs, NatsInitArgs};

pub fn init(args: &NatsInitArgs) -> Result<()> {
    let regions = args
        .regions
        .iter()
        .map(|r| BusPrefix::parse(r).with_context(|| format!("--region {r:?}")))
        .collect::<Result<Vec<_>>>()?;
    let nodes = args
        .nodes
        .iter()
        .map(|n| NodeId::parse(n).with_context(|| format!("--node {n:?}")))
        .collect::<Result<Vec<_>>>()?;
    let options = InitOptions {
        dir: args.dir.clone(),
        port: args.port,
        host: args.host.clone(),
        regions,
        nodes,
        store_dir: args.store_dir.clone(),
    };
    let written = setup::init(&options, chrono::Utc::now().timestamp())
        .with_context(|| format!("writing a NATS setup into {}", args.dir.display()))?;
    println!("wrote {}", written.config.display());
    for (role, path) in &written.creds {
        println!("  {:<8} {}", role.name(), path.display());
    }
    for (id, path) in &written.nodes {
        println!("  node     {} ({id})", path.display());
    }
    println!("  signing  {}", written.signing_key.display());
    println!("  trusted  {}", written.trusted_keys.display());
    println!(
        "start the server with: nats-server -c {}\n\
         gateways connect with FNMESH_NATS_CREDS=<dir>/gateway.creds, each node with its own\n\
         FNMESH_NATS_CREDS=<dir>/node-<id>.creds (more: fnmesh nats add-node --dir <dir> --id <id>);\n\
         gateways sign work with FNMESH_SIGNING_KEY_FILE={}, nodes run it with\n\
         FNMESH_TRUSTED_KEYS_FILE={}",
        written.config.display(),
        written.signing_key.display(),
        written.trusted_keys.display()
    );
    Ok(())
}

pub fn add_node(args: &NatsAddNodeArgs) -> Result<()> {
    let id = NodeId::parse(&args.id).with_context(|| format!("--id {:?}", args.id))?;
    let path = setup::add_node(&args.dir, &id, chrono::Utc::now().timestamp())
        .with_context(|| format!("adding node {id} to {}", args.dir.display()))?;
    println!(
        "wrote {} (start the node with FNMESH_NATS_CREDS={0})",
        path.display()
    );
    Ok(())
}
