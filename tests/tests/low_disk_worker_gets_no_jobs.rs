//! A worker whose cache dir's file system has less free space than `--min-free-disk` (here an
//! 8 MiB tmpfs under a 64 MiB threshold) reports itself unhealthy, naming the free space and the
//! threshold: `manifold workers` shows why, a build submitted while it is the only worker waits,
//! and once another worker attaches the build runs there. The small worker never gets the job.
//! Each worker's `--metrics-listen` shows its free disk (as `df` reports it) and its cache, and so
//! do its heartbeats (`manifold workers`' DISK column).

use std::time::Duration;

use manifold_proto::v1;
use manifold_tests::faults::Tmpfs;
use manifold_tests::{Env, TestFarm, context_dir, free_port, run, show};

/// The value of the sample `series` in the worker's metrics at `addr`.
async fn metric(addr: &str, series: &str) -> anyhow::Result<f64> {
    let text = run(
        "curl",
        &["-fsS", "--max-time", "5", &format!("http://{addr}/metrics")],
    )
    .await?;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no {series} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_short_of_disk_gets_no_job_while_another_takes_it() -> anyhow::Result<()> {
    let env = Env::from_env();
    let mut farm = TestFarm::builder().start().await?;
    // The harness gives each worker the cache dir STATE/cache-NAME.
    let small_cache = farm.state_dir.path().join("cache-small");
    let _small_disk = Tmpfs::mount(&small_cache, "8m");
    let small_metrics = format!("127.0.0.1:{}", free_port());
    let big_metrics = format!("127.0.0.1:{}", free_port());
    farm.worker("small")
        .docker(&env.amd64_docker)
        .arg("--metrics-listen")
        .arg(&small_metrics)
        .arg("--min-free-disk")
        .arg("64MiB")
        .arg("--health-interval")
        .arg("500ms")
        .spawn()
        .await?;
    let w = farm
        .wait_worker("small", Duration::from_secs(20), |w| w.unhealthy)
        .await?;
    assert!(
        w.unhealthy_reason
            .contains("is below --min-free-disk 64.0 MiB")
            && w.unhealthy_reason.contains("cache-small"),
        "names the disk and the threshold: {w:?}"
    );
    let listing = farm.cli(["workers"]).await?;
    let row = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .find(|l| l.starts_with("small "))
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(
        row.contains("unhealthy: free disk"),
        "manifold workers shows why:\n{}",
        show(&listing)
    );
    // Its DISK column: the free space of the 8 MiB tmpfs, and its (empty) cache.
    assert!(
        row.contains(" MiB free, cache ") || row.contains(" KiB free, cache "),
        "manifold workers shows the disk:\n{}",
        show(&listing)
    );
    let disk = w.disk.expect("the heartbeat carries the disk");
    assert!(
        disk.free_bytes <= 8 << 20 && disk.cache_bytes < 1 << 20,
        "{disk:?}"
    );

    // Its metrics say the same as df, and the threshold.
    let df = run(
        "df",
        &["-B1", "--output=avail", small_cache.to_str().unwrap()],
    )
    .await?;
    let df: f64 = df.lines().nth(1).unwrap().trim().parse()?;
    assert!(
        (disk.free_bytes as f64 - df).abs() < (1 << 20) as f64,
        "the heartbeat's free disk {} is what df says, {df}",
        disk.free_bytes
    );
    assert_eq!(
        metric(&small_metrics, "manifold_worker_disk_free_bytes").await?,
        df
    );
    assert_eq!(
        metric(&small_metrics, "manifold_worker_disk_min_free_bytes").await?,
        (64u64 << 20) as f64
    );

    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let ctx = context_dir(&[(
        "Dockerfile",
        &format!("FROM {}\nRUN echo disk-{nonce}\n", env.base_image),
    )])?;
    let tag = format!("{}:1", env.unique_repo("low-disk"));
    let id = farm
        .submit_detached(&[
            "-t",
            &tag,
            "--platform",
            "linux/amd64",
            ctx.path().to_str().unwrap(),
        ])
        .await?;
    // While the small worker is the only one, the job stays queued: the build is not started.
    let build = farm.build(&id).await?;
    assert_eq!(build.state, v1::BuildState::Queued as i32, "{build:?}");

    farm.worker("big")
        .docker(&env.amd64_docker)
        .arg("--metrics-listen")
        .arg(&big_metrics)
        .spawn()
        .await?;
    // The big worker's heartbeats carry its daemon's BuildKit cache too.
    let big = farm
        .wait_worker("big", Duration::from_secs(30), |w| {
            w.disk.is_some_and(|d| d.build_cache_bytes.is_some())
        })
        .await?;
    assert!(big.disk.unwrap().free_bytes > 8 << 20, "{big:?}");
    let done = farm.wait_build_end(&id, Duration::from_secs(120)).await?;
    assert_eq!(done.state, v1::BuildState::Succeeded as i32, "{done:?}");
    let job = &done.jobs[0];
    assert_eq!(job.worker, "big", "{done:?}");
    assert_eq!(
        job.attempt, 1,
        "no attempt went to the small worker: {done:?}"
    );
    // The big worker keeps the build's context in its cache.
    let contexts = metric(
        &big_metrics,
        r#"manifold_worker_cache_bytes{kind="contexts"}"#,
    )
    .await?;
    assert!(contexts > 0.0, "contexts cached: {contexts}");
    let log = farm.cli(["logs", &id]).await?;
    assert!(
        !String::from_utf8_lossy(&log.stdout).contains("small"),
        "the small worker never appears in the build's history:\n{}",
        show(&log)
    );
    Ok(())
}
