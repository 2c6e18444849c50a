//! The Docker daemon a worker drives, through bollard: what it builds (platform, version), BuildKit
//! builds with their progress, inspection of what was built, `docker save` export, and untagging.
//!
//! Architecture invariant: builds always go through BuildKit. The classic builder ignores the
//! requested platform for local base images and breaks multi-stage builds for an emulated platform.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use bollard::Docker;
use bollard::models::BuildInfoAux;
use bollard::query_parameters::{
    BuildImageOptionsBuilder, BuilderVersion, RemoveImageOptionsBuilder,
};
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use manifold_proto::Platform;
use tokio_util::sync::CancellationToken;

use crate::job::LogSink;
use crate::progress::ProgressPrinter;

/// How long bollard waits for the daemon to start answering one request (not for a whole build).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(600);

/// A connection to one Docker daemon.
#[derive(Clone, Debug)]
pub struct DockerEngine {
    docker: Docker,
    host: String,
}

/// What a daemon says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonInfo {
    /// The platform it builds natively (`OSType`/`Architecture` of `docker info`, normalised).
    pub platform: Platform,
    /// The daemon's version, e.g. `20.10.24+dfsg1`.
    pub docker_version: String,
}

/// A failure to talk to the daemon: the daemon is down, unreachable or refused a request.
#[derive(Debug, thiserror::Error)]
#[error(
    "docker daemon at {host}: {action} failed: {}",
    crate::error_chain(source)
)]
pub struct DockerError {
    /// The daemon's address.
    pub host: String,
    /// What was being done, e.g. `inspect image manifold-local/...`.
    pub action: String,
    /// bollard's error.
    #[source]
    pub source: bollard::errors::Error,
}

impl DockerError {
    /// Whether the daemon answered with a client error (4xx): retrying the same request elsewhere
    /// would fail the same way.
    pub fn is_client_error(&self) -> bool {
        matches!(
            self.source,
            bollard::errors::Error::DockerResponseServerError { status_code, .. } if (400..500).contains(&status_code)
        )
    }

    /// Whether the daemon said the object does not exist (404).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.source,
            bollard::errors::Error::DockerResponseServerError {
                status_code: 404,
                ..
            }
        )
    }
}

/// Why a build did not produce an image.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The build itself failed (a RUN step exited non-zero, a bad Dockerfile...): deterministic.
    #[error("build failed{}: {message}", step.as_ref().map(|s| format!(" at step `{s}`")).unwrap_or_default())]
    Failed {
        /// The failing step's name, when BuildKit said which one.
        step: Option<String>,
        /// The error, as BuildKit or the daemon put it.
        message: String,
    },
    /// The daemon could not be reached or broke off: not the build's fault.
    #[error(transparent)]
    Daemon(#[from] DockerError),
    /// The build context file could not be read.
    #[error("cannot read the build context {path}: {source}")]
    Context {
        /// The context tar.
        path: std::path::PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The build was cancelled before it ended.
    #[error("build cancelled")]
    Cancelled,
}

/// What to build; the context is a tar file given separately.
#[derive(Clone, Debug)]
pub struct BuildRequest<'a> {
    /// The platform passed to BuildKit.
    pub platform: &'a Platform,
    /// Path of the Dockerfile inside the context.
    pub dockerfile: &'a str,
    /// `--build-arg` values.
    pub build_args: &'a BTreeMap<String, String>,
    /// Multi-stage target; `None` builds the last stage.
    pub target: Option<&'a str>,
    /// Labels set on the image.
    pub labels: &'a BTreeMap<String, String>,
    /// The daemon-local tag the result gets.
    pub tag: &'a str,
}

/// The image a build left in the daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuiltImage {
    /// Image id (`sha256:...`, the digest of its config).
    pub id: String,
    /// `os`, `architecture` and `variant` of its config.
    pub os: String,
    /// See `os`.
    pub architecture: String,
    /// See `os`; empty when absent.
    pub variant: String,
}

impl DockerEngine {
    /// Connects to the daemon at `host` (`unix://...`, `tcp://...`, `http://...`) and negotiates the
    /// API version.
    pub async fn connect(host: &str) -> Result<Self, DockerError> {
        let err = |source| DockerError {
            host: host.to_owned(),
            action: "connect".into(),
            source,
        };
        let docker = Docker::connect_with_host(host)
            .map_err(err)?
            .with_timeout(REQUEST_TIMEOUT)
            .negotiate_version()
            .await
            .map_err(err)?;
        Ok(Self {
            docker,
            host: host.to_owned(),
        })
    }

    /// A client for the daemon at `host` that has not talked to it yet (no version negotiation):
    /// every call fails as "daemon unreachable" while the daemon is down.
    pub fn lazy(host: &str) -> Result<Self, DockerError> {
        let docker = Docker::connect_with_host(host)
            .map_err(|source| DockerError {
                host: host.to_owned(),
                action: "connect".into(),
                source,
            })?
            .with_timeout(REQUEST_TIMEOUT);
        Ok(Self {
            docker,
            host: host.to_owned(),
        })
    }

    /// The daemon's address, as given to [`DockerEngine::connect`].
    pub fn host(&self) -> &str {
        &self.host
    }

    fn err(&self, action: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> DockerError {
        let host = self.host.clone();
        let action = action.into();
        move |source| DockerError {
            host,
            action,
            source,
        }
    }

    /// Whether the daemon answers `GET /_ping` within `timeout`; the error says why not.
    pub async fn ping(&self, timeout: Duration) -> Result<(), String> {
        match tokio::time::timeout(timeout, self.docker.ping()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(self.err("ping")(e).to_string()),
            Err(_) => Err(format!(
                "docker daemon at {} did not answer a ping within {timeout:?}",
                self.host
            )),
        }
    }

    /// The platform the daemon builds natively and its version, from `docker info`.
    pub async fn describe(&self) -> Result<DaemonInfo, DescribeError> {
        let info = self.docker.info().await.map_err(self.err("info"))?;
        let os = info.os_type.unwrap_or_default();
        let arch = info.architecture.unwrap_or_default();
        let platform =
            Platform::from_parts(&os, &arch, None).map_err(|source| DescribeError::Platform {
                host: self.host.clone(),
                source,
            })?;
        Ok(DaemonInfo {
            platform,
            docker_version: info.server_version.unwrap_or_default(),
        })
    }

    /// Builds `context` (a tar file, streamed from disk) with BuildKit, sending progress lines to
    /// `logs`. Stops, dropping the request, when `cancel` fires.
    pub async fn build(
        &self,
        request: &BuildRequest<'_>,
        context: &Path,
        logs: &LogSink,
        cancel: &CancellationToken,
    ) -> Result<(), BuildError> {
        let file = tokio::fs::File::open(context)
            .await
            .map_err(|source| BuildError::Context {
                path: context.to_owned(),
                source,
            })?;
        let body = bollard::body_try_stream(tokio_util::io::ReaderStream::with_capacity(
            file,
            256 * 1024,
        ));
        let session = uuid::Uuid::new_v4().to_string();
        let buildargs: HashMap<&str, &str> = request
            .build_args
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let labels: HashMap<&str, &str> = request
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut options = BuildImageOptionsBuilder::new()
            .dockerfile(request.dockerfile)
            .t(request.tag)
            .platform(&request.platform.to_string())
            .buildargs(&buildargs)
            .labels(&labels)
            .rm(true)
            .forcerm(true)
            .version(BuilderVersion::BuilderBuildKit)
            .session(&session);
        if let Some(target) = request.target {
            options = options.target(target);
        }
        let mut stream = self.docker.build_image(options.build(), None, Some(body));
        let mut printer = ProgressPrinter::new();
        let result = loop {
            let item = tokio::select! {
                () = cancel.cancelled() => break Err(BuildError::Cancelled),
                item = stream.next() => item,
            };
            match item {
                None => break Ok(()),
                Some(Ok(info)) => {
                    match &info.aux {
                        Some(BuildInfoAux::BuildKit(status)) => {
                            printer.feed(status).into_iter().for_each(|l| logs.line(l));
                        }
                        Some(BuildInfoAux::Default(id)) => {
                            tracing::debug!(image = ?id.id, "build produced an image");
                        }
                        None => {}
                    }
                    if let Some(text) = &info.stream {
                        text.lines()
                            .filter(|l| !l.trim().is_empty())
                            .for_each(|l| logs.line(l.to_owned()));
                    }
                }
                Some(Err(bollard::errors::Error::DockerStreamError { error })) => {
                    let step = printer.first_error().map(|e| e.step.clone());
                    break Err(BuildError::Failed {
                        step,
                        message: error,
                    });
                }
                Some(Err(source)) => {
                    let error = DockerError {
                        host: self.host.clone(),
                        action: "build".into(),
                        source,
                    };
                    break Err(if error.is_client_error() {
                        BuildError::Failed {
                            step: None,
                            message: error.to_string(),
                        }
                    } else {
                        BuildError::Daemon(error)
                    });
                }
            }
        };
        printer.finish().into_iter().for_each(|l| logs.line(l));
        // A stream that ended without an error but after a step failed still failed.
        match (result, printer.first_error()) {
            (Ok(()), Some(step)) => Err(BuildError::Failed {
                step: Some(step.step.clone()),
                message: step.error.clone(),
            }),
            (result, _) => result,
        }
    }

    /// The id and platform fields of a local image.
    pub async fn inspect(&self, image: &str) -> Result<BuiltImage, DockerError> {
        let inspect = self
            .docker
            .inspect_image(image)
            .await
            .map_err(self.err(format!("inspect image {image}")))?;
        Ok(BuiltImage {
            id: inspect.id.unwrap_or_default(),
            os: inspect.os.unwrap_or_default(),
            architecture: inspect.architecture.unwrap_or_default(),
            variant: inspect.variant.unwrap_or_default(),
        })
    }

    /// `docker save` of one image: an uncompressed tar with `manifest.json`, the config and the
    /// layer tars, streamed.
    pub fn export(
        &self,
        image: &str,
    ) -> impl Stream<Item = Result<Bytes, DockerError>> + Send + 'static {
        let host = self.host.clone();
        let action = format!("export image {image}");
        self.docker
            .export_image(image)
            .map_err(move |source| DockerError {
                host: host.clone(),
                action: action.clone(),
                source,
            })
    }

    /// Removes a daemon-local tag. The image's layers stay in BuildKit's cache; an absent tag is
    /// not an error.
    pub async fn untag(&self, tag: &str) -> Result<(), DockerError> {
        let options = RemoveImageOptionsBuilder::new().noprune(true).build();
        match self.docker.remove_image(tag, Some(options), None).await {
            Ok(_) => Ok(()),
            Err(source) => {
                let error = self.err(format!("remove tag {tag}"))(source);
                if error.is_not_found() {
                    Ok(())
                } else {
                    Err(error)
                }
            }
        }
    }
}

/// Why the daemon's platform could not be determined.
#[derive(Debug, thiserror::Error)]
pub enum DescribeError {
    /// The daemon did not answer `info`.
    #[error(transparent)]
    Docker(#[from] DockerError),
    /// The daemon reported an OS/architecture Manifold does not know.
    #[error(
        "docker daemon at {host} reports a platform Manifold cannot use: {source}; pass --platform"
    )]
    Platform {
        /// The daemon's address.
        host: String,
        /// Why the reported platform was refused.
        source: manifold_proto::PlatformError,
    },
}
