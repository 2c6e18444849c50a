//! How long to wait before dialling the coordinator again: exponential, jittered, bounded.

use std::time::Duration;

use manifold_registry::session::jittered;

/// Exponential backoff with jitter: `initial`, doubling up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `initial`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            next: initial,
        }
    }

    /// The next wait, jittered, and doubles the one after it.
    pub fn next_wait(&mut self) -> Duration {
        let wait = jittered(self.next).min(self.max);
        self.next = (self.next * 2).min(self.max);
        wait
    }

    /// Starts again at `initial` (after a success).
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
        let waits: Vec<Duration> = (0..8).map(|_| b.next_wait()).collect();
        for (i, w) in waits.iter().enumerate() {
            let nominal = Duration::from_millis(500 * (1 << i)).min(Duration::from_secs(10));
            assert!(
                *w >= nominal.mul_f64(0.75)
                    && *w <= nominal.mul_f64(1.25).min(Duration::from_secs(10)),
                "{i}: {w:?}"
            );
        }
        assert!(waits[7] <= Duration::from_secs(10));
        b.reset();
        assert!(b.next_wait() < Duration::from_millis(650));
    }
}
