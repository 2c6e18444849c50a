//! `manifold manifest create --push` from list sources keeps every entry and every field, as
//! `docker buildx imagetools create` does: an `arm/v8` image, an entry with no platform, a Windows
//! entry with `os.version` and `os.features`, an annotated entry and a BuildKit attestation. The
//! list pushed is read back with skopeo and compared, entry by entry, with what
//! `docker buildx imagetools create --dry-run` makes of the same two sources; `inspect` shows
//! and selects the entries as containerd would.

use manifold_tests::oci::{digest, put_blob, put_manifest};
use manifold_tests::{Env, bin, run, show, skopeo_raw};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

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

/// Pushes an OCI image manifest with `config` and no layers into `name`; returns its descriptor
/// (media type, digest, size).
async fn image(
    registry: &str,
    name: &str,
    config: serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let mut config = config;
    config["rootfs"] = serde_json::json!({"type": "layers", "diff_ids": []});
    let config = put_blob(registry, name, &serde_json::to_vec(&config)?, OCI_CONFIG).await?;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config,
        "layers": [],
    }))?;
    let d = digest(&manifest);
    put_manifest(registry, name, &d, &manifest, OCI_MANIFEST).await?;
    Ok(serde_json::json!({"mediaType": OCI_MANIFEST, "digest": d, "size": manifest.len()}))
}

fn with(
    mut descriptor: serde_json::Value,
    key: &str,
    value: serde_json::Value,
) -> serde_json::Value {
    descriptor[key] = value;
    descriptor
}

#[tokio::test(flavor = "multi_thread")]
async fn every_entry_and_field_survives_as_buildx_imagetools_keeps_it() -> anyhow::Result<()> {
    let env = Env::from_env();
    let repo = env.unique_repo("entries");
    let name = repo
        .strip_prefix(&format!("{}/", env.registry))
        .unwrap()
        .to_owned();
    let r = env.registry.as_str();

    let arm8 = image(
        r,
        &name,
        serde_json::json!({"os": "linux", "architecture": "arm", "variant": "v8"}),
    )
    .await?;
    let bare = image(
        r,
        &name,
        serde_json::json!({"os": "linux", "architecture": "amd64"}),
    )
    .await?;
    let windows = image(
        r,
        &name,
        serde_json::json!({"os": "windows", "architecture": "amd64", "os.version": "10.0.17763.5830"}),
    )
    .await?;
    let mips = image(
        r,
        &name,
        serde_json::json!({"os": "linux", "architecture": "mips64le"}),
    )
    .await?;
    // A BuildKit attestation about the arm/v8 image.
    let statement = put_blob(
        r,
        &name,
        br#"{"_type":"https://in-toto.io/Statement/v0.1"}"#,
        "application/vnd.in-toto+json",
    )
    .await?;
    let att_config = put_blob(
        r,
        &name,
        br#"{"architecture":"unknown","os":"unknown","rootfs":{"type":"layers","diff_ids":[]}}"#,
        OCI_CONFIG,
    )
    .await?;
    let att_manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": att_config, "layers": [statement],
    }))?;
    let att_digest = digest(&att_manifest);
    put_manifest(r, &name, &att_digest, &att_manifest, OCI_MANIFEST).await?;

    let first: Vec<serde_json::Value> = vec![
        with(
            arm8.clone(),
            "platform",
            serde_json::json!({"architecture": "arm", "os": "linux", "variant": "v8"}),
        ),
        bare.clone(),
        with(
            windows.clone(),
            "platform",
            serde_json::json!({"architecture": "amd64", "os": "windows",
                "os.version": "10.0.17763.5830", "os.features": ["win32k"]}),
        ),
    ];
    let second: Vec<serde_json::Value> = vec![
        with(
            with(
                mips.clone(),
                "platform",
                serde_json::json!({"architecture": "mips64le", "os": "linux"}),
            ),
            "annotations",
            serde_json::json!({"org.opencontainers.image.title": "mips"}),
        ),
        serde_json::json!({
            "mediaType": OCI_MANIFEST, "digest": att_digest, "size": att_manifest.len(),
            "annotations": {
                "vnd.docker.reference.digest": arm8["digest"],
                "vnd.docker.reference.type": "attestation-manifest",
            },
            "platform": {"architecture": "unknown", "os": "unknown"},
        }),
    ];
    for (tag, manifests) in [("one", &first), ("two", &second)] {
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests,
        }))?;
        put_manifest(r, &name, tag, &index, OCI_INDEX).await?;
    }
    let (one, two) = (format!("{repo}:one"), format!("{repo}:two"));

    // What buildx makes of the same sources.
    let buildx = run(
        "docker",
        &[
            "buildx",
            "imagetools",
            "create",
            "--dry-run",
            "-t",
            &format!("{repo}:buildx"),
            &one,
            &two,
        ],
    )
    .await?;
    let buildx: serde_json::Value = serde_json::from_str(&buildx)?;

    let target_repo = env.unique_repo("entries-out");
    let target = format!("{target_repo}:1");
    let out = manifold(&["manifest", "create", &target, &one, &two, "--push"]).await?;
    assert!(out.status.success(), "{}", show(&out));
    let pushed = skopeo_raw(&target).await?;
    let expected: Vec<serde_json::Value> = first.iter().chain(&second).cloned().collect();
    assert_eq!(pushed["mediaType"], OCI_INDEX, "{pushed}");
    assert_eq!(
        pushed["manifests"].as_array().unwrap(),
        &expected,
        "every entry of the sources, in order, field for field"
    );
    assert_eq!(buildx["mediaType"], pushed["mediaType"], "{buildx}");
    assert_eq!(
        buildx["manifests"], pushed["manifests"],
        "buildx imagetools create keeps the same entries"
    );
    // Every child came along into the target repository.
    for d in expected.iter().map(|e| e["digest"].as_str().unwrap()) {
        skopeo_raw(&format!("{target_repo}@{d}")).await?;
    }

    // inspect shows each entry for what it is.
    let out = manifold(&["manifest", "inspect", &target]).await?;
    assert!(out.status.success(), "{}", show(&out));
    let table = String::from_utf8(out.stdout)?;
    for (platform, digest) in [
        ("linux/arm/v8 ", arm8["digest"].as_str().unwrap()),
        ("(no platform) ", bare["digest"].as_str().unwrap()),
        (
            "windows(10.0.17763.5830+win32k)/amd64 ",
            windows["digest"].as_str().unwrap(),
        ),
        ("unknown/unknown (attestation) ", att_digest.as_str()),
    ] {
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(platform) && l.contains(digest)),
            "`{platform}` {digest} in\n{table}"
        );
    }
    // ... and selects them as containerd does: arm/v8 exactly, arm64 falls back to it, amd64
    // reads the platformless entry's config.
    for (platform, expected, exact) in [
        ("linux/arm/v8", &arm8, true),
        ("linux/arm64", &arm8, false),
        ("linux/amd64", &bare, true),
        ("linux/mips64le", &mips, true),
    ] {
        let out = manifold(&[
            "manifest",
            "inspect",
            &target,
            "--platform",
            platform,
            "--format",
            "json",
        ])
        .await?;
        assert!(out.status.success(), "{platform}: {}", show(&out));
        let view: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        assert_eq!(view["digest"], expected["digest"], "{platform}: {view}");
        assert_eq!(view["exact"], exact, "{platform}: {view}");
    }
    Ok(())
}
