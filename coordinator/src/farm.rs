//! The farm: builds, their jobs, the attached workers, and every transition between them.
//!
//! One mutex guards the whole state; every method takes it briefly, decides with the pure
//! [`Scheduler`], records events, and sends messages to workers through their unbounded channels.
//! No I/O happens under the lock except channel sends; publishing a finished build's manifest list
//! runs in its own task.
//!
//! Invariants:
//! - a job has at most one live attempt; messages about any other attempt are ignored;
//! - a build's tag is written only after every job succeeded (see `manifold_registry::publish`),
//!   and ending the build while its list is pushed (a cancel) stops that push;
//! - a build's last event is `Finished`, and nothing is recorded after it;
//! - a worker that disconnects keeps its jobs for `worker_lease`: a reconnect that restates them adopts
//!   them; otherwise they are requeued, the attempt counted; a worker silent for `worker_lease` is
//!   declared lost the same way, and its stream is closed so that it reconnects and restates;
//! - an assignment not acknowledged within `assign_timeout`, and a running attempt with no output for
//!   `stuck_after`, are cancelled on their worker and requeued, the attempt counted; a job gives up
//!   after `max_attempts` counted attempts with an error listing each attempt's worker and cause;
//! - a build that has not ended within its timeout fails and its jobs are cancelled;
//! - every state transition is written to the [`StateStore`] before the worker messages it causes
//!   are sent ("assigned" is durable before the assignment leaves), and a submitted build is durable
//!   before its id is returned. One writer task applies the writes in order.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use manifold_proto::{BuildFlags, BuildId, JobId, Platform, Secrets};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access::Caller;
use crate::build::{
    Build, BuildRequest, BuildSpec, BuildState, Event, EventKind, InvalidRequest, Job, JobState,
    LOG_TAIL_LINES, human_duration, now_ms,
};
use crate::contexts::ContextStore;
use crate::scheduler::{JobMeta, QueuedJob, Scheduler, Team, WorkerCaps, WorkerStatus};
use crate::store::{StateStore, StoreError};
use manifold_registry::ChildImage;
use manifold_registry::{self as registry, RegistryConfig};

/// Tunables of the farm.
#[derive(Clone, Debug)]
pub struct FarmConfig {
    /// How long a job waits while no attached worker builds its platform before the build fails.
    pub wait_for_workers: Duration,
    /// How long a silent or disconnected worker keeps its jobs before they are requeued.
    pub worker_lease: Duration,
    /// How often workers heartbeat; keep it well under `worker_lease` (the binary uses a third of
    /// the lease, at most 5 s).
    pub heartbeat_interval: Duration,
    /// Attempts per job before it fails, the first included (infrastructure failures only; build
    /// failures never retry). 0 and 1 both mean one attempt, no retry.
    pub max_attempts: u32,
    /// How long a worker has to acknowledge an assignment before the job is requeued.
    pub assign_timeout: Duration,
    /// How long a running job may go without output before it is treated as stuck: cancelled on
    /// its worker and requeued as an infrastructure failure.
    pub stuck_after: Duration,
    /// Registry access.
    pub registry: RegistryConfig,
    /// Teams sharing the farm (weights, caps); jobs of undeclared teams count with weight 1.
    pub teams: Vec<Team>,
    /// How long an owner's job waits for its full worker before a borrowed job there is
    /// preempted (requeued without spending an attempt); `None`: never.
    pub preemption_grace: Option<Duration>,
}

impl FarmConfig {
    /// Attempts a job gets: `max_attempts`, with 0 meaning one (no retry).
    pub fn attempts_allowed(&self) -> u32 {
        self.max_attempts.max(1)
    }
}

impl Default for FarmConfig {
    fn default() -> Self {
        Self {
            wait_for_workers: Duration::from_secs(120),
            worker_lease: Duration::from_secs(15),
            heartbeat_interval: Duration::from_secs(5),
            max_attempts: 3,
            assign_timeout: Duration::from_secs(30),
            stuck_after: Duration::from_secs(600),
            registry: RegistryConfig::default(),
            teams: Vec::new(),
            preemption_grace: None,
        }
    }
}

/// What a worker must do, sent over its stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToWorker {
    /// Run this job.
    Assign(Box<JobSpec>),
    /// Stop this attempt.
    Cancel {
        /// Job.
        job: JobId,
        /// Attempt.
        attempt: u32,
    },
    /// Take no new job, finish the running ones, say goodbye and exit.
    Drain,
}

/// One attempt of one job, as a worker needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobSpec {
    /// Job id.
    pub job: JobId,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// The build it belongs to.
    pub build: BuildId,
    /// Platform to build for.
    pub platform: Platform,
    /// Context digest.
    pub context_digest: String,
    /// Dockerfile path in the context.
    pub dockerfile: String,
    /// Build args.
    pub build_args: BTreeMap<String, String>,
    /// Target stage.
    pub target: Option<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// `registry/repository` to push the image to by digest.
    pub repository: String,
    /// Plain HTTP to that registry.
    pub insecure_registry: bool,
    /// The build's buildx flags.
    pub flags: BuildFlags,
    /// The build's secrets (from memory; empty after a restart lost them).
    pub secrets: Secrets,
}

/// A worker's hello, as the farm sees it.
#[derive(Clone, Debug)]
pub struct WorkerHello {
    /// Unique name.
    pub name: String,
    /// Platforms.
    pub platforms: Vec<Platform>,
    /// Emulated?
    pub emulated: bool,
    /// Slots.
    pub slots: u32,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Docker server version.
    pub docker_version: String,
    /// Jobs it is running (job, attempt).
    pub running: Vec<(JobId, u32)>,
    /// It is draining already (it reconnected during a drain).
    pub draining: bool,
    /// Why its Docker daemon cannot build, when it cannot.
    pub unhealthy: Option<String>,
    /// The team that owns it, from its client certificate (never from what the worker says).
    pub owner: Option<String>,
}

/// What a heartbeat says besides "alive".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerHealth {
    /// The worker drains.
    pub draining: bool,
    /// Why its Docker daemon cannot build, when it cannot.
    pub unhealthy: Option<String>,
}

/// How a worker's attempt ended.
#[derive(Clone, Debug)]
pub enum JobOutcome {
    /// Pushed.
    Pushed {
        /// Manifest digest.
        digest: String,
        /// Manifest size.
        size: u64,
        /// Manifest media type.
        media_type: String,
    },
    /// Did not produce an image.
    Failed {
        /// Why.
        message: String,
        /// Infrastructure trouble that may go away on another try.
        retryable: bool,
        /// Stopped because it was cancelled.
        cancelled: bool,
        /// Never started: the worker refused the assignment (draining, no free slot, daemon
        /// unhealthy). Requeued without counting an attempt.
        refused: bool,
    },
}

/// A worker as `manifold workers` shows it.
#[derive(Clone, Debug)]
pub struct WorkerView {
    /// Name.
    pub name: String,
    /// Platforms.
    pub platforms: Vec<Platform>,
    /// Emulated?
    pub emulated: bool,
    /// Slots.
    pub slots: u32,
    /// Slots in use.
    pub slots_in_use: u32,
    /// Unix ms of its last message.
    pub last_heartbeat_ms: i64,
    /// Unix ms of its hello.
    pub connected_at_ms: i64,
    /// Docker version.
    pub docker_version: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Draining: no new job.
    pub draining: bool,
    /// Why its Docker daemon cannot build, when it cannot.
    pub unhealthy: Option<String>,
    /// The team that owns it (its jobs go first on it); `None` for shared capacity.
    pub owner: Option<String>,
}

/// A team's use of the farm, as `manifold teams` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TeamUsage {
    /// The team (weight 1 and no cap when the config does not declare it).
    pub team: Team,
    /// Its running jobs.
    pub running: u32,
    /// Its queued jobs.
    pub queued: u32,
}

/// Errors of farm operations.
#[derive(Debug, thiserror::Error)]
pub enum FarmError {
    /// Bad request.
    #[error(transparent)]
    Invalid(#[from] InvalidRequest),
    /// No such build.
    #[error("no build with id {0}; `manifold builds` lists them")]
    UnknownBuild(BuildId),
    /// No attached worker of that name.
    #[error("no worker named `{0}` is attached; `manifold workers` lists them")]
    UnknownWorker(String),
    /// A worker name already attached.
    #[error("a worker named `{0}` is already attached; give each worker a unique --name")]
    DuplicateWorker(String),
    /// A hello that cannot be served.
    #[error("invalid worker hello: {0}")]
    BadHello(String),
    /// The state store refused or failed a write.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A handle to the farm; cheap to clone.
#[derive(Clone)]
pub struct Farm {
    inner: Arc<Inner>,
}

struct Inner {
    config: FarmConfig,
    contexts: ContextStore,
    state: Mutex<State>,
    tasks: TaskTracker,
    writes: mpsc::UnboundedSender<Batch>,
    /// Cancelled when this farm's term ends (shutdown, lost leadership, fenced write).
    term: CancellationToken,
}

/// What one farm operation must persist, then send.
struct Batch {
    builds: Vec<Build>,
    messages: Vec<(mpsc::UnboundedSender<ToWorker>, ToWorker)>,
    done: Option<oneshot::Sender<Result<(), StoreError>>>,
}

#[derive(Default)]
struct State {
    builds: HashMap<BuildId, BuildEntry>,
    /// Build ids in submission order.
    order: Vec<BuildId>,
    /// Which build each job belongs to.
    job_build: HashMap<JobId, BuildId>,
    scheduler: Scheduler,
    workers: BTreeMap<String, WorkerConn>,
    /// `--secret` values of live builds, in memory only; dropped once no job needs them.
    secrets: HashMap<BuildId, Secrets>,
    /// Jobs of workers that went away: the attempt, and the deadline for the worker's return.
    orphans: HashMap<JobId, (u32, Instant)>,
    /// Timers of the attempts out on workers (assigned or running).
    live: HashMap<JobId, LiveAttempt>,
    /// When each unfinished build times out (Unix ms).
    deadlines: HashMap<BuildId, i64>,
    /// Assignments of each job that its workers refused without starting them: they do not count
    /// against the attempt limit. Kept in memory only: after a restart they count.
    refusals: HashMap<JobId, u32>,
    next_session: u64,
    /// Worker messages waiting for the current operation's writes.
    outbox: Vec<(mpsc::UnboundedSender<ToWorker>, ToWorker)>,
    /// The worker that last built each (repository, platform): its layer cache is warm for the
    /// next build of that image (in memory; a restart starts cold).
    warm: HashMap<(String, Platform), String>,
    /// Builds whose manifest list is being pushed; cancelling one stops its push.
    publishing: HashMap<BuildId, CancellationToken>,
}

struct BuildEntry {
    build: Build,
    events: Vec<Event>,
    /// Number of events recorded; watchers wait on changes.
    notify: watch::Sender<usize>,
    /// Changed since the last write to the store.
    dirty: bool,
}

/// The timers of one attempt out on a worker.
#[derive(Clone, Copy, Debug)]
struct LiveAttempt {
    attempt: u32,
    /// When the assignment was made; the worker must acknowledge it within `assign_timeout`.
    assigned_at: Instant,
    /// Set once acknowledged.
    accepted: bool,
    /// The last acknowledgement or output line; a running attempt silent for `stuck_after` is stuck.
    last_progress: Instant,
}

struct WorkerConn {
    session: u64,
    tx: mpsc::UnboundedSender<ToWorker>,
    hello: WorkerHello,
    connected_at_ms: i64,
    last_seen: Instant,
    last_seen_ms: i64,
}

/// Identifies one attachment of a worker, so a stale stream cannot act for a newer one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// Worker name.
    pub worker: String,
    id: u64,
}

/// Log lines kept in a build's history; later lines still reach the job's tail.
const MAX_LOG_EVENTS: usize = 50_000;

impl Farm {
    /// A farm holding what `store` holds: unfinished builds resume (queued jobs are queued again,
    /// running ones wait `worker_lease` for their worker to restate them, fully built ones are
    /// published). The farm works until `term` is cancelled; a write the store refuses as fenced
    /// cancels it.
    pub async fn recover(
        config: FarmConfig,
        contexts: ContextStore,
        store: Arc<dyn StateStore>,
        tasks: TaskTracker,
        term: CancellationToken,
    ) -> Result<Self, FarmError> {
        let mut builds = store.load().await?;
        builds.sort_by_key(|b| b.created_at_ms);
        let (writes, rx) = mpsc::unbounded_channel();
        tasks.spawn(write_loop(store, rx, term.clone()));
        let farm = Self {
            inner: Arc::new(Inner {
                config,
                contexts,
                state: Mutex::new(State::default()),
                tasks,
                writes,
                term,
            }),
        };
        {
            let ticking = farm.clone();
            farm.inner
                .tasks
                .spawn(async move { ticking.run_ticks(Duration::from_millis(250)).await });
        }
        let now = now_instant();
        let mut st = farm.lock();
        for team in &farm.inner.config.teams {
            st.scheduler.set_team(team.clone());
        }
        st.scheduler
            .set_preemption_grace(farm.inner.config.preemption_grace);
        let mut to_publish = Vec::new();
        let restored = builds.len();
        for build in builds {
            let id = build.id;
            let (notify, _) = watch::channel(0);
            let mut entry = BuildEntry {
                build,
                events: Vec::new(),
                notify,
                dirty: false,
            };
            for j in entry.build.jobs.clone() {
                st.job_build.insert(j.id, id);
                if !entry.build.state.is_final() {
                    match j.state {
                        JobState::Queued => {
                            let meta = job_meta(&entry.build, &j.platform, &st.warm);
                            st.scheduler
                                .enqueue_job(j.id, j.platform.clone(), meta, now);
                        }
                        JobState::Assigned | JobState::Running => {
                            st.orphans
                                .insert(j.id, (j.attempt, now + farm.inner.config.worker_lease));
                        }
                        _ => {}
                    }
                }
                record(
                    &mut entry,
                    EventKind::JobState {
                        platform: j.platform.clone(),
                        state: j.state,
                        worker: j.worker.clone(),
                        attempt: j.attempt,
                        message: "restored from the state store".into(),
                    },
                );
            }
            if !entry.build.state.is_final() {
                st.deadlines.insert(id, entry.build.deadline_ms());
            }
            if entry.build.state.is_final() {
                let finished = EventKind::Finished {
                    state: entry.build.state,
                    manifest_digest: entry.build.manifest.as_ref().map(|m| m.0.clone()),
                    error: entry.build.error.clone(),
                };
                record(&mut entry, finished);
            } else if entry
                .build
                .jobs
                .iter()
                .all(|j| j.state == JobState::Succeeded)
            {
                to_publish.push(entry.build.clone());
            }
            entry.dirty = false;
            st.builds.insert(id, entry);
            st.order.push(id);
        }
        for build in to_publish {
            farm.spawn_publish(&mut st, build.id, build);
        }
        // Secrets were held in memory by the coordinator before this one: a build that still
        // has a job to start cannot get them back.
        let lost: Vec<(BuildId, Vec<String>)> = st
            .builds
            .values()
            .filter(|e| !e.build.state.is_final() && !e.build.spec.flags.secret_ids.is_empty())
            .filter(|e| e.build.jobs.iter().any(|j| j.state == JobState::Queued))
            .map(|e| (e.build.id, e.build.spec.flags.secret_ids.clone()))
            .collect();
        for (id, ids) in lost {
            let error = format!(
                "the coordinator restarted before every platform started, and the build's secrets ({}) are kept in memory only: submit the build again",
                ids.join(", ")
            );
            farm.end_build(&mut st, id, BuildState::Failed, Some(error), None);
        }
        if restored > 0 {
            tracing::info!(builds = restored, "state restored");
        }
        farm.dispatch(&mut st);
        farm.flush(&mut st, None);
        drop(st);
        Ok(farm)
    }

    /// Sends what the current operation changed to the writer task; `done` learns the outcome.
    fn flush(&self, st: &mut State, done: Option<oneshot::Sender<Result<(), StoreError>>>) {
        let mut builds = Vec::new();
        for entry in st.builds.values_mut().filter(|e| e.dirty) {
            entry.dirty = false;
            entry.build.version += 1;
            builds.push(entry.build.clone());
        }
        let messages = std::mem::take(&mut st.outbox);
        if builds.is_empty() && messages.is_empty() && done.is_none() {
            return;
        }
        let batch = Batch {
            builds,
            messages,
            done,
        };
        if let Err(mpsc::error::SendError(batch)) = self.inner.writes.send(batch)
            && let Some(done) = batch.done
        {
            let _ = done.send(Err(StoreError::Backend(
                "the state writer has stopped".into(),
            )));
        }
    }

    /// Like [`Farm::flush`], releasing the lock; the receiver learns when the writes are durable.
    fn flush_and_release(
        &self,
        mut st: MutexGuard<'_, State>,
    ) -> oneshot::Receiver<Result<(), StoreError>> {
        let (tx, rx) = oneshot::channel();
        self.flush(&mut st, Some(tx));
        rx
    }

    /// The context store.
    pub fn contexts(&self) -> &ContextStore {
        &self.inner.contexts
    }

    /// The configuration.
    pub fn config(&self) -> &FarmConfig {
        &self.inner.config
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().expect("farm state lock poisoned")
    }

    /// Validates and queues a build of the caller's team; returns its id once the build is durable.
    pub async fn submit(
        &self,
        mut request: BuildRequest,
        by: &Caller,
    ) -> Result<BuildId, FarmError> {
        // Secrets live in memory only, never in the build record.
        let secrets = std::mem::take(&mut request.secrets);
        let contexts = self.inner.contexts.clone();
        // A new leader may hold the context only in the registry replica.
        if let Ok(false) = contexts.has(&request.context_digest)
            && let Err(e) = contexts.ensure_local(&request.context_digest).await
        {
            tracing::warn!(error = %e, "context not available locally");
        }
        let req = request.clone();
        // Validation reads the context tar: keep it off the async threads.
        let spec = tokio::task::spawn_blocking(move || BuildSpec::validate(req, &contexts))
            .await
            .map_err(|e| StoreError::Backend(format!("validating the request: {e}")))??;
        let id = BuildId::new();
        let now = now_instant();
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
        let written = {
            let mut st = self.lock();
            let (notify, _) = watch::channel(0);
            st.builds.insert(
                id,
                BuildEntry {
                    build: Build {
                        id,
                        spec,
                        request,
                        state: BuildState::Queued,
                        jobs: jobs.clone(),
                        manifest: None,
                        error: None,
                        created_at_ms: now_ms(),
                        finished_at_ms: None,
                        version: 0,
                        team: by.team.clone(),
                        submitted_by: by.name.clone(),
                    },
                    events: Vec::new(),
                    notify,
                    dirty: true,
                },
            );
            st.order.push(id);
            if !secrets.is_empty() {
                st.secrets.insert(id, secrets);
            }
            for j in &jobs {
                st.job_build.insert(j.id, id);
                let meta = job_meta(&st.builds[&id].build, &j.platform, &st.warm);
                st.scheduler
                    .enqueue_job(j.id, j.platform.clone(), meta, now);
            }
            let deadline = st.builds[&id].build.deadline_ms();
            st.deadlines.insert(id, deadline);
            for j in &jobs {
                let message = if st.scheduler.any_worker_builds(&j.platform) {
                    "waiting for a free worker slot".to_owned()
                } else {
                    format!(
                        "no {} worker attached; waiting up to {}s for one",
                        j.platform,
                        self.inner.config.wait_for_workers.as_secs()
                    )
                };
                record(
                    st.builds.get_mut(&id).expect("just inserted"),
                    EventKind::JobState {
                        platform: j.platform.clone(),
                        state: JobState::Queued,
                        worker: None,
                        attempt: 0,
                        message,
                    },
                );
            }
            tracing::info!(build = %id, team = %by.team, by = %by.name, "build submitted");
            self.dispatch(&mut st);
            self.flush_and_release(st)
        };
        durable(written).await?;
        Ok(id)
    }

    /// A snapshot of a build.
    pub fn get(&self, id: BuildId) -> Result<Build, FarmError> {
        self.lock()
            .builds
            .get(&id)
            .map(|e| e.build.clone())
            .ok_or(FarmError::UnknownBuild(id))
    }

    /// The newest `limit` builds that `by` may see, newest first.
    pub fn list(&self, limit: usize, by: &Caller) -> Vec<Build> {
        let st = self.lock();
        st.order
            .iter()
            .rev()
            .filter_map(|id| st.builds.get(id))
            .filter(|e| by.sees(&e.build.team))
            .take(limit)
            .map(|e| e.build.clone())
            .collect()
    }

    /// Usage per team: the configured teams and any other team with running or queued jobs.
    pub fn teams(&self) -> Vec<TeamUsage> {
        let st = self.lock();
        let queued = st.scheduler.queued_jobs();
        let mut teams: BTreeMap<String, Team> = st
            .scheduler
            .teams()
            .into_iter()
            .map(|t| (t.name.clone(), t))
            .collect();
        for q in &queued {
            teams
                .entry(q.team.clone())
                .or_insert_with(|| Team::new(q.team.clone()));
        }
        for e in st.builds.values().filter(|e| !e.build.state.is_final()) {
            teams
                .entry(e.build.team.clone())
                .or_insert_with(|| Team::new(e.build.team.clone()));
        }
        teams
            .into_values()
            .map(|team| TeamUsage {
                running: st.scheduler.running_of_team(&team.name),
                queued: queued.iter().filter(|q| q.team == team.name).count() as u32,
                team,
            })
            .collect()
    }

    /// The queued jobs, oldest first, with the build each belongs to.
    pub fn queue(&self) -> Vec<(QueuedJob, Build)> {
        let st = self.lock();
        st.scheduler
            .queued_jobs()
            .into_iter()
            .filter_map(|q| {
                let build = st.job_build.get(&q.job).and_then(|b| st.builds.get(b))?;
                Some((q, build.build.clone()))
            })
            .collect()
    }

    /// Events of a build from `from` on, and a receiver that changes when more arrive.
    pub fn events(
        &self,
        id: BuildId,
        from: usize,
    ) -> Result<(Vec<Event>, watch::Receiver<usize>, bool), FarmError> {
        let st = self.lock();
        let entry = st.builds.get(&id).ok_or(FarmError::UnknownBuild(id))?;
        let events = entry.events.get(from..).unwrap_or_default().to_vec();
        let ended = matches!(
            entry.events.last(),
            Some(Event {
                kind: EventKind::Finished { .. },
                ..
            })
        );
        Ok((events, entry.notify.subscribe(), ended))
    }

    /// Cancels a build: unfinished jobs stop, no tag is written.
    pub async fn cancel(&self, id: BuildId) -> Result<Build, FarmError> {
        let (build, written) = {
            let mut st = self.lock();
            let state = st
                .builds
                .get(&id)
                .ok_or(FarmError::UnknownBuild(id))?
                .build
                .state;
            if !state.is_final() {
                self.end_build(
                    &mut st,
                    id,
                    BuildState::Cancelled,
                    Some("cancelled by request".into()),
                    None,
                );
                self.dispatch(&mut st);
            }
            let build = st.builds[&id].build.clone();
            let written = self.flush_and_release(st);
            (build, written)
        };
        durable(written).await?;
        Ok(build)
    }

    /// Whether worker `name` holds a current attempt (assigned or running) of a job whose build
    /// uses context `digest`: the only contexts a worker may download.
    pub fn worker_needs_context(&self, name: &str, digest: &str) -> bool {
        let st = self.lock();
        st.builds.values().any(|e| {
            !e.build.state.is_final()
                && e.build.spec.context_digest == digest
                && e.build.jobs.iter().any(|j| {
                    matches!(j.state, JobState::Assigned | JobState::Running)
                        && j.worker.as_deref() == Some(name)
                })
        })
    }

    /// The platform and `registry/repository` of `job` while `attempt` is its current attempt:
    /// what a worker's reported image is checked against ([`crate::verify`]).
    pub fn attempt_target(&self, job: JobId, attempt: u32) -> Option<(Platform, String)> {
        let mut st = self.lock();
        let entry = current_job(&mut st, job, attempt)?;
        let platform = entry
            .build
            .jobs
            .iter()
            .find(|j| j.id == job)?
            .platform
            .clone();
        Some((platform, entry.build.spec.repository()))
    }

    /// Contexts that unfinished builds still need (garbage collection keeps them).
    pub fn referenced_contexts(&self) -> std::collections::HashSet<String> {
        let st = self.lock();
        st.builds
            .values()
            .filter(|e| !e.build.state.is_final())
            .map(|e| e.build.spec.context_digest.clone())
            .collect()
    }

    /// The attached workers.
    pub fn workers(&self) -> Vec<WorkerView> {
        let st = self.lock();
        st.workers.values().map(|w| worker_view(&st, w)).collect()
    }

    /// `manifold workers drain NAME`: the worker gets no new job and is told to drain: finish its
    /// running jobs, say goodbye and exit, as on SIGTERM.
    pub fn drain(&self, name: &str) -> Result<WorkerView, FarmError> {
        let mut st = self.lock();
        let Some(tx) = st.workers.get(name).map(|w| w.tx.clone()) else {
            return Err(FarmError::UnknownWorker(name.to_owned()));
        };
        st.scheduler.drain_worker(name);
        st.outbox.push((tx, ToWorker::Drain));
        tracing::info!(worker = %name, "drain requested");
        let view = worker_view(&st, &st.workers[name]);
        self.flush(&mut st, None);
        Ok(view)
    }

    /// A worker said hello. Returns its session and the channel its messages arrive on.
    pub fn attach(
        &self,
        hello: WorkerHello,
    ) -> Result<(Session, mpsc::UnboundedReceiver<ToWorker>), FarmError> {
        if hello.name.trim().is_empty() {
            return Err(FarmError::BadHello("the worker name is empty".into()));
        }
        if hello.platforms.is_empty() {
            return Err(FarmError::BadHello(format!(
                "worker `{}` announced no platform",
                hello.name
            )));
        }
        if hello.slots == 0 {
            return Err(FarmError::BadHello(format!(
                "worker `{}` announced 0 slots; use --slots 1 or more",
                hello.name
            )));
        }
        let mut st = self.lock();
        if st.workers.contains_key(&hello.name) {
            return Err(FarmError::DuplicateWorker(hello.name));
        }
        st.next_session += 1;
        let session = Session {
            worker: hello.name.clone(),
            id: st.next_session,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let now = now_instant();

        // Adopt the restated jobs whose attempt is still out (assigned or running, not requeued);
        // tell the worker to drop the others.
        let mut adopted = Vec::new();
        for (job, attempt) in &hello.running {
            let current = st
                .job_build
                .get(job)
                .and_then(|b| st.builds.get(b))
                .filter(|e| !e.build.state.is_final())
                .and_then(|e| e.build.jobs.iter().find(|j| j.id == *job))
                .is_some_and(|j| {
                    j.attempt == *attempt
                        && matches!(j.state, JobState::Assigned | JobState::Running)
                });
            if current {
                adopted.push(*job);
            } else {
                let _ = tx.send(ToWorker::Cancel {
                    job: *job,
                    attempt: *attempt,
                });
            }
        }
        for job in &adopted {
            st.orphans.remove(job);
            if let Some(build_id) = st.job_build.get(job).copied() {
                let entry = st.builds.get_mut(&build_id).expect("job's build exists");
                let j = job_mut(&mut entry.build, *job);
                j.worker = Some(hello.name.clone());
                j.state = JobState::Running;
                let (platform, attempt) = (j.platform.clone(), j.attempt);
                if entry.build.state == BuildState::Queued {
                    entry.build.state = BuildState::Running;
                }
                record(
                    entry,
                    EventKind::JobState {
                        platform,
                        state: JobState::Running,
                        worker: Some(hello.name.clone()),
                        attempt,
                        message: "adopted after the worker reconnected".into(),
                    },
                );
                st.live.insert(
                    *job,
                    LiveAttempt {
                        attempt,
                        assigned_at: now,
                        accepted: true,
                        last_progress: now,
                    },
                );
            }
        }
        // Jobs left behind by an earlier session of this worker that it did not restate: it
        // restarted without them, so there is no point waiting for the rest of the lease.
        let forgotten: Vec<(JobId, u32)> = st
            .orphans
            .iter()
            .filter(|(job, _)| worker_of(&st, **job).as_deref() == Some(hello.name.as_str()))
            .map(|(job, (attempt, _))| (*job, *attempt))
            .collect();
        // Before the worker is registered, so that it is not told to cancel what it does not run.
        for (job, attempt) in forgotten {
            self.attempt_failed(
                &mut st,
                job,
                attempt,
                "the worker came back without it (restarted?)",
            );
        }
        st.scheduler.add_worker(
            WorkerCaps {
                name: hello.name.clone(),
                platforms: hello.platforms.clone(),
                emulated: hello.emulated,
                slots: hello.slots,
            },
            adopted,
        );
        st.scheduler
            .set_worker_owner(&hello.name, hello.owner.clone());
        if hello.draining {
            st.scheduler.drain_worker(&hello.name);
        }
        st.scheduler
            .set_unhealthy(&hello.name, hello.unhealthy.clone());
        tracing::info!(
            worker = %hello.name,
            platforms = ?hello.platforms.iter().map(ToString::to_string).collect::<Vec<_>>(),
            emulated = hello.emulated,
            slots = hello.slots,
            draining = hello.draining,
            unhealthy = ?hello.unhealthy,
            "worker attached"
        );
        st.workers.insert(
            hello.name.clone(),
            WorkerConn {
                session: session.id,
                tx,
                hello,
                connected_at_ms: now_ms(),
                last_seen: now,
                last_seen_ms: now_ms(),
            },
        );
        self.dispatch(&mut st);
        self.flush(&mut st, None);
        Ok((session, rx))
    }

    /// Any message from a worker counts as a heartbeat.
    pub fn heartbeat(&self, session: &Session) {
        let mut st = self.lock();
        if let Some(w) = st.workers.get_mut(&session.worker)
            && w.session == session.id
        {
            w.last_seen = now_instant();
            w.last_seen_ms = now_ms();
        }
    }

    /// A heartbeat: the worker is alive, and says whether it drains and whether its Docker daemon
    /// answers. A draining or unhealthy worker gets no new job.
    pub fn health(&self, session: &Session, health: WorkerHealth) {
        let mut st = self.lock();
        let Some(w) = st
            .workers
            .get_mut(&session.worker)
            .filter(|w| w.session == session.id)
        else {
            return;
        };
        w.last_seen = now_instant();
        w.last_seen_ms = now_ms();
        let name = session.worker.as_str();
        let before = st
            .scheduler
            .status(name)
            .expect("attached workers are scheduled");
        if health.draining && !before.draining {
            tracing::info!(worker = %name, "worker drains: no new job goes to it");
            st.scheduler.drain_worker(name);
        }
        if health.unhealthy != before.unhealthy {
            match &health.unhealthy {
                Some(reason) => {
                    tracing::warn!(worker = %name, %reason, "worker unhealthy: no job goes to it")
                }
                None => tracing::info!(worker = %name, "worker healthy again"),
            }
            st.scheduler.set_unhealthy(name, health.unhealthy);
        }
        // A worker that refused an assignment is asked again only after it said how it is.
        st.scheduler.release(name);
        self.dispatch(&mut st);
        self.flush(&mut st, None);
    }

    /// The worker acknowledged an assignment. A late acknowledgement of an attempt that is no
    /// longer current (requeued after the deadline, or its build ended) is answered with a cancel.
    pub fn accepted(&self, session: &Session, job: JobId, attempt: u32) {
        self.heartbeat(session);
        let mut st = self.lock();
        let Some(entry) = current_job(&mut st, job, attempt) else {
            tracing::info!(%job, attempt, worker = %session.worker, "cancelling an acknowledged attempt that is no longer current");
            if let Some(tx) = session_tx(&st, session) {
                st.outbox.push((tx, ToWorker::Cancel { job, attempt }));
            }
            self.flush(&mut st, None);
            return;
        };
        let j = job_mut(&mut entry.build, job);
        if j.state == JobState::Assigned {
            j.state = JobState::Running;
            let ev = EventKind::JobState {
                platform: j.platform.clone(),
                state: JobState::Running,
                worker: j.worker.clone(),
                attempt,
                message: String::new(),
            };
            if entry.build.state == BuildState::Queued {
                entry.build.state = BuildState::Running;
            }
            record(entry, ev);
        }
        if let Some(live) = st.live.get_mut(&job).filter(|l| l.attempt == attempt) {
            live.accepted = true;
            live.last_progress = now_instant();
        }
        self.flush(&mut st, None);
    }

    /// Output lines of an attempt; they also show the attempt is not stuck.
    pub fn log(&self, session: &Session, job: JobId, attempt: u32, lines: Vec<String>) {
        self.heartbeat(session);
        let mut st = self.lock();
        let Some(entry) = current_job(&mut st, job, attempt) else {
            return;
        };
        let platform = job_mut(&mut entry.build, job).platform.clone();
        for line in lines {
            let j = job_mut(&mut entry.build, job);
            if j.log_tail.len() == LOG_TAIL_LINES {
                j.log_tail.pop_front();
            }
            j.log_tail.push_back(line.clone());
            if entry.events.len() < MAX_LOG_EVENTS {
                record(
                    entry,
                    EventKind::Log {
                        platform: platform.clone(),
                        line,
                    },
                );
            }
        }
        if let Some(live) = st.live.get_mut(&job).filter(|l| l.attempt == attempt) {
            live.last_progress = now_instant();
        }
        self.flush(&mut st, None);
    }

    /// An attempt ended. The result of an attempt that is no longer current changes nothing.
    pub fn result(&self, session: &Session, job: JobId, attempt: u32, outcome: JobOutcome) {
        self.heartbeat(session);
        let mut st = self.lock();
        let Some(entry) = current_job(&mut st, job, attempt) else {
            tracing::info!(%job, attempt, worker = %session.worker, "ignoring the result of an attempt that is no longer current");
            self.flush(&mut st, None);
            return;
        };
        let build_id = entry.build.id;
        match outcome {
            JobOutcome::Pushed {
                digest,
                size,
                media_type,
            } => {
                let j = job_mut(&mut entry.build, job);
                let platform = j.platform.clone();
                j.state = JobState::Succeeded;
                j.image = Some(ChildImage {
                    platform: platform.clone(),
                    digest: digest.clone(),
                    size,
                    media_type,
                });
                let ev = EventKind::JobState {
                    platform: platform.clone(),
                    state: JobState::Succeeded,
                    worker: j.worker.clone(),
                    attempt,
                    message: digest,
                };
                record(entry, ev);
                // This worker's layer cache is now warm for the image's next build there.
                let warm_key = (entry.build.spec.repository(), platform);
                if entry
                    .build
                    .jobs
                    .iter()
                    .all(|j| j.state == JobState::Succeeded)
                {
                    let build = entry.build.clone();
                    self.spawn_publish(&mut st, build_id, build);
                }
                st.warm.insert(warm_key, session.worker.clone());
                self.attempt_over(&mut st, job);
                st.refusals.remove(&job);
            }
            JobOutcome::Failed {
                message,
                retryable,
                cancelled,
                refused,
            } => {
                let j = job_mut(&mut entry.build, job);
                let worker = j.worker.clone().unwrap_or_default();
                let platform = j.platform.clone();
                self.attempt_over(&mut st, job);
                if refused && !cancelled {
                    // Never started: requeued without counting, and the worker is not asked again
                    // before its next heartbeat says how it is.
                    *st.refusals.entry(job).or_default() += 1;
                    st.scheduler.hold(&worker);
                    self.requeue(
                        &mut st,
                        build_id,
                        job,
                        &format!("worker {worker} did not take it: {message}"),
                    );
                } else if retryable && !cancelled {
                    self.retry_or_give_up(&mut st, build_id, job, &message);
                } else {
                    let j = job_mut(&mut st.builds.get_mut(&build_id).unwrap().build, job);
                    let line = format!("attempt {attempt} on {worker}: {message}");
                    j.error = Some(match j.error.take() {
                        Some(prev) => format!("{prev}\n{line}"),
                        None => line,
                    });
                    let error = if cancelled {
                        format!("{platform} was cancelled on worker {worker}")
                    } else {
                        format!("{platform} failed on worker {worker}: {message}")
                    };
                    self.end_build(
                        &mut st,
                        build_id,
                        BuildState::Failed,
                        Some(error),
                        Some((job, platform)),
                    );
                }
            }
        }
        self.dispatch(&mut st);
        self.flush(&mut st, None);
    }

    /// The worker's stream ended (or it said goodbye). Its jobs wait for it for the worker lease.
    pub fn detach(&self, session: &Session) {
        let mut st = self.lock();
        if st
            .workers
            .get(&session.worker)
            .is_none_or(|w| w.session != session.id)
        {
            return;
        }
        st.workers.remove(&session.worker);
        let jobs = st.scheduler.remove_worker(&session.worker);
        let deadline = now_instant() + self.inner.config.worker_lease;
        for job in jobs {
            if let Some(attempt) = attempt_of(&st, job) {
                st.orphans.insert(job, (attempt, deadline));
            }
        }
        tracing::info!(worker = %session.worker, "worker detached");
        self.dispatch(&mut st);
        self.flush(&mut st, None);
    }

    /// The worker announced it drains: no new job goes to it.
    pub fn draining(&self, session: &Session) {
        let mut st = self.lock();
        if st
            .workers
            .get(&session.worker)
            .is_some_and(|w| w.session == session.id)
        {
            st.scheduler.drain_worker(&session.worker);
        }
        self.flush(&mut st, None);
    }

    /// Periodic housekeeping at time `now`: silent workers are declared lost, orphaned jobs whose
    /// worker did not return are requeued, unacknowledged and stuck attempts are cancelled and
    /// requeued, builds past their timeout fail, starved jobs fail.
    pub fn tick(&self, now: Instant) {
        let mut st = self.lock();
        let config = self.inner.config.clone();
        let silent: Vec<String> = st
            .workers
            .values()
            .filter(|w| now.saturating_duration_since(w.last_seen) > config.worker_lease)
            .map(|w| w.hello.name.clone())
            .collect();
        for name in silent {
            tracing::warn!(worker = %name, "worker silent for longer than its lease; declaring it lost");
            // Dropping its channel closes its stream: a worker that was only cut off reconnects
            // and restates its jobs, and hears then that they moved on.
            st.workers.remove(&name);
            for job in st.scheduler.remove_worker(&name) {
                if let Some(attempt) = attempt_of(&st, job) {
                    st.orphans.insert(job, (attempt, now));
                }
            }
        }
        let expired: Vec<(JobId, u32)> = st
            .orphans
            .iter()
            .filter(|(_, (_, deadline))| now >= *deadline)
            .map(|(job, (attempt, _))| (*job, *attempt))
            .collect();
        for (job, attempt) in expired {
            st.orphans.remove(&job);
            self.attempt_failed(&mut st, job, attempt, "worker lost");
        }
        let mut overdue = Vec::new();
        for (job, live) in &st.live {
            if !live.accepted
                && now.saturating_duration_since(live.assigned_at) >= config.assign_timeout
            {
                let cause = format!(
                    "the worker did not acknowledge the assignment within {}",
                    human_duration(config.assign_timeout)
                );
                overdue.push((*job, live.attempt, cause));
            } else if live.accepted
                && now.saturating_duration_since(live.last_progress) >= config.stuck_after
            {
                let cause = format!(
                    "no output for {}: treated as stuck (raise --stuck-after for steps that are silent longer)",
                    human_duration(config.stuck_after)
                );
                overdue.push((*job, live.attempt, cause));
            }
        }
        for (job, attempt, cause) in overdue {
            st.live.remove(&job);
            self.attempt_failed(&mut st, job, attempt, &cause);
        }
        let wall = now_ms();
        let timed_out: Vec<BuildId> = st
            .deadlines
            .iter()
            .filter(|(_, deadline)| wall >= **deadline)
            .map(|(id, _)| *id)
            .collect();
        for id in timed_out {
            st.deadlines.remove(&id);
            let build = &st.builds[&id].build;
            // A build whose platforms all succeeded is pushing its list: that ends it either way.
            if build.state.is_final() || build.jobs.iter().all(|j| j.state == JobState::Succeeded) {
                continue;
            }
            let error = build.timeout_error();
            tracing::warn!(build = %id, %error, "build timed out");
            self.end_build(&mut st, id, BuildState::Failed, Some(error), None);
        }
        for p in st.scheduler.preemptions(now) {
            self.preempt(&mut st, &p);
        }
        let wait = config.wait_for_workers;
        for (job, platform) in st.scheduler.starved(now, wait) {
            let Some(build_id) = st.job_build.get(&job).copied() else {
                continue;
            };
            let unable: Vec<String> = st
                .workers
                .values()
                .filter(|w| w.hello.platforms.contains(&platform))
                .filter_map(|w| {
                    let status = st.scheduler.status(&w.hello.name)?;
                    Some(format!("{} is {}", w.hello.name, status_text(&status)))
                })
                .collect();
            let error = if unable.is_empty() {
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
            };
            self.end_build(
                &mut st,
                build_id,
                BuildState::Failed,
                Some(error),
                Some((job, platform)),
            );
        }
        self.dispatch(&mut st);
        self.flush(&mut st, None);
    }

    /// Cancelled when this farm's term ends.
    pub fn stopped(&self) -> CancellationToken {
        self.inner.term.clone()
    }

    /// Runs [`Farm::tick`] every `period` until the term ends.
    async fn run_ticks(&self, period: Duration) {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let term = self.inner.term.clone();
        loop {
            tokio::select! {
                _ = term.cancelled() => return,
                _ = interval.tick() => self.tick(now_instant()),
            }
        }
    }

    /// Takes a borrowed job off its owner's worker: the attempt is cancelled there and the job
    /// goes back to the queue in its old place, without the attempt counting.
    fn preempt(&self, st: &mut State, p: &crate::scheduler::Preemption) {
        let Some(build_id) = st.job_build.get(&p.job).copied() else {
            return;
        };
        let Some(attempt) = attempt_of(st, p.job) else {
            return;
        };
        if !st.scheduler.preempt(p.job) {
            return;
        }
        st.live.remove(&p.job);
        st.orphans.remove(&p.job);
        // Counted like a refusal: the job did not fail, the farm took its slot back.
        *st.refusals.entry(p.job).or_default() += 1;
        if let Some(tx) = st.workers.get(&p.worker).map(|w| w.tx.clone()) {
            st.outbox.push((
                tx,
                ToWorker::Cancel {
                    job: p.job,
                    attempt,
                },
            ));
        }
        let entry = st.builds.get_mut(&build_id).expect("job's build exists");
        let j = job_mut(&mut entry.build, p.job);
        j.state = JobState::Queued;
        let ev = EventKind::JobState {
            platform: j.platform.clone(),
            state: JobState::Queued,
            worker: None,
            attempt,
            message: format!(
                "preempted: worker {} belongs to team {}, whose job waited past the grace period; requeued without counting the attempt",
                p.worker, p.team
            ),
        };
        record(entry, ev);
        tracing::info!(build = %build_id, job = %p.job, worker = %p.worker, owner = %p.team, "borrowed job preempted");
    }

    /// Forgets the timers and the slot of `job`'s attempt, which is over.
    fn attempt_over(&self, st: &mut State, job: JobId) {
        st.live.remove(&job);
        st.orphans.remove(&job);
        st.scheduler.finished(job);
    }

    /// The coordinator gives up on attempt `attempt` of `job` (worker lost, no acknowledgement,
    /// stuck): its worker, if attached, is told to stop it, the attempt counts, and the job is
    /// requeued while attempts remain. Nothing happens when that attempt is no longer out.
    fn attempt_failed(&self, st: &mut State, job: JobId, attempt: u32, cause: &str) {
        let Some(build_id) = st.job_build.get(&job).copied() else {
            return;
        };
        let Some(j) = st
            .builds
            .get(&build_id)
            .filter(|e| !e.build.state.is_final())
            .and_then(|e| e.build.jobs.iter().find(|j| j.id == job))
        else {
            return;
        };
        if j.attempt != attempt || !matches!(j.state, JobState::Assigned | JobState::Running) {
            return;
        }
        let worker = j.worker.clone();
        tracing::warn!(build = %build_id, %job, attempt, worker = ?worker, cause, "attempt failed");
        self.attempt_over(st, job);
        if let Some(tx) = worker
            .as_ref()
            .and_then(|w| st.workers.get(w))
            .map(|w| w.tx.clone())
        {
            st.outbox.push((tx, ToWorker::Cancel { job, attempt }));
        }
        self.retry_or_give_up(st, build_id, job, cause);
    }

    /// Records `cause` as the end of `job`'s current attempt (an infrastructure failure), then
    /// requeues the job while attempts remain, else fails its build with every attempt listed.
    fn retry_or_give_up(&self, st: &mut State, build_id: BuildId, job: JobId, cause: &str) {
        let allowed = self.inner.config.attempts_allowed();
        let refused = st.refusals.get(&job).copied().unwrap_or_default();
        let entry = st.builds.get_mut(&build_id).expect("job's build exists");
        let j = job_mut(&mut entry.build, job);
        let worker = j.worker.clone().unwrap_or_default();
        let line = format!("attempt {} on {worker}: {cause}", j.attempt);
        j.error = Some(match j.error.take() {
            Some(prev) => format!("{prev}\n{line}"),
            None => line.clone(),
        });
        let counted = j.attempt.saturating_sub(refused);
        if counted < allowed {
            self.requeue(st, build_id, job, &line);
        } else {
            let platform = j.platform.clone();
            let error = j.give_up_error(counted);
            self.end_build(
                st,
                build_id,
                BuildState::Failed,
                Some(error),
                Some((job, platform)),
            );
        }
    }

    fn requeue(&self, st: &mut State, build_id: BuildId, job: JobId, why: &str) {
        let entry = st.builds.get_mut(&build_id).expect("job's build exists");
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
        record(entry, ev);
        st.live.remove(&job);
        st.orphans.remove(&job);
        st.scheduler.finished(job);
        let meta = job_meta(&st.builds[&build_id].build, &platform, &st.warm);
        st.scheduler.enqueue_job(job, platform, meta, now_instant());
    }

    /// Ends a build: stops every unfinished job (except `failed`, which is marked failed), records the
    /// final event. No tag is written by a build that ends here unless `state` is Succeeded.
    fn end_build(
        &self,
        st: &mut State,
        build_id: BuildId,
        state: BuildState,
        error: Option<String>,
        failed: Option<(JobId, Platform)>,
    ) {
        let mut to_cancel = Vec::new();
        st.secrets.remove(&build_id);
        {
            let entry = st.builds.get_mut(&build_id).expect("build exists");
            if entry.build.state.is_final() {
                return;
            }
            let mut events = Vec::new();
            for j in &mut entry.build.jobs {
                if j.state.is_final() {
                    continue;
                }
                let is_failed = failed.as_ref().is_some_and(|(id, _)| *id == j.id);
                if matches!(j.state, JobState::Assigned | JobState::Running) {
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
                record(entry, ev);
            }
            entry.build.state = state;
            entry.build.error = error.clone();
            entry.build.finished_at_ms = Some(now_ms());
            record(
                entry,
                EventKind::Finished {
                    state,
                    manifest_digest: None,
                    error,
                },
            );
            tracing::info!(build = %build_id, ?state, "build ended");
        }
        st.deadlines.remove(&build_id);
        if let Some(publishing) = st.publishing.remove(&build_id) {
            publishing.cancel();
        }
        let jobs: Vec<JobId> = st.builds[&build_id]
            .build
            .jobs
            .iter()
            .map(|j| j.id)
            .collect();
        for job in jobs {
            st.scheduler.finished(job);
            st.orphans.remove(&job);
            st.live.remove(&job);
            st.refusals.remove(&job);
        }
        for (job, attempt, worker) in to_cancel {
            if let Some(tx) = worker
                .and_then(|w| st.workers.get(&w))
                .map(|w| w.tx.clone())
            {
                st.outbox.push((tx, ToWorker::Cancel { job, attempt }));
            }
        }
    }

    /// Hands queued jobs to workers with free slots.
    fn dispatch(&self, st: &mut State) {
        let now = now_instant();
        for a in st.scheduler.assign() {
            let Some(build_id) = st.job_build.get(&a.job).copied() else {
                st.scheduler.finished(a.job);
                continue;
            };
            let insecure = {
                let entry = &st.builds[&build_id];
                self.inner
                    .config
                    .registry
                    .is_insecure(entry.build.spec.image.registry())
            };
            let entry = st.builds.get_mut(&build_id).expect("job's build exists");
            let spec = entry.build.spec.clone();
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
                secrets: st.secrets.get(&build_id).cloned().unwrap_or_default(),
            };
            let ev = EventKind::JobState {
                platform: j.platform.clone(),
                state: JobState::Assigned,
                worker: Some(a.worker.clone()),
                attempt: j.attempt,
                message: String::new(),
            };
            record(entry, ev);
            tracing::info!(build = %build_id, job = %a.job, worker = %a.worker, attempt = job_spec.attempt, "job assigned");
            st.live.insert(
                a.job,
                LiveAttempt {
                    attempt: job_spec.attempt,
                    assigned_at: now,
                    accepted: false,
                    last_progress: now,
                },
            );
            if let Some(tx) = st.workers.get(&a.worker).map(|w| w.tx.clone()) {
                // Sent once "assigned" is durable. A closed channel means the stream is ending;
                // detach then hands the job back.
                st.outbox.push((tx, ToWorker::Assign(Box::new(job_spec))));
            }
        }
    }

    /// Pushes the list of a build whose platforms all succeeded, in its own task. Ending the build
    /// meanwhile (a cancel) stops the push where it is, so no tag is written after the cancel.
    fn spawn_publish(&self, st: &mut State, build_id: BuildId, build: Build) {
        let farm = self.clone();
        let stop = self.inner.term.child_token();
        st.publishing.insert(build_id, stop.clone());
        // Every job is built: no worker needs the secrets any more.
        st.secrets.remove(&build_id);
        let span = tracing::info_span!("publish", build = %build_id);
        self.inner.tasks.spawn(tracing::Instrument::instrument(
            async move {
                let children: Vec<ChildImage> =
                    build.jobs.iter().filter_map(|j| j.image.clone()).collect();
                let template = build.spec.arch_tags.then(|| {
                    build
                        .spec
                        .arch_tag_template
                        .as_deref()
                        .and_then(|t| registry::tag_template::TagTemplate::parse(t).ok())
                        .unwrap_or_default()
                });
                let publish = registry::publish_with(
                    &farm.inner.config.registry,
                    &build.spec.image,
                    &children,
                    template.as_ref(),
                );
                tokio::select! {
                    result = publish => farm.published(build_id, result),
                    _ = stop.cancelled() => {
                        tracing::info!("manifest list push stopped: the build ended (or this coordinator stepped down)");
                    }
                }
            },
            span,
        ));
    }

    fn published(
        &self,
        build_id: BuildId,
        result: Result<registry::Published, registry::RegistryError>,
    ) {
        let mut st = self.lock();
        st.deadlines.remove(&build_id);
        st.publishing.remove(&build_id);
        let Some(entry) = st.builds.get_mut(&build_id) else {
            return;
        };
        if entry.build.state.is_final() {
            // Cancelled while publishing: the list may have been written; say so.
            tracing::warn!(build = %build_id, "build ended while its manifest list was being pushed");
            return;
        }
        match result {
            Ok(p) => {
                entry.build.state = BuildState::Succeeded;
                entry.build.manifest = Some((p.digest.clone(), p.media_type.to_owned()));
                entry.build.finished_at_ms = Some(now_ms());
                tracing::info!(build = %build_id, digest = %p.digest, "manifest list pushed");
                record(
                    entry,
                    EventKind::Finished {
                        state: BuildState::Succeeded,
                        manifest_digest: Some(p.digest),
                        error: None,
                    },
                );
            }
            Err(e) => {
                let error = format!(
                    "every platform was built, but pushing the manifest list to {} failed: {e}",
                    entry.build.spec.image
                );
                self.end_build(&mut st, build_id, BuildState::Failed, Some(error), None);
            }
        }
        self.flush(&mut st, None);
    }
}

/// Applies batches in order: each build record is written (retrying backend errors with backoff),
/// then the batch's worker messages are sent. A fenced write means another coordinator leads now:
/// nothing more is written or sent, and the term is cancelled so the coordinator steps down.
async fn write_loop(
    store: Arc<dyn StateStore>,
    mut batches: mpsc::UnboundedReceiver<Batch>,
    term: CancellationToken,
) {
    loop {
        let batch = tokio::select! {
            b = batches.recv() => match b {
                Some(b) => b,
                None => return,
            },
            _ = term.cancelled() => return,
        };
        let mut outcome = Ok(());
        for build in &batch.builds {
            let mut delay = Duration::from_millis(100);
            loop {
                match store.save(build).await {
                    Ok(()) => break,
                    Err(StoreError::Stale {
                        id,
                        stored,
                        attempted,
                    }) => {
                        // A newer record is already there (a replay after an ambiguous write).
                        tracing::debug!(build = %id, stored, attempted, "skipping a stale write");
                        break;
                    }
                    Err(e @ StoreError::Fenced(_)) => {
                        tracing::error!(error = %e, "state write rejected; stepping down");
                        term.cancel();
                        if let Some(done) = batch.done {
                            let _ = done.send(Err(e));
                        }
                        return;
                    }
                    Err(e) if delay <= Duration::from_secs(5) => {
                        tracing::warn!(build = %build.id, error = %e, "state write failed; retrying");
                        tokio::time::sleep(delay).await;
                        delay *= 2;
                    }
                    Err(e) => {
                        tracing::error!(build = %build.id, error = %e, "state write failed");
                        outcome = Err(e);
                        break;
                    }
                }
            }
        }
        for (tx, msg) in batch.messages {
            let _ = tx.send(msg);
        }
        if let Some(done) = batch.done {
            let _ = done.send(outcome);
        }
    }
}

async fn durable(rx: oneshot::Receiver<Result<(), StoreError>>) -> Result<(), FarmError> {
    rx.await
        .unwrap_or_else(|_| Err(StoreError::Backend("the state writer has stopped".into())))?;
    Ok(())
}

fn now_instant() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Appends an event; every event but a log line is a state transition to persist.
fn record(entry: &mut BuildEntry, kind: EventKind) {
    if !matches!(kind, EventKind::Log { .. }) {
        entry.dirty = true;
    }
    let sequence = entry.events.len() as u64;
    entry.events.push(Event {
        sequence,
        at_ms: now_ms(),
        kind,
    });
    entry.notify.send_replace(entry.events.len());
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

/// `ready`, `draining`, `unhealthy: REASON`, or both of the last two.
fn status_text(status: &WorkerStatus) -> String {
    match (status.draining, &status.unhealthy) {
        (false, None) => "ready".into(),
        (true, None) => "draining".into(),
        (false, Some(reason)) => format!("unhealthy: {reason}"),
        (true, Some(reason)) => format!("draining, unhealthy: {reason}"),
    }
}

fn worker_view(st: &State, w: &WorkerConn) -> WorkerView {
    let status = st.scheduler.status(&w.hello.name);
    WorkerView {
        name: w.hello.name.clone(),
        platforms: w.hello.platforms.clone(),
        emulated: w.hello.emulated,
        slots: w.hello.slots,
        slots_in_use: st.scheduler.slots_in_use(&w.hello.name),
        last_heartbeat_ms: w.last_seen_ms,
        connected_at_ms: w.connected_at_ms,
        docker_version: w.hello.docker_version.clone(),
        labels: w.hello.labels.clone(),
        draining: status.as_ref().is_some_and(|s| s.draining),
        unhealthy: status.and_then(|s| s.unhealthy),
        owner: w.hello.owner.clone(),
    }
}

/// The channel of the worker of `session`, while that session is its current one.
fn session_tx(st: &State, session: &Session) -> Option<mpsc::UnboundedSender<ToWorker>> {
    st.workers
        .get(&session.worker)
        .filter(|w| w.session == session.id)
        .map(|w| w.tx.clone())
}

fn job_ref(st: &State, job: JobId) -> Option<&Job> {
    let build_id = st.job_build.get(&job)?;
    st.builds
        .get(build_id)?
        .build
        .jobs
        .iter()
        .find(|j| j.id == job)
}

/// The worker of `job`'s current (or last) attempt.
fn worker_of(st: &State, job: JobId) -> Option<String> {
    job_ref(st, job)?.worker.clone()
}

/// `job`'s current attempt number.
fn attempt_of(st: &State, job: JobId) -> Option<u32> {
    job_ref(st, job).map(|j| j.attempt)
}

/// The build entry of `job` when `attempt` is its current attempt and out on a worker (assigned
/// or running). A requeued job keeps its last attempt number until it is assigned again: news of
/// that attempt is stale too.
fn current_job(st: &mut State, job: JobId, attempt: u32) -> Option<&mut BuildEntry> {
    let build_id = st.job_build.get(&job).copied()?;
    let entry = st.builds.get_mut(&build_id)?;
    let j = entry.build.jobs.iter().find(|j| j.id == job)?;
    let out = matches!(j.state, JobState::Assigned | JobState::Running);
    (j.attempt == attempt && out && !entry.build.state.is_final()).then_some(entry)
}
