//! The farm: builds, their jobs, the attached workers, and every transition between them.
//!
//! Two halves:
//! - [`state::FarmState`], pure: every transition takes the time and returns [`state::Effects`];
//!   it holds every policy (leases, acknowledgements, stuck attempts, build timeouts, retries,
//!   preemption, scheduling through the pure [`crate::scheduler::Scheduler`]) and is table-tested
//!   at exact times. Its timers are in [`timers`], the retry rule in [`retry`].
//! - [`Farm`], the thin handle: one mutex over the state and the channels; it reads the clock,
//!   runs a transition, and applies its effects. It owns the ticker, the publish tasks, the
//!   writer task ([`writer`]) and the task that tells the state what the writer sent (so that the
//!   jobs held back by `max_unsent` are decided then); what it reads back from the store (logs,
//!   evicted builds) and the history pass are in [`reads`].
//!
//! Invariants of the handle:
//! - every state transition is written to the [`StateStore`] before the worker messages it causes
//!   are sent ("assigned" is durable before the assignment leaves), and a submitted build is durable
//!   before its id is returned. One writer task applies the writes in order;
//! - a build's tag is written only after every job succeeded (see `manifold_registry::publish`),
//!   and ending the build while its list is pushed (a cancel) stops that push;
//! - a message goes only to the session the state addressed: a worker that reattached meanwhile
//!   does not get its earlier session's messages.

mod catalog;
pub mod history;
mod publish_retry;
mod publisher;
mod reads;
mod retry;
pub mod reuse;
pub mod state;
mod timers;
mod workers;
mod writer;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use manifold_proto::{BuildFlags, BuildId, JobId, Platform, Secrets};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access::Caller;
use crate::build::{Build, BuildRequest, BuildSpec, Event, InvalidRequest, now_ms};
use crate::contexts::ContextStore;
use crate::paging::PageError;
use crate::scheduler::{QueuedJob, Team};
use crate::store::{StateStore, StoreError};
use manifold_registry::RegistryConfig;
pub use state::{Effects, FarmState, ImageCheck, Listed, Now, PublishFailure, Retired, Session};
pub use workers::{WorkerHealth, WorkerHello, WorkerView};
use writer::{Batch, durable, write_loop};

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
    /// How long a worker has to acknowledge an assignment, from when the writer sent it, before
    /// the job is requeued.
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
    /// Where each team may push, and the registry logins the farm uses for it.
    pub repositories: crate::repo_rules::RepoRules,
    /// How long a fully built build keeps retrying its list push after transient registry
    /// failures before it fails (its platforms kept for `manifold publish`); default 10 min.
    pub publish_window: Duration,
    /// How many finished builds stay in memory and for how long, and how long the store keeps
    /// them ([`history`]).
    pub history: history::HistoryPolicy,
    /// Assignments decided but not yet handed to their workers' streams (their records not yet
    /// durable), at most: beyond that, jobs wait in the queue and are decided once the writer
    /// catches up, so that no decision waits long for its write (it would go stale: a worker
    /// gone, a fairer pick since) and a burst does not pile messages up in the writer's queue.
    pub max_unsent: usize,
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
            repositories: Default::default(),
            publish_window: publish_retry::DEFAULT_WINDOW,
            history: Default::default(),
            max_unsent: DEFAULT_MAX_UNSENT,
        }
    }
}

/// The default [`FarmConfig::max_unsent`]. Measured with 1,000 workers x 4 slots attaching to
/// 10,000 queued jobs (docs/benchmarks.md): 64 kept decision-to-worker p99 at 65 ms with 2,369
/// assignments/s; 128 gave p99 149-165 ms, 512 388 ms, 2,048 705 ms, unbounded 1.8 s, for no
/// higher rate out of the noise.
pub const DEFAULT_MAX_UNSENT: usize = 64;

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
    /// Pause (`true`: keep the running jobs, take no new one) or resume (`false`).
    Pause(bool),
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
    /// The team's registry logins for the registries the job touches (from the config; memory only).
    pub registry_logins: Vec<manifold_registry::RegistryLogin>,
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
        /// Attestation manifests about it, checked like the image.
        attestations: Vec<manifold_registry::manifest::Attestation>,
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
    /// The team may not push there.
    #[error(transparent)]
    Forbidden(#[from] crate::repo_rules::RuleError),
    /// `manifold publish` of a build that did not fail at publishing.
    #[error("build {id} cannot be published again: {reason}")]
    NotPublishable {
        /// The build.
        id: BuildId,
        /// Why not, e.g. `it is running, not failed`.
        reason: String,
    },
    /// The state store refused or failed a write.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A page that cannot be made.
    #[error(transparent)]
    Page(#[from] PageError),
}

/// A handle to the farm; cheap to clone.
#[derive(Clone)]
pub struct Farm {
    inner: Arc<Inner>,
}

struct Inner {
    config: FarmConfig,
    contexts: ContextStore,
    shared: Mutex<Shared>,
    tasks: TaskTracker,
    writes: mpsc::UnboundedSender<Batch>,
    /// Where the writer writes; read for stored logs.
    store: Arc<dyn StateStore>,
    /// Assignments the writer has sent since the last tick.
    sent: writer::SentLog,
    /// Cancelled when this farm's term ends (shutdown, lost leadership, fenced write).
    term: CancellationToken,
    /// Counts the transitions applied: what a watcher of the workers waits on
    /// ([`Farm::transitions`]).
    transitions: watch::Sender<u64>,
}

/// The pure state and what the handle keeps beside it to apply its effects, under one lock so
/// that effects are applied in the order of the transitions that caused them.
struct Shared {
    state: FarmState,
    /// The channel of each attached worker's current session.
    sessions: HashMap<String, (Session, mpsc::UnboundedSender<ToWorker>)>,
    /// Each build's history length, for watchers.
    histories: HashMap<BuildId, watch::Sender<usize>>,
    /// Builds whose manifest list is being pushed; cancelling one stops its push.
    publishing: HashMap<BuildId, CancellationToken>,
    /// Builds deleted since the store was last compacted, and when that was.
    deleted_since_compaction: usize,
    compacted_at: Option<Instant>,
}

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
        let (builds, summaries) = reads::load_held(&*store, &config.history).await?;
        let (writes, rx) = mpsc::unbounded_channel();
        let sent = writer::SentLog::default();
        let wrote = Arc::new(tokio::sync::Notify::new());
        tasks.spawn(write_loop(
            store.clone(),
            rx,
            sent.clone(),
            wrote.clone(),
            term.clone(),
        ));
        let farm = Self {
            inner: Arc::new(Inner {
                contexts,
                shared: Mutex::new(Shared {
                    state: FarmState::new(config.clone()),
                    sessions: HashMap::new(),
                    histories: HashMap::new(),
                    publishing: HashMap::new(),
                    deleted_since_compaction: 0,
                    compacted_at: None,
                }),
                config,
                tasks,
                writes,
                store,
                sent,
                term,
                transitions: watch::channel(0).0,
            }),
        };
        {
            let mut sh = farm.lock();
            let effects = sh.state.restore(builds, summaries, now());
            farm.apply(&mut sh, effects, None);
        }
        let ticking = farm.clone();
        farm.inner
            .tasks
            .spawn(async move { ticking.run_ticks(Duration::from_millis(250)).await });
        let sending = farm.clone();
        farm.inner
            .tasks
            .spawn(async move { sending.follow_the_writer(wrote).await });
        Ok(farm)
    }

    /// The context store.
    pub fn contexts(&self) -> &ContextStore {
        &self.inner.contexts
    }

    /// The configuration.
    pub fn config(&self) -> &FarmConfig {
        &self.inner.config
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.inner.shared.lock().expect("farm state lock poisoned")
    }

    /// Applies a transition's effects: histories announced, sessions closed, list pushes stopped
    /// and started; then the changed builds go to the writer task, which sends the messages only
    /// once they are durable. `done` learns the outcome of the writes.
    fn apply(
        &self,
        sh: &mut Shared,
        effects: Effects,
        done: Option<oneshot::Sender<Result<(), StoreError>>>,
    ) {
        self.inner.transitions.send_modify(|n| *n += 1);
        let Effects {
            persist,
            send,
            history,
            publish,
            stop_publishing,
            close,
            logs,
        } = effects;
        for (id, len) in history {
            sh.histories
                .entry(id)
                .or_insert_with(|| watch::channel(0).0)
                .send_replace(len);
        }
        for session in close {
            // Dropping its channel ends the worker's stream.
            if sh
                .sessions
                .get(&session.worker)
                .is_some_and(|(s, _)| *s == session)
            {
                sh.sessions.remove(&session.worker);
            }
        }
        for id in stop_publishing {
            if let Some(stop) = sh.publishing.remove(&id) {
                stop.cancel();
            }
        }
        for build in publish {
            self.spawn_publish(sh, build);
        }
        let mut messages = Vec::with_capacity(send.len());
        for (session, message) in send {
            match sh.sessions.get(&session.worker) {
                Some((current, tx)) if *current == session => messages.push((tx.clone(), message)),
                // Never to leave: its acknowledgement deadline runs from now.
                _ => {
                    if let ToWorker::Assign(spec) = &message {
                        sh.state.sent(spec.job, spec.attempt, now().at);
                    }
                }
            }
        }
        if persist.is_empty() && messages.is_empty() && logs.is_empty() && done.is_none() {
            return;
        }
        let batch = Batch {
            builds: persist,
            messages,
            logs,
            done,
            ..Batch::default()
        };
        self.write(batch);
    }

    /// Hands a batch to the writer task; its `done` learns the outcome (an error if the writer
    /// has stopped).
    fn write(&self, batch: Batch) {
        if let Err(mpsc::error::SendError(batch)) = self.inner.writes.send(batch)
            && let Some(done) = batch.done
        {
            let _ = done.send(Err(StoreError::Backend(
                "the state writer has stopped".into(),
            )));
        }
    }

    /// Like [`Farm::apply`], releasing the lock; the receiver learns when the writes are durable.
    fn apply_and_release(
        &self,
        mut sh: MutexGuard<'_, Shared>,
        effects: Effects,
    ) -> oneshot::Receiver<Result<(), StoreError>> {
        let (tx, rx) = oneshot::channel();
        self.apply(&mut sh, effects, Some(tx));
        rx
    }

    /// Runs one transition under the lock and applies its effects.
    fn transition(&self, f: impl FnOnce(&mut FarmState, Now) -> Effects) {
        let mut sh = self.lock();
        let effects = f(&mut sh.state, now());
        self.apply(&mut sh, effects, None);
    }

    /// Validates and queues a build of the caller's team; returns its id once the build is durable.
    pub async fn submit(
        &self,
        mut request: BuildRequest,
        by: &Caller,
    ) -> Result<BuildId, FarmError> {
        let started = Instant::now();
        let contexts = self.inner.contexts.clone();
        // A new leader may hold a context only in the registry replica.
        for digest in request.contexts() {
            if let Ok(false) = contexts.has(&digest)
                && let Err(e) = contexts.ensure_local(&digest).await
            {
                tracing::warn!(context = %digest, error = %e, "context not available locally");
            }
        }
        // The spec keeps the secrets' ids (a build with secrets is never shared, and fails at a
        // restart); their values live in memory only, never in the build record.
        let req = request.clone();
        let secrets = std::mem::take(&mut request.secrets);
        // Validation reads the context tar: keep it off the async threads.
        let spec = tokio::task::spawn_blocking(move || BuildSpec::validate(req, &contexts))
            .await
            .map_err(|e| StoreError::Backend(format!("validating the request: {e}")))??;
        self.inner.config.repositories.check(&by.team, &spec)?;
        let validated = started.elapsed();
        // Durable before the farm holds it: a build the store cannot write (a full state disk)
        // is refused here and never listed. It goes with the writer's next group write, with
        // the records and the other submits waiting then: one commit for all of them.
        let build = FarmState::new_build(spec, request, by, now());
        let (done, written) = oneshot::channel();
        self.write(Batch {
            builds: vec![build.clone()],
            new: true,
            done: Some(done),
            ..Batch::default()
        });
        durable(written).await?;
        let id = build.id;
        let written = started.elapsed();
        {
            let mut sh = self.lock();
            let effects = sh.state.admit(build, secrets, now());
            self.apply(&mut sh, effects, None);
        }
        tracing::debug!(
            build = %id,
            validated_us = validated.as_micros() as u64,
            written_us = written.as_micros() as u64,
            admitted_us = started.elapsed().as_micros() as u64,
            "build submitted"
        );
        // The build is durable and queued already: its id goes back without waiting for the
        // writer's next group (its assignment, say). A later record the store cannot take yet is
        // the writer's to write again (and a restart would resume from the queued one).
        Ok(id)
    }

    /// `manifold publish ID` ([`FarmState::republish`]); returns once the build is durable. An
    /// evicted build is read from the store and held again first ([`FarmState::readmit`]).
    pub async fn republish(&self, id: BuildId, by: &Caller) -> Result<Build, FarmError> {
        if self.evicted(id) {
            let build = self.find(id).await?;
            self.lock().state.readmit(build, now());
        }
        let (build, written) = {
            let mut sh = self.lock();
            let (build, effects) = sh.state.republish(id, &by.name, now())?;
            (build, self.apply_and_release(sh, effects))
        };
        durable(written).await?;
        Ok(build)
    }

    /// A snapshot of a build the farm holds in full (unfinished, or finished recently); see
    /// [`Farm::find`] for any build of the store.
    pub fn get(&self, id: BuildId) -> Result<Build, FarmError> {
        self.lock().state.get(id)
    }

    /// Usage per team: the configured teams and any other team with running or queued jobs.
    pub fn teams(&self) -> Vec<TeamUsage> {
        self.lock().state.teams()
    }

    /// The queued jobs, oldest first, with the build each belongs to.
    pub fn queue(&self) -> Vec<(QueuedJob, Build)> {
        self.lock().state.queue()
    }

    /// Events of a build from `from` on, a receiver that changes when more arrive, and whether
    /// the history has ended.
    pub fn events(
        &self,
        id: BuildId,
        from: usize,
    ) -> Result<(Vec<Event>, watch::Receiver<usize>, bool), FarmError> {
        let mut sh = self.lock();
        let (events, ended) = sh.state.events(id, from)?;
        let len = sh.state.history_len(id);
        let changed = sh
            .histories
            .entry(id)
            .or_insert_with(|| watch::channel(len).0)
            .subscribe();
        Ok((events, changed, ended))
    }

    /// Cancels a build: unfinished jobs stop, no tag is written. An evicted build has ended:
    /// it is returned as stored.
    pub async fn cancel(&self, id: BuildId) -> Result<Build, FarmError> {
        if self.evicted(id) {
            return self.find(id).await;
        }
        let (build, written) = {
            let mut sh = self.lock();
            let (build, effects) = sh.state.cancel(id, now())?;
            (build, self.apply_and_release(sh, effects))
        };
        durable(written).await?;
        Ok(build)
    }

    /// Whether worker `name` holds a current attempt (assigned or running) of a job whose build
    /// uses context `digest`: the only contexts a worker may download.
    pub fn worker_needs_context(&self, name: &str, digest: &str) -> bool {
        self.lock().state.worker_needs_context(name, digest)
    }

    /// Contexts that unfinished builds still need (garbage collection keeps them).
    pub fn referenced_contexts(&self) -> std::collections::HashSet<String> {
        self.lock().state.referenced_contexts()
    }

    /// The attached workers.
    pub fn workers(&self) -> Vec<WorkerView> {
        self.lock().state.workers()
    }

    /// Changes after every transition (not after a heartbeat that only says the worker is
    /// alive): a watcher of [`Farm::workers`] reads them again then.
    pub fn transitions(&self) -> watch::Receiver<u64> {
        self.inner.transitions.subscribe()
    }

    /// `manifold workers drain NAME`: the worker gets no new job and is told to drain: finish its
    /// running jobs, say goodbye and exit, as on SIGTERM.
    pub fn drain(&self, name: &str) -> Result<WorkerView, FarmError> {
        let mut sh = self.lock();
        let (view, effects) = sh.state.drain(name)?;
        self.apply(&mut sh, effects, None);
        Ok(view)
    }

    /// `manifold workers pause|resume NAME` ([`FarmState::pause`]).
    pub fn pause(&self, name: &str, paused: bool) -> Result<WorkerView, FarmError> {
        let mut sh = self.lock();
        let (view, effects) = sh.state.pause(name, paused, now())?;
        self.apply(&mut sh, effects, None);
        Ok(view)
    }

    /// A worker said hello. Returns its session and the channel its messages arrive on.
    pub fn attach(
        &self,
        hello: WorkerHello,
    ) -> Result<(Session, mpsc::UnboundedReceiver<ToWorker>), FarmError> {
        let mut sh = self.lock();
        let (session, effects) = sh.state.attach(hello, now())?;
        let (tx, rx) = mpsc::unbounded_channel();
        sh.sessions
            .insert(session.worker.clone(), (session.clone(), tx));
        self.apply(&mut sh, effects, None);
        Ok((session, rx))
    }

    /// Any message from a worker counts as a heartbeat.
    pub fn heartbeat(&self, session: &Session) {
        self.lock().state.heartbeat(session, now());
    }

    /// A heartbeat: the worker is alive, and says whether it drains and whether its Docker daemon
    /// answers. A draining or unhealthy worker gets no new job.
    pub fn health(&self, session: &Session, health: WorkerHealth) {
        self.transition(|st, now| st.health(session, health, now));
    }

    /// The worker acknowledged an assignment. A late acknowledgement of an attempt that is no
    /// longer current (requeued after the deadline, or its build ended) is answered with a cancel.
    pub fn accepted(&self, session: &Session, job: JobId, attempt: u32) {
        self.transition(|st, now| st.accepted(session, job, attempt, now));
    }

    /// Output lines of an attempt; they also show the attempt is not stuck.
    pub fn log(&self, session: &Session, job: JobId, attempt: u32, lines: Vec<String>) {
        self.transition(|st, now| st.log(session, job, attempt, lines, now));
    }

    /// The worker reports the image its attempt pushed: its slot is free from now, and the image
    /// is to be checked against what is returned ([`FarmState::reported`]); `None` for an attempt
    /// that is not current on that worker.
    pub fn reported(&self, session: &Session, job: JobId, attempt: u32) -> Option<ImageCheck> {
        let mut sh = self.lock();
        let (check, effects) = sh.state.reported(session, job, attempt, now());
        self.apply(&mut sh, effects, None);
        check
    }

    /// An attempt ended. The result of an attempt that is no longer current changes nothing.
    pub fn result(&self, session: &Session, job: JobId, attempt: u32, outcome: JobOutcome) {
        self.transition(|st, now| st.result(session, job, attempt, outcome, now));
    }

    /// The worker's stream ended (or it said goodbye). Its jobs wait for it for the worker lease.
    pub fn detach(&self, session: &Session) {
        self.transition(|st, now| st.detach(session, now));
    }

    /// The worker announced it drains: no new job goes to it.
    pub fn draining(&self, session: &Session) {
        self.transition(|st, _| st.draining(session));
    }

    /// Housekeeping at time `now` ([`FarmState::tick`]), after starting the acknowledgement
    /// deadlines of the assignments sent since the last tick; then a history pass
    /// ([`Farm::retire`]).
    pub fn tick(&self, now: Instant) {
        let now = Now {
            at: now,
            ms: now_ms(),
        };
        let sent = self.take_sent();
        self.transition(|st, _| {
            for (job, attempt, at) in sent {
                st.sent(job, attempt, at);
            }
            st.tick(now)
        });
        self.retire(now);
    }

    /// The assignments the writer reported sent since this was last asked.
    fn take_sent(&self) -> Vec<(JobId, u32, Instant)> {
        std::mem::take(&mut *self.inner.sent.lock().expect("sent log lock poisoned"))
    }

    /// Cancelled when this farm's term ends.
    pub fn stopped(&self) -> CancellationToken {
        self.inner.term.clone()
    }

    /// Each time the writer reports assignments sent (after each group write that held some),
    /// applies them ([`FarmState::sent_all`]): jobs held back by `max_unsent` are decided then,
    /// not at the next tick. Until the term ends.
    async fn follow_the_writer(&self, wrote: Arc<tokio::sync::Notify>) {
        let term = self.inner.term.clone();
        loop {
            tokio::select! {
                _ = term.cancelled() => return,
                _ = wrote.notified() => {
                    let sent = self.take_sent();
                    if !sent.is_empty() {
                        self.transition(|st, now| st.sent_all(sent, now));
                    }
                }
            }
        }
    }

    /// Runs [`Farm::tick`] every `period` until the term ends.
    async fn run_ticks(&self, period: Duration) {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let term = self.inner.term.clone();
        loop {
            tokio::select! {
                _ = term.cancelled() => return,
                _ = interval.tick() => self.tick(now().at),
            }
        }
    }
}

/// The time now, for a transition.
fn now() -> Now {
    Now {
        at: tokio::time::Instant::now().into_std(),
        ms: now_ms(),
    }
}
