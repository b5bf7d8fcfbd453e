//! Access and refresh tokens: the happy path, rotation and reuse, revocation, and forged or
//! broken tokens, which all get 401.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::Utc;
use common::{eventually, Resp, TestApp};
use fnmesh_gateway::auth::jwt::{SigningKey, TokenConfig};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{json, Value};

const SECRET: &[u8] = b"test-secret-test-secret-test-secret-0123";
const RSA_PEM: &[u8] = include_bytes!("fixtures/jwt-rs256-test.pem");
const RSA_PUBLIC_PEM: &[u8] = include_bytes!("fixtures/jwt-rs256-test.pub.pem");

fn config_with(key: SigningKey) -> TokenConfig {
    TokenConfig {
        keys: vec![key],
        ..TokenConfig::default()
    }
}

async fn app_with(key: SigningKey) -> TestApp {
    TestApp::builder()
        .config(|c| c.tokens = config_with(key))
        .start()
        .await
}

async fn hs256_app() -> TestApp {
    app_with(SigningKey::hs256("k1", SECRET).unwrap()).await
}

async fn post(app: &TestApp, path: &str, bearer: Option<&str>, body: Option<Value>) -> Resp {
    app.send_with_key(
        "POST",
        path,
        body.map(|b| serde_json::to_vec(&b).unwrap()),
        bearer,
    )
    .await
}

async fn token_pair(app: &TestApp, key: &str) -> (String, String) {
    let resp = post(app, "/v1/auth/token", Some(key), None).await;
    assert_eq!(resp.status, 200, "{:?}", resp.body);
    (
        resp.body["access_token"].as_str().unwrap().to_owned(),
        resp.body["refresh_token"].as_str().unwrap().to_owned(),
    )
}

async fn refresh(app: &TestApp, refresh_token: &str) -> Resp {
    post(
        app,
        "/v1/auth/refresh",
        None,
        Some(json!({ "refresh_token": refresh_token })),
    )
    .await
}

/// Makes a key through the API (as admin); returns `(id, key)`.
async fn make_key(app: &TestApp, body: Value) -> (String, String) {
    let resp = app.post_json("/v1/keys", &body).await;
    assert_eq!(resp.status, 201, "{:?}", resp.body);
    (
        resp.body["id"].as_str().unwrap().to_owned(),
        resp.body["key"].as_str().unwrap().to_owned(),
    )
}

fn now() -> u64 {
    Utc::now().timestamp() as u64
}

/// Claims an honest token of the default config would carry, for an admin key.
fn claims() -> Value {
    let now = now();
    json!({
        "sub": "bootstrap-admin", "role": "admin", "ns": "default",
        "iss": "fnmesh", "aud": "fnmesh-api",
        "exp": now + 600, "nbf": now - 5, "iat": now - 5, "jti": "t1",
    })
}

fn hs256(kid: Option<&str>, claims: &Value, secret: &[u8]) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret).unwrap()).unwrap()
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

async fn status_with(app: &TestApp, bearer: &str) -> Resp {
    app.send_with_key("GET", "/v1/functions", None, Some(bearer))
        .await
}

/// [`assert_refused`] once a change written to the store directly (as another gateway, or a
/// restart, would) is seen: API keys are cached for at most a second (`gateway::lookups`).
async fn assert_refused_soon(app: &TestApp, bearer: &str, what: &str) {
    eventually(|| async { (status_with(app, bearer).await.status == 401).then_some(()) }).await;
    assert_refused(app, bearer, what).await;
}

async fn assert_refused(app: &TestApp, bearer: &str, what: &str) {
    let resp = status_with(app, bearer).await;
    assert_eq!(resp.status, 401, "{what}: {:?}", resp.body);
    assert_eq!(resp.code(), "unauthorized", "{what}");
    assert_eq!(resp.header("www-authenticate"), Some("Bearer"), "{what}");
}

#[tokio::test]
async fn an_api_key_gets_a_token_pair_that_works_on_every_route() {
    let app = hs256_app().await;
    let resp = post(&app, "/v1/auth/token", Some(&app.key), None).await;
    assert_eq!(resp.status, 200, "{:?}", resp.body);
    assert_eq!(resp.body["token_type"], "Bearer");
    assert_eq!(resp.body["expires_in"], 900);
    assert_eq!(resp.header("cache-control"), Some("no-store"));
    let access = resp.body["access_token"].as_str().unwrap();
    let refresh_token = resp.body["refresh_token"].as_str().unwrap();
    assert!(refresh_token.starts_with("fnr_"));

    // The claims are what the issue documents.
    let payload = access.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    for claim in [
        "sub", "role", "ns", "iss", "aud", "exp", "nbf", "iat", "jti",
    ] {
        assert!(
            claims.get(claim).is_some(),
            "claim {claim} missing: {claims}"
        );
    }
    assert_eq!(claims["sub"], "bootstrap-admin");
    assert_eq!(claims["role"], "admin");
    assert_eq!(claims["ns"], "default");
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(access.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["kid"], "k1");
    assert_eq!(header["alg"], "HS256");

    // The token works like the key: deploy, read, admin routes.
    let create = app
        .send_with_key(
            "POST",
            "/v1/functions",
            Some(serde_json::to_vec(&common::create_body("hello")).unwrap()),
            Some(access),
        )
        .await;
    assert_eq!(create.status, 201, "{:?}", create.body);
    assert_eq!(status_with(&app, access).await.status, 200);
    let queues = app
        .send_with_key("GET", "/v1/admin/queues", None, Some(access))
        .await;
    assert_eq!(queues.status, 200);

    // A token cannot mint tokens.
    let again = post(&app, "/v1/auth/token", Some(access), None).await;
    assert_eq!(again.status, 403);
    assert_eq!(again.code(), "forbidden");
}

#[tokio::test]
async fn refresh_rotates_and_reusing_a_rotated_token_revokes_the_family() {
    let app = hs256_app().await;
    let (_, first) = token_pair(&app, &app.key).await;

    let rotated = refresh(&app, &first).await;
    assert_eq!(rotated.status, 200, "{:?}", rotated.body);
    let second = rotated.body["refresh_token"].as_str().unwrap().to_owned();
    let access = rotated.body["access_token"].as_str().unwrap().to_owned();
    assert_ne!(second, first);
    assert_eq!(status_with(&app, &access).await.status, 200);

    // The old one stops working, and its reuse revokes the whole family.
    let reused = refresh(&app, &first).await;
    assert_eq!(reused.status, 401);
    assert_eq!(reused.code(), "unauthorized");
    let after = refresh(&app, &second).await;
    assert_eq!(after.status, 401, "the family is revoked: {:?}", after.body);

    // Another family of the same key is untouched.
    let (_, other) = token_pair(&app, &app.key).await;
    assert_eq!(refresh(&app, &other).await.status, 200);

    for bad in ["", "fnr_nope", "fnm_abc", &"x".repeat(5000)] {
        assert_eq!(refresh(&app, bad).await.status, 401, "{bad:.20}");
    }
    let malformed = post(&app, "/v1/auth/refresh", None, Some(json!({"token": "x"}))).await;
    assert_eq!(malformed.status, 400);
}

#[tokio::test]
async fn revoke_ends_a_refresh_family() {
    let app = hs256_app().await;
    let (_, refresh_token) = token_pair(&app, &app.key).await;
    let rotated = refresh(&app, &refresh_token).await;
    let current = rotated.body["refresh_token"].as_str().unwrap().to_owned();

    let revoked = post(
        &app,
        "/v1/auth/revoke",
        None,
        Some(json!({ "refresh_token": current })),
    )
    .await;
    assert_eq!(revoked.status, 204);
    assert_eq!(refresh(&app, &current).await.status, 401);

    // Unknown tokens answer the same.
    let unknown = post(
        &app,
        "/v1/auth/revoke",
        None,
        Some(json!({ "refresh_token": "fnr_unknown" })),
    )
    .await;
    assert_eq!(unknown.status, 204);
}

#[tokio::test]
async fn tokens_of_a_revoked_key_stop_working() {
    let app = TestApp::builder()
        .config(|c| {
            c.tokens = TokenConfig {
                key_check_ttl: Duration::from_millis(200),
                ..config_with(SigningKey::hs256("k1", SECRET).unwrap())
            }
        })
        .start()
        .await;
    // Revoked through the API: at once on this gateway, refresh included.
    let (id, key) = make_key(&app, json!({"name": "ci", "role": "developer"})).await;
    let (access, refresh_token) = token_pair(&app, &key).await;
    assert_eq!(status_with(&app, &access).await.status, 200);
    let deleted = app.send("DELETE", &format!("/v1/keys/{id}"), None).await;
    assert_eq!(deleted.status, 204);
    assert_refused(&app, &access, "token of a revoked key").await;
    assert_refused(&app, &key, "revoked key").await;
    assert_eq!(refresh(&app, &refresh_token).await.status, 401);

    // Revoked by another gateway (straight in the store): within the key-check TTL.
    let (id, key) = make_key(&app, json!({"name": "other", "role": "invoker"})).await;
    let (access, _) = token_pair(&app, &key).await;
    assert_eq!(status_with(&app, &access).await.status, 200);
    assert!(app.store.revoke_api_key(&id, Utc::now()).await.unwrap());
    eventually(|| {
        let app = &app;
        let access = access.clone();
        async move { (status_with(app, &access).await.status == 401).then_some(()) }
    })
    .await;

    // An expired key's tokens too.
    let soon = Utc::now() + chrono::Duration::seconds(2);
    let (_, key) = make_key(
        &app,
        json!({"name": "short", "role": "invoker", "expires_at": soon}),
    )
    .await;
    let (access, _) = token_pair(&app, &key).await;
    eventually(|| {
        let app = &app;
        let access = access.clone();
        async move { (status_with(app, &access).await.status == 401).then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn forged_and_broken_hs256_tokens_get_401() {
    let app = hs256_app().await;
    let good = hs256(Some("k1"), &claims(), SECRET);
    assert_eq!(
        status_with(&app, &good).await.status,
        200,
        "the forging helper makes valid tokens"
    );

    let with = |patch: Value| {
        let mut c = claims();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        hs256(Some("k1"), &c, SECRET)
    };
    let now = now();
    let none_header = json!({"alg": "none", "typ": "JWT", "kid": "k1"});
    let cases: Vec<(&str, String)> = vec![
        (
            "alg none, no signature",
            format!("{}.{}.", b64(&none_header), b64(&claims())),
        ),
        (
            "alg none, junk signature",
            format!("{}.{}.AAAA", b64(&none_header), b64(&claims())),
        ),
        (
            "alg none with a lowercase twist",
            format!(
                "{}.{}.AAAA",
                b64(&json!({"alg": "None", "kid": "k1"})),
                b64(&claims())
            ),
        ),
        (
            "expired",
            with(json!({"exp": now - 120, "iat": now - 1000, "nbf": now - 1000})),
        ),
        ("nbf in the future", with(json!({"nbf": now + 300}))),
        ("wrong aud", with(json!({"aud": "someone-else"}))),
        ("missing aud", with(json!({"aud": null}))),
        ("wrong iss", with(json!({"iss": "evil"}))),
        ("missing iss", with(json!({"iss": null}))),
        ("missing exp", with(json!({"exp": null}))),
        ("missing nbf", with(json!({"nbf": null}))),
        ("missing sub", with(json!({"sub": null}))),
        ("unknown kid", hs256(Some("k2"), &claims(), SECRET)),
        (
            "path-like kid",
            hs256(Some("../../etc/passwd"), &claims(), SECRET),
        ),
        (
            "url kid",
            hs256(Some("https://evil.example/key"), &claims(), SECRET),
        ),
        ("no kid", hs256(None, &claims(), SECRET)),
        (
            "another secret",
            hs256(
                Some("k1"),
                &claims(),
                b"another-secret-another-secret-0123456",
            ),
        ),
        (
            "a namespace that is not a name",
            with(json!({"ns": "../x"})),
        ),
        ("an unknown role", with(json!({"role": "root"}))),
    ];
    for (what, token) in &cases {
        assert_refused(&app, token, what).await;
    }

    // Tampered payload: an invoker's token turned into an admin's.
    let (_, key) = make_key(&app, json!({"name": "inv", "role": "invoker"})).await;
    let (access, _) = token_pair(&app, &key).await;
    let parts: Vec<&str> = access.split('.').collect();
    let mut payload: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    payload["role"] = json!("admin");
    let tampered = format!("{}.{}.{}", parts[0], b64(&payload), parts[2]);
    assert_refused(&app, &tampered, "tampered payload").await;
    let queues = app
        .send_with_key("GET", "/v1/admin/queues", None, Some(&access))
        .await;
    assert_eq!(
        queues.status, 403,
        "the honest invoker token is still an invoker's"
    );

    // A token whose key does not exist (signed with the right secret).
    let ghost = with(json!({"sub": "key_ghost"}));
    assert_refused(&app, &ghost, "token of an unknown key").await;
}

fn ed25519_pem() -> (Vec<u8>, Vec<u8>) {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let pem = pem::encode(&pem::Pem::new("PRIVATE KEY", pkcs8.as_ref().to_vec()));
    (pem.into_bytes(), pair.public_key().as_ref().to_vec())
}

#[tokio::test]
async fn ed25519_tokens_work_and_hs256_with_the_public_key_is_refused() {
    let (pem_text, public) = ed25519_pem();
    let app = app_with(SigningKey::ed25519_pem("ed1", &pem_text).unwrap()).await;
    let (access, _) = token_pair(&app, &app.key).await;
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(access.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(status_with(&app, &access).await.status, 200);

    let mut c = claims();
    c["iss"] = json!("fnmesh");
    // The public key as raw bytes, as SPKI DER and as SPKI PEM: never an HMAC secret.
    let mut spki = hex::decode("302a300506032b6570032100").unwrap();
    spki.extend_from_slice(&public);
    let spki_pem = pem::encode(&pem::Pem::new("PUBLIC KEY", spki.clone()));
    for (what, secret) in [
        ("raw public key", public.clone()),
        ("SPKI DER", spki),
        ("SPKI PEM", spki_pem.into_bytes()),
    ] {
        let forged = hs256(Some("ed1"), &c, &secret);
        assert_refused(&app, &forged, what).await;
    }
    // And a token of another Ed25519 key under the same kid.
    let (other_pem, _) = ed25519_pem();
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some("ed1".into());
    let other =
        jsonwebtoken::encode(&header, &c, &EncodingKey::from_ed_pem(&other_pem).unwrap()).unwrap();
    assert_refused(&app, &other, "another Ed25519 key").await;
}

#[tokio::test]
async fn rs256_tokens_work_and_hs256_with_the_public_key_is_refused() {
    let app = app_with(SigningKey::rs256_pem("rsa1", RSA_PEM).unwrap()).await;
    let (access, _) = token_pair(&app, &app.key).await;
    assert_eq!(status_with(&app, &access).await.status, 200);

    let c = claims();
    let der = pem::parse(RSA_PUBLIC_PEM).unwrap().contents().to_vec();
    for (what, secret) in [("SPKI PEM", RSA_PUBLIC_PEM.to_vec()), ("SPKI DER", der)] {
        let forged = hs256(Some("rsa1"), &c, &secret);
        assert_refused(&app, &forged, what).await;
    }
    // A valid RS256 signature over tampered claims is still refused (signature check).
    let parts: Vec<&str> = access.split('.').collect();
    let mut payload: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    payload["ns"] = json!("other");
    let tampered = format!("{}.{}.{}", parts[0], b64(&payload), parts[2]);
    assert_refused(&app, &tampered, "tampered RS256 payload").await;
}

/// H3 of the zero-trust issue: a revoked bootstrap admin key never comes back by a restart,
/// and a new `FNMESH_ADMIN_KEY` retires the one before it, tokens and all.
#[tokio::test]
async fn the_bootstrap_key_is_never_unrevoked_and_a_new_one_retires_the_old() {
    use fnmesh_gateway::auth::{self, AuthError, BOOTSTRAP_ADMIN_ID};
    let app = TestApp::builder()
        .config(|c| {
            c.tokens = TokenConfig {
                key_check_ttl: Duration::from_millis(100),
                ..config_with(SigningKey::hs256("k1", SECRET).unwrap())
            }
        })
        .start()
        .await;
    let store = app.store.as_ref();
    let (_, developer) = make_key(&app, json!({"name": "dev", "role": "developer"})).await;
    // A restart with the same key changes nothing.
    auth::ensure_admin_key(store, &app.key).await.unwrap();
    assert_eq!(status_with(&app, &app.key).await.status, 200);
    let (_, first_refresh) = token_pair(&app, &app.key).await;

    // Revoked (leaked): a restart with the same key refuses to start and the key stays dead.
    assert!(store
        .revoke_api_key(BOOTSTRAP_ADMIN_ID, Utc::now())
        .await
        .unwrap());
    let err = auth::ensure_admin_key(store, &app.key).await.unwrap_err();
    assert!(matches!(err, AuthError::AdminKeyRevoked(_)), "{err}");
    assert!(err.to_string().contains("FNMESH_ADMIN_KEY"), "{err}");
    assert_refused_soon(&app, &app.key, "a revoked bootstrap key after a restart").await;
    assert_eq!(refresh(&app, &first_refresh).await.status, 401);
    let old = store
        .get_api_key(BOOTSTRAP_ADMIN_ID)
        .await
        .unwrap()
        .unwrap();
    assert!(old.revoked_at.is_some(), "the revoked record stays revoked");

    // A new key gets an id never used before; a restart with it changes nothing.
    let second = auth::generate_key();
    auth::ensure_admin_key(store, &second).await.unwrap();
    auth::ensure_admin_key(store, &second).await.unwrap();
    assert_eq!(status_with(&app, &second).await.status, 200);
    let second_id = store
        .find_api_key(&auth::hash_key(&second))
        .await
        .unwrap()
        .unwrap()
        .id;
    assert_ne!(second_id, BOOTSTRAP_ADMIN_ID);
    assert!(second_id.starts_with("bootstrap-admin-"), "{second_id}");
    let (second_access, second_refresh) = token_pair(&app, &second).await;

    // Changing the key (not revoked) retires the previous one with its tokens.
    let third = auth::generate_key();
    auth::ensure_admin_key(store, &third).await.unwrap();
    assert_eq!(status_with(&app, &third).await.status, 200);
    assert_refused_soon(&app, &second, "the replaced bootstrap key").await;
    eventually(|| {
        let app = &app;
        let access = second_access.clone();
        async move { (status_with(app, &access).await.status == 401).then_some(()) }
    })
    .await;
    assert_eq!(refresh(&app, &second_refresh).await.status, 401);

    // Gateways starting at once with one new key: every one starts, one key is stored.
    let fourth = auth::generate_key();
    let starts = (0..4).map(|_| auth::ensure_admin_key(store, &fourth));
    for started in futures::future::join_all(starts).await {
        started.unwrap();
    }
    assert_eq!(status_with(&app, &fourth).await.status, 200);

    // Another key's value is not taken over as the admin key.
    let err = auth::ensure_admin_key(store, &developer).await.unwrap_err();
    assert!(matches!(err, AuthError::AdminKeyInUse), "{err}");
}

/// H3: rotating a refresh token never extends its family past the family's absolute lifetime.
#[tokio::test]
async fn a_refresh_family_ends_at_its_absolute_lifetime() {
    let app = TestApp::builder()
        .config(|c| {
            c.tokens = TokenConfig {
                refresh_family_ttl: Duration::from_secs(2),
                ..config_with(SigningKey::hs256("k1", SECRET).unwrap())
            }
        })
        .start()
        .await;
    let resp = post(&app, "/v1/auth/token", Some(&app.key), None).await;
    assert_eq!(resp.status, 200, "{:?}", resp.body);
    assert!(resp.body["refresh_expires_in"].as_u64().unwrap() <= 2);
    let mut token = resp.body["refresh_token"].as_str().unwrap().to_owned();
    // Rotating within the lifetime works, and never promises more than what is left.
    let rotated = refresh(&app, &token).await;
    assert_eq!(rotated.status, 200, "{:?}", rotated.body);
    assert!(rotated.body["refresh_expires_in"].as_u64().unwrap() <= 2);
    token = rotated.body["refresh_token"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(refresh(&app, &token).await.status, 401);
}
