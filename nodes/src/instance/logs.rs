//! A sandbox's log stream: read continuously from its stderr pipe, split at each
//! invocation's end marker, and capped.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fnmesh_core::InvocationLogs;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::truncate_utf8;

/// Collects a sandbox's log stream and splits it at invocation end markers.
#[derive(Debug)]
pub struct LogSink {
    state: Mutex<LogState>,
    notify: Notify,
}

#[derive(Debug)]
struct LogState {
    cap: usize,
    buf: Vec<u8>,
    truncated: bool,
    /// The marker that ends the current invocation's logs.
    marker: Option<Vec<u8>>,
    /// Bytes held back because they may be the start of the marker.
    pending: Vec<u8>,
    /// The logs of the invocation whose marker was seen.
    finished: Option<(Vec<u8>, bool)>,
    eof: bool,
}

fn append_capped(buf: &mut Vec<u8>, truncated: &mut bool, cap: usize, data: &[u8]) {
    let room = cap.saturating_sub(buf.len());
    if data.len() > room {
        buf.extend_from_slice(&data[..room]);
        *truncated = true;
    } else {
        buf.extend_from_slice(data);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl LogState {
    fn push(&mut self, data: &[u8]) {
        let Some(marker) = self.marker.as_deref() else {
            append_capped(&mut self.buf, &mut self.truncated, self.cap, data);
            return;
        };
        self.pending.extend_from_slice(data);
        if let Some(pos) = find(&self.pending, marker) {
            let after = self.pending.split_off(pos + marker.len());
            self.pending.truncate(pos);
            append_capped(&mut self.buf, &mut self.truncated, self.cap, &self.pending);
            self.pending.clear();
            self.finished = Some((
                std::mem::take(&mut self.buf),
                std::mem::take(&mut self.truncated),
            ));
            self.marker = None;
            // Output after the marker (a background thread) belongs to the next invocation.
            append_capped(&mut self.buf, &mut self.truncated, self.cap, &after);
        } else {
            let keep = marker.len() - 1;
            if self.pending.len() > keep {
                let cut = self.pending.len() - keep;
                append_capped(
                    &mut self.buf,
                    &mut self.truncated,
                    self.cap,
                    &self.pending[..cut],
                );
                self.pending.drain(..cut);
            }
        }
    }

    /// Everything collected so far; disarms the marker.
    fn take_all(&mut self) -> (Vec<u8>, bool) {
        let pending = std::mem::take(&mut self.pending);
        append_capped(&mut self.buf, &mut self.truncated, self.cap, &pending);
        self.marker = None;
        (
            std::mem::take(&mut self.buf),
            std::mem::take(&mut self.truncated),
        )
    }
}

impl LogSink {
    /// A sink keeping at most `cap` bytes per invocation.
    pub fn new(cap: usize) -> Self {
        Self {
            state: Mutex::new(LogState {
                cap,
                buf: Vec::new(),
                truncated: false,
                marker: None,
                pending: Vec::new(),
                finished: None,
                eof: false,
            }),
            notify: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, LogState> {
        // Never held across a panic point that matters: the state stays consistent.
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Feeds bytes read from the log pipe.
    pub fn push(&self, data: &[u8]) {
        let done = {
            let mut state = self.lock();
            state.push(data);
            state.finished.is_some()
        };
        if done {
            self.notify.notify_one();
        }
    }

    /// Marks the end of the stream.
    pub fn close(&self) {
        self.lock().eof = true;
        self.notify.notify_one();
    }

    /// Starts an invocation: its logs end at `marker`.
    pub fn arm(&self, marker: Vec<u8>) {
        let mut state = self.lock();
        state.finished = None;
        state.marker = Some(marker);
    }

    fn render((bytes, mut truncated): (Vec<u8>, bool), cap: usize) -> InvocationLogs {
        let mut text = match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        };
        if text.len() > cap {
            truncate_utf8(&mut text, cap);
            truncated = true;
        }
        InvocationLogs { text, truncated }
    }

    /// The armed invocation's logs: waits up to `bound` for its marker (or the end of the
    /// stream), then takes whatever arrived.
    pub async fn finish(&self, bound: Duration) -> InvocationLogs {
        let until = Instant::now() + bound;
        loop {
            let notified = self.notify.notified();
            {
                let mut state = self.lock();
                let cap = state.cap;
                if let Some(done) = state.finished.take() {
                    return Self::render(done, cap);
                }
                if state.eof || Instant::now() >= until {
                    let all = state.take_all();
                    return Self::render(all, cap);
                }
            }
            let _ = tokio::time::timeout_at(until, notified).await;
        }
    }

    /// Everything up to the end of the stream (waiting up to `bound` for it).
    pub async fn drain(&self, bound: Duration) -> InvocationLogs {
        let until = Instant::now() + bound;
        loop {
            let notified = self.notify.notified();
            {
                let mut state = self.lock();
                if state.eof || Instant::now() >= until {
                    let cap = state.cap;
                    let mut all = state.take_all();
                    if let Some((mut done, truncated)) = state.finished.take() {
                        done.extend_from_slice(&all.0);
                        all = (done, truncated || all.1);
                    }
                    return Self::render(all, cap);
                }
            }
            let _ = tokio::time::timeout_at(until, notified).await;
        }
    }
}

pub(super) async fn pump_logs(mut rx: pipe::Receiver, sink: Arc<LogSink>) {
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        match rx.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => sink.push(&chunk[..n]),
        }
    }
    sink.close();
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::runtimes::protocol;

    #[tokio::test]
    async fn logs_split_at_markers_across_chunks() {
        let sink = LogSink::new(1024);
        sink.push(b"init\n");
        sink.arm(protocol::end_marker("a"));
        let marker = protocol::end_marker("a");
        let (head, tail) = marker.split_at(5);
        sink.push(b"hello");
        sink.push(head);
        sink.push(tail);
        sink.push(b"stray");
        let logs = sink.finish(Duration::from_millis(10)).await;
        assert_eq!(logs.text, "init\nhello");
        assert!(!logs.truncated);
        sink.arm(protocol::end_marker("b"));
        sink.push(b" more");
        sink.push(&protocol::end_marker("b"));
        let logs = sink.finish(Duration::from_millis(10)).await;
        assert_eq!(logs.text, "stray more");
    }

    #[tokio::test]
    async fn logs_are_capped_and_marked_truncated() {
        let sink = LogSink::new(10);
        sink.arm(protocol::end_marker("a"));
        sink.push(&[b'x'; 100]);
        sink.push(&protocol::end_marker("a"));
        let logs = sink.finish(Duration::from_millis(10)).await;
        assert_eq!(logs.text, "x".repeat(10));
        assert!(logs.truncated);
    }

    #[tokio::test]
    async fn missing_marker_gives_what_arrived_after_the_bound() {
        let sink = LogSink::new(100);
        sink.arm(protocol::end_marker("a"));
        sink.push(b"partial \xff");
        let logs = sink.finish(Duration::from_millis(20)).await;
        assert_eq!(logs.text, "partial \u{fffd}");
        sink.push(b"later");
        sink.close();
        assert_eq!(sink.drain(Duration::from_millis(10)).await.text, "later");
    }
}
