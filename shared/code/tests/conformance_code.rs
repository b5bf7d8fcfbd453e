//! The code store conformance suite against the local directory store.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use fnmesh_code::conformance::{self, Store};
use fnmesh_code::local::LocalCodeStore;
use fnmesh_code::CodeStore as _;
use tempfile::TempDir;

async fn local() -> (TempDir, LocalCodeStore) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = LocalCodeStore::open(dir.path()).await.expect("open");
    (dir, store)
}

macro_rules! cases {
    ($($case:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $case() {
            let (_dir, store) = local().await;
            conformance::$case(Arc::new(store) as Store).await;
        }
    )*};
}

fnmesh_code::code_conformance_cases!(cases);

#[tokio::test]
async fn run_all_on_one_directory() {
    let (_dir, store) = local().await;
    conformance::run_all(Arc::new(store)).await;
}

#[tokio::test]
async fn corruption_is_detected() {
    let (_dir, store) = local().await;
    let path_of = store.clone();
    conformance::corruption_is_detected(Arc::new(store), |checksum| async move {
        tokio::fs::write(path_of.blob_path(&checksum), b"tampered")
            .await
            .expect("overwrite blob");
    })
    .await;
}

#[tokio::test]
async fn blobs_live_under_sha256_prefix_dirs_and_put_repairs_corruption() {
    let (dir, store) = local().await;
    let bytes = bytes::Bytes::from_static(b"hello code");
    let checksum = store.put(bytes.clone()).await.expect("put");
    let hex = checksum.as_str();
    let expected = dir.path().join("sha256").join(&hex[..2]).join(hex);
    assert_eq!(store.blob_path(&checksum), expected);
    assert!(expected.is_file());
    std::fs::write(&expected, b"broken").expect("corrupt");
    assert!(store.get(&checksum).await.is_err());
    store.put(bytes.clone()).await.expect("put again");
    assert_eq!(store.get(&checksum).await.expect("get"), Some(bytes));
    // No temporary files are left behind.
    let leftovers: Vec<_> = std::fs::read_dir(expected.parent().expect("parent"))
        .expect("read dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}
