//! Writing blobs and manifests straight to the test registry with plain HTTP requests (curl), as
//! BuildKit or another tool would, so tests can build indexes no Manifold code wrote.

use sha2::Digest as _;

use crate::run;

/// `sha256:<hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// Uploads `bytes` as a blob of `registry/name` (monolithic upload) and returns its descriptor.
pub async fn put_blob(
    registry: &str,
    name: &str,
    bytes: &[u8],
    media_type: &str,
) -> anyhow::Result<serde_json::Value> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("blob");
    std::fs::write(&file, bytes)?;
    let started = run(
        "curl",
        &[
            "-s",
            "-f",
            "-i",
            "-X",
            "POST",
            &format!("http://{registry}/v2/{name}/blobs/uploads/"),
        ],
    )
    .await?;
    let location = started
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("location")
                .then(|| v.trim().to_owned())
        })
        .ok_or_else(|| anyhow::anyhow!("no Location in {started}"))?;
    let location = if location.starts_with('/') {
        format!("http://{registry}{location}")
    } else {
        location
    };
    let separator = if location.contains('?') { '&' } else { '?' };
    let d = digest(bytes);
    run(
        "curl",
        &[
            "-s",
            "-f",
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            &format!("@{}", file.display()),
            &format!("{location}{separator}digest={d}"),
        ],
    )
    .await?;
    Ok(serde_json::json!({ "mediaType": media_type, "digest": d, "size": bytes.len() }))
}

/// Puts manifest `bytes` under `registry/name:reference`.
pub async fn put_manifest(
    registry: &str,
    name: &str,
    reference: &str,
    bytes: &[u8],
    media_type: &str,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("manifest");
    std::fs::write(&file, bytes)?;
    run(
        "curl",
        &[
            "-s",
            "-f",
            "-X",
            "PUT",
            "-H",
            &format!("Content-Type: {media_type}"),
            "--data-binary",
            &format!("@{}", file.display()),
            &format!("http://{registry}/v2/{name}/manifests/{reference}"),
        ],
    )
    .await?;
    Ok(())
}
