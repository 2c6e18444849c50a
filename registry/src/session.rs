//! Talking to registries: one oci-client for the registries a task touches (plain HTTP where
//! [`RegistryConfig::is_insecure`] says so), their credentials from the Docker config, retries of
//! transient failures, and the translation of every failure into a [`RegistryError`] that names
//! the registry, what was being done and, for a 401/403, which credentials were tried.
//!
//! This is Manifold's one registry client: the coordinator's list push and its context replica,
//! the worker's push by digest and the CLI's `manifold manifest` all go through a [`Session`].
//!
//! **The retry policy** (one for all of them): a request that fails with a transient error
//! ([`is_transient`]: the connection failed or broke, a timeout, a 5xx, a 429 or
//! `TOOMANYREQUESTS`) is tried again, [`RETRY_ATTEMPTS`] tries in all, after waits of
//! [`backoff`]: 0.5 s doubling each time, each scaled by a random factor in [0.75, 1.25) so that
//! clients do not retry in lockstep (about 15 s of waiting in all: a registry restarting or
//! briefly overloaded does not fail the task). Any other failure (401/403, 404, a bad request) is
//! returned at once. A session can be told of each retry ([`Session::on_retry`]), which is how a
//! worker puts them into the job's output. Connections time out after 10 s; a request whose
//! response stalls for 300 s fails (as a timeout, so it is retried). An upload streamed from a
//! source that cannot be replayed ([`Session::push_blob_streamed`], and each request of a
//! forwarded upload, `upload`) is tried once; its caller starts the source again.

use std::collections::HashMap;
use std::hash::{BuildHasher as _, Hasher as _};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::{Client, Reference, RegistryOperation};

use crate::auth::{AuthError, Credentials, DockerConfig, RegistryLogin};
use crate::manifest::{
    DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, ManifestError, OCI_INDEX, OCI_MANIFEST,
};
use crate::tag_template::TagTemplateError;

mod clients;
mod direct;
#[cfg(test)]
mod loopback;
mod open;
mod upload;

pub use upload::BlobUpload;

/// The manifest media types Manifold reads.
pub const MANIFEST_TYPES: &[&str] = &[
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    DOCKER_MANIFEST,
    OCI_MANIFEST,
];

/// Largest config blob read into memory (image configs are a few KiB).
const MAX_CONFIG_BYTES: usize = 4 * 1024 * 1024;

/// Registry failures, named for what the user has to fix.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The children cannot form one list.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A child manifest is not in the target repository.
    #[error("{platform} image {digest} is not in {repository}: it was never pushed or was deleted")]
    MissingChild {
        /// Child platform.
        platform: String,
        /// Child digest.
        digest: String,
        /// Target repository.
        repository: String,
    },
    /// An image to copy is not in the repository it is copied from.
    #[error(
        "{image} is not in its registry any more: it was deleted meanwhile; build or push it again"
    )]
    MissingImage {
        /// The pinned reference.
        image: String,
    },
    /// A manifest to copy cannot be read.
    #[error("{image} cannot be read: {message}")]
    Malformed {
        /// The pinned reference.
        image: String,
        /// Why.
        message: String,
    },
    /// The registry refused the credentials (401) or the access (403).
    #[error(
        "registry {registry} refused {action} ({}) with {tried}; {}",
        status_text(*.status),
        auth_hint(*.status, .registry)
    )]
    Unauthorized {
        /// host[:port]
        registry: String,
        /// 401 or 403.
        status: u16,
        /// What was attempted, e.g. `reading app:1.0-x86_64`.
        action: String,
        /// The credentials sent, described without the secret.
        tried: String,
    },
    /// Nothing answers at the registry's address.
    #[error(
        "cannot reach registry {registry} while {action}: {cause}; check the address and that the registry is running{hint}"
    )]
    Unreachable {
        /// host[:port]
        registry: String,
        /// What was attempted.
        action: String,
        /// The transport's error, e.g. `connection refused`.
        cause: String,
        /// `; if it serves plain HTTP, ...` when HTTPS was used.
        hint: String,
    },
    /// The Docker config or a credential helper cannot be used.
    #[error(transparent)]
    Credentials(#[from] AuthError),
    /// Per-arch tags cannot be named.
    #[error(transparent)]
    TagTemplate(#[from] TagTemplateError),
    /// The registry could not be reached or refused a request.
    #[error("registry {registry}: {action} failed: {cause}")]
    Request {
        /// host[:port]
        registry: String,
        /// What was attempted.
        action: String,
        /// The client's error.
        cause: String,
        /// Whether the last failure was transient (the retries ran out): trying the whole task
        /// again later may succeed.
        transient: bool,
    },
}

impl RegistryError {
    /// Whether the failure may go away by itself (registry down or overloaded), so that the
    /// whole task is worth another attempt.
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Unreachable { .. } => true,
            RegistryError::Request { transient, .. } => *transient,
            _ => false,
        }
    }
}

fn status_text(status: u16) -> &'static str {
    if status == 403 {
        "403 forbidden"
    } else {
        "401 unauthorized"
    }
}

fn auth_hint(status: u16, registry: &str) -> String {
    if status == 403 {
        format!(
            "those credentials are valid but may not do this: ask for access to the repository, or `docker login {registry}` as another user"
        )
    } else {
        format!("run `docker login {registry}`, or fix the credentials the docker config gives")
    }
}

/// How Manifold talks to registries.
#[derive(Clone, Debug, Default)]
pub struct RegistryConfig {
    /// Registries (host:port) reached over plain HTTP besides loopback ones.
    pub insecure: Vec<String>,
}

impl RegistryConfig {
    /// Whether `registry` (host[:port]) is reached over plain HTTP: loopback registries are, as
    /// Docker treats them, and so is every registry listed with --insecure-registry.
    pub fn is_insecure(&self, registry: &str) -> bool {
        let host = registry
            .rsplit_once(':')
            .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
            .map_or(registry, |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
            || self.insecure.iter().any(|i| i == registry || i == host)
    }

    /// An oci-client for `registry`.
    pub fn client(&self, registry: &str) -> Client {
        self.client_for(&[registry])
    }

    /// One oci-client for all of `registries`, each over the protocol it needs.
    pub fn client_for(&self, registries: &[&str]) -> Client {
        let insecure: Vec<String> = registries
            .iter()
            .filter(|r| self.is_insecure(r))
            .map(|r| r.to_string())
            .collect();
        let protocol = if insecure.is_empty() {
            ClientProtocol::Https
        } else {
            ClientProtocol::HttpsExcept(insecure)
        };
        Client::new(ClientConfig {
            protocol,
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(Duration::from_secs(300)),
            ..Default::default()
        })
    }
}

/// How many times a request is tried while it fails transiently (see the module doc).
pub const RETRY_ATTEMPTS: u32 = 6;

/// The wait after the `attempt`-th failed try (1-based): 0.5 s doubling, jittered by ±25%.
pub fn backoff(attempt: u32) -> Duration {
    jittered(Duration::from_millis(500) * 2u32.saturating_pow(attempt.saturating_sub(1)))
}

/// `delay` scaled by a random factor in [0.75, 1.25), so that clients do not retry in lockstep.
pub fn jittered(delay: Duration) -> Duration {
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let factor = 0.75 + (random % 1000) as f64 / 2000.0;
    delay.mul_f64(factor)
}

/// A request that failed transiently and is about to be tried again.
#[derive(Clone, Debug)]
pub struct Retry {
    /// host[:port]
    pub registry: String,
    /// What was attempted, e.g. `checking blob sha256:…`.
    pub action: String,
    /// The try that failed (1-based), of [`RETRY_ATTEMPTS`].
    pub attempt: u32,
    /// The failure, with its causes.
    pub error: String,
    /// How long until the next try.
    pub wait: Duration,
}

impl std::fmt::Display for Retry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "registry {}: {} failed (try {} of {RETRY_ATTEMPTS}): {}; retrying in {:.1}s",
            self.registry,
            self.action,
            self.attempt,
            self.error,
            self.wait.as_secs_f64()
        )
    }
}

type RetryObserver = Arc<dyn Fn(&Retry) + Send + Sync>;

/// A manifest as a registry serves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawManifest {
    /// The exact bytes (their sha256 is the digest).
    pub bytes: Vec<u8>,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Its media type (from its `mediaType`, or inferred for OCI documents that omit it).
    pub media_type: String,
}

/// What [`Session::mount_blob`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mount {
    /// The blob is in the target repository now.
    Mounted,
    /// The registry did not mount it; its answer, for the job's output. The caller copies the
    /// blob.
    Refused(String),
}

/// A client with the credentials of the registries one task touches.
pub struct Session {
    config: RegistryConfig,
    client: Client,
    credentials: HashMap<String, Credentials>,
    /// Registries of `credentials` reached with none that ask for none ([`open::is_open`]):
    /// their client holds no login, so oci-client sends no `GET /v2/` before each request.
    open: std::collections::HashSet<String>,
    on_retry: Option<RetryObserver>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("config", &self.config)
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A session for `registries` (host[:port]) with credentials from the Docker config file.
    pub async fn open(config: &RegistryConfig, registries: &[&str]) -> Result<Self, RegistryError> {
        let docker = tokio::task::spawn_blocking(DockerConfig::load)
            .await
            .expect("reading the docker config does not panic")?;
        Self::open_with(config, docker, registries).await
    }

    /// A session for `registries` that uses the login of `logins` naming a registry (a team's
    /// `[[team.login]]`, from the coordinator), and the Docker config file for the others.
    pub async fn open_with_logins(
        config: &RegistryConfig,
        registries: &[&str],
        logins: &[RegistryLogin],
    ) -> Result<Self, RegistryError> {
        let docker = tokio::task::spawn_blocking(DockerConfig::load)
            .await
            .expect("reading the docker config does not panic")?;
        Self::open_from(config, docker, registries, logins).await
    }

    /// A session for `registries` with credentials from `docker` (credential helpers run here).
    pub async fn open_with(
        config: &RegistryConfig,
        docker: DockerConfig,
        registries: &[&str],
    ) -> Result<Self, RegistryError> {
        Self::open_from(config, docker, registries, &[]).await
    }

    /// A session for `registries` with the login of `logins` naming a registry, else credentials
    /// from `docker`.
    pub async fn open_from(
        config: &RegistryConfig,
        docker: DockerConfig,
        registries: &[&str],
        logins: &[RegistryLogin],
    ) -> Result<Self, RegistryError> {
        let mut keys: Vec<String> = registries.iter().map(|r| resolve(r).to_owned()).collect();
        keys.sort();
        keys.dedup();
        let lookup = keys.clone();
        let logins = logins.to_vec();
        let credentials = tokio::task::spawn_blocking(move || {
            lookup
                .into_iter()
                .map(|r| match RegistryLogin::find(&logins, &r) {
                    Some(login) => Ok((r, login.credentials())),
                    None => docker.credentials(&r).map(|c| (r, c)),
                })
                .collect::<Result<HashMap<_, _>, _>>()
        })
        .await
        .expect("credential lookup does not panic")?;
        let open = open::among(config, &credentials).await;
        let client = clients::cached(config, &keys, &credentials, &open);
        for (registry, creds) in &credentials {
            if !open.contains(registry) {
                client.store_auth_if_needed(registry, &creds.auth).await;
            }
        }
        Ok(Self {
            config: config.clone(),
            client,
            credentials,
            open,
            on_retry: None,
        })
    }

    /// Calls `observer` before each retry of a request (retries are also logged with tracing).
    pub fn on_retry(mut self, observer: impl Fn(&Retry) + Send + Sync + 'static) -> Self {
        self.on_retry = Some(Arc::new(observer));
        self
    }

    /// Runs `op` under the retry policy (see the module doc); `action` names it in retries.
    async fn retry<T, F, Fut>(
        &self,
        reference: &Reference,
        action: &str,
        op: F,
    ) -> Result<T, OciDistributionError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, OciDistributionError>>,
    {
        self.retry_when(reference, action, is_transient, op).await
    }

    /// [`Session::retry`] for the failures `worth_retrying` says are worth another try.
    async fn retry_when<T, F, Fut>(
        &self,
        reference: &Reference,
        action: &str,
        worth_retrying: fn(&OciDistributionError) -> bool,
        mut op: F,
    ) -> Result<T, OciDistributionError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, OciDistributionError>>,
    {
        let mut attempt = 1;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) if attempt < RETRY_ATTEMPTS && worth_retrying(&e) => {
                    let retry = Retry {
                        registry: reference.registry().to_owned(),
                        action: action.to_owned(),
                        attempt,
                        error: error_chain(&e),
                        wait: backoff(attempt),
                    };
                    tracing::warn!(registry = %retry.registry, action, attempt, error = %retry.error, "registry request failed; retrying in {:?}", retry.wait);
                    if let Some(observer) = &self.on_retry {
                        observer(&retry);
                    }
                    tokio::time::sleep(retry.wait).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether `reference`'s registry asks for no authorisation (see [`open`]).
    fn is_open(&self, reference: &Reference) -> bool {
        self.open.contains(resolve(reference.registry()))
    }

    /// The credentials used for `reference`'s registry.
    pub fn credentials(&self, reference: &Reference) -> Credentials {
        self.credentials
            .get(resolve(reference.registry()))
            .cloned()
            .unwrap_or_else(|| Credentials::anonymous(None))
    }

    /// Turns an oci-client failure on `reference` into a [`RegistryError`].
    pub fn error(
        &self,
        reference: &Reference,
        action: impl Into<String>,
        e: OciDistributionError,
    ) -> RegistryError {
        let registry = reference.registry().to_owned();
        let action = action.into();
        if let Some(status) = auth_status(&e) {
            if self.is_open(reference) {
                open::forget(resolve(&registry));
            }
            return RegistryError::Unauthorized {
                registry,
                status,
                action,
                tried: self.credentials(reference).origin.to_string(),
            };
        }
        if let Some(cause) = connection_failure(&e) {
            let hint = if self.config.is_insecure(&registry) {
                String::new()
            } else {
                format!("; if it serves plain HTTP, pass --insecure-registry {registry}")
            };
            return RegistryError::Unreachable {
                registry,
                action,
                cause,
                hint,
            };
        }
        RegistryError::Request {
            registry,
            action,
            transient: is_transient(&e),
            cause: error_chain(&e),
        }
    }

    /// Authenticates for `operation` on `reference`'s repository (a token exchange where the
    /// registry uses tokens), so that bad credentials fail here, before anything is written.
    pub async fn authenticate(
        &self,
        reference: &Reference,
        operation: RegistryOperation,
        action: &str,
    ) -> Result<(), RegistryError> {
        if self.is_open(reference) {
            return Ok(());
        }
        let auth = self.credentials(reference).auth;
        self.retry(reference, action, || {
            self.client.auth(reference, &auth, operation)
        })
        .await
        .map(|_| ())
        .map_err(|e| self.error(reference, action, e))
    }

    /// The manifest `reference` names, or `None` when the registry has no such manifest.
    pub async fn pull_manifest(
        &self,
        reference: &Reference,
        action: &str,
    ) -> Result<Option<RawManifest>, RegistryError> {
        let auth = self.credentials(reference).auth;
        match self
            .retry(reference, action, || async {
                if self.is_open(reference) {
                    return self.direct_manifest(reference, true).await;
                }
                self.client
                    .pull_manifest_raw(reference, &auth, MANIFEST_TYPES)
                    .await
            })
            .await
        {
            Ok((bytes, digest)) => {
                let media_type = media_type_of(&bytes);
                Ok(Some(RawManifest {
                    bytes: bytes.to_vec(),
                    digest,
                    media_type,
                }))
            }
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(self.error(reference, action, e)),
        }
    }

    /// Whether the manifest `reference` names exists.
    pub async fn manifest_exists(
        &self,
        reference: &Reference,
        action: &str,
    ) -> Result<bool, RegistryError> {
        let auth = self.credentials(reference).auth;
        match self
            .retry(reference, action, || async {
                if self.is_open(reference) {
                    return self.direct_manifest(reference, false).await.map(|(_, d)| d);
                }
                self.client.fetch_manifest_digest(reference, &auth).await
            })
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(self.error(reference, action, e)),
        }
    }

    /// Pushes manifest `bytes` of `media_type` under `reference` (a tag or a digest).
    pub async fn push_manifest(
        &self,
        reference: &Reference,
        bytes: &[u8],
        media_type: &str,
        action: &str,
    ) -> Result<(), RegistryError> {
        let header =
            http::HeaderValue::from_str(media_type).map_err(|_| RegistryError::Request {
                registry: reference.registry().to_owned(),
                action: action.to_owned(),
                cause: format!("`{media_type}` is not a valid media type"),
                transient: false,
            })?;
        let bytes = bytes::Bytes::copy_from_slice(bytes);
        // A blob the manifest names may be in the middle of being linked by the other
        // platform's push ([`is_blob_race`]): tried again as a transient failure is.
        self.retry_when(
            reference,
            action,
            |e| is_transient(e) || is_blob_race(e),
            || {
                self.client
                    .push_manifest_raw(reference, bytes.clone(), header.clone())
            },
        )
        .await
        .map(|_| ())
        .map_err(|e| self.error(reference, action, e))
    }

    /// Whether blob `digest` is in `reference`'s repository.
    pub async fn blob_exists(
        &self,
        reference: &Reference,
        digest: &str,
    ) -> Result<bool, RegistryError> {
        let action = format!("checking blob {digest}");
        self.retry(reference, &action, || {
            self.client.blob_exists(reference, digest)
        })
        .await
        .map_err(|e| self.error(reference, action.clone(), e))
    }

    /// The length of blob `digest` in `reference`'s repository (`None` when it is not there), from
    /// the `Content-Length` of a GET whose body is not read.
    pub async fn blob_size(
        &self,
        reference: &Reference,
        digest: &str,
    ) -> Result<Option<u64>, RegistryError> {
        let action = format!("reading the size of blob {digest}");
        match self
            .retry(reference, &action, || {
                self.client.pull_blob_stream(reference, digest)
            })
            .await
        {
            Ok(response) => Ok(response.content_length),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(self.error(reference, action, e)),
        }
    }

    /// Blob `digest` of `reference`'s repository, in memory (for configs: at most 4 MiB).
    pub async fn pull_small_blob(
        &self,
        reference: &Reference,
        digest: &str,
        action: &str,
    ) -> Result<Vec<u8>, RegistryError> {
        let bytes = self
            .retry(reference, action, || async {
                let mut out: Vec<u8> = Vec::new();
                self.client.pull_blob(reference, digest, &mut out).await?;
                Ok(out)
            })
            .await
            .map_err(|e| self.error(reference, action, e))?;
        if bytes.len() > MAX_CONFIG_BYTES {
            return Err(RegistryError::Request {
                registry: reference.registry().to_owned(),
                action: action.to_owned(),
                cause: format!(
                    "blob {digest} is {} bytes, too big for a config",
                    bytes.len()
                ),
                transient: false,
            });
        }
        Ok(bytes)
    }

    /// Asks the registry to mount blob `digest` from `source`'s repository into `target`'s (same
    /// registry). [`Mount::Refused`] when it would not (it then opens an upload instead, or the
    /// blob is not in the source): the caller copies the blob.
    pub async fn mount_blob(
        &self,
        target: &Reference,
        source: &Reference,
        digest: &str,
    ) -> Result<Mount, RegistryError> {
        match self.client.mount_blob(target, source, digest).await {
            Ok(()) => Ok(Mount::Mounted),
            Err(e) if auth_status(&e).is_some() || connection_failure(&e).is_some() => {
                Err(self.error(target, format!("mounting blob {digest} from {source}"), e))
            }
            Err(e) => {
                tracing::debug!(%digest, error = %e, "the registry did not mount the blob; copying it");
                Ok(Mount::Refused(match e {
                    // The spec's answer when it will not mount: an upload opened instead.
                    OciDistributionError::SpecViolationError(m) if m.contains("202") => {
                        "the registry opened an upload instead: the blob is not in that repository, or this login may not read it there".into()
                    }
                    e => e.to_string(),
                }))
            }
        }
    }

    /// Streams blob `digest` (of `size` bytes) from `source` to `target`, through this process.
    pub async fn copy_blob(
        &self,
        target: &Reference,
        source: &Reference,
        digest: &str,
        size: u64,
    ) -> Result<(), RegistryError> {
        let action = format!("copying blob {digest} from {source}");
        self.retry(target, &action, || async {
            let stream = self.client.pull_blob_stream(source, digest).await?;
            let stream = stream.map(|chunk| chunk.map_err(OciDistributionError::from));
            self.client
                .push_blob_stream(target, stream, digest, Some(size))
                .await
                .map(|_| ())
        })
        .await
        .map_err(|e| self.error(target, action.clone(), e))
    }

    /// Pushes a small blob (a config) from memory.
    pub async fn push_blob(
        &self,
        reference: &Reference,
        bytes: bytes::Bytes,
        digest: &str,
        action: &str,
    ) -> Result<(), RegistryError> {
        self.retry(reference, action, || {
            self.client.push_blob(reference, bytes.clone(), digest)
        })
        .await
        .map(|_| ())
        .map_err(|e| self.error(reference, action, e))
    }

    /// Pushes blob `digest` of `size` bytes from the file at `path`, read again for each try.
    pub async fn push_blob_file(
        &self,
        reference: &Reference,
        path: &std::path::Path,
        digest: &str,
        size: u64,
        action: &str,
    ) -> Result<(), RegistryError> {
        self.retry(reference, action, || async {
            let file = tokio::fs::File::open(path).await?;
            let stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20)
                .map(|r| r.map_err(OciDistributionError::IoError));
            self.client
                .push_blob_stream(reference, stream, digest, Some(size))
                .await
                .map(|_| ())
        })
        .await
        .map_err(|e| self.error(reference, action, e))
    }

    /// Uploads a blob from `chunks` as they come (each item one request), its digest computed on
    /// the way; returns (digest, size). Tried once: a stream cannot be replayed, so on a transient
    /// failure ([`RegistryError::is_transient`]) the caller produces the bytes again.
    pub async fn push_blob_streamed(
        &self,
        reference: &Reference,
        chunks: impl futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static,
        action: &str,
    ) -> Result<(String, u64), RegistryError> {
        let chunks = chunks.map(|r| r.map_err(OciDistributionError::IoError));
        self.client
            .push_blob_stream_chunked(reference, chunks)
            .await
            .map(|r| (r.blob_digest, r.size))
            .map_err(|e| self.error(reference, action, e))
    }

    /// Blob `digest` of `reference`'s repository as a stream (the request is retried; a stream
    /// that breaks midway is the caller's to start again).
    pub async fn pull_blob_stream(
        &self,
        reference: &Reference,
        digest: &str,
        action: &str,
    ) -> Result<
        Option<futures::stream::BoxStream<'static, std::io::Result<bytes::Bytes>>>,
        RegistryError,
    > {
        match self
            .retry(reference, action, || {
                self.client.pull_blob_stream(reference, digest)
            })
            .await
        {
            Ok(response) => Ok(Some(response.stream)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(self.error(reference, action, e)),
        }
    }

    /// The tags of `reference`'s repository (empty when the repository does not exist).
    pub async fn list_tags(&self, reference: &Reference) -> Result<Vec<String>, RegistryError> {
        let auth = self.credentials(reference).auth;
        let action = format!("listing the tags of {}", reference.repository());
        // oci-client stores the credentials it is given in its client, and then asks the registry
        // for a challenge before every request: an open registry's shared client must hold none,
        // so its (rare) listing gets a client of its own.
        let own;
        let client = if self.is_open(reference) {
            own = self.config.client(reference.registry());
            &own
        } else {
            &self.client
        };
        match self
            .retry(reference, &action, || {
                client.list_tags(reference, &auth, None, None)
            })
            .await
        {
            Ok(r) => Ok(r.tags),
            Err(e) if is_not_found(&e) => Ok(Vec::new()),
            Err(e) => Err(self.error(reference, action, e)),
        }
    }
}

/// The registry key oci-client stores credentials under (`docker.io` → `index.docker.io`).
fn resolve(registry: &str) -> &str {
    if registry == "docker.io" {
        "index.docker.io"
    } else {
        registry
    }
}

/// The media type of a manifest document: its `mediaType`, else inferred (OCI documents may
/// omit it): `manifests` → OCI index, otherwise an OCI image manifest.
pub fn media_type_of(bytes: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Head {
        #[serde(rename = "mediaType", default)]
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Head>(bytes) {
        Ok(Head {
            media_type: Some(m),
            ..
        }) if !m.is_empty() => m,
        Ok(Head {
            manifests: Some(_), ..
        }) => OCI_INDEX.to_owned(),
        _ => OCI_MANIFEST.to_owned(),
    }
}

/// 401 or 403 when `e` is the registry refusing credentials or access.
pub fn auth_status(e: &OciDistributionError) -> Option<u16> {
    match e {
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => Some(401),
        OciDistributionError::ServerError { code, .. } if *code == 401 || *code == 403 => {
            Some(*code)
        }
        OciDistributionError::RegistryError { envelope, .. } => {
            envelope.errors.iter().find_map(|err| match err.code {
                OciErrorCode::Unauthorized => Some(401),
                OciErrorCode::Denied => Some(403),
                _ => None,
            })
        }
        _ => None,
    }
}

/// Whether `e` says the manifest, blob or repository does not exist.
pub fn is_not_found(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        OciDistributionError::ServerError { code: 404, .. } => true,
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|err| {
            matches!(
                err.code,
                OciErrorCode::ManifestUnknown
                    | OciErrorCode::NotFound
                    | OciErrorCode::NameUnknown
                    | OciErrorCode::BlobUnknown
            )
        }),
        _ => false,
    }
}

/// The innermost cause of a failure to connect (refused, unresolvable, TLS), if `e` is one.
fn connection_failure(e: &OciDistributionError) -> Option<String> {
    let OciDistributionError::RequestError(inner) = e else {
        return None;
    };
    if !(inner.is_connect() || inner.is_timeout()) {
        return None;
    }
    let mut cause: &dyn std::error::Error = inner;
    while let Some(source) = cause.source() {
        cause = source;
    }
    let text = cause.to_string();
    // "Connection refused (os error 111)" reads better without the errno.
    let text = match text.find(" (os error") {
        Some(i) => text[..i].to_owned(),
        None => text,
    };
    Some(text.to_lowercase())
}

/// Whether a registry failure is worth retrying: the connection failed or broke, a timeout, a
/// server error, throttling.
pub fn is_transient(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::RequestError(_) | OciDistributionError::IoError(_) => true,
        OciDistributionError::ServerError { code, .. } => *code >= 500 || *code == 429,
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|err| err.code == OciErrorCode::Toomanyrequests),
        _ => false,
    }
}

/// Whether a manifest push was refused for a blob the repository lacks (`MANIFEST_BLOB_UNKNOWN`).
/// A farm pushes every platform of a build into one repository at once, and a layer they share
/// is linked into it by both pushes: the CNCF registry's filesystem storage rewrites a
/// repository's blob link in place (truncate, then write: distribution/distribution#4489), so a
/// manifest checked in between finds the link empty (`DIGEST_INVALID` beside
/// `MANIFEST_BLOB_UNKNOWN`). Seen here in CI; trying again a moment later finds it. A blob that
/// is really missing still fails, after the [`RETRY_ATTEMPTS`] tries of any transient failure.
fn is_blob_race(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::ServerError {
            code: 400, message, ..
        } => message.contains("MANIFEST_BLOB_UNKNOWN"),
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|err| err.code == OciErrorCode::ManifestBlobUnknown),
        _ => false,
    }
}

/// An error with its causes, `: `-separated (reqwest's own message hides the cause).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let next = cause.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_refused_for_an_unknown_blob_is_tried_again_and_nothing_else_is() {
        let server = |code: u16, message: &str| OciDistributionError::ServerError {
            code,
            url: "http://127.0.0.1:5000/v2/app/manifests/sha256:0f98".into(),
            message: message.into(),
        };
        // What the CNCF registry answered in CI while the other platform linked a shared layer.
        let race = r#"{"errors":[{"code":"DIGEST_INVALID","message":"provided digest did not match uploaded content"},{"code":"MANIFEST_BLOB_UNKNOWN","message":"blob unknown to registry","detail":"sha256:2f48"}]}"#;
        assert!(is_blob_race(&server(400, race)));
        assert!(is_blob_race(&server(
            400,
            r#"{"errors":[{"code":"MANIFEST_BLOB_UNKNOWN","message":"blob unknown to registry"}]}"#
        )));
        for other in [
            server(
                400,
                r#"{"errors":[{"code":"MANIFEST_INVALID","message":"manifest invalid"}]}"#,
            ),
            server(
                400,
                r#"{"errors":[{"code":"DIGEST_INVALID","message":"provided digest did not match uploaded content"}]}"#,
            ),
            server(404, r#"{"errors":[{"code":"NAME_UNKNOWN"}]}"#),
            server(500, "MANIFEST_BLOB_UNKNOWN"),
        ] {
            assert!(!is_blob_race(&other), "{other:?}");
        }
    }

    #[test]
    fn loopback_registries_are_plain_http_as_docker_treats_them() {
        let c = RegistryConfig {
            insecure: vec!["build-cache.lan:5000".into()],
        };
        assert!(c.is_insecure("127.0.0.1:5000"));
        assert!(c.is_insecure("localhost:5000"));
        assert!(c.is_insecure("[::1]:5000"));
        assert!(c.is_insecure("build-cache.lan:5000"));
        assert!(!c.is_insecure("registry.example.com"));
        assert!(!c.is_insecure("build-cache.lan:5001"));
    }

    #[test]
    fn media_types_are_read_or_inferred() {
        assert_eq!(
            media_type_of(br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json"}"#),
            DOCKER_MANIFEST
        );
        assert_eq!(
            media_type_of(br#"{"schemaVersion":2,"manifests":[]}"#),
            OCI_INDEX
        );
        assert_eq!(
            media_type_of(br#"{"schemaVersion":2,"config":{},"layers":[]}"#),
            OCI_MANIFEST
        );
    }

    fn envelope(code: &str) -> OciDistributionError {
        OciDistributionError::RegistryError {
            envelope: serde_json::from_str(&format!(
                r#"{{"errors":[{{"code":"{code}","message":"m"}}]}}"#
            ))
            .unwrap(),
            url: "u".into(),
        }
    }

    #[test]
    fn refusals_and_absences_are_recognised() {
        let server = |code| OciDistributionError::ServerError {
            code,
            url: "u".into(),
            message: String::new(),
        };
        assert_eq!(
            auth_status(&OciDistributionError::UnauthorizedError { url: "u".into() }),
            Some(401)
        );
        assert_eq!(auth_status(&server(403)), Some(403));
        assert_eq!(auth_status(&envelope("DENIED")), Some(403));
        assert_eq!(auth_status(&envelope("UNAUTHORIZED")), Some(401));
        assert_eq!(auth_status(&server(500)), None);
        assert!(is_not_found(&envelope("MANIFEST_UNKNOWN")));
        assert!(is_not_found(&envelope("NAME_UNKNOWN")));
        assert!(is_not_found(&server(404)));
        assert!(!is_not_found(&envelope("DENIED")));
        assert!(is_transient(&server(503)));
        assert!(is_transient(&envelope("TOOMANYREQUESTS")));
        assert!(!is_transient(&server(401)));
    }

    #[test]
    fn a_refusal_names_the_registry_and_what_was_tried() {
        let e = RegistryError::Unauthorized {
            registry: "127.0.0.1:5001".into(),
            status: 401,
            action: "reading app:1.0".into(),
            tried: "user `bob` from /cfg/config.json".into(),
        };
        assert_eq!(
            e.to_string(),
            "registry 127.0.0.1:5001 refused reading app:1.0 (401 unauthorized) with user `bob` \
             from /cfg/config.json; run `docker login 127.0.0.1:5001`, or fix the credentials the \
             docker config gives"
        );
    }
}
