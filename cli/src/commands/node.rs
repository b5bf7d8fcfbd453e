//! `fnmesh node`: a worker node over NATS JetStream. It needs nothing but NATS: work from the
//! bus, code by checksum from the region's NATS code bucket (or from `FNMESH_CODE_STORE` when
//! set), verified and cached on local disk.

use std::io::Write;

use anyhow::{Context, Result};
use fnmesh_nodes::node::{Node, NodeBackends};

use super::platform::{
    data_dir, node_config, open_bus, open_nats_code, open_registry, require_root, seal_code,
    shutdown_signal,
};
use crate::args::NodeCommand;
use crate::backends::{open_code_store, CodeStoreLocation};

pub async fn run(args: NodeCommand) -> Result<()> {
    require_root("node")?;
    let data_dir = data_dir(&args.common)?;
    let metrics = fnmesh_core::metrics::Registry::new();
    let signatures = crate::signing::signatures(
        &args.mesh.signing,
        &data_dir,
        crate::signing::Role::Node,
        &metrics,
    )?;
    let open = open_bus(
        Some(
            args.mesh
                .nats
                .options(&args.mesh.nats_url, fnmesh_core::subjects::InboxOwner::Node),
        ),
        &args.mesh.region,
        // A node only attaches to the streams its region's gateways made: its NATS
        // credentials (node.creds) may not manage streams.
        fnmesh_bus::BusConfig {
            manage_streams: false,
            signatures,
            ..args.mesh.delivery.bus_config()
        },
    )
    .await?;
    let code = match args.code_store.as_deref() {
        Some(setting) => open_code_store(&CodeStoreLocation::parse(setting)?).await?,
        None => open_nats_code(open.nats.as_ref(), &args.mesh.region)
            .await?
            .context("a node needs NATS to read code when FNMESH_CODE_STORE is not set")?,
    };
    let keyring = crate::secrets_key::keyring(&args.common.secrets, &data_dir)?;
    let code = seal_code(code, &args.common.secrets, &keyring);
    let registry = open_registry(open.nats.as_ref(), &args.mesh.region).await?;
    let node = Node::start(
        node_config(
            &args.node,
            &args.common,
            &data_dir,
            &args.mesh.region,
            open.nats.as_ref(),
        )?,
        NodeBackends {
            bus: open.bus,
            code,
            registry,
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
