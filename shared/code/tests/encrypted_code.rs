//! Code encrypted at rest: the conformance suite on `Encrypted<LocalCodeStore>`, ciphertext on
//! disk, wrong keys, rotation and legacy plaintext blobs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use bytes::Bytes;
use fnmesh_code::conformance::{self, Store};
use fnmesh_code::encrypted::{Encrypted, MAGIC, MAGIC_V1};
use fnmesh_code::local::LocalCodeStore;
use fnmesh_code::{CodeStore, CodeStoreError};
use fnmesh_core::checksum::Checksum;
use fnmesh_core::secrets::Keyring;
use tempfile::TempDir;

fn ring(id: &str, byte: u8) -> Keyring {
    Keyring::new(id, &[byte; 32]).unwrap()
}

async fn local() -> (TempDir, LocalCodeStore) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = LocalCodeStore::open(dir.path()).await.expect("open");
    (dir, store)
}

fn sealed(inner: &LocalCodeStore, keyring: Keyring) -> Encrypted {
    Encrypted::new(Arc::new(inner.clone()), Arc::new(keyring))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_suite() {
    let (_dir, inner) = local().await;
    conformance::run_all(Arc::new(sealed(&inner, ring("k1", 7))) as Store).await;
}

#[tokio::test]
async fn corruption_is_detected() {
    let (_dir, inner) = local().await;
    let path_of = inner.clone();
    let store = Arc::new(sealed(&inner, ring("k1", 7)));
    conformance::corruption_is_detected(store.clone(), |checksum| async move {
        tokio::fs::write(path_of.blob_path(&checksum), b"tampered")
            .await
            .expect("overwrite blob");
    })
    .await;
    // A flipped ciphertext byte, too.
    let c = store.put(Bytes::from_static(b"flip me")).await.unwrap();
    let mut raw = std::fs::read(inner.blob_path(&c)).unwrap();
    let last = raw.len() - 1;
    raw[last] ^= 1;
    std::fs::write(inner.blob_path(&c), raw).unwrap();
    assert!(matches!(
        store.get(&c).await,
        Err(CodeStoreError::Corrupt(_))
    ));
}

#[tokio::test]
async fn the_bytes_on_disk_are_not_the_plaintext() {
    let (dir, inner) = local().await;
    let store = sealed(&inner, ring("k1", 7));
    let code = Bytes::from_static(b"def handler(event): return 'MARKER-7f3a1c-PLAINTEXT'");
    let c = store.put(code.clone()).await.unwrap();
    assert_eq!(
        c,
        Checksum::of(&code),
        "stored under the plaintext's checksum"
    );
    let on_disk = std::fs::read(inner.blob_path(&c)).unwrap();
    assert!(on_disk.starts_with(MAGIC));
    for entry in walk(dir.path()) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(
            !bytes.windows(6).any(|w| w == b"MARKER"),
            "{} holds the plaintext",
            entry.display()
        );
    }
    assert_eq!(store.get(&c).await.unwrap(), Some(code.clone()));
    // Putting it again is a no-op: the envelope is not rewritten.
    store.put(code).await.unwrap();
    assert_eq!(std::fs::read(inner.blob_path(&c)).unwrap(), on_disk);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test]
async fn a_wrong_key_fails() {
    let (_dir, inner) = local().await;
    let c = sealed(&inner, ring("k1", 7))
        .put(Bytes::from_static(b"secret code"))
        .await
        .unwrap();
    // Same id, other key material.
    let other = sealed(&inner, ring("k1", 8));
    assert!(matches!(
        other.get(&c).await,
        Err(CodeStoreError::Corrupt(_))
    ));
    // A keyring without the id at all.
    let unknown = sealed(&inner, ring("k9", 7));
    match unknown.get(&c).await {
        Err(CodeStoreError::Backend(msg)) => assert!(msg.contains("k1"), "{msg}"),
        other => panic!("expected an unknown-key error, got {other:?}"),
    }
}

#[tokio::test]
async fn rotation_keeps_old_blobs_readable() {
    let (_dir, inner) = local().await;
    let old_code = Bytes::from_static(b"sealed with k1");
    let old = sealed(&inner, ring("k1", 7))
        .put(old_code.clone())
        .await
        .unwrap();
    let rotated = sealed(&inner, ring("k2", 9).with_old_key("k1", &[7; 32]).unwrap());
    assert_eq!(rotated.get(&old).await.unwrap(), Some(old_code));
    let new_code = Bytes::from_static(b"sealed with k2");
    let new = rotated.put(new_code.clone()).await.unwrap();
    assert_eq!(rotated.get(&new).await.unwrap(), Some(new_code));
    // Once k1 is dropped, its blobs can no longer be opened; k2's still can.
    let only_k2 = sealed(&inner, ring("k2", 9));
    assert!(only_k2.get(&old).await.is_err());
    assert!(only_k2.get(&new).await.unwrap().is_some());
}

#[tokio::test]
async fn plaintext_blobs_are_refused_unless_allowed() {
    let (_dir, inner) = local().await;
    let code = Bytes::from_static(b"deployed before encryption");
    let c = inner.put(code.clone()).await.unwrap();
    let strict = sealed(&inner, ring("k1", 7));
    assert!(matches!(
        strict.get(&c).await,
        Err(CodeStoreError::Backend(_))
    ));
    let lenient = sealed(&inner, ring("k1", 7)).allow_plaintext(true);
    assert_eq!(lenient.get(&c).await.unwrap(), Some(code.clone()));
    // Deploying it again seals it.
    strict.put(code.clone()).await.unwrap();
    assert!(std::fs::read(inner.blob_path(&c))
        .unwrap()
        .starts_with(MAGIC));
    assert_eq!(strict.get(&c).await.unwrap(), Some(code));
}

#[tokio::test]
async fn files_are_sealed_in_frames_and_cut_ones_are_corrupt() {
    let (dir, inner) = local().await;
    let store = sealed(&inner, ring("k1", 7));
    // Three frames: two full ones and a short last one.
    let code = conformance::random_bytes(2 * fnmesh_code::CHUNK_BYTES + 100);
    let source = dir.path().join("code.tar.gz");
    std::fs::write(&source, &code).unwrap();
    let c = store.put_file(&source).await.unwrap();
    assert_eq!(c, Checksum::of(&code));
    let on_disk = std::fs::read(inner.blob_path(&c)).unwrap();
    assert!(on_disk.starts_with(MAGIC));
    assert!(
        on_disk.len() > code.len(),
        "each frame adds a nonce and a tag"
    );
    let back = dir.path().join("back");
    assert!(store.get_file(&c, &back).await.unwrap());
    assert!(std::fs::read(&back).unwrap() == code);
    // Putting the file again is a no-op, as for bytes.
    store.put_file(&source).await.unwrap();
    assert_eq!(std::fs::read(inner.blob_path(&c)).unwrap(), on_disk);

    // Cut after the first frame (and anywhere else): never served.
    let frame = MAGIC.len() + 2 + 2 + 1 + 12 + 4 + fnmesh_code::CHUNK_BYTES + 16;
    for cut in [frame, frame + 1, on_disk.len() - 1] {
        std::fs::write(inner.blob_path(&c), &on_disk[..cut]).unwrap();
        assert!(
            matches!(store.get(&c).await, Err(CodeStoreError::Corrupt(_))),
            "cut at {cut}"
        );
        let dest = dir.path().join(format!("cut-{cut}"));
        assert!(
            matches!(
                store.get_file(&c, &dest).await,
                Err(CodeStoreError::Corrupt(_))
            ),
            "cut at {cut}"
        );
        assert!(!dest.exists(), "a cut blob leaves no plaintext behind");
    }
    // Bytes after the last frame are refused too.
    let mut longer = on_disk.clone();
    longer.push(0);
    std::fs::write(inner.blob_path(&c), &longer).unwrap();
    assert!(matches!(
        store.get(&c).await,
        Err(CodeStoreError::Corrupt(_))
    ));
}

#[tokio::test]
async fn version_1_envelopes_still_open() {
    let (dir, inner) = local().await;
    let keyring = ring("k1", 7);
    let code = b"sealed whole by an earlier version".to_vec();
    let c = Checksum::of(&code);
    let aad = format!("fnmesh.code.v1\0{}", c.as_str());
    let sealed_value = keyring.seal(aad.as_bytes(), &code).unwrap();
    let mut envelope = MAGIC_V1.to_vec();
    envelope.push(sealed_value.key_id.len() as u8);
    envelope.extend_from_slice(sealed_value.key_id.as_bytes());
    envelope.push(sealed_value.nonce.len() as u8);
    envelope.extend_from_slice(&sealed_value.nonce);
    envelope.extend_from_slice(&sealed_value.ciphertext);
    inner.put_raw(&c, Bytes::from(envelope)).await.unwrap();
    let store = sealed(&inner, keyring);
    assert_eq!(
        store.get(&c).await.unwrap(),
        Some(Bytes::from(code.clone()))
    );
    let dest = dir.path().join("v1");
    assert!(store.get_file(&c, &dest).await.unwrap());
    assert_eq!(std::fs::read(&dest).unwrap(), code);
}
