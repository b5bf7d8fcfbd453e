//! Rate limits of the API: per API key lineage on every `/v1` request, per namespace and per
//! function on invoke.
//!
//! The limiter (in memory, or Redis shared by every gateway) counts requests under subjects
//! built here and nowhere else: `key:<lineage root id>` with
//! [`GatewayConfig::default_rate_limit`] (a key and every key minted below it share one
//! bucket, so minting keys cannot multiply the limit), `ns:<namespace>` with
//! [`GatewayConfig::namespace_rate_limit`] on every invocation (HTTP or NATS), and
//! `fn:<namespace>:<name>` with the function's `config.rate_limit` (all versions share it).
//! A refusal is [`ApiError::RateLimited`] (429 with `Retry-After` and `RateLimit-*`). A limiter
//! error admits the request with a warning: a rate limiter never turns into a 500.
//!
//! [`GatewayConfig::default_rate_limit`]: crate::config::GatewayConfig::default_rate_limit
//! [`GatewayConfig::namespace_rate_limit`]: crate::config::GatewayConfig::namespace_rate_limit

use fnmesh_core::function::Function;
use fnmesh_core::names::{FunctionName, Namespace};
use fnmesh_ratelimit::RateLimit;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::State;

/// The subject of an API key lineage's limit (`root_id`: the lineage's root key).
pub(crate) fn key_subject(root_id: &str) -> String {
    format!("key:{root_id}")
}

/// The subject of a namespace's invocation limit.
pub(crate) fn namespace_subject(namespace: &Namespace) -> String {
    format!("ns:{}", namespace.as_str())
}

/// The subject of a function's limit.
pub(crate) fn function_subject(namespace: &Namespace, name: &FunctionName) -> String {
    format!("fn:{}:{}", namespace.as_str(), name.as_str())
}

/// Counts the request against the key lineage's limit (the gateway-wide default).
pub(crate) async fn check_key(state: &State, principal: &Principal) -> Result<(), ApiError> {
    let Some(limit) = state.config.default_rate_limit else {
        return Ok(());
    };
    check(state, "key", &key_subject(&principal.root_id), limit).await
}

/// Counts an invocation against its namespace's limit (the gateway-wide namespace limit).
pub(crate) async fn check_namespace(state: &State, namespace: &Namespace) -> Result<(), ApiError> {
    let Some(limit) = state.config.namespace_rate_limit else {
        return Ok(());
    };
    check(state, "namespace", &namespace_subject(namespace), limit).await
}

/// Counts an invocation against the function's own limit, if it has one.
pub(crate) async fn check_function(state: &State, function: &Function) -> Result<(), ApiError> {
    let Some(limit) = function.config.rate_limit else {
        return Ok(());
    };
    check(
        state,
        "function",
        &function_subject(&function.namespace, &function.name),
        limit,
    )
    .await
}

/// `scope` (`key`, `namespace` or `function`) labels refusals in the metrics.
async fn check(
    state: &State,
    scope: &'static str,
    subject: &str,
    limit: RateLimit,
) -> Result<(), ApiError> {
    match state.backends.limiter.check(subject, limit).await {
        Ok(decision) if decision.allowed => Ok(()),
        Ok(decision) => {
            tracing::info!(ratelimit.subject = subject, "rate limited");
            state.metrics.observe_rate_limited(scope);
            Err(ApiError::RateLimited {
                limit: decision.limit,
                remaining: decision.remaining,
                reset_after: decision.reset_after,
                retry_after: decision.retry_after.unwrap_or(decision.reset_after),
            })
        }
        Err(e) => {
            tracing::warn!(ratelimit.subject = subject, error = %e, "rate limiter failed; admitting the request");
            Ok(())
        }
    }
}
