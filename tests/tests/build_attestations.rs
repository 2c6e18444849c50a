//! `--provenance`, `--sbom` and buildx's default provenance, on the containerd-store pair, each
//! compared with what `docker buildx build` pushes from the same daemon: every platform's image in
//! the build's index comes with its attestation manifest (`unknown/unknown`, annotated
//! `vnd.docker.reference.type: attestation-manifest` and the image's digest), holding the same
//! in-toto predicate types as buildx's; `manifold manifest inspect` shows the platforms, and the
//! attestations labelled as such.
//! The SBOM comes from a generator image of the test's own (the SBOM protocol: it lists the
//! scanned root), built by the farm, since Docker Hub's scanner cannot be pulled here. A
//! graphdriver engine refuses attestations, saying which engine can.

use std::collections::{BTreeMap, BTreeSet};

use manifold_tests::{Env, TestFarm, context_dir, run, show, skopeo_raw};

const ATTESTATION: &str = "attestation-manifest";
const SPDX: &str = "https://spdx.dev/Document";

/// A generator following BuildKit's SBOM protocol: an SPDX statement naming the files at the
/// root of the scanned image.
const SCANNER: &str = r#"set -e
name=$(basename "$BUILDKIT_SCAN_SOURCE")
files=$(ls "$BUILDKIT_SCAN_SOURCE" | sed 's/.*/{"fileName":"&"}/' | tr '\n' ',' | sed 's/,$//')
printf '{"_type":"https://in-toto.io/Statement/v0.1","predicateType":"https://spdx.dev/Document","subject":[],"predicate":{"spdxVersion":"SPDX-2.3","SPDXID":"SPDXRef-DOCUMENT","name":"%s","files":[%s]}}' "$name" "$files" > "$BUILDKIT_SCAN_DESTINATION/$name.spdx.json"
"#;

fn app(env: &Env) -> anyhow::Result<tempfile::TempDir> {
    context_dir(&[(
        "Dockerfile",
        &format!(
            "FROM {}\nRUN echo built > /manifold-marker\n",
            env.base_image
        ),
    )])
}

/// One platform's attestations in an index: the predicate types of each attestation manifest
/// about that platform's image, by platform (`os/arch`).
type Attested = BTreeMap<String, Vec<BTreeSet<String>>>;

/// `os/arch` of an index entry.
fn platform_of(entry: &serde_json::Value) -> String {
    format!(
        "{}/{}",
        entry["platform"]["os"].as_str().unwrap_or_default(),
        entry["platform"]["architecture"]
            .as_str()
            .unwrap_or_default()
    )
}

/// The entries of the index at `reference`: its platforms' attestations, checking that every
/// attestation entry is `unknown/unknown` and points at an image of the index.
async fn attested(reference: &str) -> anyhow::Result<Attested> {
    let index = skopeo_raw(reference).await?;
    let entries = index["manifests"].as_array().cloned().unwrap_or_default();
    let mut out = Attested::new();
    for e in entries
        .iter()
        .filter(|e| e["annotations"]["vnd.docker.reference.type"] != ATTESTATION)
    {
        out.insert(platform_of(e), Vec::new());
    }
    let repository = reference
        .rsplit_once([':', '@'])
        .map_or(reference, |(r, _)| r);
    for e in entries
        .iter()
        .filter(|e| e["annotations"]["vnd.docker.reference.type"] == ATTESTATION)
    {
        assert_eq!(platform_of(e), "unknown/unknown", "{index:#}");
        let about = e["annotations"]["vnd.docker.reference.digest"]
            .as_str()
            .unwrap_or_default();
        let image = entries
            .iter()
            .find(|i| i["digest"] == about)
            .unwrap_or_else(|| {
                panic!("the attestation points at no image of the index: {index:#}")
            });
        let manifest =
            skopeo_raw(&format!("{repository}@{}", e["digest"].as_str().unwrap())).await?;
        let types: BTreeSet<String> = (manifest["layers"].as_array().into_iter().flatten())
            .map(|l| {
                assert_eq!(
                    l["mediaType"], "application/vnd.in-toto+json",
                    "{manifest:#}"
                );
                l["annotations"]["in-toto.io/predicate-type"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        out.entry(platform_of(image)).or_default().push(types);
    }
    Ok(out)
}

/// The in-toto statement of `predicate_type` in the attestation of `platform` in `reference`.
async fn statement(
    reference: &str,
    platform: &str,
    predicate_type: &str,
) -> anyhow::Result<serde_json::Value> {
    let index = skopeo_raw(reference).await?;
    let (repository, _) = reference.rsplit_once(':').unwrap();
    let entries = index["manifests"].as_array().unwrap();
    let image = entries
        .iter()
        .find(|e| platform_of(e) == platform)
        .expect("the platform's image");
    let attestation = entries
        .iter()
        .find(|e| e["annotations"]["vnd.docker.reference.digest"] == image["digest"])
        .expect("its attestation");
    let manifest = skopeo_raw(&format!(
        "{repository}@{}",
        attestation["digest"].as_str().unwrap()
    ))
    .await?;
    let layer = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["annotations"]["in-toto.io/predicate-type"] == predicate_type)
        .unwrap_or_else(|| panic!("no {predicate_type} statement: {manifest:#}"));
    let (registry, name) = repository.split_once('/').unwrap();
    let blob = run(
        "curl",
        &[
            "-s",
            "-f",
            &format!(
                "http://{registry}/v2/{name}/blobs/{}",
                layer["digest"].as_str().unwrap()
            ),
        ],
    )
    .await?;
    Ok(serde_json::from_str(&blob)?)
}

/// `docker buildx build --push` of `ctx` for linux/amd64 on `docker_host`, with `flags`.
async fn buildx(
    docker_host: &str,
    tag: &str,
    flags: &[&str],
    env_vars: &[(&str, &str)],
    ctx: &std::path::Path,
) -> anyhow::Result<()> {
    let out = tokio::process::Command::new("docker")
        .args([
            "buildx",
            "build",
            "--progress",
            "plain",
            "--platform",
            "linux/amd64",
            "--push",
            "-t",
            tag,
        ])
        .args(flags)
        .arg(ctx)
        .env("DOCKER_HOST", docker_host)
        .envs(env_vars.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .await?;
    anyhow::ensure!(out.status.success(), "docker buildx build: {}", show(&out));
    Ok(())
}

async fn build(farm: &TestFarm, args: &[&str], env_vars: &[(&str, &str)]) -> anyhow::Result<()> {
    let out = farm.cli_with_env(args, env_vars).await?;
    assert!(
        out.status.success(),
        "{}\n--- x86 ---\n{}\n--- arm ---\n{}",
        show(&out),
        farm.worker_log("x86"),
        farm.worker_log("arm")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn provenance_and_sbom_are_attached_to_every_platform_as_buildx_attaches_them()
-> anyhow::Result<()> {
    let env = Env::from_env();
    let farm = TestFarm::on_pair(&env, "containerd").await?;
    let (cd_amd64, _) = env.pair("containerd");

    // The generator image, both platforms, built by the farm.
    let scanner_ctx = context_dir(&[
        (
            "Dockerfile",
            &format!(
                "FROM {}\nCOPY scan.sh /scan.sh\nCMD [\"/bin/sh\", \"/scan.sh\"]\n",
                env.base_image
            ),
        ),
        ("scan.sh", SCANNER),
    ])?;
    let scanner = format!("{}:1", env.unique_repo("sbom-scanner"));
    let ctx = scanner_ctx.path().display().to_string();
    build(
        &farm,
        &[
            "build",
            "-t",
            &scanner,
            "--platform",
            "linux/amd64,linux/arm64",
            &ctx,
        ],
        &[],
    )
    .await?;

    let app = app(&env)?;
    let ctx = app.path().display().to_string();
    let tag = format!("{}:1", env.unique_repo("attested"));
    let sbom = format!("generator={scanner}");
    build(
        &farm,
        &[
            "build",
            "-t",
            &tag,
            "--platform",
            "linux/amd64,linux/arm64",
            "--provenance",
            "mode=max",
            "--sbom",
            &sbom,
            &ctx,
        ],
        &[],
    )
    .await?;
    let ours = attested(&tag).await?;

    // buildx, same daemon, same flags: the amd64 image's attestations hold the same statements.
    let theirs_tag = format!("{}:1", env.unique_repo("attested-buildx"));
    buildx(
        &cd_amd64,
        &theirs_tag,
        &["--provenance", "mode=max", "--sbom", &sbom],
        &[],
        app.path(),
    )
    .await?;
    let theirs = attested(&theirs_tag).await?;
    let types = &theirs["linux/amd64"];
    assert_eq!(types.len(), 1, "buildx: {theirs:?}");
    assert!(types[0].contains(SPDX), "buildx: {theirs:?}");
    assert!(
        types[0]
            .iter()
            .any(|t| t.starts_with("https://slsa.dev/provenance/")),
        "buildx: {theirs:?}"
    );
    for platform in ["linux/amd64", "linux/arm64"] {
        assert_eq!(
            &ours[platform], types,
            "{platform}: ours {ours:?}, buildx {theirs:?}"
        );
    }
    assert_eq!(
        ours.len(),
        2,
        "only the two platforms have images: {ours:?}"
    );

    // The SBOM is the generator's scan of each platform's image.
    for platform in ["linux/amd64", "linux/arm64"] {
        let s = statement(&tag, platform, SPDX).await?;
        let files = s["predicate"]["files"].to_string();
        assert!(files.contains("manifold-marker"), "{platform}: {s:#}");
    }
    // mode=max provenance names the build's own parameters.
    let provenance_type = types[0]
        .iter()
        .find(|t| t.starts_with("https://slsa.dev/"))
        .unwrap();
    let p = statement(&tag, "linux/arm64", provenance_type).await?;
    let materials = p["predicate"]["materials"].to_string();
    assert!(
        materials.contains("busybox@1?platform=linux%2Farm64"),
        "the arm64 base image is a material: {p:#}"
    );

    // `manifold manifest inspect` shows the platforms only.
    let out = farm.cli(["manifest", "inspect", &tag]).await?;
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        shown.contains("linux/amd64") && shown.contains("linux/arm64"),
        "{shown}"
    );
    // Attestations are shown for what they are, never as a platform (as imagetools shows them).
    let rows: Vec<&str> = shown
        .lines()
        .filter(|l| l.contains("sha256:") && !l.starts_with("pinned") && !l.starts_with("digest"))
        .collect();
    assert_eq!(rows.len(), 4, "{shown}");
    for row in rows.iter().filter(|r| r.starts_with("unknown/unknown")) {
        assert!(row.contains("(attestation)"), "{shown}");
    }
    assert_eq!(
        rows.iter().filter(|r| r.starts_with("linux/")).count(),
        2,
        "{shown}"
    );
    // docker buildx imagetools reads both SBOMs from the index.
    let sboms = run(
        "docker",
        &[
            "buildx",
            "imagetools",
            "inspect",
            &tag,
            "--format",
            "{{json .SBOM}}",
        ],
    )
    .await?;
    assert_eq!(sboms.matches("manifold-marker").count(), 2, "{sboms}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_default_provenance_is_buildxs_and_goes_as_buildx_lets_it_go() -> anyhow::Result<()> {
    let env = Env::from_env();
    let farm = TestFarm::on_pair(&env, "containerd").await?;
    let (cd_amd64, _) = env.pair("containerd");
    let app = app(&env)?;
    let ctx = app.path().display().to_string();
    for (no_default, expected_attestations) in [(None, 1), (Some("1"), 0)] {
        let vars: Vec<(&str, &str)> = no_default
            .map(|v| ("BUILDX_NO_DEFAULT_ATTESTATIONS", v))
            .into_iter()
            .collect();
        let tag = format!("{}:1", env.unique_repo("default-attest"));
        build(
            &farm,
            &[
                "build",
                "-t",
                &tag,
                "--platform",
                "linux/amd64,linux/arm64",
                &ctx,
            ],
            &vars,
        )
        .await?;
        let ours = attested(&tag).await?;
        let theirs_tag = format!("{}:1", env.unique_repo("default-attest-buildx"));
        buildx(&cd_amd64, &theirs_tag, &[], &vars, app.path()).await?;
        let raw = skopeo_raw(&theirs_tag).await?;
        let theirs = if raw["manifests"].is_array() {
            attested(&theirs_tag).await?["linux/amd64"].clone()
        } else {
            Vec::new() // a lone image manifest: nothing attached
        };
        assert_eq!(
            theirs.len(),
            expected_attestations,
            "buildx, {vars:?}: {raw:#}"
        );
        for platform in ["linux/amd64", "linux/arm64"] {
            assert_eq!(
                ours[platform], theirs,
                "{platform}, {vars:?}: ours {ours:?}"
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_graphdriver_engine_refuses_attestations_and_says_which_engine_can() -> anyhow::Result<()>
{
    let env = Env::from_env();
    let farm = TestFarm::on_pair(&env, "graphdriver").await?;
    let app = app(&env)?;
    let ctx = app.path().display().to_string();
    let tag = format!("{}:1", env.unique_repo("attest-graphdriver"));
    let out = farm
        .cli([
            "build",
            "-t",
            &tag,
            "--platform",
            "linux/amd64",
            "--sbom",
            "true",
            &ctx,
        ])
        .await?;
    assert!(!out.status.success(), "{}", show(&out));
    let said = show(&out);
    assert!(
        said.contains("--attest type=sbom")
            && said.contains("containerd image store")
            && said.contains("containerd-snapshotter"),
        "{said}"
    );
    assert!(
        manifold_tests::skopeo_tags(tag.rsplit_once(':').unwrap().0)
            .await?
            .is_empty()
    );
    // Without flags a graphdriver engine attaches nothing, as buildx's docker driver does.
    build(
        &farm,
        &[
            "build",
            "-t",
            &tag,
            "--platform",
            "linux/amd64,linux/arm64",
            &ctx,
        ],
        &[],
    )
    .await?;
    let ours = attested(&tag).await?;
    assert_eq!(ours.values().map(Vec::len).sum::<usize>(), 0, "{ours:?}");
    Ok(())
}
