//! The product, end to end: `manifold build` of a multi-stage Dockerfile for linux/amd64 and
//! linux/arm64 on two workers driving two real Docker daemons gives one tag that is a manifest list
//! with exactly those two platforms, as independent clients (skopeo, the docker CLI) see it. Once
//! on daemons with the graphdriver image store, once with the containerd image store (Docker
//! Desktop's default), where BuildKit pushes the images itself.

use manifold_tests::{Env, TestFarm, context_dir, run, show, skopeo_raw, skopeo_tags};

#[tokio::test(flavor = "multi_thread")]
async fn two_platforms_build_natively_and_merge_into_one_tag() -> anyhow::Result<()> {
    two_platforms_in_one_tag("graphdriver").await
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_containerd_image_store_two_platforms_merge_into_one_tag() -> anyhow::Result<()> {
    two_platforms_in_one_tag("containerd").await
}

async fn two_platforms_in_one_tag(store: &str) -> anyhow::Result<()> {
    let env = Env::from_env();
    let farm = TestFarm::on_pair(&env, store).await?;

    let dockerfile = format!(
        "FROM {base} AS probe\nRUN uname -m > /arch\n\nFROM {base}\nCOPY --from=probe /arch /arch\nCMD [\"cat\", \"/arch\"]\n",
        base = env.base_image
    );
    let ctx = context_dir(&[("Dockerfile", &dockerfile), ("notes.txt", "hello")])?;
    let repo = env.unique_repo("hello");
    let tag = format!("{repo}:1.0");
    let out = farm
        .cli([
            "build",
            "-t",
            &tag,
            "--platform",
            "linux/amd64,linux/arm64",
            "--arch-tags",
            "-q",
            ctx.path().to_str().unwrap(),
        ])
        .await?;
    assert!(
        out.status.success(),
        "build failed\n{}\n--- coordinator ---\n{}\n--- x86 ---\n{}\n--- arm ---\n{}",
        show(&out),
        farm.coordinator_log(),
        farm.worker_log("x86"),
        farm.worker_log("arm")
    );
    let digest = String::from_utf8(out.stdout.clone())?.trim().to_owned();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "-q prints only the digest: {}",
        show(&out)
    );

    // skopeo sees a list with exactly the two platforms, each child an image manifest; on the
    // containerd image store each also has the attestation buildx adds by default (mode=min
    // provenance), an `unknown/unknown` entry pointing at it.
    let list = skopeo_raw(&tag).await?;
    let media_type = list["mediaType"].as_str().unwrap_or_default();
    assert!(
        media_type == "application/vnd.oci.image.index.v1+json"
            || media_type == "application/vnd.docker.distribution.manifest.list.v2+json",
        "{list}"
    );
    let mut platforms: Vec<String> = list["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m["platform"]["os"].as_str().unwrap(),
                m["platform"]["architecture"].as_str().unwrap()
            )
        })
        .collect();
    platforms.sort();
    let expected: &[&str] = match store {
        "containerd" => &[
            "linux/amd64",
            "linux/arm64",
            "unknown/unknown",
            "unknown/unknown",
        ],
        _ => &["linux/amd64", "linux/arm64"],
    };
    assert_eq!(platforms, expected, "{list}");
    for m in list["manifests"].as_array().unwrap() {
        if m["platform"]["os"] == "unknown" {
            let about = &m["annotations"]["vnd.docker.reference.digest"];
            assert!(
                list["manifests"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|i| &i["digest"] == about),
                "{list}"
            );
        }
    }
    let raw = run(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{tag}"),
        ],
    )
    .await?;
    use sha2::Digest as _;
    assert_eq!(
        format!(
            "sha256:{}",
            hex::encode(sha2::Sha256::digest(raw.as_bytes()))
        ),
        digest,
        "the printed digest is the digest of the list under the tag"
    );

    // Per-arch tags were asked for; no other tag is in the repository.
    let mut tags = skopeo_tags(&repo).await?;
    tags.sort();
    assert_eq!(tags, ["1.0", "1.0-aarch64", "1.0-x86_64"]);

    // The docker CLI pulls each platform's child and runs it: the probe stage ran natively (or under
    // the arm64 daemon's QEMU) for its platform.
    let docker = ["-H", &env.amd64_docker];
    for (platform, expected) in [("linux/arm64", "aarch64"), ("linux/amd64", "x86_64")] {
        run(
            "docker",
            &[&docker[..], &["pull", "-q", "--platform", platform, &tag]].concat(),
        )
        .await?;
        let printed = run(
            "docker",
            &[&docker[..], &["run", "--rm", "--platform", platform, &tag]].concat(),
        )
        .await?;
        assert_eq!(printed.trim(), expected, "{platform} image prints its arch");
    }
    let _ = run("docker", &[&docker[..], &["rmi", "-f", &tag]].concat()).await;

    // The build reads succeeded in `manifold builds`.
    let out = farm.cli(["builds", "--format", "json"]).await?;
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&digest),
        "{}",
        show(&out)
    );
    Ok(())
}
