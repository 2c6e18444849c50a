//! Real multi-stage builds on the real daemons, in both image-store modes (graphdriver: the worker
//! pushes from `docker save`; containerd: BuildKit pushes by digest itself), pushed by digest to
//! the real registry, checked independently with skopeo: the manifest exists under its digest, its
//! config and its files say the right architecture, and the repository has no tag. On graphdriver
//! engines a second push finds every layer in the repository, and a push to another repository
//! mounts every blob from the first.

mod support;

use manifold_worker::docker::DockerEngine;
use manifold_worker::push::{LAYER_MEDIA_TYPE, MANIFEST_MEDIA_TYPE};
use sha2::Digest as _;
use support::*;

fn two_stage_context(marker: &str) -> Context {
    let dockerfile = format!(
        "FROM {base} AS b\n\
         RUN echo {marker} > /marker\n\
         RUN uname -m > /arch\n\
         FROM {base}\n\
         COPY --from=b /arch /arch\n\
         COPY --from=b /marker /marker\n",
        base = base_image()
    );
    context(&[("Dockerfile", dockerfile)])
}

async fn builds_and_pushes(docker_host: &str, platform: &str, uname: &str) {
    let marker = uuid::Uuid::new_v4().to_string();
    let ctx = two_stage_context(&marker);
    let repository = unique_repository("by-digest");
    let job = spec(platform, &repository, &ctx);
    let scratch = tempfile::tempdir().unwrap();

    let outcome = run_job(docker_host, &job, &ctx, &options(scratch.path())).await;
    eprintln!(
        "build+push of {platform} on {docker_host} took {:.1}s",
        outcome.took.as_secs_f64()
    );
    eprintln!("{}", outcome.log());
    let pushed = match &outcome.result {
        Ok(pushed) => pushed.clone(),
        Err(failure) => panic!("{platform} job failed: {failure:?}\n{}", outcome.log()),
    };
    // The daemon-local tag is gone, and so is its record (nothing for a restart to remove).
    assert_eq!(
        manifold_worker::local_tags::LocalTags::new(scratch.path()).recorded(),
        Vec::<String>::new()
    );

    // The log reads like BuildKit's plain progress, including the RUN step's own line.
    assert!(
        outcome
            .lines
            .iter()
            .any(|l| l.starts_with('#') && l.contains("RUN uname -m > /arch")),
        "{}",
        outcome.log()
    );
    assert!(outcome.logged("DONE"), "{}", outcome.log());

    // What was reported is what the registry holds, byte for byte.
    assert!(pushed.digest.starts_with("sha256:") && pushed.digest.len() == 71);
    assert_eq!(pushed.media_type, MANIFEST_MEDIA_TYPE);
    let by_digest = format!("{repository}@{}", pushed.digest);
    let raw = skopeo_raw(&by_digest);
    assert_eq!(
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(&raw))),
        pushed.digest
    );
    assert_eq!(raw.len() as u64, pushed.size);
    let manifest: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(manifest["mediaType"], MANIFEST_MEDIA_TYPE);
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    let layers = manifest["layers"].as_array().unwrap();
    assert!(!layers.is_empty());
    assert!(layers.iter().all(|l| l["mediaType"] == LAYER_MEDIA_TYPE));

    // The image config and the file written by the first stage both say the job's architecture.
    let config = skopeo_config(&by_digest);
    let expected = manifold_proto::Platform::parse(platform).unwrap();
    assert_eq!(config["architecture"], expected.architecture(), "{config}");
    assert_eq!(config["os"], "linux");
    assert_eq!(
        file_in_image(&by_digest, "arch").as_deref().map(str::trim),
        Some(uname),
        "the first stage ran on another architecture"
    );
    assert_eq!(
        file_in_image(&by_digest, "marker")
            .as_deref()
            .map(str::trim),
        Some(marker.as_str())
    );

    // By digest only: no tag in the registry, and the daemon-local tag is gone.
    assert_eq!(tags(&repository), Vec::<String>::new());
    let engine = DockerEngine::connect(docker_host).await.unwrap();
    let local = engine.inspect(&job.local_tag()).await.unwrap_err();
    assert!(local.is_not_found(), "{local}");

    // The same job again finds every layer in the registry and pushes the same manifest.
    let mut again = job.clone();
    again.attempt = 2;
    let second = run_job(docker_host, &again, &ctx, &options(scratch.path())).await;
    eprintln!(
        "cached rebuild+push of {platform} on {docker_host} took {:.1}s",
        second.took.as_secs_f64()
    );
    let second_pushed = second.result.as_ref().unwrap_or_else(|f| panic!("{f:?}"));
    assert_eq!(second_pushed.digest, pushed.digest, "{}", second.log());
    if !containerd_store(docker_host).await {
        assert!(second.logged("already in the registry"), "{}", second.log());
        assert!(
            second.logged("0 mounted, 0 to upload"),
            "nothing compressed or uploaded again: {}",
            second.log()
        );

        // Another repository of the same registry: every blob is mounted from the first, none
        // uploaded, and the image there is complete (skopeo reads its files).
        let other = unique_repository("by-digest-mounted");
        let mut elsewhere = job.clone();
        elsewhere.attempt = 3;
        elsewhere.repository = other.clone();
        let third = run_job(docker_host, &elsewhere, &ctx, &options(scratch.path())).await;
        let third_pushed = third.result.as_ref().unwrap_or_else(|f| panic!("{f:?}"));
        assert_eq!(third_pushed.digest, pushed.digest, "{}", third.log());
        assert!(third.logged("0 already there"), "{}", third.log());
        assert!(third.logged("mounted, 0 to upload"), "{}", third.log());
        assert!(
            third.logged("config ")
                && third.logged(&format!(
                    "mounted from {}",
                    repository.split_once('/').unwrap().1
                )),
            "{}",
            third.log()
        );
        assert!(!third.logged("pushed layer"), "{}", third.log());
        assert_eq!(
            file_in_image(&format!("{other}@{}", pushed.digest), "marker")
                .as_deref()
                .map(str::trim),
            Some(marker.as_str())
        );
    }
    // The push writes nothing to disk but the layer map (and the local tags' folder, empty again
    // as checked above).
    let left: Vec<_> = std::fs::read_dir(scratch.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "layers" && n != "local-tags")
        .collect();
    assert_eq!(left, Vec::<String>::new(), "scratch files were left behind");
}

async fn containerd_store(docker_host: &str) -> bool {
    let engine = DockerEngine::connect(docker_host).await.unwrap();
    engine.describe().await.unwrap().image_store == manifold_worker::docker::ImageStore::Containerd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_containerd_store_buildkit_pushes_amd64_by_digest_only() {
    assert!(containerd_store(&cd_amd64_docker()).await);
    builds_and_pushes(&cd_amd64_docker(), "linux/amd64", "x86_64").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_containerd_store_buildkit_pushes_arm64_under_emulation_by_digest_only() {
    builds_and_pushes(&cd_arm64_docker(), "linux/arm64", "aarch64").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_stage_build_for_amd64_is_pushed_by_digest_only() {
    builds_and_pushes(&amd64_docker(), "linux/amd64", "x86_64").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_stage_build_for_arm64_under_emulation_is_pushed_by_digest_only() {
    builds_and_pushes(&arm64_docker(), "linux/arm64", "aarch64").await;
}
