//! How jobs fail, on the real daemon and registry: an image of another platform than the job's, a
//! RUN step that exits non-zero, a daemon that does not answer, and a cancelled build whose RUN
//! process must really stop.

mod support;

use std::time::Duration;

use manifold_proto::Platform;
use manifold_worker::docker::DockerEngine;
use manifold_worker::job::{self, LogSink};
use support::*;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn an_image_of_another_platform_fails_the_job_for_good_and_pushes_nothing() {
    // `FROM scratch` needs no base image of either architecture, so the daemon honours the build
    // platform exactly: the image says arm64 while the job claims amd64.
    let ctx = context(&[
        (
            "Dockerfile",
            "FROM scratch\nCOPY payload /payload\n".to_owned(),
        ),
        ("payload", uuid::Uuid::new_v4().to_string()),
    ]);
    let repository = unique_repository("mismatch");
    let job = spec("linux/amd64", &repository, &ctx);
    let scratch = tempfile::tempdir().unwrap();
    let mut opts = options(scratch.path());
    opts.build_platform_override = Some(Platform::linux_arm64());

    let outcome = run_job(&amd64_docker(), &job, &ctx, &opts).await;
    let failure = outcome.result.as_ref().expect_err("the job must fail");
    assert!(!failure.retryable && !failure.cancelled, "{failure:?}");
    assert_eq!(
        failure.message,
        format!(
            "built image is linux/arm64 but the job is for linux/amd64: the daemon at {} produced another architecture (a local base image of the wrong architecture?)",
            amd64_docker()
        )
    );
    // Nothing reached the registry, and the local tag is gone.
    assert_eq!(tags(&repository), Vec::<String>::new());
    let (listed, _, _) = command(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{repository}:latest"),
        ],
    );
    assert!(!listed);
    let engine = DockerEngine::connect(&amd64_docker()).await.unwrap();
    assert!(
        engine
            .inspect(&job.local_tag())
            .await
            .unwrap_err()
            .is_not_found()
    );
}

#[tokio::test]
async fn a_failing_run_step_fails_the_job_for_good_with_the_error() {
    let ctx = context(&[(
        "Dockerfile",
        format!(
            "FROM {}\nRUN echo about-to-fail-{} && exit 3\n",
            base_image(),
            uuid::Uuid::new_v4()
        ),
    )]);
    let job = spec("linux/amd64", &unique_repository("run-fails"), &ctx);
    let scratch = tempfile::tempdir().unwrap();

    let outcome = run_job(&amd64_docker(), &job, &ctx, &options(scratch.path())).await;
    let failure = outcome.result.as_ref().expect_err("the job must fail");
    assert!(!failure.retryable && !failure.cancelled, "{failure:?}");
    assert!(failure.message.starts_with("build failed"), "{failure:?}");
    assert!(failure.message.contains("exit code: 3"), "{failure:?}");
    // The step's own output and BuildKit's error line are in the log.
    assert!(outcome.logged("about-to-fail-"), "{}", outcome.log());
    assert!(outcome.logged("ERROR"), "{}", outcome.log());
}

#[tokio::test]
async fn an_unreachable_daemon_is_a_retryable_failure() {
    // A socket file nobody listens on: connections are refused, as when dockerd is down.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("docker.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let host = format!("unix://{}", socket.display());
    let engine = DockerEngine::lazy(&host).unwrap();

    let ctx = context(&[("Dockerfile", "FROM scratch\n".to_owned())]);
    let job = spec("linux/amd64", &unique_repository("no-daemon"), &ctx);
    let result = job::execute(
        &engine,
        &job,
        &ctx.path,
        &Default::default(),
        &options(dir.path()),
        &LogSink::discard(),
        &CancellationToken::new(),
    )
    .await;
    let failure = result.expect_err("no daemon, no image");
    assert!(failure.retryable && !failure.cancelled, "{failure:?}");
    assert!(failure.message.contains(&host), "{failure:?}");
    assert!(failure.message.contains("onnection refused"), "{failure:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_build_stops_and_its_run_process_goes_away() {
    // A distinctive duration, so that pgrep finds this test's process and no other.
    let seconds = 30_000 + (uuid::Uuid::new_v4().as_u128() % 20_000) as u32;
    let ctx = context(&[(
        "Dockerfile",
        format!(
            // "started" comes once the sleep runs (its /proc entry names it): the test then
            // finds the process at once.
            "FROM {}\nRUN sleep {seconds} & while ! grep -q '^sleep' /proc/$!/cmdline; do :; done; echo started; wait\n",
            base_image()
        ),
    )]);
    let job = spec("linux/amd64", &unique_repository("cancelled"), &ctx);
    let scratch = tempfile::tempdir().unwrap();
    let engine = DockerEngine::connect(&amd64_docker()).await.unwrap();
    let (logs, mut lines) = LogSink::channel();
    let cancel = CancellationToken::new();

    let running = {
        let cancel = cancel.clone();
        let job = job.clone();
        let path = ctx.path.clone();
        let opts = options(scratch.path());
        tokio::spawn(async move {
            job::execute(
                &engine,
                &job,
                &path,
                &Default::default(),
                &opts,
                &logs,
                &cancel,
            )
            .await
        })
    };
    // Wait for the step's own output, then for its process.
    let started = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.recv().await {
            if line.ends_with(" started") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(started, Ok(true), "the RUN step never started");
    let pattern = format!("sleep {seconds}");
    let (found, pids, _) = command("pgrep", &["-x", "-f", &pattern]);
    assert!(found, "no sleep process seen");
    let pid: i32 = pids.lines().next().unwrap().trim().parse().unwrap();
    let process = rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::PidfdFlags::empty(),
    )
    .expect("the RUN step's process");

    cancel.cancel();
    let result = tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("a cancelled job must end promptly")
        .unwrap();
    let failure = result.expect_err("a cancelled job has no image");
    assert!(failure.cancelled && !failure.retryable, "{failure:?}");
    assert!(
        tokio::task::spawn_blocking(move || exits_within(process, Duration::from_secs(30)))
            .await
            .unwrap(),
        "the RUN step's process still runs 30 s after the cancel"
    );
}

#[tokio::test]
async fn an_unreachable_registry_is_retried_then_a_retryable_failure() {
    let ctx = context(&[
        ("Dockerfile", "FROM scratch\nCOPY f /f\n".to_owned()),
        ("f", uuid::Uuid::new_v4().to_string()),
    ]);
    // Nothing listens on port 1 of the loopback: every connection is refused.
    let job = spec("linux/amd64", "127.0.0.1:1/test/nowhere", &ctx);
    let scratch = tempfile::tempdir().unwrap();
    let outcome = run_job(&amd64_docker(), &job, &ctx, &options(scratch.path())).await;
    let failure = outcome.result.as_ref().expect_err("no registry, no push");
    assert!(failure.retryable && !failure.cancelled, "{failure:?}");
    assert!(
        failure
            .message
            .starts_with("push failed: cannot reach registry 127.0.0.1:1 "),
        "{failure:?}"
    );
    assert!(
        failure
            .message
            .contains("check the address and that the registry is running"),
        "{failure:?}"
    );
    assert!(failure.message.contains("onnection refused"), "{failure:?}");
    // The five waits between the six attempts: about 0.5 + 1 + 2 + 4 + 8 seconds, jittered, so a
    // registry that restarts within a few seconds does not fail the job.
    assert!(
        outcome.took >= Duration::from_millis(11_500),
        "{:?}",
        outcome.took
    );
    // Each retry is in the job's output, where the person watching the build sees it.
    assert!(
        outcome.logged("failed (try 1 of 6)") && outcome.logged("failed (try 5 of 6)"),
        "{}",
        outcome.log()
    );
}

/// Waits, for at most `limit`, until process `pid` has exited (its pidfd becomes readable then;
/// no polling); whether it did.
fn exits_within(pid: std::os::fd::OwnedFd, limit: Duration) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let timeout = Timespec::try_from(limit).unwrap();
    let mut fds = [PollFd::new(&pid, PollFlags::IN)];
    poll(&mut fds, Some(&timeout)).unwrap() == 1
}
