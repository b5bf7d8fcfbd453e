//! The framed protocol between the node and a runtime bootstrap inside a sandbox.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of UTF-8 JSON. The node
//! writes requests to the sandbox's fd 0 and reads responses from its fd 1; the bootstraps move
//! both to private descriptors at start and point fd 0 at `/dev/null` and fd 1 at fd 2, so
//! whatever the handler prints ends up in the log pipe (fd 2), never in a frame.
//!
//! 0. First frame from the node, before anything else: [`Init`],
//!    `{"env":{"<NAME>":"<value>",…}}`, the function's opened secrets. The bootstrap adds them
//!    to the function's environment (`os.environ`, `process.env`, the environment of the `exec`
//!    runtime's handler processes) before it loads any user code. Secrets travel here, not in
//!    `config.json`'s `process.env`: the bundle is a file on the host, and the process's initial
//!    environment block is what `/proc/<pid>/environ` shows (a variable set later lives only in
//!    the process's memory). The frame is sent even when there are no secrets.
//! 1. First frame from the bootstrap: `{"ready":true}` or `{"init_error":"<type>: <message>"}`
//!    (the traceback went to the logs; the bootstrap then exits).
//! 2. Request: `{"id":"<invocation id>","payload":<json>,"max_result_bytes":<n>,
//!    "context":{"invocation_id","function_name","function_version","memory_limit_mb",
//!    "deadline_ms","trace_id"}}`.
//! 3. Response: `{"ok":<json>}` or `{"error":{"type","message","kind"?}}` where `kind` is
//!    `invalid_result` for a result that is not JSON or whose JSON is longer than
//!    `max_result_bytes`, else absent (a handler error).
//!
//! Results are capped well below NATS's `max_payload` (1 MiB by default), because a result
//! travels in the sync reply and the `Finished` event beside up to 64 KiB of logs: see
//! [`DEFAULT_MAX_RESULT_BYTES`] and [`result_cap`]. The bootstraps check the cap themselves and
//! answer `invalid_result` instead of sending a larger result, so their sandbox stays usable.
//! The node never trusts that: it refuses a response frame longer than the cap plus
//! [`RESPONSE_OVERHEAD_BYTES`] from its length prefix alone, before allocating anything for it
//! (the sandbox is then destroyed: the rest of that frame is still in the pipe), and an `ok`
//! frame whose result is over the cap is `invalid_result` too.
//!
//! Before each response the bootstrap flushes its output and writes [`end_marker`] to the log
//! pipe, so the node knows where one invocation's logs end.

use std::collections::BTreeMap;

use fnmesh_core::secrets::SecretEnv;
use serde::Serialize;
use serde_json::Value;

/// Largest request frame (node to bootstrap; the payload is capped by the gateway's body cap).
pub const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;

/// Default cap on the JSON encoding of a result: 512 KiB.
pub const DEFAULT_MAX_RESULT_BYTES: usize = 512 * 1024;

/// What a result's reply and `Finished` event carry besides the result, at most: the logs
/// (64 KiB, `DEFAULT_LOG_CAP_BYTES`, up to six times that once control characters are
/// JSON-escaped), an error message (4 KiB) and the record's other fields.
pub const RESULT_HEADROOM_BYTES: usize = 448 * 1024;

/// Smallest result cap [`result_cap`] gives.
pub const MIN_RESULT_CAP_BYTES: usize = 1024;

/// How much longer than the result cap a response frame may be: the `{"ok":…}` wrapper, or an
/// error frame (its message is cut at 4 KiB by the bootstraps, but may be JSON-escaped).
pub const RESPONSE_OVERHEAD_BYTES: usize = 64 * 1024;

/// Bytes an `{"ok":<result>}` frame has besides the result's JSON.
const OK_WRAPPER_BYTES: usize = r#"{"ok":}"#.len();

/// The result cap of a node: `configured`, lowered where the NATS server's `max_payload` (when
/// the node runs over NATS) leaves less than that beside [`RESULT_HEADROOM_BYTES`], so that a
/// result under the cap always fits in the reply and the event that carry it.
pub fn result_cap(configured: usize, max_payload: Option<usize>) -> usize {
    let fits = max_payload.map_or(usize::MAX, |max| max.saturating_sub(RESULT_HEADROOM_BYTES));
    configured.min(fits).max(MIN_RESULT_CAP_BYTES)
}

/// The longest response frame a node reads when results are capped at `max_result_bytes`.
pub fn max_response_frame(max_result_bytes: usize) -> usize {
    max_result_bytes.saturating_add(RESPONSE_OVERHEAD_BYTES)
}

/// Whether an `ok` response frame of `frame_len` bytes carries a result over `max_result_bytes`.
pub fn result_too_large(frame_len: usize, max_result_bytes: usize) -> bool {
    frame_len.saturating_sub(OK_WRAPPER_BYTES) > max_result_bytes
}

/// The line a bootstrap writes to its log pipe after an invocation's output.
pub fn end_marker(id: &str) -> Vec<u8> {
    let mut marker = Vec::with_capacity(id.len() + 16);
    marker.extend_from_slice(b"\n\x00fnmesh-end:");
    marker.extend_from_slice(id.as_bytes());
    marker.extend_from_slice(b"\x00\n");
    marker
}

/// The node's first frame: the environment the bootstrap adds before loading user code.
#[derive(Serialize)]
pub struct Init<'a> {
    /// Variable name → value.
    pub env: BTreeMap<&'a str, &'a str>,
}

impl std::fmt::Debug for Init<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Init")
            .field("names", &self.env.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl<'a> Init<'a> {
    /// The init frame carrying `secrets` (values with a NUL byte, which no environment can
    /// hold, are left out; names are validated `[A-Z_][A-Z0-9_]*` already).
    pub fn secrets(secrets: &'a SecretEnv) -> Self {
        Self {
            env: secrets.iter().filter(|(_, v)| !v.contains('\0')).collect(),
        }
    }
}

/// Appends the frame of `init` to `buf` (cleared first).
pub fn encode_init(buf: &mut Vec<u8>, init: &Init<'_>) -> Result<(), serde_json::Error> {
    encode(buf, init)
}

/// The `context` object of a request.
#[derive(Debug, Serialize)]
pub struct RequestContext<'a> {
    /// Invocation id.
    pub invocation_id: &'a str,
    /// Function name.
    pub function_name: &'a str,
    /// Function version.
    pub function_version: u32,
    /// Memory limit of the sandbox.
    pub memory_limit_mb: u32,
    /// Unix time in milliseconds when the node kills the invocation.
    pub deadline_ms: u64,
    /// W3C trace id, when traced.
    pub trace_id: Option<&'a str>,
}

/// A request frame's body.
#[derive(Debug, Serialize)]
pub struct Request<'a> {
    /// Invocation id; also names the log end marker.
    pub id: &'a str,
    /// The event.
    pub payload: &'a Value,
    /// The longest result (its JSON) the node accepts; the bootstrap answers `invalid_result`
    /// for a longer one.
    pub max_result_bytes: usize,
    /// What the handler's `context` holds.
    pub context: RequestContext<'a>,
}

/// Appends the frame of `request` to `buf` (cleared first).
pub fn encode_request(buf: &mut Vec<u8>, request: &Request<'_>) -> Result<(), serde_json::Error> {
    encode(buf, request)
}

fn encode(buf: &mut Vec<u8>, body: &impl Serialize) -> Result<(), serde_json::Error> {
    buf.clear();
    buf.extend_from_slice(&[0; 4]);
    serde_json::to_writer(&mut *buf, body)?;
    let len = u32::try_from(buf.len() - 4).unwrap_or(u32::MAX);
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// The first frame of a bootstrap.
#[derive(Debug, Clone, PartialEq)]
pub enum Hello {
    /// The handler is loaded.
    Ready,
    /// Loading the handler failed.
    InitError(String),
}

/// A response frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    /// The handler's result.
    Ok(Value),
    /// The handler raised.
    Error {
        /// Exception type (may be empty).
        type_name: String,
        /// Its message.
        message: String,
        /// The result was not JSON rather than the handler failing.
        invalid_result: bool,
    },
}

/// A frame that is not what the protocol allows.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Not JSON.
    #[error("frame is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// JSON of the wrong shape.
    #[error("unexpected frame {0}")]
    Shape(String),
}

fn shape(value: &Value) -> FrameError {
    let mut text = value.to_string();
    if text.len() > 200 {
        let mut end = 200;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    FrameError::Shape(text)
}

/// Parses the first frame.
pub fn decode_hello(body: &[u8]) -> Result<Hello, FrameError> {
    let value: Value = serde_json::from_slice(body)?;
    if value.get("ready") == Some(&Value::Bool(true)) {
        return Ok(Hello::Ready);
    }
    match value.get("init_error") {
        Some(Value::String(message)) => Ok(Hello::InitError(message.clone())),
        _ => Err(shape(&value)),
    }
}

/// Parses a response frame.
pub fn decode_response(body: &[u8]) -> Result<Response, FrameError> {
    let value: Value = serde_json::from_slice(body)?;
    let Value::Object(mut map) = value else {
        return Err(shape(&value));
    };
    if let Some(result) = map.remove("ok") {
        return Ok(Response::Ok(result));
    }
    let text = |v: Option<&Value>| match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    };
    match map.get("error") {
        Some(error @ Value::Object(_)) => Ok(Response::Error {
            type_name: text(error.get("type")),
            message: text(error.get("message")),
            invalid_result: error.get("kind").and_then(Value::as_str) == Some("invalid_result"),
        }),
        _ => Err(shape(&Value::Object(map))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn request_frames_carry_their_length() {
        let payload = json!({"a": [1, 2]});
        let mut buf = Vec::new();
        let req = Request {
            id: "abc",
            payload: &payload,
            max_result_bytes: 1000,
            context: RequestContext {
                invocation_id: "abc",
                function_name: "f",
                function_version: 3,
                memory_limit_mb: 128,
                deadline_ms: 5,
                trace_id: None,
            },
        };
        encode_request(&mut buf, &req).unwrap();
        let len = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
        assert_eq!(len, buf.len() - 4);
        let back: Value = serde_json::from_slice(&buf[4..]).unwrap();
        assert_eq!(back["payload"], payload);
        assert_eq!(back["context"]["function_version"], 3);
        assert_eq!(back["context"]["trace_id"], Value::Null);
        assert_eq!(back["max_result_bytes"], 1000);
    }

    #[test]
    fn init_frames_carry_the_secrets_as_an_env_object() {
        let name = |s: &str| fnmesh_core::secrets::SecretName::parse(s).unwrap();
        let secrets = SecretEnv::from_pairs(
            [
                (name("DB_PASSWORD"), "pw \"quoted\" \u{e9}".to_owned()),
                (name("API_KEY"), "k".to_owned()),
                (name("BROKEN"), "a\0b".to_owned()),
            ],
            Some("digest".to_owned()),
        );
        let init = Init::secrets(&secrets);
        assert!(
            !format!("{init:?}").contains("pw"),
            "Debug shows names only"
        );
        let mut buf = Vec::new();
        encode_init(&mut buf, &init).unwrap();
        let len = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
        assert_eq!(len, buf.len() - 4);
        let back: Value = serde_json::from_slice(&buf[4..]).unwrap();
        assert_eq!(
            back,
            json!({"env": {"API_KEY": "k", "DB_PASSWORD": "pw \"quoted\" \u{e9}"}})
        );
        encode_init(&mut buf, &Init::secrets(&SecretEnv::default())).unwrap();
        assert_eq!(&buf[4..], br#"{"env":{}}"#);
    }

    #[test]
    fn the_result_cap_leaves_room_for_logs_under_max_payload() {
        // NATS's default max_payload (1 MiB) keeps the default cap.
        assert_eq!(
            result_cap(DEFAULT_MAX_RESULT_BYTES, Some(1024 * 1024)),
            DEFAULT_MAX_RESULT_BYTES
        );
        assert_eq!(
            result_cap(DEFAULT_MAX_RESULT_BYTES, None),
            DEFAULT_MAX_RESULT_BYTES
        );
        // A smaller server limit lowers it; a larger one never raises it.
        assert_eq!(
            result_cap(DEFAULT_MAX_RESULT_BYTES, Some(512 * 1024)),
            512 * 1024 - RESULT_HEADROOM_BYTES
        );
        assert_eq!(
            result_cap(DEFAULT_MAX_RESULT_BYTES, Some(8 * 1024 * 1024)),
            DEFAULT_MAX_RESULT_BYTES
        );
        assert_eq!(result_cap(10, None), MIN_RESULT_CAP_BYTES);
        assert_eq!(
            result_cap(DEFAULT_MAX_RESULT_BYTES, Some(1000)),
            MIN_RESULT_CAP_BYTES
        );
        // What a node reads of a response frame, and when an ok frame is over the cap.
        assert_eq!(max_response_frame(100), 100 + RESPONSE_OVERHEAD_BYTES);
        let frame = |result: &str| format!("{{\"ok\":{result}}}").len();
        assert!(!result_too_large(frame("\"abc\""), 5));
        assert!(result_too_large(frame("\"abcd\""), 5));
    }

    #[test]
    fn responses_decode() {
        assert_eq!(decode_hello(br#"{"ready":true}"#).unwrap(), Hello::Ready);
        assert_eq!(
            decode_hello(br#"{"init_error":"ImportError: x"}"#).unwrap(),
            Hello::InitError("ImportError: x".into())
        );
        assert!(decode_hello(b"{}").is_err());
        assert_eq!(
            decode_response(br#"{"ok":null}"#).unwrap(),
            Response::Ok(Value::Null)
        );
        assert_eq!(
            decode_response(br#"{"error":{"type":"E","message":"m","kind":"invalid_result"}}"#)
                .unwrap(),
            Response::Error {
                type_name: "E".into(),
                message: "m".into(),
                invalid_result: true
            }
        );
        assert!(decode_response(b"[1]").is_err());
        assert!(decode_response(b"{\"x\":1}").is_err());
        assert!(decode_response(b"garbage").is_err());
    }

    #[test]
    fn markers_name_the_invocation() {
        assert_eq!(end_marker("i-1"), b"\n\x00fnmesh-end:i-1\x00\n".to_vec());
    }
}
