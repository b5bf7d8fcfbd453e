//! Request bodies, read with the size cap enforced while reading.
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
}
