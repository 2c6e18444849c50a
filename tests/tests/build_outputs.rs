//! What `manifold build` leaves for people and programs, on both engine modes, checked with
//! skopeo: several `-t` (one list under every tag, also in another repository, children brought
//! there first), `--iidfile` and `--metadata-file` (buildx's keys, each platform's digest),
//! `--progress json` (one object per line), `--build-context NAME=docker-image://REF`; and a registry cache written by one pair of daemons
//! (`--cache-to`) that two other daemons of the other engine mode reuse (`--cache-from`).

use manifold_tests::{Env, TestFarm, context_dir, run, show};
use sha2::Digest as _;

/// The bytes under `reference` in the test registry, and their digest.
async fn raw(reference: &str) -> anyhow::Result<(String, String)> {
    let bytes = run(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{reference}"),
        ],
    )
    .await?;
    let digest = format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(bytes.as_bytes()))
    );
    Ok((bytes, digest))
}

async fn tags_metadata_and_json_progress(store: &str) -> anyhow::Result<()> {
    let env = Env::from_env();
    let farm = TestFarm::on_pair(&env, store).await?;
    let ctx = context_dir(&[(
        "Dockerfile",
        // `stem` is no image anywhere: only --build-context makes it the base image.
        "FROM stem\nRUN echo built > /built\n",
    )])?;
    let repo = env.unique_repo(&format!("tags-{store}"));
    let other = env.unique_repo(&format!("tags-other-{store}"));
    let out_dir = tempfile::tempdir()?;
    let metadata_file = out_dir.path().join("metadata.json");
    let iidfile = out_dir.path().join("iid");
    let tags = [
        format!("{repo}:1"),
        format!("{repo}:latest"),
        format!("{other}:1"),
    ];
    let out = farm
        .cli([
            "build",
            "-t",
            &tags[0],
            "-t",
            &tags[1],
            "-t",
            &tags[2],
            "--platform",
            "linux/amd64,linux/arm64",
            "--progress",
            "json",
            "--build-context",
            &format!("stem=docker-image://{}", env.base_image),
            "--metadata-file",
            &metadata_file.display().to_string(),
            "--iidfile",
            &iidfile.display().to_string(),
            &ctx.path().display().to_string(),
        ])
        .await?;
    assert!(
        out.status.success(),
        "{}\n--- x86 ---\n{}\n--- arm ---\n{}",
        show(&out),
        farm.worker_log("x86"),
        farm.worker_log("arm")
    );
    let stdout = String::from_utf8(out.stdout.clone())?;
    let digest = stdout.trim();

    // One list, the same bytes under every tag (the other repository too), per skopeo.
    let (list, list_digest) = raw(&tags[0]).await?;
    assert_eq!(list_digest, digest, "stdout is the list's digest");
    for tag in &tags[1..] {
        assert_eq!(raw(tag).await?.0, list, "{tag} holds the same list");
    }
    let index: serde_json::Value = serde_json::from_str(&list)?;
    let entries = index["manifests"].as_array().expect("a list");
    for e in entries {
        let child = format!("{other}@{}", e["digest"].as_str().unwrap());
        raw(&child)
            .await
            .unwrap_or_else(|err| panic!("{child} was brought into the other repository: {err}"));
    }

    // --iidfile: the digest, as buildx writes it (no newline).
    assert_eq!(std::fs::read_to_string(&iidfile)?, digest);

    // --metadata-file: buildx's keys and each platform's digest, as the registry holds them.
    let metadata: serde_json::Value = serde_json::from_slice(&std::fs::read(&metadata_file)?)?;
    assert_eq!(metadata["containerimage.digest"], digest);
    assert_eq!(metadata["image.name"], tags.join(","));
    assert_eq!(
        metadata["containerimage.mediaType"], index["mediaType"],
        "{metadata:#}"
    );
    let platforms = metadata["manifold.platforms"]
        .as_object()
        .expect("per platform");
    assert_eq!(platforms.len(), 2, "{metadata:#}");
    // Attestation entries (the default provenance on the containerd image store) are no platform.
    for e in entries.iter().filter(|e| e["platform"]["os"] != "unknown") {
        let p = &e["platform"];
        let name = format!(
            "{}/{}",
            p["os"].as_str().unwrap(),
            p["architecture"].as_str().unwrap()
        );
        let meta = &platforms[&name];
        assert_eq!(meta["containerimage.digest"], e["digest"], "{name}");
        let d = &meta["containerimage.descriptor"];
        assert_eq!(d["size"], e["size"], "{name}");
        assert_eq!(d["mediaType"], e["mediaType"], "{name}");
    }

    // --progress json: every stderr line is one JSON object; both platforms log; the last
    // event says succeeded with the digest.
    let stderr = String::from_utf8(out.stderr)?;
    let events: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for platform in ["linux/amd64", "linux/arm64"] {
        assert!(
            events
                .iter()
                .any(|e| e["platform"] == platform && e.get("log").is_some()),
            "no log line of {platform}: {stderr}"
        );
    }
    let last = events
        .iter()
        .rev()
        .find(|e| e.get("finished").is_some())
        .expect("a finished event");
    assert_eq!(last["finished"], "succeeded");
    assert_eq!(last["digest"], digest);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn tags_metadata_and_json_progress_on_containerd_store() -> anyhow::Result<()> {
    tags_metadata_and_json_progress("containerd").await
}

#[tokio::test(flavor = "multi_thread")]
async fn tags_metadata_and_json_progress_on_graphdriver() -> anyhow::Result<()> {
    tags_metadata_and_json_progress("graphdriver").await
}

/// `--cache-to type=registry` on the containerd-store pair (a graphdriver engine cannot export a
/// registry cache, and says so last), then `--cache-from` on the graphdriver pair, which never ran the step: both
/// platforms take the expensive RUN step from the registry cache.
#[tokio::test(flavor = "multi_thread")]
async fn a_registry_cache_written_by_one_pair_is_reused_by_another() -> anyhow::Result<()> {
    let env = Env::from_env();
    let nonce = uuid::Uuid::new_v4().to_string();
    let ctx = context_dir(&[(
        "Dockerfile",
        &format!(
            "FROM {}\nRUN echo expensive-{nonce} && uname -m > /arch\n",
            env.base_image
        ),
    )])?;
    let cache = format!("{}:main", env.unique_repo("cache"));
    let context = ctx.path().display().to_string();
    let build = |tag: String, cache_flag: &'static str, cache_value: String| {
        [
            "build".to_owned(),
            "-t".to_owned(),
            tag,
            "--platform".to_owned(),
            "linux/amd64,linux/arm64".to_owned(),
            "--progress".to_owned(),
            "plain".to_owned(),
            cache_flag.to_owned(),
            cache_value,
            context.clone(),
        ]
    };
    let ran = |out: &str| {
        out.lines()
            .filter(|l| {
                !l.contains("echo") && l.trim_end().ends_with(&format!("expensive-{nonce}"))
            })
            .count()
    };

    let writer = TestFarm::on_pair(&env, "containerd").await?;
    let first = writer
        .cli(build(
            format!("{}:1", env.unique_repo("cache-writer")),
            "--cache-to",
            format!("type=registry,ref={cache},mode=max"),
        ))
        .await?;
    assert!(first.status.success(), "{}", show(&first));
    assert_eq!(
        ran(&show(&first)),
        2,
        "both platforms ran the step: {}",
        show(&first)
    );
    // One cache per platform, kept apart (buildx#1044): the tag gets the platform appended.
    let repo = cache.trim_end_matches(":main");
    let cache_tags = manifold_tests::skopeo_tags(repo).await?;
    for suffix in ["main-linux-amd64", "main-linux-arm64"] {
        assert!(
            cache_tags.iter().any(|t| t == suffix),
            "{suffix} not in {cache_tags:?}"
        );
    }
    drop(writer);

    let reader = TestFarm::on_pair(&env, "graphdriver").await?;
    let second = reader
        .cli(build(
            format!("{}:1", env.unique_repo("cache-reader")),
            "--cache-from",
            format!("type=registry,ref={cache}"),
        ))
        .await?;
    let second_out = show(&second);
    assert!(second.status.success(), "{second_out}");
    assert_eq!(
        ran(&second_out),
        0,
        "neither platform ran the step again: {second_out}"
    );
    assert!(second_out.contains("CACHED"), "{second_out}");

    // A graphdriver engine cannot export a registry cache: the build fails saying which engine
    // mode can, and no cache is written.
    let refused_cache = format!("{}:main", env.unique_repo("cache-refused"));
    let third = reader
        .cli(build(
            format!("{}:1", env.unique_repo("cache-refused-image")),
            "--cache-to",
            format!("type=registry,ref={refused_cache}"),
        ))
        .await?;
    let third_out = show(&third);
    assert!(!third.status.success(), "{third_out}");
    for part in [
        "--cache-to type=registry",
        "graphdriver",
        "containerd image store",
        "--cache-to type=inline",
    ] {
        assert!(third_out.contains(part), "{part:?} missing: {third_out}");
    }
    let written = manifold_tests::skopeo_tags(refused_cache.trim_end_matches(":main"))
        .await
        .unwrap_or_default();
    assert!(written.is_empty(), "{written:?}");
    Ok(())
}
