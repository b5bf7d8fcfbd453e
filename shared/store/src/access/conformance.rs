//! Conformance cases of [`AccessStore`](super::AccessStore), run by
//! [`crate::conformance::run_all`] against every metadata store.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{DateTime, Duration as ChronoDuration, SubsecRound, Utc};

use super::{NamespaceQuota, NamespaceUsage, RefreshTokenRecord};
use crate::conformance::{fresh_namespace, Store};
use crate::{ApiKeyRecord, Role, StoreError};
use fnmesh_core::checksum::Checksum;
use fnmesh_core::names::{FunctionName, Namespace};

/// Runs every access case.
pub async fn run_all(store: Store) {
    api_keys_list_get_and_revoke(store.clone()).await;
    api_key_grants_roundtrip(store.clone()).await;
    api_key_lineage_roundtrip(store.clone()).await;
    api_key_tree_revocation(store.clone()).await;
    refresh_tokens_rotate_once(store.clone()).await;
    refresh_family_revocation(store.clone()).await;
    namespace_quotas_roundtrip(store.clone()).await;
    namespace_usage_counts_latest_versions(store).await;
}

fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(3)
}

fn key(namespace: &Namespace, id: &str) -> ApiKeyRecord {
    ApiKeyRecord {
        id: id.to_owned(),
        name: format!("access {id}"),
        key_hash: Checksum::of(format!("{id}-{}", rand::random::<u64>()).as_bytes()).to_string(),
        role: Role::Invoker,
        namespace: namespace.clone(),
        created_at: now(),
        expires_at: None,
        revoked_at: None,
        functions: None,
        parent_id: None,
        root_id: None,
    }
}

fn refresh(family: &str, key_id: &str) -> RefreshTokenRecord {
    RefreshTokenRecord {
        token_hash: Checksum::of(&rand::random::<u128>().to_le_bytes()).to_string(),
        family_id: family.to_owned(),
        key_id: key_id.to_owned(),
        created_at: now(),
        expires_at: now() + ChronoDuration::hours(1),
        used_at: None,
        revoked_at: None,
    }
}

/// Keys are listed by namespace and id with cursors, found by id, and revoked once.
pub async fn api_keys_list_get_and_revoke(store: Store) {
    let a = fresh_namespace();
    let b = fresh_namespace();
    let suffix = format!("{:016x}", rand::random::<u64>());
    let ids: Vec<String> = (0..5).map(|i| format!("key_{suffix}{i}")).collect();
    for id in &ids {
        store.create_api_key(&key(&a, id)).await.unwrap();
    }
    let other = key(&b, &format!("key_{suffix}b"));
    store.create_api_key(&other).await.unwrap();

    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .list_api_keys(Some(&a), 2, cursor.as_deref())
            .await
            .unwrap();
        assert!(page.items.len() <= 2);
        seen.extend(page.items.into_iter().map(|k| k.id));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, ids, "keys of a namespace are listed by id, each once");

    let all = store.list_api_keys(None, 1000, None).await.unwrap();
    assert!(all.items.iter().any(|k| k.id == other.id));
    assert!(matches!(
        store.list_api_keys(None, 10, Some("bogus")).await,
        Err(StoreError::InvalidCursor)
    ));

    assert_eq!(
        store.get_api_key(&other.id).await.unwrap(),
        Some(other.clone())
    );
    assert_eq!(store.get_api_key("key_absent").await.unwrap(), None);

    let at = now();
    assert!(store.revoke_api_key(&other.id, at).await.unwrap());
    assert!(
        !store.revoke_api_key(&other.id, now()).await.unwrap(),
        "a second revocation reports false"
    );
    assert!(!store.revoke_api_key("key_absent", now()).await.unwrap());
    let revoked = store.get_api_key(&other.id).await.unwrap().unwrap();
    assert_eq!(revoked.revoked_at, Some(at));
}

/// A key's per-function grants are stored and read back.
pub async fn api_key_grants_roundtrip(store: Store) {
    let ns = fresh_namespace();
    let mut granted = key(&ns, &format!("key_{:016x}", rand::random::<u64>()));
    granted.functions = Some(vec![
        FunctionName::parse("resize").unwrap(),
        FunctionName::parse("thumb").unwrap(),
    ]);
    store.create_api_key(&granted).await.unwrap();
    assert_eq!(
        store.find_api_key(&granted.key_hash).await.unwrap(),
        Some(granted.clone())
    );
    assert_eq!(store.get_api_key(&granted.id).await.unwrap(), Some(granted));
}

/// A minted key's parent and lineage root are stored, read back and replaced by an upsert; a
/// key without a root is its own.
pub async fn api_key_lineage_roundtrip(store: Store) {
    let ns = fresh_namespace();
    let suffix = format!("{:016x}", rand::random::<u64>());
    let root = key(&ns, &format!("key_{suffix}r"));
    assert_eq!(root.lineage_root(), root.id);
    let mut child = key(&ns, &format!("key_{suffix}c"));
    child.parent_id = Some(root.id.clone());
    child.root_id = Some(root.id.clone());
    for k in [&root, &child] {
        store.create_api_key(k).await.unwrap();
    }
    let got = store.get_api_key(&child.id).await.unwrap().unwrap();
    assert_eq!(got, child);
    assert_eq!(got.lineage_root(), root.id);
    assert_eq!(
        store.find_api_key(&child.key_hash).await.unwrap(),
        Some(child.clone())
    );
    let mut moved = child.clone();
    moved.parent_id = None;
    moved.root_id = None;
    store.upsert_api_key(&moved).await.unwrap();
    assert_eq!(store.get_api_key(&child.id).await.unwrap(), Some(moved));
}

/// Revoking a key's tree revokes it and every descendant (across namespaces, through
/// already revoked keys) in one step, and nothing outside the tree.
pub async fn api_key_tree_revocation(store: Store) {
    let ns = fresh_namespace();
    let other_ns = fresh_namespace();
    let suffix = format!("{:016x}", rand::random::<u64>());
    let id = |s: &str| format!("key_{suffix}{s}");
    let minted = |namespace: &Namespace, name: &str, parent: &ApiKeyRecord| {
        let mut k = key(namespace, &id(name));
        k.parent_id = Some(parent.id.clone());
        k.root_id = Some(parent.lineage_root().to_owned());
        k
    };
    let root = key(&ns, &id("root"));
    let a = minted(&ns, "a", &root);
    let mut b = minted(&ns, "b", &root);
    b.revoked_at = Some(now() - ChronoDuration::minutes(1));
    let a1 = minted(&ns, "a1", &a);
    let b1 = minted(&other_ns, "b1", &b);
    let a1x = minted(&ns, "a1x", &a1);
    let sibling = key(&ns, &id("sibling"));
    let cousin = minted(&ns, "cousin", &sibling);
    for k in [&root, &a, &b, &a1, &b1, &a1x, &sibling, &cousin] {
        store.create_api_key(k).await.unwrap();
    }

    // A subtree first: the parent and the rest stay live.
    let at = now();
    assert_eq!(
        store.revoke_api_key_tree(&a1.id, at).await.unwrap(),
        vec![a1.id.clone(), a1x.id.clone()]
    );
    for k in [&a1, &a1x] {
        let got = store.get_api_key(&k.id).await.unwrap().unwrap();
        assert_eq!(got.revoked_at, Some(at), "{} is revoked", k.id);
    }
    assert_eq!(
        store.get_api_key(&a.id).await.unwrap().unwrap().revoked_at,
        None,
        "the parent of a revoked subtree stays live"
    );

    let at2 = now() + ChronoDuration::milliseconds(1);
    let mut expected = vec![root.id.clone(), a.id.clone(), b1.id.clone()];
    expected.sort();
    assert_eq!(
        store.revoke_api_key_tree(&root.id, at2).await.unwrap(),
        expected,
        "the whole tree below the root, through a revoked key and into another namespace; \
         keys revoked before keep their time"
    );
    assert_eq!(
        store.get_api_key(&b.id).await.unwrap().unwrap().revoked_at,
        b.revoked_at
    );
    assert_eq!(
        store.get_api_key(&a1.id).await.unwrap().unwrap().revoked_at,
        Some(at)
    );
    for k in [&sibling, &cousin] {
        assert_eq!(
            store.get_api_key(&k.id).await.unwrap().unwrap().revoked_at,
            None,
            "{} is outside the tree",
            k.id
        );
    }
    assert!(store
        .revoke_api_key_tree(&root.id, now())
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .revoke_api_key_tree("key_absent", now())
        .await
        .unwrap()
        .is_empty());
}

/// A token rotates once; a second rotation of it (or a concurrent one) fails.
pub async fn refresh_tokens_rotate_once(store: Store) {
    let family = format!("fam-{:016x}", rand::random::<u64>());
    let first = refresh(&family, "key_x");
    store.insert_refresh_token(&first).await.unwrap();
    assert!(matches!(
        store.insert_refresh_token(&first).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        store.find_refresh_token(&first.token_hash).await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(store.find_refresh_token("absent").await.unwrap(), None);

    let second = refresh(&family, "key_x");
    let at = now();
    assert!(store
        .rotate_refresh_token(&first.token_hash, &second, at)
        .await
        .unwrap());
    let used = store
        .find_refresh_token(&first.token_hash)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(used.used_at, Some(at));
    assert_eq!(
        store.find_refresh_token(&second.token_hash).await.unwrap(),
        Some(second.clone())
    );

    let third = refresh(&family, "key_x");
    assert!(
        !store
            .rotate_refresh_token(&first.token_hash, &third, now())
            .await
            .unwrap(),
        "a used token does not rotate again"
    );
    assert_eq!(
        store.find_refresh_token(&third.token_hash).await.unwrap(),
        None,
        "a refused rotation stores nothing"
    );
}

/// Revoking a family revokes all its tokens and no other family's; revoked tokens do not
/// rotate.
pub async fn refresh_family_revocation(store: Store) {
    let family = format!("fam-{:016x}", rand::random::<u64>());
    let other_family = format!("fam-{:016x}", rand::random::<u64>());
    let a = refresh(&family, "key_y");
    let b = refresh(&family, "key_y");
    let c = refresh(&other_family, "key_y");
    for t in [&a, &b, &c] {
        store.insert_refresh_token(t).await.unwrap();
    }
    assert_eq!(
        store.revoke_refresh_family(&family, now()).await.unwrap(),
        2
    );
    assert_eq!(
        store.revoke_refresh_family(&family, now()).await.unwrap(),
        0
    );
    for t in [&a, &b] {
        let stored = store
            .find_refresh_token(&t.token_hash)
            .await
            .unwrap()
            .unwrap();
        assert!(stored.revoked_at.is_some());
    }
    let untouched = store
        .find_refresh_token(&c.token_hash)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(untouched.revoked_at, None);
    let next = refresh(&family, "key_y");
    assert!(!store
        .rotate_refresh_token(&b.token_hash, &next, now())
        .await
        .unwrap());
}

/// A family started when its first token was made, however often it rotated since.
pub async fn refresh_family_start(store: Store) {
    let family = format!("fam-{:016x}", rand::random::<u64>());
    assert_eq!(store.refresh_family_started(&family).await.unwrap(), None);
    let mut first = refresh(&family, "key_s");
    first.created_at = now() - ChronoDuration::days(3);
    store.insert_refresh_token(&first).await.unwrap();
    let next = refresh(&family, "key_s");
    assert!(store
        .rotate_refresh_token(&first.token_hash, &next, now())
        .await
        .unwrap());
    let started = store
        .refresh_family_started(&family)
        .await
        .unwrap()
        .unwrap();
    assert!(
        (started - first.created_at).num_milliseconds().abs() < 1,
        "{started} vs {}",
        first.created_at
    );
    let other = format!("fam-{:016x}", rand::random::<u64>());
    store
        .insert_refresh_token(&refresh(&other, "key_s"))
        .await
        .unwrap();
    assert!(store.refresh_family_started(&other).await.unwrap().unwrap() > started);
}

/// Quotas are stored, replaced and listed.
pub async fn namespace_quotas_roundtrip(store: Store) {
    let ns = fresh_namespace();
    assert_eq!(store.get_namespace_quota(&ns).await.unwrap(), None);
    let quota = NamespaceQuota {
        namespace: ns.clone(),
        max_functions: Some(3),
        max_memory_mb: None,
        max_concurrency: Some(10),
        updated_at: now(),
    };
    store.put_namespace_quota(&quota).await.unwrap();
    assert_eq!(
        store.get_namespace_quota(&ns).await.unwrap(),
        Some(quota.clone())
    );
    let replaced = NamespaceQuota {
        max_functions: None,
        max_memory_mb: Some(256),
        updated_at: now(),
        ..quota
    };
    store.put_namespace_quota(&replaced).await.unwrap();
    assert_eq!(
        store.get_namespace_quota(&ns).await.unwrap(),
        Some(replaced.clone())
    );
    let all = store.list_namespace_quotas().await.unwrap();
    assert!(all.contains(&replaced));
}

/// Usage counts functions and sums the latest versions' `max_concurrency`, optionally
/// leaving one function out.
pub async fn namespace_usage_counts_latest_versions(store: Store) {
    let ns = fresh_namespace();
    assert_eq!(
        store.namespace_usage(&ns, None).await.unwrap(),
        NamespaceUsage::default()
    );
    let mut f = crate::conformance::function(&ns, "one");
    f.config.max_concurrency = 4;
    store.create_function(&f).await.unwrap();
    let mut v2 = f.clone();
    v2.version = 2;
    v2.config.max_concurrency = 6;
    store.add_version(&v2).await.unwrap();
    let mut g = crate::conformance::function(&ns, "two");
    g.config.max_concurrency = 3;
    store.create_function(&g).await.unwrap();
    assert_eq!(
        store.namespace_usage(&ns, None).await.unwrap(),
        NamespaceUsage {
            functions: 2,
            max_concurrency: 9
        }
    );
    assert_eq!(
        store
            .namespace_usage(&ns, Some(&FunctionName::parse("one").unwrap()))
            .await
            .unwrap(),
        NamespaceUsage {
            functions: 1,
            max_concurrency: 3
        }
    );
}
