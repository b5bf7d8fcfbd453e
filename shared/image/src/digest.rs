//! `sha256:<hex>` digests, and readers that check them while a blob streams.

use std::fmt;
use std::io::{self, Read};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::ImageError;

/// A content digest: `sha256:` and 64 lowercase hex digits. The hex part is safe to use as a
/// file name, which is how the caches name blobs and trees.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(format!("sha256:{}", hex::encode(Sha256::digest(bytes))))
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Digest {
    type Err = ImageError;

    fn from_str(s: &str) -> Result<Self, ImageError> {
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| ImageError::InvalidDigest(s.to_owned()))?;
        if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(Self(s.to_owned()))
        } else {
            Err(ImageError::InvalidDigest(s.to_owned()))
        }
    }
}

impl TryFrom<String> for Digest {
    type Error = ImageError;

    fn try_from(s: String) -> Result<Self, ImageError> {
        s.parse()
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A reader that hashes and counts what passes through it, and fails once more than `cap`
/// bytes went through.
pub struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    read: u64,
    cap: u64,
}

impl<R: Read> Hashing<R> {
    pub fn new(inner: R, cap: u64) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            read: 0,
            cap,
        }
    }

    /// Reads what is left (so the digest covers the whole blob), then the digest and length.
    pub fn finish(mut self) -> io::Result<(Digest, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        let hex = hex::encode(self.hasher.finalize());
        Ok((Digest(format!("sha256:{hex}")), self.read))
    }

    /// Like [`finish`](Self::finish), and checks the digest (and the size, when known);
    /// returns the length.
    pub fn verify(self, expected: &Digest, size: Option<u64>) -> Result<u64, ImageError> {
        let (got, len) = self.finish().map_err(read_error)?;
        if &got != expected {
            return Err(ImageError::DigestMismatch {
                expected: expected.to_string(),
                detail: format!("its content hashes to {got}"),
            });
        }
        if let Some(size) = size.filter(|&s| s != len) {
            return Err(ImageError::DigestMismatch {
                expected: expected.to_string(),
                detail: format!("it is {len} bytes, its descriptor says {size}"),
            });
        }
        Ok(len)
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        if self.read > self.cap {
            return Err(io::Error::other(OverCap(self.cap)));
        }
        Ok(n)
    }
}

/// The error a [`Hashing`] reader fails with past its cap.
#[derive(Debug, thiserror::Error)]
#[error("more than {0} bytes")]
pub struct OverCap(pub u64);

/// An I/O error met while reading a blob: over a cap it is [`ImageError::TooLarge`].
pub(crate) fn read_error(e: io::Error) -> ImageError {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<OverCap>())
    {
        Some(OverCap(cap)) => ImageError::TooLarge(format!("a blob is over {cap} bytes")),
        None => ImageError::Io(e),
    }
}
