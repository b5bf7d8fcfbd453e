//! `PUT /v1/functions/{name}`: a new version from the latest one, with the given fields changed.
//!
//! Omitted fields keep their values; `config` fields are merged into the previous config;
//! `metadata`, when given, replaces the previous labels; omitted `code` keeps the code (the
//! handler's file must then exist in it).

use std::collections::BTreeMap;

use chrono::Utc;
use fnmesh_core::archive;
use fnmesh_core::{Function, Runtime};
use serde::Deserialize;
use serde_json::Value;
use warp::reply::Response;
use warp::Reply;

use super::{
    check_metadata, merge_config, parse_json, parse_name, parse_runtime, store_code, Code, CodeBody,
};
use crate::auth::{Action, Principal};
use crate::body::Upload;
use crate::error::ApiError;
use crate::state::State;

/// The update body: the create body with every field optional.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[derive(utoipa::ToSchema)]
pub(crate) struct UpdateFunction {
    /// Must equal the path's name if given.
    #[serde(default)]
    pub name: Option<String>,
    /// New runtime.
    #[serde(default)]
    pub runtime: Option<String>,
    /// New handler.
    #[serde(default)]
    pub handler: Option<String>,
    /// New code.
    #[serde(default)]
    pub code: Option<CodeBody>,
    /// Config fields to change.
    #[serde(default)]
    #[schema(value_type = Option<fnmesh_core::FunctionConfig>)]
    pub config: Option<Value>,
    /// New labels.
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    /// `image`: a new registry reference (resolved again), or the image's name in new code.
    #[serde(default)]
    pub image: Option<String>,
    /// `image`: `exec` or `http`.
    #[serde(default)]
    pub mode: Option<fnmesh_core::ImageMode>,
    /// `image`, mode `http`: the server's port.
    #[serde(default)]
    pub port: Option<u16>,
}

/// Handles the request.
#[utoipa::path(put, path = "/v1/functions/{name}", tag = "functions", params(("name" = String, Path, description = "Function name", pattern = "^[a-z][a-z0-9-]{0,62}$"), crate::openapi::UploadHeaders), request_body(content((UpdateFunction = "application/json"), (crate::openapi::UploadForm = "multipart/form-data"), (crate::openapi::Archive = "application/zip"), (crate::openapi::Archive = "application/gzip"), (crate::openapi::Archive = "application/x-tar")), description = "The changes as JSON (code as base64), or a new code archive as the body (fields in `Fnmesh-*` headers), or a form of `metadata` (JSON) and `code`"), responses((status = 200, description = "The new version", body = fnmesh_core::Function), (status = 413, description = "Body over the cap", body = crate::openapi::ErrorBody), crate::openapi::Errors))]
pub(crate) async fn handle(
    state: State,
    principal: Principal,
    raw_name: String,
    upload: Upload,
) -> Result<Response, ApiError> {
    principal.authorize(Action::Deploy)?;
    state.catalog.check_writable()?;
    let name = parse_name(&raw_name)?;
    principal.authorize_function(Action::Deploy, &name)?;
    let req: UpdateFunction = parse_json(&upload.fields)?;
    let code = Code::of(req.code.as_ref(), upload.archive.as_ref())?;
    if let Some(body_name) = &req.name {
        if body_name != name.as_str() {
            return Err(ApiError::InvalidName(
                "the body's name differs from the path's; functions cannot be renamed".into(),
            ));
        }
    }
    let store = &state.backends.store;
    let latest = store
        .get_function(&principal.namespace, &name, None)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("function {:?} not found", name.as_str())))?;

    let runtime = match &req.runtime {
        Some(raw) => parse_runtime(raw)?,
        None => latest.runtime,
    };
    let handler = match (&req.handler, runtime) {
        (Some(handler), _) => handler.clone(),
        (None, Runtime::Image) => String::new(),
        (None, _) => latest.handler.clone(),
    };
    let handler_file = runtime.handler_file(&handler)?;
    let config = merge_config(&latest.config, req.config)?;
    super::check_destinations(&state, &config)?;
    let metadata = req.metadata.unwrap_or_else(|| latest.metadata.clone());
    check_metadata(&metadata)?;
    super::quota::check(&state, &principal.namespace, &name, &config, false).await?;

    let fields = super::image::ImageFields {
        image: req.image.clone(),
        mode: req.mode,
        port: req.port,
    };
    let mut image = None;
    let code = match &code {
        _ if runtime == Runtime::Image => {
            let (spec, code) = match &latest.image {
                Some(previous) if code.is_none() && fields.image.is_none() => {
                    super::image::with_mode(&state, previous, &latest.code, &fields).await?
                }
                _ => {
                    super::image::deploy(&state, &principal.namespace, &fields, code.as_ref())
                        .await?
                }
            };
            image = Some(spec);
            code
        }
        Some(code) => {
            super::image::refuse_for_other_runtimes(&fields)?;
            store_code(&state, code, handler_file).await?
        }
        None => {
            super::image::refuse_for_other_runtimes(&fields)?;
            let unchanged =
                latest.runtime.handler_file(&latest.handler).ok() == Some(handler_file.clone());
            if !unchanged {
                // Read from a temporary file, never whole.
                let scratch = tempfile::NamedTempFile::new().map_err(|e| {
                    ApiError::Internal(format!("a temporary file for the code: {e}"))
                })?;
                let found = state
                    .backends
                    .code
                    .get_file(&latest.code.checksum, scratch.path())
                    .await?;
                if !found {
                    return Err(ApiError::Internal(format!(
                        "code {} of {name} is missing",
                        latest.code.checksum
                    )));
                }
                let file = scratch.reopen().map_err(|e| {
                    ApiError::Internal(format!("reopening the temporary code file: {e}"))
                })?;
                let wanted = handler_file.clone();
                let contains = tokio::task::spawn_blocking(move || {
                    archive::contains_file_reader(file, &wanted)
                })
                .await
                .map_err(|e| ApiError::Internal(format!("reading the code failed: {e}")))??;
                if !contains {
                    return Err(ApiError::InvalidHandler(format!(
                        "handler file {handler_file:?} is not in the function's code; upload code with it"
                    )));
                }
            }
            latest.code.clone()
        }
    };
    let function = Function {
        id: latest.id,
        namespace: latest.namespace.clone(),
        name,
        version: latest.version + 1,
        runtime,
        handler,
        code,
        image,
        config,
        metadata,
        created_at: latest.created_at,
        updated_at: Utc::now(),
    };
    store
        .add_version(&function)
        .await
        .map_err(|e| match ApiError::from(e) {
            ApiError::Conflict(_) => ApiError::Conflict(format!(
                "function {:?} was updated concurrently; retry",
                function.name.as_str()
            )),
            ApiError::NotFound(_) => {
                ApiError::NotFound(format!("function {:?} not found", function.name.as_str()))
            }
            other => other,
        })?;
    state
        .lookups
        .forget_function(&principal.namespace, &function.name);
    state
        .catalog
        .changed(fnmesh_core::subjects::CatalogKey::Function(
            principal.namespace.clone(),
            function.name.clone(),
        ));
    tracing::info!(
        function.name = %function.name,
        function.version = function.version,
        key.id = %principal.key_id,
        "function updated"
    );
    Ok(warp::reply::json(&function).into_response())
}
