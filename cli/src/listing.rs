//! Listings of workers, builds, teams, the queue and a build's logs: aligned tables for people,
//! JSON documents for programs. Pure functions of the wire types and the current time.

use std::collections::BTreeMap;

use manifold_proto::v1;
use serde::Serialize;

use crate::progress::{build_state_name, format_log_line, job_state_name, platform_name};

/// `3s ago`, `5m ago`, `2h ago`, `4d ago`; `never` for a zero time.
pub fn ago(now_ms: i64, then_ms: i64) -> String {
    if then_ms <= 0 {
        return "never".to_owned();
    }
    format!("{} ago", short_duration(now_ms - then_ms))
}

/// A duration in its largest whole unit: `3s`, `5m`, `2h`, `4d` (negative counts as 0).
pub fn short_duration(ms: i64) -> String {
    let secs = ms.max(0) / 1000;
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// Columns padded to their widest cell, two spaces apart, without trailing spaces.
pub fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header_row).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let pad = widths[i].saturating_sub(cell.chars().count());
            line.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_owned()
    } else {
        s.to_owned()
    }
}

fn platforms_of(platforms: &[v1::Platform]) -> Vec<String> {
    platforms.iter().map(|p| platform_name(Some(p))).collect()
}

/// A worker as `manifold workers --format json` prints it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerView {
    /// Worker name.
    pub name: String,
    /// Normalised platforms it builds.
    pub platforms: Vec<String>,
    /// Whether it builds under emulation.
    pub emulated: bool,
    /// Build slots.
    pub slots: u32,
    /// Slots in use.
    pub slots_in_use: u32,
    /// Last heartbeat, Unix milliseconds.
    pub last_heartbeat_ms: i64,
    /// When it connected, Unix milliseconds.
    pub connected_at_ms: i64,
    /// Its Docker daemon's version.
    pub docker_version: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// `ready`, `draining` or `unhealthy: REASON`, as the table's STATUS column.
    pub status: String,
    /// Takes no new job: draining.
    pub draining: bool,
    /// Paused by its owner: keeps its jobs, takes no new one.
    pub paused: bool,
    /// Lends itself to other teams than its owner right now.
    pub lending: bool,
    /// Why its Docker daemon cannot build, when it cannot.
    pub unhealthy_reason: Option<String>,
    /// The team that owns it; empty for shared capacity.
    pub owner: String,
    /// Its disk at its last heartbeat; `null` until it reports one.
    pub disk: Option<DiskView>,
}

/// A worker's disk as `manifold workers --format json` prints it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiskView {
    /// Bytes free on the file system of its cache dir.
    pub free_bytes: u64,
    /// Bytes under its cache dir (build contexts, scratch space).
    pub cache_bytes: u64,
    /// Bytes of its Docker daemon's BuildKit cache; `null` when the worker does not measure it.
    pub build_cache_bytes: Option<u64>,
}

/// A worker's DISK: `41.2 GiB free, cache 3.1 GiB`, or `-` until it reports one.
pub fn worker_disk(w: &v1::WorkerInfo) -> String {
    w.disk
        .as_ref()
        .map(|d| manifold_proto::DiskUsage::from(d).to_string())
        .unwrap_or_else(|| "-".to_owned())
}

/// A worker's STATUS: `ready`, `draining`, `paused`, `unhealthy: REASON` (several joined by
/// `, `), then `, not lending` while it takes only its owner team's jobs.
pub fn worker_status(w: &v1::WorkerInfo) -> String {
    let reason = if w.unhealthy_reason.is_empty() {
        "no reason given"
    } else {
        w.unhealthy_reason.as_str()
    };
    let mut parts = Vec::new();
    if w.draining {
        parts.push("draining".to_owned());
    }
    if w.paused {
        parts.push("paused".to_owned());
    }
    if w.unhealthy {
        parts.push(format!("unhealthy: {reason}"));
    }
    if parts.is_empty() {
        parts.push("ready".to_owned());
    }
    if w.not_lending {
        parts.push("not lending".to_owned());
    }
    parts.join(", ")
}

impl From<&v1::WorkerInfo> for WorkerView {
    fn from(w: &v1::WorkerInfo) -> Self {
        Self {
            name: w.name.clone(),
            platforms: platforms_of(&w.platforms),
            emulated: w.emulated,
            slots: w.slots,
            slots_in_use: w.slots_in_use,
            last_heartbeat_ms: w.last_heartbeat_ms,
            connected_at_ms: w.connected_at_ms,
            docker_version: w.docker_version.clone(),
            labels: w
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            status: worker_status(w),
            draining: w.draining,
            paused: w.paused,
            lending: !w.not_lending,
            unhealthy_reason: w.unhealthy.then(|| w.unhealthy_reason.clone()),
            owner: w.owner.clone(),
            disk: w.disk.as_ref().map(|d| DiskView {
                free_bytes: d.free_bytes,
                cache_bytes: d.cache_bytes,
                build_cache_bytes: d.build_cache_bytes,
            }),
        }
    }
}

/// A platform job as the JSON listings print it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobView {
    /// Job id.
    pub id: String,
    /// Normalised platform.
    pub platform: String,
    /// `queued`, `assigned`, `running`, `succeeded`, `failed` or `cancelled`.
    pub state: String,
    /// Worker of the current (or last) attempt.
    pub worker: String,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// Digest of the pushed per-platform image, once succeeded.
    pub digest: String,
    /// Why it failed.
    pub error: String,
    /// Last lines of output.
    pub log_tail: Vec<String>,
}

/// A build as the JSON listings print it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BuildView {
    /// Build id.
    pub id: String,
    /// `queued`, `running`, `succeeded`, `failed` or `cancelled`.
    pub state: String,
    /// Image the manifest list is pushed to.
    pub image: String,
    /// The team that submitted it.
    pub team: String,
    /// Who submitted it (the token's name).
    pub submitted_by: String,
    /// `--priority` among the team's queued jobs.
    pub priority: i32,
    /// Normalised platforms.
    pub platforms: Vec<String>,
    /// Context digest.
    pub context_digest: String,
    /// Digest of the pushed manifest list, once succeeded.
    pub manifest_digest: String,
    /// Media type of that list.
    pub manifest_media_type: String,
    /// Why it failed or was cancelled.
    pub error: String,
    /// While its list is being pushed: `publishing`, or `publishing (retrying: ...)`.
    pub publishing: String,
    /// Creation time, Unix milliseconds.
    pub created_at_ms: i64,
    /// End time, Unix milliseconds; 0 while running.
    pub finished_at_ms: i64,
    /// One job per platform.
    pub jobs: Vec<JobView>,
}

impl From<&v1::Job> for JobView {
    fn from(j: &v1::Job) -> Self {
        Self {
            id: j.id.clone(),
            platform: platform_name(j.platform.as_ref()),
            state: job_state_name(j.state).to_owned(),
            worker: j.worker.clone(),
            attempt: j.attempt,
            digest: j
                .image
                .as_ref()
                .map(|i| i.digest.clone())
                .unwrap_or_default(),
            error: j.error.clone(),
            log_tail: j.log_tail.clone(),
        }
    }
}

impl From<&v1::Build> for BuildView {
    fn from(b: &v1::Build) -> Self {
        let request = b.request.clone().unwrap_or_default();
        Self {
            id: b.id.clone(),
            state: build_state_name(b.state).to_owned(),
            image: request.image,
            team: b.team.clone(),
            submitted_by: b.submitted_by.clone(),
            priority: request.priority,
            platforms: platforms_of(&request.platforms),
            context_digest: request.context_digest,
            manifest_digest: b.manifest_digest.clone(),
            manifest_media_type: b.manifest_media_type.clone(),
            error: b.error.clone(),
            publishing: b.publishing.clone(),
            created_at_ms: b.created_at_ms,
            finished_at_ms: b.finished_at_ms,
            jobs: b.jobs.iter().map(JobView::from).collect(),
        }
    }
}

/// `manifold workers`: NAME, STATUS, OWNER, PLATFORMS, NATIVE/EMULATED, SLOTS, LAST HEARTBEAT,
/// DOCKER, DISK (last: its cells hold spaces).
pub fn workers_table(workers: &[v1::WorkerInfo], now_ms: i64) -> String {
    let rows: Vec<Vec<String>> = workers
        .iter()
        .map(|w| {
            vec![
                w.name.clone(),
                worker_status(w),
                or_dash(&w.owner),
                or_dash(&platforms_of(&w.platforms).join(",")),
                if w.emulated { "emulated" } else { "native" }.to_owned(),
                format!("{}/{}", w.slots_in_use, w.slots),
                ago(now_ms, w.last_heartbeat_ms),
                or_dash(&w.docker_version),
                worker_disk(w),
            ]
        })
        .collect();
    render_table(
        &[
            "NAME",
            "STATUS",
            "OWNER",
            "PLATFORMS",
            "NATIVE/EMULATED",
            "SLOTS",
            "LAST HEARTBEAT",
            "DOCKER",
            "DISK",
        ],
        &rows,
    )
}

/// `manifold workers --format json`.
pub fn workers_json(workers: &[v1::WorkerInfo]) -> String {
    #[derive(Serialize)]
    struct Doc {
        workers: Vec<WorkerView>,
    }
    to_json(&Doc {
        workers: workers.iter().map(WorkerView::from).collect(),
    })
}

/// `manifold builds`: ID, STATE, TEAM, IMAGE, PLATFORMS, CREATED.
pub fn builds_table(builds: &[v1::Build], now_ms: i64) -> String {
    let rows: Vec<Vec<String>> = builds
        .iter()
        .map(|b| {
            let view = BuildView::from(b);
            // `publishing (retrying)`: the cause is in `manifold build-status`.
            let state = match view.publishing.split_once(" (") {
                Some((phase, _)) => format!("{phase} (retrying)"),
                None if !view.publishing.is_empty() => view.publishing.clone(),
                None => view.state,
            };
            vec![
                view.id,
                state,
                or_dash(&view.team),
                or_dash(&view.image),
                or_dash(&view.platforms.join(",")),
                ago(now_ms, view.created_at_ms),
            ]
        })
        .collect();
    render_table(
        &["ID", "STATE", "TEAM", "IMAGE", "PLATFORMS", "CREATED"],
        &rows,
    )
}

/// `manifold builds --format json`: the page, and `next_before` (the `--before` of the next page)
/// when more builds match.
pub fn builds_json(builds: &[v1::Build], next_before: &str) -> String {
    #[derive(Serialize)]
    struct Doc<'a> {
        builds: Vec<BuildView>,
        #[serde(skip_serializing_if = "str::is_empty")]
        next_before: &'a str,
    }
    to_json(&Doc {
        builds: builds.iter().map(BuildView::from).collect(),
        next_before,
    })
}

/// `manifold build-status`: the build, then a table of its jobs.
pub fn build_status_text(build: &v1::Build, now_ms: i64) -> String {
    let view = BuildView::from(build);
    let mut fields = vec![
        ("build", view.id.clone()),
        ("image", or_dash(&view.image)),
        (
            "state",
            if view.publishing.is_empty() {
                view.state.clone()
            } else {
                view.publishing.clone()
            },
        ),
        ("platforms", or_dash(&view.platforms.join(","))),
        ("created", ago(now_ms, view.created_at_ms)),
    ];
    if !view.team.is_empty() {
        fields.push(("team", view.team.clone()));
    }
    if !view.submitted_by.is_empty() {
        fields.push(("submitter", view.submitted_by.clone()));
    }
    if view.priority != 0 {
        fields.push(("priority", view.priority.to_string()));
    }
    if view.finished_at_ms > 0 {
        fields.push(("finished", ago(now_ms, view.finished_at_ms)));
    }
    if !view.manifest_digest.is_empty() {
        fields.push(("digest", view.manifest_digest.clone()));
    }
    if !view.error.is_empty() {
        fields.push(("error", view.error.clone()));
    }
    let mut out = String::new();
    for (name, value) in fields {
        out.push_str(&format!("{name:<10}{value}\n"));
    }
    out.push('\n');
    let rows: Vec<Vec<String>> = view
        .jobs
        .iter()
        .map(|j| {
            vec![
                j.platform.clone(),
                j.state.clone(),
                or_dash(&j.worker),
                if j.attempt == 0 {
                    "-".to_owned()
                } else {
                    j.attempt.to_string()
                },
                or_dash(&j.digest),
                or_dash(j.error.lines().next().unwrap_or("")),
            ]
        })
        .collect();
    out.push_str(&render_table(
        &["PLATFORM", "STATE", "WORKER", "ATTEMPT", "DIGEST", "ERROR"],
        &rows,
    ));
    out
}

/// `manifold build-status --format json`.
pub fn build_json(build: &v1::Build) -> String {
    to_json(&BuildView::from(build))
}

/// A team as `manifold teams --format json` prints it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TeamView {
    /// Team name.
    pub name: String,
    /// Its weight in the fair share.
    pub weight: u32,
    /// Most jobs it may run at once; 0: no cap.
    pub max_concurrent_jobs: u32,
    /// Jobs running now.
    pub running: u32,
    /// Jobs waiting.
    pub queued: u32,
    /// Its running jobs over all running jobs, 0 to 1.
    pub share: f64,
    /// Its weight over the weights of all teams with work, 0 to 1: what it is entitled to.
    pub weight_share: f64,
    /// `registry/repository` patterns it may push to; `["*"]` when the farm has no rules.
    pub repositories: Vec<String>,
    /// Registries the coordinator holds a login for, for this team.
    pub login_registries: Vec<String>,
}

impl From<&v1::TeamInfo> for TeamView {
    fn from(t: &v1::TeamInfo) -> Self {
        Self {
            name: t.name.clone(),
            weight: t.weight,
            max_concurrent_jobs: t.max_concurrent_jobs,
            running: t.running,
            queued: t.queued,
            share: t.share,
            weight_share: t.weight_share,
            repositories: if t.push_anywhere {
                vec!["*".to_owned()]
            } else {
                t.repositories.clone()
            },
            login_registries: t.login_registries.clone(),
        }
    }
}

/// The PUSH TO column: the team's patterns, `any` without rules, `none` when it has none.
fn push_to(t: &v1::TeamInfo) -> String {
    let rules = if t.push_anywhere {
        "any".to_owned()
    } else if t.repositories.is_empty() {
        "none".to_owned()
    } else {
        t.repositories.join(", ")
    };
    if t.login_registries.is_empty() {
        rules
    } else {
        format!("{rules} (login: {})", t.login_registries.join(", "))
    }
}

/// A fraction as a whole percentage: `0.333` → `33%`.
fn percent(fraction: f64) -> String {
    let value = if fraction.is_finite() {
        (fraction * 100.0).round().clamp(0.0, 100.0)
    } else {
        0.0
    };
    format!("{value:.0}%")
}

/// `manifold teams`: TEAM, WEIGHT, CAP (`-`: none), RUNNING, QUEUED, SHARE (`33% (of 25%)`: the
/// share of running jobs it has, then the share its weight entitles it to), PUSH TO (its
/// repository rules, and the registries the farm has a login for).
pub fn teams_table(teams: &[v1::TeamInfo]) -> String {
    if teams.is_empty() {
        return "no team is declared and nothing runs or waits\n".to_owned();
    }
    let rows: Vec<Vec<String>> = teams
        .iter()
        .map(|t| {
            vec![
                t.name.clone(),
                t.weight.to_string(),
                if t.max_concurrent_jobs == 0 {
                    "-".to_owned()
                } else {
                    t.max_concurrent_jobs.to_string()
                },
                t.running.to_string(),
                t.queued.to_string(),
                format!("{} (of {})", percent(t.share), percent(t.weight_share)),
                push_to(t),
            ]
        })
        .collect();
    render_table(
        &[
            "TEAM", "WEIGHT", "CAP", "RUNNING", "QUEUED", "SHARE", "PUSH TO",
        ],
        &rows,
    )
}

/// `manifold teams --format json`.
pub fn teams_json(teams: &[v1::TeamInfo]) -> String {
    #[derive(Serialize)]
    struct Doc {
        teams: Vec<TeamView>,
    }
    to_json(&Doc {
        teams: teams.iter().map(TeamView::from).collect(),
    })
}

/// A queued job as `manifold queue --format json` prints it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueuedJobView {
    /// Normalised platform.
    pub platform: String,
    /// The team that submitted it.
    pub team: String,
    /// Its build's `--priority`.
    pub priority: i32,
    /// How long it has waited, ms.
    pub waited_ms: i64,
    /// Its build; empty for another team's job unless the caller is an admin.
    pub build_id: String,
    /// Its job.
    pub job_id: String,
    /// Its build's image; empty for another team's job unless the caller is an admin.
    pub image: String,
}

impl From<&v1::QueuedJob> for QueuedJobView {
    fn from(j: &v1::QueuedJob) -> Self {
        Self {
            platform: platform_name(j.platform.as_ref()),
            team: j.team.clone(),
            priority: j.priority,
            waited_ms: j.waited_ms,
            build_id: j.build_id.clone(),
            job_id: j.job_id.clone(),
            image: j.image.clone(),
        }
    }
}

/// The queue grouped by platform (sorted by name), each platform's jobs in the order received
/// (the order the scheduler considers them).
fn queue_by_platform(jobs: &[v1::QueuedJob]) -> Vec<QueuedJobView> {
    let mut views: Vec<QueuedJobView> = jobs.iter().map(QueuedJobView::from).collect();
    // A stable sort keeps the coordinator's order within a platform.
    views.sort_by(|a, b| a.platform.cmp(&b.platform));
    views
}

/// `manifold queue`: PLATFORM, TEAM, PRIORITY, WAITED, BUILD, IMAGE (`-` where hidden), or
/// `nothing is queued`.
pub fn queue_table(jobs: &[v1::QueuedJob]) -> String {
    if jobs.is_empty() {
        return "nothing is queued\n".to_owned();
    }
    let rows: Vec<Vec<String>> = queue_by_platform(jobs)
        .into_iter()
        .map(|j| {
            vec![
                j.platform,
                or_dash(&j.team),
                j.priority.to_string(),
                short_duration(j.waited_ms),
                or_dash(&j.build_id),
                or_dash(&j.image),
            ]
        })
        .collect();
    render_table(
        &["PLATFORM", "TEAM", "PRIORITY", "WAITED", "BUILD", "IMAGE"],
        &rows,
    )
}

/// `manifold queue --format json`: the jobs in the table's order.
pub fn queue_json(jobs: &[v1::QueuedJob]) -> String {
    #[derive(Serialize)]
    struct Doc {
        jobs: Vec<QueuedJobView>,
    }
    to_json(&Doc {
        jobs: queue_by_platform(jobs),
    })
}

/// `manifold logs`: one line per output line, prefixed with `[platform]` (as `manifold build`
/// shows them) when the lines come from several platforms.
pub fn logs_text(lines: &[v1::LogLine]) -> String {
    let first = lines.first().map(|l| platform_name(l.platform.as_ref()));
    let several = lines
        .iter()
        .any(|l| Some(platform_name(l.platform.as_ref())) != first);
    let mut out = String::new();
    for line in lines {
        if several {
            out.push_str(&format_log_line(line));
        } else {
            out.push_str(line.line.trim_end());
        }
        out.push('\n');
    }
    out
}

fn to_json<T: Serialize>(value: &T) -> String {
    // Views hold only strings, numbers and maps with string keys: serialising cannot fail.
    serde_json::to_string_pretty(value).expect("views serialise to JSON")
}

#[cfg(test)]
mod tests {
    use super::*;
    use manifold_proto::Platform;

    fn wire(p: &str) -> v1::Platform {
        Platform::parse(p).unwrap().into()
    }

    fn build() -> v1::Build {
        v1::Build {
            id: "3f2b8c1e-7d4a-4c61-9a57-0b6e2f1d9c3a".into(),
            request: Some(v1::SubmitBuildRequest {
                image: "reg/app:1".into(),
                platforms: vec![wire("linux/amd64"), wire("linux/arm64")],
                ..Default::default()
            }),
            state: v1::BuildState::Failed as i32,
            error: "linux/arm64 failed".into(),
            created_at_ms: 1_000_000 - 120_000,
            finished_at_ms: 1_000_000 - 3_000,
            jobs: vec![
                v1::Job {
                    id: "j1".into(),
                    platform: Some(wire("linux/amd64")),
                    state: v1::JobState::Succeeded as i32,
                    worker: "x86".into(),
                    attempt: 1,
                    image: Some(v1::ImageDescriptor {
                        digest: "sha256:aa".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                v1::Job {
                    id: "j2".into(),
                    platform: Some(wire("linux/arm64")),
                    state: v1::JobState::Failed as i32,
                    worker: "pi".into(),
                    attempt: 2,
                    error: "exit 1\nmore".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn ages_read_like_people_say_them() {
        let now = 10_000_000;
        assert_eq!(ago(now, now - 3_400), "3s ago");
        assert_eq!(ago(now, now - 300_000), "5m ago");
        assert_eq!(ago(now, now - 7_200_000), "2h ago");
        assert_eq!(ago(now, now + 5_000), "0s ago");
        assert_eq!(ago(now, 0), "never");
        assert_eq!(
            ago(200_000_000_000, 200_000_000_000 - 2 * 86_400_000),
            "2d ago"
        );
    }

    #[test]
    fn workers_table_has_the_promised_columns() {
        let workers = [v1::WorkerInfo {
            name: "worker-x86".into(),
            platforms: vec![wire("linux/amd64"), wire("linux/386")],
            emulated: false,
            slots: 4,
            slots_in_use: 1,
            last_heartbeat_ms: 97_000,
            docker_version: "27.1.0".into(),
            disk: Some(v1::DiskUsage {
                free_bytes: (412 << 30) / 10,
                cache_bytes: (31 << 30) / 10,
                build_cache_bytes: None,
            }),
            ..Default::default()
        }];
        assert_eq!(
            workers_table(&workers, 100_000),
            "NAME        STATUS  OWNER  PLATFORMS              NATIVE/EMULATED  SLOTS  LAST HEARTBEAT  DOCKER  DISK\n\
             worker-x86  ready   -      linux/amd64,linux/386  native           1/4    3s ago          27.1.0  41.2 GiB free, cache 3.1 GiB\n"
        );
        let json: serde_json::Value = serde_json::from_str(&workers_json(&workers)).unwrap();
        assert_eq!(json["workers"][0]["name"], "worker-x86");
        assert_eq!(json["workers"][0]["platforms"][1], "linux/386");
        assert_eq!(json["workers"][0]["slots_in_use"], 1);
        assert_eq!(json["workers"][0]["status"], "ready");
        assert_eq!(json["workers"][0]["owner"], "");
        assert_eq!(
            json["workers"][0]["disk"]["free_bytes"],
            (412u64 << 30) / 10
        );
        assert_eq!(
            json["workers"][0]["disk"]["build_cache_bytes"],
            serde_json::Value::Null
        );
        // A worker that has not reported its disk yet.
        let silent = [v1::WorkerInfo::default()];
        assert!(
            workers_table(&silent, 0)
                .lines()
                .nth(1)
                .unwrap()
                .ends_with("  -")
        );
        let json: serde_json::Value = serde_json::from_str(&workers_json(&silent)).unwrap();
        assert_eq!(json["workers"][0]["disk"], serde_json::Value::Null);
    }

    #[test]
    fn a_worker_s_owner_is_its_team() {
        let workers = [
            v1::WorkerInfo {
                name: "gpu-1".into(),
                owner: "ml".into(),
                slots: 1,
                ..Default::default()
            },
            v1::WorkerInfo {
                name: "shared-1".into(),
                slots: 2,
                ..Default::default()
            },
        ];
        let table = workers_table(&workers, 0);
        let owners: Vec<&str> = table
            .lines()
            .map(|l| l.split_whitespace().nth(2).unwrap())
            .collect();
        assert_eq!(owners, ["OWNER", "ml", "-"]);
        let json: serde_json::Value = serde_json::from_str(&workers_json(&workers)).unwrap();
        assert_eq!(json["workers"][0]["owner"], "ml");
    }

    #[test]
    fn durations_use_their_largest_unit() {
        assert_eq!(short_duration(999), "0s");
        assert_eq!(short_duration(61_000), "1m");
        assert_eq!(short_duration(3 * 3_600_000 + 59_000), "3h");
        assert_eq!(short_duration(-5), "0s");
    }

    #[test]
    fn teams_show_their_share_beside_what_their_weight_entitles_them_to() {
        let teams = [
            v1::TeamInfo {
                name: "web".into(),
                weight: 1,
                max_concurrent_jobs: 0,
                running: 1,
                queued: 4,
                share: 1.0 / 3.0,
                weight_share: 0.25,
                repositories: vec!["r.example/web/**".into()],
                login_registries: vec!["r.example".into()],
                ..Default::default()
            },
            v1::TeamInfo {
                name: "data".into(),
                weight: 3,
                max_concurrent_jobs: 8,
                running: 2,
                queued: 0,
                share: 2.0 / 3.0,
                weight_share: 0.75,
                repositories: vec!["r.example/data/*".into(), "r.example/shared/*".into()],
                ..Default::default()
            },
            v1::TeamInfo {
                name: "idle".into(),
                weight: 2,
                ..Default::default()
            },
        ];
        assert_eq!(
            teams_table(&teams),
            "TEAM  WEIGHT  CAP  RUNNING  QUEUED  SHARE         PUSH TO\n\
             web   1       -    1        4       33% (of 25%)  r.example/web/** (login: r.example)\n\
             data  3       8    2        0       67% (of 75%)  r.example/data/*, r.example/shared/*\n\
             idle  2       -    0        0       0% (of 0%)    none\n"
        );
        let open = v1::TeamInfo {
            name: "default".into(),
            weight: 1,
            push_anywhere: true,
            ..Default::default()
        };
        assert!(teams_table(std::slice::from_ref(&open)).ends_with("0% (of 0%)  any\n"));
        let json: serde_json::Value = serde_json::from_str(&teams_json(&[open])).unwrap();
        assert_eq!(json["teams"][0]["repositories"][0], "*");
        let json: serde_json::Value = serde_json::from_str(&teams_json(&teams)).unwrap();
        assert_eq!(json["teams"][1]["name"], "data");
        assert_eq!(json["teams"][1]["max_concurrent_jobs"], 8);
        assert_eq!(json["teams"][0]["weight_share"], 0.25);
        assert_eq!(json["teams"][0]["login_registries"][0], "r.example");
        assert_eq!(
            teams_table(&[]),
            "no team is declared and nothing runs or waits\n"
        );
    }

    fn queued(
        platform: &str,
        team: &str,
        build: &str,
        image: &str,
        waited_ms: i64,
    ) -> v1::QueuedJob {
        v1::QueuedJob {
            build_id: build.into(),
            job_id: format!("job-{team}-{platform}"),
            image: image.into(),
            platform: Some(wire(platform)),
            team: team.into(),
            priority: if team == "web" { 5 } else { 0 },
            waited_ms,
        }
    }

    #[test]
    fn the_queue_is_grouped_by_platform_in_the_order_received() {
        let jobs = [
            queued("linux/arm64", "web", "b1", "reg/web:1", 65_000),
            queued("linux/amd64", "data", "", "", 3_000),
            queued("linux/arm64", "data", "", "", 2_000),
            queued("linux/amd64", "web", "b1", "reg/web:1", 64_000),
        ];
        assert_eq!(
            queue_table(&jobs),
            "PLATFORM     TEAM  PRIORITY  WAITED  BUILD  IMAGE\n\
             linux/amd64  data  0         3s      -      -\n\
             linux/amd64  web   5         1m      b1     reg/web:1\n\
             linux/arm64  web   5         1m      b1     reg/web:1\n\
             linux/arm64  data  0         2s      -      -\n"
        );
        let json: serde_json::Value = serde_json::from_str(&queue_json(&jobs)).unwrap();
        assert_eq!(json["jobs"][0]["team"], "data");
        assert_eq!(json["jobs"][0]["build_id"], "");
        assert_eq!(json["jobs"][1]["image"], "reg/web:1");
        assert_eq!(json["jobs"][3]["waited_ms"], 2_000);
        assert_eq!(queue_table(&[]), "nothing is queued\n");
        assert_eq!(queue_json(&[]), "{\n  \"jobs\": []\n}");
    }

    #[test]
    fn logs_are_prefixed_only_when_several_platforms_speak() {
        let line = |p: &str, text: &str| v1::LogLine {
            platform: Some(wire(p)),
            line: text.into(),
        };
        let one = [
            line("linux/arm64", "#5 RUN uname -m\n"),
            line("linux/arm64", "aarch64"),
        ];
        assert_eq!(logs_text(&one), "#5 RUN uname -m\naarch64\n");
        let two = [
            line("linux/arm64", "#5 RUN uname -m"),
            line("linux/amd64", "#5 RUN uname -m"),
            line("linux/arm64", "aarch64"),
        ];
        assert_eq!(
            logs_text(&two),
            "[linux/arm64] #5 RUN uname -m\n[linux/amd64] #5 RUN uname -m\n[linux/arm64] aarch64\n"
        );
        assert_eq!(logs_text(&[]), "");
    }

    #[test]
    fn a_worker_s_status_says_whether_it_takes_jobs_and_why_not() {
        let status = |draining: bool, unhealthy: bool, reason: &str| {
            worker_status(&v1::WorkerInfo {
                draining,
                unhealthy,
                unhealthy_reason: reason.into(),
                ..Default::default()
            })
        };
        assert_eq!(status(false, false, ""), "ready");
        assert_eq!(status(true, false, ""), "draining");
        assert_eq!(
            status(false, true, "docker daemon at unix:///d.sock: ping failed"),
            "unhealthy: docker daemon at unix:///d.sock: ping failed"
        );
        assert_eq!(
            status(true, true, ""),
            "draining, unhealthy: no reason given"
        );
    }

    #[test]
    fn builds_table_and_json() {
        let b = build();
        assert_eq!(
            builds_table(std::slice::from_ref(&b), 1_000_000),
            "ID                                    STATE   TEAM  IMAGE      PLATFORMS                CREATED\n\
             3f2b8c1e-7d4a-4c61-9a57-0b6e2f1d9c3a  failed  -     reg/app:1  linux/amd64,linux/arm64  2m ago\n"
        );
        let with_team = v1::Build {
            team: "web".into(),
            submitted_by: "ci-bot".into(),
            ..b.clone()
        };
        let table = builds_table(std::slice::from_ref(&with_team), 1_000_000);
        assert!(
            table
                .lines()
                .nth(1)
                .unwrap()
                .contains("  failed  web   reg/app:1  "),
            "{table}"
        );
        let text = build_status_text(&with_team, 1_000_000);
        assert!(
            text.contains("\nteam      web\nsubmitter ci-bot\n"),
            "{text}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&builds_json(std::slice::from_ref(&with_team), "")).unwrap();
        assert_eq!(json["builds"][0]["team"], "web");
        assert_eq!(json["builds"][0]["submitted_by"], "ci-bot");
        let json: serde_json::Value =
            serde_json::from_str(&builds_json(std::slice::from_ref(&b), "")).unwrap();
        assert_eq!(json["builds"][0]["state"], "failed");
        assert_eq!(json["builds"][0]["jobs"][0]["digest"], "sha256:aa");
    }

    #[test]
    fn build_status_shows_each_job() {
        let text = build_status_text(&build(), 1_000_000);
        assert_eq!(
            text,
            "build     3f2b8c1e-7d4a-4c61-9a57-0b6e2f1d9c3a\n\
             image     reg/app:1\n\
             state     failed\n\
             platforms linux/amd64,linux/arm64\n\
             created   2m ago\n\
             finished  3s ago\n\
             error     linux/arm64 failed\n\
             \n\
             PLATFORM     STATE      WORKER  ATTEMPT  DIGEST     ERROR\n\
             linux/amd64  succeeded  x86     1        sha256:aa  -\n\
             linux/arm64  failed     pi      2        -          exit 1\n"
        );
        let json: serde_json::Value = serde_json::from_str(&build_json(&build())).unwrap();
        assert_eq!(json["jobs"][1]["error"], "exit 1\nmore");
        assert_eq!(json["platforms"][1], "linux/arm64");
    }
}
