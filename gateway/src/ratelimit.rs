//! Rate limits of the API: per API key on every `/v1` request, per function on invoke.
//!
//! The limiter (in memory, or Redis shared by every gateway) counts requests under subjects
//! built here and nowhere else: `key:<key id>` with [`GatewayConfig::default_rate_limit`], and
//! `fn:<namespace>:<name>` with the function's `config.rate_limit` (all versions share it).
//! A refusal is [`ApiError::RateLimited`] (429 with `Retry-After` and `RateLimit-*`). A limiter
//! error admits the request with a warning: a rate limiter never turns into a 500.
//!
//! [`GatewayConfig::default_rate_limit`]: crate::config::GatewayConfig::default_rate_limit

use fnmesh_core::function::Function;
use fnmesh_core::names::{FunctionName, Namespace};
use fnmesh_ratelimit::RateLimit;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::State;

/// The subject of an API key's limit.
pub(crate) fn key_subject(key_id: &str) -> String {
    format!("key:{key_id}")
}

/// The subject of a function's limit.
pub(crate) fn function_subject(namespace: &Namespace, name: &FunctionName) -> String {
    format!("fn:{}:{}", namespace.as_str(), name.as_str())
}

/// Counts the request against the key's limit (the gateway-wide default).
pub(crate) async fn check_key(state: &State, principal: &Principal) -> Result<(), ApiError> {
    let Some(limit) = state.config.default_rate_limit else {
        return Ok(());
    };
    check(state, "key", &key_subject(&principal.key_id), limit).await
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

/// `scope` (`key` or `function`) labels refusals in the metrics.
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
