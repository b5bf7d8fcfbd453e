//! `fnmesh up`: a gateway and a node in one process — on the embedded backends (SQLite, a
//! local code directory, the in-process bus, in-memory rate limits) by default — with real
//! sandboxes.

use std::io::Write;
use std::sync::Arc;

use anyhow::{Context, Result};
use fnmesh_bus::placements::memory::MemoryPlacements;
use fnmesh_core::metrics::Registry;
use fnmesh_core::subjects::BusPrefix;
use fnmesh_gateway::Gateway;
use fnmesh_nodes::node::{Node, NodeBackends};
use tokio_util::sync::CancellationToken;

use super::platform::{
    data_dir, fail_interrupted_invocations, node_config, open_bus, open_gateway, open_nats_code,
    open_registry, require_root, shutdown_signal,
};
use crate::args::UpArgs;

pub async fn run(args: UpArgs) -> Result<()> {
    require_root("up")?;
    let data_dir = data_dir(&args.common)?;
    let durable_bus = args.nats_url.is_some();
    // One metrics registry: the gateway's `/metrics` shows the node's metrics too.
    let metrics = Registry::new();
    let mut config = args.delivery.bus_config();
    if durable_bus {
        // Over NATS other nodes may run this gateway's work, and this node others' work.
        config.signatures = crate::signing::signatures(
            &args.signing,
            &data_dir,
            crate::signing::Role::Gateway,
            &metrics,
        )?;
    }
    let open = open_bus(
        args.nats_url.as_deref().map(|url| {
            args.nats
                .options(url, fnmesh_core::subjects::InboxOwner::Gateway)
        }),
        &args.region,
        config,
    )
    .await?;
    let replica = open_nats_code(
        open.nats.as_ref(),
        &args.region,
        args.delivery.stream_replicas,
    )
    .await?;
    // One registry for the gateway and the node (in-process without NATS).
    let registry = open_registry(
        open.nats.as_ref(),
        &args.region,
        args.delivery.stream_replicas,
    )
    .await?;
    let bus = open.bus;
    let mut parts = open_gateway(
        &args.gateway,
        &args.common,
        &data_dir,
        bus.clone(),
        replica,
        registry.clone(),
    )
    .await?;
    // The recorder and reconciler run here instead, so they outlive the node's drain.
    parts.config.background_workers = false;
    if !durable_bus {
        fail_interrupted_invocations(parts.backends.store.as_ref()).await?;
    }
    // What the node pre-pulls for comes straight from this process's gateway.
    let placements = MemoryPlacements::new();
    let node = Node::start(
        node_config(
            &args.node,
            &args.common,
            &data_dir,
            &args.region,
            open.nats.as_ref(),
        )?,
        NodeBackends {
            bus: bus.clone(),
            code: parts.backends.code.clone(),
            registry,
            placements: Some(Arc::new(placements.clone())),
        },
        &metrics,
    )
    .await?;
    let listen = parts.config.listen;
    let gateway = Gateway::bind_with_registry(parts.config, parts.backends, &metrics)
        .await
        .with_context(|| format!("starting the HTTP API on {listen}"))?;
    let gateway = match open.nats.clone() {
        Some(client) => gateway
            .serve_nats_requests(client, &BusPrefix::parse(&args.region)?)
            .await
            .context("serving NATS request/reply clients")?,
        None => gateway,
    };
    let addr = gateway.local_addr();
    let placements_stop = CancellationToken::new();
    let placements_task = gateway.feed_placements(placements, placements_stop.clone());

    println!("fnmesh is up: http://{addr}");
    println!("  data dir:  {}", data_dir.display());
    println!("  admin key: {}", parts.admin.describe());
    println!("  node:      {}", node.id());
    println!("stop with Ctrl-C");
    let _ = std::io::stdout().flush();

    // The in-process bus did not survive the previous run: catch up on what it still owed.
    let background = gateway.start_background_workers(!durable_bus).await;
    let gateway_stop = CancellationToken::new();
    let gateway_task = tokio::spawn(gateway.run(gateway_stop.clone()));

    shutdown_signal().await;
    tracing::info!("shutting down: no new requests; draining in-flight work");
    // The gateway drains first (its in-flight sync calls need the node), then the node, then
    // the recorder records what the drain finished.
    gateway_stop.cancel();
    match gateway_task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "gateway stopped with an error"),
        Err(e) => tracing::warn!(error = %e, "gateway task failed"),
    }
    placements_stop.cancel();
    let _ = placements_task.await;
    node.stop().await;
    background.stop().await;
    tracing::info!("fnmesh stopped");
    Ok(())
}
