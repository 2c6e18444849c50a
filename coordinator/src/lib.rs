//! The Manifold coordinator: it accepts multi-platform builds, splits each into one job per platform,
//! schedules the jobs onto attached workers of those platforms, and, when every platform has been
//! built and pushed, pushes the manifest list that joins them under the requested tag.
//!
//! Layout, in reading order:
//! - [`build`]: a build's validated request, its jobs and their states, the events watchers see;
//! - [`scheduler`]: pure decision logic: which queued job runs on which worker, fair between teams;
//! - [`farm`]: builds and workers: a pure state machine (every transition takes the time and
//!   returns effects; leases, timeouts, retries, preemption, driving the scheduler) and the thin
//!   handle that applies its effects (persist, then send), publishing finished builds with
//!   `manifold_registry`;
//! - [`store`]: the state store seam: redb (default), etcd, in-memory;
//! - [`logs`]: durable build output: chunks beside the records, bounded per platform;
//! - [`leader`]: leader election on etcd, fencing, stepping down;
//! - [`contexts`]: build contexts on disk, content-addressed, held per team;
//! - [`verify`]: what a worker says it pushed, checked in the registry before the farm believes it;
//! - [`access`]: bearer tokens, teams, who may see what;
//! - [`repo_rules`]: which repositories each team may push to, and the logins the farm uses for it;
//! - [`throttle`]: wrong tokens slowed per source address;
//! - [`limits`]: the bounds on every request and upload, and quoting callers' values in errors;
//! - [`pki`]: the development CA and the worker identity in client certificates;
//! - [`api`]: the gRPC services, the only place wire types appear;
//! - [`metrics`]: Prometheus metrics read from the farm's snapshots and build histories;
//! - [`dashboard`]: the read-only web dashboard, server-rendered, live by server-sent events;
//! - [`config`] and [`run`]: what the binary starts (flags and the config file).

pub mod access;
pub mod api;
pub mod build;
pub mod config;
pub mod contexts;
pub mod dashboard;
pub mod farm;
pub mod leader;
pub mod limits;
pub mod logs;
pub mod metrics;
pub mod paging;
pub mod pki;
pub mod repo_rules;
pub mod scheduler;
pub mod store;
pub mod throttle;
pub mod verify;

pub use config::{Config, FileConfig, StoreConfig, TlsConfig, Transport};

use std::time::Duration;

use anyhow::Context as _;
use manifold_proto::v1::{builds_server, contexts_server, workers_server};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Serves the coordinator on an already-bound listener until `shutdown`: as the only coordinator
/// (embedded store), or as one of several electing a leader on etcd.
pub async fn serve(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut contexts = contexts::ContextStore::open(&config.state_dir)
        .with_context(|| format!("opening the state dir {}", config.state_dir.display()))?;
    if let Some(repo) = &config.context_repository {
        let repository = manifold_registry::reference::parse(repo).with_context(|| {
            format!("invalid --context-repository `{repo}`: expected REGISTRY/REPOSITORY")
        })?;
        contexts = contexts.with_remote(contexts::Remote {
            repository,
            registry: config.farm.registry.clone(),
        });
    } else if matches!(config.store, StoreConfig::Etcd { .. }) {
        tracing::warn!(
            "no --context-repository: build contexts stay on the coordinator that received them; after a failover, jobs whose worker has not cached their context cannot start"
        );
    }
    let tasks = TaskTracker::new();
    let (role, role_rx) = tokio::sync::watch::channel(api::Role::Follower(None));
    let contexts_for_gc = contexts.clone();
    let term = shutdown.child_token();
    match &config.store {
        StoreConfig::Embedded => {
            let store = std::sync::Arc::new(
                store::embedded::EmbeddedStore::open(&config.state_dir)
                    .context("opening the embedded state store")?,
            );
            let farm = farm::Farm::recover(
                config.farm.clone(),
                contexts,
                store,
                tasks.clone(),
                term.clone(),
            )
            .await
            .context("restoring state")?;
            role.send_replace(api::Role::Leader(farm));
        }
        StoreConfig::Etcd {
            endpoints,
            prefix,
            lease,
            advertise,
        } => {
            let election = leader::Election {
                endpoints: endpoints.clone(),
                prefix: prefix.clone(),
                lease: *lease,
                advertise: advertise.clone(),
            };
            tasks.spawn(leader::run(
                config.clone(),
                election,
                contexts,
                role,
                tasks.clone(),
                term.clone(),
            ));
        }
    }
    tasks.spawn(collect_contexts(
        contexts_for_gc,
        role_rx.clone(),
        config.context_ttl,
        term.clone(),
    ));
    if let Some(addr) = config.metrics_listen {
        let metrics_listener = metrics::bind(addr).await?;
        tracing::info!(%addr, "metrics on http://{addr}/metrics");
        let metrics = metrics::Metrics::new(role_rx.clone());
        let stop = term.clone();
        tasks.spawn(async move {
            if let Err(e) = metrics::serve(metrics, metrics_listener, stop).await {
                tracing::error!(error = %e, "the metrics endpoint stopped");
            }
        });
    }
    if let Some(addr) = config.dashboard_listen {
        let tls = match &config.transport {
            Transport::Tls(tls) => Some(dashboard::tls_acceptor(tls)?),
            Transport::Plaintext => None,
        };
        let dashboard_listener = dashboard::bind(addr, tls.is_some()).await?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!(%addr, "dashboard on {scheme}://{addr}/");
        let board =
            dashboard::Dashboard::new(role_rx.clone(), config.access.clone(), tls.is_some());
        let stop = term.clone();
        tasks.spawn(async move {
            if let Err(e) = dashboard::serve(board, dashboard_listener, tls, stop).await {
                tracing::error!(error = %e, "the dashboard stopped");
            }
        });
    }
    let addr = listener.local_addr()?;
    let mut server = tonic::transport::Server::builder();
    let workers = match &config.transport {
        Transport::Tls(tls) => {
            server = server
                .tls_config(server_tls(tls)?)
                .context("configuring TLS")?;
            api::WorkerAuth::Certificate {
                teams: config.farm.teams.iter().map(|t| t.name.clone()).collect(),
            }
        }
        Transport::Plaintext => {
            anyhow::ensure!(
                addr.ip().is_loopback(),
                "plaintext is only served on a loopback address, and {addr} is not one: give --tls-cert, --tls-key and --client-ca (`manifold-coordinator dev-ca` makes them), or listen on 127.0.0.1"
            );
            tracing::warn!(
                "serving plaintext HTTP/2 on loopback (--plaintext): workers are not authenticated; for development only"
            );
            api::WorkerAuth::Name
        }
    };
    if config.access.is_open() {
        tracing::warn!("no [[token]] in the config: every caller is an admin");
    }
    if !config.farm.repositories.is_enforced() {
        tracing::warn!(
            "no [[team]] in the config has `repositories` rules: any team may push to any repository the farm's registry credentials reach"
        );
    }
    let api = api::Api::new(
        role_rx,
        config.access.clone(),
        workers,
        config.limits.clone(),
    );
    let max = manifold_proto::MAX_MESSAGE_BYTES;
    tracing::info!(%addr, state_dir = %config.state_dir.display(), tls = matches!(config.transport, Transport::Tls(_)), "coordinator listening");
    // `Server::tcp_nodelay` applies only to `serve`, not to an incoming stream: without
    // TCP_NODELAY on each accepted socket, Nagle's algorithm and delayed ACKs held small answers
    // (a `Builds.List`) for ~40 ms on loopback.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    server
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        // Contexts arrive in 1 MiB chunks: with HTTP/2's default 1 MiB windows and 16 KiB frames
        // the client waits for a window update after almost every chunk (measured: 49 MiB/s on
        // loopback); larger windows let it stream (docs/benchmarks.md).
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .max_frame_size(Some(256 << 10))
        .add_service(
            builds_server::BuildsServer::new(api.clone())
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(
            contexts_server::ContextsServer::new(api.clone())
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(
            workers_server::WorkersServer::new(api)
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned())
        .await
        .context("serving gRPC")?;
    term.cancel();
    tasks.close();
    tasks.wait().await;
    Ok(())
}

/// The server side of TLS: the coordinator's identity, and the CA of worker certificates, which
/// are optional at the TLS layer (people's clients present none) and required by `Attach`.
fn server_tls(tls: &TlsConfig) -> anyhow::Result<tonic::transport::ServerTlsConfig> {
    let read = |path: &std::path::Path, what: &str| {
        std::fs::read(path).with_context(|| format!("reading the {what} {}", path.display()))
    };
    let cert = read(&tls.cert, "TLS certificate (--tls-cert)")?;
    let key = read(&tls.key, "TLS key (--tls-key)")?;
    let ca = read(&tls.client_ca, "worker CA certificate (--client-ca)")?;
    Ok(tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(cert, key))
        .client_ca_root(tonic::transport::Certificate::from_pem(ca))
        .client_auth_optional(true))
}

/// Removes unreferenced contexts older than `ttl`, checking every tenth of it (at most every 10 min),
/// while this coordinator leads (only the leader knows which builds are unfinished).
async fn collect_contexts(
    contexts: contexts::ContextStore,
    role: tokio::sync::watch::Receiver<api::Role>,
    ttl: Duration,
    stop: CancellationToken,
) {
    let period = (ttl / 10).clamp(Duration::from_secs(1), Duration::from_secs(600));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        let keep = match &*role.borrow() {
            api::Role::Leader(farm) => farm.referenced_contexts(),
            api::Role::Follower(_) => continue,
        };
        let store = contexts.clone();
        let _ = tokio::task::spawn_blocking(move || store.collect_garbage(ttl, &keep)).await;
    }
}

/// Binds `config.listen` and serves until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| {
            format!(
                "binding {}: is another coordinator running there?",
                config.listen
            )
        })?;
    serve(config, listener, shutdown).await
}
