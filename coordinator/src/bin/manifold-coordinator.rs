//! `manifold-coordinator --listen ADDR --state-dir DIR`

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use manifold_coordinator::{Config, StoreConfig, farm::FarmConfig};
use manifold_registry::RegistryConfig;
use tokio_util::sync::CancellationToken;

/// Schedules multi-platform container builds onto native workers and merges the results.
#[derive(Parser, Debug)]
#[command(name = "manifold-coordinator", version)]
struct Args {
    /// Address to serve the gRPC API on.
    #[arg(long, default_value = "127.0.0.1:7700", env = "MANIFOLD_LISTEN")]
    listen: SocketAddr,
    /// Folder for durable state (build contexts).
    #[arg(long, env = "MANIFOLD_STATE_DIR")]
    state_dir: PathBuf,
    /// A registry (HOST:PORT) to reach over plain HTTP; loopback registries always are. Repeatable.
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    insecure_registries: Vec<String>,
    /// How long a job waits while no attached worker can build its platform (none attached, or only
    /// draining or unhealthy ones) before its build fails, naming the platform.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    wait_for_workers: Duration,
    /// How long a silent or disconnected worker keeps its jobs before it is declared lost and they
    /// are requeued onto another worker of their platform (the attempt counts).
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    worker_lease: Duration,
    /// Attempts per job, the first included, on infrastructure failures (worker lost, Docker daemon
    /// unreachable, registry errors, no acknowledgement, stuck); build failures are never retried.
    /// 0 (like 1) means one attempt, no retry.
    #[arg(long, default_value_t = 3)]
    max_attempts: u32,
    /// How long a worker has to acknowledge an assignment before the job is requeued (the attempt
    /// counts).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    assign_timeout: Duration,
    /// How long a running job may go without any output before it is treated as stuck: cancelled
    /// on its worker and requeued (the attempt counts).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    stuck_after: Duration,
    /// Keep state in etcd instead of the state dir, and elect a leader among the coordinators that
    /// share it: comma-separated member URLs, e.g. http://10.0.0.1:2379,http://10.0.0.2:2379.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "URL,...",
        env = "MANIFOLD_ETCD"
    )]
    etcd: Vec<String>,
    /// Key prefix in etcd; coordinators of one farm share it.
    #[arg(long, default_value = "/manifold")]
    etcd_prefix: String,
    /// Leadership lease on etcd: a leader that cannot renew it for this long is replaced.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    leader_lease: Duration,
    /// Replicate build contexts to this REGISTRY/REPOSITORY, so that every coordinator of an HA set
    /// can read them (e.g. registry.example.com/manifold/contexts).
    #[arg(long, value_name = "REGISTRY/REPO")]
    context_repository: Option<String>,
    /// Remove a build context no unfinished build needs once it is this old.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    context_ttl: Duration,
    /// Address clients and workers should dial to reach this coordinator (told to them by followers).
    /// Default: http://LISTEN.
    #[arg(long, value_name = "URL")]
    advertise: Option<String>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let err =
        || format!("invalid duration `{s}`: expected a number with a unit, e.g. 30s, 2m, 500ms");
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, "s"), |i| s.split_at(i));
    let n: u64 = num.parse().map_err(|_| err())?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(err()),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let config = Config {
        listen: args.listen,
        state_dir: args.state_dir,
        context_repository: args.context_repository,
        context_ttl: args.context_ttl,
        store: if args.etcd.is_empty() {
            StoreConfig::Embedded
        } else {
            StoreConfig::Etcd {
                endpoints: args.etcd,
                prefix: args.etcd_prefix,
                lease: args.leader_lease,
                advertise: args
                    .advertise
                    .unwrap_or_else(|| format!("http://{}", args.listen)),
            }
        },
        farm: FarmConfig {
            wait_for_workers: args.wait_for_workers,
            worker_lease: args.worker_lease,
            // Three heartbeats per lease, so that one lost heartbeat does not lose the worker.
            heartbeat_interval: (args.worker_lease / 3).min(Duration::from_secs(5)),
            max_attempts: args.max_attempts,
            assign_timeout: args.assign_timeout,
            stuck_after: args.stuck_after,
            registry: RegistryConfig {
                insecure: args.insecure_registries,
            },
        },
    };
    let shutdown = CancellationToken::new();
    let signals = shutdown.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        signals.cancel();
    });
    manifold_coordinator::run(config, shutdown).await
}
