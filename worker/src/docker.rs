//! The Docker daemon a worker drives, through bollard's Engine API: what it builds (platform,
//! version, image store), inspection of what was built, `docker save` export, and untagging.
//! Builds themselves go through the daemon's BuildKit ([`crate::buildkit`]).
//!
//! Architecture invariant: builds always go through BuildKit. The classic builder ignores the
//! requested platform for local base images and breaks multi-stage builds for an emulated platform.

use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::RemoveImageOptionsBuilder;
use bytes::Bytes;
use futures::{Stream, StreamExt as _, TryStreamExt};
use manifold_proto::Platform;

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
    /// The daemon's version, e.g. `26.1.5+dfsg1`.
    pub docker_version: String,
    /// Where it keeps images, which decides how a built image reaches the registry.
    pub image_store: ImageStore,
}

/// A daemon's image store (`docker info`: `DriverStatus` `driver-type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageStore {
    /// The containerd image store (Docker Desktop's default, Docker Engine 29's): compressed layers
    /// are kept, and BuildKit's image exporter can push by digest.
    Containerd,
    /// A graphdriver (overlay2...): images are exported with `docker save` and pushed by the worker.
    Graphdriver,
}

impl ImageStore {
    /// Reads the store from `docker info`'s `DriverStatus` pairs.
    pub fn from_driver_status(status: &[Vec<String>]) -> Self {
        let containerd = status.iter().any(|pair| {
            pair.first().map(String::as_str) == Some("driver-type")
                && pair
                    .get(1)
                    .is_some_and(|v| v.starts_with("io.containerd.snapshotter"))
        });
        if containerd {
            Self::Containerd
        } else {
            Self::Graphdriver
        }
    }
}

impl std::fmt::Display for ImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ImageStore::Containerd => "containerd image store",
            ImageStore::Graphdriver => "graphdriver image store",
        })
    }
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
    /// The layers' diff_ids (sha256 of each uncompressed layer tar), base first; empty where
    /// not read.
    pub diff_ids: Vec<String>,
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
            image_store: ImageStore::from_driver_status(&info.driver_status.unwrap_or_default()),
        })
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
            diff_ids: inspect.root_fs.and_then(|r| r.layers).unwrap_or_default(),
        })
    }

    /// `docker save` of one image, streamed: on Docker 25+ an OCI layout tar whose
    /// `blobs/sha256/` entries are the config (named by the image id) and the uncompressed layer
    /// tars (named by their diff_ids).
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

    /// Tags local image `image` as `repository:tag`.
    pub async fn tag(&self, image: &str, repository: &str, tag: &str) -> Result<(), DockerError> {
        let options = bollard::query_parameters::TagImageOptionsBuilder::new()
            .repo(repository)
            .tag(tag)
            .build();
        self.docker
            .tag_image(image, Some(options))
            .await
            .map_err(self.err(format!("tag {image} as {repository}:{tag}")))
    }

    /// `docker push repository:tag` by the daemon itself (anonymous: only for the worker's own
    /// loopback registry, [`crate::push_proxy`]); the daemon's error text when it fails.
    pub async fn push(&self, repository: &str, tag: &str) -> Result<(), String> {
        let options = bollard::query_parameters::PushImageOptionsBuilder::new()
            .tag(tag)
            .build();
        let credentials = bollard::auth::DockerCredentials::default();
        let mut progress = std::pin::pin!(self.docker.push_image(
            repository,
            Some(options),
            Some(credentials)
        ));
        while let Some(item) = progress.next().await {
            match item {
                Ok(info) => {
                    if let Some(e) = info.error_detail.and_then(|d| d.message) {
                        return Err(e);
                    }
                }
                Err(e) => return Err(self.err(format!("push {repository}:{tag}"))(e).to_string()),
            }
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn status(pairs: &[(&str, &str)]) -> Vec<Vec<String>> {
        pairs
            .iter()
            .map(|(k, v)| vec![(*k).to_owned(), (*v).to_owned()])
            .collect()
    }

    #[test]
    fn the_image_store_comes_from_the_driver_type() {
        // As Docker 26 reports them, with and without `"containerd-snapshotter": true`.
        assert_eq!(
            ImageStore::from_driver_status(&status(&[(
                "driver-type",
                "io.containerd.snapshotter.v1"
            )])),
            ImageStore::Containerd
        );
        assert_eq!(
            ImageStore::from_driver_status(&status(&[
                ("Backing Filesystem", "extfs"),
                ("Supports d_type", "true"),
                ("Using metacopy", "false"),
                ("Native Overlay Diff", "true"),
                ("userxattr", "false"),
            ])),
            ImageStore::Graphdriver
        );
        assert_eq!(ImageStore::from_driver_status(&[]), ImageStore::Graphdriver);
    }
}
