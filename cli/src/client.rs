//! Talking to the coordinator: connecting, one method per RPC the CLI uses, and turning transport
//! failures and gRPC statuses into messages a person can act on.

use std::time::Duration;

use futures::{Stream, StreamExt};
use manifold_proto::v1::builds_client::BuildsClient;
use manifold_proto::v1::contexts_client::ContextsClient;
use manifold_proto::v1::workers_client::WorkersClient;
use manifold_proto::v1::{self};
use manifold_proto::{BuildId, MAX_MESSAGE_BYTES};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// How long connecting to the coordinator may take before it counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A failure to talk to the coordinator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The coordinator address is not a URL the CLI can dial.
    #[error(
        "invalid coordinator address `{address}`: {reason}; expected a URL such as http://127.0.0.1:7700 (set --coordinator or MANIFOLD_COORDINATOR)"
    )]
    InvalidAddress {
        /// The address as given.
        address: String,
        /// What is wrong with it.
        reason: String,
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

impl ClientError {
    /// The gRPC code of an [`ClientError::Rpc`], if it is one.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Rpc { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// A connection to the coordinator. Cheap to clone; the underlying channel reconnects by itself.
#[derive(Debug, Clone)]
pub struct Coordinator {
    address: String,
    channel: Channel,
}

impl Coordinator {
    /// Dials the coordinator at `addresses`: one URL, or several comma-separated (a farm with
    /// several coordinators on etcd). Followers redirect to the leader; the first coordinator that
    /// serves is used. Fails fast with [`ClientError::Unreachable`] when none answers.
    pub async fn connect(addresses: &str) -> Result<Self, ClientError> {
        let mut queue = manifold_proto::discovery::parse_addresses(addresses);
        if queue.is_empty() {
            queue.push(addresses.to_owned());
        }
        let mut tried: Vec<String> = Vec::new();
        let mut first_error = None;
        while !queue.is_empty() {
            let address = queue.remove(0);
            if tried.contains(&address) {
                continue;
            }
            tried.push(address.clone());
            let coordinator = match Self::connect_one(&address).await {
                Ok(c) => c,
                Err(e @ ClientError::InvalidAddress { .. }) => return Err(e),
                Err(e) => {
                    first_error.get_or_insert(e);
                    continue;
                }
            };
            let probe = coordinator
                .builds()
                .list(v1::ListBuildsRequest { limit: 1 })
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
                _ => return Ok(coordinator),
            }
        }
        Err(first_error.unwrap_or_else(|| ClientError::InvalidAddress {
            address: addresses.to_owned(),
            reason: "no address given".to_owned(),
        }))
    }

    /// Dials one `address` (`http://host:port`; a bare `host:port` means http) and fails fast with
    /// [`ClientError::Unreachable`] when nothing answers.
    async fn connect_one(address: &str) -> Result<Self, ClientError> {
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
        if !url.starts_with("http://") {
            return Err(invalid("only http:// addresses are supported".to_owned()));
        }
        let endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| invalid(root_cause(&e)))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            // Builds are watched for a long time over idle streams: keep NATs and proxies open.
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true);
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| ClientError::Unreachable {
                address: url.clone(),
                reason: transport_reason(&e),
            })?;
        Ok(Self {
            address: url,
            channel,
        })
    }

    /// The URL dialled.
    pub fn address(&self) -> &str {
        &self.address
    }

    fn builds(&self) -> BuildsClient<Channel> {
        BuildsClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    fn contexts(&self) -> ContextsClient<Channel> {
        ContextsClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    fn workers(&self) -> WorkersClient<Channel> {
        WorkersClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Translates a status into a [`ClientError`]: a lost connection reads like an unreachable
    /// coordinator, anything else keeps the coordinator's message.
    pub fn status_error(&self, what: &'static str, status: Status) -> ClientError {
        let message = status.message().trim();
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

    /// `Builds.List`: newest first; `limit` 0 means the coordinator's default.
    pub async fn list_builds(&self, limit: u32) -> Result<Vec<v1::Build>, ClientError> {
        let response = self
            .builds()
            .list(v1::ListBuildsRequest { limit })
            .await
            .map_err(|s| self.status_error("listing builds", s))?;
        Ok(response.into_inner().builds)
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

    /// `Workers.List`.
    pub async fn list_workers(&self) -> Result<Vec<v1::WorkerInfo>, ClientError> {
        let response = self
            .workers()
            .list(v1::ListWorkersRequest {})
            .await
            .map_err(|s| self.status_error("listing workers", s))?;
        Ok(response.into_inner().workers)
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
        let err = Coordinator::connect("https://example.invalid")
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::InvalidAddress { .. }), "{err}");
        let err = Coordinator::connect("http://exa mple:1").await.unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid coordinator address `http://exa mple:1`"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn statuses_keep_their_message_not_a_debug_dump() {
        let coordinator = Coordinator {
            address: "http://c:1".into(),
            channel: Endpoint::from_static("http://c:1").connect_lazy(),
        };
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
