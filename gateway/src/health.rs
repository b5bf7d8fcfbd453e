//! The operational endpoints: `GET /healthz` (the process answers) and `GET /readyz` (every
//! backend answers its ping) need no key, for load balancers and orchestrators; `GET /metrics`
//! (Prometheus text, see [`crate::metrics`]) names every tenant's functions, so it needs an
//! admin's API key or access token, or the scrape token (`FNMESH_METRICS_TOKEN`) when one is
//! configured.

use std::future::Future;
use std::time::Duration;

use fnmesh_core::metrics::CONTENT_TYPE as METRICS_CONTENT_TYPE;
use serde_json::json;
use warp::http::header::{HeaderValue, CONTENT_TYPE};
use warp::reply::Response;
use warp::Reply;

use crate::auth::Action;
use crate::error::ApiError;
use crate::state::State;

/// How long one backend ping may take before the gateway is reported not ready.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /healthz`.
#[utoipa::path(get, path = "/healthz", tag = "health", security(()), responses((status = 200, description = "The process is up", body = crate::openapi::Health)))]
pub(crate) async fn healthz() -> Result<Response, ApiError> {
    Ok(warp::reply::json(&json!({ "status": "ok" })).into_response())
}

/// `GET /readyz`.
#[utoipa::path(get, path = "/readyz", tag = "health", security(()), responses((status = 200, description = "Its backends answer", body = crate::openapi::Health), (status = 503, description = "A backend does not answer", body = crate::openapi::ErrorBody)))]
pub(crate) async fn readyz(state: State) -> Result<Response, ApiError> {
    let b = &state.backends;
    let (store, code, bus) = tokio::join!(
        ping("metadata store", b.store.ping()),
        ping("code store", b.code.ping()),
        ping("bus", b.bus.ping()),
    );
    let failures: Vec<String> = [store, code, bus].into_iter().flatten().collect();
    if failures.is_empty() {
        Ok(warp::reply::json(&json!({ "status": "ready" })).into_response())
    } else {
        Err(ApiError::NotReady(format!(
            "not ready: {}",
            failures.join("; ")
        )))
    }
}

/// `None` when the ping succeeded in time, else what failed.
async fn ping<E: std::fmt::Display>(
    what: &str,
    ping: impl Future<Output = Result<(), E>>,
) -> Option<String> {
    match tokio::time::timeout(PING_TIMEOUT, ping).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => {
            tracing::warn!(backend = what, error = %e, "readiness ping failed");
            Some(format!("{what} unavailable"))
        }
        Err(_) => {
            tracing::warn!(
                backend = what,
                timeout_ms = PING_TIMEOUT.as_millis() as u64,
                "readiness ping timed out"
            );
            Some(format!("{what} did not answer in time"))
        }
    }
}

/// `GET /metrics`: for the scrape token, or an admin (see the module doc).
#[utoipa::path(get, path = "/metrics", tag = "health", responses((status = 200, description = "Prometheus text format (an admin key or token, or the scrape token)", body = String, content_type = "text/plain"), (status = 401, description = "No credential", body = crate::openapi::ErrorBody), (status = 403, description = "Not an admin or the scrape token", body = crate::openapi::ErrorBody)))]
pub(crate) async fn metrics(
    state: State,
    authorization: Option<String>,
) -> Result<Response, ApiError> {
    authorize_scrape(&state, authorization.as_deref()).await?;
    let b = &state.backends;
    let body = state
        .metrics
        .render(b.bus.as_ref(), b.store.as_ref(), b.limiter.as_ref())
        .await;
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(METRICS_CONTENT_TYPE));
    Ok(response)
}

/// Lets the configured scrape token through; anything else must authenticate as an admin
/// (401 without valid credentials, 403 for another role), counted against the key's limit.
async fn authorize_scrape(state: &State, authorization: Option<&str>) -> Result<(), ApiError> {
    let token = state.config.metrics_token.as_ref();
    if token.is_some_and(|t| t.matches_authorization(authorization)) {
        return Ok(());
    }
    let principal = state
        .authenticator
        .authenticate_header(authorization)
        .await?;
    crate::audit::note_principal(&principal);
    crate::ratelimit::check_key(state, &principal).await?;
    principal.authorize(Action::Administer)
}
