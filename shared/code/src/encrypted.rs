//! Code encrypted at rest with the secrets [`Keyring`] (`FNMESH_ENCRYPT_CODE`).
//!
//! [`Encrypted`] wraps a store: a put seals the archive under the keyring's current key and
//! keeps the envelope under the plaintext's checksum with [`CodeStore::put_raw`]; a get opens
//! it with whichever key of the keyring sealed it (so rotation works while the old key is
//! listed), checks the plaintext's SHA-256 and returns the plaintext. Everything else
//! delegates.
//!
//! Envelope ([`MAGIC`], version 2): the magic, then frames of at most [`CHUNK_BYTES`] of
//! plaintext each, so a blob is sealed and opened a frame at a time from file to file
//! ([`CodeStore::put_file`], [`CodeStore::get_file`]) and never held whole. A frame is a flag
//! byte (0: more follow, 1: the last), the key id's length (one byte) and the key id, the
//! nonce's length (one byte) and the nonce, the ciphertext's length (u32, big-endian) and the
//! ciphertext with its tag: AES-256-GCM with a fresh random nonce, the associated data naming
//! the checksum, the frame's index and its flag, so frames cannot be reordered, dropped,
//! moved to another blob, or cut off after a frame that is not the last.
//!
//! Version 1 envelopes ([`MAGIC_V1`]: one AES-GCM seal of the whole archive, written before
//! code was streamed) are still opened, whole.
//!
//! A blob without a magic header is refused unless [`Encrypted::allow_plaintext`] is set (to
//! read code deployed before encryption was switched on). Wrap each store of a
//! [`super::mirror::Mirrored`] pair, never the pair itself: the mirror verifies what it copies.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::{blocking, CodeStore, CodeStoreError, CHUNK_BYTES};
use fnmesh_core::checksum::{Checksum, ChecksumHasher};
use fnmesh_core::secrets::{Keyring, SealedValue, SecretsError};

/// The first bytes of every sealed code blob (version 2: sealed in frames).
pub const MAGIC: &[u8] = b"FNMESH-SEALED-CODE-V2\0";

/// The first bytes of a version 1 envelope (one seal of the whole blob): still read.
pub const MAGIC_V1: &[u8] = b"FNMESH-SEALED-CODE-V1\0";

const FRAME_MORE: u8 = 0;
const FRAME_LAST: u8 = 1;

/// The AES-GCM tag each frame's ciphertext carries beyond its plaintext.
const TAG_BYTES: usize = 16;

/// A code store whose blobs are sealed with a keyring.
#[derive(Clone)]
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

fn aad_v1(checksum: &Checksum) -> Vec<u8> {
    format!("fnmesh.code.v1\0{}", checksum.as_str()).into_bytes()
}

fn frame_aad(checksum: &Checksum, index: u32, flag: u8) -> Vec<u8> {
    let mut aad = format!("fnmesh.code.v2\0{}\0", checksum.as_str()).into_bytes();
    aad.extend_from_slice(&index.to_be_bytes());
    aad.push(flag);
    aad
}

/// Splits a version 1 envelope (after its magic); `Err` if it is truncated.
fn parse_v1(rest: &[u8]) -> Result<SealedValue, ()> {
    let field = |rest: &[u8]| -> Result<(Vec<u8>, usize), ()> {
        let len = usize::from(*rest.first().ok_or(())?);
        let value = rest.get(1..1 + len).ok_or(())?;
        Ok((value.to_vec(), 1 + len))
    };
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
}

/// Fills `buf` from `source` as far as it goes; how many bytes were read (fewer only at the
/// end).
fn read_up_to(source: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match source.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn io_error(checksum: &Checksum, e: std::io::Error) -> CodeStoreError {
    CodeStoreError::Backend(format!("code {checksum}: {e}"))
}

fn corrupt(checksum: &Checksum, why: &str) -> CodeStoreError {
    tracing::error!(code.checksum = %checksum, "sealed code blob {why}");
    CodeStoreError::Corrupt(checksum.clone())
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

    /// Seals the plaintext read from `source` (whose checksum is `checksum`) into `out`, a
    /// frame at a time.
    fn seal_to(
        keyring: &Keyring,
        checksum: &Checksum,
        mut source: impl Read,
        mut out: impl Write,
    ) -> Result<(), CodeStoreError> {
        let io = |e| io_error(checksum, e);
        out.write_all(MAGIC).map_err(io)?;
        let mut chunk = vec![0u8; CHUNK_BYTES];
        let mut len = read_up_to(&mut source, &mut chunk).map_err(io)?;
        let mut next = vec![0u8; CHUNK_BYTES];
        for index in 0u32.. {
            // A full chunk may be the last: look one ahead.
            let next_len = if len == CHUNK_BYTES {
                read_up_to(&mut source, &mut next).map_err(io)?
            } else {
                0
            };
            let flag = if next_len == 0 {
                FRAME_LAST
            } else {
                FRAME_MORE
            };
            let sealed = keyring
                .seal(&frame_aad(checksum, index, flag), &chunk[..len])
                .map_err(|e| CodeStoreError::Backend(format!("sealing code {checksum}: {e}")))?;
            let id = sealed.key_id.as_bytes();
            let (Ok(id_len), Ok(nonce_len), Ok(ct_len)) = (
                u8::try_from(id.len()),
                u8::try_from(sealed.nonce.len()),
                u32::try_from(sealed.ciphertext.len()),
            ) else {
                return Err(CodeStoreError::Backend(format!(
                    "sealing code {checksum}: key id or nonce too long"
                )));
            };
            out.write_all(&[flag, id_len]).map_err(io)?;
            out.write_all(id).map_err(io)?;
            out.write_all(&[nonce_len]).map_err(io)?;
            out.write_all(&sealed.nonce).map_err(io)?;
            out.write_all(&ct_len.to_be_bytes()).map_err(io)?;
            out.write_all(&sealed.ciphertext).map_err(io)?;
            if flag == FRAME_LAST {
                break;
            }
            std::mem::swap(&mut chunk, &mut next);
            len = next_len;
        }
        out.flush().map_err(io)
    }

    /// Writes the plaintext of the stored bytes read from `raw` into `out` (a frame at a time
    /// for version 2), checking its SHA-256 against `checksum`. On an error, part of it may
    /// have been written: the caller discards `out`.
    fn open_to(
        &self,
        checksum: &Checksum,
        mut raw: impl Read,
        mut out: impl Write,
    ) -> Result<(), CodeStoreError> {
        let io = |e| io_error(checksum, e);
        let mut head = vec![0u8; MAGIC.len().max(MAGIC_V1.len())];
        let head_len = read_up_to(&mut raw, &mut head).map_err(io)?;
        head.truncate(head_len);
        let mut hasher = ChecksumHasher::new();
        if head.starts_with(MAGIC) {
            self.open_frames(checksum, &mut raw, &mut out, &mut hasher)?;
        } else if let Some(rest) = head.strip_prefix(MAGIC_V1) {
            let mut envelope = rest.to_vec();
            raw.read_to_end(&mut envelope).map_err(io)?;
            let sealed = parse_v1(&envelope).map_err(|()| corrupt(checksum, "is truncated"))?;
            let plain = self.open_one(checksum, &aad_v1(checksum), &sealed)?;
            hasher.update(&plain);
            out.write_all(&plain).map_err(io)?;
        } else {
            // Not sealed: plaintext deployed before encryption, or damage.
            hasher.update(&head);
            out.write_all(&head).map_err(io)?;
            let mut buf = vec![0u8; CHUNK_BYTES];
            loop {
                let n = read_up_to(&mut raw, &mut buf).map_err(io)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                out.write_all(&buf[..n]).map_err(io)?;
            }
            if hasher.finish() != *checksum {
                return Err(corrupt(checksum, "is corrupt (not sealed)"));
            }
            if !self.allow_plaintext {
                return Err(CodeStoreError::Backend(format!(
                    "code {checksum} is stored unencrypted, but code encryption is on: deploy it again"
                )));
            }
            return out.flush().map_err(io);
        }
        if hasher.finish() != *checksum {
            return Err(CodeStoreError::Corrupt(checksum.clone()));
        }
        out.flush().map_err(io)
    }

    fn open_frames(
        &self,
        checksum: &Checksum,
        raw: &mut impl Read,
        out: &mut impl Write,
        hasher: &mut ChecksumHasher,
    ) -> Result<(), CodeStoreError> {
        let io = |e| io_error(checksum, e);
        let truncated = || corrupt(checksum, "is truncated");
        let mut byte = [0u8; 1];
        for index in 0u32.. {
            let mut field = |len: usize| -> Result<Vec<u8>, CodeStoreError> {
                let mut value = vec![0u8; len];
                if read_up_to(raw, &mut value).map_err(io)? < len {
                    return Err(truncated());
                }
                Ok(value)
            };
            let head = field(2)?;
            let (flag, id_len) = (head[0], usize::from(head[1]));
            if flag != FRAME_MORE && flag != FRAME_LAST {
                return Err(corrupt(checksum, "has a bad frame"));
            }
            let key_id = String::from_utf8(field(id_len)?)
                .map_err(|_| corrupt(checksum, "has a bad key id"))?;
            let nonce_len = usize::from(field(1)?[0]);
            let nonce = field(nonce_len)?;
            let ct_len = field(4)?;
            let ct_len = u32::from_be_bytes([ct_len[0], ct_len[1], ct_len[2], ct_len[3]]);
            let ct_len = usize::try_from(ct_len).unwrap_or(usize::MAX);
            if ct_len > CHUNK_BYTES + TAG_BYTES {
                return Err(corrupt(checksum, "has an oversized frame"));
            }
            let ciphertext = field(ct_len)?;
            let sealed = SealedValue {
                key_id,
                nonce,
                ciphertext,
            };
            let plain = self.open_one(checksum, &frame_aad(checksum, index, flag), &sealed)?;
            hasher.update(&plain);
            out.write_all(&plain).map_err(io)?;
            if flag == FRAME_LAST {
                break;
            }
        }
        // Nothing may follow the last frame.
        if read_up_to(raw, &mut byte).map_err(io)? != 0 {
            return Err(corrupt(checksum, "has bytes after its last frame"));
        }
        Ok(())
    }

    fn open_one(
        &self,
        checksum: &Checksum,
        aad: &[u8],
        sealed: &SealedValue,
    ) -> Result<Vec<u8>, CodeStoreError> {
        match self.keyring.open(aad, sealed) {
            Ok(plain) => Ok(plain),
            Err(SecretsError::UnknownKeyId(id)) => Err(CodeStoreError::Backend(format!(
                "code {checksum} is sealed with key {id:?}, which is not configured here \
                 (list it in FNMESH_SECRETS_OLD_KEYS)"
            ))),
            Err(_) => {
                tracing::error!(code.checksum = %checksum, key_id = %sealed.key_id, "sealed code blob cannot be opened: tampered with, or sealed with another key of that id");
                Err(CodeStoreError::Corrupt(checksum.clone()))
            }
        }
    }

    /// Whether the stored bytes `raw` are sealed (either version) and open to `checksum`.
    fn sealed_and_intact(&self, checksum: &Checksum, raw: &[u8]) -> bool {
        (raw.starts_with(MAGIC) || raw.starts_with(MAGIC_V1))
            && self.open_to(checksum, raw, std::io::sink()).is_ok()
    }
}

fn scratch_file(near: Option<&Path>) -> Result<tempfile::NamedTempFile, CodeStoreError> {
    let dir = near
        .and_then(Path::parent)
        .filter(|d| !d.as_os_str().is_empty())
        .map_or_else(std::env::temp_dir, Path::to_path_buf);
    tempfile::Builder::new()
        .prefix(".fnmesh-sealed-")
        .tempfile_in(&dir)
        .map_err(|e| CodeStoreError::Backend(format!("a temporary file in {}: {e}", dir.display())))
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
            if self.sealed_and_intact(&checksum, &raw) {
                return Ok(checksum);
            }
        }
        let mut sealed = Vec::with_capacity(bytes.len() + MAGIC.len() + 64);
        Self::seal_to(&self.keyring, &checksum, &bytes[..], &mut sealed)?;
        self.inner.put_raw(&checksum, Bytes::from(sealed)).await?;
        Ok(checksum)
    }

    async fn get(&self, checksum: &Checksum) -> Result<Option<Bytes>, CodeStoreError> {
        match self.inner.get_raw(checksum).await? {
            Some(raw) => {
                let mut plain = Vec::with_capacity(raw.len());
                self.open_to(checksum, &raw[..], &mut plain)?;
                Ok(Some(Bytes::from(plain)))
            }
            None => Ok(None),
        }
    }

    async fn put_file(&self, path: &Path) -> Result<Checksum, CodeStoreError> {
        let (checksum, _) = crate::checksum_file(path).await?;
        let scratch = scratch_file(Some(path))?;
        // Already sealed there and intact: a no-op, as for `put`.
        if let Ok(Some(_)) = self.inner.get_raw_file(&checksum, scratch.path()).await {
            let (this, c, at) = (self.clone(), checksum.clone(), scratch.path().to_path_buf());
            let intact = blocking(move || {
                let mut raw = std::fs::File::open(&at).map_err(|e| io_error(&c, e))?;
                let mut head = vec![0u8; MAGIC.len()];
                let n = read_up_to(&mut raw, &mut head).map_err(|e| io_error(&c, e))?;
                head.truncate(n);
                if !(head.starts_with(MAGIC) || head.starts_with(MAGIC_V1)) {
                    return Ok(false);
                }
                let raw = std::fs::File::open(&at).map_err(|e| io_error(&c, e))?;
                Ok(this.open_to(&c, raw, std::io::sink()).is_ok())
            })
            .await?;
            if intact {
                return Ok(checksum);
            }
        }
        let (keyring, c) = (self.keyring.clone(), checksum.clone());
        let (source, sealed) = (path.to_path_buf(), scratch.path().to_path_buf());
        blocking(move || {
            let from = std::fs::File::open(&source).map_err(|e| io_error(&c, e))?;
            let to = std::fs::File::create(&sealed).map_err(|e| io_error(&c, e))?;
            Self::seal_to(
                &keyring,
                &c,
                std::io::BufReader::with_capacity(CHUNK_BYTES, from),
                std::io::BufWriter::with_capacity(CHUNK_BYTES, to),
            )
        })
        .await?;
        self.inner.put_raw_file(&checksum, scratch.path()).await?;
        Ok(checksum)
    }

    async fn get_file(&self, checksum: &Checksum, dest: &Path) -> Result<bool, CodeStoreError> {
        let scratch = scratch_file(Some(dest))?;
        if self
            .inner
            .get_raw_file(checksum, scratch.path())
            .await?
            .is_none()
        {
            return Ok(false);
        }
        let (this, c) = (self.clone(), checksum.clone());
        let (raw, plain) = (scratch.path().to_path_buf(), dest.to_path_buf());
        blocking(move || {
            let from = std::fs::File::open(&raw).map_err(|e| io_error(&c, e))?;
            let to = std::fs::File::create(&plain).map_err(|e| io_error(&c, e))?;
            let opened = this.open_to(
                &c,
                std::io::BufReader::with_capacity(CHUNK_BYTES, from),
                std::io::BufWriter::with_capacity(CHUNK_BYTES, to),
            );
            if opened.is_err() {
                let _ = std::fs::remove_file(&plain);
            }
            opened
        })
        .await?;
        Ok(true)
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

    async fn put_raw_file(&self, key: &Checksum, path: &Path) -> Result<(), CodeStoreError> {
        self.inner.put_raw_file(key, path).await
    }

    async fn get_raw_file(
        &self,
        key: &Checksum,
        dest: &Path,
    ) -> Result<Option<Checksum>, CodeStoreError> {
        self.inner.get_raw_file(key, dest).await
    }
}
