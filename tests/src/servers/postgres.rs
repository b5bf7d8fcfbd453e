//! A real PostgreSQL server for tests: `initdb` into a temp dir, `postgres` on a free loopback
//! port (trust auth, `fsync=off`), a fresh database per test, killed on drop.
//!
//! Binaries: `$FNMESH_TEST_INITDB`, `$FNMESH_TEST_POSTGRES` and `$FNMESH_TEST_PSQL` if set,
//! else on PATH, else in `/usr/lib/postgresql/<version>/bin` (where Debian puts them, off
//! PATH), newest version first. PostgreSQL refuses to run as root: when the tests run as root
//! the server runs as the system user `postgres` (or `$FNMESH_TEST_PG_USER`), which then owns
//! the temp dir.
//!
//! ```text
//! let pg = TestPostgres::shared();          // one server per test binary
//! let url = pg.fresh_database();            // this test's own database
//! let store = PostgresStore::connect_and_migrate(&url).await?;
//! ```

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill as send_signal, Signal};
use nix::unistd::{chown, Pid, User};
use tempfile::TempDir;

/// The superuser created by `initdb` (trust auth on loopback).
pub const SUPERUSER: &str = "fnmesh";

/// How long the server may take to start or stop.
const READY_WITHIN: Duration = Duration::from_secs(30);
const INSTALL_HINT: &str = "apt-get install postgresql";

/// A running PostgreSQL server in a temp dir.
pub struct TestPostgres {
    port: u16,
    dir: Mutex<Option<TempDir>>,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    run_as: Option<User>,
    child: Mutex<Option<Child>>,
}

impl TestPostgres {
    /// One server per test process, started on first use and killed when the process exits.
    /// Tests share it and take their own database with [`TestPostgres::fresh_database`].
    pub fn shared() -> &'static TestPostgres {
        static SHARED: OnceLock<TestPostgres> = OnceLock::new();
        extern "C" fn stop_shared() {
            if let Some(pg) = SHARED.get() {
                pg.shutdown();
            }
        }
        SHARED.get_or_init(|| {
            let pg = TestPostgres::start();
            // Statics are never dropped: stop the server when the test binary exits.
            // SAFETY: registers a plain `extern "C" fn` with no arguments, as atexit expects.
            let registered = unsafe { nix::libc::atexit(stop_shared) };
            assert_eq!(
                registered, 0,
                "registering the postgres cleanup with atexit"
            );
            pg
        })
    }

    /// Initialises a cluster in a fresh temp dir and starts a server on a free port; waits
    /// until it answers queries.
    pub fn start() -> TestPostgres {
        let initdb = pg_binary("initdb", "FNMESH_TEST_INITDB");
        let dir = tempfile::Builder::new()
            .prefix("fnmesh-pg-")
            .tempdir()
            .expect("creating a temp dir for postgres");
        let run_as = unprivileged_user();
        if let Some(user) = &run_as {
            chown(dir.path(), Some(user.uid), Some(user.gid))
                .unwrap_or_else(|e| panic!("chown {} to {}: {e}", dir.path().display(), user.name));
        }
        let data_dir = dir.path().join("data");
        let socket_dir = dir.path().join("sock");
        std::fs::create_dir(&socket_dir).expect("creating the socket dir");
        if let Some(user) = &run_as {
            chown(&socket_dir, Some(user.uid), Some(user.gid)).expect("chown the socket dir");
        }

        let log = dir.path().join("initdb.log");
        let mut cmd = Command::new(&initdb);
        cmd.arg("-D").arg(&data_dir).args([
            "-U",
            SUPERUSER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "-N",
        ]);
        let status = as_user(&mut cmd, &run_as, dir.path())
            .stdout(log_file(&log))
            .stderr(log_file(&log))
            .status()
            .unwrap_or_else(|e| panic!("running {}: {e}", initdb.display()));
        assert!(
            status.success(),
            "initdb failed ({status}):\n{}",
            read_tail(&log)
        );

        let pg = TestPostgres {
            port: crate::free_port(),
            dir: Mutex::new(Some(dir)),
            data_dir,
            socket_dir,
            run_as,
            child: Mutex::new(None),
        };
        pg.spawn();
        pg
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// URL of the `postgres` maintenance database.
    pub fn url(&self) -> String {
        self.url_of("postgres")
    }

    /// URL of database `database` on this server.
    pub fn url_of(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates a new, empty database and returns its URL: each test owns its data.
    pub fn fresh_database(&self) -> String {
        let name = format!("t_{:016x}", rand_u64());
        self.psql("postgres", &format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("creating database {name}: {e}"));
        self.url_of(&name)
    }

    /// Runs one SQL command with `psql` against `database`; the error holds psql's output.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, String> {
        let psql = pg_binary("psql", "FNMESH_TEST_PSQL");
        let out = Command::new(&psql)
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                SUPERUSER,
            ])
            .args(["-d", database, "-c", sql])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running {}: {e}", psql.display()))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(format!(
                "psql exited with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Stops the server (fast shutdown: clients are disconnected); data is kept.
    pub fn stop(&self) {
        if let Some(mut child) = lock(&self.child).take() {
            // SIGINT is PostgreSQL's "fast" shutdown: no waiting for clients to leave.
            let _ = send_signal(Pid::from_raw(child.id() as i32), Signal::SIGINT);
            wait_or_kill(&mut child, READY_WITHIN);
        }
    }

    /// Starts the server again on the same port and data dir, after [`TestPostgres::stop`].
    pub fn start_again(&self) {
        assert!(lock(&self.child).is_none(), "postgres is already running");
        self.spawn();
    }

    fn spawn(&self) {
        let postgres = pg_binary("postgres", "FNMESH_TEST_POSTGRES");
        let log = self.log_path();
        let dir = self.dir_path();
        let mut cmd = Command::new(&postgres);
        cmd.arg("-D")
            .arg(&self.data_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(&self.socket_dir)
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=300"]);
        let mut child = as_user(&mut cmd, &self.run_as, &dir)
            .stdin(Stdio::null())
            .stdout(log_file(&log))
            .stderr(log_file(&log))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", postgres.display()));

        // Listening comes before accepting queries (recovery): wait for a query to pass.
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "postgres exited with {status} at start:\n{}",
                    read_tail(&log)
                );
            }
            match self.psql("postgres", "SELECT 1") {
                Ok(_) => break,
                Err(e) if Instant::now() > deadline => {
                    super::kill(&mut child);
                    panic!(
                        "postgres did not answer within {READY_WITHIN:?} ({e}):\n{}",
                        read_tail(&log)
                    );
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        *lock(&self.child) = Some(child);
    }

    fn dir_path(&self) -> PathBuf {
        lock(&self.dir)
            .as_ref()
            .map(|d| d.path().to_owned())
            .expect("the postgres temp dir is gone")
    }

    fn log_path(&self) -> PathBuf {
        self.dir_path().join("postgres.log")
    }

    /// Stops the server (SIGTERM, then SIGKILL) and removes its directory.
    fn shutdown(&self) {
        if let Some(mut child) = lock(&self.child).take() {
            let _ = send_signal(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            wait_or_kill(&mut child, Duration::from_secs(5));
        }
        drop(lock(&self.dir).take());
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Waits for `child` up to `within`, then SIGKILLs and reaps it.
fn wait_or_kill(child: &mut Child, within: Duration) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    super::kill(child);
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs `cmd` as `user` (if any) with `dir` as its working directory.
fn as_user<'a>(cmd: &'a mut Command, user: &Option<User>, dir: &Path) -> &'a mut Command {
    cmd.current_dir(dir);
    if let Some(user) = user {
        // std drops root's supplementary groups when it switches uid.
        cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        cmd.env("HOME", dir).env("USER", &user.name);
    }
    cmd
}

/// The user to run the server as: `None` unless we are root (PostgreSQL refuses root).
fn unprivileged_user() -> Option<User> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let name = std::env::var("FNMESH_TEST_PG_USER").unwrap_or_else(|_| "postgres".to_owned());
    let user = User::from_name(&name)
        .unwrap_or_else(|e| panic!("looking up user {name:?}: {e}"))
        .unwrap_or_else(|| {
            panic!(
                "PostgreSQL refuses to run as root and there is no user {name:?} to run it as; \
                 create one (`useradd --system {name}`, or {INSTALL_HINT}) or set \
                 FNMESH_TEST_PG_USER"
            )
        });
    Some(user)
}

/// `$env_override`, else `name` on PATH, else the newest `/usr/lib/postgresql/*/bin/name`.
pub fn pg_binary(name: &str, env_override: &str) -> PathBuf {
    if let Ok(p) = std::env::var(env_override) {
        return PathBuf::from(p);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if let Some(p) = on_path {
        return p;
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let p = entry.path().join("bin").join(name);
            p.is_file().then_some((version, p))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p).unwrap_or_else(|| {
        panic!(
            "`{name}` is not on PATH nor in /usr/lib/postgresql/*/bin (or set {env_override}); \
             install it with: {INSTALL_HINT}"
        )
    })
}

fn log_file(path: &Path) -> File {
    File::options()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()))
}

fn read_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish()
}
