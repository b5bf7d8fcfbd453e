//! Container registries as the platform names them: a registry host, and the credentials a
//! namespace keeps for it (sealed at rest and on the wire, see [`crate::secrets`]).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest registry host (a DNS name of at most 253 characters, a `:port`).
const MAX_HOST: usize = 253 + 6;

/// Longest user name or password kept for a registry.
pub const MAX_CREDENTIAL_BYTES: usize = 4096;

/// A registry as image references name it: `host[:port]`, lower-case (`registry.example.com`,
/// `127.0.0.1:5000`, `localhost:5000`); what `PUT /v1/registries/{host}` names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct RegistryHost(String);

/// Why a registry host or credential was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistryError {
    /// Not `host[:port]`.
    #[error(
        "invalid registry host {0:?}: expected host[:port] (letters, digits, '-' and '.', \
         a port 1..=65535), at most 259 characters"
    )]
    InvalidHost(String),
    /// An empty, too long or NUL-holding user name or password.
    #[error("invalid registry credentials: {0}")]
    InvalidCredential(String),
}

impl RegistryHost {
    /// Validates `raw` (case-insensitive; kept lower-case).
    pub fn parse(raw: &str) -> Result<Self, RegistryError> {
        let invalid = || RegistryError::InvalidHost(raw.chars().take(300).collect());
        if raw.is_empty() || raw.len() > MAX_HOST {
            return Err(invalid());
        }
        let lower = raw.to_ascii_lowercase();
        let (name, port) = match lower.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (lower.as_str(), None),
        };
        if let Some(port) = port {
            let ok = !port.is_empty()
                && port.len() <= 5
                && port.bytes().all(|b| b.is_ascii_digit())
                && port.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p));
            if !ok {
                return Err(invalid());
            }
        }
        let labels_ok = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            });
        if !labels_ok {
            return Err(invalid());
        }
        Ok(Self(lower))
    }

    /// The host as references write it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// One NATS subject token naming this host (lower-case hex of its bytes; hosts hold `.`
    /// and `:`, which a token cannot).
    pub fn token(&self) -> String {
        hex::encode(self.0.as_bytes())
    }

    /// The host a [`Self::token`] names.
    pub fn from_token(token: &str) -> Option<Self> {
        let bytes = hex::decode(token).ok()?;
        let raw = String::from_utf8(bytes).ok()?;
        let host = Self::parse(&raw).ok()?;
        (host.0 == raw).then_some(host)
    }
}

impl fmt::Display for RegistryHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RegistryHost {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// What a namespace keeps for a registry: a user name and a password or token (registries
/// take both as HTTP basic credentials, and exchange them for bearer tokens where they use
/// token auth). `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegistryCredential {
    /// The user name.
    pub username: String,
    /// The password or access token.
    pub password: String,
}

impl RegistryCredential {
    /// Checks both parts: non-empty, at most [`MAX_CREDENTIAL_BYTES`], no NUL, and no `:` in
    /// the user name (basic auth could not carry it).
    pub fn validate(&self) -> Result<(), RegistryError> {
        let bad = |why: &str| Err(RegistryError::InvalidCredential(why.to_owned()));
        for (what, value) in [("username", &self.username), ("password", &self.password)] {
            if value.is_empty() {
                return bad(&format!("{what} is empty"));
            }
            if value.len() > MAX_CREDENTIAL_BYTES {
                return bad(&format!("{what} is over {MAX_CREDENTIAL_BYTES} bytes"));
            }
            if value.contains('\0') {
                return bad(&format!("{what} contains a NUL character"));
            }
        }
        if self.username.contains(':') {
            return bad("username contains ':'");
        }
        Ok(())
    }
}

impl fmt::Debug for RegistryCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryCredential")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hosts_parse_and_round_trip_through_tokens() {
        for ok in [
            "registry.example.com",
            "127.0.0.1:5000",
            "localhost:5000",
            "Ghcr.IO",
            "a-b.c",
        ] {
            let host = RegistryHost::parse(ok).unwrap();
            assert_eq!(host.as_str(), ok.to_ascii_lowercase());
            assert_eq!(RegistryHost::from_token(&host.token()), Some(host));
        }
        for bad in [
            "",
            "a/b",
            "host:",
            "host:0",
            "host:70000",
            "-a.com",
            "a..b",
            "a b",
            "user@host",
            ":5000",
            "[::1]:5000",
        ] {
            assert!(RegistryHost::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(RegistryHost::from_token("zz"), None);
        assert_eq!(RegistryHost::from_token(&hex::encode("A.com")), None);
    }

    #[test]
    fn credentials_are_checked_and_never_printed() {
        let c = RegistryCredential {
            username: "u".into(),
            password: "hunter2".into(),
        };
        c.validate().unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        for (u, p) in [("", "p"), ("u", ""), ("a:b", "p"), ("u", "p\0")] {
            let c = RegistryCredential {
                username: u.into(),
                password: p.into(),
            };
            assert!(c.validate().is_err(), "{u:?} {p:?}");
        }
    }
}
