//! Which assignment the worker starts, which it refuses without starting, and which of its own
//! attempts a newer assignment supersedes. Pure: the caller passes what it knows (draining, the
//! daemon's health, its platform and slots, the attempts it runs) and applies the decision.
//!
//! In order:
//! 1. a draining worker refuses every assignment (uncounted by the coordinator);
//! 2. a paused or unhealthy one refuses too, naming why;
//! 3. a job for another platform is refused as retryable (the coordinator may place it wrongly
//!    only through a bug; another worker can build it);
//! 4. an attempt already running here (a repeated assignment after a reconnect) is acknowledged
//!    again and nothing starts;
//! 5. a newer attempt of a job supersedes every older attempt of that job here: they are
//!    cancelled, and, like cancelled attempts still winding down, hold no slot;
//! 6. the job starts if a slot is free, else it is refused (uncounted).

use manifold_proto::{JobId, Platform};

use crate::job::JobFailure;

/// What the worker knows about itself when an assignment arrives.
#[derive(Clone, Debug)]
pub struct Situation<'a> {
    /// The worker's name, for messages.
    pub name: &'a str,
    /// It drains (SIGTERM or `manifold workers drain`).
    pub draining: bool,
    /// Its owner paused it (`manifold workers pause`).
    pub paused: bool,
    /// Why its Docker daemon cannot build, when it cannot.
    pub unhealthy: Option<&'a str>,
    /// The platform its daemon builds.
    pub platform: &'a Platform,
    /// Its slots.
    pub slots: u32,
}

/// One attempt the worker holds: (job, attempt, already cancelled).
pub type Held = (JobId, u32, bool);

/// The decision for one assignment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admission {
    /// Older attempts of the same job to cancel, whatever the verdict.
    pub supersede: Vec<(JobId, u32)>,
    /// What to do with the assignment itself.
    pub verdict: Verdict,
}

/// What to do with an assignment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Acknowledge it and start it.
    Start,
    /// Acknowledge it again; it already runs here.
    AlreadyRunning,
    /// Answer with this failure; nothing starts.
    Refuse(JobFailure),
}

/// Decides on attempt `attempt` of `job`, for `platform`, given what the worker `holds`.
pub fn admit(
    situation: &Situation<'_>,
    job: JobId,
    attempt: u32,
    platform: &Platform,
    holds: &[Held],
) -> Admission {
    let refuse = |failure| Admission {
        supersede: Vec::new(),
        verdict: Verdict::Refuse(failure),
    };
    let name = situation.name;
    if situation.draining {
        return refuse(JobFailure::refused(format!(
            "worker draining: `{name}` is shutting down and takes no new jobs"
        )));
    }
    if situation.paused {
        return refuse(JobFailure::refused(format!(
            "worker `{name}` is paused by its owner: `manifold workers resume {name}` takes jobs again"
        )));
    }
    if let Some(reason) = situation.unhealthy {
        return refuse(JobFailure::refused(format!(
            "worker `{name}` is unhealthy: {reason}"
        )));
    }
    if !platform.matches(situation.platform) {
        return refuse(JobFailure::retryable(format!(
            "job is for {platform} but worker `{name}` builds {}; assign it to a worker of that platform",
            situation.platform
        )));
    }
    if holds.iter().any(|(j, a, _)| *j == job && *a == attempt) {
        return Admission {
            supersede: Vec::new(),
            verdict: Verdict::AlreadyRunning,
        };
    }
    let superseded = |j: &JobId, a: &u32| *j == job && *a < attempt;
    let supersede: Vec<(JobId, u32)> = holds
        .iter()
        .filter(|(j, a, _)| superseded(j, a))
        .map(|(j, a, _)| (*j, *a))
        .collect();
    let busy = holds
        .iter()
        .filter(|(j, a, cancelled)| !(*cancelled || superseded(j, a)))
        .count();
    let verdict = if busy >= situation.slots as usize {
        Verdict::Refuse(JobFailure::refused(format!(
            "worker `{name}` has no free slot ({busy} of {} in use)",
            situation.slots
        )))
    } else {
        Verdict::Start
    };
    Admission { supersede, verdict }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amd64() -> Platform {
        "linux/amd64".parse().unwrap()
    }

    /// Admission of attempt `attempt` of job `job` (an index into `ids`) for `platform` on a
    /// two-slot amd64 worker holding `holds` (job index, attempt, cancelled).
    fn check(
        draining: bool,
        unhealthy: Option<&str>,
        platform: &str,
        (job, attempt): (usize, u32),
        holds: &[(usize, u32, bool)],
        expected: (&[(usize, u32)], &str),
    ) {
        let ids: Vec<JobId> = (0..4).map(|_| JobId::new()).collect();
        let own = amd64();
        let situation = Situation {
            name: "w",
            draining,
            paused: false,
            unhealthy,
            platform: &own,
            slots: 2,
        };
        let holds: Vec<Held> = holds.iter().map(|(j, a, c)| (ids[*j], *a, *c)).collect();
        let got = admit(
            &situation,
            ids[job],
            attempt,
            &platform.parse().unwrap(),
            &holds,
        );
        let supersede: Vec<(JobId, u32)> = expected.0.iter().map(|(j, a)| (ids[*j], *a)).collect();
        assert_eq!(got.supersede, supersede, "supersede, {holds:?}");
        let verdict = match &got.verdict {
            Verdict::Start => "start".to_owned(),
            Verdict::AlreadyRunning => "already running".to_owned(),
            Verdict::Refuse(f) => {
                let kind = match (f.refused, f.retryable) {
                    (true, _) => "refuse uncounted",
                    (false, true) => "refuse retryable",
                    (false, false) => "refuse",
                };
                format!("{kind}: {}", f.message)
            }
        };
        assert_eq!(verdict, expected.1, "{holds:?}");
    }

    #[test]
    fn a_paused_worker_refuses_uncounted() {
        let own = amd64();
        let situation = Situation {
            name: "mac",
            draining: false,
            paused: true,
            unhealthy: None,
            platform: &own,
            slots: 1,
        };
        let got = admit(&situation, JobId::new(), 1, &amd64(), &[]);
        match got.verdict {
            Verdict::Refuse(f) => {
                assert!(f.refused, "{f:?}");
                assert!(f.message.contains("`mac` is paused"), "{}", f.message);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn admission_table() {
        let none: &[(usize, u32)] = &[];
        // A free worker starts it.
        check(false, None, "linux/amd64", (0, 1), &[], (none, "start"));
        // Draining and unhealthy refuse, uncounted, naming why.
        check(
            true,
            None,
            "linux/amd64",
            (0, 1),
            &[],
            (
                none,
                "refuse uncounted: worker draining: `w` is shutting down and takes no new jobs",
            ),
        );
        check(
            false,
            Some("ping failed"),
            "linux/amd64",
            (0, 1),
            &[],
            (
                none,
                "refuse uncounted: worker `w` is unhealthy: ping failed",
            ),
        );
        // Another platform: retryable, counted (a bug elsewhere, another worker can build it).
        check(
            false,
            None,
            "linux/arm64",
            (0, 1),
            &[],
            (
                none,
                "refuse retryable: job is for linux/arm64 but worker `w` builds linux/amd64; assign it to a worker of that platform",
            ),
        );
        // Both slots busy: refused, uncounted.
        check(
            false,
            None,
            "linux/amd64",
            (0, 1),
            &[(1, 1, false), (2, 1, false)],
            (
                none,
                "refuse uncounted: worker `w` has no free slot (2 of 2 in use)",
            ),
        );
        // A cancelled attempt winding down holds no slot.
        check(
            false,
            None,
            "linux/amd64",
            (0, 1),
            &[(1, 1, false), (2, 1, true)],
            (none, "start"),
        );
        // The same attempt again (a reconnect): acknowledged, nothing starts.
        check(
            false,
            None,
            "linux/amd64",
            (0, 2),
            &[(0, 2, false), (1, 1, false)],
            (none, "already running"),
        );
        // A newer attempt supersedes the older one here, which frees its slot.
        check(
            false,
            None,
            "linux/amd64",
            (0, 3),
            &[(0, 2, false), (1, 1, false)],
            (&[(0, 2)], "start"),
        );
        // Superseded even when the newer one cannot start.
        check(
            false,
            None,
            "linux/amd64",
            (0, 3),
            &[(0, 2, false), (1, 1, false), (2, 1, false)],
            (
                &[(0, 2)],
                "refuse uncounted: worker `w` has no free slot (2 of 2 in use)",
            ),
        );
        // An older attempt than one running here is not superseding anything.
        check(
            false,
            None,
            "linux/amd64",
            (0, 1),
            &[(0, 2, false), (1, 1, false)],
            (
                none,
                "refuse uncounted: worker `w` has no free slot (2 of 2 in use)",
            ),
        );
    }
}
