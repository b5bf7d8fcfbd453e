//! Access tokens: short-lived JWTs minted from an API key (`POST /v1/auth/token`).
//!
//! The gateway signs with one [`SigningKey`] (HS256 secret, Ed25519 or RS256 private key in
//! PEM, whose public half is derived) and verifies against the configured key set
//! ([`TokenConfig::keys`]). Verification never trusts the token's header for anything but
//! picking a key: the `kid` is only looked up in that set (an unknown `kid`, or none, is
//! refused; it is never a path or a URL), and the algorithm is pinned per key, so `alg: none`
//! or an HS256 token "signed" with an RS/Ed public key never verifies. `exp`, `nbf`, `iss`,
//! `aud` and `sub` are required and checked with a leeway of at most 30 s.

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use fnmesh_core::{FunctionName, Namespace};
use fnmesh_store::Role;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::signature::{Ed25519KeyPair, KeyPair, RsaKeyPair};
use serde::{Deserialize, Serialize};

/// Default lifetime of an access token.
pub const DEFAULT_ACCESS_TTL: Duration = Duration::from_secs(15 * 60);
/// Default lifetime of a refresh token (each rotation starts a new one).
pub const DEFAULT_REFRESH_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default absolute lifetime of a refresh token family: rotation never extends it past this,
/// counted from the family's first token.
pub const DEFAULT_REFRESH_FAMILY_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Largest clock leeway accepted on `exp` and `nbf`.
pub const MAX_LEEWAY: Duration = Duration::from_secs(30);
/// Largest time a revoked key's access tokens may keep working on a gateway.
pub const MAX_KEY_CHECK_TTL: Duration = Duration::from_secs(60);
/// Default `kid`.
pub const DEFAULT_KID: &str = "k1";
/// Default `iss` and `aud`.
pub const DEFAULT_ISSUER: &str = "fnmesh";
/// Default `aud`.
pub const DEFAULT_AUDIENCE: &str = "fnmesh-api";
/// Shortest HS256 secret accepted.
pub const MIN_HS256_SECRET_BYTES: usize = 32;
/// Longest `kid` accepted in configuration.
const MAX_KID_LEN: usize = 64;

/// Why a signing key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// An HS256 secret under [`MIN_HS256_SECRET_BYTES`].
    #[error("the HS256 secret must be at least {MIN_HS256_SECRET_BYTES} bytes")]
    ShortSecret,
    /// A `kid` that is empty, too long or has characters other than `[A-Za-z0-9._-]`.
    #[error("invalid key id {0:?}: expected 1..=64 characters of [A-Za-z0-9._-]")]
    InvalidKid(String),
    /// Not a PEM private key of the expected kind.
    #[error("{kind} key: {detail}")]
    Pem {
        /// `Ed25519` or `RS256`.
        kind: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// The signing library refused the key material.
    #[error("key refused: {0}")]
    Refused(#[source] jsonwebtoken::errors::Error),
}

/// One key of the set: its `kid`, its pinned algorithm, and both halves.
#[derive(Clone)]
pub struct SigningKey {
    kid: String,
    algorithm: Algorithm,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

fn check_kid(kid: &str) -> Result<String, KeyError> {
    let ok = !kid.is_empty()
        && kid.len() <= MAX_KID_LEN
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(kid.to_owned())
    } else {
        Err(KeyError::InvalidKid(kid.chars().take(80).collect()))
    }
}

fn pem_error(kind: &'static str, detail: impl std::fmt::Display) -> KeyError {
    KeyError::Pem {
        kind,
        detail: detail.to_string(),
    }
}

impl SigningKey {
    /// An HS256 key from a shared secret (at least 32 bytes).
    pub fn hs256(kid: &str, secret: &[u8]) -> Result<Self, KeyError> {
        if secret.len() < MIN_HS256_SECRET_BYTES {
            return Err(KeyError::ShortSecret);
        }
        Ok(Self {
            kid: check_kid(kid)?,
            algorithm: Algorithm::HS256,
            encoding: EncodingKey::from_secret(secret).map_err(KeyError::Refused)?,
            decoding: DecodingKey::from_secret(secret).map_err(KeyError::Refused)?,
        })
    }

    /// A random HS256 secret of 32 bytes (hex, so it can be stored as text).
    pub fn random_hs256_secret() -> String {
        hex::encode(fnmesh_core::random::bytes::<32>())
    }

    /// An EdDSA key from a PKCS#8 PEM Ed25519 private key; the public key is derived.
    pub fn ed25519_pem(kid: &str, pem_text: &[u8]) -> Result<Self, KeyError> {
        const KIND: &str = "Ed25519";
        let block = pem::parse(pem_text).map_err(|e| pem_error(KIND, e))?;
        if block.tag() != "PRIVATE KEY" {
            return Err(pem_error(
                KIND,
                format!(
                    "expected a PKCS#8 \"PRIVATE KEY\" PEM, got {:?}",
                    block.tag()
                ),
            ));
        }
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(block.contents())
            .map_err(|e| pem_error(KIND, e))?;
        Ok(Self {
            kid: check_kid(kid)?,
            algorithm: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_der(block.contents()),
            decoding: DecodingKey::from_ed_der(pair.public_key().as_ref()),
        })
    }

    /// An RS256 key from a PEM RSA private key (PKCS#1 or PKCS#8, at least 2048 bits); the
    /// public key is derived.
    pub fn rs256_pem(kid: &str, pem_text: &[u8]) -> Result<Self, KeyError> {
        const KIND: &str = "RS256";
        let block = pem::parse(pem_text).map_err(|e| pem_error(KIND, e))?;
        let pair = match block.tag() {
            "RSA PRIVATE KEY" => RsaKeyPair::from_der(block.contents()),
            "PRIVATE KEY" => RsaKeyPair::from_pkcs8(block.contents()),
            other => {
                return Err(pem_error(
                    KIND,
                    format!("expected an RSA private key PEM, got {other:?}"),
                ))
            }
        }
        .map_err(|e| pem_error(KIND, e))?;
        let encoding = EncodingKey::from_rsa_pem(pem_text).map_err(|e| pem_error(KIND, e))?;
        Ok(Self {
            kid: check_kid(kid)?,
            algorithm: Algorithm::RS256,
            encoding,
            decoding: DecodingKey::from_rsa_der(pair.public_key().as_ref()),
        })
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The one algorithm this key signs and verifies.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

/// How access and refresh tokens are made and checked.
#[derive(Debug, Clone)]
pub struct TokenConfig {
    /// The key set: the first signs, every one verifies (tokens name theirs by `kid`).
    pub keys: Vec<SigningKey>,
    /// `iss` of minted tokens, required on verified ones.
    pub issuer: String,
    /// `aud` of minted tokens, required on verified ones.
    pub audience: String,
    /// Lifetime of access tokens.
    pub access_ttl: Duration,
    /// Lifetime of refresh tokens.
    pub refresh_ttl: Duration,
    /// Absolute lifetime of a refresh token family, from its first token: past it the
    /// family's tokens are refused however recently they were rotated.
    pub refresh_family_ttl: Duration,
    /// Clock leeway on `exp` and `nbf` (capped at [`MAX_LEEWAY`]).
    pub leeway: Duration,
    /// How long a key's "still live" answer is cached for its access tokens (capped at
    /// [`MAX_KEY_CHECK_TTL`]): the longest a revoked key's tokens keep working.
    pub key_check_ttl: Duration,
}

impl Default for TokenConfig {
    /// A random HS256 secret that lives as long as the process: fine for tests and a single
    /// process; deployments configure a key (see the CLI).
    fn default() -> Self {
        let secret = SigningKey::random_hs256_secret();
        let keys = SigningKey::hs256(DEFAULT_KID, secret.as_bytes())
            .map(|k| vec![k])
            .unwrap_or_default();
        Self {
            keys,
            issuer: DEFAULT_ISSUER.to_owned(),
            audience: DEFAULT_AUDIENCE.to_owned(),
            access_ttl: DEFAULT_ACCESS_TTL,
            refresh_ttl: DEFAULT_REFRESH_TTL,
            refresh_family_ttl: DEFAULT_REFRESH_FAMILY_TTL,
            leeway: Duration::from_secs(5),
            key_check_ttl: Duration::from_secs(30),
        }
    }
}

/// What an access token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The API key's public id.
    pub sub: String,
    /// The key's role.
    pub role: Role,
    /// The key's namespace.
    pub ns: Namespace,
    /// The key's function grants, if it has any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fns: Option<Vec<FunctionName>>,
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// Expires at (seconds since the epoch).
    pub exp: u64,
    /// Not before.
    pub nbf: u64,
    /// Issued at.
    pub iat: u64,
    /// Token id.
    pub jti: String,
}

/// Why a token did not verify (logged at debug level; the client only sees 401).
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// No `kid`, or one not in the key set.
    #[error("unknown key id")]
    UnknownKid,
    /// Signature, algorithm, claims or shape.
    #[error(transparent)]
    Invalid(#[from] jsonwebtoken::errors::Error),
    /// The gateway has no signing key.
    #[error("no signing key is configured")]
    NoKey,
}

/// Signs and verifies access tokens with a [`TokenConfig`]'s key set.
pub struct Tokens {
    config: TokenConfig,
    by_kid: HashMap<String, (Algorithm, DecodingKey)>,
    validations: HashMap<Algorithm, Validation>,
}

impl Tokens {
    /// Indexes the key set and prepares one validation per algorithm.
    pub fn new(config: TokenConfig) -> Self {
        let leeway = config.leeway.min(MAX_LEEWAY).as_secs();
        let mut by_kid = HashMap::new();
        let mut validations = HashMap::new();
        for key in &config.keys {
            // The first key with a kid wins, as it does for signing.
            by_kid
                .entry(key.kid.clone())
                .or_insert_with(|| (key.algorithm, key.decoding.clone()));
            validations.entry(key.algorithm).or_insert_with(|| {
                let mut v = Validation::new(key.algorithm);
                v.algorithms = vec![key.algorithm];
                v.leeway = leeway;
                v.validate_exp = true;
                v.validate_nbf = true;
                v.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
                v.set_issuer(&[&config.issuer]);
                v.set_audience(&[&config.audience]);
                v
            });
        }
        Self {
            config,
            by_kid,
            validations,
        }
    }

    /// The settings.
    pub fn config(&self) -> &TokenConfig {
        &self.config
    }

    /// Mints an access token for a key; returns it with its claims.
    pub fn sign(
        &self,
        key_id: &str,
        role: Role,
        namespace: &Namespace,
        functions: Option<&[FunctionName]>,
    ) -> Result<(String, Claims), TokenError> {
        let key = self.config.keys.first().ok_or(TokenError::NoKey)?;
        let now = u64::try_from(Utc::now().timestamp()).unwrap_or_default();
        let claims = Claims {
            sub: key_id.to_owned(),
            role,
            ns: namespace.clone(),
            fns: functions.map(<[FunctionName]>::to_vec),
            iss: self.config.issuer.clone(),
            aud: self.config.audience.clone(),
            exp: now + self.config.access_ttl.as_secs(),
            nbf: now,
            iat: now,
            jti: random_id(),
        };
        let mut header = Header::new(key.algorithm);
        header.kid = Some(key.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &key.encoding)?;
        Ok((token, claims))
    }

    /// Verifies a token: known `kid`, that key's algorithm, signature, then the claims.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token)?;
        let kid = header.kid.as_deref().ok_or(TokenError::UnknownKid)?;
        let (algorithm, key) = self.by_kid.get(kid).ok_or(TokenError::UnknownKid)?;
        let validation = self
            .validations
            .get(algorithm)
            .ok_or(TokenError::UnknownKid)?;
        // `decode` also refuses a header algorithm other than the key's.
        let data = jsonwebtoken::decode::<Claims>(token, key, validation)?;
        Ok(data.claims)
    }
}

/// 128 random bits, hex.
fn random_id() -> String {
    hex::encode(fnmesh_core::random::bytes::<16>())
}

/// Whether a bearer value has the shape of a JWT: three non-empty base64url segments.
pub fn looks_like_jwt(value: &str) -> bool {
    let mut parts = 0;
    for segment in value.split('.') {
        parts += 1;
        if segment.is_empty()
            || !segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return false;
        }
    }
    parts == 3
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        Tokens::new(TokenConfig::default())
    }

    #[test]
    fn minted_tokens_verify_and_carry_the_key() {
        let t = tokens();
        let ns = Namespace::parse("team-a").unwrap();
        let fns = [FunctionName::parse("resize").unwrap()];
        let (token, claims) = t.sign("key_1", Role::Invoker, &ns, Some(&fns)).unwrap();
        assert!(looks_like_jwt(&token));
        let got = t.verify(&token).unwrap();
        assert_eq!(got, claims);
        assert_eq!(got.ns, ns);
        assert_eq!(got.fns.as_deref(), Some(&fns[..]));
        assert_eq!(got.exp - got.iat, DEFAULT_ACCESS_TTL.as_secs());
    }

    #[test]
    fn another_gateways_secret_does_not_verify() {
        let (token, _) = tokens()
            .sign("key_1", Role::Admin, &Namespace::default_ns(), None)
            .unwrap();
        assert!(tokens().verify(&token).is_err());
    }

    #[test]
    fn jwt_shape_is_three_base64url_segments() {
        assert!(looks_like_jwt("a.b.c"));
        assert!(looks_like_jwt("eyJ-_.eyJ.sig_-"));
        for bad in ["fnm_abc", "a.b", "a.b.c.d", "a..c", "a.b.c=", "a.b/c.d", ""] {
            assert!(!looks_like_jwt(bad), "{bad}");
        }
    }

    #[test]
    fn kids_and_secrets_are_checked() {
        assert!(matches!(
            SigningKey::hs256("k1", b"short"),
            Err(KeyError::ShortSecret)
        ));
        for kid in ["", "../../etc/passwd", "a/b", "k 1", &"k".repeat(65)] {
            assert!(matches!(
                SigningKey::hs256(kid, &[7u8; 32]),
                Err(KeyError::InvalidKid(_))
            ));
        }
        assert!(SigningKey::ed25519_pem("k1", b"not pem").is_err());
        assert!(SigningKey::rs256_pem("k1", b"not pem").is_err());
    }

    #[test]
    fn debug_never_shows_key_material() {
        let key = SigningKey::hs256("k1", b"0123456789abcdef0123456789abcdef").unwrap();
        let shown = format!("{key:?}");
        assert!(!shown.contains("0123456789abcdef"));
        assert!(shown.contains("k1"));
    }
}
