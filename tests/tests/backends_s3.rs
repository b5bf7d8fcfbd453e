//! The S3 code store against a real Garage: the whole code store conformance suite, corruption
//! detection through the S3 API, the error mapping of missing buckets and bad credentials, and
//! the parsing of its environment configuration.
//!
//! Each test starts its own Garage (about a second) and takes a fresh bucket, so tests run in
//! parallel and nothing outlives them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use fnmesh_code::conformance::{self, random_bytes, Store};
use fnmesh_code::s3::{
    S3CodeStore, S3Config, S3ConfigError, DEFAULT_REGION, ENV_ACCESS_KEY_ID, ENV_ENDPOINT,
    ENV_PATH_STYLE, ENV_REGION, ENV_SECRET_ACCESS_KEY,
};
use fnmesh_code::{CodeStore as _, CodeStoreError};
use fnmesh_core::checksum::Checksum;
use fnmesh_core::subjects;
use fnmesh_tests::servers::garage::TestGarage;

/// The configuration of `bucket` on `garage`, through the same parser as `from_env`.
fn config_for(garage: &TestGarage, bucket: &str) -> S3Config {
    let vars = [
        (ENV_ENDPOINT, garage.endpoint()),
        (ENV_REGION, garage.region().to_owned()),
        (ENV_ACCESS_KEY_ID, garage.access_key_id().to_owned()),
        (ENV_SECRET_ACCESS_KEY, garage.secret_access_key().to_owned()),
    ];
    let config = S3Config::from_lookup(bucket, |name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    })
    .expect("config for garage");
    assert!(config.path_style, "an endpoint defaults to path style");
    config
}

/// A Garage and a store on a fresh bucket of it.
fn garage_store() -> (TestGarage, S3CodeStore) {
    let garage = TestGarage::start();
    let bucket = garage.fresh_bucket();
    let store = S3CodeStore::new(config_for(&garage, &bucket)).expect("s3 code store");
    (garage, store)
}

macro_rules! cases {
    ($($case:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $case() {
            let (_garage, store) = garage_store();
            conformance::$case(Arc::new(store) as Store).await;
        }
    )*};
}

fnmesh_code::code_conformance_cases!(cases);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_all_on_one_bucket() {
    let (_garage, store) = garage_store();
    conformance::run_all(Arc::new(store)).await;
}

/// Overwrites the object of `checksum` with other bytes, behind the store's back.
async fn tamper(store: &S3CodeStore, checksum: &Checksum, with: &'static [u8]) {
    store
        .client()
        .put_object()
        .bucket(store.bucket())
        .key(subjects::code_key(checksum))
        .body(with.to_vec().into())
        .send()
        .await
        .expect("overwriting the object");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corruption_is_detected() {
    let (_garage, store) = garage_store();
    let tamperer = store.clone();
    conformance::corruption_is_detected(Arc::new(store), |checksum| async move {
        tamper(&tamperer, &checksum, b"tampered").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn objects_live_at_the_code_key_and_put_repairs_corruption() {
    let (_garage, store) = garage_store();
    let bytes = random_bytes(1234);
    let checksum = store.put(bytes.clone()).await.expect("put");
    let key = subjects::code_key(&checksum);
    assert!(key.starts_with("code/sha256/"), "{key}");
    let head = store
        .client()
        .head_object()
        .bucket(store.bucket())
        .key(&key)
        .send()
        .await
        .expect("the object is at code_key");
    assert_eq!(head.content_length(), Some(1234));

    tamper(&store, &checksum, b"broken").await;
    assert!(matches!(
        store.get(&checksum).await,
        Err(CodeStoreError::Corrupt(c)) if c == checksum
    ));
    assert!(
        store.exists(&checksum).await.expect("exists"),
        "a corrupt blob still exists"
    );
    store.put(bytes.clone()).await.expect("put again");
    assert_eq!(store.get(&checksum).await.expect("get"), Some(bytes));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missing_bucket_is_a_backend_error_not_an_absent_blob() {
    let garage = TestGarage::start();
    let store = S3CodeStore::new(config_for(&garage, "no-such-bucket")).expect("store");
    let err = store.ping().await.expect_err("ping of a missing bucket");
    assert!(matches!(err, CodeStoreError::Backend(_)), "{err:?}");
    let checksum = Checksum::of(b"anything");
    match store.get(&checksum).await {
        Err(CodeStoreError::Backend(message)) => {
            assert!(message.contains("no-such-bucket"), "{message}")
        }
        other => panic!("get from a missing bucket must fail, got {other:?}"),
    }
    assert!(store.put(b"x".to_vec().into()).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_credentials_fail_without_leaking_the_secret() {
    let garage = TestGarage::start();
    let bucket = garage.fresh_bucket();
    let secret = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let config = S3Config {
        secret_access_key: Some(secret.to_owned()),
        ..config_for(&garage, &bucket)
    };
    assert!(!format!("{config:?}").contains(secret));
    let store = S3CodeStore::new(config).expect("store");
    let err = store.ping().await.expect_err("ping with a wrong secret");
    assert!(!err.to_string().contains(secret), "{err}");
    let err = store
        .put(b"x".to_vec().into())
        .await
        .expect_err("put with a wrong secret");
    assert!(matches!(err, CodeStoreError::Backend(_)), "{err:?}");
    assert!(!err.to_string().contains(secret), "{err}");
}

// ---- configuration parsing (explicit inputs; the process environment is not touched) ----

fn parse(vars: &[(&str, &str)]) -> Result<S3Config, S3ConfigError> {
    S3Config::from_lookup("code", |name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    })
}

#[test]
fn config_defaults_without_an_endpoint_are_aws_virtual_hosted() {
    let c = parse(&[]).unwrap();
    assert_eq!(c.bucket, "code");
    assert_eq!(c.endpoint, None);
    assert_eq!(c.region, DEFAULT_REGION);
    assert!(!c.path_style);
    assert_eq!((c.access_key_id, c.secret_access_key), (None, None));
}

#[test]
fn config_with_an_endpoint_defaults_to_path_style() {
    let c = parse(&[
        (ENV_ENDPOINT, "http://127.0.0.1:3900/"),
        (ENV_REGION, "garage"),
    ])
    .unwrap();
    assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:3900"));
    assert_eq!(c.region, "garage");
    assert!(c.path_style);
}

#[test]
fn config_path_style_accepts_true_false_1_0() {
    for (value, expected) in [
        ("true", true),
        ("false", false),
        ("1", true),
        ("0", false),
        ("TRUE", true),
        (" False ", false),
    ] {
        let c = parse(&[
            (ENV_ENDPOINT, "https://s3.example"),
            (ENV_PATH_STYLE, value),
        ])
        .unwrap();
        assert_eq!(c.path_style, expected, "{value:?} with an endpoint");
        let c = parse(&[(ENV_PATH_STYLE, value)]).unwrap();
        assert_eq!(c.path_style, expected, "{value:?} without an endpoint");
    }
}

#[test]
fn config_a_bad_path_style_is_an_error_naming_the_variable() {
    for value in ["yes", "2", "tru"] {
        let err = parse(&[(ENV_PATH_STYLE, value)]).unwrap_err();
        assert_eq!(
            err,
            S3ConfigError::InvalidBool {
                var: ENV_PATH_STYLE,
                value: value.to_owned()
            }
        );
        let message = err.to_string();
        assert!(message.contains("FNMESH_S3_PATH_STYLE"), "{message}");
        assert!(message.contains(value), "{message}");
    }
}

#[test]
fn config_empty_values_count_as_unset() {
    let c = parse(&[(ENV_ENDPOINT, ""), (ENV_REGION, ""), (ENV_PATH_STYLE, "")]).unwrap();
    assert_eq!(c.endpoint, None);
    assert_eq!(c.region, DEFAULT_REGION);
    assert!(!c.path_style);
}

#[test]
fn config_an_endpoint_must_be_an_http_url() {
    let err = parse(&[(ENV_ENDPOINT, "127.0.0.1:3900")]).unwrap_err();
    assert!(err.to_string().contains("FNMESH_S3_ENDPOINT"), "{err}");
}

#[test]
fn config_credentials_come_in_pairs() {
    let c = parse(&[
        (ENV_ACCESS_KEY_ID, "GKabc"),
        (ENV_SECRET_ACCESS_KEY, "s3cr3t"),
    ])
    .unwrap();
    assert_eq!(c.access_key_id.as_deref(), Some("GKabc"));
    assert_eq!(c.secret_access_key.as_deref(), Some("s3cr3t"));
    let err = parse(&[(ENV_ACCESS_KEY_ID, "GKabc")]).unwrap_err();
    assert!(err.to_string().contains("AWS_SECRET_ACCESS_KEY"), "{err}");
    let err = parse(&[(ENV_SECRET_ACCESS_KEY, "s3cr3t")]).unwrap_err();
    assert!(err.to_string().contains("AWS_ACCESS_KEY_ID"), "{err}");
    assert!(!err.to_string().contains("s3cr3t"), "{err}");
}

#[test]
fn a_store_needs_credentials() {
    let err = S3CodeStore::new(parse(&[]).unwrap()).unwrap_err();
    assert!(err.to_string().contains("AWS_ACCESS_KEY_ID"), "{err}");
}
