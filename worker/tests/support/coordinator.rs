//! A scripted coordinator: a real tonic `Workers` server on 127.0.0.1:0 (plaintext, or TLS with
//! the client certificates it was given) that hands each Attach stream to the test, or refuses it
//! with the statuses queued, and serves build contexts from memory.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;

use manifold_proto::v1::coordinator_message::Msg as FromCoordinator;
use manifold_proto::v1::worker_message::Msg as FromWorker;
use manifold_proto::v1::workers_server::{Workers, WorkersServer};
use manifold_proto::{Platform, v1};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

use super::Context;

/// How long any single expected message may take (builds included).
pub const PATIENCE: Duration = Duration::from_secs(90);

/// One Attach stream, as the test sees it.
pub struct Session {
    pub inbound: Streaming<v1::WorkerMessage>,
    pub outbound: mpsc::Sender<Result<v1::CoordinatorMessage, Status>>,
    /// The client certificate chain (DER) the worker presented over TLS, leaf first.
    pub peer_certs: Vec<Vec<u8>>,
}

#[derive(Clone, Default)]
pub struct Fake {
    pub contexts: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    sessions: Arc<Mutex<Option<mpsc::UnboundedSender<Session>>>>,
    /// Answers to the next Attach calls, in order, instead of opening a stream.
    refusals: Arc<Mutex<VecDeque<Status>>>,
    /// Every Attach call is answered with this status until this time.
    refuse_until: Arc<Mutex<Option<(Instant, Status)>>>,
    /// Attach calls received, refused ones included.
    attaches: Arc<watch::Sender<usize>>,
    /// TCP connections accepted, whether or not TLS then succeeded.
    connections: Arc<watch::Sender<usize>>,
}

#[tonic::async_trait]
impl Workers for Fake {
    type AttachStream = ReceiverStream<Result<v1::CoordinatorMessage, Status>>;
    type DownloadContextStream = ReceiverStream<Result<v1::ContextChunk, Status>>;
    type WatchStream = ReceiverStream<Result<v1::ListWorkersResponse, Status>>;

    async fn attach(
        &self,
        request: Request<Streaming<v1::WorkerMessage>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        self.attaches.send_modify(|n| *n += 1);
        if let Some(status) = self.refusals.lock().unwrap().pop_front() {
            return Err(status);
        }
        if let Some((until, status)) = &*self.refuse_until.lock().unwrap()
            && Instant::now() < *until
        {
            return Err(status.clone());
        }
        let peer_certs = request
            .peer_certs()
            .map(|certs| certs.iter().map(|c| c.to_vec()).collect())
            .unwrap_or_default();
        let (outbound, rx) = mpsc::channel(64);
        let session = Session {
            inbound: request.into_inner(),
            outbound,
            peer_certs,
        };
        let sessions = self.sessions.lock().unwrap();
        sessions.as_ref().unwrap().send(session).unwrap();
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn download_context(
        &self,
        request: Request<v1::DownloadContextRequest>,
    ) -> Result<Response<Self::DownloadContextStream>, Status> {
        let digest = request.into_inner().digest;
        let bytes = self
            .contexts
            .lock()
            .unwrap()
            .get(&digest)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("no context {digest}")))?;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            for chunk in bytes.chunks(64 * 1024) {
                let chunk = v1::ContextChunk {
                    data: chunk.to_vec(),
                };
                if tx.send(Ok(chunk)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn list(
        &self,
        _: Request<v1::ListWorkersRequest>,
    ) -> Result<Response<v1::ListWorkersResponse>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }

    async fn watch(
        &self,
        _: Request<v1::WatchWorkersRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }

    async fn drain(
        &self,
        _: Request<v1::DrainWorkerRequest>,
    ) -> Result<Response<v1::DrainWorkerResponse>, Status> {
        Err(Status::unimplemented("not in this fake"))
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

impl Fake {
    /// Starts the server; returns it, its address and the receiver of the worker's streams.
    pub async fn start() -> (Fake, SocketAddr, mpsc::UnboundedReceiver<Session>) {
        Self::start_with(None).await
    }

    /// Starts the server over TLS with these settings (identity, client CA, client auth).
    pub async fn start_tls(
        tls: tonic::transport::ServerTlsConfig,
    ) -> (Fake, SocketAddr, mpsc::UnboundedReceiver<Session>) {
        Self::start_with(Some(tls)).await
    }

    async fn start_with(
        tls: Option<tonic::transport::ServerTlsConfig>,
    ) -> (Fake, SocketAddr, mpsc::UnboundedReceiver<Session>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let fake = Fake::default();
        let (tx, sessions) = mpsc::unbounded_channel();
        *fake.sessions.lock().unwrap() = Some(tx);
        let connections = fake.connections.clone();
        let incoming = TcpListenerStream::new(listener).inspect(move |_| {
            connections.send_modify(|n| *n += 1);
        });
        let mut server = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            server = server.tls_config(tls).unwrap();
        }
        tokio::spawn(
            server
                .add_service(WorkersServer::new(fake.clone()))
                .serve_with_incoming(incoming),
        );
        (fake, address, sessions)
    }

    /// Queues an answer for the next Attach call instead of a stream.
    pub fn refuse_next_attach(&self, status: Status) {
        self.refusals.lock().unwrap().push_back(status);
    }

    /// Answers every Attach call with `status` until `until` (a coordinator that turns workers
    /// back for a while).
    pub fn refuse_attaches_until(&self, until: Instant, status: Status) {
        *self.refuse_until.lock().unwrap() = Some((until, status));
    }

    /// How many Attach calls arrived so far.
    pub fn attaches(&self) -> usize {
        *self.attaches.borrow()
    }

    /// How many TCP connections were accepted so far.
    pub fn connections(&self) -> usize {
        *self.connections.borrow()
    }

    /// Waits until at least `n` TCP connections were accepted, for at most `limit`; whether they were.
    pub async fn connected(&self, n: usize, limit: Duration) -> bool {
        let mut count = self.connections.subscribe();
        tokio::time::timeout(limit, count.wait_for(|c| *c >= n))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Makes a context available for download; returns its digest.
    pub fn serve_context(&self, ctx: &Context) -> String {
        let digest = ctx.digest.to_string();
        self.contexts
            .lock()
            .unwrap()
            .insert(digest.clone(), std::fs::read(&ctx.path).unwrap());
        digest
    }
}

/// The next stream the worker opens, with its hello.
pub async fn attach(sessions: &mut mpsc::UnboundedReceiver<Session>) -> (Session, v1::WorkerHello) {
    let mut session = tokio::time::timeout(PATIENCE, sessions.recv())
        .await
        .expect("the worker did not attach")
        .unwrap();
    let hello = match next(&mut session).await {
        FromWorker::Hello(hello) => hello,
        other => panic!("the first message must be the hello, got {other:?}"),
    };
    (session, hello)
}

pub async fn send(session: &Session, msg: FromCoordinator) {
    session
        .outbound
        .send(Ok(v1::CoordinatorMessage { msg: Some(msg) }))
        .await
        .expect("the worker's stream is gone");
}

pub fn welcome(heartbeat_ms: i64) -> FromCoordinator {
    FromCoordinator::Welcome(v1::Welcome {
        heartbeat_interval_ms: heartbeat_ms,
    })
}

pub async fn next(session: &mut Session) -> FromWorker {
    tokio::time::timeout(PATIENCE, session.inbound.message())
        .await
        .expect("the worker went silent")
        .expect("the worker's stream failed")
        .expect("the worker closed its stream")
        .msg
        .expect("an empty message")
}

/// Reads messages, keeping log lines, until `pick` returns a value; heartbeats are passed to it too.
pub async fn until<T>(
    session: &mut Session,
    lines: &mut Vec<String>,
    mut pick: impl FnMut(&FromWorker) -> Option<T>,
) -> T {
    loop {
        let msg = next(session).await;
        if let FromWorker::Log(log) = &msg {
            lines.extend(log.lines.iter().cloned());
        }
        if let Some(value) = pick(&msg) {
            return value;
        }
    }
}

pub fn assign(job_id: &str, platform: &str, digest: &str, repository: &str) -> FromCoordinator {
    FromCoordinator::Assign(v1::AssignJob {
        job_id: job_id.to_owned(),
        attempt: 1,
        build_id: uuid::Uuid::new_v4().to_string(),
        platform: Some(Platform::parse(platform).unwrap().into()),
        context_digest: digest.to_owned(),
        repository: repository.to_owned(),
        insecure_registry: true,
        ..v1::AssignJob::default()
    })
}

pub fn result_of(job_id: &str) -> impl FnMut(&FromWorker) -> Option<v1::job_result::Outcome> + '_ {
    move |msg| match msg {
        FromWorker::Result(r) if r.job_id == job_id => {
            Some(r.outcome.clone().expect("a result has an outcome"))
        }
        _ => None,
    }
}

pub fn accepted(job_id: &str) -> impl FnMut(&FromWorker) -> Option<()> + '_ {
    move |msg| match msg {
        FromWorker::Accepted(a) if a.job_id == job_id => Some(()),
        FromWorker::Result(r) if r.job_id == job_id => panic!("refused: {r:?}"),
        _ => None,
    }
}

pub fn logged<'a>(needle: &'a str) -> impl FnMut(&FromWorker) -> Option<()> + 'a {
    move |msg| match msg {
        FromWorker::Log(log) if log.lines.iter().any(|l| l.contains(needle)) => Some(()),
        FromWorker::Result(r) => panic!("the job ended before logging {needle}: {r:?}"),
        _ => None,
    }
}

pub fn new_job_id() -> String {
    uuid::Uuid::new_v4().to_string()
}
