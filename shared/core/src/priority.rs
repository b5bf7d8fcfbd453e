//! Priorities of invocations: `high`, `normal` (the default) and `low`.
//!
//! A function's config names the highest priority its invocations get
//! ([`crate::FunctionConfig::priority`]); a caller may ask for a lower one per invocation
//! (`?priority=low`), never a higher one ([`Priority::capped_at`]). Work of each priority of a
//! function queues in a lane of its own, and a node with free slots shares them between the
//! priorities that have work by [`Share`]: high first, without starving the others.

use serde::{Deserialize, Serialize};

/// How soon an invocation is taken when work waits.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Priority {
    /// Taken first.
    High,
    /// The default.
    #[default]
    Normal,
    /// Taken when nothing higher waits, and still one slot in ten under any load of higher work.
    Low,
}

/// A priority name that is not `high`, `normal` or `low`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("priority must be high, normal or low")]
pub struct InvalidPriority;

impl Priority {
    /// Every priority, highest first.
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }

    /// Parses `high`, `normal` or `low`.
    pub fn parse(s: &str) -> Result<Self, InvalidPriority> {
        match s {
            "high" => Ok(Priority::High),
            "normal" => Ok(Priority::Normal),
            "low" => Ok(Priority::Low),
            _ => Err(InvalidPriority),
        }
    }

    /// Whether this is the default (`normal`), which is left out of serialized requests.
    pub fn is_normal(&self) -> bool {
        *self == Priority::Normal
    }

    /// This priority, lowered to `ceiling` if it is higher (a caller may lower a function's
    /// priority per invocation, never raise it).
    pub fn capped_at(self, ceiling: Priority) -> Priority {
        // `High` orders first: the larger of the two is the lower priority.
        self.max(ceiling)
    }

    /// Index in [`Priority::ALL`] (0 = high).
    pub fn index(self) -> usize {
        match self {
            Priority::High => 0,
            Priority::Normal => 1,
            Priority::Low => 2,
        }
    }

    /// Weight of the priority in [`Share`]: of every ten slots handed out while all three
    /// have work, high gets six, normal three and low one.
    pub fn weight(self) -> i64 {
        match self {
            Priority::High => 6,
            Priority::Normal => 3,
            Priority::Low => 1,
        }
    }
}

impl std::fmt::Display for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Priority {
    type Err = InvalidPriority;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The rule a node shares its free slots by between the priorities with work waiting: a smooth
/// weighted round robin (nginx's) with the weights of [`Priority::weight`]. Each slot goes to
/// the waiting priority with the most credit; every waiting priority earns its weight per slot
/// and the one served pays the sum of the waiting weights. So while high, normal and low all
/// wait, slots go 6 : 3 : 1, spread out (high is served first and most often, low at least once
/// in every ten slots); a priority with nothing waiting earns nothing and gives its turns away.
#[derive(Debug, Clone, Default)]
pub struct Share {
    credit: [i64; 3],
}

impl Share {
    /// The priority the next slot goes to, of those `waiting` (indexed as [`Priority::ALL`]);
    /// `None` when none waits.
    pub fn next(&mut self, waiting: [bool; 3]) -> Option<Priority> {
        let mut total = 0;
        let mut best: Option<usize> = None;
        for (i, p) in Priority::ALL.iter().enumerate() {
            if !waiting[i] {
                continue;
            }
            self.credit[i] += p.weight();
            total += p.weight();
            if best.is_none_or(|b| self.credit[i] > self.credit[b]) {
                best = Some(i);
            }
        }
        let best = best?;
        self.credit[best] -= total;
        Some(Priority::ALL[best])
    }

    /// How many of `slots` go to each priority (indexed as [`Priority::ALL`]).
    pub fn split(&mut self, slots: usize, waiting: [bool; 3]) -> [usize; 3] {
        let mut out = [0; 3];
        for _ in 0..slots {
            match self.next(waiting) {
                Some(p) => out[p.index()] += 1,
                None => break,
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_order_high_first() {
        for p in Priority::ALL {
            assert_eq!(Priority::parse(p.as_str()), Ok(p));
            assert_eq!(
                serde_json::to_string(&p).unwrap(),
                format!("\"{}\"", p.as_str())
            );
        }
        assert_eq!(Priority::parse("urgent"), Err(InvalidPriority));
        assert_eq!(Priority::parse("High"), Err(InvalidPriority));
        assert_eq!(Priority::default(), Priority::Normal);
    }

    #[test]
    fn an_invocation_is_capped_at_its_functions_priority() {
        use Priority::*;
        assert_eq!(High.capped_at(Normal), Normal);
        assert_eq!(High.capped_at(High), High);
        assert_eq!(Low.capped_at(High), Low);
        assert_eq!(Normal.capped_at(Low), Low);
    }

    #[test]
    fn slots_go_six_three_one_and_nobody_starves() {
        let mut share = Share::default();
        let split = share.split(1000, [true; 3]);
        assert_eq!(split, [600, 300, 100]);
        // One at a time, as a node with one free slot asks: every window of ten has a low.
        let mut share = Share::default();
        let picks: Vec<Priority> = (0..100).map(|_| share.next([true; 3]).unwrap()).collect();
        for window in picks.chunks(10) {
            assert_eq!(window.iter().filter(|p| **p == Priority::Low).count(), 1);
            assert_eq!(window.iter().filter(|p| **p == Priority::High).count(), 6);
        }
        assert_eq!(picks[0], Priority::High);
    }

    #[test]
    fn a_priority_without_work_gives_its_turns_away() {
        let mut share = Share::default();
        assert_eq!(share.split(8, [false, true, true]), [0, 6, 2]);
        let mut share = Share::default();
        assert_eq!(share.split(5, [false, false, true]), [0, 0, 5]);
        assert_eq!(share.next([false; 3]), None);
        let mut share = Share::default();
        assert_eq!(share.split(7, [true, false, true]), [6, 0, 1]);
    }
}
