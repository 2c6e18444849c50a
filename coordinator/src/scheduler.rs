//! Which queued job runs on which worker: pure decision logic, no I/O, time passed in.
//!
//! The scheduler knows only what it needs to decide: each attached worker's platforms, whether it
//! emulates them, its slots and the jobs occupying them; and the queue of jobs waiting for a slot of
//! their platform. The farm feeds it events (a worker attached or left, a job queued, a job finished)
//! and asks it for assignments; it never fails and never blocks.
//!
//! Policy:
//! - a job goes only to a worker that builds its platform, with a free slot, that is not draining,
//!   not paused, not held, and whose Docker daemon answers (a worker reports itself unhealthy when
//!   it does not); a worker that does not lend itself takes only its owner team's jobs;
//! - owner first: a free slot of a worker owned by a team goes to that team's queued job when it has
//!   one the worker can run (and the team is below its cap);
//! - otherwise any team may borrow the slot; between teams with a runnable job the one with the
//!   lowest `running / weight` goes next (ties: the team whose oldest queued job is older); a team at
//!   its `max_running` cap is skipped; a team that does not borrow (`Team::borrows` false) runs
//!   only on workers nobody owns and on its own;
//! - within a team the highest priority goes first, then the oldest (first enqueued);
//! - the job's worker: native before emulated, then the least loaded, then the job's cache affinity,
//!   then one nobody else owns, then by name (so the choice is deterministic);
//! - optionally (off by default), an owner whose job has waited at least the grace period while its
//!   worker is full of borrowed jobs reclaims a slot: [`Scheduler::preemptions`] names the borrowed
//!   job to cancel and [`Scheduler::preempt`] puts it back in the queue, in its old place;
//! - under the same grace period, a worker that stops lending (its owner took the machine back)
//!   keeps borrowed jobs that long at most: those still running then are preempted the same way,
//!   whether or not its owner has a job waiting;
//! - a queued job whose platform no attached worker can build (none attached, or only draining or
//!   unhealthy ones) for longer than the configured wait is reported as starved, so the farm can
//!   fail it with a message naming the platform.
//!
//! With no team configured, no owner and no priority, every job is in the team [`DEFAULT_TEAM`] and
//! the policy is the original one: oldest first, native before emulated, least loaded, by name.
//!
//! The state is indexed so that no event costs work in proportion to the queue or to the
//! workers: queues per team and platform ordered by rank and by age, free workers per platform
//! in preference order, running jobs counted per team as they change. A pick looks at each team
//! with queued jobs and each platform it waits for. The scheduler it replaced, which rescanned
//! the queue on every pick, is kept as `reference` (tests and the `reference-scheduler` feature):
//! a property test runs random scenarios through both and compares every decision.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::time::{Duration, Instant};

use manifold_proto::{JobId, Platform};

#[cfg(test)]
mod equivalence;
#[cfg(test)]
mod fair_share_simulation;
#[cfg(any(test, feature = "reference-scheduler"))]
pub mod reference;
#[cfg(test)]
mod tests;

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
    /// Whether its jobs may run on workers another team owns (default true; false for a team
    /// whose jobs carry its registry logins, which another team's machine must not see).
    pub borrows: bool,
}

impl Team {
    /// A team of weight 1 without cap.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            weight: 1,
            max_running: None,
            borrows: true,
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

    /// Sets whether its jobs may run on other teams' workers.
    pub fn borrows(mut self, borrows: bool) -> Self {
        self.borrows = borrows;
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
    /// The owner team reclaiming the slot (empty for a worker nobody owns that stopped lending).
    pub team: String,
    /// Why.
    pub cause: PreemptCause,
}

/// Why a borrowed job is preempted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreemptCause {
    /// A job of the worker's owner waited the grace period while the worker was full.
    OwnerWaited,
    /// The worker stopped lending (its owner took it back) at least the grace period ago.
    LendingStopped,
}

/// Whether a worker takes jobs, as `manifold workers` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerStatus {
    /// Draining: no new job, running ones finish.
    pub draining: bool,
    /// Why its daemon cannot build, when it cannot.
    pub unhealthy: Option<String>,
    /// Paused by its owner: no new job, running ones continue.
    pub paused: bool,
    /// Whether other teams than its owner may use it.
    pub lending: bool,
}

impl WorkerStatus {
    /// Neither draining, paused nor unhealthy.
    pub fn ready(&self) -> bool {
        !self.draining && !self.paused && self.unhealthy.is_none()
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

/// Order within a team: highest priority first, then first enqueued.
type Rank = (Reverse<i32>, u64);
/// Age: when queued, then enqueue order (`seq` is unique, so no two ages are equal).
type Age = (Instant, u64);
/// A free worker's place among those of a platform: native first, least loaded, then by name.
type FreeKey = (bool, u64, String);

#[derive(Debug)]
struct WorkerState {
    caps: WorkerCaps,
    /// `caps.platforms` without repeats: the indexes it is filed under.
    platforms: BTreeSet<Platform>,
    running: BTreeSet<JobId>,
    /// Set while the worker drains: it keeps its jobs but takes no new one.
    draining: bool,
    /// Why its Docker daemon cannot build right now; it takes no job while set.
    unhealthy: Option<String>,
    /// It refused an assignment: no new one until it heartbeats again (see [`Scheduler::hold`]).
    held: bool,
    /// The team whose jobs go first on it.
    owner: Option<String>,
    /// Paused by its owner: it keeps its jobs but takes no new one (see [`Scheduler::set_paused`]).
    paused: bool,
    /// Whether teams other than its owner may use it (see [`Scheduler::set_lending`]).
    lending: bool,
    /// Since when it does not lend, while it does not.
    not_lending_since: Option<Instant>,
}

impl WorkerState {
    fn takes_jobs(&self) -> bool {
        !self.draining && self.unhealthy.is_none() && !self.paused
    }

    /// Whether a job of `team` may run here: the owner's always, others' while it lends.
    fn lends_to(&self, team: &str) -> bool {
        self.lending || self.owner.as_deref() == Some(team)
    }

    fn has_free_slot(&self) -> bool {
        self.takes_jobs() && !self.held && (self.running.len() as u32) < self.caps.slots
    }

    /// An owned worker that takes jobs but has no free slot: where preemption may reclaim one.
    fn full_and_owned(&self) -> bool {
        self.owner.is_some()
            && self.takes_jobs()
            && !self.held
            && (self.running.len() as u32) >= self.caps.slots
    }

    /// Running jobs relative to its size, compared without floats.
    fn load(&self) -> u64 {
        (self.running.len() as u64 * 1000) / u64::from(self.caps.slots.max(1))
    }

    fn free_key(&self) -> FreeKey {
        (self.caps.emulated, self.load(), self.caps.name.clone())
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

    fn rank(&self) -> Rank {
        (Reverse(self.meta.priority), self.seq)
    }

    fn age(&self) -> Age {
        (self.since, self.seq)
    }
}

/// One team's queued jobs of one platform, in the two orders the policy reads.
#[derive(Debug, Default)]
struct TeamQueue {
    by_rank: BTreeSet<Rank>,
    by_age: BTreeSet<Age>,
}

/// The workers of one platform that have a free slot.
#[derive(Debug, Default)]
struct FreeSlots {
    all: BTreeSet<FreeKey>,
    /// Those without owner.
    unowned: BTreeSet<FreeKey>,
    /// Those with an owner, by owner.
    by_owner: HashMap<String, BTreeSet<FreeKey>>,
}

impl FreeSlots {
    /// Whether one of them is nobody's or `team`'s own.
    fn usable_without_borrowing(&self, team: &str) -> bool {
        !self.unowned.is_empty() || self.by_owner.get(team).is_some_and(|o| !o.is_empty())
    }
}

/// What is derived from the workers' states, kept in step with them by [`WorkerIndex::add`] and
/// [`WorkerIndex::remove`] around every change of a worker.
#[derive(Debug, Default)]
struct WorkerIndex {
    /// Per platform, the workers with a free slot.
    free: BTreeMap<Platform, FreeSlots>,
    /// Workers with a free slot, on any platform: none means no pick needs looking for.
    free_workers: usize,
    /// Per platform, how many workers that take jobs (not draining, healthy) build it.
    capable: BTreeMap<Platform, u32>,
    /// Owned workers that take jobs and are full, by name.
    full_and_owned: BTreeSet<String>,
    /// Workers that do not lend, by name.
    not_lending: BTreeSet<String>,
}

impl WorkerIndex {
    fn add(&mut self, w: &WorkerState) {
        if w.takes_jobs() {
            for p in &w.platforms {
                match self.capable.get_mut(p) {
                    Some(n) => *n += 1,
                    None => {
                        self.capable.insert(p.clone(), 1);
                    }
                }
            }
        }
        if w.has_free_slot() {
            self.free_workers += 1;
            let key = w.free_key();
            for p in &w.platforms {
                if !self.free.contains_key(p) {
                    self.free.insert(p.clone(), FreeSlots::default());
                }
                let slots = self.free.get_mut(p).expect("just inserted");
                // A worker that does not lend is free only for its owner's jobs.
                if w.lending {
                    slots.all.insert(key.clone());
                }
                match &w.owner {
                    None if w.lending => slots.unowned.insert(key.clone()),
                    None => false,
                    Some(owner) => slots
                        .by_owner
                        .entry(owner.clone())
                        .or_default()
                        .insert(key.clone()),
                };
            }
        }
        if w.full_and_owned() {
            self.full_and_owned.insert(w.caps.name.clone());
        }
        if !w.lending {
            self.not_lending.insert(w.caps.name.clone());
        }
    }

    /// Undoes [`WorkerIndex::add`] for a worker in the same state.
    fn remove(&mut self, w: &WorkerState) {
        if w.takes_jobs() {
            for p in &w.platforms {
                if let Some(n) = self.capable.get_mut(p) {
                    *n -= 1;
                }
            }
        }
        if w.has_free_slot() {
            self.free_workers -= 1;
            let key = w.free_key();
            for p in &w.platforms {
                if let Some(slots) = self.free.get_mut(p) {
                    slots.all.remove(&key);
                    match &w.owner {
                        None => slots.unowned.remove(&key),
                        Some(owner) => slots
                            .by_owner
                            .get_mut(owner)
                            .is_some_and(|s| s.remove(&key)),
                    };
                }
            }
        }
        if w.full_and_owned() {
            self.full_and_owned.remove(&w.caps.name);
        }
        if !w.lending {
            self.not_lending.remove(&w.caps.name);
        }
    }

    /// The free workers of `platform`, if any.
    fn free(&self, platform: &Platform) -> Option<&FreeSlots> {
        self.free.get(platform).filter(|s| !s.all.is_empty())
    }
}

/// The scheduler's state. See the module docs for the policy.
///
/// Indexed: queues per team and platform in rank and age order, free workers per platform in
/// preference order, running jobs per team counted as they change. An event costs a few ordered-set
/// operations, and a pick looks at each team with queued jobs (and each platform it waits for),
/// never at each queued job or each worker. It decides exactly as the scheduler it replaced
/// (the `reference` module, kept for the tests and the benchmark), including in states the farm never
/// creates (a job restated by two workers, a worker attached twice).
#[derive(Debug, Default)]
pub struct Scheduler {
    workers: BTreeMap<String, WorkerState>,
    index: WorkerIndex,
    /// Waiting jobs by enqueue order.
    queue: BTreeMap<u64, Queued>,
    /// The queue places of each waiting job (one, except in states the farm never creates).
    queued_places: HashMap<JobId, BTreeSet<u64>>,
    /// Waiting jobs per team (those with any) and platform.
    queues: BTreeMap<String, BTreeMap<Platform, TeamQueue>>,
    /// Waiting jobs per platform by age, for [`Scheduler::starved`].
    ages: BTreeMap<Platform, BTreeSet<Age>>,
    next_seq: u64,
    /// The latest `now` given to an enqueue so far.
    latest_enqueue: Option<Instant>,
    /// Whether enqueue times never went back, so that within a priority queue age order is
    /// enqueue order (preemption's search stops early then).
    enqueue_times_monotonic: bool,
    /// What was queued of the running jobs (team, priority, place in the queue).
    running: HashMap<JobId, Queued>,
    /// The workers each running job occupies (one, except in states the farm never creates).
    placed: HashMap<JobId, BTreeSet<String>>,
    /// Jobs running per team, counting each worker a job occupies; a job with no entry in
    /// `running` (restated without being queued here) counts as [`DEFAULT_TEAM`]'s.
    running_by_team: HashMap<String, u32>,
    teams: BTreeMap<String, Team>,
    /// Preemption's grace period; `None` (the default) disables preemption.
    preemption_grace: Option<Duration>,
}

/// Running counts as one assignment round sees them: each assignment counts one for its job's
/// team, as the reference's round does, even where the recount would differ (a job already on
/// the worker, a job on two workers).
#[derive(Debug, Default)]
struct RoundCounts {
    adjust: HashMap<String, i64>,
}

impl RoundCounts {
    fn get(&self, s: &Scheduler, team: &str) -> u64 {
        let base = i64::from(s.running_of_team(team));
        (base + self.adjust.get(team).copied().unwrap_or(0)).max(0) as u64
    }

    fn add(&mut self, team: &str, delta: i64) {
        if delta != 0 {
            *self.adjust.entry(team.to_owned()).or_default() += delta;
        }
    }
}

/// The first of `set` with this emulation and load, if any.
fn first_of_group(set: &BTreeSet<FreeKey>, emulated: bool, load: u64) -> Option<&FreeKey> {
    set.range((emulated, load, String::new())..)
        .next()
        .filter(|k| (k.0, k.1) == (emulated, load))
}

/// Whether a job queued at `since` has waited `wait` at `now`.
fn waited(now: Instant, since: Instant, wait: Duration) -> bool {
    now.saturating_duration_since(since) >= wait
}

impl Scheduler {
    /// An empty scheduler: no workers, nothing queued.
    pub fn new() -> Self {
        Self {
            enqueue_times_monotonic: true,
            ..Self::default()
        }
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
        self.update_worker(name, |w| w.owner = owner);
    }

    /// A worker attached. `running` are jobs it restated as already running (after a reconnect).
    /// A worker attached under the name of one still attached replaces it (its jobs are dropped).
    pub fn add_worker(&mut self, caps: WorkerCaps, running: impl IntoIterator<Item = JobId>) {
        let running: BTreeSet<JobId> = running.into_iter().collect();
        for job in &running {
            let place = self
                .queued_places
                .get(job)
                .and_then(|places| places.first().copied());
            if let Some(q) = place.and_then(|seq| self.unqueue(seq)) {
                self.set_running_meta(*job, Some(q));
            }
        }
        if let Some(old) = self.detach_worker(&caps.name) {
            self.unplace_all(&old);
        }
        let name = caps.name.clone();
        let w = WorkerState {
            platforms: caps.platforms.iter().cloned().collect(),
            caps,
            running,
            draining: false,
            unhealthy: None,
            held: false,
            owner: None,
            paused: false,
            lending: true,
            not_lending_since: None,
        };
        for job in &w.running {
            self.placed.entry(*job).or_default().insert(name.clone());
            let team = self.team_of_running(*job).to_owned();
            self.count_running(&team, 1);
        }
        self.index.add(&w);
        self.workers.insert(name, w);
    }

    /// A worker left; returns the jobs it was running, which the caller requeues or fails.
    pub fn remove_worker(&mut self, name: &str) -> Vec<JobId> {
        let Some(w) = self.detach_worker(name) else {
            return Vec::new();
        };
        self.unplace_all(&w);
        for job in &w.running {
            self.set_running_meta(*job, None);
        }
        w.running.into_iter().collect()
    }

    /// Stops giving `name` new jobs; its running jobs continue.
    pub fn drain_worker(&mut self, name: &str) {
        self.update_worker(name, |w| w.draining = true);
    }

    /// Pauses (`true`) or resumes the worker, as its owner asked: a paused worker keeps its
    /// running jobs and gets no new one; for waiting jobs it counts as absent, like a draining one.
    pub fn set_paused(&mut self, name: &str, paused: bool) {
        self.update_worker(name, |w| w.paused = paused);
    }

    /// Whether the worker lends itself, as of `now`: while it does not, only its owner team's jobs
    /// go to it (a worker without owner that does not lend gets none). Borrowed jobs already
    /// running stay up to the preemption grace period (see [`Scheduler::preemptions`]); without
    /// one they finish. A worker attaches lending.
    pub fn set_lending(&mut self, name: &str, lending: bool, now: Instant) {
        self.update_worker(name, |w| {
            w.not_lending_since = match (lending, w.not_lending_since) {
                (true, _) => None,
                (false, Some(since)) => Some(since),
                (false, None) => Some(now),
            };
            w.lending = lending;
        });
    }

    /// Records whether the worker's daemon answers: `Some(reason)` when it does not. An unhealthy
    /// worker keeps its running jobs (they fail or finish on their own) and gets no new one.
    pub fn set_unhealthy(&mut self, name: &str, reason: Option<String>) {
        self.update_worker(name, |w| w.unhealthy = reason);
    }

    /// The worker refused an assignment it was thought to have room for: it gets no job until
    /// [`Scheduler::release`] (its next heartbeat), so that a refusal cannot turn into a loop of
    /// assignments and refusals.
    pub fn hold(&mut self, name: &str) {
        self.update_worker(name, |w| w.held = true);
    }

    /// Ends a [`Scheduler::hold`].
    pub fn release(&mut self, name: &str) {
        self.update_worker(name, |w| w.held = false);
    }

    /// Whether the worker takes jobs; `None` when it is not attached.
    pub fn status(&self, name: &str) -> Option<WorkerStatus> {
        self.workers.get(name).map(|w| WorkerStatus {
            draining: w.draining,
            unhealthy: w.unhealthy.clone(),
            paused: w.paused,
            lending: w.lending,
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
        self.running_by_team.get(team).copied().unwrap_or(0)
    }

    /// Queues a job of [`DEFAULT_TEAM`] with priority 0; it waits until a worker of its platform
    /// has a free slot.
    pub fn enqueue(&mut self, job: JobId, platform: Platform, now: Instant) {
        self.enqueue_job(job, platform, JobMeta::default(), now);
    }

    /// Queues a job with its team, priority and cache affinity. The scheduler forgets them when the
    /// job finishes, so a requeue passes them again. A job already queued keeps its place.
    pub fn enqueue_job(&mut self, job: JobId, platform: Platform, meta: JobMeta, now: Instant) {
        if self.queued_places.contains_key(&job) {
            return;
        }
        if self.latest_enqueue.is_some_and(|latest| now < latest) {
            self.enqueue_times_monotonic = false;
        }
        self.latest_enqueue = self.latest_enqueue.max(Some(now));
        let seq = self.next_seq;
        self.next_seq += 1;
        self.requeue(Queued {
            job,
            platform,
            since: now,
            seq,
            meta,
        });
    }

    /// A job left the farm (finished, failed, cancelled): frees its slot or its queue place.
    pub fn finished(&mut self, job: JobId) {
        for seq in self.queued_places.get(&job).cloned().unwrap_or_default() {
            self.unqueue(seq);
        }
        for name in self.placed.get(&job).cloned().unwrap_or_default() {
            self.unplace(job, &name);
        }
        self.running.remove(&job);
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
        self.assign_at_most(usize::MAX)
    }

    /// [`Scheduler::assign`], stopping after `limit` assignments: the rest wait for the next
    /// round, in the order they would have been picked.
    pub fn assign_at_most(&mut self, limit: usize) -> Vec<Assignment> {
        let mut round = RoundCounts::default();
        let mut out = Vec::new();
        while out.len() < limit
            && let Some((seq, worker)) =
                self.owner_pick(&round).or_else(|| self.shared_pick(&round))
        {
            let q = self.unqueue(seq).expect("picks come from the queue");
            let (job, team) = (q.job, q.team().to_owned());
            let prior = self.team_of_running(job).to_owned();
            let before = (self.running_of_team(&team), self.running_of_team(&prior));
            self.place(job, &worker);
            self.set_running_meta(job, Some(q));
            let after = (self.running_of_team(&team), self.running_of_team(&prior));
            // The round counts +1 for the job's team and nothing else, whatever the counts did.
            round.add(&team, 1 - (i64::from(after.0) - i64::from(before.0)));
            if prior != team {
                round.add(&prior, i64::from(before.1) - i64::from(after.1));
            }
            out.push(Assignment { job, worker });
        }
        out
    }

    /// Borrowed jobs to cancel so that owners get their workers back: for each full worker with an
    /// owner, one borrowed job per owner job that has waited at least the grace period for a
    /// worker of that owner (lowest priority, then most recently queued, borrowed job first); then
    /// every borrowed job still on a worker that stopped lending at least the grace period ago.
    /// Empty when preemption is disabled. Pure: nothing changes until [`Scheduler::preempt`].
    pub fn preemptions(&self, now: Instant) -> Vec<Preemption> {
        let Some(grace) = self.preemption_grace else {
            return Vec::new();
        };
        let mut extra: HashMap<&str, u64> = HashMap::new();
        let mut reclaimed: BTreeSet<u64> = BTreeSet::new();
        let mut out = Vec::new();
        for name in &self.index.full_and_owned {
            let w = &self.workers[name];
            let Some(owner) = w.owner.as_deref() else {
                continue;
            };
            let Some(owner_queues) = self.queues.get(owner) else {
                continue;
            };
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
                let running =
                    u64::from(self.running_of_team(owner)) + extra.get(owner).copied().unwrap_or(0);
                if self.cap_reached(owner, running) {
                    break;
                }
                let waiting = w
                    .platforms
                    .iter()
                    .filter_map(|p| owner_queues.get(p))
                    .filter_map(|tq| self.best_waited(tq, now, grace, &reclaimed))
                    .min();
                let Some((_, seq)) = waiting else {
                    break;
                };
                reclaimed.insert(seq);
                *extra.entry(owner).or_default() += 1;
                out.push(Preemption {
                    job,
                    worker: w.caps.name.clone(),
                    team: owner.to_owned(),
                    cause: PreemptCause::OwnerWaited,
                });
            }
        }
        let chosen: BTreeSet<JobId> = out.iter().map(|p| p.job).collect();
        for name in &self.index.not_lending {
            let w = &self.workers[name];
            if !w
                .not_lending_since
                .is_some_and(|since| waited(now, since, grace))
            {
                continue;
            }
            let owner = w.owner.as_deref();
            // In the owner rule's order: lowest priority, then most recently queued, first.
            let mut borrowed: Vec<(i32, Reverse<u64>, JobId)> = w
                .running
                .iter()
                .filter(|job| !chosen.contains(job) && Some(self.team_of_running(**job)) != owner)
                .map(|job| match self.running.get(job) {
                    Some(q) => (q.meta.priority, Reverse(q.seq), *job),
                    None => (0, Reverse(u64::MAX), *job),
                })
                .collect();
            borrowed.sort();
            for (_, _, job) in borrowed {
                out.push(Preemption {
                    job,
                    worker: name.clone(),
                    team: owner.unwrap_or_default().to_owned(),
                    cause: PreemptCause::LendingStopped,
                });
            }
        }
        out
    }

    /// The farm cancelled this running job to honour a [`Preemption`]: it frees its slot and goes
    /// back to the queue in its old place, with its team and priority. Returns false when the job
    /// was not running.
    pub fn preempt(&mut self, job: JobId) -> bool {
        let Some(name) = self
            .placed
            .get(&job)
            .and_then(|names| names.first())
            .cloned()
        else {
            return false;
        };
        self.unplace(job, &name);
        if let Some(q) = self.set_running_meta(job, None) {
            self.requeue(q);
        }
        true
    }

    /// Queued jobs that have waited at least `wait` while no attached worker can build their
    /// platform (draining and unhealthy workers cannot), oldest first.
    pub fn starved(&self, now: Instant, wait: Duration) -> Vec<(JobId, Platform)> {
        let mut out: Vec<(u64, JobId, Platform)> = Vec::new();
        for (platform, ages) in &self.ages {
            if self.any_worker_builds(platform) {
                continue;
            }
            out.extend(
                ages.iter()
                    .take_while(|(since, _)| waited(now, *since, wait))
                    .map(|(_, seq)| (*seq, self.queue[seq].job, platform.clone())),
            );
        }
        out.sort_unstable_by_key(|(seq, ..)| *seq);
        out.into_iter().map(|(_, job, p)| (job, p)).collect()
    }

    /// Whether any attached worker that takes jobs (not draining, healthy) builds `platform`.
    pub fn any_worker_builds(&self, platform: &Platform) -> bool {
        self.index.capable.get(platform).is_some_and(|n| *n > 0)
    }

    fn weight(&self, team: &str) -> u64 {
        self.teams
            .get(team)
            .map_or(1, |t| u64::from(t.weight.max(1)))
    }

    fn cap_reached(&self, team: &str, running: u64) -> bool {
        self.teams
            .get(team)
            .and_then(|t| t.max_running)
            .is_some_and(|cap| running >= u64::from(cap))
    }

    /// Owner first: a free slot of an owned worker and the owner's best job it can run. The
    /// worker is the first, in (native, least loaded, name) order, owned by a team below its cap
    /// that has a job queued for one of its platforms.
    fn owner_pick(&self, round: &RoundCounts) -> Option<(u64, String)> {
        if self.index.free_workers == 0 {
            return None;
        }
        let mut best: Option<(&FreeKey, &str)> = None;
        for (team, queues) in &self.queues {
            if self.cap_reached(team, round.get(self, team)) {
                continue;
            }
            for platform in queues.keys() {
                // Not `free()`: an owned worker that does not lend is free only under its owner.
                let first = self
                    .index
                    .free
                    .get(platform)
                    .and_then(|slots| slots.by_owner.get(team))
                    .and_then(|owned| owned.first());
                if let Some(key) = first
                    && best.is_none_or(|(b, _)| key < b)
                {
                    best = Some((key, team));
                }
            }
        }
        let (key, team) = best?;
        let w = &self.workers[&key.2];
        let queues = &self.queues[team];
        let (_, seq) = w
            .platforms
            .iter()
            .filter_map(|p| queues.get(p)?.by_rank.first())
            .min()?;
        Some((*seq, key.2.clone()))
    }

    /// Fair share: the team with the lowest running/weight among those with a runnable job, its
    /// best job, and the best free worker for it.
    fn shared_pick(&self, round: &RoundCounts) -> Option<(u64, String)> {
        if self.index.free_workers == 0 {
            return None;
        }
        // (team, running, weight, its oldest runnable job, its best runnable job and platform)
        let mut best: Option<(&str, u64, u64, Age, Rank, &Platform)> = None;
        for (team, queues) in &self.queues {
            let running = round.get(self, team);
            if self.cap_reached(team, running) {
                continue;
            }
            let mut rank: Option<(Rank, &Platform)> = None;
            let mut oldest: Option<Age> = None;
            let borrows = self.borrows(team);
            for (platform, tq) in queues {
                let Some(slots) = self.index.free(platform) else {
                    continue;
                };
                if !borrows && !slots.usable_without_borrowing(team) {
                    continue;
                }
                let (Some(r), Some(a)) = (tq.by_rank.first(), tq.by_age.first()) else {
                    continue;
                };
                if rank.is_none_or(|(b, _)| *r < b) {
                    rank = Some((*r, platform));
                }
                oldest = Some(oldest.map_or(*a, |o| o.min(*a)));
            }
            let (Some((rank, platform)), Some(oldest)) = (rank, oldest) else {
                continue;
            };
            let weight = self.weight(team);
            // running/weight against the best's, cross-multiplied to stay in integers.
            let better = best.is_none_or(|(_, br, bw, bo, ..)| {
                (running * bw)
                    .cmp(&(br * weight))
                    .then_with(|| oldest.cmp(&bo))
                    .is_lt()
            });
            if better {
                best = Some((team, running, weight, oldest, rank, platform));
            }
        }
        let (team, _, _, _, (_, seq), platform) = best?;
        let affinity = self.queue[&seq].meta.affinity.as_deref();
        let worker = self.best_free_worker(platform, team, affinity)?;
        Some((seq, worker))
    }

    fn borrows(&self, team: &str) -> bool {
        self.teams.get(team).is_none_or(|t| t.borrows)
    }

    /// The free worker of `platform` for a job of `team`: native before emulated, then the least
    /// loaded, then the job's cache affinity, then one no other team owns, then by name.
    fn best_free_worker(
        &self,
        platform: &Platform,
        team: &str,
        affinity: Option<&str>,
    ) -> Option<String> {
        let slots = self.index.free(platform)?;
        let own = slots.by_owner.get(team);
        let borrows = self.borrows(team);
        // The best worker the team may use: any, or (not borrowing) one nobody owns or its own.
        let first = if borrows {
            slots.all.first()?
        } else {
            match (slots.unowned.first(), own.and_then(BTreeSet::first)) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => a.or(b)?,
            }
        };
        let (emulated, load) = (first.0, first.1);
        if let Some(name) = affinity
            && let Some(w) = self.workers.get(name)
            && w.has_free_slot()
            && w.lends_to(team)
            && w.platforms.contains(platform)
            && (w.caps.emulated, w.load()) == (emulated, load)
            && (borrows || w.owner.as_deref().is_none_or(|o| o == team))
        {
            return Some(name.to_owned());
        }
        let unowned = first_of_group(&slots.unowned, emulated, load);
        let own = own.and_then(|owned| first_of_group(owned, emulated, load));
        let pick = match (unowned, own) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).unwrap_or(first),
        };
        Some(pick.2.clone())
    }

    /// The best-ranked job of `tq` that has waited `grace` and is not reclaimed yet.
    fn best_waited(
        &self,
        tq: &TeamQueue,
        now: Instant,
        grace: Duration,
        reclaimed: &BTreeSet<u64>,
    ) -> Option<Rank> {
        let mut from = Bound::Unbounded;
        loop {
            let mut too_young = None;
            for rank in tq.by_rank.range((from, Bound::Unbounded)) {
                if reclaimed.contains(&rank.1) {
                    continue;
                }
                if waited(now, self.queue[&rank.1].since, grace) {
                    return Some(*rank);
                }
                if self.enqueue_times_monotonic {
                    // The rest of this priority was queued later still: go to the next priority.
                    too_young = Some(rank.0);
                    break;
                }
            }
            from = Bound::Excluded((too_young?, u64::MAX));
        }
    }

    /// The team a running job counts for.
    fn team_of_running(&self, job: JobId) -> &str {
        self.running.get(&job).map_or(DEFAULT_TEAM, Queued::team)
    }

    fn count_running(&mut self, team: &str, delta: i64) {
        let n = match self.running_by_team.get_mut(team) {
            Some(n) => n,
            None => self.running_by_team.entry(team.to_owned()).or_default(),
        };
        *n = u32::try_from((i64::from(*n) + delta).max(0)).unwrap_or(u32::MAX);
    }

    /// Replaces what is recorded of a running job; the workers it occupies then count for its
    /// new team. Returns what was recorded before.
    fn set_running_meta(&mut self, job: JobId, q: Option<Queued>) -> Option<Queued> {
        let before = self.team_of_running(job).to_owned();
        let old = match q {
            Some(q) => self.running.insert(job, q),
            None => self.running.remove(&job),
        };
        let after = self.team_of_running(job).to_owned();
        let n = self.placed.get(&job).map_or(0, |w| w.len() as i64);
        if n > 0 && before != after {
            self.count_running(&before, -n);
            self.count_running(&after, n);
        }
        old
    }

    /// Records `job` as running on `name` (attached).
    fn place(&mut self, job: JobId, name: &str) {
        let added = self.update_worker(name, |w| w.running.insert(job));
        if added == Some(true) {
            self.placed.entry(job).or_default().insert(name.to_owned());
            let team = self.team_of_running(job).to_owned();
            self.count_running(&team, 1);
        }
    }

    /// Frees the slot `job` occupies on `name`.
    fn unplace(&mut self, job: JobId, name: &str) {
        if self.update_worker(name, |w| w.running.remove(&job)) == Some(true) {
            self.forget_placement(job, name);
        }
    }

    /// Takes a detached worker's jobs out of the placements and the counts.
    fn unplace_all(&mut self, w: &WorkerState) {
        for job in &w.running {
            self.forget_placement(*job, &w.caps.name);
        }
    }

    fn forget_placement(&mut self, job: JobId, name: &str) {
        if let Some(names) = self.placed.get_mut(&job) {
            names.remove(name);
            if names.is_empty() {
                self.placed.remove(&job);
            }
        }
        let team = self.team_of_running(job).to_owned();
        self.count_running(&team, -1);
    }

    /// Removes a worker from the workers and the index, as it is.
    fn detach_worker(&mut self, name: &str) -> Option<WorkerState> {
        let w = self.workers.remove(name)?;
        self.index.remove(&w);
        Some(w)
    }

    /// Changes an attached worker and refiles it in the index.
    fn update_worker<R>(&mut self, name: &str, f: impl FnOnce(&mut WorkerState) -> R) -> Option<R> {
        let w = self.workers.get_mut(name)?;
        self.index.remove(w);
        let r = f(w);
        self.index.add(w);
        Some(r)
    }

    /// Puts a job in the queue at its `seq`.
    fn requeue(&mut self, q: Queued) {
        self.queued_places.entry(q.job).or_default().insert(q.seq);
        let tq = self
            .queues
            .entry(q.team().to_owned())
            .or_default()
            .entry(q.platform.clone())
            .or_default();
        tq.by_rank.insert(q.rank());
        tq.by_age.insert(q.age());
        match self.ages.get_mut(&q.platform) {
            Some(ages) => {
                ages.insert(q.age());
            }
            None => {
                self.ages
                    .insert(q.platform.clone(), BTreeSet::from([q.age()]));
            }
        }
        self.queue.insert(q.seq, q);
    }

    /// Takes the job at `seq` out of the queue.
    fn unqueue(&mut self, seq: u64) -> Option<Queued> {
        let q = self.queue.remove(&seq)?;
        if let Some(places) = self.queued_places.get_mut(&q.job) {
            places.remove(&seq);
            if places.is_empty() {
                self.queued_places.remove(&q.job);
            }
        }
        if let Some(queues) = self.queues.get_mut(q.team()) {
            if let Some(tq) = queues.get_mut(&q.platform) {
                tq.by_rank.remove(&q.rank());
                tq.by_age.remove(&q.age());
                if tq.by_rank.is_empty() {
                    queues.remove(&q.platform);
                }
            }
            if queues.is_empty() {
                self.queues.remove(q.team());
            }
        }
        if let Some(ages) = self.ages.get_mut(&q.platform) {
            ages.remove(&q.age());
        }
        Some(q)
    }
}
