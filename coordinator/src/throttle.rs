//! Slowing down token guessing: each source address that presents wrong tokens waits longer for
//! each further refusal.
//!
//! Policy: the first [`FREE_FAILURES`] wrong tokens of a source are answered at once; after that,
//! each refusal waits [`FIRST_DELAY`], doubling with every further failure up to [`MAX_DELAY`]. A
//! source that presents no wrong token for [`FORGET_AFTER`] starts again from zero, and so does one
//! that presents a valid token. Pure: time is an argument.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Wrong tokens answered without delay.
pub const FREE_FAILURES: u32 = 3;
/// The delay of the first slowed refusal.
pub const FIRST_DELAY: Duration = Duration::from_millis(250);
/// The longest delay.
pub const MAX_DELAY: Duration = Duration::from_secs(10);
/// Quiet time after which a source's failures are forgotten.
pub const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Sources tracked at once; past it the longest-quiet one is forgotten.
const MAX_SOURCES: usize = 10_000;

/// Wrong-token counts per source.
#[derive(Debug, Default)]
pub struct Throttle {
    sources: HashMap<IpAddr, (u32, Instant)>,
}

impl Throttle {
    /// Records a wrong token from `source` at `now`; returns the number of failures in a row and
    /// how long to wait before answering.
    pub fn failed(&mut self, source: IpAddr, now: Instant) -> (u32, Duration) {
        if self.sources.len() >= MAX_SOURCES
            && !self.sources.contains_key(&source)
            && let Some(oldest) = self
                .sources
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| *k)
        {
            self.sources.remove(&oldest);
        }
        let entry = self.sources.entry(source).or_insert((0, now));
        if now.saturating_duration_since(entry.1) >= FORGET_AFTER {
            entry.0 = 0;
        }
        entry.0 += 1;
        entry.1 = now;
        let n = entry.0;
        (n, delay_after(n))
    }

    /// A valid token from `source`: its count starts again.
    pub fn succeeded(&mut self, source: IpAddr) {
        self.sources.remove(&source);
    }
}

/// The wait before answering the `n`th wrong token in a row.
pub fn delay_after(n: u32) -> Duration {
    if n <= FREE_FAILURES {
        return Duration::ZERO;
    }
    let doublings = (n - FREE_FAILURES - 1).min(16);
    (FIRST_DELAY * 2u32.pow(doublings)).min(MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_after_the_free_failures_up_to_the_cap() {
        let ms = |n| delay_after(n).as_millis();
        let table = [
            (1, 0),
            (3, 0),
            (4, 250),
            (5, 500),
            (6, 1000),
            (9, 8000),
            (10, 10_000),
            (100, 10_000),
        ];
        for (n, expected) in table {
            assert_eq!(ms(n), expected, "failure {n}");
        }
    }

    #[test]
    fn sources_are_counted_apart_and_forgotten_when_quiet_or_right() {
        let t0 = Instant::now();
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap());
        let mut t = Throttle::default();
        for i in 1..=5 {
            assert_eq!(t.failed(a, t0).0, i);
        }
        assert_eq!(
            t.failed(b, t0),
            (1, Duration::ZERO),
            "another source starts at zero"
        );
        assert_eq!(t.failed(a, t0 + FORGET_AFTER - Duration::from_secs(1)).0, 6);
        let quiet = t0 + FORGET_AFTER * 2;
        assert_eq!(t.failed(a, quiet).0, 1, "forgotten after a quiet time");
        t.failed(a, quiet);
        t.succeeded(a);
        assert_eq!(t.failed(a, quiet).0, 1, "a valid token starts it again");
    }
}
