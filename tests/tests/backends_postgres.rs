//! The PostgreSQL metadata store against a real server: the whole store conformance suite
//! (one test per case, each in its own database), then what only PostgreSQL has to show:
//! idempotent migrations, schema scoping, batches under concurrency, surviving a restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use fnmesh_core::{InvocationLogs, InvocationResult, InvocationStatus};
use fnmesh_store::conformance::{self, Store};
use fnmesh_store::postgres::PostgresStore;
use fnmesh_store::prelude::*;
use fnmesh_store::{InvocationFilter, StoreError};
use fnmesh_tests::servers::postgres::TestPostgres;

/// A migrated store in a database of its own on the shared server.
async fn store() -> PostgresStore {
    let url = TestPostgres::shared().fresh_database();
    PostgresStore::connect_and_migrate(&url)
        .await
        .expect("connect and migrate")
}

macro_rules! cases {
    ($($case:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $case() {
            let store: Store = Arc::new(store().await);
            conformance::$case(store).await;
        }
    )*};
}

fnmesh_store::store_conformance_cases!(cases);
fnmesh_store::store_exclusive_conformance_cases!(cases);

/// The whole suite twice at once on one database, as several gateways would share it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_all_twice_concurrently_on_one_database() {
    let store: Store = Arc::new(store().await);
    tokio::join!(
        conformance::run_all(store.clone()),
        conformance::run_all(store.clone())
    );
}

#[tokio::test]
async fn migrations_are_idempotent() {
    let url = TestPostgres::shared().fresh_database();
    let store = PostgresStore::connect_and_migrate(&url)
        .await
        .expect("first migration");
    let f = conformance::function(&conformance::fresh_namespace(), "kept");
    store.create_function(&f).await.expect("create");
    store.migrate().await.expect("migrating again is a no-op");
    store.close().await;

    // Concurrent migrations of an up-to-date database, from fresh pools.
    let (a, b) = tokio::join!(
        PostgresStore::connect_and_migrate(&url),
        PostgresStore::connect_and_migrate(&url)
    );
    let (a, _b) = (a.expect("migrate from a"), b.expect("migrate from b"));
    assert_eq!(
        a.get_function(&f.namespace, &f.name, None)
            .await
            .expect("get"),
        Some(f),
        "data survives re-migration"
    );
}

#[tokio::test]
async fn concurrent_first_migrations_of_an_empty_database_agree() {
    let url = TestPostgres::shared().fresh_database();
    let results =
        futures::future::join_all((0..4).map(|_| PostgresStore::connect_and_migrate(&url))).await;
    for r in results {
        r.expect("every concurrent first migration succeeds");
    }
}

/// A batch through UNNEST gives the same answers and records as the same updates one by one,
/// on a large mixed batch (including repeated ids and absent records).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batched_writes_apply_the_same_fencing_as_single_writes() {
    use InvocationStatus::{Failed, Queued, Running, Succeeded, Timeout};
    let store = store().await;
    let ns = conformance::fresh_namespace();
    let statuses = [Queued, Running, Succeeded, Failed, Timeout];

    // Two identical populations: one updated one by one, one in a batch.
    let mut single = Vec::new();
    let mut batched = Vec::new();
    for _ in 0..60 {
        single.push(conformance::accept(&store_dyn(&store), &ns, "twin").await);
        batched.push(conformance::accept(&store_dyn(&store), &ns, "twin").await);
    }
    // A deterministic, varied update sequence: every record gets several updates.
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut plan = Vec::new();
    for _ in 0..400 {
        let which = (next() % 60) as usize;
        let status = statuses[(next() % 5) as usize];
        let attempt = (next() % 4) as u32;
        plan.push((which, status, attempt));
    }
    let update = |base: &InvocationResult, status, attempt| {
        let mut r = base.clone();
        r.status = status;
        r.attempt = attempt;
        r.node_id = Some(format!("node-{attempt}"));
        r.result = (status == Succeeded).then(|| serde_json::json!({ "attempt": attempt }));
        r
    };

    let mut single_applied = Vec::new();
    for &(which, status, attempt) in &plan {
        single_applied.push(
            store
                .update_invocation(&update(&single[which], status, attempt))
                .await
                .expect("single update"),
        );
    }
    let mut batch: Vec<_> = plan
        .iter()
        .map(|&(which, status, attempt)| update(&batched[which], status, attempt))
        .collect();
    let ghost = InvocationResult::queued(&conformance::request(&ns, "ghost"));
    batch.push(update(&ghost, Succeeded, 1));
    let mut batch_applied = Vec::new();
    for chunk in batch.chunks(97) {
        batch_applied.extend(store.update_invocations(chunk).await.expect("batch update"));
    }
    assert_eq!(
        batch_applied.pop(),
        Some(false),
        "an absent record is not applied"
    );
    assert_eq!(
        batch_applied, single_applied,
        "batch answers match single answers"
    );

    for (s, b) in single.iter().zip(&batched) {
        let s = store
            .get_invocation(&ns, &s.id)
            .await
            .expect("get")
            .expect("single");
        let b = store
            .get_invocation(&ns, &b.id)
            .await
            .expect("get")
            .expect("batched");
        assert_eq!(
            (b.status, b.attempt, &b.node_id, &b.result),
            (s.status, s.attempt, &s.node_id, &s.result),
            "the batched record ends like its single-updated twin"
        );
    }
}

/// Batches that touch the same rows in opposite orders, at once, neither deadlock nor fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_overlapping_batches_do_not_deadlock() {
    let store = Arc::new(store().await);
    let ns = conformance::fresh_namespace();
    let mut records = Vec::new();
    for _ in 0..200 {
        records.push(conformance::accept(&store_dyn(&store), &ns, "contended").await);
    }
    let mut tasks = Vec::new();
    for worker in 0..8u32 {
        let store = store.clone();
        let mut batch: Vec<_> = records
            .iter()
            .map(|r| {
                let mut r = r.clone();
                r.status = InvocationStatus::Running;
                r.attempt = worker + 1;
                r
            })
            .collect();
        if worker % 2 == 1 {
            batch.reverse();
        }
        let logs: Vec<_> = batch
            .iter()
            .map(|r| {
                (
                    r.id,
                    InvocationLogs {
                        text: format!("worker {worker}"),
                        truncated: false,
                    },
                )
            })
            .collect();
        tasks.push(tokio::spawn(async move {
            for _ in 0..5 {
                store.update_invocations(&batch).await?;
                store.put_logs_batch(&logs).await?;
            }
            Ok::<_, StoreError>(())
        }));
    }
    for task in tasks {
        task.await
            .expect("join")
            .expect("overlapping batches complete without a deadlock error");
    }
    for r in &records {
        let got = store
            .get_invocation(&ns, &r.id)
            .await
            .expect("get")
            .expect("exists");
        assert_eq!(
            got.attempt, 8,
            "the highest attempt wins whatever the interleaving"
        );
    }
}

/// `stale_queued` serves the oldest accepted work first across namespaces, and stops
/// returning it once it moved on.
#[tokio::test]
async fn stale_queued_is_oldest_first_across_namespaces() {
    let store = store().await;
    let hour = std::time::Duration::from_secs(3600);
    let base = conformance::request(&conformance::fresh_namespace(), "clock").created_at - hour;
    let ms = |n: u64| std::time::Duration::from_millis(n);
    let mut expected = Vec::new();
    for i in [5, 2, 9, 0, 7, 1] {
        let ns = conformance::fresh_namespace();
        let mut req = conformance::request(&ns, "queued");
        req.created_at = base + ms(i);
        store.insert_invocation(&req).await.expect("insert");
        expected.push(req);
    }
    expected.sort_by_key(|r| r.created_at);
    let cutoff = base + ms(1000);
    let stale = store.stale_queued(cutoff, 100).await.expect("stale");
    assert_eq!(
        stale, expected,
        "oldest first, across namespaces, requests whole"
    );
    assert_eq!(
        store.stale_queued(cutoff, 3).await.expect("stale"),
        expected[..3].to_vec()
    );

    let mut done = InvocationResult::queued(&expected[0]);
    done.status = InvocationStatus::Succeeded;
    done.attempt = 1;
    assert!(store.update_invocations(&[done]).await.expect("update")[0]);
    assert_eq!(
        store.stale_queued(cutoff, 100).await.expect("stale"),
        expected[1..].to_vec(),
        "a terminal record is no longer stale"
    );
}

/// A store scoped to a schema keeps its tables (and migrations) there; dropping the schema
/// removes them.
#[tokio::test]
async fn a_schema_scoped_store_is_isolated_and_droppable() {
    let url = TestPostgres::shared().fresh_database();
    let a = PostgresStore::connect_in_schema(&url, "tenant_a")
        .await
        .expect("schema a");
    a.migrate().await.expect("migrate a");
    let b = PostgresStore::connect_in_schema(&url, "tenant_b")
        .await
        .expect("schema b");
    b.migrate().await.expect("migrate b");
    let ns = conformance::fresh_namespace();
    let inv = conformance::accept(&store_dyn(&a), &ns, "scoped").await;
    assert_eq!(b.get_invocation(&ns, &inv.id).await.expect("get"), None);
    assert!(a.get_invocation(&ns, &inv.id).await.expect("get").is_some());
    assert!(PostgresStore::connect_in_schema(&url, "Bad-Name")
        .await
        .is_err());
    a.drop_schema().await.expect("drop schema a");
    let gone = TestPostgres::shared()
        .psql(
            url.rsplit('/').next().expect("db name"),
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name = 'tenant_a'",
        )
        .expect("psql");
    assert_eq!(gone, "0");
    b.ping().await.expect("the other schema is untouched");
}

/// After the server restarts, the pool reconnects and the data is there.
#[tokio::test]
async fn the_store_survives_a_server_restart() {
    let pg = TestPostgres::start();
    let url = pg.fresh_database();
    let store = PostgresStore::connect_and_migrate(&url)
        .await
        .expect("connect");
    let ns = conformance::fresh_namespace();
    let inv = conformance::accept(&store_dyn(&store), &ns, "durable").await;
    pg.stop();
    assert!(
        store.ping().await.is_err(),
        "a stopped server is an error, not a hang"
    );
    pg.start_again();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match store.get_invocation(&ns, &inv.id).await {
            Ok(got) => {
                assert_eq!(got, Some(inv));
                break;
            }
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "no reconnect: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
    let page = store
        .list_invocations(&ns, &InvocationFilter::default(), 10, None)
        .await
        .expect("list");
    assert_eq!(page.items.len(), 1);
}

fn store_dyn(store: &PostgresStore) -> Store {
    Arc::new(store.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn access_store_cases() {
    let store: Store = Arc::new(store().await);
    fnmesh_store::access::conformance::run_all(store).await;
}
