//! `manifold-worker`: parses flags into a [`Config`], installs tracing, and runs the worker until
//! SIGTERM or Ctrl-C, which start a drain; a second signal exits at once.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{CommandFactory as _, Parser};
use manifold_proto::Platform;
use manifold_worker::Config;
use manifold_worker::config::{
    self, ClientIdentity, ENV_CA_CERT, ENV_COORDINATOR, ENV_DOCKER_HOST, ENV_WORKER_CERT,
    ENV_WORKER_KEY,
};
use tokio_util::sync::CancellationToken;

/// Builds container images for a Manifold farm on one Docker daemon.
#[derive(Debug, Parser)]
#[command(name = "manifold-worker", version)]
struct Args {
    /// Coordinator URL: https://HOST:PORT (mutual TLS), or http:// to a loopback address only.
    /// Several, comma-separated, when coordinators elect a leader.
    #[arg(long, env = ENV_COORDINATOR, default_value = manifold_proto::DEFAULT_COORDINATOR)]
    coordinator: String,
    /// CA certificate (PEM) to trust for the coordinator's server certificate over https://
    /// [default: the system's root certificates].
    #[arg(long, env = ENV_CA_CERT)]
    ca_cert: Option<PathBuf>,
    /// This worker's client certificate (PEM), issued for its --name; needs --key.
    #[arg(long, env = ENV_WORKER_CERT)]
    cert: Option<PathBuf>,
    /// The private key (PEM) of --cert.
    #[arg(long, env = ENV_WORKER_KEY)]
    key: Option<PathBuf>,
    /// Docker daemon to drive [default: DOCKER_HOST, else unix:///var/run/docker.sock].
    #[arg(long, env = ENV_DOCKER_HOST)]
    docker_host: Option<String>,
    /// Announce this platform instead of the daemon's (the daemon builds it under emulation).
    #[arg(long, value_parser = Platform::parse)]
    platform: Option<Platform>,
    /// How many jobs run at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    slots: u32,
    /// Worker name, unique in the farm [default: the host name].
    #[arg(long)]
    name: Option<String>,
    /// A label announced to the coordinator, KEY=VALUE; repeatable.
    #[arg(long = "label", value_parser = config::parse_label)]
    labels: Vec<(String, String)>,
    /// Folder for cached build contexts and temporary files [default: <user cache dir>/manifold-worker].
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Longest wait between two attempts to reach the coordinator after the connection broke.
    /// Short, so that after a coordinator failover workers find the new leader within seconds.
    #[arg(long, default_value = "2s", value_parser = config::parse_duration)]
    reconnect_max: Duration,
    /// How often to check that the Docker daemon answers; while it does not, the worker reports
    /// itself unhealthy and gets no job.
    #[arg(long, default_value = "5s", value_parser = config::parse_duration)]
    health_interval: Duration,
    /// Free disk the cache dir's file system must keep (e.g. 10GiB, 500MB); below it the worker
    /// reports itself unhealthy, takes no job, and `manifold workers` shows why. 0: no check.
    #[arg(long, default_value = "0", value_parser = manifold_worker::health::parse_size)]
    min_free_disk: u64,
    /// Most bytes of build contexts kept in the cache dir (e.g. 10GiB, 500MB; at most 1 EiB); the
    /// least recently used go when a new one arrives. Contexts of running jobs always stay.
    #[arg(long, value_name = "SIZE", default_value = "10GiB", value_parser = manifold_worker::health::parse_size)]
    context_cache_max_size: u64,
    /// How images built on a graphdriver engine reach the registry: `daemon` (the daemon pushes
    /// to this worker's loopback front, which forwards by digest only what the registry lacks:
    /// as fast as `docker push`), or `save` (`docker save` and the worker's own push). `daemon`
    /// falls back to `save` when the daemon cannot reach the worker's 127.0.0.1.
    #[arg(long, value_enum, default_value = "daemon")]
    graphdriver_push: config::GraphdriverPush,
    /// Most bytes BuildKit's build cache may hold (e.g. 20GiB, 500MB; at most 1 EiB); the least
    /// recently used records go after each job and every 10 minutes. 0 keeps no unused cache.
    /// [default: no limit]
    #[arg(long, value_name = "SIZE", value_parser = manifold_worker::health::parse_size)]
    cache_max_size: Option<u64>,
    /// Build cache records not used for this long are removed (e.g. 48h, at most 8760h).
    /// [default: no limit]
    #[arg(long, value_name = "DURATION", value_parser = manifold_worker::buildkit::prune::parse_max_age)]
    cache_max_age: Option<Duration>,
    /// Serve Prometheus metrics (free disk, cache size) on http://ADDR/metrics, e.g.
    /// 127.0.0.1:9701. No token is asked: bind it where only your monitoring reaches.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Whether other teams' jobs may run here (the owner team's always may): `always`, `never`,
    /// or `when CMD`: while `sh -c CMD` exits 0, checked every --lend-check-interval.
    #[arg(long, num_args = 1..=2, value_names = ["always|never|when", "CMD"], default_value = "always")]
    lend: Vec<String>,
    /// Lend only inside this daily window of the worker's local time, HH:MM-HH:MM (crossing
    /// midnight allowed, e.g. 19:00-08:00), and then only as --lend says [default: any hour].
    #[arg(long, value_name = "HH:MM-HH:MM", value_parser = manifold_worker::lending::LendHours::parse)]
    lend_hours: Option<manifold_worker::lending::LendHours>,
    /// How often the `--lend when` command runs.
    #[arg(long, default_value = "30s", value_parser = config::parse_duration)]
    lend_check_interval: Duration,
}

impl Args {
    fn into_config(self) -> Result<Config, String> {
        let mut config = Config::from_env();
        config.coordinator = self.coordinator;
        config.ca_cert = self.ca_cert.filter(|p| !p.as_os_str().is_empty());
        config.identity =
            ClientIdentity::from_flags(self.cert, self.key).map_err(|e| e.to_string())?;
        config.lend = manifold_worker::lending::LendPolicy::parse(&self.lend)?;
        config.lend_check_interval = self.lend_check_interval;
        config.lend_hours = self.lend_hours;
        if config.lend_hours.is_some() && config.lend == manifold_worker::lending::LendPolicy::Never
        {
            return Err("--lend-hours with --lend never would never lend: drop one of them".into());
        }
        if let Some(host) = self.docker_host.filter(|h| !h.is_empty()) {
            config.docker_host = host;
        }
        config.platform = self.platform;
        config.slots = self.slots;
        if let Some(name) = self.name {
            config.name = name;
        }
        config.labels = self.labels.into_iter().collect::<BTreeMap<_, _>>();
        if let Some(dir) = self.cache_dir {
            config.cache_dir = dir;
        }
        config.reconnect_max = self.reconnect_max;
        config.reconnect_initial = config.reconnect_initial.min(self.reconnect_max);
        config.health_interval = self.health_interval;
        config.min_free_disk = self.min_free_disk;
        config.context_cache_max_size = self.context_cache_max_size;
        config.graphdriver_push = self.graphdriver_push;
        config.cache_policy = manifold_worker::buildkit::prune::CachePolicy {
            max_size: self.cache_max_size,
            max_age: self.cache_max_age,
        };
        Ok(config)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // One crypto provider for every TLS client in the process (tonic, oci-client), chosen before
    // any is built.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let args = Args::parse();
    let metrics_listen = args.metrics_listen;
    let config = match args.into_config() {
        Ok(config) => config,
        Err(e) => Args::command()
            .error(clap::error::ErrorKind::MissingRequiredArgument, e)
            .exit(),
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    tracing::info!(
        name = %config.name,
        coordinator = %config.coordinator,
        client_cert = %config.identity.as_ref().map_or("none".into(), |i| i.cert.display().to_string()),
        docker_host = %config.docker_host,
        slots = config.slots,
        "starting manifold-worker"
    );

    let shutdown = CancellationToken::new();
    tokio::spawn(watch_signals(shutdown.clone()));
    // The metrics stay up while the worker drains; they stop when it has.
    let metrics_stop = CancellationToken::new();
    if let Some(addr) = metrics_listen {
        let listener = manifold_worker::metrics::bind(addr).await?;
        tracing::info!(%addr, "metrics on http://{addr}/metrics");
        let (dir, min) = (config.cache_dir.clone(), config.min_free_disk);
        tokio::spawn(manifold_worker::metrics::serve(
            listener,
            dir,
            min,
            metrics_stop.clone(),
        ));
    }
    let result = manifold_worker::run(config, shutdown)
        .await
        .context("manifold-worker stopped");
    metrics_stop.cancel();
    result
}

/// The first SIGTERM or Ctrl-C starts the drain; the second exits immediately.
async fn watch_signals(shutdown: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C drains");
            let _ = tokio::signal::ctrl_c().await;
            shutdown.cancel();
            return;
        }
    };
    let mut first = true;
    loop {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        if first {
            tracing::info!("shutdown requested: draining (signal again to exit at once)");
            shutdown.cancel();
            first = false;
        } else {
            tracing::warn!("second shutdown signal: exiting without draining");
            std::process::exit(130);
        }
    }
}
