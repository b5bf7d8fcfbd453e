//! The fnmesh HTTP gateway: API v1 over warp.
//!
//! It validates and stores functions (code normalised by [`fnmesh_core::archive`] and kept in
//! the code store), accepts invocations — records them `queued`, publishes them on the bus and,
//! for sync calls, waits for the outcome on an inbox — and runs the [`recorder`] that persists
//! node events and dead letters. Every `/v1` route needs an API key or an access token
//! ([`auth`]; minted by [`tokens`], keys managed by [`keys`]) and is rate limited per key, invocations also per function ([`ratelimit`]); errors are rendered in one
//! place ([`error`]).
//!
//! The map of the crate: [`routes`] is the filter tree; one module per operation under
//! [`functions`] and [`invocations`]; [`body`] reads capped bodies; [`server`] binds, serves and
//! drains; [`nats_api`] serves the same invocations to NATS request/reply clients; [`metrics`]
//! counts for `GET /metrics`.

#![warn(unreachable_pub)]

pub(crate) mod admin;
pub(crate) mod audit;
pub mod auth;
pub(crate) mod body;
pub(crate) mod catalog;
pub(crate) mod config;
pub mod destinations;
pub(crate) mod error;
pub(crate) mod failpoint;
pub(crate) mod functions;
pub(crate) mod health;
pub(crate) mod invocations;
pub(crate) mod keys;
pub(crate) mod lookups;
pub(crate) mod metrics;
pub(crate) mod nats_api;
pub(crate) mod openapi;
pub(crate) mod overflow;
pub(crate) mod permits;
pub(crate) mod pruner;
pub(crate) mod ratelimit;
pub(crate) mod reconciler;
pub mod recorder;
pub(crate) mod registries;
pub(crate) mod routes;
pub(crate) mod secrets;
pub(crate) mod server;
pub(crate) mod state;
pub(crate) mod telemetry;
pub(crate) mod tokens;
pub(crate) mod uplink;
pub(crate) mod workers;
pub(crate) mod writes;

pub use catalog::{CatalogError, CatalogLink, HubCodeOpener};
pub use config::{
    namespace_rate_limit, rate_limit_setting, ConfigError, GatewayConfig,
    DEFAULT_MAX_ARCHIVE_BYTES, DEFAULT_NAMESPACE_BURST, DEFAULT_NAMESPACE_RATE,
};
pub use error::{ApiError, GatewayError};
pub use server::Gateway;
pub use state::Backends;
pub use workers::BackgroundWorkers;
