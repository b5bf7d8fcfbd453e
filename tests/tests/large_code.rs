//! Large code through a real `fnmesh up`: archives uploaded as the raw body (`application/zip`,
//! `application/gzip`, `application/x-tar`, fields in `Fnmesh-*` headers) or as a multipart
//! form, past the JSON body's cap and unpacking past the old 50 MiB cap; the archive cap
//! answered 413 whether the size is declared or not; the CLI deploying the raw form.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read as _;

use fnmesh_tests::{run_cli, unique, TestApp, ADMIN_KEY};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// Reports the sizes and the SHA-256 of its two big files.
const HANDLER: &str = "import hashlib, os\n\ndef handle(event, context):\n    here = os.path.dirname(__file__)\n    data = open(os.path.join(here, 'data.bin'), 'rb').read()\n    return {'data': len(data), 'sha256': hashlib.sha256(data).hexdigest(), 'text': os.path.getsize(os.path.join(here, 'big/text.txt')), 'v': event.get('v')}\n";

/// `n` bytes from the kernel's random source (incompressible).
fn random_bytes(n: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut bytes)
        .unwrap();
    bytes
}

/// `n` bytes of text (compresses well).
fn text(n: usize) -> Vec<u8> {
    b"the quick brown fox jumps over the lazy dog 0123456789\n"
        .iter()
        .copied()
        .cycle()
        .take(n)
        .collect()
}

/// A tar.gz of the handler, `data` as `data.bin` and `text` as `big/text.txt`.
fn tar_gz(data: &[u8], text: &[u8]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(gz);
    for (path, bytes) in [
        ("main.py", HANDLER.as_bytes()),
        ("data.bin", data),
        ("big/text.txt", text),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        builder.append_data(&mut header, path, bytes).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

/// A multipart form body of `metadata` (JSON) and `code` (the archive), and its content type.
fn form(metadata: &Value, code: &[u8]) -> (Vec<u8>, String) {
    let boundary = "fnmesh-test-boundary-7d1c";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\
             Content-Type: application/json\r\n\r\n{metadata}\r\n--{boundary}\r\n\
             Content-Disposition: form-data; name=\"code\"; filename=\"code.tar.gz\"\r\n\
             Content-Type: application/gzip\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(code);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (body, format!("multipart/form-data; boundary={boundary}"))
}

/// Sends a raw upload; status and JSON body.
async fn send(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    content_type: &str,
    headers: &[(&str, &str)],
    body: reqwest::Body,
) -> (u16, Value) {
    let mut request = app
        .http
        .request(method, format!("{}{path}", app.base_url))
        .bearer_auth(ADMIN_KEY)
        .header("content-type", content_type);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.body(body).send().await.unwrap();
    let status = response.status().as_u16();
    let bytes = response.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archives_past_the_json_cap_upload_raw_or_as_a_form_and_run() {
    // A 12 MiB cap: an upload over it stays within what the gateway drains before its 413
    // (16 MiB), so the client reads the answer instead of a broken pipe.
    let app = TestApp::start_with(&[("FNMESH_MAX_ARCHIVE_BYTES", "12582912")]).await;
    // 8 MiB that do not compress (over the 6 MiB JSON body) and 60 MiB of text (over the
    // old 50 MiB unpacked cap).
    let data = random_bytes(8 * 1024 * 1024);
    let text = text(60 * 1024 * 1024);
    let archive = tar_gz(&data, &text);
    assert!(archive.len() > 8 * 1024 * 1024 && archive.len() < 12 * 1024 * 1024);
    let data_sha = hex::encode(Sha256::digest(&data));
    let name = unique("large");

    let config = json!({"memory_mb": 256, "timeout_ms": 60000}).to_string();
    let (status, created) = send(
        &app,
        reqwest::Method::POST,
        "/v1/functions",
        "application/gzip",
        &[
            ("fnmesh-name", &name),
            ("fnmesh-runtime", "python3"),
            ("fnmesh-handler", "main.handle"),
            ("fnmesh-config", &config),
            ("fnmesh-metadata", r#"{"team":"big"}"#),
        ],
        archive.clone().into(),
    )
    .await;
    assert_eq!(status, 201, "{created}\n{}", app.log());
    assert_eq!(created["version"], 1);
    assert_eq!(created["config"]["memory_mb"], 256);
    assert_eq!(created["metadata"]["team"], "big");
    let stored = created["code"]["size"].as_u64().unwrap();
    assert!(
        stored < 12 * 1024 * 1024,
        "stored compressed: {stored} bytes for 68 MiB unpacked"
    );
    let ran = app.invoke_ok(&name, json!({"v": 1})).await;
    assert_eq!(ran["status"], "succeeded", "{ran}");
    assert_eq!(
        ran["result"],
        json!({"data": data.len(), "sha256": data_sha, "text": text.len(), "v": 1})
    );

    // A form: a new version with the code in a `code` part.
    let (body, content_type) = form(&json!({"handler": "main.handle"}), &archive);
    let (status, updated) = send(
        &app,
        reqwest::Method::PUT,
        &format!("/v1/functions/{name}"),
        &content_type,
        &[],
        body.into(),
    )
    .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["version"], 2);
    assert_eq!(
        updated["code"]["checksum"], created["code"]["checksum"],
        "the same code stores the same bytes"
    );

    // Over the archive cap: 413 in the error shape, declared or streamed.
    let over = random_bytes(13 * 1024 * 1024);
    let (status, refused) = send(
        &app,
        reqwest::Method::PUT,
        &format!("/v1/functions/{name}"),
        "application/zip",
        &[],
        over.clone().into(),
    )
    .await;
    assert_eq!(status, 413, "{refused}");
    assert_eq!(refused["error"]["code"], "payload_too_large");
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        over.chunks(1024 * 1024).map(|c| Ok(c.to_vec())).collect();
    let (status, refused) = send(
        &app,
        reqwest::Method::PUT,
        &format!("/v1/functions/{name}"),
        "application/x-tar",
        &[],
        reqwest::Body::wrap_stream(futures::stream::iter(chunks)),
    )
    .await;
    assert_eq!(status, 413, "{refused}");
    assert_eq!(refused["error"]["code"], "payload_too_large");
    // Bad uploads are the caller's: 400s, named.
    let (status, refused) = send(
        &app,
        reqwest::Method::PUT,
        &format!("/v1/functions/{name}"),
        "application/zip",
        &[("fnmesh-config", "{not json")],
        b"PK\x03\x04".to_vec().into(),
    )
    .await;
    assert_eq!(
        (status, &refused["error"]["code"]),
        (400, &json!("invalid_json"))
    );
    let (status, refused) = send(
        &app,
        reqwest::Method::PUT,
        &format!("/v1/functions/{name}"),
        "application/zip",
        &[],
        b"PK\x03\x04 truncated".to_vec().into(),
    )
    .await;
    assert_eq!(
        (status, &refused["error"]["code"]),
        (400, &json!("invalid_archive"))
    );
    let (body, content_type) = form(&json!({"code": {"source": "aGk="}}), &archive);
    let (status, refused) = send(
        &app,
        reqwest::Method::PUT,
        &format!("/v1/functions/{name}"),
        &content_type,
        &[],
        body.into(),
    )
    .await;
    assert_eq!(status, 400, "code given twice: {refused}");
    assert!(app.log().lines().all(|l| !l.contains("panicked")));

    // The CLI uploads a directory raw: 8 MiB would not fit the JSON body.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("main.py"), HANDLER).unwrap();
    std::fs::write(dir.path().join("data.bin"), &data).unwrap();
    std::fs::create_dir(dir.path().join("big")).unwrap();
    std::fs::write(dir.path().join("big/text.txt"), b"small").unwrap();
    let cli_name = unique("cli-large");
    let run = run_cli(
        &app.base_url,
        &[
            "fn",
            "deploy",
            dir.path().to_str().unwrap(),
            "--name",
            &cli_name,
            "--runtime",
            "python3",
            "--handler",
            "main.handle",
            "--memory-mb",
            "256",
        ],
        "",
    );
    assert!(run.ok, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("version 1"), "{}", run.stdout);
    let ran = app.invoke_ok(&cli_name, json!({"v": 2})).await;
    assert_eq!(ran["result"]["sha256"], data_sha, "{ran}");
    assert_eq!(ran["result"]["text"], 5);
}
