//! The worker against a scripted coordinator: a Drain from the coordinator works like SIGTERM
//! (running job finishes, Goodbye, `run` returns), and a Docker daemon that stops answering makes
//! the worker report itself unhealthy and refuse jobs until the daemon answers again. The daemon
//! "goes away" behind a unix-socket proxy that the test cuts and restores; the real daemon is never
//! touched.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use manifold_proto::v1;
use manifold_proto::v1::coordinator_message::Msg as FromCoordinator;
use manifold_proto::v1::worker_message::Msg as FromWorker;
use manifold_worker::Config;
use support::coordinator::*;
use support::*;
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

/// A worker run in-process against the fake coordinator.
fn start_worker(address: std::net::SocketAddr, docker_host: &str, cache: &Path) -> Worker {
    let mut config = Config::from_env();
    config.coordinator = format!("http://{address}");
    config.docker_host = docker_host.to_owned();
    config.name = format!("health-{}", uuid::Uuid::new_v4());
    config.cache_dir = cache.to_owned();
    config.docker_config = None;
    config.reconnect_initial = Duration::from_millis(100);
    config.reconnect_max = Duration::from_millis(500);
    config.health_interval = Duration::from_millis(200);
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(manifold_worker::run(config, shutdown.clone()));
    Worker {
        handle,
        _shutdown: shutdown,
    }
}

struct Worker {
    handle: tokio::task::JoinHandle<Result<(), manifold_worker::RunError>>,
    _shutdown: CancellationToken,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_from_the_coordinator_finishes_the_running_job_then_goodbye_and_exit() {
    let (fake, address, mut sessions) = Fake::start().await;
    let cache = tempfile::tempdir().unwrap();
    let worker = start_worker(address, &amd64_docker(), cache.path());
    let (mut session, hello) = attach(&mut sessions).await;
    assert!(!hello.draining && !hello.unhealthy, "{hello:?}");
    send(&session, welcome(1000)).await;
    let ctx = context(&[(
        "Dockerfile",
        format!(
            "FROM {}\nRUN echo started-{} && sleep 2\n",
            base_image(),
            uuid::Uuid::new_v4()
        ),
    )]);
    let digest = fake.serve_context(&ctx);
    let job = new_job_id();
    send(
        &session,
        assign(&job, "linux/amd64", &digest, &unique_repository("drain")),
    )
    .await;
    let mut lines = Vec::new();
    until(&mut session, &mut lines, accepted(&job)).await;
    until(&mut session, &mut lines, logged("started-")).await;

    send(&session, FromCoordinator::Drain(v1::Drain {})).await;
    until(&mut session, &mut lines, |m| match m {
        FromWorker::Heartbeat(h) if h.draining => Some(()),
        FromWorker::Result(r) => panic!("a result before the draining heartbeat: {r:?}"),
        _ => None,
    })
    .await;
    let outcome = until(&mut session, &mut lines, result_of(&job)).await;
    assert!(
        matches!(outcome, v1::job_result::Outcome::Pushed(_)),
        "the running job finishes: {outcome:?}"
    );
    until(&mut session, &mut lines, |m| {
        matches!(m, FromWorker::Goodbye(_)).then_some(())
    })
    .await;
    drop(session);
    let result = tokio::time::timeout(PATIENCE, worker.handle)
        .await
        .expect("the worker did not exit after its goodbye")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_daemon_stops_answering_is_unhealthy_refuses_jobs_and_recovers() {
    let (fake, address, mut sessions) = Fake::start().await;
    let cache = tempfile::tempdir().unwrap();
    let sockets = tempfile::tempdir().unwrap();
    let real = amd64_docker();
    let mut proxy = DaemonProxy::start(
        sockets.path().join("docker.sock"),
        PathBuf::from(real.trim_start_matches("unix://")),
    );
    let host = format!("unix://{}", proxy.path.display());
    let _worker = start_worker(address, &host, cache.path());
    let (mut session, hello) = attach(&mut sessions).await;
    assert!(!hello.unhealthy, "{hello:?}");
    send(&session, welcome(60_000)).await;
    let mut lines = Vec::new();

    proxy.cut();
    // Reported at once, not at the next (minute-long) heartbeat.
    let reason = until(&mut session, &mut lines, |m| match m {
        FromWorker::Heartbeat(h) if h.unhealthy => Some(h.unhealthy_reason.clone()),
        _ => None,
    })
    .await;
    assert!(reason.contains(&host), "names the daemon: {reason}");
    let ctx = context(&[("Dockerfile", format!("FROM {}\n", base_image()))]);
    let digest = fake.serve_context(&ctx);
    let refused = new_job_id();
    send(
        &session,
        assign(
            &refused,
            "linux/amd64",
            &digest,
            &unique_repository("health"),
        ),
    )
    .await;
    match until(&mut session, &mut lines, result_of(&refused)).await {
        v1::job_result::Outcome::Failure(f) => assert!(
            f.refused && f.message.contains("unhealthy"),
            "refused without counting an attempt: {f:?}"
        ),
        other => panic!("an unhealthy worker ran a job: {other:?}"),
    }

    proxy.restore();
    until(&mut session, &mut lines, |m| match m {
        FromWorker::Heartbeat(h) if !h.unhealthy => Some(()),
        _ => None,
    })
    .await;
    let job = new_job_id();
    send(
        &session,
        assign(&job, "linux/amd64", &digest, &unique_repository("health")),
    )
    .await;
    until(&mut session, &mut lines, accepted(&job)).await;
    let outcome = until(&mut session, &mut lines, result_of(&job)).await;
    assert!(
        matches!(outcome, v1::job_result::Outcome::Pushed(_)),
        "{outcome:?}"
    );
}

/// A unix socket that forwards to the real daemon's, until cut: then nothing listens there and
/// open connections are dropped, as when the daemon stops.
struct DaemonProxy {
    path: PathBuf,
    target: PathBuf,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl DaemonProxy {
    fn start(path: PathBuf, target: PathBuf) -> Self {
        let mut proxy = Self {
            path,
            target,
            task: None,
        };
        proxy.restore();
        proxy
    }

    fn restore(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let listener = UnixListener::bind(&self.path).unwrap();
        let target = self.target.clone();
        self.task = Some(tokio::spawn(async move {
            // Dropping the set (when this task is aborted) aborts every connection.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                let target = target.clone();
                connections.spawn(async move {
                    if let Ok(mut daemon) = UnixStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut daemon).await;
                    }
                });
            }
        }));
    }

    fn cut(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for DaemonProxy {
    fn drop(&mut self) {
        self.cut();
    }
}
