//! An HTTP proxy on loopback in front of a real registry that answers 500 to manifest PUTs by
//! tag (the list push; children by digest pass) while the test says so, and forwards everything
//! else unchanged (bodies read whole: test images are small). Upload `Location`s the registry
//! gives are rewritten to point at the proxy, so clients stay on it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use anyhow::Context as _;
use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::response::Response;
use tokio::sync::watch;

/// When the proxy fails list pushes.
#[derive(Clone, Copy, Debug)]
pub enum Failing {
    /// Never: everything is forwarded.
    No,
    /// Until this instant (an outage of bounded length), then forwards.
    Until(Instant),
    /// For this long from the first list push it refuses, then forwards.
    For(std::time::Duration),
    /// Until [`RegistryProxy::heal`].
    Always,
}

struct Shared {
    registry: String,
    host: String,
    failing: watch::Sender<Failing>,
    refused: AtomicU32,
    client: reqwest::Client,
}

/// The proxy; it stops when dropped.
pub struct RegistryProxy {
    /// `127.0.0.1:PORT`: use it as the registry host of image references.
    pub host: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl RegistryProxy {
    /// Starts a proxy to `registry` (`127.0.0.1:PORT`) that fails list pushes as `failing` says.
    pub async fn start(registry: &str, failing: Failing) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let host = listener.local_addr()?.to_string();
        let shared = Arc::new(Shared {
            registry: registry.to_owned(),
            host: host.clone(),
            failing: watch::channel(failing).0,
            refused: AtomicU32::new(0),
            client: reqwest::Client::builder()
                .no_proxy()
                .build()
                .context("building the proxy's client")?,
        });
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { host, shared, task })
    }

    /// From now on, forwards list pushes too.
    pub fn heal(&self) {
        self.shared.failing.send_replace(Failing::No);
    }

    /// List pushes answered 500 so far.
    pub fn refused(&self) -> u32 {
        self.shared.refused.load(Ordering::SeqCst)
    }
}

impl Drop for RegistryProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `PUT /v2/NAME/manifests/TAG` (not a digest): a list or per-arch tag push.
fn is_tag_push(method: &Method, path: &str) -> bool {
    method == Method::PUT
        && path
            .rsplit_once("/manifests/")
            .is_some_and(|(_, reference)| !reference.starts_with("sha256:"))
}

async fn forward(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let tag_push = is_tag_push(request.method(), request.uri().path());
    if tag_push {
        // The outage starts with the first list push.
        shared.failing.send_if_modified(|f| match *f {
            Failing::For(d) => {
                *f = Failing::Until(Instant::now() + d);
                true
            }
            _ => false,
        });
    }
    let failing = match *shared.failing.borrow() {
        Failing::No | Failing::For(_) => false,
        Failing::Until(t) => Instant::now() < t,
        Failing::Always => true,
    };
    if failing && tag_push {
        shared.refused.fetch_add(1, Ordering::SeqCst);
        return Response::builder()
            .status(StatusCode::INTERNAL_SERVER_ERROR)
            .header("content-type", "application/json")
            .body(Body::from(
                r#"{"errors":[{"code":"UNKNOWN","message":"the test proxy fails list pushes"}]}"#,
            ))
            .expect("a valid response");
    }
    match relay(&shared, request).await {
        Ok(r) => r,
        Err(e) => Response::builder()
            .status(StatusCode::BAD_GATEWAY)
            .body(Body::from(format!("test proxy: {e:#}")))
            .expect("a valid response"),
    }
}

async fn relay(shared: &Shared, request: Request) -> anyhow::Result<Response> {
    let (parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let body = to_bytes(body, usize::MAX).await?;
    let hop = |name: &HeaderName| {
        matches!(
            name.as_str(),
            "host" | "connection" | "content-length" | "transfer-encoding"
        )
    };
    let mut upstream = shared.client.request(
        parts.method.clone(),
        format!("http://{}{path}", shared.registry),
    );
    for (name, value) in &parts.headers {
        if !hop(name) {
            upstream = upstream.header(name, value);
        }
    }
    let answer = upstream.body(body).send().await?;
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        // A HEAD answer's length is the resource's: keep it; other bodies are re-framed here.
        if hop(name) && !(name == "content-length" && parts.method == Method::HEAD) {
            continue;
        }
        let value = if name == "location" {
            let text = value.to_str().unwrap_or_default();
            HeaderValue::from_str(&text.replace(&shared.registry, &shared.host))?
        } else {
            value.clone()
        };
        response = response.header(name, value);
    }
    let bytes = answer.bytes().await?;
    Ok(response.body(Body::from(bytes))?)
}
