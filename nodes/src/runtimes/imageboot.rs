//! `fnmesh-imageboot`: the bootstrap of `image` functions, run inside the sandbox.
//!
//! Images need not contain Python or Node.js, so their bootstrap is ours, in Rust: the node
//! mounts it at [`super::RUNTIME_DIR`] and starts it through the host's dynamic loader, mounted
//! beside it, so it needs nothing from the image. It speaks the same framed protocol as the
//! other bootstraps (see [`super::protocol`]): the init frame's variables go into the
//! environment of what it starts, each request gets one response frame, and the end marker goes
//! to the log pipe after each invocation's output.
//!
//! Two modes, chosen per function:
//! - `exec <cwd> -- <argv…>`: the image's entrypoint and command run once per invocation, the
//!   payload's JSON on stdin; stdout (JSON) is the result, stderr goes to the logs and its last
//!   2 KiB into the error of a non-zero exit. The contract of the `exec` runtime.
//! - `http <cwd> <port> -- <argv…>`: the image's server is started once with `PORT=<port>`
//!   and must listen on the sandbox's loopback; each invocation is `POST /` with the payload
//!   (`Content-Type: application/json`) over a kept-alive connection. A 2xx answer's body is
//!   the result (parsed as JSON when it says `application/json`, else the body as a string); any
//!   other status is a handler error. If the server exits, so does the bootstrap, and the node
//!   treats the sandbox as crashed. The conventions of Knative and OpenFaaS's of-watchdog.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::protocol::end_marker;

/// Largest request frame read.
const MAX_FRAME: usize = 64 * 1024 * 1024;
/// Largest handler stdout (or HTTP body) kept.
pub const MAX_OUTPUT: usize = 32 * 1024 * 1024;
/// How much of a failed handler's stderr goes into its error message.
const STDERR_TAIL: usize = 2048;
/// How long an `http` server has to start listening.
pub const SERVER_START: Duration = Duration::from_secs(30);
/// Largest HTTP response head.
const MAX_HEAD: usize = 64 * 1024;

/// How the function is run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Exec {
        cwd: String,
        argv: Vec<String>,
    },
    Http {
        cwd: String,
        port: u16,
        argv: Vec<String>,
    },
}

impl Mode {
    /// Parses `exec <cwd> -- <argv…>` or `http <cwd> <port> -- <argv…>`.
    pub fn parse(args: &[String]) -> Result<Mode, String> {
        let split = args
            .iter()
            .position(|a| a == "--")
            .ok_or("expected `--` before the command")?;
        let (head, argv) = (&args[..split], args[split + 1..].to_vec());
        if argv.is_empty() {
            return Err("no command after `--`".to_owned());
        }
        match head {
            [mode, cwd] if mode == "exec" => Ok(Mode::Exec {
                cwd: cwd.clone(),
                argv,
            }),
            [mode, cwd, port] if mode == "http" => Ok(Mode::Http {
                cwd: cwd.clone(),
                port: port.parse().map_err(|_| format!("bad port {port:?}"))?,
                argv,
            }),
            _ => Err("usage: exec <cwd> -- <argv…> | http <cwd> <port> -- <argv…>".to_owned()),
        }
    }

    /// The arguments [`Mode::parse`] reads back.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = match self {
            Mode::Exec { cwd, .. } => vec!["exec".to_owned(), cwd.clone()],
            Mode::Http { cwd, port, .. } => {
                vec!["http".to_owned(), cwd.clone(), port.to_string()]
            }
        };
        args.push("--".to_owned());
        match self {
            Mode::Exec { argv, .. } | Mode::Http { argv, .. } => args.extend(argv.iter().cloned()),
        }
        args
    }
}

/// The bootstrap's `main`: returns the exit status.
pub fn main_with(args: &[String]) -> i32 {
    let mode = match Mode::parse(args) {
        Ok(mode) => mode,
        Err(e) => {
            eprintln!("fnmesh-imageboot: {e}");
            return 2;
        }
    };
    let mut proto = match Proto::take_fds() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("fnmesh-imageboot: setting up descriptors: {e}");
            return 1;
        }
    };
    match serve(&mut proto, &mode) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("fnmesh-imageboot: {e}");
            1
        }
    }
}

/// The protocol descriptors, moved off 0 and 1 (which then point at `/dev/null` and the logs).
struct Proto {
    input: BufReader<File>,
    output: File,
}

impl Proto {
    fn take_fds() -> io::Result<Proto> {
        let input = nix::unistd::dup(io::stdin())?;
        let output = nix::unistd::dup(io::stdout())?;
        let null = File::open("/dev/null")?;
        nix::unistd::dup2_stdin(&null)?;
        nix::unistd::dup2_stdout(io::stderr())?;
        Ok(Proto {
            input: BufReader::with_capacity(64 * 1024, File::from(input)),
            output: File::from(output),
        })
    }

    fn recv(&mut self) -> io::Result<Option<Value>> {
        let mut header = [0u8; 4];
        match self.input.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let len = u32::from_be_bytes(header) as usize;
        if len > MAX_FRAME {
            return Err(io::Error::other("request frame too large"));
        }
        let mut body = vec![0u8; len];
        match self.input.read_exact(&mut body) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(io::Error::other)
    }

    fn send_body(&mut self, body: &[u8]) -> io::Result<()> {
        let len = u32::try_from(body.len()).map_err(io::Error::other)?;
        let mut frame = Vec::with_capacity(body.len() + 4);
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(body);
        self.output.write_all(&frame)
    }

    fn send(&mut self, value: &Value) -> io::Result<()> {
        self.send_body(&serde_json::to_vec(value).map_err(io::Error::other)?)
    }
}

fn error(kind: &str, kind_type: &str, message: String) -> Value {
    let mut message = message;
    if message.len() > 4096 {
        let mut cut = 4096;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
    }
    json!({"error": {"type": kind_type, "message": message, "kind": kind}})
}

/// The response frame's body; an `ok` over `limit` becomes `invalid_result`.
fn capped(response: &Value, limit: Option<u64>) -> Vec<u8> {
    let body = serde_json::to_vec(response).unwrap_or_default();
    let size = body.len().saturating_sub(r#"{"ok":}"#.len()) as u64;
    match limit {
        Some(limit) if response.get("ok").is_some() && size > limit => serde_json::to_vec(&error(
            "invalid_result",
            "InvalidResult",
            format!("the result is {size} bytes of JSON, over the limit of {limit} bytes"),
        ))
        .unwrap_or_default(),
        _ => body,
    }
}

fn serve(proto: &mut Proto, mode: &Mode) -> io::Result<()> {
    let Some(init) = proto.recv()? else {
        return Ok(());
    };
    let env: BTreeMap<String, String> = init
        .get("env")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    let mut server = None;
    match mode {
        Mode::Exec { argv, .. } => {
            if let Err(why) = runnable(&argv[0], &env) {
                eprintln!("fnmesh: {why}");
                return proto.send(&json!({ "init_error": why }));
            }
        }
        Mode::Http { cwd, port, argv } => match start_server(cwd, *port, argv, &env) {
            Ok(child) => server = Some(child),
            Err(why) => {
                eprintln!("fnmesh: {why}");
                return proto.send(&json!({ "init_error": why }));
            }
        },
    }
    proto.send(&json!({"ready": true}))?;
    let server_pid = server.as_ref().map(|c| c.id() as i32);
    let mut conn: Option<TcpStream> = None;
    while let Some(request) = proto.recv()? {
        let id = request
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let limit = request.get("max_result_bytes").and_then(Value::as_u64);
        let payload =
            serde_json::to_vec(request.get("payload").unwrap_or(&Value::Null)).unwrap_or_default();
        let response = match mode {
            Mode::Exec { cwd, argv } => run_exec(argv, cwd, &env, &payload),
            Mode::Http { port, .. } => {
                if let Some(exit) = reap(server_pid) {
                    return Err(io::Error::other(exit));
                }
                match post(&mut conn, *port, &payload) {
                    Ok(answer) => answer.into_response(),
                    Err(e) => {
                        // The server may have died while answering.
                        std::thread::sleep(Duration::from_millis(20));
                        if let Some(exit) = reap(server_pid) {
                            return Err(io::Error::other(exit));
                        }
                        error(
                            "handler_error",
                            "HttpError",
                            format!("calling the function's server: {e}"),
                        )
                    }
                }
            }
        };
        let body = capped(&response, limit);
        let mut logs = io::stderr().lock();
        let _ = logs.flush();
        let _ = logs.write_all(&end_marker(&id));
        drop(logs);
        proto.send_body(&body)?;
        if let Some(exit) = reap(server_pid) {
            return Err(io::Error::other(exit));
        }
    }
    if let Some(mut child) = server {
        let _ = child.kill();
        let _ = child.wait();
    }
    Ok(())
}

/// Reaps every child that has exited: the bootstrap is the sandbox's pid 1, so processes a
/// handler left behind are reparented to it, and unreaped they would use up the sandbox's pids
/// limit. Returns why the `http` server (`server`) ended, if it is one of them.
fn reap(server: Option<i32>) -> Option<String> {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    loop {
        match waitpid(nix::unistd::Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if Some(pid.as_raw()) == server => {
                return Some(format!("the function's server exited with status {code}"));
            }
            Ok(WaitStatus::Signaled(pid, signal, _)) if Some(pid.as_raw()) == server => {
                return Some(format!("the function's server was killed by {signal}"));
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Whether `program` can be started (as `Command` would find it, with the function's `PATH`).
fn runnable(program: &str, env: &BTreeMap<String, String>) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let candidates: Vec<std::path::PathBuf> = if program.contains('/') {
        vec![program.into()]
    } else {
        let path = env
            .get("PATH")
            .cloned()
            .or_else(|| std::env::var("PATH").ok())
            .unwrap_or_default();
        path.split(':')
            .map(|dir| std::path::Path::new(dir).join(program))
            .collect()
    };
    for candidate in &candidates {
        if let Ok(meta) = std::fs::metadata(candidate) {
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return Ok(());
            }
            if meta.is_file() {
                return Err(format!("{} is not executable", candidate.display()));
            }
        }
    }
    Err(format!("command {program} not found in the image"))
}

/// The log pipe (fd 2), for a child's output.
fn logs() -> io::Result<Stdio> {
    let fd = nix::unistd::dup(io::stderr())?;
    Ok(Stdio::from(fd))
}

fn run_exec(argv: &[String], cwd: &str, env: &BTreeMap<String, String>, payload: &[u8]) -> Value {
    let spawned = Command::new(&argv[0])
        .args(&argv[1..])
        .current_dir(cwd)
        .envs(env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            return error(
                "handler_error",
                "ExecError",
                format!("cannot execute {}: {e}", argv[0]),
            )
        }
    };
    let (Some(mut stdin), Some(mut stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        let _ = child.kill();
        let _ = child.wait();
        return error(
            "handler_error",
            "ExecError",
            "no pipes to the handler".to_owned(),
        );
    };
    let payload = payload.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&payload); // a handler that ignores stdin closes it early
    });
    let tail_reader = std::thread::spawn(move || {
        let mut tail: Vec<u8> = Vec::new();
        let mut buf = [0u8; 65536];
        let mut logs = io::stderr();
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            let _ = logs.write_all(&buf[..n]);
            tail.extend_from_slice(&buf[..n]);
            if tail.len() > STDERR_TAIL {
                tail.drain(..tail.len() - STDERR_TAIL);
            }
        }
        tail
    });
    let mut out = Vec::new();
    let mut overflow = false;
    let mut buf = [0u8; 65536];
    while let Ok(n) = stdout.read(&mut buf) {
        if n == 0 {
            break;
        }
        if out.len() + n > MAX_OUTPUT {
            overflow = true;
        } else {
            out.extend_from_slice(&buf[..n]);
        }
    }
    let _ = writer.join();
    let tail = tail_reader.join().unwrap_or_default();
    let status = match child.wait() {
        Ok(status) => status,
        Err(e) => {
            return error(
                "handler_error",
                "ExecError",
                format!("waiting for the handler: {e}"),
            )
        }
    };
    if !status.success() {
        use std::os::unix::process::ExitStatusExt;
        let how = match (status.code(), status.signal()) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(signal)) => format!("was killed by signal {signal}"),
            _ => "failed".to_owned(),
        };
        let text = String::from_utf8_lossy(&tail).trim().to_owned();
        let mut message = format!("handler {how}");
        if !text.is_empty() {
            message.push_str("; stderr: ");
            message.push_str(&text);
        }
        return error("handler_error", "HandlerExit", message);
    }
    if overflow {
        return error(
            "invalid_result",
            "InvalidResult",
            format!("handler stdout exceeds {MAX_OUTPUT} bytes"),
        );
    }
    match serde_json::from_slice::<Value>(&out) {
        Ok(result) => json!({ "ok": result }),
        Err(e) => {
            let shown: String = String::from_utf8_lossy(&out[..out.len().min(200)]).into_owned();
            error(
                "invalid_result",
                "InvalidResult",
                format!("handler stdout is not JSON ({e}): {shown:?}"),
            )
        }
    }
}

fn start_server(
    cwd: &str,
    port: u16,
    argv: &[String],
    env: &BTreeMap<String, String>,
) -> Result<Child, String> {
    runnable(&argv[0], env)?;
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .current_dir(cwd)
        .envs(env)
        .env("PORT", port.to_string())
        .stdin(Stdio::null())
        .stdout(logs().map_err(|e| e.to_string())?)
        .stderr(logs().map_err(|e| e.to_string())?)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", argv[0]))?;
    let deadline = Instant::now() + SERVER_START;
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(child);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "the function's server exited before listening: {status}"
            ));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "the function's server did not listen on port {port} within {} s",
                SERVER_START.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// An HTTP answer of the function's server.
struct Answer {
    status: u16,
    json: bool,
    body: Vec<u8>,
}

impl Answer {
    fn into_response(self) -> Value {
        if !(200..300).contains(&self.status) {
            let text = String::from_utf8_lossy(&self.body);
            let tail: String = text
                .chars()
                .rev()
                .take(STDERR_TAIL)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            return error(
                "handler_error",
                "HttpStatus",
                format!("the function answered {}: {}", self.status, tail.trim()),
            );
        }
        if self.json {
            match serde_json::from_slice::<Value>(&self.body) {
                Ok(v) => json!({ "ok": v }),
                Err(e) => error(
                    "invalid_result",
                    "InvalidResult",
                    format!("the function answered application/json that is not JSON: {e}"),
                ),
            }
        } else {
            json!({ "ok": String::from_utf8_lossy(&self.body) })
        }
    }
}

/// `POST /` with `payload` over the kept-alive connection (made or remade as needed).
fn post(conn: &mut Option<TcpStream>, port: u16, payload: &[u8]) -> io::Result<Answer> {
    // A kept-alive connection the server closed fails on first use: one retry on a new one.
    for attempt in 0..2 {
        let fresh = conn.is_none();
        if fresh {
            let stream = TcpStream::connect(("127.0.0.1", port))?;
            stream.set_nodelay(true)?;
            *conn = Some(stream);
        }
        let Some(stream) = conn.as_mut() else {
            continue;
        };
        match exchange(stream, payload) {
            Ok((answer, keep)) => {
                if !keep {
                    *conn = None;
                }
                return Ok(answer);
            }
            Err(e) => {
                *conn = None;
                if fresh || attempt == 1 {
                    return Err(e);
                }
            }
        }
    }
    Err(io::Error::other("no connection to the function's server"))
}

fn exchange(stream: &mut TcpStream, payload: &[u8]) -> io::Result<(Answer, bool)> {
    let head = format!(
        "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        payload.len()
    );
    let mut request = head.into_bytes();
    request.extend_from_slice(payload);
    stream.write_all(&request)?;
    let mut reader = BufReader::new(&*stream);
    let mut raw = Vec::new();
    let (status, length, chunked, json, close) = loop {
        let before = raw.len();
        let available = reader.fill_buf()?;
        if available.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ));
        }
        raw.extend_from_slice(available);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&raw).map_err(io::Error::other)? {
            httparse::Status::Complete(n) => {
                reader.consume(n - before);
                let mut length = None;
                let (mut chunked, mut json, mut close) = (false, false, false);
                for h in response.headers.iter() {
                    let value = String::from_utf8_lossy(h.value).to_ascii_lowercase();
                    match h.name.to_ascii_lowercase().as_str() {
                        "content-length" => length = value.trim().parse::<usize>().ok(),
                        "transfer-encoding" => chunked = value.contains("chunked"),
                        "content-type" => json = value.trim_start().starts_with("application/json"),
                        "connection" => close = value.contains("close"),
                        _ => {}
                    }
                }
                if response.version == Some(0) {
                    close = true;
                }
                break (response.code.unwrap_or(0), length, chunked, json, close);
            }
            httparse::Status::Partial => {
                let n = raw.len() - before;
                reader.consume(n);
                if raw.len() > MAX_HEAD {
                    return Err(io::Error::other("the server's response head is too long"));
                }
            }
        }
    };
    let body = if chunked {
        read_chunked(&mut reader)?
    } else if let Some(length) = length {
        if length > MAX_OUTPUT {
            return Err(io::Error::other(format!(
                "the server's answer is over {MAX_OUTPUT} bytes"
            )));
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body)?;
        body
    } else {
        let mut body = Vec::new();
        reader.take(MAX_OUTPUT as u64 + 1).read_to_end(&mut body)?;
        return finish(status, json, body, false);
    };
    finish(status, json, body, !close)
}

fn finish(status: u16, json: bool, body: Vec<u8>, keep: bool) -> io::Result<(Answer, bool)> {
    if body.len() > MAX_OUTPUT {
        return Err(io::Error::other(format!(
            "the server's answer is over {MAX_OUTPUT} bytes"
        )));
    }
    Ok((Answer { status, json, body }, keep))
}

fn read_chunked(reader: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        reader.take(1024).read_line(&mut line)?;
        let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
            .map_err(|_| io::Error::other("bad chunk size"))?;
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                let mut trailer = String::new();
                reader.take(8192).read_line(&mut trailer)?;
                if trailer.trim().is_empty() {
                    return Ok(body);
                }
            }
        }
        if body.len() + size > MAX_OUTPUT {
            return Err(io::Error::other(format!(
                "the server's answer is over {MAX_OUTPUT} bytes"
            )));
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        let mut crlf = [0u8; 2];
        reader.read_exact(&mut crlf)?;
    }
}
