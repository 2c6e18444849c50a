//! `--cache-max-size` keeps the BuildKit cache of a worker's engine under its limit across builds,
//! as the engine itself counts it (the Engine API's `/system/df`, read with curl: the records not
//! shared with an image, as `docker system df` sums Build Cache). Without the flag the same builds
//! grow it past the limit, so the check can fail.
//!
//! The builds run on the fifth Docker daemon (`MANIFOLD_TEST_PRUNE_DOCKER`): the other four keep
//! their cache, since other tests assert CACHED steps on them. Each build writes its own 24 MiB
//! layer of random bytes.

use std::time::Duration;

use manifold_tests::{Env, TestFarm, context_dir, run, show, wait_until};

const MIB: u64 = 1 << 20;
const LAYER: u64 = 24 * MIB;
/// Below two layers: without pruning, the second build passes it.
const LIMIT: u64 = 40 * MIB;

/// The engine's own view of its build cache: bytes of the records not shared with an image.
async fn cache_bytes(docker: &str) -> anyhow::Result<u64> {
    let socket = docker
        .strip_prefix("unix://")
        .ok_or_else(|| anyhow::anyhow!("{docker} is not a unix socket"))?;
    let text = run(
        "curl",
        &[
            "-fsS",
            "--max-time",
            "60",
            "--unix-socket",
            socket,
            "http://docker/system/df?type=build-cache",
        ],
    )
    .await?;
    let df: serde_json::Value = serde_json::from_str(&text)?;
    let records = df["BuildCache"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("no BuildCache in {text}"))?;
    Ok(records
        .iter()
        .filter(|r| r["Shared"] != true)
        .map(|r| r["Size"].as_u64().unwrap_or(0))
        .sum())
}

/// Builds one image with a fresh 24 MiB layer on `farm`'s worker; fails unless it succeeds.
async fn build_big_layer(farm: &TestFarm, env: &Env, n: u32) -> anyhow::Result<()> {
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let dockerfile = format!(
        "FROM {}\nRUN echo {nonce} > /id && dd if=/dev/urandom of=/layer bs=1048576 count={} 2>/dev/null\n",
        env.base_image,
        LAYER / MIB
    );
    let ctx = context_dir(&[("Dockerfile", &dockerfile)])?;
    let tag = format!("{}:{n}", env.unique_repo("prune"));
    let out = farm
        .cli([
            "build",
            "-t",
            &tag,
            "--platform",
            "linux/amd64",
            ctx.path().to_str().unwrap(),
        ])
        .await?;
    anyhow::ensure!(out.status.success(), "build {n}: {}", show(&out));
    Ok(())
}

/// Waits until the engine's cache is below [`LIMIT`]; its size then.
async fn under_limit(farm: &TestFarm, docker: &str, what: &str) -> anyhow::Result<u64> {
    let last = std::sync::atomic::AtomicU64::new(0);
    let last = &last;
    wait_until(Duration::from_secs(90), what, || async move {
        let bytes = cache_bytes(docker).await.ok()?;
        last.store(bytes, std::sync::atomic::Ordering::Relaxed);
        (bytes < LIMIT).then_some(bytes)
    })
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "{e}: {} bytes, limit {LIMIT}\n--- worker ---\n{}",
            last.load(std::sync::atomic::Ordering::Relaxed),
            farm.worker_log("limited")
        )
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cache_stays_under_max_size_across_builds_and_grows_without_it() -> anyhow::Result<()> {
    let env = Env::from_env();
    let docker = env.prune_docker.clone();
    let docker_host = docker.as_str();
    // Start from an empty cache: this daemon is the prune tests' own.
    run("docker", &["-H", docker_host, "builder", "prune", "-af"]).await?;
    let empty = cache_bytes(docker_host).await?;
    assert!(empty < MIB, "the cache was emptied: {empty} bytes");

    // Without a limit, three builds leave more than the limit behind.
    let mut farm = TestFarm::builder().start().await?;
    farm.worker("unlimited").docker(docker_host).spawn().await?;
    for n in 1..=3 {
        build_big_layer(&farm, &env, n).await?;
    }
    let grown = cache_bytes(docker_host).await?;
    assert!(
        grown >= 3 * LAYER,
        "without --cache-max-size the cache keeps every layer: {grown} bytes"
    );
    farm.kill_worker("unlimited").await;

    // With one, the worker trims what is there when it starts, then stays under it after each
    // build (the prune follows the job's end: polled, with a deadline for a loaded machine).
    farm.worker("limited")
        .docker(docker_host)
        .arg("--cache-max-size")
        .arg(&LIMIT.to_string())
        .spawn()
        .await?;
    let trimmed = under_limit(&farm, docker_host, "the cache trimmed at start").await?;
    assert!(trimmed < grown, "{trimmed} < {grown}");
    for n in 4..=6 {
        build_big_layer(&farm, &env, n).await?;
        let after = under_limit(
            &farm,
            docker_host,
            &format!("the cache under its limit after build {n}"),
        )
        .await?;
        // The last build's layer is the most recently used: it stays.
        assert!(after >= LAYER, "build {n}'s layer is kept: {after} bytes");
    }
    assert!(
        farm.worker_log("limited")
            .contains("pruned the buildkit cache"),
        "the worker says it pruned:\n{}",
        farm.worker_log("limited")
    );
    Ok(())
}
