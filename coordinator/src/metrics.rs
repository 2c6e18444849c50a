//! Prometheus metrics of the coordinator (`--metrics-listen ADDR`, `GET /metrics`, OpenMetrics text).
//!
//! Everything is read from what the farm already exposes, so the farm knows nothing of metrics:
//! - **snapshots**, taken at each scrape: builds and jobs by state, queue depth per platform and
//!   team, workers by state with their free and used slots, team weights, context store bytes,
//!   builds in the store and builds held in memory in full, leader status;
//! - **events**, each build's history (`Farm::events`), read incrementally from a cursor per
//!   unfinished build: assignments, the wait of each job from queued to assigned, job durations
//!   from running to their end, retries and failures by cause, refusals, preemptions, finished
//!   builds. Events carry their own time, so a histogram does not depend on when it is scraped.
//!
//! Labels are platforms, teams, workers, states and causes: bounded sets. Build ids, images and
//! error texts never are. A follower (HA on etcd) reports only `manifold_leader 0`; the builds a
//! new leader finds when it takes over are its baseline (their past is not counted again).
//!
//! Who may read them: anyone who reaches the metrics address, without a token. They show every
//! team's queue depths and the workers' names, no build, image or log: serve them on loopback or
//! a network only the monitoring system reaches.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use manifold_proto::{BuildId, Platform};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::access::Caller;
use crate::api::Role;
use crate::build::{BuildState, Event, EventKind, JobState, now_ms};
use crate::farm::{Farm, Listed};
use crate::paging::PageQuery;

/// Why a job left its worker and went back to the queue, read from the farm's requeue event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requeue {
    /// The worker was lost (silent or disconnected past its lease, or came back without the job).
    WorkerLost,
    /// The worker did not acknowledge the assignment in time.
    Unacknowledged,
    /// The job gave no output for `--stuck-after`.
    Stuck,
    /// The worker reported an infrastructure failure (Docker daemon, registry).
    Infrastructure,
    /// The worker did not take the job (draining, full, unhealthy): not an attempt.
    Refused,
    /// The owner team's job took the slot back: not an attempt.
    Preempted,
    /// Adopted after a reconnect, or any other move back to the queue.
    Other,
}

impl Requeue {
    /// The `cause` label.
    pub fn label(self) -> &'static str {
        match self {
            Requeue::WorkerLost => "worker_lost",
            Requeue::Unacknowledged => "unacknowledged",
            Requeue::Stuck => "stuck",
            Requeue::Infrastructure => "infrastructure",
            Requeue::Refused => "refused",
            Requeue::Preempted => "preempted",
            Requeue::Other => "other",
        }
    }

    /// Classifies the message of a job's event back to `queued` (the farm's wording:
    /// `requeued: attempt N on W: CAUSE`, `requeued: worker W did not take it: …`, `preempted: …`).
    pub fn of(message: &str) -> Requeue {
        if message.starts_with("preempted:") {
            return Requeue::Preempted;
        }
        let Some(why) = message.strip_prefix("requeued: ") else {
            return Requeue::Other;
        };
        if why.starts_with("worker ") && why.contains(" did not take it") {
            return Requeue::Refused;
        }
        // `attempt N on WORKER: CAUSE`
        let cause = why
            .strip_prefix("attempt ")
            .and_then(|rest| rest.split_once(": "))
            .map_or(why, |(_, cause)| cause);
        if cause == "worker lost" || cause.starts_with("the worker came back without it") {
            Requeue::WorkerLost
        } else if cause.starts_with("the worker did not acknowledge") {
            Requeue::Unacknowledged
        } else if cause.starts_with("no output for") {
            Requeue::Stuck
        } else {
            Requeue::Infrastructure
        }
    }
}

/// Why a build failed, from its final error (the farm's wording).
pub fn failure_cause(error: &str) -> &'static str {
    if error.starts_with("timed out after") {
        "timeout"
    } else if error.starts_with("no worker for") {
        "no_worker"
    } else if error.contains("pushing the manifest list") {
        "publish"
    } else if error.contains(" failed after ") && error.contains(" attempt") {
        "attempts_exhausted"
    } else if error.contains(" was cancelled on worker ") {
        "cancelled_on_worker"
    } else if error.contains(" failed on worker ") {
        "build"
    } else {
        "other"
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TeamStateLabels {
    team: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    platform: String,
    team: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PlatformTeam {
    platform: String,
    team: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PlatformLabels {
    platform: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PlatformWorker {
    platform: String,
    worker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PlatformCause {
    platform: String,
    cause: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabels {
    cause: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PlatformState {
    platform: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TeamLabels {
    team: String,
}

fn wait_histogram() -> Histogram {
    // 0.25 s .. about 4.5 h
    Histogram::new(exponential_buckets(0.25, 2.0, 17))
}

fn duration_histogram() -> Histogram {
    // 1 s .. about 4.5 h
    Histogram::new(exponential_buckets(1.0, 2.0, 15))
}

/// The metric families. Gauges are snapshots, refilled at each scrape; counters and histograms
/// only grow.
struct Families {
    leader: Gauge,
    builds: Family<StateLabels, Gauge>,
    builds_finished: Family<TeamStateLabels, Counter>,
    build_failures: Family<CauseLabels, Counter>,
    jobs: Family<JobLabels, Gauge>,
    jobs_finished: Family<JobLabels, Counter>,
    queue_depth: Family<PlatformTeam, Gauge>,
    queue_oldest: Family<PlatformLabels, Gauge>,
    assignments: Family<PlatformTeam, Counter>,
    wait: Family<PlatformTeam, Histogram, fn() -> Histogram>,
    duration: Family<PlatformWorker, Histogram, fn() -> Histogram>,
    retries: Family<PlatformCause, Counter>,
    refusals: Family<PlatformLabels, Counter>,
    preemptions: Family<PlatformTeam, Counter>,
    workers: Family<PlatformState, Gauge>,
    slots: Family<PlatformState, Gauge>,
    team_weight: Family<TeamLabels, Gauge>,
    context_bytes: Gauge,
    builds_stored: Gauge,
    builds_held: Gauge,
}

impl Families {
    fn register(registry: &mut Registry) -> Self {
        let f = Families {
            leader: Gauge::default(),
            builds: Family::default(),
            builds_finished: Family::default(),
            build_failures: Family::default(),
            jobs: Family::default(),
            jobs_finished: Family::default(),
            queue_depth: Family::default(),
            queue_oldest: Family::default(),
            assignments: Family::default(),
            wait: Family::new_with_constructor(wait_histogram),
            duration: Family::new_with_constructor(duration_histogram),
            retries: Family::default(),
            refusals: Family::default(),
            preemptions: Family::default(),
            workers: Family::default(),
            slots: Family::default(),
            team_weight: Family::default(),
            context_bytes: Gauge::default(),
            builds_stored: Gauge::default(),
            builds_held: Gauge::default(),
        };
        let r = registry;
        r.register(
            "manifold_leader",
            "1 while this coordinator leads (schedules and writes), else 0",
            f.leader.clone(),
        );
        r.register(
            "manifold_builds",
            "Unfinished builds by state (queued, running)",
            f.builds.clone(),
        );
        r.register(
            "manifold_builds_finished",
            "Builds that ended, by team and final state (succeeded, failed, cancelled)",
            f.builds_finished.clone(),
        );
        r.register(
            "manifold_build_failures",
            "Failed builds by cause (build, attempts_exhausted, no_worker, timeout, publish, cancelled_on_worker, other)",
            f.build_failures.clone(),
        );
        r.register(
            "manifold_jobs",
            "Unfinished jobs by platform, team and state (queued, assigned, running)",
            f.jobs.clone(),
        );
        r.register(
            "manifold_jobs_finished",
            "Jobs that ended, by platform, team and final state",
            f.jobs_finished.clone(),
        );
        r.register(
            "manifold_queue_depth",
            "Jobs waiting for a worker, by platform and team",
            f.queue_depth.clone(),
        );
        r.register_with_unit(
            "manifold_queue_oldest_wait",
            "How long the oldest queued job of each platform has waited",
            prometheus_client::registry::Unit::Seconds,
            f.queue_oldest.clone(),
        );
        r.register(
            "manifold_job_assignments",
            "Jobs assigned to a worker, by platform and team",
            f.assignments.clone(),
        );
        r.register_with_unit(
            "manifold_job_wait",
            "Time from queued to assigned, per assignment, by platform and team",
            prometheus_client::registry::Unit::Seconds,
            f.wait.clone(),
        );
        r.register_with_unit(
            "manifold_job_duration",
            "Time from running to the attempt's end (built and pushed, failed, cancelled), by platform and worker",
            prometheus_client::registry::Unit::Seconds,
            f.duration.clone(),
        );
        r.register(
            "manifold_job_retries",
            "Attempts that failed on the infrastructure and were retried, by platform and cause (worker_lost, unacknowledged, stuck, infrastructure)",
            f.retries.clone(),
        );
        r.register(
            "manifold_job_refusals",
            "Assignments a worker did not take (draining, full, unhealthy), requeued without counting, by platform",
            f.refusals.clone(),
        );
        r.register(
            "manifold_preemptions",
            "Borrowed jobs preempted for the worker's owner team, by platform and the preempted job's team",
            f.preemptions.clone(),
        );
        r.register(
            "manifold_workers",
            "Attached workers by platform and state (ready, draining, unhealthy)",
            f.workers.clone(),
        );
        r.register(
            "manifold_worker_slots",
            "Job slots of attached workers by platform and state (used; free: on ready workers only)",
            f.slots.clone(),
        );
        r.register(
            "manifold_team_weight",
            "Each team's fair-share weight",
            f.team_weight.clone(),
        );
        r.register_with_unit(
            "manifold_context_store",
            "Bytes of build contexts stored on this coordinator",
            prometheus_client::registry::Unit::Bytes,
            f.context_bytes.clone(),
        );
        r.register(
            "manifold_builds_stored",
            "Builds in the state store (each listed by a summary in memory), until retention deletes them",
            f.builds_stored.clone(),
        );
        r.register(
            "manifold_builds_held",
            "Builds held in memory in full: the unfinished ones and the recently finished ones (--keep-finished, --keep-finished-for)",
            f.builds_held.clone(),
        );
        f
    }
}

/// Where a job of a tracked build stands, as its events tell.
#[derive(Clone, Debug, Default)]
struct JobClock {
    /// When it last entered the queue (Unix ms).
    queued_at_ms: i64,
    /// When its current attempt started running, and on which worker.
    running: Option<(i64, String)>,
}

/// An unfinished build being followed: how far its history was read.
#[derive(Clone, Debug)]
struct Cursor {
    next: usize,
    team: String,
    jobs: HashMap<Platform, JobClock>,
}

/// Reads builds' histories into the counters; pure apart from the families it updates.
struct Tracker {
    /// The newest build seen; builds after it are new.
    newest: Option<BuildId>,
    open: HashMap<BuildId, Cursor>,
}

impl Tracker {
    fn new() -> Self {
        Tracker {
            newest: None,
            open: HashMap::new(),
        }
    }

    /// Applies `events` of a followed build. With `count` false (a baseline) only the clocks move.
    fn apply(f: &Families, cursor: &mut Cursor, events: &[Event], count: bool) -> bool {
        let mut finished = false;
        for event in events {
            cursor.next = cursor.next.max(event.sequence as usize + 1);
            match &event.kind {
                EventKind::Log { .. } | EventKind::Publishing { .. } => {}
                EventKind::JobState {
                    platform,
                    state,
                    worker,
                    message,
                    ..
                } => {
                    let clock = cursor.jobs.entry(platform.clone()).or_insert(JobClock {
                        queued_at_ms: event.at_ms,
                        running: None,
                    });
                    let pt = PlatformTeam {
                        platform: platform.to_string(),
                        team: cursor.team.clone(),
                    };
                    match state {
                        JobState::Queued => {
                            let back_from_worker = clock.running.take();
                            if count {
                                match Requeue::of(message) {
                                    Requeue::Refused => {
                                        f.refusals
                                            .get_or_create(&PlatformLabels {
                                                platform: pt.platform.clone(),
                                            })
                                            .inc();
                                    }
                                    Requeue::Preempted => {
                                        f.preemptions.get_or_create(&pt).inc();
                                    }
                                    Requeue::Other => {}
                                    cause => {
                                        f.retries
                                            .get_or_create(&PlatformCause {
                                                platform: pt.platform.clone(),
                                                cause: cause.label().into(),
                                            })
                                            .inc();
                                    }
                                }
                                if let Some((since, worker)) = back_from_worker {
                                    observe_duration(f, &pt.platform, &worker, since, event.at_ms);
                                }
                            }
                            clock.queued_at_ms = event.at_ms;
                        }
                        JobState::Assigned => {
                            if count {
                                f.assignments.get_or_create(&pt).inc();
                                f.wait
                                    .get_or_create(&pt)
                                    .observe(seconds(event.at_ms - clock.queued_at_ms));
                            }
                        }
                        JobState::Running => {
                            clock.running = Some((event.at_ms, worker.clone().unwrap_or_default()));
                        }
                        JobState::Succeeded | JobState::Failed | JobState::Cancelled => {
                            if count {
                                if let Some((since, worker)) = clock.running.take() {
                                    observe_duration(f, &pt.platform, &worker, since, event.at_ms);
                                }
                                f.jobs_finished
                                    .get_or_create(&JobLabels {
                                        platform: pt.platform,
                                        team: pt.team,
                                        state: job_state(*state).into(),
                                    })
                                    .inc();
                            }
                        }
                    }
                }
                EventKind::Finished { state, error, .. } => {
                    finished = true;
                    if count {
                        f.builds_finished
                            .get_or_create(&TeamStateLabels {
                                team: cursor.team.clone(),
                                state: build_state(*state).into(),
                            })
                            .inc();
                        if *state == BuildState::Failed {
                            let cause = failure_cause(error.as_deref().unwrap_or_default());
                            f.build_failures
                                .get_or_create(&CauseLabels {
                                    cause: cause.into(),
                                })
                                .inc();
                        }
                    }
                }
            }
        }
        finished
    }

    /// Reads what happened in `farm` since the last call. The first call is the baseline: builds
    /// that exist then are followed from where they are, their past not counted.
    fn observe(&mut self, f: &Families, farm: &Farm) {
        let baseline = self.newest.is_none();
        let admin = Caller {
            name: "metrics".into(),
            team: String::new(),
            admin: true,
        };
        // New builds, newest first, up to the newest one already seen.
        let mut fresh = Vec::new();
        let mut q = PageQuery::newest(64);
        // Builds evicted before they were seen (finished) are not counted.
        let mut newest = None;
        while let Ok(page) = farm.list_held(&q, &admin) {
            newest = newest.or(page.items.first().map(Listed::id));
            let known = page.items.iter().position(|b| Some(b.id()) == self.newest);
            let n = known.unwrap_or(page.items.len());
            fresh.extend(page.items.into_iter().take(n).filter_map(|l| match l {
                Listed::Held(b) => Some(*b),
                Listed::Stored(_) => None,
            }));
            match page.next_before {
                Some(before) if known.is_none() => q.before = Some(before),
                _ => break,
            }
        }
        if newest.is_some() {
            self.newest = newest;
        }
        for build in fresh.iter().rev() {
            if baseline && build.state.is_final() {
                continue;
            }
            let cursor = Cursor {
                next: 0,
                team: build.team.clone(),
                jobs: build
                    .jobs
                    .iter()
                    .map(|j| {
                        let clock = JobClock {
                            queued_at_ms: build.created_at_ms,
                            running: None,
                        };
                        (j.platform.clone(), clock)
                    })
                    .collect(),
            };
            let mut cursor = cursor;
            if baseline {
                // Catch up without counting.
                if let Ok((events, _, _)) = farm.events(build.id, 0) {
                    Tracker::apply(f, &mut cursor, &events, false);
                }
            }
            self.open.insert(build.id, cursor);
        }
        let mut done = Vec::new();
        for (id, cursor) in &mut self.open {
            let Ok((events, _, _)) = farm.events(*id, cursor.next) else {
                done.push(*id);
                continue;
            };
            if Tracker::apply(f, cursor, &events, true) {
                done.push(*id);
            }
        }
        for id in done {
            self.open.remove(&id);
        }
    }
}

fn seconds(ms: i64) -> f64 {
    ms.max(0) as f64 / 1000.0
}

fn observe_duration(f: &Families, platform: &str, worker: &str, since_ms: i64, until_ms: i64) {
    f.duration
        .get_or_create(&PlatformWorker {
            platform: platform.into(),
            worker: worker.into(),
        })
        .observe(seconds(until_ms - since_ms));
}

fn job_state(s: JobState) -> &'static str {
    match s {
        JobState::Queued => "queued",
        JobState::Assigned => "assigned",
        JobState::Running => "running",
        JobState::Succeeded => "succeeded",
        JobState::Failed => "failed",
        JobState::Cancelled => "cancelled",
    }
}

fn build_state(s: BuildState) -> &'static str {
    match s {
        BuildState::Queued => "queued",
        BuildState::Running => "running",
        BuildState::Succeeded => "succeeded",
        BuildState::Failed => "failed",
        BuildState::Cancelled => "cancelled",
    }
}

/// The coordinator's metrics: follows whichever farm this coordinator leads.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Mutex<Inner>>,
    role: watch::Receiver<Role>,
}

struct Inner {
    registry: Registry,
    families: Families,
    tracker: Tracker,
}

impl Metrics {
    /// Metrics of the farm that `role` names while this coordinator leads.
    pub fn new(role: watch::Receiver<Role>) -> Self {
        let mut registry = Registry::default();
        let families = Families::register(&mut registry);
        Metrics {
            inner: Arc::new(Mutex::new(Inner {
                registry,
                families,
                tracker: Tracker::new(),
            })),
            role,
        }
    }

    /// Reads the farm and renders every metric in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let farm = match &*self.role.borrow() {
            Role::Leader(farm) => Some(farm.clone()),
            Role::Follower(_) => None,
        };
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Inner {
            registry,
            families: f,
            tracker,
        } = &mut *inner;
        match &farm {
            Some(farm) => {
                tracker.observe(f, farm);
                snapshot(f, tracker, farm, now_ms());
            }
            None => {
                // A follower: a new term starts from a new baseline.
                *tracker = Tracker::new();
                clear_snapshot(f);
            }
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
            let _ = writeln!(out, "# encoding failed: {e}");
        }
        out
    }

    /// The router serving `GET /metrics`.
    pub fn router(self) -> axum::Router {
        axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let metrics = self.clone();
                async move {
                    let body = tokio::task::spawn_blocking(move || metrics.render())
                        .await
                        .unwrap_or_default();
                    (
                        [(
                            http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        body,
                    )
                }
            }),
        )
    }
}

fn clear_snapshot(f: &Families) {
    f.leader.set(0);
    f.builds.clear();
    f.jobs.clear();
    f.queue_depth.clear();
    f.queue_oldest.clear();
    f.workers.clear();
    f.slots.clear();
    f.team_weight.clear();
    f.context_bytes.set(0);
    f.builds_stored.set(0);
    f.builds_held.set(0);
}

/// Refills the gauges from the farm's current state.
fn snapshot(f: &Families, tracker: &Tracker, farm: &Farm, now_ms: i64) {
    clear_snapshot(f);
    f.leader.set(1);
    for state in ["queued", "running"] {
        f.builds
            .get_or_create(&StateLabels {
                state: state.into(),
            })
            .set(0);
    }
    let mut oldest: HashMap<String, i64> = HashMap::new();
    for (id, cursor) in &tracker.open {
        let Ok(build) = farm.get(*id) else { continue };
        if build.state.is_final() {
            continue;
        }
        f.builds
            .get_or_create(&StateLabels {
                state: build_state(build.state).into(),
            })
            .inc();
        for job in build.jobs.iter().filter(|j| !j.state.is_final()) {
            let platform = job.platform.to_string();
            f.jobs
                .get_or_create(&JobLabels {
                    platform: platform.clone(),
                    team: build.team.clone(),
                    state: job_state(job.state).into(),
                })
                .inc();
            if job.state == JobState::Queued {
                f.queue_depth
                    .get_or_create(&PlatformTeam {
                        platform: platform.clone(),
                        team: build.team.clone(),
                    })
                    .inc();
                let since = cursor
                    .jobs
                    .get(&job.platform)
                    .map_or(build.created_at_ms, |c| c.queued_at_ms);
                let o = oldest.entry(platform).or_insert(since);
                *o = (*o).min(since);
            }
        }
    }
    for (platform, since) in oldest {
        f.queue_oldest
            .get_or_create(&PlatformLabels { platform })
            .set((now_ms - since).max(0) / 1000);
    }
    for w in farm.workers() {
        let state = if w.unhealthy.is_some() {
            "unhealthy"
        } else if w.draining {
            "draining"
        } else {
            "ready"
        };
        for p in &w.platforms {
            let platform = p.to_string();
            f.workers
                .get_or_create(&PlatformState {
                    platform: platform.clone(),
                    state: state.into(),
                })
                .inc();
            f.slots
                .get_or_create(&PlatformState {
                    platform: platform.clone(),
                    state: "used".into(),
                })
                .inc_by(i64::from(w.slots_in_use));
            let free = if state == "ready" {
                w.slots.saturating_sub(w.slots_in_use)
            } else {
                0
            };
            f.slots
                .get_or_create(&PlatformState {
                    platform,
                    state: "free".into(),
                })
                .inc_by(i64::from(free));
        }
    }
    for usage in farm.teams() {
        f.team_weight
            .get_or_create(&TeamLabels {
                team: usage.team.name.clone(),
            })
            .set(i64::from(usage.team.weight.max(1)));
    }
    f.context_bytes
        .set(i64::try_from(farm.contexts().bytes()).unwrap_or(i64::MAX));
    let (stored, held) = farm.counts();
    f.builds_stored.set(stored as i64);
    f.builds_held.set(held as i64);
}

/// Serves `GET /metrics` on `listener` until `shutdown`.
pub async fn serve(
    metrics: Metrics,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, metrics.router())
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// Binds `addr` for the metrics endpoint, naming it when that fails.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    use anyhow::Context as _;
    tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("binding --metrics-listen {addr}: is something else listening there?")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requeue_causes_follow_the_farms_wording() {
        let check =
            |message: &str, want: Requeue| assert_eq!(Requeue::of(message), want, "{message}");
        check(
            "requeued: attempt 1 on x86-1: worker lost",
            Requeue::WorkerLost,
        );
        check(
            "requeued: attempt 2 on x86-1: the worker came back without it (restarted?)",
            Requeue::WorkerLost,
        );
        check(
            "requeued: attempt 1 on x86-1: the worker did not acknowledge the assignment within 30s",
            Requeue::Unacknowledged,
        );
        check(
            "requeued: attempt 1 on x86-1: no output for 10m: treated as stuck",
            Requeue::Stuck,
        );
        check(
            "requeued: attempt 1 on x86-1: pushing to 127.0.0.1:5000: 503 Service Unavailable",
            Requeue::Infrastructure,
        );
        check(
            "requeued: worker x86-1 did not take it: draining",
            Requeue::Refused,
        );
        check(
            "preempted: worker mac-1 belongs to team mobile, whose job waited past the grace period",
            Requeue::Preempted,
        );
        check("adopted after the worker reconnected", Requeue::Other);
        check("", Requeue::Other);
    }

    #[test]
    fn failure_causes_follow_the_farms_wording() {
        let check = |error: &str, want: &str| assert_eq!(failure_cause(error), want, "{error}");
        check(
            "timed out after 1h: linux/arm64 (waiting for a worker)",
            "timeout",
        );
        check(
            "no worker for linux/s390x attached within 2m: start …",
            "no_worker",
        );
        check(
            "no worker for linux/arm64 could take the job within 2m (…)",
            "no_worker",
        );
        check(
            "every platform was built, but pushing the manifest list to r/x:1 failed: 500",
            "publish",
        );
        check(
            "linux/amd64 failed after 3 attempts: attempt 1 on a: worker lost; …",
            "attempts_exhausted",
        );
        check("linux/amd64 failed on worker a: RUN exit 1", "build");
        check(
            "linux/amd64 was cancelled on worker a",
            "cancelled_on_worker",
        );
        check("something new", "other");
    }

    fn job_event(
        seq: u64,
        at_ms: i64,
        state: JobState,
        worker: Option<&str>,
        message: &str,
    ) -> Event {
        Event {
            sequence: seq,
            at_ms,
            kind: EventKind::JobState {
                platform: Platform::parse("linux/arm64").unwrap(),
                state,
                worker: worker.map(str::to_owned),
                attempt: 1,
                message: message.into(),
            },
        }
    }

    fn render(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
        out
    }

    #[test]
    fn a_jobs_history_becomes_waits_durations_retries_and_a_finished_build() {
        let mut registry = Registry::default();
        let f = Families::register(&mut registry);
        let arm = Platform::parse("linux/arm64").unwrap();
        let mut cursor = Cursor {
            next: 0,
            team: "mobile".into(),
            jobs: HashMap::from([(
                arm.clone(),
                JobClock {
                    queued_at_ms: 1_000,
                    running: None,
                },
            )]),
        };
        let mut events = vec![
            job_event(0, 3_000, JobState::Assigned, Some("mac-1"), ""),
            job_event(1, 3_500, JobState::Running, Some("mac-1"), ""),
            Event {
                sequence: 2,
                at_ms: 4_000,
                kind: EventKind::Log {
                    platform: arm.clone(),
                    line: "#1 RUN".into(),
                },
            },
        ];
        events.extend([
            job_event(
                3,
                9_500,
                JobState::Queued,
                None,
                "requeued: attempt 1 on mac-1: worker lost",
            ),
            job_event(4, 10_000, JobState::Assigned, Some("mac-2"), ""),
            job_event(5, 10_100, JobState::Running, Some("mac-2"), ""),
            job_event(6, 40_100, JobState::Succeeded, Some("mac-2"), "sha256:ab"),
            Event {
                sequence: 7,
                at_ms: 41_000,
                kind: EventKind::Finished {
                    state: BuildState::Succeeded,
                    manifest_digest: Some("sha256:cd".into()),
                    error: None,
                },
            },
        ]);
        assert!(Tracker::apply(&f, &mut cursor, &events, true));
        assert_eq!(cursor.next, 8);
        let text = render(&registry);
        for line in [
            r#"manifold_job_assignments_total{platform="linux/arm64",team="mobile"} 2"#,
            // waits of 2 s and 0.5 s
            r#"manifold_job_wait_seconds_sum{platform="linux/arm64",team="mobile"} 2.5"#,
            r#"manifold_job_wait_seconds_count{platform="linux/arm64",team="mobile"} 2"#,
            // mac-1 ran 6 s before it was lost; mac-2 30 s
            r#"manifold_job_duration_seconds_sum{platform="linux/arm64",worker="mac-1"} 6.0"#,
            r#"manifold_job_duration_seconds_sum{platform="linux/arm64",worker="mac-2"} 30.0"#,
            r#"manifold_job_retries_total{platform="linux/arm64",cause="worker_lost"} 1"#,
            r#"manifold_jobs_finished_total{platform="linux/arm64",team="mobile",state="succeeded"} 1"#,
            r#"manifold_builds_finished_total{team="mobile",state="succeeded"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        assert!(!text.contains("sha256"), "no digest in a label:\n{text}");
    }

    #[test]
    fn a_baseline_moves_the_clocks_without_counting() {
        let mut registry = Registry::default();
        let f = Families::register(&mut registry);
        let arm = Platform::parse("linux/arm64").unwrap();
        let mut cursor = Cursor {
            next: 0,
            team: "t".into(),
            jobs: HashMap::from([(arm, JobClock::default())]),
        };
        let past = [
            job_event(0, 1_000, JobState::Assigned, Some("w"), ""),
            job_event(1, 2_000, JobState::Running, Some("w"), ""),
        ];
        assert!(!Tracker::apply(&f, &mut cursor, &past, false));
        let text = render(&registry);
        assert!(!text.contains("manifold_job_assignments_total{"), "{text}");
        // The running attempt found at the baseline still gets its duration when it ends.
        let now = [job_event(
            2,
            5_000,
            JobState::Failed,
            Some("w"),
            "RUN exit 1",
        )];
        Tracker::apply(&f, &mut cursor, &now, true);
        let text = render(&registry);
        assert!(
            text.contains(
                r#"manifold_job_duration_seconds_sum{platform="linux/arm64",worker="w"} 3.0"#
            ),
            "{text}"
        );
    }
}
