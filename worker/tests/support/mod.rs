//! What the crate tests share: the addresses of the real daemons and registry, build contexts,
//! job specs, running a job with its log lines, and independent checks of the registry with skopeo.
#![allow(dead_code)]

pub mod coordinator;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use manifold_proto::{JobId, Platform};
use manifold_worker::context_cache::ContextDigest;
use manifold_worker::docker::DockerEngine;
use manifold_worker::job::{self, ExecuteOptions, JobFailure, JobSpec, LogSink};
use manifold_worker::push::PushedImage;
use sha2::{Digest as _, Sha256};
use tokio_util::sync::CancellationToken;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// The registry, e.g. `127.0.0.1:5000`.
pub fn registry() -> String {
    env_or("MANIFOLD_TEST_REGISTRY", "127.0.0.1:5000")
}

/// The multi-arch base image.
pub fn base_image() -> String {
    env_or("MANIFOLD_TEST_BASE_IMAGE", "127.0.0.1:5000/base/busybox:1")
}

/// The native amd64 daemon.
pub fn amd64_docker() -> String {
    env_or("MANIFOLD_TEST_AMD64_DOCKER", "unix:///var/run/docker.sock")
}

/// The daemon that builds arm64 under QEMU.
pub fn arm64_docker() -> String {
    env_or(
        "MANIFOLD_TEST_ARM64_DOCKER",
        "unix:///var/tmp/md2/docker.sock",
    )
}

/// The native amd64 daemon with the containerd image store.
pub fn cd_amd64_docker() -> String {
    env_or(
        "MANIFOLD_TEST_CD_AMD64_DOCKER",
        "unix:///var/tmp/md3/docker.sock",
    )
}

/// The daemon with the containerd image store that builds arm64 under QEMU.
pub fn cd_arm64_docker() -> String {
    env_or(
        "MANIFOLD_TEST_CD_ARM64_DOCKER",
        "unix:///var/tmp/md4/docker.sock",
    )
}

/// A repository nobody else uses, e.g. `127.0.0.1:5000/test/worker-<uuid>`.
pub fn unique_repository(what: &str) -> String {
    format!("{}/test/{what}-{}", registry(), uuid::Uuid::new_v4())
}

/// A build context tar holding `files`, and its sha256 digest.
pub struct Context {
    _dir: tempfile::TempDir,
    /// The tar file.
    pub path: PathBuf,
    /// `sha256:<hex>` of the tar.
    pub digest: ContextDigest,
}

/// Writes a context tar with the given (path, contents) files.
pub fn context(files: &[(&str, String)]) -> Context {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("context.tar");
    let mut builder = tar::Builder::new(std::fs::File::create(&path).unwrap());
    for (name, contents) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(contents.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(1_700_000_000);
        header.set_cksum();
        builder
            .append_data(&mut header, name, contents.as_bytes())
            .unwrap();
    }
    builder.into_inner().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let digest =
        ContextDigest::parse(&format!("sha256:{}", hex::encode(Sha256::digest(&bytes)))).unwrap();
    Context {
        _dir: dir,
        path,
        digest,
    }
}

/// A job for `platform` pushing to `repository`.
pub fn spec(platform: &str, repository: &str, context: &Context) -> JobSpec {
    JobSpec {
        job_id: JobId::new(),
        attempt: 1,
        build_id: None,
        platform: Platform::parse(platform).unwrap(),
        context_digest: context.digest.clone(),
        dockerfile: "Dockerfile".into(),
        build_args: BTreeMap::new(),
        target: None,
        labels: BTreeMap::new(),
        repository: repository.to_owned(),
        insecure_registry: true,
        flags: Default::default(),
        secrets: Default::default(),
        registry_logins: Vec::new(),
    }
}

/// Options with a private cache folder (the layer map) and no credentials.
pub fn options(cache: &Path) -> ExecuteOptions {
    ExecuteOptions {
        layers: manifold_worker::layers::LayerMap::new(cache),
        local_tags: manifold_worker::local_tags::LocalTags::new(cache),
        docker_config: None,
        push_proxy: None,
        build_platform_override: None,
    }
}

/// What one job run gave.
pub struct Outcome {
    pub result: Result<PushedImage, JobFailure>,
    pub lines: Vec<String>,
    pub took: Duration,
}

impl Outcome {
    /// Whether some log line contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.lines.iter().any(|l| l.contains(needle))
    }

    /// The log, for assertion messages.
    pub fn log(&self) -> String {
        self.lines.join("\n")
    }
}

/// Runs `spec` on the daemon at `docker_host` and collects its log lines.
pub async fn run_job(
    docker_host: &str,
    spec: &JobSpec,
    context: &Context,
    options: &ExecuteOptions,
) -> Outcome {
    let engine = DockerEngine::connect(docker_host)
        .await
        .unwrap_or_else(|e| panic!("the test daemon must be up (deploy/dev-env.sh): {e}"));
    let (logs, mut rx) = LogSink::channel();
    let collector = tokio::spawn(async move {
        let mut lines = Vec::new();
        while let Some(line) = rx.recv().await {
            lines.push(line);
        }
        lines
    });
    let started = Instant::now();
    let result = job::execute(
        &engine,
        spec,
        &context.path,
        &Default::default(),
        options,
        &logs,
        &CancellationToken::new(),
    )
    .await;
    let took = started.elapsed();
    drop(logs);
    Outcome {
        result,
        lines: collector.await.unwrap(),
        took,
    }
}

/// Runs a command and returns (success, stdout, stderr).
pub fn command(program: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `skopeo inspect --raw` of `reference`: the exact bytes the registry serves.
pub fn skopeo_raw(reference: &str) -> Vec<u8> {
    let (ok, out, err) = command(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{reference}"),
        ],
    );
    assert!(ok, "skopeo inspect --raw {reference} failed: {err}");
    out.into_bytes()
}

/// `skopeo inspect --config` of `reference`, as JSON.
pub fn skopeo_config(reference: &str) -> serde_json::Value {
    let (ok, out, err) = command(
        "skopeo",
        &[
            "inspect",
            "--config",
            "--tls-verify=false",
            &format!("docker://{reference}"),
        ],
    );
    assert!(ok, "skopeo inspect --config {reference} failed: {err}");
    serde_json::from_str(&out).unwrap()
}

/// The tags of `repository`: empty when the registry says the repository has none or is unknown.
pub fn tags(repository: &str) -> Vec<String> {
    let (ok, out, err) = command(
        "skopeo",
        &[
            "list-tags",
            "--tls-verify=false",
            &format!("docker://{repository}"),
        ],
    );
    if !ok {
        assert!(
            err.contains("NAME_UNKNOWN") || err.contains("name unknown") || err.contains("404"),
            "skopeo list-tags {repository} failed for another reason than an unknown name: {err}"
        );
        return Vec::new();
    }
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    json["Tags"]
        .as_array()
        .map(|tags| {
            tags.iter()
                .map(|t| t.as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The contents of `file` in the image `reference`, read from its layers as pulled by skopeo.
pub fn file_in_image(reference: &str, file: &str) -> Option<String> {
    let dir = tempfile::tempdir().unwrap();
    let dest = format!("dir:{}", dir.path().display());
    let (ok, _, err) = command(
        "skopeo",
        &[
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{reference}"),
            &dest,
        ],
    );
    assert!(ok, "skopeo copy {reference} failed: {err}");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("manifest.json")).unwrap()).unwrap();
    let mut found = None;
    for layer in manifest["layers"].as_array().unwrap() {
        let digest = layer["digest"].as_str().unwrap();
        let blob = std::fs::read(dir.path().join(digest.trim_start_matches("sha256:"))).unwrap();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&blob[..]));
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            if path.trim_start_matches("./") == file.trim_start_matches('/') {
                let mut text = String::new();
                entry.read_to_string(&mut text).unwrap();
                found = Some(text);
            }
        }
    }
    found
}
