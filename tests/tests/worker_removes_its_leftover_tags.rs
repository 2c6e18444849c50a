//! A worker killed between tagging a job's image and removing the tag leaves a
//! `manifold-local/JOB:ATTEMPT` tag in its daemon, and the record of it in its cache dir
//! (`local-tags/`). Made here as the worker makes them (the record, then `docker tag`), on a
//! graphdriver daemon and on a containerd-store one: when the worker starts again, the tag is gone,
//! while a `manifold-local/*` tag it did not record (another worker's on a shared daemon) and an
//! image not made by Manifold stay. Checked with the docker CLI.

use std::time::Duration;

use manifold_tests::{Env, TestFarm, run, wait_until};

/// Whether `docker -H host image inspect reference` finds it.
async fn exists(host: &str, reference: &str) -> bool {
    run("docker", &["-H", host, "image", "inspect", reference])
        .await
        .is_ok()
}

async fn leftovers_removed_on(host: &str, name: &str) -> anyhow::Result<()> {
    let env = Env::from_env();
    let mut farm = TestFarm::builder().start().await?;
    let nonce = uuid::Uuid::new_v4();
    let leftover = format!("manifold-local/{nonce}:1");
    let foreign = format!("manifold-local/{}:1", uuid::Uuid::new_v4());
    let keep = format!("manifold-test-keep-{}/app:1", nonce.simple());
    run("docker", &["-H", host, "pull", &env.base_image]).await?;
    for tag in [&leftover, &foreign, &keep] {
        run("docker", &["-H", host, "tag", &env.base_image, tag]).await?;
    }
    // The record the worker writes before the build that makes the tag. The harness gives each
    // worker the cache dir STATE/cache-NAME.
    let records = farm
        .state_dir
        .path()
        .join(format!("cache-{name}"))
        .join("local-tags");
    std::fs::create_dir_all(&records)?;
    let record = records.join(leftover.replace('/', "_"));
    std::fs::write(&record, &leftover)?;

    farm.worker(name).docker(host).spawn().await?;
    farm.wait_worker(name, Duration::from_secs(30), |_| true)
        .await?;
    wait_until(
        Duration::from_secs(60),
        "the leftover tag to be removed",
        || async { (!exists(host, &leftover).await).then_some(()) },
    )
    .await?;
    assert!(!record.exists(), "its record is gone too");
    assert!(
        exists(host, &foreign).await,
        "a manifold-local tag this worker did not record stays"
    );
    assert!(
        exists(host, &keep).await,
        "an image not made by Manifold stays"
    );
    for tag in [&foreign, &keep] {
        run("docker", &["-H", host, "rmi", "--no-prune", tag]).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_worker_removes_its_leftover_tags_on_a_graphdriver_daemon() -> anyhow::Result<()>
{
    leftovers_removed_on(&Env::from_env().amd64_docker, "tags-gd").await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_worker_removes_its_leftover_tags_on_a_containerd_daemon() -> anyhow::Result<()>
{
    leftovers_removed_on(&Env::from_env().cd_amd64_docker, "tags-cd").await
}
