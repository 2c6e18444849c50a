//! One job, end to end, once its build context is on disk: build with BuildKit under a daemon-local
//! tag, check that the image is of the job's platform, push it by digest, remove the local tag.
//!
//! [`execute`] needs no coordinator: it takes a context tar, a [`JobSpec`] and a [`LogSink`], which
//! is how the crate tests drive real builds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use manifold_proto::{BuildId, JobId, Platform};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::context_cache::ContextDigest;
use crate::docker::{BuildError, BuildRequest, BuiltImage, DockerEngine};
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
    /// Folder for temporary files (the exported image, compressed layers).
    pub scratch_dir: PathBuf,
    /// Docker config file with registry credentials; `None` pushes anonymously.
    pub docker_config: Option<PathBuf>,
    /// Build for this platform instead of the job's. Only tests set it, to make the daemon produce
    /// an image of another platform than the job claims.
    pub build_platform_override: Option<Platform>,
}

/// Builds `job` from the context tar at `context` on `engine`, checks the result's platform and
/// pushes it by digest. The daemon-local tag is removed afterwards, whatever happened.
pub async fn execute(
    engine: &DockerEngine,
    job: &JobSpec,
    context: &Path,
    options: &ExecuteOptions,
    logs: &LogSink,
    cancel: &CancellationToken,
) -> Result<PushedImage, JobFailure> {
    let tag = job.local_tag();
    let build_platform = options
        .build_platform_override
        .as_ref()
        .unwrap_or(&job.platform);
    logs.line(format!(
        "building {} for {build_platform} on {}",
        job.dockerfile,
        engine.host()
    ));
    let request = BuildRequest {
        platform: build_platform,
        dockerfile: &job.dockerfile,
        build_args: &job.build_args,
        target: job.target.as_deref(),
        labels: &job.labels,
        tag: &tag,
    };
    let result = match engine.build(&request, context, logs, cancel).await {
        Ok(()) => check_and_push(engine, job, &tag, options, logs, cancel).await,
        Err(e) => Err(build_failure(e)),
    };
    // The tag may exist even after a failure (e.g. the push failed); remove it in every case.
    if let Err(e) = engine.untag(&tag).await {
        tracing::warn!(%tag, error = %e, "cannot remove the daemon-local tag");
    }
    result
}

async fn check_and_push(
    engine: &DockerEngine,
    job: &JobSpec,
    tag: &str,
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
    let target = PushTarget {
        repository: job.repository.clone(),
        insecure: job.insecure_registry,
        docker_config: options.docker_config.clone(),
    };
    let pushed = push::push_image(
        engine.export(&built.id),
        &target,
        &options.scratch_dir,
        logs,
        cancel,
    )
    .await
    .map_err(push_failure)?;
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

fn build_failure(error: BuildError) -> JobFailure {
    match error {
        BuildError::Cancelled => JobFailure::cancelled(),
        e @ BuildError::Failed { .. } => JobFailure::permanent(e.to_string()),
        e @ (BuildError::Daemon(_) | BuildError::Context { .. }) => {
            JobFailure::retryable(e.to_string())
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn image(os: &str, arch: &str, variant: &str) -> BuiltImage {
        BuiltImage {
            id: "sha256:x".into(),
            os: os.into(),
            architecture: arch.into(),
            variant: variant.into(),
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
}
