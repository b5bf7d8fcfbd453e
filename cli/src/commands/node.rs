//! `fnmesh node`: a worker node over NATS JetStream. It needs nothing but NATS: work from the
//! bus, code by checksum from the region's NATS code bucket (or from `FNMESH_CODE_STORE` when
//! set), verified and cached on local disk.

use std::io::Write;

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use fnmesh_bus::placements::jetstream::JetStreamPlacements;
use fnmesh_bus::placements::Placements;
use fnmesh_core::ids::NodeId;
use fnmesh_core::subjects::BusPrefix;
use fnmesh_nodes::node::{Node, NodeBackends};

use super::platform::{
    data_dir, node_config, open_bus, open_nats_code, open_registry, require_root, seal_code,
    shutdown_signal,
};
use crate::args::NodeCommand;
use crate::backends::{open_code_store, CodeStoreLocation};

pub async fn run(mut args: NodeCommand) -> Result<()> {
    require_root("node")?;
    let region = BusPrefix::parse(&args.mesh.region)?;
    let node_id = node_id(&args)?;
    args.node.node_id = node_id.as_ref().map(ToString::to_string);
    let data_dir = data_dir(&args.common)?;
    let metrics = fnmesh_core::metrics::Registry::new();
    let signatures = crate::signing::signatures(
        &args.mesh.signing,
        &data_dir,
        crate::signing::Role::Node,
        &metrics,
    )?;
    let open = open_bus(
        Some(fnmesh_core::nats::NatsOptions {
            node_id,
            ..args
                .mesh
                .nats
                .options(&args.mesh.nats_url, fnmesh_core::subjects::InboxOwner::Node)
        }),
        &args.mesh.region,
        // A node only attaches to the streams its region's gateways made: its NATS
        // credentials (node-<id>.creds) may not manage streams.
        fnmesh_bus::BusConfig {
            manage_streams: false,
            signatures,
            ..args.mesh.delivery.bus_config()
        },
    )
    .await?;
    let code = match args.code_store.as_deref() {
        Some(setting) => open_code_store(&CodeStoreLocation::parse(setting)?).await?,
        None => open_nats_code(
            open.nats.as_ref(),
            &args.mesh.region,
            args.mesh.delivery.stream_replicas,
        )
        .await?
        .context("a node needs NATS to read code when FNMESH_CODE_STORE is not set")?,
    };
    let keyring = crate::secrets_key::keyring(&args.common.secrets, &data_dir)?;
    let code = seal_code(code, &args.common.secrets, &keyring);
    let registry = open_registry(
        open.nats.as_ref(),
        &args.mesh.region,
        args.mesh.delivery.stream_replicas,
    )
    .await?;
    let config = node_config(
        &args.node,
        &args.common,
        &data_dir,
        &args.mesh.region,
        open.nats.as_ref(),
    )?;
    let node_id = config.node_id.clone();
    let node = Node::start(
        config,
        NodeBackends {
            bus: open.bus,
            code,
            registry,
            // The region's catalog, which its gateways publish (or an edge's mirror of its
            // hub's): the functions placed here, whose images are pulled ahead.
            placements: open.nats.clone().map(|client| {
                Arc::new(JetStreamPlacements::new(client, region.clone(), node_id))
                    as Arc<dyn Placements>
            }),
        },
        &metrics,
    )
    .await?;
    println!(
        "fnmesh node {} pulling work in region {}",
        node.id(),
        args.mesh.region
    );
    let _ = std::io::stdout().flush();
    shutdown_signal().await;
    tracing::info!("shutting down: no new work; draining in-flight invocations");
    node.stop().await;
    tracing::info!("node stopped");
    Ok(())
}

/// The node's id: `FNMESH_NODE_ID`, or the id its NATS credentials were minted for (`fnmesh
/// nats init --node` / `add-node`), which may only write that node's registry entry and read
/// that node's inboxes; when both are set they must agree. `None`: generated at start.
fn node_id(args: &NodeCommand) -> Result<Option<NodeId>> {
    let configured = match args.node.node_id.as_deref().filter(|s| !s.is_empty()) {
        Some(id) => Some(NodeId::parse(id).with_context(|| format!("FNMESH_NODE_ID={id:?}"))?),
        None => None,
    };
    let Some(path) = &args.mesh.nats.nats_creds else {
        return Ok(configured);
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("FNMESH_NATS_CREDS: reading {}", path.display()))?;
    let minted_for = fnmesh_core::nats::setup::node_of_creds(&text)
        .with_context(|| format!("FNMESH_NATS_CREDS: reading {}", path.display()))?;
    match (configured, minted_for) {
        (Some(configured), Some(minted)) if configured != minted => bail!(
            "FNMESH_NODE_ID is {configured} but FNMESH_NATS_CREDS ({}) holds node {minted}'s \
             credentials, which may only write that node's registry entry: mint this node's \
             own with `fnmesh nats add-node --dir <dir> --id {configured}`",
            path.display()
        ),
        (configured, minted) => Ok(minted.or(configured)),
    }
}
