//! A worker's network to the coordinator is cut (a TCP proxy between them resets every connection
//! and refuses new ones) while its job runs. After the lease the coordinator requeues the job onto
//! the other worker of the platform as attempt 2. The cut-off worker finishes attempt 1 anyway and,
//! once the network is back, reconnects and delivers that result late: the coordinator ignores it,
//! and the tag points at attempt 2's image.

use std::time::{Duration, Instant};

use manifold_proto::v1;
use manifold_proto::v1::build_event::Event;
use manifold_tests::faults::{TcpProxy, job_of, list_children};
use manifold_tests::{Env, TestFarm, context_dir, wait_until};

#[tokio::test(flavor = "multi_thread")]
async fn a_cut_off_worker_s_job_is_requeued_and_its_late_result_ignored() -> anyhow::Result<()> {
    let started = Instant::now();
    let env = Env::from_env();
    let mut farm = TestFarm::builder()
        .arg("--worker-lease")
        .arg("3s")
        .start()
        .await?;
    let mut proxy = TcpProxy::start(farm.coordinator_addr()).await?;
    // x86-a reaches the coordinator only through the proxy; it retries at least every second.
    farm.worker("x86-a")
        .docker(&env.amd64_docker)
        .arg("--reconnect-max")
        .arg("1s")
        .spawn_via(&proxy.url())
        .await?;

    // Every run writes a fresh id, and the two workers drive two daemons (no shared cache): the
    // two attempts push different images.
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let dockerfile = format!(
        "FROM {}\nRUN echo cut-{nonce} && sleep 10 && cat /proc/sys/kernel/random/uuid > /id\n",
        env.base_image
    );
    let ctx = context_dir(&[("Dockerfile", &dockerfile)])?;
    let repo = env.unique_repo("netcut");
    let tag = format!("{repo}:1");
    let id = farm
        .submit_detached(&[
            "-t",
            &tag,
            "--platform",
            "linux/amd64",
            ctx.path().to_str().unwrap(),
        ])
        .await?;
    let marker = format!("cut-{nonce}");
    farm.wait_log_line(&id, Some("linux/amd64"), &marker, Duration::from_secs(90))
        .await?;
    assert_eq!(
        job_of(&farm.build(&id).await?, "linux/amd64")?.worker,
        "x86-a"
    );

    // The network goes; a second amd64 worker (on the other daemon) is there to take over.
    proxy.sever();
    farm.worker("x86-b")
        .docker(&env.arm64_docker)
        .spawn()
        .await?;
    farm.wait_event(&id, Duration::from_secs(30), "attempt 2 on x86-b", |e| {
        matches!(e, Event::JobState(s) if s.attempt == 2 && s.worker == "x86-b").then_some(())
    })
    .await?;

    // Cut off, x86-a still finishes attempt 1 and pushes it; the result waits for the network.
    let first_digest = wait_until(
        Duration::from_secs(90),
        "x86-a to push attempt 1",
        || async {
            let log = farm.worker_log("x86-a");
            let line = log.lines().find(|l| l.contains("job succeeded"))?;
            let digest = line.split("digest=").nth(1)?.split_whitespace().next()?;
            Some(digest.to_owned())
        },
    )
    .await?;
    proxy.restore().await?;
    let job_id = job_of(&farm.build(&id).await?, "linux/amd64")?.id.clone();
    wait_until(
        Duration::from_secs(30),
        "the coordinator to receive and ignore attempt 1's result",
        || async {
            farm.coordinator_log()
                .lines()
                .any(|l| {
                    l.contains("ignoring the result of an attempt that is no longer current")
                        && l.contains(&job_id)
                })
                .then_some(())
        },
    )
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "{e}\n--- coordinator ---\n{}\n--- x86-a ---\n{}",
            farm.coordinator_log(),
            farm.worker_log("x86-a")
        )
    })?;
    let during = farm.build(&id).await?;

    let b = farm.wait_build_end(&id, Duration::from_secs(120)).await?;
    let diagnostics = || {
        format!(
            "{b:?}\n--- coordinator ---\n{}\n--- x86-a ---\n{}",
            farm.coordinator_log(),
            farm.worker_log("x86-a")
        )
    };
    assert_eq!(
        b.state,
        v1::BuildState::Succeeded as i32,
        "{}",
        diagnostics()
    );
    let job = job_of(&b, "linux/amd64")?;
    assert_eq!(
        (job.worker.as_str(), job.attempt),
        ("x86-b", 2),
        "{}",
        diagnostics()
    );
    assert!(
        job.error.contains("attempt 1 on x86-a: worker lost"),
        "{}",
        diagnostics()
    );
    let second_digest = job
        .image
        .as_ref()
        .map(|i| i.digest.clone())
        .unwrap_or_default();
    assert_ne!(
        first_digest, second_digest,
        "the attempts pushed different images"
    );
    let children = list_children(&tag).await?;
    assert_eq!(
        children,
        [("linux/amd64".to_owned(), second_digest.clone())],
        "the tag holds attempt 2's image, not the late attempt 1's"
    );
    eprintln!(
        "network_cut_requeues_job: late result of attempt 1 ({first_digest}) ignored while the build was {}; {:.1}s",
        v1::BuildState::try_from(during.state)
            .map(|s| s.as_str_name())
            .unwrap_or("?"),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
