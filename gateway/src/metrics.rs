//! The gateway's Prometheus metrics (served by `GET /metrics` in [`crate::health`]), and the
//! `Server-Timing` of sync responses.
//!
//! What is counted where:
//! - invocation results (`fnmesh_invocations_total{function,status}`, the phase histograms,
//!   `fnmesh_cold_starts_total`) and dead letters by the [`crate::recorder`], which sees every
//!   result of the mesh once (a redelivered event after a store error may count twice);
//! - rate-limit refusals by [`crate::ratelimit`], by scope (`key`, `function`);
//! - NATS requests dropped unanswered by [`crate::nats_api`], by reason;
//! - HTTP requests by the filter tree ([`crate::routes`]), labelled with the route template
//!   (`/v1/functions/{name}/invoke`), never the raw path;
//! - queue depths per function and messages per stream from [`Bus::queue_stats`], and the
//!   store's size, read when scraped (at most once per [`QUEUE_STATS_TTL`]), and the limiter's
//!   backend errors;
//! - write transactions of the invocation path and the rows they carry, by
//!   [`crate::writes`] (group commit) and the [`crate::recorder`]: divided by the invocations,
//!   the store transactions per invocation.
//!
//! Function labels are capped by [`LabelCap`] (beyond [`MAX_FUNCTION_LABELS`] names: `other`).
//! The registry is the process's: in `fnmesh up` the node registers its metrics in the same
//! one, so this endpoint shows both.
//!
//! [`MAX_FUNCTION_LABELS`]: fnmesh_core::metrics::MAX_FUNCTION_LABELS

use std::time::{Duration, Instant};

use fnmesh_bus::Bus;
use fnmesh_core::metrics::{self as shared, seconds_of_us, LabelCap, Registry};
use fnmesh_core::{InvocationResult, InvocationStatus};
use fnmesh_ratelimit::RateLimiter;
use fnmesh_store::MetadataStore;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
};
use warp::http::header::HeaderName;
use warp::http::{HeaderValue, Method};
use warp::reply::Response;

/// How long queue depths read from the bus are served before being read again.
pub(crate) const QUEUE_STATS_TTL: Duration = Duration::from_secs(1);
/// How long reading queue depths may take before the scrape goes on without them.
const QUEUE_STATS_TIMEOUT: Duration = Duration::from_secs(2);

/// The route label of a path that matches no route.
pub(crate) const UNMATCHED_ROUTE: &str = "unmatched";

/// Route templates of the API, as `route` labels (a route missing here counts as
/// [`UNMATCHED_ROUTE`]). `{…}` matches one non-empty path segment.
const ROUTES: &[&str] = &[
    "/healthz",
    "/readyz",
    "/metrics",
    "/v1/functions",
    "/v1/functions/{name}",
    "/v1/functions/{name}/versions",
    "/v1/functions/{name}/invoke",
    "/v1/functions/{name}/logs",
    "/v1/functions/{name}/secrets",
    "/v1/functions/{name}/secrets/{key}",
    "/v1/invocations",
    "/v1/invocations/{id}",
    "/v1/invocations/{id}/logs",
    "/v1/admin/dlq",
    "/v1/admin/dlq/{id}",
    "/v1/admin/dlq/{id}/replay",
    "/v1/admin/queues",
    "/v1/admin/nodes",
    "/v1/admin/audit",
    "/v1/admin/namespaces",
    "/v1/admin/namespaces/{namespace}",
    "/v1/auth/token",
    "/v1/auth/refresh",
    "/v1/auth/revoke",
    "/v1/keys",
    "/v1/keys/{id}",
];

/// The gateway's metrics, registered in the process's registry.
pub struct GatewayMetrics {
    registry: Registry,
    functions: LabelCap,
    invocations: IntCounterVec,
    cold_starts: IntCounterVec,
    queue_seconds: Histogram,
    init_seconds: Histogram,
    execution_seconds: Histogram,
    duration_seconds: Histogram,
    dead_letters: IntCounter,
    rate_limit_rejections: IntCounterVec,
    destination_deliveries: IntCounterVec,
    rate_limiter_errors: IntCounter,
    queue_pending: IntGaugeVec,
    queue_in_flight: IntGaugeVec,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    nats_requests_dropped: IntCounterVec,
    audit_dropped: IntCounterVec,
    concurrency_limited: IntCounterVec,
    store_transactions: IntCounterVec,
    store_writes: IntCounterVec,
    sync_sent: IntCounterVec,
    stream_messages: IntGaugeVec,
    store_bytes: prometheus::IntGauge,
    store_invocations: prometheus::IntGauge,
    queue_read_at: tokio::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for GatewayMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayMetrics").finish_non_exhaustive()
    }
}

fn seconds(name: &str, help: &str) -> HistogramOpts {
    HistogramOpts::new(name, help).buckets(shared::SECONDS_BUCKETS.to_vec())
}

impl GatewayMetrics {
    /// Registers the gateway's metrics in `registry` (once per registry).
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let this = Self {
            registry: registry.clone(),
            functions: LabelCap::default(),
            invocations: IntCounterVec::new(
                Opts::new(
                    "fnmesh_invocations_total",
                    "Finished invocations recorded, by function and final status.",
                ),
                &["function", "status"],
            )?,
            cold_starts: IntCounterVec::new(
                Opts::new(
                    "fnmesh_cold_starts_total",
                    "Recorded invocations that needed a new sandbox, by function.",
                ),
                &["function"],
            )?,
            queue_seconds: Histogram::with_opts(seconds(
                "fnmesh_invocation_queue_seconds",
                "From acceptance to a node starting the invocation.",
            ))?,
            init_seconds: Histogram::with_opts(seconds(
                "fnmesh_invocation_init_seconds",
                "Making a sandbox for a cold start (create, start, handler load).",
            ))?,
            execution_seconds: Histogram::with_opts(seconds(
                "fnmesh_invocation_execution_seconds",
                "The handler's execution, as seen by the node.",
            ))?,
            duration_seconds: Histogram::with_opts(seconds(
                "fnmesh_invocation_duration_seconds",
                "End to end: from acceptance to the node finishing.",
            ))?,
            dead_letters: IntCounter::new(
                "fnmesh_dead_letters_total",
                "Invocations dead-lettered after their attempts ran out.",
            )?,
            rate_limit_rejections: IntCounterVec::new(
                Opts::new(
                    "fnmesh_rate_limit_rejections_total",
                    "Requests refused by a rate limit, by scope (key, namespace, function).",
                ),
                &["scope"],
            )?,
            destination_deliveries: IntCounterVec::new(
                Opts::new(
                    "fnmesh_destination_deliveries_total",
                    "Tries of destination deliveries, by target type (nats, webhook) and \
                     outcome (delivered, retry, failed).",
                ),
                &["type", "outcome"],
            )?,
            rate_limiter_errors: IntCounter::new(
                "fnmesh_rate_limiter_errors_total",
                "Failures of the shared rate-limit backend (decided by the failure policy).",
            )?,
            queue_pending: IntGaugeVec::new(
                Opts::new(
                    "fnmesh_queue_pending",
                    "Invocations waiting to be delivered, by function.",
                ),
                &["function"],
            )?,
            queue_in_flight: IntGaugeVec::new(
                Opts::new(
                    "fnmesh_queue_in_flight",
                    "Invocations delivered and not yet settled, by function.",
                ),
                &["function"],
            )?,
            http_requests: IntCounterVec::new(
                Opts::new(
                    "fnmesh_http_requests_total",
                    "HTTP requests, by route template, method and status.",
                ),
                &["route", "method", "status"],
            )?,
            http_duration: HistogramVec::new(
                seconds(
                    "fnmesh_http_request_duration_seconds",
                    "Time to answer an HTTP request, by route template.",
                ),
                &["route"],
            )?,
            nats_requests_dropped: IntCounterVec::new(
                Opts::new(
                    "fnmesh_nats_requests_dropped_total",
                    "NATS requests not answered, by reason (no_reply: without a reply \
                     subject; reply_not_inbox: a reply subject that is not a reply inbox).",
                ),
                &["reason"],
            )?,
            audit_dropped: IntCounterVec::new(
                Opts::new(
                    "fnmesh_audit_entries_dropped_total",
                    "Audit entries not stored, by kind (auth_failure: aggregated 401s dropped \
                     under overload; management: lost because the writer stopped or the store \
                     kept failing).",
                ),
                &["kind"],
            )?,
            concurrency_limited: IntCounterVec::new(
                Opts::new(
                    "fnmesh_concurrency_limited_total",
                    "Requests refused by a per-key concurrency cap, by what (log_stream, \
                     nats_request).",
                ),
                &["what"],
            )?,
            store_transactions: IntCounterVec::new(
                Opts::new(
                    "fnmesh_store_write_transactions_total",
                    "Metadata store write transactions of the invocation path, by who wrote \
                     (invoke: the group commit of accepted records and sync outcomes; \
                     recorder: node events).",
                ),
                &["path"],
            )?,
            store_writes: IntCounterVec::new(
                Opts::new(
                    "fnmesh_store_writes_total",
                    "Rows written by those transactions, by kind (insert: accepted records; \
                     outcome: sync outcomes written through; event: node events the recorder wrote).",
                ),
                &["kind"],
            )?,
            sync_sent: IntCounterVec::new(
                Opts::new(
                    "fnmesh_sync_invocations_sent_total",
                    "Sync invocations sent to nodes, by path (direct: taken at once by a node \
                     with a free slot; queued: held in the work queue until a node pulled it).",
                ),
                &["path"],
            )?,
            stream_messages: IntGaugeVec::new(
                Opts::new(
                    "fnmesh_stream_messages",
                    "Messages held by the bus, by stream (work: invocations accepted and not \
                     yet settled; events: node events not yet recorded).",
                ),
                &["stream"],
            )?,
            store_bytes: prometheus::IntGauge::new(
                "fnmesh_store_bytes",
                "Size of the metadata store on disk (SQLite: the database file; PostgreSQL: \
                 the database).",
            )?,
            store_invocations: prometheus::IntGauge::new(
                "fnmesh_store_invocations",
                "Invocation records held by the metadata store (PostgreSQL: an estimate); \
                 bounded by the retention.",
            )?,
            queue_read_at: tokio::sync::Mutex::new(None),
        };
        registry.register(Box::new(this.invocations.clone()))?;
        registry.register(Box::new(this.cold_starts.clone()))?;
        registry.register(Box::new(this.queue_seconds.clone()))?;
        registry.register(Box::new(this.init_seconds.clone()))?;
        registry.register(Box::new(this.execution_seconds.clone()))?;
        registry.register(Box::new(this.duration_seconds.clone()))?;
        registry.register(Box::new(this.dead_letters.clone()))?;
        registry.register(Box::new(this.rate_limit_rejections.clone()))?;
        registry.register(Box::new(this.rate_limiter_errors.clone()))?;
        registry.register(Box::new(this.destination_deliveries.clone()))?;
        registry.register(Box::new(this.queue_pending.clone()))?;
        registry.register(Box::new(this.queue_in_flight.clone()))?;
        registry.register(Box::new(this.http_requests.clone()))?;
        registry.register(Box::new(this.http_duration.clone()))?;
        registry.register(Box::new(this.nats_requests_dropped.clone()))?;
        registry.register(Box::new(this.audit_dropped.clone()))?;
        registry.register(Box::new(this.concurrency_limited.clone()))?;
        registry.register(Box::new(this.store_transactions.clone()))?;
        registry.register(Box::new(this.store_writes.clone()))?;
        registry.register(Box::new(this.sync_sent.clone()))?;
        registry.register(Box::new(this.stream_messages.clone()))?;
        registry.register(Box::new(this.store_bytes.clone()))?;
        registry.register(Box::new(this.store_invocations.clone()))?;
        Ok(this)
    }

    /// Counts one recorded result (a node's `Finished` event, or a sync outcome whose node got
    /// its receipt: see `crate::writes`) with its phases.
    pub fn observe_result(&self, result: &InvocationResult) {
        let function = self.functions.label(result.function.as_str());
        // Phases first, the result counter last: a scrape that sees the count sees its phases.
        if let Some(m) = &result.metrics {
            self.queue_seconds.observe(seconds_of_us(m.queue_us));
            if m.cold_start {
                self.cold_starts.with_label_values(&[&function]).inc();
                self.init_seconds.observe(seconds_of_us(m.init_us));
            }
            self.execution_seconds.observe(seconds_of_us(m.exec_us));
            self.duration_seconds.observe(seconds_of_us(m.total_us));
        }
        self.invocations
            .with_label_values(&[&function, result.status.as_str()])
            .inc();
    }

    /// Counts one write transaction of `path` (`invoke`, `recorder`) carrying `inserts`
    /// accepted records and `outcomes` outcomes.
    pub(crate) fn observe_store_writes(&self, path: &'static str, inserts: usize, outcomes: usize) {
        self.store_transactions.with_label_values(&[path]).inc();
        for (kind, rows) in [("insert", inserts), ("outcome", outcomes)] {
            if rows > 0 {
                self.store_writes
                    .with_label_values(&[kind])
                    .inc_by(rows as u64);
            }
        }
    }

    /// Counts `transactions` write transactions of the recorder writing `events` node events.
    pub(crate) fn observe_recorder_writes(&self, transactions: usize, events: usize) {
        if transactions > 0 {
            self.store_transactions
                .with_label_values(&["recorder"])
                .inc_by(transactions as u64);
        }
        if events > 0 {
            self.store_writes
                .with_label_values(&["event"])
                .inc_by(events as u64);
        }
    }

    /// Counts one recorded dead letter of `function`.
    pub fn observe_dead_letter(&self, function: &str) {
        let function = self.functions.label(function);
        self.dead_letters.inc();
        self.invocations
            .with_label_values(&[&function, InvocationStatus::DeadLettered.as_str()])
            .inc();
    }

    /// Counts one try of a destination delivery of `kind` (`nats`, `webhook`) that ended as
    /// `outcome` (`delivered`, `retry`, `failed`).
    pub fn observe_destination(&self, kind: &'static str, outcome: &'static str) {
        self.destination_deliveries
            .with_label_values(&[kind, outcome])
            .inc();
    }

    /// Counts one request refused by a rate limit of `scope` (`key` or `function`).
    pub fn observe_rate_limited(&self, scope: &'static str) {
        self.rate_limit_rejections.with_label_values(&[scope]).inc();
    }

    /// The counter of audit entries of `kind` (`auth_failure`, `management`) not stored.
    pub(crate) fn audit_dropped(&self, kind: &'static str) -> prometheus::IntCounter {
        self.audit_dropped.with_label_values(&[kind])
    }

    /// Counts one sync invocation sent on `path` (`direct`, `queued`).
    pub(crate) fn observe_sync_sent(&self, path: &'static str) {
        self.sync_sent.with_label_values(&[path]).inc();
    }

    /// Counts one request refused by a per-key concurrency cap on `what` (`log_stream`,
    /// `nats_request`).
    pub(crate) fn observe_concurrency_limited(&self, what: &'static str) {
        self.concurrency_limited.with_label_values(&[what]).inc();
    }

    /// Counts one NATS request left unanswered for `reason` (`no_reply`, `reply_not_inbox`).
    pub(crate) fn observe_nats_request_dropped(&self, reason: &'static str) {
        self.nats_requests_dropped
            .with_label_values(&[reason])
            .inc();
    }

    /// Counts one answered HTTP request.
    pub fn observe_http(&self, method: &Method, path: &str, status: u16, elapsed: Duration) {
        let route = route_of(path);
        let method = match *method {
            Method::GET
            | Method::POST
            | Method::PUT
            | Method::DELETE
            | Method::HEAD
            | Method::PATCH
            | Method::OPTIONS => method.as_str(),
            _ => shared::OTHER,
        };
        let status = status.to_string();
        self.http_requests
            .with_label_values(&[route, method, &status])
            .inc();
        self.http_duration
            .with_label_values(&[route])
            .observe(elapsed.as_secs_f64());
    }

    /// Everything, in the text format: refreshes the queue depths and sizes (if older than
    /// [`QUEUE_STATS_TTL`]) and the limiter's error count first.
    pub async fn render(
        &self,
        bus: &dyn Bus,
        store: &dyn MetadataStore,
        limiter: &dyn RateLimiter,
    ) -> String {
        let errors = limiter.backend_errors();
        let seen = self.rate_limiter_errors.get();
        if errors > seen {
            self.rate_limiter_errors.inc_by(errors - seen);
        }
        self.refresh_queues(bus, store).await;
        shared::encode(&self.registry)
    }

    async fn refresh_queues(&self, bus: &dyn Bus, store: &dyn MetadataStore) {
        let mut read_at = self.queue_read_at.lock().await;
        if read_at.is_some_and(|at| at.elapsed() < QUEUE_STATS_TTL) {
            return;
        }
        match tokio::time::timeout(QUEUE_STATS_TIMEOUT, store.store_size()).await {
            Ok(Ok(size)) => {
                self.store_bytes
                    .set(i64::try_from(size.bytes).unwrap_or(i64::MAX));
                self.store_invocations
                    .set(i64::try_from(size.invocations).unwrap_or(i64::MAX));
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "reading the store's size for metrics failed"),
            Err(_) => tracing::warn!("reading the store's size for metrics timed out"),
        }
        let stats = match tokio::time::timeout(QUEUE_STATS_TIMEOUT, bus.queue_stats()).await {
            Ok(Ok(stats)) => stats,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "reading queue depths for metrics failed");
                return;
            }
            Err(_) => {
                tracing::warn!("reading queue depths for metrics timed out");
                return;
            }
        };
        for (stream, messages) in [("work", stats.invocations), ("events", stats.events)] {
            self.stream_messages
                .with_label_values(&[stream])
                .set(i64::try_from(messages).unwrap_or(i64::MAX));
        }
        // Functions whose queues emptied drop out; namespaces sharing a name add up.
        self.queue_pending.reset();
        self.queue_in_flight.reset();
        for q in &stats.functions {
            let function = self.functions.label(&q.function);
            self.queue_pending
                .with_label_values(&[&function])
                .add(i64::try_from(q.pending).unwrap_or(i64::MAX));
            self.queue_in_flight
                .with_label_values(&[&function])
                .add(i64::try_from(q.in_flight).unwrap_or(i64::MAX));
        }
        *read_at = Some(Instant::now());
    }
}

/// The template of the route `path` matches, or [`UNMATCHED_ROUTE`].
pub(crate) fn route_of(path: &str) -> &'static str {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    ROUTES
        .iter()
        .find(|route| {
            let pattern: Vec<&str> = route.split('/').collect();
            pattern.len() == segments.len()
                && pattern.iter().zip(&segments).all(|(p, s)| {
                    if p.starts_with('{') {
                        !s.is_empty()
                    } else {
                        p == s
                    }
                })
        })
        .copied()
        .unwrap_or(UNMATCHED_ROUTE)
}

/// The `Server-Timing` value of a finished invocation: `queue`, `init`, `exec` and `total`
/// durations in milliseconds with microsecond precision (the record's `*_us` fields), then
/// `cold` and `node` as descriptions. `None` before it ran.
pub(crate) fn server_timing(result: &InvocationResult) -> Option<String> {
    let m = result.metrics.as_ref()?;
    let mut value = format!(
        "queue;dur={}, init;dur={}, exec;dur={}, total;dur={}, cold;desc=\"{}\"",
        shared::ms_of_us(m.queue_us),
        shared::ms_of_us(m.init_us),
        shared::ms_of_us(m.exec_us),
        shared::ms_of_us(m.total_us),
        m.cold_start,
    );
    if let Some(node) = result.node_id.as_deref().filter(|n| is_token(n)) {
        value.push_str(&format!(", node;desc=\"{node}\""));
    }
    Some(value)
}

/// Adds `Server-Timing`, `X-Fnmesh-Node-Id` and `X-Fnmesh-Cold-Start` for `result` to a sync
/// response.
pub(crate) fn add_timing_headers(response: &mut Response, result: &InvocationResult) {
    let headers = response.headers_mut();
    if let Some(value) = server_timing(result).and_then(|v| HeaderValue::from_str(&v).ok()) {
        headers.insert(HeaderName::from_static("server-timing"), value);
    }
    if let Some(node) = result.node_id.as_deref().filter(|n| is_token(n)) {
        if let Ok(value) = HeaderValue::from_str(node) {
            headers.insert(HeaderName::from_static("x-fnmesh-node-id"), value);
        }
    }
    if let Some(m) = &result.metrics {
        headers.insert(
            HeaderName::from_static("x-fnmesh-cold-start"),
            HeaderValue::from_static(if m.cold_start { "true" } else { "false" }),
        );
    }
}

/// Whether `s` can stand in a quoted header value as it is.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_templates_not_paths() {
        assert_eq!(
            route_of("/v1/functions/resize/invoke"),
            "/v1/functions/{name}/invoke"
        );
        assert_eq!(route_of("/v1/functions/resize"), "/v1/functions/{name}");
        assert_eq!(route_of("/v1/functions"), "/v1/functions");
        assert_eq!(route_of("/v1/functions/"), "/v1/functions");
        assert_eq!(
            route_of("/v1/invocations/0190-abc/logs"),
            "/v1/invocations/{id}/logs"
        );
        assert_eq!(route_of("/metrics"), "/metrics");
        assert_eq!(route_of("/v1/functions/a/b/c"), UNMATCHED_ROUTE);
        assert_eq!(route_of("/nope"), UNMATCHED_ROUTE);
        assert_eq!(route_of("/v1/functions//invoke"), UNMATCHED_ROUTE);
    }

    #[test]
    fn server_timing_of_a_record_with_only_milliseconds() {
        // A record written by a node that predates the `*_us` fields.
        let result: InvocationResult = serde_json::from_value(serde_json::json!({
            "id": fnmesh_core::InvocationId::new(),
            "namespace": "acme",
            "function": "resize",
            "version": 1,
            "status": "succeeded",
            "metrics": {
                "queue_ms": 2, "init_ms": 0, "duration_ms": 5,
                "cold_start": false, "memory_peak_bytes": 0
            },
            "node_id": "node-1",
            "attempt": 1,
            "created_at": "2026-12-04T00:00:00Z"
        }))
        .expect("record");
        assert_eq!(
            server_timing(&result).as_deref(),
            Some(
                "queue;dur=2.000, init;dur=0.000, exec;dur=5.000, total;dur=0.000, \
                 cold;desc=\"false\", node;desc=\"node-1\""
            )
        );
    }
}
