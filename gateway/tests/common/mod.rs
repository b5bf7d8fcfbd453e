//! `TestApp`: a real gateway on real embedded backends (SQLite file, local code dir, memory bus,
//! local rate limiter) in a temp dir, on a free port; stopped on drop.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use fnmesh_bus::memory::MemoryBus;
use fnmesh_bus::registry::memory::MemoryRegistry;
use fnmesh_bus::{Bus, BusConfig};
use fnmesh_code::local::LocalCodeStore;
use fnmesh_code::CodeStore;
use fnmesh_gateway::{auth, Backends, Gateway, GatewayConfig};
use fnmesh_ratelimit::local::LocalRateLimiter;
use fnmesh_store::sqlite::SqliteStore;
use fnmesh_store::MetadataStore;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

pub struct TestAppBuilder {
    config: GatewayConfig,
    bus: BusConfig,
    nats: Option<async_nats::Client>,
}

impl TestAppBuilder {
    pub fn config(mut self, f: impl FnOnce(&mut GatewayConfig)) -> Self {
        f(&mut self.config);
        self
    }

    pub fn bus(mut self, f: impl FnOnce(&mut BusConfig)) -> Self {
        f(&mut self.bus);
        self
    }

    /// Also serves NATS request/reply clients over `client`.
    pub fn nats(mut self, client: async_nats::Client) -> Self {
        self.nats = Some(client);
        self
    }

    pub async fn start(self) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn MetadataStore> = Arc::new(
            SqliteStore::open(&dir.path().join("fnmesh.db"))
                .await
                .unwrap(),
        );
        let code: Arc<dyn CodeStore> = Arc::new(
            LocalCodeStore::open(&dir.path().join("code"))
                .await
                .unwrap(),
        );
        let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new(self.bus));
        let limiter = Arc::new(LocalRateLimiter::new());
        let registry = Arc::new(MemoryRegistry::new());
        let key = auth::generate_key();
        auth::ensure_admin_key(store.as_ref(), &key).await.unwrap();
        let mut config = self.config;
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        let gateway = Gateway::bind(
            config,
            Backends {
                store: store.clone(),
                code: code.clone(),
                bus: bus.clone(),
                limiter,
                registry: registry.clone(),
            },
        )
        .await
        .unwrap();
        let gateway = match self.nats {
            Some(client) => gateway
                .serve_nats_requests(
                    client,
                    &fnmesh_core::subjects::BusPrefix::parse("local").unwrap(),
                )
                .await
                .unwrap(),
            None => gateway,
        };
        let addr = gateway.local_addr();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(gateway.run(shutdown.clone()));
        TestApp {
            dir,
            addr,
            key,
            store,
            code,
            bus,
            registry,
            shutdown,
            task: Some(task),
            http: {
                // reqwest leaves rustls's crypto provider to the application.
                let _ = rustls::crypto::ring::default_provider().install_default();
                reqwest::Client::new()
            },
        }
    }
}

pub struct TestApp {
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub key: String,
    pub store: Arc<dyn MetadataStore>,
    pub code: Arc<dyn CodeStore>,
    pub bus: Arc<dyn Bus>,
    pub registry: Arc<MemoryRegistry>,
    pub shutdown: CancellationToken,
    pub task: Option<tokio::task::JoinHandle<Result<(), fnmesh_gateway::GatewayError>>>,
    pub http: reqwest::Client,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A response, read whole.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Resp {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("<none>")
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl TestApp {
    pub fn builder() -> TestAppBuilder {
        TestAppBuilder {
            config: GatewayConfig::default(),
            bus: BusConfig::default(),
            nats: None,
        }
    }

    pub async fn start() -> TestApp {
        Self::builder().start().await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Sends `method path` with the admin key and an optional raw body.
    pub async fn send(&self, method: &str, path: &str, body: Option<Vec<u8>>) -> Resp {
        self.send_with_key(method, path, body, Some(&self.key.clone()))
            .await
    }

    pub async fn send_with_key(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        key: Option<&str>,
    ) -> Resp {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(method, self.url(path));
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| panic!("non-JSON body: {}", String::from_utf8_lossy(&bytes)))
        };
        Resp {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send("GET", path, None).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Resp {
        self.send("POST", path, Some(serde_json::to_vec(body).unwrap()))
            .await
    }

    pub async fn put_json(&self, path: &str, body: &Value) -> Resp {
        self.send("PUT", path, Some(serde_json::to_vec(body).unwrap()))
            .await
    }

    /// Creates a python function from a one-file zip; asserts 201.
    pub async fn create_function(&self, name: &str) -> Value {
        let resp = self.post_json("/v1/functions", &create_body(name)).await;
        assert_eq!(resp.status, 201, "{:?}", resp.body);
        resp.body
    }
}

/// A zip of `(name, contents)` entries.
pub fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, data) in entries {
        w.start_file(*name, zip::write::SimpleFileOptions::default())
            .unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A valid create body for a python function `main.handle`.
pub fn create_body(name: &str) -> Value {
    json!({
        "name": name,
        "runtime": "python3",
        "handler": "main.handle",
        "code": {
            "source": b64(&zip_of(&[("main.py", b"def handle(event, context):\n    return event\n")])),
            "source_type": "inline"
        },
        "config": {"timeout_ms": 5000},
        "metadata": {"team": "tests"}
    })
}

/// Polls `f` until it returns `Some`, for at most 5 s.
pub async fn eventually<T, F, Fut>(mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met in 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The invalid names every API entry point must refuse with `invalid_name`, with their
/// percent-encoded path form.
pub fn invalid_names() -> Vec<(String, String)> {
    let long = "a".repeat(64);
    vec![
        ("a.b".into(), "a.b".into()),
        ("*".into(), "*".into()),
        (">".into(), "%3E".into()),
        ("A".into(), "A".into()),
        ("a b".into(), "a%20b".into()),
        ("a\tb".into(), "a%09b".into()),
        ("".into(), "".into()),
        (long.clone(), long),
        ("$JS".into(), "$JS".into()),
    ]
}
