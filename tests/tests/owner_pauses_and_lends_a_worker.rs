//! A team's worker under its owner's control (a Mac, say), with real processes: `--lend when CMD`
//! lends it only while CMD exits 0, and `manifold workers pause|resume` stops and restarts its
//! intake, each checked against the scheduler's decisions (which build ran where, which waited).
//!
//! - Not lending (the script's flag file absent): another team's build waits, while the owner's
//!   build, submitted later, runs on it and succeeds. `manifold workers` shows `not lending`.
//! - The flag file appears: the worker lends, and the waiting build runs on it.
//! - Another team may not pause it; its owner does: `paused`, and the owner's new build waits
//!   through several heartbeats; resumed, it runs and succeeds.

use std::time::Duration;

use manifold_proto::v1;
use manifold_tests::{Env, TestFarm, context_dir, issue_token, show, wait_until};

async fn worker_json(farm: &TestFarm, name: &str) -> anyhow::Result<serde_json::Value> {
    let out = farm.cli(["workers", "--format", "json"]).await?;
    anyhow::ensure!(out.status.success(), "{}", show(&out));
    let all: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    all["workers"]
        .as_array()
        .and_then(|a| a.iter().find(|w| w["name"] == name).cloned())
        .ok_or_else(|| anyhow::anyhow!("no worker {name} in {all}"))
}

fn job(b: &v1::Build) -> &v1::Job {
    &b.jobs[0]
}

#[tokio::test]
async fn lending_follows_the_owners_script_and_pause_stops_new_jobs() -> anyhow::Result<()> {
    let env = Env::from_env();
    let (alice, alice_entry) = issue_token(&["--name", "alice", "--team", "mobile"]).await?;
    let (bob, bob_entry) = issue_token(&["--name", "bob", "--team", "web"]).await?;
    let config = format!(
        "[[team]]\nname = \"mobile\"\n\n[[team]]\nname = \"web\"\n\n{alice_entry}\n\n{bob_entry}\n"
    );
    let mut farm = TestFarm::builder()
        .secured(&config, &["mac=mobile"])
        .arg("--worker-lease")
        .arg("6s")
        .start()
        .await?;
    let away = farm.state_dir.path().join("owner-is-away");
    let script = format!("test -e {}", away.display());
    farm.worker("mac")
        .docker(&env.amd64_docker)
        .arg("--lend")
        .arg("when")
        .arg(&script)
        .arg("--lend-check-interval")
        .arg("1s")
        .spawn()
        .await?;
    let w = wait_until(Duration::from_secs(20), "mac not lending", || async {
        let w = worker_json(&farm, "mac").await.ok()?;
        (w["lending"] == false).then_some(w)
    })
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "{e}\n--- mac ---\n{}\n--- coordinator ---\n{}",
            farm.worker_log("mac"),
            farm.coordinator_log()
        )
    })?;
    assert_eq!(w["status"], "ready, not lending", "{w}");
    assert_eq!(w["owner"], "mobile", "{w}");

    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let build = |who: &str| -> anyhow::Result<(tempfile::TempDir, String)> {
        let ctx = context_dir(&[(
            "Dockerfile",
            &format!("FROM {}\nRUN echo {who}-{nonce}\n", env.base_image),
        )])?;
        Ok((ctx, format!("{}:1", env.unique_repo(who))))
    };
    let submit = |token: &str, ctx: &tempfile::TempDir, tag: &str| {
        let (token, ctx, tag) = (
            token.to_owned(),
            ctx.path().display().to_string(),
            tag.to_owned(),
        );
        let farm = &farm;
        async move {
            farm.submit_detached_as(
                Some(&token),
                &["-t", &tag, "--platform", "linux/amd64", &ctx],
            )
            .await
        }
    };

    // Not lending: web's build waits; mobile's, submitted after it, runs on mac.
    let (web_ctx, web_tag) = build("web")?;
    let web = submit(&bob, &web_ctx, &web_tag).await?;
    let (mobile_ctx, mobile_tag) = build("mobile")?;
    let mobile = submit(&alice, &mobile_ctx, &mobile_tag).await?;
    let done = farm
        .wait_build_end(&mobile, Duration::from_secs(120))
        .await?;
    assert_eq!(
        done.state,
        v1::BuildState::Succeeded as i32,
        "{done:?}\n{}",
        farm.worker_log("mac")
    );
    assert_eq!(job(&done).worker, "mac");
    let waiting = farm.build(&web).await?;
    assert_eq!(
        (job(&waiting).state, job(&waiting).attempt),
        (v1::JobState::Queued as i32, 0),
        "web's job was never assigned while mac did not lend: {waiting:?}"
    );

    // The owner goes away: the script exits 0, mac lends, and web's build runs there.
    std::fs::write(&away, "")?;
    let done = farm.wait_build_end(&web, Duration::from_secs(120)).await?;
    assert_eq!(done.state, v1::BuildState::Succeeded as i32, "{done:?}");
    assert_eq!(job(&done).worker, "mac");
    assert_eq!(worker_json(&farm, "mac").await?["status"], "ready");

    // Another team may not pause it.
    let out = farm.cli_as(Some(&bob), ["workers", "pause", "mac"]).await?;
    assert!(!out.status.success(), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("only an admin or the team owning worker `mac` may pause it"),
        "{err}"
    );

    // Its owner pauses it: a new build of the owner waits through several heartbeats.
    let out = farm
        .cli_as(Some(&alice), ["workers", "pause", "mac"])
        .await?;
    assert!(out.status.success(), "{}", show(&out));
    let w = wait_until(Duration::from_secs(10), "mac paused", || async {
        let w = worker_json(&farm, "mac").await.ok()?;
        (w["paused"] == true).then_some(w)
    })
    .await?;
    assert_eq!(w["status"], "paused", "{w}");
    let (again_ctx, again_tag) = build("again")?;
    let again = submit(&alice, &again_ctx, &again_tag).await?;
    let since = w["last_heartbeat_ms"].as_i64().unwrap_or_default();
    // The lease of 6 s makes mac heartbeat every 2 s: three heartbeats later, the scheduler
    // has had every chance to assign the job.
    wait_until(Duration::from_secs(20), "three more heartbeats", || async {
        let w = worker_json(&farm, "mac").await.ok()?;
        (w["last_heartbeat_ms"].as_i64()? > since + 5_000).then_some(())
    })
    .await?;
    let waiting = farm.build(&again).await?;
    assert_eq!(
        (job(&waiting).state, job(&waiting).attempt),
        (v1::JobState::Queued as i32, 0),
        "no job goes to a paused worker: {waiting:?}"
    );

    // Resumed: it runs.
    let out = farm
        .cli_as(Some(&alice), ["workers", "resume", "mac"])
        .await?;
    assert!(out.status.success(), "{}", show(&out));
    let done = farm
        .wait_build_end(&again, Duration::from_secs(120))
        .await?;
    assert_eq!(done.state, v1::BuildState::Succeeded as i32, "{done:?}");
    assert_eq!(job(&done).worker, "mac");
    assert_eq!(worker_json(&farm, "mac").await?["status"], "ready");
    Ok(())
}
