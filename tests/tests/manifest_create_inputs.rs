//! `manifold manifest create` against the real registry with the inputs `docker manifest create`
//! gets wrong or never checks: sources that are lists (flattened), sources in another repository
//! (mounted into the target repository by digest), duplicate platforms, mixed media types and a
//! missing source. Every refusal names what is wrong, and nothing is written under the target tag.

use manifold_tests::{Env, bin, run, show, skopeo_raw, skopeo_tags};
use sha2::Digest as _;

/// Runs `manifold` with an empty Docker config, so the machine's logins play no part.
async fn manifold(args: &[&str]) -> anyhow::Result<std::process::Output> {
    let docker_config = tempfile::tempdir()?;
    Ok(tokio::process::Command::new(bin("manifold"))
        .args(args)
        .env("DOCKER_CONFIG", docker_config.path())
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

/// The base image's per-arch tags and the list itself: (list, x86_64 tag, aarch64 tag).
fn base(env: &Env) -> (String, String, String) {
    let repo = env.base_image.rsplit_once(':').map(|(b, _)| b).unwrap();
    (
        env.base_image.clone(),
        format!("{repo}:1-x86_64"),
        format!("{repo}:1-aarch64"),
    )
}

/// (platform, digest) of each entry of the list at `reference`, sorted.
async fn entries(reference: &str) -> anyhow::Result<Vec<(String, String)>> {
    let raw = skopeo_raw(reference).await?;
    let mut e: Vec<(String, String)> = raw["manifests"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("{reference} is not a list: {raw}"))?
        .iter()
        .map(|m| {
            (
                format!(
                    "{}/{}",
                    m["platform"]["os"].as_str().unwrap_or_default(),
                    m["platform"]["architecture"].as_str().unwrap_or_default()
                ),
                m["digest"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    e.sort();
    Ok(e)
}

#[track_caller]
fn assert_refused(out: &std::process::Output, parts: &[&str]) {
    assert_eq!(out.status.code(), Some(1), "{}", show(out));
    assert!(out.stdout.is_empty(), "{}", show(out));
    let err = String::from_utf8_lossy(&out.stderr);
    for part in parts {
        assert!(err.contains(part), "expected `{part}` in:\n{}", show(out));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_list_source_in_another_repository_is_flattened_and_its_images_mounted()
-> anyhow::Result<()> {
    let env = Env::from_env();
    let (list, _, _) = base(&env);
    let repo = env.unique_repo("from-list");
    let target = format!("{repo}:1.0");

    let out = manifold(&["manifest", "create", &target, &list, "--push"]).await?;
    assert!(out.status.success(), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("mounted"),
        "blobs are mounted, not copied:\n{stderr}"
    );

    // Same children as the base list (the list itself is re-sorted, so its digest may differ).
    assert_eq!(entries(&target).await?, entries(&list).await?);
    assert_eq!(
        String::from_utf8(out.stdout)?.trim(),
        digest_of(&target).await?
    );
    // Every child is now in the target repository itself, pullable by digest.
    for (platform, digest) in entries(&target).await? {
        let child = skopeo_raw(&format!("{repo}@{digest}")).await?;
        assert_eq!(child["schemaVersion"], 2, "{platform}: {child}");
    }
    assert_eq!(skopeo_tags(&repo).await?, ["1.0"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn per_arch_images_from_another_repository_make_a_list_of_their_platforms()
-> anyhow::Result<()> {
    let env = Env::from_env();
    let (_, x86, arm) = base(&env);
    let repo = env.unique_repo("other-repo");
    let target = format!("{repo}:1.0");

    // Without --push nothing is written: the list is printed.
    let out = manifold(&["manifest", "create", &target, &x86, &arm]).await?;
    assert!(out.status.success(), "{}", show(&out));
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(printed["manifests"].as_array().map(Vec::len), Some(2));
    assert!(skopeo_tags(&repo).await?.is_empty());
    // --dry-run writes nothing either.
    let out = manifold(&[
        "manifest",
        "create",
        &target,
        &x86,
        &arm,
        "--push",
        "--dry-run",
    ])
    .await?;
    assert!(out.status.success(), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("would mount"));
    assert!(skopeo_tags(&repo).await?.is_empty());

    let out = manifold(&["manifest", "create", &target, &x86, &arm, "--push", "-q"]).await?;
    assert!(out.status.success(), "{}", show(&out));
    assert!(out.stderr.is_empty(), "-q is quiet: {}", show(&out));
    assert_eq!(
        entries(&target).await?,
        [
            ("linux/amd64".to_owned(), digest_of(&x86).await?),
            ("linux/arm64".to_owned(), digest_of(&arm).await?),
        ]
    );

    // --media-type oci: an OCI index of the same Docker images.
    let oci_target = format!("{repo}:1.0-oci");
    let out = manifold(&[
        "manifest",
        "create",
        &oci_target,
        &x86,
        &arm,
        "--media-type",
        "oci",
        "--push",
    ])
    .await?;
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(
        skopeo_raw(&oci_target).await?["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    assert_eq!(entries(&oci_target).await?, entries(&target).await?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_list_source_and_an_image_of_the_same_platform_are_refused_naming_both()
-> anyhow::Result<()> {
    let env = Env::from_env();
    let (list, x86, _) = base(&env);
    let repo = env.unique_repo("list-dup");
    let target = format!("{repo}:1.0");
    let annotate = format!("{x86}=linux/arm64");
    let out = manifold(&[
        "manifest",
        "create",
        &target,
        &list,
        &x86,
        "--annotate",
        &annotate,
        "--push",
    ])
    .await?;
    assert_refused(
        &out,
        &[
            "two images for linux/arm64:",
            &format!("list `{list}` (sha256:"),
            &format!("`{x86}` (sha256:"),
            &format!("nothing was written under {target}"),
        ],
    );
    assert!(skopeo_tags(&repo).await?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicate_platforms_and_mixed_media_types_are_refused_naming_both_sources()
-> anyhow::Result<()> {
    let env = Env::from_env();
    let (_, x86, arm) = base(&env);
    let repo = env.unique_repo("duplicates");
    let target = format!("{repo}:1.0");

    // A second amd64 image, different from the base: a label is enough.
    let other = format!("{repo}:other-x86_64");
    let ctx = tempfile::tempdir()?;
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!("FROM {x86}\nLABEL manifold.test=duplicate\n"),
    )?;
    let host = env.amd64_docker.as_str();
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
            "linux/amd64",
            "-t",
            &other,
            ctx.path().to_str().unwrap(),
        ],
    )
    .await?;
    run("docker", &["-H", host, "push", "-q", &other]).await?;
    let _ = run("docker", &["-H", host, "rmi", &other]).await;

    let out = manifold(&["manifest", "create", &target, &x86, &other, "--push"]).await?;
    assert_refused(
        &out,
        &[
            "two images for linux/amd64:",
            &format!("`{x86}` (sha256:"),
            &format!("`{other}` (sha256:"),
            "keep one per platform",
        ],
    );

    // The arm64 image as an OCI manifest beside a Docker schema2 one: never mixed.
    let oci_arm = format!("{repo}:oci-aarch64");
    run(
        "skopeo",
        &[
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            "--format",
            "oci",
            &format!("docker://{arm}"),
            &format!("docker://{oci_arm}"),
        ],
    )
    .await?;
    let out = manifold(&["manifest", "create", &target, &x86, &oci_arm, "--push"]).await?;
    assert_refused(
        &out,
        &[
            "cannot mix media types in one list:",
            &format!("`{x86}` gives a Docker schema2 image"),
            &format!("`{oci_arm}` an OCI image"),
        ],
    );
    // A Docker list cannot hold an OCI image.
    let out = manifold(&[
        "manifest",
        "create",
        &target,
        &oci_arm,
        "--media-type",
        "docker",
        "--push",
    ])
    .await?;
    assert_refused(
        &out,
        &["a Docker manifest list cannot hold OCI images such as"],
    );

    let mut tags = skopeo_tags(&repo).await?;
    tags.sort();
    assert_eq!(
        tags,
        ["oci-aarch64", "other-x86_64"],
        "no 1.0 tag was written"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_source_is_named_and_nothing_is_written() -> anyhow::Result<()> {
    let env = Env::from_env();
    let (_, x86, _) = base(&env);
    let repo = env.unique_repo("missing");
    let target = format!("{repo}:1.0");
    let missing = format!("{repo}:1.0-aarch64");
    let out = manifold(&["manifest", "create", &target, &x86, &missing, "--push"]).await?;
    assert_refused(
        &out,
        &[
            &format!(
                "source `{missing}` not found: {} has no such manifest",
                env.registry
            ),
            &format!("nothing was written under {target}"),
        ],
    );
    assert!(skopeo_tags(&repo).await?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn from_arch_tags_picks_up_the_per_arch_tags_by_template() -> anyhow::Result<()> {
    let env = Env::from_env();
    let (_, x86, arm) = base(&env);
    let repo = env.unique_repo("arch-tags");
    // Per-arch tags named by another convention: 2.0-amd64, 2.0-arm64.
    for (source, tag) in [(&x86, "2.0-amd64"), (&arm, "2.0-arm64")] {
        run(
            "skopeo",
            &[
                "copy",
                "--src-tls-verify=false",
                "--dest-tls-verify=false",
                &format!("docker://{source}"),
                &format!("docker://{repo}:{tag}"),
            ],
        )
        .await?;
    }
    let target = format!("{repo}:2.0");
    // The default template looks for 2.0-x86_64 ... and finds none.
    let out = manifold(&["manifest", "create", &target, "--from-arch-tags", "--push"]).await?;
    assert_refused(
        &out,
        &["no per-arch tags of `2.0`", "2.0-x86_64, 2.0-aarch64"],
    );

    let out = manifold(&[
        "manifest",
        "create",
        &target,
        "--from-arch-tags",
        "--tag-template",
        "{tag}-{goarch}",
        "--push",
    ])
    .await?;
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(
        entries(&target).await?,
        [
            ("linux/amd64".to_owned(), digest_of(&x86).await?),
            ("linux/arm64".to_owned(), digest_of(&arm).await?),
        ]
    );
    // A named platform whose tag is missing is an error.
    let out = manifold(&[
        "manifest",
        "create",
        &format!("{repo}:2.1"),
        "--from-arch-tags",
        "--tag-template",
        "{tag}-{goarch}",
        "--platform",
        "linux/amd64",
        "--push",
    ])
    .await?;
    assert_refused(&out, &["no linux/amd64 image", "has no tag `2.1-amd64`"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn amend_adds_a_platform_to_the_list_under_the_tag() -> anyhow::Result<()> {
    let env = Env::from_env();
    let (_, x86, arm) = base(&env);
    let repo = env.unique_repo("amend");
    let target = format!("{repo}:1.0");
    let out = manifold(&["manifest", "create", &target, &x86, "--push"]).await?;
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(entries(&target).await?.len(), 1);

    let out = manifold(&["manifest", "create", &target, &arm, "--amend", "--push"]).await?;
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(
        entries(&target).await?,
        [
            ("linux/amd64".to_owned(), digest_of(&x86).await?),
            ("linux/arm64".to_owned(), digest_of(&arm).await?),
        ]
    );
    // --amend on a single image is refused (a copy of this test's own, never a shared tag).
    let single = format!("{repo}:single");
    run(
        "skopeo",
        &[
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &format!("docker://{x86}"),
            &format!("docker://{single}"),
        ],
    )
    .await?;
    let out = manifold(&["manifest", "create", &single, &arm, "--amend", "--push"]).await?;
    assert_refused(
        &out,
        &[&format!(
            "--amend: `{single}` is a single image, not a list"
        )],
    );
    assert_eq!(digest_of(&single).await?, digest_of(&x86).await?);
    Ok(())
}
