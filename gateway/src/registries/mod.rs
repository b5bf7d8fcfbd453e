//! A namespace's container registry credentials: `PUT|DELETE /v1/registries/{host}` and
//! `GET /v1/registries`, one module per operation.
//!
//! A credential (`{"username","password"}`) is sealed here with the gateway's keyring
//! (AES-256-GCM bound to namespace and host, [`Keyring::seal_registry_credential`]) and stored
//! sealed; listings show hosts and times only; no API returns a credential and nothing logs
//! one. It is used where the namespace's images are read: by this gateway when a deploy
//! resolves a tag, and by nodes when they pull — each invocation of an image function
//! carries it re-sealed for that version ([`for_invocation`]), and nodes that pre-pull read it
//! sealed from the region's catalog. Managing them is a deploy action for keys not limited
//! to some functions (a credential serves every function of the namespace).

use fnmesh_core::registry::RegistryHost;
use fnmesh_core::secrets::{Keyring, SealedValue};
use fnmesh_core::Function;
use fnmesh_image::registry::{Credentials, ImageRef};

use crate::auth::{Action, Principal};
use crate::error::ApiError;
use crate::state::State;

pub(crate) mod delete;
pub(crate) mod list;
pub(crate) mod put;

/// Checks the principal may manage its namespace's registry credentials.
fn authorize(principal: &Principal, action: Action) -> Result<(), ApiError> {
    principal.authorize(action)?;
    if principal.functions.is_some() {
        return Err(ApiError::Forbidden(
            "registry credentials serve every function of the namespace: a key limited to \
             some functions cannot manage them"
                .to_owned(),
        ));
    }
    Ok(())
}

/// Validates the host of the path.
fn parse_host(raw: &str) -> Result<RegistryHost, ApiError> {
    RegistryHost::parse(raw).map_err(|e| ApiError::InvalidName(e.to_string()))
}

/// The gateway's keyring, or 503 when none is configured.
fn keyring(state: &State) -> Result<&Keyring, ApiError> {
    state.config.secrets_keyring.as_deref().ok_or_else(|| {
        ApiError::Unavailable(
            "registry credentials are sealed with the secrets key: set FNMESH_SECRETS_KEY or \
             FNMESH_SECRETS_KEY_FILE"
                .to_owned(),
        )
    })
}

/// The registry host of an image reference (`None`: not a reference, or a host no
/// credential could name).
pub(crate) fn host_of(reference: &ImageRef) -> Option<RegistryHost> {
    RegistryHost::parse(reference.registry()).ok()
}

/// The credentials `namespace` keeps for `reference`'s registry, opened, for this gateway's
/// own registry calls (a deploy's tag resolution). `None` when it keeps none.
pub(crate) async fn credentials_for(
    state: &State,
    namespace: &fnmesh_core::Namespace,
    reference: &ImageRef,
) -> Result<Option<Credentials>, ApiError> {
    let Some(host) = host_of(reference) else {
        return Ok(None);
    };
    let Some(sealed) = state
        .lookups
        .registry_credential(state.backends.store.as_ref(), namespace, &host)
        .await?
    else {
        return Ok(None);
    };
    let opened = keyring(state)?
        .open_registry_credential(namespace, &host, &sealed)
        .map_err(|e| {
            tracing::error!(registry.host = %host, error = %e, "a stored registry credential does not open");
            ApiError::Unavailable(format!(
                "the namespace's credential for {host} cannot be opened here: {e}"
            ))
        })?;
    Ok(Some(Credentials {
        username: opened.username,
        password: opened.password,
    }))
}

/// What an invocation of `function` carries for its image's registry: the namespace's
/// credential re-sealed for this version and code (`None`: not a registry image, or no
/// credential). Costs a cached lookup and two AES-GCM operations on ~100 bytes, for image
/// functions with a credential only.
pub(crate) async fn for_invocation(
    state: &State,
    function: &Function,
) -> Result<Option<SealedValue>, ApiError> {
    let Some(reference) = function
        .image
        .as_ref()
        .and_then(|image| image.reference.as_deref())
        .and_then(|r| r.parse::<ImageRef>().ok())
    else {
        return Ok(None);
    };
    let Some(host) = host_of(&reference) else {
        return Ok(None);
    };
    let Some(stored) = state
        .lookups
        .registry_credential(state.backends.store.as_ref(), &function.namespace, &host)
        .await?
    else {
        return Ok(None);
    };
    let sealed = keyring(state)?
        .seal_registry_for_invocation(function, &host, &stored)
        .map_err(|e| {
            tracing::error!(registry.host = %host, error = %e, "re-sealing a registry credential failed");
            ApiError::Unavailable(format!(
                "the namespace's credential for {host} cannot be opened here: {e}"
            ))
        })?;
    Ok(Some(sealed))
}
