//! The coordinator's list push (`manifold_registry::publish_with`) against the real registry:
//! children the coordinator verified are not checked again before the push (the registry checks
//! a list's references itself when it takes it); one deleted meanwhile still fails the push,
//! naming its platform and digest, and the tag is not written. Children named by a user
//! (`Children::Unchecked`) are checked first, as before. skopeo reads what the registry holds.

use manifold_registry::{ChildImage, Children, RegistryConfig, RegistryError, publish_with};
use manifold_tests::oci::{digest, put_blob, put_manifest};
use manifold_tests::{Env, skopeo_raw};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// Pushes a tiny linux/`arch` image (a config, no layer) to `registry/repository` by digest.
async fn push_tiny(registry: &str, repository: &str, arch: &str) -> anyhow::Result<ChildImage> {
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": arch, "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": []},
    }))?;
    let config = put_blob(
        registry,
        repository,
        &config,
        "application/vnd.oci.image.config.v1+json",
    )
    .await?;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [],
    }))?;
    let d = digest(&manifest);
    put_manifest(registry, repository, &d, &manifest, OCI_MANIFEST).await?;
    Ok(ChildImage {
        platform: format!("linux/{arch}").parse()?,
        digest: d,
        size: manifest.len() as u64,
        media_type: OCI_MANIFEST.to_owned(),
        attestations: Vec::new(),
    })
}

#[tokio::test]
async fn a_verified_child_deleted_before_the_list_push_fails_it_by_name() -> anyhow::Result<()> {
    let env = Env::from_env();
    let image = env.unique_repo("children");
    let (registry, repository) = image.split_once('/').expect("registry/repository");
    let amd64 = push_tiny(registry, repository, "amd64").await?;
    let arm64 = push_tiny(registry, repository, "arm64").await?;
    let children = [amd64.clone(), arm64.clone()];
    let config = RegistryConfig::default();
    let tag = |t: &str| manifold_registry::reference::parse(&format!("{image}:{t}"));

    // Both present: the list goes under the tag, both platforms in it.
    for known in [Children::Verified, Children::Unchecked] {
        publish_with(&config, &tag("1")?, &[], &children, known, None, &[]).await?;
        let list = skopeo_raw(&format!("{image}:1")).await?;
        let digests: Vec<&str> = list["manifests"]
            .as_array()
            .expect("an index")
            .iter()
            .filter_map(|m| m["digest"].as_str())
            .collect();
        assert_eq!(digests, [amd64.digest.as_str(), arm64.digest.as_str()]);
    }

    // The arm64 image is deleted after it was verified: the push fails naming it, either way.
    reqwest::Client::new()
        .delete(format!(
            "http://{registry}/v2/{repository}/manifests/{}",
            arm64.digest
        ))
        .send()
        .await?
        .error_for_status()?;
    for known in [Children::Verified, Children::Unchecked] {
        let e = publish_with(&config, &tag("2")?, &[], &children, known, None, &[])
            .await
            .expect_err("a list naming a deleted image is refused");
        match &e {
            RegistryError::MissingChild {
                platform, digest, ..
            } => assert_eq!(
                (platform.as_str(), digest.as_str()),
                ("linux/arm64", arm64.digest.as_str()),
                "{e}"
            ),
            other => panic!("expected the missing child to be named, got: {other}"),
        }
        assert!(
            skopeo_raw(&format!("{image}:2")).await.is_err(),
            "no tag is written"
        );
    }
    Ok(())
}
