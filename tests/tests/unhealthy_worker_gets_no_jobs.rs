//! A worker whose Docker daemon stops answering (its socket goes away behind a proxy; the real
//! daemon is untouched) reports itself unhealthy: `manifold workers` shows why, and a build
//! submitted meanwhile is not assigned to it. Once the daemon answers again the worker is ready and
//! the build runs on it.

use std::time::{Duration, Instant};

use manifold_proto::v1;
use manifold_tests::faults::DaemonProxy;
use manifold_tests::{Env, TestFarm, context_dir, show};

#[tokio::test(flavor = "multi_thread")]
async fn an_unhealthy_worker_gets_no_job_until_its_daemon_answers() -> anyhow::Result<()> {
    let started = Instant::now();
    let env = Env::from_env();
    let mut daemon = DaemonProxy::start(&env.amd64_docker)?;
    let mut farm = TestFarm::builder().start().await?;
    farm.worker("x86")
        .docker(&daemon.docker_host())
        .arg("--health-interval")
        .arg("500ms")
        .spawn()
        .await?;

    daemon.cut();
    let w = farm
        .wait_worker("x86", Duration::from_secs(20), |w| w.unhealthy)
        .await?;
    assert!(
        w.unhealthy_reason.contains(&daemon.docker_host()),
        "names the daemon: {w:?}"
    );
    let listing = farm.cli(["workers"]).await?;
    let row = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .find(|l| l.starts_with("x86 "))
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(
        row.contains("unhealthy: docker daemon at"),
        "{}",
        show(&listing)
    );

    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let ctx = context_dir(&[(
        "Dockerfile",
        &format!("FROM {}\nRUN echo healthy-{nonce}\n", env.base_image),
    )])?;
    let tag = format!("{}:1", env.unique_repo("unhealthy"));
    let id = farm
        .submit_detached(&[
            "-t",
            &tag,
            "--platform",
            "linux/amd64",
            ctx.path().to_str().unwrap(),
        ])
        .await?;
    // A few heartbeats later the job still waits: nothing was assigned to the unhealthy worker.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let b = farm.build(&id).await?;
    assert_eq!(
        (b.state, b.jobs[0].attempt),
        (v1::BuildState::Queued as i32, 0),
        "{b:?}"
    );

    daemon.restore()?;
    farm.wait_worker("x86", Duration::from_secs(20), |w| !w.unhealthy)
        .await?;
    let b = farm.wait_build_end(&id, Duration::from_secs(120)).await?;
    assert_eq!(
        b.state,
        v1::BuildState::Succeeded as i32,
        "{b:?}\n{}",
        farm.worker_log("x86")
    );
    assert_eq!((b.jobs[0].worker.as_str(), b.jobs[0].attempt), ("x86", 1));
    eprintln!(
        "unhealthy_worker_gets_no_jobs: {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
