//! `manifold build`, `watch` and `build-status` run as a process against an in-memory coordinator
//! twin: what is submitted, what is printed where, failures, and Ctrl-C.

mod support;

use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use manifold_proto::v1::{self, build_event::Event};
use support::{BUILD_ID, Twin, serve, tree, wire};

const DIGEST: &str = "sha256:5f1c8f3b0e7a4d2c9b6a1e0f3d2c1b0a9f8e7d6c5b4a39281706f5e4d3c2b1a0";

fn manifold(address: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_manifold"));
    cmd.arg("--coordinator")
        .arg(address)
        .args(args)
        .env_remove("MANIFOLD_COORDINATOR")
        // Nothing from the caller's shell or config file: no token, no CA.
        .env_remove("MANIFOLD_TOKEN")
        .env_remove("MANIFOLD_CA_CERT")
        .env("MANIFOLD_CONFIG", "/dev/null")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

async fn run(address: &str, args: &[&str]) -> Output {
    let mut cmd = manifold(address, args);
    tokio::task::spawn_blocking(move || cmd.output().expect("run manifold"))
        .await
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn state(p: &str, state: v1::JobState, worker: &str, attempt: u32, message: &str) -> Event {
    Event::JobState(v1::JobStateChanged {
        platform: wire(p),
        state: state as i32,
        worker: worker.into(),
        attempt,
        message: message.into(),
    })
}

fn log(p: &str, line: &str) -> Event {
    Event::Log(v1::LogLine {
        platform: wire(p),
        line: line.into(),
    })
}

fn finished(state: v1::BuildState, digest: &str, error: &str) -> Event {
    Event::Finished(v1::BuildFinished {
        state: state as i32,
        manifest_digest: digest.into(),
        error: error.into(),
    })
}

fn successful_build() -> Vec<Event> {
    vec![
        state("linux/amd64", v1::JobState::Queued, "", 0, ""),
        state("linux/arm64", v1::JobState::Queued, "", 0, ""),
        state("linux/amd64", v1::JobState::Running, "worker-x86", 1, ""),
        state("linux/arm64", v1::JobState::Running, "pi", 1, ""),
        log("linux/arm64", "#5 RUN uname -m"),
        log("linux/amd64", "#5 RUN uname -m"),
        log("linux/arm64", "aarch64"),
        state(
            "linux/amd64",
            v1::JobState::Succeeded,
            "worker-x86",
            1,
            "sha256:aa",
        ),
        state("linux/arm64", v1::JobState::Succeeded, "pi", 1, "sha256:bb"),
        finished(v1::BuildState::Succeeded, DIGEST, ""),
    ]
}

fn context() -> tempfile::TempDir {
    tree(&[
        ("Dockerfile", "FROM busybox\nRUN uname -m\n"),
        ("Dockerfile.arm64", "FROM arm64v8/busybox\nRUN uname -m\n"),
        (".dockerignore", "Dockerfile.arm64\n"),
        ("app.sh", "echo hi\n"),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_prints_progress_per_platform_and_the_digest_on_stdout() {
    let twin = Twin::new();
    twin.script(successful_build());
    let served = serve(Arc::clone(&twin)).await;
    let dir = context();
    let ctx = dir.path().to_str().unwrap();
    let args = [
        "build",
        "-t",
        "reg.example.com/team/app:1.0",
        "--platform",
        "x86_64,aarch64",
        "-f",
        "linux/arm64=Dockerfile.arm64",
        "--build-arg",
        "VERSION=1.0",
        "--label",
        "team=core",
        "--target",
        "final",
        "--arch-tags",
        "--progress",
        "plain",
        ctx,
    ];
    let out = run(&served.address, &args).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(text(&out.stdout), format!("{DIGEST}\n"));
    for expected in [
        "[linux/arm64] #5 RUN uname -m",
        "[linux/amd64] state: running on worker-x86 (attempt 1)",
        "[linux/arm64] state: succeeded on pi (attempt 1): sha256:bb",
        &format!("build succeeded: {DIGEST}"),
    ] {
        assert!(
            stderr.contains(expected),
            "missing `{expected}` in:\n{stderr}"
        );
    }
    assert!(stderr.contains(" uploaded, "), "{stderr}");

    let submitted = twin.submitted.lock().unwrap()[0].clone();
    assert_eq!(submitted.image, "reg.example.com/team/app:1.0");
    assert_eq!(
        submitted.platforms,
        [wire("linux/amd64").unwrap(), wire("linux/arm64").unwrap()]
    );
    assert_eq!(submitted.dockerfile, "Dockerfile");
    assert_eq!(
        submitted.platform_dockerfiles["linux/arm64"],
        "Dockerfile.arm64"
    );
    assert_eq!(submitted.build_args["VERSION"], "1.0");
    assert_eq!(submitted.labels["team"], "core");
    assert_eq!(submitted.target, "final");
    assert!(submitted.arch_tags);

    // The per-platform Dockerfile was sent although .dockerignore excludes it.
    let stored = twin.contexts.lock().unwrap()[&submitted.context_digest].clone();
    let mut archive = tar::Archive::new(&stored[..]);
    let names: Vec<String> = archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [".dockerignore", "Dockerfile", "Dockerfile.arm64", "app.sh"]
    );

    // Resubmitting the unchanged context uploads nothing, and says so.
    let out = run(&served.address, &args).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(twin.uploads.load(Ordering::SeqCst), 1);
    let short = &submitted.context_digest[..19];
    assert!(
        stderr.contains(&format!(
            "context {short}… already on the coordinator, 0 bytes uploaded"
        )),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_prints_only_the_digest() {
    let twin = Twin::new();
    twin.script(successful_build());
    let served = serve(Arc::clone(&twin)).await;
    let dir = context();
    let ctx = dir.path().to_str().unwrap();
    let out = run(
        &served.address,
        &[
            "build",
            "-q",
            "-t",
            "app:1",
            "--platform",
            "amd64,arm64",
            ctx,
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("{DIGEST}\n"));
    assert_eq!(text(&out.stderr), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_build_shows_the_failing_platform_and_its_log_tail() {
    let twin = Twin::new();
    twin.script(vec![
        state("linux/arm64", v1::JobState::Running, "pi", 1, ""),
        log("linux/arm64", "#7 RUN make"),
        state(
            "linux/arm64",
            v1::JobState::Failed,
            "pi",
            1,
            "RUN make exited with code 2",
        ),
        finished(
            v1::BuildState::Failed,
            "",
            "linux/arm64: RUN make exited with code 2",
        ),
    ]);
    *twin.build.lock().unwrap() = v1::Build {
        id: BUILD_ID.into(),
        state: v1::BuildState::Failed as i32,
        error: "linux/arm64: RUN make exited with code 2".into(),
        jobs: vec![v1::Job {
            platform: wire("linux/arm64"),
            state: v1::JobState::Failed as i32,
            worker: "pi".into(),
            attempt: 1,
            error: "RUN make exited with code 2".into(),
            log_tail: vec![
                "#7 RUN make".into(),
                "make: *** No rule to make target".into(),
            ],
            ..Default::default()
        }],
        ..Default::default()
    };
    let served = serve(Arc::clone(&twin)).await;
    let dir = context();
    let ctx = dir.path().to_str().unwrap();
    let out = run(
        &served.address,
        &["build", "-q", "-t", "app:1", "--platform", "arm64", ctx],
    )
    .await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(text(&out.stdout), "", "nothing on stdout on failure");
    assert_eq!(
        stderr,
        format!(
            "linux/arm64 failed on pi (attempt 1): RUN make exited with code 2\n  \
             last lines of output:\n  | #7 RUN make\n  | make: *** No rule to make target\n\
             error: build {BUILD_ID} failed: linux/arm64: RUN make exited with code 2\n"
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detach_prints_the_build_id_and_returns() {
    let twin = Twin::new();
    let served = serve(Arc::clone(&twin)).await;
    let dir = context();
    let ctx = dir.path().to_str().unwrap();
    let out = run(
        &served.address,
        &[
            "build",
            "--detach",
            "-t",
            "app:1",
            "--platform",
            "amd64",
            ctx,
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("{BUILD_ID}\n"));
    assert_eq!(twin.watches.load(Ordering::SeqCst), 0);
    assert_eq!(twin.submitted.lock().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_re_attaches_and_build_status_shows_the_jobs() {
    let twin = Twin::new();
    twin.script(successful_build());
    *twin.build.lock().unwrap() = v1::Build {
        id: BUILD_ID.into(),
        request: Some(v1::SubmitBuildRequest {
            image: "app:1".into(),
            platforms: vec![wire("linux/amd64").unwrap()],
            ..Default::default()
        }),
        state: v1::BuildState::Succeeded as i32,
        manifest_digest: DIGEST.into(),
        jobs: vec![v1::Job {
            platform: wire("linux/amd64"),
            state: v1::JobState::Succeeded as i32,
            worker: "worker-x86".into(),
            attempt: 1,
            image: Some(v1::ImageDescriptor {
                digest: "sha256:aa".into(),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let served = serve(Arc::clone(&twin)).await;

    let out = run(&served.address, &["watch", BUILD_ID, "--progress", "plain"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("{DIGEST}\n"));
    assert!(text(&out.stderr).contains("[linux/arm64] aarch64"));

    let out = run(&served.address, &["build-status", BUILD_ID]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(table.contains("state     succeeded\n"), "{table}");
    assert!(
        table.contains("linux/amd64  succeeded  worker-x86  1        sha256:aa  -"),
        "{table}"
    );

    let out = run(&served.address, &["builds", "--format", "json"]).await;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["builds"][0]["id"], BUILD_ID);
    assert_eq!(json["builds"][0]["manifest_digest"], DIGEST);

    let other = "00000000-0000-4000-8000-000000000000";
    let out = run(&served.address, &["build-status", other]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!("error: getting the build: no build `{other}`\n")
    );
}

/// Sends SIGINT to a child, as Ctrl-C in its terminal would.
fn interrupt(child: &std::process::Child) {
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_cancels_the_build_and_waits_for_it_to_end() {
    let twin = Twin::new();
    twin.cancel_finishes.store(true, Ordering::SeqCst);
    twin.script(vec![state(
        "linux/amd64",
        v1::JobState::Running,
        "worker-x86",
        1,
        "",
    )]);
    let served = serve(Arc::clone(&twin)).await;
    let dir = context();
    let ctx = dir.path().to_str().unwrap();
    let child = manifold(
        &served.address,
        &[
            "build",
            "--progress",
            "plain",
            "-t",
            "app:1",
            "--platform",
            "amd64",
            ctx,
        ],
    )
    .spawn()
    .unwrap();
    twin.wait_until("the build is watched", |t| {
        t.watches.load(Ordering::SeqCst) == 1
    })
    .await;
    interrupt(&child);
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(twin.cancels.load(Ordering::SeqCst), 1);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cancelling build {BUILD_ID}")),
        "{stderr}"
    );
    assert!(
        stderr.ends_with(&format!(
            "error: build {BUILD_ID} was cancelled: cancelled by the user\n"
        )),
        "{stderr}"
    );
    assert_eq!(text(&out.stdout), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_ctrl_c_exits_at_once() {
    let twin = Twin::new();
    // The coordinator accepts the cancellation but the build does not end.
    twin.script(vec![state(
        "linux/amd64",
        v1::JobState::Running,
        "worker-x86",
        1,
        "",
    )]);
    let served = serve(Arc::clone(&twin)).await;
    let dir = context();
    let ctx = dir.path().to_str().unwrap();
    let child = manifold(
        &served.address,
        &[
            "build",
            "--progress",
            "plain",
            "-t",
            "app:1",
            "--platform",
            "amd64",
            ctx,
        ],
    )
    .spawn()
    .unwrap();
    twin.wait_until("the build is watched", |t| {
        t.watches.load(Ordering::SeqCst) == 1
    })
    .await;
    interrupt(&child);
    twin.wait_until("the build is cancelled", |t| {
        t.cancels.load(Ordering::SeqCst) == 1
    })
    .await;
    interrupt(&child);
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "error: interrupted; build {BUILD_ID} may still be running"
        )),
        "{stderr}"
    );
}
