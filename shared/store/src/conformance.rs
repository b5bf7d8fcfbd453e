//! The conformance suite every [`MetadataStore`] must pass (SQLite and PostgreSQL).
//!
//! Each case is a `pub async fn` taking the store under test; [`run_all`] runs every case.
//! Cases create their own data in fresh, randomly named namespaces, so they can run in
//! parallel against one shared database. Assertions panic with a message naming the
//! behaviour that broke.
//!
//! ```text
//! let store: Arc<dyn MetadataStore> = Arc::new(PostgresStore::connect(&url).await?);
//! fnmesh_store::conformance::run_all(store).await;
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Duration as ChronoDuration, SubsecRound, Utc};

use super::{ApiKeyRecord, InvocationFilter, Keyed, MetadataStore, Role, StoreError};
use fnmesh_core::alias::Routing;
use fnmesh_core::checksum::Checksum;
use fnmesh_core::function::{CodeInfo, Function, FunctionConfig, Runtime};
use fnmesh_core::idempotency::IdempotencyKey;
use fnmesh_core::ids::{FunctionId, InvocationId};
use fnmesh_core::invocation::{
    DeadLetterRecord, ErrorKind, InvocationError, InvocationLogs, InvocationMetrics,
    InvocationRequest, InvocationResult, InvocationStatus,
};
use fnmesh_core::names::{AliasName, FunctionName, Namespace};

pub use super::access::conformance::{
    api_key_grants_roundtrip, api_key_lineage_roundtrip, api_key_tree_revocation,
    api_keys_list_get_and_revoke, namespace_quotas_roundtrip,
    namespace_usage_counts_latest_versions, refresh_family_revocation, refresh_family_start,
    refresh_tokens_rotate_once,
};
pub use super::conformance_audit::{
    audit_pages_newest_first, audit_roundtrip_and_filters,
    registry_credentials_roundtrip_sealed_per_namespace,
    secrets_need_their_function_and_go_with_it, secrets_roundtrip_sealed,
};

/// The store under test, shared by the cases.
pub type Store = Arc<dyn MetadataStore>;

/// Every case of this suite, in the order [`run_all`] runs them. An engine's test file
/// generates one test per case from this one list (`fnmesh_store::store_conformance_cases!(cases);` with its own
/// `cases!` macro), so no engine can miss a case.
#[macro_export]
macro_rules! store_conformance_cases {
    ($callback:ident) => {
        $callback!(
            ping,
            create_and_get,
            create_conflicts_only_within_a_namespace,
            add_version_requires_latest_plus_one,
            concurrent_add_version_has_one_winner,
            list_functions_pages_latest_versions_by_name,
            list_functions_refuses_bad_cursors,
            delete_removes_all_versions,
            aliases_point_split_and_roll_back,
            aliases_need_their_versions_and_go_with_their_function,
            concurrent_alias_changes_each_keep_the_one_before,
            namespaces_are_isolated,
            insert_and_get_invocation,
            keyed_invocations_take_a_key_once_per_namespace,
            concurrent_keyed_invocations_have_one_winner,
            get_invocations_in_order_within_the_namespace,
            update_invocation_is_fenced,
            a_cancelled_record_is_final,
            update_of_absent_invocation_is_not_found,
            list_invocations_newest_first_with_filters,
            list_invocations_pagination_is_stable_under_inserts,
            list_invocations_refuses_bad_cursors,
            update_invocations_batch_is_fenced_like_single_updates,
            update_invocations_batch_applies_in_order,
            stale_queued_returns_accepted_requests_oldest_first,
            stale_queued_skips_records_that_moved_on,
            replace_queued_request_only_while_queued,
            running_invocations_span_namespaces,
            logs_roundtrip,
            write_invocations_commits_inserts_and_outcomes_together,
            put_logs_batch_stores_each_last_wins,
            logs_stored_answers_per_key_within_the_namespace,
            nul_characters_do_not_fail_writes,
            dead_letters_roundtrip_and_mark_the_record,
            dead_letters_list_newest_first_with_cursors,
            put_dead_letter_is_idempotent,
            put_dead_letter_keeps_terminal_records,
            put_dead_letter_inserts_absent_records,
            finished_after_exports_and_import_finished_applies,
            api_keys_list_get_and_revoke,
            api_key_grants_roundtrip,
            api_key_lineage_roundtrip,
            api_key_tree_revocation,
            refresh_tokens_rotate_once,
            refresh_family_revocation,
            refresh_family_start,
            namespace_quotas_roundtrip,
            namespace_usage_counts_latest_versions,
            api_keys,
            audit_roundtrip_and_filters,
            audit_pages_newest_first,
            secrets_roundtrip_sealed,
            secrets_need_their_function_and_go_with_it,
            registry_credentials_roundtrip_sealed_per_namespace
        );
    };
}

/// The cases that need the database to themselves (retention removes old records of every
/// namespace): each engine's test file runs each on a database of its own, with the same
/// callback as [`store_conformance_cases`]; [`run_all`] does not run them.
#[macro_export]
macro_rules! store_exclusive_conformance_cases {
    ($callback:ident) => {
        $callback!(
            prune_removes_only_old_finished_invocations,
            destination_deliveries_follow_their_invocation
        );
    };
}

/// Runs every case, one after the other, against `store` (not the exclusive ones).
pub async fn run_all(store: Store) {
    macro_rules! run {
        ($($case:ident),* $(,)?) => { $( $case(store.clone()).await; )* };
    }
    crate::store_conformance_cases!(run);
}

// ---- helpers ----

/// A namespace no other case (or run) uses.
pub fn fresh_namespace() -> Namespace {
    Namespace::parse(&format!("t-{:016x}", rand::random::<u64>())).unwrap()
}

fn name(s: &str) -> FunctionName {
    FunctionName::parse(s).unwrap()
}

/// Now, at millisecond precision (every backend stores at least that).
fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(3)
}

/// Version 1 of a function.
pub fn function(namespace: &Namespace, fname: &str) -> Function {
    let created = now();
    let code = format!("code of {namespace}/{fname}");
    Function {
        image: None,
        id: FunctionId::new(),
        namespace: namespace.clone(),
        name: name(fname),
        version: 1,
        runtime: Runtime::Python3,
        handler: "main.handle".to_owned(),
        code: CodeInfo {
            checksum: Checksum::of(code.as_bytes()),
            size: code.len() as u64,
            source_type: "inline".to_owned(),
        },
        config: FunctionConfig::default(),
        metadata: BTreeMap::from([("team".to_owned(), "conformance".to_owned())]),
        created_at: created,
        updated_at: created,
    }
}

/// The next version of `f`, with a visible change.
pub fn next_version(f: &Function) -> Function {
    let mut next = f.clone();
    next.version += 1;
    next.handler = format!("main.handle_v{}", next.version);
    next.config.timeout_ms = 1_000 + u64::from(next.version);
    next.updated_at = now();
    next
}

/// A request to invoke version 1 of `function`, accepted now, with a small payload.
pub fn request(namespace: &Namespace, function_name: &str) -> InvocationRequest {
    InvocationRequest {
        id: InvocationId::new(),
        function: function(namespace, function_name),
        payload: serde_json::json!({
            "order": rand::random::<u32>(),
            "items": [{ "sku": "a-1", "qty": 2 }, { "sku": "b-7", "qty": 1 }],
            "note": "ünïcode ✓",
        }),
        created_at: now(),
        trace_id: Some(format!("{:032x}", rand::random::<u128>())),
        traceparent: None,
        secrets: None,
        registry_auth: None,
        forwarded_to: None,
        alias: None,
        priority: Default::default(),
        notify_destinations: false,
    }
}

/// Accepts a new request of `function` and returns its `queued` record.
pub async fn accept(store: &Store, namespace: &Namespace, function: &str) -> InvocationResult {
    let req = request(namespace, function);
    store.insert_invocation(&req).await.unwrap()
}

fn with_status(r: &InvocationResult, status: InvocationStatus, attempt: u32) -> InvocationResult {
    let mut r = r.clone();
    r.status = status;
    r.attempt = attempt;
    r.node_id = Some(format!("node-{attempt}"));
    match status {
        InvocationStatus::Queued => {}
        InvocationStatus::Running => r.started_at = Some(now()),
        InvocationStatus::Succeeded => {
            r.result = Some(serde_json::json!({ "attempt": attempt }));
            r.completed_at = Some(now());
            r.metrics = Some(InvocationMetrics {
                queue_us: 1_234,
                init_us: 2_345,
                exec_us: 3_456,
                total_us: 9_876,
                cold_start: true,
                memory_peak_bytes: 4096,
                cpu_time_us: 0,
                pull_us: 0,
                unpack_us: 0,
            });
        }
        InvocationStatus::Failed
        | InvocationStatus::Timeout
        | InvocationStatus::DeadLettered
        | InvocationStatus::Cancelled => {
            r.error = Some(InvocationError {
                kind: match status {
                    InvocationStatus::Timeout => ErrorKind::Timeout,
                    InvocationStatus::Cancelled => ErrorKind::Cancelled,
                    _ => ErrorKind::HandlerError,
                },
                message: format!("attempt {attempt} failed"),
            });
            r.completed_at = Some(now());
        }
    }
    r
}

fn api_key(namespace: &Namespace) -> ApiKeyRecord {
    let suffix = format!("{:016x}", rand::random::<u64>());
    ApiKeyRecord {
        id: format!("key-{suffix}"),
        name: format!("conformance {suffix}"),
        key_hash: Checksum::of(suffix.as_bytes()).to_string(),
        role: Role::Developer,
        namespace: namespace.clone(),
        created_at: now(),
        expires_at: Some(now() + ChronoDuration::days(30)),
        revoked_at: None,
        functions: None,
        parent_id: None,
        root_id: None,
    }
}

// ---- functions ----

/// `ping` succeeds on a healthy store.
pub async fn ping(store: Store) {
    store.ping().await.expect("ping of a healthy store");
}

/// A created function reads back equal, as latest and as version 1; absent ones are `None`.
pub async fn create_and_get(store: Store) {
    let ns = fresh_namespace();
    let f = function(&ns, "hello");
    store.create_function(&f).await.expect("create_function");
    let latest = store.get_function(&ns, &f.name, None).await.unwrap();
    assert_eq!(
        latest.as_ref(),
        Some(&f),
        "get latest returns the created function"
    );
    let v1 = store.get_function(&ns, &f.name, Some(1)).await.unwrap();
    assert_eq!(v1.as_ref(), Some(&f), "get version 1");
    assert_eq!(
        store.get_function(&ns, &f.name, Some(2)).await.unwrap(),
        None,
        "a version that does not exist is None"
    );
    assert_eq!(
        store
            .get_function(&ns, &name("absent"), None)
            .await
            .unwrap(),
        None,
        "an absent function is None"
    );
}

/// A name is unique within a namespace, not across namespaces.
pub async fn create_conflicts_only_within_a_namespace(store: Store) {
    let ns = fresh_namespace();
    let other = fresh_namespace();
    let f = function(&ns, "dup");
    store.create_function(&f).await.unwrap();
    let again = function(&ns, "dup");
    let err = store.create_function(&again).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict(_)),
        "creating an existing name must be Conflict, got {err:?}"
    );
    assert_eq!(
        store
            .get_function(&ns, &f.name, None)
            .await
            .unwrap()
            .unwrap()
            .id,
        f.id,
        "a refused create leaves the original in place"
    );
    store
        .create_function(&function(&other, "dup"))
        .await
        .expect("the same name in another namespace is fine");
}

/// `add_version` takes exactly latest + 1; `NotFound` without a function.
pub async fn add_version_requires_latest_plus_one(store: Store) {
    let ns = fresh_namespace();
    let v1 = function(&ns, "versioned");
    store.create_function(&v1).await.unwrap();
    let v2 = next_version(&v1);
    store.add_version(&v2).await.expect("add version 2");

    let err = store.add_version(&v2).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict(_)),
        "re-adding version 2 must be Conflict, got {err:?}"
    );
    let mut v4 = next_version(&v2);
    v4.version = 4;
    let err = store.add_version(&v4).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict(_)),
        "skipping a version must be Conflict, got {err:?}"
    );
    let mut stale = v1.clone();
    stale.version = 1;
    let err = store.add_version(&stale).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict(_)),
        "adding an old version must be Conflict, got {err:?}"
    );
    let mut orphan = next_version(&function(&ns, "never-created"));
    orphan.version = 2;
    let err = store.add_version(&orphan).await.unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound(_)),
        "add_version of an absent function must be NotFound, got {err:?}"
    );

    let latest = store.get_function(&ns, &v1.name, None).await.unwrap();
    assert_eq!(latest.as_ref(), Some(&v2), "latest is version 2");
    let first = store.get_function(&ns, &v1.name, Some(1)).await.unwrap();
    assert_eq!(first.as_ref(), Some(&v1), "version 1 is unchanged");
    let versions = store.list_versions(&ns, &v1.name).await.unwrap();
    assert_eq!(versions, vec![v1, v2], "list_versions is oldest first");
    assert!(
        store
            .list_versions(&ns, &name("absent"))
            .await
            .unwrap()
            .is_empty(),
        "list_versions of an absent function is empty"
    );
}

/// Of several concurrent `add_version` of the same n+1, exactly one wins.
pub async fn concurrent_add_version_has_one_winner(store: Store) {
    let ns = fresh_namespace();
    let v1 = function(&ns, "raced");
    store.create_function(&v1).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        let mut v2 = next_version(&v1);
        v2.handler = format!("main.racer_{i}");
        tasks.push(tokio::spawn(async move {
            let outcome = store.add_version(&v2).await;
            (v2, outcome)
        }));
    }
    let mut winners = Vec::new();
    for task in tasks {
        let (v2, outcome) = task.await.unwrap();
        match outcome {
            Ok(()) => winners.push(v2),
            Err(StoreError::Conflict(_)) => {}
            Err(e) => panic!("a losing concurrent add_version must be Conflict, got {e:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one concurrent add_version wins");
    let latest = store.get_function(&ns, &v1.name, None).await.unwrap();
    assert_eq!(latest.as_ref(), winners.first(), "the winner is the latest");
    assert_eq!(store.list_versions(&ns, &v1.name).await.unwrap().len(), 2);
}

/// `list_functions`: latest versions, by name, paged without repeats or gaps.
pub async fn list_functions_pages_latest_versions_by_name(store: Store) {
    let ns = fresh_namespace();
    let empty = store.list_functions(&ns, 10, None).await.unwrap();
    assert!(
        empty.items.is_empty() && empty.next_cursor.is_none(),
        "an empty namespace lists nothing"
    );

    // Created out of name order; every third one gets a second version.
    let mut expected = BTreeMap::new();
    for i in [
        7, 3, 12, 0, 19, 5, 1, 16, 9, 22, 14, 2, 11, 20, 4, 8, 6, 21, 13, 10, 15, 18, 17,
    ] {
        let f = function(&ns, &format!("fn-{i:02}"));
        store.create_function(&f).await.unwrap();
        let latest = if i % 3 == 0 {
            let v2 = next_version(&f);
            store.add_version(&v2).await.unwrap();
            v2
        } else {
            f
        };
        expected.insert(latest.name.clone(), latest);
    }
    let expected: Vec<Function> = expected.into_values().collect();

    for limit in [1, 5, 7, 23, 100] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let page = store
                .list_functions(&ns, limit, cursor.as_deref())
                .await
                .unwrap();
            pages += 1;
            assert!(
                page.items.len() <= limit as usize,
                "a page holds at most `limit` items"
            );
            seen.extend(page.items);
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
            assert!(pages <= 100, "pagination must terminate");
        }
        assert_eq!(
            seen, expected,
            "walking all pages (limit {limit}) yields every latest version once, by name"
        );
    }

    let one = store.list_functions(&ns, 0, None).await.unwrap();
    assert_eq!(one.items.len(), 1, "limit 0 is treated as 1");
    assert!(one.next_cursor.is_some());
}

/// A cursor the store did not issue is `InvalidCursor`.
pub async fn list_functions_refuses_bad_cursors(store: Store) {
    let ns = fresh_namespace();
    store.create_function(&function(&ns, "a")).await.unwrap();
    for bad in ["not a cursor!", "%%%", "AAAA", "\u{1F600}"] {
        let err = store.list_functions(&ns, 10, Some(bad)).await.unwrap_err();
        assert!(
            matches!(err, StoreError::InvalidCursor),
            "cursor {bad:?} must be InvalidCursor, got {err:?}"
        );
    }
}

/// An alias points at a version or splits over several; each change keeps the routing it
/// replaced, a rollback swaps them, setting the same routing again changes nothing; aliases
/// are listed by name and deleted one by one.
pub async fn aliases_point_split_and_roll_back(store: Store) {
    let ns = fresh_namespace();
    let v1 = function(&ns, "aliased");
    store.create_function(&v1).await.unwrap();
    let v2 = next_version(&v1);
    store.add_version(&v2).await.unwrap();
    let v3 = next_version(&v2);
    store.add_version(&v3).await.unwrap();
    let prod = AliasName::parse("prod").unwrap();
    let at = Utc::now();
    let one = |v| Routing::single(v).unwrap();
    let split = Routing::split([(2, 90), (3, 10)].into_iter().collect()).unwrap();

    let made = store
        .put_alias(&ns, &v1.name, &prod, &one(1), at)
        .await
        .unwrap();
    assert_eq!(
        (made.routing.clone(), made.previous.clone(), made.revision),
        (one(1), None, 1)
    );
    assert_eq!(made.created_at, at);
    let later = at + chrono::Duration::seconds(1);
    let moved = store
        .put_alias(&ns, &v1.name, &prod, &split, later)
        .await
        .unwrap();
    assert_eq!(moved.routing, split);
    assert_eq!(
        moved.previous,
        Some(one(1)),
        "the change keeps what it replaced"
    );
    assert_eq!(
        (moved.revision, moved.created_at, moved.updated_at),
        (2, at, later)
    );
    let same = store
        .put_alias(&ns, &v1.name, &prod, &split, Utc::now())
        .await
        .unwrap();
    assert_eq!(same, moved, "the same routing again changes nothing");
    assert_eq!(
        store.get_alias(&ns, &v1.name, &prod).await.unwrap(),
        Some(moved.clone())
    );

    let back = store
        .rollback_alias(&ns, &v1.name, &prod, Utc::now())
        .await
        .unwrap();
    assert_eq!(
        (back.routing.clone(), back.previous.clone()),
        (one(1), Some(split.clone()))
    );
    assert_eq!(back.revision, 3);
    let forward = store
        .rollback_alias(&ns, &v1.name, &prod, Utc::now())
        .await
        .unwrap();
    assert_eq!(
        (forward.routing, forward.previous),
        (split, Some(one(1))),
        "a rollback of a rollback steps forward again"
    );

    let canary = AliasName::parse("canary").unwrap();
    let fresh = store
        .put_alias(&ns, &v1.name, &canary, &one(3), Utc::now())
        .await
        .unwrap();
    let err = store
        .rollback_alias(&ns, &v1.name, &canary, Utc::now())
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict(_)),
        "no previous target: {err:?}"
    );
    let names: Vec<String> = store
        .list_aliases(&ns, &v1.name)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.name.to_string())
        .collect();
    assert_eq!(names, ["canary", "prod"], "listed by name");
    assert!(store.delete_alias(&ns, &v1.name, &canary).await.unwrap());
    assert!(!store.delete_alias(&ns, &v1.name, &canary).await.unwrap());
    assert_eq!(store.get_alias(&ns, &v1.name, &canary).await.unwrap(), None);
    assert_ne!(fresh.name, prod);
    let err = store
        .rollback_alias(&ns, &v1.name, &canary, Utc::now())
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound(_)),
        "absent alias: {err:?}"
    );
    let other = fresh_namespace();
    assert_eq!(
        store.get_alias(&other, &v1.name, &prod).await.unwrap(),
        None,
        "another namespace sees no alias"
    );
}

/// An alias may name only versions that exist, of a function that exists; it goes when its
/// function is deleted, and a function made again under the name starts with none.
pub async fn aliases_need_their_versions_and_go_with_their_function(store: Store) {
    let ns = fresh_namespace();
    let v1 = function(&ns, "short-lived");
    let prod = AliasName::parse("prod").unwrap();
    let one = |v| Routing::single(v).unwrap();
    let err = store
        .put_alias(&ns, &v1.name, &prod, &one(1), Utc::now())
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound(_)),
        "no function: {err:?}"
    );
    store.create_function(&v1).await.unwrap();
    let err = store
        .put_alias(&ns, &v1.name, &prod, &one(2), Utc::now())
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound(_)),
        "no version 2: {err:?}"
    );
    assert_eq!(
        store.get_alias(&ns, &v1.name, &prod).await.unwrap(),
        None,
        "nothing stored"
    );
    store
        .put_alias(&ns, &v1.name, &prod, &one(1), Utc::now())
        .await
        .unwrap();
    assert!(store.delete_function(&ns, &v1.name).await.unwrap());
    store
        .create_function(&function(&ns, "short-lived"))
        .await
        .unwrap();
    assert_eq!(store.get_alias(&ns, &v1.name, &prod).await.unwrap(), None);
    assert!(store.list_aliases(&ns, &v1.name).await.unwrap().is_empty());
}

/// Concurrent changes of one alias apply one at a time: every change's `previous` is the
/// routing of the change before it, so no rollback target is lost between two writers.
pub async fn concurrent_alias_changes_each_keep_the_one_before(store: Store) {
    let ns = fresh_namespace();
    let mut latest = function(&ns, "busy-alias");
    store.create_function(&latest).await.unwrap();
    for _ in 0..7 {
        latest = next_version(&latest);
        store.add_version(&latest).await.unwrap();
    }
    let prod = AliasName::parse("prod").unwrap();
    let changes = (1..=8u32).map(|v| {
        let store = store.clone();
        let (ns, name, prod) = (ns.clone(), latest.name.clone(), prod.clone());
        tokio::spawn(async move {
            let routing = Routing::single(v).unwrap();
            store
                .put_alias(&ns, &name, &prod, &routing, Utc::now())
                .await
                .unwrap()
        })
    });
    let mut results = Vec::new();
    for change in changes.collect::<Vec<_>>() {
        results.push(change.await.unwrap());
    }
    results.sort_by_key(|a| a.revision);
    let revisions: Vec<u64> = results.iter().map(|a| a.revision).collect();
    assert_eq!(
        revisions,
        (1..=8).collect::<Vec<_>>(),
        "one revision per change"
    );
    for pair in results.windows(2) {
        assert_eq!(pair[1].previous.as_ref(), Some(&pair[0].routing));
    }
}

/// Delete removes every version; the name can then be created again.
pub async fn delete_removes_all_versions(store: Store) {
    let ns = fresh_namespace();
    let v1 = function(&ns, "doomed");
    store.create_function(&v1).await.unwrap();
    store.add_version(&next_version(&v1)).await.unwrap();
    let keep = function(&ns, "kept");
    store.create_function(&keep).await.unwrap();

    assert!(
        store.delete_function(&ns, &v1.name).await.unwrap(),
        "deleting an existing function returns true"
    );
    assert_eq!(store.get_function(&ns, &v1.name, None).await.unwrap(), None);
    assert_eq!(
        store.get_function(&ns, &v1.name, Some(1)).await.unwrap(),
        None,
        "old versions are gone too"
    );
    assert!(store.list_versions(&ns, &v1.name).await.unwrap().is_empty());
    assert!(
        !store.delete_function(&ns, &v1.name).await.unwrap(),
        "deleting an absent function returns false"
    );
    let listed = store.list_functions(&ns, 100, None).await.unwrap();
    assert_eq!(listed.items, vec![keep], "others are untouched");

    let reborn = function(&ns, "doomed");
    assert_ne!(reborn.id, v1.id);
    store
        .create_function(&reborn)
        .await
        .expect("re-creating a deleted name");
    assert_eq!(
        store.get_function(&ns, &v1.name, None).await.unwrap(),
        Some(reborn.clone()),
        "the re-created function is version 1 with its new id"
    );
    assert_eq!(
        store.list_versions(&ns, &v1.name).await.unwrap(),
        vec![reborn]
    );
}

/// A namespace never sees another's functions, invocations or logs.
pub async fn namespaces_are_isolated(store: Store) {
    let a = fresh_namespace();
    let b = fresh_namespace();
    let f = function(&a, "private");
    store.create_function(&f).await.unwrap();
    let inv = accept(&store, &a, "private").await;
    store
        .put_logs(
            &inv.id,
            &InvocationLogs {
                text: "secret".to_owned(),
                truncated: false,
            },
        )
        .await
        .unwrap();

    assert_eq!(store.get_function(&b, &f.name, None).await.unwrap(), None);
    assert_eq!(
        store.get_function(&b, &f.name, Some(1)).await.unwrap(),
        None
    );
    assert!(store
        .list_functions(&b, 100, None)
        .await
        .unwrap()
        .items
        .is_empty());
    assert!(store.list_versions(&b, &f.name).await.unwrap().is_empty());
    let namespaces = store.function_namespaces().await.unwrap();
    assert!(
        namespaces.contains(&a) && !namespaces.contains(&b),
        "function_namespaces names the namespaces holding a function: {namespaces:?}"
    );
    assert!(
        !store.delete_function(&b, &f.name).await.unwrap(),
        "deleting from another namespace finds nothing"
    );
    let mut v2 = next_version(&f);
    v2.namespace = b.clone();
    assert!(matches!(
        store.add_version(&v2).await.unwrap_err(),
        StoreError::NotFound(_)
    ));
    assert_eq!(store.get_invocation(&b, &inv.id).await.unwrap(), None);
    assert_eq!(store.get_logs(&b, &inv.id).await.unwrap(), None);
    assert!(store
        .list_invocations(&b, &InvocationFilter::default(), 100, None)
        .await
        .unwrap()
        .items
        .is_empty());
    let mut foreign = with_status(&inv, InvocationStatus::Succeeded, 1);
    foreign.namespace = b.clone();
    assert!(
        store.update_invocation(&foreign).await.is_err(),
        "an update addressed to another namespace must not apply"
    );

    // Still all there for the owner.
    assert_eq!(
        store.get_function(&a, &f.name, None).await.unwrap(),
        Some(f)
    );
    assert_eq!(
        store.get_invocation(&a, &inv.id).await.unwrap(),
        Some(inv.clone())
    );
    assert!(store.get_logs(&a, &inv.id).await.unwrap().is_some());
}

// ---- invocations ----

/// An accepted request's record is `queued` and reads back equal; a duplicate id is `Conflict`.
pub async fn insert_and_get_invocation(store: Store) {
    let ns = fresh_namespace();
    let req = request(&ns, "worker");
    let inv = store.insert_invocation(&req).await.unwrap();
    assert_eq!(
        inv,
        InvocationResult::queued(&req),
        "insert_invocation returns the queued record of the request"
    );
    assert_eq!(
        store.get_invocation(&ns, &inv.id).await.unwrap(),
        Some(inv.clone())
    );
    let err = store.insert_invocation(&req).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict(_)),
        "a duplicate invocation id must be Conflict, got {err:?}"
    );
    assert_eq!(
        store
            .get_invocation(&ns, &InvocationId::new())
            .await
            .unwrap(),
        None
    );
}

/// An idempotency key is taken with its invocation's `queued` record in one write; the same
/// key again finds that invocation and writes nothing; another namespace's key of the same
/// text is another key; an expired key is taken anew.
pub async fn keyed_invocations_take_a_key_once_per_namespace(store: Store) {
    let ns = fresh_namespace();
    let key = IdempotencyKey::parse("order-42").unwrap();
    let first = request(&ns, "worker");
    let long_ago = Utc::now() - ChronoDuration::hours(24);
    let keyed = store
        .insert_keyed_invocation(&first, &key, "fp-1", long_ago)
        .await
        .unwrap();
    assert_eq!(keyed, Keyed::Inserted);
    assert_eq!(
        store.get_invocation(&ns, &first.id).await.unwrap(),
        Some(InvocationResult::queued(&first)),
        "the record is committed with the key"
    );

    let retry = request(&ns, "worker");
    let again = store
        .insert_keyed_invocation(&retry, &key, "fp-2", long_ago)
        .await
        .unwrap();
    assert_eq!(
        again,
        Keyed::Existing {
            invocation_id: first.id,
            fingerprint: "fp-1".into()
        }
    );
    assert_eq!(
        store.get_invocation(&ns, &retry.id).await.unwrap(),
        None,
        "nothing is written for the retry"
    );

    let other_ns = fresh_namespace();
    let elsewhere = request(&other_ns, "worker");
    assert_eq!(
        store
            .insert_keyed_invocation(&elsewhere, &key, "fp-1", long_ago)
            .await
            .unwrap(),
        Keyed::Inserted,
        "keys are per namespace"
    );

    // A key whose invocation was refused unrun (failed at attempt 0) is free again; one whose
    // invocation ran and failed is not.
    let refused = request(&ns, "worker");
    let refused_key = IdempotencyKey::parse("refused").unwrap();
    store
        .insert_keyed_invocation(&refused, &refused_key, "fp", long_ago)
        .await
        .unwrap();
    let mut not_run = InvocationResult::queued(&refused);
    not_run.status = InvocationStatus::Failed;
    assert!(store.update_invocation(&not_run).await.unwrap());
    let retried = request(&ns, "worker");
    assert_eq!(
        store
            .insert_keyed_invocation(&retried, &refused_key, "fp", long_ago)
            .await
            .unwrap(),
        Keyed::Inserted,
        "a refused invocation's key is free again"
    );
    let mut ran = InvocationResult::queued(&retried);
    ran.status = InvocationStatus::Failed;
    ran.attempt = 1;
    assert!(store.update_invocation(&ran).await.unwrap());
    assert!(matches!(
        store
            .insert_keyed_invocation(&request(&ns, "worker"), &refused_key, "fp", long_ago)
            .await
            .unwrap(),
        Keyed::Existing { invocation_id, .. } if invocation_id == retried.id
    ));

    // Past its lifetime the key is free: it now makes another invocation.
    let later = request(&ns, "worker");
    let expired_before = Utc::now() + ChronoDuration::seconds(1);
    assert_eq!(
        store
            .insert_keyed_invocation(&later, &key, "fp-3", expired_before)
            .await
            .unwrap(),
        Keyed::Inserted
    );
    assert_eq!(
        store
            .insert_keyed_invocation(&request(&ns, "worker"), &key, "fp-4", long_ago)
            .await
            .unwrap(),
        Keyed::Existing {
            invocation_id: later.id,
            fingerprint: "fp-3".into()
        }
    );
}

/// Concurrent first uses of one key (from several gateways): exactly one invocation is
/// stored, and every caller is told which.
pub async fn concurrent_keyed_invocations_have_one_winner(store: Store) {
    let ns = fresh_namespace();
    let key = IdempotencyKey::parse("once").unwrap();
    let long_ago = Utc::now() - ChronoDuration::hours(24);
    let tries = (0..8).map(|_| {
        let (store, key) = (store.clone(), key.clone());
        let req = request(&ns, "worker");
        tokio::spawn(async move {
            let keyed = store
                .insert_keyed_invocation(&req, &key, "fp", long_ago)
                .await
                .unwrap();
            (req.id, keyed)
        })
    });
    let mut winners = Vec::new();
    let mut told = HashSet::new();
    let mut ids = Vec::new();
    for task in tries.collect::<Vec<_>>() {
        let (id, keyed) = task.await.unwrap();
        ids.push(id);
        match keyed {
            Keyed::Inserted => winners.push(id),
            Keyed::Existing { invocation_id, .. } => {
                told.insert(invocation_id);
            }
        }
    }
    assert_eq!(winners.len(), 1, "one invocation takes the key");
    assert!(
        told.iter().all(|id| *id == winners[0]),
        "the others are told its id"
    );
    let stored = store
        .get_invocations(&ids.iter().map(|id| (ns.clone(), *id)).collect::<Vec<_>>())
        .await
        .unwrap();
    assert_eq!(stored.iter().filter(|r| r.is_some()).count(), 1);
}

/// Cancelling a queued or running invocation makes its record `cancelled` and final: no
/// node update (single, batched or group-committed) applies over it; cancelling again, or
/// cancelling a finished invocation, changes nothing; another namespace's is absent.
pub async fn a_cancelled_record_is_final(store: Store) {
    let ns = fresh_namespace();
    let queued = accept(&store, &ns, "cancellable").await;
    let (cancelled, changed) = store
        .cancel_invocation(&ns, &queued.id, "cancelled by key k1")
        .await
        .unwrap()
        .expect("the invocation exists");
    assert!(changed);
    assert_eq!(cancelled.status, InvocationStatus::Cancelled);
    let error = cancelled.error.clone().expect("an error says why");
    assert_eq!(
        (error.kind, error.message.as_str()),
        (ErrorKind::Cancelled, "cancelled by key k1")
    );
    assert!(cancelled.completed_at.is_some());
    assert_eq!(
        store.get_invocation(&ns, &queued.id).await.unwrap(),
        Some(cancelled.clone())
    );
    // What a node reports afterwards is fenced off, however it arrives.
    let late = with_status(&queued, InvocationStatus::Succeeded, 1);
    assert!(!store.update_invocation(&late).await.unwrap());
    let late2 = with_status(&queued, InvocationStatus::Failed, 2);
    assert_eq!(store.update_invocations(&[late2]).await.unwrap(), [false]);
    let written = store
        .write_invocations(&[], &[(&late, None)])
        .await
        .unwrap();
    assert_eq!(written.applied, [false]);
    assert_eq!(
        store.get_invocation(&ns, &queued.id).await.unwrap(),
        Some(cancelled.clone())
    );
    // Only the node's own report of the cancellation joins it.
    let reported = with_status(&queued, InvocationStatus::Cancelled, 1);
    assert!(store.update_invocation(&reported).await.unwrap());
    assert_eq!(
        store.get_invocation(&ns, &queued.id).await.unwrap(),
        Some(reported.clone())
    );
    assert!(!store
        .update_invocation(&with_status(&queued, InvocationStatus::Succeeded, 2))
        .await
        .unwrap());
    let cancelled = reported;
    // Idempotent, and a finished invocation stays as it is.
    let (again, changed) = store
        .cancel_invocation(&ns, &queued.id, "again")
        .await
        .unwrap()
        .unwrap();
    assert!(!changed);
    assert_eq!(again, cancelled);
    let running = accept(&store, &ns, "cancellable").await;
    let started = with_status(&running, InvocationStatus::Running, 1);
    assert!(store.update_invocation(&started).await.unwrap());
    let (stopped, changed) = store
        .cancel_invocation(&ns, &running.id, "stop")
        .await
        .unwrap()
        .unwrap();
    assert!(changed, "a running invocation is cancelled too");
    assert_eq!(stopped.status, InvocationStatus::Cancelled);
    let finished = accept(&store, &ns, "cancellable").await;
    let done = with_status(&finished, InvocationStatus::Succeeded, 1);
    assert!(store.update_invocation(&done).await.unwrap());
    let (kept, changed) = store
        .cancel_invocation(&ns, &finished.id, "too late")
        .await
        .unwrap()
        .unwrap();
    assert!(!changed);
    assert_eq!(kept, done);
    assert_eq!(
        store
            .cancel_invocation(&fresh_namespace(), &finished.id, "x")
            .await
            .unwrap(),
        None,
        "another namespace's invocation is absent"
    );
    assert_eq!(
        store
            .cancel_invocation(&ns, &InvocationId::new(), "x")
            .await
            .unwrap(),
        None
    );
}

/// `get_invocations` answers per key, in order: a record of another namespace, or an absent
/// one, is `None`; a repeated key is answered twice.
pub async fn get_invocations_in_order_within_the_namespace(store: Store) {
    let ns = fresh_namespace();
    let other = fresh_namespace();
    let a = store
        .insert_invocation(&request(&ns, "worker"))
        .await
        .unwrap();
    let b = store
        .insert_invocation(&request(&ns, "worker"))
        .await
        .unwrap();
    let theirs = store
        .insert_invocation(&request(&other, "worker"))
        .await
        .unwrap();
    let keys = vec![
        (ns.clone(), b.id),
        (ns.clone(), InvocationId::new()),
        (ns.clone(), theirs.id),
        (ns.clone(), a.id),
        (ns.clone(), b.id),
    ];
    let found = store.get_invocations(&keys).await.unwrap();
    assert_eq!(
        found,
        vec![Some(b.clone()), None, None, Some(a), Some(b)],
        "one answer per key, in order, none across namespaces"
    );
    assert!(store.get_invocations(&[]).await.unwrap().is_empty());
}

/// The fencing rules of `update_invocation`:
/// - a higher attempt always applies;
/// - the same attempt applies over a non-terminal record, never over a terminal one (the
///   first terminal result wins);
/// - a lower attempt applies only with a terminal result over a non-terminal record.
pub async fn update_invocation_is_fenced(store: Store) {
    use InvocationStatus::Queued;
    let ns = fresh_namespace();
    for (stored_status, stored_attempt, new_status, new_attempt, applies) in FENCING_CASES {
        let base = accept(&store, &ns, "fenced").await;
        let stored = with_status(&base, stored_status, stored_attempt);
        if stored_status != Queued || stored_attempt != 0 {
            assert!(
                store.update_invocation(&stored).await.unwrap(),
                "setting up {stored_status:?}/{stored_attempt} must apply"
            );
        }
        let update = with_status(&base, new_status, new_attempt);
        let applied = store.update_invocation(&update).await.unwrap();
        assert_eq!(
            applied, applies,
            "update to {new_status:?}/{new_attempt} over stored {stored_status:?}/{stored_attempt}"
        );
        let now_stored = store.get_invocation(&ns, &base.id).await.unwrap().unwrap();
        let expected = if applies { &update } else { &stored };
        assert_eq!(
            &now_stored, expected,
            "record after {new_status:?}/{new_attempt} over {stored_status:?}/{stored_attempt}"
        );
    }
}

/// The fencing table: (stored status, stored attempt, update status, update attempt, applies).
const FENCING_CASES: [(InvocationStatus, u32, InvocationStatus, u32, bool); 16] = {
    use InvocationStatus::{Failed, Queued, Running, Succeeded, Timeout};
    [
        (Queued, 0, Running, 1, true),
        (Running, 1, Running, 1, true),
        (Running, 1, Succeeded, 1, true),
        (Running, 1, Failed, 1, true),
        (Running, 2, Running, 1, false),
        (Running, 2, Queued, 1, false),
        (Running, 2, Succeeded, 1, true),
        (Succeeded, 1, Running, 1, false),
        (Succeeded, 1, Queued, 1, false),
        (Succeeded, 1, Failed, 1, false),
        (Failed, 1, Succeeded, 1, false),
        (Succeeded, 2, Succeeded, 1, false),
        (Succeeded, 2, Running, 1, false),
        (Timeout, 1, Running, 2, true),
        (Failed, 1, Succeeded, 2, true),
        (Succeeded, 1, Timeout, 2, true),
    ]
};

/// Updating a record that was never inserted is `NotFound`.
pub async fn update_of_absent_invocation_is_not_found(store: Store) {
    let ns = fresh_namespace();
    let ghost = with_status(
        &InvocationResult::queued(&request(&ns, "ghost")),
        InvocationStatus::Succeeded,
        1,
    );
    let err = store.update_invocation(&ghost).await.unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound(_)),
        "updating an absent invocation must be NotFound, got {err:?}"
    );
}

async fn walk_invocations(
    store: &Store,
    ns: &Namespace,
    filter: &InvocationFilter,
    limit: u32,
) -> Vec<InvocationResult> {
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..1000 {
        let page = store
            .list_invocations(ns, filter, limit, cursor.as_deref())
            .await
            .unwrap();
        assert!(page.items.len() <= limit.max(1) as usize);
        seen.extend(page.items);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return seen,
        }
    }
    panic!("list_invocations pagination did not terminate");
}

/// `list_invocations`: newest first, filtered by function and/or status, paged.
pub async fn list_invocations_newest_first_with_filters(store: Store) {
    let ns = fresh_namespace();
    let mut all = Vec::new();
    for i in 0..30u32 {
        let function = if i % 2 == 0 { "even" } else { "odd" };
        let mut inv = accept(&store, &ns, function).await;
        if i % 3 == 0 {
            inv = with_status(&inv, InvocationStatus::Succeeded, 1);
            assert!(store.update_invocation(&inv).await.unwrap());
        }
        all.push(inv);
    }
    all.sort_by_key(|r| std::cmp::Reverse(r.id));
    let ids = |v: &[InvocationResult]| v.iter().map(|r| r.id).collect::<Vec<_>>();

    for limit in [1, 4, 7, 30, 1000] {
        let seen = walk_invocations(&store, &ns, &InvocationFilter::default(), limit).await;
        assert_eq!(
            ids(&seen),
            ids(&all),
            "walking all pages (limit {limit}) yields every invocation once, newest first"
        );
    }
    assert_eq!(
        walk_invocations(&store, &ns, &InvocationFilter::default(), 1000).await,
        all,
        "listed records equal the stored ones"
    );

    let even = name("even");
    let by_function = InvocationFilter {
        function: Some(even.clone()),
        status: None,
    };
    let expected: Vec<_> = all.iter().filter(|r| r.function == even).cloned().collect();
    assert_eq!(
        ids(&walk_invocations(&store, &ns, &by_function, 4).await),
        ids(&expected),
        "filter by function"
    );

    let by_status = InvocationFilter {
        function: None,
        status: Some(InvocationStatus::Succeeded),
    };
    let expected: Vec<_> = all
        .iter()
        .filter(|r| r.status == InvocationStatus::Succeeded)
        .cloned()
        .collect();
    assert_eq!(
        ids(&walk_invocations(&store, &ns, &by_status, 3).await),
        ids(&expected),
        "filter by status"
    );

    let both = InvocationFilter {
        function: Some(even.clone()),
        status: Some(InvocationStatus::Queued),
    };
    let expected: Vec<_> = all
        .iter()
        .filter(|r| r.function == even && r.status == InvocationStatus::Queued)
        .cloned()
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(
        ids(&walk_invocations(&store, &ns, &both, 2).await),
        ids(&expected),
        "filter by function and status"
    );

    let none = InvocationFilter {
        function: Some(name("nobody")),
        status: None,
    };
    let page = store.list_invocations(&ns, &none, 10, None).await.unwrap();
    assert!(page.items.is_empty() && page.next_cursor.is_none());

    let one = store
        .list_invocations(&ns, &InvocationFilter::default(), 0, None)
        .await
        .unwrap();
    assert_eq!(one.items.len(), 1, "limit 0 is treated as 1");
}

/// Rows inserted while a client walks the pages neither repeat nor hide older rows.
pub async fn list_invocations_pagination_is_stable_under_inserts(store: Store) {
    let ns = fresh_namespace();
    let mut original = Vec::new();
    for _ in 0..20 {
        let inv = accept(&store, &ns, "busy").await;
        original.push(inv.id);
    }
    original.reverse();

    let filter = InvocationFilter::default();
    let mut seen = Vec::new();
    let mut page = store.list_invocations(&ns, &filter, 6, None).await.unwrap();
    loop {
        seen.extend(page.items.iter().map(|r| r.id));
        // Newer rows arrive between every page.
        for _ in 0..3 {
            accept(&store, &ns, "busy").await;
        }
        let Some(cursor) = page.next_cursor else {
            break;
        };
        page = store
            .list_invocations(&ns, &filter, 6, Some(&cursor))
            .await
            .unwrap();
    }
    assert_eq!(
        seen, original,
        "a walk started before the inserts sees exactly the rows that existed, in order"
    );
    let unique: HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no duplicates");
}

/// A cursor the store did not issue is `InvalidCursor` (including a function cursor).
pub async fn list_invocations_refuses_bad_cursors(store: Store) {
    let ns = fresh_namespace();
    for i in 0..3 {
        store
            .create_function(&function(&ns, &format!("f-{i}")))
            .await
            .unwrap();
    }
    let function_cursor = store
        .list_functions(&ns, 1, None)
        .await
        .unwrap()
        .next_cursor
        .unwrap();
    let filter = InvocationFilter::default();
    for bad in ["not a cursor!", "%%%", "AAAA", function_cursor.as_str()] {
        let err = store
            .list_invocations(&ns, &filter, 10, Some(bad))
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::InvalidCursor),
            "cursor {bad:?} must be InvalidCursor, got {err:?}"
        );
    }
}

/// `update_invocations` fences every update of a batch exactly like `update_invocation`, and
/// reports an absent record as not applied.
pub async fn update_invocations_batch_is_fenced_like_single_updates(store: Store) {
    use InvocationStatus::Queued;
    let ns = fresh_namespace();
    assert!(
        store.update_invocations(&[]).await.unwrap().is_empty(),
        "an empty batch applies nothing"
    );

    let mut setups = Vec::new();
    let mut stored = Vec::new();
    let mut updates = Vec::new();
    let mut expected_applied = Vec::new();
    for (stored_status, stored_attempt, new_status, new_attempt, applies) in FENCING_CASES {
        let base = accept(&store, &ns, "batched").await;
        let before = with_status(&base, stored_status, stored_attempt);
        if stored_status != Queued || stored_attempt != 0 {
            setups.push(before.clone());
        }
        stored.push(before);
        updates.push(with_status(&base, new_status, new_attempt));
        expected_applied.push(applies);
    }
    let set_up = store.update_invocations(&setups).await.unwrap();
    assert!(
        set_up.iter().all(|&a| a),
        "every set-up update of a batch applies, got {set_up:?}"
    );

    // An update of a record that does not exist rides along.
    let ghost = with_status(
        &InvocationResult::queued(&request(&ns, "ghost")),
        InvocationStatus::Succeeded,
        1,
    );
    let mut batch = updates.clone();
    batch.insert(updates.len() / 2, ghost.clone());
    let mut applied = store.update_invocations(&batch).await.unwrap();
    assert_eq!(applied.len(), batch.len(), "one answer per update");
    assert!(
        !applied.remove(updates.len() / 2),
        "an absent record is reported as not applied"
    );
    assert_eq!(applied, expected_applied, "batch fencing matches the table");
    assert_eq!(store.get_invocation(&ns, &ghost.id).await.unwrap(), None);

    for ((update, before), applies) in updates.iter().zip(&stored).zip(&expected_applied) {
        let now_stored = store
            .get_invocation(&ns, &update.id)
            .await
            .unwrap()
            .unwrap();
        let expected = if *applies { update } else { before };
        assert_eq!(
            &now_stored, expected,
            "record after a batched {:?}/{} over {:?}/{}",
            update.status, update.attempt, before.status, before.attempt
        );
    }
}

/// Several updates of one invocation in one batch apply as if one after the other.
pub async fn update_invocations_batch_applies_in_order(store: Store) {
    use InvocationStatus::{Failed, Running, Succeeded};
    let ns = fresh_namespace();
    let a = accept(&store, &ns, "ordered").await;
    let b = accept(&store, &ns, "ordered").await;
    let batch = vec![
        with_status(&a, Running, 1),
        with_status(&b, Running, 1),
        with_status(&a, Succeeded, 1),
        with_status(&a, Running, 1),
        with_status(&b, Running, 2),
        with_status(&b, Succeeded, 1),
        with_status(&a, Failed, 2),
        with_status(&b, Failed, 2),
        with_status(&b, Succeeded, 2),
    ];
    let applied = store.update_invocations(&batch).await.unwrap();
    assert_eq!(
        applied,
        vec![true, true, true, false, true, true, true, true, false],
        "updates of one id within a batch are fenced against each other, in order"
    );
    assert_eq!(
        store.get_invocation(&ns, &a.id).await.unwrap().as_ref(),
        Some(&batch[6])
    );
    assert_eq!(
        store.get_invocation(&ns, &b.id).await.unwrap().as_ref(),
        Some(&batch[7])
    );
}

/// A time no other case uses: somewhere in 1990-2020, random to the second.
fn distant_past() -> DateTime<Utc> {
    let base = DateTime::parse_from_rfc3339("1990-01-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    base + ChronoDuration::seconds(rand::random::<i64>().rem_euclid(30 * 365 * 24 * 3600))
}

/// `stale_queued` returns accepted requests (function snapshot and payload intact) queued
/// before the cutoff, oldest first, and nothing newer.
pub async fn stale_queued_returns_accepted_requests_oldest_first(store: Store) {
    let ns = fresh_namespace();
    let base = distant_past();
    // Accepted out of time order.
    let mut old = Vec::new();
    for offset_ms in [300, 100, 500, 200, 400] {
        let mut req = request(&ns, "slow");
        req.created_at = base + ChronoDuration::milliseconds(offset_ms);
        store.insert_invocation(&req).await.unwrap();
        old.push(req);
    }
    let mut late = request(&ns, "slow");
    late.created_at = base + ChronoDuration::seconds(10);
    store.insert_invocation(&late).await.unwrap();
    accept(&store, &ns, "recent").await;
    old.sort_by_key(|r| r.created_at);

    let cutoff = base + ChronoDuration::seconds(1);
    let stale = store.stale_queued(cutoff, 1000).await.unwrap();
    assert!(
        stale.windows(2).all(|w| w[0].created_at <= w[1].created_at),
        "stale_queued is oldest first"
    );
    assert!(
        stale.iter().all(|r| r.created_at < cutoff),
        "stale_queued returns only requests older than the cutoff"
    );
    let mine: Vec<_> = stale
        .into_iter()
        .filter(|r| r.function.namespace == ns)
        .collect();
    assert_eq!(
        mine, old,
        "the stale requests round-trip whole (function snapshot, payload, trace id), oldest first"
    );

    let two = store.stale_queued(cutoff, 2).await.unwrap();
    assert_eq!(two.len(), 2, "the limit caps the answer");
    assert!(two[0].created_at <= two[1].created_at);

    let later = store
        .stale_queued(base + ChronoDuration::seconds(11), 1000)
        .await
        .unwrap();
    assert!(
        later.iter().any(|r| r.id == late.id),
        "a later cutoff includes the later request"
    );
}

/// A record that moved on (running, or terminal) is no longer stale; one that is fenced off
/// stays as it was.
/// `running_invocations` lists running records of every namespace, and nothing else.
pub async fn running_invocations_span_namespaces(store: Store) {
    use InvocationStatus::{Running, Succeeded};
    let (a, b) = (fresh_namespace(), fresh_namespace());
    let ra = accept(&store, &a, "runs").await;
    let rb = accept(&store, &b, "runs").await;
    let queued = accept(&store, &a, "waits").await;
    let done = accept(&store, &b, "done").await;
    for (r, status) in [(&ra, Running), (&rb, Running), (&done, Succeeded)] {
        assert!(store
            .update_invocation(&with_status(r, status, 1))
            .await
            .unwrap());
    }
    let ours: Vec<InvocationResult> = store
        .running_invocations(1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.namespace == a || r.namespace == b)
        .collect();
    let mut ids: Vec<_> = ours.iter().map(|r| r.id).collect();
    ids.sort();
    let mut want = vec![ra.id, rb.id];
    want.sort();
    assert_eq!(
        ids, want,
        "running records of both namespaces, nothing else"
    );
    assert!(ours.iter().all(|r| r.status == Running));
    assert!(!ids.contains(&queued.id) && !ids.contains(&done.id));
    assert!(!store.running_invocations(1).await.unwrap().is_empty());
}

/// `replace_queued_request` replaces the stored request of a queued record (what
/// `stale_queued` then returns) and of nothing else.
pub async fn replace_queued_request_only_while_queued(store: Store) {
    let ns = fresh_namespace();
    let req = accepted_request(&store, &ns, "placed").await;
    let mut placed = req.clone();
    placed.forwarded_to = Some("hub".to_owned());
    assert!(store.replace_queued_request(&placed).await.unwrap());
    let stale = store
        .stale_queued(Utc::now() + ChronoDuration::seconds(1), 1000)
        .await
        .unwrap();
    let stored = stale.iter().find(|r| r.id == req.id).expect("still queued");
    assert_eq!(
        stored.forwarded_to.as_deref(),
        Some("hub"),
        "the new request is stored"
    );
    let mut other_ns = placed.clone();
    other_ns.function.namespace = fresh_namespace();
    assert!(
        !store.replace_queued_request(&other_ns).await.unwrap(),
        "not across namespaces"
    );
    let done = with_status(
        &InvocationResult::queued(&req),
        InvocationStatus::Succeeded,
        1,
    );
    assert!(store.update_invocation(&done).await.unwrap());
    assert!(
        !store.replace_queued_request(&placed).await.unwrap(),
        "a finished invocation keeps no request"
    );
    let absent = request(&ns, "never");
    assert!(!store.replace_queued_request(&absent).await.unwrap());
}

pub async fn stale_queued_skips_records_that_moved_on(store: Store) {
    use InvocationStatus::{Failed, Running, Succeeded, Timeout};
    let ns = fresh_namespace();
    let base = distant_past();
    let mut records = Vec::new();
    for i in 0..5 {
        let mut req = request(&ns, "moving");
        req.created_at = base + ChronoDuration::milliseconds(i);
        records.push(store.insert_invocation(&req).await.unwrap());
    }
    let cutoff = base + ChronoDuration::seconds(1);
    let stale_ids = |stale: Vec<InvocationRequest>| {
        stale
            .into_iter()
            .filter(|r| r.function.namespace == ns)
            .map(|r| r.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        stale_ids(store.stale_queued(cutoff, 1000).await.unwrap()),
        records.iter().map(|r| r.id).collect::<Vec<_>>()
    );

    assert!(store
        .update_invocation(&with_status(&records[0], Running, 1))
        .await
        .unwrap());
    assert!(store
        .update_invocation(&with_status(&records[1], Succeeded, 1))
        .await
        .unwrap());
    let applied = store
        .update_invocations(&[
            with_status(&records[2], Failed, 1),
            with_status(&records[3], Timeout, 1),
        ])
        .await
        .unwrap();
    assert_eq!(applied, vec![true, true]);
    assert_eq!(
        stale_ids(store.stale_queued(cutoff, 1000).await.unwrap()),
        vec![records[4].id],
        "running and terminal records are not stale"
    );

    // A running record re-queued by its own attempt (a node handing it back) is stale again,
    // with its request; a terminal one never comes back.
    let mut requeued = with_status(&records[0], InvocationStatus::Queued, 1);
    requeued.node_id = None;
    assert!(store.update_invocation(&requeued).await.unwrap());
    assert!(!store
        .update_invocation(&with_status(&records[1], InvocationStatus::Queued, 1))
        .await
        .unwrap());
    assert_eq!(
        stale_ids(store.stale_queued(cutoff, 1000).await.unwrap()),
        vec![records[0].id, records[4].id]
    );
}

/// Logs are stored, replaced and read back, scoped by the invocation's namespace.
pub async fn logs_roundtrip(store: Store) {
    let ns = fresh_namespace();
    let inv = accept(&store, &ns, "chatty").await;
    assert_eq!(
        store.get_logs(&ns, &inv.id).await.unwrap(),
        None,
        "no logs before put"
    );
    let first = InvocationLogs {
        text: "line 1\nline 2 ünïcode\n".to_owned(),
        truncated: false,
    };
    store.put_logs(&inv.id, &first).await.unwrap();
    assert_eq!(store.get_logs(&ns, &inv.id).await.unwrap(), Some(first));
    let second = InvocationLogs {
        text: "x".repeat(64 * 1024),
        truncated: true,
    };
    store.put_logs(&inv.id, &second).await.unwrap();
    assert_eq!(
        store.get_logs(&ns, &inv.id).await.unwrap(),
        Some(second),
        "put_logs replaces"
    );
    assert_eq!(
        store.get_logs(&ns, &InvocationId::new()).await.unwrap(),
        None
    );
}

/// `write_invocations` (the group commit of the invocation path): new records are inserted
/// with their requests, a taken id is reported and left alone (also when repeated in the
/// batch); updates apply in order, fenced like `update_invocation`, and carry their logs (if
/// any) only when they apply; a terminal outcome drops the request; an update whose record is
/// absent is inserted as it is, without a request (the first of a repeated id).
pub async fn write_invocations_commits_inserts_and_outcomes_together(store: Store) {
    let ns = fresh_namespace();
    // Accepted long ago, so `stale_queued` lists them first.
    let base = distant_past();
    let old = || {
        let mut req = request(&ns, "batched");
        req.created_at = base;
        req
    };
    let done = store.insert_invocation(&old()).await.unwrap();
    // Started, then finished, in one batch: applied in order.
    let running = with_status(&done, InvocationStatus::Running, 1);
    let finished = with_status(&done, InvocationStatus::Succeeded, 1);
    let stale = accept(&store, &ns, "batched").await;
    store
        .update_invocation(&with_status(&stale, InvocationStatus::Failed, 2))
        .await
        .unwrap();
    let stale_outcome = with_status(&stale, InvocationStatus::Succeeded, 1);
    let absent = with_status(
        &InvocationResult::queued(&request(&ns, "batched")),
        InvocationStatus::Succeeded,
        1,
    );
    let absent_again = with_status(&absent, InvocationStatus::Failed, 1);
    // A sync invocation past its caller's wait, stored before its outcome is known.
    let placeholder = {
        let mut req = request(&ns, "batched");
        req.created_at = base;
        InvocationResult::queued(&req)
    };
    let taken = old();
    store.insert_invocation(&taken).await.unwrap();
    let (a, b) = (old(), old());
    let logs = |text: &str| InvocationLogs {
        text: text.to_owned(),
        truncated: false,
    };
    let (finished_logs, stale_logs, absent_logs) =
        (logs("done\n"), logs("stale\n"), logs("nobody\n"));

    let written = store
        .write_invocations(
            &[&a, &taken, &b, &a],
            &[
                (&running, None),
                (&finished, Some(&finished_logs)),
                (&stale_outcome, Some(&stale_logs)),
                (&absent, Some(&absent_logs)),
                (&absent_again, Some(&stale_logs)),
                (&placeholder, None),
            ],
        )
        .await
        .unwrap();
    assert_eq!(written.inserted, vec![true, false, true, false]);
    assert_eq!(written.applied, vec![true, true, false, true, false, true]);

    for new in [&a, &b] {
        let record = store.get_invocation(&ns, &new.id).await.unwrap().unwrap();
        assert_eq!(record, InvocationResult::queued(new), "inserted as queued");
    }
    let requeued: Vec<InvocationId> = store
        .stale_queued(base + ChronoDuration::seconds(1), 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    for new in [&a, &b, &taken] {
        assert!(
            requeued.contains(&new.id),
            "the request is stored with the record"
        );
    }
    assert!(
        !requeued.contains(&done.id),
        "a terminal outcome drops the request"
    );
    assert_eq!(
        store.get_invocation(&ns, &done.id).await.unwrap(),
        Some(finished.clone())
    );
    assert_eq!(
        store.get_logs(&ns, &done.id).await.unwrap(),
        Some(finished_logs)
    );
    let kept = store.get_invocation(&ns, &stale.id).await.unwrap().unwrap();
    assert_eq!((kept.status, kept.attempt), (InvocationStatus::Failed, 2));
    assert_eq!(
        store.get_logs(&ns, &stale.id).await.unwrap(),
        None,
        "a fenced-off outcome stores no logs"
    );
    assert_eq!(
        store.get_invocation(&ns, &absent.id).await.unwrap(),
        Some(absent.clone()),
        "an absent record is inserted as it is, the first of its id"
    );
    assert_eq!(
        store.get_logs(&ns, &absent.id).await.unwrap(),
        Some(absent_logs)
    );
    assert_eq!(
        store.get_invocation(&ns, &placeholder.id).await.unwrap(),
        Some(placeholder.clone())
    );
    assert!(
        !requeued.contains(&placeholder.id) && !requeued.contains(&absent.id),
        "a record inserted from an update has no request to publish again"
    );
    assert_eq!(
        store.write_invocations(&[], &[]).await.unwrap(),
        crate::Written::default()
    );
}

/// `logs_stored` answers per key, in order: logs of an invocation of another namespace, or
/// of an invocation with no logs, are not stored as far as the key is concerned.
pub async fn logs_stored_answers_per_key_within_the_namespace(store: Store) {
    let ns = fresh_namespace();
    let other = fresh_namespace();
    let with = store
        .insert_invocation(&request(&ns, "worker"))
        .await
        .unwrap();
    let without = store
        .insert_invocation(&request(&ns, "worker"))
        .await
        .unwrap();
    let theirs = store
        .insert_invocation(&request(&other, "worker"))
        .await
        .unwrap();
    let logs = InvocationLogs {
        text: "hello\n".into(),
        truncated: false,
    };
    store.put_logs(&with.id, &logs).await.unwrap();
    store.put_logs(&theirs.id, &logs).await.unwrap();
    let stored = store
        .logs_stored(&[
            (ns.clone(), without.id),
            (ns.clone(), with.id),
            (ns.clone(), theirs.id),
            (other.clone(), theirs.id),
            (ns.clone(), InvocationId::new()),
        ])
        .await
        .unwrap();
    assert_eq!(stored, vec![false, true, false, true, false]);
    assert!(store.logs_stored(&[]).await.unwrap().is_empty());
}

/// `put_logs_batch` stores each invocation's logs; for a repeated id the last one wins.
pub async fn put_logs_batch_stores_each_last_wins(store: Store) {
    let ns = fresh_namespace();
    let a = accept(&store, &ns, "batch-logs").await;
    let b = accept(&store, &ns, "batch-logs").await;
    let c = accept(&store, &ns, "batch-logs").await;
    let logs = |text: &str, truncated| InvocationLogs {
        text: text.to_owned(),
        truncated,
    };
    store.put_logs(&c.id, &logs("old c", false)).await.unwrap();
    store.put_logs_batch(&[]).await.unwrap();
    store
        .put_logs_batch(&[
            (a.id, logs("first a", false)),
            (b.id, logs("only b", true)),
            (a.id, logs("second a", false)),
            (c.id, logs("new c", true)),
        ])
        .await
        .unwrap();
    assert_eq!(
        store.get_logs(&ns, &a.id).await.unwrap(),
        Some(logs("second a", false)),
        "the last logs of a repeated id win"
    );
    assert_eq!(
        store.get_logs(&ns, &b.id).await.unwrap(),
        Some(logs("only b", true))
    );
    assert_eq!(
        store.get_logs(&ns, &c.id).await.unwrap(),
        Some(logs("new c", true)),
        "put_logs_batch replaces"
    );
}

/// U+0000 in a payload, a result or logs never makes a write fail (PostgreSQL cannot store
/// it in text or jsonb; it may come back as U+FFFD there).
pub async fn nul_characters_do_not_fail_writes(store: Store) {
    let same = |got: &str, sent: &str| got == sent || got == sent.replace('\0', "\u{FFFD}");
    let ns = fresh_namespace();
    let mut req = request(&ns, "nul");
    req.payload = serde_json::json!({ "text": "a\u{0}b", "\u{0}key": 1 });
    let inv = store.insert_invocation(&req).await.unwrap();
    let mut done = with_status(&inv, InvocationStatus::Succeeded, 1);
    done.result = Some(serde_json::json!("out\u{0}put"));
    assert!(store.update_invocation(&done).await.unwrap());
    let got = store.get_invocation(&ns, &inv.id).await.unwrap().unwrap();
    let text = got.result.as_ref().and_then(|v| v.as_str()).unwrap();
    assert!(same(text, "out\u{0}put"), "result read back as {text:?}");

    let logs = InvocationLogs {
        text: "before\u{0}after".to_owned(),
        truncated: false,
    };
    store.put_logs(&inv.id, &logs).await.unwrap();
    store
        .put_logs_batch(&[(inv.id, logs.clone())])
        .await
        .unwrap();
    let got = store.get_logs(&ns, &inv.id).await.unwrap().unwrap();
    assert!(
        same(&got.text, &logs.text),
        "logs read back as {:?}",
        got.text
    );

    let mut queued = request(&ns, "nul");
    queued.created_at = distant_past();
    queued.payload = serde_json::json!(["\u{0}"]);
    store.insert_invocation(&queued).await.unwrap();
    let stale = store
        .stale_queued(queued.created_at + ChronoDuration::milliseconds(1), 1000)
        .await
        .unwrap();
    let back = stale.iter().find(|r| r.id == queued.id).unwrap();
    let text = back.payload[0].as_str().unwrap();
    assert!(same(text, "\u{0}"), "payload read back as {text:?}");
}

// ---- API keys ----

/// Keys: create, find by hash, conflicts on id or hash, upsert by id.
pub async fn api_keys(store: Store) {
    let ns = fresh_namespace();
    let key = api_key(&ns);
    store.create_api_key(&key).await.unwrap();
    assert_eq!(
        store.find_api_key(&key.key_hash).await.unwrap(),
        Some(key.clone())
    );
    assert_eq!(
        store
            .find_api_key(Checksum::of(b"no such key").as_str())
            .await
            .unwrap(),
        None
    );

    let mut same_id = api_key(&ns);
    same_id.id = key.id.clone();
    assert!(
        matches!(
            store.create_api_key(&same_id).await.unwrap_err(),
            StoreError::Conflict(_)
        ),
        "a duplicate key id must be Conflict"
    );
    let mut same_hash = api_key(&ns);
    same_hash.key_hash = key.key_hash.clone();
    assert!(
        matches!(
            store.create_api_key(&same_hash).await.unwrap_err(),
            StoreError::Conflict(_)
        ),
        "a duplicate key hash must be Conflict"
    );

    let mut revoked = key.clone();
    revoked.revoked_at = Some(now());
    revoked.role = Role::Invoker;
    revoked.expires_at = None;
    store.upsert_api_key(&revoked).await.unwrap();
    assert_eq!(
        store.find_api_key(&key.key_hash).await.unwrap(),
        Some(revoked),
        "upsert replaces the key with that id, and find returns revoked keys too"
    );

    let fresh = ApiKeyRecord {
        role: Role::Admin,
        ..api_key(&ns)
    };
    store.upsert_api_key(&fresh).await.unwrap();
    assert_eq!(
        store.find_api_key(&fresh.key_hash).await.unwrap(),
        Some(fresh),
        "upsert inserts a new key"
    );
}

// ---- dead letters ----

/// The dead letter of `req` after `attempts` deliveries, now.
pub fn dead_letter(
    req: &InvocationRequest,
    attempts: u32,
    last_error: Option<InvocationError>,
) -> DeadLetterRecord {
    DeadLetterRecord {
        id: req.id,
        namespace: req.function.namespace.clone(),
        function: req.function.name.clone(),
        version: req.function.version,
        attempts,
        last_error,
        request: req.clone(),
        dead_lettered_at: now(),
    }
}

/// Accepts a request and returns it (for dead-lettering).
async fn accepted_request(
    store: &Store,
    namespace: &Namespace,
    function: &str,
) -> InvocationRequest {
    let req = request(namespace, function);
    store.insert_invocation(&req).await.unwrap();
    req
}

async fn walk_dead_letters(
    store: &Store,
    ns: Option<&Namespace>,
    limit: u32,
) -> Vec<DeadLetterRecord> {
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..1000 {
        let page = store
            .list_dead_letters(ns, limit, cursor.as_deref())
            .await
            .unwrap();
        assert!(page.items.len() <= limit.max(1) as usize);
        seen.extend(page.items);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return seen,
        }
    }
    panic!("list_dead_letters pagination did not terminate");
}

/// A dead letter reads back whole (in its namespace and for admins), turns its record
/// `dead_lettered` (highest attempt, last error, completed when dead-lettered), is invisible
/// from other namespaces, and is deleted while the record stays `dead_lettered`.
pub async fn dead_letters_roundtrip_and_mark_the_record(store: Store) {
    let ns = fresh_namespace();
    let other = fresh_namespace();
    let req = accepted_request(&store, &ns, "flaky").await;
    // A node got to attempt 4 before the attempts ran out at 3 counted deliveries.
    let running = with_status(
        &InvocationResult::queued(&req),
        InvocationStatus::Running,
        4,
    );
    assert!(store.update_invocation(&running).await.unwrap());
    let error = InvocationError {
        kind: ErrorKind::Oom,
        message: "attempt 4 ran out of memory".to_owned(),
    };
    let dead = dead_letter(&req, 3, Some(error.clone()));
    assert!(
        store.put_dead_letter(&dead).await.unwrap(),
        "dead-lettering a running invocation applies"
    );

    assert_eq!(
        store.get_dead_letter(Some(&ns), &req.id).await.unwrap(),
        Some(dead.clone()),
        "the dead letter reads back whole in its namespace"
    );
    assert_eq!(
        store.get_dead_letter(None, &req.id).await.unwrap(),
        Some(dead.clone()),
        "admins read it without a namespace"
    );
    let page = store.list_dead_letters(Some(&ns), 10, None).await.unwrap();
    assert_eq!(page.items, vec![dead.clone()]);
    assert_eq!(page.next_cursor, None);
    assert!(
        walk_dead_letters(&store, None, 1000).await.contains(&dead),
        "the admin listing of all namespaces includes it"
    );

    let record = store.get_invocation(&ns, &req.id).await.unwrap().unwrap();
    let mut expected = running.clone();
    expected.status = InvocationStatus::DeadLettered;
    expected.attempt = 4;
    expected.error = Some(error);
    expected.completed_at = Some(dead.dead_lettered_at);
    assert_eq!(
        record, expected,
        "the record turns dead_lettered with the highest attempt and the last error"
    );
    let by_status = InvocationFilter {
        function: None,
        status: Some(InvocationStatus::DeadLettered),
    };
    let listed = store
        .list_invocations(&ns, &by_status, 10, None)
        .await
        .unwrap();
    assert_eq!(
        listed.items,
        vec![expected.clone()],
        "dead_lettered records are listed by status"
    );
    assert!(
        !store
            .update_invocation(&with_status(&running, InvocationStatus::Succeeded, 4))
            .await
            .unwrap(),
        "dead_lettered is terminal: the same attempt is fenced off"
    );

    assert_eq!(
        store.get_dead_letter(Some(&other), &req.id).await.unwrap(),
        None
    );
    assert!(store
        .list_dead_letters(Some(&other), 10, None)
        .await
        .unwrap()
        .items
        .is_empty());
    assert!(
        !store
            .delete_dead_letter(Some(&other), &req.id)
            .await
            .unwrap(),
        "another namespace cannot delete it"
    );

    assert!(store.delete_dead_letter(Some(&ns), &req.id).await.unwrap());
    assert_eq!(store.get_dead_letter(None, &req.id).await.unwrap(), None);
    assert!(
        !store.delete_dead_letter(None, &req.id).await.unwrap(),
        "deleted once"
    );
    assert_eq!(
        store.get_invocation(&ns, &req.id).await.unwrap(),
        Some(expected),
        "the record stays dead_lettered after its dead letter is deleted"
    );
    assert!(
        !store
            .delete_dead_letter(None, &InvocationId::new())
            .await
            .unwrap(),
        "an unknown id was not deleted"
    );
}

/// `list_dead_letters`: newest first, per namespace or all, every one once across pages; a
/// cursor the store did not issue is `InvalidCursor`.
pub async fn dead_letters_list_newest_first_with_cursors(store: Store) {
    let ns = fresh_namespace();
    let mut all = Vec::new();
    for i in 0..7u32 {
        let req = accepted_request(&store, &ns, if i % 2 == 0 { "even" } else { "odd" }).await;
        let dead = dead_letter(&req, i + 1, None);
        assert!(store.put_dead_letter(&dead).await.unwrap());
        all.push(dead);
    }
    // Another namespace's dead letters stay out of this one's listing.
    let other = fresh_namespace();
    let stranger = dead_letter(&accepted_request(&store, &other, "even").await, 1, None);
    assert!(store.put_dead_letter(&stranger).await.unwrap());
    all.sort_by_key(|d| std::cmp::Reverse(d.id));

    for limit in [1, 3, 7, 1000] {
        assert_eq!(
            walk_dead_letters(&store, Some(&ns), limit).await,
            all,
            "walking all pages (limit {limit}) yields every dead letter once, newest first"
        );
    }
    let everyone: Vec<_> = walk_dead_letters(&store, None, 4)
        .await
        .into_iter()
        .filter(|d| d.namespace == ns || d.namespace == other)
        .collect();
    assert!(
        everyone.windows(2).all(|w| w[0].id > w[1].id),
        "the admin listing is newest first too"
    );
    assert_eq!(
        everyone.len(),
        all.len() + 1,
        "the admin listing has every namespace's"
    );

    let one = store.list_dead_letters(Some(&ns), 0, None).await.unwrap();
    assert_eq!(one.items.len(), 1, "limit 0 is treated as 1");

    let invocation_cursor = store
        .list_invocations(&ns, &InvocationFilter::default(), 1, None)
        .await
        .unwrap()
        .next_cursor
        .unwrap();
    for bad in ["not a cursor!", "%%%", "AAAA", invocation_cursor.as_str()] {
        let err = store
            .list_dead_letters(Some(&ns), 10, Some(bad))
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::InvalidCursor),
            "cursor {bad:?} must be InvalidCursor, got {err:?}"
        );
    }
}

/// Putting a dead letter again replaces it (one dead letter per id, the record follows);
/// once it was deleted (replayed or dropped), a late duplicate does not bring it back.
pub async fn put_dead_letter_is_idempotent(store: Store) {
    let ns = fresh_namespace();
    let req = accepted_request(&store, &ns, "twice").await;
    let first = dead_letter(&req, 3, None);
    assert!(store.put_dead_letter(&first).await.unwrap());
    assert!(
        store.put_dead_letter(&first).await.unwrap(),
        "the same put again applies"
    );
    let second = DeadLetterRecord {
        attempts: 5,
        last_error: Some(InvocationError {
            kind: ErrorKind::HandlerError,
            message: "still broken".to_owned(),
        }),
        dead_lettered_at: now() + ChronoDuration::seconds(1),
        ..first.clone()
    };
    assert!(store.put_dead_letter(&second).await.unwrap());
    assert_eq!(
        store
            .list_dead_letters(Some(&ns), 10, None)
            .await
            .unwrap()
            .items,
        vec![second.clone()],
        "one dead letter per invocation, the last put wins"
    );
    let record = store.get_invocation(&ns, &req.id).await.unwrap().unwrap();
    assert_eq!(record.status, InvocationStatus::DeadLettered);
    assert_eq!(record.attempt, 5);
    assert_eq!(record.error, second.last_error);
    assert_eq!(record.completed_at, Some(second.dead_lettered_at));

    assert!(store.delete_dead_letter(Some(&ns), &req.id).await.unwrap());
    assert!(
        !store.put_dead_letter(&second).await.unwrap(),
        "a duplicate arriving after the dead letter was deleted is not applied"
    );
    assert_eq!(store.get_dead_letter(None, &req.id).await.unwrap(), None);
}

/// A terminal result that raced in wins: the put returns `false`, stores no dead letter and
/// leaves the record as it was.
pub async fn put_dead_letter_keeps_terminal_records(store: Store) {
    use InvocationStatus::{Failed, Succeeded, Timeout};
    let ns = fresh_namespace();
    for status in [Succeeded, Failed, Timeout] {
        let req = accepted_request(&store, &ns, "finished").await;
        let done = with_status(&InvocationResult::queued(&req), status, 2);
        assert!(store.update_invocation(&done).await.unwrap());
        assert!(
            !store
                .put_dead_letter(&dead_letter(&req, 3, None))
                .await
                .unwrap(),
            "a {status:?} record is kept"
        );
        assert_eq!(store.get_dead_letter(None, &req.id).await.unwrap(), None);
        assert_eq!(
            store.get_invocation(&ns, &req.id).await.unwrap(),
            Some(done)
        );
    }
    assert!(store
        .list_dead_letters(Some(&ns), 10, None)
        .await
        .unwrap()
        .items
        .is_empty());
}

/// A dead letter of an invocation with no record inserts the record (never lost), already
/// `dead_lettered`, with a generic error when no node reported one, and not re-publishable.
pub async fn put_dead_letter_inserts_absent_records(store: Store) {
    let ns = fresh_namespace();
    let mut req = request(&ns, "lost");
    req.created_at = distant_past();
    let dead = dead_letter(&req, 3, None);
    assert!(store.put_dead_letter(&dead).await.unwrap());
    assert_eq!(
        store.get_dead_letter(Some(&ns), &req.id).await.unwrap(),
        Some(dead.clone())
    );
    let record = store.get_invocation(&ns, &req.id).await.unwrap().unwrap();
    let mut expected = InvocationResult::queued(&req);
    expected.status = InvocationStatus::DeadLettered;
    expected.attempt = 3;
    expected.error = Some(InvocationError {
        kind: ErrorKind::Crashed,
        message: "attempts exhausted after 3 deliveries".to_owned(),
    });
    expected.completed_at = Some(dead.dead_lettered_at);
    assert_eq!(
        record, expected,
        "the absent record is inserted, dead_lettered"
    );
    let stale = store
        .stale_queued(req.created_at + ChronoDuration::seconds(1), 1000)
        .await
        .unwrap();
    assert!(
        stale.iter().all(|r| r.id != req.id),
        "a dead-lettered invocation is not re-published by the reconciler"
    );
    let err = store.insert_invocation(&req).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "the id is taken");
}

// ---- retention ----

/// `finished_after` lists finished records with their logs and dead letters in
/// `(updated_at, id)` order, resuming after a position; `import_finished` inserts what is
/// absent, applies what is newer (fenced like `update_invocation`), stores logs and dead
/// letters, is idempotent and refuses unfinished records.
pub async fn finished_after_exports_and_import_finished_applies(store: Store) {
    let ns = fresh_namespace();
    let start = (
        Utc::now() - ChronoDuration::milliseconds(1),
        InvocationId::parse("00000000-0000-0000-0000-000000000000").unwrap(),
    );
    let logs = InvocationLogs {
        text: "exported\n".to_owned(),
        truncated: true,
    };
    let done = accept(&store, &ns, "edge").await;
    let done = with_status(&done, InvocationStatus::Succeeded, 1);
    assert!(store.update_invocation(&done).await.unwrap());
    store.put_logs(&done.id, &logs).await.unwrap();
    let _still_queued = accept(&store, &ns, "edge").await;
    let dead_req = accepted_request(&store, &ns, "edge").await;
    let dead = dead_letter(&dead_req, 3, None);
    assert!(store.put_dead_letter(&dead).await.unwrap());
    let failed = accept(&store, &ns, "edge").await;
    let failed = with_status(&failed, InvocationStatus::Failed, 2);
    assert!(store.update_invocation(&failed).await.unwrap());

    let until = Utc::now() + ChronoDuration::seconds(1);
    let later = accept(&store, &ns, "edge").await;
    assert!(store
        .update_invocation(&with_status(&later, InvocationStatus::Succeeded, 1))
        .await
        .unwrap());
    assert!(
        store
            .finished_after(Some(start), Utc::now() - ChronoDuration::seconds(60), 1000)
            .await
            .unwrap()
            .is_empty(),
        "nothing updated before `before` is listed"
    );

    // Other cases write concurrently: walk everything after `start`, keep this namespace's.
    let mut mine = Vec::new();
    let mut after = Some(start);
    let mut positions = Vec::new();
    loop {
        let page = store.finished_after(after, until, 2).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some((last.updated_at, last.record.id));
        for item in page {
            positions.push((item.updated_at, item.record.id.to_string()));
            if item.record.namespace == ns {
                mine.push(item);
            }
        }
    }
    let mut sorted = positions.clone();
    sorted.sort();
    assert_eq!(
        positions, sorted,
        "finished invocations come in (updated_at, id) order"
    );
    sorted.dedup();
    assert_eq!(positions.len(), sorted.len(), "resuming never repeats one");
    let ids: Vec<InvocationId> = mine.iter().map(|i| i.record.id).collect();
    assert_eq!(
        ids,
        vec![done.id, dead_req.id, failed.id, later.id],
        "only finished records, in the order they finished"
    );
    assert_eq!(mine[0].record, done);
    assert_eq!(
        mine[0].logs,
        Some(logs.clone()),
        "logs come with their record"
    );
    assert_eq!(mine[0].dead_letter, None);
    assert_eq!(mine[1].record.status, InvocationStatus::DeadLettered);
    assert_eq!(mine[1].dead_letter, Some(dead.clone()), "and dead letters");
    assert_eq!(mine[2].logs, None);

    // Import into another namespace, as a hub that has never seen them.
    let hub_ns = fresh_namespace();
    let moved = |item: &super::FinishedInvocation| {
        let mut item = item.clone();
        item.record.id = InvocationId::new();
        item.record.namespace = hub_ns.clone();
        if let Some(dead) = &mut item.dead_letter {
            dead.id = item.record.id;
            dead.namespace = hub_ns.clone();
            dead.request.id = item.record.id;
            dead.request.function.namespace = hub_ns.clone();
        }
        item
    };
    let imported: Vec<_> = mine[..3].iter().map(moved).collect();
    assert_eq!(
        store.import_finished(&imported).await.unwrap(),
        vec![true, true, true],
        "absent records are inserted"
    );
    assert_eq!(
        store.import_finished(&imported).await.unwrap(),
        vec![false, false, false],
        "importing again changes nothing"
    );
    let record = store
        .get_invocation(&hub_ns, &imported[0].record.id)
        .await
        .unwrap();
    assert_eq!(
        record.as_ref(),
        Some(&imported[0].record),
        "stored as exported"
    );
    assert_eq!(
        store
            .get_logs(&hub_ns, &imported[0].record.id)
            .await
            .unwrap(),
        Some(logs.clone()),
        "with its logs"
    );
    assert_eq!(
        store
            .get_dead_letter(Some(&hub_ns), &imported[1].record.id)
            .await
            .unwrap()
            .map(|d| d.attempts),
        Some(3),
        "a dead letter is stored with its record"
    );
    assert_eq!(
        store
            .get_invocation(&hub_ns, &imported[1].record.id)
            .await
            .unwrap()
            .map(|r| r.status),
        Some(InvocationStatus::DeadLettered)
    );
    // A later attempt that finished differently replaces it; an older one does not.
    let mut newer = imported[2].clone();
    newer.record = with_status(&newer.record, InvocationStatus::Succeeded, 3);
    let mut older = imported[2].clone();
    older.record = with_status(&older.record, InvocationStatus::Timeout, 1);
    assert_eq!(
        store
            .import_finished(&[newer.clone(), older])
            .await
            .unwrap(),
        vec![true, false],
        "imports are fenced on the attempt"
    );
    assert_eq!(
        store
            .get_invocation(&hub_ns, &newer.record.id)
            .await
            .unwrap(),
        Some(newer.record.clone())
    );
    let mut unfinished = imported[0].clone();
    unfinished.record.id = InvocationId::new();
    unfinished.record.status = InvocationStatus::Running;
    assert!(
        matches!(
            store.import_finished(&[unfinished]).await,
            Err(StoreError::Conflict(_))
        ),
        "only finished records are imported"
    );
}

/// `prune_invocations` removes finished records (and their logs) last updated before the
/// cut-off, oldest first, up to the limit, in every namespace; queued and running records,
/// records finished after the cut-off, and dead letters stay. `store_size` counts records.
/// Needs the database to itself.
pub async fn prune_removes_only_old_finished_invocations(store: Store) {
    let (ns, other) = (fresh_namespace(), fresh_namespace());
    let pause = || tokio::time::sleep(std::time::Duration::from_millis(5));
    let logs = InvocationLogs {
        text: "old\n".to_owned(),
        truncated: false,
    };
    let first = accept(&store, &ns, "old").await;
    assert!(store
        .update_invocation(&with_status(&first, InvocationStatus::Succeeded, 1))
        .await
        .unwrap());
    store.put_logs(&first.id, &logs).await.unwrap();
    pause().await;
    let second = accept(&store, &other, "old").await;
    assert!(store
        .update_invocation(&with_status(&second, InvocationStatus::Failed, 1))
        .await
        .unwrap());
    store.put_logs(&second.id, &logs).await.unwrap();
    let dead = accepted_request(&store, &ns, "old").await;
    assert!(store
        .put_dead_letter(&dead_letter(&dead, 3, None))
        .await
        .unwrap());
    let queued = accept(&store, &ns, "live").await;
    let running = accept(&store, &ns, "live").await;
    assert!(store
        .update_invocation(&with_status(&running, InvocationStatus::Running, 1))
        .await
        .unwrap());
    pause().await;
    let cutoff = Utc::now();
    pause().await;
    let recent = accept(&store, &ns, "recent").await;
    assert!(store
        .update_invocation(&with_status(&recent, InvocationStatus::Succeeded, 1))
        .await
        .unwrap());
    store.put_logs(&recent.id, &logs).await.unwrap();
    let size = store.store_size().await.unwrap();
    assert!(size.bytes > 0, "{size:?}");

    assert_eq!(store.prune_invocations(cutoff, 1).await.unwrap(), 1);
    assert_eq!(
        store.get_invocation(&ns, &first.id).await.unwrap(),
        None,
        "the oldest goes first"
    );
    assert_eq!(store.get_logs(&ns, &first.id).await.unwrap(), None);
    assert!(store
        .get_invocation(&other, &second.id)
        .await
        .unwrap()
        .is_some());
    assert_eq!(store.prune_invocations(cutoff, 1000).await.unwrap(), 2);
    assert_eq!(store.prune_invocations(cutoff, 1000).await.unwrap(), 0);
    assert_eq!(
        store.get_invocation(&other, &second.id).await.unwrap(),
        None
    );
    assert_eq!(store.get_logs(&other, &second.id).await.unwrap(), None);
    assert_eq!(store.get_invocation(&ns, &dead.id).await.unwrap(), None);
    assert!(
        store
            .get_dead_letter(None, &dead.id)
            .await
            .unwrap()
            .is_some(),
        "dead letters are kept"
    );
    for live in [&queued, &running, &recent] {
        assert!(
            store.get_invocation(&ns, &live.id).await.unwrap().is_some(),
            "queued, running and recent records stay"
        );
    }
    assert_eq!(store.get_logs(&ns, &recent.id).await.unwrap(), Some(logs));
}

/// A request of `function` whose function has a NATS and a webhook destination on success
/// and a webhook on failure, with its deliveries asked for.
fn request_with_destinations(namespace: &Namespace, function: &str) -> InvocationRequest {
    use fnmesh_core::destination::{Destination, Destinations, Webhook};
    let mut req = request(namespace, function);
    let webhook = |path: &str| Webhook {
        url: format!("https://hooks.example.com/{path}"),
        secret: "HOOK_KEY".to_owned(),
    };
    req.function.config.destinations = Some(Destinations {
        on_success: Some(Destination {
            nats: Some("orders.done".to_owned()),
            webhook: Some(webhook("ok")),
        }),
        on_failure: Some(Destination {
            nats: None,
            webhook: Some(webhook("failed")),
        }),
    });
    req.notify_destinations = true;
    req
}

/// Claims every due delivery and keeps those of `ns`.
async fn claim_of(store: &Store, ns: &Namespace) -> Vec<super::ClaimedDelivery> {
    let now = Utc::now();
    let mut claimed = store
        .claim_deliveries(now, now + ChronoDuration::seconds(60), 1000)
        .await
        .unwrap();
    claimed.retain(|c| &c.namespace == ns);
    claimed.sort_by(|a, b| a.id.cmp(&b.id));
    claimed
}

/// Deliveries are written with the `queued` record by every insert path (only when the
/// request asks), wait until the record finishes, then are due or skipped by how it ended
/// (whichever path finished it), are claimed once per lease and settle fenced on their try.
pub async fn destination_deliveries_follow_their_invocation(store: Store) {
    use super::Settle;
    use fnmesh_core::destination::{DeliveryCondition, DeliveryState, DeliveryTarget};
    let ns = fresh_namespace();
    let states = |list: &[fnmesh_core::destination::DeliveryStatus]| {
        list.iter().map(|d| (d.on, d.state)).collect::<Vec<_>>()
    };
    // Three insert paths.
    let single = request_with_destinations(&ns, "dest-a");
    store.insert_invocation(&single).await.unwrap();
    let batched = request_with_destinations(&ns, "dest-b");
    let plain = request(&ns, "dest-b");
    let mut unasked = request_with_destinations(&ns, "dest-b");
    unasked.notify_destinations = false;
    let written = store
        .write_invocations(&[&batched, &plain, &unasked], &[])
        .await
        .unwrap();
    assert_eq!(written.inserted, [true, true, true]);
    let keyed = request_with_destinations(&ns, "dest-c");
    let key = IdempotencyKey::parse("dest-key").unwrap();
    assert_eq!(
        store
            .insert_keyed_invocation(&keyed, &key, "fp", Utc::now() - ChronoDuration::hours(24))
            .await
            .unwrap(),
        Keyed::Inserted
    );
    let dead = request_with_destinations(&ns, "dest-d");
    store.insert_invocation(&dead).await.unwrap();

    let waiting = store.deliveries_of(&ns, &single.id).await.unwrap();
    assert_eq!(
        states(&waiting),
        [
            (DeliveryCondition::Success, DeliveryState::Waiting),
            (DeliveryCondition::Success, DeliveryState::Waiting),
            (DeliveryCondition::Failure, DeliveryState::Waiting),
        ],
        "one delivery per destination, in order, waiting"
    );
    assert_eq!(
        waiting[0].target,
        DeliveryTarget::Nats {
            subject: "orders.done".to_owned()
        }
    );
    assert!(waiting
        .iter()
        .all(|d| d.attempts == 0 && d.next_attempt_at.is_none()));
    for req in [&batched, &keyed] {
        assert_eq!(store.deliveries_of(&ns, &req.id).await.unwrap().len(), 3);
    }
    for req in [&plain, &unasked] {
        assert!(
            store.deliveries_of(&ns, &req.id).await.unwrap().is_empty(),
            "no deliveries unless the request asks and the function has destinations"
        );
    }
    assert!(
        store
            .deliveries_of(&fresh_namespace(), &single.id)
            .await
            .unwrap()
            .is_empty(),
        "deliveries are scoped by namespace"
    );
    assert!(
        claim_of(&store, &ns).await.is_empty(),
        "nothing is due before it finishes"
    );
    let (record, deliveries) = store
        .invocation_with_deliveries(&ns, &single.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.id, single.id);
    assert_eq!(deliveries.len(), 3);
    let (_, none) = store
        .invocation_with_deliveries(&ns, &plain.id)
        .await
        .unwrap()
        .unwrap();
    assert!(none.is_empty());
    assert!(store
        .invocation_with_deliveries(&fresh_namespace(), &single.id)
        .await
        .unwrap()
        .is_none());

    // A start changes nothing; a success (fenced update) makes the success deliveries due.
    let queued = InvocationResult::queued(&single);
    assert!(store
        .update_invocation(&with_status(&queued, InvocationStatus::Running, 1))
        .await
        .unwrap());
    assert_eq!(
        states(&store.deliveries_of(&ns, &single.id).await.unwrap())[0].1,
        DeliveryState::Waiting
    );
    assert!(store
        .update_invocation(&with_status(&queued, InvocationStatus::Succeeded, 1))
        .await
        .unwrap());
    assert_eq!(
        states(&store.deliveries_of(&ns, &single.id).await.unwrap()),
        [
            (DeliveryCondition::Success, DeliveryState::Pending),
            (DeliveryCondition::Success, DeliveryState::Pending),
            (DeliveryCondition::Failure, DeliveryState::Skipped),
        ]
    );
    // A failure through the recorder's batch write; a cancel; a dead letter.
    let failed = with_status(
        &InvocationResult::queued(&batched),
        InvocationStatus::Failed,
        1,
    );
    assert_eq!(
        store
            .write_invocations(&[], &[(&failed, None)])
            .await
            .unwrap()
            .applied,
        [true]
    );
    assert_eq!(
        states(&store.deliveries_of(&ns, &batched.id).await.unwrap()),
        [
            (DeliveryCondition::Success, DeliveryState::Skipped),
            (DeliveryCondition::Success, DeliveryState::Skipped),
            (DeliveryCondition::Failure, DeliveryState::Pending),
        ]
    );
    store
        .cancel_invocation(&ns, &keyed.id, "cancelled")
        .await
        .unwrap()
        .unwrap();
    assert!(
        store
            .deliveries_of(&ns, &keyed.id)
            .await
            .unwrap()
            .iter()
            .all(|d| d.state == DeliveryState::Skipped),
        "a cancelled invocation is sent nowhere"
    );
    assert!(store
        .put_dead_letter(&dead_letter(&dead, 3, None))
        .await
        .unwrap());
    assert_eq!(
        states(&store.deliveries_of(&ns, &dead.id).await.unwrap())[2],
        (DeliveryCondition::Failure, DeliveryState::Pending)
    );

    // Claimed once per lease.
    let claimed = claim_of(&store, &ns).await;
    let mut expected: Vec<(InvocationId, DeliveryCondition)> = vec![
        (single.id, DeliveryCondition::Success),
        (single.id, DeliveryCondition::Success),
        (batched.id, DeliveryCondition::Failure),
        (dead.id, DeliveryCondition::Failure),
    ];
    let mut got: Vec<(InvocationId, DeliveryCondition)> =
        claimed.iter().map(|c| (c.invocation_id, c.on)).collect();
    expected.sort();
    got.sort();
    assert_eq!(got, expected, "exactly the due deliveries are claimed");
    assert!(claimed.iter().all(|c| c.attempt == 1));
    assert!(
        claim_of(&store, &ns).await.is_empty(),
        "a claimed delivery is leased"
    );

    // Settled, fenced on the try.
    let nats = claimed
        .iter()
        .find(|c| c.invocation_id == single.id && matches!(c.target, DeliveryTarget::Nats { .. }))
        .unwrap();
    let hook = claimed
        .iter()
        .find(|c| {
            c.invocation_id == single.id && matches!(c.target, DeliveryTarget::Webhook { .. })
        })
        .unwrap();
    let failing = claimed
        .iter()
        .find(|c| c.invocation_id == batched.id)
        .unwrap();
    let now = Utc::now();
    assert!(
        !store
            .settle_delivery(&nats.id, 2, &Settle::Delivered, now)
            .await
            .unwrap(),
        "another try's settle is fenced off"
    );
    assert!(store
        .settle_delivery(&nats.id, 1, &Settle::Delivered, now)
        .await
        .unwrap());
    let retry = Settle::Retry {
        at: now - ChronoDuration::seconds(1),
        error: "HTTP 503".to_owned(),
    };
    assert!(store
        .settle_delivery(&hook.id, 1, &retry, now)
        .await
        .unwrap());
    let gave_up = Settle::Failed {
        error: "HTTP 404".to_owned(),
    };
    assert!(store
        .settle_delivery(&failing.id, 1, &gave_up, now)
        .await
        .unwrap());
    assert!(
        !store
            .settle_delivery(&failing.id, 1, &Settle::Delivered, now)
            .await
            .unwrap(),
        "a settled delivery stays settled"
    );
    let shown = store.deliveries_of(&ns, &single.id).await.unwrap();
    let shown_nats = shown.iter().find(|d| d.id == nats.id).unwrap();
    assert_eq!(shown_nats.state, DeliveryState::Delivered);
    assert!(shown_nats.delivered_at.is_some());
    let shown_hook = shown.iter().find(|d| d.id == hook.id).unwrap();
    assert_eq!(
        (
            shown_hook.state,
            shown_hook.attempts,
            shown_hook.last_error.as_deref()
        ),
        (DeliveryState::Pending, 1, Some("HTTP 503"))
    );
    assert!(shown_hook.next_attempt_at.is_some());
    let shown_failed = store.deliveries_of(&ns, &batched.id).await.unwrap();
    assert_eq!(
        (shown_failed[2].state, shown_failed[2].last_error.as_deref()),
        (DeliveryState::Failed, Some("HTTP 404"))
    );
    // A retry comes due again, as the next try.
    let again = claim_of(&store, &ns).await;
    assert_eq!(again.len(), 1);
    assert_eq!(
        (again[0].id.as_str(), again[0].attempt),
        (hook.id.as_str(), 2)
    );
    assert!(store
        .settle_delivery(&hook.id, 2, &Settle::Delivered, Utc::now())
        .await
        .unwrap());
    let delivered = store.deliveries_of(&ns, &single.id).await.unwrap();
    let delivered = delivered.iter().find(|d| d.id == hook.id).unwrap();
    assert_eq!(
        (
            delivered.state,
            delivered.attempts,
            delivered.last_error.as_deref()
        ),
        (DeliveryState::Delivered, 2, Some("HTTP 503")),
        "a delivered delivery keeps the error of the try before"
    );
    assert!(delivered.next_attempt_at.is_none());
}
