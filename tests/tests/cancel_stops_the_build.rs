//! Cancelling a build stops it for real: within 10 s of `manifold cancel ID`, or of Ctrl-C on
//! `manifold build`, no process of its RUN step runs on either daemon (BuildKit RUN steps are no
//! `docker ps` containers, so the check is on the host's processes, found by a unique argument),
//! the build reads cancelled and no tag exists. A CLI that goes away without cancelling leaves the
//! build running, and `manifold watch ID` re-attaches to it.

use std::time::{Duration, Instant};

use manifold_proto::v1;
use manifold_proto::v1::build_event::Event;
use manifold_tests::faults::{list_platforms, pgrep, platform_text, signal_pid};
use manifold_tests::{Env, TestFarm, context_dir, show, skopeo_tags, wait_until};

/// How long the RUN step may still run after the cancel.
const STOP_WITHIN: Duration = Duration::from_secs(10);

async fn farm_with_both_platforms(env: &Env) -> anyhow::Result<TestFarm> {
    let mut farm = TestFarm::builder().start().await?;
    farm.worker("x86").docker(&env.amd64_docker).spawn().await?;
    farm.worker("arm")
        .docker(&env.arm64_docker)
        .platform("linux/arm64")
        .spawn()
        .await?;
    Ok(farm)
}

/// A RUN step that sleeps "forever", with a number no other process on the host has in its
/// command line, under QEMU as natively.
fn long_run(env: &Env) -> anyhow::Result<(tempfile::TempDir, String)> {
    let marker = (100_000_000 + rand_below(800_000_000)).to_string();
    let dockerfile = format!(
        "FROM {}\nRUN echo sleeping-{marker} on $(uname -m) && sleep {marker}\n",
        env.base_image
    );
    Ok((context_dir(&[("Dockerfile", &dockerfile)])?, marker))
}

fn rand_below(n: u64) -> u64 {
    u64::from_le_bytes(uuid::Uuid::new_v4().as_bytes()[..8].try_into().unwrap()) % n
}

/// Waits until every platform in `platforms` printed the RUN step's first line, then until its
/// process shows on the host; returns the pids.
async fn wait_running(
    farm: &TestFarm,
    id: &str,
    marker: &str,
    platforms: &[&str],
) -> anyhow::Result<Vec<u32>> {
    let mut seen: Vec<String> = Vec::new();
    let needle = format!("sleeping-{marker}");
    farm.wait_event(
        id,
        Duration::from_secs(120),
        "the RUN step on every platform",
        |e| {
            if let Event::Log(l) = e
                && l.line.contains(&needle)
            {
                let p = platform_text(l.platform.as_ref());
                if !seen.contains(&p) {
                    seen.push(p);
                }
            }
            platforms
                .iter()
                .all(|p| seen.iter().any(|s| s == p))
                .then_some(())
        },
    )
    .await?;
    wait_until(
        Duration::from_secs(30),
        "the RUN step's process on the host",
        || async {
            let pids = pgrep(marker).await.ok()?;
            (pids.len() >= platforms.len()).then_some(pids)
        },
    )
    .await
}

/// Asserts no process of the RUN step is left within [`STOP_WITHIN`] of `since`; returns how long
/// it took.
async fn assert_stopped(marker: &str, since: Instant) -> anyhow::Result<Duration> {
    loop {
        let left = pgrep(marker).await?;
        if left.is_empty() {
            return Ok(since.elapsed());
        }
        if since.elapsed() > STOP_WITHIN {
            let ps = manifold_tests::run(
                "ps",
                &[
                    "-o",
                    "pid,args",
                    "-p",
                    &left
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(","),
                ],
            )
            .await
            .unwrap_or_default();
            anyhow::bail!("the RUN step still runs {STOP_WITHIN:?} after the cancel:\n{ps}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn manifold_cancel_stops_every_platform_s_run_step_and_writes_no_tag() -> anyhow::Result<()> {
    let env = Env::from_env();
    let farm = farm_with_both_platforms(&env).await?;
    let (ctx, marker) = long_run(&env)?;
    let repo = env.unique_repo("cancel");
    let tag = format!("{repo}:1");
    let id = farm
        .submit_detached(&[
            "-t",
            &tag,
            "--platform",
            "linux/amd64,linux/arm64",
            ctx.path().to_str().unwrap(),
        ])
        .await?;
    let pids = wait_running(&farm, &id, &marker, &["linux/amd64", "linux/arm64"]).await?;

    let cancelled_at = Instant::now();
    let out = farm.cli(["cancel", &id]).await?;
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("build {id}: cancelled")),
        "{}",
        show(&out)
    );
    let took = assert_stopped(&marker, cancelled_at).await?;

    let b = farm.build(&id).await?;
    assert_eq!(b.state, v1::BuildState::Cancelled as i32, "{b:?}");
    assert!(
        b.jobs
            .iter()
            .all(|j| j.state == v1::JobState::Cancelled as i32),
        "{b:?}"
    );
    let status = farm.cli(["build-status", &id]).await?;
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("cancelled"),
        "{}",
        show(&status)
    );
    assert!(
        skopeo_tags(&repo).await?.is_empty(),
        "a cancelled build writes no tag"
    );
    eprintln!(
        "cancel: {} RUN process(es) gone {:.1}s after `manifold cancel`",
        pids.len(),
        took.as_secs_f64()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_on_manifold_build_cancels_the_build() -> anyhow::Result<()> {
    let env = Env::from_env();
    let farm = farm_with_both_platforms(&env).await?;
    let (ctx, marker) = long_run(&env)?;
    let repo = env.unique_repo("ctrlc");
    let tag = format!("{repo}:1");
    let cli = farm.cli_child([
        "build",
        "-t",
        &tag,
        "--platform",
        "linux/amd64",
        "--progress",
        "plain",
        ctx.path().to_str().unwrap(),
    ])?;
    let id = wait_until(
        Duration::from_secs(30),
        "the build to be submitted",
        || async {
            let mut builds = farm.builds().await.ok()?;
            let list = builds
                .list(v1::ListBuildsRequest {
                    limit: 1,
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner();
            list.builds.first().map(|b| b.id.clone())
        },
    )
    .await?;
    wait_running(&farm, &id, &marker, &["linux/amd64"]).await?;

    let pressed = Instant::now();
    signal_pid(cli.id().expect("the CLI runs"), "INT").await?;
    let took = assert_stopped(&marker, pressed).await?;
    let out = tokio::time::timeout(Duration::from_secs(30), cli.wait_with_output()).await??;
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cancelling build"), "{}", show(&out));
    assert!(stderr.contains("was cancelled"), "{}", show(&out));
    assert_eq!(
        farm.build(&id).await?.state,
        v1::BuildState::Cancelled as i32
    );
    assert!(
        skopeo_tags(&repo).await?.is_empty(),
        "a cancelled build writes no tag"
    );
    eprintln!(
        "ctrl-c: RUN process gone {:.1}s after the interrupt",
        took.as_secs_f64()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_build_whose_cli_went_away_keeps_running_and_watch_re_attaches() -> anyhow::Result<()> {
    let env = Env::from_env();
    let farm = farm_with_both_platforms(&env).await?;
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let dockerfile = format!(
        "FROM {}\nRUN echo sleeping-{nonce} && sleep 4\n",
        env.base_image
    );
    let ctx = context_dir(&[("Dockerfile", &dockerfile)])?;
    let repo = env.unique_repo("reattach");
    let tag = format!("{repo}:1");
    let mut cli = farm.cli_child([
        "build",
        "-t",
        &tag,
        "--platform",
        "linux/amd64,linux/arm64",
        "--progress",
        "plain",
        ctx.path().to_str().unwrap(),
    ])?;
    let id = wait_until(
        Duration::from_secs(30),
        "the build to be submitted",
        || async {
            let mut builds = farm.builds().await.ok()?;
            let list = builds
                .list(v1::ListBuildsRequest {
                    limit: 1,
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner();
            list.builds.first().map(|b| b.id.clone())
        },
    )
    .await?;
    let needle = format!("sleeping-{nonce}");
    farm.wait_log_line(&id, None, &needle, Duration::from_secs(120))
        .await?;
    // The CLI dies without a word: no cancel.
    cli.kill().await?;

    let out = farm.cli(["watch", &id, "--progress", "plain"]).await?;
    assert!(out.status.success(), "{}", show(&out));
    let b = farm.build(&id).await?;
    assert_eq!(b.state, v1::BuildState::Succeeded as i32, "{b:?}");
    assert_eq!(
        String::from_utf8(out.stdout)?.trim(),
        b.manifest_digest,
        "watch prints the list's digest"
    );
    assert_eq!(list_platforms(&tag).await?, ["linux/amd64", "linux/arm64"]);
    Ok(())
}
