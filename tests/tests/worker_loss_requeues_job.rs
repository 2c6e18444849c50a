//! A worker SIGKILLed in the middle of a build: after the lease its job runs again on the other
//! worker of the same platform (the attempt counted, the loss recorded), the build succeeds, the
//! manifest list has exactly the requested platforms with the second worker's image, and
//! `manifold watch` re-attaches to the finished build.

use std::time::{Duration, Instant};

use manifold_proto::v1;
use manifold_tests::faults::{job_of, list_children, list_platforms};
use manifold_tests::{Env, TestFarm, context_dir, show};

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_worker_s_job_finishes_on_another_worker_of_its_platform() -> anyhow::Result<()> {
    let started = Instant::now();
    let env = Env::from_env();
    let mut farm = TestFarm::builder()
        .arg("--worker-lease")
        .arg("3s")
        .start()
        .await?;
    // Two amd64 workers on two daemons (the second daemon runs amd64 natively too), one arm64.
    farm.worker("x86-a")
        .docker(&env.amd64_docker)
        .spawn()
        .await?;
    farm.worker("x86-b")
        .docker(&env.arm64_docker)
        .spawn()
        .await?;
    farm.worker("arm")
        .docker(&env.arm64_docker)
        .platform("linux/arm64")
        .spawn()
        .await?;

    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let dockerfile = format!(
        "FROM {}\nRUN echo step-{nonce} on $(uname -m) && sleep 8 && cat /proc/sys/kernel/random/uuid > /id\n",
        env.base_image
    );
    let ctx = context_dir(&[("Dockerfile", &dockerfile)])?;
    let repo = env.unique_repo("workerloss");
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

    // Once the amd64 RUN step prints, its worker dies.
    let marker = format!("step-{nonce}");
    farm.wait_log_line(&id, Some("linux/amd64"), &marker, Duration::from_secs(90))
        .await?;
    let first = farm.build(&id).await?;
    let victim = job_of(&first, "linux/amd64")?.worker.clone();
    let survivor = if victim == "x86-a" { "x86-b" } else { "x86-a" };
    assert_eq!(
        job_of(&first, "linux/amd64")?.attempt,
        1,
        "{first:?}\n--- coordinator ---\n{}\n--- x86-a ---\n{}",
        farm.coordinator_log(),
        farm.worker_log("x86-a")
    );
    farm.kill_worker(&victim).await;

    let b = farm.wait_build_end(&id, Duration::from_secs(180)).await?;
    let diagnostics = || {
        format!(
            "{b:?}\n--- coordinator ---\n{}\n--- {survivor} ---\n{}",
            farm.coordinator_log(),
            farm.worker_log(survivor)
        )
    };
    assert_eq!(
        b.state,
        v1::BuildState::Succeeded as i32,
        "{}",
        diagnostics()
    );
    let amd64 = job_of(&b, "linux/amd64")?;
    assert_eq!(amd64.worker, survivor, "{}", diagnostics());
    assert_eq!(amd64.attempt, 2, "the lost attempt counts");
    assert!(
        amd64
            .error
            .contains(&format!("attempt 1 on {victim}: worker lost")),
        "{}",
        diagnostics()
    );
    assert_eq!(job_of(&b, "linux/arm64")?.attempt, 1, "{}", diagnostics());

    // The list under the tag: exactly the two platforms, amd64 being the survivor's image.
    assert_eq!(list_platforms(&tag).await?, ["linux/amd64", "linux/arm64"]);
    let children = list_children(&tag).await?;
    let amd64_child = &children.iter().find(|(p, _)| p == "linux/amd64").unwrap().1;
    assert_eq!(
        Some(amd64_child.as_str()),
        amd64.image.as_ref().map(|i| i.digest.as_str())
    );
    assert_eq!(b.manifest_digest.len(), 71);

    // A client that comes later re-attaches to the build and gets its digest.
    let out = farm.cli(["watch", &id, "-q"]).await?;
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(String::from_utf8(out.stdout)?.trim(), b.manifest_digest);
    eprintln!(
        "worker_loss_requeues_job: {victim} killed, {survivor} finished the job; {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
