//! History benchmark (issue 13, item 4): what a long history costs the real coordinator (a
//! release `manifold-coordinator` process, plaintext on 127.0.0.1, embedded store), in memory
//! and at a restart.
//!
//! ```text
//! nice -n 10 cargo build --release -p manifold-coordinator --bin manifold-coordinator
//! cargo bench -p manifold-tests --bench history [-- restart memory unbounded]
//! ```
//!
//! Scenarios (all by default, or those named after `--`):
//! - `restart`: a state dir seeded through the coordinator library's own embedded store
//!   (`EmbeddedStore::save_all` and `write_logs`: the records, summaries and log chunks a running
//!   coordinator writes) with `BUILDS` two-platform builds: `QUEUED` of them queued (both jobs
//!   queued, submitted in the last 10 minutes), the others finished over the last 20 hours (9 in
//!   10 succeeded, 1 in 10 failed, each job with its worker, image, log tail and one log chunk).
//!   Then `RESTARTS` times: the coordinator is started on it with the default history flags, and
//!   timed from the spawn to its first `Builds.List` answer and to the first `Builds.Teams` answer
//!   that counts every queued job; its RSS (VmRSS, VmHWM) is read once it serves, its
//!   `manifold_builds_stored` / `_held` metrics are checked, and it is stopped with SIGTERM. The
//!   last one is stopped with SIGKILL and one more restart is timed after it (a crash).
//! - `memory`: the coordinator with the default history flags, 100 simulated workers x 2 slots
//!   (load.rs's, over real gRPC; jobs succeed as soon as they are accepted, against a registry of
//!   the benchmark's own) and 8 submitters that keep at most `WINDOW` builds unfinished; the
//!   coordinator's RSS is sampled every 5% of `BUILDS` finished builds (finished = stored minus
//!   queued and running, from its /metrics), with the builds it holds in full.
//! - `unbounded`: the same for `UNBOUNDED_BUILDS` builds with eviction effectively off
//!   (`--keep-finished 100000 --keep-finished-for 1000d`, the largest `--keep-finished` takes):
//!   what eviction buys.
//!
//! Knobs (environment): MANIFOLD_BENCH_HISTORY_BUILDS (100000), _QUEUED (20000), _RESTARTS (3),
//! _UNBOUNDED_BUILDS (20000), _WINDOW (400), _TIMEOUT_S (per memory scenario, 2400: on the
//! deadline the curve measured so far is reported, marked unfinished), _COORDINATOR (another
//! coordinator binary; default target/release's). The tables are also written to
//! target/manifold-bench/history-<unix time>.md. Every wait is bounded; the coordinators, the
//! registry and their temp dirs are removed at the end, also after a failure.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use manifold_coordinator::access::Caller;
use manifold_coordinator::build::{Build, BuildRequest, BuildSpec, BuildState, JobState};
use manifold_coordinator::farm::{FarmState, Now};
use manifold_coordinator::logs::{LogChunk, LogWrite};
use manifold_coordinator::store::StateStore as _;
use manifold_coordinator::store::embedded::EmbeddedStore;
use manifold_proto::Platform;
use manifold_proto::v1::{self, builds_client::BuildsClient};
use manifold_registry::ChildImage;
use tokio::sync::watch;

#[path = "history/memory.rs"]
mod memory;
#[path = "history/restart.rs"]
mod restart;
#[path = "load/sim.rs"]
mod sim;
use sim::{
    Coordinator, Registry, Sim, SimWorker, build_request, clock_ticks, commit, connect, free_port,
    load_average, pct, proc_cpu_ticks, proc_status_kib, push_image, queued, release_binary,
    unix_ms, upload_context, wait_attached, write_report,
};

/// Goals of issue 13, item 4.
const GOAL_RSS_MIB: f64 = 256.0;
const GOAL_RESTART_S: f64 = 2.0;

const UNBOUNDED_FLAGS: [&str; 4] = ["--keep-finished", "100000", "--keep-finished-for", "1000d"];
const WORKERS: usize = 100;
const SLOTS: u32 = 2;
const SUBMITTERS: usize = 8;
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

struct Config {
    builds: usize,
    queued: usize,
    restarts: usize,
    unbounded_builds: usize,
    window: usize,
    timeout: Duration,
}

impl Config {
    fn from_env() -> anyhow::Result<Self> {
        let num = |k: &str, d: u64| sim::env_number("MANIFOLD_BENCH_HISTORY", k, d);
        let builds = num("BUILDS", 100_000)?.max(1) as usize;
        Ok(Self {
            builds,
            queued: (num("QUEUED", 20_000)? as usize).min(builds),
            restarts: num("RESTARTS", 3)?.max(1) as usize,
            unbounded_builds: num("UNBOUNDED_BUILDS", 20_000)?.max(1) as usize,
            window: num("WINDOW", 400)?.max(1) as usize,
            timeout: Duration::from_secs(num("TIMEOUT_S", 2_400)?),
        })
    }
}

const SCENARIOS: [&str; 3] = ["restart", "memory", "unbounded"];

fn main() -> ExitCode {
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "history benchmark: skipped (not under `cargo bench`); run `nice -n 10 cargo build --release -p manifold-coordinator --bin manifold-coordinator && cargo bench -p manifold-tests --bench history`"
        );
        return ExitCode::SUCCESS;
    }
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if let Some(unknown) = wanted.iter().find(|w| !SCENARIOS.contains(&w.as_str())) {
        eprintln!(
            "history bench: no scenario named {unknown}; the scenarios are restart, memory and unbounded"
        );
        return ExitCode::FAILURE;
    }
    let scenarios: Vec<&str> = SCENARIOS
        .into_iter()
        .filter(|s| wanted.is_empty() || wanted.iter().any(|w| w == s))
        .collect();
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("history bench: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match runtime.block_on(run(&config, &scenarios)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("history bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: &Config, scenarios: &[&str]) -> anyhow::Result<()> {
    let bin = match std::env::var_os("MANIFOLD_BENCH_HISTORY_COORDINATOR") {
        Some(path) => PathBuf::from(path),
        None => release_binary("manifold-coordinator")?,
    };
    let commit = commit();
    let run_id = unix_ms();
    println!(
        "history benchmark: {} builds, coordinator {} (commit {commit})",
        config.builds,
        bin.display()
    );
    let mut report = format!("# History benchmark {run_id}\n\ncommit {commit}\n\n");
    let mut registry = None;
    for &scenario in scenarios {
        println!("\n== {scenario} ==");
        let outcome = match scenario {
            "restart" => restart::restart(config, &bin)
                .await
                .map(|r| r.table(config)),
            _ => {
                if registry.is_none() {
                    registry = Some(Registry::start().await?);
                }
                let registry = registry.as_ref().expect("started above");
                let (builds, flags): (usize, &[&str]) = match scenario {
                    "memory" => (config.builds, &[]),
                    _ => (config.unbounded_builds, &UNBOUNDED_FLAGS),
                };
                memory::memory(config, scenario, builds, flags, registry, &bin, run_id)
                    .await
                    .map(|r| r.table(scenario, flags))
            }
        };
        match outcome {
            Ok(table) => {
                println!("{table}");
                report.push_str(&table);
            }
            Err(e) => {
                let _ = writeln!(report, "## {scenario}\n\nfailed: {e:#}\n");
                eprintln!("history bench: {scenario}: {e:#}");
                write_report("history", &report, run_id);
                return Err(e);
            }
        }
    }
    write_report("history", &report, run_id);
    Ok(())
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "missed" }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// What the coordinator's /metrics say of its builds.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    stored: u64,
    held: u64,
    queued: u64,
    running: u64,
}

impl Counts {
    fn finished(&self) -> u64 {
        self.stored.saturating_sub(self.queued + self.running)
    }
}

async fn scrape(addr: &str) -> anyhow::Result<Counts> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()?;
    let text = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    let value = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    };
    Ok(Counts {
        stored: value("manifold_builds_stored"),
        held: value("manifold_builds_held"),
        queued: value("manifold_builds{state=\"queued\"}"),
        running: value("manifold_builds{state=\"running\"}"),
    })
}
