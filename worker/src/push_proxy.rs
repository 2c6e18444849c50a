//! The graphdriver fast path: the daemon pushes, the worker decides where it lands.
//!
//! On a graphdriver engine the Engine API has no per-layer export: `docker save` tars the whole
//! image on every push, although the registry has all but one small layer. `docker push` is fast
//! because the daemon remembers which compressed blob each layer became (its distribution
//! metadata) and only asks the registry whether it holds it. But the daemon pushes a tag, and a
//! farm must not write a tag into a team's repository before the list.
//!
//! So the worker runs this registry front on 127.0.0.1 (Docker treats loopback registries as
//! plain HTTP), tags the built image `127.0.0.1:PORT/manifold-push/<token>:push` and lets the
//! daemon push it there. Each push has a [`Route`]: a random token naming the job's target
//! repository and its registry [`Session`] (the job's own credentials), open only while that push
//! runs. The front answers the daemon's requests against the target repository:
//! - `HEAD` of a blob: whether the target repository holds it (the daemon's "Layer already
//!   exists"), with its size, known from earlier pushes or from the registry;
//! - a cross-repository mount request: mounted upstream from a repository of the same registry
//!   this worker pushed that blob to, else a new upload;
//! - an upload: forwarded to an upload the front opens in the target repository, each of the
//!   daemon's requests as one request streamed as it arrives (nothing on disk, nothing hashed
//!   here: the registry checks the digest the daemon names, as it does for `docker push`);
//! - the manifest: pushed to the target repository **by digest only**, as the OCI image manifest
//!   of the same blobs (the other push paths write OCI too, so one list never mixes media types);
//!   the tag stays here.
//!
//! So each layer is compressed once, by the daemon, and only layers the registry lacks are sent;
//! nothing is tagged in the registry, and the local tag is removed after the push. Requests
//! with an unknown token are refused (404), so another process on the machine (a build step with
//! host networking, say) cannot write through a route it does not know; the token is 128 random
//! bits and exists only during its push.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use manifold_registry::session::{BlobUpload, Mount, RegistryError, Session};
use oci_client::Reference;
use sha2::{Digest as _, Sha256};
use tokio_util::sync::CancellationToken;

use oci_client::RegistryOperation;

use crate::docker::{BuiltImage, DockerEngine};
use crate::job::LogSink;
use crate::push::{PushError, PushTarget, PushedImage};
use read_ahead::read_ahead;

/// The first path component of every repository the daemon pushes to here.
pub const PREFIX: &str = "manifold-push";
/// Largest manifest accepted from the daemon.
const MAX_MANIFEST_BYTES: usize = 4 << 20;

mod read_ahead;

/// The front: its address and the routes of the pushes in progress.
#[derive(Clone)]
pub struct PushProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// Set when the daemon could not reach the front: this worker pushes by `docker save` from
    /// then on (the daemon is on another machine, or in a VM).
    unreachable: Arc<std::sync::OnceLock<String>>,
}

impl std::fmt::Debug for PushProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushProxy")
            .field("addr", &self.addr)
            .field("unreachable", &self.unreachable.get())
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Shared {
    routes: Mutex<HashMap<String, Arc<Route>>>,
    /// Blobs this worker got into a repository through the front: size, and the repositories
    /// (`registry/repository`) that hold them.
    known: Mutex<HashMap<String, Known>>,
}

#[derive(Clone, Debug, Default)]
struct Known {
    size: u64,
    repositories: BTreeSet<String>,
}

/// One push: where the daemon's requests under its token land.
pub struct Route {
    token: String,
    shared: Arc<Shared>,
    session: Session,
    repository: Reference,
    uploads: Mutex<HashMap<String, Upload>>,
    manifest: Mutex<Option<PushedImage>>,
    /// The first registry error, to report instead of the daemon's retelling of it.
    failure: Mutex<Option<RegistryError>>,
    /// Digests of the blobs found there, mounted, uploaded (with their sizes).
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    present: BTreeSet<String>,
    mounted: BTreeSet<String>,
    uploaded: HashMap<String, u64>,
}

/// What a push through the front did with the blobs the daemon offered (each blob once).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Blobs the target repository held already.
    pub present: u32,
    /// Blobs mounted from another repository of the registry.
    pub mounted: u32,
    /// Blobs uploaded, and their bytes.
    pub uploaded: u32,
    /// Bytes of the uploaded blobs.
    pub uploaded_bytes: u64,
}

/// An upload of the daemon's, as the front holds it between its requests.
#[derive(Debug)]
enum Upload {
    /// Open in the target repository, waiting for the daemon's next request.
    Open(Box<BlobUpload>),
    /// One of the daemon's requests is being forwarded.
    Busy,
}

impl PushProxy {
    /// Starts the front on 127.0.0.1 (a free port); it serves until `shutdown`.
    pub async fn start(shutdown: CancellationToken) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(shared.clone());
        tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "the push front stopped");
            }
        });
        tracing::info!(%addr, "graphdriver push front listening");
        Ok(Self {
            addr,
            shared,
            unreachable: Default::default(),
        })
    }

    /// Why the daemon cannot push through the front, once it could not.
    pub fn unreachable(&self) -> Option<&str> {
        self.unreachable.get().map(String::as_str)
    }

    /// Records that the daemon could not reach the front (`why`): later pushes use `save`.
    pub fn mark_unreachable(&self, why: String) {
        let _ = self.unreachable.set(why);
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Opens a route to `repository` through `session`: the local repository name the daemon
    /// pushes to (`127.0.0.1:PORT/manifold-push/<token>`) and the route; dropping the route
    /// closes it.
    pub fn open(&self, session: Session, repository: Reference) -> (String, Arc<Route>) {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let route = Arc::new(Route {
            token: token.clone(),
            shared: self.shared.clone(),
            session,
            repository,
            uploads: Mutex::default(),
            manifest: Mutex::default(),
            failure: Mutex::default(),
            seen: Mutex::default(),
        });
        lock(&self.shared.routes).insert(token.clone(), route.clone());
        (format!("{}/{PREFIX}/{token}", self.addr), route)
    }
}

impl Route {
    /// The manifest the daemon pushed (by digest, into the target repository), once it has.
    pub fn pushed(&self) -> Option<PushedImage> {
        lock(&self.manifest).clone()
    }

    /// What happened to the blobs so far.
    pub fn tally(&self) -> Tally {
        let seen = lock(&self.seen);
        let uploaded: BTreeSet<&String> = seen.uploaded.keys().collect();
        let mounted: BTreeSet<&String> = (seen.mounted.iter())
            .filter(|d| !uploaded.contains(d))
            .collect();
        let present = (seen.present.iter())
            .filter(|d| !uploaded.contains(d) && !mounted.contains(d))
            .count();
        Tally {
            present: present as u32,
            mounted: mounted.len() as u32,
            uploaded: uploaded.len() as u32,
            uploaded_bytes: seen.uploaded.values().sum(),
        }
    }

    /// The first registry error a request of this push met, if any.
    pub fn failure(&self) -> Option<RegistryError> {
        lock(&self.failure).take()
    }

    /// Closes the route: later requests with its token are refused.
    pub fn close(&self) {
        lock(&self.shared.routes).remove(&self.token);
    }

    fn failed(&self, e: RegistryError) -> Response {
        let text = e.to_string();
        let status = if e.is_transient() {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::BAD_REQUEST
        };
        lock(&self.failure).get_or_insert(e);
        error(status, "UNKNOWN", &text)
    }

    fn at(&self, digest: &str) -> Reference {
        Reference::with_digest(
            self.repository.registry().to_owned(),
            self.repository.repository().to_owned(),
            digest.to_owned(),
        )
    }

    fn repository_name(&self) -> String {
        format!(
            "{}/{}",
            self.repository.registry(),
            self.repository.repository()
        )
    }

    fn learn(&self, digest: &str, size: u64) {
        let mut known = lock(&self.shared.known);
        let entry = known.entry(digest.to_owned()).or_default();
        entry.size = size;
        entry.repositories.insert(self.repository_name());
    }

    /// The size of blob `digest` if the target repository holds it.
    async fn stat(&self, digest: &str) -> Result<Option<u64>, RegistryError> {
        if !self.session.blob_exists(&self.repository, digest).await? {
            return Ok(None);
        }
        let known = lock(&self.shared.known).get(digest).map(|k| k.size);
        let size = match known {
            Some(size) => size,
            // Held, but not through this front (a base layer, say): its length from a GET.
            None => match self.session.blob_size(&self.repository, digest).await? {
                Some(size) => size,
                None => return Ok(None),
            },
        };
        self.learn(digest, size);
        Ok(Some(size))
    }

    /// Upload `id`, marked busy while one of the daemon's requests is forwarded; the error
    /// response when there is no such upload or a request of it is in flight already.
    fn take_upload(&self, id: &str) -> Result<Box<BlobUpload>, UploadRefused> {
        let mut uploads = lock(&self.uploads);
        match uploads.insert(id.to_owned(), Upload::Busy) {
            Some(Upload::Open(upload)) => Ok(upload),
            Some(Upload::Busy) => Err(UploadRefused::Busy),
            None => {
                uploads.remove(id);
                Err(UploadRefused::Unknown)
            }
        }
    }

    /// Mounts `digest` from another repository of the same registry this worker put it in.
    async fn mount(&self, digest: &str) -> Result<Option<u64>, RegistryError> {
        let known = lock(&self.shared.known).get(digest).cloned();
        let Some(known) = known else {
            return Ok(None);
        };
        let registry = self.repository.registry();
        for source in &known.repositories {
            let Some(path) = source.strip_prefix(&format!("{registry}/")) else {
                continue;
            };
            if path == self.repository.repository() {
                continue;
            }
            let from = Reference::with_digest(registry.to_owned(), path.to_owned(), digest.into());
            let target = self.at(digest);
            if self.session.mount_blob(&target, &from, digest).await? == Mount::Mounted {
                self.learn(digest, known.size);
                return Ok(Some(known.size));
            }
        }
        Ok(None)
    }
}

/// Why a request of an upload was not forwarded.
#[derive(Clone, Copy, Debug)]
enum UploadRefused {
    /// Another request of the same upload is in progress.
    Busy,
    /// No such upload (never opened, finished, or of a push that ended).
    Unknown,
}

impl UploadRefused {
    fn response(self) -> Response {
        match self {
            UploadRefused::Busy => error(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "BLOB_UPLOAD_INVALID",
                "a request of this upload is in progress",
            ),
            UploadRefused::Unknown => error(
                StatusCode::NOT_FOUND,
                "BLOB_UPLOAD_UNKNOWN",
                "no such upload",
            ),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a request is about, from its path (`/v2/<name>/...`).
#[derive(Debug, PartialEq, Eq)]
enum Target<'a> {
    /// `/v2/`: the API check.
    Base,
    /// `/v2/<name>/blobs/<digest>`.
    Blob(&'a str, &'a str),
    /// `/v2/<name>/blobs/uploads/` (new upload).
    Uploads(&'a str),
    /// `/v2/<name>/blobs/uploads/<id>`.
    Upload(&'a str, &'a str),
    /// `/v2/<name>/manifests/<reference>`.
    Manifest(&'a str, &'a str),
}

fn parse(path: &str) -> Option<Target<'_>> {
    let rest = path.strip_prefix("/v2/")?;
    if rest.is_empty() {
        return Some(Target::Base);
    }
    if let Some(i) = rest.rfind("/blobs/uploads/") {
        let (name, id) = (&rest[..i], &rest[i + "/blobs/uploads/".len()..]);
        return Some(if id.is_empty() {
            Target::Uploads(name)
        } else {
            Target::Upload(name, id)
        });
    }
    if let Some(name) = rest.strip_suffix("/blobs/uploads") {
        return Some(Target::Uploads(name));
    }
    if let Some(i) = rest.rfind("/blobs/") {
        return Some(Target::Blob(&rest[..i], &rest[i + "/blobs/".len()..]));
    }
    if let Some(i) = rest.rfind("/manifests/") {
        return Some(Target::Manifest(
            &rest[..i],
            &rest[i + "/manifests/".len()..],
        ));
    }
    None
}

/// The token of a local repository name `manifold-push/<token>`.
fn token_of(name: &str) -> Option<&str> {
    name.strip_prefix(PREFIX)?.strip_prefix('/')
}

fn query<'a>(uri: &'a Uri, key: &str) -> Option<&'a str> {
    uri.query()?
        .split('&')
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "errors": [{ "code": code, "message": message }] });
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn with_api_version(mut response: Response) -> Response {
    response.headers_mut().insert(
        "Docker-Distribution-API-Version",
        HeaderValue::from_static("registry/2.0"),
    );
    response
}

fn created(location: String, digest: &str) -> Response {
    let mut h = HeaderMap::new();
    h.insert(header::LOCATION, header_value(&location));
    h.insert("Docker-Content-Digest", header_value(digest));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    (StatusCode::CREATED, h).into_response()
}

fn accepted_upload(name: &str, id: &str, received: u64) -> Response {
    let mut h = HeaderMap::new();
    h.insert(
        header::LOCATION,
        header_value(&format!("/v2/{name}/blobs/uploads/{id}")),
    );
    h.insert("Docker-Upload-UUID", header_value(id));
    h.insert(
        header::RANGE,
        header_value(&format!("0-{}", received.saturating_sub(1))),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    (StatusCode::ACCEPTED, h).into_response()
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

async fn handle(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    with_api_version(route_request(&shared, method, &uri, &headers, body).await)
}

async fn route_request(
    shared: &Shared,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let Some(target) = parse(uri.path()) else {
        return error(StatusCode::NOT_FOUND, "UNSUPPORTED", "not a registry path");
    };
    let name = match target {
        Target::Base => return (StatusCode::OK, "{}").into_response(),
        Target::Blob(n, _) | Target::Uploads(n) | Target::Upload(n, _) | Target::Manifest(n, _) => {
            n
        }
    };
    let route = token_of(name).and_then(|t| lock(&shared.routes).get(t).cloned());
    let Some(route) = route else {
        return error(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            "no push of this worker goes to this repository now",
        );
    };
    match (method, target) {
        (Method::HEAD, Target::Blob(_, digest)) => match route.stat(digest).await {
            Ok(Some(size)) => {
                lock(&route.seen).present.insert(digest.to_owned());
                let mut h = HeaderMap::new();
                h.insert(header::CONTENT_LENGTH, header_value(&size.to_string()));
                h.insert("Docker-Content-Digest", header_value(digest));
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                (StatusCode::OK, h).into_response()
            }
            Ok(None) => error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", "blob unknown"),
            Err(e) => route.failed(e),
        },
        (Method::POST, Target::Uploads(name)) => {
            if let Some(digest) = query(uri, "mount") {
                let mounted = match route.stat(digest).await {
                    Ok(Some(_)) => {
                        lock(&route.seen).present.insert(digest.to_owned());
                        true
                    }
                    Ok(None) => match route.mount(digest).await {
                        Ok(Some(_)) => {
                            lock(&route.seen).mounted.insert(digest.to_owned());
                            true
                        }
                        Ok(None) => false,
                        Err(e) => return route.failed(e),
                    },
                    Err(e) => return route.failed(e),
                };
                if mounted {
                    return created(format!("/v2/{name}/blobs/{digest}"), digest);
                }
            }
            let upload = match route.session.start_upload(&route.repository).await {
                Ok(upload) => upload,
                Err(e) => return route.failed(e),
            };
            let id = uuid::Uuid::new_v4().simple().to_string();
            lock(&route.uploads).insert(id.clone(), Upload::Open(Box::new(upload)));
            accepted_upload(name, &id, 0)
        }
        (Method::PATCH, Target::Upload(name, id)) => {
            let mut upload = match route.take_upload(id) {
                Ok(upload) => upload,
                Err(refused) => return refused.response(),
            };
            let sent = route
                .session
                .send_upload_part(&mut upload, read_ahead(body))
                .await;
            let size = upload.sent();
            lock(&route.uploads).insert(id.to_owned(), Upload::Open(upload));
            match sent {
                Ok(()) => accepted_upload(name, id, size),
                Err(e) => route.failed(e),
            }
        }
        (Method::PUT, Target::Upload(name, id)) => {
            let Some(digest) = query(uri, "digest") else {
                return error(StatusCode::BAD_REQUEST, "DIGEST_INVALID", "no digest");
            };
            let digest = digest.replace("%3A", ":").replace("%3a", ":");
            let upload = match route.take_upload(id) {
                Ok(upload) => upload,
                Err(refused) => return refused.response(),
            };
            lock(&route.uploads).remove(id);
            // The last bytes, or (monolithic) all of them, come with the digest.
            match route
                .session
                .finish_upload(*upload, &digest, read_ahead(body))
                .await
            {
                Ok(size) => {
                    lock(&route.seen).uploaded.insert(digest.clone(), size);
                    route.learn(&digest, size);
                    created(format!("/v2/{name}/blobs/{digest}"), &digest)
                }
                Err(e) => route.failed(e),
            }
        }
        (Method::DELETE, Target::Upload(_, id)) => {
            lock(&route.uploads).remove(id);
            StatusCode::NO_CONTENT.into_response()
        }
        (Method::PUT, Target::Manifest(name, _reference)) => {
            let media_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/vnd.docker.distribution.manifest.v2+json")
                .to_owned();
            let bytes = match axum::body::to_bytes(body, MAX_MANIFEST_BYTES).await {
                Ok(b) => b,
                Err(e) => {
                    return error(StatusCode::BAD_REQUEST, "MANIFEST_INVALID", &e.to_string());
                }
            };
            // Children are OCI manifests on every engine, so one list never mixes media types.
            let (bytes, media_type) = match as_oci(&bytes) {
                Some(oci) => (Bytes::from(oci), OCI_MANIFEST.to_owned()),
                None => (bytes, media_type),
            };
            let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
            let action = format!("pushing the manifest {}@{digest}", route.repository_name());
            if let Err(e) = route
                .session
                .push_manifest(&route.at(&digest), &bytes, &media_type, &action)
                .await
            {
                return route.failed(e);
            }
            *lock(&route.manifest) = Some(PushedImage {
                digest: digest.clone(),
                size: bytes.len() as u64,
                media_type,
                attestations: Vec::new(),
            });
            created(format!("/v2/{name}/manifests/{digest}"), &digest)
        }
        (Method::HEAD | Method::GET, Target::Manifest(..)) => error(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            "manifest unknown",
        ),
        _ => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "not supported by the worker's push front",
        ),
    }
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// The daemon's Docker image manifest as the OCI image manifest of the same blobs (config and
/// gzip layers keep their digests and sizes; only the media types say OCI), as the worker's
/// other push paths write; `None` for anything else (left as it is).
fn as_oci(docker: &[u8]) -> Option<Vec<u8>> {
    let mut m: serde_json::Value = serde_json::from_slice(docker).ok()?;
    if m["mediaType"] != "application/vnd.docker.distribution.manifest.v2+json" {
        return None;
    }
    let retype = |d: &mut serde_json::Value, from: &str, to: &str| -> Option<()> {
        (d["mediaType"] == from).then(|| d["mediaType"] = to.into())
    };
    retype(
        &mut m["config"],
        "application/vnd.docker.container.image.v1+json",
        "application/vnd.oci.image.config.v1+json",
    )?;
    for layer in m["layers"].as_array_mut()? {
        retype(
            layer,
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "application/vnd.oci.image.layer.v1.tar+gzip",
        )?;
    }
    m["mediaType"] = OCI_MANIFEST.into();
    serde_json::to_vec(&m).ok()
}

/// Why [`push_through_daemon`] did not push.
#[derive(Debug)]
pub enum DaemonPush {
    /// The daemon cannot reach the worker's loopback (it runs on another machine or in a VM):
    /// push by `docker save` instead.
    Unreachable(String),
    /// The push failed.
    Failed(PushError),
}

/// Pushes `image` to `target` by digest through the daemon and the worker's loopback front (this
/// module): the image is tagged `127.0.0.1:PORT/manifold-push/<token>:push`
/// (recorded in `local_tags` until removed), the daemon pushes that tag to the front, and the front
/// sends the target repository only the blobs it lacks, and the manifest by digest.
pub async fn push_through_daemon(
    engine: &DockerEngine,
    image: &BuiltImage,
    target: &PushTarget,
    proxy: &PushProxy,
    local_tags: &crate::local_tags::LocalTags,
    logs: &LogSink,
    cancel: &CancellationToken,
) -> Result<PushedImage, DaemonPush> {
    let (session, repository) = crate::push::open(target, logs)
        .await
        .map_err(DaemonPush::Failed)?;
    session
        .authenticate(
            &repository,
            RegistryOperation::Push,
            &format!("authenticating to push to {}", target.repository),
        )
        .await
        .map_err(|e| DaemonPush::Failed(e.into()))?;
    let (local, route) = proxy.open(session, repository);
    const TAG: &str = "push";
    let name = format!("{local}:{TAG}");
    if let Err(e) = local_tags.record(&name) {
        tracing::warn!(tag = %name, error = %e, "cannot record the local tag: a crash would leave it");
    }
    let result = async {
        engine
            .tag(&image.id, &local, TAG)
            .await
            .map_err(|e| DaemonPush::Failed(e.into()))?;
        let pushed = tokio::select! {
            () = cancel.cancelled() => return Err(DaemonPush::Failed(PushError::Cancelled)),
            r = engine.push(&local, TAG) => r,
        };
        if let Err(text) = pushed {
            if let Some(e) = route.failure() {
                return Err(DaemonPush::Failed(e.into()));
            }
            if daemon_cannot_reach(&text) {
                return Err(DaemonPush::Unreachable(text));
            }
            return Err(DaemonPush::Failed(PushError::Archive(format!(
                "the daemon's push to the worker's front failed: {text}"
            ))));
        }
        route.pushed().ok_or_else(|| {
            DaemonPush::Failed(PushError::Archive(
                "the daemon's push ended without pushing a manifest".into(),
            ))
        })
    }
    .await;
    route.close();
    match engine.untag(&name).await {
        Ok(()) => local_tags.forget(&name),
        Err(e) => tracing::warn!(tag = %name, error = %e, "cannot remove the daemon-local tag"),
    }
    if result.is_ok() {
        let t = route.tally();
        logs.line(format!(
            "pushed {} blob(s) to {} by digest through the daemon: {} already there, {} mounted, {} uploaded ({:.1} MiB)",
            t.present + t.mounted + t.uploaded,
            target.repository,
            t.present,
            t.mounted,
            t.uploaded,
            t.uploaded_bytes as f64 / (1024.0 * 1024.0)
        ));
    }
    result
}

/// Whether the daemon's push error says it could not connect to the front at all.
fn daemon_cannot_reach(text: &str) -> bool {
    [
        "connection refused",
        "no route to host",
        "i/o timeout",
        "dial tcp",
        "connect: ",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_connection_failure_to_the_front_means_the_daemon_cannot_reach_it() {
        let cases = [
            (
                "Get \"http://127.0.0.1:40123/v2/\": dial tcp 127.0.0.1:40123: connect: connection refused",
                true,
            ),
            ("dial tcp 127.0.0.1:40123: i/o timeout", true),
            (
                "received unexpected HTTP status: 503 Service Unavailable",
                false,
            ),
            ("blob upload unknown", false),
        ];
        for (text, unreachable) in cases {
            assert_eq!(daemon_cannot_reach(text), unreachable, "{text}");
        }
    }

    #[test]
    fn request_paths_name_their_target() {
        let t = "manifold-push/0123";
        let cases = [
            ("/v2/", Some(Target::Base)),
            (
                "/v2/manifold-push/0123/blobs/sha256:ab",
                Some(Target::Blob(t, "sha256:ab")),
            ),
            (
                "/v2/manifold-push/0123/blobs/uploads/",
                Some(Target::Uploads(t)),
            ),
            (
                "/v2/manifold-push/0123/blobs/uploads",
                Some(Target::Uploads(t)),
            ),
            (
                "/v2/manifold-push/0123/blobs/uploads/u1",
                Some(Target::Upload(t, "u1")),
            ),
            (
                "/v2/manifold-push/0123/manifests/push",
                Some(Target::Manifest(t, "push")),
            ),
            ("/v1/_ping", None),
            ("/v2/manifold-push/0123/tags/list", None),
        ];
        for (path, want) in cases {
            assert_eq!(parse(path), want, "{path}");
        }
        assert_eq!(token_of("manifold-push/0123"), Some("0123"));
        assert_eq!(token_of("other/0123"), None);
        assert_eq!(token_of("manifold-pushy/0123"), None);
    }

    #[test]
    fn a_docker_manifest_becomes_the_oci_manifest_of_the_same_blobs() {
        let docker = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 7, "digest": "sha256:c"},
            "layers": [
                {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 9, "digest": "sha256:l"}
            ]
        });
        let oci: serde_json::Value =
            serde_json::from_slice(&as_oci(docker.to_string().as_bytes()).unwrap()).unwrap();
        assert_eq!(
            oci,
            serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": 7, "digest": "sha256:c"},
                "layers": [
                    {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "size": 9, "digest": "sha256:l"}
                ]
            })
        );
        // A foreign layer, an OCI manifest or no JSON at all is left as it is.
        let mut foreign = docker.clone();
        foreign["layers"][0]["mediaType"] =
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip".into();
        assert_eq!(as_oci(foreign.to_string().as_bytes()), None);
        assert_eq!(as_oci(oci.to_string().as_bytes()), None);
        assert_eq!(as_oci(b"not json"), None);
    }
}
