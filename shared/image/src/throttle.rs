//! A bandwidth bound for background pulls (a node pre-pulling the images of its region's
//! functions), which a waiting invocation lifts.
//!
//! A [`Throttle`] is a byte rate shared by every pull that uses it: each chunk written charges
//! its bytes, and the writer waits until the rate allows the next one (with a small burst
//! allowance, so a chunk is never held for less than it costs to sleep). A [`Pace`] is one
//! pull's view of it, with an `urgent` flag: when an invocation needs the image being
//! pre-pulled, [`crate::cache::ImageCache::prepare`] sets it, and the rest of that pull runs
//! at full speed instead of making the invocation wait on the bound.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// How far ahead of the rate a writer may run before it waits.
const BURST: Duration = Duration::from_millis(50);

/// The longest single wait, so that an urgent pull resumes promptly.
pub(crate) const MAX_WAIT_STEP: Duration = Duration::from_millis(100);

/// A byte rate shared by the pulls that use it.
#[derive(Debug)]
pub struct Throttle {
    bytes_per_sec: u64,
    /// When the bytes charged so far are paid for.
    paid_until: Mutex<Option<Instant>>,
}

impl Throttle {
    /// At most `bytes_per_sec` (at least 1) across its pulls.
    pub fn new(bytes_per_sec: u64) -> Self {
        Self {
            bytes_per_sec: bytes_per_sec.max(1),
            paid_until: Mutex::new(None),
        }
    }

    /// The rate.
    pub fn bytes_per_sec(&self) -> u64 {
        self.bytes_per_sec
    }

    /// Charges `bytes` just written; the instant before which the next write should not start
    /// (`None`: at once).
    fn charge(&self, bytes: usize) -> Option<Instant> {
        let now = Instant::now();
        let cost = Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
        let mut paid = self.paid_until.lock().unwrap_or_else(|e| e.into_inner());
        let from = paid.map_or(now, |p| p.max(now));
        let until = from + cost;
        *paid = Some(until);
        let resume = until.checked_sub(BURST)?;
        (resume > now).then_some(resume)
    }
}

/// One pull's use of a [`Throttle`].
#[derive(Debug, Clone)]
pub struct Pace {
    throttle: Arc<Throttle>,
    urgent: Arc<AtomicBool>,
}

impl Pace {
    /// A pull paced by `throttle`.
    pub fn new(throttle: Arc<Throttle>) -> Self {
        Self {
            throttle,
            urgent: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Lifts the bound for the rest of this pull.
    pub fn hurry(&self) {
        self.urgent.store(true, Ordering::Relaxed);
    }

    /// Whether the bound was lifted.
    pub fn is_urgent(&self) -> bool {
        self.urgent.load(Ordering::Relaxed)
    }

    /// Charges `bytes` just written; when the next write may start (`None`: at once, or the
    /// pull is urgent).
    pub(crate) fn charge(&self, bytes: usize) -> Option<Instant> {
        if self.is_urgent() {
            return None;
        }
        self.throttle.charge(bytes)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Writes `chunks` of `size` bytes through `pace` as a writer does; the (virtual) time it
    /// took.
    async fn write(pace: &Pace, chunks: usize, size: usize) -> Duration {
        let start = Instant::now();
        for _ in 0..chunks {
            if let Some(resume) = pace.charge(size) {
                while Instant::now() < resume && !pace.is_urgent() {
                    tokio::time::sleep((resume - Instant::now()).min(MAX_WAIT_STEP)).await;
                }
            }
        }
        start.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn writes_keep_to_the_rate_across_pulls() {
        let throttle = Arc::new(Throttle::new(1_000_000));
        // 2 MB at 1 MB/s: about 2 s, less the burst allowance.
        let took = write(&Pace::new(throttle.clone()), 200, 10_000).await;
        assert!(
            took >= Duration::from_millis(1900) && took <= Duration::from_millis(2100),
            "{took:?}"
        );
        // Two pulls at once share the rate: 2 × 1 MB in about 2 s, not 1 s.
        let (a, b) = (Pace::new(throttle.clone()), Pace::new(throttle.clone()));
        let start = Instant::now();
        tokio::join!(write(&a, 100, 10_000), write(&b, 100, 10_000));
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(1900), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_urgent_pull_is_not_held_back() {
        let throttle = Arc::new(Throttle::new(1_000));
        let pace = Pace::new(throttle);
        pace.hurry();
        let took = write(&pace, 100, 10_000).await;
        assert_eq!(took, Duration::ZERO, "1 MB at 1 kB/s would take 1000 s");
    }
}
