//! Every way a build can go wrong ends with a clear error naming the bad thing and a non-zero exit,
//! and writes no tag.

use std::time::Duration;

use manifold_tests::{Env, TestFarm, context_dir, show, skopeo_tags};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn simple_context(env: &Env) -> anyhow::Result<tempfile::TempDir> {
    context_dir(&[(
        "Dockerfile",
        &format!("FROM {}\nRUN echo built on $(uname -m)\n", env.base_image),
    )])
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_platform_is_named_before_anything_runs() -> anyhow::Result<()> {
    let env = Env::from_env();
    let farm = TestFarm::builder().start().await?;
    let ctx = simple_context(&env)?;
    let tag = format!("{}:1", env.unique_repo("badplat"));
    let out = farm
        .cli([
            "build",
            "-t",
            &tag,
            "--platform",
            "linux/&arm",
            ctx.path().to_str().unwrap(),
        ])
        .await?;
    assert!(!out.status.success(), "{}", show(&out));
    assert!(stderr(&out).contains("linux/&arm"), "{}", show(&out));
    assert!(
        stderr(&out).contains("os/arch"),
        "shows the expected form: {}",
        show(&out)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_dockerfile_is_named() -> anyhow::Result<()> {
    let env = Env::from_env();
    let farm = TestFarm::builder().start().await?;
    let ctx = simple_context(&env)?;
    let tag = format!("{}:1", env.unique_repo("nodockerfile"));
    let out = farm
        .cli([
            "build",
            "-t",
            &tag,
            "--platform",
            "linux/amd64",
            "-f",
            "Dockerfile.nope",
            ctx.path().to_str().unwrap(),
        ])
        .await?;
    assert!(!out.status.success(), "{}", show(&out));
    assert!(stderr(&out).contains("Dockerfile.nope"), "{}", show(&out));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_coordinator_is_named() -> anyhow::Result<()> {
    let env = Env::from_env();
    let ctx = simple_context(&env)?;
    let out = tokio::process::Command::new(manifold_tests::bin("manifold"))
        .args([
            "--coordinator",
            "http://127.0.0.1:1",
            "build",
            "-t",
            "127.0.0.1:5000/x:1",
            "--platform",
            "linux/amd64",
            ctx.path().to_str().unwrap(),
        ])
        .output()
        .await?;
    assert!(!out.status.success(), "{}", show(&out));
    assert!(stderr(&out).contains("127.0.0.1:1"), "{}", show(&out));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_platform_without_a_worker_fails_after_the_wait_naming_it() -> anyhow::Result<()> {
    let env = Env::from_env();
    let mut farm = TestFarm::builder().wait_for_workers("3s").start().await?;
    farm.worker("x86").docker(&env.amd64_docker).spawn().await?;
    let ctx = simple_context(&env)?;
    let repo = env.unique_repo("noworker");
    let tag = format!("{repo}:1");
    let started = std::time::Instant::now();
    let out = farm
        .cli([
            "build",
            "-t",
            &tag,
            "--platform",
            "linux/amd64,linux/s390x",
            "--progress",
            "plain",
            ctx.path().to_str().unwrap(),
        ])
        .await?;
    assert!(!out.status.success(), "{}", show(&out));
    assert!(
        stderr(&out).contains("no worker for linux/s390x"),
        "{}",
        show(&out)
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the wait is bounded"
    );
    assert!(skopeo_tags(&repo).await?.is_empty(), "no tag written");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_run_step_on_one_platform_fails_the_build_and_cancels_the_other()
-> anyhow::Result<()> {
    let env = Env::from_env();
    let mut farm = TestFarm::builder().start().await?;
    farm.worker("x86").docker(&env.amd64_docker).spawn().await?;
    farm.worker("arm")
        .docker(&env.arm64_docker)
        .platform("linux/arm64")
        .spawn()
        .await?;
    // arm64 fails at once; amd64 would run long, so it is still running when arm64 fails.
    let dockerfile = format!(
        "FROM {}\nRUN if [ \"$(uname -m)\" = aarch64 ]; then echo \"compiler exploded on $(uname -m)\"; exit 3; fi; sleep 60\n",
        env.base_image
    );
    let ctx = context_dir(&[("Dockerfile", &dockerfile)])?;
    let repo = env.unique_repo("runfails");
    let tag = format!("{repo}:1");
    let out = farm
        .cli([
            "build",
            "-t",
            &tag,
            "--platform",
            "linux/amd64,linux/arm64",
            "--progress",
            "plain",
            ctx.path().to_str().unwrap(),
        ])
        .await?;
    assert!(!out.status.success(), "{}", show(&out));
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(
        all.contains("linux/arm64"),
        "names the failing platform: {}",
        show(&out)
    );
    assert!(
        all.contains("compiler exploded on aarch64"),
        "shows the failing step's log tail: {}",
        show(&out)
    );
    // The amd64 job was cancelled, not left running.
    let mut builds = farm.builds().await?;
    let list = builds
        .list(manifold_proto::v1::ListBuildsRequest {
            limit: 1,
            ..Default::default()
        })
        .await?
        .into_inner();
    let build = &list.builds[0];
    assert_eq!(build.state, manifold_proto::v1::BuildState::Failed as i32);
    let amd = build
        .jobs
        .iter()
        .find(|j| j.platform.as_ref().unwrap().architecture == "amd64")
        .unwrap();
    assert_eq!(
        amd.state,
        manifold_proto::v1::JobState::Cancelled as i32,
        "{build:?}"
    );
    assert!(skopeo_tags(&repo).await?.is_empty(), "no tag written");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_registry_fails_the_build_naming_it() -> anyhow::Result<()> {
    let env = Env::from_env();
    let mut farm = TestFarm::builder().max_attempts(1).start().await?;
    farm.worker("x86").docker(&env.amd64_docker).spawn().await?;
    let ctx = simple_context(&env)?;
    let dead = format!("127.0.0.1:{}", manifold_tests::free_port());
    let tag = format!("{dead}/app:1");
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
    assert!(!out.status.success(), "{}", show(&out));
    assert!(
        stderr(&out).contains(&dead),
        "names the registry: {}",
        show(&out)
    );
    Ok(())
}
