//! What one invocation costs besides time, counted over the throughput run: the metadata
//! store's write transactions and rows (the gateway's `/metrics`) and the messages the NATS
//! server carried (its `/varz`), background traffic (heartbeats, sweeps) included.

use anyhow::{ensure, Context, Result};
use serde::Serialize;
use serde_json::Value;

/// Counters read at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Counts {
    store_transactions: f64,
    store_rows: f64,
    sync_direct: f64,
    sync_queued: f64,
    nats_in: Option<f64>,
    nats_out: Option<f64>,
}

/// Per invocation, between two [`Counts`].
#[derive(Debug, Clone, Serialize)]
pub struct PerInvocation {
    /// Metadata store write transactions (group commits and recorder batches).
    pub store_transactions: f64,
    /// Rows those transactions wrote.
    pub store_rows: f64,
    /// Share of the sync invocations sent straight to a node (the direct path), 0 to 1;
    /// `None` when none was sent.
    pub sync_direct_share: Option<f64>,
    /// Messages clients published to the NATS server (when the bench started it).
    pub nats_messages_in: Option<f64>,
    /// Messages the NATS server delivered to clients.
    pub nats_messages_out: Option<f64>,
}

impl Counts {
    /// Reads the gateway's counters, and the NATS server's if `monitor` is its endpoint.
    pub(super) async fn read(
        http: &reqwest::Client,
        gateway: &str,
        key: &str,
        monitor: Option<&str>,
    ) -> Result<Self> {
        let text = http
            .get(format!("{gateway}/metrics"))
            .bearer_auth(key)
            .send()
            .await
            .context("scraping the gateway's metrics")?
            .error_for_status()?
            .text()
            .await?;
        let samples = fnmesh_core::metrics::parse_text(&text)
            .map_err(|e| anyhow::anyhow!("parsing the gateway's metrics: {e}"))?;
        let sum = |name: &str| {
            samples
                .iter()
                .filter(|s| s.name == name)
                .map(|s| s.value)
                .sum::<f64>()
        };
        let mut counts = Counts {
            store_transactions: sum("fnmesh_store_write_transactions_total"),
            store_rows: sum("fnmesh_store_writes_total"),
            sync_direct: samples
                .iter()
                .filter(|s| {
                    s.name == "fnmesh_sync_invocations_sent_total"
                        && s.labels.get("path").is_some_and(|p| p == "direct")
                })
                .map(|s| s.value)
                .sum(),
            sync_queued: samples
                .iter()
                .filter(|s| {
                    s.name == "fnmesh_sync_invocations_sent_total"
                        && s.labels.get("path").is_some_and(|p| p == "queued")
                })
                .map(|s| s.value)
                .sum(),
            ..Counts::default()
        };
        if let Some(monitor) = monitor {
            let varz: Value = http
                .get(format!("{monitor}/varz"))
                .send()
                .await
                .context("reading the NATS server's /varz")?
                .json()
                .await?;
            let field = |name: &str| varz[name].as_f64();
            ensure!(
                field("in_msgs").is_some(),
                "the NATS server's /varz has no in_msgs"
            );
            counts.nats_in = field("in_msgs");
            counts.nats_out = field("out_msgs");
        }
        Ok(counts)
    }

    /// What happened since `before`, per each of `invocations`.
    pub(super) fn per_invocation(&self, before: &Counts, invocations: u64) -> PerInvocation {
        let n = invocations.max(1) as f64;
        let delta = |after: Option<f64>, before: Option<f64>| Some((after? - before?) / n);
        PerInvocation {
            store_transactions: (self.store_transactions - before.store_transactions) / n,
            store_rows: (self.store_rows - before.store_rows) / n,
            sync_direct_share: {
                let direct = self.sync_direct - before.sync_direct;
                let all = direct + self.sync_queued - before.sync_queued;
                (all > 0.0).then(|| direct / all)
            },
            nats_messages_in: delta(self.nats_in, before.nats_in),
            nats_messages_out: delta(self.nats_out, before.nats_out),
        }
    }
}
