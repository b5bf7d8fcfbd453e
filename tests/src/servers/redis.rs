//! A real `redis-server` for tests: no persistence, a free loopback port, a temp dir, killed on
//! drop. [`TestRedis::stop`] and [`TestRedis::restart`] (same port) let a test take Redis away
//! mid-test and bring it back.
//!
//! The binary is `$FNMESH_TEST_REDIS` or `redis-server` on PATH. [`TestRedis::command`] speaks
//! just enough RESP for tests to inspect keys (`PTTL`, `GET`), with no client library.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{find_binary, kill};

/// A running (or stopped) `redis-server`.
pub struct TestRedis {
    child: Option<Child>,
    binary: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
}

impl TestRedis {
    /// Starts `redis-server` on a free port and waits until it answers `PING`.
    pub fn start() -> Self {
        let binary = find_binary(
            "redis-server",
            "FNMESH_TEST_REDIS",
            "apt-get install redis-server",
        );
        let dir = tempfile::Builder::new()
            .prefix("fnmesh-redis-")
            .tempdir()
            .expect("temp dir for redis");
        let mut redis = Self {
            child: None,
            binary,
            port: crate::free_port(),
            dir,
        };
        redis.spawn();
        redis
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port (kept across [`Self::restart`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (its data is lost: nothing is persisted).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill(&mut child);
        }
    }

    /// Starts the server again on the same port (stopping it first if it runs).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Sends one command (as a RESP array) and returns the reply as text: the value of a
    /// simple string, integer or bulk string (`(nil)` for a null), or `ERR …` for an error.
    /// Arrays are not supported. Panics if the server does not answer.
    pub fn command(&self, args: &[&str]) -> String {
        self.try_command(args)
            .unwrap_or_else(|e| panic!("redis command {args:?} on port {}: {e}", self.port))
    }

    fn try_command(&self, args: &[&str]) -> std::io::Result<String> {
        let stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut request = format!("*{}\r\n", args.len());
        for a in args {
            request.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        (&stream).write_all(request.as_bytes())?;
        let mut reader = BufReader::new(&stream);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end().to_owned();
        let (kind, rest) = line.split_at(line.len().min(1));
        Ok(match kind {
            "+" | ":" => rest.to_owned(),
            "-" => rest.to_owned(),
            "$" if rest == "-1" => "(nil)".to_owned(),
            "$" => {
                let mut value = String::new();
                reader.read_line(&mut value)?;
                value.trim_end().to_owned()
            }
            _ => return Err(std::io::Error::other(format!("unsupported reply {line:?}"))),
        })
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("redis.log")).expect("redis log");
        let mut child = Command::new(&self.binary)
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--maxmemory-policy",
                "noeviction",
                "--dir",
            ])
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("redis log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", self.binary.display()));
        super::wait_for_port(
            self.port,
            Duration::from_secs(10),
            "redis-server",
            &mut child,
        );
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.try_command(&["PING"]).ok().as_deref() != Some("PONG") {
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING; its log:\n{}",
                self.port,
                std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.stop();
    }
}
