//! The farm: builds, their jobs, the attached workers, and every transition between them.
//!
//! One mutex guards the whole state; every method takes it briefly, decides with the pure
//! [`Scheduler`], records events, and sends messages to workers through their unbounded channels.
//! No I/O happens under the lock except channel sends; publishing a finished build's manifest list
//! runs in its own task.
//!
//! Invariants:
//! - a job has at most one live attempt; messages about any other attempt are ignored;
//! - a build's tag is written only after every job succeeded (see `manifold_registry::publish`);
//! - a build's last event is `Finished`, and nothing is recorded after it;
//! - a worker that disconnects keeps its jobs for `worker_lease`: a reconnect that restates them adopts
//!   them; otherwise they are requeued, the attempt counted;
//! - every state transition is written to the [`StateStore`] before the worker messages it causes
//!   are sent ("assigned" is durable before the assignment leaves), and a submitted build is durable
//!   before its id is returned. One writer task applies the writes in order.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use manifold_proto::{BuildId, JobId, Platform};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::build::{
    Build, BuildRequest, BuildSpec, BuildState, Event, EventKind, InvalidRequest, Job, JobState,
    LOG_TAIL_LINES, now_ms,
};
use crate::contexts::ContextStore;
use crate::scheduler::{Scheduler, WorkerCaps};
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
    /// How often workers heartbeat.
    pub heartbeat_interval: Duration,
    /// Attempts per job before it fails (infrastructure failures only; build failures never retry).
    pub max_attempts: u32,
    /// Registry access.
    pub registry: RegistryConfig,
}

impl Default for FarmConfig {
    fn default() -> Self {
        Self {
            wait_for_workers: Duration::from_secs(120),
            worker_lease: Duration::from_secs(15),
            heartbeat_interval: Duration::from_secs(5),
            max_attempts: 3,
            registry: RegistryConfig::default(),
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
    /// Jobs of workers that went away, with the deadline for their return.
    orphans: HashMap<JobId, Instant>,
    next_session: u64,
    /// Worker messages waiting for the current operation's writes.
    outbox: Vec<(mpsc::UnboundedSender<ToWorker>, ToWorker)>,
}

struct BuildEntry {
    build: Build,
    events: Vec<Event>,
    /// Number of events recorded; watchers wait on changes.
    notify: watch::Sender<usize>,
    /// Changed since the last write to the store.
    dirty: bool,
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
                        JobState::Queued => st.scheduler.enqueue(j.id, j.platform.clone(), now),
                        JobState::Assigned | JobState::Running => {
                            st.orphans
                                .insert(j.id, now + farm.inner.config.worker_lease);
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
            farm.spawn_publish(build.id, build);
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

    /// Validates and queues a build; returns its id once the build is durable.
    pub async fn submit(&self, request: BuildRequest) -> Result<BuildId, FarmError> {
        let contexts = self.inner.contexts.clone();
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
            for j in &jobs {
                st.job_build.insert(j.id, id);
                st.scheduler.enqueue(j.id, j.platform.clone(), now);
            }
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
                    },
                    events: Vec::new(),
                    notify,
                    dirty: true,
                },
            );
            st.order.push(id);
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
            tracing::info!(build = %id, "build submitted");
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

    /// The newest `limit` builds, newest first.
    pub fn list(&self, limit: usize) -> Vec<Build> {
        let st = self.lock();
        st.order
            .iter()
            .rev()
            .take(limit)
            .filter_map(|id| st.builds.get(id).map(|e| e.build.clone()))
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

    /// The attached workers.
    pub fn workers(&self) -> Vec<WorkerView> {
        let st = self.lock();
        st.workers
            .values()
            .map(|w| WorkerView {
                name: w.hello.name.clone(),
                platforms: w.hello.platforms.clone(),
                emulated: w.hello.emulated,
                slots: w.hello.slots,
                slots_in_use: st.scheduler.slots_in_use(&w.hello.name),
                last_heartbeat_ms: w.last_seen_ms,
                connected_at_ms: w.connected_at_ms,
                docker_version: w.hello.docker_version.clone(),
                labels: w.hello.labels.clone(),
            })
            .collect()
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

        // Adopt the restated jobs that are still current; tell the worker to drop the others.
        let mut adopted = Vec::new();
        for (job, attempt) in &hello.running {
            let current = st
                .job_build
                .get(job)
                .and_then(|b| st.builds.get(b))
                .and_then(|e| e.build.jobs.iter().find(|j| j.id == *job))
                .is_some_and(|j| j.attempt == *attempt && !j.state.is_final());
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
                let j = entry
                    .build
                    .jobs
                    .iter_mut()
                    .find(|j| j.id == *job)
                    .expect("job exists");
                j.worker = Some(hello.name.clone());
                let (platform, attempt) = (j.platform.clone(), j.attempt);
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
            }
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
        tracing::info!(
            worker = %hello.name,
            platforms = ?hello.platforms.iter().map(ToString::to_string).collect::<Vec<_>>(),
            emulated = hello.emulated,
            slots = hello.slots,
            "worker attached"
        );
        st.workers.insert(
            hello.name.clone(),
            WorkerConn {
                session: session.id,
                tx,
                hello,
                connected_at_ms: now_ms(),
                last_seen: now_instant(),
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

    /// The worker acknowledged an assignment.
    pub fn accepted(&self, session: &Session, job: JobId, attempt: u32) {
        self.heartbeat(session);
        let mut st = self.lock();
        let Some(entry) = current_job(&mut st, job, attempt) else {
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
            self.flush(&mut st, None);
        }
    }

    /// Output lines of an attempt.
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
    }

    /// An attempt ended.
    pub fn result(&self, session: &Session, job: JobId, attempt: u32, outcome: JobOutcome) {
        self.heartbeat(session);
        let mut st = self.lock();
        st.scheduler.finished(job);
        let Some(entry) = current_job(&mut st, job, attempt) else {
            tracing::info!(%job, attempt, "ignoring the result of an attempt that is no longer current");
            self.dispatch(&mut st);
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
                j.state = JobState::Succeeded;
                j.image = Some(ChildImage {
                    platform: j.platform.clone(),
                    digest: digest.clone(),
                    size,
                    media_type,
                });
                let ev = EventKind::JobState {
                    platform: j.platform.clone(),
                    state: JobState::Succeeded,
                    worker: j.worker.clone(),
                    attempt,
                    message: digest,
                };
                record(entry, ev);
                if entry
                    .build
                    .jobs
                    .iter()
                    .all(|j| j.state == JobState::Succeeded)
                {
                    self.spawn_publish(build_id, entry.build.clone());
                }
            }
            JobOutcome::Failed {
                message,
                retryable,
                cancelled,
            } => {
                let max = self.inner.config.max_attempts;
                let j = job_mut(&mut entry.build, job);
                let worker = j.worker.clone().unwrap_or_default();
                let line = format!("attempt {attempt} on {worker}: {message}");
                j.error = Some(match j.error.take() {
                    Some(prev) => format!("{prev}\n{line}"),
                    None => line,
                });
                if retryable && !cancelled && attempt < max {
                    self.requeue(&mut st, build_id, job, &message);
                } else {
                    let platform = job_mut(&mut st.builds.get_mut(&build_id).unwrap().build, job)
                        .platform
                        .clone();
                    let error = if cancelled {
                        format!("{platform} was cancelled on worker {worker}")
                    } else if retryable {
                        format!("{platform} failed after {attempt} attempts: {message}")
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
            st.orphans.insert(job, deadline);
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
    }

    /// Periodic housekeeping at time `now`: starved jobs fail, silent workers are dropped, orphaned
    /// jobs whose worker did not return are requeued.
    pub fn tick(&self, now: Instant) {
        let mut st = self.lock();
        let lease = self.inner.config.worker_lease;
        let silent: Vec<String> = st
            .workers
            .values()
            .filter(|w| now.saturating_duration_since(w.last_seen) > lease)
            .map(|w| w.hello.name.clone())
            .collect();
        for name in silent {
            tracing::warn!(worker = %name, "worker silent for longer than its lease; declaring it lost");
            st.workers.remove(&name);
            for job in st.scheduler.remove_worker(&name) {
                st.orphans.insert(job, now);
            }
        }
        let expired: Vec<JobId> = st
            .orphans
            .iter()
            .filter(|(_, deadline)| now >= **deadline)
            .map(|(job, _)| *job)
            .collect();
        for job in expired {
            st.orphans.remove(&job);
            let Some(build_id) = st.job_build.get(&job).copied() else {
                continue;
            };
            let entry = st.builds.get_mut(&build_id).expect("job's build exists");
            let j = job_mut(&mut entry.build, job);
            if j.state.is_final() {
                continue;
            }
            let worker = j.worker.clone().unwrap_or_default();
            let attempt = j.attempt;
            let message = format!("worker {worker} was lost");
            let line = format!("attempt {attempt} on {worker}: worker lost");
            j.error = Some(match j.error.take() {
                Some(prev) => format!("{prev}\n{line}"),
                None => line,
            });
            if attempt < self.inner.config.max_attempts {
                self.requeue(&mut st, build_id, job, &message);
            } else {
                let platform = j.platform.clone();
                let error = format!(
                    "{platform} failed after {attempt} attempts: {}",
                    j.error.clone().unwrap_or_default()
                );
                self.end_build(
                    &mut st,
                    build_id,
                    BuildState::Failed,
                    Some(error),
                    Some((job, platform)),
                );
            }
        }
        let wait = self.inner.config.wait_for_workers;
        for (job, platform) in st.scheduler.starved(now, wait) {
            let Some(build_id) = st.job_build.get(&job).copied() else {
                continue;
            };
            let error = format!(
                "no worker for {platform} attached within {}s: start a manifold-worker whose Docker daemon builds {platform} (or one with --platform {platform}); `manifold workers` lists the attached ones",
                wait.as_secs()
            );
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
        st.scheduler.finished(job);
        st.scheduler.enqueue(job, platform, now_instant());
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
                    } else {
                        "cancelled because another platform failed".into()
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
        for job in st.builds[&build_id].build.jobs.iter().map(|j| j.id) {
            st.scheduler.finished(job);
            st.orphans.remove(&job);
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
            if let Some(tx) = st.workers.get(&a.worker).map(|w| w.tx.clone()) {
                // Sent once "assigned" is durable. A closed channel means the stream is ending;
                // detach then hands the job back.
                st.outbox.push((tx, ToWorker::Assign(Box::new(job_spec))));
            }
        }
    }

    fn spawn_publish(&self, build_id: BuildId, build: Build) {
        let farm = self.clone();
        let span = tracing::info_span!("publish", build = %build_id);
        self.inner.tasks.spawn(tracing::Instrument::instrument(
            async move {
                let children: Vec<ChildImage> =
                    build.jobs.iter().filter_map(|j| j.image.clone()).collect();
                let result = registry::publish(
                    &farm.inner.config.registry,
                    &build.spec.image,
                    &children,
                    build.spec.arch_tags,
                )
                .await;
                farm.published(build_id, result);
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

fn job_mut(build: &mut Build, job: JobId) -> &mut Job {
    build
        .jobs
        .iter_mut()
        .find(|j| j.id == job)
        .expect("job belongs to its build")
}

/// The build entry of `job` when `attempt` is its current, unfinished attempt.
fn current_job(st: &mut State, job: JobId, attempt: u32) -> Option<&mut BuildEntry> {
    let build_id = st.job_build.get(&job).copied()?;
    let entry = st.builds.get_mut(&build_id)?;
    let j = entry.build.jobs.iter().find(|j| j.id == job)?;
    (j.attempt == attempt && !j.state.is_final() && !entry.build.state.is_final()).then_some(entry)
}
