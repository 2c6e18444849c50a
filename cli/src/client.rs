//! Talking to the coordinator: connecting (plain HTTP/2 to loopback, TLS elsewhere), the bearer
//! token on every call, one method per RPC the CLI uses, and turning transport failures and gRPC
//! statuses into messages a person can act on.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use futures::{Stream, StreamExt};
use manifold_proto::v1::builds_client::BuildsClient;
use manifold_proto::v1::contexts_client::ContextsClient;
use manifold_proto::v1::workers_client::WorkersClient;
use manifold_proto::v1::{self};
use manifold_proto::{BuildId, MAX_MESSAGE_BYTES, Platform};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status};

/// How long connecting to the coordinator may take before it counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The gRPC metadata key carrying the bearer token.
pub const AUTHORIZATION_METADATA: &str = "authorization";

/// Where the hints say the config file is when there is no config directory to name.
const DEFAULT_CONFIG_HINT: &str = "~/.config/manifold/config.toml";

/// A bearer token. It has no `Display` and its `Debug` shows no part of it, so it cannot end up
/// in a message, a log line or a `{:?}` of the arguments by accident.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(from = "String")]
pub struct Token(String);

impl Token {
    /// A token as given; surrounding whitespace (a trailing newline from a file) is dropped.
    pub fn new(token: impl Into<String>) -> Self {
        let token: String = token.into();
        Self(token.trim().to_owned())
    }

    /// Whether nothing is left: an empty token counts as no token.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `authorization` metadata value, `Bearer <token>`, marked sensitive; None when the
    /// token holds characters a header cannot carry (or that no token has: spaces, controls).
    fn bearer(&self) -> Option<MetadataValue<Ascii>> {
        if self.0.chars().any(|c| !c.is_ascii_graphic()) {
            return None;
        }
        let mut value = MetadataValue::try_from(format!("Bearer {}", self.0)).ok()?;
        value.set_sensitive(true);
        Some(value)
    }
}

impl From<String> for Token {
    fn from(token: String) -> Self {
        Self::new(token)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Parses `--token` for clap. It never fails: clap would quote the value in its error, so the
/// token is checked when it is used, by an error that does not show it.
pub fn parse_token(value: &str) -> Result<Token, std::convert::Infallible> {
    Ok(Token::new(value))
}

/// A setting and where it came from (`--token`, `MANIFOLD_TOKEN`, a config file's path), for
/// messages that must say which one to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting<T> {
    /// The value.
    pub value: T,
    /// Its source, as a person would name it.
    pub origin: String,
}

impl<T> Setting<T> {
    /// `value` from `origin`.
    pub fn new(value: T, origin: impl Into<String>) -> Self {
        Self {
            value,
            origin: origin.into(),
        }
    }
}

/// How to reach the coordinator besides its address: the token to send and the CA to trust.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectOptions {
    /// Sent as `authorization: Bearer <token>` on every call; none: no such metadata.
    pub token: Option<Setting<Token>>,
    /// PEM file of the CA that signs an https:// coordinator's certificate; none: the system's
    /// roots.
    pub ca_cert: Option<Setting<PathBuf>>,
    /// The config file consulted (whether or not it exists), named in hints.
    pub config_file: Option<PathBuf>,
}

impl ConnectOptions {
    fn config_hint(&self) -> String {
        self.config_file.as_ref().map_or_else(
            || DEFAULT_CONFIG_HINT.to_owned(),
            |p| p.display().to_string(),
        )
    }
}

/// Adds the bearer token to every request of a client.
#[derive(Clone, Default)]
struct Auth(Option<MetadataValue<Ascii>>);

impl Interceptor for Auth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert(AUTHORIZATION_METADATA, value.clone());
        }
        Ok(request)
    }
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Auth(Bearer <redacted>)"
        } else {
            "Auth(none)"
        })
    }
}

type Authed = InterceptedService<Channel, Auth>;

/// A failure to talk to the coordinator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The coordinator address is not a URL the CLI can dial.
    #[error(
        "invalid coordinator address `{address}`: {reason}; expected a URL such as https://coordinator.example.com:7700 or http://127.0.0.1:7700 (set --coordinator or MANIFOLD_COORDINATOR)"
    )]
    InvalidAddress {
        /// The address as given.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Plain `http://` to a host that is not loopback: the token and the build would cross the
    /// network in clear, and the coordinator refuses it anyway.
    #[error(
        "refusing plain http:// to `{host}` in `{address}`: only loopback coordinators may be reached without TLS; use https:// ({suggestion})"
    )]
    Plaintext {
        /// The address as given.
        address: String,
        /// Its host.
        host: String,
        /// The same address with https://.
        suggestion: String,
    },
    /// The CA certificate to trust cannot be used.
    #[error("cannot use the CA certificate `{path}` (from {origin}): {reason}")]
    CaCert {
        /// The file.
        path: PathBuf,
        /// `--ca-cert`, `MANIFOLD_CA_CERT` or the config file.
        origin: String,
        /// Why.
        reason: String,
    },
    /// The token holds characters a header cannot carry. The token itself is never shown.
    #[error(
        "the token from {origin} cannot be sent: it contains spaces, control or non-ASCII characters; check it for a stray quote or line break"
    )]
    BadToken {
        /// `--token`, `MANIFOLD_TOKEN` or the config file.
        origin: String,
    },
    /// The TLS handshake with an https:// coordinator failed.
    #[error("TLS handshake with the coordinator at {address} failed: {reason}; {hint}")]
    Tls {
        /// The URL dialled.
        address: String,
        /// What went wrong, e.g. an unknown CA.
        reason: String,
        /// What to do about it (usually: `--ca-cert`).
        hint: String,
    },
    /// Nothing answers at the address, or the connection was lost.
    #[error(
        "cannot reach the coordinator at {address}: {reason}; is manifold-coordinator running? set --coordinator or MANIFOLD_COORDINATOR"
    )]
    Unreachable {
        /// The address dialled.
        address: String,
        /// Why, e.g. `connection refused`.
        reason: String,
    },
    /// The coordinator wants a (different) token.
    #[error("{}", unauthenticated_message(.address, .message, .token_origin.as_deref(), .config_file))]
    Unauthenticated {
        /// The URL dialled.
        address: String,
        /// The coordinator's message.
        message: String,
        /// Where the refused token came from; none when no token was sent.
        token_origin: Option<String>,
        /// The config file a token can be put in.
        config_file: String,
    },
    /// The coordinator answered an RPC with an error status.
    #[error("{what}: {message}")]
    Rpc {
        /// What the CLI was doing, e.g. `submitting the build`.
        what: &'static str,
        /// The gRPC status code.
        code: Code,
        /// The coordinator's message (or the code's meaning when it sent none).
        message: String,
    },
    /// The coordinator answered something the CLI cannot use.
    #[error(
        "{what}: the coordinator sent {reason}; are the CLI and the coordinator the same version?"
    )]
    BadResponse {
        /// What the CLI was doing.
        what: &'static str,
        /// What was wrong with the answer.
        reason: String,
    },
}

fn unauthenticated_message(
    address: &str,
    message: &str,
    token_origin: Option<&str>,
    config_file: &str,
) -> String {
    let refused = match token_origin {
        Some(origin) => format!("the coordinator at {address} refused the token from {origin}"),
        None => format!("the coordinator at {address} requires a token"),
    };
    format!(
        "{refused}: {message}; pass --token, set MANIFOLD_TOKEN, or put token = \"...\" in {config_file}"
    )
}

impl ClientError {
    /// The gRPC code of an [`ClientError::Rpc`] (or `Unauthenticated`), if it is one.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Rpc { code, .. } => Some(*code),
            ClientError::Unauthenticated { .. } => Some(Code::Unauthenticated),
            _ => None,
        }
    }
}

/// A coordinator address checked before anything is dialled.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    /// The URL, with a scheme.
    url: String,
    /// https://.
    tls: bool,
}

/// Checks one address: `http://` or `https://` (a bare `host:port` means http), and plain http
/// only to loopback (127.0.0.0/8, ::1, localhost).
fn target(address: &str) -> Result<Target, ClientError> {
    let address = address.trim();
    let url = if address.contains("://") {
        address.to_owned()
    } else {
        format!("http://{address}")
    };
    let invalid = |reason: String| ClientError::InvalidAddress {
        address: address.to_owned(),
        reason,
    };
    let tls = if url.starts_with("https://") {
        true
    } else if url.starts_with("http://") {
        false
    } else {
        return Err(invalid(
            "only http:// and https:// addresses are supported".to_owned(),
        ));
    };
    let uri: tonic::transport::Uri = url.parse().map_err(|e| invalid(root_cause(&e)))?;
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| invalid("it names no host".to_owned()))?;
    if !tls && !manifold_proto::discovery::is_loopback(host) {
        return Err(ClientError::Plaintext {
            address: address.to_owned(),
            host: host.to_owned(),
            suggestion: format!("https://{}", &url["http://".len()..]),
        });
    }
    Ok(Target { url, tls })
}

/// A connection to the coordinator. Cheap to clone; the underlying channel reconnects by itself.
#[derive(Debug, Clone)]
pub struct Coordinator {
    address: String,
    channel: Channel,
    auth: Auth,
    options: ConnectOptions,
}

impl Coordinator {
    /// Dials the coordinator at `addresses` without a token, trusting the system's roots for
    /// https:// (see [`Coordinator::connect_with`]).
    pub async fn connect(addresses: &str) -> Result<Self, ClientError> {
        Self::connect_with(addresses, &ConnectOptions::default()).await
    }

    /// Dials the coordinator at `addresses`: one URL, or several comma-separated (a farm with
    /// several coordinators on etcd). Every address is checked first (plain http only to
    /// loopback), so a refused one dials nothing. Followers redirect to the leader; the first
    /// coordinator that serves is used. Fails fast with [`ClientError::Unreachable`] when none
    /// answers, and with [`ClientError::Unauthenticated`] when the one serving refuses the token.
    pub async fn connect_with(
        addresses: &str,
        options: &ConnectOptions,
    ) -> Result<Self, ClientError> {
        let mut queue = manifold_proto::discovery::parse_addresses(addresses);
        if queue.is_empty() {
            queue.push(addresses.to_owned());
        }
        for address in &queue {
            target(address)?;
        }
        let auth = match &options.token {
            Some(token) => Auth(Some(token.value.bearer().ok_or_else(|| {
                ClientError::BadToken {
                    origin: token.origin.clone(),
                }
            })?)),
            None => Auth(None),
        };
        let mut tried: Vec<String> = Vec::new();
        let mut first_error = None;
        while !queue.is_empty() {
            let address = queue.remove(0);
            if tried.contains(&address) {
                continue;
            }
            tried.push(address.clone());
            let coordinator = match Self::connect_one(&address, options, &auth).await {
                Ok(c) => c,
                Err(
                    e @ (ClientError::InvalidAddress { .. }
                    | ClientError::Plaintext { .. }
                    | ClientError::CaCert { .. }),
                ) => return Err(e),
                Err(e) => {
                    first_error.get_or_insert(e);
                    continue;
                }
            };
            let probe = coordinator
                .builds()
                .list(v1::ListBuildsRequest {
                    limit: 1,
                    ..Default::default()
                })
                .await;
            match probe {
                Err(status) if status.code() == Code::Unavailable => {
                    if let Some(leader) = status
                        .metadata()
                        .get(manifold_proto::discovery::LEADER_METADATA)
                        .and_then(|v| v.to_str().ok())
                    {
                        queue.insert(0, leader.to_owned());
                    }
                    first_error.get_or_insert(ClientError::Unreachable {
                        address: address.clone(),
                        reason: status.message().to_owned(),
                    });
                }
                // The leader answered; without a usable token nothing else will work either.
                Err(status) if status.code() == Code::Unauthenticated => {
                    return Err(coordinator.status_error("connecting", status));
                }
                // Anything else (PermissionDenied to list builds included) comes from a serving
                // coordinator: the command's own call says what it thinks.
                _ => return Ok(coordinator),
            }
        }
        Err(first_error.unwrap_or_else(|| ClientError::InvalidAddress {
            address: addresses.to_owned(),
            reason: "no address given".to_owned(),
        }))
    }

    /// Dials one `address` and fails fast with [`ClientError::Unreachable`] when nothing answers,
    /// or [`ClientError::Tls`] when the TLS handshake fails.
    async fn connect_one(
        address: &str,
        options: &ConnectOptions,
        auth: &Auth,
    ) -> Result<Self, ClientError> {
        let Target { url, tls } = target(address)?;
        let invalid = |reason: String| ClientError::InvalidAddress {
            address: address.trim().to_owned(),
            reason,
        };
        let mut endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| invalid(root_cause(&e)))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            // Builds are watched for a long time over idle streams: keep NATs and proxies open.
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true);
        if tls {
            endpoint = endpoint
                .tls_config(tls_config(options)?)
                .map_err(|e| ClientError::Tls {
                    address: url.clone(),
                    reason: tls_failure(&e).unwrap_or_else(|| simplify_reason(&root_cause(&e))),
                    hint: ca_hint(options),
                })?;
        }
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| match tls_failure(&e) {
                Some(reason) if tls => ClientError::Tls {
                    address: url.clone(),
                    hint: if reason == NOT_TLS {
                        "check that the coordinator serves TLS at this address".to_owned()
                    } else {
                        ca_hint(options)
                    },
                    reason,
                },
                _ => ClientError::Unreachable {
                    address: url.clone(),
                    reason: transport_reason(&e),
                },
            })?;
        Ok(Self {
            address: url,
            channel,
            auth: auth.clone(),
            options: options.clone(),
        })
    }

    /// The URL dialled.
    pub fn address(&self) -> &str {
        &self.address
    }

    fn builds(&self) -> BuildsClient<Authed> {
        BuildsClient::with_interceptor(self.channel.clone(), self.auth.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    fn contexts(&self) -> ContextsClient<Authed> {
        ContextsClient::with_interceptor(self.channel.clone(), self.auth.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    fn workers(&self) -> WorkersClient<Authed> {
        WorkersClient::with_interceptor(self.channel.clone(), self.auth.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Translates a status into a [`ClientError`]: a lost connection reads like an unreachable
    /// coordinator, a refused token says where tokens come from, anything else keeps the
    /// coordinator's message (PermissionDenied's names what is not allowed).
    pub fn status_error(&self, what: &'static str, status: Status) -> ClientError {
        let message = status.message().trim();
        if status.code() == Code::Unauthenticated {
            return ClientError::Unauthenticated {
                address: self.address.clone(),
                message: if message.is_empty() {
                    code_text(Code::Unauthenticated).to_owned()
                } else {
                    message.to_owned()
                },
                token_origin: self.options.token.as_ref().map(|t| t.origin.clone()),
                config_file: self.options.config_hint(),
            };
        }
        if status.code() == Code::PermissionDenied {
            let text = code_text(Code::PermissionDenied);
            return ClientError::Rpc {
                what,
                code: status.code(),
                message: if message.is_empty() {
                    text.to_owned()
                } else if message.to_lowercase().starts_with(text) {
                    message.to_owned()
                } else {
                    format!("{text}: {message}")
                },
            };
        }
        if status.code() == Code::Unavailable {
            return ClientError::Unreachable {
                address: self.address.clone(),
                reason: if message.is_empty() {
                    "the connection was lost".to_owned()
                } else {
                    simplify_reason(message)
                },
            };
        }
        ClientError::Rpc {
            what,
            code: status.code(),
            message: if message.is_empty() {
                code_text(status.code()).to_owned()
            } else {
                message.to_owned()
            },
        }
    }

    /// `Contexts.Has`: whether the coordinator already holds the context `digest`.
    pub async fn has_context(&self, digest: &str) -> Result<bool, ClientError> {
        let what = "asking the coordinator for the context";
        let response = self
            .contexts()
            .has(v1::HasContextRequest {
                digest: digest.to_owned(),
            })
            .await
            .map_err(|s| self.status_error(what, s))?;
        Ok(response.into_inner().present)
    }

    /// `Contexts.Upload`: streams `chunks` as the context `digest` (carried by the first chunk)
    /// and returns the size the coordinator stored.
    pub async fn upload_context<S>(&self, digest: &str, chunks: S) -> Result<u64, ClientError>
    where
        S: Stream<Item = Vec<u8>> + Send + 'static,
    {
        let what = "uploading the context";
        let first_digest = digest.to_owned();
        let request = chunks
            .enumerate()
            .map(move |(i, data)| v1::UploadContextChunk {
                digest: if i == 0 {
                    first_digest.clone()
                } else {
                    String::new()
                },
                data,
            });
        let response = self
            .contexts()
            .upload(request)
            .await
            .map_err(|s| self.status_error(what, s))?
            .into_inner();
        if response.digest != digest {
            return Err(ClientError::BadResponse {
                what,
                reason: format!("digest `{}` for the upload of `{digest}`", response.digest),
            });
        }
        Ok(response.size)
    }

    /// `Builds.Submit`: queues a build and returns its id.
    pub async fn submit(&self, request: v1::SubmitBuildRequest) -> Result<BuildId, ClientError> {
        let what = "the coordinator refused the build";
        let response = self
            .builds()
            .submit(request)
            .await
            .map_err(|s| self.status_error(what, s))?
            .into_inner();
        response
            .build_id
            .parse()
            .map_err(|reason| ClientError::BadResponse { what, reason })
    }

    /// `Builds.Watch`: the build's events, history first.
    pub async fn watch(
        &self,
        id: BuildId,
    ) -> Result<tonic::Streaming<v1::BuildEvent>, ClientError> {
        let response = self
            .builds()
            .watch(v1::WatchBuildRequest {
                build_id: id.to_string(),
            })
            .await
            .map_err(|s| self.status_error("watching the build", s))?;
        Ok(response.into_inner())
    }

    /// `Builds.Get`.
    pub async fn get_build(&self, id: BuildId) -> Result<v1::Build, ClientError> {
        let response = self
            .builds()
            .get(v1::GetBuildRequest {
                build_id: id.to_string(),
            })
            .await
            .map_err(|s| self.status_error("getting the build", s))?;
        Ok(response.into_inner())
    }

    /// `Builds.List`: one page, newest first.
    pub async fn list_builds(&self, q: ListQuery) -> Result<v1::ListBuildsResponse, ClientError> {
        let response = self
            .builds()
            .list(v1::ListBuildsRequest {
                limit: q.limit,
                before: q.before.map(|id| id.to_string()).unwrap_or_default(),
                since_ms: q.since_ms.unwrap_or(0),
            })
            .await
            .map_err(|s| self.status_error("listing builds", s))?;
        Ok(response.into_inner())
    }

    /// `Builds.Cancel`: returns the build as the coordinator left it.
    pub async fn cancel_build(&self, id: BuildId) -> Result<Option<v1::Build>, ClientError> {
        let response = self
            .builds()
            .cancel(v1::CancelBuildRequest {
                build_id: id.to_string(),
            })
            .await
            .map_err(|s| self.status_error("cancelling the build", s))?;
        Ok(response.into_inner().build)
    }

    /// `Builds.Publish`: pushes the list of a build that failed at publishing again.
    pub async fn publish_build(&self, id: BuildId) -> Result<Option<v1::Build>, ClientError> {
        let response = self
            .builds()
            .publish(v1::PublishBuildRequest {
                build_id: id.to_string(),
            })
            .await
            .map_err(|s| self.status_error("publishing the build", s))?;
        Ok(response.into_inner().build)
    }

    /// `Workers.Drain`: the worker as the coordinator left it.
    pub async fn drain_worker(&self, name: &str) -> Result<Option<v1::WorkerInfo>, ClientError> {
        let response = self
            .workers()
            .drain(v1::DrainWorkerRequest {
                name: name.to_owned(),
            })
            .await
            .map_err(|s| self.status_error("draining the worker", s))?;
        Ok(response.into_inner().worker)
    }

    /// `Workers.Pause` (`pause`) or `Workers.Resume`: the worker as the coordinator left it.
    pub async fn pause_worker(
        &self,
        name: &str,
        pause: bool,
    ) -> Result<Option<v1::WorkerInfo>, ClientError> {
        let name = name.to_owned();
        let response = if pause {
            self.workers()
                .pause(v1::PauseWorkerRequest { name })
                .await
                .map_err(|s| self.status_error("pausing the worker", s))?
                .into_inner()
                .worker
        } else {
            self.workers()
                .resume(v1::ResumeWorkerRequest { name })
                .await
                .map_err(|s| self.status_error("resuming the worker", s))?
                .into_inner()
                .worker
        };
        Ok(response)
    }

    /// `Workers.List`.
    pub async fn list_workers(&self) -> Result<Vec<v1::WorkerInfo>, ClientError> {
        let response = self
            .workers()
            .list(v1::ListWorkersRequest {})
            .await
            .map_err(|s| self.status_error("listing workers", s))?;
        Ok(response.into_inner().workers)
    }

    /// `Workers.Watch`: the attached workers now, then again after each change.
    pub async fn watch_workers(
        &self,
    ) -> Result<tonic::Streaming<v1::ListWorkersResponse>, ClientError> {
        let response = self
            .workers()
            .watch(v1::WatchWorkersRequest {})
            .await
            .map_err(|s| self.status_error("watching the workers", s))?;
        Ok(response.into_inner())
    }

    /// `Builds.Logs`: every recorded line of the build (of `platform` only, when given), oldest
    /// first.
    pub async fn build_logs(
        &self,
        id: BuildId,
        platform: Option<&Platform>,
    ) -> Result<Vec<v1::LogLine>, ClientError> {
        let response = self
            .builds()
            .logs(v1::BuildLogsRequest {
                build_id: id.to_string(),
                platform: platform.map(v1::Platform::from),
            })
            .await
            .map_err(|s| self.status_error("getting the build's logs", s))?;
        Ok(response.into_inner().lines)
    }

    /// `Builds.Teams`: usage per team.
    pub async fn list_teams(&self) -> Result<Vec<v1::TeamInfo>, ClientError> {
        let response = self
            .builds()
            .teams(v1::ListTeamsRequest {})
            .await
            .map_err(|s| self.status_error("listing teams", s))?;
        Ok(response.into_inner().teams)
    }

    /// `Builds.Queue`: the jobs waiting for a slot.
    pub async fn queue(&self) -> Result<Vec<v1::QueuedJob>, ClientError> {
        let response = self
            .builds()
            .queue(v1::QueueRequest {})
            .await
            .map_err(|s| self.status_error("listing the queue", s))?;
        Ok(response.into_inner().jobs)
    }
}

/// The TLS settings for an https:// coordinator: the CA of `options` alone, or the system roots.
fn tls_config(options: &ConnectOptions) -> Result<ClientTlsConfig, ClientError> {
    let config = ClientTlsConfig::new().timeout(CONNECT_TIMEOUT);
    let Some(ca) = &options.ca_cert else {
        return Ok(config.with_native_roots());
    };
    let bad = |reason: String| ClientError::CaCert {
        path: ca.value.clone(),
        origin: ca.origin.clone(),
        reason,
    };
    let pem = std::fs::read(&ca.value).map_err(|e| bad(io_reason(&e)))?;
    use rustls::pki_types::{CertificateDer, pem::PemObject as _};
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("it is not PEM: {e}")))?;
    if certificates.is_empty() {
        return Err(bad(
            "it holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_owned(),
        ));
    }
    Ok(config.ca_certificate(Certificate::from_pem(pem)))
}

/// What to do when the coordinator's certificate is not trusted.
fn ca_hint(options: &ConnectOptions) -> String {
    match &options.ca_cert {
        Some(ca) => format!(
            "check that `{}` (from {}) is the CA that signed the coordinator's certificate",
            ca.value.display(),
            ca.origin
        ),
        None => format!(
            "if the coordinator's certificate is signed by a private CA, pass --ca-cert PATH (or set MANIFOLD_CA_CERT, or put ca_cert = \"PATH\" in {})",
            options.config_hint()
        ),
    }
}

/// The reason given when an https:// address answers without TLS.
const NOT_TLS: &str = "the server did not answer with TLS";

/// Why a TLS handshake failed, in words, if `e` is a TLS failure.
fn tls_failure(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    if let Some(r) = manifold_proto::discovery::rustls_error_in(e) {
        return Some(describe_rustls(r));
    }
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        let text = err.to_string().to_lowercase();
        if text.contains("tls handshake timeout") {
            return Some("the TLS handshake timed out".to_owned());
        }
        if text.contains("tls handshake eof") {
            return Some(NOT_TLS.to_owned());
        }
        if text.contains("http/2 was not negotiated") {
            return Some("the server does not speak HTTP/2 over TLS (ALPN h2)".to_owned());
        }
        if text.contains("no native certs found") {
            return Some("this machine has no system CA certificates".to_owned());
        }
        current = err.source();
    }
    None
}

fn describe_rustls(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => {
            "its certificate is signed by an unknown CA".to_owned()
        }
        rustls::Error::InvalidCertificate(C::BadSignature) => {
            "its certificate is signed by an unknown CA (one named like a trusted CA)".to_owned()
        }
        rustls::Error::InvalidCertificate(
            C::NotValidForName | C::NotValidForNameContext { .. },
        ) => "its certificate is not valid for this host name".to_owned(),
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "its certificate has expired".to_owned()
        }
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            NOT_TLS.to_owned()
        }
        other => simplify_reason(&other.to_string()),
    }
}

/// The words for a status code, for statuses that carry no message.
fn code_text(code: Code) -> &'static str {
    match code {
        Code::InvalidArgument => "invalid argument",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::PermissionDenied => "permission denied",
        Code::Unauthenticated => "unauthenticated",
        Code::FailedPrecondition => "failed precondition",
        Code::ResourceExhausted => "resource exhausted",
        Code::DeadlineExceeded => "deadline exceeded",
        Code::Unimplemented => "the coordinator does not implement this call",
        Code::Cancelled => "cancelled",
        Code::Aborted => "aborted",
        Code::DataLoss => "data loss",
        Code::OutOfRange => "out of range",
        Code::Unavailable => "unavailable",
        Code::Internal => "internal error in the coordinator",
        Code::Ok | Code::Unknown => "unknown error",
    }
}

/// The innermost error of a chain, as text.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut current = e;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

/// Why a connection failed, in a few lowercase words (`connection refused`).
fn transport_reason(e: &(dyn std::error::Error + 'static)) -> String {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return io_reason(io);
        }
        current = err.source();
    }
    simplify_reason(&root_cause(e))
}

fn io_reason(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => "connection refused".to_owned(),
        ConnectionReset => "connection reset".to_owned(),
        TimedOut => "timed out".to_owned(),
        HostUnreachable => "host unreachable".to_owned(),
        NetworkUnreachable => "network unreachable".to_owned(),
        AddrNotAvailable => "address not available".to_owned(),
        _ => simplify_reason(&e.to_string()),
    }
}

/// Lowercases a transport message and drops the `(os error N)` noise.
fn simplify_reason(message: &str) -> String {
    let lower = message.to_lowercase();
    for known in [
        "connection refused",
        "connection reset",
        "timed out",
        "broken pipe",
    ] {
        if lower.contains(known) {
            return known.to_owned();
        }
    }
    match lower.find(" (os error") {
        Some(i) => lower[..i].to_owned(),
        None => lower,
    }
}

/// Which page of builds `Builds.List` answers.
#[derive(Debug, Clone, Copy, Default)]
pub struct ListQuery {
    /// Page size; 0 means the coordinator's default (100), at most 1000.
    pub limit: u32,
    /// Only builds submitted before this one.
    pub before: Option<BuildId>,
    /// Only builds created at or after this Unix time in ms.
    pub since_ms: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refused_connection_names_the_address_and_the_fix() {
        // Port 1 on loopback is not listening in any sane test environment.
        let err = Coordinator::connect("http://127.0.0.1:1")
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot reach the coordinator at http://127.0.0.1:1: connection refused; is manifold-coordinator running? set --coordinator or MANIFOLD_COORDINATOR"
        );
    }

    #[tokio::test]
    async fn bad_addresses_are_rejected_before_dialling() {
        let err = Coordinator::connect("ftp://example.invalid")
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::InvalidAddress { .. }), "{err}");
        let err = Coordinator::connect("http://exa mple:1").await.unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid coordinator address `http://exa mple:1`"),
            "{err}"
        );
        // One bad address in a list refuses the whole list before the good one is dialled.
        let err = Coordinator::connect("127.0.0.1:1,http://build.example.com:7700")
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Plaintext { .. }), "{err}");
    }

    #[test]
    fn plain_http_is_only_for_loopback() {
        for ok in [
            "http://127.0.0.1:7700",
            "127.0.0.1:7700",
            "http://127.3.2.1:1",
            "http://localhost:7700",
            "http://LOCALHOST",
            "http://[::1]:7700",
            "https://build.example.com:7700",
            "https://10.0.0.5",
        ] {
            assert!(target(ok).is_ok(), "{ok}: {:?}", target(ok));
        }
        assert!(target("https://build.example.com:7700").unwrap().tls);
        assert!(!target("127.0.0.1:7700").unwrap().tls);
        let err = target("http://build.example.com:7700").unwrap_err();
        assert_eq!(
            err.to_string(),
            "refusing plain http:// to `build.example.com` in `http://build.example.com:7700`: \
             only loopback coordinators may be reached without TLS; use https:// \
             (https://build.example.com:7700)"
        );
        for refused in [
            "10.0.0.5:7700",
            "http://0.0.0.0:7700",
            "http://[::2]:7700",
            "http://localhost.example.com",
            "http://128.0.0.1",
        ] {
            assert!(
                matches!(target(refused), Err(ClientError::Plaintext { .. })),
                "{refused}: {:?}",
                target(refused)
            );
        }
    }

    #[test]
    fn tokens_never_show_in_debug_output_and_must_fit_a_header() {
        let token = Token::new("  s3cr3t-t0ken\n");
        assert!(!format!("{token:?}").contains("s3cr3t"));
        let bearer = token.bearer().unwrap();
        assert_eq!(bearer.to_str().unwrap(), "Bearer s3cr3t-t0ken");
        assert!(!format!("{bearer:?}").contains("s3cr3t"), "{bearer:?}");
        assert!(!format!("{:?}", Auth(Some(bearer))).contains("s3cr3t"));
        assert!(Token::new("").is_empty());
        assert!(Token::new("two words").bearer().is_none());
        assert!(Token::new("caf\u{e9}").bearer().is_none());
        let options = ConnectOptions {
            token: Some(Setting::new(Token::new("s3cr3t"), "--token")),
            ..Default::default()
        };
        assert!(!format!("{options:?}").contains("s3cr3t"));
    }

    #[tokio::test]
    async fn an_unsendable_token_is_refused_without_showing_it() {
        let options = ConnectOptions {
            token: Some(Setting::new(Token::new("abc\u{7f}def"), "MANIFOLD_TOKEN")),
            ..Default::default()
        };
        let err = Coordinator::connect_with("http://127.0.0.1:1", &options)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the token from MANIFOLD_TOKEN cannot be sent: it contains spaces, control or \
             non-ASCII characters; check it for a stray quote or line break"
        );
    }

    #[tokio::test]
    async fn an_unusable_ca_file_is_named_before_dialling() {
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("ca.pem");
        std::fs::write(&not_pem, "hello\n").unwrap();
        let connect = |path: PathBuf| async move {
            let options = ConnectOptions {
                ca_cert: Some(Setting::new(path, "--ca-cert")),
                ..Default::default()
            };
            Coordinator::connect_with("https://127.0.0.1:1", &options)
                .await
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            connect(not_pem.clone()).await,
            format!(
                "cannot use the CA certificate `{}` (from --ca-cert): it holds no PEM \
                 certificate (-----BEGIN CERTIFICATE-----)",
                not_pem.display()
            )
        );
        let missing = dir.path().join("missing.pem");
        assert_eq!(
            connect(missing.clone()).await,
            format!(
                "cannot use the CA certificate `{}` (from --ca-cert): no such file or directory",
                missing.display()
            )
        );
    }

    fn lazy(options: ConnectOptions) -> Coordinator {
        Coordinator {
            address: "http://c:1".into(),
            channel: Endpoint::from_static("http://c:1").connect_lazy(),
            auth: Auth(None),
            options,
        }
    }

    #[tokio::test]
    async fn a_refused_token_says_where_it_came_from_and_where_tokens_go() {
        let config = PathBuf::from("/home/me/.config/manifold/config.toml");
        let coordinator = lazy(ConnectOptions {
            token: Some(Setting::new(Token::new("s3cr3t"), "MANIFOLD_TOKEN")),
            config_file: Some(config.clone()),
            ..Default::default()
        });
        let err = coordinator.status_error(
            "listing builds",
            Status::unauthenticated("unknown or revoked token"),
        );
        assert_eq!(
            err.to_string(),
            "the coordinator at http://c:1 refused the token from MANIFOLD_TOKEN: unknown or \
             revoked token; pass --token, set MANIFOLD_TOKEN, or put token = \"...\" in \
             /home/me/.config/manifold/config.toml"
        );
        assert_eq!(err.code(), Some(Code::Unauthenticated));
        let err = lazy(ConnectOptions::default())
            .status_error("listing builds", Status::unauthenticated(""));
        assert_eq!(
            err.to_string(),
            "the coordinator at http://c:1 requires a token: unauthenticated; pass --token, set \
             MANIFOLD_TOKEN, or put token = \"...\" in ~/.config/manifold/config.toml"
        );
    }

    #[tokio::test]
    async fn permission_denied_keeps_what_the_coordinator_says_is_not_allowed() {
        let coordinator = lazy(ConnectOptions::default());
        let err = coordinator.status_error(
            "cancelling the build",
            Status::permission_denied("team `web` may not cancel builds of team `data`"),
        );
        assert_eq!(
            err.to_string(),
            "cancelling the build: permission denied: team `web` may not cancel builds of team `data`"
        );
        let err = coordinator.status_error(
            "draining the worker",
            Status::permission_denied("permission denied: only admins drain workers"),
        );
        assert_eq!(
            err.to_string(),
            "draining the worker: permission denied: only admins drain workers"
        );
    }

    #[tokio::test]
    async fn statuses_keep_their_message_not_a_debug_dump() {
        let coordinator = lazy(ConnectOptions::default());
        let err = coordinator.status_error(
            "the coordinator refused the build",
            Status::invalid_argument("unknown platform `linux/amd46`"),
        );
        assert_eq!(
            err.to_string(),
            "the coordinator refused the build: unknown platform `linux/amd46`"
        );
        assert_eq!(err.code(), Some(Code::InvalidArgument));
        let err = coordinator.status_error("getting the build", Status::not_found(""));
        assert_eq!(err.to_string(), "getting the build: not found");
        let err = coordinator.status_error(
            "watching the build",
            Status::unavailable("tcp connect error: Connection refused (os error 111)"),
        );
        assert!(
            err.to_string()
                .starts_with("cannot reach the coordinator at http://c:1: connection refused;"),
            "{err}"
        );
    }
}
