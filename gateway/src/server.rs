//! Binding, serving and draining.
//!
//! [`Gateway::bind`] binds the listener (so the caller learns the port before serving);
//! [`Gateway::run`] serves the API and runs the recorder until the shutdown token is cancelled,
//! then stops accepting, lets in-flight requests finish within `drain_timeout`, and stops the
//! recorder. [`Gateway::serve_nats_requests`] adds the NATS request API ([`crate::nats_api`]),
//! run and drained alongside the HTTP API.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fnmesh_core::metrics::Registry;
use hyper::service::Service as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit;
use crate::config::GatewayConfig;
use crate::error::GatewayError;
use crate::metrics::GatewayMetrics;
use crate::nats_api::NatsRequests;
use crate::routes;
use crate::state::{AppState, Backends, State};
use crate::workers::{BackgroundWorkers, WorkerParts};

/// Slowest accepted request head (guards against slow-loris clients).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause after a failed accept (out of descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A bound, not yet serving, gateway.
pub struct Gateway {
    listener: TcpListener,
    local_addr: SocketAddr,
    state: State,
    nats_requests: Option<NatsRequests>,
    catalog: Option<crate::catalog::Running>,
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
            catalog: None,
        })
    }

    /// Also serves NATS request/reply clients over `client` (see [`crate::nats_api`]) for
    /// `region` (the requests of any region's clients on this server, and those sent to
    /// `region` explicitly): the subscriptions are made now, so requests are taken once this
    /// returns.
    pub async fn serve_nats_requests(
        mut self,
        client: async_nats::Client,
        region: &fnmesh_core::subjects::BusPrefix,
    ) -> Result<Gateway, GatewayError> {
        // The same connection publishes destinations (gateways alone may publish them).
        let _ = self.state.destination_nats.set(client.clone());
        self.nats_requests = Some(NatsRequests::subscribe(client, region).await?);
        Ok(self)
    }

    /// Also replicates the catalog (see [`crate::catalog`]): publishes this region's, or
    /// follows a hub's and refuses catalog writes. Stopped after the drain.
    pub async fn replicate_catalog(
        mut self,
        link: crate::catalog::CatalogLink,
    ) -> Result<Gateway, GatewayError> {
        self.catalog = Some(crate::catalog::start(&self.state, link).await?);
        Ok(self)
    }

    /// Publishes what an in-process node pre-pulls for (functions' latest versions, registry
    /// credentials) into `feed`: everything now, then each change, until `stop`
    /// (`fnmesh up`; a gateway over NATS publishes its catalog bucket instead).
    pub fn feed_placements(
        &self,
        feed: fnmesh_bus::placements::memory::MemoryPlacements,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        crate::catalog::local::start(&self.state, feed, stop)
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Starts the recorder and reconciler outside [`Gateway::run`] (with
    /// `GatewayConfig::background_workers` off), for a process that must stop them later than
    /// the HTTP API. `catch_up`: see [`BackgroundWorkers::start`].
    pub async fn start_background_workers(&self, catch_up: bool) -> BackgroundWorkers {
        BackgroundWorkers::start(worker_parts(&self.state), catch_up).await
    }

    /// Serves until `shutdown` is cancelled, then drains in-flight requests (bounded by
    /// `drain_timeout`). Runs the recorder meanwhile.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), GatewayError> {
        let Gateway {
            listener,
            local_addr,
            state,
            nats_requests,
            catalog,
        } = self;
        let drain_timeout = state.config.drain_timeout;

        let background = if state.config.background_workers {
            Some(BackgroundWorkers::start(worker_parts(&state), false).await)
        } else {
            None
        };

        // Every response passes the audit log (see `crate::audit`), NATS requests' refusals
        // too; its writer stores entries until the server has drained.
        let (audit, audit_writer) = audit::channel(
            state.backends.store.clone(),
            audit::QUEUE_CAPACITY,
            state.config.audit_failure_window,
            audit::Counters::of(&state.metrics),
        );
        let audit_stop = CancellationToken::new();
        let audit_task = tokio::spawn(audit_writer.run(audit_stop.clone()));

        // Drains on the same token as the HTTP server, concurrently with it.
        let nats_task = nats_requests.map(|requests| {
            tokio::spawn(requests.serve(state.clone(), audit.clone(), shutdown.clone()))
        });

        // Log streams never end by themselves: they are ended when the drain begins.
        let followers = state.clone();
        let filter = routes::api(state);
        // Counts requests being handled, so the drain knows when only idle connections remain.
        let in_flight = TaskTracker::new();
        // Connections still open once the drain is over are dropped through this token.
        let dropped = CancellationToken::new();
        let graceful = GracefulShutdown::new();
        tracing::info!(http.addr = %local_addr, "gateway listening");
        loop {
            let (stream, remote) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of descriptors, most likely: back off instead of spinning.
                        tracing::warn!(error = %e, "the listener could not accept");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                },
                () = shutdown.cancelled() => break,
            };
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, "setting TCP_NODELAY");
            }
            let service = audit.service(warp::service(filter.clone()), Some(remote));
            let tracker = in_flight.clone();
            let service =
                hyper::service::service_fn(move |req| tracker.track_future(service.call(req)));
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let connection = graceful.watch(connection);
            let dropped = dropped.clone();
            tokio::spawn(async move {
                tokio::select! {
                    result = connection => if let Err(e) = result {
                        tracing::debug!(error = %e, "connection ended with an error");
                    },
                    () = dropped.cancelled() => {}
                }
            });
        }
        drop(listener);
        tracing::info!(
            drain_timeout_ms = drain_timeout.as_millis() as u64,
            "gateway draining"
        );
        followers.log_followers.stop();
        if tokio::time::timeout(drain_timeout, drain(graceful, &in_flight))
            .await
            .is_err()
        {
            tracing::warn!("drain timeout reached; dropping remaining connections");
        }
        dropped.cancel();
        if let Some(task) = nats_task {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "NATS request task failed");
            }
        }
        audit_stop.cancel();
        if let Err(e) = audit_task.await {
            tracing::warn!(error = %e, "audit writer task failed");
        }
        if let Some(background) = background {
            background.stop().await;
        }
        if let Some(catalog) = catalog {
            catalog.stop().await;
        }
        tracing::info!("gateway stopped");
        Ok(())
    }
}

/// How long the drain keeps waiting on the server once no request is in flight: responses
/// flush and idle keep-alive connections close in this time.
const FLUSH_GRACE: Duration = Duration::from_millis(500);

/// Shuts the connections down gracefully and waits for them, or, once no request is in
/// flight, for at most [`FLUSH_GRACE`] more. hyper 1 closes connections that sent nothing at
/// once, but waits for a connection whose request head is only partly sent until the
/// header-read timeout; those are dropped instead (by the caller). A request that arrives
/// meanwhile is waited for too. The caller bounds the whole by the drain timeout.
async fn drain(graceful: GracefulShutdown, in_flight: &TaskTracker) {
    let mut closed = std::pin::pin!(graceful.shutdown());
    // Closed, `wait` resolves whenever no request is in flight.
    in_flight.close();
    loop {
        tokio::select! {
            () = closed.as_mut() => return,
            () = in_flight.wait() => {}
        }
        match tokio::time::timeout(FLUSH_GRACE, closed.as_mut()).await {
            Ok(()) => return,
            Err(_) if in_flight.is_empty() => {
                tracing::debug!("drained; closing connections without a request in flight");
                return;
            }
            Err(_) => {}
        }
    }
}

fn worker_parts(state: &State) -> WorkerParts {
    WorkerParts {
        store: state.backends.store.clone(),
        bus: state.backends.bus.clone(),
        overflow: state.catalog.overflow().cloned(),
        metrics: state.metrics.clone(),
        writes: state.writes.clone(),
        reconcile_interval: state.config.reconcile_interval,
        reconcile_after: state.config.reconcile_after,
        retention: state.config.retention,
        prune_interval: state.config.prune_interval,
        destinations: crate::destinations::Dispatcher::new(
            state.backends.store.clone(),
            state.config.secrets_keyring.clone(),
            state.destination_nats.clone(),
            state.config.destinations.clone(),
            state.metrics.clone(),
        ),
    }
}
