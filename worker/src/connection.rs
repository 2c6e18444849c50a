//! The worker's life: one `Workers.Attach` stream to the coordinator at a time, opened by the
//! worker and reopened with jittered exponential backoff when it breaks; the hello, heartbeats, and
//! the dispatch of assignments and cancellations to job tasks; the drain on shutdown or when the
//! coordinator asks; the periodic check that the Docker daemon answers, reported in heartbeats.
//!
//! A coordinator that refuses the worker's identity (`Unauthenticated`, `PermissionDenied`: no
//! client certificate, one for another name, an unknown team) ends the loop with
//! [`RunError::Refused`]: reconnecting cannot change its answer. Every other failure, TLS handshake
//! failures included, is retried, since that is how a worker waits for its coordinator.
//!
//! An assignment the worker cannot start (draining, no free slot, daemon unhealthy) is refused:
//! the coordinator requeues it without counting an attempt.
//!
//! Messages of jobs (logs, results) go through one outbox that outlives each stream, so a result
//! produced while the coordinator is away is delivered after the next hello. Logs are best effort:
//! when the outbox is full they are dropped, results never are.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use manifold_proto::v1::coordinator_message::Msg as FromCoordinator;
use manifold_proto::v1::worker_message::Msg as ToCoordinator;
use manifold_proto::v1::workers_client::WorkersClient;
use manifold_proto::{JobId, Platform, v1};
use tokio::sync::{Notify, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::Channel;
use tracing::Instrument as _;

use crate::admission;
use crate::backoff::Backoff;
use crate::config::Config;
use crate::context_cache::{ContextCache, ContextDigest};
use crate::context_fetch;
use crate::docker::{DaemonInfo, DescribeError, DockerEngine};
use crate::health;
use crate::job::{self, ExecuteOptions, JobFailure, JobSpec, LogSink};
use crate::layers::LayerMap;
use crate::push::PushedImage;

/// Heartbeat interval used when the coordinator's Welcome does not set one.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(3);
/// How long the coordinator has to answer the hello with a Welcome.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the worker waits for the coordinator to close the stream after its Goodbye.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connection attempts a drained worker makes to deliver results it still holds.
const FAREWELL_ATTEMPTS: u32 = 3;
/// Messages waiting for a stream (results, log batches).
const OUTBOX_CAPACITY: usize = 1024;
/// How long the daemon has to answer `info` when the worker says hello.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the worker cannot run, or stopped without being asked to.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The coordinator URL does not parse.
    #[error("bad coordinator url `{url}`: {reason}; expected e.g. http://127.0.0.1:7700")]
    InvalidCoordinator {
        /// What was given.
        url: String,
        /// What the parser said.
        reason: String,
    },
    /// The coordinator cannot be dialled as configured: plaintext beyond loopback, or TLS files
    /// missing or malformed.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsSetupError),
    /// The coordinator refused this worker (`Unauthenticated` or `PermissionDenied`): no client
    /// certificate, one for another name, or a team it does not know. Retrying cannot help.
    #[error(
        "the coordinator at {coordinator} refused worker `{name}` ({code:?}): {message}; start the worker with --cert/--key issued for this --name (and a team the coordinator knows), e.g. by `manifold-coordinator dev-ca --worker {name}[=TEAM]`"
    )]
    Refused {
        /// The coordinator URL.
        coordinator: String,
        /// The worker's name.
        name: String,
        /// The gRPC code.
        code: tonic::Code,
        /// What the coordinator said.
        message: String,
    },
    /// Zero slots.
    #[error("bad slot count 0: a worker needs at least one slot, e.g. --slots 2")]
    NoSlots,
    /// The cache folder cannot be created.
    #[error("cannot create the cache folder {path}: {source}; pass a writable --cache-dir")]
    CacheDir {
        /// The folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Serves the coordinator until `shutdown` fires, then drains: no new jobs, running jobs finish
/// and report, Goodbye, return.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), RunError> {
    if config.slots == 0 {
        return Err(RunError::NoSlots);
    }
    // One address, or several coordinators (etcd mode): each session finds the leader among them.
    let addresses = manifold_proto::discovery::parse_addresses(&config.coordinator);
    let first = addresses
        .first()
        .cloned()
        .unwrap_or_else(|| config.coordinator.clone());
    // Every address is checked now: a plaintext one beyond loopback is refused before any dial.
    let tls = crate::tls::client_tls(&config, &addresses)?;
    let endpoint_of = |address: &str| {
        crate::tls::endpoint(address, tls.as_ref()).map_err(|e| match e {
            crate::tls::TlsSetupError::InvalidAddress { address, reason } => {
                RunError::InvalidCoordinator {
                    url: config.coordinator.clone(),
                    reason: if addresses.len() > 1 {
                        format!("`{address}`: {reason}")
                    } else {
                        reason
                    },
                }
            }
            other => RunError::Tls(other),
        })
    };
    for address in &addresses {
        endpoint_of(address)?;
    }
    let endpoint = endpoint_of(&first)?;
    std::fs::create_dir_all(&config.cache_dir).map_err(|source| RunError::CacheDir {
        path: config.cache_dir.clone(),
        source,
    })?;

    // Leftovers of a previous run that crashed: partial downloads, and the scratch files of
    // versions that unpacked images to disk.
    let cache = ContextCache::new(&config.cache_dir, config.context_cache_max_size);
    cache.remove_partial_downloads();
    cache.evict();
    let _ = std::fs::remove_dir_all(config.cache_dir.join("tmp"));

    let mut backoff = Backoff::new(config.reconnect_initial, config.reconnect_max);
    let engine = loop {
        match DockerEngine::connect(&config.docker_host).await {
            Ok(engine) => break engine,
            Err(e) => {
                let wait = backoff.next_wait();
                tracing::warn!(error = %e, "cannot reach the docker daemon; retrying in {wait:?}");
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = shutdown.cancelled() => return Ok(()),
                }
            }
        }
    };
    backoff.reset();
    // Tags of jobs a crash interrupted (the previous run's scratch space is removed above).
    crate::local_tags::LocalTags::new(&config.cache_dir)
        .remove_leftovers(&engine)
        .await;

    let (outbox, outbox_rx) = mpsc::channel(OUTBOX_CAPACITY);
    let dir = config.cache_dir.clone();
    let disk = tokio::task::spawn_blocking(move || health::measure(&dir))
        .await
        .ok()
        .flatten();
    // Not lending until the window is read, when there is one.
    let lends = config.lend == crate::lending::LendPolicy::Always && config.lend_hours.is_none();
    let (lending, _) = watch::channel(lends);
    let push_proxy = match config.graphdriver_push {
        crate::config::GraphdriverPush::Save => None,
        crate::config::GraphdriverPush::Daemon => {
            match crate::push_proxy::PushProxy::start(shutdown.clone()).await {
                Ok(proxy) => Some(proxy),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen on 127.0.0.1 for the daemon's pushes; pushing by docker save");
                    None
                }
            }
        }
    };
    let shared = Arc::new(Shared {
        options: ExecuteOptions {
            layers: LayerMap::new(&config.cache_dir),
            local_tags: crate::local_tags::LocalTags::new(&config.cache_dir),
            docker_config: config.docker_config.clone(),
            push_proxy,
            build_platform_override: None,
        },
        cache,
        channel: Mutex::new(endpoint.connect_lazy()),
        addresses,
        tls,
        engine,
        config,
        jobs: Mutex::default(),
        unreported: Mutex::default(),
        tracker: TaskTracker::new(),
        outbox,
        health: health::Monitor::new(disk),
        paused: watch::channel(false).0,
        lending,
        job_ended: Arc::new(Notify::new()),
        daemon: Mutex::default(),
    });
    let checker = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let config = &shared.config;
            let (dir, min, every) = (
                &config.cache_dir,
                config.min_free_disk,
                config.health_interval,
            );
            let buildkit = crate::buildkit::Endpoint::moby(&config.docker_host).ok();
            let health = &shared.health;
            health
                .watch(&shared.engine, buildkit.as_ref(), dir, min, every)
                .await
        })
    };
    let lend_stop = CancellationToken::new();
    let lender = tokio::spawn(crate::lending::watch_lending(
        shared.config.lend.clone(),
        shared.config.lend_hours,
        shared.config.lend_check_interval,
        shared.lending.clone(),
        lend_stop.clone(),
    ));
    let prune_stop = CancellationToken::new();
    let pruner = crate::buildkit::Endpoint::moby(&shared.config.docker_host).map(|endpoint| {
        let running = Arc::downgrade(&shared);
        tokio::spawn(crate::buildkit::prune::keep_pruned(
            endpoint,
            shared.config.cache_policy,
            shared.job_ended.clone(),
            move || running.upgrade().map_or(0, |s| s.slots_in_use() as usize),
            prune_stop.clone(),
        ))
    });
    let mut worker = Worker {
        shared,
        outbox_rx,
        shutdown,
    };
    let served = worker.serve(backoff).await;
    checker.abort();
    lend_stop.cancel();
    prune_stop.cancel();
    let _ = lender.await;
    if let Ok(pruner) = pruner {
        let _ = pruner.await;
    }
    served
}

/// What every job task shares with the connection.
struct Shared {
    config: Config,
    engine: DockerEngine,
    cache: ContextCache,
    /// The channel to the coordinator of the current session.
    channel: Mutex<Channel>,
    /// Every coordinator address given; the leader among them is looked up at each session.
    addresses: Vec<String>,
    /// TLS settings for https:// addresses.
    tls: Option<tonic::transport::ClientTlsConfig>,
    options: ExecuteOptions,
    jobs: Mutex<HashMap<(JobId, u32), CancellationToken>>,
    /// Attempts that ended here but whose result is still in the outbox: a hello restates them
    /// as running, so that a coordinator that was away waits for their result instead of
    /// requeueing them as forgotten.
    unreported: Mutex<std::collections::HashSet<(String, u32)>>,
    tracker: TaskTracker,
    outbox: mpsc::Sender<v1::WorkerMessage>,
    /// Why the worker takes no job (daemon, disk), and its disk; the session reports changes.
    health: health::Monitor,
    /// Paused by its owner (a Pause from the coordinator): no new job until a Resume.
    paused: watch::Sender<bool>,
    /// Whether other teams' jobs may run here now ([`crate::lending`]).
    lending: watch::Sender<bool>,
    /// Told when a job ends, so the BuildKit cache is pruned ([`crate::buildkit::prune`]).
    job_ended: Arc<Notify>,
    /// What the daemon said about itself the last time it answered, for a hello while it does not.
    daemon: Mutex<Option<DaemonInfo>>,
}

impl Shared {
    /// The attempts to restate in a hello: those running, and those whose result is not sent yet.
    fn running(&self) -> Vec<v1::RunningJob> {
        let unreported = self.unreported.lock().expect("unreported lock").clone();
        let mut running: Vec<v1::RunningJob> = self
            .jobs
            .lock()
            .expect("jobs lock")
            .keys()
            .map(|(id, attempt)| (id.to_string(), *attempt))
            .chain(unreported)
            .map(|(job_id, attempt)| v1::RunningJob { job_id, attempt })
            .collect();
        running.sort_by(|a, b| (&a.job_id, a.attempt).cmp(&(&b.job_id, b.attempt)));
        running
    }

    /// `message` leaves the outbox: if it is a result, its attempt is no longer unreported.
    fn reported(&self, message: &v1::WorkerMessage) {
        if let Some(v1::worker_message::Msg::Result(r)) = &message.msg {
            self.unreported
                .lock()
                .expect("unreported lock")
                .remove(&(r.job_id.clone(), r.attempt));
        }
    }

    fn slots_in_use(&self) -> u32 {
        self.jobs.lock().expect("jobs lock").len() as u32
    }

    /// The daemon's platform and version: asked afresh, or as last seen when it does not answer.
    async fn describe_daemon(&self) -> Result<DaemonInfo, String> {
        let config = &self.config;
        let error = match tokio::time::timeout(DESCRIBE_TIMEOUT, self.engine.describe()).await {
            Ok(Ok(info)) => {
                *self.daemon.lock().expect("daemon lock") = Some(info.clone());
                return Ok(info);
            }
            Ok(Err(e @ DescribeError::Platform { .. })) if config.platform.is_some() => {
                tracing::debug!(error = %e, "using the --platform given");
                return Ok(DaemonInfo {
                    platform: config.platform.clone().expect("checked"),
                    docker_version: String::new(),
                    image_store: crate::docker::ImageStore::Graphdriver,
                });
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!(
                "docker daemon at {} did not answer `info` within {DESCRIBE_TIMEOUT:?}",
                self.engine.host()
            ),
        };
        self.health.check_soon();
        match self.daemon.lock().expect("daemon lock").clone() {
            Some(info) => {
                tracing::warn!(%error, "attaching as unhealthy with what the daemon said before");
                Ok(info)
            }
            None => Err(error),
        }
    }
}

struct Worker {
    shared: Arc<Shared>,
    outbox_rx: mpsc::Receiver<v1::WorkerMessage>,
    shutdown: CancellationToken,
}

/// How a stream ended.
enum SessionEnd {
    /// The worker drained and said goodbye.
    Goodbye,
    /// The stream broke or could not be opened; reconnect.
    Lost(String),
    /// The coordinator refused this worker's identity; reconnecting cannot help.
    Refused(tonic::Status),
}

impl SessionEnd {
    /// How a call that failed with `status` ends the session: refused for an identity the
    /// coordinator does not accept, lost otherwise (with the TLS problem spelled out, if any).
    fn from_status(status: tonic::Status, coordinator: &str) -> SessionEnd {
        match status.code() {
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
                SessionEnd::Refused(status)
            }
            _ => match crate::tls::tls_failure(&status) {
                Some(failure) => SessionEnd::Lost(failure.explain(coordinator)),
                None => SessionEnd::Lost(describe_status(&status)),
            },
        }
    }
}

impl Worker {
    async fn serve(&mut self, mut backoff: Backoff) -> Result<(), RunError> {
        let mut farewell_attempts = 0;
        loop {
            if self.shutdown.is_cancelled() {
                self.shared.tracker.close();
                if self.shared.tracker.is_empty() {
                    // Nothing runs any more. Results still waiting for a stream get a few more
                    // connection attempts; without any, the coordinator learns of the departure
                    // from the broken stream.
                    let undelivered = self.outbox_rx.len();
                    if undelivered == 0 {
                        return Ok(());
                    }
                    if farewell_attempts == FAREWELL_ATTEMPTS {
                        tracing::warn!(
                            undelivered,
                            "exiting without reaching the coordinator: job results and logs are lost"
                        );
                        return Ok(());
                    }
                    farewell_attempts += 1;
                }
            }
            match self.session(&mut backoff).await {
                SessionEnd::Goodbye => {
                    tracing::info!("drained; said goodbye to the coordinator");
                    return Ok(());
                }
                SessionEnd::Refused(status) => {
                    let error = RunError::Refused {
                        coordinator: self.shared.config.coordinator.clone(),
                        name: self.shared.config.name.clone(),
                        code: status.code(),
                        message: status.message().to_owned(),
                    };
                    tracing::error!("{error}");
                    self.stop_jobs().await;
                    return Err(error);
                }
                SessionEnd::Lost(reason) => {
                    let wait = backoff.next_wait();
                    tracing::warn!(
                        coordinator = %self.shared.config.coordinator,
                        "not connected to the coordinator: {reason}; reconnecting in {wait:?}"
                    );
                    let draining = self.shutdown.is_cancelled();
                    let running = !self.shared.tracker.is_empty();
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = self.shutdown.cancelled(), if !draining => {}
                        () = self.shared.tracker.wait(), if draining && running => {}
                    }
                }
            }
        }
    }

    /// One Attach stream, from hello to its end.
    async fn session(&mut self, backoff: &mut Backoff) -> SessionEnd {
        let shared = self.shared.clone();
        let config = &shared.config;
        let daemon = match shared.describe_daemon().await {
            Ok(info) => info,
            Err(e) => return SessionEnd::Lost(e),
        };
        let (platform, emulated) = match &config.platform {
            Some(forced) => (forced.clone(), true),
            None => (daemon.platform.clone(), false),
        };

        // Subscribed before the hello reads the health, so that no change goes unreported.
        let mut health = shared.health.subscribe();
        let mut paused = shared.paused.subscribe();
        let mut lending = shared.lending.subscribe();
        let hello = v1::WorkerHello {
            name: config.name.clone(),
            platforms: vec![(&platform).into()],
            emulated,
            slots: config.slots,
            labels: config.labels.clone().into_iter().collect(),
            docker_version: daemon.docker_version.clone(),
            running: shared.running(),
            worker_version: env!("CARGO_PKG_VERSION").to_owned(),
            draining: self.shutdown.is_cancelled(),
            unhealthy: shared.health.unhealthy().is_some(),
            unhealthy_reason: shared.health.unhealthy().unwrap_or_default(),
            paused: *paused.borrow_and_update(),
            not_lending: !*lending.borrow_and_update(),
            disk: shared.health.disk().as_ref().map(Into::into),
        };
        let (tx, rx) = mpsc::channel::<v1::WorkerMessage>(64);
        tx.send(message(ToCoordinator::Hello(hello)))
            .await
            .expect("the receiver is still here");
        if shared.addresses.len() > 1 {
            match crate::tls::connect_leader(&shared.addresses, shared.tls.as_ref()).await {
                Ok((leader, channel)) => {
                    tracing::info!(%leader, "found the leading coordinator");
                    *shared.channel.lock().expect("channel lock") = channel;
                }
                Err(e) => return SessionEnd::Lost(e.to_string()),
            }
        }
        let coordinator = config.coordinator.as_str();
        let channel = shared.channel.lock().expect("channel lock").clone();
        let mut client = WorkersClient::new(channel)
            .max_decoding_message_size(manifold_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(manifold_proto::MAX_MESSAGE_BYTES);
        let mut inbound = match client.attach(ReceiverStream::new(rx)).await {
            Ok(response) => response.into_inner(),
            Err(status) => return SessionEnd::from_status(status, coordinator),
        };
        let heartbeat_every = match tokio::time::timeout(WELCOME_TIMEOUT, inbound.message()).await {
            Err(_) => {
                return SessionEnd::Lost(format!(
                    "no Welcome within {WELCOME_TIMEOUT:?} of the hello"
                ));
            }
            Ok(Err(status)) => return SessionEnd::from_status(status, coordinator),
            Ok(Ok(None)) => return SessionEnd::Lost("the coordinator closed the stream".into()),
            Ok(Ok(Some(v1::CoordinatorMessage {
                msg: Some(FromCoordinator::Welcome(welcome)),
            }))) => u64::try_from(welcome.heartbeat_interval_ms)
                .ok()
                .filter(|ms| *ms > 0)
                .map(Duration::from_millis)
                .unwrap_or(DEFAULT_HEARTBEAT),
            Ok(Ok(Some(other))) => {
                return SessionEnd::Lost(format!(
                    "the coordinator answered the hello with {other:?} instead of a Welcome"
                ));
            }
        };
        backoff.reset();
        tracing::info!(
            coordinator = %config.coordinator,
            %platform,
            emulated,
            slots = config.slots,
            "connected to the coordinator"
        );

        let mut heartbeat = tokio::time::interval_at(
            tokio::time::Instant::now() + heartbeat_every,
            heartbeat_every,
        );
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut draining = false;
        loop {
            let sent = tokio::select! {
                message = inbound.message() => match message {
                    Ok(Some(message)) => self.dispatch(message, &platform, &tx).await,
                    Ok(None) => return SessionEnd::Lost("the coordinator closed the stream".into()),
                    Err(status) => return SessionEnd::from_status(status, coordinator),
                },
                _ = heartbeat.tick() => tx.send(self.heartbeat()).await,
                // A change of health is news for the scheduler: say it now.
                Ok(()) = health.changed() => tx.send(self.heartbeat()).await,
                Ok(()) = paused.changed() => tx.send(self.heartbeat()).await,
                Ok(()) = lending.changed() => tx.send(self.heartbeat()).await,
                Some(queued) = self.outbox_rx.recv() => {
                    shared.reported(&queued);
                    tx.send(queued).await
                }
                () = self.shutdown.cancelled(), if !draining => {
                    draining = true;
                    shared.tracker.close();
                    tracing::info!(running = shared.slots_in_use(), "draining: no new jobs; waiting for running jobs to finish");
                    tx.send(self.heartbeat()).await
                }
                () = shared.tracker.wait(), if draining => {
                    return self.say_goodbye(tx, inbound).await;
                }
            };
            if sent.is_err() {
                return SessionEnd::Lost("the stream to the coordinator is closed".into());
            }
        }
    }

    /// Cancels every running job and waits a little for them to wind down, before the worker
    /// exits on a refusal (their results could not be delivered anyway).
    async fn stop_jobs(&self) {
        for token in self.shared.jobs.lock().expect("jobs lock").values() {
            token.cancel();
        }
        self.shared.tracker.close();
        let _ = tokio::time::timeout(GOODBYE_TIMEOUT, self.shared.tracker.wait()).await;
    }

    /// A heartbeat saying how the worker is: slots in use, draining, daemon health.
    fn heartbeat(&self) -> v1::WorkerMessage {
        let unhealthy = self.shared.health.unhealthy();
        message(ToCoordinator::Heartbeat(v1::Heartbeat {
            slots_in_use: self.shared.slots_in_use(),
            unhealthy: unhealthy.is_some(),
            unhealthy_reason: unhealthy.unwrap_or_default(),
            draining: self.shutdown.is_cancelled(),
            paused: *self.shared.paused.borrow(),
            not_lending: !*self.shared.lending.borrow(),
            disk: self.shared.health.disk().as_ref().map(Into::into),
        }))
    }

    /// Sends what jobs left in the outbox, then Goodbye, and waits for the coordinator to close.
    async fn say_goodbye(
        &mut self,
        tx: mpsc::Sender<v1::WorkerMessage>,
        mut inbound: tonic::Streaming<v1::CoordinatorMessage>,
    ) -> SessionEnd {
        while let Ok(queued) = self.outbox_rx.try_recv() {
            self.shared.reported(&queued);
            if tx.send(queued).await.is_err() {
                return SessionEnd::Lost("the stream closed while draining".into());
            }
        }
        if tx
            .send(message(ToCoordinator::Goodbye(v1::Goodbye {})))
            .await
            .is_err()
        {
            return SessionEnd::Lost("the stream closed before the goodbye".into());
        }
        drop(tx);
        let _ = tokio::time::timeout(GOODBYE_TIMEOUT, async {
            while let Ok(Some(message)) = inbound.message().await {
                if let Some(FromCoordinator::Assign(assign)) = message.msg {
                    // Too late: say so, but the request stream is already closed. The
                    // coordinator requeues it when the stream ends.
                    tracing::info!(job_id = %assign.job_id, "assignment after goodbye ignored");
                }
            }
        })
        .await;
        SessionEnd::Goodbye
    }

    async fn dispatch(
        &mut self,
        message: v1::CoordinatorMessage,
        platform: &Platform,
        tx: &mpsc::Sender<v1::WorkerMessage>,
    ) -> Result<(), mpsc::error::SendError<v1::WorkerMessage>> {
        match message.msg {
            Some(FromCoordinator::Assign(assign)) => self.assign(assign, platform, tx).await,
            Some(FromCoordinator::Cancel(cancel)) => {
                self.cancel(&cancel);
                Ok(())
            }
            Some(FromCoordinator::Drain(_)) => {
                if !self.shutdown.is_cancelled() {
                    tracing::info!("the coordinator asked this worker to drain");
                    self.shutdown.cancel();
                }
                Ok(())
            }
            Some(FromCoordinator::Pause(_)) => {
                tracing::info!("paused by the coordinator: no new job; running jobs continue");
                self.shared.paused.send_replace(true);
                Ok(())
            }
            Some(FromCoordinator::Resume(_)) => {
                tracing::info!("resumed by the coordinator: taking jobs again");
                self.shared.paused.send_replace(false);
                Ok(())
            }
            Some(FromCoordinator::Welcome(_)) | None => Ok(()),
        }
    }

    fn cancel(&self, cancel: &v1::CancelJob) {
        let Ok(job_id) = cancel.job_id.parse::<JobId>() else {
            tracing::warn!(job_id = %cancel.job_id, "cancel for a job id that is not a UUID ignored");
            return;
        };
        match self
            .shared
            .jobs
            .lock()
            .expect("jobs lock")
            .get(&(job_id, cancel.attempt))
        {
            Some(token) => {
                tracing::info!(%job_id, attempt = cancel.attempt, "cancelling job");
                token.cancel();
            }
            None => {
                tracing::debug!(%job_id, attempt = cancel.attempt, "cancel for a job not running here")
            }
        }
    }

    async fn assign(
        &mut self,
        assign: v1::AssignJob,
        platform: &Platform,
        tx: &mpsc::Sender<v1::WorkerMessage>,
    ) -> Result<(), mpsc::error::SendError<v1::WorkerMessage>> {
        let shared = self.shared.clone();
        let refuse = |failure: JobFailure| {
            tracing::info!(job_id = %assign.job_id, attempt = assign.attempt, reason = %failure.message, "assignment refused");
            result_message(&assign.job_id, assign.attempt, Err(failure))
        };
        let spec = match crate::assignment::job_spec(&assign) {
            Ok(spec) => spec,
            Err(reason) => return tx.send(refuse(JobFailure::permanent(reason))).await,
        };
        let unhealthy = shared.health.unhealthy();
        let situation = admission::Situation {
            name: &shared.config.name,
            draining: self.shutdown.is_cancelled(),
            paused: *shared.paused.borrow(),
            unhealthy: unhealthy.as_deref(),
            platform,
            slots: shared.config.slots,
        };
        let token = {
            let mut jobs = shared.jobs.lock().expect("jobs lock");
            let holds: Vec<admission::Held> = jobs
                .iter()
                .map(|((id, attempt), token)| (*id, *attempt, token.is_cancelled()))
                .collect();
            let decision = admission::admit(
                &situation,
                spec.job_id,
                spec.attempt,
                &spec.platform,
                &holds,
            );
            for key in &decision.supersede {
                if let Some(token) = jobs.get(key) {
                    token.cancel();
                }
            }
            match decision.verdict {
                admission::Verdict::Refuse(failure) => Err(failure),
                admission::Verdict::AlreadyRunning => Ok(None),
                admission::Verdict::Start => {
                    let token = CancellationToken::new();
                    jobs.insert((spec.job_id, spec.attempt), token.clone());
                    Ok(Some(token))
                }
            }
        };
        let token = match token {
            Ok(token) => token,
            Err(failure) => return tx.send(refuse(failure)).await,
        };
        tx.send(message(ToCoordinator::Accepted(v1::JobAccepted {
            job_id: assign.job_id.clone(),
            attempt: assign.attempt,
        })))
        .await?;
        let Some(token) = token else { return Ok(()) };

        let span = tracing::info_span!(
            "job",
            job_id = %spec.job_id,
            attempt = spec.attempt,
            platform = %spec.platform
        );
        tracing::info!(parent: &span, repository = %spec.repository, "job accepted");
        let job_shared = shared.clone();
        shared.tracker.spawn(
            async move {
                let (logs, lines) = LogSink::channel();
                let work = async {
                    let started = std::time::Instant::now();
                    let result = run_job(&job_shared, &spec, &logs, &token).await;
                    match &result {
                        Ok(pushed) => tracing::info!(
                            digest = %pushed.digest,
                            seconds = started.elapsed().as_secs_f64(),
                            "job succeeded"
                        ),
                        Err(failure) => {
                            if failure.retryable {
                                // Maybe the daemon went away: the coordinator should know now.
                                job_shared.health.check_soon();
                            }
                            logs.line(format!("error: {}", failure.message));
                            tracing::warn!(
                                retryable = failure.retryable,
                                cancelled = failure.cancelled,
                                "job failed: {}",
                                failure.message
                            );
                        }
                    }
                    drop(logs);
                    result
                };
                let forward = crate::log_batches::forward(
                    lines,
                    job_shared.outbox.clone(),
                    spec.job_id.to_string(),
                    spec.attempt,
                );
                let (result, ()) = tokio::join!(work, forward);
                // Unreported before it stops running, so that no hello misses it.
                job_shared
                    .unreported
                    .lock()
                    .expect("unreported lock")
                    .insert((spec.job_id.to_string(), spec.attempt));
                job_shared
                    .jobs
                    .lock()
                    .expect("jobs lock")
                    .remove(&(spec.job_id, spec.attempt));
                job_shared.job_ended.notify_one();
                let outcome = result_message(&spec.job_id.to_string(), spec.attempt, result);
                if job_shared.outbox.send(outcome).await.is_err() {
                    tracing::error!("the outbox is closed: the job's result is lost");
                }
            }
            .instrument(span),
        );
        Ok(())
    }
}

/// Fetches the job's context into the cache, then builds and pushes.
async fn fetch_and_execute(
    shared: &Shared,
    spec: &JobSpec,
    logs: &LogSink,
    cancel: &CancellationToken,
) -> Result<PushedImage, JobFailure> {
    // Held until the job ends: no eviction removes them meanwhile.
    let _hold = shared.cache.hold(&spec.context_digest);
    let context = context_fetch::fetch(
        &shared.cache,
        &shared.channel,
        &spec.context_digest,
        logs,
        cancel,
    )
    .await?;
    let mut named = std::collections::BTreeMap::new();
    let mut _holds = Vec::new();
    for (name, digest) in spec.flags.uploaded_contexts() {
        let digest = ContextDigest::parse(digest)
            .map_err(|e| JobFailure::permanent(format!("--build-context {name}: {e}")))?;
        _holds.push(shared.cache.hold(&digest));
        named.insert(
            name.to_owned(),
            context_fetch::fetch(&shared.cache, &shared.channel, &digest, logs, cancel).await?,
        );
    }
    job::execute(
        &shared.engine,
        spec,
        &context,
        &named,
        &shared.options,
        logs,
        cancel,
    )
    .await
}

/// [`fetch_and_execute`], with running out of disk reported as such: this worker then takes no
/// job for a while (before the result leaves), so that the retry goes elsewhere.
async fn run_job(
    shared: &Shared,
    spec: &JobSpec,
    logs: &LogSink,
    cancel: &CancellationToken,
) -> Result<PushedImage, JobFailure> {
    fetch_and_execute(shared, spec, logs, cancel)
        .await
        .map_err(|failure| match job::out_of_disk(&failure) {
            Some(out_of_disk) => {
                shared.health.ran_out_of_disk();
                out_of_disk
            }
            None => failure,
        })
}

/// The code, the message, and the causes of a transport failure ("transport error" alone says
/// nothing).
pub(crate) fn describe_status(status: &tonic::Status) -> String {
    let mut text = if status.message().is_empty() {
        format!("{:?}", status.code())
    } else {
        format!("{:?}: {}", status.code(), status.message())
    };
    if let Some(source) = std::error::Error::source(status) {
        let causes = crate::error_chain(source);
        if !text.contains(&causes) {
            text.push_str(": ");
            text.push_str(&causes);
        }
    }
    text
}

fn message(msg: ToCoordinator) -> v1::WorkerMessage {
    v1::WorkerMessage { msg: Some(msg) }
}

fn result_message(
    job_id: &str,
    attempt: u32,
    result: Result<PushedImage, JobFailure>,
) -> v1::WorkerMessage {
    let outcome = match result {
        Ok(pushed) => v1::job_result::Outcome::Pushed(v1::ImageDescriptor {
            digest: pushed.digest,
            size: pushed.size as i64,
            media_type: pushed.media_type,
            attestations: (pushed.attestations.into_iter())
                .map(|a| v1::ImageDescriptor {
                    digest: a.digest,
                    size: a.size as i64,
                    media_type: manifold_registry::manifest::OCI_MANIFEST.to_owned(),
                    attestations: Vec::new(),
                })
                .collect(),
        }),
        Err(failure) => v1::job_result::Outcome::Failure(v1::JobFailure {
            message: failure.message,
            retryable: failure.retryable,
            cancelled: failure.cancelled,
            refused: failure.refused,
        }),
    };
    message(ToCoordinator::Result(v1::JobResult {
        job_id: job_id.to_owned(),
        attempt,
        outcome: Some(outcome),
    }))
}
