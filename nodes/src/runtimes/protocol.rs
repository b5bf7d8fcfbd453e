//! The framed protocol between the node and a runtime bootstrap inside a sandbox.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of UTF-8 JSON. The node
//! writes requests to the sandbox's fd 0 and reads responses from its fd 1; the bootstraps move
//! both to private descriptors at start and point fd 0 at `/dev/null` and fd 1 at fd 2, so
//! whatever the handler prints ends up in the log pipe (fd 2), never in a frame.
//!
//! 1. First frame from the bootstrap: `{"ready":true}` or `{"init_error":"<type>: <message>"}`
//!    (the traceback went to the logs; the bootstrap then exits).
//! 2. Request: `{"id":"<invocation id>","payload":<json>,"context":{"invocation_id",
//!    "function_name","function_version","memory_limit_mb","deadline_ms","trace_id"}}`.
//! 3. Response: `{"ok":<json>}` or `{"error":{"type","message","kind"?}}` where `kind` is
//!    `invalid_result` for a result that is not JSON, else absent (a handler error).
//!
//! Before each response the bootstrap flushes its output and writes [`end_marker`] to the log
//! pipe, so the node knows where one invocation's logs end.

use serde::Serialize;
use serde_json::Value;

/// Largest frame either side accepts.
pub const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;

/// The line a bootstrap writes to its log pipe after an invocation's output.
pub fn end_marker(id: &str) -> Vec<u8> {
    let mut marker = Vec::with_capacity(id.len() + 16);
    marker.extend_from_slice(b"\n\x00fnmesh-end:");
    marker.extend_from_slice(id.as_bytes());
    marker.extend_from_slice(b"\x00\n");
    marker
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
    /// What the handler's `context` holds.
    pub context: RequestContext<'a>,
}

/// Appends the frame of `request` to `buf` (cleared first).
pub fn encode_request(buf: &mut Vec<u8>, request: &Request<'_>) -> Result<(), serde_json::Error> {
    buf.clear();
    buf.extend_from_slice(&[0; 4]);
    serde_json::to_writer(&mut *buf, request)?;
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
