//! Which queued job runs on which worker: pure decision logic, no I/O, time passed in.
//!
//! The scheduler knows only what it needs to decide: each attached worker's platforms, whether it
//! emulates them, its slots and the jobs occupying them; and the queue of jobs waiting for a slot of
//! their platform. The farm feeds it events (a worker attached or left, a job queued, a job finished)
//! and asks it for assignments; it never fails and never blocks.
//!
//! Policy:
//! - a job goes only to a worker that builds its platform, with a free slot, that is not draining,
//!   not held, and whose Docker daemon answers (a worker reports itself unhealthy when it does not);
//! - owner first: a free slot of a worker owned by a team goes to that team's queued job when it has
//!   one the worker can run (and the team is below its cap);
//! - otherwise any team may borrow the slot; between teams with a runnable job the one with the
//!   lowest `running / weight` goes next (ties: the team whose oldest queued job is older); a team at
//!   its `max_running` cap is skipped;
//! - within a team the highest priority goes first, then the oldest (first enqueued);
//! - the job's worker: native before emulated, then the least loaded, then the job's cache affinity,
//!   then one nobody else owns, then by name (so the choice is deterministic);
//! - optionally (off by default), an owner whose job has waited at least the grace period while its
//!   worker is full of borrowed jobs reclaims a slot: [`Scheduler::preemptions`] names the borrowed
//!   job to cancel and [`Scheduler::preempt`] puts it back in the queue, in its old place;
//! - a queued job whose platform no attached worker can build (none attached, or only draining or
//!   unhealthy ones) for longer than the configured wait is reported as starved, so the farm can
//!   fail it with a message naming the platform.
//!
//! With no team configured, no owner and no priority, every job is in the team [`DEFAULT_TEAM`] and
//! the policy is the original one: oldest first, native before emulated, least loaded, by name.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use manifold_proto::{JobId, Platform};

#[cfg(test)]
mod fair_share_simulation;

/// The team of a job that names none; weight 1 and no cap unless configured otherwise.
pub const DEFAULT_TEAM: &str = "default";

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

/// A team sharing the farm: its weight in the fair share and an optional cap on its running jobs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Team {
    /// Unique team name, as jobs and worker owners name it.
    pub name: String,
    /// Relative share of contended slots (default 1; 0 counts as 1).
    pub weight: u32,
    /// Most jobs of the team running at once, on any worker (default: no cap).
    pub max_running: Option<u32>,
}

impl Team {
    /// A team of weight 1 without cap.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            weight: 1,
            max_running: None,
        }
    }

    /// Sets the weight.
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Sets the cap on running jobs.
    pub fn max_running(mut self, cap: u32) -> Self {
        self.max_running = Some(cap);
        self
    }
}

/// What a queued job carries for the team policy; the default is the plain job of [`Scheduler::enqueue`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobMeta {
    /// Its team; `None` is [`DEFAULT_TEAM`].
    pub team: Option<String>,
    /// Higher first within its team (default 0); it does not reorder teams.
    pub priority: i32,
    /// Name of the worker with a warm cache for it (e.g. the one that last built this build's
    /// context and platform): preferred among otherwise equal workers.
    pub affinity: Option<String>,
}

impl JobMeta {
    fn team(&self) -> &str {
        self.team.as_deref().unwrap_or(DEFAULT_TEAM)
    }
}

/// A decision: cancel the borrowed `job` on `worker` so that its owner `team` gets the slot back.
/// The farm cancels it without spending an attempt and calls [`Scheduler::preempt`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Preemption {
    /// The borrowed job to cancel.
    pub job: JobId,
    /// The worker it runs on.
    pub worker: String,
    /// The owner team reclaiming the slot.
    pub team: String,
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
    /// The team whose jobs go first on it.
    owner: Option<String>,
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
    /// Enqueue order: "oldest first" means lowest `seq` first, as the queue always was.
    seq: u64,
    meta: JobMeta,
}

impl Queued {
    fn team(&self) -> &str {
        self.meta.team()
    }

    /// Order within a team: highest priority, then oldest.
    fn rank(&self) -> (Reverse<i32>, u64) {
        (Reverse(self.meta.priority), self.seq)
    }
}

impl WorkerState {
    fn takes_jobs(&self) -> bool {
        !self.draining && self.unhealthy.is_none()
    }

    fn has_free_slot(&self) -> bool {
        self.takes_jobs() && !self.held && (self.running.len() as u32) < self.caps.slots
    }

    /// Running jobs relative to its size, compared without floats.
    fn load(&self) -> u64 {
        (self.running.len() as u64 * 1000) / u64::from(self.caps.slots.max(1))
    }
}

/// A queued job as `manifold queue` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedJob {
    /// The job.
    pub job: JobId,
    /// Its platform.
    pub platform: Platform,
    /// Its team.
    pub team: String,
    /// Its priority within the team.
    pub priority: i32,
    /// When it was queued (first queued, for a preempted job).
    pub since: Instant,
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
    /// Waiting jobs by enqueue order.
    queue: BTreeMap<u64, Queued>,
    next_seq: u64,
    /// What was queued of the running jobs (team, priority, place in the queue).
    running: HashMap<JobId, Queued>,
    teams: BTreeMap<String, Team>,
    /// Preemption's grace period; `None` (the default) disables preemption.
    preemption_grace: Option<Duration>,
}

impl Scheduler {
    /// An empty scheduler: no workers, nothing queued.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a team. Jobs of a team never set here count with weight 1 and no cap.
    pub fn set_team(&mut self, team: Team) {
        self.teams.insert(team.name.clone(), team);
    }

    /// Enables preemption with this grace period (`None`, the default, disables it).
    pub fn set_preemption_grace(&mut self, grace: Option<Duration>) {
        self.preemption_grace = grace;
    }

    /// Sets the team owning the worker (its jobs go first there); `None` makes it common capacity.
    /// A worker attaches without owner.
    pub fn set_worker_owner(&mut self, name: &str, owner: Option<String>) {
        if let Some(w) = self.workers.get_mut(name) {
            w.owner = owner;
        }
    }

    /// A worker attached. `running` are jobs it restated as already running (after a reconnect).
    pub fn add_worker(&mut self, caps: WorkerCaps, running: impl IntoIterator<Item = JobId>) {
        let running: BTreeSet<JobId> = running.into_iter().collect();
        for job in &running {
            let seq = self.queue.values().find(|q| q.job == *job).map(|q| q.seq);
            if let Some(q) = seq.and_then(|seq| self.queue.remove(&seq)) {
                self.running.insert(*job, q);
            }
        }
        self.workers.insert(
            caps.name.clone(),
            WorkerState {
                caps,
                running,
                draining: false,
                unhealthy: None,
                held: false,
                owner: None,
            },
        );
    }

    /// A worker left; returns the jobs it was running, which the caller requeues or fails.
    pub fn remove_worker(&mut self, name: &str) -> Vec<JobId> {
        let jobs: Vec<JobId> = self
            .workers
            .remove(name)
            .map(|w| w.running.into_iter().collect())
            .unwrap_or_default();
        for job in &jobs {
            self.running.remove(job);
        }
        jobs
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

    /// Running jobs of the team, on any worker (restated jobs never queued here count as
    /// [`DEFAULT_TEAM`]'s).
    pub fn running_of_team(&self, team: &str) -> u32 {
        self.running_by_team().get(team).copied().unwrap_or(0)
    }

    /// Queues a job of [`DEFAULT_TEAM`] with priority 0; it waits until a worker of its platform
    /// has a free slot.
    pub fn enqueue(&mut self, job: JobId, platform: Platform, now: Instant) {
        self.enqueue_job(job, platform, JobMeta::default(), now);
    }

    /// Queues a job with its team, priority and cache affinity. The scheduler forgets them when the
    /// job finishes, so a requeue passes them again. A job already queued keeps its place.
    pub fn enqueue_job(&mut self, job: JobId, platform: Platform, meta: JobMeta, now: Instant) {
        if self.queue.values().any(|q| q.job == job) {
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queue.insert(
            seq,
            Queued {
                job,
                platform,
                since: now,
                seq,
                meta,
            },
        );
    }

    /// A job left the farm (finished, failed, cancelled): frees its slot or its queue place.
    pub fn finished(&mut self, job: JobId) {
        self.queue.retain(|_, q| q.job != job);
        self.running.remove(&job);
        for w in self.workers.values_mut() {
            w.running.remove(&job);
        }
    }

    /// Number of jobs waiting for a slot.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// The waiting jobs, oldest first.
    pub fn queued_jobs(&self) -> Vec<QueuedJob> {
        self.queue
            .values()
            .map(|q| QueuedJob {
                job: q.job,
                platform: q.platform.clone(),
                team: q.team().to_owned(),
                priority: q.meta.priority,
                since: q.since,
            })
            .collect()
    }

    /// The configured teams.
    pub fn teams(&self) -> Vec<Team> {
        self.teams.values().cloned().collect()
    }

    /// Assigns as many queued jobs as free slots allow, following the policy of the module docs,
    /// and records them as running.
    pub fn assign(&mut self) -> Vec<Assignment> {
        let mut by_team = self.running_by_team();
        let mut out = Vec::new();
        while let Some((seq, worker)) = self
            .owner_pick(&by_team)
            .or_else(|| self.shared_pick(&by_team))
        {
            let q = self.queue.remove(&seq).expect("picks come from the queue");
            *by_team.entry(q.team().to_owned()).or_default() += 1;
            self.workers
                .get_mut(&worker)
                .expect("picks name attached workers")
                .running
                .insert(q.job);
            out.push(Assignment { job: q.job, worker });
            self.running.insert(q.job, q);
        }
        out
    }

    /// Borrowed jobs to cancel so that owners get their workers back: for each full worker with an
    /// owner, one borrowed job per owner job that has waited at least the grace period for a
    /// worker of that owner (lowest priority, then most recently queued, borrowed job first). Empty
    /// when preemption is disabled. Pure: nothing changes until [`Scheduler::preempt`].
    pub fn preemptions(&self, now: Instant) -> Vec<Preemption> {
        let Some(grace) = self.preemption_grace else {
            return Vec::new();
        };
        let mut by_team = self.running_by_team();
        let mut reclaimed: BTreeSet<u64> = BTreeSet::new();
        let mut out = Vec::new();
        for w in self.workers.values() {
            let Some(owner) = w.owner.as_deref() else {
                continue;
            };
            // A worker with a free slot needs no preemption: `assign` gives it to the owner.
            if !w.takes_jobs() || w.held || (w.running.len() as u32) < w.caps.slots {
                continue;
            }
            let mut borrowed: Vec<(i32, u64, JobId)> = w
                .running
                .iter()
                .map(|job| match self.running.get(job) {
                    Some(q) => (q.team(), q.meta.priority, q.seq, *job),
                    None => (DEFAULT_TEAM, 0, u64::MAX, *job),
                })
                .filter(|(team, ..)| *team != owner)
                .map(|(_, priority, seq, job)| (priority, seq, job))
                .collect();
            borrowed.sort_by_key(|&(priority, seq, _)| (priority, Reverse(seq)));
            for (_, _, job) in borrowed {
                if self.at_cap(owner, &by_team) {
                    break;
                }
                let waiting = self
                    .queue
                    .values()
                    .filter(|q| q.team() == owner && !reclaimed.contains(&q.seq))
                    .filter(|q| w.caps.platforms.contains(&q.platform))
                    .filter(|q| now.saturating_duration_since(q.since) >= grace)
                    .min_by_key(|q| q.rank());
                let Some(waiting) = waiting else {
                    break;
                };
                reclaimed.insert(waiting.seq);
                *by_team.entry(owner.to_owned()).or_default() += 1;
                out.push(Preemption {
                    job,
                    worker: w.caps.name.clone(),
                    team: owner.to_owned(),
                });
            }
        }
        out
    }

    /// The farm cancelled this running job to honour a [`Preemption`]: it frees its slot and goes
    /// back to the queue in its old place, with its team and priority. Returns false when the job
    /// was not running.
    pub fn preempt(&mut self, job: JobId) -> bool {
        let Some(w) = self.workers.values_mut().find(|w| w.running.contains(&job)) else {
            return false;
        };
        w.running.remove(&job);
        if let Some(q) = self.running.remove(&job) {
            self.queue.insert(q.seq, q);
        }
        true
    }

    /// Queued jobs that have waited at least `wait` while no attached worker can build their
    /// platform (draining and unhealthy workers cannot).
    pub fn starved(&self, now: Instant, wait: Duration) -> Vec<(JobId, Platform)> {
        self.queue
            .values()
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

    fn running_by_team(&self) -> BTreeMap<String, u32> {
        let mut by_team: BTreeMap<String, u32> = BTreeMap::new();
        for job in self.workers.values().flat_map(|w| &w.running) {
            let team = self.running.get(job).map_or(DEFAULT_TEAM, Queued::team);
            *by_team.entry(team.to_owned()).or_default() += 1;
        }
        by_team
    }

    fn weight(&self, team: &str) -> u64 {
        self.teams
            .get(team)
            .map_or(1, |t| u64::from(t.weight.max(1)))
    }

    fn at_cap(&self, team: &str, by_team: &BTreeMap<String, u32>) -> bool {
        let running = by_team.get(team).copied().unwrap_or(0);
        self.teams
            .get(team)
            .and_then(|t| t.max_running)
            .is_some_and(|cap| running >= cap)
    }

    /// Owner first: a free slot of an owned worker and the owner's best job it can run.
    fn owner_pick(&self, by_team: &BTreeMap<String, u32>) -> Option<(u64, String)> {
        let mut owned: Vec<&WorkerState> = self
            .workers
            .values()
            .filter(|w| w.owner.is_some() && w.has_free_slot())
            .collect();
        owned.sort_by_key(|w| (w.caps.emulated, w.load()));
        owned.into_iter().find_map(|w| {
            let owner = w.owner.as_deref()?;
            if self.at_cap(owner, by_team) {
                return None;
            }
            self.queue
                .values()
                .filter(|q| q.team() == owner && w.caps.platforms.contains(&q.platform))
                .min_by_key(|q| q.rank())
                .map(|q| (q.seq, w.caps.name.clone()))
        })
    }

    /// Fair share: the team with the lowest running/weight among those with a runnable job, its
    /// best job, and the best free worker for it.
    fn shared_pick(&self, by_team: &BTreeMap<String, u32>) -> Option<(u64, String)> {
        let free: Vec<&WorkerState> = self
            .workers
            .values()
            .filter(|w| w.has_free_slot())
            .collect();
        if free.is_empty() {
            return None;
        }
        // Per team: its best runnable job and the (since, seq) of its oldest runnable job.
        let mut candidates: BTreeMap<&str, (&Queued, (Instant, u64))> = BTreeMap::new();
        for q in self.queue.values() {
            if self.at_cap(q.team(), by_team)
                || !free.iter().any(|w| w.caps.platforms.contains(&q.platform))
            {
                continue;
            }
            let age = (q.since, q.seq);
            candidates
                .entry(q.team())
                .and_modify(|(best, oldest)| {
                    if q.rank() < best.rank() {
                        *best = q;
                    }
                    *oldest = (*oldest).min(age);
                })
                .or_insert((q, age));
        }
        let share = |team: &str| {
            (
                u64::from(by_team.get(team).copied().unwrap_or(0)),
                self.weight(team),
            )
        };
        let (_, (job, _)) = candidates
            .into_iter()
            .min_by(|(ta, (_, oa)), (tb, (_, ob))| {
                let ((ra, wa), (rb, wb)) = (share(ta), share(tb));
                // ra/wa against rb/wb, cross-multiplied to stay in integers.
                (ra * wb).cmp(&(rb * wa)).then_with(|| oa.cmp(ob))
            })?;
        let team = job.team();
        let worker = free
            .into_iter()
            .filter(|w| w.caps.platforms.contains(&job.platform))
            .min_by_key(|w| {
                (
                    w.caps.emulated,
                    w.load(),
                    job.meta.affinity.as_deref() != Some(w.caps.name.as_str()),
                    w.owner.as_deref().is_some_and(|o| o != team),
                    w.caps.name.clone(),
                )
            })?;
        Some((job.seq, worker.caps.name.clone()))
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

    /// A worker of the team tables: caps, owner, and jobs of given teams already running on it.
    #[derive(Clone)]
    struct W {
        caps: WorkerCaps,
        owner: Option<&'static str>,
        busy: Vec<&'static str>,
    }

    fn w(name: &str, platform: &str) -> W {
        W {
            caps: worker(name, platform, false, 1),
            owner: None,
            busy: Vec::new(),
        }
    }

    impl W {
        fn emulated(mut self) -> Self {
            self.caps.emulated = true;
            self
        }
        fn slots(mut self, slots: u32) -> Self {
            self.caps.slots = slots;
            self
        }
        fn owner(mut self, team: &'static str) -> Self {
            self.owner = Some(team);
            self
        }
        /// A job of `team` already runs on it.
        fn busy(mut self, team: &'static str) -> Self {
            self.busy.push(team);
            self
        }
    }

    /// A queued job of the team tables, named by `label` in the expectations.
    struct J {
        label: &'static str,
        platform: &'static str,
        meta: JobMeta,
    }

    /// A job of `team` (`-` for none) for linux/amd64.
    fn j(label: &'static str, team: &str) -> J {
        J {
            label,
            platform: "linux/amd64",
            meta: JobMeta {
                team: (team != "-").then(|| team.to_owned()),
                ..JobMeta::default()
            },
        }
    }

    impl J {
        fn platform(mut self, platform: &'static str) -> Self {
            self.platform = platform;
            self
        }
        fn priority(mut self, priority: i32) -> Self {
            self.meta.priority = priority;
            self
        }
        fn affinity(mut self, worker: &str) -> Self {
            self.meta.affinity = Some(worker.to_owned());
            self
        }
    }

    /// Sets up teams and workers (with their busy jobs), queues `jobs` one millisecond apart in
    /// order, runs one assignment round and compares "label->worker" in assignment order.
    #[track_caller]
    fn check_teams(teams: &[Team], workers: &[W], jobs: &[J], expected: &[&str]) {
        let (s, labels, _) = setup(teams, workers, jobs);
        let mut s = s;
        let got: Vec<String> = s
            .assign()
            .into_iter()
            .map(|a| format!("{}->{}", labels[&a.job], a.worker))
            .collect();
        assert_eq!(got, expected);
    }

    fn setup(
        teams: &[Team],
        workers: &[W],
        jobs: &[J],
    ) -> (Scheduler, HashMap<JobId, String>, Instant) {
        let mut s = Scheduler::new();
        let t0 = Instant::now();
        let mut labels = HashMap::new();
        for t in teams {
            s.set_team(t.clone());
        }
        for wk in workers {
            let busy: Vec<JobId> = wk
                .busy
                .iter()
                .enumerate()
                .map(|(i, team)| {
                    let id = JobId::new();
                    let meta = JobMeta {
                        team: Some(team.to_string()),
                        ..JobMeta::default()
                    };
                    s.enqueue_job(id, wk.caps.platforms[0].clone(), meta, t0);
                    labels.insert(id, format!("{}#{i}", wk.caps.name));
                    id
                })
                .collect();
            s.add_worker(wk.caps.clone(), busy);
            s.set_worker_owner(&wk.caps.name, wk.owner.map(str::to_owned));
        }
        for (i, job) in jobs.iter().enumerate() {
            let id = JobId::new();
            labels.insert(id, job.label.to_owned());
            s.enqueue_job(
                id,
                job.platform.parse().unwrap(),
                job.meta.clone(),
                t0 + Duration::from_millis(i as u64),
            );
        }
        (s, labels, t0)
    }

    #[test]
    fn team_assignment_table() {
        let a = || Team::new("a");
        let b = || Team::new("b");

        // Owner first: the owner's job takes its worker although another team's job is older.
        check_teams(
            &[a(), b()],
            &[w("a-box", "linux/amd64").owner("a")],
            &[j("b1", "b"), j("a1", "a")],
            &["a1->a-box"],
        );
        // Borrowing when idle: with no job of the owner, any team uses the worker.
        check_teams(
            &[a(), b()],
            &[w("a-box", "linux/amd64").owner("a")],
            &[j("b1", "b")],
            &["b1->a-box"],
        );
        // A borrower prefers common capacity when otherwise equal, keeping the owned worker free.
        check_teams(
            &[a(), b()],
            &[
                w("a-box", "linux/amd64").owner("a"),
                w("pool", "linux/amd64"),
            ],
            &[j("b1", "b")],
            &["b1->pool"],
        );
        // The owner's job only goes first for a platform its worker builds.
        check_teams(
            &[a(), b()],
            &[w("a-box", "linux/amd64").owner("a")],
            &[j("b1", "b"), j("a1", "a").platform("linux/arm64")],
            &["b1->a-box"],
        );
        // Cap respected: team a may run one job; b gets the other slot, a2 waits.
        check_teams(
            &[a().max_running(1), b()],
            &[w("x86", "linux/amd64").slots(3)],
            &[j("a1", "a"), j("a2", "a"), j("b1", "b")],
            &["a1->x86", "b1->x86"],
        );
        // The cap holds on the owner's own worker too: at its cap, the owner lends it.
        check_teams(
            &[a().max_running(1), b()],
            &[w("a-box", "linux/amd64").owner("a").slots(2).busy("a")],
            &[j("a1", "a"), j("b1", "b")],
            &["b1->a-box"],
        );
        // Fair share: the team running least goes next, whatever the age of the other's jobs.
        check_teams(
            &[a(), b()],
            &[w("x86", "linux/amd64").slots(3).busy("a").busy("a")],
            &[j("a1", "a"), j("b1", "b")],
            &["b1->x86"],
        );
        // Equal shares: the team whose oldest queued job is older goes next.
        check_teams(
            &[a(), b()],
            &[w("x86", "linux/amd64").slots(3)],
            &[j("b1", "b"), j("a1", "a"), j("a2", "a"), j("b2", "b")],
            &["b1->x86", "a1->x86", "a2->x86"],
        );
        // Weights: b (weight 2) gets two slots for a's one.
        check_teams(
            &[a(), b().weight(2)],
            &[w("x86", "linux/amd64").slots(3)],
            &[
                j("a1", "a"),
                j("a2", "a"),
                j("a3", "a"),
                j("b1", "b"),
                j("b2", "b"),
            ],
            &["a1->x86", "b1->x86", "b2->x86"],
        );
        // A job without team is in the team "default", which shares like any other.
        check_teams(
            &[a()],
            &[w("x86", "linux/amd64").slots(2).busy("a")],
            &[j("a1", "a"), j("d1", "-")],
            &["d1->x86"],
        );
        // Priority within a team: the higher one goes first, then the oldest.
        check_teams(
            &[a()],
            &[w("x86", "linux/amd64").slots(2)],
            &[
                j("a1", "a"),
                j("a2", "a").priority(5),
                j("a3", "a").priority(5),
            ],
            &["a2->x86", "a3->x86"],
        );
        // Priority does not cross teams: b's older job wins the tie against a's urgent one.
        check_teams(
            &[a(), b()],
            &[w("x86", "linux/amd64")],
            &[j("b1", "b"), j("a1", "a").priority(100)],
            &["b1->x86"],
        );
        // Cache affinity breaks the tie between equal workers...
        check_teams(
            &[a()],
            &[w("x1", "linux/amd64"), w("x2", "linux/amd64")],
            &[j("a1", "a").affinity("x2")],
            &["a1->x2"],
        );
        // ...but does not beat native over emulated...
        check_teams(
            &[a()],
            &[
                w("arm-emu", "linux/arm64").emulated(),
                w("arm", "linux/arm64"),
            ],
            &[j("a1", "a").platform("linux/arm64").affinity("arm-emu")],
            &["a1->arm"],
        );
        // ...nor the least loaded.
        check_teams(
            &[a()],
            &[
                w("x1", "linux/amd64").slots(2),
                w("x2", "linux/amd64").slots(2).busy("a"),
            ],
            &[j("a1", "a").affinity("x2")],
            &["a1->x1"],
        );
        // Native over emulated holds for teams, even when the emulated one is the owner's.
        check_teams(
            &[a(), b()],
            &[
                w("arm-emu", "linux/arm64").emulated().slots(4),
                w("arm", "linux/arm64"),
            ],
            &[
                j("b1", "b").platform("linux/arm64"),
                j("b2", "b").platform("linux/arm64"),
            ],
            &["b1->arm", "b2->arm-emu"],
        );
    }

    /// One worker owned by team a, full with a job of team b; a's job was queued at t0.
    /// Returns "job@worker" preemptions at `t0 + waited` with the given grace.
    #[track_caller]
    fn check_preemption(
        grace: Option<Duration>,
        a_cap: Option<u32>,
        waited: Duration,
        expected: &[&str],
    ) {
        let mut a = Team::new("a");
        a.max_running = a_cap;
        let (mut s, labels, t0) = setup(
            &[a, Team::new("b")],
            &[w("a-box", "linux/amd64").owner("a").busy("b")],
            &[j("a1", "a")],
        );
        s.set_preemption_grace(grace);
        assert!(s.assign().is_empty(), "the owned worker is full");
        let got: Vec<String> = s
            .preemptions(t0 + waited)
            .into_iter()
            .map(|p| {
                assert_eq!(p.team, "a");
                format!("{}@{}", labels[&p.job], p.worker)
            })
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn preemption_table() {
        let grace = Duration::from_secs(300);
        // Disabled (the default): never.
        check_preemption(None, None, grace * 10, &[]);
        // Before the grace period: not yet.
        check_preemption(Some(grace), None, grace - Duration::from_secs(1), &[]);
        // After it: the borrowed job is named.
        check_preemption(Some(grace), None, grace, &["a-box#0@a-box"]);
        // An owner at its cap would not get the slot: no preemption.
        check_preemption(Some(grace), Some(0), grace, &[]);
    }

    #[test]
    fn a_preempted_job_returns_to_its_place_and_the_owner_gets_the_worker() {
        let (mut s, labels, t0) = setup(
            &[Team::new("a"), Team::new("b")],
            &[
                w("a-box", "linux/amd64").owner("a").busy("b"),
                w("pool", "linux/amd64").busy("b"),
            ],
            &[j("a1", "a")],
        );
        s.set_preemption_grace(Some(Duration::from_secs(60)));
        let preemptions = s.preemptions(t0 + Duration::from_secs(60));
        assert_eq!(preemptions.len(), 1);
        let p = &preemptions[0];
        assert_eq!(labels[&p.job], "a-box#0");
        assert!(s.preempt(p.job));
        assert!(!s.preempt(p.job), "no longer running");
        assert_eq!(s.queued(), 2);
        let got: Vec<String> = s
            .assign()
            .into_iter()
            .map(|a| format!("{}->{}", labels[&a.job], a.worker))
            .collect();
        assert_eq!(got, ["a1->a-box"]);
        // Nothing left to reclaim: the owner runs on its worker.
        assert!(s.preemptions(t0 + Duration::from_secs(600)).is_empty());
        assert_eq!(s.running_of_team("a"), 1);
        assert_eq!(s.running_of_team("b"), 1);
        // The preempted job kept its team: it takes the next free slot.
        s.finished(
            labels
                .iter()
                .find(|(_, l)| *l == "pool#0")
                .map(|(id, _)| *id)
                .unwrap(),
        );
        let got: Vec<String> = s
            .assign()
            .into_iter()
            .map(|a| format!("{}->{}", labels[&a.job], a.worker))
            .collect();
        assert_eq!(got, ["a-box#0->pool"]);
        assert_eq!(s.running_of_team("b"), 1);
    }
}
