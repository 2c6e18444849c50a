//! The scheduler as it was before it was indexed (main at 834e521): every pick rescans the queue
//! against the free workers. Kept verbatim as the model the indexed [`super::Scheduler`] must agree
//! with: the property test in `equivalence` runs random scenarios through both and compares every
//! decision, and the scheduler benchmark (`cargo bench -p manifold-tests --bench scheduler`) sets
//! the two side by side. Not for production: compiled only for tests and with the
//! `reference-scheduler` feature.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use manifold_proto::{JobId, Platform};

use super::{
    Assignment, DEFAULT_TEAM, JobMeta, Preemption, QueuedJob, Team, WorkerCaps, WorkerStatus,
};

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
        // Pausing and lending came after this scheduler: its workers always lend.
        self.workers.get(name).map(|w| WorkerStatus {
            draining: w.draining,
            unhealthy: w.unhealthy.clone(),
            paused: false,
            lending: true,
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
                    cause: super::PreemptCause::OwnerWaited,
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

    /// Whether a job of `team` may run on `w`: a team that does not borrow uses only workers
    /// nobody owns and its own.
    fn may_use(&self, team: &str, w: &WorkerState) -> bool {
        self.teams.get(team).is_none_or(|t| t.borrows)
            || w.owner.as_deref().is_none_or(|o| o == team)
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
                || !free
                    .iter()
                    .any(|w| w.caps.platforms.contains(&q.platform) && self.may_use(q.team(), w))
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
            .filter(|w| w.caps.platforms.contains(&job.platform) && self.may_use(team, w))
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
