//! `fnmesh node`: a worker node over NATS JetStream. It needs the bus and the code store
//! (by checksum), nothing else.

use std::io::Write;

use anyhow::Result;

use super::platform::{
    code_location, data_dir, open_bus, require_root, shutdown_signal, NodeHandle,
};
use crate::args::NodeCommand;
use crate::backends::open_code_store;

pub async fn run(args: NodeCommand) -> Result<()> {
    require_root("node")?;
    let data_dir = data_dir(&args.common)?;
    let bus = open_bus(
        Some(args.mesh.nats.options(&args.mesh.nats_url)),
        &args.mesh.region,
    )
    .await?
    .bus;
    let code = open_code_store(&code_location(args.code_store.as_deref(), &data_dir)?).await?;
    let node = NodeHandle::start(&args.node, &args.common, &data_dir, code, bus).await?;
    println!(
        "fnmesh node {} pulling work in region {}",
        node.node_id, args.mesh.region
    );
    let _ = std::io::stdout().flush();
    shutdown_signal().await;
    tracing::info!("shutting down: no new work; draining in-flight invocations");
    node.stop().await;
    tracing::info!("node stopped");
    Ok(())
}
