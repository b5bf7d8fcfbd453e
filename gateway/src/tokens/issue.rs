//! `POST /v1/auth/token`: an access token and a new refresh token family for the API key that
//! authenticated the request.

use fnmesh_store::RefreshTokenRecord;
use warp::reply::Response;

use super::{new_refresh, pair_response};
use crate::auth::key_status::is_live;
use crate::auth::{CredentialKind, Principal};
use crate::error::ApiError;
use crate::state::State;

/// Handles the request.
#[utoipa::path(post, path = "/v1/auth/token", tag = "auth", responses((status = 200, description = "A token pair", body = super::TokenPair), crate::openapi::Errors))]
pub(crate) async fn handle(state: State, principal: Principal) -> Result<Response, ApiError> {
    if principal.credential != CredentialKind::ApiKey {
        return Err(ApiError::Forbidden(
            "tokens are minted with an API key, not with an access token".into(),
        ));
    }
    // Minted from the key as stored (not from a namespace an admin addressed).
    let key = state
        .backends
        .store
        .get_api_key(&principal.key_id)
        .await?
        .filter(is_live)
        .ok_or(ApiError::Unauthorized)?;
    let family = crate::auth::generate_key_id().replacen("key_", "fam_", 1);
    let (token, record): (String, RefreshTokenRecord) =
        new_refresh(&state, &key, &family, chrono::Utc::now());
    state.backends.store.insert_refresh_token(&record).await?;
    tracing::info!(key.id = %key.id, token.family = %family, "access token issued");
    pair_response(&state, &key, &record, token)
}
