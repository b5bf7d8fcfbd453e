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

    /// The 32 bytes of the digest.
    pub fn digest(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        // Always 64 lowercase hex digits (checked on construction).
        let _ = hex::decode_to_slice(&self.0, &mut out);
        out
    }
}

/// A [`Checksum`] computed over bytes that arrive in pieces (a file or a stream copied in
/// chunks), so they are never held whole.
#[derive(Debug, Clone, Default)]
pub struct ChecksumHasher(Sha256);

impl ChecksumHasher {
    /// A hasher that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next piece.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The checksum of everything fed.
    pub fn finish(self) -> Checksum {
        Checksum(hex::encode(self.0.finalize()))
    }
}

impl std::io::Write for ChecksumHasher {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A reader that hashes what is read through it.
#[derive(Debug)]
pub struct HashingReader<R> {
    inner: R,
    hasher: ChecksumHasher,
    read: u64,
}

impl<R: std::io::Read> HashingReader<R> {
    /// Hashes what is read from `inner`.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: ChecksumHasher::new(),
            read: 0,
        }
    }

    /// Reads what is left of `inner`, then gives the checksum and length of everything read.
    pub fn finish(mut self) -> std::io::Result<(Checksum, u64)> {
        std::io::copy(&mut self, &mut std::io::sink())?;
        Ok((self.hasher.finish(), self.read))
    }
}

impl<R: std::io::Read> std::io::Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
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
        assert_eq!(hex::encode(c.digest()), c.as_str());
    }

    #[test]
    fn pieces_hash_as_the_whole() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut hasher = ChecksumHasher::new();
        for piece in data.chunks(777) {
            hasher.update(piece);
        }
        assert_eq!(hasher.finish(), Checksum::of(&data));
        let mut reader = HashingReader::new(&data[..]);
        let mut head = [0u8; 1000];
        std::io::Read::read_exact(&mut reader, &mut head).unwrap();
        // What is left unread is hashed by `finish`.
        assert_eq!(reader.finish().unwrap(), (Checksum::of(&data), 100_000));
    }
}
