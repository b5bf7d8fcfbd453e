//! The node's Prometheus metrics, and the small listener that serves them
//! (`FNMESH_METRICS_LISTEN`; off by default for `fnmesh node`). Like the gateway's
//! `/metrics`, it names every tenant's functions, so it answers only a scrape that presents
//! the scrape token (`FNMESH_METRICS_TOKEN`, as `Authorization: Bearer <token>`); anything
//! else is a 401 with the API's error body. A node holds no API keys to check an admin's
//! against, so the token is its only credential, and a listener without one is refused.
//! `GET /healthz` on the same listener answers `ok` without the token (it names nothing): the
//! liveness probe of deployments (Nomad's check, the compose healthcheck); the listener starts
//! once the node's work loop runs.
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

use fnmesh_core::metrics::{self as shared, seconds_of_us, LabelCap, Registry, ScrapeToken};
use fnmesh_core::InvocationResult;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
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
    /// A listen address without a scrape token.
    #[error(
        "serving node metrics (FNMESH_METRICS_LISTEN) needs a scrape token (FNMESH_METRICS_TOKEN)"
    )]
    NoToken,
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
    /// Binds `addr` and serves `GET /metrics` from `registry` to scrapes bearing `token`
    /// (without it: 401; any other path: 404) until `shutdown` is cancelled.
    pub async fn start(
        addr: SocketAddr,
        registry: Registry,
        token: ScrapeToken,
        shutdown: CancellationToken,
    ) -> Result<Self, MetricsError> {
        let bind = |source| MetricsError::Bind { addr, source };
        let listener = TcpListener::bind(addr).await.map_err(bind)?;
        let local_addr = listener.local_addr().map_err(bind)?;
        tracing::info!(metrics.addr = %local_addr, "node metrics listening");
        let task = tokio::spawn(serve(listener, registry, token, shutdown));
        Ok(Self { local_addr, task })
    }

    /// Waits for the listener to stop (after its shutdown token is cancelled).
    pub async fn stopped(self) {
        let _ = self.task.await;
    }
}

/// Accepts until `shutdown`, then lets the open connections finish (idle ones close at once).
async fn serve(
    listener: TcpListener,
    registry: Registry,
    token: ScrapeToken,
    shutdown: CancellationToken,
) {
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
        let token = token.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let response = answer(&registry, &token, &req);
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

fn answer<B>(registry: &Registry, token: &ScrapeToken, req: &Request<B>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::default());
    let authorization = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if req.uri().path() == "/healthz" {
        if req.method() == Method::GET || req.method() == Method::HEAD {
            *response.body_mut() = Full::from("ok\n");
        } else {
            *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        }
    } else if req.uri().path() != "/metrics" {
        *response.status_mut() = StatusCode::NOT_FOUND;
    } else if req.method() != Method::GET && req.method() != Method::HEAD {
        *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    } else if !token.matches_authorization(authorization) {
        // The body of the gateway's `ApiError::Unauthorized`.
        let body = serde_json::json!({"error": {
            "code": "unauthorized",
            "message": "this endpoint needs the metrics scrape token as a Bearer credential",
        }});
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        *response.body_mut() = Full::from(body.to_string());
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
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
    fn the_listener_answers_the_scrape_token_only() {
        let registry = Registry::new();
        let counter =
            IntCounterVec::new(Opts::new("fnmesh_test_total", "A test."), &["function"]).unwrap();
        registry.register(Box::new(counter.clone())).unwrap();
        counter.with_label_values(&["secret-fn"]).inc();
        let token = ScrapeToken::parse("node-scrape-token-0123").unwrap();
        let request = |authorization: Option<&str>, path: &str| {
            let mut req = Request::builder().method(Method::GET).uri(path);
            if let Some(value) = authorization {
                req = req.header(AUTHORIZATION, value);
            }
            req.body(()).unwrap()
        };
        let body_of = |response: Response<Full<Bytes>>| {
            use http_body_util::BodyExt as _;
            let collected = futures::executor::block_on(response.into_body().collect()).unwrap();
            String::from_utf8(collected.to_bytes().to_vec()).unwrap()
        };
        for refused in [
            None,
            Some("Bearer wrong-token-0123456"),
            Some("node-scrape-token-0123"),
        ] {
            let response = answer(&registry, &token, &request(refused, "/metrics"));
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{refused:?}");
            assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
            let body: serde_json::Value = serde_json::from_str(&body_of(response)).unwrap();
            assert_eq!(body["error"]["code"], "unauthorized");
            assert!(body["error"]["message"].is_string());
            assert!(!body.to_string().contains("secret-fn"));
        }
        let response = answer(
            &registry,
            &token,
            &request(Some("Bearer node-scrape-token-0123"), "/metrics"),
        );
        assert_eq!(response.status(), StatusCode::OK);
        assert!(body_of(response).contains("secret-fn"));
        let response = answer(
            &registry,
            &token,
            &request(Some("Bearer node-scrape-token-0123"), "/other"),
        );
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        // The liveness probe needs no token and names nothing.
        let response = answer(&registry, &token, &request(None, "/healthz"));
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(body_of(response), "ok\n");
    }

    #[test]
    fn load_gauges_are_sampled_when_scraped() {
        let registry = Registry::new();
        let sample: LoadSampler = Arc::new(|| Load {
            slots_total: 4,
            slots_free: 1,
            warm_sandboxes: 2,
            images: Vec::new(),
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
