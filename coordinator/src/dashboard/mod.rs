//! The web dashboard (`--dashboard-listen ADDR`): a read-only view of the farm in server-rendered
//! HTML, kept live by server-sent events; no frontend toolchain.
//!
//! Who may see what: a person signs in with the token of their CLI and sees what that token may
//! see through the API: every worker, every team's queue depths and shares (as `manifold
//! workers`, `queue` and `teams` show them), and only their team's builds with their logs (an
//! admin: every team's). A farm without tokens is open, as its API is.
//!
//! - **Transport**: TLS with the API's certificate and key when the API has TLS; plain HTTP only
//!   for a `--plaintext` farm, and then only on a loopback address.
//! - **Sessions**: signing in exchanges the token for a random session id in an `HttpOnly`,
//!   `SameSite=Strict` cookie (`Secure` under TLS); the token stays in the coordinator's memory
//!   and is checked again on every request, so a token removed from the config (SIGHUP) signs its
//!   sessions out. A session lasts [`SESSION_LIFETIME`]; at most [`MAX_SESSIONS`] exist (the
//!   oldest goes first). Wrong tokens are slowed per source address as on the API
//!   ([`crate::throttle`]).
//! - **Bounds**: a sign-in body of at most [`MAX_LOGIN_BYTES`]; at most [`MAX_LIVE_STREAMS`] live
//!   pages at once; what a page shows is bounded in [`view`].
//!
//! Layout: [`view`] (pure: snapshots to HTML), this module (routes, sessions, TLS, live updates).

pub mod view;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use manifold_proto::BuildId;
use tokio::sync::{mpsc, watch};
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

use crate::access::{Access, Caller};
use crate::api::Role;
use crate::build::now_ms;
use crate::farm::Farm;
use view::{BuildRow, Overview, ShareHistory, ShareSample};

/// How long a sign-in lasts.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at once; past it the oldest is signed out.
pub const MAX_SESSIONS: usize = 10_000;
/// Largest sign-in request body.
pub const MAX_LOGIN_BYTES: usize = 4096;
/// Live pages (server-sent event streams) served at once.
pub const MAX_LIVE_STREAMS: usize = 256;
/// How often a live page is refreshed when something changed.
pub const LIVE_PERIOD: Duration = Duration::from_secs(1);
/// How often the teams' shares are sampled for the chart.
pub const SHARE_SAMPLE_PERIOD: Duration = Duration::from_secs(2);
/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

const COOKIE: &str = "manifold_session";

/// A signed-in person: their token, kept to be checked again on every request. No `Debug`.
struct SessionEntry {
    token: String,
    created: Instant,
}

/// The dashboard's state; shared by every request.
pub struct Dashboard {
    role: watch::Receiver<Role>,
    access: Access,
    secure_cookies: bool,
    sessions: Mutex<HashMap<String, SessionEntry>>,
    throttle: Mutex<crate::throttle::Throttle>,
    history: Mutex<ShareHistory>,
    live_streams: Arc<AtomicUsize>,
}

impl Dashboard {
    /// A dashboard of the farm `role` names while this coordinator leads, accepting `access`'s
    /// tokens; `tls` says whether it is served over TLS (its cookies are then `Secure`).
    pub fn new(role: watch::Receiver<Role>, access: Access, tls: bool) -> Arc<Self> {
        Arc::new(Self {
            role,
            access,
            secure_cookies: tls,
            sessions: Mutex::default(),
            throttle: Mutex::default(),
            history: Mutex::default(),
            live_streams: Arc::default(),
        })
    }

    fn farm(&self) -> Result<Farm, Refusal> {
        match &*self.role.borrow() {
            Role::Leader(farm) => Ok(farm.clone()),
            Role::Follower(leader) => {
                let to = leader
                    .as_deref()
                    .map(|l| format!(" The leader is at {}.", view::escape(l)))
                    .unwrap_or_default();
                Err(Refusal {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    title: "Not the leader",
                    message_html: format!(
                        "This coordinator does not lead the farm right now, so it has nothing to show.{to}"
                    ),
                })
            }
        }
    }

    /// The caller behind the request's session cookie; `None` sends the person to sign in.
    fn caller(&self, headers: &HeaderMap) -> Option<Caller> {
        if self.access.is_open() {
            return Some(Caller::anonymous());
        }
        let id = session_cookie(headers)?;
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let entry = sessions.get(&id)?;
        if entry.created.elapsed() > SESSION_LIFETIME {
            sessions.remove(&id);
            return None;
        }
        match self
            .access
            .authenticate(Some(&format!("Bearer {}", entry.token)))
        {
            Ok(caller) => Some(caller),
            Err(_) => {
                // Revoked since it signed in.
                sessions.remove(&id);
                None
            }
        }
    }

    fn sign_in(&self, token: String) -> String {
        let id = crate::access::new_token();
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.created)
                .map(|(k, _)| k.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(
            id.clone(),
            SessionEntry {
                token,
                created: Instant::now(),
            },
        );
        id
    }

    fn overview(&self, farm: &Farm, caller: &Caller) -> Overview {
        let history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        Overview::gather(farm, caller, &history, now_ms())
    }

    fn sample_shares(&self) {
        let Role::Leader(farm) = &*self.role.borrow() else {
            return;
        };
        let sample = ShareSample::of(&farm.teams(), now_ms());
        self.history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(sample);
    }

    fn cookie(&self, value: &str, max_age: Duration) -> HeaderValue {
        let secure = if self.secure_cookies { "; Secure" } else { "" };
        HeaderValue::from_str(&format!(
            "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            max_age.as_secs()
        ))
        .expect("a session id is valid header text")
    }

    /// The routes.
    pub fn router(self: Arc<Self>) -> axum::Router {
        axum::Router::new()
            .route("/", get(overview))
            .route("/login", get(login_form).post(login))
            .route("/logout", post(logout))
            .route("/live", get(overview_live))
            .route("/builds/{id}", get(build))
            .route("/builds/{id}/live", get(build_live))
            .route("/static/dashboard.css", get(css))
            .route("/static/dashboard.js", get(js))
            .layer(axum::middleware::map_response(security_headers))
            .with_state(self)
    }
}

async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == COOKIE).then(|| v.to_owned())
        })
}

/// A page that says why it shows nothing.
struct Refusal {
    status: StatusCode,
    title: &'static str,
    /// Already escaped.
    message_html: String,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        plain_page(self.status, self.title, &self.message_html)
    }
}

fn plain_page(status: StatusCode, title: &str, message_html: &str) -> Response {
    let body = format!(
        "<h1>{}</h1><p class=\"error\" id=\"message\">{message_html}</p><p><a href=\"/\">Back to the farm</a></p>",
        view::escape(title)
    );
    (status, Html(view::page(title, None, &body))).into_response()
}

type Shared = State<Arc<Dashboard>>;

async fn overview(State(d): Shared, headers: HeaderMap) -> Response {
    let Some(caller) = d.caller(&headers) else {
        return Redirect::to("/login").into_response();
    };
    let farm = match d.farm() {
        Ok(f) => f,
        Err(r) => return r.into_response(),
    };
    Html(view::overview_page(&d.overview(&farm, &caller))).into_response()
}

async fn login_form(State(d): Shared, headers: HeaderMap) -> Response {
    if d.access.is_open() || d.caller(&headers).is_some() {
        return Redirect::to("/").into_response();
    }
    Html(view::login(None)).into_response()
}

async fn login(
    State(d): Shared,
    ConnectInfo(Peer(source)): ConnectInfo<Peer>,
    body: axum::body::Bytes,
) -> Response {
    if d.access.is_open() {
        return Redirect::to("/").into_response();
    }
    let token = form_urlencoded::parse(&body)
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    let refused = |status: StatusCode, message: &str| {
        (status, Html(view::login(Some(message)))).into_response()
    };
    if token.is_empty() {
        return refused(
            StatusCode::BAD_REQUEST,
            "no token given: paste the token your CLI uses (MANIFOLD_TOKEN)",
        );
    }
    if token.len() > 1024 {
        return refused(
            StatusCode::BAD_REQUEST,
            "that is not a token: tokens are at most 1024 characters",
        );
    }
    match d.access.authenticate(Some(&format!("Bearer {token}"))) {
        Ok(caller) => {
            d.throttle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .succeeded(source.ip());
            tracing::info!(name = %caller.name, team = %caller.team, %source, "dashboard sign-in");
            let id = d.sign_in(token);
            let mut response = Redirect::to("/").into_response();
            response
                .headers_mut()
                .insert(header::SET_COOKIE, d.cookie(&id, SESSION_LIFETIME));
            response
        }
        Err(e) => {
            let (failures, delay) = d
                .throttle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .failed(source.ip(), Instant::now());
            let token_sha256 = crate::access::token_digest(&token)[..12].to_owned();
            tracing::warn!(%source, %token_sha256, failures, delay_ms = delay.as_millis() as u64, "dashboard: refused a wrong token");
            tokio::time::sleep(delay).await;
            refused(StatusCode::UNAUTHORIZED, &e.to_string())
        }
    }
}

async fn logout(State(d): Shared, headers: HeaderMap) -> Response {
    if let Some(id) = session_cookie(&headers) {
        d.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }
    let mut response = Redirect::to("/login").into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, d.cookie("", Duration::ZERO));
    response
}

/// The build `id` if `caller` may see it, else the page saying why not.
fn visible_build(farm: &Farm, id: &str, caller: &Caller) -> Result<BuildRow, Refusal> {
    let id = id.parse::<BuildId>().map_err(|e| Refusal {
        status: StatusCode::BAD_REQUEST,
        title: "No such build",
        message_html: view::escape(&e.to_string()),
    })?;
    let build = farm.get(id).map_err(|e| Refusal {
        status: StatusCode::NOT_FOUND,
        title: "No such build",
        message_html: view::escape(&e.to_string()),
    })?;
    if !caller.sees(&build.team) {
        return Err(Refusal {
            status: StatusCode::FORBIDDEN,
            title: "Another team's build",
            message_html: view::escape(&format!(
                "build {id} belongs to another team; `{}` may only see builds of team `{}`",
                caller.name, caller.team
            )),
        });
    }
    Ok(BuildRow::of(&build))
}

async fn build(State(d): Shared, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let Some(caller) = d.caller(&headers) else {
        return Redirect::to("/login").into_response();
    };
    let farm = match d.farm() {
        Ok(f) => f,
        Err(r) => return r.into_response(),
    };
    let row = match visible_build(&farm, &id, &caller) {
        Ok(r) => r,
        Err(r) => return r.into_response(),
    };
    let events = farm
        .events(row.id.parse().expect("a build id shown is valid"), 0)
        .map(|(events, _, _)| events)
        .unwrap_or_default();
    Html(view::build_page(&caller, &row, &events, now_ms())).into_response()
}

/// Counts a live stream while it lives.
struct LiveSlot(Arc<AtomicUsize>);

impl LiveSlot {
    fn take(counter: &Arc<AtomicUsize>) -> Option<Self> {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        if n >= MAX_LIVE_STREAMS {
            counter.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Self(counter.clone()))
    }
}

impl Drop for LiveSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A server-sent event stream: every [`LIVE_PERIOD`], `render` (given the caller signed in
/// now) gives the live fragment, sent as an `update` event when it changed; a session that
/// ended gets `signed-out` and the stream ends.
fn live<F>(d: Arc<Dashboard>, headers: HeaderMap, render: F) -> Response
where
    F: Fn(&Dashboard, &Caller) -> Option<String> + Send + 'static,
{
    if d.caller(&headers).is_none() {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let Some(slot) = LiveSlot::take(&d.live_streams) else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("more than {MAX_LIVE_STREAMS} live pages are open: reload later"),
        )
            .into_response();
    };
    struct St<F> {
        d: Arc<Dashboard>,
        headers: HeaderMap,
        render: F,
        last: Option<String>,
        done: bool,
        first: bool,
        _slot: LiveSlot,
    }
    let state = St {
        d,
        headers,
        render,
        last: None,
        done: false,
        first: true,
        _slot: slot,
    };
    let stream = futures::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            if !st.first {
                tokio::time::sleep(LIVE_PERIOD).await;
            }
            st.first = false;
            let Some(caller) = st.d.caller(&st.headers) else {
                st.done = true;
                let event = SseEvent::default().event("signed-out").data("");
                return Some((Ok::<_, Infallible>(event), st));
            };
            let Some(html) = (st.render)(&st.d, &caller) else {
                continue;
            };
            if st.last.as_deref() == Some(html.as_str()) {
                continue;
            }
            st.last = Some(html.clone());
            let event = SseEvent::default().event("update").data(html);
            return Some((Ok(event), st));
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn overview_live(State(d): Shared, headers: HeaderMap) -> Response {
    live(d, headers, |d, caller| {
        let farm = d.farm().ok()?;
        Some(view::overview_live(&d.overview(&farm, caller)))
    })
}

async fn build_live(State(d): Shared, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let Some(caller) = d.caller(&headers) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    if let Err(r) = d.farm().and_then(|farm| visible_build(&farm, &id, &caller)) {
        return r.into_response();
    }
    live(d, headers, move |d, caller| {
        let farm = d.farm().ok()?;
        let row = visible_build(&farm, &id, caller).ok()?;
        let (events, _, _) = farm.events(row.id.parse().ok()?, 0).ok()?;
        Some(view::build_live(&row, &events, now_ms()))
    })
}

async fn css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        view::CSS,
    )
}

async fn js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        view::JS,
    )
}

// ----- Serving ---------------------------------------------------------------------------------

/// The remote address of a dashboard connection.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

/// Connections of the dashboard, TLS or plain, handshaken off the accept loop.
pub struct Listener {
    incoming: mpsc::Receiver<(Io, SocketAddr)>,
    local: SocketAddr,
}

type Io = Either<tokio::net::TcpStream, tokio_rustls::server::TlsStream<tokio::net::TcpStream>>;

impl axum::serve::Listener for Listener {
    type Io = Io;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Io, SocketAddr) {
        match self.incoming.recv().await {
            Some(c) => c,
            // The accept loop ended (shutdown): wait for the server to stop.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

impl Connected<axum::serve::IncomingStream<'_, Listener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, Listener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

/// The TLS acceptor of the dashboard: the API's certificate and key.
pub fn tls_acceptor(tls: &crate::TlsConfig) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use anyhow::Context as _;
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(&tls.cert)
        .and_then(|c| c.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading the TLS certificate {}", tls.cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .with_context(|| format!("reading the TLS key {}", tls.key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .context("the dashboard's TLS certificate and key do not fit together")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Binds `addr` for the dashboard, naming it when that fails; refuses plain HTTP off loopback.
pub async fn bind(addr: SocketAddr, tls: bool) -> anyhow::Result<tokio::net::TcpListener> {
    use anyhow::Context as _;
    anyhow::ensure!(
        tls || addr.ip().is_loopback(),
        "--dashboard-listen {addr}: a --plaintext farm serves its dashboard only on a loopback address; give the coordinator --tls-cert, --tls-key and --client-ca, or listen on 127.0.0.1"
    );
    tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("binding --dashboard-listen {addr}: is something else listening there?")
    })
}

/// Serves the dashboard on `listener` (TLS when `tls` is given) until `shutdown`, sampling the
/// teams' shares meanwhile.
pub async fn serve(
    dashboard: Arc<Dashboard>,
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let local = listener.local_addr()?;
    let (tx, rx) = mpsc::channel(64);
    let accept = async move {
        let mut handshakes = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (tcp, peer) = match accepted {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::warn!(error = %e, "dashboard: accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let tx = tx.clone();
                    match &tls {
                        None => {
                            let _ = tx.send((Either::Left(tcp), peer)).await;
                        }
                        Some(acceptor) => {
                            let acceptor = acceptor.clone();
                            handshakes.spawn(async move {
                                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                                    Ok(Ok(stream)) => {
                                        let _ = tx.send((Either::Right(stream), peer)).await;
                                    }
                                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "dashboard: TLS handshake failed"),
                                    Err(_) => tracing::debug!(%peer, "dashboard: TLS handshake timed out"),
                                }
                            });
                        }
                    }
                }
                Some(_) = handshakes.join_next(), if !handshakes.is_empty() => {}
            }
        }
    };
    let sampler = {
        let d = dashboard.clone();
        async move {
            let mut tick = tokio::time::interval(SHARE_SAMPLE_PERIOD);
            loop {
                tick.tick().await;
                d.sample_shares();
            }
        }
    };
    let app = dashboard
        .router()
        .into_make_service_with_connect_info::<Peer>();
    let server = axum::serve(
        Listener {
            incoming: rx,
            local,
        },
        app,
    )
    .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    tokio::select! {
        r = server => r,
        () = accept => Ok(()),
        () = sampler => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; manifold_session=abc; b=2"),
        );
        assert_eq!(session_cookie(&h).as_deref(), Some("abc"));
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("manifold_session_x=1"),
        );
        assert_eq!(session_cookie(&h), None);
    }

    #[test]
    fn a_session_ends_when_its_token_is_revoked() {
        let token = "mft_test_token";
        let entry = crate::access::TokenEntry {
            name: "alice".into(),
            team: Some("mobile".into()),
            admin: false,
            sha256: crate::access::token_digest(token),
        };
        let access = Access::new(std::slice::from_ref(&entry));
        let (_tx, role) = watch::channel(Role::Follower(None));
        let d = Dashboard::new(role, access.clone(), true);
        let id = d.sign_in(token.into());
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("{COOKIE}={id}")).unwrap(),
        );
        assert_eq!(d.caller(&h).map(|c| c.team), Some("mobile".into()));
        // Another session id signs nobody in.
        let mut other = HeaderMap::new();
        other.insert(
            header::COOKIE,
            HeaderValue::from_static("manifold_session=mft_guess"),
        );
        assert_eq!(d.caller(&other), None);
        // The config reloaded without alice's token.
        let bob = crate::access::TokenEntry {
            name: "bob".into(),
            sha256: crate::access::token_digest("other"),
            ..entry
        };
        access.replace_with(&Access::new(&[bob]));
        assert_eq!(d.caller(&h), None);
        assert!(d.sessions.lock().unwrap().is_empty());
        assert!(
            d.cookie("x", SESSION_LIFETIME)
                .to_str()
                .unwrap()
                .contains("HttpOnly; SameSite=Strict; Max-Age=43200; Secure")
        );
    }
}
