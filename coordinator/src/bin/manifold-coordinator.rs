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
    /// How long a job waits while no attached worker builds its platform before its build fails.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    wait_for_workers: Duration,
    /// How long a silent or disconnected worker keeps its jobs before they are requeued.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    worker_lease: Duration,
    /// Attempts per job on infrastructure failures (build failures are never retried).
    #[arg(long, default_value_t = 3)]
    max_attempts: u32,
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
            max_attempts: args.max_attempts.max(1),
            registry: RegistryConfig {
                insecure: args.insecure_registries,
            },
            ..FarmConfig::default()
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
