//! The image bootstrap (`fnmesh-imageboot`) over its framed protocol, run directly on the host:
//! the `exec` mode's contract (stdin/stdout/stderr, exit codes, caps, the init frame's
//! variables) and the `http` mode's (a long-lived server on `$PORT`, `POST /`, statuses,
//! content types, a server that dies).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

struct Boot {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: ChildStdout,
    logs: Arc<Mutex<Vec<u8>>>,
}

impl Boot {
    fn start(args: &[&str]) -> Boot {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fnmesh-imageboot"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let mut stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Boot {
            stdin: child.stdin.take(),
            stdout: child.stdout.take().unwrap(),
            child,
            logs,
        }
    }

    fn send(&mut self, value: &Value) {
        let body = serde_json::to_vec(value).unwrap();
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(&(body.len() as u32).to_be_bytes()).unwrap();
        stdin.write_all(&body).unwrap();
    }

    fn recv(&mut self) -> Value {
        let mut header = [0u8; 4];
        self.stdout.read_exact(&mut header).unwrap();
        let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
        self.stdout.read_exact(&mut body).unwrap();
        serde_json::from_slice(&body).unwrap()
    }

    fn invoke(&mut self, id: &str, payload: Value, max: u64) -> Value {
        self.send(&json!({"id": id, "payload": payload, "max_result_bytes": max, "context": {}}));
        self.recv()
    }

    fn logs(&self) -> String {
        String::from_utf8_lossy(&self.logs.lock().unwrap()).into_owned()
    }

    /// Waits for the logs to contain `text`.
    fn logs_contain(&self, text: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.logs().contains(text) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// The exit status, within 10 s.
    fn exit_status(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the bootstrap did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Boot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn script(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.to_str().unwrap().to_owned()
}

const HANDLER: &str = r#"#!/bin/sh
read -r line
echo "handling in $(pwd)" >&2
case "$line" in
  *fail*) echo "something broke" >&2; exit 3 ;;
  *text*) echo "not json" ;;
  *big*) printf '"%s"' "$(head -c 3000 /dev/zero | tr '\0' x)" ;;
  *) printf '{"got":%s,"greeting":"%s"}' "$line" "$GREETING" ;;
esac
"#;

#[test]
fn exec_mode_runs_the_command_per_invocation() {
    let dir = tempfile::tempdir().unwrap();
    let handler = script(dir.path(), "handler", HANDLER);
    let cwd = dir.path().to_str().unwrap();
    let mut boot = Boot::start(&["exec", cwd, "--", &handler]);
    boot.send(&json!({"env": {"GREETING": "from a secret"}}));
    assert_eq!(boot.recv(), json!({"ready": true}));

    let answer = boot.invoke("inv-1", json!({"a": 1}), 1 << 20);
    assert_eq!(
        answer,
        json!({"ok": {"got": {"a": 1}, "greeting": "from a secret"}})
    );
    assert!(boot.logs_contain(&format!("handling in {cwd}\n\n\0fnmesh-end:inv-1\0\n")));

    let failed = boot.invoke("inv-2", json!({"fail": true}), 1 << 20);
    assert_eq!(failed["error"]["type"], "HandlerExit");
    assert_eq!(failed["error"]["kind"], "handler_error");
    let message = failed["error"]["message"].as_str().unwrap();
    assert!(message.contains("exited with status 3"), "{message}");
    assert!(message.contains("something broke"), "{message}");

    let not_json = boot.invoke("inv-3", json!({"text": true}), 1 << 20);
    assert_eq!(not_json["error"]["kind"], "invalid_result");

    let too_big = boot.invoke("inv-4", json!({"big": true}), 1000);
    assert_eq!(too_big["error"]["kind"], "invalid_result");
    assert!(too_big["error"]["message"]
        .as_str()
        .unwrap()
        .contains("over the limit of 1000"));

    // Still serving after all that.
    let again = boot.invoke("inv-5", json!(2), 1 << 20);
    assert_eq!(again["ok"]["got"], json!(2));
    assert!(boot.logs_contain("\0fnmesh-end:inv-5\0\n"));
    drop(boot.stdin.take());
    assert!(
        boot.exit_status().success(),
        "EOF on the protocol ends the bootstrap cleanly"
    );
}

#[test]
fn exec_mode_refuses_a_missing_command_at_init() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path().to_str().unwrap();
    let mut boot = Boot::start(&["exec", cwd, "--", "/no/such/handler"]);
    boot.send(&json!({"env": {}}));
    let answer = boot.recv();
    assert!(
        answer["init_error"].as_str().unwrap().contains("not found"),
        "{answer}"
    );
}

const SERVER: &str = r#"
import json, os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        print("request on", self.path, file=sys.stderr, flush=True)
        if body.get("exit"):
            os._exit(7)
        if body.get("fail"):
            out, status, kind = b"the server says no", 500, "text/plain"
        elif body.get("text"):
            out, status, kind = b"plain words", 200, "text/plain"
        else:
            reply = {"got": body, "greeting": os.environ.get("GREETING"), "pid": os.getpid()}
            out, status, kind = json.dumps(reply).encode(), 200, "application/json"
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass

HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn http_mode_posts_each_invocation_to_one_long_lived_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = dir.path().join("server.py");
    std::fs::write(&server, SERVER).unwrap();
    let port = free_port().to_string();
    let cwd = dir.path().to_str().unwrap();
    let mut boot = Boot::start(&[
        "http",
        cwd,
        &port,
        "--",
        "python3",
        server.to_str().unwrap(),
    ]);
    boot.send(&json!({"env": {"GREETING": "hello", "PATH": "/usr/bin:/bin"}}));
    assert_eq!(boot.recv(), json!({"ready": true}));

    let first = boot.invoke("h-1", json!({"n": 1}), 1 << 20);
    assert_eq!(first["ok"]["got"], json!({"n": 1}));
    assert_eq!(first["ok"]["greeting"], "hello");
    let second = boot.invoke("h-2", json!({"n": 2}), 1 << 20);
    assert_eq!(
        second["ok"]["pid"], first["ok"]["pid"],
        "one server serves every invocation"
    );
    assert!(boot.logs_contain("request on /\n"));
    assert!(boot.logs_contain("\0fnmesh-end:h-2\0\n"));

    let failed = boot.invoke("h-3", json!({"fail": true}), 1 << 20);
    assert_eq!(failed["error"]["type"], "HttpStatus");
    assert!(failed["error"]["message"]
        .as_str()
        .unwrap()
        .contains("answered 500: the server says no"));
    let text = boot.invoke("h-4", json!({"text": true}), 1 << 20);
    assert_eq!(text, json!({"ok": "plain words"}));

    // The server dies mid-request: the bootstrap exits, and the node sees a crash.
    boot.send(&json!({"id": "h-5", "payload": {"exit": true}, "max_result_bytes": 1024}));
    assert!(!boot.exit_status().success());
}

#[test]
fn http_mode_refuses_a_server_that_exits_before_listening() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path().to_str().unwrap();
    let port = free_port().to_string();
    let quitter = script(dir.path(), "quit", "#!/bin/sh\necho bye >&2\nexit 4\n");
    let mut boot = Boot::start(&["http", cwd, &port, "--", &quitter]);
    boot.send(&json!({"env": {}}));
    let answer = boot.recv();
    assert!(
        answer["init_error"]
            .as_str()
            .unwrap()
            .contains("exited before listening"),
        "{answer}"
    );
    assert!(boot.logs_contain("bye"));
}
