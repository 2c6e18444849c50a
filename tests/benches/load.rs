//! Load benchmark: the real coordinator (a release `manifold-coordinator` process, plaintext on
//! 127.0.0.1, embedded store in a temp dir) with simulated workers attached over real gRPC and
//! 8 concurrent submitters, against a registry of its own.
//!
//! ```text
//! nice -n 10 cargo build --release -p manifold-coordinator
//! cargo bench -p manifold-tests --bench load [-- w100 w1000 burst]
//! ```
//!
//! Scenarios (all by default, or those named after `--`):
//! - `w100`: 100 workers x 2 slots attached, then `BUILDS` two-platform builds submitted;
//! - `w1000`: 1,000 workers x 2 slots, the same;
//! - `burst`: `BUILDS` builds submitted with no worker attached, then 1,000 workers x 4 slots
//!   attach at once.
//!
//! Each simulated worker speaks the worker protocol (proto/manifold/v1/manifold.proto, Workers):
//! hello, welcome, heartbeats at the interval the welcome gives; for each assignment it answers
//! `JobAccepted`, `LOG_LINES` output lines and a `JobResult` with the image it pushed. Half the
//! workers are linux/amd64, half linux/arm64. The coordinator checks every reported image in the
//! registry before it believes it (coordinator/src/verify.rs: the manifest by digest, its config)
//! and pushes a manifest list per build; so the benchmark starts Debian's `docker-registry` on a
//! free loopback port, pushes one tiny image per platform (an OCI manifest, its config, no layer)
//! into the scenario's repository once, and every worker reports that image's digest for every
//! job of its platform. Builds differ by a build argument, so identical-build reuse joins none.
//!
//! Measured: sustained assignments/s (received by the workers), Submit latency, decision to
//! worker (the job's ASSIGNED event time in the build's history against the worker's receipt, both
//! Unix ms on this machine), submit to first assignment, builds/s end to end (first build created
//! to last finished), coordinator CPU (/proc/PID/stat) and RSS (/proc/PID/status VmRSS, VmHWM),
//! the registry's CPU (it runs on the same cores: near 2 cores, it bounds the rate),
//! workers declared lost and "did not acknowledge" failures (the coordinator's log and the build
//! histories), and `Builds.List` / `Workers.List` latency sampled every second during the load.
//!
//! Knobs (environment): MANIFOLD_BENCH_LOAD_BUILDS (10000), _SUBMITTERS (8), _LOG_LINES (3),
//! _JOB_MS (0: a simulated job ends as soon as it is accepted), _TIMEOUT_S (per scenario, 900),
//! _COORDINATOR (another coordinator binary, for A/B runs; default target/release's),
//! _COORDINATOR_ARGS (more flags for it, split at spaces, e.g. `--max-unsent 256`),
//! _KEEP_LOG (set: the coordinator's log is kept beside the report; RUST_LOG reaches it),
//! _PIN (set: the coordinator runs on the last CPU alone, this process, its simulated workers and
//! the registry on the others, `taskset`; as the coordinator would run on a machine of its own,
//! not sharing its cores with the registry it checks every image in; see docs/benchmarks.md).
//! The table is also written to target/manifold-bench/load-<unix time>.md. Every wait is bounded;
//! the coordinator, the registry and their temp dirs are removed at the end, also after a failure.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use manifold_proto::v1;
use tokio::sync::watch;

#[path = "load/drive.rs"]
mod drive;
#[path = "load/sim.rs"]
mod sim;
use drive::{Sampler, Submissions, histories, wait_all_final};
use sim::{
    Coordinator, CpuSplit, Registry, Sim, SimWorker, commit, load_average, pct, platform_key,
    proc_status_kib, push_image, queued, release_binary, unix_ms, upload_context, wait_attached,
    write_report,
};

/// Goals of issue 13, item 3.
const GOAL_ASSIGNMENTS: f64 = 2_000.0;
const GOAL_SUBMIT_P99_MS: f64 = 50.0;
const GOAL_DISPATCH_P99_MS: f64 = 100.0;
const GOAL_LIST_MS: f64 = 100.0;

#[derive(Clone, Copy, Debug)]
struct Scenario {
    name: &'static str,
    workers: usize,
    slots: u32,
    /// Every build is submitted before the first worker attaches.
    queued_first: bool,
}

const SCENARIOS: [Scenario; 3] = [
    Scenario {
        name: "w100",
        workers: 100,
        slots: 2,
        queued_first: false,
    },
    Scenario {
        name: "w1000",
        workers: 1_000,
        slots: 2,
        queued_first: false,
    },
    Scenario {
        name: "burst",
        workers: 1_000,
        slots: 4,
        queued_first: true,
    },
];

struct Config {
    builds: usize,
    submitters: usize,
    log_lines: usize,
    job_ms: u64,
    timeout: Duration,
    /// More flags for the coordinator.
    coordinator_args: Vec<String>,
    /// The coordinator on a CPU of its own (`_PIN`).
    pin: bool,
}

impl Config {
    fn from_env() -> anyhow::Result<Self> {
        let num = |k: &str, d: u64| sim::env_number("MANIFOLD_BENCH_LOAD", k, d);
        Ok(Self {
            builds: num("BUILDS", 10_000)?.max(1) as usize,
            submitters: num("SUBMITTERS", 8)?.max(1) as usize,
            log_lines: num("LOG_LINES", 3)? as usize,
            job_ms: num("JOB_MS", 0)?,
            timeout: Duration::from_secs(num("TIMEOUT_S", 900)?),
            pin: std::env::var_os("MANIFOLD_BENCH_LOAD_PIN").is_some(),
            coordinator_args: std::env::var("MANIFOLD_BENCH_LOAD_COORDINATOR_ARGS")
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
        })
    }
}

fn main() -> ExitCode {
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "load benchmark: skipped (not under `cargo bench`); run `nice -n 10 cargo build --release -p manifold-coordinator && cargo bench -p manifold-tests --bench load`"
        );
        return ExitCode::SUCCESS;
    }
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let scenarios: Vec<Scenario> = SCENARIOS
        .iter()
        .filter(|s| wanted.is_empty() || wanted.iter().any(|w| w == s.name))
        .copied()
        .collect();
    if scenarios.is_empty() {
        eprintln!(
            "load bench: no scenario named {wanted:?}; the scenarios are w100, w1000 and burst"
        );
        return ExitCode::FAILURE;
    }
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("load bench: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match runtime.block_on(run(&config, &scenarios)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("load bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: &Config, scenarios: &[Scenario]) -> anyhow::Result<()> {
    let coordinator_bin = match std::env::var_os("MANIFOLD_BENCH_LOAD_COORDINATOR") {
        Some(path) => PathBuf::from(path),
        None => release_binary("manifold-coordinator")?,
    };
    let commit = commit();
    let run_id = unix_ms();
    // Before the registry starts: it inherits this process's CPUs.
    let split = if config.pin {
        Some(CpuSplit::apply()?)
    } else {
        None
    };
    let cpus = match &split {
        Some(s) => format!(
            "coordinator on CPU {} alone; this process and the registry on CPUs {}",
            s.coordinator, s.rest
        ),
        None => "every process on every CPU".to_owned(),
    };
    let registry = Registry::start().await?;
    println!(
        "load benchmark: {} builds, {} submitters, registry {}, coordinator {} (commit {commit}); {cpus}",
        config.builds,
        config.submitters,
        registry.host,
        coordinator_bin.display()
    );
    let mut report = format!(
        "# Load benchmark {run_id}\n\ncommit {commit}; {} two-platform builds from {} submitters; {} log lines per job; jobs take {} ms; coordinator flags: {:?}; {cpus}\n\n",
        config.builds, config.submitters, config.log_lines, config.job_ms, config.coordinator_args
    );
    let mut results = Vec::new();
    for scenario in scenarios {
        println!(
            "\n== {}: {} workers x {} slots{} ==",
            scenario.name,
            scenario.workers,
            scenario.slots,
            if scenario.queued_first {
                ", attaching to the queued builds"
            } else {
                ""
            }
        );
        let outcome = tokio::time::timeout(
            config.timeout,
            run_scenario(
                config,
                scenario,
                &registry,
                &coordinator_bin,
                split.as_ref().map(|s| s.coordinator.as_str()),
                run_id,
            ),
        )
        .await
        .unwrap_or_else(|_| {
            Err(anyhow::anyhow!(
                "scenario {} did not end within {:?} (MANIFOLD_BENCH_LOAD_TIMEOUT_S)",
                scenario.name,
                config.timeout
            ))
        });
        match outcome {
            Ok(r) => {
                let table = r.table(scenario);
                println!("{table}");
                report.push_str(&table);
                results.push(r);
            }
            Err(e) => {
                let _ = writeln!(report, "## {}\n\nfailed: {e:#}\n", scenario.name);
                eprintln!("load bench: {}: {e:#}", scenario.name);
                write_report("load", &report, run_id);
                return Err(e);
            }
        }
    }
    write_report("load", &report, run_id);
    Ok(())
}

/// What one scenario measured.
struct Outcome {
    load_before: String,
    load_after: String,
    builds: usize,
    succeeded: usize,
    failed: Vec<String>,
    submit: Vec<f64>,
    submit_secs: f64,
    assignments: u64,
    assign_span_secs: f64,
    assign_per_second: Vec<f64>,
    dispatch: Vec<f64>,
    submit_to_assign: Vec<f64>,
    build_secs: f64,
    retried_jobs: usize,
    unacknowledged: usize,
    lost_in_histories: usize,
    lost_in_log: usize,
    unacknowledged_in_log: usize,
    sessions_ended: u64,
    reattaches: u64,
    cpu: Vec<f64>,
    cpu_mean: f64,
    bench_cpu_mean: f64,
    registry_cpu_mean: Option<f64>,
    rss_mib: f64,
    hwm_mib: f64,
    builds_list: Vec<f64>,
    workers_list: Vec<f64>,
}

impl Outcome {
    fn table(&self, s: &Scenario) -> String {
        let mut t = String::new();
        let ms = |v: &[f64]| {
            format!(
                "p50 {:.1} / p99 {:.1} / max {:.1} ms (n={})",
                pct(v, 50.0),
                pct(v, 99.0),
                pct(v, 100.0),
                v.len()
            )
        };
        let verdict = |ok: bool| if ok { "met" } else { "missed" };
        let rate = self.assignments as f64 / self.assign_span_secs.max(1e-9);
        let _ = writeln!(
            t,
            "## {}: {} workers x {} slots, {} builds{}\n",
            s.name,
            s.workers,
            s.slots,
            self.builds,
            if s.queued_first {
                " queued before the workers attach"
            } else {
                " submitted while the workers are attached"
            }
        );
        let _ = writeln!(
            t,
            "load average before: {}; after: {}\n",
            self.load_before, self.load_after
        );
        let _ = writeln!(t, "| figure | value | goal | |\n| --- | --- | --- | --- |");
        let _ = writeln!(
            t,
            "| builds succeeded / failed | {} / {} | all succeed | {} |",
            self.succeeded,
            self.failed.len(),
            verdict(self.failed.is_empty() && self.succeeded == self.builds)
        );
        if let Some(first) = self.failed.first() {
            let _ = writeln!(t, "| first failure | {first} | | |");
        }
        let _ = writeln!(
            t,
            "| **assignments/s (first to last assignment)** | **{rate:.0}** ({} in {:.1} s; per second p50 {:.0}, max {:.0}) | >= {GOAL_ASSIGNMENTS:.0} | {} |",
            self.assignments,
            self.assign_span_secs,
            pct(&self.assign_per_second, 50.0),
            pct(&self.assign_per_second, 100.0),
            verdict(rate >= GOAL_ASSIGNMENTS)
        );
        let _ = writeln!(
            t,
            "| **Submit latency** | **{}**; {:.0} builds/s submitted | p99 <= {GOAL_SUBMIT_P99_MS:.0} ms | {} |",
            ms(&self.submit),
            self.builds as f64 / self.submit_secs.max(1e-9),
            verdict(pct(&self.submit, 99.0) <= GOAL_SUBMIT_P99_MS)
        );
        let _ = writeln!(
            t,
            "| **decision to worker** (ASSIGNED event to receipt) | **{}** | p99 <= {GOAL_DISPATCH_P99_MS:.0} ms | {} |",
            ms(&self.dispatch),
            verdict(pct(&self.dispatch, 99.0) <= GOAL_DISPATCH_P99_MS)
        );
        let _ = writeln!(
            t,
            "| submit to first assignment received | {} | | |",
            ms(&self.submit_to_assign)
        );
        let _ = writeln!(
            t,
            "| builds/s end to end (first created to last finished) | {:.0} ({:.1} s) | | |",
            self.builds as f64 / self.build_secs.max(1e-9),
            self.build_secs
        );
        let healthy = self.unacknowledged == 0
            && self.lost_in_histories == 0
            && self.lost_in_log == 0
            && self.unacknowledged_in_log == 0
            && self.sessions_ended == 0;
        let _ = writeln!(
            t,
            "| **workers declared lost / \"did not acknowledge\" failures** | **{} / {}** (histories; log: {} / {}); streams cut: {}; attaches tried again: {}; jobs retried: {} | 0 | {} |",
            self.lost_in_histories,
            self.unacknowledged,
            self.lost_in_log,
            self.unacknowledged_in_log,
            self.sessions_ended,
            self.reattaches,
            self.retried_jobs,
            verdict(healthy)
        );
        let _ = writeln!(
            t,
            "| coordinator CPU, % of one core | mean {:.0}, per second p50 {:.0} / max {:.0} | | |",
            self.cpu_mean,
            pct(&self.cpu, 50.0),
            pct(&self.cpu, 100.0)
        );
        let _ = writeln!(
            t,
            "| benchmark process CPU (simulated workers, submitters), % of one core | mean {:.0} | | |",
            self.bench_cpu_mean
        );
        if let Some(registry) = self.registry_cpu_mean {
            // The registry shares the machine's cores: when it is near all of them, it is what
            // bounds the rate, not the coordinator.
            let _ = writeln!(
                t,
                "| the benchmark's registry CPU (docker-registry), % of one core | mean {registry:.0} | | |"
            );
        }
        let _ = writeln!(
            t,
            "| coordinator RSS at the end / peak (VmHWM), MiB | {:.0} / {:.0} | | |",
            self.rss_mib, self.hwm_mib
        );
        let _ = writeln!(
            t,
            "| **`Builds.List` during the load** | **{}** | < {GOAL_LIST_MS:.0} ms | {} |",
            ms(&self.builds_list),
            verdict(pct(&self.builds_list, 100.0) < GOAL_LIST_MS)
        );
        let _ = writeln!(
            t,
            "| **`Workers.List` during the load** | **{}** | < {GOAL_LIST_MS:.0} ms | {} |",
            ms(&self.workers_list),
            verdict(pct(&self.workers_list, 100.0) < GOAL_LIST_MS)
        );
        t.push('\n');
        t
    }
}

async fn run_scenario(
    config: &Config,
    scenario: &Scenario,
    registry: &Registry,
    bin: &Path,
    cpus: Option<&str>,
    run_id: i64,
) -> anyhow::Result<Outcome> {
    let repository = format!("load/{run_id}-{}", scenario.name);
    let http = reqwest::Client::builder().no_proxy().build()?;
    let amd64 = push_image(&http, &registry.host, &repository, "amd64").await?;
    let arm64 = push_image(&http, &registry.host, &repository, "arm64").await?;
    let args: Vec<&str> = config.coordinator_args.iter().map(String::as_str).collect();
    let coordinator = Coordinator::start(bin, &args, cpus).await?;
    let control = coordinator.channel().await?;
    let context = upload_context(&control).await?;
    let load_before = load_average();
    let sim = Arc::new(Sim::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut workers = tokio::task::JoinSet::new();
    let attach = |workers: &mut tokio::task::JoinSet<anyhow::Result<()>>| {
        for i in 0..scenario.workers {
            let (platform, image) = if i % 2 == 0 {
                ("amd64", amd64.clone())
            } else {
                ("arm64", arm64.clone())
            };
            let w = SimWorker {
                name: format!("sim-{}-{i}", scenario.name),
                architecture: platform,
                slots: scenario.slots,
                image,
                log_lines: config.log_lines,
                job_ms: config.job_ms,
                sim: sim.clone(),
                stop: stop_rx.clone(),
            };
            let url = coordinator.url.clone();
            workers.spawn(async move { w.run(url).await });
        }
    };
    let builds_spec = Submissions {
        image: format!("{}/{repository}", registry.host),
        context: context.clone(),
        builds: config.builds,
        submitters: config.submitters,
        url: coordinator.url.clone(),
    };
    let started = Instant::now();
    let sampler;
    let submitted;
    if scenario.queued_first {
        submitted = builds_spec.run().await?;
        println!(
            "submitted {} builds in {:.1} s with no worker attached; queued: {}",
            submitted.ids.len(),
            submitted.secs,
            queued(&control).await?
        );
        sampler = Sampler::start(
            coordinator.pid,
            registry.pid(),
            control.clone(),
            sim.clone(),
        );
        attach(&mut workers);
        wait_attached(&sim, scenario.workers, &mut workers).await?;
    } else {
        attach(&mut workers);
        wait_attached(&sim, scenario.workers, &mut workers).await?;
        println!(
            "{} workers attached in {:.1} s",
            scenario.workers,
            started.elapsed().as_secs_f64()
        );
        sampler = Sampler::start(
            coordinator.pid,
            registry.pid(),
            control.clone(),
            sim.clone(),
        );
        submitted = builds_spec.run().await?;
        println!(
            "submitted {} builds in {:.1} s",
            submitted.ids.len(),
            submitted.secs
        );
    }
    let finals = wait_all_final(&control, config.builds, &mut workers).await?;
    let sampler = sampler.stop().await;
    let load_after = load_average();
    let (rss_kib, hwm_kib) = (
        proc_status_kib(coordinator.pid, "VmRSS:").unwrap_or(0),
        proc_status_kib(coordinator.pid, "VmHWM:").unwrap_or(0),
    );
    stop_tx.send_replace(true);
    while tokio::time::timeout(Duration::from_secs(10), workers.join_next())
        .await
        .ok()
        .flatten()
        .is_some()
    {}
    workers.abort_all();

    // After the load: every build's history, for decision times and failures.
    let histories = histories(&coordinator.url, &submitted.ids).await?;
    let received = std::mem::take(&mut *sim.received.lock().expect("lock"));
    let mut assigned_at: HashMap<(String, String, u32), i64> = HashMap::new();
    let mut unacknowledged = 0;
    let mut lost = 0;
    for (build, events) in &histories {
        for e in events {
            let Some(v1::build_event::Event::JobState(js)) = &e.event else {
                continue;
            };
            let platform = platform_key(js.platform.as_ref());
            if js.state == v1::JobState::Assigned as i32 {
                assigned_at.insert((build.clone(), platform, js.attempt), e.at_ms);
            }
            if js.message.contains("did not acknowledge") {
                unacknowledged += 1;
            }
            if js.message.contains("worker lost") || js.message.contains("declared lost") {
                lost += 1;
            }
        }
    }
    let mut dispatch = Vec::new();
    let mut first_receipt: HashMap<&str, i64> = HashMap::new();
    for r in &received {
        if let Some(at) = assigned_at.get(&(r.build.clone(), r.platform.clone(), r.attempt)) {
            dispatch.push((r.at_ms - at) as f64);
        }
        let e = first_receipt.entry(r.build.as_str()).or_insert(r.at_ms);
        *e = (*e).min(r.at_ms);
    }
    let submit_to_assign: Vec<f64> = submitted
        .started_ms
        .iter()
        .filter_map(|(id, ms)| first_receipt.get(id.as_str()).map(|r| (r - ms) as f64))
        .collect();
    let log = std::fs::read_to_string(&coordinator.log).unwrap_or_default();
    if std::env::var_os("MANIFOLD_BENCH_LOAD_KEEP_LOG").is_some() {
        write_report(&format!("load-{}-coordinator", scenario.name), &log, run_id);
    }
    let count = |needle: &str| log.lines().filter(|l| l.contains(needle)).count();
    let created = finals.iter().map(|b| b.created_at_ms).min().unwrap_or(0);
    let finished = finals.iter().map(|b| b.finished_at_ms).max().unwrap_or(0);
    let failed: Vec<String> = finals
        .iter()
        .filter(|b| b.state != v1::BuildState::Succeeded as i32)
        .map(|b| format!("{} {:?}: {}", b.id, b.state, b.error))
        .collect();
    let retried_jobs = finals
        .iter()
        .flat_map(|b| &b.jobs)
        .filter(|j| j.attempt > 1)
        .count();
    let (first_assign, last_assign) = (
        received.iter().map(|r| r.at_ms).min().unwrap_or(0),
        received.iter().map(|r| r.at_ms).max().unwrap_or(0),
    );
    let outcome = Outcome {
        load_before,
        load_after,
        builds: config.builds,
        succeeded: finals.len() - failed.len(),
        failed,
        submit: submitted.latencies.clone(),
        submit_secs: submitted.secs,
        assignments: received.len() as u64,
        assign_span_secs: (last_assign - first_assign).max(1) as f64 / 1000.0,
        assign_per_second: sampler.assignments_in_span(),
        dispatch,
        submit_to_assign,
        build_secs: (finished - created).max(1) as f64 / 1000.0,
        retried_jobs,
        unacknowledged,
        lost_in_histories: lost,
        lost_in_log: count("declaring it lost"),
        unacknowledged_in_log: count("did not acknowledge"),
        sessions_ended: sim.ended.load(Ordering::SeqCst),
        reattaches: sim.reattaches.load(Ordering::SeqCst),
        cpu_mean: sampler.cpu_mean,
        cpu: sampler.cpu,
        bench_cpu_mean: sampler.bench_cpu_mean,
        registry_cpu_mean: sampler.registry_cpu_mean,
        rss_mib: rss_kib as f64 / 1024.0,
        hwm_mib: hwm_kib as f64 / 1024.0,
        builds_list: sampler.builds_list,
        workers_list: sampler.workers_list,
    };
    coordinator.stop().await;
    Ok(outcome)
}
