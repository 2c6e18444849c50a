//! A build's output is durable: after the coordinator is SIGKILLed and restarted on the same state
//! dir, `manifold logs ID` still prints every platform's lines, the tail of a platform whose
//! output passed the per-platform bound (1 MiB) with a marker where its earlier lines were
//! dropped, and `manifold watch ID` shows the same lines before the build's end. Only the build's
//! team (and admins) may read them: another team's token is refused.
//!
//! The farm serves TLS with two teams (alice in `mobile`, bob in `platform`); loopback only.

use std::time::Duration;

use manifold_proto::v1;
use manifold_tests::long_output::{self, LongOutput};
use manifold_tests::{Env, show, two_team_farm};

#[tokio::test(flavor = "multi_thread")]
async fn logs_of_a_finished_build_are_read_after_a_kill_and_restart() -> anyhow::Result<()> {
    let env = Env::from_env();
    let (mut farm, alice, bob) = two_team_farm(&env).await?;
    let build = LongOutput::new(&env.base_image);
    let ctx = build.context()?;
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
    build.check_logs(&String::from_utf8(out.stdout)?);

    // One platform only.
    let out = farm
        .cli_as(Some(&alice), ["logs", &id, "--platform", "linux/arm64"])
        .await?;
    assert!(out.status.success(), "{}", show(&out));
    build.check_arm64_logs(&String::from_utf8(out.stdout)?);

    // `watch` of the restored build shows what `logs` shows, then its end.
    let mut builds = farm.builds().await?;
    let admin = &farm.secure.as_ref().expect("a secured farm").admin_token;
    let stored = long_output::stored_lines(&mut builds, &id, admin).await?;
    let watch = (farm.cli_as(Some(&alice), ["watch", &id, "--progress", "json"])).await?;
    long_output::check_watch_agrees(&watch, &stored);

    // Another team may not read them, nor watch the build, and learns nothing of them.
    build.check_refused(&farm.cli_as(Some(&bob), ["logs", &id]).await?);
    build.check_refused(&farm.cli_as(Some(&bob), ["watch", &id]).await?);
    let refused = long_output::stored_lines(&mut builds, &id, &bob)
        .await
        .expect_err("bob's Logs call is refused");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    // An admin may.
    assert!(
        stored
            .iter()
            .any(|l| l.line.contains(&format!("last-{}-x86_64", build.nonce)))
    );
    Ok(())
}
