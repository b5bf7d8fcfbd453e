//! What `GET /v1/admin/regions` and `GET /v1/admin/nodes` show of the other regions: each
//! region's link state and replication lag, and (at a hub) the nodes of every edge.
//!
//! A link is `up` when the other region's JetStream answers through it within
//! [`PROBE_TIMEOUT`]; the lags come from the streams that replicate over it (the edge's
//! catalog mirror, the hub's sources of the edges' records), as the servers report them.

use std::time::Duration;

use async_nats::jetstream::{self, stream::SourceInfo};
use fnmesh_bus::registry::jetstream::JetStreamRegistry;
use fnmesh_bus::registry::{NodeInfo, NodeRegistry as _};
use fnmesh_core::subjects::{self, BusPrefix};
use serde::Serialize;

use super::importer::edges_of;

/// How long a probe of another region's JetStream waits.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The state of the link to a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[derive(utoipa::ToSchema)]
pub(crate) enum Link {
    /// This gateway's own region.
    Local,
    /// Its JetStream answers over the leaf link.
    Up,
    /// It does not answer.
    Down,
}

/// One replication over a link, as its stream's server reports it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct Replication {
    /// Messages the copy is behind its origin (as of the server's last contact).
    pub lag: u64,
    /// Milliseconds since the server last heard from the origin (`null`: never).
    pub last_seen_ms: Option<u64>,
    /// Messages copied but not yet stored by a gateway (records at a hub).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unapplied: Option<u64>,
}

impl Replication {
    fn of(source: &SourceInfo, unapplied: Option<u64>) -> Self {
        Replication {
            lag: source.lag,
            last_seen_ms: source
                .active
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            unapplied,
        }
    }
}

/// One region as a gateway sees it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct RegionStatus {
    /// Its name (bus prefix and JetStream domain).
    pub name: String,
    /// `hub` or `edge` (a region over NATS that follows none is a hub to its edges).
    #[schema(value_type = String)]
    pub role: &'static str,
    /// The link from this gateway's region to it.
    pub link: Link,
    /// The hub it follows (edges).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hub: Option<String>,
    /// The hub's catalog, mirrored into this edge.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub catalog: Option<Replication>,
    /// This edge's records, sourced into the hub.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub records: Option<Replication>,
    /// Why something about it could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The nodes of one other region, or why they could not be listed.
pub(crate) struct RemoteNodes {
    /// The region.
    pub region: BusPrefix,
    /// Its live nodes.
    pub nodes: Result<Vec<NodeInfo>, String>,
}

/// The other regions of a gateway over NATS.
pub(crate) struct Regions {
    client: async_nats::Client,
    region: BusPrefix,
    hub: Option<BusPrefix>,
}

impl Regions {
    /// The view of a gateway of `region`, which follows `hub` if it is an edge.
    pub(crate) fn new(
        client: async_nats::Client,
        region: BusPrefix,
        hub: Option<BusPrefix>,
    ) -> Self {
        Regions {
            client,
            region,
            hub,
        }
    }

    /// Whether `domain`'s JetStream answers `stream`'s info through the link.
    async fn probe(&self, domain: &BusPrefix, stream: &str) -> Result<(), String> {
        let js = jetstream::with_domain(self.client.clone(), domain.as_str());
        match tokio::time::timeout(PROBE_TIMEOUT, js.get_stream(stream)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".to_owned()),
        }
    }

    /// Every region this gateway knows of, its own first.
    pub(crate) async fn list(&self) -> Vec<RegionStatus> {
        let js = jetstream::new(self.client.clone());
        match &self.hub {
            Some(hub) => {
                let probe = self
                    .probe(hub, &subjects::records_import_stream(hub, &self.region))
                    .await;
                let link = if probe.is_ok() { Link::Up } else { Link::Down };
                let mirror = js
                    .get_stream(subjects::catalog_mirror_stream(&self.region))
                    .await
                    .map_err(|e| e.to_string())
                    .map(|s| s.cached_info().mirror.clone());
                let (catalog, error) = match mirror {
                    Ok(Some(source)) => (Some(Replication::of(&source, None)), None),
                    Ok(None) => (None, Some("the catalog mirror has no source".to_owned())),
                    Err(e) => (None, Some(format!("reading the catalog mirror: {e}"))),
                };
                vec![
                    RegionStatus {
                        name: self.region.to_string(),
                        role: "edge",
                        link: Link::Local,
                        hub: Some(hub.to_string()),
                        catalog,
                        records: None,
                        error,
                    },
                    RegionStatus {
                        name: hub.to_string(),
                        role: "hub",
                        link,
                        hub: None,
                        catalog: None,
                        records: None,
                        error: probe.err(),
                    },
                ]
            }
            None => {
                let mut regions = vec![RegionStatus {
                    name: self.region.to_string(),
                    role: "hub",
                    link: Link::Local,
                    hub: None,
                    catalog: None,
                    records: None,
                    error: None,
                }];
                let edges = match edges_of(&js, &self.region).await {
                    Ok(edges) => edges,
                    Err(e) => {
                        regions[0].error = Some(format!("listing the edges: {e}"));
                        return regions;
                    }
                };
                for (edge, stream) in edges {
                    let probe = self.probe(&edge, &subjects::records_stream(&edge)).await;
                    let (records, error) = records_status(&js, &stream).await;
                    regions.push(RegionStatus {
                        name: edge.to_string(),
                        role: "edge",
                        link: if probe.is_ok() { Link::Up } else { Link::Down },
                        hub: Some(self.region.to_string()),
                        catalog: None,
                        records,
                        error: probe.err().or(error),
                    });
                }
                regions
            }
        }
    }

    /// The live nodes of every edge of this hub (none at an edge: its hub's nodes are the
    /// hub's business).
    pub(crate) async fn remote_nodes(&self) -> Vec<RemoteNodes> {
        if self.hub.is_some() {
            return Vec::new();
        }
        let js = jetstream::new(self.client.clone());
        let Ok(edges) = edges_of(&js, &self.region).await else {
            return Vec::new();
        };
        let mut all = Vec::with_capacity(edges.len());
        for (edge, _) in edges {
            let listed = async {
                let registry =
                    JetStreamRegistry::attach_in_domain(self.client.clone(), &edge, &edge)
                        .await
                        .map_err(|e| e.to_string())?;
                tokio::time::timeout(PROBE_TIMEOUT, registry.list())
                    .await
                    .map_err(|_| "timed out".to_owned())?
                    .map_err(|e| e.to_string())
            };
            let nodes = match tokio::time::timeout(PROBE_TIMEOUT * 2, listed).await {
                Ok(nodes) => nodes,
                Err(_) => Err("timed out".to_owned()),
            };
            all.push(RemoteNodes {
                region: edge,
                nodes,
            });
        }
        all
    }
}

/// The hub's copy of an edge's records: the source's lag and what the importer has not
/// stored yet.
async fn records_status(
    js: &jetstream::Context,
    name: &str,
) -> (Option<Replication>, Option<String>) {
    let mut stream = match js.get_stream(name).await {
        Ok(stream) => stream,
        Err(e) => return (None, Some(format!("reading {name}: {e}"))),
    };
    let Some(source) = stream.cached_info().sources.first().cloned() else {
        return (None, Some(format!("{name} has no source")));
    };
    let unapplied = match stream
        .consumer_info(subjects::RECORDS_IMPORT_CONSUMER)
        .await
    {
        Ok(info) => Some(info.num_pending + info.num_ack_pending as u64),
        // No gateway has imported yet: everything is unapplied.
        Err(_) => stream.info().await.ok().map(|i| i.state.messages),
    };
    (Some(Replication::of(&source, unapplied)), None)
}
