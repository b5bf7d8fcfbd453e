//! The metadata store conformance suite against the embedded SQLite store, one test per
//! behaviour, each on its own database file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use fnmesh_shared::store::conformance::{self, Store};
use fnmesh_shared::store::sqlite::SqliteStore;
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

cases!(
    ping,
    create_and_get,
    create_conflicts_only_within_a_namespace,
    add_version_requires_latest_plus_one,
    concurrent_add_version_has_one_winner,
    list_functions_pages_latest_versions_by_name,
    list_functions_refuses_bad_cursors,
    delete_removes_all_versions,
    namespaces_are_isolated,
    insert_and_get_invocation,
    get_invocations_in_order_within_the_namespace,
    update_invocation_is_fenced,
    update_of_absent_invocation_is_not_found,
    list_invocations_newest_first_with_filters,
    list_invocations_pagination_is_stable_under_inserts,
    list_invocations_refuses_bad_cursors,
    update_invocations_batch_is_fenced_like_single_updates,
    update_invocations_batch_applies_in_order,
    stale_queued_returns_accepted_requests_oldest_first,
    stale_queued_skips_records_that_moved_on,
    logs_roundtrip,
    put_logs_batch_stores_each_last_wins,
    logs_stored_answers_per_key_within_the_namespace,
    nul_characters_do_not_fail_writes,
    api_keys,
    dead_letters_roundtrip_and_mark_the_record,
    dead_letters_list_newest_first_with_cursors,
    put_dead_letter_is_idempotent,
    put_dead_letter_keeps_terminal_records,
    put_dead_letter_inserts_absent_records,
    audit_roundtrip_and_filters,
    audit_pages_newest_first,
    secrets_roundtrip_sealed,
    secrets_need_their_function_and_go_with_it,
);

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
    use fnmesh_shared::store::MetadataStore as _;
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
    use fnmesh_shared::store::InvocationFilter;
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
    fnmesh_shared::store::access::conformance::run_all(store).await;
}
