//! The node's Prometheus metrics, and the small listener that serves them
//! (`FNMESH_METRICS_LISTEN`; off by default for `fnmesh node`).
//!
//! The worker counts what it ran ([`NodeMetrics::observe`]): `fnmesh_node_invocations_total`
//! by function and status, `fnmesh_node_cold_starts_total`, and the init and execution
//! histograms as this node measured them. Its load is read when scraped ([`LoadCollector`],
//! from the same sampler as the registry heartbeats): `fnmesh_node_slots{state="busy|free"}`
//! and `fnmesh_warm_sandboxes`. In `fnmesh up` the node registers in the gateway's registry,
//! so the gateway's `/metrics` shows these too.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use fnmesh_core::metrics::{self as shared, seconds_of_us, LabelCap, Registry};
use fnmesh_core::InvocationResult;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::registration::LoadSampler;

/// Why the node's metrics could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// A metric could not be registered (already registered in this registry?).
    #[error("registering node metrics: {0}")]
    Register(#[from] prometheus::Error),
    /// The listen address could not be bound.
    #[error("binding the metrics listener on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// What the worker counts.
pub struct NodeMetrics {
    functions: LabelCap,
    invocations: IntCounterVec,
    cold_starts: IntCounterVec,
    init_seconds: Histogram,
    execution_seconds: Histogram,
}

impl std::fmt::Debug for NodeMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeMetrics").finish_non_exhaustive()
    }
}

fn seconds(name: &str, help: &str) -> HistogramOpts {
    HistogramOpts::new(name, help).buckets(shared::SECONDS_BUCKETS.to_vec())
}

impl NodeMetrics {
    /// Registers the worker's metrics in `registry` (once per registry).
    pub fn register(registry: &Registry) -> Result<Arc<Self>, MetricsError> {
        let this = Self {
            functions: LabelCap::default(),
            invocations: IntCounterVec::new(
                Opts::new(
                    "fnmesh_node_invocations_total",
                    "Invocation attempts this node finished, by function and status.",
                ),
                &["function", "status"],
            )?,
            cold_starts: IntCounterVec::new(
                Opts::new(
                    "fnmesh_node_cold_starts_total",
                    "Invocations for which this node made a new sandbox, by function.",
                ),
                &["function"],
            )?,
            init_seconds: Histogram::with_opts(seconds(
                "fnmesh_node_invocation_init_seconds",
                "Making a sandbox for a cold start on this node.",
            ))?,
            execution_seconds: Histogram::with_opts(seconds(
                "fnmesh_node_invocation_execution_seconds",
                "Running the handler on this node.",
            ))?,
        };
        registry.register(Box::new(this.invocations.clone()))?;
        registry.register(Box::new(this.cold_starts.clone()))?;
        registry.register(Box::new(this.init_seconds.clone()))?;
        registry.register(Box::new(this.execution_seconds.clone()))?;
        Ok(Arc::new(this))
    }

    /// Counts one finished attempt.
    pub fn observe(&self, result: &InvocationResult) {
        let function = self.functions.label(result.function.as_str());
        // Phases first, the result counter last: a scrape that sees the count sees its phases.
        if let Some(m) = &result.metrics {
            if m.cold_start {
                self.cold_starts.with_label_values(&[&function]).inc();
                self.init_seconds.observe(seconds_of_us(m.init_us));
            }
            self.execution_seconds.observe(seconds_of_us(m.exec_us));
        }
        self.invocations
            .with_label_values(&[&function, result.status.as_str()])
            .inc();
    }
}

/// The node's load as gauges, sampled at each scrape.
pub struct LoadCollector {
    sample: LoadSampler,
    warm: IntGauge,
    slots: IntGaugeVec,
    descs: Vec<Desc>,
}

impl LoadCollector {
    /// Registers the load gauges in `registry`, read from `sample` when scraped.
    pub fn register(registry: &Registry, sample: LoadSampler) -> Result<(), MetricsError> {
        let warm = IntGauge::new(
            "fnmesh_warm_sandboxes",
            "Idle sandboxes on this node, ready to serve.",
        )?;
        let slots = IntGaugeVec::new(
            Opts::new(
                "fnmesh_node_slots",
                "This node's invocation slots, by state (busy, free).",
            ),
            &["state"],
        )?;
        let descs = warm
            .desc()
            .into_iter()
            .chain(slots.desc())
            .cloned()
            .collect();
        registry.register(Box::new(Self {
            sample,
            warm,
            slots,
            descs,
        }))?;
        Ok(())
    }
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Collector for LoadCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let load = (self.sample)();
        self.warm.set(gauge(load.warm_sandboxes));
        self.slots
            .with_label_values(&["busy"])
            .set(gauge(load.slots_total.saturating_sub(load.slots_free)));
        self.slots
            .with_label_values(&["free"])
            .set(gauge(load.slots_free));
        let mut families = self.warm.collect();
        families.extend(self.slots.collect());
        families
    }
}

/// A running metrics listener.
pub struct MetricsServer {
    /// The bound address.
    pub local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl MetricsServer {
    /// Binds `addr` and serves `GET /metrics` from `registry` (anything else: 404) until
    /// `shutdown` is cancelled.
    pub async fn start(
        addr: SocketAddr,
        registry: Registry,
        shutdown: CancellationToken,
    ) -> Result<Self, MetricsError> {
        let bind = |source| MetricsError::Bind { addr, source };
        let listener = TcpListener::bind(addr).await.map_err(bind)?;
        let local_addr = listener.local_addr().map_err(bind)?;
        tracing::info!(metrics.addr = %local_addr, "node metrics listening");
        let task = tokio::spawn(serve(listener, registry, shutdown));
        Ok(Self { local_addr, task })
    }

    /// Waits for the listener to stop (after its shutdown token is cancelled).
    pub async fn stopped(self) {
        let _ = self.task.await;
    }
}

/// Accepts until `shutdown`, then lets the open connections finish (idle ones close at once).
async fn serve(listener: TcpListener, registry: Registry, shutdown: CancellationToken) {
    let graceful = GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, most likely: back off instead of spinning.
                    tracing::warn!(error = %e, "the metrics listener could not accept");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let registry = registry.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let response = answer(&registry, &req);
            async move { Ok::<_, Infallible>(response) }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(std::time::Duration::from_secs(10))
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "metrics connection ended");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

fn answer<B>(registry: &Registry, req: &Request<B>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::default());
    if req.uri().path() != "/metrics" {
        *response.status_mut() = StatusCode::NOT_FOUND;
    } else if req.method() != Method::GET && req.method() != Method::HEAD {
        *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    } else {
        *response.body_mut() = Full::from(shared::encode(registry));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(shared::CONTENT_TYPE));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registration::Load;

    #[test]
    fn load_gauges_are_sampled_when_scraped() {
        let registry = Registry::new();
        let sample: LoadSampler = Arc::new(|| Load {
            slots_total: 4,
            slots_free: 1,
            warm_sandboxes: 2,
        });
        LoadCollector::register(&registry, sample).unwrap();
        NodeMetrics::register(&registry).unwrap();
        let text = shared::encode(&registry);
        assert!(
            text.contains("fnmesh_node_slots{state=\"busy\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("fnmesh_node_slots{state=\"free\"} 1"),
            "{text}"
        );
        assert!(text.contains("fnmesh_warm_sandboxes 2"), "{text}");
    }
}
