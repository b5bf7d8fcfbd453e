//! Every error the API can answer with, and the one place that turns them into HTTP.
//!
//! Handlers return [`ApiError`]; each variant knows its status and machine-readable code.
//! [`recover`] (the single warp `recover` of the filter tree) renders
//! `{"error":{"code":"…","message":"…"}}`, adds the headers some errors need (`Retry-After`,
//! `WWW-Authenticate`, `RateLimit-*`) and maps warp's own rejections (unknown route, wrong
//! method, bad query) into the same shape. Internal errors are logged and shown generically.

use std::convert::Infallible;
use std::time::Duration;

use fnmesh_bus::registry::RegistryError;
use fnmesh_bus::BusError;
use fnmesh_code::CodeStoreError;
use fnmesh_core::archive::ArchiveError;
use fnmesh_core::function::ConfigError;
use fnmesh_core::ids::IdError;
use fnmesh_core::names::NameError;
use fnmesh_core::InvocationId;
use fnmesh_store::StoreError;
use serde_json::json;
use warp::http::header::{HeaderValue, CONNECTION, RETRY_AFTER, WWW_AUTHENTICATE};
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Rejection, Reply};

/// Errors of starting or running the gateway (not of a request).
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The listen address could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The NATS request API could not start.
    #[error(transparent)]
    NatsApi(#[from] NatsApiError),
    /// Catalog replication could not start.
    #[error(transparent)]
    Catalog(#[from] crate::catalog::CatalogError),
    /// The gateway's metrics could not be registered (already registered in this registry?).
    #[error("registering metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Why the request API could not start.
#[derive(Debug, thiserror::Error)]
pub enum NatsApiError {
    /// Subscribing to the request subjects failed.
    #[error("subscribing to {subject} in queue group {group}: {detail}")]
    Subscribe {
        /// The subject.
        subject: String,
        /// The queue group.
        group: &'static str,
        /// Why.
        detail: String,
    },
}

/// An error answer of the API.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// No, malformed, unknown, revoked or expired credentials (API key, access or refresh
    /// token).
    #[error("missing or invalid credentials")]
    Unauthorized,
    /// The key's role does not allow this.
    #[error("{0}")]
    Forbidden(String),
    /// The request would take a namespace over one of its quotas.
    #[error("{0}")]
    QuotaExceeded(String),
    /// The key is over its rate limit.
    #[error("rate limit exceeded")]
    RateLimited {
        /// `RateLimit-Limit`.
        limit: u32,
        /// `RateLimit-Remaining`.
        remaining: u32,
        /// `RateLimit-Reset`.
        reset_after: Duration,
        /// `Retry-After`.
        retry_after: Duration,
    },
    /// Too many streams or requests of one API key lineage are open at once.
    #[error("{0}")]
    ConcurrencyLimited(String),
    /// A key asked to live longer than the key minting it.
    #[error("{0}")]
    ExpiresAfterMinter(String),
    /// No such route, function, version or invocation.
    #[error("{0}")]
    NotFound(String),
    /// A route that exists, with another method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// A function name (body, path or query) that is not a valid name.
    #[error("{0}")]
    InvalidName(String),
    /// An unknown runtime.
    #[error("{0}")]
    InvalidRuntime(String),
    /// A handler that does not fit the runtime.
    #[error("{0}")]
    InvalidHandler(String),
    /// An image reference that does not parse, names no image, or an image that is refused.
    #[error("{0}")]
    InvalidImage(String),
    /// An image registry that could not be reached or failed (not the caller's fault).
    #[error("{0}")]
    RegistryUnavailable(String),
    /// An image registry that wants credentials the namespace does not keep, or refused the
    /// ones it keeps (`PUT /v1/registries/{host}`).
    #[error("{0}")]
    RegistryUnauthorized(String),
    /// A config with unknown fields or out-of-range values.
    #[error("{0}")]
    InvalidConfig(String),
    /// Metadata over its limits.
    #[error("{0}")]
    InvalidMetadata(String),
    /// `code.source` is not base64.
    #[error("{0}")]
    InvalidBase64(String),
    /// The code is not a safe, readable archive.
    #[error("{0}")]
    InvalidArchive(String),
    /// A body that is not JSON of the expected shape.
    #[error("{0}")]
    InvalidJson(String),
    /// An invocation payload that is not JSON.
    #[error("{0}")]
    InvalidPayload(String),
    /// A path id that is not an invocation id.
    #[error("{0}")]
    InvalidId(String),
    /// A query string that does not parse.
    #[error("{0}")]
    InvalidQuery(String),
    /// A malformed request that fits no other code (e.g. a bad header).
    #[error("{0}")]
    BadRequest(String),
    /// An `Idempotency-Key` that is not 1 to 255 printable ASCII characters, or given twice.
    #[error("{0}")]
    InvalidIdempotencyKey(String),
    /// An idempotency key used before with another function or payload.
    #[error("{0}")]
    IdempotencyKeyReused(String),
    /// A listing cursor this API did not issue.
    #[error("invalid cursor")]
    InvalidCursor,
    /// The thing already exists, or a concurrent change won.
    #[error("{0}")]
    Conflict(String),
    /// A write to what this gateway's region replicates from its hub (an edge gateway).
    #[error("{0}")]
    ReadOnlyRegion(String),
    /// The body is over the cap.
    #[error("request body exceeds {limit} bytes")]
    PayloadTooLarge {
        /// The cap.
        limit: usize,
    },
    /// The invocation queue is full.
    #[error("the invocation queue is full; retry later")]
    QueueFull,
    /// One function's or one namespace's share of the invocation queue is full (others go
    /// on).
    #[error("this {0} has as much work queued as it may; retry later")]
    LaneFull(fnmesh_bus::Lane),
    /// A backend is shutting down or unreachable.
    #[error("{0}")]
    Unavailable(String),
    /// `/readyz`: a backend failed its ping.
    #[error("{0}")]
    NotReady(String),
    /// A sync invocation did not finish in time; it can be fetched by id later.
    #[error("invocation {invocation_id} did not finish in time; fetch it later by id")]
    GatewayTimeout {
        /// The invocation.
        invocation_id: InvocationId,
    },
    /// A bug or a backend failure; logged, never shown.
    #[error("internal error: {0}")]
    Internal(String),
}

impl warp::reject::Reject for ApiError {}

impl ApiError {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) | Self::QuotaExceeded(_) => StatusCode::FORBIDDEN,
            Self::RateLimited { .. } | Self::LaneFull(_) | Self::ConcurrencyLimited(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::ExpiresAfterMinter(_) | Self::IdempotencyKeyReused(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::InvalidName(_)
            | Self::InvalidRuntime(_)
            | Self::InvalidHandler(_)
            | Self::InvalidImage(_)
            | Self::RegistryUnauthorized(_)
            | Self::InvalidConfig(_)
            | Self::InvalidMetadata(_)
            | Self::InvalidBase64(_)
            | Self::InvalidArchive(_)
            | Self::InvalidJson(_)
            | Self::InvalidPayload(_)
            | Self::InvalidId(_)
            | Self::InvalidQuery(_)
            | Self::BadRequest(_)
            | Self::InvalidIdempotencyKey(_)
            | Self::InvalidCursor => StatusCode::BAD_REQUEST,
            Self::Conflict(_) | Self::ReadOnlyRegion(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::QueueFull | Self::Unavailable(_) | Self::NotReady(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::GatewayTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::RegistryUnavailable(_) => StatusCode::BAD_GATEWAY,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The machine-readable code clients match on.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::QuotaExceeded(_) => "quota_exceeded",
            Self::RateLimited { .. } => "rate_limited",
            Self::ConcurrencyLimited(_) => "concurrency_limited",
            Self::ExpiresAfterMinter(_) => "expires_after_minter",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::InvalidName(_) => "invalid_name",
            Self::InvalidRuntime(_) => "invalid_runtime",
            Self::InvalidHandler(_) => "invalid_handler",
            Self::InvalidImage(_) => "invalid_image",
            Self::RegistryUnavailable(_) => "registry_unavailable",
            Self::RegistryUnauthorized(_) => "registry_unauthorized",
            Self::InvalidConfig(_) => "invalid_config",
            Self::InvalidMetadata(_) => "invalid_metadata",
            Self::InvalidBase64(_) => "invalid_base64",
            Self::InvalidArchive(_) => "invalid_archive",
            Self::InvalidJson(_) => "invalid_json",
            Self::InvalidPayload(_) => "invalid_payload",
            Self::InvalidId(_) => "invalid_id",
            Self::InvalidQuery(_) => "invalid_query",
            Self::BadRequest(_) => "bad_request",
            Self::InvalidIdempotencyKey(_) => "invalid_idempotency_key",
            Self::IdempotencyKeyReused(_) => "idempotency_key_reused",
            Self::InvalidCursor => "invalid_cursor",
            Self::Conflict(_) => "conflict",
            Self::ReadOnlyRegion(_) => "read_only_region",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::QueueFull => "queue_full",
            Self::LaneFull(fnmesh_bus::Lane::Function) => "function_queue_full",
            Self::LaneFull(fnmesh_bus::Lane::Namespace) => "namespace_queue_full",
            Self::Unavailable(_) => "unavailable",
            Self::NotReady(_) => "not_ready",
            Self::GatewayTimeout { .. } => "gateway_timeout",
            Self::Internal(_) => "internal",
        }
    }

    /// A rejection carrying this error, for `and_then` filters.
    pub fn reject(self) -> Rejection {
        warp::reject::custom(self)
    }

    /// The error body every front end answers with: `{"error":{"code","message"}}` (plus
    /// `invocation_id` on a timeout). An internal error's detail is logged here, never shown.
    pub fn body(&self) -> serde_json::Value {
        let message = match self {
            Self::Internal(detail) => {
                tracing::error!(error.detail = %detail, "internal error answering a request");
                "internal error".to_owned()
            }
            other => other.to_string(),
        };
        let mut error = json!({ "code": self.code(), "message": message });
        if let Self::GatewayTimeout { invocation_id } = self {
            error["invocation_id"] = json!(invocation_id.to_string());
        }
        json!({ "error": error })
    }

    /// Renders the error response.
    pub fn into_response(self) -> Response {
        let status = self.status();
        let mut response =
            warp::reply::with_status(warp::reply::json(&self.body()), status).into_response();
        let headers = response.headers_mut();
        match &self {
            Self::Unauthorized => {
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::RateLimited {
                limit,
                remaining,
                reset_after,
                retry_after,
            } => {
                headers.insert(RETRY_AFTER, secs_header(*retry_after));
                headers.insert("ratelimit-limit", HeaderValue::from(*limit));
                headers.insert("ratelimit-remaining", HeaderValue::from(*remaining));
                headers.insert("ratelimit-reset", secs_header(*reset_after));
            }
            Self::QueueFull | Self::LaneFull(_) | Self::ConcurrencyLimited(_) => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Self::Unavailable(_) | Self::NotReady(_) | Self::RegistryUnavailable(_) => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("2"));
            }
            Self::PayloadTooLarge { .. } => {
                // The rest of the body is not read: the connection cannot be reused.
                headers.insert(CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}

/// Whole seconds, rounded up, at least 1.
fn secs_header(d: Duration) -> HeaderValue {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    HeaderValue::from(secs.max(1))
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(what) => Self::Conflict(format!("{what} already exists")),
            StoreError::NotFound(what) => Self::NotFound(format!("{what} not found")),
            StoreError::InvalidCursor => Self::InvalidCursor,
            StoreError::Backend(detail) => Self::Internal(format!("metadata store: {detail}")),
            StoreError::Unavailable(detail) => {
                tracing::warn!(error.detail = %detail, "metadata store unavailable");
                Self::Unavailable("the metadata store is unavailable; retry later".into())
            }
        }
    }
}

impl From<CodeStoreError> for ApiError {
    fn from(e: CodeStoreError) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<BusError> for ApiError {
    fn from(e: BusError) -> Self {
        match e {
            BusError::Full => Self::QueueFull,
            BusError::LaneFull(lane) => Self::LaneFull(lane),
            BusError::Closed => Self::Unavailable("the invocation bus is shutting down".into()),
            BusError::Unavailable(detail) => {
                tracing::warn!(error.detail = %detail, "message broker unavailable");
                Self::Unavailable("the message broker is unavailable; retry later".into())
            }
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<ArchiveError> for ApiError {
    fn from(e: ArchiveError) -> Self {
        match e {
            ArchiveError::Io(io) => Self::Internal(format!("normalising code: {io}")),
            other => Self::InvalidArchive(other.to_string()),
        }
    }
}

impl From<fnmesh_image::ImageError> for ApiError {
    fn from(e: fnmesh_image::ImageError) -> Self {
        use fnmesh_image::ImageError as E;
        match e {
            E::Registry(_) => Self::RegistryUnavailable(e.to_string()),
            E::Unauthorized(ref host) => Self::RegistryUnauthorized(format!(
                "{e}: set this namespace's credentials for it with PUT /v1/registries/{host}"
            )),
            E::Unpack { .. } | E::Io(_) => Self::Internal(format!("reading an image: {e}")),
            other => Self::InvalidImage(other.to_string()),
        }
    }
}

impl From<NameError> for ApiError {
    fn from(e: NameError) -> Self {
        Self::InvalidName(e.to_string())
    }
}

impl From<IdError> for ApiError {
    fn from(e: IdError) -> Self {
        Self::InvalidId(e.to_string())
    }
}

impl From<ConfigError> for ApiError {
    fn from(e: ConfigError) -> Self {
        match e {
            ConfigError::Handler { .. } => Self::InvalidHandler(e.to_string()),
            other => Self::InvalidConfig(other.to_string()),
        }
    }
}

/// The single `recover` of the filter tree: renders every rejection as the JSON error shape.
pub(crate) async fn recover(rejection: Rejection) -> Result<Response, Infallible> {
    // `find` searches every rejection of a combination, so the more specific ones are looked
    // for first: a custom error, then a bad query or header of the route that matched, then a
    // wrong method, and only then "no such route".
    let error = if let Some(e) = rejection.find::<ApiError>() {
        e.clone()
    } else if let Some(e) = rejection.find::<warp::reject::InvalidQuery>() {
        ApiError::InvalidQuery(e.to_string())
    } else if let Some(e) = rejection.find::<warp::reject::InvalidHeader>() {
        ApiError::BadRequest(e.to_string())
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::MethodNotAllowed
    } else if rejection.is_not_found() {
        ApiError::NotFound("no such route".into())
    } else {
        ApiError::Internal(format!("unhandled rejection: {rejection:?}"))
    };
    Ok(error.into_response())
}

/// Turns a handler's result into what warp's `and_then` expects.
pub(crate) fn into_reply<T: Reply>(result: Result<T, ApiError>) -> Result<Response, Rejection> {
    result.map(Reply::into_response).map_err(ApiError::reject)
}
