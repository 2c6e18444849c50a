//! A build's output is durable: after the coordinator is SIGKILLed and restarted on the same state
//! dir, `manifold logs ID` still prints every platform's lines, the tail of a platform whose
//! output passed the per-platform bound (1 MiB) with a marker where its earlier lines were
//! dropped. Only the build's team (and admins) may read them: another team's token is refused.
//!
//! The farm serves TLS with two teams (alice in `mobile`, bob in `platform`); loopback only.

use std::time::Duration;

use manifold_proto::v1;
use manifold_tests::{Env, context_dir, show, two_team_farm};

#[tokio::test(flavor = "multi_thread")]
async fn logs_of_a_finished_build_are_read_after_a_kill_and_restart() -> anyhow::Result<()> {
    let env = Env::from_env();
    let (mut farm, alice, bob) = two_team_farm(&env).await?;
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    // amd64 prints 12,600 lines of ~90 bytes in 7 steps (more than the 1 MiB kept per platform;
    // each step under BuildKit's own limit of 200 KiB a second per step, past which it clips);
    // arm64 (emulated, slower) prints its first and last lines only.
    let step = |s: u32| {
        format!(
            "RUN if [ $(uname -m) = x86_64 ]; then i=0; while [ $i -lt 1800 ]; do \
             echo \"line $(( {s} * 1800 + i )) {pad}\"; i=$((i+1)); done; fi\n",
            pad = "x".repeat(72)
        )
    };
    let dockerfile = format!(
        "FROM {base}\nRUN echo first-{nonce}-$(uname -m)\n{steps}RUN echo last-{nonce}-$(uname -m)\n",
        base = env.base_image,
        steps = (0..7).map(step).collect::<String>(),
    );
    let ctx = context_dir(&[("Dockerfile", &dockerfile)])?;
    let tag = format!("{}:1", env.unique_repo("durable-logs"));
    let id = farm
        .submit_detached_as(
            Some(&alice),
            &[
                "-t",
                &tag,
                "--platform",
                "linux/amd64,linux/arm64",
                ctx.path().to_str().unwrap(),
            ],
        )
        .await?;
    let b = farm.wait_build_end(&id, Duration::from_secs(300)).await?;
    assert_eq!(
        b.state,
        v1::BuildState::Succeeded as i32,
        "{b:?}\n{}",
        farm.coordinator_log()
    );

    farm.kill_coordinator().await;
    farm.restart_coordinator().await?;

    let out = farm.cli_as(Some(&alice), ["logs", &id]).await?;
    assert!(out.status.success(), "{}", show(&out));
    let text = String::from_utf8(out.stdout)?;
    let lines: Vec<&str> = text.lines().collect();
    let has = |needle: &str| lines.iter().any(|l| l.contains(needle));
    // Both platforms' last lines survive; arm64's whole output too.
    assert!(has(&format!("last-{nonce}-x86_64")), "{}", tail(&text));
    assert!(has(&format!("last-{nonce}-aarch64")), "{}", tail(&text));
    assert!(has(&format!("first-{nonce}-aarch64")), "{}", tail(&text));
    // amd64 passed its bound: its first lines are gone, a marker says how many.
    assert!(
        !has(&format!("first-{nonce}-x86_64")),
        "the head was dropped"
    );
    let marker = lines
        .iter()
        .find(|l| l.contains("earlier lines of linux/amd64 dropped"))
        .unwrap_or_else(|| panic!("no marker in:\n{}", head(&text)));
    assert!(
        marker.contains("keeps the last 1024 KiB of each platform's output"),
        "{marker}"
    );
    // What the coordinator stored, without the CLI's `[linux/amd64] ` prefix.
    let amd64_bytes: usize = lines
        .iter()
        .filter(|l| l.starts_with("[linux/amd64] "))
        .map(|l| l.len() - "[linux/amd64] ".len())
        .sum();
    assert!(
        amd64_bytes > 960 * 1024 && amd64_bytes <= 1024 * 1024 + 200,
        "about 1 MiB of amd64 lines kept, got {amd64_bytes} bytes"
    );
    // The kept lines are the last ones, in order.
    let numbers: Vec<u32> = lines
        .iter()
        .filter_map(|l| l.split("line ").nth(1)?.split(' ').next()?.parse().ok())
        .collect();
    assert!(
        numbers.len() > 9_000,
        "{} numbered lines kept",
        numbers.len()
    );
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "in order");
    assert_eq!(numbers.last(), Some(&12_599));

    // One platform only.
    let out = farm
        .cli_as(Some(&alice), ["logs", &id, "--platform", "linux/arm64"])
        .await?;
    assert!(out.status.success(), "{}", show(&out));
    let arm = String::from_utf8(out.stdout)?;
    assert!(arm.contains(&format!("last-{nonce}-aarch64")), "{arm}");
    assert!(!arm.contains(&format!("last-{nonce}-x86_64")), "{arm}");
    assert!(
        !arm.contains("dropped"),
        "arm64 kept all of its lines: {arm}"
    );

    // Another team may not read them, and learns nothing of them.
    let out = farm.cli_as(Some(&bob), ["logs", &id]).await?;
    assert!(!out.status.success(), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("belongs to another team"), "{err}");
    assert!(!err.contains(&nonce), "{err}");
    let mut builds = farm.builds().await?;
    let refused = builds
        .logs(manifold_tests::with_token(
            &bob,
            v1::BuildLogsRequest {
                build_id: id.clone(),
                platform: None,
            },
        ))
        .await
        .expect_err("bob's Logs call is refused");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    // An admin may.
    let admin = builds
        .logs(farm.as_admin(v1::BuildLogsRequest {
            build_id: id.clone(),
            platform: None,
        }))
        .await?
        .into_inner();
    assert!(
        admin
            .lines
            .iter()
            .any(|l| l.line.contains(&format!("last-{nonce}-x86_64")))
    );
    Ok(())
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn head(text: &str) -> String {
    text.lines().take(20).collect::<Vec<_>>().join("\n")
}
