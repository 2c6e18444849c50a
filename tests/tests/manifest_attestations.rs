//! A BuildKit-style OCI index as a source: its attestation entry (`unknown/unknown`, annotated
//! `vnd.docker.reference.type: attestation-manifest`) is shown by `inspect` for what it is, never
//! picked for a platform, carried by `manifest create` (with the manifest it points to) as
//! `docker buildx imagetools create` carries it, and left out with `--exclude-attestations`.
//!
//! The index is written to the real registry with plain HTTP requests (curl), as BuildKit would.

use manifold_tests::oci::{digest, put_blob, put_manifest};
use manifold_tests::{Env, bin, run, show, skopeo_raw, skopeo_tags};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

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

/// Entries of the list at `reference` as (os/arch, digest), in list order.
async fn entries(reference: &str) -> anyhow::Result<Vec<(String, String)>> {
    let raw = skopeo_raw(reference).await?;
    Ok(raw["manifests"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("not a list: {raw}"))?
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
        .collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn attestation_entries_are_carried_unless_left_out() -> anyhow::Result<()> {
    let env = Env::from_env();
    let repo = env.unique_repo("buildkit");
    let name = repo
        .strip_prefix(&format!("{}/", env.registry))
        .unwrap()
        .to_owned();
    let base_repo = env.base_image.rsplit_once(':').map(|(b, _)| b).unwrap();

    // Two OCI platform images, as BuildKit pushes them.
    let mut children = Vec::new();
    for (tag, arch) in [("1-x86_64", "amd64"), ("1-aarch64", "arm64")] {
        let dest = format!("{repo}:oci-{arch}");
        run(
            "skopeo",
            &[
                "copy",
                "--src-tls-verify=false",
                "--dest-tls-verify=false",
                "--format",
                "oci",
                &format!("docker://{base_repo}:{tag}"),
                &format!("docker://{dest}"),
            ],
        )
        .await?;
        let raw = run(
            "skopeo",
            &[
                "inspect",
                "--raw",
                "--tls-verify=false",
                &format!("docker://{dest}"),
            ],
        )
        .await?;
        children.push(serde_json::json!({
            "mediaType": OCI_MANIFEST,
            "digest": digest(raw.as_bytes()),
            "size": raw.len(),
            "platform": { "architecture": arch, "os": "linux" },
        }));
    }
    let amd64 = children[0]["digest"].as_str().unwrap().to_owned();
    let arm64 = children[1]["digest"].as_str().unwrap().to_owned();

    // An attestation manifest about the amd64 image: an in-toto layer, an unknown/unknown config.
    let config = put_blob(
        &env.registry,
        &name,
        br#"{"architecture":"unknown","os":"unknown","config":{},"rootfs":{"type":"layers","diff_ids":[]}}"#,
        "application/vnd.oci.image.config.v1+json",
    )
    .await?;
    let statement = put_blob(
        &env.registry,
        &name,
        br#"{"_type":"https://in-toto.io/Statement/v0.1","predicateType":"https://spdx.dev/Document"}"#,
        "application/vnd.in-toto+json",
    )
    .await?;
    let attestation = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config,
        "layers": [statement],
    }))?;
    let attestation_digest = digest(&attestation);
    put_manifest(
        &env.registry,
        &name,
        &attestation_digest,
        &attestation,
        OCI_MANIFEST,
    )
    .await?;
    let mut manifests = children.clone();
    manifests.push(serde_json::json!({
        "mediaType": OCI_MANIFEST,
        "digest": attestation_digest,
        "size": attestation.len(),
        "annotations": {
            "vnd.docker.reference.digest": amd64,
            "vnd.docker.reference.type": "attestation-manifest",
        },
        "platform": { "architecture": "unknown", "os": "unknown" },
    }));
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
    }))?;
    put_manifest(&env.registry, &name, "bk", &index, OCI_INDEX).await?;
    let source = format!("{repo}:bk");

    // inspect shows the attestation for what it is, and never picks it.
    let out = manifold(&["manifest", "inspect", &source]).await?;
    assert!(out.status.success(), "{}", show(&out));
    let table = String::from_utf8(out.stdout)?;
    assert!(
        table.contains(&format!(
            "unknown/unknown (attestation)  {attestation_digest}"
        )),
        "{table}"
    );
    let out = manifold(&[
        "manifest",
        "inspect",
        &source,
        "--platform",
        "linux/amd64",
        "--format",
        "json",
    ])
    .await?;
    let view: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(view["digest"], amd64.as_str(), "{}", show(&out));

    // By default the attestation is carried in its place, and its manifest comes along.
    let carried_repo = env.unique_repo("with-attestations");
    let carried = format!("{carried_repo}:1");
    let out = manifold(&["manifest", "create", &carried, &source, "--push"]).await?;
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(
        entries(&carried).await?,
        [
            ("linux/amd64".to_owned(), amd64.clone()),
            ("linux/arm64".to_owned(), arm64.clone()),
            ("unknown/unknown".to_owned(), attestation_digest.clone()),
        ]
    );
    let raw = skopeo_raw(&carried).await?;
    assert_eq!(
        raw["manifests"][2]["annotations"]["vnd.docker.reference.digest"],
        amd64.as_str()
    );
    let moved = skopeo_raw(&format!("{carried_repo}@{attestation_digest}")).await?;
    assert_eq!(
        moved["layers"][0]["mediaType"],
        "application/vnd.in-toto+json"
    );

    // Left out when asked: the list holds the platform images only, and says what it left.
    let plain_repo = env.unique_repo("no-attestations");
    let plain = format!("{plain_repo}:1");
    let out = manifold(&[
        "manifest",
        "create",
        &plain,
        &source,
        "--exclude-attestations",
        "--push",
    ])
    .await?;
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!(
            "left out: unknown/unknown {attestation_digest} of list `{source}`: an attestation, left out as --exclude-attestations asks"
        )),
        "{}",
        show(&out)
    );
    assert_eq!(
        entries(&plain).await?,
        [
            ("linux/amd64".to_owned(), amd64.clone()),
            ("linux/arm64".to_owned(), arm64.clone())
        ]
    );
    assert_eq!(
        skopeo_raw(&plain).await?["mediaType"],
        OCI_INDEX,
        "OCI images give an OCI index"
    );

    // A Docker list cannot carry it: refused, nothing written.
    let refused_repo = env.unique_repo("attestations-docker");
    let out = manifold(&[
        "manifest",
        "create",
        &format!("{refused_repo}:1"),
        &source,
        "--media-type",
        "docker",
        "--push",
    ])
    .await?;
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(skopeo_tags(&refused_repo).await?.is_empty());
    Ok(())
}
