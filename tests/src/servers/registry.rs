//! A real registry for tests: Debian's `docker-registry` on a free loopback port, its storage
//! in a temp dir, killed on drop; images pushed with `skopeo` from OCI layouts.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RegistryServer {
    child: Child,
    pub host: String,
    dir: tempfile::TempDir,
    /// The user name and password a private registry ([`RegistryServer::start_private`])
    /// wants for every call.
    pub credentials: Option<(String, String)>,
}

/// The user of a private test registry.
pub const PRIVATE_USER: &str = "fnuser";
/// Its password.
pub const PRIVATE_PASSWORD: &str = "fnmesh-registry-pass";
/// `PRIVATE_PASSWORD` hashed with bcrypt (the only form distribution's htpasswd reads), made
/// once with Python's `crypt.crypt(PRIVATE_PASSWORD, crypt.mksalt(crypt.METHOD_BLOWFISH,
/// rounds=16))`: cost 4, since the registry checks it on every request.
const PRIVATE_PASSWORD_BCRYPT: &str =
    "$2b$04$VUYWUPWudbD5pu6eJNksleJsPOOKhylvkWHLbmJKVJw.mAM2N5b.2";

fn need(binary: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {binary}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        found,
        "`{binary}` is not on PATH: install it with `apt-get install {package}` \
         (or run ./scripts/setup-debian.sh --test)"
    );
}

impl RegistryServer {
    /// A registry anyone may read and push to.
    pub fn start() -> RegistryServer {
        Self::start_inner(false)
    }

    /// A registry that wants [`PRIVATE_USER`] / [`PRIVATE_PASSWORD`] (HTTP basic, htpasswd)
    /// for every call, pulls included.
    pub fn start_private() -> RegistryServer {
        Self::start_inner(true)
    }

    fn start_inner(private: bool) -> RegistryServer {
        need("docker-registry", "docker-registry");
        need("skopeo", "skopeo");
        let dir = tempfile::tempdir().unwrap();
        let port = crate::free_port();
        let host = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    \
             rootdirectory: {}\nhttp:\n  addr: {host}\n",
            dir.path().join("data").display()
        );
        if private {
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(
                &htpasswd,
                format!("{PRIVATE_USER}:{PRIVATE_PASSWORD_BCRYPT}\n"),
            )
            .unwrap();
            yaml.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: fnmesh-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        std::fs::write(&config, yaml).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = RegistryServer {
            child,
            host,
            dir,
            credentials: private.then(|| (PRIVATE_USER.to_owned(), PRIVATE_PASSWORD.to_owned())),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !server.ready() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer in 10 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn ready(&self) -> bool {
        let Ok(mut conn) = TcpStream::connect(&self.host) else {
            return false;
        };
        let request = format!("GET /v2/ HTTP/1.0\r\nHost: {}\r\n\r\n", self.host);
        if conn.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut answer = String::new();
        let _ = conn.read_to_string(&mut answer);
        let status = if self.credentials.is_some() {
            "401"
        } else {
            "200"
        };
        answer.starts_with(&format!("HTTP/1.0 {status}"))
            || answer.starts_with(&format!("HTTP/1.1 {status}"))
    }

    /// Pushes the image `tag` of the layout at `layout` as `<repo>:<tag>`.
    pub fn push(&self, layout: &Path, tag: &str, repo: &str) {
        let mut copy = Command::new("skopeo");
        copy.args([
            "copy",
            "--quiet",
            "--insecure-policy",
            "--dest-tls-verify=false",
        ]);
        if let Some((user, password)) = &self.credentials {
            copy.arg(format!("--dest-creds={user}:{password}"));
        }
        let out = copy
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{repo}:{tag}", self.host))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo copy failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Where the registry keeps the blob `hex` (to corrupt it on purpose).
    pub fn blob_path(&self, hex: &str) -> PathBuf {
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for RegistryServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
