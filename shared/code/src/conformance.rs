//! The conformance suite every [`CodeStore`] must pass (the local directory now, S3 later).
//!
//! Each case is a `pub async fn` taking the store under test; [`run_all`] runs every case that
//! needs nothing but the store. [`corruption_is_detected`] also needs a hook that damages a
//! stored blob behind the store's back, so each implementation calls it with its own.
//! Cases store random content, so they can share one bucket or directory.
//!
//! ```text
//! let store: Arc<dyn CodeStore> = Arc::new(S3CodeStore::new(config).await?);
//! fnmesh_code::conformance::run_all(store.clone()).await;
//! fnmesh_code::conformance::corruption_is_detected(store, |checksum| async move {
//!     // overwrite the object behind `checksum` with other bytes
//! })
//! .await;
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;

use super::{CodeStore, CodeStoreError};
use fnmesh_core::checksum::Checksum;

/// The store under test.
pub type Store = Arc<dyn CodeStore>;

/// Every case of this suite, in the order [`run_all`] runs them. An engine's test file
/// generates one test per case from this one list (`fnmesh_code::code_conformance_cases!(cases);` with its own
/// `cases!` macro), so no engine can miss a case.
#[macro_export]
macro_rules! code_conformance_cases {
    ($callback:ident) => {
        $callback!(
            ping,
            put_get_roundtrip,
            put_is_idempotent,
            absent_blobs,
            delete_removes,
            empty_blob,
            large_blob,
            files_roundtrip,
            concurrent_puts_of_the_same_bytes
        );
    };
}

/// Runs every case that needs only the store.
pub async fn run_all(store: Store) {
    macro_rules! run {
        ($($case:ident),* $(,)?) => { $( $case(store.clone()).await; )* };
    }
    crate::code_conformance_cases!(run);
}

/// `len` random bytes: content no other case or run stores.
pub fn random_bytes(len: usize) -> Bytes {
    let mut bytes = vec![0u8; len];
    rand::Rng::fill_bytes(&mut rand::rng(), &mut bytes);
    Bytes::from(bytes)
}

/// `ping` succeeds on a healthy store.
pub async fn ping(store: Store) {
    store.ping().await.expect("ping of a healthy store");
}

/// What is put comes back, under its SHA-256.
pub async fn put_get_roundtrip(store: Store) {
    let bytes = random_bytes(4096);
    let checksum = store.put(bytes.clone()).await.expect("put");
    assert_eq!(
        checksum,
        Checksum::of(&bytes),
        "put returns the SHA-256 of the bytes"
    );
    assert!(store.exists(&checksum).await.unwrap(), "exists after put");
    assert_eq!(
        store.get(&checksum).await.unwrap(),
        Some(bytes),
        "get returns the bytes put"
    );
}

/// Putting the same bytes twice is a no-op that returns the same checksum.
pub async fn put_is_idempotent(store: Store) {
    let bytes = random_bytes(1000);
    let first = store.put(bytes.clone()).await.unwrap();
    let second = store.put(bytes.clone()).await.unwrap();
    assert_eq!(first, second, "the same bytes get the same checksum");
    assert_eq!(store.get(&first).await.unwrap(), Some(bytes));
}

/// Absent blobs: `get` is `None`, `exists` false, `delete` false.
pub async fn absent_blobs(store: Store) {
    let absent = Checksum::of(&random_bytes(32));
    assert_eq!(store.get(&absent).await.unwrap(), None, "get of absent");
    assert!(!store.exists(&absent).await.unwrap(), "exists of absent");
    assert!(!store.delete(&absent).await.unwrap(), "delete of absent");
}

/// A deleted blob is gone; others stay.
pub async fn delete_removes(store: Store) {
    let doomed = store.put(random_bytes(100)).await.unwrap();
    let kept_bytes = random_bytes(100);
    let kept = store.put(kept_bytes.clone()).await.unwrap();
    assert!(store.delete(&doomed).await.unwrap(), "delete of present");
    assert!(!store.exists(&doomed).await.unwrap());
    assert_eq!(store.get(&doomed).await.unwrap(), None);
    assert!(
        !store.delete(&doomed).await.unwrap(),
        "second delete is false"
    );
    assert_eq!(store.get(&kept).await.unwrap(), Some(kept_bytes));
    // Storing it again works.
    let bytes = random_bytes(10);
    let c = store.put(bytes.clone()).await.unwrap();
    store.delete(&c).await.unwrap();
    assert_eq!(store.put(bytes.clone()).await.unwrap(), c);
    assert_eq!(store.get(&c).await.unwrap(), Some(bytes));
}

/// The empty blob is a blob like any other.
pub async fn empty_blob(store: Store) {
    let checksum = store.put(Bytes::new()).await.unwrap();
    assert_eq!(checksum, Checksum::of(b""));
    assert_eq!(store.get(&checksum).await.unwrap(), Some(Bytes::new()));
}

/// A 5 MiB blob roundtrips intact.
pub async fn large_blob(store: Store) {
    let bytes = random_bytes(5 * 1024 * 1024);
    let checksum = store.put(bytes.clone()).await.unwrap();
    let back = store.get(&checksum).await.unwrap().expect("large blob");
    assert_eq!(back.len(), bytes.len());
    assert!(back == bytes, "large blob roundtrips byte for byte");
}

/// `put_file` and `get_file` move blobs between files and the store (a piece at a time),
/// interchangeably with `put` and `get`: sizes across the [`crate::CHUNK_BYTES`] boundaries,
/// the empty file, and absence.
pub async fn files_roundtrip(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let chunk = crate::CHUNK_BYTES;
    for (i, len) in [0, 1, chunk, 2 * chunk, 3 * chunk + 12_345]
        .into_iter()
        .enumerate()
    {
        let bytes = random_bytes(len);
        let source = dir.path().join(format!("in-{i}"));
        std::fs::write(&source, &bytes).unwrap();
        let checksum = store.put_file(&source).await.expect("put_file");
        assert_eq!(checksum, Checksum::of(&bytes), "{len} bytes");
        assert_eq!(store.put_file(&source).await.unwrap(), checksum, "again");
        let dest = dir.path().join(format!("out-{i}"));
        assert!(store.get_file(&checksum, &dest).await.expect("get_file"));
        assert!(std::fs::read(&dest).unwrap() == bytes, "{len} bytes back");
        assert!(
            store.get(&checksum).await.unwrap() == Some(bytes.clone()),
            "get of what put_file stored ({len} bytes)"
        );
    }
    let bytes = random_bytes(chunk + 1);
    let checksum = store.put(bytes.clone()).await.unwrap();
    let dest = dir.path().join("from-put");
    assert!(store.get_file(&checksum, &dest).await.unwrap());
    assert!(
        std::fs::read(&dest).unwrap() == bytes,
        "get_file of what put stored"
    );
    let absent = Checksum::of(&random_bytes(64));
    let dest = dir.path().join("absent");
    assert!(!store.get_file(&absent, &dest).await.unwrap());
    assert!(!dest.exists(), "nothing is written for an absent blob");
}

/// Many concurrent puts of the same bytes all succeed with one result.
pub async fn concurrent_puts_of_the_same_bytes(store: Store) {
    let bytes = random_bytes(256 * 1024);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let store = store.clone();
        let bytes = bytes.clone();
        tasks.push(tokio::spawn(async move { store.put(bytes).await }));
    }
    for task in tasks {
        let checksum = task.await.unwrap().expect("a concurrent put");
        assert_eq!(checksum, Checksum::of(&bytes));
    }
    assert_eq!(
        store.get(&Checksum::of(&bytes)).await.unwrap(),
        Some(bytes),
        "the blob is intact after concurrent puts"
    );
}

/// A blob damaged behind the store's back is reported `Corrupt`, never served.
///
/// `corrupt` must replace the stored bytes of the checksum it is given with other bytes.
pub async fn corruption_is_detected<F, Fut>(store: Store, corrupt: F)
where
    F: FnOnce(Checksum) -> Fut,
    Fut: Future<Output = ()>,
{
    let bytes = random_bytes(2048);
    let checksum = store.put(bytes).await.unwrap();
    corrupt(checksum.clone()).await;
    match store.get(&checksum).await {
        Err(CodeStoreError::Corrupt(c)) => assert_eq!(c, checksum, "Corrupt names the blob"),
        other => panic!("a damaged blob must be Corrupt, got {other:?}"),
    }
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("damaged");
    match store.get_file(&checksum, &dest).await {
        Err(CodeStoreError::Corrupt(c)) => assert_eq!(c, checksum, "Corrupt names the blob"),
        other => panic!("get_file of a damaged blob must be Corrupt, got {other:?}"),
    }
    assert!(
        !dest.exists(),
        "what a damaged blob held is not left behind"
    );
}
