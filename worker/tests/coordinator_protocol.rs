//! The worker against a scripted coordinator (a real gRPC server on 127.0.0.1:0) and the real
//! daemons and registry: the hello, heartbeats, an assignment from acceptance through logs to the
//! pushed digest, cancellation, a reconnect that restates the running job, and the drain.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use manifold_proto::v1::coordinator_message::Msg as FromCoordinator;
use manifold_proto::v1::worker_message::Msg as FromWorker;
use manifold_proto::{Platform, v1};
use manifold_worker::Config;
use support::coordinator::*;
use support::*;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A fake coordinator and one worker attached to it.
struct Farm {
    fake: Fake,
    sessions: mpsc::UnboundedReceiver<Session>,
    shutdown: CancellationToken,
    worker: tokio::task::JoinHandle<Result<(), manifold_worker::RunError>>,
    name: String,
    _cache: tempfile::TempDir,
}

impl Farm {
    async fn start(docker_host: &str, platform: Option<Platform>, slots: u32) -> Farm {
        let (fake, address, sessions) = Fake::start().await;
        let cache = tempfile::tempdir().unwrap();
        let name = format!("test-worker-{}", uuid::Uuid::new_v4());
        let mut config = Config::from_env();
        config.coordinator = format!("http://{address}");
        config.docker_host = docker_host.to_owned();
        config.platform = platform;
        config.slots = slots;
        config.name = name.clone();
        config.labels = [("team".to_owned(), "web".to_owned())].into();
        config.cache_dir = cache.path().to_owned();
        config.docker_config = None;
        config.reconnect_initial = Duration::from_millis(100);
        config.reconnect_max = Duration::from_millis(500);
        let shutdown = CancellationToken::new();
        let worker = tokio::spawn(manifold_worker::run(config, shutdown.clone()));
        Farm {
            fake,
            sessions,
            shutdown,
            worker,
            name,
            _cache: cache,
        }
    }

    /// The next Attach stream the worker opens, with its hello.
    async fn attach(&mut self) -> (Session, v1::WorkerHello) {
        attach(&mut self.sessions).await
    }

    fn serve_context(&self, ctx: &Context) -> String {
        self.fake.serve_context(ctx)
    }

    async fn stopped(self) {
        let result = tokio::time::timeout(PATIENCE, self.worker)
            .await
            .expect("the worker did not exit after draining")
            .unwrap();
        assert!(result.is_ok(), "{result:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_from_assignment_to_a_pushed_digest_between_heartbeats() {
    let mut farm = Farm::start(&amd64_docker(), None, 2).await;
    let (mut session, hello) = farm.attach().await;
    assert_eq!(hello.name, farm.name);
    assert_eq!(
        hello.platforms,
        vec![v1::Platform::from(Platform::linux_amd64())]
    );
    assert!(!hello.emulated);
    assert_eq!(hello.slots, 2);
    assert_eq!(hello.labels.get("team").map(String::as_str), Some("web"));
    assert!(!hello.docker_version.is_empty());
    assert!(hello.running.is_empty());
    assert!(!hello.worker_version.is_empty());

    send(&session, welcome(200)).await;
    let mut lines = Vec::new();
    let idle = until(&mut session, &mut lines, |m| match m {
        FromWorker::Heartbeat(h) => Some(h.slots_in_use),
        _ => None,
    })
    .await;
    assert_eq!(idle, 0);

    // A malformed assignment, a job for another platform, and a context the coordinator does not
    // have, are refused with a result that says why.
    let wrong = new_job_id();
    send(
        &session,
        assign(
            &wrong,
            "linux/arm64",
            "sha256:not-a-digest",
            "127.0.0.1:5000/x",
        ),
    )
    .await;
    match until(&mut session, &mut lines, result_of(&wrong)).await {
        v1::job_result::Outcome::Failure(f) => {
            assert!(!f.retryable, "{f:?}");
            assert!(f.message.contains("`sha256:not-a-digest`"), "{f:?}");
        }
        other => panic!("{other:?}"),
    }
    let wrong_platform = new_job_id();
    let ctx = context(&[("Dockerfile", "FROM scratch\n".into())]);
    send(
        &session,
        assign(
            &wrong_platform,
            "linux/arm64",
            &ctx.digest.to_string(),
            "127.0.0.1:5000/x",
        ),
    )
    .await;
    match until(&mut session, &mut lines, result_of(&wrong_platform)).await {
        v1::job_result::Outcome::Failure(f) => {
            assert!(f.retryable, "{f:?}");
            assert!(
                f.message.contains("linux/arm64") && f.message.contains("linux/amd64"),
                "{f:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    let missing = new_job_id();
    send(
        &session,
        assign(
            &missing,
            "linux/amd64",
            &ctx.digest.to_string(),
            "127.0.0.1:5000/x",
        ),
    )
    .await;
    until(&mut session, &mut lines, accepted(&missing)).await;
    match until(&mut session, &mut lines, result_of(&missing)).await {
        v1::job_result::Outcome::Failure(f) => {
            assert!(!f.retryable, "{f:?}");
            assert!(f.message.contains("no context"), "{f:?}");
        }
        other => panic!("{other:?}"),
    }

    // A real job: accepted, then its build output, then the digest; busy heartbeats in between.
    let marker = format!("hello-{}", uuid::Uuid::new_v4());
    let ctx = context(&[(
        "Dockerfile",
        format!("FROM {}\nRUN echo {marker} && sleep 1\n", base_image()),
    )]);
    let digest = farm.serve_context(&ctx);
    let repository = unique_repository("protocol");
    let job = new_job_id();
    send(&session, assign(&job, "linux/amd64", &digest, &repository)).await;
    until(&mut session, &mut lines, accepted(&job)).await;
    let mut busy = Vec::new();
    let outcome = until(&mut session, &mut lines, |m| {
        if let FromWorker::Heartbeat(h) = m {
            busy.push(h.slots_in_use);
        }
        result_of(&job)(m)
    })
    .await;
    let pushed = match outcome {
        v1::job_result::Outcome::Pushed(p) => p,
        other => panic!("{other:?}\n{}", lines.join("\n")),
    };
    assert!(
        lines.iter().any(|l| l.ends_with(&marker)),
        "{}",
        lines.join("\n")
    );
    assert!(busy.contains(&1), "heartbeats during the job: {busy:?}");
    let raw = skopeo_raw(&format!("{repository}@{}", pushed.digest));
    assert_eq!(raw.len() as i64, pushed.size);
    assert_eq!(
        pushed.media_type,
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(tags(&repository), Vec::<String>::new());

    // The context is cached: a second job with it needs no download (the fake forgets it).
    farm.fake.contexts.lock().unwrap().clear();
    let again = new_job_id();
    send(
        &session,
        assign(&again, "linux/amd64", &digest, &repository),
    )
    .await;
    match until(&mut session, &mut lines, result_of(&again)).await {
        v1::job_result::Outcome::Pushed(p) => assert_eq!(p.digest, pushed.digest),
        other => panic!("{other:?}"),
    }

    farm.shutdown.cancel();
    until(&mut session, &mut lines, |m| {
        matches!(m, FromWorker::Goodbye(_)).then_some(())
    })
    .await;
    // A coordinator ends the stream on Goodbye; the worker then exits at once.
    drop(session);
    farm.stopped().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_job_answers_cancelled() {
    let mut farm = Farm::start(&amd64_docker(), None, 1).await;
    let (mut session, _) = farm.attach().await;
    send(&session, welcome(1000)).await;
    let ctx = context(&[(
        "Dockerfile",
        format!(
            "FROM {}\nRUN echo started-{} && sleep 600\n",
            base_image(),
            uuid::Uuid::new_v4()
        ),
    )]);
    let digest = farm.serve_context(&ctx);
    let job = new_job_id();
    send(
        &session,
        assign(&job, "linux/amd64", &digest, &unique_repository("cancel")),
    )
    .await;
    let mut lines = Vec::new();
    until(&mut session, &mut lines, accepted(&job)).await;
    until(&mut session, &mut lines, logged("started-")).await;
    send(
        &session,
        FromCoordinator::Cancel(v1::CancelJob {
            job_id: job.clone(),
            attempt: 1,
        }),
    )
    .await;
    match until(&mut session, &mut lines, result_of(&job)).await {
        v1::job_result::Outcome::Failure(f) => {
            assert!(f.cancelled && !f.retryable, "{f:?}")
        }
        other => panic!("{other:?}"),
    }
    farm.shutdown.cancel();
    until(&mut session, &mut lines, |m| {
        matches!(m, FromWorker::Goodbye(_)).then_some(())
    })
    .await;
    // A coordinator ends the stream on Goodbye; the worker then exits at once.
    drop(session);
    farm.stopped().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_reconnect_the_hello_restates_the_running_job_and_its_result_arrives() {
    // The second daemon, announced as linux/arm64: an emulated worker.
    let mut farm = Farm::start(&arm64_docker(), Some(Platform::linux_arm64()), 1).await;
    let (mut first, hello) = farm.attach().await;
    assert!(hello.emulated);
    assert_eq!(
        hello.platforms,
        vec![v1::Platform::from(Platform::linux_arm64())]
    );
    send(&first, welcome(1000)).await;

    let ctx = context(&[(
        "Dockerfile",
        format!(
            "FROM {}\nRUN echo started-{} && sleep 3 && uname -m > /arch\n",
            base_image(),
            uuid::Uuid::new_v4()
        ),
    )]);
    let digest = farm.serve_context(&ctx);
    let repository = unique_repository("reconnect");
    let job = new_job_id();
    send(&first, assign(&job, "linux/arm64", &digest, &repository)).await;
    let mut lines = Vec::new();
    until(&mut first, &mut lines, accepted(&job)).await;
    until(&mut first, &mut lines, logged("started-")).await;

    // The coordinator goes away mid-build.
    drop(first);
    let (mut second, hello) = farm.attach().await;
    assert_eq!(
        hello.running,
        vec![v1::RunningJob {
            job_id: job.clone(),
            attempt: 1
        }]
    );
    send(&second, welcome(1000)).await;
    let pushed = match until(&mut second, &mut lines, result_of(&job)).await {
        v1::job_result::Outcome::Pushed(p) => p,
        other => panic!("{other:?}"),
    };
    let by_digest = format!("{repository}@{}", pushed.digest);
    assert_eq!(skopeo_config(&by_digest)["architecture"], "arm64");
    assert_eq!(
        file_in_image(&by_digest, "arch").as_deref().map(str::trim),
        Some("aarch64")
    );

    farm.shutdown.cancel();
    until(&mut second, &mut lines, |m| {
        matches!(m, FromWorker::Goodbye(_)).then_some(())
    })
    .await;
    // A coordinator ends the stream on Goodbye; the worker then exits at once.
    drop(second);
    farm.stopped().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_ends_while_the_coordinator_is_away_is_restated_until_its_result_is_sent() {
    let mut farm = Farm::start(&amd64_docker(), None, 1).await;
    let (first, _) = farm.attach().await;
    send(&first, welcome(1000)).await;
    let ctx = context(&[(
        "Dockerfile",
        format!(
            "FROM {}\nRUN echo away-{} && sleep 1\n",
            base_image(),
            uuid::Uuid::new_v4()
        ),
    )]);
    let digest = farm.serve_context(&ctx);
    let job = new_job_id();
    send(
        &first,
        assign(&job, "linux/amd64", &digest, &unique_repository("away")),
    )
    .await;
    let mut first = first;
    let mut lines = Vec::new();
    until(&mut first, &mut lines, accepted(&job)).await;

    // The coordinator goes away, and turns the worker back for longer than the job takes.
    drop(first);
    let before = farm.fake.attaches();
    farm.fake.refuse_attaches_until(
        std::time::Instant::now() + Duration::from_secs(12),
        tonic::Status::unavailable("restarting"),
    );
    let (mut second, hello) = farm.attach().await;
    assert!(
        farm.fake.attaches() > before + 1,
        "the worker was never turned back"
    );
    // Its result waits in the outbox: the hello still names the attempt, so that the
    // coordinator does not take it for forgotten.
    assert_eq!(
        hello.running,
        vec![v1::RunningJob {
            job_id: job.clone(),
            attempt: 1
        }]
    );
    send(&second, welcome(1000)).await;
    let outcome = until(&mut second, &mut lines, result_of(&job)).await;
    assert!(
        matches!(outcome, v1::job_result::Outcome::Pushed(_)),
        "{outcome:?}"
    );
    farm.shutdown.cancel();
    until(&mut second, &mut lines, |m| {
        matches!(m, FromWorker::Goodbye(_)).then_some(())
    })
    .await;
    drop(second);
    farm.stopped().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_worker_refuses_new_jobs_finishes_running_ones_then_says_goodbye() {
    let mut farm = Farm::start(&amd64_docker(), None, 2).await;
    let (mut session, _) = farm.attach().await;
    send(&session, welcome(1000)).await;
    let ctx = context(&[(
        "Dockerfile",
        format!(
            "FROM {}\nRUN echo started-{} && sleep 2\n",
            base_image(),
            uuid::Uuid::new_v4()
        ),
    )]);
    let digest = farm.serve_context(&ctx);
    let running = new_job_id();
    send(
        &session,
        assign(
            &running,
            "linux/amd64",
            &digest,
            &unique_repository("drain"),
        ),
    )
    .await;
    let mut lines = Vec::new();
    until(&mut session, &mut lines, accepted(&running)).await;
    until(&mut session, &mut lines, logged("started-")).await;

    farm.shutdown.cancel();
    // The coordinator hears of the drain at once, before any job ends.
    until(&mut session, &mut lines, |m| match m {
        FromWorker::Heartbeat(h) if h.draining => Some(()),
        FromWorker::Result(r) => panic!("a result before the draining heartbeat: {r:?}"),
        _ => None,
    })
    .await;
    let late = new_job_id();
    send(
        &session,
        assign(&late, "linux/amd64", &digest, &unique_repository("drain")),
    )
    .await;
    let mut outcomes = HashMap::new();
    let mut order = Vec::new();
    until(&mut session, &mut lines, |m| {
        match m {
            FromWorker::Result(r) => {
                order.push(r.job_id.clone());
                outcomes.insert(r.job_id.clone(), r.outcome.clone().unwrap());
            }
            FromWorker::Goodbye(_) => order.push("goodbye".into()),
            _ => {}
        }
        matches!(m, FromWorker::Goodbye(_)).then_some(())
    })
    .await;
    drop(session);
    match &outcomes[&late] {
        v1::job_result::Outcome::Failure(f) => {
            assert!(
                f.refused && f.retryable && f.message.contains("worker draining"),
                "refused without counting an attempt: {f:?}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(&outcomes[&running], v1::job_result::Outcome::Pushed(_)),
        "{:?}",
        outcomes[&running]
    );
    assert_eq!(
        order.last().map(String::as_str),
        Some("goodbye"),
        "{order:?}"
    );
    farm.stopped().await;
}
