//! The metadata store conformance suite against the embedded SQLite store, one test per
//! behaviour, each on its own database file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use fnmesh_store::conformance::{self, Store};
use fnmesh_store::sqlite::SqliteStore;
use tempfile::TempDir;

async fn store() -> (TempDir, Store) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(&dir.path().join("meta.db"))
        .await
        .expect("open sqlite store");
    (dir, Arc::new(store))
}

macro_rules! cases {
    ($($case:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $case() {
            let (_dir, store) = store().await;
            conformance::$case(store).await;
        }
    )*};
}

fnmesh_store::store_conformance_cases!(cases);
fnmesh_store::store_exclusive_conformance_cases!(cases);

/// The whole suite on one shared database, as a shared server would run it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_all_on_one_shared_database() {
    let (_dir, store) = store().await;
    let (a, b) = tokio::join!(
        conformance::run_all(store.clone()),
        conformance::run_all(store.clone())
    );
    let ((), ()) = (a, b);
}

#[tokio::test]
async fn reopening_keeps_data_and_migrations_are_idempotent() {
    use fnmesh_store::FunctionStore as _;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("meta.db");
    let f = conformance::function(&conformance::fresh_namespace(), "durable");
    {
        let store = SqliteStore::open(&path).await.expect("open");
        store.create_function(&f).await.expect("create");
        store.close().await;
    }
    let store = SqliteStore::open(&path).await.expect("reopen");
    let got = store
        .get_function(&f.namespace, &f.name, None)
        .await
        .expect("get");
    assert_eq!(got, Some(f));
}

#[tokio::test]
async fn list_limits_are_capped_at_1000() {
    use fnmesh_store::InvocationFilter;
    let (_dir, store) = store().await;
    let ns = conformance::fresh_namespace();
    for _ in 0..1001 {
        store
            .insert_invocation(&conformance::request(&ns, "many"))
            .await
            .expect("insert");
    }
    let page = store
        .list_invocations(&ns, &InvocationFilter::default(), 5000, None)
        .await
        .expect("list");
    assert_eq!(page.items.len(), 1000);
    assert!(page.next_cursor.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn access_store_cases() {
    let (_dir, store) = store().await;
    fnmesh_store::access::conformance::run_all(store).await;
}
