//! `manifold-coordinator --listen ADDR --state-dir DIR (--tls-cert … | --plaintext) [--config FILE]`,
//! `manifold-coordinator dev-ca`, `manifold-coordinator issue-token`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use manifold_coordinator::config::parse_duration;
use manifold_coordinator::{
    Config, FileConfig, StoreConfig, TlsConfig, Transport, farm::FarmConfig,
    farm::history::HistoryPolicy,
};
use manifold_registry::RegistryConfig;
use tokio_util::sync::CancellationToken;

/// Schedules multi-platform container builds onto native workers and merges the results.
#[derive(Parser, Debug)]
#[command(
    name = "manifold-coordinator",
    version,
    subcommand_negates_reqs = true,
    args_conflicts_with_subcommands = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Address to serve the gRPC API on.
    #[arg(long, default_value = "127.0.0.1:7700", env = "MANIFOLD_LISTEN")]
    listen: SocketAddr,
    /// Folder for durable state (build contexts).
    #[arg(long, env = "MANIFOLD_STATE_DIR", required = true)]
    state_dir: Option<PathBuf>,
    /// Config file (TOML): teams, tokens, scheduling policy. See the README's "Teams and access".
    /// Without one (or with no [[token]] in it) every caller is an admin.
    #[arg(long, env = "MANIFOLD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// This coordinator's TLS certificate (PEM). With --tls-key and --client-ca.
    #[arg(long, env = "MANIFOLD_TLS_CERT", value_name = "PEM", requires_all = ["tls_key", "client_ca"])]
    tls_cert: Option<PathBuf>,
    /// This coordinator's TLS private key (PEM).
    #[arg(
        long,
        env = "MANIFOLD_TLS_KEY",
        value_name = "PEM",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
    /// The CA (PEM) whose certificates identify workers; a worker without one is refused.
    #[arg(
        long,
        env = "MANIFOLD_CLIENT_CA",
        value_name = "PEM",
        requires = "tls_cert"
    )]
    client_ca: Option<PathBuf>,
    /// Serve plain HTTP/2 without TLS, for development on a loopback --listen address only.
    #[arg(long, conflicts_with = "tls_cert")]
    plaintext: bool,
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
    /// How long a worker has to acknowledge an assignment, from when it was sent, before the job
    /// is requeued (the attempt counts).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    assign_timeout: Duration,
    /// How long a running job may go without any output before it is treated as stuck: cancelled
    /// on its worker and requeued (the attempt counts).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    stuck_after: Duration,
    /// How long a build whose platforms are all built keeps retrying its manifest list push after
    /// transient registry failures (5xx, 429, connection, timeout) before it fails; its built
    /// platforms are kept, and `manifold publish ID` pushes the list again later.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    publish_window: Duration,
    /// Assignments decided but not yet sent to their workers (waiting for their records to be
    /// written) at most, 1 to 100000; beyond that, jobs stay queued until the state store catches
    /// up, so that no decision waits long for its write.
    #[arg(long, default_value_t = manifold_coordinator::farm::DEFAULT_MAX_UNSENT as u64, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    max_unsent: u64,
    /// Finished builds kept in memory in full (record, history, output lines), at most 100000;
    /// beyond that, and after --keep-finished-for, a finished build keeps only a summary in
    /// memory and is read from the state store when asked for (`manifold build-status`, `watch`,
    /// `logs`, `builds`, `publish`).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    keep_finished: u64,
    /// How long a finished build stays in memory in full after it finished (see --keep-finished).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    keep_finished_for: Duration,
    /// How long the state store keeps a finished build (its record and its logs) after it
    /// finished, e.g. 30d, 72h; 0 keeps every build.
    #[arg(long, default_value = "30d", value_parser = parse_duration)]
    retention: Duration,
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
    /// Serve Prometheus metrics (OpenMetrics text) on http://ADDR/metrics, e.g. 127.0.0.1:9700.
    /// No token is asked: bind it where only your monitoring reaches (README "Metrics").
    #[arg(long, value_name = "ADDR", env = "MANIFOLD_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Serve the web dashboard on ADDR, e.g. 0.0.0.0:7780: https with the API's certificate
    /// (http, and on loopback only, for a --plaintext farm). People sign in with their CLI token
    /// and see what it may see (README "Dashboard").
    #[arg(long, value_name = "ADDR", env = "MANIFOLD_DASHBOARD_LISTEN")]
    dashboard_listen: Option<SocketAddr>,
    /// Address clients and workers should dial to reach this coordinator (told to them by followers).
    /// Default: https://LISTEN (http:// with --plaintext).
    #[arg(long, value_name = "URL")]
    advertise: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Make a development CA and certificates for a local farm: ca.pem, coordinator.pem/.key
    /// (for localhost and any --host) and worker-NAME.pem/.key per --worker. An existing
    /// ca.pem/ca.key in DIR is reused, so workers can be added later.
    DevCa {
        /// Where to write them.
        #[arg(long, default_value = "manifold-certs", value_name = "DIR")]
        dir: PathBuf,
        /// Extra DNS name or IP address of the coordinator (localhost, 127.0.0.1 and ::1 are
        /// always included). Repeatable.
        #[arg(long = "host", value_name = "NAME|IP")]
        hosts: Vec<String>,
        /// A worker certificate: its name, and the team that owns the worker after `=`.
        /// Repeatable, e.g. --worker x86-1 --worker mac-1=mobile.
        #[arg(long = "worker", value_name = "NAME[=TEAM]")]
        workers: Vec<String>,
    },
    /// Make a new bearer token. Prints the token once (give it to its holder; it is not stored)
    /// and the [[token]] entry, holding only its SHA-256, to add to the config file.
    IssueToken {
        /// Who holds it (a person or a team), shown as the submitter of its builds.
        #[arg(long)]
        name: String,
        /// The team its builds belong to.
        #[arg(long, required_unless_present = "admin")]
        team: Option<String>,
        /// Sees every team's builds and manages workers.
        #[arg(long)]
        admin: bool,
    },
}

fn main() -> anyhow::Result<()> {
    // One crypto provider for every TLS user in the process (tonic, the registry client).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let args = Args::parse();
    match args.command {
        Some(Command::DevCa {
            dir,
            hosts,
            workers,
        }) => dev_ca(&dir, &hosts, &workers),
        Some(Command::IssueToken { name, team, admin }) => {
            issue_token(&name, team.as_deref(), admin)
        }
        None => serve(args),
    }
}

fn dev_ca(dir: &std::path::Path, hosts: &[String], workers: &[String]) -> anyhow::Result<()> {
    let workers: Vec<manifold_coordinator::pki::WorkerCert> = workers
        .iter()
        .map(|w| {
            let (name, team) = match w.split_once('=') {
                Some((n, t)) => (n, Some(t.to_owned())),
                None => (w.as_str(), None),
            };
            manifold_coordinator::pki::WorkerCert {
                name: name.to_owned(),
                team,
            }
        })
        .collect();
    let written = manifold_coordinator::pki::write_dev_farm(dir, hosts, &workers)?;
    for path in written {
        println!("{}", path.display());
    }
    Ok(())
}

fn issue_token(name: &str, team: Option<&str>, admin: bool) -> anyhow::Result<()> {
    if name.trim().is_empty() || name.contains('"') {
        anyhow::bail!("--name `{name}` is not usable: give a non-empty name without quotes");
    }
    if let Some(team) = team {
        manifold_coordinator::config::check_name("team", team).map_err(anyhow::Error::msg)?;
    }
    let token = manifold_coordinator::access::new_token();
    println!("token: {token}");
    println!();
    println!("# add to the coordinator's config file (it holds only the token's SHA-256):");
    println!("[[token]]");
    println!("name = \"{name}\"");
    if let Some(team) = team {
        println!("team = \"{team}\"");
    }
    if admin {
        println!("admin = true");
    }
    println!(
        "sha256 = \"{}\"",
        manifold_coordinator::access::token_digest(&token)
    );
    Ok(())
}

#[tokio::main]
async fn serve(args: Args) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let transport = match (args.tls_cert, args.tls_key, args.client_ca) {
        (Some(cert), Some(key), Some(client_ca)) => Transport::Tls(TlsConfig {
            cert,
            key,
            client_ca,
        }),
        _ if args.plaintext => Transport::Plaintext,
        _ => anyhow::bail!(
            "choose how to serve: --tls-cert, --tls-key and --client-ca (`manifold-coordinator dev-ca` makes a development set), or --plaintext for development on a loopback address"
        ),
    };
    let config = Config {
        listen: args.listen,
        state_dir: args.state_dir.context("--state-dir is required")?,
        transport,
        access: file.access(),
        limits: file.limits.clone(),
        context_repository: args.context_repository,
        context_ttl: args.context_ttl,
        metrics_listen: args.metrics_listen,
        dashboard_listen: args.dashboard_listen,
        store: if args.etcd.is_empty() {
            StoreConfig::Embedded
        } else {
            StoreConfig::Etcd {
                endpoints: args.etcd,
                prefix: args.etcd_prefix,
                lease: args.leader_lease,
                advertise: args.advertise.unwrap_or_else(|| {
                    let scheme = if args.plaintext { "http" } else { "https" };
                    format!("{scheme}://{}", args.listen)
                }),
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
            publish_window: args.publish_window,
            max_unsent: args.max_unsent as usize,
            history: HistoryPolicy {
                keep_finished: args.keep_finished as usize,
                keep_finished_for: args.keep_finished_for,
                retention: (!args.retention.is_zero()).then_some(args.retention),
            },
            registry: RegistryConfig {
                insecure: args.insecure_registries,
            },
            teams: file.teams(),
            preemption_grace: file.preemption_grace().map_err(anyhow::Error::msg)?,
            repositories: file.repo_rules().map_err(|e| {
                anyhow::anyhow!(
                    "config file {}: {e}",
                    args.config
                        .as_deref()
                        .unwrap_or(std::path::Path::new(""))
                        .display()
                )
            })?,
        },
    };
    if let Some(path) = args.config.clone() {
        tokio::spawn(reload_tokens_on_sighup(path, config.access.clone()));
    }
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

/// SIGHUP re-reads the config file and replaces the accepted tokens (so a deleted entry is revoked
/// at once). Team and scheduling changes take effect at the next start. A file that does not load
/// leaves the tokens in use, and says why.
async fn reload_tokens_on_sighup(path: PathBuf, access: manifold_coordinator::access::Access) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot watch SIGHUP; token changes need a restart");
        return;
    };
    while hangups.recv().await.is_some() {
        match FileConfig::load(&path) {
            Ok(file) => {
                access.replace_with(&file.access());
                tracing::info!(
                    tokens = file.token.len(),
                    "config reloaded: tokens replaced (team and scheduling changes apply at the next start)"
                );
            }
            Err(e) => tracing::error!(error = %e, "config reload failed; the tokens in use stay"),
        }
    }
}
