//! `POST /v1/functions`: validate, store the code, create version 1.

use std::collections::BTreeMap;

use chrono::Utc;
use fnmesh_core::{Function, FunctionConfig, FunctionId, Runtime};
use serde::Deserialize;
use serde_json::Value;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Reply;

use super::{
    check_metadata, merge_config, parse_json, parse_name, parse_runtime, store_code, Code, CodeBody,
};
use crate::auth::{Action, Principal};
use crate::body::Upload;
use crate::error::ApiError;
use crate::state::State;

/// The create body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[derive(utoipa::ToSchema)]
pub(crate) struct CreateFunction {
    /// Unique within the namespace.
    pub name: String,
    /// `python3`, `nodejs`, `exec` or `image`.
    pub runtime: String,
    /// What to call (none for `image`).
    #[serde(default)]
    pub handler: String,
    /// The code (for `image`: an image archive, or none with `image`).
    #[serde(default)]
    pub code: Option<CodeBody>,
    /// `image`: a registry reference, or the name of the image in an uploaded archive.
    #[serde(default)]
    pub image: Option<String>,
    /// `image`: `exec` or `http`.
    #[serde(default)]
    pub mode: Option<fnmesh_core::ImageMode>,
    /// `image`, mode `http`: the server's port.
    #[serde(default)]
    pub port: Option<u16>,
    /// Limits (defaults for omitted fields).
    #[serde(default)]
    #[schema(value_type = Option<fnmesh_core::FunctionConfig>)]
    pub config: Option<Value>,
    /// Labels.
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
}

/// Handles the request.
#[utoipa::path(post, path = "/v1/functions", tag = "functions", params(crate::openapi::UploadHeaders, ("Fnmesh-Name" = Option<String>, Header, description = "Raw upload: the function's name")), request_body(content((CreateFunction = "application/json"), (crate::openapi::UploadForm = "multipart/form-data"), (crate::openapi::Archive = "application/zip"), (crate::openapi::Archive = "application/gzip"), (crate::openapi::Archive = "application/x-tar")), description = "The function as JSON (code as base64), or its code archive as the body (fields in `Fnmesh-*` headers), or a form of `metadata` (JSON) and `code`"), responses((status = 201, description = "Created: version 1", body = fnmesh_core::Function), (status = 409, description = "Exists already", body = crate::openapi::ErrorBody), (status = 413, description = "Body over the cap", body = crate::openapi::ErrorBody), crate::openapi::Errors))]
pub(crate) async fn handle(
    state: State,
    principal: Principal,
    upload: Upload,
) -> Result<Response, ApiError> {
    principal.authorize(Action::Deploy)?;
    state.catalog.check_writable()?;
    let req: CreateFunction = parse_json(&upload.fields)?;
    let code = Code::of(req.code.as_ref(), upload.archive.as_ref())?;
    let name = parse_name(&req.name)?;
    crate::audit::note_target(format!("function/{name}"));
    principal.authorize_function(Action::Deploy, &name)?;
    let runtime = parse_runtime(&req.runtime)?;
    let handler_file = runtime.handler_file(&req.handler)?;
    let config = merge_config(&FunctionConfig::default(), req.config)?;
    super::check_destinations(&state, &config)?;
    let metadata = req.metadata.unwrap_or_default();
    check_metadata(&metadata)?;
    super::quota::check(&state, &principal.namespace, &name, &config, true).await?;

    let store = &state.backends.store;
    if store
        .get_function(&principal.namespace, &name, None)
        .await?
        .is_some()
    {
        return Err(ApiError::Conflict(format!(
            "function {:?} already exists",
            name.as_str()
        )));
    }
    let fields = super::image::ImageFields {
        image: req.image.clone(),
        mode: req.mode,
        port: req.port,
    };
    let (code, image) = if runtime == Runtime::Image {
        let (image, code) =
            super::image::deploy(&state, &principal.namespace, &fields, code.as_ref()).await?;
        (code, Some(image))
    } else {
        super::image::refuse_for_other_runtimes(&fields)?;
        let code = code.as_ref().ok_or_else(|| {
            ApiError::InvalidJson(
                "invalid body: missing field `code` (or upload the archive as the body)".into(),
            )
        })?;
        (store_code(&state, code, handler_file).await?, None)
    };
    let now = Utc::now();
    let function = Function {
        id: FunctionId::new(),
        namespace: principal.namespace.clone(),
        name,
        version: 1,
        runtime,
        handler: req.handler,
        code,
        image,
        config,
        metadata,
        created_at: now,
        updated_at: now,
    };
    store
        .create_function(&function)
        .await
        .map_err(|e| match ApiError::from(e) {
            ApiError::Conflict(_) => ApiError::Conflict(format!(
                "function {:?} already exists",
                function.name.as_str()
            )),
            other => other,
        })?;
    // A function of this name deleted through another gateway may still be cached here.
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
        function.version = 1,
        key.id = %principal.key_id,
        "function created"
    );
    Ok(warp::reply::with_status(warp::reply::json(&function), StatusCode::CREATED).into_response())
}
