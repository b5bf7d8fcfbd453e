//! Code encrypted at rest: the conformance suite on `Encrypted<LocalCodeStore>`, ciphertext on
//! disk, wrong keys, rotation and legacy plaintext blobs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use bytes::Bytes;
use fnmesh_code::conformance::{self, Store};
use fnmesh_code::encrypted::{Encrypted, MAGIC};
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
