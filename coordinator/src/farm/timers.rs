//! The timers of an attempt out on a worker, and of the worker itself: pure functions of the
//! times they were set and the time now.
//!
//! - A worker is **silent** (declared lost) when nothing came from it for longer than
//!   `worker_lease`.
//! - An assignment is **unacknowledged** once `assign_timeout` has passed since it was **sent**
//!   (handed to the worker's stream once its record was durable, or given up by the writer)
//!   without a `JobAccepted`. While the writer still holds it, no deadline runs: a busy writer
//!   must not fail healthy workers that never saw the assignment.
//! - An acknowledged attempt is **stuck** once `stuck_after` has passed since its acknowledgement
//!   or its last output line.
//! - A reported image is **unchecked** once [`CHECK_WINDOW`] has passed since the worker reported
//!   it without the coordinator's check ([`crate::verify`]) ending. The worker is done with the
//!   attempt by then (its slot is free), so it is neither stuck nor unacknowledged; the check's
//!   registry reads have timeouts of their own, so this only catches a check that never ends.

use std::time::{Duration, Instant};

use super::FarmConfig;
use crate::build::human_duration;

/// How long the coordinator's check of a reported image may take at most.
pub const CHECK_WINDOW: Duration = Duration::from_secs(15 * 60);

/// The timers of one attempt out on a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveAttempt {
    /// The attempt these timers belong to.
    pub attempt: u32,
    /// When the assignment left for the worker; `None` while the writer holds it.
    pub sent_at: Option<Instant>,
    /// Set once acknowledged.
    pub accepted: bool,
    /// The acknowledgement or the last output line.
    pub last_progress: Instant,
    /// When the worker reported the image its attempt pushed: from then on only the
    /// coordinator's check of it is awaited.
    pub reported_at: Option<Instant>,
}

/// Why an attempt out on a worker is called off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overdue {
    /// Not acknowledged within `assign_timeout`.
    Unacknowledged,
    /// Acknowledged, then silent for `stuck_after`.
    Stuck,
    /// Reported, and its image's check did not end within [`CHECK_WINDOW`].
    Unchecked,
}

impl Overdue {
    /// Why the attempt was called off, as its error says it.
    pub fn cause(self, config: &FarmConfig) -> String {
        match self {
            Overdue::Unacknowledged => format!(
                "the worker did not acknowledge the assignment within {}",
                human_duration(config.assign_timeout)
            ),
            Overdue::Stuck => format!(
                "no output for {}: treated as stuck (raise --stuck-after for steps that are silent longer)",
                human_duration(config.stuck_after)
            ),
            Overdue::Unchecked => format!(
                "the coordinator's check of the reported image did not end within {}",
                human_duration(CHECK_WINDOW)
            ),
        }
    }
}

impl LiveAttempt {
    /// An assignment made at `at`, not sent yet.
    pub fn assigned(attempt: u32, at: Instant) -> Self {
        Self {
            attempt,
            sent_at: None,
            accepted: false,
            last_progress: at,
            reported_at: None,
        }
    }

    /// An attempt known to run at `at` (adopted after a reconnect).
    pub fn acknowledged(attempt: u32, at: Instant) -> Self {
        Self {
            accepted: true,
            sent_at: Some(at),
            ..Self::assigned(attempt, at)
        }
    }

    /// The assignment left for the worker at `at`: its acknowledgement deadline runs from the
    /// first send.
    pub fn sent(&mut self, at: Instant) {
        self.sent_at.get_or_insert(at);
    }

    /// The worker acknowledged the assignment at `at`.
    pub fn acknowledge(&mut self, at: Instant) {
        self.accepted = true;
        self.last_progress = at;
    }

    /// Output arrived at `at`.
    pub fn progress(&mut self, at: Instant) {
        self.last_progress = at;
    }

    /// The worker reported the image it pushed at `at`; only its check is awaited now.
    pub fn reported(&mut self, at: Instant) {
        self.reported_at.get_or_insert(at);
    }

    /// Whether the worker reported its image and the coordinator is checking it.
    pub fn is_checking(&self) -> bool {
        self.reported_at.is_some()
    }

    /// Whether the attempt is overdue at `now`, and why.
    pub fn overdue(&self, config: &FarmConfig, now: Instant) -> Option<Overdue> {
        if let Some(reported) = self.reported_at {
            (now.saturating_duration_since(reported) >= CHECK_WINDOW).then_some(Overdue::Unchecked)
        } else if !self.accepted {
            let sent = self.sent_at?;
            (now.saturating_duration_since(sent) >= config.assign_timeout)
                .then_some(Overdue::Unacknowledged)
        } else {
            (now.saturating_duration_since(self.last_progress) >= config.stuck_after)
                .then_some(Overdue::Stuck)
        }
    }
}

/// Whether a worker last heard from at `last_seen` is silent past its `lease` at `now`.
pub fn silent(last_seen: Instant, lease: Duration, now: Instant) -> bool {
    now.saturating_duration_since(last_seen) > lease
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> FarmConfig {
        FarmConfig {
            assign_timeout: Duration::from_secs(30),
            stuck_after: Duration::from_secs(600),
            ..FarmConfig::default()
        }
    }

    /// `events` after an assignment at t0: (seconds after t0, "sent" | "ack" | "log"); then the
    /// verdict at `at` seconds.
    fn check(events: &[(u64, &str)], at: u64, expected: Option<Overdue>) {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let mut live = LiveAttempt::assigned(1, t0);
        for (when, what) in events {
            match *what {
                "sent" => live.sent(s(*when)),
                "ack" => live.acknowledge(s(*when)),
                "log" => live.progress(s(*when)),
                "reported" => live.reported(s(*when)),
                other => panic!("unknown event {other}"),
            }
        }
        assert_eq!(
            live.overdue(&config(), s(at)),
            expected,
            "{events:?} at {at}s"
        );
    }

    #[test]
    fn acknowledgement_and_stuck_deadlines_at_exact_times() {
        use Overdue::*;
        check(&[(0, "sent")], 29, None);
        check(&[(0, "sent")], 30, Some(Unacknowledged));
        // Output before the acknowledgement does not stand for it.
        check(&[(0, "sent"), (10, "log")], 30, Some(Unacknowledged));
        check(&[(0, "sent"), (29, "ack")], 30, None);
        check(&[(0, "sent"), (29, "ack")], 628, None);
        check(&[(0, "sent"), (29, "ack")], 629, Some(Stuck));
        check(&[(0, "sent"), (29, "ack"), (600, "log")], 1199, None);
        check(&[(0, "sent"), (29, "ack"), (600, "log")], 1200, Some(Stuck));
        // A clock that went backwards is no time at all.
        check(&[(0, "sent"), (29, "ack")], 0, None);
    }

    #[test]
    fn the_acknowledgement_deadline_counts_from_the_send_not_the_decision() {
        use Overdue::*;
        // Held by a busy writer for 25 s: the worker still has its 30 s from the send.
        check(&[], 3600, None);
        check(&[(25, "sent")], 54, None);
        check(&[(25, "sent")], 55, Some(Unacknowledged));
        check(&[(25, "sent"), (54, "ack")], 55, None);
        // Only the first send counts (a report that arrives twice moves nothing).
        check(&[(25, "sent"), (40, "sent")], 55, Some(Unacknowledged));
        // Acknowledged before the send was reported back: running, only ever stuck.
        check(&[(1, "ack"), (2, "sent")], 600, None);
        check(&[(1, "ack"), (2, "sent")], 601, Some(Stuck));
    }

    #[test]
    fn a_reported_attempt_waits_only_for_its_check() {
        use Overdue::*;
        let window = CHECK_WINDOW.as_secs();
        // Neither the acknowledgement nor the stuck deadline runs once the image is reported.
        check(&[(0, "sent"), (1, "reported")], 31, None);
        check(
            &[(0, "sent"), (1, "ack"), (2, "reported")],
            2 + window - 1,
            None,
        );
        check(
            &[(0, "sent"), (1, "ack"), (2, "reported")],
            2 + window,
            Some(Unchecked),
        );
        // A second report moves nothing.
        check(
            &[(1, "ack"), (2, "reported"), (500, "reported")],
            2 + window,
            Some(Unchecked),
        );
    }

    #[test]
    fn an_adopted_attempt_is_only_ever_stuck() {
        let t0 = Instant::now();
        let live = LiveAttempt::acknowledged(2, t0);
        assert_eq!(live.overdue(&config(), t0 + Duration::from_secs(31)), None);
        assert_eq!(
            live.overdue(&config(), t0 + Duration::from_secs(600)),
            Some(Overdue::Stuck)
        );
    }

    #[test]
    fn a_worker_is_silent_only_past_its_lease() {
        let t0 = Instant::now();
        let lease = Duration::from_secs(15);
        assert!(!silent(t0, lease, t0 + lease));
        assert!(silent(t0, lease, t0 + lease + Duration::from_millis(1)));
        assert!(!silent(t0 + lease, lease, t0));
    }
}
