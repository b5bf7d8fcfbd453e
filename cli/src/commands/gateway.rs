//! `fnmesh gateway`: the HTTP API, recorder and reconciler over NATS JetStream; the nodes
//! that run the functions are separate processes (`fnmesh node`).

use std::io::Write;

use anyhow::{Context, Result};
use fnmesh_core::subjects::BusPrefix;
use std::sync::Arc;

use fnmesh_code::nats::NatsCodeStore;
use fnmesh_gateway::{CatalogLink, Gateway, HubCodeOpener};
use tokio_util::sync::CancellationToken;

use super::platform::{
    data_dir, open_bus, open_gateway, open_nats_code, open_registry, seal_code, shutdown_signal,
};
use crate::args::GatewayCommand;

/// Publishes the region's catalog, or follows the hub's (`FNMESH_HUB_REGION`).
fn catalog_link(
    args: &GatewayCommand,
    data_dir: &std::path::Path,
    client: async_nats::Client,
    region: BusPrefix,
) -> Result<CatalogLink> {
    let hub = match &args.hub_region {
        Some(hub) if hub != region.as_str() => {
            BusPrefix::parse(hub).with_context(|| format!("FNMESH_HUB_REGION {hub:?}"))?
        }
        _ => return Ok(CatalogLink::Publish { client, region }),
    };
    // The hub's code is sealed like this gateway's own when FNMESH_ENCRYPT_CODE is on (the
    // deployment shares one secrets key).
    let keyring = crate::secrets_key::keyring(&args.common.secrets, data_dir)?;
    let secrets = args.common.secrets.clone();
    let opener_client = client.clone();
    let opener_hub = hub.clone();
    let hub_code: HubCodeOpener = Arc::new(move || {
        let client = opener_client.clone();
        let hub = opener_hub.clone();
        let secrets = secrets.clone();
        let keyring = keyring.clone();
        Box::pin(async move {
            let store = NatsCodeStore::attach_in_domain(client, &hub, &hub).await?;
            Ok(seal_code(Arc::new(store), &secrets, &keyring))
        })
    });
    Ok(CatalogLink::Follow {
        client,
        region,
        hub,
        hub_code,
    })
}

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
    let replica = open_nats_code(
        open.nats.as_ref(),
        &args.mesh.region,
        args.mesh.delivery.stream_replicas,
    )
    .await?;
    // Nodes' entries carry their own time to live; the bucket's max_age is only a backstop.
    let registry = open_registry(
        open.nats.as_ref(),
        &args.mesh.region,
        args.mesh.delivery.stream_replicas,
    )
    .await?;
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
    let region = BusPrefix::parse(&args.mesh.region)?;
    let gateway = match open.nats.clone() {
        Some(client) => gateway
            .serve_nats_requests(client.clone(), &region)
            .await
            .context("serving NATS request/reply clients")?
            .replicate_catalog(catalog_link(&args, &data_dir, client, region)?)
            .await
            .context("replicating the catalog")?,
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
