//! Retry or give up after a failed manifest-list push.
//!
//! Each push already retries its registry requests ([`manifold_registry::Session`], about 15 s);
//! this is the window above that: a build whose platforms are all built keeps trying to push its
//! list for `--publish-window` ([`DEFAULT_WINDOW`], 10 minutes) after its first try started,
//! waiting [`backoff`] between tries (2 s doubling, at most 60 s, never past the window's end), so
//! that a registry outage of minutes does not throw away the built platforms. Only transient
//! failures (connection refused or broken, timeout, 5xx, 429) are retried; a refusal (401/403), a
//! missing child or a list that cannot be formed gives up at once: waiting will not fix it.

use std::time::{Duration, Instant};

/// How long a build keeps trying to push its list, unless `--publish-window` says otherwise.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(600);

/// What to do after a failed try of a list push.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishRetry {
    /// Try again after this long.
    After(Duration),
    /// Stop: the build fails (its built platforms are kept for `manifold publish`).
    GiveUp,
}

/// The wait after the `failed`-th failed try (from 1): 2 s doubling, at most 60 s.
pub fn backoff(failed: u32) -> Duration {
    let doublings = failed.saturating_sub(1).min(5);
    (Duration::from_secs(2) * 2u32.pow(doublings)).min(Duration::from_secs(60))
}

/// The decision after `failed` failed tries of a push whose first try started at `since`, at
/// `now`, within `window`; `transient`: the last failure may go away by itself.
pub fn decide(
    failed: u32,
    since: Instant,
    now: Instant,
    window: Duration,
    transient: bool,
) -> PublishRetry {
    let elapsed = now.saturating_duration_since(since);
    if !transient || elapsed >= window {
        return PublishRetry::GiveUp;
    }
    PublishRetry::After(backoff(failed).min(window - elapsed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_failures_retry_within_the_window_with_growing_waits() {
        use PublishRetry::*;
        let since = Instant::now();
        let s = Duration::from_secs;
        let window = s(600);
        // (failed tries, seconds since the first try started, transient) -> decision
        let table = [
            ((1, 15, true), After(s(2))),
            ((2, 32, true), After(s(4))),
            ((3, 51, true), After(s(8))),
            ((5, 120, true), After(s(32))),
            ((6, 200, true), After(s(60))),
            ((30, 400, true), After(s(60))),
            // Never past the window's end: the last try starts at its end.
            ((20, 590, true), After(s(10))),
            ((21, 600, true), GiveUp),
            ((21, 700, true), GiveUp),
            // 401/403, a missing child, a bad list: waiting does not help.
            ((1, 15, false), GiveUp),
            ((3, 60, false), GiveUp),
        ];
        for ((failed, at, transient), expected) in table {
            assert_eq!(
                decide(failed, since, since + s(at), window, transient),
                expected,
                "{failed} failed tries, {at}s in, transient {transient}"
            );
        }
    }

    #[test]
    fn a_zero_window_gives_up_at_the_first_failure() {
        let since = Instant::now();
        assert_eq!(
            decide(1, since, since, Duration::ZERO, true),
            PublishRetry::GiveUp
        );
    }
}
