//! An in-memory twin of the coordinator's `Contexts`, `Builds` and `Workers` services, served by
//! tonic on 127.0.0.1:0 (plain, or TLS with a test CA), for the crate tests. It records what the
//! CLI sent (the `authorization` metadata of every call included), can require a token, and plays
//! a scripted build.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use manifold_proto::v1::builds_server::{Builds, BuildsServer};
use manifold_proto::v1::contexts_server::{Contexts, ContextsServer};
use manifold_proto::v1::workers_server::{Workers, WorkersServer};
use manifold_proto::v1::{self, build_event::Event};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::service::Interceptor;
use tonic::transport::{Identity, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

/// The build id the twin hands out.
pub const BUILD_ID: &str = "3f2b8c1e-7d4a-4c61-9a57-0b6e2f1d9c3a";

/// What the twin does and what it saw.
#[derive(Default)]
pub struct Twin {
    /// Contexts held, by digest.
    pub contexts: Mutex<HashMap<String, Vec<u8>>>,
    /// `Has` calls.
    pub has_calls: AtomicUsize,
    /// `Upload` calls.
    pub uploads: AtomicUsize,
    /// Bytes received by all uploads.
    pub uploaded_bytes: AtomicU64,
    /// Run during `Has`, before answering (e.g. to change the context between the passes).
    pub on_has: Mutex<Option<Box<dyn FnMut() + Send>>>,
    /// When set, every upload is refused with this status after reading it.
    pub reject_uploads: Mutex<Option<Status>>,
    /// Submitted requests.
    pub submitted: Mutex<Vec<v1::SubmitBuildRequest>>,
    /// Events every watcher receives first.
    pub history: Mutex<Vec<v1::BuildEvent>>,
    /// The open watch stream, to push events later.
    pub watcher: Mutex<Option<mpsc::Sender<Result<v1::BuildEvent, Status>>>>,
    /// `Watch` calls.
    pub watches: AtomicUsize,
    /// What `Get` answers.
    pub build: Mutex<v1::Build>,
    /// `Cancel` calls.
    pub cancels: AtomicUsize,
    /// Whether `Cancel` ends the build with a CANCELLED event.
    pub cancel_finishes: std::sync::atomic::AtomicBool,
    /// The `authorization` metadata of every call received, in order (None: absent).
    pub authorizations: Mutex<Vec<Option<String>>>,
    /// When set, calls without `authorization: Bearer <this>` are refused as Unauthenticated.
    pub required_token: Mutex<Option<String>>,
    /// What `Workers.List` answers.
    pub workers: Mutex<Vec<v1::WorkerInfo>>,
    /// What `Builds.Teams` answers.
    pub teams: Mutex<Vec<v1::TeamInfo>>,
    /// What `Builds.Queue` answers.
    pub queue: Mutex<Vec<v1::QueuedJob>>,
    /// The lines `Builds.Logs` has for [`BUILD_ID`], filtered by the request's platform.
    pub logs: Mutex<Vec<v1::LogLine>>,
    /// `Builds.Logs` requests.
    pub logs_requests: Mutex<Vec<v1::BuildLogsRequest>>,
    /// When set, `Teams`, `Queue` and `Logs` answer this status instead (e.g. PermissionDenied).
    pub refuse_listings: Mutex<Option<Status>>,
}

impl Twin {
    /// A twin with no contexts and no build.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Sets the events of the scripted build.
    pub fn script(&self, events: Vec<Event>) {
        *self.history.lock().unwrap() = events
            .into_iter()
            .enumerate()
            .map(|(i, event)| v1::BuildEvent {
                sequence: i as u64,
                at_ms: 1,
                event: Some(event),
            })
            .collect();
    }

    /// Waits (polling, with a deadline) until `check` holds.
    pub async fn wait_until(&self, what: &str, check: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !check(self) {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[derive(Clone)]
struct Service(Arc<Twin>);

/// Records every call's `authorization` metadata and enforces [`Twin::required_token`].
#[derive(Clone)]
struct Gate(Arc<Twin>);

impl Interceptor for Gate {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .map(|v| v.to_str().unwrap_or("<not ascii>").to_owned());
        self.0
            .authorizations
            .lock()
            .unwrap()
            .push(authorization.clone());
        if let Some(token) = self.0.required_token.lock().unwrap().as_ref()
            && authorization.as_deref() != Some(&format!("Bearer {token}"))
        {
            return Err(Status::unauthenticated(if authorization.is_none() {
                "this coordinator requires a token"
            } else {
                "unknown or revoked token"
            }));
        }
        Ok(request)
    }
}

impl Service {
    fn refused(&self) -> Result<(), Status> {
        match self.0.refuse_listings.lock().unwrap().clone() {
            Some(status) => Err(status),
            None => Ok(()),
        }
    }
}

#[tonic::async_trait]
impl Contexts for Service {
    async fn has(
        &self,
        request: Request<v1::HasContextRequest>,
    ) -> Result<Response<v1::HasContextResponse>, Status> {
        self.0.has_calls.fetch_add(1, Ordering::SeqCst);
        if let Some(hook) = self.0.on_has.lock().unwrap().as_mut() {
            hook();
        }
        let present = self
            .0
            .contexts
            .lock()
            .unwrap()
            .contains_key(&request.into_inner().digest);
        Ok(Response::new(v1::HasContextResponse { present }))
    }

    async fn upload(
        &self,
        request: Request<Streaming<v1::UploadContextChunk>>,
    ) -> Result<Response<v1::UploadContextResponse>, Status> {
        self.0.uploads.fetch_add(1, Ordering::SeqCst);
        let mut stream = request.into_inner();
        let mut expected = None;
        let mut data = Vec::new();
        while let Some(chunk) = stream.message().await? {
            if expected.is_none() {
                expected = Some(chunk.digest.clone());
            }
            self.0
                .uploaded_bytes
                .fetch_add(chunk.data.len() as u64, Ordering::SeqCst);
            data.extend_from_slice(&chunk.data);
        }
        if let Some(status) = self.0.reject_uploads.lock().unwrap().clone() {
            return Err(status);
        }
        let expected = expected.ok_or_else(|| Status::invalid_argument("empty upload"))?;
        let actual = format!("sha256:{}", hex::encode(Sha256::digest(&data)));
        if actual != expected {
            return Err(Status::invalid_argument(format!(
                "context digest mismatch: expected {expected}, received {actual}"
            )));
        }
        let size = data.len() as u64;
        self.0.contexts.lock().unwrap().insert(actual.clone(), data);
        Ok(Response::new(v1::UploadContextResponse {
            digest: actual,
            size,
        }))
    }
}

#[tonic::async_trait]
impl Builds for Service {
    async fn submit(
        &self,
        request: Request<v1::SubmitBuildRequest>,
    ) -> Result<Response<v1::SubmitBuildResponse>, Status> {
        let request = request.into_inner();
        if !self
            .0
            .contexts
            .lock()
            .unwrap()
            .contains_key(&request.context_digest)
        {
            return Err(Status::invalid_argument(format!(
                "unknown context `{}`: upload it first",
                request.context_digest
            )));
        }
        self.0.submitted.lock().unwrap().push(request);
        Ok(Response::new(v1::SubmitBuildResponse {
            build_id: BUILD_ID.to_owned(),
        }))
    }

    type WatchStream = ReceiverStream<Result<v1::BuildEvent, Status>>;

    async fn watch(
        &self,
        request: Request<v1::WatchBuildRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        if request.into_inner().build_id != BUILD_ID {
            return Err(Status::not_found("no such build"));
        }
        let (tx, rx) = mpsc::channel(64);
        for event in self.0.history.lock().unwrap().iter() {
            tx.try_send(Ok(event.clone())).expect("history fits");
        }
        *self.0.watcher.lock().unwrap() = Some(tx);
        self.0.watches.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get(
        &self,
        request: Request<v1::GetBuildRequest>,
    ) -> Result<Response<v1::Build>, Status> {
        let id = request.into_inner().build_id;
        if id != BUILD_ID {
            return Err(Status::not_found(format!("no build `{id}`")));
        }
        Ok(Response::new(self.0.build.lock().unwrap().clone()))
    }

    async fn list(
        &self,
        _request: Request<v1::ListBuildsRequest>,
    ) -> Result<Response<v1::ListBuildsResponse>, Status> {
        Ok(Response::new(v1::ListBuildsResponse {
            builds: vec![self.0.build.lock().unwrap().clone()],
            next_before: String::new(),
        }))
    }

    async fn cancel(
        &self,
        _request: Request<v1::CancelBuildRequest>,
    ) -> Result<Response<v1::CancelBuildResponse>, Status> {
        self.0.cancels.fetch_add(1, Ordering::SeqCst);
        if self.0.cancel_finishes.load(Ordering::SeqCst) {
            let next = self.0.history.lock().unwrap().len() as u64;
            let watcher = self.0.watcher.lock().unwrap().clone();
            if let Some(tx) = watcher {
                let finished = v1::BuildEvent {
                    sequence: next,
                    at_ms: 2,
                    event: Some(Event::Finished(v1::BuildFinished {
                        state: v1::BuildState::Cancelled as i32,
                        manifest_digest: String::new(),
                        error: "cancelled by the user".into(),
                    })),
                };
                let _ = tx.send(Ok(finished)).await;
            }
        }
        Ok(Response::new(v1::CancelBuildResponse {
            build: Some(self.0.build.lock().unwrap().clone()),
        }))
    }

    async fn publish(
        &self,
        _request: Request<v1::PublishBuildRequest>,
    ) -> Result<Response<v1::PublishBuildResponse>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }

    async fn logs(
        &self,
        request: Request<v1::BuildLogsRequest>,
    ) -> Result<Response<v1::BuildLogsResponse>, Status> {
        self.refused()?;
        let request = request.into_inner();
        self.0.logs_requests.lock().unwrap().push(request.clone());
        if request.build_id != BUILD_ID {
            return Err(Status::not_found(format!(
                "no build `{}`",
                request.build_id
            )));
        }
        let lines = self
            .0
            .logs
            .lock()
            .unwrap()
            .iter()
            .filter(|l| request.platform.is_none() || l.platform == request.platform)
            .cloned()
            .collect();
        Ok(Response::new(v1::BuildLogsResponse { lines }))
    }

    async fn teams(
        &self,
        _request: Request<v1::ListTeamsRequest>,
    ) -> Result<Response<v1::ListTeamsResponse>, Status> {
        self.refused()?;
        Ok(Response::new(v1::ListTeamsResponse {
            teams: self.0.teams.lock().unwrap().clone(),
        }))
    }

    async fn queue(
        &self,
        _request: Request<v1::QueueRequest>,
    ) -> Result<Response<v1::QueueResponse>, Status> {
        self.refused()?;
        Ok(Response::new(v1::QueueResponse {
            jobs: self.0.queue.lock().unwrap().clone(),
        }))
    }
}

#[tonic::async_trait]
impl Workers for Service {
    type AttachStream = ReceiverStream<Result<v1::CoordinatorMessage, Status>>;

    async fn attach(
        &self,
        _request: Request<Streaming<v1::WorkerMessage>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        Err(Status::unimplemented(
            "the fake coordinator takes no workers",
        ))
    }

    type DownloadContextStream = ReceiverStream<Result<v1::ContextChunk, Status>>;

    async fn download_context(
        &self,
        _request: Request<v1::DownloadContextRequest>,
    ) -> Result<Response<Self::DownloadContextStream>, Status> {
        Err(Status::unimplemented(
            "the fake coordinator takes no workers",
        ))
    }

    async fn list(
        &self,
        _request: Request<v1::ListWorkersRequest>,
    ) -> Result<Response<v1::ListWorkersResponse>, Status> {
        Ok(Response::new(v1::ListWorkersResponse {
            workers: self.0.workers.lock().unwrap().clone(),
        }))
    }

    type WatchStream = ReceiverStream<Result<v1::ListWorkersResponse, Status>>;

    async fn watch(
        &self,
        _: Request<v1::WatchWorkersRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }

    async fn drain(
        &self,
        request: Request<v1::DrainWorkerRequest>,
    ) -> Result<Response<v1::DrainWorkerResponse>, Status> {
        let name = request.into_inner().name;
        let mut workers = self.0.workers.lock().unwrap();
        let worker = workers
            .iter_mut()
            .find(|w| w.name == name)
            .ok_or_else(|| Status::not_found(format!("no worker `{name}`")))?;
        worker.draining = true;
        Ok(Response::new(v1::DrainWorkerResponse {
            worker: Some(worker.clone()),
        }))
    }

    async fn pause(
        &self,
        _: Request<v1::PauseWorkerRequest>,
    ) -> Result<Response<v1::PauseWorkerResponse>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }

    async fn resume(
        &self,
        _: Request<v1::ResumeWorkerRequest>,
    ) -> Result<Response<v1::ResumeWorkerResponse>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }
}

/// A twin being served; dropping it stops the server.
pub struct Served {
    /// `http://127.0.0.1:PORT`, or `https://...` when served with TLS.
    pub address: String,
    _stop: oneshot::Sender<()>,
}

/// Serves `twin` on a free loopback port.
pub async fn serve(twin: Arc<Twin>) -> Served {
    serve_with(twin, None).await
}

/// Serves `twin` on a free loopback port over TLS with `pki`'s server certificate.
pub async fn serve_tls(twin: Arc<Twin>, pki: &Pki) -> Served {
    serve_with(twin, Some(pki)).await
}

async fn serve_with(twin: Arc<Twin>, pki: Option<&Pki>) -> Served {
    // The test process, like the binary, picks its rustls provider explicitly.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let gate = Gate(Arc::clone(&twin));
    let service = Service(twin);
    let mut builder = tonic::transport::Server::builder();
    if let Some(pki) = pki {
        builder = builder
            .tls_config(ServerTlsConfig::new().identity(Identity::from_pem(
                &pki.server_cert_pem,
                &pki.server_key_pem,
            )))
            .unwrap();
    }
    tokio::spawn(
        builder
            .add_service(ContextsServer::with_interceptor(
                service.clone(),
                gate.clone(),
            ))
            .add_service(BuildsServer::with_interceptor(
                service.clone(),
                gate.clone(),
            ))
            .add_service(WorkersServer::with_interceptor(service, gate))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            }),
    );
    let scheme = if pki.is_some() { "https" } else { "http" };
    Served {
        address: format!("{scheme}://{addr}"),
        _stop: stop,
    }
}

/// A test CA and a server certificate it signed for `localhost` and `127.0.0.1`.
pub struct Pki {
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// The server's certificate, PEM.
    pub server_cert_pem: String,
    /// The server's key, PEM.
    pub server_key_pem: String,
}

impl Pki {
    /// A fresh CA (named `manifold test CA`) and server certificate.
    pub fn new() -> Self {
        Self::named("manifold test CA")
    }

    /// A fresh CA with the common name `ca_name`, and a server certificate.
    pub fn named(ca_name: &str) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, ca_name);
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        Self {
            ca_pem: ca.pem(),
            server_cert_pem: server.pem(),
            server_key_pem: key.serialize_pem(),
        }
    }

    /// Writes the CA certificate to `dir/name` and returns its path.
    pub fn write_ca(&self, dir: &std::path::Path, name: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, &self.ca_pem).unwrap();
        path
    }
}

/// Writes `files` (path, contents) under a fresh temporary directory.
pub fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, contents) in files {
        let full = dir.path().join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, contents).unwrap();
    }
    dir
}

/// The wire form of a platform string.
pub fn wire(platform: &str) -> Option<v1::Platform> {
    Some(manifold_proto::Platform::parse(platform).unwrap().into())
}
