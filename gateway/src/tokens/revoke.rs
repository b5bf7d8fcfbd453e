//! `POST /v1/auth/revoke` `{"refresh_token"}`: revokes the token's whole family (the access
//! tokens already minted live out their short lifetime). 204 whether or not it was known, so
//! the answer tells nothing about a token.

use bytes::Bytes;
use chrono::Utc;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Reply;

use super::{no_store, presented_hash, RefreshBody};
use crate::error::ApiError;
use crate::functions::parse_json;
use crate::state::State;

/// Handles the request.
#[utoipa::path(post, path = "/v1/auth/revoke", tag = "auth", security(()), request_body = super::RefreshBody, responses((status = 204, description = "Its family is revoked"), crate::openapi::Errors))]
pub(crate) async fn handle(state: State, body: Bytes) -> Result<Response, ApiError> {
    let req: RefreshBody = parse_json(&body)?;
    if let Some(hash) = presented_hash(&req.refresh_token) {
        let store = &state.backends.store;
        if let Some(token) = store.find_refresh_token(&hash).await? {
            let revoked = store
                .revoke_refresh_family(&token.family_id, Utc::now())
                .await?;
            tracing::info!(key.id = %token.key_id, token.family = %token.family_id, tokens = revoked, "refresh token family revoked on request");
        }
    }
    Ok(no_store(StatusCode::NO_CONTENT.into_response()))
}
