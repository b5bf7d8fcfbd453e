//! Request bodies, read with the size cap enforced while reading; function uploads
//! ([`upload`]) as JSON, or as a raw archive or multipart form spooled to disk.
//!
//! A `Content-Length` over the cap is refused before anything is buffered; otherwise chunks
//! are accumulated only while the total stays within the cap, so a chunked (or lying) body is
//! cut off at the cap too. Either way: 413 `payload_too_large`, and never more than the cap in
//! memory.
//!
//! Before answering 413, a bounded amount of the rest of the body is read and discarded (at
//! most [`DRAIN_MAX_BYTES`] within [`DRAIN_MAX_TIME`], as nginx's lingering close does): a
//! client still writing its body would otherwise get a reset connection instead of the answer.
//! A body declared larger than that, or sent with `Expect: 100-continue` (the client waits for
//! our answer before sending), is not drained.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use warp::Filter;

use crate::error::ApiError;
use crate::state::State;

/// Most bytes of an oversized body read and thrown away before answering 413.
pub(crate) const DRAIN_MAX_BYTES: u64 = 16 * 1024 * 1024;
/// Longest time spent doing so.
pub(crate) const DRAIN_MAX_TIME: Duration = Duration::from_secs(2);

/// Reads `body` into memory, refusing more than `cap` bytes. `drain` allows discarding the
/// rest of an oversized body (bounded) before the refusal.
pub(crate) async fn read_capped<S, B>(
    content_length: Option<u64>,
    drain: bool,
    body: S,
    cap: usize,
) -> Result<Bytes, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let too_large = || ApiError::PayloadTooLarge { limit: cap };
    let mut body = std::pin::pin!(body);
    if let Some(len) = content_length {
        if len > cap as u64 {
            if drain && len <= DRAIN_MAX_BYTES {
                discard(body.as_mut()).await;
            }
            tracing::info!(
                http.content_length_bytes = len,
                http.cap_bytes = cap,
                "declared body over the cap"
            );
            return Err(too_large());
        }
    }
    let initial = content_length.map_or(0, |l| usize::try_from(l).unwrap_or(cap).min(cap));
    let mut buf = BytesMut::with_capacity(initial);
    while let Some(chunk) = body.next().await {
        let mut chunk =
            chunk.map_err(|e| ApiError::BadRequest(format!("reading the request body: {e}")))?;
        if buf.len().saturating_add(chunk.remaining()) > cap {
            if drain {
                discard(body.as_mut()).await;
            }
            tracing::info!(http.cap_bytes = cap, "body over the cap while reading");
            return Err(too_large());
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            let n = part.len();
            buf.extend_from_slice(part);
            chunk.advance(n);
        }
    }
    Ok(buf.freeze())
}

/// Reads and drops what is left of a body, within the drain bounds.
async fn discard<S, B>(mut body: std::pin::Pin<&mut S>)
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let drained = async {
        let mut total: u64 = 0;
        while let Some(Ok(chunk)) = body.next().await {
            total = total.saturating_add(chunk.remaining() as u64);
            if total > DRAIN_MAX_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_MAX_TIME, drained).await;
}

/// A filter extracting the whole body, capped at `config.max_body_bytes`.
pub(crate) fn capped(
    state: State,
) -> impl Filter<Extract = (Bytes,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    warp::header::optional::<u64>("content-length")
        .and(warp::header::optional::<String>("expect"))
        .and(warp::body::stream())
        .and_then(move |len: Option<u64>, expect: Option<String>, stream| {
            let cap = state.config.max_body_bytes;
            let drain = !expect.is_some_and(|e| e.eq_ignore_ascii_case("100-continue"));
            async move {
                read_capped(len, drain, stream, cap)
                    .await
                    .map_err(ApiError::reject)
            }
        })
}

/// A function upload (`POST /v1/functions`, `PUT /v1/functions/{name}`): its fields as the
/// JSON of the create or update body, and, for a raw archive or a multipart form, the code
/// spooled to a temporary file (removed when this is dropped).
pub(crate) struct Upload {
    /// The JSON body; for a raw archive, an object built from the `Fnmesh-*` headers; for a
    /// form, its `metadata` part.
    pub(crate) fields: Bytes,
    /// The code archive of a raw or multipart upload.
    pub(crate) archive: Option<tempfile::TempPath>,
}

/// `Content-Type`s of a raw code archive (told apart again by magic bytes when unpacked).
const ARCHIVE_TYPES: &[&str] = &[
    "application/zip",
    "application/gzip",
    "application/x-gzip",
    "application/x-tar",
    "application/octet-stream",
];

/// The headers of a raw upload, the field of the JSON body each stands for, and whether
/// its value is JSON (else a string).
const FIELD_HEADERS: &[(&str, &str, bool)] = &[
    ("fnmesh-name", "name", false),
    ("fnmesh-runtime", "runtime", false),
    ("fnmesh-handler", "handler", false),
    ("fnmesh-image", "image", false),
    ("fnmesh-mode", "mode", false),
    ("fnmesh-port", "port", true),
    ("fnmesh-config", "config", true),
    ("fnmesh-metadata", "metadata", true),
];

/// Largest `metadata` part of a multipart upload.
const MAX_FORM_FIELDS_BYTES: u64 = 64 * 1024;

/// What a `Content-Type` makes of a body.
enum BodyKind {
    Json,
    Archive,
    Form(String),
}

fn body_kind(content_type: Option<&str>) -> Result<BodyKind, ApiError> {
    let Some(content_type) = content_type else {
        return Ok(BodyKind::Json);
    };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if ARCHIVE_TYPES.contains(&essence.as_str()) {
        Ok(BodyKind::Archive)
    } else if essence == "multipart/form-data" {
        multer::parse_boundary(content_type)
            .map(BodyKind::Form)
            .map_err(|e| ApiError::BadRequest(format!("invalid multipart Content-Type: {e}")))
    } else {
        // JSON, and whatever a client sends JSON as (`curl -d` says form-urlencoded).
        Ok(BodyKind::Json)
    }
}

/// The fields of a raw upload, from its `Fnmesh-*` headers, as a JSON object.
fn fields_from_headers(headers: &warp::http::HeaderMap) -> Result<Bytes, ApiError> {
    let mut fields = serde_json::Map::new();
    for (header, field, json) in FIELD_HEADERS {
        let Some(value) = headers.get(*header) else {
            continue;
        };
        let text = value
            .to_str()
            .map_err(|_| ApiError::BadRequest(format!("header {header} must be visible ASCII")))?;
        let value = if *json {
            serde_json::from_str(text)
                .map_err(|e| ApiError::InvalidJson(format!("header {header} is not JSON: {e}")))?
        } else {
            serde_json::Value::String(text.to_owned())
        };
        fields.insert((*field).to_owned(), value);
    }
    serde_json::to_vec(&fields)
        .map(Bytes::from)
        .map_err(|e| ApiError::Internal(format!("encoding upload fields: {e}")))
}

/// A new temporary file for a spooled upload, open for async writes.
async fn spool_file() -> Result<(tokio::fs::File, tempfile::TempPath), ApiError> {
    let file = tokio::task::spawn_blocking(|| {
        tempfile::Builder::new().prefix("fnmesh-upload-").tempfile()
    })
    .await
    .map_err(|e| ApiError::Internal(format!("spooling the upload: {e}")))?
    .map_err(|e| ApiError::Internal(format!("spooling the upload: {e}")))?;
    let (file, path) = file.into_parts();
    Ok((tokio::fs::File::from_std(file), path))
}

/// Writes `body` to a temporary file, refusing more than `cap` bytes (413, as
/// [`read_capped`]): the upload is never held in memory.
async fn spool<S, B>(
    content_length: Option<u64>,
    drain: bool,
    body: S,
    cap: usize,
) -> Result<tempfile::TempPath, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    use tokio::io::AsyncWriteExt as _;
    let too_large = || ApiError::PayloadTooLarge { limit: cap };
    let mut body = std::pin::pin!(body);
    if content_length.is_some_and(|len| len > cap as u64) {
        if drain && content_length.is_some_and(|len| len <= DRAIN_MAX_BYTES) {
            discard(body.as_mut()).await;
        }
        return Err(too_large());
    }
    let (mut file, path) = spool_file().await?;
    let mut written: usize = 0;
    while let Some(chunk) = body.next().await {
        let mut chunk =
            chunk.map_err(|e| ApiError::BadRequest(format!("reading the request body: {e}")))?;
        written = written.saturating_add(chunk.remaining());
        if written > cap {
            if drain {
                discard(body.as_mut()).await;
            }
            tracing::info!(
                http.cap_bytes = cap,
                "code archive over the cap while reading"
            );
            return Err(too_large());
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            file.write_all(part)
                .await
                .map_err(|e| ApiError::Internal(format!("spooling the upload: {e}")))?;
            let n = part.len();
            chunk.advance(n);
        }
    }
    file.flush()
        .await
        .map_err(|e| ApiError::Internal(format!("spooling the upload: {e}")))?;
    Ok(path)
}

/// Reads a multipart form of two parts: `metadata` (the JSON fields, at most 64 KiB) and
/// `code` (the archive, spooled to a file, at most `cap` bytes).
async fn read_form<S, B>(boundary: String, body: S, cap: usize) -> Result<Upload, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>> + Send + 'static,
    B: Buf + Send + 'static,
{
    use tokio::io::AsyncWriteExt as _;
    let stream = body.map(|chunk| chunk.map(|mut buf| buf.copy_to_bytes(buf.remaining())));
    let constraints = multer::Constraints::new()
        .allowed_fields(vec!["metadata", "code"])
        .size_limit(
            multer::SizeLimit::new()
                .whole_stream(cap as u64 + MAX_FORM_FIELDS_BYTES + 64 * 1024)
                .for_field("metadata", MAX_FORM_FIELDS_BYTES)
                .for_field("code", cap as u64),
        );
    let mut form = multer::Multipart::with_constraints(stream, boundary, constraints);
    let refused = |e: multer::Error| match e {
        multer::Error::FieldSizeExceeded { .. } | multer::Error::StreamSizeExceeded { .. } => {
            ApiError::PayloadTooLarge { limit: cap }
        }
        other => ApiError::BadRequest(format!("invalid multipart form: {other}")),
    };
    let mut fields = None;
    let mut archive = None;
    while let Some(mut field) = form.next_field().await.map_err(refused)? {
        match field.name() {
            Some("metadata") if fields.is_none() => {
                fields = Some(field.bytes().await.map_err(refused)?);
            }
            Some("code") if archive.is_none() => {
                let (mut file, path) = spool_file().await?;
                while let Some(chunk) = field.chunk().await.map_err(refused)? {
                    file.write_all(&chunk)
                        .await
                        .map_err(|e| ApiError::Internal(format!("spooling the upload: {e}")))?;
                }
                file.flush()
                    .await
                    .map_err(|e| ApiError::Internal(format!("spooling the upload: {e}")))?;
                archive = Some(path);
            }
            _ => {
                return Err(ApiError::BadRequest(
                    "a multipart upload has one `metadata` part (JSON) and one `code` part"
                        .to_owned(),
                ))
            }
        }
    }
    let fields = fields.ok_or_else(|| {
        ApiError::BadRequest("the multipart upload has no `metadata` part".to_owned())
    })?;
    Ok(Upload { fields, archive })
}

/// A filter extracting a function upload: a JSON body (capped at `config.max_body_bytes`), a
/// raw archive (`Content-Type: application/zip`, `application/gzip`, `application/x-tar`;
/// fields in `Fnmesh-*` headers) or a `multipart/form-data` form, the archive capped at
/// `config.max_archive_bytes` and spooled to disk.
pub(crate) fn upload(
    state: State,
) -> impl Filter<Extract = (Upload,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    warp::header::headers_cloned()
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::body::stream())
        .and_then(move |headers, len, stream| {
            let state = state.clone();
            async move {
                read_upload(&state, &headers, len, stream)
                    .await
                    .map_err(ApiError::reject)
            }
        })
}

/// Reads an upload in the form its `Content-Type` names (see [`upload`]).
async fn read_upload<S, B>(
    state: &State,
    headers: &warp::http::HeaderMap,
    len: Option<u64>,
    stream: S,
) -> Result<Upload, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>> + Send + 'static,
    B: Buf + Send + 'static,
{
    let content_type = headers
        .get(warp::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let drain = !headers
        .get(warp::http::header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"));
    let archive_cap = state.config.max_archive_bytes;
    match body_kind(content_type)? {
        BodyKind::Json => read_capped(len, drain, stream, state.config.max_body_bytes)
            .await
            .map(|fields| Upload {
                fields,
                archive: None,
            }),
        BodyKind::Archive => match fields_from_headers(headers) {
            Ok(fields) => spool(len, drain, stream, archive_cap)
                .await
                .map(|path| Upload {
                    fields,
                    archive: Some(path),
                }),
            Err(e) => {
                // Answered without the archive: read (bounded) what the client is still
                // sending, so it reads the answer instead of a reset.
                if drain {
                    discard(std::pin::pin!(stream).as_mut()).await;
                }
                Err(e)
            }
        },
        BodyKind::Form(boundary) => read_form(boundary, stream, archive_cap).await,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn chunks(sizes: &[usize]) -> impl Stream<Item = Result<Bytes, warp::Error>> {
        let items: Vec<_> = sizes
            .iter()
            .map(|n| Ok(Bytes::from(vec![b'x'; *n])))
            .collect();
        futures::stream::iter(items)
    }

    #[tokio::test]
    async fn reads_up_to_the_cap() {
        let body = read_capped(None, true, chunks(&[3, 4, 3]), 10)
            .await
            .unwrap();
        assert_eq!(body.len(), 10);
    }

    #[tokio::test]
    async fn stops_at_the_cap_without_content_length() {
        let err = read_capped(None, false, chunks(&[6, 6, 1000]), 10)
            .await
            .unwrap_err();
        assert_eq!(err.code(), "payload_too_large");
    }

    #[tokio::test]
    async fn refuses_a_declared_length_over_the_cap_before_reading() {
        // The body never arrives: nothing is read (a huge declared length is not drained).
        let never = futures::stream::pending::<Result<Bytes, warp::Error>>();
        let err = read_capped(Some(DRAIN_MAX_BYTES + 1), true, never, 10)
            .await
            .unwrap_err();
        assert_eq!(err.code(), "payload_too_large");
        let never = futures::stream::pending::<Result<Bytes, warp::Error>>();
        let err = read_capped(Some(11), false, never, 10).await.unwrap_err();
        assert_eq!(err.code(), "payload_too_large");
    }

    #[tokio::test]
    async fn a_lying_content_length_is_still_capped() {
        let err = read_capped(Some(5), true, chunks(&[8, 8]), 10)
            .await
            .unwrap_err();
        assert_eq!(err.code(), "payload_too_large");
    }

    #[test]
    fn content_types_pick_the_upload_form() {
        for json in [
            None,
            Some("application/json"),
            Some("application/x-www-form-urlencoded"),
        ] {
            assert!(matches!(body_kind(json), Ok(BodyKind::Json)), "{json:?}");
        }
        for raw in [
            "application/zip",
            "application/gzip",
            "Application/X-Tar; q=1",
        ] {
            assert!(
                matches!(body_kind(Some(raw)), Ok(BodyKind::Archive)),
                "{raw}"
            );
        }
        assert!(matches!(
            body_kind(Some("multipart/form-data; boundary=abc")),
            Ok(BodyKind::Form(b)) if b == "abc"
        ));
        assert_eq!(
            body_kind(Some("multipart/form-data"))
                .map(|_| ())
                .unwrap_err()
                .code(),
            "bad_request"
        );
    }

    #[test]
    fn raw_upload_fields_come_from_headers() {
        let mut headers = warp::http::HeaderMap::new();
        headers.insert("fnmesh-name", "big".parse().unwrap());
        headers.insert("fnmesh-runtime", "python3".parse().unwrap());
        headers.insert("fnmesh-config", r#"{"memory_mb":256}"#.parse().unwrap());
        headers.insert("fnmesh-port", "8080".parse().unwrap());
        headers.insert("x-other", "ignored".parse().unwrap());
        let fields: serde_json::Value =
            serde_json::from_slice(&fields_from_headers(&headers).unwrap()).unwrap();
        assert_eq!(
            fields,
            serde_json::json!({"name": "big", "runtime": "python3", "config": {"memory_mb": 256}, "port": 8080})
        );
        headers.insert("fnmesh-metadata", "{oops".parse().unwrap());
        assert_eq!(
            fields_from_headers(&headers).unwrap_err().code(),
            "invalid_json"
        );
    }

    #[tokio::test]
    async fn spooling_writes_the_body_to_a_file_up_to_the_cap() {
        let path = spool(None, false, chunks(&[4, 4, 2]), 10).await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"xxxxxxxxxx");
        let err = spool(None, false, chunks(&[6, 6]), 10).await.unwrap_err();
        assert_eq!(err.code(), "payload_too_large");
        let err = spool(Some(11), false, chunks(&[11]), 10).await.unwrap_err();
        assert_eq!(err.code(), "payload_too_large");
    }
}
