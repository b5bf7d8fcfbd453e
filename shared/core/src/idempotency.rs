//! Idempotency keys (`Idempotency-Key` on invoke, over HTTP and NATS): within
//! [`IDEMPOTENCY_TTL`] the same key with the same function and payload is the same invocation
//! (it runs once); the same key with anything else is refused.
//!
//! What "the same" means is a [`fingerprint`] of the function's name and the payload as JSON
//! (object keys in order, so two encodings of one JSON value match), stored with the key.
//! Keys are scoped by namespace.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::names::FunctionName;

/// How long a key keeps answering with its invocation.
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// The longest key, in bytes.
pub const MAX_KEY_LEN: usize = 255;

/// A key refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an idempotency key is 1 to {MAX_KEY_LEN} printable ASCII characters")]
pub struct KeyError;

/// A client's idempotency key: 1 to [`MAX_KEY_LEN`] printable ASCII characters (space to
/// `~`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Validates `value`.
    pub fn parse(value: &str) -> Result<Self, KeyError> {
        let ok = !value.is_empty()
            && value.len() <= MAX_KEY_LEN
            && value.bytes().all(|b| (0x20..=0x7e).contains(&b));
        if ok {
            Ok(Self(value.to_owned()))
        } else {
            Err(KeyError)
        }
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for IdempotencyKey {
    type Error = KeyError;
    fn try_from(value: String) -> Result<Self, KeyError> {
        Self::parse(&value)
    }
}

impl From<IdempotencyKey> for String {
    fn from(key: IdempotencyKey) -> String {
        key.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a key is bound to: SHA-256 (hex) of the function's name and the payload's JSON.
pub fn fingerprint(function: &FunctionName, payload: &serde_json::Value) -> String {
    let mut hasher = Sha256::new();
    hasher.update(function.as_str().as_bytes());
    hasher.update([0]);
    // `serde_json::Value` objects are ordered maps: one JSON value, one encoding.
    hasher.update(payload.to_string().as_bytes());
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_printable_ascii_up_to_255_bytes() {
        for ok in ["a", "order-42 retry", &"k".repeat(255), "~!@#"] {
            assert!(IdempotencyKey::parse(ok).is_ok(), "{ok:?}");
        }
        for bad in ["", &"k".repeat(256), "tab\there", "nl\n", "é"] {
            assert_eq!(IdempotencyKey::parse(bad), Err(KeyError), "{bad:?}");
        }
    }

    #[test]
    fn the_fingerprint_binds_function_and_payload_not_their_encoding() {
        let f = FunctionName::parse("f").unwrap();
        let g = FunctionName::parse("g").unwrap();
        let a: serde_json::Value = serde_json::from_str(r#"{"x": 1, "y": [2]}"#).unwrap();
        let same: serde_json::Value = serde_json::from_str(r#"{ "y":[2],"x":1 }"#).unwrap();
        let other: serde_json::Value = serde_json::from_str(r#"{"x": 2, "y": [2]}"#).unwrap();
        assert_eq!(fingerprint(&f, &a), fingerprint(&f, &same));
        assert_ne!(fingerprint(&f, &a), fingerprint(&f, &other));
        assert_ne!(fingerprint(&f, &a), fingerprint(&g, &a));
        assert_eq!(fingerprint(&f, &a).len(), 64);
    }
}
