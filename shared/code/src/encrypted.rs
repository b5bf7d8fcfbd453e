//! Code encrypted at rest with the secrets [`Keyring`] (`FNMESH_ENCRYPT_CODE`).
//!
//! [`Encrypted`] wraps a store: a put seals the archive (AES-256-GCM under the keyring's
//! current key, the checksum as associated data) and keeps the envelope under the plaintext's
//! checksum with [`CodeStore::put_raw`]; a get opens it with whichever key of the keyring
//! sealed it (so rotation works while the old key is listed), checks the plaintext's SHA-256
//! and returns the plaintext. Everything else delegates.
//!
//! Envelope: [`MAGIC`], the key id's length (one byte) and the key id, the nonce's length (one
//! byte) and the nonce, then ciphertext and tag.
//!
//! A blob without the magic header is refused unless [`Encrypted::allow_plaintext`] is set (to
//! read code deployed before encryption was switched on). Wrap each store of a
//! [`super::mirror::Mirrored`] pair, never the pair itself: the mirror verifies what it copies.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::{CodeStore, CodeStoreError};
use fnmesh_core::checksum::Checksum;
use fnmesh_core::secrets::{Keyring, SealedValue, SecretsError};

/// The first bytes of every sealed code blob.
pub const MAGIC: &[u8] = b"FNMESH-SEALED-CODE-V1\0";

/// A code store whose blobs are sealed with a keyring.
pub struct Encrypted {
    inner: Arc<dyn CodeStore>,
    keyring: Arc<Keyring>,
    allow_plaintext: bool,
}

impl std::fmt::Debug for Encrypted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encrypted")
            .field("keyring", &self.keyring)
            .field("allow_plaintext", &self.allow_plaintext)
            .finish_non_exhaustive()
    }
}

fn aad(checksum: &Checksum) -> Vec<u8> {
    format!("fnmesh.code.v1\0{}", checksum.as_str()).into_bytes()
}

/// Splits an envelope; `None` if it is not one (no magic) or is truncated.
fn parse(raw: &[u8]) -> Option<Result<SealedValue, ()>> {
    let rest = raw.strip_prefix(MAGIC)?;
    let field = |rest: &[u8]| -> Result<(Vec<u8>, usize), ()> {
        let len = usize::from(*rest.first().ok_or(())?);
        let value = rest.get(1..1 + len).ok_or(())?;
        Ok((value.to_vec(), 1 + len))
    };
    Some((|| {
        let (key_id, used) = field(rest)?;
        let rest = &rest[used..];
        let (nonce, used) = field(rest)?;
        let ciphertext = rest[used..].to_vec();
        let key_id = String::from_utf8(key_id).map_err(|_| ())?;
        Ok(SealedValue {
            key_id,
            nonce,
            ciphertext,
        })
    })())
}

impl Encrypted {
    /// Seals what is put into `inner` with `keyring`.
    pub fn new(inner: Arc<dyn CodeStore>, keyring: Arc<Keyring>) -> Self {
        Self {
            inner,
            keyring,
            allow_plaintext: false,
        }
    }

    /// Also serves blobs stored unencrypted (ones whose bytes hash to their checksum).
    pub fn allow_plaintext(mut self, allow: bool) -> Self {
        self.allow_plaintext = allow;
        self
    }

    fn seal(&self, checksum: &Checksum, plaintext: &[u8]) -> Result<Bytes, CodeStoreError> {
        let sealed = self
            .keyring
            .seal(&aad(checksum), plaintext)
            .map_err(|e| CodeStoreError::Backend(format!("sealing code {checksum}: {e}")))?;
        let id = sealed.key_id.as_bytes();
        let (Ok(id_len), Ok(nonce_len)) =
            (u8::try_from(id.len()), u8::try_from(sealed.nonce.len()))
        else {
            return Err(CodeStoreError::Backend(format!(
                "sealing code {checksum}: key id or nonce too long"
            )));
        };
        let mut out = Vec::with_capacity(
            MAGIC.len() + 2 + id.len() + sealed.nonce.len() + sealed.ciphertext.len(),
        );
        out.extend_from_slice(MAGIC);
        out.push(id_len);
        out.extend_from_slice(id);
        out.push(nonce_len);
        out.extend_from_slice(&sealed.nonce);
        out.extend_from_slice(&sealed.ciphertext);
        Ok(Bytes::from(out))
    }

    /// The plaintext of the stored bytes `raw` of `checksum`.
    fn open(&self, checksum: &Checksum, raw: Bytes) -> Result<Bytes, CodeStoreError> {
        let sealed = match parse(&raw) {
            Some(Ok(sealed)) => sealed,
            Some(Err(())) => {
                tracing::error!(code.checksum = %checksum, "sealed code blob is truncated");
                return Err(CodeStoreError::Corrupt(checksum.clone()));
            }
            None if Checksum::of(&raw) == *checksum => {
                if self.allow_plaintext {
                    return Ok(raw);
                }
                return Err(CodeStoreError::Backend(format!(
                    "code {checksum} is stored unencrypted, but code encryption is on: deploy it again"
                )));
            }
            None => {
                tracing::error!(code.checksum = %checksum, "code blob is corrupt (not sealed)");
                return Err(CodeStoreError::Corrupt(checksum.clone()));
            }
        };
        let plain = match self.keyring.open(&aad(checksum), &sealed) {
            Ok(plain) => plain,
            Err(SecretsError::UnknownKeyId(id)) => {
                return Err(CodeStoreError::Backend(format!(
                    "code {checksum} is sealed with key {id:?}, which is not configured here \
                     (list it in FNMESH_SECRETS_OLD_KEYS)"
                )))
            }
            Err(_) => {
                tracing::error!(code.checksum = %checksum, key_id = %sealed.key_id, "sealed code blob cannot be opened: tampered with, or sealed with another key of that id");
                return Err(CodeStoreError::Corrupt(checksum.clone()));
            }
        };
        if Checksum::of(&plain) != *checksum {
            return Err(CodeStoreError::Corrupt(checksum.clone()));
        }
        Ok(Bytes::from(plain))
    }
}

#[async_trait]
impl CodeStore for Encrypted {
    async fn ping(&self) -> Result<(), CodeStoreError> {
        self.inner.ping().await
    }

    async fn put(&self, bytes: Bytes) -> Result<Checksum, CodeStoreError> {
        let checksum = Checksum::of(&bytes);
        // Already sealed there and intact: a no-op (each sealing differs, so check by opening).
        // A plaintext blob (with `allow_plaintext`) is sealed now.
        if let Ok(Some(raw)) = self.inner.get_raw(&checksum).await {
            if matches!(parse(&raw), Some(Ok(_))) && self.open(&checksum, raw).is_ok() {
                return Ok(checksum);
            }
        }
        let sealed = self.seal(&checksum, &bytes)?;
        self.inner.put_raw(&checksum, sealed).await?;
        Ok(checksum)
    }

    async fn get(&self, checksum: &Checksum) -> Result<Option<Bytes>, CodeStoreError> {
        match self.inner.get_raw(checksum).await? {
            Some(raw) => self.open(checksum, raw).map(Some),
            None => Ok(None),
        }
    }

    async fn exists(&self, checksum: &Checksum) -> Result<bool, CodeStoreError> {
        self.inner.exists(checksum).await
    }

    async fn delete(&self, checksum: &Checksum) -> Result<bool, CodeStoreError> {
        self.inner.delete(checksum).await
    }

    async fn ensure_replicated(&self, checksum: &Checksum) -> Result<(), CodeStoreError> {
        self.inner.ensure_replicated(checksum).await
    }

    async fn put_raw(&self, key: &Checksum, bytes: Bytes) -> Result<(), CodeStoreError> {
        self.inner.put_raw(key, bytes).await
    }

    async fn get_raw(&self, key: &Checksum) -> Result<Option<Bytes>, CodeStoreError> {
        self.inner.get_raw(key).await
    }
}
