//! A job that runs out of disk on a worker fails there with that cause and is retried on another
//! worker. The small worker's cache dir is a 1 MiB tmpfs (no --min-free-disk, so it takes the job)
//! and the build context holds a 3 MiB file: its download fails with "no space left on device".
//! The attempt's error names the disk and what to do, the small worker reports itself unhealthy
//! for a while (`manifold workers` says why), and once a second worker attaches the job succeeds
//! there.

use std::time::Duration;

use manifold_proto::v1;
use manifold_tests::faults::Tmpfs;
use manifold_tests::{Env, TestFarm, context_dir, show, wait_until};

#[tokio::test(flavor = "multi_thread")]
async fn a_job_out_of_disk_fails_with_that_cause_and_succeeds_on_another_worker()
-> anyhow::Result<()> {
    let env = Env::from_env();
    let mut farm = TestFarm::builder().start().await?;
    // The harness gives each worker the cache dir STATE/cache-NAME.
    let _small_disk = Tmpfs::mount(&farm.state_dir.path().join("cache-small"), "1m");
    farm.worker("small")
        .docker(&env.amd64_docker)
        .spawn()
        .await?;

    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let big_file = "x".repeat(3 << 20);
    let ctx = context_dir(&[
        (
            "Dockerfile",
            &format!("FROM {}\nRUN echo full-{nonce}\n", env.base_image),
        ),
        ("big.bin", &big_file),
    ])?;
    let tag = format!("{}:1", env.unique_repo("out-of-disk"));
    let id = farm
        .submit_detached(&[
            "-t",
            &tag,
            "--platform",
            "linux/amd64",
            ctx.path().to_str().unwrap(),
        ])
        .await?;

    // Attempt 1 fails on the small worker, naming the disk; the job waits for another worker.
    let build = wait_until(
        Duration::from_secs(120),
        "the small worker's attempt to fail for want of disk",
        || async {
            let b = farm.build(&id).await.ok()?;
            let error = b.jobs.first()?.error.clone();
            error.contains("ran out of disk").then_some(b)
        },
    )
    .await?;
    let error = &build.jobs[0].error;
    assert!(
        error.contains("attempt 1 on small: this worker ran out of disk: ")
            && error.contains("No space left on device")
            && error.contains("retried on another worker"),
        "{build:?}"
    );
    assert_ne!(build.state, v1::BuildState::Failed as i32, "{build:?}");
    let small = farm
        .wait_worker("small", Duration::from_secs(30), |w| w.unhealthy)
        .await?;
    assert!(
        small
            .unhealthy_reason
            .starts_with("a job ran out of disk here"),
        "{small:?}"
    );

    farm.worker("big").docker(&env.amd64_docker).spawn().await?;
    let done = farm.wait_build_end(&id, Duration::from_secs(180)).await?;
    let log = farm.cli(["logs", &id]).await?;
    assert_eq!(
        done.state,
        v1::BuildState::Succeeded as i32,
        "{done:?}\n{}",
        show(&log)
    );
    assert_eq!(done.jobs[0].worker, "big", "{done:?}");
    assert!(
        String::from_utf8_lossy(&log.stdout).contains(&format!("full-{nonce}")),
        "the big worker ran the build:\n{}",
        show(&log)
    );
    Ok(())
}
