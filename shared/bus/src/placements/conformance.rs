//! The conformance suite every [`Placements`] feed must pass (the in-process one and the
//! JetStream catalog reader).
//!
//! Each case takes a factory that builds a fresh, empty feed and the [`Publisher`] that
//! writes into it (for the in-process feed, itself; for JetStream, a writer of the region's
//! catalog bucket in the gateways' format). Assertions panic with a message naming the
//! behaviour that broke.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use futures::stream::BoxStream;
use futures::StreamExt as _;

use super::{Placement, Placements};
use fnmesh_core::function::{CodeInfo, FunctionConfig, ImageMode, ImageSpec, Runtime};
use fnmesh_core::ids::FunctionId;
use fnmesh_core::names::{FunctionName, Namespace};
use fnmesh_core::registry::RegistryHost;
use fnmesh_core::secrets::SealedValue;
use fnmesh_core::{Checksum, Function};

/// How long a case waits for an item.
const WAIT: Duration = Duration::from_secs(10);

/// Writes placements where a feed reads them.
#[async_trait]
pub trait Publisher: Send + Sync {
    /// Makes `placement` the latest state of its key.
    async fn publish(&self, placement: Placement);
}

#[async_trait]
impl Publisher for super::memory::MemoryPlacements {
    async fn publish(&self, placement: Placement) {
        super::memory::MemoryPlacements::publish(self, placement);
    }
}

/// A fresh feed and its publisher.
pub type Fresh = (Arc<dyn Placements>, Arc<dyn Publisher>);

/// Every case of this suite, in the order [`run_all`] runs them.
#[macro_export]
macro_rules! placements_conformance_cases {
    ($callback:ident) => {
        $callback!(
            a_watch_starts_with_what_is_placed,
            a_watch_sees_changes_and_removals_in_order,
            a_new_watch_sees_the_latest_state_only
        );
    };
}

/// Runs every case, one after the other, each on a fresh feed from `make`.
pub async fn run_all<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Fresh>,
{
    macro_rules! run {
        ($($case:ident),* $(,)?) => { $( $case(&make).await; )* };
    }
    crate::placements_conformance_cases!(run);
}

// ---- helpers ----

fn namespace() -> Namespace {
    Namespace::parse(&format!("p-{:08x}", rand::random::<u32>())).expect("namespace")
}

/// Version `version` of image function `name` in `namespace`, pinned to a digest made of
/// `version`.
pub fn image_function(namespace: &Namespace, name: &str, version: u32) -> Function {
    let now = Utc::now();
    let digest = format!("sha256:{:064x}", version);
    Function {
        id: FunctionId::new(),
        namespace: namespace.clone(),
        name: FunctionName::parse(name).expect("name"),
        version,
        runtime: Runtime::Image,
        handler: String::new(),
        code: CodeInfo {
            checksum: Checksum::of(digest.as_bytes()),
            size: 1,
            source_type: "image".to_owned(),
        },
        config: FunctionConfig::default(),
        image: Some(ImageSpec {
            reference: Some(format!("registry.example.com/app@{digest}")),
            requested: Some("registry.example.com/app:1".to_owned()),
            digest,
            mode: ImageMode::Exec,
            port: None,
        }),
        metadata: Default::default(),
        created_at: now,
        updated_at: now,
    }
}

fn function(f: &Function) -> Placement {
    Placement::Function {
        namespace: f.namespace.clone(),
        name: f.name.clone(),
        latest: Some(Box::new(f.clone())),
    }
}

fn removed(f: &Function) -> Placement {
    Placement::Function {
        namespace: f.namespace.clone(),
        name: f.name.clone(),
        latest: None,
    }
}

fn credential(namespace: &Namespace, byte: u8) -> Placement {
    Placement::Registry {
        namespace: namespace.clone(),
        host: RegistryHost::parse("registry.example.com").expect("host"),
        sealed: Some(SealedValue {
            key_id: "k1".to_owned(),
            nonce: vec![byte; 12],
            ciphertext: vec![byte; 40],
        }),
    }
}

async fn next(stream: &mut BoxStream<'static, Placement>, what: &str) -> Placement {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing came within {WAIT:?}"))
        .unwrap_or_else(|| panic!("{what}: the watch ended"))
}

async fn nothing_more(stream: &mut BoxStream<'static, Placement>, what: &str) {
    if let Ok(Some(extra)) = tokio::time::timeout(Duration::from_millis(500), stream.next()).await {
        panic!("{what}: an extra item {extra:?}");
    }
}

// ---- cases ----

/// What was placed before a watch starts is its first items.
pub async fn a_watch_starts_with_what_is_placed<F, Fut>(make: &F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Fresh>,
{
    let (feed, publisher) = make().await;
    let ns = namespace();
    let f = image_function(&ns, "app", 1);
    publisher.publish(function(&f)).await;
    publisher.publish(credential(&ns, 1)).await;
    let mut watch = feed.watch().await.expect("watch");
    let mut seen = vec![
        next(&mut watch, "placed before").await,
        next(&mut watch, "placed before").await,
    ];
    seen.sort_by_key(Placement::key);
    let mut expected = vec![function(&f), credential(&ns, 1)];
    expected.sort_by_key(Placement::key);
    assert_eq!(seen, expected, "a watch starts with what is placed");
    nothing_more(&mut watch, "placed before").await;
}

/// Changes made while watching come in order, removals included.
pub async fn a_watch_sees_changes_and_removals_in_order<F, Fut>(make: &F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Fresh>,
{
    let (feed, publisher) = make().await;
    let mut watch = feed.watch().await.expect("watch");
    let ns = namespace();
    let (v1, v2) = (image_function(&ns, "app", 1), image_function(&ns, "app", 2));
    for placement in [
        function(&v1),
        function(&v2),
        credential(&ns, 1),
        removed(&v2),
    ] {
        publisher.publish(placement.clone()).await;
        assert_eq!(
            next(&mut watch, "a change").await,
            placement,
            "changes come as they are made"
        );
    }
    let gone = Placement::Registry {
        namespace: ns.clone(),
        host: RegistryHost::parse("registry.example.com").unwrap(),
        sealed: None,
    };
    publisher.publish(gone.clone()).await;
    assert_eq!(next(&mut watch, "a removal").await, gone);
}

/// A watch started after changes sees each key's latest state only, and nothing of what was
/// removed.
pub async fn a_new_watch_sees_the_latest_state_only<F, Fut>(make: &F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Fresh>,
{
    let (feed, publisher) = make().await;
    let ns = namespace();
    let (v1, v2) = (image_function(&ns, "app", 1), image_function(&ns, "app", 2));
    let other = image_function(&ns, "other", 1);
    for placement in [
        function(&v1),
        function(&other),
        function(&v2),
        removed(&other),
        credential(&ns, 1),
        credential(&ns, 2),
    ] {
        publisher.publish(placement).await;
    }
    let mut watch = feed.watch().await.expect("watch");
    let mut seen = Vec::new();
    while let Ok(Some(item)) = tokio::time::timeout(Duration::from_secs(2), watch.next()).await {
        seen.push(item);
    }
    // A removal may be reported or left out; what is there is the latest state.
    seen.retain(|p| !p.is_removal());
    seen.sort_by_key(Placement::key);
    let mut expected = vec![function(&v2), credential(&ns, 2)];
    expected.sort_by_key(Placement::key);
    assert_eq!(seen, expected, "the latest state of each key, once");
}
