//! The coordinator over real gRPC on 127.0.0.1:0, with scripted workers speaking the v1 worker
//! protocol: the wiring between the stream and the farm. Assignments, results, retries, cancels,
//! refusals, drains, health, adoption after a restart, a silent worker's stream being closed.
//! The timers and retry rules themselves (leases, acknowledgements, stuck attempts, build
//! timeouts, give-up, preemption) are tested at exact times on the pure farm, in
//! `coordinator/src/farm/tests.rs`. (Publishing to a registry is covered by the system tests in
//! tests/.)

use std::sync::{Arc, Mutex};
use std::time::Duration;

use manifold_coordinator::{Config, farm::FarmConfig};
use manifold_proto::v1::{self, coordinator_message::Msg as In, worker_message::Msg as Out};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

mod support;

struct Coordinator {
    url: String,
    shutdown: CancellationToken,
    state: std::sync::Arc<tempfile::TempDir>,
    done: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(farm: FarmConfig) -> Coordinator {
    start_in(farm, std::sync::Arc::new(tempfile::tempdir().unwrap())).await
}

/// Starts a coordinator on an existing state dir (a restart when another one used it before).
async fn start_in(farm: FarmConfig, state: std::sync::Arc<tempfile::TempDir>) -> Coordinator {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let config = Config {
        listen: listener.local_addr().unwrap(),
        state_dir: state.path().to_owned(),
        store: Default::default(),
        context_repository: None,
        context_ttl: std::time::Duration::from_secs(86400),
        limits: Default::default(),
        farm,
        transport: manifold_coordinator::Transport::Plaintext,
        access: manifold_coordinator::access::Access::open(),
        metrics_listen: None,
        dashboard_listen: None,
    };
    let done = tokio::spawn(manifold_coordinator::serve(
        config,
        listener,
        shutdown.clone(),
    ));
    Coordinator {
        url,
        shutdown,
        state,
        done,
    }
}

async fn builds(c: &Coordinator) -> v1::builds_client::BuildsClient<Channel> {
    v1::builds_client::BuildsClient::connect(c.url.clone())
        .await
        .unwrap()
}

/// Uploads a context holding a Dockerfile; returns its digest.
async fn upload_context(c: &Coordinator) -> String {
    let (bytes, digest) = support::context_tar();
    let mut client = v1::contexts_client::ContextsClient::connect(c.url.clone())
        .await
        .unwrap();
    let present = client
        .has(v1::HasContextRequest {
            digest: digest.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .present;
    assert!(!present);
    let chunk = v1::UploadContextChunk {
        digest: digest.clone(),
        data: bytes,
    };
    client
        .upload(tokio_stream::iter(vec![chunk]))
        .await
        .unwrap();
    digest
}

async fn submit(c: &Coordinator, platforms: &[&str]) -> String {
    let digest = upload_context(c).await;
    submit_image(c, &digest, "127.0.0.1:1/team/app:1.0", platforms).await
}

/// Submits a build of `image` from the uploaded context `digest`.
async fn submit_image(c: &Coordinator, digest: &str, image: &str, platforms: &[&str]) -> String {
    let req = v1::SubmitBuildRequest {
        image: image.into(),
        platforms: platforms
            .iter()
            .map(|p| (&p.parse::<manifold_proto::Platform>().unwrap()).into())
            .collect(),
        context_digest: digest.into(),
        ..Default::default()
    };
    builds(c)
        .await
        .submit(req)
        .await
        .unwrap()
        .into_inner()
        .build_id
}

/// A scripted worker: the test decides every message it sends; heartbeats say what `status` holds.
struct FakeWorker {
    tx: mpsc::Sender<v1::WorkerMessage>,
    rx: tonic::Streaming<v1::CoordinatorMessage>,
    heartbeats: tokio::task::JoinHandle<()>,
    status: Arc<Mutex<v1::Heartbeat>>,
}

impl Drop for FakeWorker {
    fn drop(&mut self) {
        self.heartbeats.abort();
    }
}

impl FakeWorker {
    async fn attach(c: &Coordinator, name: &str, platform: &str) -> Self {
        Self::attach_running(c, name, platform, vec![]).await
    }

    /// Attaches restating `running` jobs, as a worker does after a reconnect.
    async fn attach_running(
        c: &Coordinator,
        name: &str,
        platform: &str,
        running: Vec<v1::RunningJob>,
    ) -> Self {
        let mut client = v1::workers_client::WorkersClient::connect(c.url.clone())
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(16);
        let hello = v1::WorkerHello {
            name: name.into(),
            platforms: vec![(&platform.parse::<manifold_proto::Platform>().unwrap()).into()],
            slots: 1,
            running,
            ..Default::default()
        };
        tx.send(v1::WorkerMessage {
            msg: Some(Out::Hello(hello)),
        })
        .await
        .unwrap();
        let mut rx = client
            .attach(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        match rx.next().await {
            Some(Ok(v1::CoordinatorMessage {
                msg: Some(In::Welcome(_)),
            })) => {}
            other => panic!("expected a welcome, got {other:?}"),
        }
        let beat = tx.clone();
        let status = Arc::new(Mutex::new(v1::Heartbeat::default()));
        let current = status.clone();
        let heartbeats = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let heartbeat = current.lock().unwrap().clone();
                let msg = v1::WorkerMessage {
                    msg: Some(Out::Heartbeat(heartbeat)),
                };
                if beat.send(msg).await.is_err() {
                    return;
                }
            }
        });
        Self {
            tx,
            rx,
            heartbeats,
            status,
        }
    }

    /// What the next heartbeats say: the daemon's health and whether the worker drains.
    fn set_status(&self, unhealthy: Option<&str>, draining: bool) {
        *self.status.lock().unwrap() = v1::Heartbeat {
            slots_in_use: 0,
            unhealthy: unhealthy.is_some(),
            unhealthy_reason: unhealthy.unwrap_or_default().to_owned(),
            draining,
            ..Default::default()
        };
    }

    /// Stops heartbeating, keeping the stream open: a worker frozen or cut off without a reset.
    fn go_silent(&self) {
        self.heartbeats.abort();
    }

    /// The next message, or the status that ended the stream.
    async fn next_or_end(&mut self) -> Result<In, tonic::Status> {
        let item = tokio::time::timeout(Duration::from_secs(10), self.rx.next())
            .await
            .expect("a coordinator message within 10s")
            .expect("stream open");
        item.map(|m| m.msg.expect("a message"))
    }

    async fn next(&mut self) -> In {
        self.next_or_end().await.expect("no error")
    }

    async fn expect_cancel(&mut self) -> v1::CancelJob {
        match self.next().await {
            In::Cancel(c) => c,
            other => panic!("expected a cancel, got {other:?}"),
        }
    }

    async fn expect_assign(&mut self) -> v1::AssignJob {
        match self.next().await {
            In::Assign(a) => a,
            other => panic!("expected an assignment, got {other:?}"),
        }
    }

    async fn send(&self, msg: Out) {
        self.tx
            .send(v1::WorkerMessage { msg: Some(msg) })
            .await
            .unwrap();
    }

    async fn accept(&self, a: &v1::AssignJob) {
        self.send(Out::Accepted(v1::JobAccepted {
            job_id: a.job_id.clone(),
            attempt: a.attempt,
        }))
        .await;
    }

    async fn fail(&self, a: &v1::AssignJob, message: &str, retryable: bool) {
        self.send(Out::Result(v1::JobResult {
            job_id: a.job_id.clone(),
            attempt: a.attempt,
            outcome: Some(v1::job_result::Outcome::Failure(v1::JobFailure {
                message: message.into(),
                retryable,
                cancelled: false,
                refused: false,
            })),
        }))
        .await;
    }

    /// Refuses an assignment without starting it, as a draining or full worker does.
    async fn refuse(&self, a: &v1::AssignJob, message: &str) {
        self.send(Out::Result(v1::JobResult {
            job_id: a.job_id.clone(),
            attempt: a.attempt,
            outcome: Some(v1::job_result::Outcome::Failure(v1::JobFailure {
                message: message.into(),
                retryable: true,
                cancelled: false,
                refused: true,
            })),
        }))
        .await;
    }
}

/// A `Workers.Watch` stream: the attached workers now, then after each change.
async fn watch_workers(c: &Coordinator) -> tonic::Streaming<v1::ListWorkersResponse> {
    v1::workers_client::WorkersClient::connect(c.url.clone())
        .await
        .unwrap()
        .watch(v1::WatchWorkersRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// Follows `Workers.Watch` until a list of the attached workers satisfies `check`
/// ([`support::PATIENCE`] at most), then panics naming `what` it waited for.
async fn wait_workers(c: &Coordinator, what: &str, check: impl Fn(&[v1::WorkerInfo]) -> bool) {
    let mut lists = watch_workers(c).await;
    let seen = tokio::time::timeout(support::PATIENCE, async {
        while let Some(list) = lists.message().await.unwrap() {
            if check(&list.workers) {
                return true;
            }
        }
        false
    })
    .await;
    match seen {
        Ok(true) => {}
        Ok(false) => panic!("the workers' watch ended before {what}"),
        Err(_) => panic!("timed out after {:?} waiting for {what}", support::PATIENCE),
    }
}

/// Waits until no worker is called `name` (the coordinator saw its stream end).
async fn wait_gone(c: &Coordinator, name: &str) {
    let what = format!("worker {name} to be detached");
    wait_workers(c, &what, |workers| !workers.iter().any(|w| w.name == name)).await
}

/// Waits until `Workers.Watch` shows the worker `name` as `check` wants it (`state` says how).
async fn wait_worker(
    c: &Coordinator,
    name: &str,
    state: &str,
    check: impl Fn(&v1::WorkerInfo) -> bool,
) {
    let what = format!("worker {name} to be listed {state}");
    wait_workers(c, &what, |workers| {
        workers.iter().any(|w| w.name == name && check(w))
    })
    .await
}

/// Follows `Builds.Watch` to the build's `Finished` event (10 s at most), then reads the build.
async fn wait_final(c: &Coordinator, id: &str) -> v1::Build {
    let mut client = builds(c).await;
    let mut events = client
        .watch(v1::WatchBuildRequest {
            build_id: id.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let finished = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(e) = events.next().await {
            if matches!(e.unwrap().event, Some(v1::build_event::Event::Finished(_))) {
                return;
            }
        }
        panic!("the watch of build {id} ended without Finished");
    });
    finished
        .await
        .unwrap_or_else(|_| panic!("build {id} did not end"));
    client
        .get(v1::GetBuildRequest {
            build_id: id.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// The state of the build's (only) job. Right after a submit it shows whether the submit's own
/// transition assigned the job: the submit returns once that transition is durable.
async fn queued_state(c: &Coordinator, id: &str) -> i32 {
    let b = builds(c)
        .await
        .get(v1::GetBuildRequest {
            build_id: id.into(),
        })
        .await
        .unwrap()
        .into_inner();
    b.jobs[0].state
}

fn job<'a>(b: &'a v1::Build, arch: &str) -> &'a v1::Job {
    b.jobs
        .iter()
        .find(|j| j.platform.as_ref().unwrap().architecture == arch)
        .unwrap()
}

#[tokio::test]
async fn a_build_failure_is_not_retried_and_cancels_the_other_platform() {
    let c = start(FarmConfig::default()).await;
    let mut x86 = FakeWorker::attach(&c, "x86", "linux/amd64").await;
    let mut arm = FakeWorker::attach(&c, "arm", "linux/arm64").await;
    let id = submit(&c, &["linux/amd64", "linux/arm64"]).await;
    let a_x86 = x86.expect_assign().await;
    let a_arm = arm.expect_assign().await;
    assert_eq!(a_arm.platform.as_ref().unwrap().architecture, "arm64");
    assert_eq!(a_arm.repository, "127.0.0.1:1/team/app");
    assert!(
        a_arm.insecure_registry,
        "loopback registries are plain HTTP"
    );
    x86.accept(&a_x86).await;
    arm.accept(&a_arm).await;
    arm.send(Out::Log(v1::JobLog {
        job_id: a_arm.job_id.clone(),
        attempt: 1,
        lines: vec!["step 2/3: make".into(), "error: boom".into()],
    }))
    .await;
    arm.fail(&a_arm, "RUN make: exit code 2", false).await;

    // The running amd64 job is told to stop.
    match x86.next().await {
        In::Cancel(c) => assert_eq!((c.job_id, c.attempt), (a_x86.job_id.clone(), 1)),
        other => panic!("expected a cancel, got {other:?}"),
    }
    let b = wait_final(&c, &id).await;
    assert_eq!(b.state, v1::BuildState::Failed as i32);
    assert!(b.error.contains("linux/arm64"), "{}", b.error);
    assert!(b.error.contains("RUN make: exit code 2"), "{}", b.error);
    assert_eq!(job(&b, "arm64").state, v1::JobState::Failed as i32);
    assert_eq!(
        job(&b, "arm64").attempt,
        1,
        "build failures are not retried"
    );
    assert_eq!(job(&b, "arm64").log_tail, ["step 2/3: make", "error: boom"]);
    assert_eq!(job(&b, "amd64").state, v1::JobState::Cancelled as i32);
}

#[tokio::test]
async fn an_infrastructure_failure_is_retried_and_a_stale_result_is_ignored() {
    let c = start(FarmConfig {
        max_attempts: 2,
        ..Default::default()
    })
    .await;
    let mut x86 = FakeWorker::attach(&c, "x86", "linux/amd64").await;
    let id = submit(&c, &["linux/amd64"]).await;
    let first = x86.expect_assign().await;
    x86.fail(&first, "docker daemon unreachable", true).await;
    let second = x86.expect_assign().await;
    assert_eq!(second.job_id, first.job_id);
    assert_eq!(second.attempt, 2);
    // A late message about attempt 1 changes nothing.
    x86.fail(&first, "late news from attempt 1", false).await;
    x86.accept(&second).await;
    x86.fail(&second, "docker daemon unreachable", true).await;
    let b = wait_final(&c, &id).await;
    assert_eq!(b.state, v1::BuildState::Failed as i32);
    assert!(b.error.contains("after 2 attempts"), "{}", b.error);
    let history = &job(&b, "amd64").error;
    assert!(history.contains("attempt 1 on x86"), "{history}");
    assert!(history.contains("attempt 2 on x86"), "{history}");
    assert!(!history.contains("late news"), "{history}");
}

#[tokio::test]
async fn a_late_watcher_gets_the_history_then_the_end() {
    let c = start(FarmConfig::default()).await;
    let mut x86 = FakeWorker::attach(&c, "x86", "linux/amd64").await;
    let id = submit(&c, &["linux/amd64"]).await;
    let a = x86.expect_assign().await;
    x86.accept(&a).await;
    x86.send(Out::Log(v1::JobLog {
        job_id: a.job_id.clone(),
        attempt: 1,
        lines: vec!["hello from the build".into()],
    }))
    .await;
    builds(&c)
        .await
        .cancel(v1::CancelBuildRequest {
            build_id: id.clone(),
        })
        .await
        .unwrap();
    let events: Vec<v1::BuildEvent> = builds(&c)
        .await
        .watch(v1::WatchBuildRequest { build_id: id })
        .await
        .unwrap()
        .into_inner()
        .map(|e| e.unwrap())
        .collect()
        .await;
    let seq: Vec<u64> = events.iter().map(|e| e.sequence).collect();
    assert_eq!(seq, (0..events.len() as u64).collect::<Vec<_>>());
    assert!(events.iter().any(|e| matches!(&e.event,
        Some(v1::build_event::Event::Log(l)) if l.line == "hello from the build")));
    match &events.last().unwrap().event {
        Some(v1::build_event::Event::Finished(f)) => {
            assert_eq!(f.state, v1::BuildState::Cancelled as i32)
        }
        other => panic!("the last event ends the build: {other:?}"),
    }
}

#[tokio::test]
async fn bad_requests_are_invalid_argument_with_the_value_named() {
    let c = start(FarmConfig::default()).await;
    let digest = upload_context(&c).await;
    let err = builds(&c)
        .await
        .submit(v1::SubmitBuildRequest {
            image: "127.0.0.1:1/app:1".into(),
            platforms: vec![v1::Platform {
                os: "linux".into(),
                architecture: "amd&46".into(),
                variant: String::new(),
            }],
            context_digest: digest,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("amd&46"), "{}", err.message());
}

#[tokio::test]
async fn a_restarted_coordinator_keeps_queued_builds_and_adopts_running_jobs() {
    let c = start(FarmConfig::default()).await;
    let mut x86 = FakeWorker::attach(&c, "x86", "linux/amd64").await;
    let id = submit(&c, &["linux/amd64", "linux/arm64"]).await;
    let a = x86.expect_assign().await;
    x86.accept(&a).await;
    // Once the farm holds the job as running, stop the coordinator under the worker's feet (its
    // writer writes what it was given before it stops).
    watch_until(&c, &id, |e| match &e.event {
        Some(v1::build_event::Event::JobState(s)) => s.state == v1::JobState::Running as i32,
        _ => false,
    })
    .await;
    drop(x86);
    c.shutdown.cancel();
    let state = c.state.clone();
    let _ = (&mut { c }.done).await;

    let c = start_in(FarmConfig::default(), state).await;
    let restored = builds(&c)
        .await
        .get(v1::GetBuildRequest {
            build_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    // The acknowledgement was never written on its own: the job comes back as assigned to x86,
    // and waits for x86 as a running job does.
    let amd64 = job(&restored, "amd64");
    assert_eq!(
        (amd64.state, amd64.attempt, amd64.worker.as_str()),
        (v1::JobState::Assigned as i32, 1, "x86")
    );
    assert_eq!(job(&restored, "arm64").state, v1::JobState::Queued as i32);

    // The worker comes back restating its job: it is adopted, not assigned again.
    let x86 = FakeWorker::attach_running(
        &c,
        "x86",
        "linux/amd64",
        vec![v1::RunningJob {
            job_id: a.job_id.clone(),
            attempt: a.attempt,
        }],
    )
    .await;
    watch_until(&c, &id, |e| match &e.event {
        Some(v1::build_event::Event::JobState(s)) => {
            s.state == v1::JobState::Running as i32 && s.message.contains("adopted")
        }
        _ => false,
    })
    .await;
    // The queued arm64 job runs once an arm64 worker attaches.
    let mut arm = FakeWorker::attach(&c, "arm", "linux/arm64").await;
    let b = arm.expect_assign().await;
    assert_eq!(b.attempt, 1);
    arm.fail(&b, "RUN failed", false).await;
    let done = wait_final(&c, &id).await;
    assert_eq!(job(&done, "amd64").attempt, 1, "adopted, not restarted");
    assert_eq!(job(&done, "amd64").worker, "x86");
    drop(x86);
}

#[tokio::test]
async fn max_attempts_0_means_one_attempt_and_no_retry() {
    let c = start(FarmConfig {
        max_attempts: 0,
        ..Default::default()
    })
    .await;
    let mut x86 = FakeWorker::attach(&c, "x86", "linux/amd64").await;
    let id = submit(&c, &["linux/amd64"]).await;
    let a = x86.expect_assign().await;
    x86.accept(&a).await;
    x86.fail(&a, "docker daemon unreachable", true).await;
    let b = wait_final(&c, &id).await;
    assert_eq!(b.state, v1::BuildState::Failed as i32);
    assert_eq!(
        b.error,
        "linux/amd64 failed after 1 attempt: attempt 1 on x86: docker daemon unreachable"
    );
    assert_eq!(job(&b, "amd64").attempt, 1);
}

#[tokio::test]
async fn drain_tells_the_worker_and_no_new_job_goes_to_it() {
    let c = start(FarmConfig::default()).await;
    let mut x86 = FakeWorker::attach(&c, "x86", "linux/amd64").await;
    let mut workers = v1::workers_client::WorkersClient::connect(c.url.clone())
        .await
        .unwrap();
    let err = workers
        .drain(v1::DrainWorkerRequest {
            name: "nobody".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(err.message().contains("`nobody`"), "{}", err.message());

    let drained = workers
        .drain(v1::DrainWorkerRequest { name: "x86".into() })
        .await
        .unwrap()
        .into_inner()
        .worker
        .unwrap();
    assert!(drained.draining);
    assert!(matches!(x86.next().await, In::Drain(_)));
    let id = submit(&c, &["linux/amd64"]).await;
    assert_eq!(queued_state(&c, &id).await, v1::JobState::Queued as i32);
    // Another worker of the platform takes the job.
    let mut other = FakeWorker::attach(&c, "x86-2", "linux/amd64").await;
    assert_eq!(other.expect_assign().await.attempt, 1);
}

#[tokio::test]
async fn a_watch_of_the_workers_sends_each_change_once_and_nothing_for_heartbeats_alone() {
    let c = start(FarmConfig::default()).await;
    let mut lists = watch_workers(&c).await;
    // What each list says of the workers: name and whether it drains.
    let mut next = async || -> Vec<(String, bool)> {
        let list = tokio::time::timeout(support::PATIENCE, lists.message())
            .await
            .expect("a list of workers within the patience")
            .unwrap()
            .expect("the watch still open");
        list.workers
            .into_iter()
            .map(|w| (w.name, w.draining))
            .collect()
    };
    assert_eq!(next().await, vec![], "the first list is the farm now");
    let x86 = FakeWorker::attach(&c, "x86", "linux/amd64").await;
    assert_eq!(next().await, vec![("x86".to_owned(), false)]);
    // Its heartbeats (every 100 ms) go on; only the one that says it drains changes the list.
    x86.set_status(None, true);
    assert_eq!(next().await, vec![("x86".to_owned(), true)]);
    drop(x86);
    assert_eq!(next().await, vec![], "the detach");
}

#[tokio::test]
async fn a_worker_that_says_it_drains_gets_no_new_job() {
    let c = start(FarmConfig::default()).await;
    let x86 = FakeWorker::attach(&c, "x86", "linux/amd64").await;
    x86.set_status(None, true);
    wait_worker(&c, "x86", "draining", |w| w.draining).await;
    let id = submit(&c, &["linux/amd64"]).await;
    assert_eq!(queued_state(&c, &id).await, v1::JobState::Queued as i32);
    let mut other = FakeWorker::attach(&c, "x86-2", "linux/amd64").await;
    assert_eq!(other.expect_assign().await.attempt, 1);
    drop(x86);
}

#[tokio::test]
async fn an_unhealthy_worker_gets_no_job_until_it_recovers() {
    let c = start(FarmConfig::default()).await;
    let mut x86 = FakeWorker::attach(&c, "x86", "linux/amd64").await;
    let reason = "docker daemon at unix:///d.sock: ping failed: connection refused";
    x86.set_status(Some(reason), false);
    let unhealthy = |w: &v1::WorkerInfo| w.unhealthy && w.unhealthy_reason == reason;
    wait_worker(&c, "x86", "unhealthy", unhealthy).await;
    let id = submit(&c, &["linux/amd64"]).await;
    assert_eq!(queued_state(&c, &id).await, v1::JobState::Queued as i32);
    x86.set_status(None, false);
    let a = x86.expect_assign().await;
    assert_eq!(a.attempt, 1);
    wait_worker(&c, "x86", "healthy", |w| !w.unhealthy).await;
}

#[tokio::test]
async fn a_refused_assignment_is_requeued_without_counting_an_attempt() {
    let c = start(FarmConfig {
        max_attempts: 1,
        ..Default::default()
    })
    .await;
    let mut x86 = FakeWorker::attach(&c, "x86", "linux/amd64").await;
    let id = submit(&c, &["linux/amd64"]).await;
    let first = x86.expect_assign().await;
    x86.refuse(&first, "worker `x86` has no free slot (1 of 1 in use)")
        .await;
    // Asked again after its next heartbeat; the refusal did not use up the only attempt.
    let second = x86.expect_assign().await;
    assert_eq!(second.attempt, 2);
    x86.accept(&second).await;
    x86.fail(&second, "docker daemon unreachable", true).await;
    let b = wait_final(&c, &id).await;
    assert_eq!(
        b.error,
        "linux/amd64 failed after 1 attempt: attempt 2 on x86: docker daemon unreachable"
    );
}

#[tokio::test]
async fn a_silent_worker_is_declared_lost_its_stream_closed_and_its_job_moved() {
    let c = start(FarmConfig {
        worker_lease: Duration::from_millis(500),
        ..Default::default()
    })
    .await;
    let mut frozen = FakeWorker::attach(&c, "x86-a", "linux/amd64").await;
    let id = submit(&c, &["linux/amd64"]).await;
    let first = frozen.expect_assign().await;
    frozen.accept(&first).await;
    frozen.go_silent();
    // The coordinator ends the stream, so that a worker that was only cut off reconnects.
    let end = frozen.next_or_end().await.unwrap_err();
    assert_eq!(end.code(), tonic::Code::Unavailable);
    assert!(
        end.message().contains("declared this worker lost"),
        "{end:?}"
    );
    let mut other = FakeWorker::attach(&c, "x86-b", "linux/amd64").await;
    let second = other.expect_assign().await;
    assert_eq!(second.attempt, 2);
    other.accept(&second).await;
    // The frozen worker comes back restating attempt 1: it is told to drop it, and its late
    // result changes nothing.
    drop(frozen);
    let mut back = FakeWorker::attach_running(
        &c,
        "x86-a",
        "linux/amd64",
        vec![v1::RunningJob {
            job_id: first.job_id.clone(),
            attempt: 1,
        }],
    )
    .await;
    let cancel = back.expect_cancel().await;
    assert_eq!(
        (cancel.job_id.as_str(), cancel.attempt),
        (first.job_id.as_str(), 1)
    );
    back.fail(&first, "late news from attempt 1", false).await;
    other.fail(&second, "RUN failed", false).await;
    let b = wait_final(&c, &id).await;
    assert!(
        b.error.contains("on worker x86-b: RUN failed"),
        "{}",
        b.error
    );
    assert!(!job(&b, "amd64").error.contains("late news"), "{b:?}");
}

#[tokio::test]
async fn a_worker_back_without_its_job_hands_it_back_without_waiting_for_the_lease() {
    let c = start(FarmConfig {
        worker_lease: Duration::from_secs(60),
        ..Default::default()
    })
    .await;
    let mut first = FakeWorker::attach(&c, "x86", "linux/amd64").await;
    let id = submit(&c, &["linux/amd64"]).await;
    let a = first.expect_assign().await;
    first.accept(&a).await;
    drop(first);
    // The worker restarted: same name, no running job. Its job comes back to it as attempt 2
    // long before the 60 s lease.
    wait_gone(&c, "x86").await;
    let mut restarted = FakeWorker::attach(&c, "x86", "linux/amd64").await;
    let again = restarted.expect_assign().await;
    assert_eq!(
        (again.job_id.as_str(), again.attempt),
        (a.job_id.as_str(), 2)
    );
    restarted.fail(&again, "RUN failed", false).await;
    let b = wait_final(&c, &id).await;
    assert!(
        job(&b, "amd64")
            .error
            .contains("attempt 1 on x86: the worker came back without it (restarted?)"),
        "{b:?}"
    );
}

/// Events of a build's watch until `stop` holds for one of them (10 s at most), that one included.
async fn watch_until(
    c: &Coordinator,
    id: &str,
    stop: impl Fn(&v1::BuildEvent) -> bool,
) -> Vec<v1::BuildEvent> {
    let mut events = builds(c)
        .await
        .watch(v1::WatchBuildRequest {
            build_id: id.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    let read = async {
        while let Some(e) = events.next().await {
            let e = e.unwrap();
            let done = stop(&e);
            seen.push(e);
            if done {
                return;
            }
        }
        panic!("the watch of build {id} ended early");
    };
    if tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .is_err()
    {
        panic!("the watch of build {id} did not show what was expected: {seen:?}");
    }
    seen
}

fn log_line(e: &v1::BuildEvent) -> Option<&str> {
    match &e.event {
        Some(v1::build_event::Event::Log(l)) => Some(&l.line),
        _ => None,
    }
}

fn is_finished(e: &v1::BuildEvent) -> bool {
    matches!(e.event, Some(v1::build_event::Event::Finished(_)))
}

#[tokio::test]
async fn a_watch_after_a_restart_replays_the_stored_lines_then_the_history() {
    let c = start(FarmConfig::default()).await;
    let mut x86 = FakeWorker::attach(&c, "x86", "linux/amd64").await;
    let id = submit(&c, &["linux/amd64"]).await;
    let a = x86.expect_assign().await;
    x86.accept(&a).await;
    let log = |lines: &[&str]| {
        Out::Log(v1::JobLog {
            job_id: a.job_id.clone(),
            attempt: a.attempt,
            lines: lines.iter().map(|l| (*l).to_owned()).collect(),
        })
    };
    x86.send(log(&["one", "two"])).await;
    watch_until(&c, &id, |e| log_line(e) == Some("two")).await;
    // Logs reads after the writer flushed: the lines are durable before the restart.
    let logs = |c: &Coordinator| {
        let id = id.clone();
        let url = c.url.clone();
        async move {
            let mut client = v1::builds_client::BuildsClient::connect(url).await.unwrap();
            let r = client.logs(v1::BuildLogsRequest {
                build_id: id,
                platform: None,
            });
            let lines = r.await.unwrap().into_inner().lines;
            lines.into_iter().map(|l| l.line).collect::<Vec<_>>()
        }
    };
    assert_eq!(logs(&c).await, ["one", "two"]);
    drop(x86);
    c.shutdown.cancel();
    let state = c.state.clone();
    let _ = (&mut { c }.done).await;

    // The restarted coordinator's history of the build begins at the restore; the worker comes
    // back with its job and goes on logging, then the build fails.
    let c = start_in(FarmConfig::default(), state).await;
    let running = vec![v1::RunningJob {
        job_id: a.job_id.clone(),
        attempt: a.attempt,
    }];
    let x86 = FakeWorker::attach_running(&c, "x86", "linux/amd64", running).await;
    x86.send(log(&["three"])).await;
    let live = watch_until(&c, &id, |e| log_line(e) == Some("three")).await;
    x86.fail(&a, "RUN failed", false).await;
    wait_final(&c, &id).await;

    // A watch of the ended build: the stored lines from before the restart, then the restored
    // history (the states at the restore, the line since, the end), numbered from 0.
    let all = watch_until(&c, &id, is_finished).await;
    let lines: Vec<&str> = all.iter().filter_map(log_line).collect();
    assert_eq!(lines, ["one", "two", "three"], "{all:?}");
    assert_eq!(logs(&c).await, lines, "watch shows what logs shows");
    assert!(log_line(&all[0]).is_some() && log_line(&all[1]).is_some());
    match &all[2].event {
        Some(v1::build_event::Event::JobState(s)) => {
            assert!(s.message.contains("restored"), "{s:?}")
        }
        other => panic!("the restored state follows the replayed lines: {other:?}"),
    }
    let numbers: Vec<u64> = all.iter().map(|e| e.sequence).collect();
    assert_eq!(numbers, (0..all.len() as u64).collect::<Vec<_>>());
    // The watch opened while the build ran numbered the same events the same way.
    assert_eq!(live[..], all[..live.len()]);
    // The build's end comes last, failed.
    match &all.last().unwrap().event {
        Some(v1::build_event::Event::Finished(f)) => {
            assert_eq!(f.state, v1::BuildState::Failed as i32, "{f:?}")
        }
        other => panic!("{other:?}"),
    }
}

/// A registry on 127.0.0.1 that holds every manifest read until [`HeldRegistry::release`], then
/// says the manifest is unknown; `held` counts the reads it is holding.
struct HeldRegistry {
    address: String,
    held: tokio::sync::watch::Receiver<usize>,
    release: tokio::sync::watch::Sender<bool>,
}

impl HeldRegistry {
    async fn start() -> Self {
        let (held_tx, held) = tokio::sync::watch::channel(0usize);
        let (release, released) = tokio::sync::watch::channel(false);
        let address = support::http::serve(
            move |request| {
                if !request.contains("/manifests/") {
                    return Box::pin(async { support::http::ok() });
                }
                held_tx.send_modify(|n| *n += 1);
                let mut released = released.clone();
                Box::pin(async move {
                    let _ = released.wait_for(|r| *r).await;
                    let body = r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#;
                    format!(
                        "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                })
            },
            |_| {},
        )
        .await;
        Self {
            address,
            held,
            release,
        }
    }

    /// Waits until a manifest read is being held (10 s at most).
    async fn wait_held(&mut self) {
        let held = self.held.wait_for(|n| *n > 0);
        tokio::time::timeout(support::PATIENCE, held)
            .await
            .expect("no manifest read reached the registry")
            .unwrap();
    }
}

#[tokio::test]
async fn a_worker_is_free_once_it_reports_and_the_check_of_its_image_outlives_its_stream() {
    let mut registry = HeldRegistry::start().await;
    let c = start(FarmConfig::default()).await;
    let context = upload_context(&c).await;
    let image = |repository: &str| format!("{}/team/{repository}:1", registry.address);
    let first = submit_image(&c, &context, &image("first"), &["linux/amd64"]).await;
    let second = submit_image(&c, &context, &image("second"), &["linux/amd64"]).await;

    // One slot: the first build's job.
    let mut x86 = FakeWorker::attach(&c, "x86", "linux/amd64").await;
    let a = x86.expect_assign().await;
    assert_eq!(a.build_id, first);
    x86.accept(&a).await;
    x86.send(Out::Result(v1::JobResult {
        job_id: a.job_id.clone(),
        attempt: a.attempt,
        outcome: Some(v1::job_result::Outcome::Pushed(v1::ImageDescriptor {
            digest: format!("sha256:{}", "d".repeat(64)),
            size: 2,
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            attestations: Vec::new(),
        })),
    }))
    .await;

    // While the coordinator's read of that image waits in the registry, the worker's one slot
    // already went to the second build.
    registry.wait_held().await;
    let b = x86.expect_assign().await;
    assert_eq!(b.build_id, second);
    wait_worker(&c, "x86", "busy with the second build only", |w| {
        w.slots_in_use == 1
    })
    .await;

    // The worker leaves; the check goes on, and its verdict is the first job's.
    drop(x86);
    wait_gone(&c, "x86").await;
    registry.release.send(true).unwrap();
    let events = watch_until(&c, &first, |e| {
        matches!(&e.event, Some(v1::build_event::Event::JobState(s)) if s.message.contains("failed verification"))
    })
    .await;
    let Some(v1::build_event::Event::JobState(s)) = &events.last().unwrap().event else {
        unreachable!()
    };
    assert!(
        s.message.contains("attempt 1 on x86: worker x86 reported an image that failed verification: manifest sha256:dddd"),
        "{s:?}"
    );
    assert_eq!(
        s.state,
        v1::JobState::Queued as i32,
        "requeued, not lost: {s:?}"
    );
}
