//! Retry or give up after an infrastructure failure (worker lost, no acknowledgement, stuck,
//! Docker daemon unreachable, registry trouble).
//!
//! A job gets `max_attempts` counted attempts, the first included (0 means one). Assignments its
//! workers refused without starting them, and preemptions, are attempts too (the attempt number
//! goes up) but do not count. Build failures never come here: they end the build at once.

/// What to do with a job whose current attempt failed on the infrastructure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Queue it again.
    Requeue,
    /// Fail its build; `counted` attempts were spent.
    GiveUp {
        /// Attempts that counted.
        counted: u32,
    },
}

/// The decision for a job at attempt `attempt` of which `uncounted` were refusals or
/// preemptions, when `allowed` counted attempts are allowed.
pub fn decide(attempt: u32, uncounted: u32, allowed: u32) -> Retry {
    let counted = attempt.saturating_sub(uncounted);
    if counted < allowed {
        Retry::Requeue
    } else {
        Retry::GiveUp { counted }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_attempts_decide() {
        use Retry::*;
        // (attempt, uncounted, allowed) -> decision
        let table = [
            ((1, 0, 3), Requeue),
            ((2, 0, 3), Requeue),
            ((3, 0, 3), GiveUp { counted: 3 }),
            ((1, 0, 1), GiveUp { counted: 1 }),
            // Two refusals before it: attempt 3 is the first that counts.
            ((3, 2, 1), GiveUp { counted: 1 }),
            ((3, 2, 3), Requeue),
            ((5, 2, 3), GiveUp { counted: 3 }),
        ];
        for ((attempt, uncounted, allowed), expected) in table {
            assert_eq!(
                decide(attempt, uncounted, allowed),
                expected,
                "attempt {attempt}, {uncounted} uncounted, {allowed} allowed"
            );
        }
    }
}
