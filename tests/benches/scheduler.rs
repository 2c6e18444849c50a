//! Scheduler benchmark: the indexed scheduler against the one it replaced (`scheduler::reference`,
//! the unindexed scheduler of 834e521), in process, on the same scenario, side by side.
//!
//! ```text
//! cargo bench -p manifold-tests --bench scheduler
//! ```
//!
//! The scenario (deterministic, seeded): `QUEUE` jobs of `TEAMS` teams (weights 1–3, one team
//! capped), 70% linux/amd64 and 30% linux/arm64, 10% with a priority above 0, 20% with a cache
//! affinity; `WORKERS` workers of `SLOTS` slots (60% amd64, 25% arm64 native, 15% arm64 emulated),
//! one in five owned by a team; preemption enabled (grace 60 s). Phases, each timed per event:
//!
//! 1. **enqueue**: the queue filled one job at a time (as recovery does at restart);
//! 2. **attach**: the workers attach one at a time, each followed by `assign()` (as the farm does
//!    on attach); this fills the slots;
//! 3. **steady**: one event = a random running job finishes, a new job is queued (the queue stays
//!    full), `assign()` (one assignment per event);
//! 4. **tick**: `preemptions(now)` + `starved(now, 60 s)`, what the farm's ticker asks four times
//!    a second;
//! 5. **bulk** (indexed only): every worker attached first, then one `assign()` filling every slot.
//!
//! The reference's events are slow (each pick rescans the queue), so it runs a fixed number of
//! events per phase, `REFERENCE_EVENTS`: it fills the whole queue (phase 1 must: the other
//! phases need it), attaches only its first `REFERENCE_EVENTS` workers (no untimed rest: at full
//! size that alone took longer than 20 minutes), runs `REFERENCE_EVENTS` steady events on that
//! smaller farm (the same queue; fewer workers make its `finished` cheaper, not its picks), and
//! `REFERENCE_EVENTS / 10` ticks. The assignments of the attach events both ran are compared
//! (both start from the same state there), and the run fails if they differ; the property test
//! in `coordinator/src/scheduler` compares every decision on random scenarios.
//!
//! Each phase prints a line as it ends, so a run stopped early still says what it measured.
//!
//! Knobs (environment): MANIFOLD_BENCH_SCHED_QUEUE (default 100000), _WORKERS (5000), _SLOTS (2),
//! _TEAMS (10), _EVENTS (steady events for the indexed scheduler, 50000), _TICKS (200),
//! _REFERENCE_EVENTS (events per phase for the reference, 100). The table is also written to
//! target/manifold-bench/scheduler-<unix time>.md.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use manifold_coordinator::scheduler::{
    Assignment, JobMeta, Preemption, Scheduler, Team, WorkerCaps, reference,
};
use manifold_proto::{JobId, Platform};

/// Goal of issue 13: assignments per second in the steady phase, and p99 of one event.
const GOAL_RATE: f64 = 20_000.0;
const GOAL_P99: Duration = Duration::from_millis(1);
const GRACE: Duration = Duration::from_secs(60);

struct Config {
    queue: usize,
    workers: usize,
    slots: u32,
    teams: usize,
    events: usize,
    ticks: usize,
    reference_events: usize,
}

impl Config {
    fn from_env() -> Result<Self, String> {
        let num = |k: &str, d: u64| -> Result<u64, String> {
            let key = format!("MANIFOLD_BENCH_SCHED_{k}");
            match std::env::var(&key) {
                Ok(v) => v
                    .parse()
                    .map_err(|_| format!("{key}={v} is not a whole number")),
                Err(_) => Ok(d),
            }
        };
        let c = Self {
            queue: num("QUEUE", 100_000)? as usize,
            workers: num("WORKERS", 5_000)? as usize,
            slots: num("SLOTS", 2)? as u32,
            teams: num("TEAMS", 10)?.max(1) as usize,
            events: num("EVENTS", 50_000)? as usize,
            ticks: num("TICKS", 200)? as usize,
            reference_events: num("REFERENCE_EVENTS", 100)? as usize,
        };
        if c.slots == 0 || c.workers == 0 {
            return Err("MANIFOLD_BENCH_SCHED_WORKERS and _SLOTS must be 1 or more".into());
        }
        Ok(c)
    }
}

/// The scheduler calls the benchmark makes, for both implementations.
trait Sched {
    fn new() -> Self;
    fn set_team(&mut self, team: Team);
    fn set_preemption_grace(&mut self, grace: Option<Duration>);
    fn add_worker(&mut self, caps: WorkerCaps);
    fn set_worker_owner(&mut self, name: &str, owner: Option<String>);
    fn enqueue_job(&mut self, job: JobId, platform: Platform, meta: JobMeta, now: Instant);
    fn finished(&mut self, job: JobId);
    fn assign(&mut self) -> Vec<Assignment>;
    fn preemptions(&self, now: Instant) -> Vec<Preemption>;
    fn starved(&self, now: Instant, wait: Duration) -> Vec<(JobId, Platform)>;
}

macro_rules! sched {
    ($ty:ty) => {
        impl Sched for $ty {
            fn new() -> Self {
                <$ty>::new()
            }
            fn set_team(&mut self, team: Team) {
                <$ty>::set_team(self, team)
            }
            fn set_preemption_grace(&mut self, grace: Option<Duration>) {
                <$ty>::set_preemption_grace(self, grace)
            }
            fn add_worker(&mut self, caps: WorkerCaps) {
                <$ty>::add_worker(self, caps, [])
            }
            fn set_worker_owner(&mut self, name: &str, owner: Option<String>) {
                <$ty>::set_worker_owner(self, name, owner)
            }
            fn enqueue_job(&mut self, job: JobId, platform: Platform, meta: JobMeta, now: Instant) {
                <$ty>::enqueue_job(self, job, platform, meta, now)
            }
            fn finished(&mut self, job: JobId) {
                <$ty>::finished(self, job)
            }
            fn assign(&mut self) -> Vec<Assignment> {
                <$ty>::assign(self)
            }
            fn preemptions(&self, now: Instant) -> Vec<Preemption> {
                <$ty>::preemptions(self, now)
            }
            fn starved(&self, now: Instant, wait: Duration) -> Vec<(JobId, Platform)> {
                <$ty>::starved(self, now, wait)
            }
        }
    };
}

sched!(Scheduler);
sched!(reference::Scheduler);

/// splitmix64: the same scenario on every run and for both schedulers.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The scenario's jobs and workers, generated once.
struct Scenario {
    platforms: [Platform; 2],
    teams: Vec<Team>,
    workers: Vec<(WorkerCaps, Option<String>)>,
}

impl Scenario {
    fn new(config: &Config) -> Self {
        let teams = (0..config.teams)
            .map(|i| {
                let t = Team::new(format!("team-{i}")).weight(1 + (i % 3) as u32);
                if i == config.teams - 1 && config.teams > 1 {
                    t.max_running(((config.workers * config.slots as usize) / 20).max(1) as u32)
                } else {
                    t
                }
            })
            .collect::<Vec<_>>();
        let platforms = [Platform::linux_amd64(), Platform::linux_arm64()];
        let workers = (0..config.workers)
            .map(|i| {
                let (platform, emulated) = match i % 20 {
                    0..12 => (0, false),
                    12..17 => (1, false),
                    _ => (1, true),
                };
                let caps = WorkerCaps {
                    name: format!("worker-{i:05}"),
                    platforms: vec![platforms[platform].clone()],
                    emulated,
                    slots: config.slots,
                };
                let owner = (i % 5 == 0).then(|| teams[(i / 5) % teams.len()].name.clone());
                (caps, owner)
            })
            .collect();
        Self {
            platforms,
            teams,
            workers,
        }
    }

    /// The `n`th job: its id, platform and meta, the same for both schedulers.
    fn job(&self, rng: &mut Rng) -> (JobId, Platform, JobMeta) {
        let id = JobId(uuid::Uuid::from_u64_pair(rng.next(), rng.next()));
        let platform = self.platforms[usize::from(rng.below(10) >= 7)].clone();
        let team = self.teams[rng.below(self.teams.len())].name.clone();
        let priority = if rng.below(10) == 0 {
            1 + rng.below(3) as i32
        } else {
            0
        };
        let affinity =
            (rng.below(5) == 0).then(|| self.workers[rng.below(self.workers.len())].0.name.clone());
        let meta = JobMeta {
            team: Some(team),
            priority,
            affinity,
        };
        (id, platform, meta)
    }
}

/// Per-event durations of one phase.
#[derive(Default)]
struct Phase {
    events: Vec<Duration>,
    assignments: usize,
    /// The phase ran fewer events than the indexed run's (the reference's bound).
    cut: bool,
}

impl Phase {
    fn total(&self) -> Duration {
        self.events.iter().sum()
    }

    fn quantile(&self, q: f64) -> Duration {
        let mut v = self.events.clone();
        v.sort_unstable();
        if v.is_empty() {
            return Duration::ZERO;
        }
        v[((v.len() - 1) as f64 * q).round() as usize]
    }

    fn rate(&self, n: usize) -> f64 {
        n as f64 / self.total().as_secs_f64().max(1e-9)
    }

    /// One line as the phase ends, printed at once.
    fn report(&self, who: &str, name: &str) {
        println!(
            "  {who} {name}: {} events{}, total {:.3} s, p50 {} / p99 {} / max {}, {} assignments ({:.0}/s); load average {}",
            self.events.len(),
            if self.cut { " (bounded)" } else { "" },
            self.total().as_secs_f64(),
            us(self.quantile(0.5)),
            us(self.quantile(0.99)),
            us(self.quantile(1.0)),
            self.assignments,
            self.rate(self.assignments),
            load_average(),
        );
        let _ = std::io::stdout().flush();
    }
}

/// Everything measured of one implementation.
#[derive(Default)]
struct Results {
    enqueue: Phase,
    attach: Phase,
    steady: Phase,
    tick: Phase,
    bulk: Option<Phase>,
    /// Assignments per event of the attach and steady phases, for the comparison.
    decisions: Vec<Vec<Assignment>>,
}

/// Runs phases 1–4; `bound`: at most that many events per phase 2–3 (a tenth for ticks).
fn run<S: Sched>(who: &str, config: &Config, scenario: &Scenario, bound: Option<usize>) -> Results {
    let mut rng = Rng(0x5eed);
    let t0 = Instant::now();
    let mut now = t0;
    let limit = |n: usize| bound.map_or(n, |b| b.min(n));
    let mut r = Results::default();
    let mut s = S::new();
    for t in &scenario.teams {
        s.set_team(t.clone());
    }
    s.set_preemption_grace(Some(GRACE));

    // 1. enqueue. Never cut: the other phases need the whole queue.
    for _ in 0..config.queue {
        let (id, platform, meta) = scenario.job(&mut rng);
        let at = Instant::now();
        s.enqueue_job(id, platform, meta, now);
        r.enqueue.events.push(at.elapsed());
        now += Duration::from_micros(10);
    }
    r.enqueue.report(who, "enqueue");

    // 2. attach
    let mut running: Vec<JobId> = Vec::new();
    let attaching = limit(scenario.workers.len());
    r.attach.cut = attaching < scenario.workers.len();
    for (caps, owner) in &scenario.workers[..attaching] {
        let at = Instant::now();
        s.add_worker(caps.clone());
        s.set_worker_owner(&caps.name, owner.clone());
        let got = s.assign();
        r.attach.events.push(at.elapsed());
        r.attach.assignments += got.len();
        running.extend(got.iter().map(|a| a.job));
        r.decisions.push(got);
    }
    r.attach.report(who, "attach");

    // 3. steady
    r.steady.cut = limit(config.events) < config.events;
    for _ in 0..limit(config.events) {
        if running.is_empty() {
            break;
        }
        let done = running.swap_remove(rng.below(running.len()));
        let (id, platform, meta) = scenario.job(&mut rng);
        now += Duration::from_millis(1);
        let at = Instant::now();
        s.finished(done);
        s.enqueue_job(id, platform, meta, now);
        let got = s.assign();
        r.steady.events.push(at.elapsed());
        r.steady.assignments += got.len();
        running.extend(got.iter().map(|a| a.job));
        r.decisions.push(got);
    }
    r.steady.report(who, "steady");

    // 4. tick: pure questions, asked at a time when every queued job has waited past the grace.
    let later = now + GRACE * 2;
    let ticks = bound.map_or(config.ticks, |b| (b / 10).max(1).min(config.ticks));
    r.tick.cut = ticks < config.ticks;
    for _ in 0..ticks {
        let at = Instant::now();
        let p = s.preemptions(later);
        let starved = s.starved(later, GRACE);
        r.tick.events.push(at.elapsed());
        r.tick.assignments = p.len() + starved.len();
    }
    r.tick.report(who, "tick");
    r
}

/// Phase 5, indexed only: all workers attached, then one round.
fn bulk(config: &Config, scenario: &Scenario) -> Phase {
    let mut rng = Rng(0x5eed);
    let now = Instant::now();
    let mut s = Scheduler::new();
    for t in &scenario.teams {
        s.set_team(t.clone());
    }
    for _ in 0..config.queue {
        let (id, platform, meta) = scenario.job(&mut rng);
        s.enqueue_job(id, platform, meta, now);
    }
    for (caps, owner) in &scenario.workers {
        s.add_worker(caps.clone(), []);
        s.set_worker_owner(&caps.name, owner.clone());
    }
    let at = Instant::now();
    let got = s.assign();
    let phase = Phase {
        events: vec![at.elapsed()],
        assignments: got.len(),
        cut: false,
    };
    phase.report("indexed", "bulk");
    phase
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn events(p: &Phase) -> String {
    format!(
        "{}{}",
        p.events.len(),
        if p.cut { " (bounded)" } else { "" }
    )
}

fn row(out: &mut String, name: &str, new: String, old: String) {
    let _ = writeln!(out, "| {name} | {new} | {old} |");
}

fn render(
    config: &Config,
    new: &Results,
    old: &Results,
    compared: usize,
    loads: &[String],
) -> String {
    let mut o = String::new();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let _ = writeln!(
        o,
        "scheduler benchmark: {} queued jobs, {} workers x {} slots ({} slots), {} teams, 2 platforms, preemption on; {} cores; load average (1/5/15 min) at start {}, after the indexed run {}, at the end {}; the reference ran at most {} events per phase (its steady phase with only that many workers attached)\n",
        config.queue,
        config.workers,
        config.slots,
        config.workers * config.slots as usize,
        config.teams,
        cores,
        loads[0],
        loads[1],
        loads[2],
        config.reference_events,
    );
    let _ = writeln!(o, "| figure | indexed | reference (before) |");
    let _ = writeln!(o, "| --- | --- | --- |");
    for (label, n, p) in [
        ("enqueue (one job)", &new.enqueue, &old.enqueue),
        ("attach (add_worker + assign)", &new.attach, &old.attach),
        (
            "steady (finish + enqueue + assign)",
            &new.steady,
            &old.steady,
        ),
        ("tick (preemptions + starved)", &new.tick, &old.tick),
    ] {
        row(&mut o, &format!("{label}: events"), events(n), events(p));
        row(
            &mut o,
            &format!("{label}: p50 / p99 / max"),
            format!(
                "{} / {} / {}",
                us(n.quantile(0.5)),
                us(n.quantile(0.99)),
                us(n.quantile(1.0))
            ),
            format!(
                "{} / {} / {}",
                us(p.quantile(0.5)),
                us(p.quantile(0.99)),
                us(p.quantile(1.0))
            ),
        );
    }
    row(
        &mut o,
        "enqueue: whole queue",
        format!("{:.3} s", new.enqueue.total().as_secs_f64()),
        format!("{:.3} s", old.enqueue.total().as_secs_f64()),
    );
    row(
        &mut o,
        "attach: assignments/s",
        format!("{:.0}", new.attach.rate(new.attach.assignments)),
        format!("{:.0}", old.attach.rate(old.attach.assignments)),
    );
    row(
        &mut o,
        "steady: assignments/s",
        format!("{:.0}", new.steady.rate(new.steady.assignments)),
        format!("{:.0}", old.steady.rate(old.steady.assignments)),
    );
    row(
        &mut o,
        "tick: decisions returned (preemptions + starved)",
        new.tick.assignments.to_string(),
        old.tick.assignments.to_string(),
    );
    if let Some(b) = &new.bulk {
        row(
            &mut o,
            "bulk: one assign() filling every slot",
            format!(
                "{} assignments in {:.1} ms = {:.0}/s",
                b.assignments,
                b.total().as_secs_f64() * 1e3,
                b.rate(b.assignments)
            ),
            "not run (hours at the per-pick cost above)".into(),
        );
    }
    let rate = new.steady.rate(new.steady.assignments);
    let p99 = new.steady.quantile(0.99).max(new.attach.quantile(0.99));
    let _ = writeln!(
        o,
        "\nidentical decisions: the assignments of all {compared} attach events that both ran"
    );
    let _ = writeln!(
        o,
        "goal (>= {GOAL_RATE:.0} assignments/s, p99 <= {} ms per event): steady {rate:.0}/s, worst p99 {} -> {}",
        GOAL_P99.as_millis(),
        us(p99),
        if rate >= GOAL_RATE && p99 <= GOAL_P99 {
            "met"
        } else {
            "NOT met"
        }
    );
    o
}

fn main() -> ExitCode {
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "scheduler benchmark: skipped (not under `cargo bench`); run `cargo bench -p manifold-tests --bench scheduler`"
        );
        return ExitCode::SUCCESS;
    }
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("scheduler bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let scenario = Scenario::new(&config);
    let mut loads = vec![load_average()];
    println!(
        "indexed scheduler ({} queued jobs, {} workers x {} slots; load average {})...",
        config.queue, config.workers, config.slots, loads[0]
    );
    let mut new = run::<Scheduler>("indexed", &config, &scenario, None);
    new.bulk = Some(bulk(&config, &scenario));
    loads.push(load_average());
    println!(
        "reference scheduler (at most {} events per phase)...",
        config.reference_events
    );
    let old = run::<reference::Scheduler>(
        "reference",
        &config,
        &scenario,
        Some(config.reference_events),
    );
    loads.push(load_average());
    // Both attach the same workers in the same order from the same queue: their attach
    // decisions must be equal. The reference's steady phase runs on fewer workers.
    let attached = old.attach.events.len().min(new.attach.events.len());
    let pairs: Vec<(&Vec<Assignment>, &Vec<Assignment>)> = new.decisions[..attached]
        .iter()
        .zip(&old.decisions[..attached])
        .collect();
    let compared = pairs.len();
    if let Some(i) = pairs.iter().position(|(a, b)| a != b) {
        eprintln!(
            "scheduler bench FAILED: event {i} assigned differently: indexed {:?}, reference {:?}",
            pairs[i].0, pairs[i].1
        );
        return ExitCode::FAILURE;
    }
    let text = render(&config, &new, &old, compared, &loads);
    println!("\n{text}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/manifold-bench");
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let file = dir.join(format!("scheduler-{stamp}.md"));
    if std::fs::create_dir_all(&dir).is_ok() && std::fs::write(&file, &text).is_ok() {
        println!("(also written to {})", file.display());
    }
    ExitCode::SUCCESS
}
