//! `POST /v1/auth/refresh` `{"refresh_token"}`: rotates the refresh token and mints a new
//! access token from the key's current settings.

use bytes::Bytes;
use chrono::Utc;
use warp::reply::Response;

use super::{new_refresh, pair_response, presented_hash, RefreshBody};
use crate::auth::key_status::is_live;
use crate::error::ApiError;
use crate::functions::parse_json;
use crate::state::State;

/// Handles the request.
#[utoipa::path(post, path = "/v1/auth/refresh", tag = "auth", security(()), request_body = super::RefreshBody, responses((status = 200, description = "A new pair; the presented token stops working", body = super::TokenPair), crate::openapi::Errors))]
pub(crate) async fn handle(state: State, body: Bytes) -> Result<Response, ApiError> {
    let req: RefreshBody = parse_json(&body)?;
    let hash = presented_hash(&req.refresh_token).ok_or(ApiError::Unauthorized)?;
    let store = &state.backends.store;
    let Some(current) = store.find_refresh_token(&hash).await? else {
        return Err(ApiError::Unauthorized);
    };
    let now = Utc::now();
    if current.revoked_at.is_some() {
        tracing::debug!(token.family = %current.family_id, "refresh token of a revoked family");
        return Err(ApiError::Unauthorized);
    }
    if current.used_at.is_some() {
        revoke_family(
            &state,
            &current.family_id,
            "a rotated refresh token was reused",
        )
        .await?;
        return Err(ApiError::Unauthorized);
    }
    if current.expires_at <= now {
        return Err(ApiError::Unauthorized);
    }
    let Some(key) = store.get_api_key(&current.key_id).await?.filter(is_live) else {
        revoke_family(&state, &current.family_id, "its API key is no longer live").await?;
        return Err(ApiError::Unauthorized);
    };
    // A family lives a fixed time from its first token, however often it rotates.
    let started = store
        .refresh_family_started(&current.family_id)
        .await?
        .unwrap_or(current.created_at);
    if super::family_end(&state, started) <= now {
        revoke_family(
            &state,
            &current.family_id,
            "the family reached its absolute lifetime",
        )
        .await?;
        return Err(ApiError::Unauthorized);
    }
    let (token, next) = new_refresh(&state, &key, &current.family_id, started);
    if !store.rotate_refresh_token(&hash, &next, now).await? {
        // Another request rotated it first: two holders of one token.
        revoke_family(
            &state,
            &current.family_id,
            "a refresh token was rotated twice",
        )
        .await?;
        return Err(ApiError::Unauthorized);
    }
    tracing::debug!(key.id = %key.id, token.family = %current.family_id, "refresh token rotated");
    pair_response(&state, &key, &next, token)
}

async fn revoke_family(state: &State, family: &str, why: &str) -> Result<(), ApiError> {
    let revoked = state
        .backends
        .store
        .revoke_refresh_family(family, Utc::now())
        .await?;
    tracing::warn!(token.family = %family, tokens = revoked, reason = why, "refresh token family revoked");
    Ok(())
}
