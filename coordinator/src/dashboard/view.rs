//! What the dashboard shows, as pure functions from snapshots of the farm to HTML.
//!
//! [`Overview::gather`] reads the farm once for one caller and keeps only what that caller may
//! see: every worker and every team's queue depth and share (as `manifold workers`, `queue` and
//! `teams` show them to anyone holding a token), but only the caller's team's builds (an admin's:
//! all). Everything else here renders; every text that came from a caller or a worker is escaped.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;

use crate::access::Caller;
use crate::build::{Build, BuildState, Event, EventKind, JobState, human_duration};
use crate::farm::{Farm, TeamUsage, WorkerView};

/// Unfinished builds shown on the overview, at most.
pub const MAX_RUNNING_SHOWN: usize = 50;
/// Finished builds shown on the overview, at most.
pub const MAX_RECENT_SHOWN: usize = 20;
/// Log lines shown per platform on a build's page (the last ones).
pub const MAX_LOG_LINES_SHOWN: usize = 5000;
/// Samples of the teams' shares kept (one at least every minute, more while shares change).
pub const MAX_SHARE_SAMPLES: usize = 720;

/// The teams' shares of running jobs at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct ShareSample {
    /// Unix ms.
    pub at_ms: i64,
    /// Per team: its running jobs and its share of all running jobs (0 when none run).
    pub shares: BTreeMap<String, (u32, f64)>,
}

impl ShareSample {
    /// The shares `usage` gives at `at_ms`.
    pub fn of(usage: &[TeamUsage], at_ms: i64) -> Self {
        let running: u32 = usage.iter().map(|u| u.running).sum();
        let shares = usage
            .iter()
            .map(|u| {
                let share = if running == 0 {
                    0.0
                } else {
                    f64::from(u.running) / f64::from(running)
                };
                (u.team.name.clone(), (u.running, share))
            })
            .collect();
        Self { at_ms, shares }
    }
}

/// The teams' shares over time: a sample is kept when the shares change, or a minute after the
/// last one; at most [`MAX_SHARE_SAMPLES`], the oldest dropped first.
#[derive(Clone, Debug, Default)]
pub struct ShareHistory {
    samples: VecDeque<ShareSample>,
}

impl ShareHistory {
    /// Records `sample` if it differs from the last one or the last is a minute old.
    pub fn record(&mut self, sample: ShareSample) {
        if let Some(last) = self.samples.back()
            && last.shares == sample.shares
            && sample.at_ms - last.at_ms < 60_000
        {
            return;
        }
        if self.samples.len() == MAX_SHARE_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }

    /// The samples, oldest first.
    pub fn samples(&self) -> impl Iterator<Item = &ShareSample> {
        self.samples.iter()
    }
}

/// One platform's job of a build, as shown.
#[derive(Clone, Debug, PartialEq)]
pub struct JobRow {
    /// `linux/arm64`.
    pub platform: String,
    /// `queued`, `running`...
    pub state: &'static str,
    /// The worker of its current or last attempt.
    pub worker: Option<String>,
    /// Its attempt number.
    pub attempt: u32,
    /// BuildKit's step counter `[n/m]` from its latest output, if any.
    pub step: Option<(u32, u32)>,
    /// Its latest output line.
    pub last_line: Option<String>,
    /// Its error, if it failed.
    pub error: Option<String>,
    /// The pushed image's digest.
    pub digest: Option<String>,
}

/// A build, as shown.
#[derive(Clone, Debug, PartialEq)]
pub struct BuildRow {
    /// Id.
    pub id: String,
    /// The image reference (tag) it makes.
    pub image: String,
    /// Team and the token's name that submitted it.
    pub team: String,
    /// Who submitted it (the token's name).
    pub submitted_by: String,
    /// `queued`, `running`, `succeeded`...
    pub state: &'static str,
    /// Unix ms.
    pub created_at_ms: i64,
    /// Unix ms, once final.
    pub finished_at_ms: Option<i64>,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// The list digest, on success.
    pub manifest: Option<String>,
    /// Per platform.
    pub jobs: Vec<JobRow>,
}

impl BuildRow {
    /// The row of `b`.
    pub fn of(b: &Build) -> Self {
        Self {
            id: b.id.to_string(),
            image: b.spec.image.whole(),
            team: b.team.clone(),
            submitted_by: b.submitted_by.clone(),
            state: build_state(b.state),
            created_at_ms: b.created_at_ms,
            finished_at_ms: b.finished_at_ms,
            error: b.error.clone(),
            manifest: b.manifest.as_ref().map(|(d, _)| d.clone()),
            jobs: b
                .jobs
                .iter()
                .map(|j| JobRow {
                    platform: j.platform.to_string(),
                    state: job_state(j.state),
                    worker: j.worker.clone(),
                    attempt: j.attempt,
                    step: j.log_tail.iter().rev().find_map(|l| step_of(l)),
                    last_line: j.log_tail.back().cloned(),
                    error: j.error.clone(),
                    digest: j.image.as_ref().map(|i| i.digest.clone()),
                })
                .collect(),
        }
    }
}

/// BuildKit's step counter in a progress line: `#7 [2/3] RUN make` is step 2 of 3.
pub fn step_of(line: &str) -> Option<(u32, u32)> {
    let start = line.find('[')?;
    let rest = &line[start + 1..];
    let (inner, _) = rest.split_once(']')?;
    // Stage-qualified steps read `[stage 2/3]`.
    let counter = inner.rsplit(' ').next()?;
    let (n, m) = counter.split_once('/')?;
    let (n, m) = (n.parse().ok()?, m.parse().ok()?);
    (n <= m && m > 0).then_some((n, m))
}

/// A worker, as shown.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerRow {
    /// Name.
    pub name: String,
    /// Platforms it builds.
    pub platforms: Vec<String>,
    /// Builds them under emulation.
    pub emulated: bool,
    /// Owner team, if any.
    pub owner: Option<String>,
    /// Slots.
    pub slots: u32,
    /// Slots in use.
    pub slots_in_use: u32,
    /// `ready`, `draining` or `unhealthy: REASON`.
    pub status: String,
    /// Free disk and cache size, when the worker reports them.
    pub disk: Option<String>,
}

impl WorkerRow {
    /// The row of `w`.
    pub fn of(w: &WorkerView) -> Self {
        Self {
            name: w.name.clone(),
            platforms: w.platforms.iter().map(ToString::to_string).collect(),
            emulated: w.emulated,
            owner: w.owner.clone(),
            slots: w.slots,
            slots_in_use: w.slots_in_use,
            status: match (&w.unhealthy, w.draining) {
                (Some(reason), _) => format!("unhealthy: {reason}"),
                (None, true) => "draining".into(),
                (None, false) => "ready".into(),
            },
            disk: w.disk.map(|d| d.to_string()),
        }
    }
}

/// A team's queue and share.
#[derive(Clone, Debug, PartialEq)]
pub struct TeamRow {
    /// Name.
    pub name: String,
    /// Weight.
    pub weight: u32,
    /// Running jobs.
    pub running: u32,
    /// Queued jobs.
    pub queued: u32,
    /// Share of running jobs.
    pub share: f64,
    /// Its weight's share among the teams with work.
    pub weight_share: f64,
}

/// Queued jobs of one platform and team.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueRow {
    /// Platform.
    pub platform: String,
    /// Team.
    pub team: String,
    /// Jobs waiting.
    pub jobs: u32,
    /// How long the oldest has waited, in ms.
    pub oldest_wait_ms: u64,
}

/// Everything the overview shows to one caller.
#[derive(Clone, Debug, PartialEq)]
pub struct Overview {
    /// Who is looking (name, team, admin).
    pub caller: Caller,
    /// Every attached worker.
    pub workers: Vec<WorkerRow>,
    /// Every team's queued jobs per platform.
    pub queues: Vec<QueueRow>,
    /// Every team's share.
    pub teams: Vec<TeamRow>,
    /// The caller's unfinished builds, newest first.
    pub running: Vec<BuildRow>,
    /// The caller's finished builds, newest first.
    pub recent: Vec<BuildRow>,
    /// The teams' shares over time.
    pub history: Vec<ShareSample>,
    /// Unix ms of the snapshot.
    pub now_ms: i64,
}

impl Overview {
    /// Reads `farm` for `caller`.
    pub fn gather(farm: &Farm, caller: &Caller, history: &ShareHistory, now_ms: i64) -> Self {
        let now = std::time::Instant::now();
        let mut queues: BTreeMap<(String, String), QueueRow> = BTreeMap::new();
        for (q, _) in farm.queue() {
            let waited = now.saturating_duration_since(q.since).as_millis() as u64;
            let row = queues
                .entry((q.platform.to_string(), q.team.clone()))
                .or_insert_with(|| QueueRow {
                    platform: q.platform.to_string(),
                    team: q.team.clone(),
                    jobs: 0,
                    oldest_wait_ms: 0,
                });
            row.jobs += 1;
            row.oldest_wait_ms = row.oldest_wait_ms.max(waited);
        }
        // The newest page: the dashboard shows running builds and the last finished ones (those
        // the farm holds in full; evicted ones are left out).
        let builds: Vec<_> = farm
            .list_held(
                &crate::paging::PageQuery::newest(crate::paging::MAX_PAGE),
                caller,
            )
            .map(|p| p.items)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|l| match l {
                crate::farm::Listed::Held(b) => Some(*b),
                crate::farm::Listed::Stored(_) => None,
            })
            .collect();
        let mut workers: Vec<WorkerRow> = farm.workers().iter().map(WorkerRow::of).collect();
        workers.sort_by(|a, b| a.name.cmp(&b.name));
        Self::new(
            caller.clone(),
            workers,
            queues.into_values().collect(),
            &farm.teams(),
            &builds,
            history.samples().cloned().collect(),
            now_ms,
        )
    }

    /// The overview of these snapshots for `caller`: builds it may not see are left out.
    pub fn new(
        caller: Caller,
        workers: Vec<WorkerRow>,
        queues: Vec<QueueRow>,
        usage: &[TeamUsage],
        builds: &[Build],
        history: Vec<ShareSample>,
        now_ms: i64,
    ) -> Self {
        let visible = builds.iter().filter(|b| caller.sees(&b.team));
        let (done, open): (Vec<&Build>, Vec<&Build>) = visible.partition(|b| b.state.is_final());
        let running_total: u32 = usage.iter().map(|u| u.running).sum();
        let active_weight: u32 = usage
            .iter()
            .filter(|u| u.running + u.queued > 0)
            .map(|u| u.team.weight.max(1))
            .sum();
        let teams = usage
            .iter()
            .map(|u| TeamRow {
                name: u.team.name.clone(),
                weight: u.team.weight.max(1),
                running: u.running,
                queued: u.queued,
                share: if running_total == 0 {
                    0.0
                } else {
                    f64::from(u.running) / f64::from(running_total)
                },
                weight_share: if u.running + u.queued == 0 || active_weight == 0 {
                    0.0
                } else {
                    f64::from(u.team.weight.max(1)) / f64::from(active_weight)
                },
            })
            .collect();
        Self {
            caller,
            workers,
            queues,
            teams,
            running: open
                .into_iter()
                .take(MAX_RUNNING_SHOWN)
                .map(BuildRow::of)
                .collect(),
            recent: done
                .into_iter()
                .take(MAX_RECENT_SHOWN)
                .map(BuildRow::of)
                .collect(),
            history,
            now_ms,
        }
    }
}

/// HTML-escapes `s` for text and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
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

fn ago(now_ms: i64, at_ms: i64) -> String {
    let d = std::time::Duration::from_millis((now_ms - at_ms).max(0) as u64);
    if d.as_secs() == 0 {
        "just now".into()
    } else {
        format!(
            "{} ago",
            human_duration(std::time::Duration::from_secs(d.as_secs()))
        )
    }
}

fn took(from_ms: i64, to_ms: i64) -> String {
    human_duration(std::time::Duration::from_secs(
        ((to_ms - from_ms).max(0) / 1000) as u64,
    ))
}

fn percent(x: f64) -> String {
    format!("{:.0}%", (x * 100.0).clamp(0.0, 100.0))
}

/// A whole page around `body`: the stylesheet and script are served by the dashboard itself, so
/// its content security policy allows no inline code.
pub fn page(title: &str, signed_in: Option<&Caller>, body: &str) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{} · Manifold</title>\
         <link rel=\"stylesheet\" href=\"/static/dashboard.css\">\
         <script src=\"/static/dashboard.js\" defer></script></head><body>\
         <header><a class=\"home\" href=\"/\">Manifold</a>",
        escape(title)
    );
    if let Some(c) = signed_in {
        let who = if c.name.is_empty() {
            "open farm (no tokens)".to_owned()
        } else {
            format!(
                "{} · team {}{}",
                c.name,
                c.team,
                if c.admin { " · admin" } else { "" }
            )
        };
        let _ = write!(
            out,
            "<span id=\"who\">{}</span><form method=\"post\" action=\"/logout\"><button id=\"sign-out\">Sign out</button></form>",
            escape(&who)
        );
    }
    let _ = write!(out, "</header><main>{body}</main></body></html>");
    out
}

/// The sign-in form, with `message` (a refusal) above it.
pub fn login(message: Option<&str>) -> String {
    let mut body = String::from("<h1>Sign in</h1>");
    if let Some(m) = message {
        let _ = write!(
            body,
            "<p class=\"error\" id=\"login-error\">{}</p>",
            escape(m)
        );
    }
    body.push_str(
        "<form method=\"post\" action=\"/login\" class=\"login\">\
         <label>Token <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"off\" required></label>\
         <button id=\"sign-in\" type=\"submit\">Sign in</button></form>\
         <p class=\"hint\">The token of the CLI (`MANIFOLD_TOKEN`, or `token` in its config file): \
         you see what it may see.</p>",
    );
    page("Sign in", None, &body)
}

/// The overview page: the live part is replaced by server-sent events from `/live`.
pub fn overview_page(o: &Overview) -> String {
    let body = format!(
        "<div id=\"live\" data-live=\"/live\">{}</div>",
        overview_live(o)
    );
    page("Farm", Some(&o.caller), &body)
}

/// The part of the overview that server-sent events replace.
pub fn overview_live(o: &Overview) -> String {
    let mut out = String::new();
    running_section(&mut out, o);
    queues_section(&mut out, o);
    workers_section(&mut out, o);
    recent_section(&mut out, o);
    share_section(&mut out, o);
    out
}

fn running_section(out: &mut String, o: &Overview) {
    let _ = write!(
        out,
        "<section id=\"running\"><h2>Running builds ({})</h2>",
        o.running.len()
    );
    if o.running.is_empty() {
        out.push_str("<p class=\"empty\">No build of yours is queued or running.</p>");
    }
    for b in &o.running {
        let _ = write!(
            out,
            "<div class=\"build\" id=\"build-{id}\" data-state=\"{state}\"><div class=\"head\">\
             <a href=\"/builds/{id}\">{image}</a> <span class=\"state {state}\">{state}</span> \
             <span class=\"meta\">team {team} · by {by} · {ago}</span></div><table class=\"jobs\">",
            id = escape(&b.id),
            image = escape(&b.image),
            state = b.state,
            team = escape(&b.team),
            by = escape(&b.submitted_by),
            ago = ago(o.now_ms, b.created_at_ms),
        );
        for j in &b.jobs {
            job_progress_row(out, j);
        }
        out.push_str("</table></div>");
    }
    out.push_str("</section>");
}

fn job_progress_row(out: &mut String, j: &JobRow) {
    let fraction = match (j.state, j.step) {
        ("succeeded", _) => 1.0,
        (_, Some((n, m))) => f64::from(n) / f64::from(m),
        _ => 0.0,
    };
    let step = j
        .step
        .map(|(n, m)| format!("step {n}/{m}"))
        .unwrap_or_default();
    let _ = write!(
        out,
        "<tr class=\"job\" data-platform=\"{p}\"><td class=\"platform\">{p}</td>\
         <td><span class=\"state {s}\">{s}</span></td><td>{w}</td>\
         <td class=\"progress\"><div class=\"bar\"><div style=\"width:{pct}\"></div></div>{step}</td>\
         <td class=\"line\">{line}</td></tr>",
        p = escape(&j.platform),
        s = j.state,
        w = escape(j.worker.as_deref().unwrap_or("")),
        pct = percent(fraction),
        step = escape(&step),
        line = escape(j.last_line.as_deref().unwrap_or("")),
    );
}

fn queues_section(out: &mut String, o: &Overview) {
    out.push_str(
        "<section id=\"queues\"><h2>Queues</h2><table><thead><tr><th>Platform</th><th>Team</th>\
         <th>Queued</th><th>Oldest wait</th></tr></thead><tbody>",
    );
    if o.queues.is_empty() {
        out.push_str("<tr><td colspan=\"4\" class=\"empty\">Nothing waits.</td></tr>");
    }
    for q in &o.queues {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&q.platform),
            escape(&q.team),
            q.jobs,
            human_duration(std::time::Duration::from_secs(q.oldest_wait_ms / 1000)),
        );
    }
    out.push_str(
        "</tbody></table><h3>Fair share</h3><table class=\"teams\"><thead><tr><th>Team</th>\
         <th>Weight</th><th>Running</th><th>Queued</th><th>Share of running jobs (mark: its weight's share)</th>\
         </tr></thead><tbody>",
    );
    for t in &o.teams {
        let _ = write!(
            out,
            "<tr data-team=\"{n}\"><td>{n}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td><div class=\"bar share\"><div style=\"width:{}\"></div><span class=\"mark\" style=\"left:{}\"></span></div>{} of {}</td></tr>",
            t.weight,
            t.running,
            t.queued,
            percent(t.share),
            percent(t.weight_share),
            percent(t.share),
            percent(t.weight_share),
            n = escape(&t.name),
        );
    }
    out.push_str("</tbody></table></section>");
}

fn workers_section(out: &mut String, o: &Overview) {
    out.push_str(
        "<section id=\"workers\"><h2>Workers</h2><table><thead><tr><th>Name</th><th>Platforms</th>\
         <th>Mode</th><th>Owner</th><th>Slots</th><th>Health</th><th>Disk</th></tr></thead><tbody>",
    );
    if o.workers.is_empty() {
        out.push_str("<tr><td colspan=\"7\" class=\"empty\">No worker is attached.</td></tr>");
    }
    for w in &o.workers {
        let healthy = if w.status == "ready" { "ok" } else { "bad" };
        let _ = write!(
            out,
            "<tr data-worker=\"{n}\"><td>{n}</td><td>{}</td><td>{}</td><td>{}</td><td>{}/{}</td>\
             <td class=\"{healthy}\">{}</td><td>{}</td></tr>",
            escape(&w.platforms.join(", ")),
            if w.emulated { "emulated" } else { "native" },
            escape(w.owner.as_deref().unwrap_or("shared")),
            w.slots_in_use,
            w.slots,
            escape(&w.status),
            escape(w.disk.as_deref().unwrap_or("not reported")),
            n = escape(&w.name),
        );
    }
    out.push_str("</tbody></table></section>");
}

fn recent_section(out: &mut String, o: &Overview) {
    out.push_str(
        "<section id=\"recent\"><h2>Recent builds</h2><table><thead><tr><th>Image</th><th>State</th>\
         <th>Platforms</th><th>Team</th><th>Took</th><th>Ended</th></tr></thead><tbody>",
    );
    if o.recent.is_empty() {
        out.push_str(
            "<tr><td colspan=\"6\" class=\"empty\">No build of yours has ended yet.</td></tr>",
        );
    }
    for b in &o.recent {
        let end = b.finished_at_ms.unwrap_or(o.now_ms);
        let _ = write!(
            out,
            "<tr class=\"build\" id=\"build-{id}\" data-state=\"{s}\"><td><a href=\"/builds/{id}\">{}</a></td>\
             <td><span class=\"state {s}\">{s}</span></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&b.image),
            escape(
                &b.jobs
                    .iter()
                    .map(|j| j.platform.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            escape(&b.team),
            took(b.created_at_ms, end),
            ago(o.now_ms, end),
            id = escape(&b.id),
            s = b.state,
        );
    }
    out.push_str("</tbody></table></section>");
}

const PALETTE: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// The teams' shares of running jobs over time, as an SVG step chart.
fn share_section(out: &mut String, o: &Overview) {
    out.push_str("<section id=\"share\"><h2>Fair share over time</h2>");
    let samples = &o.history;
    let Some(first) = samples.first() else {
        out.push_str("<p class=\"empty\">No sample yet.</p></section>");
        return;
    };
    let (w, h) = (720.0, 160.0);
    let span = (o.now_ms - first.at_ms).max(1) as f64;
    let x = |at: i64| (at - first.at_ms) as f64 / span * w;
    let y = |share: f64| h - share * h;
    let mut teams: Vec<&String> = samples.iter().flat_map(|s| s.shares.keys()).collect();
    teams.sort();
    teams.dedup();
    let _ = write!(
        out,
        "<svg class=\"chart\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\" \
         aria-label=\"share of running jobs per team since {}\"><rect width=\"{w}\" height=\"{h}\" class=\"frame\"/>",
        ago(o.now_ms, first.at_ms)
    );
    let mut legend = String::new();
    for (i, team) in teams.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let mut points = String::new();
        let mut last: Option<f64> = None;
        for s in samples {
            let share = s.shares.get(*team).map_or(0.0, |(_, share)| *share);
            if let Some(prev) = last {
                let _ = write!(points, "{:.1},{:.1} ", x(s.at_ms), y(prev));
            }
            let _ = write!(points, "{:.1},{:.1} ", x(s.at_ms), y(share));
            last = Some(share);
        }
        if let Some(prev) = last {
            let _ = write!(points, "{:.1},{:.1}", w, y(prev));
        }
        let _ = write!(
            out,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{points}\"><title>{}</title></polyline>",
            escape(team)
        );
        let _ = write!(
            legend,
            "<li data-team=\"{t}\"><span class=\"swatch\" style=\"background:{colour}\"></span>{t}</li>",
            t = escape(team)
        );
    }
    let _ = write!(
        out,
        "</svg><ul class=\"legend\">{legend}</ul><p class=\"hint\">Share of the farm's running jobs, from {} to now.</p></section>",
        ago(o.now_ms, first.at_ms)
    );
}

/// A build's page: its jobs and every platform's output; `events` is its history.
pub fn build_page(caller: &Caller, b: &BuildRow, events: &[Event], now_ms: i64) -> String {
    let body = format!(
        "<div id=\"live\" data-live=\"/builds/{}/live\">{}</div>",
        escape(&b.id),
        build_live(b, events, now_ms)
    );
    page(&b.image, Some(caller), &body)
}

/// The part of a build's page that server-sent events replace.
pub fn build_live(b: &BuildRow, events: &[Event], now_ms: i64) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<h1>{}</h1><p class=\"build\" id=\"build-{id}\" data-state=\"{s}\"><span class=\"state {s}\">{s}</span> \
         build {id} · team {} · by {}",
        escape(&b.image),
        escape(&b.team),
        escape(&b.submitted_by),
        id = escape(&b.id),
        s = b.state,
    );
    // Only what changes with the build: the fragment is sent again whenever it differs.
    match b.finished_at_ms {
        Some(end) => {
            let _ = write!(out, " · took {}", took(b.created_at_ms, end));
        }
        None => {
            let _ = write!(out, " · started {}", ago(now_ms, b.created_at_ms));
        }
    }
    out.push_str("</p>");
    if let Some(d) = &b.manifest {
        let _ = write!(out, "<p>Manifest list <code>{}</code></p>", escape(d));
    }
    if let Some(e) = &b.error {
        let _ = write!(out, "<p class=\"error\">{}</p>", escape(e));
    }
    out.push_str("<table class=\"jobs\">");
    for j in &b.jobs {
        job_progress_row(&mut out, j);
        if let Some(e) = &j.error {
            let _ = write!(
                out,
                "<tr><td></td><td colspan=\"4\" class=\"error\">{}</td></tr>",
                escape(e)
            );
        }
    }
    out.push_str("</table>");
    for (i, j) in b.jobs.iter().enumerate() {
        let lines: Vec<&str> = events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::Log { platform, line } if platform.to_string() == j.platform => {
                    Some(line.as_str())
                }
                _ => None,
            })
            .collect();
        let skipped = lines.len().saturating_sub(MAX_LOG_LINES_SHOWN);
        let _ = write!(
            out,
            "<h2>{} output</h2><pre class=\"log\" id=\"log-{i}\" data-platform=\"{}\">",
            escape(&j.platform),
            escape(&j.platform)
        );
        if skipped > 0 {
            let _ = writeln!(
                out,
                "… {skipped} earlier lines (`manifold logs {} --platform {}` has them all)",
                escape(&b.id),
                escape(&j.platform)
            );
        }
        for line in &lines[skipped..] {
            let _ = writeln!(out, "{}", escape(line));
        }
        out.push_str("</pre>");
    }
    out
}

/// The stylesheet.
pub const CSS: &str = r#"body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222}
header{display:flex;gap:1em;align-items:center;padding:.5em 1em;background:#223;color:#eee}
header a{color:#fff;font-weight:bold;text-decoration:none}header form{margin-left:auto}
#who{margin-left:auto}main{padding:0 1em 2em}h2{margin-top:1.5em;font-size:1.1em}
table{border-collapse:collapse;min-width:40em}td,th{padding:.2em .6em;text-align:left;border-bottom:1px solid #ddd;vertical-align:top}
.state{padding:0 .4em;border-radius:3px;background:#ddd}.state.succeeded{background:#bfb}.state.failed{background:#fbb}
.state.running,.state.assigned{background:#bdf}.state.cancelled{background:#eee}
.bar{display:inline-block;position:relative;width:10em;height:.8em;background:#eee;margin-right:.5em}
.bar div{height:100%;background:#48c}.bar .mark{position:absolute;top:-.2em;width:2px;height:1.2em;background:#c33}
.line{font-family:monospace;white-space:pre;max-width:40em;overflow:hidden;text-overflow:ellipsis}
.build .head{margin:.8em 0 .2em}.meta,.hint,.empty{color:#777}.error{color:#b00}.ok{color:#080}.bad{color:#b00}
pre.log{background:#111;color:#ddd;padding:.5em;max-height:30em;overflow:auto}
.chart .frame{fill:#fafafa;stroke:#ccc}.legend{list-style:none;padding:0;display:flex;gap:1em}
.swatch{display:inline-block;width:1em;height:.6em;margin-right:.3em}
.login{display:flex;gap:.5em;margin:1em 0}"#;

/// The script: replaces `#live` with each server-sent `update` event of its `data-live` URL,
/// keeping each log's scroll position (or its end, when it was scrolled to the end).
pub const JS: &str = r#"document.addEventListener('DOMContentLoaded', () => {
  const live = document.getElementById('live');
  if (!live || !live.dataset.live) return;
  const source = new EventSource(live.dataset.live);
  source.addEventListener('update', (e) => {
    const kept = {};
    live.querySelectorAll('pre.log').forEach((p) => {
      kept[p.id] = p.scrollHeight - p.scrollTop - p.clientHeight < 4 ? -1 : p.scrollTop;
    });
    live.innerHTML = e.data;
    live.querySelectorAll('pre.log').forEach((p) => {
      const k = kept[p.id];
      if (k === -1) p.scrollTop = p.scrollHeight; else if (k !== undefined) p.scrollTop = k;
    });
  });
  source.addEventListener('signed-out', () => { source.close(); window.location = '/login'; });
});"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(team: &str, admin: bool) -> Caller {
        Caller {
            name: format!("{team}-person"),
            team: team.into(),
            admin,
        }
    }

    #[test]
    fn step_counters_are_read_from_buildkit_lines() {
        let check =
            |line: &str, want: Option<(u32, u32)>| assert_eq!(step_of(line), want, "{line}");
        check("#7 [2/3] RUN make", Some((2, 3)));
        check("#5 [build 1/4] FROM base", Some((1, 4)));
        check("#1 [internal] load build definition", None);
        check("#9 [4/3] nonsense", None);
        check("#9 [0/0]", None);
        check("plain output [a/b]", None);
        check("", None);
    }

    #[test]
    fn a_worker_row_shows_its_disk_once_reported() {
        let mut w = WorkerView {
            name: "w".into(),
            platforms: vec![manifold_proto::Platform::linux_amd64()],
            emulated: false,
            slots: 1,
            slots_in_use: 0,
            last_heartbeat_ms: 0,
            connected_at_ms: 0,
            docker_version: String::new(),
            labels: BTreeMap::new(),
            draining: false,
            unhealthy: None,
            owner: None,
            paused: false,
            lending: true,
            disk: None,
        };
        assert_eq!(WorkerRow::of(&w).disk, None);
        w.disk = Some(manifold_proto::DiskUsage {
            free_bytes: 5 << 30,
            cache_bytes: 3 << 20,
            build_cache_bytes: None,
        });
        assert_eq!(
            WorkerRow::of(&w).disk.as_deref(),
            Some("5.0 GiB free, cache 3.0 MiB")
        );
    }

    #[test]
    fn text_from_callers_is_escaped() {
        assert_eq!(
            escape(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
        let mut o = Overview::new(caller("web", false), vec![], vec![], &[], &[], vec![], 0);
        o.workers.push(WorkerRow {
            name: "<b>w</b>".into(),
            platforms: vec!["linux/amd64".into()],
            emulated: false,
            owner: None,
            slots: 1,
            slots_in_use: 0,
            status: "unhealthy: <img src=x>".into(),
            disk: None,
        });
        let html = overview_live(&o);
        assert!(
            !html.contains("<b>w</b>") && !html.contains("<img"),
            "{html}"
        );
    }

    #[test]
    fn share_history_keeps_changes_and_a_minute_heartbeat() {
        let sample = |at_ms, running: u32| ShareSample {
            at_ms,
            shares: BTreeMap::from([("t".to_owned(), (running, 1.0))]),
        };
        let mut h = ShareHistory::default();
        h.record(sample(0, 1));
        h.record(sample(1_000, 1)); // unchanged: dropped
        h.record(sample(2_000, 2)); // changed: kept
        h.record(sample(62_000, 2)); // a minute later: kept
        let at: Vec<i64> = h.samples().map(|s| s.at_ms).collect();
        assert_eq!(at, [0, 2_000, 62_000]);
        for i in 0..(MAX_SHARE_SAMPLES as i64 + 10) {
            h.record(sample(100_000 + i, i as u32));
        }
        assert_eq!(h.samples().count(), MAX_SHARE_SAMPLES);
    }
}
