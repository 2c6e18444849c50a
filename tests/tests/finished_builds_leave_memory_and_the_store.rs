//! Finished builds leave the coordinator's memory and, after the retention, its store:
//! - with `--keep-finished 0`, a finished build is evicted at once (the coordinator's metrics
//!   say none is held in full, one is stored), yet `manifold build-status`, `logs`, `watch`,
//!   `builds` and another team's refusal work as before, read from the store, also after a
//!   SIGKILL and restart (which reads the build's summary only);
//! - with `--retention 3s`, a finished build is deleted with its logs 3 s after it finished:
//!   `manifold builds` no longer lists it, `build-status` and `logs` say it is unknown, also after
//!   a restart; a newer build (unfinished, so never deleted) stays.
//!
//! Real coordinator and worker processes, the amd64 Docker daemon and the registry; loopback only.

use std::time::Duration;

use manifold_proto::v1;
use manifold_tests::{TestFarm, context_dir, free_port, issue_token, run, show, wait_until};

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// (builds stored, builds held in full), from the coordinator's metrics.
async fn counts(url: &str) -> Option<(f64, f64)> {
    let text = run("curl", &["-fsS", "--max-time", "5", url]).await.ok()?;
    Some((
        sample(&text, "manifold_builds_stored")?,
        sample(&text, "manifold_builds_held")?,
    ))
}

async fn wait_counts(url: &str, want: (f64, f64), what: &str) -> anyhow::Result<()> {
    wait_until(Duration::from_secs(20), what, || async {
        (counts(url).await? == want).then_some(())
    })
    .await
}

fn text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A build of `linux/amd64` printing `marker`, as `token`; returns its id once it succeeded.
async fn build_printing(
    farm: &TestFarm,
    token: Option<&str>,
    marker: &str,
) -> anyhow::Result<String> {
    let env = &farm.env;
    let ctx = context_dir(&[(
        "Dockerfile",
        &format!("FROM {}\nRUN echo {marker}\n", env.base_image),
    )])?;
    let tag = format!("{}:1", env.unique_repo("history"));
    let id = farm
        .submit_detached_as(
            token,
            &[
                "-t",
                &tag,
                "--platform",
                "linux/amd64",
                ctx.path().to_str().unwrap(),
            ],
        )
        .await?;
    let b = farm.wait_build_end(&id, Duration::from_secs(180)).await?;
    anyhow::ensure!(
        b.state == v1::BuildState::Succeeded as i32,
        "{b:?}\n{}",
        farm.coordinator_log()
    );
    Ok(id)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_evicted_build_is_read_from_the_store() -> anyhow::Result<()> {
    let (alice, alice_entry) = issue_token(&["--name", "alice", "--team", "mobile"]).await?;
    let (bob, bob_entry) = issue_token(&["--name", "bob", "--team", "platform"]).await?;
    let config = format!(
        "[[team]]\nname = \"mobile\"\n\n[[team]]\nname = \"platform\"\n\n{alice_entry}\n\n{bob_entry}\n"
    );
    let listen = format!("127.0.0.1:{}", free_port());
    let metrics = format!("http://{listen}/metrics");
    let mut farm = TestFarm::builder()
        .secured(&config, &["x86"])
        .arg("--keep-finished")
        .arg("0")
        .arg("--metrics-listen")
        .arg(&listen)
        .start()
        .await?;
    farm.worker("x86").spawn().await?;
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let marker = format!("evicted-{nonce}");
    let id = build_printing(&farm, Some(&alice), &marker).await?;
    wait_counts(&metrics, (1.0, 0.0), "the finished build to leave memory").await?;

    for round in ["evicted", "evicted, after a restart"] {
        let out = farm.cli_as(Some(&alice), ["build-status", &id]).await?;
        assert!(out.status.success(), "{round}: {}", show(&out));
        assert!(text(&out).contains("succeeded"), "{round}: {}", show(&out));
        assert!(text(&out).contains(&id), "{round}: {}", show(&out));

        let out = farm.cli_as(Some(&alice), ["logs", &id]).await?;
        assert!(out.status.success(), "{round}: {}", show(&out));
        assert!(text(&out).contains(&marker), "{round}: {}", show(&out));

        // `watch` tells the stored record's history: its output, then its end.
        let out = farm.cli_as(Some(&alice), ["watch", &id]).await?;
        assert!(out.status.success(), "{round}: {}", show(&out));
        let all = format!("{}{}", text(&out), String::from_utf8_lossy(&out.stderr));
        assert!(all.contains(&marker), "{round}: {}", show(&out));

        let out = farm
            .cli_as(Some(&alice), ["builds", "--format", "json"])
            .await?;
        assert!(out.status.success(), "{round}: {}", show(&out));
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let listed: Vec<&str> = (doc["builds"].as_array().expect("a builds array").iter())
            .filter_map(|b| b["id"].as_str())
            .collect();
        assert_eq!(listed, [id.as_str()], "{round}: {}", show(&out));

        // Another team learns nothing more of an evicted build than of a held one.
        for command in ["build-status", "logs", "watch"] {
            let out = farm.cli_as(Some(&bob), [command, &id]).await?;
            assert!(
                !out.status.success(),
                "{round}: bob's {command}: {}",
                show(&out)
            );
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("belongs to another team"),
                "{round}: bob's {command}: {}",
                show(&out)
            );
        }
        if round == "evicted" {
            farm.kill_coordinator().await;
            farm.restart_coordinator().await?;
            // The restart read the finished build's summary, not its record.
            wait_counts(&metrics, (1.0, 0.0), "the restarted coordinator's counts").await?;
        }
    }
    Ok(())
}

/// The ids `manifold builds` lists, newest first.
async fn listed(farm: &TestFarm) -> Option<Vec<String>> {
    let out = farm.cli(["builds", "--format", "json"]).await.ok()?;
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(
        (doc["builds"].as_array()?.iter())
            .filter_map(|b| Some(b["id"].as_str()?.to_owned()))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_deletes_an_old_build_and_its_logs() -> anyhow::Result<()> {
    let mut farm = TestFarm::builder()
        .arg("--retention")
        .arg("3s")
        .wait_for_workers("30m")
        .start()
        .await?;
    farm.worker("x86").spawn().await?;
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let marker = format!("retained-{nonce}");
    let old = build_printing(&farm, None, &marker).await?;
    let out = farm.cli(["logs", &old]).await?;
    assert!(text(&out).contains(&marker), "{}", show(&out));
    // A newer build no worker can take: unfinished, so never deleted.
    let ctx = context_dir(&[("Dockerfile", "FROM scratch\n")])?;
    let newer = farm
        .submit_detached(&[
            "-t",
            &format!("{}:1", farm.env.unique_repo("history-newer")),
            "--platform",
            "linux/s390x",
            ctx.path().to_str().unwrap(),
        ])
        .await?;

    wait_until(
        Duration::from_secs(30),
        "the old build to be deleted",
        || async { (listed(&farm).await? == [newer.clone()]).then_some(()) },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", farm.coordinator_log()))?;

    for round in ["deleted", "deleted, after a restart"] {
        for command in ["build-status", "logs"] {
            let out = farm.cli([command, &old]).await?;
            assert!(!out.status.success(), "{round}: {command}: {}", show(&out));
            assert!(
                String::from_utf8_lossy(&out.stderr).contains(&format!("no build with id {old}")),
                "{round}: {command}: {}",
                show(&out)
            );
        }
        let out = farm.cli(["build-status", &newer]).await?;
        assert!(out.status.success(), "{round}: {}", show(&out));
        assert!(text(&out).contains("queued"), "{round}: {}", show(&out));
        if round == "deleted" {
            farm.kill_coordinator().await;
            farm.restart_coordinator().await?;
            assert_eq!(listed(&farm).await, Some(vec![newer.clone()]));
        }
    }
    Ok(())
}
