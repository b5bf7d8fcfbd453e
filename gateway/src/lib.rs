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

pub mod admin;
pub mod audit;
pub mod auth;
pub mod body;
pub mod config;
pub mod error;
pub mod failpoint;
pub mod functions;
pub mod health;
pub mod invocations;
pub mod keys;
pub mod metrics;
pub mod nats_api;
pub mod ratelimit;
pub mod reconciler;
pub mod recorder;
pub mod routes;
pub mod secrets;
pub mod server;
pub mod state;
pub mod telemetry;
pub mod tokens;
pub mod workers;

pub use config::GatewayConfig;
pub use error::{ApiError, GatewayError};
pub use server::Gateway;
pub use state::Backends;
