//! One job, end to end, once its build context is on disk: build with BuildKit through a session,
//! get the image into the job's repository by digest, and check it is of the job's platform.
//!
//! How the image reaches the registry depends on the daemon's image store: with the containerd
//! store BuildKit pushes it by digest itself, and the worker reads the pushed config back; with a
//! graphdriver the image goes into the daemon under a local tag, is checked, and the daemon pushes
//! it through the worker's loopback front ([`crate::push_proxy`]), or, when the daemon cannot
//! reach it, [`crate::push`] pushes it from `docker save` (what the registry has or can mount is
//! reused either way), and the tags are removed. Either way the pushed config is read back from the registry
//! for the platform check.
//!
//! [`execute`] needs no coordinator: it takes a context tar, a [`JobSpec`] and a [`LogSink`], which
//! is how the crate tests drive real builds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use manifold_proto::{BuildFlags, BuildId, JobId, Platform, Secrets};
use manifold_registry::RegistryLogin;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::buildkit::{self, BuildError, Endpoint, Output, SessionContent, Solve};
use crate::context_cache::ContextDigest;
use crate::docker::{BuiltImage, DockerEngine, ImageStore};
use crate::layers::LayerMap;
use crate::push::{self, PushError, PushTarget, PushedImage};

/// Where a job's human-readable output lines go (the connection batches them into `JobLog`s).
#[derive(Clone, Debug)]
pub struct LogSink {
    tx: mpsc::UnboundedSender<String>,
}

impl LogSink {
    /// A sink and the receiver its lines arrive on.
    pub fn channel() -> (Self, mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { tx }, rx)
    }

    /// A sink whose lines go nowhere.
    pub fn discard() -> Self {
        Self::channel().0
    }

    /// Emits one line (without its newline). Lines sent after the receiver is gone are dropped.
    pub fn line(&self, line: impl Into<String>) {
        let _ = self.tx.send(line.into());
    }
}

/// Everything needed to build and push one platform's image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobSpec {
    /// The job, stable across attempts.
    pub job_id: JobId,
    /// Which attempt this is.
    pub attempt: u32,
    /// The build the job belongs to.
    pub build_id: Option<BuildId>,
    /// The platform the image must be for.
    pub platform: Platform,
    /// Digest of the build context tar.
    pub context_digest: ContextDigest,
    /// Path of the Dockerfile inside the context.
    pub dockerfile: String,
    /// `--build-arg` values.
    pub build_args: BTreeMap<String, String>,
    /// Multi-stage target; `None` builds the last stage.
    pub target: Option<String>,
    /// Labels set on the image.
    pub labels: BTreeMap<String, String>,
    /// Repository the image is pushed to by digest, e.g. `127.0.0.1:5000/team/app`.
    pub repository: String,
    /// Talk plain HTTP to the registry.
    pub insecure_registry: bool,
    /// `--no-cache`, `--pull`, caches, network and the other buildx flags.
    pub flags: BuildFlags,
    /// `--secret` values by id: in memory only, offered to BuildKit through the session.
    pub secrets: Secrets,
    /// Registry logins the coordinator holds for the build's team: used for their registries
    /// instead of the worker's Docker config, in memory only.
    pub registry_logins: Vec<RegistryLogin>,
}

impl JobSpec {
    /// The daemon-local tag of this attempt's image; it never reaches a registry.
    pub fn local_tag(&self) -> String {
        format!("manifold-local/{}:{}", self.job_id, self.attempt)
    }
}

/// How a job failed, as reported in `JobResult.failure`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobFailure {
    /// What went wrong, for people.
    pub message: String,
    /// Whether running the job again (maybe elsewhere) could succeed.
    pub retryable: bool,
    /// Whether the job stopped because it was cancelled.
    pub cancelled: bool,
    /// Whether the worker did not start the job at all (draining, no free slot, daemon
    /// unhealthy): the coordinator requeues it without counting an attempt.
    pub refused: bool,
}

impl JobFailure {
    /// A failure that will fail again the same way (a RUN step exited non-zero...).
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
            cancelled: false,
            refused: false,
        }
    }

    /// A failure of the infrastructure (daemon, registry, coordinator), worth another attempt.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
            cancelled: false,
            refused: false,
        }
    }

    /// The job was cancelled.
    pub fn cancelled() -> Self {
        Self {
            message: "cancelled by the coordinator".into(),
            retryable: false,
            cancelled: true,
            refused: false,
        }
    }

    /// The worker cannot start the job now (draining, no free slot, daemon unhealthy); another
    /// worker, or this one later, can.
    pub fn refused(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
            cancelled: false,
            refused: true,
        }
    }
}

/// Settings of job execution that are not part of the job.
#[derive(Clone, Debug)]
pub struct ExecuteOptions {
    /// What this worker knows of the layers it pushed (graphdriver engines).
    pub layers: LayerMap,
    /// The daemon-local tags it made and has not removed yet (graphdriver engines).
    pub local_tags: crate::local_tags::LocalTags,
    /// Docker config file with registry credentials; `None` pushes anonymously.
    pub docker_config: Option<PathBuf>,
    /// The loopback front a graphdriver daemon pushes through (`--graphdriver-push daemon`);
    /// `None` pushes by `docker save` ([`crate::push`]).
    pub push_proxy: Option<crate::push_proxy::PushProxy>,
    /// Build for this platform instead of the job's. Only tests set it, to make the daemon produce
    /// an image of another platform than the job claims.
    pub build_platform_override: Option<Platform>,
}

/// Builds `job` from the context tar at `context` (and those of its `--build-context NAME=DIR`s
/// at `named`) on `engine` through its BuildKit, gets the
/// image into the job's repository by digest and checks its platform. Nothing stays tagged in the
/// daemon, whatever happened.
pub async fn execute(
    engine: &DockerEngine,
    job: &JobSpec,
    context: &Path,
    named: &BTreeMap<String, PathBuf>,
    options: &ExecuteOptions,
    logs: &LogSink,
    cancel: &CancellationToken,
) -> Result<PushedImage, JobFailure> {
    let store = engine
        .describe()
        .await
        .map_err(|e| JobFailure::retryable(e.to_string()))?
        .image_store;
    cache_exports_supported(store, &job.flags.cache_to, engine.host())
        .and_then(|()| attestations_supported(store, &job.flags.attests, engine.host()))
        .map_err(JobFailure::permanent)?;
    let endpoint = Endpoint::moby(engine.host()).map_err(JobFailure::permanent)?;
    let build_platform = options
        .build_platform_override
        .as_ref()
        .unwrap_or(&job.platform);
    logs.line(format!(
        "building {} for {build_platform} on {} ({store})",
        job.dockerfile,
        engine.host()
    ));
    let tag = job.local_tag();
    let output = match store {
        ImageStore::Containerd => Output::PushByDigest {
            repository: job.repository.clone(),
            insecure: job.insecure_registry,
        },
        ImageStore::Graphdriver => Output::DaemonTag { tag: tag.clone() },
    };
    let solve = Solve {
        platform: build_platform,
        dockerfile: &job.dockerfile,
        build_args: &job.build_args,
        target: job.target.as_deref(),
        labels: &job.labels,
        flags: &job.flags,
        output,
    };
    let tar = context.to_owned();
    let dockerfile = job.dockerfile.clone();
    let view = tokio::task::spawn_blocking(move || crate::context_view::plan(&tar, &dockerfile))
        .await
        .map_err(|e| JobFailure::retryable(format!("reading the context stopped: {e}")))?
        .map_err(|e| JobFailure::permanent(e.to_string()))?;
    let content = SessionContent {
        view,
        docker_config: options.docker_config.clone(),
        registry_logins: job.registry_logins.clone(),
        secrets: job.secrets.clone(),
        session_id: uuid::Uuid::new_v4().simple().to_string(),
        // In the order the solve request numbers them (by name).
        named: job
            .flags
            .uploaded_contexts()
            .map(|(name, _)| {
                named.get(name).cloned().ok_or_else(|| {
                    JobFailure::retryable(format!(
                        "the context of --build-context {name} was not downloaded"
                    ))
                })
            })
            .collect::<Result<_, _>>()?,
    };
    let target = PushTarget {
        repository: job.repository.clone(),
        insecure: job.insecure_registry,
        docker_config: options.docker_config.clone(),
        login: push::parse_repository(&job.repository)
            .ok()
            .and_then(|r| RegistryLogin::find(&job.registry_logins, r.registry()).cloned()),
    };
    if store == ImageStore::Graphdriver
        && let Err(e) = options.local_tags.record(&tag)
    {
        tracing::warn!(%tag, error = %e, "cannot record the local tag: a crash would leave it");
    }
    let built = buildkit::build(&endpoint, &solve, content, logs, cancel).await;
    match store {
        ImageStore::Containerd => {
            let solved = built.map_err(build_failure)?;
            let pushed =
                pushed_by_buildkit(&solved.exporter_response).map_err(JobFailure::retryable)?;
            let pushed = crate::pushed_index::unpack(&target, pushed, logs)
                .await
                .map_err(push_failure)?;
            let config = push::read_pushed(&target, &pushed, logs)
                .await
                .map_err(push_failure)?;
            let image = BuiltImage {
                id: config.digest,
                os: config.os,
                architecture: config.architecture,
                variant: config.variant,
                diff_ids: Vec::new(),
            };
            check_platform(&image, &job.platform, engine.host()).map_err(JobFailure::permanent)?;
            logs.line(format!(
                "pushed {}@{} ({} bytes, {}) for {}, by buildkit",
                job.repository, pushed.digest, pushed.size, pushed.media_type, job.platform
            ));
            for a in &pushed.attestations {
                logs.line(format!(
                    "pushed {}@{} ({} bytes): attestations of {}",
                    job.repository, a.digest, a.size, pushed.digest
                ));
            }
            Ok(pushed)
        }
        ImageStore::Graphdriver => {
            let result = match built {
                Ok(_) => check_and_push(engine, job, &tag, &target, options, logs, cancel).await,
                Err(e) => Err(build_failure(e)),
            };
            // The tag may exist even after a failure (e.g. the push failed); remove it in every case.
            match engine.untag(&tag).await {
                Ok(()) => options.local_tags.forget(&tag),
                Err(e) => tracing::warn!(%tag, error = %e, "cannot remove the daemon-local tag"),
            }
            result
        }
    }
}

/// The manifest BuildKit's image exporter pushed, from its response: `containerimage.digest` and
/// the descriptor (base64 JSON) with its size and media type.
pub fn pushed_by_buildkit(
    response: &std::collections::HashMap<String, String>,
) -> Result<PushedImage, String> {
    use base64::Engine as _;
    let digest = response
        .get("containerimage.digest")
        .ok_or("buildkit pushed the image but did not say its digest (no containerimage.digest)")?;
    let descriptor = response
        .get("containerimage.descriptor")
        .ok_or("buildkit did not return the pushed descriptor (no containerimage.descriptor)")?;
    let json = base64::engine::general_purpose::STANDARD
        .decode(descriptor)
        .map_err(|e| format!("buildkit's containerimage.descriptor is not base64: {e}"))?;
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Descriptor {
        media_type: String,
        digest: String,
        size: u64,
    }
    let d: Descriptor = serde_json::from_slice(&json)
        .map_err(|e| format!("buildkit's containerimage.descriptor is not understood: {e}"))?;
    if &d.digest != digest {
        return Err(format!(
            "buildkit reported digest {digest} but a descriptor of {}",
            d.digest
        ));
    }
    Ok(PushedImage {
        digest: d.digest,
        size: d.size,
        media_type: d.media_type,
        attestations: Vec::new(),
    })
}

async fn check_and_push(
    engine: &DockerEngine,
    job: &JobSpec,
    tag: &str,
    target: &PushTarget,
    options: &ExecuteOptions,
    logs: &LogSink,
    cancel: &CancellationToken,
) -> Result<PushedImage, JobFailure> {
    let built = engine.inspect(tag).await.map_err(|e| {
        if e.is_not_found() {
            JobFailure::retryable(format!(
                "the build ended but the daemon at {} has no image {tag}: {e}",
                engine.host()
            ))
        } else {
            JobFailure::retryable(e.to_string())
        }
    })?;
    check_platform(&built, &job.platform, engine.host()).map_err(JobFailure::permanent)?;
    logs.line(format!("built image {} for {}", built.id, job.platform));
    let through_daemon = match &options.push_proxy {
        Some(proxy) if proxy.unreachable().is_none() => {
            match crate::push_proxy::push_through_daemon(
                engine,
                &built,
                target,
                proxy,
                &options.local_tags,
                logs,
                cancel,
            )
            .await
            {
                Ok(pushed) => Some(pushed),
                Err(crate::push_proxy::DaemonPush::Unreachable(why)) => {
                    logs.line(format!(
                        "the daemon cannot reach this worker's push front at {} ({why}); pushing by docker save from now on",
                        proxy.addr()
                    ));
                    proxy.mark_unreachable(why);
                    None
                }
                Err(crate::push_proxy::DaemonPush::Failed(e)) => return Err(push_failure(e)),
            }
        }
        _ => None,
    };
    let pushed = match through_daemon {
        Some(pushed) => pushed,
        None => push::push_image(engine, &built, target, &options.layers, logs, cancel)
            .await
            .map_err(push_failure)?,
    };
    let config = push::read_pushed(target, &pushed, logs)
        .await
        .map_err(push_failure)?;
    let image = BuiltImage {
        id: config.digest,
        os: config.os,
        architecture: config.architecture,
        variant: config.variant,
        diff_ids: Vec::new(),
    };
    check_platform(&image, &job.platform, engine.host()).map_err(JobFailure::permanent)?;
    logs.line(format!(
        "pushed {}@{} ({} bytes, {})",
        job.repository, pushed.digest, pushed.size, pushed.media_type
    ));
    Ok(pushed)
}

/// Compares the platform an image's config declares with the job's; the error names both.
pub fn check_platform(
    built: &BuiltImage,
    expected: &Platform,
    docker_host: &str,
) -> Result<(), String> {
    let variant = Some(built.variant.as_str()).filter(|v| !v.is_empty());
    match Platform::from_parts(&built.os, &built.architecture, variant) {
        Ok(actual) if actual.matches(expected) => Ok(()),
        Ok(actual) => Err(format!(
            "built image is {actual} but the job is for {expected}: the daemon at {docker_host} produced another architecture (a local base image of the wrong architecture?)"
        )),
        Err(_) => Err(format!(
            "built image declares os `{}`, architecture `{}`, variant `{}`, which is no known platform, but the job is for {expected}: check the base image built on the daemon at {docker_host}",
            built.os, built.architecture, built.variant
        )),
    }
}

/// The failure to report when `failure` says a disk of this worker is full (`no space left on
/// device`, ENOSPC, or a disk quota, as the kernel, BuildKit and the engine word it): retryable,
/// since another worker has room, and naming what to do here. `None` for any other failure, and
/// for a RUN step's own process failing (its message holds the command a tenant wrote, which is
/// no evidence about the disk).
pub fn out_of_disk(failure: &JobFailure) -> Option<JobFailure> {
    let message = failure.message.to_ascii_lowercase();
    let says_full = [
        "no space left on device",
        "disk quota exceeded",
        "os error 28",
    ]
    .iter()
    .any(|m| message.contains(m));
    (says_full && !failure.cancelled && !message.contains("did not complete successfully")).then(
        || {
            JobFailure::retryable(format!(
                "this worker ran out of disk: {}; the job is retried on another worker. Free disk on this worker (`docker builder prune`, a smaller --context-cache-max-size or --cache-max-size) or give it a larger one",
                failure.message
            ))
        },
    )
}

fn build_failure(error: BuildError) -> JobFailure {
    match error {
        BuildError::Cancelled => JobFailure::cancelled(),
        e @ BuildError::Failed { .. } => JobFailure::permanent(e.to_string()),
        e @ BuildError::Engine { .. } => JobFailure::retryable(e.to_string()),
    }
}

fn push_failure(error: PushError) -> JobFailure {
    match error {
        PushError::Cancelled => JobFailure::cancelled(),
        e => JobFailure {
            retryable: e.is_retryable(),
            message: format!("push failed: {e}"),
            cancelled: false,
            refused: false,
        },
    }
}

/// Whether an engine of image store `store` can export the `--cache-to` caches asked for. The
/// BuildKit of a graphdriver engine has only the `inline` cache exporter (moby registers the
/// others for its containerd image store only); the engine would answer `unknown cache
/// exporter`, so the error says which engine mode can instead.
fn cache_exports_supported(
    store: ImageStore,
    cache_to: &[manifold_proto::build_flags::CacheSpec],
    host: &str,
) -> Result<(), String> {
    let unsupported = cache_to.iter().find(|c| c.kind != "inline");
    match (store, unsupported) {
        (ImageStore::Graphdriver, Some(cache)) => Err(format!(
            "--cache-to type={}: the Docker engine at {host} keeps images in a graphdriver store, whose BuildKit exports only type=inline caches; run this build on workers whose engine uses the containerd image store (Docker Desktop's default; on Docker Engine, \"features\": {{\"containerd-snapshotter\": true}} in daemon.json), or use --cache-to type=inline",
            cache.kind
        )),
        _ => Ok(()),
    }
}

/// A graphdriver engine cannot attach attestations: its `moby` exporter stores one image in the
/// daemon, with nowhere to put an attestation manifest (buildx refuses the same: "Attestation is
/// not supported for the docker driver"). Only an attestation asked for fails; the default
/// provenance is simply not added there, as buildx adds none.
fn attestations_supported(
    store: ImageStore,
    attests: &[manifold_proto::build_flags::Attest],
    host: &str,
) -> Result<(), String> {
    match (store, attests.iter().find(|a| !a.disabled)) {
        (ImageStore::Graphdriver, Some(a)) => Err(format!(
            "--attest {}: the Docker engine at {host} keeps images in a graphdriver store, which cannot attach attestations (provenance, SBOM) to an image; run this build on workers whose engine uses the containerd image store (Docker Desktop's default; on Docker Engine, \"features\": {{\"containerd-snapshotter\": true}} in daemon.json), or leave out --provenance/--sbom/--attest",
            a.to_csv()
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(os: &str, arch: &str, variant: &str) -> BuiltImage {
        BuiltImage {
            id: "sha256:x".into(),
            os: os.into(),
            architecture: arch.into(),
            variant: variant.into(),
            diff_ids: Vec::new(),
        }
    }

    #[track_caller]
    fn check(built: BuiltImage, job: &str, expected_error: Option<&str>) {
        let job: Platform = job.parse().unwrap();
        let got = check_platform(&built, &job, "unix:///d.sock");
        match (got, expected_error) {
            (Ok(()), None) => {}
            (Err(e), Some(want)) => assert_eq!(e, want),
            (got, want) => panic!("got {got:?}, wanted error {want:?}"),
        }
    }

    #[test]
    fn the_built_platform_must_be_the_jobs_after_normalising() {
        check(image("linux", "amd64", ""), "linux/amd64", None);
        check(image("linux", "arm64", ""), "linux/arm64", None);
        check(image("linux", "arm64", "v8"), "linux/arm64", None);
        check(image("linux", "aarch64", ""), "linux/arm64", None);
        check(image("linux", "arm", "v7"), "linux/arm/v7", None);
        check(
            image("linux", "arm64", ""),
            "linux/amd64",
            Some(
                "built image is linux/arm64 but the job is for linux/amd64: the daemon at unix:///d.sock produced another architecture (a local base image of the wrong architecture?)",
            ),
        );
        check(
            image("linux", "arm", "v6"),
            "linux/arm/v7",
            Some(
                "built image is linux/arm/v6 but the job is for linux/arm/v7: the daemon at unix:///d.sock produced another architecture (a local base image of the wrong architecture?)",
            ),
        );
        check(
            image("", "", ""),
            "linux/amd64",
            Some(
                "built image declares os ``, architecture ``, variant ``, which is no known platform, but the job is for linux/amd64: check the base image built on the daemon at unix:///d.sock",
            ),
        );
    }

    #[test]
    fn running_out_of_disk_is_retryable_elsewhere_and_says_so() {
        #[track_caller]
        fn check(failure: JobFailure, out_of_disk: bool) {
            let got = super::out_of_disk(&failure);
            assert_eq!(got.is_some(), out_of_disk, "{failure:?}");
            if let Some(got) = got {
                assert!(got.retryable && !got.cancelled && !got.refused, "{got:?}");
                assert!(
                    got.message.starts_with("this worker ran out of disk: ")
                        && got.message.contains(&failure.message)
                        && got.message.contains("retried on another worker"),
                    "{got:?}"
                );
            }
        }
        // BuildKit's snapshotter and exporter, the engine, the context cache.
        check(
            build_failure(BuildError::Failed {
                step: Some("[2/3] COPY big /big".into()),
                message: "failed to copy files: copy file range failed: no space left on device"
                    .into(),
            }),
            true,
        );
        check(build_failure(BuildError::Engine {
            host: "unix:///var/run/docker.sock".into(),
            action: "solving".into(),
            message: "failed to solve: write /var/lib/docker/buildkit/content/ingest/x/data: no space left on device".into(),
        }), true);
        check(
            JobFailure::retryable(
                "cannot write the context cache at /c/contexts/sha256/.download-1: No space left on device (os error 28); check the --cache-dir folder",
            ),
            true,
        );
        check(
            JobFailure::permanent(
                "push failed: registry 127.0.0.1:5000 answered 500: disk quota exceeded",
            ),
            true,
        );
        // A RUN step whose own process fails, whatever it printed: the tenant's build fails.
        check(build_failure(BuildError::Failed {
            step: Some("[2/2] RUN echo no space left on device; exit 1".into()),
            message: "process \"/bin/sh -c echo no space left on device; exit 1\" did not complete successfully: exit code: 1".into(),
        }), false);
        check(
            build_failure(BuildError::Failed {
                step: Some("[2/2] RUN exit 3".into()),
                message: "exit code: 3".into(),
            }),
            false,
        );
        check(JobFailure::cancelled(), false);
    }

    #[test]
    fn failures_say_whether_another_attempt_can_help() {
        let build = build_failure(BuildError::Failed {
            step: Some("[2/2] RUN exit 3".into()),
            message: "exit code: 3".into(),
        });
        assert_eq!(
            build,
            JobFailure::permanent("build failed at step `[2/2] RUN exit 3`: exit code: 3")
        );
        assert!(build_failure(BuildError::Cancelled).cancelled);
        let push = push_failure(PushError::InvalidRepository {
            repository: "x:1".into(),
            reason: "it has a tag".into(),
        });
        assert!(
            !push.retryable
                && push
                    .message
                    .starts_with("push failed: bad repository `x:1`")
        );
    }

    #[test]
    fn a_graphdriver_engine_exports_only_inline_caches_and_says_which_engine_can() {
        use manifold_proto::build_flags::CacheSpec;
        let cache = |spec: &str| CacheSpec::parse("--cache-to", spec).unwrap();
        let registry = cache("type=registry,ref=r.example/team/cache:main");
        let inline = cache("type=inline");
        let local = cache("type=local,dest=/tmp/c");
        let host = "unix:///var/run/docker.sock";
        for (store, caches, ok) in [
            (ImageStore::Containerd, vec![registry.clone()], true),
            (
                ImageStore::Containerd,
                vec![local.clone(), inline.clone()],
                true,
            ),
            (ImageStore::Graphdriver, vec![], true),
            (ImageStore::Graphdriver, vec![inline.clone()], true),
            (
                ImageStore::Graphdriver,
                vec![inline.clone(), registry.clone()],
                false,
            ),
            (ImageStore::Graphdriver, vec![local.clone()], false),
        ] {
            let result = cache_exports_supported(store, &caches, host);
            assert_eq!(result.is_ok(), ok, "{store:?} {caches:?}: {result:?}");
            if let Err(e) = result {
                assert!(e.contains(host), "{e}");
                assert!(e.contains("containerd image store"), "{e}");
                assert!(e.contains("containerd-snapshotter"), "{e}");
            }
        }
    }

    #[test]
    fn a_graphdriver_engine_attaches_no_attestation_and_says_which_engine_can() {
        use manifold_proto::build_flags::Attest;
        let host = "unix:///var/run/docker.sock";
        let sbom = Attest::parse("--attest", "type=sbom").unwrap();
        let off = Attest::shorthand("--provenance", "provenance", "false").unwrap();
        for (store, attests, ok) in [
            (ImageStore::Containerd, vec![sbom.clone()], true),
            (ImageStore::Graphdriver, vec![], true),
            (ImageStore::Graphdriver, vec![off.clone()], true),
            (ImageStore::Graphdriver, vec![off, sbom], false),
        ] {
            let result = attestations_supported(store, &attests, host);
            assert_eq!(result.is_ok(), ok, "{store:?} {attests:?}: {result:?}");
            if let Err(e) = result {
                assert!(e.contains("--attest type=sbom"), "{e}");
                assert!(e.contains(host), "{e}");
                assert!(e.contains("containerd-snapshotter"), "{e}");
            }
        }
    }
}
