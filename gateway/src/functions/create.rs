//! `POST /v1/functions`: validate, store the code, create version 1.

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::Utc;
use fnmesh_core::{Function, FunctionConfig, FunctionId};
use serde::Deserialize;
use serde_json::Value;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Reply;

use super::{
    check_metadata, merge_config, parse_json, parse_name, parse_runtime, store_code, CodeBody,
};
use crate::auth::{Action, Principal};
use crate::error::ApiError;
use crate::state::State;

/// The create body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateFunction {
    /// Unique within the namespace.
    pub name: String,
    /// `python3`, `nodejs` or `exec`.
    pub runtime: String,
    /// What to call.
    pub handler: String,
    /// The code.
    pub code: CodeBody,
    /// Limits (defaults for omitted fields).
    #[serde(default)]
    pub config: Option<Value>,
    /// Labels.
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
}

/// Handles the request.
pub(crate) async fn handle(
    state: State,
    principal: Principal,
    body: Bytes,
) -> Result<Response, ApiError> {
    principal.authorize(Action::Deploy)?;
    state.catalog.check_writable()?;
    let req: CreateFunction = parse_json(&body)?;
    let name = parse_name(&req.name)?;
    crate::audit::note_target(format!("function/{name}"));
    principal.authorize_function(Action::Deploy, &name)?;
    let runtime = parse_runtime(&req.runtime)?;
    let handler_file = runtime.handler_file(&req.handler)?;
    let config = merge_config(&FunctionConfig::default(), req.config)?;
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
    let code = store_code(&state, &req.code, handler_file).await?;
    let now = Utc::now();
    let function = Function {
        id: FunctionId::new(),
        namespace: principal.namespace.clone(),
        name,
        version: 1,
        runtime,
        handler: req.handler,
        code,
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
