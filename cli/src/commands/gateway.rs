//! `fnmesh gateway`: the HTTP API, recorder and reconciler over NATS JetStream; the nodes
//! that run the functions are separate processes (`fnmesh node`).

use std::io::Write;

use anyhow::{Context, Result};
use fnmesh_core::subjects::BusPrefix;
use fnmesh_gateway::Gateway;
use tokio_util::sync::CancellationToken;

use super::platform::{
    data_dir, open_bus, open_gateway, open_nats_code, open_registry, shutdown_signal,
};
use crate::args::GatewayCommand;

pub async fn run(args: GatewayCommand) -> Result<()> {
    let data_dir = data_dir(&args.common)?;
    let metrics = fnmesh_core::metrics::Registry::new();
    let signatures = crate::signing::signatures(
        &args.mesh.signing,
        &data_dir,
        crate::signing::Role::Gateway,
        &metrics,
    )?;
    let open = open_bus(
        Some(args.mesh.nats.options(
            &args.mesh.nats_url,
            fnmesh_core::subjects::InboxOwner::Gateway,
        )),
        &args.mesh.region,
        fnmesh_bus::BusConfig {
            signatures,
            ..args.mesh.delivery.bus_config()
        },
    )
    .await?;
    let replica = open_nats_code(open.nats.as_ref(), &args.mesh.region).await?;
    // Nodes' entries carry their own time to live; the bucket's max_age is only a backstop.
    let registry = open_registry(open.nats.as_ref(), &args.mesh.region).await?;
    let bus = open.bus;
    let parts = open_gateway(
        &args.gateway,
        &args.common,
        &data_dir,
        bus,
        replica,
        registry,
    )
    .await?;
    let listen = parts.config.listen;
    let gateway = Gateway::bind_with_registry(parts.config, parts.backends, &metrics)
        .await
        .with_context(|| format!("starting the HTTP API on {listen}"))?;
    let gateway = match open.nats.clone() {
        Some(client) => gateway
            .serve_nats_requests(client, &BusPrefix::parse(&args.mesh.region)?)
            .await
            .context("serving NATS request/reply clients")?,
        None => gateway,
    };
    println!("fnmesh gateway: http://{}", gateway.local_addr());
    println!("  admin key: {}", parts.admin.describe());
    println!("  region:    {}", args.mesh.region);
    let _ = std::io::stdout().flush();
    let stop = CancellationToken::new();
    let task = tokio::spawn(gateway.run(stop.clone()));
    shutdown_signal().await;
    tracing::info!("shutting down: no new requests; draining in-flight requests");
    stop.cancel();
    match task.await {
        Ok(result) => result.context("gateway")?,
        Err(e) => tracing::warn!(error = %e, "gateway task failed"),
    }
    tracing::info!("gateway stopped");
    Ok(())
}
