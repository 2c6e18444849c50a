//! Several coordinators on a real three-member etcd cluster: losing the leader loses no build, and a
//! leader that was paused past its lease cannot write once it wakes up.

use std::time::{Duration, Instant};

use manifold_proto::v1;
use manifold_tests::ha::{Coordinator, EtcdCluster, start_coordinator, start_worker};
use manifold_tests::{Env, bin, context_dir, show, skopeo_raw, wait_until};

async fn leader_client(
    urls: &str,
) -> Option<v1::builds_client::BuildsClient<tonic::transport::Channel>> {
    let addrs = manifold_proto::discovery::parse_addresses(urls);
    let (_, channel) = manifold_proto::discovery::connect_leader(&addrs)
        .await
        .ok()?;
    Some(v1::builds_client::BuildsClient::new(channel))
}

async fn get(urls: &str, id: &str) -> Option<v1::Build> {
    let mut c = leader_client(urls).await?;
    c.get(v1::GetBuildRequest {
        build_id: id.into(),
    })
    .await
    .ok()
    .map(|r| r.into_inner())
}

async fn workers_on(urls: &str) -> usize {
    let addrs = manifold_proto::discovery::parse_addresses(urls);
    let Ok((_, channel)) = manifold_proto::discovery::connect_leader(&addrs).await else {
        return 0;
    };
    v1::workers_client::WorkersClient::new(channel)
        .list(v1::ListWorkersRequest {})
        .await
        .map(|r| r.into_inner().workers.len())
        .unwrap_or(0)
}

async fn submit(
    urls: &str,
    tag: &str,
    platforms: &str,
    ctx: &std::path::Path,
) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(bin("manifold"))
        .args([
            "--coordinator",
            urls,
            "build",
            "--detach",
            "-t",
            tag,
            "--platform",
            platforms,
        ])
        .arg(ctx)
        .output()
        .await?;
    anyhow::ensure!(out.status.success(), "{}", show(&out));
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

fn platform_count(list: &serde_json::Value) -> usize {
    list["manifests"].as_array().map_or(0, Vec::len)
}

async fn wait_succeeded(urls: &str, id: &str, logs: &[&Coordinator]) -> anyhow::Result<v1::Build> {
    let b = wait_until(
        Duration::from_secs(150),
        &format!("build {id} to end"),
        || async {
            let b = get(urls, id).await?;
            (b.state >= v1::BuildState::Succeeded as i32).then_some(b)
        },
    )
    .await?;
    anyhow::ensure!(
        b.state == v1::BuildState::Succeeded as i32,
        "build {id} ended {:?}: {}\n{}",
        b.state,
        b.error,
        logs.iter()
            .map(|c| c.log())
            .collect::<Vec<_>>()
            .join("\n-----\n")
    );
    Ok(b)
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_leader_mid_build_hands_the_farm_to_the_other_coordinator() -> anyhow::Result<()>
{
    let env = Env::from_env();
    let etcd = EtcdCluster::start(3).await?;
    let dir = tempfile::tempdir()?;
    // Default settings (the leader lease is 10 s), and contexts replicated to the registry so the
    // next leader can read them.
    let ctx_repo = env.unique_repo("contexts");
    let replicated = ["--context-repository", ctx_repo.as_str()];
    let mut c1 = start_coordinator(&etcd, dir.path(), "c1", &replicated).await?;
    wait_until(Duration::from_secs(30), "c1 to lead", || async {
        c1.is_leader().await.then_some(())
    })
    .await?;
    let c2 = start_coordinator(&etcd, dir.path(), "c2", &replicated).await?;
    let urls = format!("{},{}", c1.url, c2.url);
    let _x86 = start_worker(&urls, dir.path(), "x86", &env.amd64_docker, None).await?;
    let _arm = start_worker(
        &urls,
        dir.path(),
        "arm",
        &env.arm64_docker,
        Some("linux/arm64"),
    )
    .await?;
    wait_until(Duration::from_secs(30), "both workers", || async {
        (workers_on(&urls).await == 2).then_some(())
    })
    .await?;

    let nonce = uuid::Uuid::new_v4();
    let ctx = context_dir(&[(
        "Dockerfile",
        &format!(
            "FROM {}\nRUN echo {nonce} && sleep 8 && uname -m > /arch\n",
            env.base_image
        ),
    )])?;
    let tag = format!("{}:1", env.unique_repo("failover"));
    let id = submit(&urls, &tag, "linux/amd64,linux/arm64", ctx.path()).await?;
    wait_until(Duration::from_secs(60), "both jobs to run", || async {
        let b = get(&urls, &id).await?;
        b.jobs
            .iter()
            .all(|j| j.state == v1::JobState::Running as i32)
            .then_some(())
    })
    .await?;

    let killed = Instant::now();
    c1.kill().await;
    // A build submitted right after the kill is scheduled as soon as c2 leads.
    let small = context_dir(&[(
        "Dockerfile",
        &format!("FROM {}\nRUN echo {nonce}-after > /after\n", env.base_image),
    )])?;
    let tag2 = format!("{}:1", env.unique_repo("after-failover"));
    let id2 = wait_until(Duration::from_secs(60), "c2 to accept a build", || async {
        submit(&c2.url, &tag2, "linux/amd64", small.path())
            .await
            .ok()
    })
    .await?;
    let leading = killed.elapsed();
    wait_until(
        Duration::from_secs(60),
        "the new build to be scheduled",
        || async {
            let b = get(&c2.url, &id2).await?;
            (b.jobs[0].state >= v1::JobState::Assigned as i32).then_some(())
        },
    )
    .await?;
    let scheduling = killed.elapsed();
    println!(
        "failover with default settings: c2 accepted builds {:.1}s after the leader's SIGKILL, and scheduled one {:.1}s after it",
        leading.as_secs_f64(),
        scheduling.as_secs_f64()
    );

    let b = wait_succeeded(&c2.url, &id, &[&c2]).await?;
    assert_eq!(platform_count(&skopeo_raw(&tag).await?), 2);

    // The context uploaded to c1 is readable from c2, byte for byte.
    let digest = b.request.as_ref().unwrap().context_digest.clone();
    let mut workers = v1::workers_client::WorkersClient::connect(c2.url.clone()).await?;
    let mut chunks = workers
        .download_context(v1::DownloadContextRequest {
            digest: digest.clone(),
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n--- c2 ---\n{}", c2.log()))?
        .into_inner();
    let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
    while let Some(chunk) = chunks.message().await? {
        sha2::Digest::update(&mut hasher, &chunk.data);
    }
    assert_eq!(
        format!("sha256:{}", hex::encode(sha2::Digest::finalize(hasher))),
        digest
    );
    assert!(!b.manifest_digest.is_empty());
    wait_succeeded(&c2.url, &id2, &[&c2]).await?;
    assert!(
        scheduling < Duration::from_secs(30),
        "failover took {scheduling:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_paused_past_its_lease_has_its_writes_rejected_and_steps_down()
-> anyhow::Result<()> {
    let env = Env::from_env();
    let etcd = EtcdCluster::start(3).await?;
    let dir = tempfile::tempdir()?;
    let short = ["--leader-lease", "3s", "--worker-lease", "3s"];
    let c1 = start_coordinator(&etcd, dir.path(), "c1", &short).await?;
    wait_until(Duration::from_secs(30), "c1 to lead", || async {
        c1.is_leader().await.then_some(())
    })
    .await?;
    let c2 = start_coordinator(&etcd, dir.path(), "c2", &short).await?;
    let urls = format!("{},{}", c1.url, c2.url);
    let _x86 = start_worker(&urls, dir.path(), "x86", &env.amd64_docker, None).await?;
    wait_until(Duration::from_secs(30), "the worker", || async {
        (workers_on(&urls).await == 1).then_some(())
    })
    .await?;
    let nonce = uuid::Uuid::new_v4();
    let ctx = context_dir(&[(
        "Dockerfile",
        &format!("FROM {}\nRUN echo {nonce} && sleep 3\n", env.base_image),
    )])?;
    let tag = format!("{}:1", env.unique_repo("fencing"));
    let id = submit(&urls, &tag, "linux/amd64", ctx.path()).await?;
    wait_until(Duration::from_secs(60), "the job to run", || async {
        let b = get(&urls, &id).await?;
        (b.jobs[0].state == v1::JobState::Running as i32).then_some(())
    })
    .await?;

    // Pause the leader past its 3 s lease (and its worker's 3 s lease), but for less than the
    // three TTLs after which its keep-alive timer alone gives up: c2 takes over while c1 sleeps.
    // On waking, c1's overdue farm timers act at once (the worker is declared lost), before its
    // keep-alive hears from etcd that the lease is gone, so a write reaches etcd's fence.
    c1.signal("STOP").await?;
    let paused = std::time::Instant::now();
    wait_until(Duration::from_secs(30), "c2 to lead", || async {
        c2.is_leader().await.then_some(())
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n--- c2 ---\n{}\n{}", c2.log(), etcd.logs()))?;
    eprintln!("c2 led {:?} after c1 was paused", paused.elapsed());
    tokio::time::sleep(Duration::from_secs(2)).await;
    c1.signal("CONT").await?;
    let pause = paused.elapsed();

    // Waking up, c1 acts on what it missed; etcd rejects its writes and it steps down.
    wait_until(
        Duration::from_secs(30),
        "c1 to report its rejected write",
        || async { c1.log().contains("state write rejected").then_some(()) },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e} (paused for {pause:?})\n--- c1 ---\n{}", c1.log()))?;
    wait_until(Duration::from_secs(30), "c1 to step down", || async {
        (!c1.is_leader().await).then_some(())
    })
    .await?;
    assert!(c1.log().contains("stepping down"), "{}", c1.log());
    assert!(c2.is_leader().await, "c2 still leads");

    // The build is c2's now and ends well.
    wait_succeeded(&c2.url, &id, &[&c1, &c2]).await?;
    assert_eq!(platform_count(&skopeo_raw(&tag).await?), 1);
    Ok(())
}
