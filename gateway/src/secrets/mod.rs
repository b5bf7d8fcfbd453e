//! Function secrets: `PUT|DELETE /v1/functions/{name}/secrets/{key}` and
//! `GET /v1/functions/{name}/secrets`, one module per operation.
//!
//! A value is sealed here with the gateway's keyring ([`fnmesh_core::secrets::Keyring`],
//! AES-256-GCM bound to namespace, function and name) and stored sealed; listings show names
//! and times only; no API returns a value and nothing logs one. Invocations carry the values
//! re-sealed for the version and code they run ([`invocation`]) to the node, which opens them
//! into the sandbox's environment ([`crate::invocations::invoke`]). Managing secrets is a deploy action
//! ([`crate::auth::Action::Deploy`]), limited by the key's function grants.

use fnmesh_core::secrets::{Keyring, SecretName};
use fnmesh_core::FunctionName;

use crate::auth::{Action, Principal};
use crate::error::ApiError;
use crate::functions::parse_name;
use crate::state::State;

pub(crate) mod delete;
pub(crate) mod invocation;
pub(crate) mod list;
pub(crate) mod put;

/// Validates the function name of the path and checks the principal may manage its secrets.
fn authorize(principal: &Principal, raw_name: &str) -> Result<FunctionName, ApiError> {
    principal.authorize(Action::Deploy)?;
    let name = parse_name(raw_name)?;
    principal.authorize_function(Action::Deploy, &name)?;
    Ok(name)
}

/// Validates a secret name of the path.
fn parse_secret_name(raw: &str) -> Result<SecretName, ApiError> {
    SecretName::parse(raw).map_err(|e| ApiError::InvalidName(e.to_string()))
}

/// The gateway's keyring, or 503 when none is configured.
fn keyring(state: &State) -> Result<&Keyring, ApiError> {
    state.config.secrets_keyring.as_deref().ok_or_else(|| {
        ApiError::Unavailable(
            "secrets are not configured on this gateway: set FNMESH_SECRETS_KEY or \
             FNMESH_SECRETS_KEY_FILE"
                .to_owned(),
        )
    })
}

/// 404 for a function absent from the principal's namespace.
async fn require_function(
    state: &State,
    principal: &Principal,
    name: &FunctionName,
) -> Result<(), ApiError> {
    state
        .backends
        .store
        .get_function(&principal.namespace, name, None)
        .await?
        .map(|_| ())
        .ok_or_else(|| ApiError::NotFound(format!("function {:?} not found", name.as_str())))
}
