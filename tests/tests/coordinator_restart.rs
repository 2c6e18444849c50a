//! A single coordinator on its embedded store survives SIGKILL: builds running when it died finish
//! (their jobs adopted from the workers that kept running them), and a build that was queued is still
//! queued afterwards and runs once a worker attaches.

use std::time::Duration;

use manifold_proto::v1;
use manifold_tests::{Env, TestFarm, context_dir, show, skopeo_raw, wait_until};

async fn get(farm: &TestFarm, id: &str) -> anyhow::Result<v1::Build> {
    Ok(farm
        .builds()
        .await?
        .get(v1::GetBuildRequest {
            build_id: id.into(),
        })
        .await?
        .into_inner())
}

async fn wait_state(farm: &TestFarm, id: &str, state: v1::BuildState) -> anyhow::Result<v1::Build> {
    let b = wait_until(
        Duration::from_secs(120),
        &format!("build {id} to end"),
        || async {
            let b = get(farm, id).await.ok()?;
            (b.state >= v1::BuildState::Succeeded as i32).then_some(b)
        },
    )
    .await?;
    anyhow::ensure!(
        b.state == state as i32,
        "build ended {:?}, expected {state:?}: {}\n--- coordinator ---\n{}",
        b.state,
        b.error,
        farm.coordinator_log()
    );
    Ok(b)
}

fn platforms_of(list: &serde_json::Value) -> Vec<String> {
    let mut p: Vec<String> = list["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m["platform"]["os"].as_str().unwrap(),
                m["platform"]["architecture"].as_str().unwrap()
            )
        })
        .collect();
    p.sort();
    p
}

#[tokio::test(flavor = "multi_thread")]
async fn a_build_running_when_the_coordinator_is_killed_finishes_after_its_restart()
-> anyhow::Result<()> {
    let env = Env::from_env();
    let mut farm = TestFarm::builder().start().await?;
    farm.worker("x86").docker(&env.amd64_docker).spawn().await?;
    farm.worker("arm")
        .docker(&env.arm64_docker)
        .platform("linux/arm64")
        .spawn()
        .await?;
    let nonce = uuid::Uuid::new_v4().to_string();
    let ctx = context_dir(&[(
        "Dockerfile",
        &format!(
            "FROM {}\nRUN echo {nonce} && sleep 6 && uname -m > /arch\n",
            env.base_image
        ),
    )])?;
    // Incompressible bytes the build never reads, so that the kill below most likely lands while
    // the workers are still downloading the context: the download goes on after the restart.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let filler: Vec<u8> = (0..32 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    std::fs::write(ctx.path().join("filler.bin"), filler)?;
    let repo = env.unique_repo("restart");
    let tag = format!("{repo}:1");
    let out = farm
        .cli([
            "build",
            "--detach",
            "-t",
            &tag,
            "--platform",
            "linux/amd64,linux/arm64",
            ctx.path().to_str().unwrap(),
        ])
        .await?;
    assert!(out.status.success(), "{}", show(&out));
    let id = String::from_utf8(out.stdout)?.trim().to_owned();

    // Both jobs running on their workers...
    wait_until(Duration::from_secs(60), "both jobs to run", || async {
        let b = get(&farm, &id).await.ok()?;
        b.jobs
            .iter()
            .all(|j| j.state == v1::JobState::Running as i32)
            .then_some(())
    })
    .await?;
    // ...when the coordinator dies without warning, and comes back on the same state dir.
    farm.kill_coordinator().await;
    farm.restart_coordinator().await?;

    let b = wait_state(&farm, &id, v1::BuildState::Succeeded).await?;
    for j in &b.jobs {
        assert_eq!(j.attempt, 1, "adopted, not rebuilt: {b:?}");
        let retried = j.log_tail.iter().find(|l| l.contains("trying again"));
        eprintln!("{:?}: context download retried: {retried:?}", j.platform);
    }
    let list = skopeo_raw(&tag).await?;
    assert_eq!(
        platforms_of(&list),
        ["linux/amd64", "linux/arm64"],
        "{list}"
    );
    assert_eq!(
        format!(
            "sha256:{}",
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
                manifold_tests::run(
                    "skopeo",
                    &[
                        "inspect",
                        "--raw",
                        "--tls-verify=false",
                        &format!("docker://{tag}")
                    ]
                )
                .await?
                .as_bytes()
            ))
        ),
        b.manifest_digest
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_queued_build_survives_the_kill_and_runs_when_a_worker_attaches() -> anyhow::Result<()> {
    let env = Env::from_env();
    let mut farm = TestFarm::builder().start().await?;
    let ctx = context_dir(&[(
        "Dockerfile",
        &format!("FROM {}\nRUN uname -m > /arch\n", env.base_image),
    )])?;
    let repo = env.unique_repo("queued");
    let tag = format!("{repo}:1");
    let out = farm
        .cli([
            "build",
            "--detach",
            "-t",
            &tag,
            "--platform",
            "linux/arm64",
            ctx.path().to_str().unwrap(),
        ])
        .await?;
    assert!(out.status.success(), "{}", show(&out));
    let id = String::from_utf8(out.stdout)?.trim().to_owned();

    farm.kill_coordinator().await;
    farm.restart_coordinator().await?;
    let b = get(&farm, &id).await?;
    assert_eq!(b.state, v1::BuildState::Queued as i32, "{b:?}");
    assert_eq!(b.jobs[0].state, v1::JobState::Queued as i32, "{b:?}");

    farm.worker("arm")
        .docker(&env.arm64_docker)
        .platform("linux/arm64")
        .spawn()
        .await?;
    wait_state(&farm, &id, v1::BuildState::Succeeded).await?;
    assert_eq!(platforms_of(&skopeo_raw(&tag).await?), ["linux/arm64"]);
    Ok(())
}
