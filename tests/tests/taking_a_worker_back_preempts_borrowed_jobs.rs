//! An owner taking a lent machine back (`--lend when CMD` starts failing) preempts the borrowed
//! job running there once `preemption_grace` has passed, with real processes: the attempt is
//! cancelled on the worker, the job goes back to the queue without spending an attempt (the
//! farm allows one) and waits while the machine is not lent; lent again, it runs there again.

use std::time::Duration;

use manifold_proto::v1;
use manifold_tests::{Env, TestFarm, context_dir, issue_token, wait_until};

#[tokio::test(flavor = "multi_thread")]
async fn a_borrowed_job_is_requeued_when_the_owner_takes_the_machine_back() -> anyhow::Result<()> {
    let env = Env::from_env();
    let (bob, bob_entry) = issue_token(&["--name", "bob", "--team", "web"]).await?;
    let config = format!(
        "[scheduling]\npreemption_grace = \"3s\"\n\n[[team]]\nname = \"mobile\"\n\n[[team]]\nname = \"web\"\n\n{bob_entry}\n"
    );
    let mut farm = TestFarm::builder()
        .secured(&config, &["mac=mobile"])
        .max_attempts(1)
        .start()
        .await?;
    let away = farm.state_dir.path().join("owner-is-away");
    std::fs::write(&away, "")?;
    farm.worker("mac")
        .docker(&env.amd64_docker)
        .arg("--lend")
        .arg("when")
        .arg(&format!("test -e {}", away.display()))
        .arg("--lend-check-interval")
        .arg("500ms")
        .spawn()
        .await?;

    // web borrows the lent Mac for a long step.
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let ctx = context_dir(&[(
        "Dockerfile",
        &format!(
            "FROM {}\nRUN echo started-{nonce} && sleep 300\n",
            env.base_image
        ),
    )])?;
    let tag = format!("{}:1", env.unique_repo("borrowed"));
    let id = farm
        .submit_detached_as(
            Some(&bob),
            &[
                "-t",
                &tag,
                "--platform",
                "linux/amd64",
                ctx.path().to_str().unwrap(),
            ],
        )
        .await?;
    farm.wait_log_line(
        &id,
        None,
        &format!("started-{nonce}"),
        Duration::from_secs(120),
    )
    .await?;

    // The owner is back: mac stops lending, and after the grace period the borrowed attempt is
    // called off and requeued.
    std::fs::remove_file(&away)?;
    let message = farm
        .wait_event(
            &id,
            Duration::from_secs(60),
            "the job preempted",
            |e| match e {
                v1::build_event::Event::JobState(s) if s.state == v1::JobState::Queued as i32 => {
                    s.message.contains("preempted").then(|| s.message.clone())
                }
                _ => None,
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n--- mac ---\n{}", farm.worker_log("mac")))?;
    assert!(
        message.contains("preempted: worker mac stopped lending (its owner took it back)"),
        "{message}"
    );
    let b = farm.build(&id).await?;
    assert_eq!(
        (b.jobs[0].state, b.jobs[0].attempt),
        (v1::JobState::Queued as i32, 1),
        "requeued, attempt 1 not counted: {b:?}"
    );
    // The worker stopped the attempt (its slot is free again).
    wait_until(Duration::from_secs(30), "mac's slot freed", || async {
        let out = farm.cli(["workers", "--format", "json"]).await.ok()?;
        let all: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let mac = all["workers"]
            .as_array()?
            .iter()
            .find(|w| w["name"] == "mac")?;
        (mac["slots_in_use"] == 0 && mac["lending"] == false).then_some(())
    })
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "{e}\n--- mac ---\n{}\n--- coordinator ---\n{}",
            farm.worker_log("mac"),
            farm.coordinator_log()
        )
    })?;

    // Lent again: the job runs there again, as attempt 2 although the farm allows one attempt.
    std::fs::write(&away, "")?;
    farm.wait_event(
        &id,
        Duration::from_secs(60),
        "the job running again",
        |e| match e {
            v1::build_event::Event::JobState(s)
                if s.attempt == 2
                    && s.worker == "mac"
                    && s.state == v1::JobState::Running as i32 =>
            {
                Some(())
            }
            _ => None,
        },
    )
    .await?;
    let out = farm.cli(["cancel", &id]).await?;
    assert!(out.status.success(), "{}", manifold_tests::show(&out));
    Ok(())
}
