//! The coordinator's Prometheus endpoint (`--metrics-listen`), scraped with curl during a real
//! build: the job is seen queued while no worker is attached (the queue of its platform and team
//! holds it), then running on the worker once one attaches (the queue drained, a slot used), then
//! succeeded, with its wait, its duration and the assignment counted. Teams are labels; build ids
//! and images appear nowhere.

use std::time::Duration;

use manifold_tests::{Env, TestFarm, context_dir, free_port, issue_token, run, wait_until};

/// The value of the sample `series` (name and labels exactly as exposed), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

async fn scrape(url: &str) -> anyhow::Result<String> {
    run("curl", &["-fsS", "--max-time", "5", url]).await
}

#[tokio::test]
async fn metrics_follow_a_build_through_its_states() -> anyhow::Result<()> {
    let env = Env::from_env();
    let (alice, alice_entry) = issue_token(&["--name", "alice", "--team", "mobile"]).await?;
    let config = format!("[[team]]\nname = \"mobile\"\nweight = 3\n\n{alice_entry}\n");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut farm = TestFarm::builder()
        .secured(&config, &["x86"])
        .arg("--metrics-listen")
        .arg(&listen)
        .start()
        .await?;
    let url = format!("http://{listen}/metrics");

    let text = scrape(&url).await?;
    assert_eq!(sample(&text, "manifold_leader"), Some(1.0), "{text}");
    assert_eq!(
        sample(&text, r#"manifold_team_weight{team="mobile"}"#),
        Some(3.0),
        "{text}"
    );
    assert!(
        text.trim_end().ends_with("# EOF"),
        "OpenMetrics text:\n{text}"
    );

    // No worker yet: the job waits in its platform's queue, under its team.
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let ctx = context_dir(&[(
        "Dockerfile",
        &format!(
            "FROM {}\nRUN echo metrics-{nonce} && sleep 4\n",
            env.base_image
        ),
    )])?;
    let repo = env.unique_repo("metrics");
    let tag = format!("{repo}:1");
    let id = farm
        .submit_detached_as(
            Some(&alice),
            &[
                "-t",
                &tag,
                "--platform",
                "linux/amd64",
                ctx.path().to_str().unwrap(),
            ],
        )
        .await?;
    let queued = r#"manifold_queue_depth{platform="linux/amd64",team="mobile"}"#;
    let text = wait_until(Duration::from_secs(10), "the job in the queue", || async {
        let text = scrape(&url).await.ok()?;
        (sample(&text, queued) == Some(1.0)).then_some(text)
    })
    .await?;
    assert_eq!(
        sample(
            &text,
            r#"manifold_jobs{platform="linux/amd64",team="mobile",state="queued"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"manifold_builds{state="queued"}"#),
        Some(1.0),
        "{text}"
    );
    assert!(
        sample(
            &text,
            r#"manifold_queue_oldest_wait_seconds{platform="linux/amd64"}"#
        )
        .is_some(),
        "{text}"
    );

    // A worker attaches: the queue drains and the job runs there, in its one slot.
    farm.worker("x86").docker(&env.amd64_docker).spawn().await?;
    let running = r#"manifold_jobs{platform="linux/amd64",team="mobile",state="running"}"#;
    let text = wait_until(Duration::from_secs(60), "the job running", || async {
        let text = scrape(&url).await.ok()?;
        (sample(&text, running) == Some(1.0)).then_some(text)
    })
    .await?;
    assert_eq!(
        sample(&text, queued).unwrap_or(0.0),
        0.0,
        "queue drained:\n{text}"
    );
    for (series, want) in [
        (r#"manifold_builds{state="running"}"#, 1.0),
        (
            r#"manifold_workers{platform="linux/amd64",state="ready"}"#,
            1.0,
        ),
        (
            r#"manifold_worker_slots{platform="linux/amd64",state="used"}"#,
            1.0,
        ),
        (
            r#"manifold_worker_slots{platform="linux/amd64",state="free"}"#,
            0.0,
        ),
        (
            r#"manifold_job_assignments_total{platform="linux/amd64",team="mobile"}"#,
            1.0,
        ),
        (
            r#"manifold_job_wait_seconds_count{platform="linux/amd64",team="mobile"}"#,
            1.0,
        ),
    ] {
        assert_eq!(sample(&text, series), Some(want), "{series} in\n{text}");
    }
    // It waited at least as long as it took to see it queued and start the worker.
    let waited = sample(
        &text,
        r#"manifold_job_wait_seconds_sum{platform="linux/amd64",team="mobile"}"#,
    )
    .unwrap();
    assert!(waited > 0.0, "{text}");

    let done = farm.wait_build_end(&id, Duration::from_secs(120)).await?;
    assert_eq!(done.state, manifold_proto::v1::BuildState::Succeeded as i32);
    let text = scrape(&url).await?;
    for (series, want) in [
        (
            r#"manifold_builds_finished_total{team="mobile",state="succeeded"}"#,
            1.0,
        ),
        (
            r#"manifold_jobs_finished_total{platform="linux/amd64",team="mobile",state="succeeded"}"#,
            1.0,
        ),
        (
            r#"manifold_job_duration_seconds_count{platform="linux/amd64",worker="x86"}"#,
            1.0,
        ),
        (
            r#"manifold_worker_slots{platform="linux/amd64",state="free"}"#,
            1.0,
        ),
        (r#"manifold_builds{state="running"}"#, 0.0),
        (r#"manifold_builds{state="queued"}"#, 0.0),
    ] {
        assert_eq!(sample(&text, series), Some(want), "{series} in\n{text}");
    }
    // The RUN step sleeps 4 s: the job ran at least that long.
    let ran = sample(
        &text,
        r#"manifold_job_duration_seconds_sum{platform="linux/amd64",worker="x86"}"#,
    )
    .unwrap();
    assert!(ran >= 4.0, "ran {ran}s:\n{text}");
    assert_eq!(sample(&text, running).unwrap_or(0.0), 0.0, "{text}");
    assert!(
        sample(&text, "manifold_context_store_bytes").unwrap() > 0.0,
        "{text}"
    );
    // Teams are labels; builds, images and tokens are not.
    assert!(!text.contains(&id), "a build id in the metrics:\n{text}");
    assert!(!text.contains(&repo), "an image in the metrics:\n{text}");
    assert!(!text.contains(&alice));
    Ok(())
}

#[tokio::test]
async fn a_busy_metrics_address_is_refused_naming_it() -> anyhow::Result<()> {
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = taken.local_addr()?.to_string();
    let state = tempfile::tempdir()?;
    let out = tokio::process::Command::new(manifold_tests::bin("manifold-coordinator"))
        .args([
            "--plaintext",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--state-dir",
            state.path().to_str().unwrap(),
            "--metrics-listen",
            &addr,
        ])
        .output()
        .await?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("binding --metrics-listen {addr}")),
        "{err}"
    );
    Ok(())
}
