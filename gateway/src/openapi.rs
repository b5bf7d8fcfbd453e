//! The OpenAPI 3.1 document of API v1, generated from the code: each handler carries its
//! `#[utoipa::path]` (method, path, parameters, body, answers) and the types it reads and
//! writes derive `utoipa::ToSchema`. Served without auth at `GET /v1/openapi.json`
//! ([`document`]). The shapes built ad hoc with `json!` by handlers have a type here that
//! names their fields, so every body is described; [`ErrorBody`] is the one error shape.

use std::sync::OnceLock;

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use fnmesh_core::{Function, InvocationId, InvocationResult, InvocationStatus};

/// `{"error":{"code","message"}}`: every error the API answers.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct ErrorBody {
    error: ErrorDetail,
}

/// The error of an [`ErrorBody`].
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct ErrorDetail {
    /// Stable, machine-readable (`invalid_name`, `not_found`, `rate_limited`, …).
    code: String,
    /// For people; never a secret or a credential.
    message: String,
}

/// The errors any authenticated route may answer.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub(crate) enum Errors {
    /// The request is malformed (`invalid_json`, `invalid_name`, `invalid_query`, …).
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// No or an invalid key or token.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// The key's role, namespace or function grants do not allow it, or a quota.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// The named thing does not exist (in the caller's namespace).
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// A rate limit or a queue share; see `Retry-After`.
    #[response(status = 429)]
    TooManyRequests(ErrorBody),
    /// A backend (store, broker) is unreachable or the queue is full; see `Retry-After`.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// 202 of an async invoke (and of a dead letter's replay: `replay_of`).
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct Accepted {
    id: InvocationId,
    status: InvocationStatus,
    /// A replay: the dead letter it replays.
    replay_of: Option<InvocationId>,
}

/// A page of functions (latest versions).
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct FunctionPage {
    items: Vec<Function>,
    /// Pass as `cursor` for the next page; absent on the last.
    next_cursor: Option<String>,
}

/// Every version of a function.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct FunctionVersions {
    items: Vec<Function>,
}

/// A page of invocation records, newest first.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct InvocationPage {
    items: Vec<InvocationResult>,
    next_cursor: Option<String>,
}

/// The captured output of one invocation.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct InvocationLogsBody {
    id: InvocationId,
    logs: String,
    truncated: bool,
}

/// The output of a function's latest invocations.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct FunctionLogsBody {
    entries: Vec<FunctionLogEntry>,
}

/// One invocation's output in [`FunctionLogsBody`].
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct FunctionLogEntry {
    invocation_id: InvocationId,
    version: u32,
    status: InvocationStatus,
    node_id: Option<String>,
    created_at: chrono::DateTime<chrono::Utc>,
    text: String,
    truncated: bool,
}

/// An alias: `version` when it points at one version, `versions` its weights.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct AliasBody {
    name: String,
    function: String,
    version: Option<u32>,
    versions: fnmesh_core::Routing,
    previous: Option<fnmesh_core::Routing>,
    revision: u64,
    created_at: chrono::DateTime<chrono::Utc>,
    updated_at: chrono::DateTime<chrono::Utc>,
}

/// A function's aliases.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct AliasList {
    items: Vec<AliasBody>,
}

/// An API key as listed (never the key itself).
#[derive(serde::Serialize, ToSchema)]
#[allow(dead_code)]
pub(crate) struct KeyBody {
    id: String,
    name: String,
    /// `admin`, `developer` or `invoker`.
    role: String,
    namespace: String,
    functions: Option<Vec<String>>,
    created_at: chrono::DateTime<chrono::Utc>,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
    parent_id: Option<String>,
    root_id: Option<String>,
}

/// A new API key: the key is shown only here.
#[derive(serde::Serialize, ToSchema)]
#[allow(dead_code)]
pub(crate) struct KeyCreated {
    #[serde(flatten)]
    view: KeyBody,
    /// The key: shown only in this answer.
    key: String,
}

/// A page of API keys.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct KeyPage {
    items: Vec<KeyBody>,
    next_cursor: Option<String>,
}

/// A secret's name and when it last changed: never its value.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct SecretEntry {
    name: String,
    updated_at: chrono::DateTime<chrono::Utc>,
}

/// A function's secrets.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct SecretList {
    items: Vec<SecretEntry>,
}

/// A registry host with a credential, and when it last changed: never the credential.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct RegistryEntry {
    host: String,
    updated_at: chrono::DateTime<chrono::Utc>,
}

/// The namespace's registry credentials.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct RegistryList {
    items: Vec<RegistryEntry>,
}

/// `{"status":"ok"}` / `{"status":"ready"}`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct Health {
    status: String,
}

/// A page of dead letters, newest first.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct DeadLetterPage<'a> {
    items: Vec<crate::admin::dlq::DeadLetterView<'a>>,
    next_cursor: Option<String>,
}

/// A page of the audit log, newest first.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct AuditPage {
    items: Vec<fnmesh_store::AuditEntry>,
    next_cursor: Option<String>,
}

/// The namespaces with a quota.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct QuotaList {
    items: Vec<fnmesh_store::NamespaceQuota>,
}

/// A namespace's quota (`null`: unlimited) and what it uses.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct NamespaceView {
    namespace: String,
    max_functions: Option<u32>,
    max_memory_mb: Option<u32>,
    max_concurrency: Option<u32>,
    /// When the quota last changed (`null`: never set).
    updated_at: Option<chrono::DateTime<chrono::Utc>>,
    usage: fnmesh_store::NamespaceUsage,
}

/// A live node, and the link to its region (`local`: this gateway's).
#[derive(serde::Serialize, ToSchema)]
#[allow(dead_code)]
pub(crate) struct NodeView {
    #[serde(flatten)]
    node: fnmesh_bus::registry::NodeInfo,
    link: crate::uplink::status::Link,
}

/// Another region whose nodes are listed (or why they are not).
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct RegionLink {
    name: String,
    link: crate::uplink::status::Link,
    error: Option<String>,
}

/// The nodes of this region (and, at a hub, of its edges).
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct NodeList {
    items: Vec<NodeView>,
    regions: Vec<RegionLink>,
}

/// The regions this gateway knows, its own first.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct RegionList {
    items: Vec<crate::uplink::status::RegionStatus>,
}

/// A code archive uploaded as the body: a zip, a tar.gz or a tar (at most
/// `FNMESH_MAX_ARCHIVE_BYTES`, 50 MiB by default).
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)]
pub(crate) struct Archive(Vec<u8>);

/// A function upload as a multipart form.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct UploadForm {
    /// The fields of the JSON body, without `code`.
    metadata: serde_json::Value,
    /// The code archive.
    #[schema(value_type = String, format = Binary)]
    code: Vec<u8>,
}

/// The fields of a raw upload (the code archive as the body), one header each.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub(crate) struct UploadHeaders {
    /// `python3`, `nodejs`, `exec` or `image`.
    #[param(rename = "Fnmesh-Runtime")]
    runtime: Option<String>,
    /// What to call.
    #[param(rename = "Fnmesh-Handler")]
    handler: Option<String>,
    /// The config, as JSON.
    #[param(rename = "Fnmesh-Config")]
    config: Option<String>,
    /// The metadata, as JSON.
    #[param(rename = "Fnmesh-Metadata")]
    metadata: Option<String>,
    /// `image`: the name of the image in the archive.
    #[param(rename = "Fnmesh-Image")]
    image: Option<String>,
    /// `image`: `exec` or `http`.
    #[param(rename = "Fnmesh-Mode")]
    mode: Option<String>,
    /// `image`, mode `http`: the server's port.
    #[param(rename = "Fnmesh-Port")]
    port: Option<String>,
}

/// The Bearer scheme: an API key or an access token.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The document of every route of API v1.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "fnmesh API",
        description = "Functions with immutable versions, sync and async invocation, results by id, aliases, keys and administration. Every route but /healthz, /readyz, /v1/openapi.json and the refresh-token routes takes `Authorization: Bearer <API key or access token>`; every error is `{\"error\":{\"code\",\"message\"}}`."
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    paths(
        crate::health::healthz,
        crate::health::readyz,
        crate::health::metrics,
        document_route,
        crate::functions::create::handle,
        crate::functions::list::handle,
        crate::functions::get::handle,
        crate::functions::update::handle,
        crate::functions::delete::handle,
        crate::functions::versions::handle,
        crate::functions::logs::handle,
        crate::functions::aliases::list,
        crate::functions::aliases::get,
        crate::functions::aliases::put,
        crate::functions::aliases::delete,
        crate::functions::aliases::rollback,
        crate::invocations::invoke::handle,
        crate::invocations::list::handle,
        crate::invocations::get::handle,
        crate::invocations::logs::handle,
        crate::invocations::cancel::handle,
        crate::secrets::list::handle,
        crate::secrets::put::handle,
        crate::secrets::delete::handle,
        crate::registries::list::handle,
        crate::registries::put::handle,
        crate::registries::delete::handle,
        crate::tokens::issue::handle,
        crate::tokens::refresh::handle,
        crate::tokens::revoke::handle,
        crate::keys::create::handle,
        crate::keys::list::handle,
        crate::keys::delete::handle,
        crate::admin::dlq::list,
        crate::admin::dlq::get,
        crate::admin::dlq::replay,
        crate::admin::dlq::delete,
        crate::admin::audit::list,
        crate::admin::queues::handle,
        crate::admin::nodes::list,
        crate::admin::regions::list,
        crate::admin::namespaces::list,
        crate::admin::namespaces::get,
        crate::admin::namespaces::put,
    )
)]
struct ApiDoc;

/// This document (no auth).
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "health",
    security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object))
)]
#[allow(dead_code)]
fn document_route() {}

/// The document as JSON, built once.
pub(crate) fn document() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        ApiDoc::openapi().to_json().unwrap_or_else(|e| {
            format!("{{\"error\":{{\"code\":\"internal\",\"message\":\"{e}\"}}}}")
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_openapi_3_1_and_names_every_route() {
        let doc: serde_json::Value = serde_json::from_str(document()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{doc}");
        let paths = doc["paths"].as_object().unwrap();
        for path in [
            "/healthz",
            "/v1/functions",
            "/v1/functions/{name}",
            "/v1/functions/{name}/invoke",
            "/v1/functions/{name}/aliases/{alias}/rollback",
            "/v1/invocations/{id}/cancel",
            "/v1/admin/namespaces/{ns}",
            "/v1/openapi.json",
        ] {
            assert!(
                paths.contains_key(path),
                "{path} missing: {:?}",
                paths.keys()
            );
        }
        // Health and the document need no auth; everything else the bearer scheme.
        assert_eq!(
            paths["/healthz"]["get"]["security"],
            serde_json::json!([{}])
        );
        assert!(
            doc["security"][0].get("bearer").is_some(),
            "{}",
            doc["security"]
        );
        assert!(doc["components"]["schemas"].get("ErrorBody").is_some());
    }
}
