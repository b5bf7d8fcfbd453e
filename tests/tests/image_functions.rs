//! Image functions through `fnmesh up` (issue #15): busybox images built by the test, pushed
//! to a real registry (Debian's `docker-registry`, started on a free port) or uploaded as an
//! OCI layout archive; run in real sandboxes in `exec` and `http` mode.

use fnmesh_tests::images::{busybox_layout, layout_tar};
use fnmesh_tests::servers::registry::{RegistryServer, PRIVATE_PASSWORD, PRIVATE_USER};
use fnmesh_tests::{b64, TestApp};
use serde_json::{json, Value};

/// Prints what the image gives it: the payload, one of its own files, its `Env`, whether the
/// host's `/usr` is there, its user and working directory.
const EXEC_HANDLER: &[u8] = br#"#!/bin/sh
payload=$(cat)
if test -e /usr/bin/python3; then host=true; else host=false; fi
echo "to the logs from the image" >&2
printf '{"payload":%s,"release":"%s","greeting":"%s","host_usr":%s,"uid":%s,"cwd":"%s","function":"%s"}' \
  "$payload" "$(cat /etc/image-release)" "$GREETING" "$host" "$(id -u)" "$(pwd)" "$FUNCTION_NAME"
"#;

/// A CGI answered by busybox httpd for `POST /` (no index.html: `cgi-bin/index.cgi` runs).
const HTTP_CGI: &[u8] = br#"#!/bin/sh
body=$(head -c "$CONTENT_LENGTH")
if test -e /usr/bin/python3; then host=true; else host=false; fi
printf 'Content-Type: application/json\r\n\r\n'
printf '{"method":"%s","payload":%s,"greeting":"%s","release":"%s","host_usr":%s}' \
  "$REQUEST_METHOD" "$body" "$GREETING" "$(cat /etc/image-release)" "$host"
"#;

fn exec_image(dir: &std::path::Path, tag: &str, release: &str) -> String {
    busybox_layout(
        dir,
        tag,
        &[
            ("srv/handler", 0o755, EXEC_HANDLER),
            ("etc/image-release", 0o644, release.as_bytes()),
        ],
        json!({
            "Entrypoint": ["/srv/handler"],
            "Env": ["GREETING=hello from the image", "PATH=/bin"],
            "WorkingDir": "/srv",
            "User": "app",
        }),
    )
}

fn http_image(dir: &std::path::Path, tag: &str) -> String {
    busybox_layout(
        dir,
        tag,
        &[
            ("www/cgi-bin/index.cgi", 0o755, HTTP_CGI),
            ("etc/image-release", 0o644, b"http image"),
        ],
        json!({
            "Entrypoint": ["/bin/sh", "-c", "exec httpd -f -p 127.0.0.1:$PORT -h /www"],
            "Env": ["GREETING=served by the image", "PATH=/bin"],
        }),
    )
}

/// `fnmesh up` reading `registry` over plain HTTP, without pre-pulling: the first invocation
/// pulls (what these tests check), unless a test pre-pulls ([`start_prepulling`]).
async fn start(registry: &RegistryServer) -> TestApp {
    TestApp::start_with(&[
        ("FNMESH_INSECURE_REGISTRIES", registry.host.as_str()),
        ("FNMESH_IMAGE_PREPULL_CONCURRENCY", "0"),
    ])
    .await
}

/// `fnmesh up` reading `registry`, pre-pulling as it does by default.
async fn start_prepulling(registry: &RegistryServer) -> TestApp {
    TestApp::start_with(&[("FNMESH_INSECURE_REGISTRIES", registry.host.as_str())]).await
}

/// The images the node lists in its cache (`/v1/admin/nodes`), once `ready` holds of them
/// (within 60 s).
async fn node_images_once(app: &TestApp, ready: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let nodes = app.call("GET", "/v1/admin/nodes", None).await;
        let images = nodes.body["items"][0]["images"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if ready(&images) {
            return images;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the node's images: {:?}\n{}",
            nodes.body,
            app.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn images_placed_here_are_pulled_before_their_first_invocation() {
    let registry = RegistryServer::start_private();
    let dir = tempfile::tempdir().unwrap();
    let here = exec_image(&dir.path().join("here"), "1", "pre-pulled image");
    registry.push(&dir.path().join("here"), "1", "team/here");
    let elsewhere = exec_image(&dir.path().join("elsewhere"), "1", "placed elsewhere");
    registry.push(&dir.path().join("elsewhere"), "1", "team/elsewhere");
    let app = start_prepulling(&registry).await;
    // The credential reaches the node with the function, not with an invocation.
    let r = app
        .call(
            "PUT",
            &format!("/v1/registries/{}", registry.host),
            Some(json!({"username": PRIVATE_USER, "password": PRIVATE_PASSWORD})),
        )
        .await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    for (name, repo, config) in [
        ("here", "team/here", json!({})),
        (
            "elsewhere",
            "team/elsewhere",
            json!({"regions": ["another-region"]}),
        ),
    ] {
        let created = app
            .call(
                "POST",
                "/v1/functions",
                Some(json!({
                    "name": name,
                    "runtime": "image",
                    "image": format!("{}/{repo}:1", registry.host),
                    "config": config,
                })),
            )
            .await;
        assert_eq!(created.status, 201, "{name}: {:?}", created.body);
    }

    // Pulled and unpacked with no invocation, held by no sandbox.
    let images = node_images_once(&app, |images| {
        images.iter().any(|i| i["digest"] == json!(here))
    })
    .await;
    let cached = images.iter().find(|i| i["digest"] == json!(here)).unwrap();
    assert_eq!(cached["in_use"], 0, "{cached}");
    assert!(app.log().contains("image pre-pulled"), "{}", app.log());
    // The first invocation starts a sandbox on it without pulling.
    let first = app.invoke_ok("here", json!({"n": 1})).await;
    assert_eq!(first["status"], "succeeded", "{first}\n{}", app.log());
    assert_eq!(first["result"]["release"], "pre-pulled image");
    assert_eq!(first["metrics"]["cold_start"], true, "{first}");
    assert!(
        first["metrics"].get("pull_us").is_none() && first["metrics"].get("unpack_us").is_none(),
        "nothing left to pull or unpack: {first}"
    );
    // Not placed in this region: not pulled ahead.
    let images = node_images_once(&app, |_| true).await;
    assert!(
        !images.iter().any(|i| i["digest"] == json!(elsewhere)),
        "a function placed elsewhere was pre-pulled: {images:?}"
    );
    // A new version's image is pulled ahead too.
    let second = exec_image(&dir.path().join("here2"), "2", "second pre-pulled image");
    registry.push(&dir.path().join("here2"), "2", "team/here");
    let updated = app
        .call(
            "PUT",
            "/v1/functions/here",
            Some(json!({"image": format!("{}/team/here:2", registry.host)})),
        )
        .await;
    assert_eq!(updated.status, 200, "{:?}", updated.body);
    node_images_once(&app, |images| {
        images.iter().any(|i| i["digest"] == json!(second))
    })
    .await;
}

#[tokio::test]
async fn an_exec_image_from_a_registry_runs_with_its_own_files_env_and_user() {
    let registry = RegistryServer::start();
    let dir = tempfile::tempdir().unwrap();
    let first = exec_image(&dir.path().join("v1"), "1", "first image");
    registry.push(&dir.path().join("v1"), "1", "tools/hello");
    let app = start(&registry).await;

    let reference = format!("{}/tools/hello:1", registry.host);
    let created = app
        .call(
            "POST",
            "/v1/functions",
            Some(json!({"name": "img", "runtime": "image", "image": reference})),
        )
        .await;
    assert_eq!(created.status, 201, "{:?}\n{}", created.body, app.log());
    let image = &created.body["image"];
    assert_eq!(
        image["digest"],
        json!(first),
        "the tag is pinned to its digest"
    );
    assert_eq!(
        image["reference"],
        json!(format!("{}/tools/hello@{first}", registry.host))
    );
    assert_eq!(image["requested"], json!(reference));
    assert_eq!(image["mode"], "exec");

    let result = app.invoke_ok("img", json!({"n": 1})).await;
    assert_eq!(result["status"], "succeeded", "{result}\n{}", app.log());
    let out = &result["result"];
    assert_eq!(out["payload"], json!({"n": 1}));
    assert_eq!(out["release"], "first image", "the image's own files");
    assert_eq!(out["greeting"], "hello from the image", "the image's Env");
    assert_eq!(out["host_usr"], false, "nothing of the host's /usr");
    assert_eq!(out["cwd"], "/srv", "the image's WorkingDir");
    assert_eq!(out["function"], "img");
    assert_ne!(out["uid"], json!(0), "never root");
    // The cold start's record separates pulling and unpacking the image from the rest.
    let metrics = &result["metrics"];
    assert_eq!(metrics["cold_start"], true, "{metrics}");
    let (pull, unpack, init) = (
        metrics["pull_us"].as_u64().unwrap_or(0),
        metrics["unpack_us"].as_u64().unwrap_or(0),
        metrics["init_us"].as_u64().unwrap(),
    );
    assert!(pull > 0 && unpack > 0, "pull and unpack timed: {metrics}");
    assert!(pull + unpack <= init, "both are part of init: {metrics}");
    let warm = app.invoke_ok("img", json!({"n": 1})).await;
    assert_eq!(warm["metrics"]["cold_start"], false, "{warm}");
    assert!(
        warm["metrics"].get("pull_us").is_none(),
        "nothing pulled when warm: {warm}"
    );

    // A new image under the same tag does not change the deployed version.
    let second = exec_image(&dir.path().join("v2"), "1", "second image");
    assert_ne!(first, second);
    registry.push(&dir.path().join("v2"), "1", "tools/hello");
    let again = app.invoke_ok("img", json!({"n": 2})).await;
    assert_eq!(again["result"]["release"], "first image", "{again}");
    // A new version resolves the tag again.
    let updated = app
        .call(
            "PUT",
            "/v1/functions/img",
            Some(json!({"image": reference})),
        )
        .await;
    assert_eq!(updated.status, 200, "{:?}", updated.body);
    assert_eq!(updated.body["image"]["digest"], json!(second));
    let newer = app.invoke_ok("img", json!({"n": 3})).await;
    assert_eq!(newer["result"]["release"], "second image", "{newer}");
    let old = app
        .call(
            "POST",
            "/v1/functions/img/invoke?version=1",
            Some(json!({})),
        )
        .await;
    assert_eq!(old.status, 200, "{:?}", old.body);
    assert_eq!(old.body["result"]["release"], "first image");

    // The image's stderr is in the invocation's logs.
    let id = newer["id"].as_str().unwrap();
    let logs = app
        .call("GET", &format!("/v1/invocations/{id}/logs"), None)
        .await;
    assert!(
        logs.body.to_string().contains("to the logs from the image"),
        "{:?}",
        logs.body
    );
}

#[tokio::test]
async fn an_http_image_serves_invocations_from_one_long_lived_server() {
    let registry = RegistryServer::start();
    let dir = tempfile::tempdir().unwrap();
    http_image(&dir.path().join("web"), "1.0");
    registry.push(&dir.path().join("web"), "1.0", "web/echo");
    let app = start(&registry).await;
    let created = app
        .call(
            "POST",
            "/v1/functions",
            Some(json!({
                "name": "web",
                "runtime": "image",
                "image": format!("{}/web/echo:1.0", registry.host),
                "mode": "http",
                "port": 9000,
                "config": {"min_warm": 2},
            })),
        )
        .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    assert_eq!(created.body["image"]["mode"], "http");
    assert_eq!(created.body["image"]["port"], 9000);
    for n in 0..3 {
        let result = app.invoke_ok("web", json!({"n": n})).await;
        assert_eq!(result["status"], "succeeded", "{result}\n{}", app.log());
        let out = &result["result"];
        assert_eq!(out["method"], "POST");
        assert_eq!(out["payload"], json!({"n": n}));
        assert_eq!(out["greeting"], "served by the image");
        assert_eq!(out["release"], "http image");
        assert_eq!(out["host_usr"], false);
        let cold = result["metrics"]["cold_start"].as_bool().unwrap();
        assert_eq!(cold, n == 0, "one server, kept warm: {result}");
    }
    // `min_warm` applies to image functions: a second sandbox is started ahead of need.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let nodes = app.call("GET", "/v1/admin/nodes", None).await;
        if nodes.body["items"][0]["warm_sandboxes"].as_u64() >= Some(2) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "min_warm 2 not reached: {:?}\n{}",
            nodes.body,
            app.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn an_uploaded_image_archive_runs_with_no_registry() {
    let dir = tempfile::tempdir().unwrap();
    let digest = exec_image(&dir.path().join("layout"), "latest", "uploaded image");
    let archive = layout_tar(&dir.path().join("layout"));
    let app = TestApp::start().await;
    let created = app
        .call(
            "POST",
            "/v1/functions",
            Some(json!({
                "name": "offline",
                "runtime": "image",
                "code": {"source": b64(&archive)},
            })),
        )
        .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    assert_eq!(created.body["image"]["digest"], json!(digest));
    assert!(created.body["image"].get("reference").is_none());
    let result = app.invoke_ok("offline", json!("x")).await;
    assert_eq!(result["status"], "succeeded", "{result}\n{}", app.log());
    assert_eq!(result["result"]["release"], "uploaded image");
    assert_eq!(result["result"]["payload"], "x");
}

#[tokio::test]
async fn bad_images_are_refused_at_deploy_with_clear_errors() {
    let registry = RegistryServer::start();
    let app = start(&registry).await;
    let deploy = |body: Value| {
        let app = &app;
        async move { app.call("POST", "/v1/functions", Some(body)).await }
    };
    let cases = [
        (
            json!({"name": "a", "runtime": "image"}),
            400,
            "invalid_image",
        ),
        (
            json!({"name": "b", "runtime": "image", "image": "no-registry-here:1"}),
            400,
            "invalid_image",
        ),
        (
            json!({"name": "c", "runtime": "image", "image": format!("{}/missing/image:1", registry.host)}),
            400,
            "invalid_image",
        ),
        (
            json!({"name": "d", "runtime": "python3", "handler": "main.handle", "image": "x/y:1",
                   "code": {"source": b64(b"def handle(e, c): return e")}}),
            400,
            "invalid_image",
        ),
        (
            json!({"name": "e", "runtime": "image", "image": format!("{}/x/y:1", registry.host), "port": 8080}),
            400,
            "invalid_image",
        ),
        (
            json!({"name": "f", "runtime": "image", "code": {"source": b64(b"not an archive at all")}}),
            400,
            "invalid_image",
        ),
        (
            json!({"name": "g", "runtime": "image", "handler": "main.handle", "image": "x/y:1"}),
            400,
            "invalid_handler",
        ),
        // A registry that is not on the plain-HTTP allowlist is reached over HTTPS only.
        (
            json!({"name": "h", "runtime": "image", "image": "127.0.0.1:1/x/y:1"}),
            502,
            "registry_unavailable",
        ),
    ];
    for (body, status, code) in cases {
        let r = deploy(body.clone()).await;
        assert_eq!(r.status, status, "{body}: {:?}", r.body);
        assert_eq!(r.body["error"]["code"], code, "{body}: {:?}", r.body);
    }
    let listed = app.call("GET", "/v1/functions", None).await;
    assert_eq!(
        listed.body["items"],
        json!([]),
        "nothing was created: {:?}",
        listed.body
    );
}

#[tokio::test]
async fn a_private_registry_is_read_with_its_namespace_s_credential_only() {
    let registry = RegistryServer::start_private();
    let dir = tempfile::tempdir().unwrap();
    let digest = exec_image(&dir.path().join("p"), "1", "private image");
    registry.push(&dir.path().join("p"), "1", "team/private");
    let mut app = start(&registry).await;
    let host = registry.host.clone();
    let reference = format!("{host}/team/private:1");
    let body = json!({"name": "priv", "runtime": "image", "image": reference});
    let deploy = |key: Option<String>| {
        let (app, body) = (&app, body.clone());
        async move {
            match key {
                None => app.call("POST", "/v1/functions", Some(body)).await,
                Some(key) => {
                    app.call_with(
                        "POST",
                        "/v1/functions",
                        Some(body.to_string().into_bytes()),
                        Some(&key),
                    )
                    .await
                }
            }
        }
    };
    let put = |password: &str| {
        let app = &app;
        let path = format!("/v1/registries/{host}");
        let body = json!({"username": PRIVATE_USER, "password": password});
        async move { app.call("PUT", &path, Some(body)).await }
    };

    // No credential, then a wrong one: refused with a code that says what to do.
    for attempt in ["none", "wrong"] {
        if attempt == "wrong" {
            assert_eq!(put("not-the-password").await.status, 204);
        }
        let r = deploy(None).await;
        assert_eq!(r.status, 400, "{attempt}: {:?}", r.body);
        assert_eq!(
            r.body["error"]["code"], "registry_unauthorized",
            "{:?}",
            r.body
        );
        assert!(
            r.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&format!("PUT /v1/registries/{host}")),
            "{:?}",
            r.body
        );
    }
    // Bad hosts and bodies.
    for (path, body, code) in [
        (
            "/v1/registries/a%20b",
            json!({"username": "u", "password": "p"}),
            "invalid_name",
        ),
        (
            "/v1/registries/host:0",
            json!({"username": "u", "password": "p"}),
            "invalid_name",
        ),
        (
            &format!("/v1/registries/{host}") as &str,
            json!({"username": "u"}),
            "invalid_json",
        ),
        (
            &format!("/v1/registries/{host}"),
            json!({"username": "", "password": "p"}),
            "bad_request",
        ),
    ] {
        let r = app.call("PUT", path, Some(body.clone())).await;
        assert_eq!(r.status, 400, "{path} {body}: {:?}", r.body);
        assert_eq!(r.body["error"]["code"], code, "{path} {body}: {:?}", r.body);
    }

    // The right credential (with the CLI, the password on stdin, as `docker login`): the tag
    // resolves, and the node pulls with it.
    let cli = |args: &[&str], stdin: &str| {
        let run = fnmesh_tests::run_cli(&app.base_url, args, stdin);
        assert!(run.ok, "fnmesh {args:?}: {}", run.stderr);
        run.stdout
    };
    cli(
        &["registry", "login", &host, "--username", PRIVATE_USER],
        &format!("{PRIVATE_PASSWORD}\n"),
    );
    let listed: Value = serde_json::from_str(&cli(&["registry", "list", "--json"], "")).unwrap();
    assert_eq!(listed[0]["host"], json!(host), "{listed}");
    let listed = app.call("GET", "/v1/registries", None).await;
    assert_eq!(listed.status, 200, "{:?}", listed.body);
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(listed.body["items"][0]["host"], json!(host));
    assert!(!listed.body.to_string().contains(PRIVATE_PASSWORD));
    let created = deploy(None).await;
    assert_eq!(created.status, 201, "{:?}\n{}", created.body, app.log());
    assert_eq!(created.body["image"]["digest"], json!(digest));
    let result = app.invoke_ok("priv", json!({"n": 1})).await;
    assert_eq!(result["status"], "succeeded", "{result}\n{}", app.log());
    assert_eq!(result["result"]["release"], "private image");
    assert!(
        result["metrics"]["pull_us"].as_u64().unwrap_or(0) > 0,
        "pulled from the private registry: {result}"
    );

    // Another namespace has no credential for it, and cannot see this one's.
    let key_for = |body: Value| {
        let app = &app;
        async move {
            let created = app.call("POST", "/v1/keys", Some(body)).await;
            assert_eq!(created.status, 201, "{:?}", created.body);
            created.body["key"].as_str().unwrap().to_owned()
        }
    };
    let other =
        key_for(json!({"name": "other team", "role": "developer", "namespace": "other"})).await;
    let r = deploy(Some(other.clone())).await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], "registry_unauthorized");
    let r = app
        .call_with("GET", "/v1/registries", None, Some(&other))
        .await;
    assert_eq!(r.body["items"], json!([]), "{:?}", r.body);
    // A key limited to some functions cannot manage the namespace's credentials.
    let limited =
        key_for(json!({"name": "limited", "role": "developer", "functions": ["priv"]})).await;
    let r = app
        .call_with(
            "PUT",
            &format!("/v1/registries/{host}"),
            Some(
                json!({"username": "u", "password": "p"})
                    .to_string()
                    .into_bytes(),
            ),
            Some(&limited),
        )
        .await;
    assert_eq!(r.status, 403, "{:?}", r.body);

    // Removed: new versions cannot resolve the tag; what runs already keeps running.
    let path = format!("/v1/registries/{host}");
    assert_eq!(app.call("DELETE", &path, None).await.status, 204);
    assert_eq!(app.call("DELETE", &path, None).await.status, 404);
    let r = app
        .call(
            "PUT",
            "/v1/functions/priv",
            Some(json!({"image": reference})),
        )
        .await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], "registry_unauthorized");
    let again = app.invoke_ok("priv", json!({"n": 2})).await;
    assert_eq!(again["status"], "succeeded", "{again}");

    // The password is in neither the database nor the log.
    app.terminate(std::time::Duration::from_secs(30)).unwrap();
    let mut db = Vec::new();
    for file in ["fnmesh.db", "fnmesh.db-wal", "fnmesh.db-shm"] {
        if let Ok(bytes) = std::fs::read(app.data_dir.path().join(file)) {
            db.extend(bytes);
        }
    }
    assert!(!db.is_empty(), "no database");
    let needle = PRIVATE_PASSWORD.as_bytes();
    assert!(
        !db.windows(needle.len()).any(|w| w == needle),
        "the database holds the password"
    );
    let log = app.log();
    assert!(
        log.contains("registry credential set"),
        "the log names the host only"
    );
    assert!(
        !log.contains(PRIVATE_PASSWORD),
        "the log holds the password"
    );
}

/// What an image function sees from inside its sandbox, with busybox only (the image has no
/// Python): the checks of `sandbox_security.rs`'s `INSPECT`, in shell.
const INSPECT_SH: &[u8] = br#"#!/bin/sh
payload=$(cat)
port=$(echo "$payload" | sed 's/[^0-9]//g')
status() { grep "^$1:" /proc/self/status | cut -f2; }
attempt() {
  if ( eval "$1" ) >/tmp/out 2>&1; then echo ok
  elif grep -q "Read-only file system" /tmp/out; then echo EROFS
  elif grep -q "Operation not permitted\|permission denied\|Permission denied" /tmp/out; then echo EPERM
  else echo "failed"; fi
}
dd_err=$(dd if=/dev/zero of=/tmp/fill bs=1048576 count=512 2>&1 >/dev/null)
tmp_bytes=$(wc -c < /tmp/fill)
case "$dd_err" in *"No space left"*) tmp_err=ENOSPC ;; *) tmp_err=none ;; esac
rm -f /tmp/fill
connect() { if nc -w 2 "$1" "$2" </dev/null >/dev/null 2>&1; then echo connected; else echo refused; fi; }
fds=$(ls -l /proc/self/fd/ | sed -n 's/.* -> //p' | tr '\n' ' ')
env_text=$(env | sed 's/["\\]/_/g' | tr '\n' ';')
printf '{"uid":%s,"gid":%s,"cap_eff":"%s","cap_bnd":"%s","no_new_privs":"%s","seccomp":"%s",' \
  "$(id -u)" "$(id -g)" "$(status CapEff)" "$(status CapBnd)" "$(status NoNewPrivs)" "$(status Seccomp)"
printf '"write_root":"%s","write_bin":"%s","write_runtime":"%s","write_tmp":"%s",' \
  "$(attempt ': > /x')" "$(attempt ': > /bin/busybox')" "$(attempt ': > /var/runtime/x')" "$(attempt ': > /tmp/x')"
printf '"tmp_mb":%s,"tmp_err":"%s","ifaces":"%s","internet":"%s","gateway":"%s",' \
  "$((tmp_bytes / 1048576))" "$tmp_err" "$(sed -n '3,$p' /proc/net/dev | cut -d: -f1 | tr -d ' \n')" \
  "$(connect 1.1.1.1 80)" "$(connect 127.0.0.1 "$port")"
printf '"unshare_user":"%s","mount":"%s","kcore_bytes":%s,"pid":%s,"host_usr":"%s","fds":"%s","env":"%s"}' \
  "$(attempt 'unshare -U true')" "$(attempt 'mount -t tmpfs none /tmp')" \
  "$(head -c 16 /proc/kcore 2>/dev/null | wc -c)" "$$" "$(attempt 'test -e /usr/bin/python3')" "$fds" "$env_text"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_denies_by_default_inside_an_image_too() {
    let dir = tempfile::tempdir().unwrap();
    busybox_layout(
        &dir.path().join("layout"),
        "inspect",
        &[("srv/inspect", 0o755, INSPECT_SH)],
        // A root user in the image runs unprivileged all the same.
        json!({"Entrypoint": ["/srv/inspect"], "User": "root", "Env": ["PATH=/bin"]}),
    );
    let archive = layout_tar(&dir.path().join("layout"));
    let app = TestApp::start_with(&[
        ("AWS_SECRET_ACCESS_KEY", "host-secret"),
        ("FNMESH_SECRET_THING", "host-secret"),
    ])
    .await;
    let created = app
        .call(
            "POST",
            "/v1/functions",
            Some(json!({
                "name": "inspect",
                "runtime": "image",
                "code": {"source": b64(&archive)},
                "config": {"memory_mb": 256, "environment": {"MY_SETTING": "visible"}},
            })),
        )
        .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let r = app
        .invoke_ok("inspect", json!({"gateway_port": app.port}))
        .await;
    assert_eq!(r["status"], "succeeded", "{r}\n{}", app.log());
    let v = &r["result"];
    assert_ne!(v["uid"], 0, "{v}");
    assert_ne!(v["gid"], 0, "{v}");
    assert_eq!(v["cap_eff"], "0000000000000000", "{v}");
    assert_eq!(v["cap_bnd"], "0000000000000000", "{v}");
    assert_eq!(v["no_new_privs"], "1", "{v}");
    assert_eq!(v["seccomp"], "2", "{v}");
    assert_eq!(
        v["write_root"], "EROFS",
        "the image's root is read-only: {v}"
    );
    assert_eq!(v["write_bin"], "EROFS", "{v}");
    assert_eq!(
        v["write_runtime"], "EROFS",
        "the bootstrap is read-only: {v}"
    );
    assert_eq!(v["write_tmp"], "ok", "{v}");
    assert_eq!(v["tmp_err"], "ENOSPC", "{v}");
    assert!(v["tmp_mb"].as_u64().unwrap() <= 64, "/tmp is capped: {v}");
    assert_eq!(v["ifaces"], "lo", "only lo exists: {v}");
    assert_eq!(v["internet"], "refused", "{v}");
    assert_eq!(v["gateway"], "refused", "the host's gateway port: {v}");
    assert_eq!(v["unshare_user"], "EPERM", "{v}");
    assert_ne!(v["mount"], "ok", "{v}");
    assert_eq!(v["kcore_bytes"], 0, "{v}");
    assert!(v["pid"].as_u64().unwrap() < 10, "own pid namespace: {v}");
    assert_eq!(v["host_usr"], "failed", "no host /usr: {v}");
    for target in v["fds"].as_str().unwrap().split_whitespace() {
        assert!(
            target.starts_with("pipe:") || target == "/dev/null" || target.starts_with("/proc/"),
            "fd -> {target} is not one of the sandbox's own: {v}"
        );
    }
    let env = v["env"].as_str().unwrap();
    assert!(env.contains("MY_SETTING=visible"), "{env}");
    for entry in env.split(';').filter(|e| !e.is_empty()) {
        assert!(
            !entry.starts_with("FNMESH"),
            "{entry} leaked into the sandbox"
        );
        assert!(
            !entry.starts_with("AWS_"),
            "{entry} leaked into the sandbox"
        );
    }
    assert!(!env.contains("host-secret"));
    assert!(!env.contains(fnmesh_tests::ADMIN_KEY));
}
