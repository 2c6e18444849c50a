//! `manifold teams`, `queue`, `logs`, the OWNER of workers, the TEAM of builds and
//! `build --priority`, run as a process against the in-memory coordinator twin.

mod support;

use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use manifold_proto::v1;
use support::{BUILD_ID, Twin, serve, tree, wire};

async fn run(address: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_manifold"));
    cmd.arg("--coordinator")
        .arg(address)
        .args(args)
        .env_remove("MANIFOLD_COORDINATOR")
        .env_remove("MANIFOLD_TOKEN")
        .env_remove("MANIFOLD_CA_CERT")
        .env("MANIFOLD_CONFIG", "/dev/null")
        .stdin(Stdio::null());
    tokio::task::spawn_blocking(move || cmd.output().expect("run manifold"))
        .await
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ok(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    text(&out.stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teams_shows_each_team_s_share_beside_its_weight_share() {
    let twin = Twin::new();
    *twin.teams.lock().unwrap() = vec![
        v1::TeamInfo {
            name: "web".into(),
            weight: 1,
            max_concurrent_jobs: 4,
            running: 1,
            queued: 3,
            share: 1.0 / 3.0,
            weight_share: 0.25,
            push_anywhere: true,
            ..Default::default()
        },
        v1::TeamInfo {
            name: "data".into(),
            weight: 3,
            max_concurrent_jobs: 0,
            running: 2,
            queued: 0,
            share: 2.0 / 3.0,
            weight_share: 0.75,
            push_anywhere: true,
            ..Default::default()
        },
    ];
    let served = serve(Arc::clone(&twin)).await;
    assert_eq!(
        ok(&run(&served.address, &["teams"]).await),
        "TEAM  WEIGHT  CAP  RUNNING  QUEUED  SHARE         PUSH TO\n\
         web   1       4    1        3       33% (of 25%)  any\n\
         data  3       -    2        0       67% (of 75%)  any\n"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(
            &run(&served.address, &["teams", "--format", "json"]).await
        ))
        .unwrap();
    assert_eq!(json["teams"][0]["name"], "web");
    assert_eq!(json["teams"][0]["max_concurrent_jobs"], 4);
    assert_eq!(json["teams"][1]["max_concurrent_jobs"], 0);
    assert_eq!(json["teams"][1]["weight_share"], 0.75);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_groups_by_platform_and_dashes_what_is_hidden() {
    let twin = Twin::new();
    let served = serve(Arc::clone(&twin)).await;
    assert_eq!(
        ok(&run(&served.address, &["queue"]).await),
        "nothing is queued\n"
    );

    let job =
        |platform: &str, team: &str, build: &str, image: &str, priority, waited_ms| v1::QueuedJob {
            build_id: build.into(),
            job_id: format!("{team}-{platform}"),
            image: image.into(),
            platform: wire(platform),
            team: team.into(),
            priority,
            waited_ms,
        };
    *twin.queue.lock().unwrap() = vec![
        job("linux/arm64", "web", BUILD_ID, "reg/web:2", 10, 125_000),
        // Another team's job, as a non-admin sees it.
        job("linux/amd64", "data", "", "", 0, 4_000),
        job("linux/arm64", "data", "", "", 0, 30_000),
        job("linux/amd64", "web", BUILD_ID, "reg/web:2", 10, 125_000),
    ];
    assert_eq!(
        ok(&run(&served.address, &["queue"]).await),
        format!(
            "PLATFORM     TEAM  PRIORITY  WAITED  BUILD                                 IMAGE\n\
             linux/amd64  data  0         4s      -                                     -\n\
             linux/amd64  web   10        2m      {BUILD_ID}  reg/web:2\n\
             linux/arm64  web   10        2m      {BUILD_ID}  reg/web:2\n\
             linux/arm64  data  0         30s     -                                     -\n"
        )
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(
            &run(&served.address, &["queue", "--format", "json"]).await
        ))
        .unwrap();
    assert_eq!(json["jobs"][0]["platform"], "linux/amd64");
    assert_eq!(json["jobs"][0]["build_id"], "");
    assert_eq!(json["jobs"][1]["priority"], 10);
    assert_eq!(json["jobs"][3]["waited_ms"], 30_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_prints_every_platform_s_lines_prefixed_or_one_platform_s_bare() {
    let twin = Twin::new();
    let line = |p: &str, text: &str| v1::LogLine {
        platform: wire(p),
        line: text.into(),
    };
    *twin.logs.lock().unwrap() = vec![
        line("linux/amd64", "#5 RUN uname -m\n"),
        line("linux/arm64", "#5 RUN uname -m\n"),
        line("linux/amd64", "x86_64\n"),
        line("linux/arm64", "aarch64\n"),
    ];
    let served = serve(Arc::clone(&twin)).await;

    let out = run(&served.address, &["logs", BUILD_ID]).await;
    assert_eq!(
        ok(&out),
        "[linux/amd64] #5 RUN uname -m\n\
         [linux/arm64] #5 RUN uname -m\n\
         [linux/amd64] x86_64\n\
         [linux/arm64] aarch64\n"
    );
    // An alias is normalised before it is sent.
    let out = run(
        &served.address,
        &["logs", BUILD_ID, "--platform", "aarch64"],
    )
    .await;
    assert_eq!(ok(&out), "#5 RUN uname -m\naarch64\n");
    let requests = twin.logs_requests.lock().unwrap().clone();
    assert_eq!(requests[0].platform, None);
    assert_eq!(requests[1].platform, wire("linux/arm64"));
    assert_eq!(requests[1].build_id, BUILD_ID);

    let out = run(
        &served.address,
        &["logs", BUILD_ID, "--platform", "riscv64"],
    )
    .await;
    assert_eq!(ok(&out), "");
    assert_eq!(
        text(&out.stderr),
        format!("build {BUILD_ID} has no recorded output for linux/riscv64\n")
    );

    let other = "00000000-0000-4000-8000-000000000000";
    let out = run(&served.address, &["logs", other]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!("error: getting the build's logs: no build `{other}`\n")
    );
    let out = run(
        &served.address,
        &["logs", BUILD_ID, "--platform", "linux/&arm"],
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "refused by the parser");
    assert!(text(&out.stderr).contains("linux/&arm"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_show_their_owner_and_builds_their_team() {
    let twin = Twin::new();
    *twin.workers.lock().unwrap() = vec![
        v1::WorkerInfo {
            name: "gpu-1".into(),
            platforms: vec![wire("linux/amd64").unwrap()],
            slots: 2,
            owner: "ml".into(),
            ..Default::default()
        },
        v1::WorkerInfo {
            name: "pi".into(),
            platforms: vec![wire("linux/arm64").unwrap()],
            slots: 1,
            ..Default::default()
        },
    ];
    *twin.build.lock().unwrap() = v1::Build {
        id: BUILD_ID.into(),
        team: "web".into(),
        submitted_by: "ci-bot".into(),
        state: v1::BuildState::Running as i32,
        request: Some(v1::SubmitBuildRequest {
            image: "reg/web:2".into(),
            priority: 10,
            ..Default::default()
        }),
        ..Default::default()
    };
    let served = serve(Arc::clone(&twin)).await;

    let table = ok(&run(&served.address, &["workers"]).await);
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().take(3).collect())
        .collect();
    assert_eq!(
        rows,
        [
            ["NAME", "STATUS", "OWNER"],
            ["gpu-1", "ready", "ml"],
            ["pi", "ready", "-"]
        ]
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(
            &run(&served.address, &["workers", "--format", "json"]).await
        ))
        .unwrap();
    assert_eq!(json["workers"][0]["owner"], "ml");
    assert_eq!(json["workers"][1]["owner"], "");

    let table = ok(&run(&served.address, &["builds"]).await);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["ID", "STATE", "TEAM", "IMAGE", "PLATFORMS", "CREATED"]
    );
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[..4], [BUILD_ID, "running", "web", "reg/web:2"]);

    let status = ok(&run(&served.address, &["build-status", BUILD_ID]).await);
    assert!(
        status.contains("team      web\nsubmitter ci-bot\npriority  10\n"),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_priority_reaches_the_submission() {
    let twin = Twin::new();
    let served = serve(Arc::clone(&twin)).await;
    let dir = tree(&[("Dockerfile", "FROM scratch\n")]);
    let ctx = dir.path().to_str().unwrap();
    for (extra, expected) in [
        (&[][..], 0),
        (&["--priority", "7"][..], 7),
        (&["--priority", "-3"][..], -3),
    ] {
        let mut args = vec!["build", "--detach", "-t", "app:1", "--platform", "amd64"];
        args.extend_from_slice(extra);
        args.push(ctx);
        ok(&run(&served.address, &args).await);
        let submitted = twin.submitted.lock().unwrap().last().cloned().unwrap();
        assert_eq!(submitted.priority, expected, "{extra:?}");
    }
    let out = run(
        &served.address,
        &[
            "build",
            "-t",
            "a",
            "--platform",
            "amd64",
            "--priority",
            "high",
            ctx,
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--priority"),
        "{}",
        text(&out.stderr)
    );
}
