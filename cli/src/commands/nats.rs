//! `fnmesh nats init` and `fnmesh nats add-node`: map their arguments to
//! `fnmesh_core::nats::setup` and say what was written (paths only: seeds are never printed).

use anyhow::{bail, Context, Result};
use fnmesh_core::ids::NodeId;
use fnmesh_core::nats::setup::{self, EdgeServer, InitOptions, Topology, HUB_REGION};
use fnmesh_core::subjects::BusPrefix;

use crate::args::{NatsAddNodeArgs, NatsInitArgs};

pub fn init(args: &NatsInitArgs) -> Result<()> {
    let edges = args
        .edges
        .iter()
        .map(|e| edge(e).with_context(|| format!("--edge {e:?} (NAME=PORT)")))
        .collect::<Result<Vec<_>>>()?;
    let mut regions = args
        .regions
        .iter()
        .map(|r| BusPrefix::parse(r).with_context(|| format!("--region {r:?}")))
        .collect::<Result<Vec<_>>>()?;
    let topology = if edges.is_empty() {
        if regions.is_empty() {
            regions.push(BusPrefix::parse("local")?);
        }
        None
    } else {
        if !regions.is_empty() {
            bail!("with --edge the regions are `{HUB_REGION}` and the edges: leave out --region");
        }
        regions.push(BusPrefix::parse(HUB_REGION)?);
        regions.extend(edges.iter().map(|e| e.name.clone()));
        Some(Topology {
            leafnode_port: args.leafnode_port,
            hub_leaf_url: args.hub_leaf_url.clone(),
            edges,
        })
    };
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
        topology,
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
    if !written.edges.is_empty() {
        println!(
            "start the hub with: nats-server -c {} (region and JetStream domain {HUB_REGION})",
            written.config.display()
        );
        for (name, config, leaf) in &written.edges {
            println!(
                "start edge {name} with: nats-server -c {} (region and JetStream domain {name}; \
                 it dials the hub with {})",
                config.display(),
                leaf.display()
            );
        }
        println!(
            "hub gateways and nodes run with FNMESH_REGION={HUB_REGION}, an edge's with \
             FNMESH_REGION=<edge> and FNMESH_NATS_URL at that edge's server; every server takes\n\
             the same creds (gateway.creds, node-<id>.creds), signing and trusted keys"
        );
        return Ok(());
    }
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

/// An `--edge NAME=PORT`.
fn edge(value: &str) -> Result<EdgeServer> {
    let (name, port) = value.split_once('=').context("no `=`")?;
    Ok(EdgeServer {
        name: BusPrefix::parse(name)?,
        port: port.parse().context("the port")?,
    })
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
