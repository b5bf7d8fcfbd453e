//! NATS JWTs (v2 claims), encoded and signed with nkeys: the operator, account and user tokens
//! a `nats-server` in operator mode reads, and the `.creds` file format clients read.
//!
//! A NATS JWT is `base64url(header).base64url(claims).base64url(signature)` without padding:
//! the header is always `{"typ":"JWT","alg":"ed25519-nkey"}`, the claims carry `jti`, `iat`,
//! `iss` (the signer's public nkey), `sub` (the subject's public nkey), `name` and `nats` (the
//! type-specific part with `type` and `version: 2`), and the signature is Ed25519 over
//! `header.claims` by the issuer's key. This is what `nats-io/jwt` v2 (the Go library behind
//! `nsc` and the server) produces and checks. Its `jti` is the base32 (no padding) of the
//! SHA-512/256 of the common claims alone (`iat`, `iss`, `name`, `sub`: `ClaimsData` in
//! `v2/claims.go`, with `jti` left out), not of the whole claims; we compute it the same way.
//! The server does not check it: it only identifies the token. No crate in our registries kept up with it
//! (`nats-jwt` 0.3 has no operator claims and pins sha2 0.10), hence this small module.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest as _, Sha512_256};

/// The one header every NATS JWT carries.
const HEADER: &str = r#"{"typ":"JWT","alg":"ed25519-nkey"}"#;

/// Why a token could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// Signing or verifying with an nkey failed (a public-only key asked to sign, a bad
    /// signature, a malformed key).
    #[error("nkey: {0}")]
    Key(String),
    /// The token is not three base64url segments of JSON.
    #[error("malformed jwt: {0}")]
    Malformed(String),
}

/// Publish or subscribe subjects of a user: what is not allowed is denied, and a denied
/// subject is denied even where an allowed wildcard covers it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allow {
    /// Subjects (wildcards allowed) the user may use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Subjects (wildcards allowed) the user may not use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

/// A user's permissions, as the user JWT's `pub`, `sub` and `resp` claims.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserPermissions {
    /// What the user may publish to.
    pub publish: Vec<String>,
    /// What the user may subscribe to.
    pub subscribe: Vec<String>,
    /// What the user may not publish to, although `publish` covers it.
    pub publish_deny: Vec<String>,
    /// What the user may not subscribe to, although `subscribe` covers it.
    pub subscribe_deny: Vec<String>,
    /// Whether it may answer requests it received (one reply each, within this time), on
    /// reply subjects it could not otherwise publish to: a service.
    pub responses: Option<std::time::Duration>,
}

/// One claim set, ready to be signed.
#[derive(Debug, Clone)]
pub struct Claims {
    /// The subject's public nkey (operator `O…`, account `A…`, user `U…`).
    pub subject: String,
    /// A name shown in server logs and monitoring.
    pub name: String,
    /// The type-specific part (`nats`), without `type` and `version` (added on signing).
    pub nats: Map<String, Value>,
    /// `operator`, `account` or `user`.
    pub kind: &'static str,
}

impl Claims {
    /// An operator's claims; `system_account` is the public key of the system account.
    pub fn operator(subject: &str, name: &str, system_account: &str) -> Self {
        let mut nats = Map::new();
        nats.insert("system_account".into(), json!(system_account));
        Self::new(subject, name, "operator", nats)
    }

    /// An account's claims with no limits; with `jetstream` its streams may use unlimited
    /// memory and disk (JetStream is on for the account), else JetStream is off for it.
    pub fn account(subject: &str, name: &str, jetstream: bool) -> Self {
        let storage = if jetstream { -1 } else { 0 };
        let mut nats = Map::new();
        nats.insert(
            "limits".into(),
            json!({
                "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                "wildcards": true, "conn": -1, "leaf": -1,
                "mem_storage": storage, "disk_storage": storage,
                "streams": -1, "consumer": -1,
            }),
        );
        nats.insert(
            "default_permissions".into(),
            json!({ "pub": {}, "sub": {} }),
        );
        Self::new(subject, name, "account", nats)
    }

    /// Adds a service export (`subject`, wildcards allowed) to account claims.
    pub fn export_service(mut self, name: &str, subject: &str) -> Self {
        push(
            &mut self.nats,
            "exports",
            json!({ "name": name, "subject": subject, "type": "service", "response_type": "Singleton" }),
        );
        self
    }

    /// Adds the import of `account`'s service export `subject` to account claims (the
    /// importer publishes on the same subject).
    pub fn import_service(mut self, name: &str, account: &str, subject: &str) -> Self {
        push(
            &mut self.nats,
            "imports",
            json!({ "name": name, "subject": subject, "account": account, "type": "service" }),
        );
        self
    }

    /// Adds a stream export of `subject` (wildcards allowed) to account claims: its messages
    /// reach accounts that import it.
    pub fn export_stream(mut self, name: &str, subject: &str) -> Self {
        push(
            &mut self.nats,
            "exports",
            json!({ "name": name, "subject": subject, "type": "stream" }),
        );
        self
    }

    /// Adds the import of `account`'s stream export `subject` to account claims (the
    /// importer's users subscribe on the same subject).
    pub fn import_stream(mut self, name: &str, account: &str, subject: &str) -> Self {
        push(
            &mut self.nats,
            "imports",
            json!({ "name": name, "subject": subject, "account": account, "type": "stream" }),
        );
        self
    }

    /// A user's claims: its permissions, no other limits.
    pub fn user(subject: &str, name: &str, permissions: &UserPermissions) -> Self {
        let mut nats = Map::new();
        let allow = |subjects: &[String], denied: &[String]| {
            json!(Allow {
                allow: subjects.to_vec(),
                deny: denied.to_vec(),
            })
        };
        nats.insert(
            "pub".into(),
            allow(&permissions.publish, &permissions.publish_deny),
        );
        nats.insert(
            "sub".into(),
            allow(&permissions.subscribe, &permissions.subscribe_deny),
        );
        if let Some(ttl) = permissions.responses {
            // A Go `time.Duration`: nanoseconds.
            let ttl = u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX);
            nats.insert("resp".into(), json!({ "max": 1, "ttl": ttl }));
        }
        nats.insert("subs".into(), json!(-1));
        nats.insert("data".into(), json!(-1));
        nats.insert("payload".into(), json!(-1));
        Self::new(subject, name, "user", nats)
    }

    /// Adds a tag (`tags` in the claims; nats-server shows them and permission templates can
    /// read them).
    pub fn tag(mut self, tag: &str) -> Self {
        push(&mut self.nats, "tags", json!(tag));
        self
    }

    fn new(subject: &str, name: &str, kind: &'static str, nats: Map<String, Value>) -> Self {
        Self {
            subject: subject.to_owned(),
            name: name.to_owned(),
            nats,
            kind,
        }
    }

    /// Signs the claims with `issuer` (which must hold its seed), issued at `iat` (Unix
    /// seconds): the encoded JWT.
    pub fn sign(&self, issuer: &nkeys::KeyPair, iat: i64) -> Result<String, JwtError> {
        let mut nats = self.nats.clone();
        nats.insert("type".into(), json!(self.kind));
        nats.insert("version".into(), json!(2));
        let common = json!({
            "iat": iat,
            "iss": issuer.public_key(),
            "name": self.name,
            "sub": self.subject,
        });
        let mut claims = common.clone();
        claims["jti"] = json!(jti(&common)?);
        claims["nats"] = Value::Object(nats);
        let body = serde_json::to_vec(&claims).map_err(|e| JwtError::Malformed(e.to_string()))?;
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(HEADER),
            URL_SAFE_NO_PAD.encode(body)
        );
        let signature = issuer
            .sign(signing_input.as_bytes())
            .map_err(|e| JwtError::Key(e.to_string()))?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        ))
    }
}

/// The `jti` of claims whose common part is `common` (keys in the order Go marshals
/// `ClaimsData`, which for these four is their sorted order, as `serde_json` writes them).
fn jti(common: &Value) -> Result<String, JwtError> {
    let bytes = serde_json::to_vec(common).map_err(|e| JwtError::Malformed(e.to_string()))?;
    Ok(data_encoding::BASE32_NOPAD.encode(&Sha512_256::digest(&bytes)))
}

fn push(nats: &mut Map<String, Value>, key: &str, item: Value) {
    match nats.get_mut(key) {
        Some(Value::Array(items)) => items.push(item),
        _ => {
            nats.insert(key.into(), Value::Array(vec![item]));
        }
    }
}

/// Decodes a JWT and checks its signature against its own `iss` (the issuer's public key):
/// its claims. Whether that issuer is trusted is the caller's question.
pub fn decode_verified(token: &str) -> Result<Value, JwtError> {
    let malformed = |what: &str| JwtError::Malformed(what.to_owned());
    let mut parts = token.split('.');
    let (Some(header), Some(body), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("not three segments"));
    };
    let decode = |segment: &str| {
        URL_SAFE_NO_PAD
            .decode(segment)
            .map_err(|e| JwtError::Malformed(e.to_string()))
    };
    let header: Value =
        serde_json::from_slice(&decode(header)?).map_err(|e| JwtError::Malformed(e.to_string()))?;
    if header["alg"] != "ed25519-nkey" {
        return Err(malformed("alg is not ed25519-nkey"));
    }
    let claims: Value =
        serde_json::from_slice(&decode(body)?).map_err(|e| JwtError::Malformed(e.to_string()))?;
    let issuer = claims["iss"].as_str().ok_or_else(|| malformed("no iss"))?;
    let key = nkeys::KeyPair::from_public_key(issuer).map_err(|e| JwtError::Key(e.to_string()))?;
    let signed = token.len() - signature.len() - 1;
    key.verify(&token.as_bytes()[..signed], &decode(signature)?)
        .map_err(|e| JwtError::Key(e.to_string()))?;
    Ok(claims)
}

/// The user JWT of a `.creds` file (the line after its `BEGIN NATS USER JWT` armour line).
pub fn creds_user_jwt(creds: &str) -> Option<&str> {
    let mut lines = creds.lines().map(str::trim);
    lines.find(|l| l.starts_with("-----BEGIN NATS USER JWT"))?;
    lines.next().filter(|l| !l.is_empty())
}

/// The standard `.creds` file of a user: its JWT and its nkey seed, in the armour every NATS
/// client library reads (async-nats `ConnectOptions::credentials_file`, nats.go, nats-py).
pub fn creds_file(user_jwt: &str, user_seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{user_seed}\n------END USER NKEY SEED------\n\n\
         *************************************************************\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user_permissions() -> UserPermissions {
        UserPermissions {
            publish: vec!["fnmesh.v1.req.>".into()],
            subscribe: vec!["_INBOX.>".into()],
            publish_deny: vec!["fnmesh.v1.req.secret".into()],
            subscribe_deny: Vec::new(),
            responses: Some(std::time::Duration::from_secs(60)),
        }
    }

    #[test]
    fn a_signed_token_decodes_and_verifies_with_the_issuers_key() {
        let account = nkeys::KeyPair::new_account();
        let user = nkeys::KeyPair::new_user();
        let token = Claims::user(&user.public_key(), "client", &user_permissions())
            .sign(&account, 1_700_000_000)
            .unwrap();
        let claims = decode_verified(&token).unwrap();
        assert_eq!(claims["iss"], account.public_key());
        assert_eq!(claims["sub"], user.public_key());
        assert_eq!(claims["name"], "client");
        assert_eq!(claims["iat"], 1_700_000_000);
        assert_eq!(claims["nats"]["type"], "user");
        assert_eq!(claims["nats"]["version"], 2);
        assert_eq!(claims["nats"]["pub"]["allow"], json!(["fnmesh.v1.req.>"]));
        assert_eq!(claims["nats"]["sub"]["allow"], json!(["_INBOX.>"]));
        assert_eq!(
            claims["nats"]["pub"]["deny"],
            json!(["fnmesh.v1.req.secret"])
        );
        assert_eq!(
            claims["nats"]["sub"]["deny"],
            Value::Null,
            "no empty deny list"
        );
        assert_eq!(claims["nats"]["resp"]["max"], 1);
        assert_eq!(claims["nats"]["resp"]["ttl"], 60_000_000_000u64);

        // The signature is Ed25519 over `header.claims`, by the issuer's public key.
        let (signed, signature) = token.rsplit_once('.').unwrap();
        let signature = URL_SAFE_NO_PAD.decode(signature).unwrap();
        let issuer = nkeys::KeyPair::from_public_key(&account.public_key()).unwrap();
        issuer.verify(signed.as_bytes(), &signature).unwrap();
        assert!(nkeys::KeyPair::new_account()
            .verify(signed.as_bytes(), &signature)
            .is_err());
        let header = URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap();
        assert_eq!(header, HEADER.as_bytes());
    }

    #[test]
    fn the_jti_is_the_base32_sha512_256_of_the_common_claims() {
        let operator = nkeys::KeyPair::new_operator();
        let sys = nkeys::KeyPair::new_account();
        let token = Claims::operator(&operator.public_key(), "fnmesh", &sys.public_key())
            .sign(&operator, 1)
            .unwrap();
        let claims = decode_verified(&token).unwrap();
        // What Go's json.Marshal of ClaimsData writes, jti omitted.
        let common = format!(
            r#"{{"iat":1,"iss":"{0}","name":"fnmesh","sub":"{0}"}}"#,
            operator.public_key()
        );
        let digest = Sha512_256::digest(common.as_bytes());
        assert_eq!(claims["jti"], data_encoding::BASE32_NOPAD.encode(&digest));
        assert_eq!(claims["jti"].as_str().unwrap().len(), 52);
        assert_eq!(claims["nats"]["system_account"], sys.public_key());
        assert_eq!(claims["nats"]["type"], "operator");
    }

    #[test]
    fn accounts_carry_jetstream_limits_exports_and_imports() {
        let operator = nkeys::KeyPair::new_operator();
        let internal = nkeys::KeyPair::new_account();
        let client = nkeys::KeyPair::new_account();
        let with_js = Claims::account(&internal.public_key(), "internal", true)
            .export_service("requests", "fnmesh.v1.req.>")
            .sign(&operator, 1)
            .unwrap();
        let claims = decode_verified(&with_js).unwrap();
        assert_eq!(claims["nats"]["limits"]["disk_storage"], -1);
        assert_eq!(claims["nats"]["exports"][0]["subject"], "fnmesh.v1.req.>");
        assert_eq!(claims["nats"]["exports"][0]["type"], "service");
        let without = Claims::account(&client.public_key(), "client", false)
            .import_service("requests", &internal.public_key(), "fnmesh.v1.req.>")
            .sign(&operator, 1)
            .unwrap();
        let claims = decode_verified(&without).unwrap();
        assert_eq!(claims["nats"]["limits"]["disk_storage"], 0);
        assert_eq!(
            claims["nats"]["imports"][0]["account"],
            internal.public_key()
        );
    }

    #[test]
    fn a_tampered_token_is_refused() {
        let account = nkeys::KeyPair::new_account();
        let user = nkeys::KeyPair::new_user();
        let token = Claims::user(&user.public_key(), "node", &user_permissions())
            .sign(&account, 1)
            .unwrap();
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let mut claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
        claims["nats"]["pub"]["allow"] = json!([">"]);
        parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
        assert!(matches!(
            decode_verified(&parts.join(".")),
            Err(JwtError::Key(_))
        ));
        assert!(decode_verified("a.b").is_err());
    }

    #[test]
    fn signing_needs_the_seed() {
        let public =
            nkeys::KeyPair::from_public_key(&nkeys::KeyPair::new_account().public_key()).unwrap();
        let user = nkeys::KeyPair::new_user();
        assert!(
            Claims::user(&user.public_key(), "u", &UserPermissions::default())
                .sign(&public, 1)
                .is_err()
        );
    }

    #[test]
    fn creds_files_have_the_standard_armour() {
        let text = creds_file("eyJ.a.b", "SUABC");
        assert_eq!(creds_user_jwt(&text), Some("eyJ.a.b"));
        assert_eq!(creds_user_jwt("no armour"), None);
        assert!(text.starts_with(
            "-----BEGIN NATS USER JWT-----\neyJ.a.b\n------END NATS USER JWT------\n"
        ));
        assert!(text
            .contains("-----BEGIN USER NKEY SEED-----\nSUABC\n------END USER NKEY SEED------\n"));
    }
}
