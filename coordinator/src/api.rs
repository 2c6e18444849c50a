//! The gRPC edge: the `Builds`, `Contexts` and `Workers` services over the [`Farm`].
//!
//! This is the only module that sees wire types; it converts them to domain types on the way in and
//! back on the way out, and maps every error to a `tonic::Status` in one place ([`status`]).
//!
//! It is also where callers are identified: people by their bearer token ([`Access`]), workers by
//! their TLS client certificate ([`WorkerAuth`]). A caller sees only its team's builds: another
//! team's build is `PermissionDenied` for get, watch, logs and cancel, and missing from lists.

use std::collections::BTreeMap;
use std::pin::Pin;

use futures::Stream;
use manifold_proto::v1::{self, builds_server, contexts_server, workers_server};
use manifold_proto::{BuildId, JobId, Platform};
use oci_client::Reference;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::access::{Access, Caller};
use crate::build::{self, BuildRequest, BuildState, Event, EventKind, JobState};
use crate::contexts::ContextError;
use crate::farm::{
    Farm, FarmError, JobOutcome, JobSpec, ToWorker, WorkerHealth, WorkerHello, WorkerView,
};
use crate::paging::PageQuery;
use crate::store::{StoreError, is_disk_full};

mod workers_watch;

/// Most builds one `Builds.List` answers (a larger `limit` is cut to this).
pub const MAX_LIST_BUILDS: usize = crate::paging::MAX_PAGE;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// What this coordinator is right now.
#[derive(Clone)]
pub enum Role {
    /// It leads: it schedules and writes, through this farm.
    Leader(Farm),
    /// Another coordinator leads (at this address, when known); calls are redirected there.
    Follower(Option<String>),
}

use manifold_proto::discovery::LEADER_METADATA;

/// How workers are identified.
#[derive(Clone, Debug)]
pub enum WorkerAuth {
    /// By their TLS client certificate (verified against the client CA by the TLS layer): its
    /// common name is the worker's name, its organization (optional) the team owning it, which
    /// must be one of `teams`. A worker without certificate is refused.
    Certificate {
        /// The declared teams.
        teams: std::collections::BTreeSet<String>,
    },
    /// By the name in their hello (plaintext loopback development); they own nothing.
    Name,
}

/// Implements all three services; clone it into each server.
#[derive(Clone)]
pub struct Api {
    role: tokio::sync::watch::Receiver<Role>,
    access: Access,
    workers: WorkerAuth,
    /// Workers that reported an image failing [`crate::verify`], and why: they get no job until
    /// this coordinator restarts, reconnecting included.
    distrusted: std::sync::Arc<std::sync::Mutex<BTreeMap<String, String>>>,
    limits: std::sync::Arc<crate::limits::Limits>,
    /// Wrong tokens per source address, to slow guessing.
    throttle: std::sync::Arc<std::sync::Mutex<crate::throttle::Throttle>>,
    /// Image checks wait their registry's turn.
    checks: std::sync::Arc<crate::verify::Turns>,
}

impl Api {
    /// The API of whatever role `role` holds at each call.
    pub fn new(
        role: tokio::sync::watch::Receiver<Role>,
        access: Access,
        workers: WorkerAuth,
        limits: crate::limits::Limits,
    ) -> Self {
        Self {
            role,
            access,
            workers,
            distrusted: Default::default(),
            limits: std::sync::Arc::new(limits),
            throttle: Default::default(),
            checks: Default::default(),
        }
    }

    /// Why worker `name` gets no job, when it reported an image that failed verification.
    fn distrust_of(&self, name: &str) -> Option<String> {
        let distrusted = self
            .distrusted
            .lock()
            .expect("distrust table lock poisoned");
        distrusted.get(name).cloned()
    }

    /// The caller of a request, from its bearer token. A wrong token is logged by the first 12
    /// hex digits of its SHA-256 (never the token) and its source, and the refusal carries how
    /// long to wait before answering (see [`crate::throttle`]); pass it to [`Api::admitted`].
    fn caller<T>(&self, request: &Request<T>) -> Result<Caller, (Status, std::time::Duration)> {
        let now = std::time::Duration::ZERO;
        let header = match request.metadata().get("authorization") {
            Some(v) => Some(v.to_str().map_err(|_| {
                (
                    Status::unauthenticated("the authorization header is not valid text"),
                    now,
                )
            })?),
            None => None,
        };
        let source = request.remote_addr().map(|a| a.ip());
        let mut throttle = self.throttle.lock().expect("throttle lock poisoned");
        match self.access.authenticate(header) {
            Ok(caller) => {
                if let Some(source) = source {
                    throttle.succeeded(source);
                }
                Ok(caller)
            }
            Err(e) => {
                let status = Status::unauthenticated(e.to_string());
                let Some(source) = source.filter(|_| e == crate::access::AccessError::Unknown)
                else {
                    return Err((status, now));
                };
                let (failures, delay) = throttle.failed(source, std::time::Instant::now());
                let token_sha256 = header
                    .and_then(|h| h.split_once(' '))
                    .map(|(_, t)| crate::access::token_digest(t.trim())[..12].to_owned())
                    .unwrap_or_default();
                tracing::warn!(%source, %token_sha256, failures, delay_ms = delay.as_millis() as u64, "refused a wrong token");
                Err((status, delay))
            }
        }
    }

    /// The outcome of [`Api::caller`], once any delay for a wrong token has passed.
    async fn admitted(
        &self,
        identified: Result<Caller, (Status, std::time::Duration)>,
    ) -> Result<Caller, Status> {
        match identified {
            Ok(caller) => Ok(caller),
            Err((status, delay)) => {
                tokio::time::sleep(delay).await;
                Err(status)
            }
        }
    }

    /// Whether `caller` may see build `id` (held in full or only in the store; its record is
    /// not read).
    fn check_visible(&self, farm: &Farm, id: BuildId, caller: &Caller) -> Result<(), Status> {
        let team = farm.team_of(id).map_err(status)?;
        if !caller.sees(&team) {
            return Err(Status::permission_denied(format!(
                "build {id} belongs to another team; `{}` may only see builds of team `{}`",
                caller.name, caller.team
            )));
        }
        Ok(())
    }

    /// The build `id`, if `caller` may see it (read from the store when it was evicted).
    async fn visible_build(
        &self,
        farm: &Farm,
        id: BuildId,
        caller: &Caller,
    ) -> Result<build::Build, Status> {
        self.check_visible(farm, id, caller)?;
        farm.find(id).await.map_err(status)
    }

    /// The worker identity of an `Attach` or `DownloadContext` call: the certificate's name and
    /// owner team, or (plaintext) the name the worker gives.
    fn worker_identity<T>(
        &self,
        request: &Request<T>,
    ) -> Result<Option<crate::pki::WorkerIdentity>, Status> {
        let WorkerAuth::Certificate { teams } = &self.workers else {
            return Ok(None);
        };
        let certs = request.peer_certs().filter(|c| !c.is_empty()).ok_or_else(|| {
            Status::unauthenticated(
                "this coordinator requires workers to present a TLS client certificate signed by the farm's CA, and none was presented: start manifold-worker with --cert and --key (e.g. from `manifold-coordinator dev-ca --worker NAME[=TEAM]`)",
            )
        })?;
        let identity = crate::pki::worker_identity(certs[0].as_ref())
            .map_err(|e| Status::unauthenticated(format!("unusable worker certificate: {e}")))?;
        if let Some(team) = &identity.team
            && !teams.contains(team)
        {
            return Err(Status::permission_denied(format!(
                "the certificate of worker `{}` names owner team `{team}`, which the coordinator's config does not declare; add a [[team]] named `{team}` or issue a certificate without a team",
                identity.name
            )));
        }
        Ok(Some(identity))
    }

    /// Pauses (or resumes) worker `name` for its owner team or an admin: the one path of both
    /// `Workers.Pause` and `Workers.Resume`.
    fn set_paused(
        &self,
        caller: &Caller,
        name: &str,
        paused: bool,
    ) -> Result<v1::WorkerInfo, Status> {
        let farm = self.farm()?;
        owner_or_admin(&farm, caller, name, if paused { "pause" } else { "resume" })?;
        let worker = farm.pause(name, paused).map_err(status)?;
        Ok(worker_to_wire(worker))
    }

    /// The farm, when this coordinator leads; otherwise `Unavailable` naming the leader.
    fn farm(&self) -> Result<Farm, Status> {
        match &*self.role.borrow() {
            Role::Leader(farm) => Ok(farm.clone()),
            Role::Follower(leader) => {
                let mut status = Status::unavailable(match leader {
                    Some(l) => format!("this coordinator is not the leader; the leader is at {l}"),
                    None => "this coordinator is not the leader and no leader is elected yet; retry shortly".to_owned(),
                });
                if let Some(value) = leader.as_deref().and_then(|l| l.parse().ok()) {
                    status.metadata_mut().insert(LEADER_METADATA, value);
                }
                Err(status)
            }
        }
    }
}

/// The one place farm and context errors become gRPC statuses.
fn status(e: impl Into<ApiError>) -> Status {
    match e.into() {
        ApiError::Farm(FarmError::Invalid(e)) => Status::invalid_argument(e.to_string()),
        ApiError::Farm(e @ FarmError::UnknownBuild(_)) => Status::not_found(e.to_string()),
        ApiError::Farm(e @ FarmError::UnknownWorker(_)) => Status::not_found(e.to_string()),
        ApiError::Farm(e @ FarmError::DuplicateWorker(_)) => Status::already_exists(e.to_string()),
        ApiError::Farm(e @ FarmError::BadHello(_)) => Status::invalid_argument(e.to_string()),
        ApiError::Farm(e @ FarmError::Forbidden(_)) => Status::permission_denied(e.to_string()),
        ApiError::Farm(e @ FarmError::NotPublishable { .. }) => {
            Status::failed_precondition(e.to_string())
        }
        ApiError::Context(e @ (ContextError::BadDigest(_) | ContextError::Mismatch { .. })) => {
            Status::invalid_argument(e.to_string())
        }
        ApiError::Context(e @ ContextError::Unknown(_)) => Status::not_found(e.to_string()),
        ApiError::Context(ContextError::Io { path, source }) if is_disk_full(&source) => {
            Status::resource_exhausted(format!(
                "context store disk full: writing {}: {source}; free space on the file system of the state dir (--state-dir); the coordinator goes on by itself once there is room",
                path.display()
            ))
        }
        ApiError::Context(e @ ContextError::Io { .. }) => Status::internal(e.to_string()),
        ApiError::Context(e @ ContextError::Remote(_)) => Status::unavailable(e.to_string()),
        ApiError::Farm(FarmError::Store(e @ StoreError::DiskFull(_))) => {
            Status::resource_exhausted(e.to_string())
        }
        ApiError::Farm(e @ FarmError::Store(_)) => Status::unavailable(e.to_string()),
        ApiError::Farm(e @ FarmError::Page(_)) => Status::invalid_argument(e.to_string()),
    }
}

enum ApiError {
    Farm(FarmError),
    Context(ContextError),
}

impl From<FarmError> for ApiError {
    fn from(e: FarmError) -> Self {
        Self::Farm(e)
    }
}

impl From<ContextError> for ApiError {
    fn from(e: ContextError) -> Self {
        Self::Context(e)
    }
}

/// Waits until `changed` changes, for a watch stream whose caller reads `tx`; `false` when the
/// stream is to end instead: the farm dropped the channel, the caller went away, or this
/// coordinator stepped down (the caller is then told to watch `what` again on the new leader).
async fn next_change<T, M>(
    changed: &mut tokio::sync::watch::Receiver<T>,
    tx: &mpsc::Sender<Result<M, Status>>,
    stopped: &tokio_util::sync::CancellationToken,
    what: &str,
) -> bool {
    tokio::select! {
        r = changed.changed() => r.is_ok(),
        _ = tx.closed() => false,
        _ = stopped.cancelled() => {
            let message = format!("this coordinator stepped down; watch again to follow {what} on the new leader");
            let _ = tx.send(Err(Status::unavailable(message))).await;
            false
        }
    }
}

fn parse_build_id(s: &str) -> Result<BuildId, Status> {
    s.parse().map_err(Status::invalid_argument)
}

fn parse_job_id(s: &str) -> Result<JobId, Status> {
    s.parse().map_err(Status::invalid_argument)
}

fn pushed(r: crate::verify::Reported) -> JobOutcome {
    JobOutcome::Pushed {
        digest: r.digest,
        size: r.size,
        media_type: r.media_type,
        attestations: r.attestations,
    }
}

impl Api {
    /// A reported image was checked: the attempt succeeds, or fails (counted and retried) naming
    /// the worker; a worker that reported a false image gets no more jobs.
    fn checked(
        &self,
        farm: &Farm,
        session: &crate::farm::Session,
        job: JobId,
        attempt: u32,
        checked: Result<crate::verify::Reported, crate::verify::VerifyError>,
    ) {
        let worker = &session.worker;
        let e = match checked {
            Ok(reported) => return farm.result(session, job, attempt, pushed(reported)),
            Err(e) => e,
        };
        tracing::warn!(%worker, %job, attempt, error = %e, "a reported image failed verification");
        if e.is_mismatch() {
            let reason = format!(
                "it reported an image that failed verification ({e}); restart the coordinator to trust it again"
            );
            self.distrusted
                .lock()
                .expect("distrust table lock poisoned")
                .insert(worker.clone(), reason.clone());
            // Before the retry is scheduled, so that it goes elsewhere.
            farm.health(
                session,
                WorkerHealth {
                    draining: false,
                    unhealthy: Some(reason),
                    ..WorkerHealth::default()
                },
            );
        }
        let outcome = JobOutcome::Failed {
            message: format!("worker {worker} reported an image that failed verification: {e}"),
            retryable: true,
            cancelled: false,
            refused: false,
        };
        farm.result(session, job, attempt, outcome);
    }
}

// ----- conversions --------------------------------------------------------------------------------

fn request_from_wire(r: v1::SubmitBuildRequest) -> Result<BuildRequest, Status> {
    use manifold_proto::build_flags;
    let flags = r
        .flags
        .as_ref()
        .map(build_flags::from_wire)
        .transpose()
        .map_err(|e| Status::invalid_argument(e.to_string()))?
        .unwrap_or_default();
    build_flags::check_secrets(&r.secrets).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let secrets = r
        .secrets
        .into_iter()
        .map(|s| (s.id, manifold_proto::SecretValue(s.value)))
        .collect();
    Ok(BuildRequest {
        image: r.image,
        platforms: r
            .platforms
            .iter()
            .map(|p| {
                if p.variant.is_empty() {
                    format!("{}/{}", p.os, p.architecture)
                } else {
                    format!("{}/{}/{}", p.os, p.architecture, p.variant)
                }
            })
            .collect(),
        context_digest: r.context_digest,
        dockerfile: r.dockerfile,
        platform_dockerfiles: r.platform_dockerfiles.into_iter().collect(),
        build_args: r.build_args.into_iter().collect(),
        target: r.target,
        labels: r.labels.into_iter().collect(),
        arch_tags: r.arch_tags,
        timeout_seconds: r.timeout_seconds,
        arch_tag_template: r.arch_tag_template,
        priority: r.priority,
        flags,
        secrets,
        extra_tags: r.extra_tags,
    })
}

fn request_to_wire(r: &BuildRequest, spec: &build::BuildSpec) -> v1::SubmitBuildRequest {
    v1::SubmitBuildRequest {
        image: spec.image.whole(),
        platforms: spec.platforms.iter().map(v1::Platform::from).collect(),
        context_digest: r.context_digest.clone(),
        dockerfile: r.dockerfile.clone(),
        platform_dockerfiles: r.platform_dockerfiles.clone().into_iter().collect(),
        build_args: r.build_args.clone().into_iter().collect(),
        target: r.target.clone(),
        labels: r.labels.clone().into_iter().collect(),
        arch_tags: r.arch_tags,
        timeout_seconds: r.timeout_seconds,
        arch_tag_template: r.arch_tag_template.clone(),
        priority: r.priority,
        // Secrets are never returned; the flags as the build keeps them.
        flags: Some(manifold_proto::build_flags::to_wire(&spec.flags)),
        secrets: Vec::new(),
        extra_tags: spec.extra_tags.iter().map(Reference::whole).collect(),
    }
}

fn build_state(s: BuildState) -> v1::BuildState {
    match s {
        BuildState::Queued => v1::BuildState::Queued,
        BuildState::Running => v1::BuildState::Running,
        BuildState::Succeeded => v1::BuildState::Succeeded,
        BuildState::Failed => v1::BuildState::Failed,
        BuildState::Cancelled => v1::BuildState::Cancelled,
    }
}

fn job_state(s: JobState) -> v1::JobState {
    match s {
        JobState::Queued => v1::JobState::Queued,
        JobState::Assigned => v1::JobState::Assigned,
        JobState::Running => v1::JobState::Running,
        JobState::Succeeded => v1::JobState::Succeeded,
        JobState::Failed => v1::JobState::Failed,
        JobState::Cancelled => v1::JobState::Cancelled,
    }
}

fn build_to_wire(b: &build::Build) -> v1::Build {
    v1::Build {
        id: b.id.to_string(),
        request: Some(request_to_wire(&b.request, &b.spec)),
        state: build_state(b.state) as i32,
        jobs: b
            .jobs
            .iter()
            .map(|j| v1::Job {
                id: j.id.to_string(),
                platform: Some((&j.platform).into()),
                state: job_state(j.state) as i32,
                worker: j.worker.clone().unwrap_or_default(),
                attempt: j.attempt,
                image: j.image.as_ref().map(|i| v1::ImageDescriptor {
                    digest: i.digest.clone(),
                    size: i.size as i64,
                    media_type: i.media_type.clone(),
                    attestations: (i.attestations.iter())
                        .map(|a| v1::ImageDescriptor {
                            digest: a.digest.clone(),
                            size: a.size as i64,
                            media_type: manifold_registry::manifest::OCI_MANIFEST.to_owned(),
                            attestations: Vec::new(),
                        })
                        .collect(),
                }),
                error: j.error.clone().unwrap_or_default(),
                log_tail: j.log_tail.iter().cloned().collect(),
            })
            .collect(),
        manifest_digest: b.manifest.as_ref().map(|m| m.0.clone()).unwrap_or_default(),
        manifest_media_type: b.manifest.as_ref().map(|m| m.1.clone()).unwrap_or_default(),
        error: b.error.clone().unwrap_or_default(),
        created_at_ms: b.created_at_ms,
        finished_at_ms: b.finished_at_ms.unwrap_or_default(),
        team: b.team.clone(),
        submitted_by: b.submitted_by.clone(),
        publishing: b.publishing.clone().unwrap_or_default(),
    }
}

fn event_to_wire(e: &Event) -> v1::BuildEvent {
    use v1::build_event::Event as E;
    let event = match &e.kind {
        EventKind::JobState {
            platform,
            state,
            worker,
            attempt,
            message,
        } => E::JobState(v1::JobStateChanged {
            platform: Some(platform.into()),
            state: job_state(*state) as i32,
            worker: worker.clone().unwrap_or_default(),
            attempt: *attempt,
            message: message.clone(),
        }),
        EventKind::Log { platform, line } => E::Log(v1::LogLine {
            platform: Some(platform.into()),
            line: line.clone(),
        }),
        EventKind::Publishing { message } => E::Publishing(v1::BuildPublishing {
            message: message.clone(),
        }),
        EventKind::Finished {
            state,
            manifest_digest,
            error,
        } => E::Finished(v1::BuildFinished {
            state: build_state(*state) as i32,
            manifest_digest: manifest_digest.clone().unwrap_or_default(),
            error: error.clone().unwrap_or_default(),
        }),
    };
    v1::BuildEvent {
        sequence: e.sequence,
        at_ms: e.at_ms,
        event: Some(event),
    }
}

fn job_spec_to_wire(j: JobSpec) -> v1::AssignJob {
    v1::AssignJob {
        job_id: j.job.to_string(),
        attempt: j.attempt,
        build_id: j.build.to_string(),
        platform: Some((&j.platform).into()),
        context_digest: j.context_digest,
        dockerfile: j.dockerfile,
        build_args: j.build_args.into_iter().collect(),
        target: j.target.unwrap_or_default(),
        labels: j.labels.into_iter().collect(),
        repository: j.repository,
        insecure_registry: j.insecure_registry,
        flags: Some(manifold_proto::build_flags::to_wire(&j.flags)),
        secrets: j
            .secrets
            .into_iter()
            .map(|(id, value)| v1::Secret { id, value: value.0 })
            .collect(),
        registry_logins: j
            .registry_logins
            .into_iter()
            .map(|l| v1::RegistryLogin {
                registry: l.registry,
                username: l.username,
                password: l.password,
            })
            .collect(),
    }
}

fn to_worker_wire(m: ToWorker) -> v1::CoordinatorMessage {
    use v1::coordinator_message::Msg;
    let msg = match m {
        ToWorker::Assign(spec) => Msg::Assign(job_spec_to_wire(*spec)),
        ToWorker::Cancel { job, attempt } => Msg::Cancel(v1::CancelJob {
            job_id: job.to_string(),
            attempt,
        }),
        ToWorker::Drain => Msg::Drain(v1::Drain {}),
        ToWorker::Pause(true) => Msg::Pause(v1::Pause {}),
        ToWorker::Pause(false) => Msg::Resume(v1::Resume {}),
    };
    v1::CoordinatorMessage { msg: Some(msg) }
}

fn hello_from_wire(h: v1::WorkerHello) -> Result<WorkerHello, Status> {
    let platforms = h
        .platforms
        .iter()
        .map(Platform::try_from)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let running = h
        .running
        .iter()
        .map(|r| Ok((parse_job_id(&r.job_id)?, r.attempt)))
        .collect::<Result<Vec<_>, Status>>()?;
    Ok(WorkerHello {
        name: h.name,
        platforms,
        emulated: h.emulated,
        slots: h.slots,
        labels: h.labels.into_iter().collect::<BTreeMap<_, _>>(),
        docker_version: h.docker_version,
        running,
        draining: h.draining,
        unhealthy: h.unhealthy.then(|| unhealthy_reason(h.unhealthy_reason)),
        owner: None,
        paused: h.paused,
        lending: !h.not_lending,
        disk: h.disk.as_ref().map(Into::into),
    })
}

fn unhealthy_reason(reason: String) -> String {
    if reason.trim().is_empty() {
        "the worker gave no reason".to_owned()
    } else {
        reason
    }
}

fn worker_to_wire(w: WorkerView) -> v1::WorkerInfo {
    v1::WorkerInfo {
        name: w.name,
        platforms: w.platforms.iter().map(v1::Platform::from).collect(),
        emulated: w.emulated,
        slots: w.slots,
        slots_in_use: w.slots_in_use,
        last_heartbeat_ms: w.last_heartbeat_ms,
        docker_version: w.docker_version,
        labels: w.labels.into_iter().collect(),
        connected_at_ms: w.connected_at_ms,
        draining: w.draining,
        unhealthy: w.unhealthy.is_some(),
        unhealthy_reason: w.unhealthy.unwrap_or_default(),
        owner: w.owner.unwrap_or_default(),
        paused: w.paused,
        not_lending: !w.lending,
        disk: w.disk.as_ref().map(Into::into),
    }
}

// ----- Builds -------------------------------------------------------------------------------------

#[tonic::async_trait]
impl builds_server::Builds for Api {
    async fn submit(
        &self,
        request: Request<v1::SubmitBuildRequest>,
    ) -> Result<Response<v1::SubmitBuildResponse>, Status> {
        let caller = self.admitted(self.caller(&request)).await?;
        let req = request_from_wire(request.into_inner())?;
        self.limits
            .check_request(&req)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let farm = self.farm()?;
        // A context of another team is unknown to this one, with the same words; so is a
        // `--build-context NAME=DIR` it names.
        for digest in req.contexts() {
            if !farm
                .contexts()
                .held_by(&caller.team, &digest)
                .await
                .map_err(status)?
            {
                return Err(status(ContextError::Unknown(digest)));
            }
        }
        let id = farm.submit(req, &caller).await.map_err(status)?;
        Ok(Response::new(v1::SubmitBuildResponse {
            build_id: id.to_string(),
        }))
    }

    type WatchStream = BoxStream<v1::BuildEvent>;

    async fn watch(
        &self,
        request: Request<v1::WatchBuildRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let caller = self.admitted(self.caller(&request)).await?;
        let id = parse_build_id(&request.get_ref().build_id)?;
        let farm = self.farm()?;
        // Fail fast on an unknown or hidden build, before the stream starts.
        self.check_visible(&farm, id, &caller)?;
        // A build restored from the store (a restart, a failover) lost its earlier lines from
        // its history: they come from the durable logs first, and the history after them.
        let replay = farm.replay(id).await.map_err(status)?;
        let (tx, rx) = mpsc::channel(256);
        let stopped = farm.stopped();
        tokio::spawn(async move {
            let shift = replay.len() as u64;
            for e in &replay {
                if tx.send(Ok(event_to_wire(e))).await.is_err() {
                    return;
                }
            }
            let mut next = 0usize;
            loop {
                let Ok((events, mut changed, ended)) = farm.history(id, next).await else {
                    return;
                };
                next += events.len();
                for e in &events {
                    let mut e = event_to_wire(e);
                    e.sequence += shift;
                    if tx.send(Ok(e)).await.is_err() {
                        return; // the watcher went away
                    }
                }
                if ended {
                    return;
                }
                if !next_change(&mut changed, &tx, &stopped, "the build").await {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get(
        &self,
        request: Request<v1::GetBuildRequest>,
    ) -> Result<Response<v1::Build>, Status> {
        let caller = self.admitted(self.caller(&request)).await?;
        let id = parse_build_id(&request.get_ref().build_id)?;
        let b = self.visible_build(&self.farm()?, id, &caller).await?;
        Ok(Response::new(build_to_wire(&b)))
    }

    async fn list(
        &self,
        request: Request<v1::ListBuildsRequest>,
    ) -> Result<Response<v1::ListBuildsResponse>, Status> {
        let caller = self.admitted(self.caller(&request)).await?;
        let r = request.get_ref();
        let q = PageQuery {
            limit: r.limit as usize,
            before: match r.before.as_str() {
                "" => None,
                id => Some(parse_build_id(id)?),
            },
            since_ms: (r.since_ms != 0).then_some(r.since_ms),
        };
        // A listing carries summaries: no build args, labels or output tails (`Builds.Get` has
        // them, [`build::Build::listing`]), so that its size is bounded by the number of builds.
        let page = self.farm()?.list(&q, &caller).await.map_err(status)?;
        let builds = page.items.iter().map(build_to_wire).collect();
        Ok(Response::new(v1::ListBuildsResponse {
            builds,
            next_before: page
                .next_before
                .map(|id| id.to_string())
                .unwrap_or_default(),
        }))
    }

    async fn cancel(
        &self,
        request: Request<v1::CancelBuildRequest>,
    ) -> Result<Response<v1::CancelBuildResponse>, Status> {
        let caller = self.admitted(self.caller(&request)).await?;
        let id = parse_build_id(&request.get_ref().build_id)?;
        let farm = self.farm()?;
        self.check_visible(&farm, id, &caller)?;
        let b = farm.cancel(id).await.map_err(status)?;
        Ok(Response::new(v1::CancelBuildResponse {
            build: Some(build_to_wire(&b)),
        }))
    }

    async fn publish(
        &self,
        request: Request<v1::PublishBuildRequest>,
    ) -> Result<Response<v1::PublishBuildResponse>, Status> {
        let caller = self.admitted(self.caller(&request)).await?;
        let id = parse_build_id(&request.get_ref().build_id)?;
        let farm = self.farm()?;
        // Same team or admin: another team's build is PermissionDenied before the farm acts.
        self.check_visible(&farm, id, &caller)?;
        let b = farm.republish(id, &caller).await.map_err(status)?;
        Ok(Response::new(v1::PublishBuildResponse {
            build: Some(build_to_wire(&b)),
        }))
    }

    async fn logs(
        &self,
        request: Request<v1::BuildLogsRequest>,
    ) -> Result<Response<v1::BuildLogsResponse>, Status> {
        let caller = self.admitted(self.caller(&request)).await?;
        let request = request.into_inner();
        let id = parse_build_id(&request.build_id)?;
        let only = request
            .platform
            .as_ref()
            .map(Platform::try_from)
            .transpose()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let farm = self.farm()?;
        self.check_visible(&farm, id, &caller)?;
        let lines = farm
            .logs(id, only.as_ref())
            .await
            .map_err(status)?
            .into_iter()
            .map(|(platform, line)| v1::LogLine {
                platform: Some((&platform).into()),
                line,
            })
            .collect();
        Ok(Response::new(v1::BuildLogsResponse { lines }))
    }

    async fn teams(
        &self,
        request: Request<v1::ListTeamsRequest>,
    ) -> Result<Response<v1::ListTeamsResponse>, Status> {
        self.admitted(self.caller(&request)).await?;
        let farm = self.farm()?;
        let usage = farm.teams();
        let rules = &farm.config().repositories;
        let running: u32 = usage.iter().map(|u| u.running).sum();
        let active_weight: u32 = usage
            .iter()
            .filter(|u| u.running + u.queued > 0)
            .map(|u| u.team.weight.max(1))
            .sum();
        let teams = usage
            .into_iter()
            .map(|u| v1::TeamInfo {
                weight: u.team.weight.max(1),
                max_concurrent_jobs: u.team.max_running.unwrap_or(0),
                share: if running == 0 {
                    0.0
                } else {
                    f64::from(u.running) / f64::from(running)
                },
                weight_share: if u.running + u.queued == 0 || active_weight == 0 {
                    0.0
                } else {
                    f64::from(u.team.weight.max(1)) / f64::from(active_weight)
                },
                running: u.running,
                queued: u.queued,
                repositories: rules.patterns(&u.team.name),
                push_anywhere: !rules.is_enforced(),
                login_registries: rules.login_registries(&u.team.name),
                name: u.team.name,
            })
            .collect();
        Ok(Response::new(v1::ListTeamsResponse { teams }))
    }

    async fn queue(
        &self,
        request: Request<v1::QueueRequest>,
    ) -> Result<Response<v1::QueueResponse>, Status> {
        let caller = self.admitted(self.caller(&request)).await?;
        let now = std::time::Instant::now();
        let jobs = self
            .farm()?
            .queue()
            .into_iter()
            .map(|(q, b)| {
                let visible = caller.sees(&b.team);
                v1::QueuedJob {
                    build_id: if visible {
                        b.id.to_string()
                    } else {
                        String::new()
                    },
                    job_id: if visible {
                        q.job.to_string()
                    } else {
                        String::new()
                    },
                    image: if visible {
                        b.spec.image.whole()
                    } else {
                        String::new()
                    },
                    platform: Some((&q.platform).into()),
                    team: q.team,
                    priority: q.priority,
                    waited_ms: now.saturating_duration_since(q.since).as_millis() as i64,
                }
            })
            .collect();
        Ok(Response::new(v1::QueueResponse { jobs }))
    }
}

// ----- Contexts -----------------------------------------------------------------------------------

#[tonic::async_trait]
impl contexts_server::Contexts for Api {
    async fn has(
        &self,
        request: Request<v1::HasContextRequest>,
    ) -> Result<Response<v1::HasContextResponse>, Status> {
        let caller = self.admitted(self.caller(&request)).await?;
        // Another team's context answers exactly like one nobody uploaded.
        let present = self
            .farm()?
            .contexts()
            .held_by(&caller.team, &request.get_ref().digest)
            .await
            .map_err(status)?;
        Ok(Response::new(v1::HasContextResponse { present }))
    }

    async fn upload(
        &self,
        request: Request<Streaming<v1::UploadContextChunk>>,
    ) -> Result<Response<v1::UploadContextResponse>, Status> {
        let caller = self.admitted(self.caller(&request)).await?;
        let mut stream = request.into_inner();
        let first = stream.message().await?.ok_or_else(|| {
            Status::invalid_argument("empty context upload: send at least one chunk")
        })?;
        let digest = first.digest.clone();
        let farm = self.farm()?;
        let store = farm.contexts();
        // The bytes are verified even when another team stored the same context: possession is
        // proven by sending what hashes to the digest, never by knowing the digest.
        let mut upload = store.begin(&digest).await.map_err(status)?;
        let stored = store.team_bytes(&caller.team, &digest);
        let mut size = 0u64;
        let mut chunk = first.data;
        loop {
            // Refused as soon as it is over a bound; the partial file goes with `upload`.
            size += chunk.len() as u64;
            self.limits
                .check_upload(&digest, size)
                .and_then(|()| self.limits.check_team_total(&caller.team, stored, size))
                .map_err(|e| Status::resource_exhausted(e.to_string()))?;
            upload.write(&chunk).await.map_err(status)?;
            match stream.message().await? {
                Some(next) => chunk = next.data,
                None => break,
            }
        }
        let size = upload.finish().await.map_err(status)?;
        store.grant(&caller.team, &digest).map_err(status)?;
        store
            .replicate(&caller.team, &digest)
            .await
            .map_err(status)?;
        tracing::info!(%digest, size, team = %caller.team, "context stored");
        Ok(Response::new(v1::UploadContextResponse { digest, size }))
    }
}

// ----- Workers ------------------------------------------------------------------------------------

#[tonic::async_trait]
impl workers_server::Workers for Api {
    type AttachStream = BoxStream<v1::CoordinatorMessage>;

    async fn attach(
        &self,
        request: Request<Streaming<v1::WorkerMessage>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        use v1::worker_message::Msg;
        let identity = self.worker_identity(&request)?;
        let mut inbound = request.into_inner();
        let mut hello = match inbound.message().await? {
            Some(v1::WorkerMessage {
                msg: Some(Msg::Hello(h)),
            }) => hello_from_wire(h)?,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message on the worker stream must be a WorkerHello",
                ));
            }
        };
        if let Some(identity) = identity {
            if identity.name != hello.name {
                return Err(Status::permission_denied(format!(
                    "this worker introduced itself as `{}` but its certificate is for worker `{}`: start it with --name {} or use the certificate issued for `{}`",
                    hello.name, identity.name, identity.name, hello.name
                )));
            }
            hello.owner = identity.team;
        }
        if let Some(reason) = self.distrust_of(&hello.name) {
            hello.unhealthy = Some(reason);
        }
        let farm = self.farm()?;
        let (session, mut to_worker) = farm.attach(hello).map_err(status)?;
        let (tx, rx) = mpsc::channel::<Result<v1::CoordinatorMessage, Status>>(64);
        let welcome = v1::CoordinatorMessage {
            msg: Some(v1::coordinator_message::Msg::Welcome(v1::Welcome {
                heartbeat_interval_ms: farm.config().heartbeat_interval.as_millis() as i64,
            })),
        };
        let _ = tx.send(Ok(welcome)).await;

        // Outbound: farm → worker. The farm drops its end when it declares the worker lost (silent
        // for longer than the lease); the stream then ends, so that a worker that was only cut off
        // reconnects and restates its jobs instead of talking into a session nobody reads.
        let out_tx = tx.clone();
        tokio::spawn(async move {
            while let Some(m) = to_worker.recv().await {
                if out_tx.send(Ok(to_worker_wire(m))).await.is_err() {
                    return;
                }
            }
            let _ = out_tx
                .send(Err(Status::unavailable(
                    "the coordinator declared this worker lost (silent for longer than its lease); reconnect and restate the running jobs",
                )))
                .await;
        });

        // Inbound: worker → farm, until the stream ends or this coordinator steps down.
        let span = tracing::info_span!("worker", name = %session.worker);
        let stopped = farm.stopped();
        let api = self.clone();
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                // Reported images being checked; they end with the stream.
                let mut checks = tokio::task::JoinSet::new();
                loop {
                    let next = tokio::select! {
                        m = inbound.message() => m,
                        Some(Ok((job, attempt, checked))) = checks.join_next() => {
                            api.checked(&farm, &session, job, attempt, checked);
                            continue;
                        }
                        _ = stopped.cancelled() => {
                            let _ = tx.send(Err(Status::unavailable("this coordinator stepped down; reconnect to the leader"))).await;
                            break;
                        }
                    };
                    let msg = match next {
                        Ok(Some(m)) => m,
                        Ok(None) => break,
                        Err(e) => {
                            tracing::info!(error = %e, "worker stream broke");
                            break;
                        }
                    };
                    match msg.msg {
                        Some(Msg::Heartbeat(h)) => farm.health(
                            &session,
                            WorkerHealth {
                                draining: h.draining,
                                unhealthy: api.distrust_of(&session.worker).or_else(|| {
                                    h.unhealthy.then(|| unhealthy_reason(h.unhealthy_reason))
                                }),
                                paused_lending: Some((h.paused, !h.not_lending)),
                                disk: h.disk.as_ref().map(Into::into),
                            },
                        ),
                        Some(Msg::Accepted(a)) => {
                            if let Ok(job) = parse_job_id(&a.job_id) {
                                farm.accepted(&session, job, a.attempt);
                            }
                        }
                        Some(Msg::Log(l)) => {
                            if let Ok(job) = parse_job_id(&l.job_id) {
                                farm.log(&session, job, l.attempt, l.lines);
                            }
                        }
                        Some(Msg::Result(r)) => {
                            let Ok(job) = parse_job_id(&r.job_id) else {
                                continue;
                            };
                            let outcome = match r.outcome {
                                Some(v1::job_result::Outcome::Pushed(d)) => {
                                    // Believed only once the registry shows it (see `verify`).
                                    let reported = crate::verify::Reported {
                                        digest: d.digest,
                                        size: d.size.max(0) as u64,
                                        media_type: d.media_type,
                                        attestations: (d.attestations.into_iter())
                                            .map(|a| manifold_registry::manifest::Attestation {
                                                digest: a.digest,
                                                size: a.size.max(0) as u64,
                                            })
                                            .collect(),
                                    };
                                    // The worker's slot is free from here; the job waits
                                    // for the check.
                                    let Some(target) = farm.reported(&session, job, r.attempt)
                                    else {
                                        continue;
                                    };
                                    let registry = farm.config().registry.clone();
                                    let attempt = r.attempt;
                                    let turns = api.checks.clone();
                                    checks.spawn(async move {
                                        let verdict = crate::verify::verify(
                                            &turns,
                                            &registry,
                                            &target.repository,
                                            &target.platform,
                                            &reported,
                                            &target.logins,
                                        )
                                        .await;
                                        (job, attempt, verdict.map(|()| reported))
                                    });
                                    continue;
                                }
                                Some(v1::job_result::Outcome::Failure(f)) => JobOutcome::Failed {
                                    message: f.message,
                                    retryable: f.retryable,
                                    cancelled: f.cancelled,
                                    refused: f.refused,
                                },
                                None => JobOutcome::Failed {
                                    message: "worker sent a result without an outcome".into(),
                                    retryable: true,
                                    cancelled: false,
                                    refused: false,
                                },
                            };
                            farm.result(&session, job, r.attempt, outcome);
                        }
                        Some(Msg::Goodbye(_)) => {
                            farm.draining(&session);
                            break;
                        }
                        Some(Msg::Hello(_)) | None => {}
                    }
                }
                // The worker is done with the jobs whose images are being checked: it leaves
                // now, and their checks still count (a draining worker says goodbye right after
                // its last result, which must not be lost with the stream).
                farm.detach(&session);
                drop(tx);
                while !stopped.is_cancelled()
                    && let Some(joined) = checks.join_next().await
                {
                    if let Ok((job, attempt, checked)) = joined {
                        api.checked(&farm, &session, job, attempt, checked);
                    }
                }
            },
            span,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type DownloadContextStream = BoxStream<v1::ContextChunk>;

    async fn download_context(
        &self,
        request: Request<v1::DownloadContextRequest>,
    ) -> Result<Response<Self::DownloadContextStream>, Status> {
        let identity = self.worker_identity(&request)?;
        let digest = request.into_inner().digest;
        crate::contexts::parse_digest(&digest).map_err(status)?;
        let farm = self.farm()?;
        // A worker gets the context of a job it holds, nothing else. Plaintext (development)
        // workers are not authenticated, so there is nobody to check.
        if let Some(worker) = identity
            && !farm.worker_needs_context(&worker.name, &digest)
        {
            tracing::warn!(worker = %worker.name, context = %digest, "refused a context download: no job of this worker uses it");
            return Err(Status::permission_denied(format!(
                "worker `{}` holds no current job using context {digest}; a worker may download only the contexts of the jobs assigned to it",
                worker.name
            )));
        }
        let path = farm
            .contexts()
            .ensure_local(&digest)
            .await
            .map_err(status)?;
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(|_| status(ContextError::Unknown(digest.clone())))?;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut buf = vec![0u8; manifold_proto::CONTEXT_CHUNK_BYTES];
            loop {
                match file.read(&mut buf).await {
                    Ok(0) => return,
                    Ok(n) => {
                        let chunk = v1::ContextChunk {
                            data: buf[..n].to_vec(),
                        };
                        if tx.send(Ok(chunk)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx
                            .send(Err(Status::internal(format!(
                                "reading context {digest}: {e}"
                            ))))
                            .await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list(
        &self,
        request: Request<v1::ListWorkersRequest>,
    ) -> Result<Response<v1::ListWorkersResponse>, Status> {
        self.admitted(self.caller(&request)).await?;
        let workers = self
            .farm()?
            .workers()
            .into_iter()
            .map(worker_to_wire)
            .collect();
        Ok(Response::new(v1::ListWorkersResponse { workers }))
    }

    type WatchStream = BoxStream<v1::ListWorkersResponse>;

    async fn watch(
        &self,
        request: Request<v1::WatchWorkersRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.admitted(self.caller(&request)).await?;
        let farm = self.farm()?;
        let transitions = farm.transitions();
        let stopped = farm.stopped();
        // One list in flight: while the caller reads slowly, changes pile up as one.
        let (tx, rx) = mpsc::channel(1);
        let snapshot = move || farm.workers().into_iter().map(worker_to_wire).collect();
        tokio::spawn(workers_watch::follow(transitions, stopped, snapshot, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn pause(
        &self,
        request: Request<v1::PauseWorkerRequest>,
    ) -> Result<Response<v1::PauseWorkerResponse>, Status> {
        let caller = self.admitted(self.caller(&request)).await?;
        let worker = self.set_paused(&caller, &request.into_inner().name, true)?;
        Ok(Response::new(v1::PauseWorkerResponse {
            worker: Some(worker),
        }))
    }

    async fn resume(
        &self,
        request: Request<v1::ResumeWorkerRequest>,
    ) -> Result<Response<v1::ResumeWorkerResponse>, Status> {
        let caller = self.admitted(self.caller(&request)).await?;
        let worker = self.set_paused(&caller, &request.into_inner().name, false)?;
        Ok(Response::new(v1::ResumeWorkerResponse {
            worker: Some(worker),
        }))
    }

    async fn drain(
        &self,
        request: Request<v1::DrainWorkerRequest>,
    ) -> Result<Response<v1::DrainWorkerResponse>, Status> {
        let caller = self.admitted(self.caller(&request)).await?;
        let name = request.into_inner().name;
        if name.trim().is_empty() {
            return Err(Status::invalid_argument(
                "no worker name given: pass the NAME that `manifold workers` shows",
            ));
        }
        let farm = self.farm()?;
        let owner = farm
            .workers()
            .into_iter()
            .find(|w| w.name == name)
            .and_then(|w| w.owner);
        if !caller.admin && owner.as_deref() != Some(caller.team.as_str()) {
            return Err(Status::permission_denied(format!(
                "only an admin or the team owning worker `{name}` may drain it; `{}` is in team `{}`",
                caller.name, caller.team
            )));
        }
        let worker = farm.drain(&name).map_err(status)?;
        Ok(Response::new(v1::DrainWorkerResponse {
            worker: Some(worker_to_wire(worker)),
        }))
    }
}

/// Refuses `action` on worker `name` unless `caller` is an admin or of the team owning it.
fn owner_or_admin(farm: &Farm, caller: &Caller, name: &str, action: &str) -> Result<(), Status> {
    if name.trim().is_empty() {
        return Err(Status::invalid_argument(
            "no worker name given: pass the NAME that `manifold workers` shows",
        ));
    }
    let owner = farm
        .workers()
        .into_iter()
        .find(|w| w.name == name)
        .and_then(|w| w.owner);
    if !caller.admin && owner.as_deref() != Some(caller.team.as_str()) {
        return Err(Status::permission_denied(format!(
            "only an admin or the team owning worker `{name}` may {action} it; `{}` is in team `{}`",
            caller.name, caller.team
        )));
    }
    Ok(())
}
