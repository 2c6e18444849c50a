//! The Manifold coordinator: it accepts multi-platform builds, splits each into one job per platform,
//! schedules the jobs onto attached workers of those platforms, and, when every platform has been
//! built and pushed, pushes the manifest list that joins them under the requested tag.
//!
//! Layout, in reading order:
//! - [`build`]: a build's validated request, its jobs and their states, the events watchers see;
//! - [`scheduler`]: pure decision logic: which queued job runs on which worker;
//! - [`farm`]: the state of builds and workers and every transition, driving the scheduler, and
//!   publishing finished builds with `manifold_registry`;
//! - [`contexts`]: build contexts on disk, content-addressed;
//! - [`api`]: the gRPC services, the only place wire types appear;
//! - [`config`] and [`run`]: what the binary starts.

pub mod api;
pub mod build;
pub mod config;
pub mod contexts;
pub mod farm;
pub mod scheduler;
pub mod store;

pub use config::{Config, StoreConfig};

use std::time::Duration;

use anyhow::Context as _;
use manifold_proto::v1::{builds_server, contexts_server, workers_server};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Serves the coordinator on an already-bound listener until `shutdown`.
pub async fn serve(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let contexts = contexts::ContextStore::open(&config.state_dir)
        .with_context(|| format!("opening the state dir {}", config.state_dir.display()))?;
    let tasks = TaskTracker::new();
    let store: std::sync::Arc<dyn store::StateStore> = match &config.store {
        StoreConfig::Embedded => std::sync::Arc::new(
            store::embedded::EmbeddedStore::open(&config.state_dir)
                .context("opening the embedded state store")?,
        ),
        StoreConfig::Etcd { .. } => anyhow::bail!("etcd is not supported yet"),
    };
    let fenced = CancellationToken::new();
    let farm = farm::Farm::recover(
        config.farm.clone(),
        contexts,
        store,
        tasks.clone(),
        fenced.clone(),
    )
    .await
    .context("restoring state")?;
    let ticker = {
        let farm = farm.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move { farm.run_ticks(Duration::from_millis(250), shutdown).await })
    };
    let api = api::Api::new(farm);
    let max = manifold_proto::MAX_MESSAGE_BYTES;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, state_dir = %config.state_dir.display(), "coordinator listening");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
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
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await
        .context("serving gRPC")?;
    ticker.abort();
    tasks.close();
    tasks.wait().await;
    Ok(())
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
