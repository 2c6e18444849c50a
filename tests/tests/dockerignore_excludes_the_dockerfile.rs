//! A context whose `.dockerignore` excludes the Dockerfile and `.dockerignore` itself builds
//! through the farm, and the image's `COPY . /x` sees neither: the same listing as `docker
//! build` (buildx, BuildKit) makes of the same context. Once per image-store mode, since the
//! worker serves the Dockerfile to each daemon's BuildKit through its own session source.

use manifold_tests::{Env, TestFarm, context_dir, run, show};

#[tokio::test(flavor = "multi_thread")]
async fn graphdriver_builds_without_the_excluded_dockerfile_in_the_context() -> anyhow::Result<()> {
    excluded_dockerfile_builds("graphdriver").await
}

#[tokio::test(flavor = "multi_thread")]
async fn containerd_store_builds_without_the_excluded_dockerfile_in_the_context()
-> anyhow::Result<()> {
    excluded_dockerfile_builds("containerd").await
}

async fn excluded_dockerfile_builds(store: &str) -> anyhow::Result<()> {
    let env = Env::from_env();
    let (amd64, _) = env.pair(store);
    let mut farm = TestFarm::builder().start().await?;
    farm.worker("x86").docker(&amd64).spawn().await?;

    let dockerfile = format!(
        "FROM {base} AS list\nCOPY . /x\nRUN cd /x && find . | sort > /listing\n\n\
         FROM {base}\nCOPY --from=list /listing /listing\nCMD [\"cat\", \"/listing\"]\n",
        base = env.base_image
    );
    let ctx = context_dir(&[
        ("Dockerfile", &dockerfile),
        (".dockerignore", "*\n!src\n!notes.txt\n"),
        ("notes.txt", "kept"),
        ("secret.txt", "left out"),
        ("src/main.c", "int main() {}"),
        ("build/out.o", "left out"),
    ])?;

    // What docker build puts in the context.
    let out_dir = tempfile::tempdir()?;
    let docker = tokio::process::Command::new("docker")
        .args(["buildx", "build", "--progress", "quiet", "--output"])
        .arg(format!("type=local,dest={}", out_dir.path().display()))
        .arg(ctx.path())
        .env("DOCKER_HOST", &env.amd64_docker)
        .output()
        .await?;
    assert!(docker.status.success(), "docker build: {}", show(&docker));
    let expected = std::fs::read_to_string(out_dir.path().join("listing"))?;
    assert_eq!(expected, ".\n./notes.txt\n./src\n./src/main.c\n");

    // What the farm builds from the same context.
    let repo = env.unique_repo("ignored-dockerfile");
    let tag = format!("{repo}:1");
    let out = farm
        .cli([
            "build",
            "-t",
            &tag,
            "--platform",
            "linux/amd64",
            "-q",
            ctx.path().to_str().unwrap(),
        ])
        .await?;
    assert!(
        out.status.success(),
        "build failed\n{}\n--- coordinator ---\n{}\n--- worker ---\n{}",
        show(&out),
        farm.coordinator_log(),
        farm.worker_log("x86")
    );
    let listing = run(
        "docker",
        &[
            "-H",
            &env.amd64_docker,
            "run",
            "--rm",
            "--pull",
            "always",
            &tag,
        ],
    )
    .await?;
    assert_eq!(listing, expected, "COPY . /x in the farm's image");
    run("docker", &["-H", &env.amd64_docker, "rmi", &tag]).await?;
    Ok(())
}
