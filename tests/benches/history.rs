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
            "restart" => restart(config, &bin).await.map(|r| r.table(config)),
            _ => {
                if registry.is_none() {
                    registry = Some(Registry::start().await?);
                }
                let registry = registry.as_ref().expect("started above");
                let (builds, flags): (usize, &[&str]) = match scenario {
                    "memory" => (config.builds, &[]),
                    _ => (config.unbounded_builds, &UNBOUNDED_FLAGS),
                };
                memory(config, scenario, builds, flags, registry, &bin, run_id)
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

// ------------------------------------------------------------------------------------------------
// Restart

/// One start of the coordinator on the seeded store.
struct Start {
    after: &'static str,
    list_s: f64,
    queue_s: f64,
    rss_kib: u64,
    hwm_kib: u64,
    held: u64,
    /// How long the SIGTERM before it took to end the previous process.
    stop_s: Option<f64>,
}

struct RestartOutcome {
    load_before: String,
    load_after: String,
    seed_s: f64,
    /// This process's VmRSS before seeding, with the store open after it, once it is closed.
    seed_rss_kib: [u64; 3],
    seeded_bytes: u64,
    final_bytes: u64,
    starts: Vec<Start>,
}

impl RestartOutcome {
    fn table(&self, c: &Config) -> String {
        let mut t = String::new();
        // The first start follows the seeding, which closed the store as a SIGTERM does.
        let clean: Vec<&Start> = self
            .starts
            .iter()
            .filter(|s| s.after != "SIGKILL")
            .collect();
        let col = |f: fn(&Start) -> f64| -> Vec<f64> { clean.iter().map(|s| f(s)).collect() };
        let (list, queue) = (col(|s| s.list_s), col(|s| s.queue_s));
        let (rss, hwm) = (col(|s| mib(s.rss_kib)), col(|s| mib(s.hwm_kib)));
        let _ = writeln!(
            t,
            "## restart: {} builds in the store ({} queued, {} finished), {} clean starts (after the seeding, then after SIGTERM) and one after SIGKILL\n",
            c.builds,
            c.queued,
            c.builds - c.queued,
            clean.len()
        );
        let _ = writeln!(
            t,
            "load average before: {}; after: {}; seeded in {:.1} s through `EmbeddedStore::save_all`\n",
            self.load_before, self.load_after, self.seed_s
        );
        let _ = writeln!(
            t,
            "| figure | median | max | goal | |\n| --- | --- | --- | --- | --- |"
        );
        let _ = writeln!(
            t,
            "| spawn to first `Builds.List` answer, s | {:.2} | {:.2} | | |",
            pct(&list, 50.0),
            pct(&list, 100.0)
        );
        let _ = writeln!(
            t,
            "| **spawn to `Builds.Teams` counting all {} queued jobs, s** | **{:.2}** | **{:.2}** | <= {GOAL_RESTART_S:.0} | {} |",
            2 * c.queued,
            pct(&queue, 50.0),
            pct(&queue, 100.0),
            verdict(pct(&queue, 100.0) <= GOAL_RESTART_S)
        );
        let _ = writeln!(
            t,
            "| coordinator RSS once serving (VmRSS), MiB | {:.0} | {:.0} | | |",
            pct(&rss, 50.0),
            pct(&rss, 100.0)
        );
        let _ = writeln!(
            t,
            "| coordinator peak RSS (VmHWM), MiB | {:.0} | {:.0} | | |",
            pct(&hwm, 50.0),
            pct(&hwm, 100.0)
        );
        let stops: Vec<f64> = self.starts.iter().filter_map(|s| s.stop_s).collect();
        if !stops.is_empty() {
            let _ = writeln!(
                t,
                "| SIGTERM to exit of the previous process, s | {:.2} | {:.2} | | |",
                pct(&stops, 50.0),
                pct(&stops, 100.0)
            );
        }
        let _ = writeln!(
            t,
            "| state.redb after seeding / after the restarts, MiB | {:.0} / {:.0} | | | |",
            self.seeded_bytes as f64 / 1048576.0,
            self.final_bytes as f64 / 1048576.0
        );
        let [before, open, closed] = self.seed_rss_kib.map(mib);
        let _ = writeln!(
            t,
            "| the benchmark's own VmRSS seeding through `EmbeddedStore`: before / after the writes, store open / closed, MiB | {before:.0} / {open:.0} / {closed:.0} | | | |"
        );
        let _ = writeln!(
            t,
            "\n| start | after | first List, s | queue complete, s | VmRSS / VmHWM, MiB | held in full |\n| --- | --- | --- | --- | --- | --- |"
        );
        for (i, s) in self.starts.iter().enumerate() {
            let _ = writeln!(
                t,
                "| {} | {} | {:.2} | {:.2} | {:.0} / {:.0} | {} |",
                i + 1,
                s.after,
                s.list_s,
                s.queue_s,
                mib(s.rss_kib),
                mib(s.hwm_kib),
                s.held
            );
        }
        t.push('\n');
        t
    }
}

async fn restart(config: &Config, bin: &Path) -> anyhow::Result<RestartOutcome> {
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state");
    let load_before = load_average();
    let (t, rss_before) = (Instant::now(), own_rss_kib());
    let (rss_open, rss_closed) = seed(&state, config.builds, config.queued).await?;
    let seed_s = t.elapsed().as_secs_f64();
    let redb = state.join("state.redb");
    let seeded_bytes = std::fs::metadata(&redb)?.len();
    println!(
        "seeded {} builds ({} queued) in {seed_s:.1} s; state.redb {:.0} MiB; this process's RSS {:.0} MiB before, {:.0} with the store open after the writes, {:.0} once closed",
        config.builds,
        config.queued,
        seeded_bytes as f64 / 1048576.0,
        mib(rss_before),
        mib(rss_open),
        mib(rss_closed)
    );
    let mut starts = Vec::new();
    let mut after = "seeding";
    let mut stop_s = None;
    for i in 0..=config.restarts {
        let metrics = format!("127.0.0.1:{}", free_port()?);
        let log = dir.path().join(format!("coordinator-{i}.log"));
        let spawned = Instant::now();
        let mut c = Coordinator::spawn(bin, &state, &log, &["--metrics-listen", metrics.as_str()])?;
        let (list_s, queue_s) = until_serving(&mut c, 2 * config.queued as u32, spawned).await?;
        let (rss_kib, hwm_kib) = (
            proc_status_kib(c.pid, "VmRSS:").unwrap_or(0),
            proc_status_kib(c.pid, "VmHWM:").unwrap_or(0),
        );
        let counts = scrape(&metrics).await?;
        if counts.stored != config.builds as u64 {
            bail!(
                "the restarted coordinator lists {} builds, not the {} seeded",
                counts.stored,
                config.builds
            );
        }
        println!(
            "start {} (after {after}): first List {list_s:.2} s, queue complete {queue_s:.2} s; RSS {:.0} MiB (peak {:.0}); {} builds stored, {} held",
            i + 1,
            mib(rss_kib),
            mib(hwm_kib),
            counts.stored,
            counts.held
        );
        starts.push(Start {
            after,
            list_s,
            queue_s,
            rss_kib,
            hwm_kib,
            held: counts.held,
            stop_s,
        });
        if i + 1 < config.restarts {
            let t = Instant::now();
            if !c.terminate(Duration::from_secs(30)).await {
                bail!("the coordinator did not end within 30 s of SIGTERM");
            }
            stop_s = Some(t.elapsed().as_secs_f64());
            after = "SIGTERM";
        } else {
            c.stop().await;
            stop_s = None;
            after = "SIGKILL";
        }
    }
    Ok(RestartOutcome {
        load_before,
        load_after: load_average(),
        seed_s,
        seed_rss_kib: [rss_before, rss_open, rss_closed],
        seeded_bytes,
        final_bytes: std::fs::metadata(&redb)?.len(),
        starts,
    })
}

/// Seconds from `spawned` to the first `Builds.List` answer, and to the first `Builds.Teams`
/// answer that counts `jobs` queued jobs (bounded: 120 s).
async fn until_serving(
    c: &mut Coordinator,
    jobs: u32,
    spawned: Instant,
) -> anyhow::Result<(f64, f64)> {
    let deadline = spawned + Duration::from_secs(120);
    let channel = loop {
        if Instant::now() > deadline {
            bail!(
                "the coordinator did not answer within 120 s; its log: {}",
                std::fs::read_to_string(&c.log).unwrap_or_default()
            );
        }
        if c.exited() {
            bail!(
                "the coordinator exited; its log: {}",
                std::fs::read_to_string(&c.log).unwrap_or_default()
            );
        }
        let attempt = async {
            let channel = connect(&c.url).await?;
            let page = BuildsClient::new(channel.clone())
                .list(v1::ListBuildsRequest::default())
                .await?
                .into_inner();
            anyhow::ensure!(!page.builds.is_empty(), "Builds.List answered no build");
            anyhow::Ok(channel)
        };
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(channel)) => break channel,
            Ok(Err(_)) | Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    };
    let list_s = spawned.elapsed().as_secs_f64();
    loop {
        let seen = queued(&channel).await?;
        if seen >= jobs {
            return Ok((list_s, spawned.elapsed().as_secs_f64()));
        }
        if Instant::now() > deadline {
            bail!("after 120 s the coordinator counts {seen} queued jobs, not {jobs}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Writes `builds` builds into a new embedded store in `state_dir`, `queued` of them queued, in
/// transactions of 1,000 (see the module docs). Returns this process's VmRSS, KiB, with the store
/// still open after the writes and once it is closed: what redb's cache keeps of what it wrote.
async fn seed(state_dir: &Path, builds: usize, queued: usize) -> anyhow::Result<(u64, u64)> {
    let store = EmbeddedStore::open(state_dir)?;
    let now = unix_ms();
    let finished = builds - queued;
    let (hours_20, minutes_10) = (20 * 3_600_000_i64, 600_000_i64);
    let ids: Vec<usize> = (0..builds).collect();
    for chunk in ids.chunks(1_000) {
        let mut records = Vec::with_capacity(chunk.len());
        let mut logs = LogWrite {
            put: Vec::new(),
            drop: Vec::new(),
        };
        for &n in chunk {
            let b = if n < finished {
                // Spread over the last 20 hours, each taking half a minute.
                let created =
                    now - hours_20 - 60_000 + hours_20 * n as i64 / finished.max(1) as i64;
                finished_build(n, created, created + 30_000)
            } else {
                let k = (n - finished) as i64;
                queued_build(n, now - minutes_10 + minutes_10 * k / queued.max(1) as i64)
            };
            if b.state.is_final() {
                for (seq, j) in b.jobs.iter().enumerate() {
                    logs.put.push(LogChunk {
                        build: b.id,
                        seq: seq as u64,
                        job: j.id,
                        platform: j.platform.clone(),
                        first: 0,
                        lines: j.log_tail.iter().cloned().collect(),
                    });
                }
            }
            records.push(b);
        }
        store.save_all(&records).await?;
        store.write_logs(&logs).await?;
    }
    let open = own_rss_kib();
    drop(store);
    Ok((open, own_rss_kib()))
}

fn own_rss_kib() -> u64 {
    proc_status_kib(std::process::id(), "VmRSS:").unwrap_or(0)
}

fn spec(n: usize) -> (BuildSpec, BuildRequest) {
    let image = format!("127.0.0.1:5000/history/app:b{n}");
    let context = format!("sha256:{}", "c".repeat(64));
    let platforms = [Platform::linux_amd64(), Platform::linux_arm64()];
    let args: std::collections::BTreeMap<String, String> = [("N".to_owned(), n.to_string())].into();
    let spec = BuildSpec {
        image: image.parse().expect("a valid reference"),
        platforms: platforms.to_vec(),
        context_digest: context.clone(),
        dockerfiles: platforms
            .iter()
            .map(|p| (p.clone(), "Dockerfile".to_owned()))
            .collect(),
        build_args: args.clone(),
        target: None,
        labels: Default::default(),
        arch_tags: false,
        arch_tag_template: None,
        flags: Default::default(),
        extra_tags: Vec::new(),
    };
    let request = BuildRequest {
        image,
        platforms: vec!["linux/amd64".into(), "linux/arm64".into()],
        context_digest: context,
        build_args: args,
        ..Default::default()
    };
    (spec, request)
}

/// A build just submitted, both jobs queued: the record the farm makes for a submit
/// ([`FarmState::new_build`]), created at `created_at_ms`, as stored once (version 1).
fn queued_build(n: usize, created_at_ms: i64) -> Build {
    let (spec, request) = spec(n);
    let by = Caller {
        name: "bench".into(),
        team: "default".into(),
        admin: false,
    };
    let now = Now {
        at: std::time::Instant::now(),
        ms: created_at_ms,
    };
    let mut build = FarmState::new_build(spec, request, &by, now);
    build.version = 1;
    build
}

/// A finished build as the farm leaves it: 9 in 10 succeeded with both images and the list, the
/// others failed on amd64 with arm64 cancelled.
fn finished_build(n: usize, created_at_ms: i64, finished_at_ms: i64) -> Build {
    let mut b = queued_build(n, created_at_ms);
    let failed = n % 10 == 9;
    let hex = |x: usize, p: usize| format!("sha256:{:064x}", ((x as u128) << 8) | p as u128);
    for (p, j) in b.jobs.iter_mut().enumerate() {
        j.worker = Some(format!("sim-{}", (n + p) % WORKERS));
        j.attempt = 1;
        j.log_tail = (0..3)
            .map(|k| format!("#{k} simulated step {k} of 3"))
            .collect();
        match (failed, p) {
            (false, _) => {
                j.state = JobState::Succeeded;
                j.image = Some(ChildImage {
                    platform: j.platform.clone(),
                    digest: hex(n, p),
                    size: 480,
                    media_type: sim::OCI_MANIFEST.into(),
                });
            }
            (true, 0) => {
                j.state = JobState::Failed;
                j.error = Some(
                    "RUN make: process \"/bin/sh -c make\" did not complete successfully: exit code: 2"
                        .into(),
                );
            }
            (true, _) => {
                j.state = JobState::Cancelled;
                j.error = Some("cancelled: linux/amd64 failed".into());
            }
        }
    }
    if failed {
        b.state = BuildState::Failed;
        b.error = Some("linux/amd64 failed: RUN make: exit code: 2".into());
    } else {
        b.state = BuildState::Succeeded;
        b.manifest = Some((hex(n, 9), OCI_INDEX.into()));
    }
    b.finished_at_ms = Some(finished_at_ms);
    // queued, assigned, running and the end of each job, then the build's end.
    b.version = 9;
    b
}

// ------------------------------------------------------------------------------------------------
// Memory after finished builds

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

/// The coordinator at a number of finished builds.
struct Sample {
    finished: u64,
    secs: f64,
    held: u64,
    rss_kib: u64,
    hwm_kib: u64,
    redb_bytes: u64,
}

struct MemoryOutcome {
    builds: usize,
    load_before: String,
    load_after: String,
    idle_rss_kib: u64,
    samples: Vec<Sample>,
    /// After the last build finished and 10 s without load.
    settled: Option<Sample>,
    /// The deadline came first.
    unfinished: bool,
    cpu_mean: f64,
}

impl MemoryOutcome {
    fn table(&self, scenario: &str, flags: &[&str]) -> String {
        let mut t = String::new();
        let last = self.samples.last();
        let _ = writeln!(
            t,
            "## {scenario}: {} two-platform builds through {WORKERS} simulated workers x {SLOTS} slots, {}\n",
            self.builds,
            if flags.is_empty() {
                "default history flags (--keep-finished 1000 --keep-finished-for 1h)".to_owned()
            } else {
                flags.join(" ")
            }
        );
        let _ = writeln!(
            t,
            "load average before: {}; after: {}; coordinator CPU mean {:.0}% of one core; idle RSS with the workers attached {:.0} MiB{}\n",
            self.load_before,
            self.load_after,
            self.cpu_mean,
            mib(self.idle_rss_kib),
            if self.unfinished {
                format!(
                    "; **unfinished**: the deadline (MANIFOLD_BENCH_HISTORY_TIMEOUT_S) came at {} finished builds",
                    last.map_or(0, |s| s.finished)
                )
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            t,
            "| finished builds | s | builds/s since the previous row | held in full | VmRSS, MiB | VmHWM, MiB | state.redb, MiB |\n| --- | --- | --- | --- | --- | --- | --- |"
        );
        let mut prev = (0u64, 0f64);
        for s in self.samples.iter().chain(self.settled.as_ref()) {
            let rate = (s.finished - prev.0) as f64 / (s.secs - prev.1).max(1e-3);
            let _ = writeln!(
                t,
                "| {} | {:.0} | {} | {} | {:.0} | {:.0} | {:.0} |",
                s.finished,
                s.secs,
                if s.finished > prev.0 {
                    format!("{rate:.0}")
                } else {
                    "(settled, 10 s idle)".to_owned()
                },
                s.held,
                mib(s.rss_kib),
                mib(s.hwm_kib),
                s.redb_bytes as f64 / 1048576.0
            );
            prev = (s.finished, s.secs);
        }
        if scenario == "memory"
            && let Some(s) = self.samples.iter().rfind(|s| s.finished >= 100_000)
        {
            let _ = writeln!(
                t,
                "\n**RSS after {} finished builds: {:.0} MiB** (goal <= {GOAL_RSS_MIB:.0} MiB: {})",
                s.finished,
                mib(s.rss_kib),
                verdict(mib(s.rss_kib) <= GOAL_RSS_MIB)
            );
        }
        t.push('\n');
        t
    }
}

async fn memory(
    config: &Config,
    scenario: &str,
    builds: usize,
    flags: &[&str],
    registry: &Registry,
    bin: &Path,
    run_id: i64,
) -> anyhow::Result<MemoryOutcome> {
    let deadline = Instant::now() + config.timeout;
    let repository = format!("history/{run_id}-{scenario}");
    let http = reqwest::Client::builder().no_proxy().build()?;
    let amd64 = push_image(&http, &registry.host, &repository, "amd64").await?;
    let arm64 = push_image(&http, &registry.host, &repository, "arm64").await?;
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state");
    let metrics = format!("127.0.0.1:{}", free_port()?);
    let mut args = vec!["--metrics-listen", metrics.as_str()];
    args.extend_from_slice(flags);
    let mut coordinator =
        Coordinator::spawn(bin, &state, &dir.path().join("coordinator.log"), &args)?;
    coordinator.wait_serving(Duration::from_secs(60)).await?;
    let control = coordinator.channel().await?;
    let context = upload_context(&control).await?;
    let load_before = load_average();

    let sim = Arc::new(Sim::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut workers = tokio::task::JoinSet::new();
    for i in 0..WORKERS {
        let (architecture, image) = if i % 2 == 0 {
            ("amd64", amd64.clone())
        } else {
            ("arm64", arm64.clone())
        };
        let w = SimWorker {
            name: format!("sim-{scenario}-{i}"),
            architecture,
            slots: SLOTS,
            image,
            log_lines: 3,
            job_ms: 0,
            sim: sim.clone(),
            stop: stop_rx.clone(),
        };
        let url = coordinator.url.clone();
        workers.spawn(async move { w.run(url).await });
    }
    wait_attached(&sim, WORKERS, &mut workers).await?;
    let idle_rss_kib = proc_status_kib(coordinator.pid, "VmRSS:").unwrap_or(0);

    // Submitters keep at most `window` builds unfinished, from the finished count of the last
    // scrape.
    let finished = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let mut submitters = tokio::task::JoinSet::new();
    for _ in 0..SUBMITTERS {
        let channel = connect(&coordinator.url).await?;
        let (finished, next, window) = (finished.clone(), next.clone(), config.window as u64);
        let (image, context) = (format!("{}/{repository}", registry.host), context.clone());
        let mut stop = stop_rx.clone();
        submitters.spawn(async move {
            let mut client = BuildsClient::new(channel);
            loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n >= builds {
                    return anyhow::Ok(());
                }
                while n as u64 >= finished.load(Ordering::SeqCst) + window {
                    tokio::select! {
                        _ = stop.changed() => return Ok(()),
                        _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                    }
                }
                tokio::time::timeout(
                    Duration::from_secs(60),
                    client.submit(build_request(&image, &context, n)),
                )
                .await
                .context("a Submit took longer than 60 s")?
                .with_context(|| format!("submitting build {n}"))?;
            }
        });
    }

    let redb = state.join("state.redb");
    let step = (builds as u64 / 20).max(1);
    let started = Instant::now();
    let (ticks, cpu0) = (clock_ticks(), proc_cpu_ticks(coordinator.pid).unwrap_or(0));
    let sample = |counts: Counts, pid: u32| Sample {
        finished: counts.finished(),
        secs: started.elapsed().as_secs_f64(),
        held: counts.held,
        rss_kib: proc_status_kib(pid, "VmRSS:").unwrap_or(0),
        hwm_kib: proc_status_kib(pid, "VmHWM:").unwrap_or(0),
        redb_bytes: std::fs::metadata(&redb).map_or(0, |m| m.len()),
    };
    let mut samples: Vec<Sample> = Vec::new();
    let mut next_sample = step;
    let mut unfinished = false;
    let mut last_print = Instant::now();
    loop {
        let counts = scrape(&metrics).await?;
        finished.store(counts.finished(), Ordering::SeqCst);
        if counts.finished() >= next_sample.min(builds as u64) {
            let s = sample(counts, coordinator.pid);
            println!(
                "  {} finished in {:.0} s: RSS {:.0} MiB (peak {:.0}), {} held in full, state.redb {:.0} MiB",
                s.finished,
                s.secs,
                mib(s.rss_kib),
                mib(s.hwm_kib),
                s.held,
                s.redb_bytes as f64 / 1048576.0
            );
            next_sample = (s.finished / step + 1) * step;
            samples.push(s);
            last_print = Instant::now();
        }
        if counts.finished() >= builds as u64 {
            break;
        }
        if let Some(Ok(Err(e))) = submitters.try_join_next() {
            stop_tx.send_replace(true);
            return Err(e.context("a submitter failed"));
        }
        if let Some(Ok(Err(e))) = workers.try_join_next() {
            eprintln!("history bench: a simulated worker stopped: {e:#}");
        }
        if coordinator.exited() {
            bail!(
                "the coordinator exited; its log: {}",
                std::fs::read_to_string(&coordinator.log).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            unfinished = true;
            if samples
                .last()
                .is_none_or(|s| s.finished < counts.finished())
            {
                samples.push(sample(counts, coordinator.pid));
            }
            break;
        }
        if last_print.elapsed() > Duration::from_secs(30) {
            println!(
                "  ... {} finished, {} queued, {} running, {} held",
                counts.finished(),
                counts.queued,
                counts.running,
                counts.held
            );
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let cpu_mean = (proc_cpu_ticks(coordinator.pid).unwrap_or(cpu0) - cpu0) as f64
        / ticks
        / started.elapsed().as_secs_f64().max(1e-3)
        * 100.0;
    let settled = if unfinished {
        None
    } else {
        tokio::time::sleep(Duration::from_secs(10)).await;
        Some(sample(scrape(&metrics).await?, coordinator.pid))
    };
    let load_after = load_average();
    stop_tx.send_replace(true);
    while tokio::time::timeout(Duration::from_secs(10), workers.join_next())
        .await
        .ok()
        .flatten()
        .is_some()
    {}
    workers.abort_all();
    submitters.abort_all();
    coordinator.stop().await;
    Ok(MemoryOutcome {
        builds,
        load_before,
        load_after,
        idle_rss_kib,
        samples,
        settled,
        unfinished,
        cpu_mean,
    })
}
