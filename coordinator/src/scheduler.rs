//! Which queued job runs on which worker: pure decision logic, no I/O, time passed in.
//!
//! The scheduler knows only what it needs to decide: each attached worker's platforms, whether it
//! emulates them, its slots and the jobs occupying them; and the queue of jobs waiting for a slot of
//! their platform. The farm feeds it events (a worker attached or left, a job queued, a job finished)
//! and asks it for assignments; it never fails and never blocks.
//!
//! Policy:
//! - jobs are served oldest first;
//! - a job goes only to a worker that builds its platform, with a free slot, that is not draining
//!   and whose Docker daemon answers (a worker reports itself unhealthy when it does not);
//! - native workers are preferred over emulated ones, then the least loaded, then by name (so the
//!   choice is deterministic);
//! - a queued job whose platform no attached worker can build (none attached, or only draining or
//!   unhealthy ones) for longer than the configured wait is reported as starved, so the farm can
//!   fail it with a message naming the platform.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use manifold_proto::{JobId, Platform};

/// What the scheduler knows of an attached worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerCaps {
    /// Unique worker name.
    pub name: String,
    /// Platforms its daemon builds.
    pub platforms: Vec<Platform>,
    /// Whether it builds them under emulation.
    pub emulated: bool,
    /// Concurrent jobs it accepts.
    pub slots: u32,
}

#[derive(Debug)]
struct WorkerState {
    caps: WorkerCaps,
    running: BTreeSet<JobId>,
    /// Set while the worker drains: it keeps its jobs but takes no new one.
    draining: bool,
    /// Why its Docker daemon cannot build right now; it takes no job while set.
    unhealthy: Option<String>,
    /// It refused an assignment: no new one until it heartbeats again (see [`Scheduler::hold`]).
    held: bool,
}

/// Whether a worker takes jobs, as `manifold workers` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerStatus {
    /// Draining: no new job, running ones finish.
    pub draining: bool,
    /// Why its daemon cannot build, when it cannot.
    pub unhealthy: Option<String>,
}

impl WorkerStatus {
    /// Neither draining nor unhealthy.
    pub fn ready(&self) -> bool {
        !self.draining && self.unhealthy.is_none()
    }
}

#[derive(Debug, Clone)]
struct Queued {
    job: JobId,
    platform: Platform,
    since: Instant,
}

impl WorkerState {
    fn takes_jobs(&self) -> bool {
        !self.draining && self.unhealthy.is_none()
    }
}

/// A decision: run `job` on `worker`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    /// The job to start.
    pub job: JobId,
    /// The worker's name.
    pub worker: String,
}

/// The scheduler's state. See the module docs for the policy.
#[derive(Debug, Default)]
pub struct Scheduler {
    workers: BTreeMap<String, WorkerState>,
    queue: VecDeque<Queued>,
}

impl Scheduler {
    /// An empty scheduler: no workers, nothing queued.
    pub fn new() -> Self {
        Self::default()
    }

    /// A worker attached. `running` are jobs it restated as already running (after a reconnect).
    pub fn add_worker(&mut self, caps: WorkerCaps, running: impl IntoIterator<Item = JobId>) {
        let running: BTreeSet<JobId> = running.into_iter().collect();
        for job in &running {
            self.queue.retain(|q| q.job != *job);
        }
        self.workers.insert(
            caps.name.clone(),
            WorkerState {
                caps,
                running,
                draining: false,
                unhealthy: None,
                held: false,
            },
        );
    }

    /// A worker left; returns the jobs it was running, which the caller requeues or fails.
    pub fn remove_worker(&mut self, name: &str) -> Vec<JobId> {
        self.workers
            .remove(name)
            .map(|w| w.running.into_iter().collect())
            .unwrap_or_default()
    }

    /// Stops giving `name` new jobs; its running jobs continue.
    pub fn drain_worker(&mut self, name: &str) {
        if let Some(w) = self.workers.get_mut(name) {
            w.draining = true;
        }
    }

    /// Records whether the worker's daemon answers: `Some(reason)` when it does not. An unhealthy
    /// worker keeps its running jobs (they fail or finish on their own) and gets no new one.
    pub fn set_unhealthy(&mut self, name: &str, reason: Option<String>) {
        if let Some(w) = self.workers.get_mut(name) {
            w.unhealthy = reason;
        }
    }

    /// The worker refused an assignment it was thought to have room for: it gets no job until
    /// [`Scheduler::release`] (its next heartbeat), so that a refusal cannot turn into a loop of
    /// assignments and refusals.
    pub fn hold(&mut self, name: &str) {
        if let Some(w) = self.workers.get_mut(name) {
            w.held = true;
        }
    }

    /// Ends a [`Scheduler::hold`].
    pub fn release(&mut self, name: &str) {
        if let Some(w) = self.workers.get_mut(name) {
            w.held = false;
        }
    }

    /// Whether the worker takes jobs; `None` when it is not attached.
    pub fn status(&self, name: &str) -> Option<WorkerStatus> {
        self.workers.get(name).map(|w| WorkerStatus {
            draining: w.draining,
            unhealthy: w.unhealthy.clone(),
        })
    }

    /// Whether a worker of this name is attached.
    pub fn has_worker(&self, name: &str) -> bool {
        self.workers.contains_key(name)
    }

    /// Jobs occupying the worker's slots.
    pub fn slots_in_use(&self, name: &str) -> u32 {
        self.workers.get(name).map_or(0, |w| w.running.len() as u32)
    }

    /// Queues a job; it waits until a worker of its platform has a free slot.
    pub fn enqueue(&mut self, job: JobId, platform: Platform, now: Instant) {
        if !self.queue.iter().any(|q| q.job == job) {
            self.queue.push_back(Queued {
                job,
                platform,
                since: now,
            });
        }
    }

    /// A job left the farm (finished, failed, cancelled): frees its slot or its queue place.
    pub fn finished(&mut self, job: JobId) {
        self.queue.retain(|q| q.job != job);
        for w in self.workers.values_mut() {
            w.running.remove(&job);
        }
    }

    /// Number of jobs waiting for a slot.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Assigns as many queued jobs as free slots allow, oldest first, and records them as running.
    pub fn assign(&mut self) -> Vec<Assignment> {
        let mut out = Vec::new();
        let mut remaining = VecDeque::with_capacity(self.queue.len());
        while let Some(q) = self.queue.pop_front() {
            match self.best_worker(&q.platform) {
                Some(name) => {
                    self.workers
                        .get_mut(&name)
                        .expect("best_worker returns attached workers")
                        .running
                        .insert(q.job);
                    out.push(Assignment {
                        job: q.job,
                        worker: name,
                    });
                }
                None => remaining.push_back(q),
            }
        }
        self.queue = remaining;
        out
    }

    /// Queued jobs that have waited at least `wait` while no attached worker can build their
    /// platform (draining and unhealthy workers cannot).
    pub fn starved(&self, now: Instant, wait: Duration) -> Vec<(JobId, Platform)> {
        self.queue
            .iter()
            .filter(|q| now.saturating_duration_since(q.since) >= wait)
            .filter(|q| !self.any_worker_builds(&q.platform))
            .map(|q| (q.job, q.platform.clone()))
            .collect()
    }

    /// Whether any attached worker that takes jobs (not draining, healthy) builds `platform`.
    pub fn any_worker_builds(&self, platform: &Platform) -> bool {
        self.workers
            .values()
            .any(|w| w.takes_jobs() && w.caps.platforms.contains(platform))
    }

    fn best_worker(&self, platform: &Platform) -> Option<String> {
        self.workers
            .values()
            .filter(|w| w.takes_jobs() && !w.held && w.caps.platforms.contains(platform))
            .filter(|w| (w.running.len() as u32) < w.caps.slots)
            .min_by_key(|w| {
                (
                    w.caps.emulated,
                    // Least loaded relative to its size: compare running/slots without floats.
                    (w.running.len() as u64 * 1000) / u64::from(w.caps.slots.max(1)),
                    w.caps.name.clone(),
                )
            })
            .map(|w| w.caps.name.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(name: &str, platform: &str, emulated: bool, slots: u32) -> WorkerCaps {
        WorkerCaps {
            name: name.into(),
            platforms: vec![platform.parse().unwrap()],
            emulated,
            slots,
        }
    }

    /// Runs `events` then one assignment round; returns "job-index->worker" pairs.
    #[track_caller]
    fn check(workers: &[WorkerCaps], jobs: &[&str], expected: &[&str]) {
        let mut s = Scheduler::new();
        for w in workers {
            s.add_worker(w.clone(), []);
        }
        let t0 = Instant::now();
        let ids: Vec<JobId> = jobs.iter().map(|_| JobId::new()).collect();
        for (i, (id, p)) in ids.iter().zip(jobs).enumerate() {
            s.enqueue(
                *id,
                p.parse().unwrap(),
                t0 + Duration::from_millis(i as u64),
            );
        }
        let got: Vec<String> = s
            .assign()
            .into_iter()
            .map(|a| {
                let i = ids.iter().position(|id| *id == a.job).unwrap();
                format!("{i}->{}", a.worker)
            })
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn assignment_table() {
        let x86 = worker("x86", "linux/amd64", false, 1);
        let arm = worker("arm", "linux/arm64", false, 1);
        let arm_emu = worker("arm-emu", "linux/arm64", true, 4);
        let x86_big = worker("x86-big", "linux/amd64", false, 2);

        // One job per platform goes to the worker of that platform.
        check(
            &[x86.clone(), arm.clone()],
            &["linux/amd64", "linux/arm64"],
            &["0->x86", "1->arm"],
        );
        // No worker of the platform: the job waits.
        check(std::slice::from_ref(&x86), &["linux/arm64"], &[]);
        // Slots bound concurrency; the oldest job goes first.
        check(
            std::slice::from_ref(&x86),
            &["linux/amd64", "linux/amd64"],
            &["0->x86"],
        );
        // Native is preferred over emulated, even when the emulated one has more free slots.
        check(
            &[arm_emu.clone(), arm.clone()],
            &["linux/arm64", "linux/arm64"],
            &["0->arm", "1->arm-emu"],
        );
        // Among native workers the least loaded wins, then the name.
        check(
            &[x86_big.clone(), x86.clone()],
            &["linux/amd64", "linux/amd64", "linux/amd64"],
            &["0->x86", "1->x86-big", "2->x86-big"],
        );
        // A later job of another platform is not held up by an earlier job that must wait.
        check(
            std::slice::from_ref(&x86),
            &["linux/arm64", "linux/amd64"],
            &["1->x86"],
        );
    }

    #[test]
    fn finishing_a_job_frees_its_slot_for_the_next() {
        let mut s = Scheduler::new();
        s.add_worker(worker("x86", "linux/amd64", false, 1), []);
        let (a, b) = (JobId::new(), JobId::new());
        let now = Instant::now();
        s.enqueue(a, Platform::linux_amd64(), now);
        s.enqueue(b, Platform::linux_amd64(), now);
        assert_eq!(s.assign().len(), 1);
        assert_eq!(s.slots_in_use("x86"), 1);
        assert!(s.assign().is_empty());
        s.finished(a);
        assert_eq!(
            s.assign(),
            vec![Assignment {
                job: b,
                worker: "x86".into()
            }]
        );
    }

    #[test]
    fn a_lost_worker_hands_back_its_jobs() {
        let mut s = Scheduler::new();
        s.add_worker(worker("x86", "linux/amd64", false, 2), []);
        let a = JobId::new();
        s.enqueue(a, Platform::linux_amd64(), Instant::now());
        s.assign();
        assert_eq!(s.remove_worker("x86"), vec![a]);
        assert!(!s.has_worker("x86"));
    }

    #[test]
    fn only_healthy_workers_that_are_not_draining_get_jobs() {
        // (worker name, draining, unhealthy, slots, jobs already running) -> who gets one amd64 job.
        type Row<'a> = (&'a [(&'a str, bool, bool, u32, u32)], Option<&'a str>);
        let table: &[Row] = &[
            (&[("a", false, false, 1, 0)], Some("a")),
            (&[("a", true, false, 1, 0)], None),
            (&[("a", false, true, 1, 0)], None),
            (&[("a", true, true, 1, 0)], None),
            // A full healthy worker is no reason to pick an unhealthy one.
            (&[("a", false, false, 1, 1), ("b", false, true, 4, 0)], None),
            (
                &[("a", false, true, 4, 0), ("b", false, false, 1, 0)],
                Some("b"),
            ),
            (
                &[("a", true, false, 4, 0), ("b", false, false, 2, 1)],
                Some("b"),
            ),
            (&[("a", false, true, 4, 0), ("b", true, false, 4, 0)], None),
        ];
        for (i, (workers, expected)) in table.iter().enumerate() {
            let mut s = Scheduler::new();
            let now = Instant::now();
            for (name, draining, unhealthy, slots, busy) in workers.iter() {
                let busy_jobs: Vec<JobId> = (0..*busy).map(|_| JobId::new()).collect();
                s.add_worker(worker(name, "linux/amd64", false, *slots), busy_jobs);
                if *draining {
                    s.drain_worker(name);
                }
                if *unhealthy {
                    s.set_unhealthy(name, Some("docker daemon unreachable".into()));
                }
            }
            s.enqueue(JobId::new(), Platform::linux_amd64(), now);
            let got: Vec<String> = s.assign().into_iter().map(|a| a.worker).collect();
            assert_eq!(
                got,
                expected.iter().map(|w| w.to_string()).collect::<Vec<_>>(),
                "row {i}: {workers:?}"
            );
        }
    }

    #[test]
    fn a_worker_that_refused_is_asked_again_only_after_its_next_heartbeat() {
        let mut s = Scheduler::new();
        let now = Instant::now();
        s.add_worker(worker("x86", "linux/amd64", false, 2), []);
        s.hold("x86");
        s.enqueue(JobId::new(), Platform::linux_amd64(), now);
        assert!(s.assign().is_empty());
        assert!(
            s.starved(now + Duration::from_secs(600), Duration::from_secs(1))
                .is_empty()
        );
        s.release("x86");
        assert_eq!(s.assign().len(), 1);
    }

    #[test]
    fn a_worker_that_recovers_gets_the_waiting_job() {
        let mut s = Scheduler::new();
        let t0 = Instant::now();
        let wait = Duration::from_secs(60);
        s.add_worker(worker("x86", "linux/amd64", false, 1), []);
        s.set_unhealthy("x86", Some("ping failed".into()));
        assert_eq!(
            s.status("x86").unwrap().unhealthy.as_deref(),
            Some("ping failed")
        );
        let job = JobId::new();
        s.enqueue(job, Platform::linux_amd64(), t0);
        assert!(s.assign().is_empty());
        // Unhealthy for the whole wait: the job starves, as with no worker at all.
        assert_eq!(s.starved(t0 + wait, wait).len(), 1);
        s.set_unhealthy("x86", None);
        assert!(s.status("x86").unwrap().ready());
        assert!(s.starved(t0 + wait, wait).is_empty());
        assert_eq!(
            s.assign(),
            vec![Assignment {
                job,
                worker: "x86".into()
            }]
        );
    }

    #[test]
    fn a_draining_worker_gets_no_new_job() {
        let mut s = Scheduler::new();
        s.add_worker(worker("x86", "linux/amd64", false, 2), []);
        s.drain_worker("x86");
        s.enqueue(JobId::new(), Platform::linux_amd64(), Instant::now());
        assert!(s.assign().is_empty());
    }

    #[test]
    fn a_job_starves_only_after_the_wait_and_only_without_a_capable_worker() {
        let mut s = Scheduler::new();
        let t0 = Instant::now();
        let wait = Duration::from_secs(60);
        let arm_job = JobId::new();
        s.enqueue(arm_job, Platform::linux_arm64(), t0);
        assert!(s.starved(t0 + Duration::from_secs(59), wait).is_empty());
        assert_eq!(
            s.starved(t0 + wait, wait),
            vec![(arm_job, Platform::linux_arm64())]
        );
        // A capable but busy worker means the job is waiting for a slot, not starving.
        s.add_worker(worker("arm", "linux/arm64", false, 1), []);
        let other = JobId::new();
        s.enqueue(other, Platform::linux_arm64(), t0);
        s.assign();
        assert!(s.starved(t0 + wait * 2, wait).is_empty());
    }

    #[test]
    fn restated_running_jobs_occupy_slots_and_leave_the_queue() {
        let mut s = Scheduler::new();
        let a = JobId::new();
        s.enqueue(a, Platform::linux_amd64(), Instant::now());
        s.add_worker(worker("x86", "linux/amd64", false, 1), [a]);
        assert_eq!(s.queued(), 0);
        assert_eq!(s.slots_in_use("x86"), 1);
    }
}
