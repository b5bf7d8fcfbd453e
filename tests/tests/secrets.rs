//! Function secrets end to end on a real `fnmesh up`: a secret reaches the function's
//! environment (also when a warm sandbox started without it exists), no file of the sandbox
//! (bundle, supervisor state) holds it, no API response shows it, and neither it, the admin key nor minted tokens and keys are in the database file or the
//! process's log; with `FNMESH_ENCRYPT_CODE=true` the code directory holds no plaintext code.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use fnmesh_tests::{unique, TestApp, ADMIN_KEY};
use serde_json::json;

const SECRET: &str = "pl41n-s3cr3t-9d2e61b0";

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_reaches_the_function_and_nothing_else() {
    let app = TestApp::start().await;
    let name = unique("sec");
    app.deploy(
        &name,
        "python3",
        "main.handle",
        &[(
            "main.py",
            "import os\n\ndef handle(event, context):\n    print('running')\n    return os.environ.get('MY_SECRET')\n",
        )],
    )
    .await;
    // A warm sandbox without the secret exists before it is set...
    let before = app.invoke_ok(&name, json!({})).await;
    assert_eq!(before["result"], json!(null), "{before}");

    let put = app
        .call(
            "PUT",
            &format!("/v1/functions/{name}/secrets/MY_SECRET"),
            Some(json!({ "value": SECRET })),
        )
        .await;
    assert_eq!(put.status, 204, "{:?}", put.body);

    // ... and is not reused: the next invocation sees the secret.
    let r = app.invoke_ok(&name, json!({})).await;
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["result"], SECRET);
    let id = r["id"].as_str().unwrap().to_owned();

    // The warm sandbox's bundle and the supervisor's state on disk never held the value: it
    // reached the bootstrap over the protocol pipe. The bundle is private all the same.
    let sandboxes = app.data_dir.path().join("sandboxes");
    let files = files_under(&sandboxes);
    let configs: Vec<_> = files
        .iter()
        .filter(|f| f.ends_with("config.json"))
        .collect();
    assert!(
        !configs.is_empty(),
        "no bundle under {}",
        sandboxes.display()
    );
    for file in &files {
        let bytes = std::fs::read(file).unwrap_or_default();
        assert!(
            !contains(&bytes, SECRET),
            "{} holds the secret",
            file.display()
        );
    }
    for config in configs {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(config), 0o600, "{}", config.display());
        assert_eq!(
            mode(config.parent().unwrap()),
            0o700,
            "{}",
            config.display()
        );
    }

    // Async too (stored request, bus, node).
    let queued = app
        .call(
            "POST",
            &format!("/v1/functions/{name}/invoke?async=true"),
            Some(json!({})),
        )
        .await;
    assert_eq!(queued.status, 202);
    let async_id = queued.body["id"].as_str().unwrap().to_owned();
    let done = app.wait_terminal(&async_id, Duration::from_secs(60)).await;
    assert_eq!(done["result"], SECRET, "{done}");

    // No API shows the value (the invocation's result is the function's own output).
    for path in [
        format!("/v1/functions/{name}"),
        format!("/v1/functions/{name}/versions"),
        format!("/v1/functions/{name}/secrets"),
        format!("/v1/invocations/{id}/logs"),
        format!("/v1/invocations/{async_id}/logs"),
        "/v1/admin/audit?limit=1000".to_owned(),
    ] {
        let r = app.call("GET", &path, None).await;
        assert_eq!(r.status, 200, "{path}: {:?}", r.body);
        assert!(!r.body.to_string().contains(SECRET), "{path}: {}", r.body);
    }

    let log = app.log();
    assert!(
        !contains(log.as_bytes(), SECRET),
        "the log holds the secret"
    );
}

/// In the code archive as a file name (zip keeps names uncompressed), so it is in the stored
/// code unless that is encrypted.
const CODE_MARKER: &str = "code_marker_5b9e2f";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_and_the_log_hold_neither_secrets_nor_the_admin_key() {
    database_and_log_check(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_code_encryption_the_code_directory_holds_no_plaintext_either() {
    database_and_log_check(true).await;
}

/// Every regular file under `dir`, recursively (symlinks are not followed).
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => out.extend(files_under(&path)),
            Ok(meta) if meta.is_file() => out.push(path),
            _ => {}
        }
    }
    out
}

async fn database_and_log_check(encrypt_code: bool) {
    let mut app = if encrypt_code {
        TestApp::start_with(&[("FNMESH_ENCRYPT_CODE", "true")]).await
    } else {
        TestApp::start().await
    };
    let name = unique("digest");
    // Proves it has the value without returning it: its SHA-256.
    app.deploy(
        &name,
        "python3",
        "main.handle",
        &[
            (
                "main.py",
                "import hashlib, os\n\ndef handle(event, context):\n    return hashlib.sha256(os.environ['MY_SECRET'].encode()).hexdigest()\n",
            ),
            (&format!("{CODE_MARKER}.py"), "X = 1\n"),
        ],
    )
    .await;
    let put = app
        .call(
            "PUT",
            &format!("/v1/functions/{name}/secrets/MY_SECRET"),
            Some(json!({ "value": SECRET })),
        )
        .await;
    assert_eq!(put.status, 204, "{:?}", put.body);
    let r = app.invoke_ok(&name, json!({})).await;
    assert_eq!(r["status"], "succeeded", "{r}");
    let expected = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(SECRET.as_bytes()))
    };
    assert_eq!(r["result"], expected.as_str());
    let queued = app
        .call(
            "POST",
            &format!("/v1/functions/{name}/invoke?async=true"),
            Some(json!({})),
        )
        .await;
    assert_eq!(queued.status, 202);
    let id = queued.body["id"].as_str().unwrap().to_owned();
    let done = app.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(done["result"], expected.as_str());

    // Credentials minted and used once: an access and a refresh token, a new API key.
    let pair = app.call("POST", "/v1/auth/token", None).await;
    assert_eq!(pair.status, 200, "{:?}", pair.body);
    let access = pair.body["access_token"].as_str().unwrap().to_owned();
    let refresh = pair.body["refresh_token"].as_str().unwrap().to_owned();
    let listed = app
        .call_with("GET", "/v1/functions", None, Some(&access))
        .await;
    assert_eq!(listed.status, 200, "{:?}", listed.body);
    let rotated = app
        .call_with(
            "POST",
            "/v1/auth/refresh",
            Some(json!({ "refresh_token": refresh }).to_string().into_bytes()),
            None,
        )
        .await;
    assert_eq!(rotated.status, 200, "{:?}", rotated.body);
    let rotated_access = rotated.body["access_token"].as_str().unwrap().to_owned();
    let rotated_refresh = rotated.body["refresh_token"].as_str().unwrap().to_owned();
    let created = app
        .call(
            "POST",
            "/v1/keys",
            Some(json!({ "name": "k", "role": "invoker" })),
        )
        .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let new_key = created.body["key"].as_str().unwrap().to_owned();
    let invoked = app
        .call_with(
            "POST",
            &format!("/v1/functions/{name}/invoke"),
            Some(b"{}".to_vec()),
            Some(&new_key),
        )
        .await;
    assert_eq!(invoked.status, 200, "{:?}", invoked.body);
    assert_eq!(invoked.body["result"], expected.as_str());

    // Stop, so the database and the log are complete, then grep them.
    app.terminate(Duration::from_secs(30)).unwrap();
    let dir = app.data_dir.path();
    let mut db = Vec::new();
    for file in ["fnmesh.db", "fnmesh.db-wal", "fnmesh.db-shm"] {
        if let Ok(bytes) = std::fs::read(dir.join(file)) {
            db.extend(bytes);
        }
    }
    assert!(!db.is_empty(), "no database in {}", dir.display());
    let log = app.log();
    assert!(
        log.contains("secret set"),
        "the log shows the secret's name only"
    );
    for (what, bytes) in [("database", db.as_slice()), ("log", log.as_bytes())] {
        assert!(
            !contains(bytes, SECRET),
            "the {what} holds the secret value"
        );
        assert!(
            !contains(bytes, ADMIN_KEY),
            "the {what} holds the admin key"
        );
        for (credential, value) in [
            ("access token", &access),
            ("refresh token", &refresh),
            ("rotated access token", &rotated_access),
            ("rotated refresh token", &rotated_refresh),
            ("new API key", &new_key),
        ] {
            assert!(!contains(bytes, value), "the {what} holds the {credential}");
        }
    }

    // The code directory: the archive is there in the clear unless code encryption is on.
    let code = files_under(&dir.join("code"));
    assert!(!code.is_empty(), "no code under {}", dir.display());
    // Code is stored gzip-compressed: inflate what inflates (ciphertext does not).
    let readable = |bytes: Vec<u8>| {
        let mut inflated = Vec::new();
        match std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(bytes.as_slice()),
            &mut inflated,
        ) {
            Ok(_) => inflated,
            Err(_) => bytes,
        }
    };
    let in_clear = code
        .iter()
        .any(|f| contains(&readable(std::fs::read(f).unwrap_or_default()), CODE_MARKER));
    assert_eq!(
        in_clear, !encrypt_code,
        "the code directory holds the archive in the clear: {in_clear}"
    );
}
