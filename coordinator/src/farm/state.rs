//! The farm's pure state: builds, their jobs, the attached workers, the timers of the attempts
//! out on workers, and every transition between them. What workers do to it is in
//! `state::sessions` (attach, heartbeats, acknowledgements, logs, results, detach);
//! what it answers without changing in `state::views`; the rest (submit, cancel, restore,
//! housekeeping, and the transitions they share) here.
//!
//! [`FarmState`] does no I/O: it owns no channel, no watch sender, no task and reads no clock.
//! Every transition takes the time as a [`Now`] and returns the [`Effects`] the handle
//! ([`super::Farm`]) must apply: build records to persist, then messages to worker sessions,
//! histories that grew, lists to publish or stop publishing, sessions to close. The policies it
//! applies, each with exact-time table tests in `farm/tests.rs`:
//! - a job has at most one live attempt; news of any other attempt is ignored (a late
//!   acknowledgement is answered with a cancel);
//! - a disconnected worker keeps its jobs for `worker_lease`; a reconnect restating them adopts
//!   them; a worker silent for `worker_lease` is lost and its session closed ([`super::timers`]);
//! - an assignment not acknowledged within `assign_timeout`, and a running attempt silent for
//!   `stuck_after`, are cancelled on their worker and requeued, the attempt counted;
//! - infrastructure failures are retried while counted attempts remain, refusals and preemptions
//!   do not count ([`super::retry`]); build failures end the build at once;
//! - a build past its timeout fails and its jobs are cancelled; a job nobody can take fails its
//!   build after `wait_for_workers`;
//! - a build identical to an unfinished or succeeded build of its team joins it or reuses its
//!   images instead of building (`state::joins`, the key in [`super::reuse`]);
//! - a build's last event is `Finished`, and nothing is recorded after it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use manifold_proto::{BuildId, JobId, Platform, Secrets};

use super::retry::{self, Retry};
use super::timers::{self, Overdue};
use super::{FarmConfig, FarmError, JobSpec, ToWorker, WorkerHello};
use crate::access::Caller;
use crate::build::{
    Build, BuildRequest, BuildSpec, BuildState, Event, EventKind, Job, JobState, human_duration,
};
use crate::scheduler::{JobMeta, PreemptCause, Preemption, Scheduler};

mod held;
mod joins;
mod publishing;
mod sessions;
mod stored;
mod views;

pub use publishing::PublishFailure;
pub use stored::{Retired, record_history};
pub use views::SinceRestore;
pub use views::{ImageCheck, Listed};

/// Log lines kept in a build's history; later lines still reach the job's tail.
pub const MAX_LOG_EVENTS: usize = 50_000;

/// The time of a transition: a monotonic instant for timers, and the wall clock (Unix ms) for
/// what is recorded (event times, build deadlines).
#[derive(Clone, Copy, Debug)]
pub struct Now {
    /// Monotonic time, for leases, acknowledgements, stuck attempts and the scheduler.
    pub at: Instant,
    /// Unix ms, for records and build deadlines.
    pub ms: i64,
}

/// Identifies one attachment of a worker, so a stale stream cannot act for a newer one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// Worker name.
    pub worker: String,
    pub(super) id: u64,
}

/// What a transition asks of the outside world, applied by the handle in this order: histories
/// are announced, sessions closed, publishing stopped and started; then `persist` is written and
/// only once it is durable is `send` sent.
#[derive(Debug, Default)]
#[must_use = "effects must be applied"]
pub struct Effects {
    /// Build records changed by the transition (their version already bumped).
    pub persist: Vec<Build>,
    /// Messages to worker sessions, to be sent once `persist` is durable.
    pub send: Vec<(Session, ToWorker)>,
    /// Builds whose history grew, with its new length, for watchers.
    pub history: Vec<(BuildId, usize)>,
    /// Builds whose every platform succeeded: push their list.
    pub publish: Vec<Build>,
    /// Builds that ended while their list was being pushed: stop that push.
    pub stop_publishing: Vec<BuildId>,
    /// Sessions the farm is done with (silent or detached workers): end their streams.
    pub close: Vec<Session>,
    /// Output lines of current attempts, for the durable logs (written in batches).
    pub logs: Vec<crate::logs::LogLines>,
}

/// The farm's state; see the module documentation.
pub struct FarmState {
    config: FarmConfig,
    builds: held::Held,
    /// Every build the store holds, held in full or not, in submission order.
    catalog: super::catalog::Catalog,
    /// Which build each job belongs to.
    job_build: HashMap<JobId, BuildId>,
    scheduler: Scheduler,
    workers: BTreeMap<String, WorkerConn>,
    /// `--secret` values of live builds, in memory only; dropped once no job needs them.
    secrets: HashMap<BuildId, Secrets>,
    /// Jobs of workers that went away: the attempt, and the deadline for the worker's return.
    orphans: HashMap<JobId, (u32, Instant)>,
    /// Timers of the attempts out on workers (assigned or running), and of those whose worker
    /// reported its image, while the coordinator checks it.
    live: HashMap<JobId, timers::LiveAttempt>,
    /// When each unfinished build times out (Unix ms).
    deadlines: HashMap<BuildId, i64>,
    /// Assignments of each job that its workers refused without starting them, and preemptions:
    /// they do not count against the attempt limit. In memory only: after a restart they count.
    refusals: HashMap<JobId, u32>,
    next_session: u64,
    /// The worker that last built each (repository, platform): its layer cache is warm for the
    /// next build of that image (in memory; a restart starts cold).
    warm: HashMap<(String, Platform), String>,
    /// Builds in their publishing phase: the list is being pushed, or waits for its next try.
    publishing: HashMap<BuildId, publishing::PublishTry>,
    /// Effects gathered by the current transition.
    pending: Effects,
    /// Builds that identical builds can join or reuse ([`super::reuse`]).
    reuse: super::reuse::ReuseIndex,
    /// The monotonic time of the latest transition that dispatched (for followers' requeues).
    last_at: Option<Instant>,
    /// Assignments (job, attempt) decided for an attached worker and not yet reported sent
    /// ([`FarmState::sent`]): at most `config.max_unsent`.
    unsent: HashSet<(JobId, u32)>,
}

struct BuildEntry {
    build: Build,
    events: Vec<Event>,
    /// Events already announced to watchers.
    announced: usize,
    /// Changed since the last persist effect.
    dirty: bool,
    /// Its history began when it was restored from the store: the lines before are only in the
    /// durable logs ([`super::Farm::replay`]).
    restored: bool,
}

struct WorkerConn {
    session: u64,
    hello: WorkerHello,
    connected_at_ms: i64,
    last_seen: Instant,
    last_seen_ms: i64,
    /// Its disk as last reported (hello, then heartbeats).
    disk: Option<manifold_proto::DiskUsage>,
}

impl FarmState {
    /// An empty farm with `config`'s teams and preemption grace.
    pub fn new(config: FarmConfig) -> Self {
        let mut scheduler = Scheduler::default();
        for team in &config.teams {
            scheduler.set_team(team.clone());
        }
        scheduler.set_preemption_grace(config.preemption_grace);
        Self {
            config,
            builds: held::Held::default(),
            catalog: Default::default(),
            job_build: HashMap::new(),
            scheduler,
            workers: BTreeMap::new(),
            secrets: HashMap::new(),
            orphans: HashMap::new(),
            live: HashMap::new(),
            deadlines: HashMap::new(),
            refusals: HashMap::new(),
            next_session: 0,
            warm: HashMap::new(),
            publishing: HashMap::new(),
            pending: Effects::default(),
            reuse: Default::default(),
            last_at: None,
            unsent: HashSet::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &FarmConfig {
        &self.config
    }

    /// Queues a validated build of `by`'s team, one job per platform: [`FarmState::new_build`]
    /// then [`FarmState::admit`].
    pub fn submit(
        &mut self,
        spec: BuildSpec,
        request: BuildRequest,
        secrets: Secrets,
        by: &Caller,
        now: Now,
    ) -> (BuildId, Effects) {
        let build = Self::new_build(spec, request, by, now);
        let id = build.id;
        (id, self.admit(build, secrets, now))
    }

    /// The record of a new build of `by`'s team, queued, one job per platform; the farm does not
    /// hold it yet. The handle makes it durable before [`FarmState::admit`] takes it, so a build
    /// the store could not write is refused and never shown.
    pub fn new_build(spec: BuildSpec, request: BuildRequest, by: &Caller, now: Now) -> Build {
        let id = BuildId::new();
        let jobs: Vec<Job> = spec
            .platforms
            .iter()
            .map(|p| Job {
                id: JobId::new(),
                platform: p.clone(),
                state: JobState::Queued,
                worker: None,
                attempt: 0,
                image: None,
                error: None,
                log_tail: Default::default(),
            })
            .collect();
        Build {
            id,
            spec,
            request,
            state: BuildState::Queued,
            jobs,
            manifest: None,
            error: None,
            created_at_ms: now.ms,
            finished_at_ms: None,
            version: 0,
            team: by.team.clone(),
            submitted_by: by.name.clone(),
            publishing: None,
            reused: None,
        }
    }

    /// Takes a new build from [`FarmState::new_build`]: it joins or reuses an identical one, or
    /// its jobs are queued and scheduled.
    pub fn admit(&mut self, build: Build, secrets: Secrets, now: Now) -> Effects {
        let id = build.id;
        let (team, by) = (build.team.clone(), build.submitted_by.clone());
        let jobs = build.jobs.clone();
        self.deadlines.insert(id, build.deadline_ms());
        self.builds.insert(
            id,
            BuildEntry {
                build,
                events: Vec::new(),
                announced: 0,
                dirty: true,
                restored: false,
            },
        );
        self.catalog.insert(
            &crate::store::BuildSummary::from(&self.builds[&id].build),
            true,
        );
        if !secrets.is_empty() {
            self.secrets.insert(id, secrets);
        }
        for j in &jobs {
            self.job_build.insert(j.id, id);
        }
        if self.reuse_at_submit(id, now) {
            tracing::info!(build = %id, %team, %by, reused = ?self.builds[&id].build.reused, "build submitted");
            self.dispatch(now);
            return self.take_effects();
        }
        for j in &jobs {
            let meta = job_meta(&self.builds[&id].build, &j.platform, &self.warm);
            self.scheduler
                .enqueue_job(j.id, j.platform.clone(), meta, now.at);
        }
        for j in &jobs {
            let message = if self.scheduler.any_worker_builds(&j.platform) {
                "waiting for a free worker slot".to_owned()
            } else {
                format!(
                    "no {} worker attached; waiting up to {}s for one",
                    j.platform,
                    self.config.wait_for_workers.as_secs()
                )
            };
            record(
                self.builds.get_mut(&id).expect("just inserted"),
                EventKind::JobState {
                    platform: j.platform.clone(),
                    state: JobState::Queued,
                    worker: None,
                    attempt: 0,
                    message,
                },
                now,
            );
        }
        tracing::info!(build = %id, %team, %by, "build submitted");
        self.dispatch(now);
        self.take_effects()
    }

    /// Cancels a build: unfinished jobs stop, no tag is written.
    pub fn cancel(&mut self, id: BuildId, now: Now) -> Result<(Build, Effects), FarmError> {
        let state = self
            .builds
            .get(&id)
            .ok_or(FarmError::UnknownBuild(id))?
            .build
            .state;
        if !state.is_final() {
            self.end_build(
                id,
                BuildState::Cancelled,
                Some("cancelled by request".into()),
                None,
                now,
            );
            self.dispatch(now);
        }
        let build = self.builds[&id].build.clone();
        Ok((build, self.take_effects()))
    }

    /// Housekeeping at `now`: silent workers are declared lost (their sessions closed), orphaned
    /// jobs whose worker did not return are requeued, unacknowledged and stuck attempts are
    /// cancelled and requeued, builds past their timeout fail, borrowed jobs are preempted,
    /// starved jobs fail their build.
    pub fn tick(&mut self, now: Now) -> Effects {
        let lease = self.config.worker_lease;
        let silent: Vec<String> = self
            .workers
            .values()
            .filter(|w| timers::silent(w.last_seen, lease, now.at))
            .map(|w| w.hello.name.clone())
            .collect();
        for name in silent {
            tracing::warn!(worker = %name, "worker silent for longer than its lease; declaring it lost");
            // Closing its stream makes a worker that was only cut off reconnect and restate its
            // jobs, and hear then that they moved on.
            let conn = self.workers.remove(&name).expect("listed above");
            self.pending.close.push(Session {
                worker: name.clone(),
                id: conn.session,
            });
            for job in self.scheduler.remove_worker(&name) {
                if let Some(attempt) = self.attempt_of(job) {
                    self.orphans.insert(job, (attempt, now.at));
                }
            }
        }
        let expired: Vec<(JobId, u32)> = self
            .orphans
            .iter()
            .filter(|(_, (_, deadline))| now.at >= *deadline)
            .map(|(job, (attempt, _))| (*job, *attempt))
            .collect();
        for (job, attempt) in expired {
            self.orphans.remove(&job);
            self.attempt_failed(job, attempt, "worker lost", now);
        }
        let mut overdue: Vec<(JobId, u32, Overdue)> = Vec::new();
        for (job, live) in &self.live {
            if let Some(why) = live.overdue(&self.config, now.at) {
                overdue.push((*job, live.attempt, why));
            }
        }
        for (job, attempt, why) in overdue {
            self.attempt_failed(job, attempt, &why.cause(&self.config), now);
        }
        let timed_out: Vec<BuildId> = self
            .deadlines
            .iter()
            .filter(|(_, deadline)| now.ms >= **deadline)
            .map(|(id, _)| *id)
            .collect();
        for id in timed_out {
            self.deadlines.remove(&id);
            let build = &self.builds[&id].build;
            // A build whose platforms all succeeded is pushing its list: that ends it either way.
            if build.state.is_final() || build.jobs.iter().all(|j| j.state == JobState::Succeeded) {
                continue;
            }
            let error = build.timeout_error();
            tracing::warn!(build = %id, %error, "build timed out");
            self.end_build(id, BuildState::Failed, Some(error), None, now);
        }
        self.publish_due(now);
        for p in self.scheduler.preemptions(now.at) {
            self.preempt(&p, now);
        }
        let wait = self.config.wait_for_workers;
        for (job, platform) in self.scheduler.starved(now.at, wait) {
            let Some(build_id) = self.job_build.get(&job).copied() else {
                continue;
            };
            let error = self.starved_error(&platform);
            self.end_build(
                build_id,
                BuildState::Failed,
                Some(error),
                Some((job, platform)),
                now,
            );
        }
        self.dispatch(now);
        self.take_effects()
    }

    /// Gathers what the transition changed: each dirty build is persisted (its version bumped),
    /// each grown history announced.
    fn take_effects(&mut self) -> Effects {
        self.propagate();
        let mut effects = std::mem::take(&mut self.pending);
        for id in self.builds.take_touched() {
            let entry = self
                .builds
                .entry_untracked(&id)
                .expect("touched builds are held");
            if entry.dirty {
                entry.dirty = false;
                entry.build.version += 1;
                self.catalog.update(&entry.build);
                effects.persist.push(entry.build.clone());
            }
            if entry.announced != entry.events.len() {
                entry.announced = entry.events.len();
                effects.history.push((id, entry.announced));
            }
        }
        effects
    }

    /// Why no worker took a starved job of `platform`.
    fn starved_error(&self, platform: &Platform) -> String {
        let wait = self.config.wait_for_workers;
        let unable: Vec<String> = self
            .workers
            .values()
            .filter(|w| w.hello.platforms.contains(platform))
            .filter_map(|w| {
                let status = self.scheduler.status(&w.hello.name)?;
                Some(format!(
                    "{} is {}",
                    w.hello.name,
                    views::status_text(&status)
                ))
            })
            .collect();
        if unable.is_empty() {
            format!(
                "no worker for {platform} attached within {}: start a manifold-worker whose Docker daemon builds {platform} (or one with --platform {platform}); `manifold workers` lists the attached ones",
                human_duration(wait)
            )
        } else {
            format!(
                "no worker for {platform} could take the job within {} ({}): fix that worker or start another manifold-worker for {platform}; `manifold workers` shows their status",
                human_duration(wait),
                unable.join(", ")
            )
        }
    }

    /// Takes a borrowed job off its owner's worker: the attempt is cancelled there and the job
    /// goes back to the queue in its old place, without the attempt counting.
    fn preempt(&mut self, p: &Preemption, now: Now) {
        let Some(build_id) = self.job_build.get(&p.job).copied() else {
            return;
        };
        let Some(attempt) = self.attempt_of(p.job) else {
            return;
        };
        if !self.scheduler.preempt(p.job) {
            return;
        }
        self.live.remove(&p.job);
        self.orphans.remove(&p.job);
        // Counted like a refusal: the job did not fail, the farm took its slot back.
        *self.refusals.entry(p.job).or_default() += 1;
        if let Some(session) = self.session_of(&p.worker) {
            self.pending.send.push((
                session,
                ToWorker::Cancel {
                    job: p.job,
                    attempt,
                },
            ));
        }
        let entry = self.builds.get_mut(&build_id).expect("job's build exists");
        let j = job_mut(&mut entry.build, p.job);
        j.state = JobState::Queued;
        let ev = EventKind::JobState {
            platform: j.platform.clone(),
            state: JobState::Queued,
            worker: None,
            attempt,
            message: preemption_message(p),
        };
        record(entry, ev, now);
        tracing::info!(build = %build_id, job = %p.job, worker = %p.worker, owner = %p.team, cause = ?p.cause, "borrowed job preempted");
    }

    /// Forgets the timers and the slot of `job`'s attempt, which is over.
    fn attempt_over(&mut self, job: JobId) {
        self.live.remove(&job);
        self.orphans.remove(&job);
        self.scheduler.finished(job);
    }

    /// The coordinator gives up on attempt `attempt` of `job` (worker lost, no acknowledgement,
    /// stuck, its image's check not ending): its worker, if attached and not done with it already
    /// (reported), is told to stop it, the attempt counts, and the job is requeued while attempts
    /// remain. Nothing happens when that attempt is no longer out.
    fn attempt_failed(&mut self, job: JobId, attempt: u32, cause: &str, now: Now) {
        let Some(build_id) = self.current_build(job, attempt) else {
            return;
        };
        let worker = self.worker_of(job).filter(|_| !self.is_checking(job));
        tracing::warn!(build = %build_id, %job, attempt, worker = ?worker, cause, "attempt failed");
        self.attempt_over(job);
        if let Some(session) = worker.as_deref().and_then(|w| self.session_of(w)) {
            self.pending
                .send
                .push((session, ToWorker::Cancel { job, attempt }));
        }
        self.retry_or_give_up(build_id, job, cause, now);
    }

    /// Records `cause` as the end of `job`'s current attempt (an infrastructure failure), then
    /// requeues the job while attempts remain, else fails its build with every attempt listed.
    fn retry_or_give_up(&mut self, build_id: BuildId, job: JobId, cause: &str, now: Now) {
        let allowed = self.config.attempts_allowed();
        let refused = self.refusals.get(&job).copied().unwrap_or_default();
        let entry = self.builds.get_mut(&build_id).expect("job's build exists");
        let j = job_mut(&mut entry.build, job);
        let worker = j.worker.clone().unwrap_or_default();
        let line = format!("attempt {} on {worker}: {cause}", j.attempt);
        append_error(j, line.clone());
        match retry::decide(j.attempt, refused, allowed) {
            Retry::Requeue => self.requeue(build_id, job, &line, now),
            Retry::GiveUp { counted } => {
                let platform = j.platform.clone();
                let error = j.give_up_error(counted);
                self.end_build(
                    build_id,
                    BuildState::Failed,
                    Some(error),
                    Some((job, platform)),
                    now,
                );
            }
        }
    }

    fn requeue(&mut self, build_id: BuildId, job: JobId, why: &str, now: Now) {
        let entry = self.builds.get_mut(&build_id).expect("job's build exists");
        let j = job_mut(&mut entry.build, job);
        j.state = JobState::Queued;
        let ev = EventKind::JobState {
            platform: j.platform.clone(),
            state: JobState::Queued,
            worker: None,
            attempt: j.attempt,
            message: format!("requeued: {why}"),
        };
        let platform = j.platform.clone();
        record(entry, ev, now);
        self.attempt_over(job);
        let meta = job_meta(&self.builds[&build_id].build, &platform, &self.warm);
        self.scheduler.enqueue_job(job, platform, meta, now.at);
    }

    /// Ends a build: stops every unfinished job (except `failed`, which is marked failed), records
    /// the final event. No tag is written by a build that ends here.
    fn end_build(
        &mut self,
        build_id: BuildId,
        state: BuildState,
        error: Option<String>,
        failed: Option<(JobId, Platform)>,
        now: Now,
    ) {
        let mut to_cancel = Vec::new();
        self.secrets.remove(&build_id);
        {
            let entry = self.builds.get_mut(&build_id).expect("build exists");
            if entry.build.state.is_final() {
                return;
            }
            let mut events = Vec::new();
            for j in &mut entry.build.jobs {
                if j.state.is_final() {
                    continue;
                }
                let is_failed = failed.as_ref().is_some_and(|(id, _)| *id == j.id);
                // The failed job's attempt is over already: its worker said so, or the farm
                // called it off (and told the worker) before giving up.
                // A build following another has no attempt of its own to cancel.
                // Nor has a job whose worker reported its image, being checked.
                if !is_failed
                    && entry.build.reused.is_none()
                    && matches!(j.state, JobState::Assigned | JobState::Running)
                    && !self
                        .live
                        .get(&j.id)
                        .is_some_and(timers::LiveAttempt::is_checking)
                {
                    to_cancel.push((j.id, j.attempt, j.worker.clone()));
                }
                j.state = if is_failed {
                    JobState::Failed
                } else {
                    JobState::Cancelled
                };
                if is_failed && j.error.is_none() {
                    j.error = error.clone();
                }
                events.push(EventKind::JobState {
                    platform: j.platform.clone(),
                    state: j.state,
                    worker: j.worker.clone(),
                    attempt: j.attempt,
                    message: if is_failed {
                        error.clone().unwrap_or_default()
                    } else if state == BuildState::Cancelled {
                        "cancelled".into()
                    } else if failed.is_some() {
                        "cancelled because another platform failed".into()
                    } else {
                        format!(
                            "cancelled: {}",
                            error.as_deref().unwrap_or("the build failed")
                        )
                    },
                });
            }
            for ev in events {
                record(entry, ev, now);
            }
            entry.build.state = state;
            entry.build.error = error.clone();
            entry.build.finished_at_ms = Some(now.ms);
            record(
                entry,
                EventKind::Finished {
                    state,
                    manifest_digest: None,
                    error,
                },
                now,
            );
            tracing::info!(build = %build_id, ?state, "build ended");
        }
        self.deadlines.remove(&build_id);
        self.reuse_ended(build_id);
        self.builds
            .get_mut(&build_id)
            .expect("build exists")
            .build
            .publishing = None;
        if self.publishing.remove(&build_id).is_some() {
            // A push asked for in this very transition never starts.
            let before = self.pending.publish.len();
            self.pending.publish.retain(|b| b.id != build_id);
            if self.pending.publish.len() == before {
                self.pending.stop_publishing.push(build_id);
            }
        }
        let jobs: Vec<JobId> = self.builds[&build_id]
            .build
            .jobs
            .iter()
            .map(|j| j.id)
            .collect();
        for job in jobs {
            self.attempt_over(job);
            self.refusals.remove(&job);
        }
        for (job, attempt, worker) in to_cancel {
            if let Some(session) = worker.as_deref().and_then(|w| self.session_of(w)) {
                self.pending
                    .send
                    .push((session, ToWorker::Cancel { job, attempt }));
            }
        }
    }

    /// Hands queued jobs to workers with free slots. The acknowledgement deadline starts once the
    /// handle reports the assignment sent ([`FarmState::sent`]).
    fn dispatch(&mut self, now: Now) {
        self.last_at = Some(now.at);
        let room = self.config.max_unsent.saturating_sub(self.unsent.len());
        for a in self.scheduler.assign_at_most(room) {
            let Some(build_id) = self.job_build.get(&a.job).copied() else {
                self.scheduler.finished(a.job);
                continue;
            };
            let entry = self.builds.get_mut(&build_id).expect("job's build exists");
            let insecure = self
                .config
                .registry
                .is_insecure(entry.build.spec.image.registry());
            let spec = entry.build.spec.clone();
            // Never to a machine another team owns (the scheduler keeps such jobs off them).
            let owner = self
                .workers
                .get(&a.worker)
                .and_then(|w| w.hello.owner.as_deref());
            let registry_logins = match owner {
                Some(owner) if owner != entry.build.team => Vec::new(),
                _ => (self.config.repositories).logins_for(&entry.build.team, &spec),
            };
            let j = job_mut(&mut entry.build, a.job);
            j.attempt += 1;
            j.state = JobState::Assigned;
            j.worker = Some(a.worker.clone());
            let job_spec = JobSpec {
                job: j.id,
                attempt: j.attempt,
                build: build_id,
                platform: j.platform.clone(),
                context_digest: spec.context_digest.clone(),
                dockerfile: spec.dockerfiles[&j.platform].clone(),
                build_args: spec.build_args.clone(),
                target: spec.target.clone(),
                labels: spec.labels.clone(),
                repository: spec.repository(),
                insecure_registry: insecure,
                flags: spec.flags.clone(),
                secrets: self.secrets.get(&build_id).cloned().unwrap_or_default(),
                registry_logins,
            };
            let ev = EventKind::JobState {
                platform: j.platform.clone(),
                state: JobState::Assigned,
                worker: Some(a.worker.clone()),
                attempt: j.attempt,
                message: String::new(),
            };
            record(entry, ev, now);
            tracing::info!(build = %build_id, job = %a.job, worker = %a.worker, attempt = job_spec.attempt, "job assigned");
            let mut live = timers::LiveAttempt::assigned(job_spec.attempt, now.at);
            match self.session_of(&a.worker) {
                // Sent once "assigned" is durable. A stream that is ending hands the job back
                // when it detaches.
                Some(session) => {
                    self.unsent.insert((job_spec.job, job_spec.attempt));
                    (self.pending.send).push((session, ToWorker::Assign(Box::new(job_spec))))
                }
                None => live.sent(now.at),
            }
            self.live.insert(a.job, live);
        }
    }

    /// Whether `job`'s worker reported its image and the coordinator is checking it.
    fn is_checking(&self, job: JobId) -> bool {
        self.live
            .get(&job)
            .is_some_and(timers::LiveAttempt::is_checking)
    }

    /// The current session of worker `name`, while it is attached.
    fn session_of(&self, name: &str) -> Option<Session> {
        self.workers.get(name).map(|w| Session {
            worker: name.to_owned(),
            id: w.session,
        })
    }

    /// Whether `session` is its worker's current attachment.
    fn is_current(&self, session: &Session) -> bool {
        self.workers
            .get(&session.worker)
            .is_some_and(|w| w.session == session.id)
    }

    fn job_ref(&self, job: JobId) -> Option<&Job> {
        let build_id = self.job_build.get(&job)?;
        self.builds
            .get(build_id)?
            .build
            .jobs
            .iter()
            .find(|j| j.id == job)
    }

    /// The worker of `job`'s current (or last) attempt.
    fn worker_of(&self, job: JobId) -> Option<String> {
        self.job_ref(job)?.worker.clone()
    }

    /// `job`'s current attempt number.
    fn attempt_of(&self, job: JobId) -> Option<u32> {
        self.job_ref(job).map(|j| j.attempt)
    }

    /// The build of `job` when `attempt` is its current attempt and out on a worker (assigned or
    /// running). A requeued job keeps its last attempt number until it is assigned again: news of
    /// that attempt is stale too.
    /// The build of `job` while `attempt` is its current attempt and `worker` the worker it was
    /// given to: what a worker reports about a job given to another worker changes nothing.
    fn current_build_on(&self, worker: &str, job: JobId, attempt: u32) -> Option<BuildId> {
        let build_id = self.current_build(job, attempt)?;
        let build = &self.builds.get(&build_id)?.build;
        let j = build.jobs.iter().find(|j| j.id == job)?;
        (j.worker.as_deref() == Some(worker)).then_some(build_id)
    }

    fn current_build(&self, job: JobId, attempt: u32) -> Option<BuildId> {
        let build_id = self.job_build.get(&job).copied()?;
        let entry = self.builds.get(&build_id)?;
        let j = entry.build.jobs.iter().find(|j| j.id == job)?;
        // A build following another mirrors its states but has no attempt on any worker.
        let out = matches!(j.state, JobState::Assigned | JobState::Running)
            && entry.build.reused.is_none();
        (j.attempt == attempt && out && !entry.build.state.is_final()).then_some(build_id)
    }
}

/// Appends an event of a state transition to persist with the transition.
fn record(entry: &mut BuildEntry, kind: EventKind, now: Now) {
    entry.dirty = true;
    note(entry, kind, now);
}

/// Adds an event whose change is written with the build's next record, not on its own: a change
/// a restart would undo to no effect (a log line; an acknowledgement, as a job restored
/// `assigned` waits for its worker as one restored `running` does). Watchers see it at once.
fn note(entry: &mut BuildEntry, kind: EventKind, now: Now) {
    let sequence = entry.events.len() as u64;
    entry.events.push(Event {
        sequence,
        at_ms: now.ms,
        kind,
    });
}

/// Adds a line to a job's attempt history.
fn append_error(j: &mut Job, line: String) {
    j.error = Some(match j.error.take() {
        Some(prev) => format!("{prev}\n{line}"),
        None => line,
    });
}

/// What the scheduler needs of a job: its build's team and priority, and the worker whose cache is
/// warm for its image and platform.
fn job_meta(
    build: &Build,
    platform: &Platform,
    warm: &HashMap<(String, Platform), String>,
) -> JobMeta {
    JobMeta {
        team: Some(build.team.clone()),
        priority: build.request.priority,
        affinity: warm
            .get(&(build.spec.repository(), platform.clone()))
            .cloned(),
    }
}

fn job_mut(build: &mut Build, job: JobId) -> &mut Job {
    build
        .jobs
        .iter_mut()
        .find(|j| j.id == job)
        .expect("job belongs to its build")
}

/// What a preempted job's history says about why it went back to the queue.
fn preemption_message(p: &Preemption) -> String {
    match p.cause {
        PreemptCause::OwnerWaited => format!(
            "preempted: worker {} belongs to team {}, whose job waited past the grace period; requeued without counting the attempt",
            p.worker, p.team
        ),
        PreemptCause::LendingStopped => format!(
            "preempted: worker {} stopped lending (its owner took it back) longer ago than the grace period; requeued without counting the attempt",
            p.worker
        ),
    }
}
