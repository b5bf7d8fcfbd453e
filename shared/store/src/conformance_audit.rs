//! Conformance cases of the audit log and of function secrets, part of
//! [`super::conformance::run_all`]. Same rules as there: fresh namespaces, panics that name
//! the behaviour.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{Duration as ChronoDuration, SubsecRound, Utc};

use super::conformance::{fresh_namespace, function, Store};
use super::{AuditEntry, AuditFilter, AuditOutcome, StoreError};
use fnmesh_core::names::FunctionName;
use fnmesh_core::registry::{RegistryCredential, RegistryHost};
use fnmesh_core::secrets::{Keyring, SecretName};

/// Runs every case of this module.
pub async fn run_all(store: Store) {
    audit_roundtrip_and_filters(store.clone()).await;
    audit_pages_newest_first(store.clone()).await;
    secrets_roundtrip_sealed(store.clone()).await;
    secrets_need_their_function_and_go_with_it(store.clone()).await;
    registry_credentials_roundtrip_sealed_per_namespace(store).await;
}

/// Appended entries come back whole, and every filter narrows.
pub async fn audit_roundtrip_and_filters(store: Store) {
    let ns = fresh_namespace();
    let actor = format!("key-{}", rand::random::<u32>());
    let ok = AuditEntry::new(
        &actor,
        Some(ns.clone()),
        "function.create",
        Some("function/a"),
        201,
        Some("127.0.0.1"),
    );
    let denied = AuditEntry::new(
        &actor,
        Some(ns.clone()),
        "function.delete",
        Some("function/a"),
        403,
        None,
    );
    let mut anonymous = AuditEntry::new(
        &format!("anon-{}", rand::random::<u32>()),
        None,
        "auth.failure",
        None,
        401,
        Some("::1"),
    );
    // Aggregated authentication failures carry how many calls they stand for.
    anonymous.count = 7;
    for e in [&ok, &denied, &anonymous] {
        store.append_audit(e).await.expect("append_audit");
    }
    assert!(
        matches!(store.append_audit(&ok).await, Err(StoreError::Conflict(_))),
        "an audit id is unique"
    );

    let by_actor = AuditFilter {
        actor: Some(actor.clone()),
        ..AuditFilter::default()
    };
    let page = store.list_audit(&by_actor, 10, None).await.unwrap();
    let round = |mut e: AuditEntry| {
        e.at = e.at.trunc_subsecs(3);
        e
    };
    assert_eq!(
        page.items.into_iter().map(round).collect::<Vec<_>>(),
        vec![round(denied.clone()), round(ok.clone())],
        "entries of an actor, newest first, round-trip"
    );

    let by_anonymous = AuditFilter {
        actor: Some(anonymous.actor.clone()),
        ..AuditFilter::default()
    };
    let page = store.list_audit(&by_anonymous, 10, None).await.unwrap();
    assert_eq!(
        page.items.into_iter().map(round).collect::<Vec<_>>(),
        vec![round(anonymous.clone())],
        "an aggregated entry round-trips with its count"
    );
    assert_eq!(ok.count, 1, "a new entry stands for one call");

    let denied_only = AuditFilter {
        namespace: Some(ns.clone()),
        outcome: Some(AuditOutcome::Denied),
        ..AuditFilter::default()
    };
    let page = store.list_audit(&denied_only, 10, None).await.unwrap();
    assert_eq!(
        page.items.iter().map(|e| &e.id).collect::<Vec<_>>(),
        vec![&denied.id],
        "namespace + outcome filter"
    );

    let by_action = AuditFilter {
        namespace: Some(ns.clone()),
        action: Some("function.create".into()),
        ..AuditFilter::default()
    };
    let page = store.list_audit(&by_action, 10, None).await.unwrap();
    assert_eq!(page.items.len(), 1, "action filter");
    assert_eq!(page.items[0].source.as_deref(), Some("127.0.0.1"));

    let future = AuditFilter {
        actor: Some(actor.clone()),
        since: Some(Utc::now() + ChronoDuration::hours(1)),
        ..AuditFilter::default()
    };
    assert!(
        store
            .list_audit(&future, 10, None)
            .await
            .unwrap()
            .items
            .is_empty(),
        "since excludes older entries"
    );
    let past = AuditFilter {
        since: Some(Utc::now() - ChronoDuration::hours(1)),
        ..by_actor
    };
    assert_eq!(
        store.list_audit(&past, 10, None).await.unwrap().items.len(),
        2
    );

    let anon = AuditFilter {
        actor: Some(anonymous.actor.clone()),
        ..AuditFilter::default()
    };
    let page = store.list_audit(&anon, 10, None).await.unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].namespace, None, "an entry without namespace");
    assert_eq!(page.items[0].status, 401);
}

/// Pages walk every entry once, newest first; foreign cursors are refused.
pub async fn audit_pages_newest_first(store: Store) {
    let actor = format!("pager-{}", rand::random::<u32>());
    let mut ids = Vec::new();
    for i in 0..5 {
        let e = AuditEntry::new(
            &actor,
            None,
            "key.create",
            Some(&format!("key/{i}")),
            201,
            None,
        );
        store.append_audit(&e).await.unwrap();
        ids.push(e.id);
    }
    ids.reverse();
    let filter = AuditFilter {
        actor: Some(actor),
        ..AuditFilter::default()
    };
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .list_audit(&filter, 2, cursor.as_deref())
            .await
            .unwrap();
        seen.extend(page.items.into_iter().map(|e| e.id));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, ids, "pages walk every entry once, newest first");
    assert!(matches!(
        store.list_audit(&filter, 2, Some("bm90LWEtY3Vyc29y")).await,
        Err(StoreError::InvalidCursor)
    ));
}

/// Secrets are stored sealed and come back byte for byte; listings show names only.
pub async fn secrets_roundtrip_sealed(store: Store) {
    let ns = fresh_namespace();
    let f = function(&ns, "with-secrets");
    store.create_function(&f).await.unwrap();
    let ring = Keyring::new("k1", &[9; 32]).unwrap();
    let token = SecretName::parse("TOKEN").unwrap();
    let db = SecretName::parse("DB_PASSWORD").unwrap();
    let sealed = ring.seal_secret(&ns, &f.name, &token, "t0ken").unwrap();
    store
        .put_secret(&ns, &f.name, &token, &sealed)
        .await
        .unwrap();
    let db_sealed = ring.seal_secret(&ns, &f.name, &db, "pw").unwrap();
    store
        .put_secret(&ns, &f.name, &db, &db_sealed)
        .await
        .unwrap();

    let listed = store.list_secrets(&ns, &f.name).await.unwrap();
    assert_eq!(
        listed.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        vec!["DB_PASSWORD", "TOKEN"],
        "secrets listed by name"
    );
    let all = store.sealed_secrets(&ns, &f.name).await.unwrap();
    assert_eq!(all.0.len(), 2);
    assert_eq!(all.0[1].name, token);
    assert_eq!(
        all.0[1].value, sealed,
        "sealed values round-trip byte for byte"
    );
    let env = ring.open_secrets(&ns, &f.name, &all).unwrap();
    assert_eq!(
        env.iter().collect::<Vec<_>>(),
        vec![("DB_PASSWORD", "pw"), ("TOKEN", "t0ken")]
    );

    // Replacing a value replaces it.
    let again = ring.seal_secret(&ns, &f.name, &token, "n3w").unwrap();
    store
        .put_secret(&ns, &f.name, &token, &again)
        .await
        .unwrap();
    let all = store.sealed_secrets(&ns, &f.name).await.unwrap();
    assert_eq!(all.0.len(), 2, "a put of an existing name replaces it");
    assert_eq!(all.0[1].value, again);

    // Another namespace sees nothing.
    let other = fresh_namespace();
    assert!(store
        .list_secrets(&other, &f.name)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .sealed_secrets(&other, &f.name)
        .await
        .unwrap()
        .is_empty());
    assert!(!store.delete_secret(&other, &f.name, &token).await.unwrap());

    assert!(store.delete_secret(&ns, &f.name, &token).await.unwrap());
    assert!(!store.delete_secret(&ns, &f.name, &token).await.unwrap());
    let listed = store.list_secrets(&ns, &f.name).await.unwrap();
    assert_eq!(listed.len(), 1);
}

/// A secret of an absent function is `NotFound`; deleting a function deletes its secrets.
pub async fn secrets_need_their_function_and_go_with_it(store: Store) {
    let ns = fresh_namespace();
    let ghost = FunctionName::parse("ghost").unwrap();
    let ring = Keyring::new("k1", &[9; 32]).unwrap();
    let name = SecretName::parse("A").unwrap();
    let sealed = ring.seal_secret(&ns, &ghost, &name, "x").unwrap();
    assert!(
        matches!(
            store.put_secret(&ns, &ghost, &name, &sealed).await,
            Err(StoreError::NotFound(_))
        ),
        "a secret needs its function"
    );
    let f = function(&ns, "short-lived");
    store.create_function(&f).await.unwrap();
    let sealed = ring.seal_secret(&ns, &f.name, &name, "x").unwrap();
    store
        .put_secret(&ns, &f.name, &name, &sealed)
        .await
        .unwrap();
    assert!(store.delete_function(&ns, &f.name).await.unwrap());
    store
        .create_function(&function(&ns, "short-lived"))
        .await
        .unwrap();
    assert!(
        store.sealed_secrets(&ns, &f.name).await.unwrap().is_empty(),
        "secrets go with their function"
    );
}

/// Registry credentials: stored sealed byte for byte, one per (namespace, host), replaced by
/// a put, listed by host without values, isolated between namespaces, removed once.
pub async fn registry_credentials_roundtrip_sealed_per_namespace(store: Store) {
    let ns = fresh_namespace();
    let other = fresh_namespace();
    let ring = Keyring::new("k1", &[9; 32]).unwrap();
    let host = RegistryHost::parse("registry.example.com").unwrap();
    let local = RegistryHost::parse("127.0.0.1:5000").unwrap();
    let cred = |password: &str| RegistryCredential {
        username: "robot".into(),
        password: password.into(),
    };
    assert!(store
        .list_registry_credentials(&ns)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.registry_credential(&ns, &host).await.unwrap(), None);
    let sealed = ring
        .seal_registry_credential(&ns, &host, &cred("pw1"))
        .unwrap();
    store
        .put_registry_credential(&ns, &host, &sealed)
        .await
        .unwrap();
    let local_sealed = ring
        .seal_registry_credential(&ns, &local, &cred("pw2"))
        .unwrap();
    store
        .put_registry_credential(&ns, &local, &local_sealed)
        .await
        .unwrap();
    let got = store.registry_credential(&ns, &host).await.unwrap();
    assert_eq!(
        got.as_ref(),
        Some(&sealed),
        "sealed values round-trip byte for byte"
    );
    assert_eq!(
        ring.open_registry_credential(&ns, &host, &got.unwrap())
            .unwrap(),
        cred("pw1")
    );
    let listed = store.list_registry_credentials(&ns).await.unwrap();
    assert_eq!(
        listed.iter().map(|c| c.host.as_str()).collect::<Vec<_>>(),
        vec!["127.0.0.1:5000", "registry.example.com"],
        "listed by host"
    );
    // Another namespace sees none of them.
    assert!(store
        .list_registry_credentials(&other)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store.registry_credential(&other, &host).await.unwrap(),
        None
    );
    // A put replaces.
    let again = ring
        .seal_registry_credential(&ns, &host, &cred("pw3"))
        .unwrap();
    store
        .put_registry_credential(&ns, &host, &again)
        .await
        .unwrap();
    assert_eq!(
        store.registry_credential(&ns, &host).await.unwrap(),
        Some(again)
    );
    assert_eq!(store.list_registry_credentials(&ns).await.unwrap().len(), 2);
    // Deleted once.
    assert!(store.delete_registry_credential(&ns, &host).await.unwrap());
    assert!(!store.delete_registry_credential(&ns, &host).await.unwrap());
    assert!(!store
        .delete_registry_credential(&other, &local)
        .await
        .unwrap());
    assert_eq!(store.registry_credential(&ns, &host).await.unwrap(), None);
    assert_eq!(store.list_registry_credentials(&ns).await.unwrap().len(), 1);
}
