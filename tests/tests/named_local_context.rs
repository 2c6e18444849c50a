//! `--build-context NAME=DIR` with a directory on the CLI's machine: the CLI uploads it as a
//! context of its own (its `.dockerignore` applied), and `COPY --from=NAME` in the build sees
//! exactly what `docker build --build-context NAME=DIR` sees on the same daemon, on both image
//! store modes. The uploaded directory belongs to its team: another team naming its digest is
//! told it does not exist. Everything listens on 127.0.0.1.

use manifold_proto::v1;
use manifold_tests::{Env, TestFarm, context_dir, run, show, two_team_farm, with_token};

/// A directory with a nested file, an excluded secret, and its `.dockerignore`.
fn vendor() -> anyhow::Result<tempfile::TempDir> {
    context_dir(&[
        ("a.txt", "alpha\n"),
        ("sub/b.txt", "beta\n"),
        ("secret.txt", "do not ship\n"),
        (".dockerignore", "secret.txt\n"),
    ])
}

fn dockerfile(base: &str) -> String {
    format!(
        "FROM {base}\nCOPY --from=vendor / /vendor/\nRUN cd /vendor && find . | sort > /listing && cat a.txt sub/b.txt >> /listing\nCMD [\"cat\", \"/listing\"]\n"
    )
}

/// What `cat /listing` prints in `image` on `docker`.
async fn listing(docker: &str, image: &str) -> anyhow::Result<String> {
    run("docker", &["-H", docker, "run", "--rm", image]).await
}

/// Builds the Dockerfile with `--build-context vendor=DIR` through the farm (as `token`) on the
/// worker driving `docker`, and with `docker build` on the same daemon; both images must list
/// the same files. Returns the CLI's stderr.
async fn same_as_docker_build(
    farm: &TestFarm,
    token: Option<&str>,
    docker: &str,
    ctx: &std::path::Path,
    vendor: &std::path::Path,
    repo: &str,
) -> anyhow::Result<String> {
    let named = format!("vendor={}", vendor.display());
    let tag = format!("{repo}:1");
    let out = farm
        .cli_as(
            token,
            [
                "build",
                "-t",
                &tag,
                "--platform",
                "linux/amd64",
                "--build-context",
                &named,
                ctx.to_str().unwrap(),
            ],
        )
        .await?;
    assert!(
        out.status.success(),
        "{}
--- coordinator ---
{}",
        show(&out),
        farm.coordinator_log()
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        stderr.contains("build context vendor ("),
        "the CLI says it uploaded the directory: {}",
        show(&out)
    );
    let local = format!("{repo}-docker:1");
    let direct = tokio::process::Command::new("docker")
        .args(["-H", docker, "build", "-q", "-t", &local])
        .arg("--build-context")
        .arg(&named)
        .arg(ctx)
        .output()
        .await?;
    assert!(direct.status.success(), "{}", show(&direct));
    let docker_sees = listing(docker, &local).await?;
    run("docker", &["-H", docker, "rmi", &local]).await?;
    run("docker", &["-H", docker, "pull", "-q", &tag]).await?;
    let farm_sees = listing(docker, &tag).await?;
    run("docker", &["-H", docker, "rmi", &tag]).await?;
    assert_eq!(farm_sees, docker_sees, "COPY --from=vendor ({docker})");
    assert!(
        !farm_sees.contains("secret.txt") && farm_sees.contains("./sub/b.txt"),
        "{farm_sees}"
    );
    Ok(stderr)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_local_directory_as_a_named_context_is_what_docker_build_sees() -> anyhow::Result<()> {
    let env = Env::from_env();
    let (farm, alice, bob) = two_team_farm(&env).await?;
    let vendor = vendor()?;
    let ctx = context_dir(&[("Dockerfile", &dockerfile(&env.base_image))])?;
    let repo = env.unique_repo("named-local");
    let stderr = same_as_docker_build(
        &farm,
        Some(&alice),
        &env.amd64_docker,
        ctx.path(),
        vendor.path(),
        &repo,
    )
    .await?;

    // Bob names alice's uploaded directory by its digest: unknown to his team.
    let digest = stderr
        .lines()
        .find(|l| l.contains("build context vendor ("))
        .and_then(|l| l.split_whitespace().find(|w| w.starts_with("sha256:")))
        .map(|w| w.trim_end_matches(':').trim_end_matches('…').to_owned())
        .expect("the CLI names the uploaded digest");
    let build = farm
        .builds()
        .await?
        .list(with_token(
            &alice,
            v1::ListBuildsRequest {
                limit: 1,
                ..Default::default()
            },
        ))
        .await?
        .into_inner()
        .builds
        .remove(0);
    let full = farm.build(&build.id).await?;
    let mut request = full.request.expect("the build's request");
    let uploaded = request
        .flags
        .as_ref()
        .and_then(|f| f.build_contexts.get("vendor").cloned())
        .expect("the request names the uploaded context");
    assert!(
        uploaded.starts_with(&format!("manifold-context://{digest}")),
        "{uploaded} vs {digest}"
    );
    // Bob holds the main context himself (he uploads the same directory), not alice's vendor.
    let bob_repo = env.unique_repo("named-local-bob");
    let own = farm
        .cli_as(
            Some(&bob),
            [
                "build",
                "--detach",
                "-t",
                &format!("{bob_repo}:own"),
                "--platform",
                "linux/amd64",
                ctx.path().to_str().unwrap(),
            ],
        )
        .await?;
    assert!(own.status.success(), "{}", show(&own));
    request.image = format!("{bob_repo}:1");
    let refused = farm
        .builds()
        .await?
        .submit(with_token(&bob, request))
        .await
        .expect_err("another team's directory is unknown to bob");
    assert_eq!(refused.code(), tonic::Code::NotFound, "{refused:?}");
    let vendor_digest = uploaded.trim_start_matches("manifold-context://");
    assert!(
        refused.message().contains(vendor_digest),
        "the refusal names the unknown context: {}",
        refused.message()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_containerd_image_store_a_named_directory_is_what_docker_build_sees()
-> anyhow::Result<()> {
    let env = Env::from_env();
    let (amd64, _) = env.pair("containerd");
    let mut farm = TestFarm::builder().start().await?;
    farm.worker("x86").docker(&amd64).spawn().await?;
    let vendor = vendor()?;
    let ctx = context_dir(&[("Dockerfile", &dockerfile(&env.base_image))])?;
    let repo = env.unique_repo("named-local-cd");
    same_as_docker_build(&farm, None, &amd64, ctx.path(), vendor.path(), &repo).await?;
    Ok(())
}
