//! The workflow teams run by hand with `docker manifest`, done by `manifold manifest` end to end:
//! two per-arch images built on two real Docker daemons and pushed as `REF-x86_64` and
//! `REF-aarch64`, merged with `manifold manifest create REF REF-x86_64 REF-aarch64 --push`; then
//! the real docker CLI (`docker manifest inspect --insecure`) and skopeo see one list with both
//! platforms and the right digests, and `docker pull --platform` gets each image, which runs as
//! its architecture.

use manifold_tests::{Env, bin, run, show, skopeo_raw, skopeo_tags};
use sha2::Digest as _;

/// Runs `manifold` with an empty Docker config, so the machine's logins play no part.
async fn manifold(
    docker_config: &std::path::Path,
    args: &[&str],
) -> anyhow::Result<std::process::Output> {
    Ok(tokio::process::Command::new(bin("manifold"))
        .args(args)
        .env("DOCKER_CONFIG", docker_config)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await?)
}

/// sha256 of the exact manifest bytes the registry serves for `reference`.
async fn digest_of(reference: &str) -> anyhow::Result<String> {
    let raw = run(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{reference}"),
        ],
    )
    .await?;
    Ok(format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(raw.as_bytes()))
    ))
}

/// `docker -H HOST ARGS...`
async fn docker(host: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut all = vec!["-H", host];
    all.extend_from_slice(args);
    run("docker", &all).await
}

/// Builds `FROM base` + `RUN uname -m > /arch` for `platform` on the daemon at `host` with the
/// classic builder, checks the image is of that architecture, and pushes it as `tag`.
async fn build_and_push(
    host: &str,
    base: &str,
    platform: &str,
    arch: &str,
    tag: &str,
) -> anyhow::Result<()> {
    let ctx = tempfile::tempdir()?;
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!("FROM {base}\nRUN uname -m > /arch\nCMD [\"cat\", \"/arch\"]\n"),
    )?;
    run(
        "env",
        &[
            "DOCKER_BUILDKIT=0",
            "docker",
            "-H",
            host,
            "build",
            "-q",
            "--platform",
            platform,
            "-t",
            tag,
            ctx.path().to_str().unwrap(),
        ],
    )
    .await?;
    let built = docker(
        host,
        &["image", "inspect", "--format", "{{.Architecture}}", tag],
    )
    .await?;
    anyhow::ensure!(
        built.trim() == arch,
        "{tag} was built as {built}, not {arch}"
    );
    docker(host, &["push", "-q", tag]).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn per_arch_tags_merge_into_one_list_that_docker_pulls_per_platform() -> anyhow::Result<()> {
    let env = Env::from_env();
    let docker_config = tempfile::tempdir()?;
    let repo = env.unique_repo("manifest-workflow");
    let list = format!("{repo}:1.0");
    let x86 = format!("{list}-x86_64");
    let arm = format!("{list}-aarch64");
    let registry_base = env.base_image.rsplit_once(':').map(|(b, _)| b).unwrap();

    // The per-arch images, each built natively by the daemon of its architecture.
    build_and_push(
        &env.amd64_docker,
        &format!("{registry_base}:1-x86_64"),
        "linux/amd64",
        "amd64",
        &x86,
    )
    .await?;
    build_and_push(
        &env.arm64_docker,
        &format!("{registry_base}:1-aarch64"),
        "linux/arm64",
        "arm64",
        &arm,
    )
    .await?;
    let x86_digest = digest_of(&x86).await?;
    let arm_digest = digest_of(&arm).await?;

    // The merge, exactly as a team types it.
    let out = manifold(
        docker_config.path(),
        &["manifest", "create", &list, &x86, &arm, "--push"],
    )
    .await?;
    assert!(out.status.success(), "{}", show(&out));
    let printed = String::from_utf8(out.stdout.clone())?.trim().to_owned();
    assert_eq!(
        printed,
        digest_of(&list).await?,
        "stdout is the pushed list's digest\n{}",
        show(&out)
    );

    // skopeo: the exact bytes, a Docker manifest list (the children are Docker schema2).
    let raw = skopeo_raw(&list).await?;
    assert_eq!(
        raw["mediaType"], "application/vnd.docker.distribution.manifest.list.v2+json",
        "{raw}"
    );
    let entries = |v: &serde_json::Value| -> Vec<(String, String)> {
        let mut e: Vec<(String, String)> = v["manifests"]
            .as_array()
            .expect("manifests")
            .iter()
            .map(|m| {
                (
                    format!(
                        "{}/{}",
                        m["platform"]["os"].as_str().unwrap(),
                        m["platform"]["architecture"].as_str().unwrap()
                    ),
                    m["digest"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        e.sort();
        e
    };
    let expected = vec![
        ("linux/amd64".to_owned(), x86_digest.clone()),
        ("linux/arm64".to_owned(), arm_digest.clone()),
    ];
    assert_eq!(entries(&raw), expected, "skopeo: {raw}");

    // The real docker CLI, with a config folder of its own so no stale local list is consulted.
    let docker_cli_config = tempfile::tempdir()?;
    let inspected = run(
        "env",
        &[
            &format!("DOCKER_CONFIG={}", docker_cli_config.path().display()),
            "docker",
            "manifest",
            "inspect",
            "--insecure",
            &list,
        ],
    )
    .await?;
    let inspected: serde_json::Value = serde_json::from_str(&inspected)?;
    assert_eq!(
        entries(&inspected),
        expected,
        "docker manifest inspect: {inspected}"
    );

    // Only the three tags exist: no staging copy, no extra tag.
    let mut tags = skopeo_tags(&repo).await?;
    tags.sort();
    assert_eq!(tags, ["1.0", "1.0-aarch64", "1.0-x86_64"]);

    // `manifold manifest inspect --platform` picks what Docker picks; arm64/v8 is arm64.
    for (platform, digest) in [
        ("linux/arm64/v8", &arm_digest),
        ("linux/arm64", &arm_digest),
        ("linux/amd64", &x86_digest),
    ] {
        let out = manifold(
            docker_config.path(),
            &[
                "manifest",
                "inspect",
                &list,
                "--platform",
                platform,
                "--format",
                "json",
            ],
        )
        .await?;
        assert!(out.status.success(), "{}", show(&out));
        let view: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        assert_eq!(view["digest"], digest.as_str(), "{platform}: {view}");
        assert_eq!(
            view["pinned"],
            format!("{repo}@{digest}"),
            "{platform}: {view}"
        );
    }

    // docker pull --platform gets each child, and each runs as its architecture.
    let host = &env.amd64_docker;
    let result = async {
        for (platform, arch, uname) in [
            ("linux/arm64", "arm64", "aarch64"),
            ("linux/amd64", "amd64", "x86_64"),
        ] {
            docker(host, &["pull", "-q", "--platform", platform, &list]).await?;
            let pulled = docker(
                host,
                &["image", "inspect", "--format", "{{.Architecture}}", &list],
            )
            .await?;
            anyhow::ensure!(
                pulled.trim() == arch,
                "pull --platform {platform} gave {pulled}"
            );
            let built_on = docker(host, &["run", "--rm", "--platform", platform, &list]).await?;
            anyhow::ensure!(
                built_on.trim() == uname,
                "{platform} image was built on {built_on}"
            );
            let runs_as = docker(
                host,
                &["run", "--rm", "--platform", platform, &list, "uname", "-m"],
            )
            .await?;
            anyhow::ensure!(
                runs_as.trim() == uname,
                "{platform} image runs as {runs_as}"
            );
        }
        Ok(())
    }
    .await;

    // Leave the daemons as they were (best effort).
    let _ = docker(&env.amd64_docker, &["rmi", "-f", &list, &x86]).await;
    let _ = docker(&env.arm64_docker, &["rmi", "-f", &arm]).await;
    result
}
