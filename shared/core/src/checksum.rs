//! SHA-256 content addresses for function code.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A checksum that is not 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid checksum {0:?}: expected 64 lowercase hex digits")]
pub struct ChecksumError(String);

/// A SHA-256 digest as 64 lowercase hex digits; safe as a file name or object key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Checksum(String);

impl Checksum {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(hex::encode(Sha256::digest(bytes)))
    }

    /// Validates a hex digest.
    pub fn parse(value: &str) -> Result<Self, ChecksumError> {
        if value.len() == 64
            && value
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(Self(value.to_owned()))
        } else {
            Err(ChecksumError(value.chars().take(80).collect()))
        }
    }

    /// The hex digest.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Checksum {
    type Error = ChecksumError;
    fn try_from(value: String) -> Result<Self, ChecksumError> {
        Self::parse(&value)
    }
}

impl From<Checksum> for String {
    fn from(value: Checksum) -> String {
        value.0
    }
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_and_parse() {
        let c = Checksum::of(b"abc");
        assert_eq!(
            c.as_str(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(Checksum::parse(c.as_str()).is_ok());
        assert!(Checksum::parse("../etc/passwd").is_err());
        assert!(Checksum::parse(&c.as_str().to_uppercase()).is_err());
    }
}
