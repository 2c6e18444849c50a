//! `manifold manifest inspect` against the real registry: a list is a table (or JSON) of platform,
//! digest, size and media type; `--platform` picks the child Docker picks (`linux/arm64/v8` and
//! `linux/arm64` alike, checked against a real `docker pull --platform`); `--raw` prints the
//! exact bytes; a platform the list lacks, and a missing tag, are named.

use manifold_tests::{Env, bin, run, show, skopeo_raw};
use sha2::Digest as _;

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

async fn json(args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let out = manifold(args).await?;
    anyhow::ensure!(out.status.success(), "{}", show(&out));
    Ok(serde_json::from_slice(&out.stdout)?)
}

#[tokio::test(flavor = "multi_thread")]
async fn inspect_shows_a_list_and_picks_the_child_docker_pulls() -> anyhow::Result<()> {
    let env = Env::from_env();
    // A copy of the multi-arch base in a repository of this test's own, so that pulling it
    // leaves the daemons' base image alone.
    let repo = env.unique_repo("inspect");
    let list = format!("{repo}:1");
    let out = manifold(&["manifest", "create", &list, &env.base_image, "--push", "-q"]).await?;
    assert!(out.status.success(), "{}", show(&out));
    let raw = skopeo_raw(&list).await?;
    let child = |arch: &str| -> String {
        raw["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["platform"]["architecture"] == arch)
            .map(|m| m["digest"].as_str().unwrap().to_owned())
            .unwrap()
    };
    let (amd64, arm64) = (child("amd64"), child("arm64"));

    // The table: one row per platform with digest, size and media type.
    let out = manifold(&["manifest", "inspect", &list]).await?;
    assert!(out.status.success(), "{}", show(&out));
    let table = String::from_utf8(out.stdout)?;
    assert!(
        table.contains("PLATFORM     DIGEST"),
        "a table with a header:\n{table}"
    );
    for (platform, digest) in [("linux/amd64", &amd64), ("linux/arm64", &arm64)] {
        let row = table
            .lines()
            .find(|l| l.starts_with(platform))
            .unwrap_or_else(|| panic!("no {platform} row:\n{table}"));
        assert!(row.contains(digest.as_str()), "{row}");
        assert!(
            row.contains("application/vnd.docker.distribution.manifest.v2+json"),
            "{row}"
        );
    }
    // JSON, for scripts.
    let view = json(&["manifest", "inspect", &list, "--format", "json"]).await?;
    assert_eq!(
        view["manifests"].as_array().map(Vec::len),
        Some(2),
        "{view}"
    );
    assert_eq!(
        view["media_type"],
        "application/vnd.docker.distribution.manifest.list.v2+json"
    );

    // --raw is the exact bytes: their sha256 is the list's digest.
    let out = manifold(&["manifest", "inspect", &list, "--raw"]).await?;
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(&out.stdout))),
        view["digest"].as_str().unwrap()
    );

    // arm64/v8 is arm64, as Docker has it.
    let v8 = json(&[
        "manifest",
        "inspect",
        &list,
        "--platform",
        "linux/arm64/v8",
        "--format",
        "json",
    ])
    .await?;
    let plain = json(&[
        "manifest",
        "inspect",
        &list,
        "--platform",
        "linux/arm64",
        "--format",
        "json",
    ])
    .await?;
    assert_eq!(v8["digest"], arm64.as_str(), "{v8}");
    assert_eq!(plain["digest"], arm64.as_str(), "{plain}");
    assert_eq!(v8["exact"], true);
    assert_eq!(v8["pinned"], format!("{repo}@{arm64}"));
    let amd = json(&[
        "manifest",
        "inspect",
        &list,
        "--platform",
        "amd64",
        "--format",
        "json",
    ])
    .await?;
    assert_eq!(amd["digest"], amd64.as_str());
    let out = manifold(&[
        "manifest",
        "inspect",
        &list,
        "--platform",
        "linux/arm64",
        "--raw",
    ])
    .await?;
    assert_eq!(
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(&out.stdout))),
        arm64
    );

    // Docker makes the same choice: the image `docker pull --platform linux/arm64/v8` stores is
    // the config of the child manifold picked.
    let host = env.arm64_docker.as_str();
    let pulled = async {
        run(
            "docker",
            &[
                "-H",
                host,
                "pull",
                "-q",
                "--platform",
                "linux/arm64/v8",
                &list,
            ],
        )
        .await?;
        run(
            "docker",
            &["-H", host, "image", "inspect", "--format", "{{.Id}}", &list],
        )
        .await
    }
    .await;
    let _ = run("docker", &["-H", host, "rmi", "-f", &list]).await;
    assert_eq!(pulled?.trim(), v8["config"]["digest"].as_str().unwrap());

    // What the list lacks is named with what it has.
    let out = manifold(&["manifest", "inspect", &list, "--platform", "linux/arm/v7"]).await?;
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    // The list keeps the base list's entries in their order.
    let available: Vec<String> = raw["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| format!("linux/{}", m["platform"]["architecture"].as_str().unwrap()))
        .collect();
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "error: `{list}` has no image a linux/arm/v7 client would pull; it has {}\n",
            available.join(", ")
        )
    );
    let out = manifold(&["manifest", "inspect", &format!("{repo}:2")]).await?;
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "error: `{repo}:2` not found: {} has no such manifest; check the repository and tag\n",
            env.registry
        )
    );
    Ok(())
}
