//! Binding, serving and draining.
//!
//! [`Gateway::bind`] binds the listener (so the caller learns the port before serving);
//! [`Gateway::run`] serves the API and runs the recorder until the shutdown token is cancelled,
//! then stops accepting, lets in-flight requests finish within `drain_timeout`, and stops the
//! recorder. [`Gateway::serve_nats_requests`] adds the NATS request API ([`crate::nats_api`]),
//! run and drained alongside the HTTP API.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fnmesh_core::metrics::Registry;
use hyper::server::conn::{AddrIncoming, AddrStream};
use hyper::service::Service as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit;
use crate::config::GatewayConfig;
use crate::error::GatewayError;
use crate::metrics::GatewayMetrics;
use crate::nats_api::NatsRequests;
use crate::reconciler::Reconciler;
use crate::recorder::Recorder;
use crate::routes;
use crate::state::{AppState, Backends, State};

/// Slowest accepted request head (guards against slow-loris clients).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A bound, not yet serving, gateway.
pub struct Gateway {
    listener: TcpListener,
    local_addr: SocketAddr,
    state: State,
    nats_requests: Option<NatsRequests>,
}

impl Gateway {
    /// Binds the listener (port 0 picks a free port), with metrics in a registry of its own.
    pub async fn bind(config: GatewayConfig, backends: Backends) -> Result<Gateway, GatewayError> {
        Self::bind_with_registry(config, backends, &Registry::new()).await
    }

    /// Binds the listener, registering the gateway's metrics in the process's `registry`
    /// (which `GET /metrics` then shows whole, e.g. with a node's metrics in `fnmesh up`).
    pub async fn bind_with_registry(
        config: GatewayConfig,
        backends: Backends,
        registry: &Registry,
    ) -> Result<Gateway, GatewayError> {
        let metrics = Arc::new(GatewayMetrics::register(registry)?);
        let addr = config.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| GatewayError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| GatewayError::Bind { addr, source })?;
        Ok(Gateway {
            listener,
            local_addr,
            state: AppState::new(config, backends, metrics),
            nats_requests: None,
        })
    }

    /// Also serves NATS request/reply clients over `client` (see [`crate::nats_api`]): the
    /// subscription is made now, so requests are taken once this returns.
    pub async fn serve_nats_requests(
        mut self,
        client: async_nats::Client,
    ) -> Result<Gateway, GatewayError> {
        self.nats_requests = Some(NatsRequests::subscribe(client).await?);
        Ok(self)
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The gateway's metrics (for a recorder run outside [`Gateway::run`]).
    pub fn metrics(&self) -> Arc<GatewayMetrics> {
        self.state.metrics.clone()
    }

    /// Serves until `shutdown` is cancelled, then drains in-flight requests (bounded by
    /// `drain_timeout`). Runs the recorder meanwhile.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), GatewayError> {
        let Gateway {
            listener,
            local_addr,
            state,
            nats_requests,
        } = self;
        let drain_timeout = state.config.drain_timeout;

        let background_stop = shutdown.child_token();
        let mut background = Vec::new();
        if state.config.background_workers {
            let recorder = Recorder::new(state.backends.store.clone(), state.backends.bus.clone())
                .with_metrics(state.metrics.clone());
            background.push(tokio::spawn(recorder.run(background_stop.clone())));
            let reconciler = Reconciler::new(
                state.backends.store.clone(),
                state.backends.bus.clone(),
                state.config.reconcile_interval,
                state.config.reconcile_after,
            );
            background.push(tokio::spawn(reconciler.run(background_stop.clone())));
        }

        // Every response passes the audit log (see `crate::audit`), NATS requests' refusals
        // too; its writer stores entries until the server has drained.
        let (audit, audit_writer) =
            audit::channel(state.backends.store.clone(), audit::QUEUE_CAPACITY);
        let audit_stop = CancellationToken::new();
        let audit_task = tokio::spawn(audit_writer.run(audit_stop.clone()));

        // Drains on the same token as the HTTP server, concurrently with it.
        let nats_task = nats_requests.map(|requests| {
            tokio::spawn(requests.serve(state.clone(), audit.clone(), shutdown.clone()))
        });

        let mut incoming = AddrIncoming::from_listener(listener)
            .map_err(|e| GatewayError::Server(e.to_string()))?;
        incoming.set_nodelay(true);
        // Log streams never end by themselves: they are ended when the drain begins.
        let followers = state.clone();
        let filter = routes::api(state);
        // Counts requests being handled, so the drain knows when only idle connections remain.
        let in_flight = TaskTracker::new();
        let tracker = in_flight.clone();
        let make_service = hyper::service::make_service_fn(move |conn: &AddrStream| {
            let service = audit.service(warp::service(filter.clone()), Some(conn.remote_addr()));
            let tracker = tracker.clone();
            let service = hyper::service::service_fn(move |req| {
                tracker.track_future(service.clone().call(req))
            });
            async move { Ok::<_, Infallible>(service) }
        });
        let signal = shutdown.clone();
        let server = hyper::Server::builder(incoming)
            .http1_header_read_timeout(HEADER_READ_TIMEOUT)
            .serve(make_service)
            .with_graceful_shutdown(async move { signal.cancelled().await });
        tracing::info!(http.addr = %local_addr, "gateway listening");

        let mut server = std::pin::pin!(server);
        let served = tokio::select! {
            result = &mut server => result,
            _ = shutdown.cancelled() => {
                tracing::info!(drain_timeout_ms = drain_timeout.as_millis() as u64, "gateway draining");
                followers.log_followers.stop();
                match tokio::time::timeout(drain_timeout, drain(&mut server, &in_flight)).await {
                    Ok(result) => result,
                    Err(_) => {
                        tracing::warn!("drain timeout reached; dropping remaining connections");
                        Ok(())
                    }
                }
            }
        };
        if let Some(task) = nats_task {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "NATS request task failed");
            }
        }
        audit_stop.cancel();
        if let Err(e) = audit_task.await {
            tracing::warn!(error = %e, "audit writer task failed");
        }
        background_stop.cancel();
        for task in background {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "background task failed");
            }
        }
        tracing::info!("gateway stopped");
        served.map_err(|e| GatewayError::Server(e.to_string()))
    }
}

/// How long the drain keeps waiting on the server once no request is in flight: responses
/// flush and idle keep-alive connections close in this time.
const FLUSH_GRACE: Duration = Duration::from_millis(500);

/// Waits for the (gracefully shutting down) `server` to finish, or, once no request is in
/// flight, for at most [`FLUSH_GRACE`] more. hyper 0.14's graceful shutdown also waits for
/// connections that were opened but never sent a request (hyperium/hyper#2730; clients' pools
/// leave such connections behind when they race a new connection against an idle one), until
/// the header-read timeout; those are dropped instead. A request that arrives meanwhile is
/// waited for too. The caller bounds the whole by the drain timeout.
async fn drain<F>(server: &mut std::pin::Pin<&mut F>, in_flight: &TaskTracker) -> hyper::Result<()>
where
    F: std::future::Future<Output = hyper::Result<()>>,
{
    // Closed, `wait` resolves whenever no request is in flight.
    in_flight.close();
    loop {
        tokio::select! {
            result = server.as_mut() => return result,
            () = in_flight.wait() => {}
        }
        match tokio::time::timeout(FLUSH_GRACE, server.as_mut()).await {
            Ok(result) => return result,
            Err(_) if in_flight.is_empty() => {
                tracing::debug!("drained; closing connections that sent no request");
                return Ok(());
            }
            Err(_) => {}
        }
    }
}
