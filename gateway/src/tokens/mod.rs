//! `/v1/auth/*`: access tokens and refresh tokens.
//!
//! - `POST /v1/auth/token` ([`issue`]), authenticated by an API key (not a token): a new
//!   access token and a refresh token that starts a new *family*;
//! - `POST /v1/auth/refresh` ([`refresh`]) `{"refresh_token"}`: rotates — the presented token
//!   stops working and a new pair is returned; presenting a rotated token again revokes the
//!   whole family (someone holds a copy), and so does a key that is no longer live;
//! - `POST /v1/auth/revoke` ([`revoke`]) `{"refresh_token"}`: revokes the token's family; 204
//!   whether or not the token was known.
//!
//! Refresh tokens are `fnr_` + 43 random base62 characters; only their SHA-256 is stored.
//! Every failure is the same 401. Responses carry `Cache-Control: no-store`.

use chrono::{DateTime, Utc};
use fnmesh_store::{ApiKeyRecord, RefreshTokenRecord};
use serde::{Deserialize, Serialize};
use warp::reply::Response;
use warp::Reply;

use crate::auth::hash_key;
use crate::error::ApiError;
use crate::state::State;

pub(crate) mod issue;
pub(crate) mod refresh;
pub(crate) mod revoke;

/// Prefix of refresh tokens.
pub(crate) const REFRESH_PREFIX: &str = "fnr_";
/// Random characters after the prefix (~256 bits).
const REFRESH_RANDOM_CHARS: usize = 43;

/// What a token request answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct TokenPair {
    /// The JWT.
    pub access_token: String,
    /// Opaque; rotates on every refresh.
    pub refresh_token: String,
    /// Seconds the access token lives.
    pub expires_in: u64,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds the refresh token lives.
    pub refresh_expires_in: u64,
}

/// `{"refresh_token"}` of refresh and revoke.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[derive(utoipa::ToSchema)]
pub(crate) struct RefreshBody {
    /// The refresh token.
    pub refresh_token: String,
}

/// A fresh refresh token.
fn generate_refresh_token() -> String {
    format!(
        "{REFRESH_PREFIX}{}",
        fnmesh_core::random::base62(REFRESH_RANDOM_CHARS)
    )
}

/// The stored hash of a presented refresh token, if it has the right shape.
fn presented_hash(token: &str) -> Option<String> {
    let ok = token.len() == REFRESH_PREFIX.len() + REFRESH_RANDOM_CHARS
        && token.starts_with(REFRESH_PREFIX)
        && token[REFRESH_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric());
    ok.then(|| hash_key(token))
}

/// A new refresh token of `family` (started at `family_started`) for `key`: the token and its
/// record. It expires after the refresh lifetime, and never after the family's absolute end.
fn new_refresh(
    state: &State,
    key: &ApiKeyRecord,
    family: &str,
    family_started: DateTime<Utc>,
) -> (String, RefreshTokenRecord) {
    let token = generate_refresh_token();
    let now = Utc::now();
    let record = RefreshTokenRecord {
        token_hash: hash_key(&token),
        family_id: family.to_owned(),
        key_id: key.id.clone(),
        created_at: now,
        expires_at: (now + refresh_ttl(state)).min(family_end(state, family_started)),
        used_at: None,
        revoked_at: None,
    };
    (token, record)
}

fn refresh_ttl(state: &State) -> chrono::Duration {
    chrono::Duration::from_std(state.config.tokens.refresh_ttl)
        .unwrap_or_else(|_| chrono::Duration::days(7))
}

/// When a family started at `started` ends, whatever its rotations.
fn family_end(state: &State, started: DateTime<Utc>) -> DateTime<Utc> {
    let ttl = chrono::Duration::from_std(state.config.tokens.refresh_family_ttl)
        .unwrap_or_else(|_| chrono::Duration::days(30));
    started
        .checked_add_signed(ttl)
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The pair for `key` with the refresh token `token` (stored as `record`), as a no-store JSON
/// response.
fn pair_response(
    state: &State,
    key: &ApiKeyRecord,
    record: &RefreshTokenRecord,
    token: String,
) -> Result<Response, ApiError> {
    let (access_token, _) = state
        .authenticator
        .tokens()
        .sign(&key.id, key.role, &key.namespace, key.functions.as_deref())
        .map_err(|e| ApiError::Internal(format!("signing an access token: {e}")))?;
    let config = &state.config.tokens;
    let pair = TokenPair {
        access_token,
        refresh_token: token,
        expires_in: config.access_ttl.as_secs(),
        token_type: "Bearer",
        refresh_expires_in: u64::try_from((record.expires_at - record.created_at).num_seconds())
            .unwrap_or(0),
    };
    Ok(no_store(warp::reply::json(&pair).into_response()))
}

/// Marks a response as not cacheable (it carries credentials).
fn no_store(mut response: Response) -> Response {
    use warp::http::header::{HeaderValue, CACHE_CONTROL, PRAGMA};
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn refresh_tokens_have_the_documented_shape() {
        let t = generate_refresh_token();
        assert_ne!(t, generate_refresh_token());
        assert_eq!(presented_hash(&t), Some(hash_key(&t)));
        for bad in [
            "",
            "fnr_",
            "fnm_abc",
            &format!("{t}x"),
            &t.replace("fnr_", "fnx_"),
        ] {
            assert_eq!(presented_hash(bad), None, "{bad}");
        }
    }
}
