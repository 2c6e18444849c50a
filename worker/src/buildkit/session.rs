//! The build session: what BuildKit asks the worker for while it builds one job.
//!
//! - **Upload**: the job's context tar, streamed from the worker's context cache (never held in
//!   memory whole), without the entries its `.dockerignore` excludes ([`crate::context_view`]).
//!   The Dockerfile frontend receives it as `http://buildkit-session/<id>` and unpacks it, as it
//!   does for `docker buildx build - < context.tar`.
//! - **FileSync**: the Dockerfile, on its own ([`super::dockerfile_source`]).
//! - **Auth**: registry credentials for the hosts BuildKit pulls from or pushes to: the build
//!   team's login when the coordinator sent one for the host, else from the worker's Docker
//!   config and credential helpers (`manifold_registry::auth`). Hosts asked for
//!   without an answer are remembered, so a failed pull can name the registry and the config read.
//! - **Secrets**: the job's `--secret` values, in memory only.
//! - **SSH**: the job's `--ssh` keys as a read-only ssh-agent ([`super::ssh_agent`]); never
//!   served as secrets.
//! - **Health**: BuildKit checks the session is alive.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bollard::health::health_server::{Health, HealthServer};
use bollard::health::{
    HealthCheckRequest, HealthCheckResponse, HealthListRequest, HealthListResponse,
};
use bollard::moby::buildkit::secrets::v1::secrets_server::{
    Secrets as SecretsService, SecretsServer,
};
use bollard::moby::buildkit::secrets::v1::{GetSecretRequest, GetSecretResponse};
use bollard::moby::filesync::v1::auth_server::{Auth, AuthServer};
use bollard::moby::filesync::v1::{
    CredentialsRequest, CredentialsResponse, FetchTokenRequest, FetchTokenResponse,
    GetTokenAuthorityRequest, GetTokenAuthorityResponse, VerifyTokenAuthorityRequest,
    VerifyTokenAuthorityResponse,
};
use bollard::moby::upload::v1::BytesMessage;
use bollard::moby::upload::v1::upload_server::{Upload, UploadServer};
use futures::Stream;
use manifold_proto::Secrets;
use manifold_registry::auth::{CredentialOrigin, DockerConfig, RegistryLogin};
use oci_client::secrets::RegistryAuth;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::dockerfile_source::DockerfileSync;
use super::hijack::Upgraded;
use crate::context_view::ContextView;
use bollard::moby::filesync::packet::file_sync_server::FileSyncServer;

/// Largest message BuildKit accepts on the session (its gRPC default).
const MAX_MESSAGE: usize = 16 << 20;
/// Size of one context chunk sent to BuildKit.
const UPLOAD_CHUNK: usize = 1 << 20;
/// The URL the Dockerfile frontend is given as its context in session `session_id`.
///
/// Unique per session on purpose: BuildKit merges identical vertices of concurrent builds, so
/// two builds naming the same URL would share ONE download, through one of their sessions, and
/// one build would get the other's context.
pub fn context_url(session_id: &str) -> String {
    format!("http://buildkit-session/{session_id}/context.tar")
}

fn context_path(session_id: &str) -> String {
    format!("/{session_id}/context.tar")
}

/// The URL of the `index`-th named context tar of session `session_id` (unique per session for
/// the same reason as [`context_url`]).
pub fn named_context_url(session_id: &str, index: usize) -> String {
    format!(
        "http://buildkit-session{}",
        named_context_path(session_id, index)
    )
}

fn named_context_path(session_id: &str, index: usize) -> String {
    format!("/{session_id}/named-{index}.tar")
}

/// Every gRPC method the session serves; the daemon is told them in
/// `X-Docker-Expose-Session-Grpc-Method` headers and calls no other.
pub const METHODS: &[&str] = &[
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/List",
    "/grpc.health.v1.Health/Watch",
    "/moby.filesync.v1.Auth/Credentials",
    "/moby.filesync.v1.Auth/FetchToken",
    "/moby.filesync.v1.Auth/GetTokenAuthority",
    "/moby.filesync.v1.Auth/VerifyTokenAuthority",
    "/moby.upload.v1.Upload/Pull",
    "/moby.filesync.v1.FileSync/DiffCopy",
    "/moby.buildkit.secrets.v1.Secrets/GetSecret",
    "/moby.sshforward.v1.SSH/CheckAgent",
    "/moby.sshforward.v1.SSH/ForwardAgent",
];

/// What one session offers BuildKit.
#[derive(Clone, Debug)]
pub struct SessionContent {
    /// The context tar on disk and what of it BuildKit is served.
    pub view: ContextView,
    /// The worker's Docker config file (credentials); `None`: anonymous.
    pub docker_config: Option<PathBuf>,
    /// The build team's logins from the coordinator: preferred for their registries.
    pub registry_logins: Vec<RegistryLogin>,
    /// `--secret` values by id.
    pub secrets: Secrets,
    /// The session's id, which names the context upload.
    pub session_id: String,
    /// The context tars of `--build-context NAME=DIR`, in name order: upload `named-<i>.tar`.
    pub named: Vec<PathBuf>,
}

/// A registry BuildKit asked credentials for and what the worker could answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialLookup {
    /// The host as BuildKit named it (`registry-1.docker.io` for Docker Hub).
    pub host: String,
    /// Where the answer came from (anonymous when none).
    pub origin: CredentialOrigin,
}

/// What the session saw, for explaining a failed build.
#[derive(Clone, Debug, Default)]
pub struct SessionLog {
    lookups: Arc<Mutex<Vec<CredentialLookup>>>,
}

impl SessionLog {
    /// The registries BuildKit asked credentials for, in order, each once.
    pub fn lookups(&self) -> Vec<CredentialLookup> {
        self.lookups.lock().expect("session log lock").clone()
    }

    pub(crate) fn record(&self, lookup: CredentialLookup) {
        let mut lookups = self.lookups.lock().expect("session log lock");
        if !lookups.iter().any(|l| l.host == lookup.host) {
            lookups.push(lookup);
        }
    }
}

/// Serves the session on `conn` (the daemon's upgraded `/session` connection) until `stop` fires
/// or the daemon closes it.
pub async fn serve(
    conn: Upgraded,
    content: SessionContent,
    log: SessionLog,
    stop: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let content = Arc::new(content);
    let ssh = super::ssh_agent::SshForward::new(&content.secrets);
    let auth = AuthProvider {
        content: content.clone(),
        log,
    };
    tonic::transport::Server::builder()
        .add_service(HealthServer::new(AlwaysServing))
        .add_service(AuthServer::new(auth))
        .add_service(
            UploadServer::new(ContextUpload {
                content: content.clone(),
            })
            .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            FileSyncServer::new(DockerfileSync {
                content: content.clone(),
            })
            .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            bollard::moby::sshforward::v1::ssh_server::SshServer::new(ssh)
                .max_decoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            SecretsServer::new(SecretStore { content })
                .max_encoding_message_size(MAX_MESSAGE)
                .max_decoding_message_size(MAX_MESSAGE),
        )
        .serve_with_incoming_shutdown(
            // The one connection, then nothing: an incoming stream that ended would make tonic
            // shut the server down gracefully, closing the session under BuildKit's feet.
            futures::StreamExt::chain(
                futures::stream::iter([Ok::<_, std::io::Error>(conn)]),
                futures::stream::pending(),
            ),
            stop.cancelled_owned(),
        )
        .await
}

struct AlwaysServing;

#[tonic::async_trait]
impl Health for AlwaysServing {
    async fn check(
        &self,
        _: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        Ok(Response::new(HealthCheckResponse { status: 1 }))
    }

    async fn list(
        &self,
        _: Request<HealthListRequest>,
    ) -> Result<Response<HealthListResponse>, Status> {
        Err(Status::unimplemented("list is not served"))
    }

    type WatchStream =
        Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send + 'static>>;

    async fn watch(
        &self,
        _: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("watch is not served"))
    }
}

struct AuthProvider {
    content: Arc<SessionContent>,
    log: SessionLog,
}

/// The key Docker's config uses for a host BuildKit names (Docker Hub's is historic).
fn config_key(host: &str) -> &str {
    if host == "registry-1.docker.io" {
        "https://index.docker.io/v1/"
    } else {
        host
    }
}

#[tonic::async_trait]
impl Auth for AuthProvider {
    async fn credentials(
        &self,
        request: Request<CredentialsRequest>,
    ) -> Result<Response<CredentialsResponse>, Status> {
        let host = request.into_inner().host;
        let config_path = self.content.docker_config.clone();
        let key = config_key(&host).to_owned();
        let login = RegistryLogin::find(&self.content.registry_logins, &host).cloned();
        // A credential helper is a program: run it off the async threads.
        let found = tokio::task::spawn_blocking(move || match (login, &config_path) {
            (Some(login), _) => Ok(login.credentials()),
            (None, None) => Ok(manifold_registry::auth::Credentials::anonymous(None)),
            (None, Some(path)) => match DockerConfig::load_from(path) {
                Ok(config) => config.credentials(&key),
                Err(e) => Err(e),
            },
        })
        .await
        .map_err(|e| Status::internal(format!("credential lookup stopped: {e}")))?;
        let credentials = match found {
            Ok(credentials) => credentials,
            Err(e) => {
                tracing::warn!(%host, error = %e, "cannot read registry credentials");
                return Err(Status::unavailable(e.to_string()));
            }
        };
        self.log.record(CredentialLookup {
            host: host.clone(),
            origin: credentials.origin.clone(),
        });
        let response = match credentials.auth {
            RegistryAuth::Anonymous => CredentialsResponse::default(),
            RegistryAuth::Basic(username, secret) => CredentialsResponse { username, secret },
            // An identity token goes in `secret` with no user name, as buildx sends it.
            RegistryAuth::Bearer(token) => CredentialsResponse {
                username: String::new(),
                secret: token,
            },
        };
        Ok(Response::new(response))
    }

    // BuildKit asks for a token authority first; "unimplemented" makes it fetch registry tokens
    // itself with the credentials above, as it does for the docker CLI's sessions.
    async fn fetch_token(
        &self,
        _: Request<FetchTokenRequest>,
    ) -> Result<Response<FetchTokenResponse>, Status> {
        Err(Status::unimplemented("no token authority"))
    }

    async fn get_token_authority(
        &self,
        _: Request<GetTokenAuthorityRequest>,
    ) -> Result<Response<GetTokenAuthorityResponse>, Status> {
        Err(Status::unimplemented("no token authority"))
    }

    async fn verify_token_authority(
        &self,
        _: Request<VerifyTokenAuthorityRequest>,
    ) -> Result<Response<VerifyTokenAuthorityResponse>, Status> {
        Err(Status::unimplemented("no token authority"))
    }
}

struct ContextUpload {
    content: Arc<SessionContent>,
}

#[tonic::async_trait]
impl Upload for ContextUpload {
    type PullStream = Pin<Box<dyn Stream<Item = Result<BytesMessage, Status>> + Send + 'static>>;

    async fn pull(
        &self,
        request: Request<Streaming<BytesMessage>>,
    ) -> Result<Response<Self::PullStream>, Status> {
        let path = request
            .metadata()
            .get("urlpath")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let session = &self.content.session_id;
        let named = (self.content.named.iter().enumerate())
            .find(|(i, _)| named_context_path(session, *i) == path);
        let (tar, ranges) = if path == context_path(session) {
            (
                self.content.view.tar.clone(),
                self.content.view.ranges.clone(),
            )
        } else if let Some((_, tar)) = named {
            // A named context is served whole: the CLI applied its `.dockerignore`.
            let len = tokio::fs::metadata(tar)
                .await
                .map_err(|e| {
                    Status::unavailable(format!("cannot read the context {}: {e}", tar.display()))
                })?
                .len();
            (tar.clone(), std::iter::once(0..len).collect())
        } else {
            return Err(Status::not_found(format!(
                "no upload `{path}` in this session"
            )));
        };
        let file = tokio::fs::File::open(&tar).await.map_err(|e| {
            Status::unavailable(format!("cannot read the context {}: {e}", tar.display()))
        })?;
        let ranges: std::collections::VecDeque<_> = ranges.into_iter().collect();
        let stream = futures::stream::try_unfold(
            (file, ranges, None::<u64>),
            |(mut file, mut ranges, mut at)| async move {
                let mut chunk = vec![0u8; UPLOAD_CHUNK];
                let mut filled = 0;
                while filled < chunk.len() {
                    let Some(range) = ranges.front_mut() else {
                        break;
                    };
                    if range.start == range.end {
                        ranges.pop_front();
                        continue;
                    }
                    if at != Some(range.start) {
                        file.seek(std::io::SeekFrom::Start(range.start))
                            .await
                            .map_err(|e| {
                                Status::unavailable(format!("reading the context: {e}"))
                            })?;
                    }
                    let want = (chunk.len() - filled).min((range.end - range.start) as usize);
                    let n = file
                        .read(&mut chunk[filled..filled + want])
                        .await
                        .map_err(|e| Status::unavailable(format!("reading the context: {e}")))?;
                    if n == 0 {
                        return Err(Status::unavailable(
                            "reading the context: the file is shorter than it was",
                        ));
                    }
                    filled += n;
                    range.start += n as u64;
                    at = Some(range.start);
                }
                if filled == 0 {
                    return Ok(None);
                }
                chunk.truncate(filled);
                Ok(Some((BytesMessage { data: chunk }, (file, ranges, at))))
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }
}

struct SecretStore {
    content: Arc<SessionContent>,
}

#[tonic::async_trait]
impl SecretsService for SecretStore {
    async fn get_secret(
        &self,
        request: Request<GetSecretRequest>,
    ) -> Result<Response<GetSecretResponse>, Status> {
        let id = request.into_inner().id;
        // `--ssh` keys travel among the secrets but are only signed with, never handed out.
        let secret = (!manifold_proto::build_flags::ssh::is_key_secret(&id))
            .then(|| self.content.secrets.get(&id))
            .flatten();
        match secret {
            Some(value) => Ok(Response::new(GetSecretResponse {
                data: value.0.clone(),
            })),
            // NotFound is what BuildKit expects for a secret the client does not have: an
            // optional mount is then left empty, a required one fails naming the id.
            None => Err(Status::not_found(format!(
                "secret `{id}` was not passed to this build: add --secret id={id},src=FILE"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_session_offers_its_context_under_its_own_url() {
        assert_eq!(context_url("s1"), "http://buildkit-session/s1/context.tar");
        assert_eq!(context_path("s1"), "/s1/context.tar");
        assert_ne!(context_url("s1"), context_url("s2"));
    }

    #[test]
    fn docker_hub_credentials_live_under_the_historic_key() {
        assert_eq!(
            config_key("registry-1.docker.io"),
            "https://index.docker.io/v1/"
        );
        assert_eq!(config_key("127.0.0.1:5000"), "127.0.0.1:5000");
    }
}
