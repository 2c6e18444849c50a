//! The registry goes away for a few seconds while a worker pushes: the push retries with backoff
//! (each retry in the build's output), the registry comes back, and the build succeeds on its first
//! attempt with a correct list. The registry is a private one of this test (the shared one is
//! never stopped), seeded with the base image.

use std::time::{Duration, Instant};

use manifold_proto::v1;
use manifold_proto::v1::build_event::Event;
use manifold_tests::faults::{PrivateRegistry, job_of, list_platforms, platform_text};
use manifold_tests::{Env, TestFarm, context_dir};

#[tokio::test(flavor = "multi_thread")]
async fn a_push_outlives_a_registry_restart() -> anyhow::Result<()> {
    let started = Instant::now();
    let env = Env::from_env();
    let mut registry = PrivateRegistry::start().await?;
    registry.seed(&env.base_image, "base/busybox:1").await?;
    let mut farm = TestFarm::builder().start().await?;
    farm.worker("x86").docker(&env.amd64_docker).spawn().await?;

    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let dockerfile = format!(
        "FROM {}/base/busybox:1\nRUN echo outage-{nonce} && sleep 3 && cat /proc/sys/kernel/random/uuid > /id\n",
        registry.host
    );
    let ctx = context_dir(&[("Dockerfile", &dockerfile)])?;
    let tag = format!("{}/test/outage:1", registry.host);
    let id = farm
        .submit_detached(&[
            "-t",
            &tag,
            "--platform",
            "linux/amd64",
            ctx.path().to_str().unwrap(),
        ])
        .await?;

    // The base image is pulled; the RUN step starts: the registry goes down before the push.
    let marker = format!("outage-{nonce}");
    farm.wait_log_line(&id, None, &marker, Duration::from_secs(90))
        .await?;
    registry.stop().await;
    let down = Instant::now();
    let retry = farm
        .wait_event(&id, Duration::from_secs(60), "a push retry", |e| match e {
            Event::Log(l) if l.line.contains("failed (try 1 of") => Some(l.line.clone()),
            Event::JobState(s) if s.state == v1::JobState::Succeeded as i32 => {
                panic!("pushed while the registry was down: {s:?}")
            }
            _ => None,
        })
        .await?;
    assert!(retry.contains("retrying in"), "{retry}");
    // Down for a few seconds in all, then back.
    tokio::time::sleep(Duration::from_secs(4).saturating_sub(down.elapsed())).await;
    registry.resume().await?;
    let outage = down.elapsed();

    let b = farm.wait_build_end(&id, Duration::from_secs(120)).await?;
    let diagnostics = || format!("{b:?}\n--- x86 ---\n{}", farm.worker_log("x86"));
    assert_eq!(
        b.state,
        v1::BuildState::Succeeded as i32,
        "{}",
        diagnostics()
    );
    let job = job_of(&b, "linux/amd64")?;
    assert_eq!(
        job.attempt, 1,
        "retried within the push, not as a new attempt"
    );
    assert!(
        job.error.is_empty() && platform_text(job.platform.as_ref()) == "linux/amd64",
        "{}",
        diagnostics()
    );
    assert_eq!(list_platforms(&tag).await?, ["linux/amd64"]);
    eprintln!(
        "registry_outage_retries_push: registry down {:.1}s during the push, first retry: `{retry}`; {:.1}s",
        outage.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
