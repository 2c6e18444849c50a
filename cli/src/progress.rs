//! Showing a build's events: plain lines prefixed with the platform, a live line per platform on a
//! terminal, one JSON object per line for programs ([`event_json`]), or nothing. All of it goes to
//! stderr; stdout is kept for the result (the digest).
//!
//! Parallel platforms interleave; plain mode therefore prefixes every line with its platform so
//! the output stays readable and greppable (`grep '^\[linux/arm64\]'`).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use manifold_proto::Platform;
use manifold_proto::v1::{self, build_event::Event};

use crate::args::ProgressMode;

/// The lowercase name of a job state, as shown to people.
pub fn job_state_name(state: i32) -> &'static str {
    match v1::JobState::try_from(state) {
        Ok(v1::JobState::Queued) => "queued",
        Ok(v1::JobState::Assigned) => "assigned",
        Ok(v1::JobState::Running) => "running",
        Ok(v1::JobState::Succeeded) => "succeeded",
        Ok(v1::JobState::Failed) => "failed",
        Ok(v1::JobState::Cancelled) => "cancelled",
        Ok(v1::JobState::Unspecified) | Err(_) => "unknown",
    }
}

/// The lowercase name of a build state, as shown to people.
pub fn build_state_name(state: i32) -> &'static str {
    match v1::BuildState::try_from(state) {
        Ok(v1::BuildState::Queued) => "queued",
        Ok(v1::BuildState::Running) => "running",
        Ok(v1::BuildState::Succeeded) => "succeeded",
        Ok(v1::BuildState::Failed) => "failed",
        Ok(v1::BuildState::Cancelled) => "cancelled",
        Ok(v1::BuildState::Unspecified) | Err(_) => "unknown",
    }
}

/// The normalised text of a wire platform (`linux/arm64`), or its raw parts if it is not one.
pub fn platform_name(platform: Option<&v1::Platform>) -> String {
    let Some(p) = platform else {
        return "unknown platform".to_owned();
    };
    match Platform::try_from(p) {
        Ok(p) => p.to_string(),
        Err(_) => [p.os.as_str(), &p.architecture, &p.variant]
            .iter()
            .filter(|s| !s.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join("/"),
    }
}

/// `running on worker-x86 (attempt 1)`: a job state with who runs it.
fn describe_state(change: &v1::JobStateChanged) -> String {
    let state = job_state_name(change.state);
    let mut text = state.to_owned();
    let queued = change.state == v1::JobState::Queued as i32;
    if !change.worker.is_empty() && !queued {
        let preposition = if change.state == v1::JobState::Assigned as i32 {
            "to"
        } else {
            "on"
        };
        text.push_str(&format!(" {preposition} {}", change.worker));
    }
    if change.attempt > 0 {
        text.push_str(&format!(" (attempt {})", change.attempt));
    }
    text
}

/// An output line prefixed with its platform: `[linux/arm64] #5 RUN uname -m`.
pub fn format_log_line(log: &v1::LogLine) -> String {
    format!(
        "[{}] {}",
        platform_name(log.platform.as_ref()),
        log.line.trim_end()
    )
}

/// One event as a plain line, e.g. `[linux/arm64] #5 RUN uname -m` or
/// `[linux/amd64] state: running on worker-x86 (attempt 1)`. None for an empty event.
pub fn format_event(event: &v1::BuildEvent) -> Option<String> {
    match event.event.as_ref()? {
        Event::Log(log) => Some(format_log_line(log)),
        Event::JobState(change) => {
            let mut line = format!(
                "[{}] state: {}",
                platform_name(change.platform.as_ref()),
                describe_state(change)
            );
            if !change.message.is_empty() {
                line.push_str(": ");
                line.push_str(change.message.trim_end());
            }
            Some(line)
        }
        Event::Finished(finished) => Some(format_finished(finished)),
        Event::Publishing(p) => Some(format!("publishing: {}", p.message.trim_end())),
    }
}

/// One event as `--progress json` prints it, one object per line:
/// `{"sequence":4,"at_ms":…,"platform":"linux/arm64","log":"#5 RUN uname -m"}`,
/// `{"sequence":5,…,"platform":"linux/arm64","state":"succeeded","worker":"w1","attempt":1,"message":"sha256:…"}`,
/// `{"sequence":9,…,"finished":"succeeded","digest":"sha256:…"}` (or `"error"`).
pub fn event_json(event: &v1::BuildEvent) -> serde_json::Value {
    let mut out = serde_json::json!({ "sequence": event.sequence, "at_ms": event.at_ms });
    let fields = match event.event.as_ref() {
        Some(Event::Log(log)) => serde_json::json!({
            "platform": platform_name(log.platform.as_ref()),
            "log": log.line.trim_end(),
        }),
        Some(Event::JobState(change)) => serde_json::json!({
            "platform": platform_name(change.platform.as_ref()),
            "state": job_state_name(change.state),
            "worker": change.worker,
            "attempt": change.attempt,
            "message": change.message.trim_end(),
        }),
        Some(Event::Publishing(p)) => serde_json::json!({ "publishing": p.message.trim_end() }),
        Some(Event::Finished(f)) if f.manifest_digest.is_empty() => serde_json::json!({
            "finished": build_state_name(f.state),
            "error": f.error,
        }),
        Some(Event::Finished(f)) => serde_json::json!({
            "finished": build_state_name(f.state),
            "digest": f.manifest_digest,
        }),
        None => serde_json::json!({}),
    };
    if let (Some(out), serde_json::Value::Object(fields)) = (out.as_object_mut(), fields) {
        out.extend(fields);
    }
    out
}

fn format_finished(finished: &v1::BuildFinished) -> String {
    let state = build_state_name(finished.state);
    let detail = if !finished.manifest_digest.is_empty() {
        &finished.manifest_digest
    } else {
        &finished.error
    };
    if detail.is_empty() {
        format!("build {state}")
    } else {
        format!("build {state}: {detail}")
    }
}

/// What a person needs when a build failed: each failing platform's error and its last lines.
pub fn failure_report(build: &v1::Build) -> String {
    let mut out = String::new();
    let failed = build
        .jobs
        .iter()
        .filter(|j| j.state == v1::JobState::Failed as i32 || !j.error.is_empty());
    for job in failed {
        let mut head = format!(
            "{} {}",
            platform_name(job.platform.as_ref()),
            job_state_name(job.state)
        );
        if !job.worker.is_empty() {
            head.push_str(&format!(" on {}", job.worker));
        }
        if job.attempt > 0 {
            head.push_str(&format!(" (attempt {})", job.attempt));
        }
        if !job.error.is_empty() {
            head.push_str(&format!(": {}", job.error.trim_end()));
        }
        out.push_str(&head);
        out.push('\n');
        if !job.log_tail.is_empty() {
            out.push_str("  last lines of output:\n");
            for line in &job.log_tail {
                out.push_str("  | ");
                out.push_str(line.trim_end());
                out.push('\n');
            }
        }
    }
    if out.is_empty() && !build.error.is_empty() {
        out.push_str(build.error.trim_end());
        out.push('\n');
    }
    out
}

/// The progress display of one build.
pub struct Progress {
    inner: Inner,
}

enum Inner {
    Quiet,
    Plain,
    Json,
    Live(Live),
}

impl Progress {
    /// A display in `mode` for a build of `platforms` (more appear if events name them). `Auto`
    /// is live when stderr is a terminal, plain otherwise.
    pub fn new(mode: ProgressMode, platforms: &[Platform]) -> Self {
        let inner = match mode {
            ProgressMode::Quiet => Inner::Quiet,
            ProgressMode::Plain => Inner::Plain,
            ProgressMode::Json => Inner::Json,
            ProgressMode::Auto if std::io::stderr().is_terminal() => {
                Inner::Live(Live::new(platforms))
            }
            ProgressMode::Auto => Inner::Plain,
        };
        Self { inner }
    }

    /// Whether nothing but the result is printed.
    pub fn is_quiet(&self) -> bool {
        matches!(self.inner, Inner::Quiet)
    }

    /// Adds a live line for each of `platforms` not shown yet (plain and quiet need none).
    pub fn add_platforms(&mut self, platforms: &[Platform]) {
        if let Inner::Live(live) = &mut self.inner {
            live.add(platforms);
        }
    }

    /// Prints an informational line (context upload, cancellation), unless quiet.
    pub fn note(&self, line: &str) {
        match &self.inner {
            Inner::Quiet => {}
            Inner::Plain => eprintln!("{line}"),
            Inner::Json => eprintln!("{}", serde_json::json!({"note": line})),
            Inner::Live(live) => {
                if live.multi.println(line).is_err() {
                    eprintln!("{line}");
                }
            }
        }
    }

    /// Shows one build event.
    pub fn event(&mut self, event: &v1::BuildEvent) {
        match &mut self.inner {
            Inner::Quiet => {}
            Inner::Plain => {
                if let Some(line) = format_event(event) {
                    eprintln!("{line}");
                }
            }
            Inner::Json => eprintln!("{}", event_json(event)),
            Inner::Live(live) => live.event(event),
        }
    }

    /// Stops the live lines, leaving their last state on screen.
    pub fn finish(&mut self) {
        if let Inner::Live(live) = &mut self.inner {
            live.finish();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// One spinner line per platform (indicatif).
struct Live {
    multi: MultiProgress,
    lines: BTreeMap<String, Line>,
    width: usize,
}

struct Line {
    bar: ProgressBar,
    state: String,
    last_log: String,
    done: bool,
}

const LIVE_TEMPLATE: &str = "{spinner:.cyan} {prefix:.bold} {wide_msg}";

impl Live {
    fn new(platforms: &[Platform]) -> Self {
        let mut live = Self {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            lines: BTreeMap::new(),
            width: 0,
        };
        live.add(platforms);
        live
    }

    fn add(&mut self, platforms: &[Platform]) {
        let names: Vec<String> = platforms.iter().map(Platform::to_string).collect();
        self.width = names.iter().map(String::len).fold(self.width, usize::max);
        for name in names {
            self.line(&name);
        }
    }

    fn line(&mut self, platform: &str) -> &mut Line {
        if !self.lines.contains_key(platform) {
            let bar = self.multi.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template(LIVE_TEMPLATE)
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_prefix(format!("{platform:<width$}", width = self.width));
            bar.set_message("waiting");
            bar.enable_steady_tick(Duration::from_millis(120));
            self.lines.insert(
                platform.to_owned(),
                Line {
                    bar,
                    state: "waiting".to_owned(),
                    last_log: String::new(),
                    done: false,
                },
            );
        }
        self.lines.get_mut(platform).expect("inserted above")
    }

    fn event(&mut self, event: &v1::BuildEvent) {
        match event.event.as_ref() {
            Some(Event::Log(log)) => {
                let line = self.line(&platform_name(log.platform.as_ref()));
                line.last_log = printable(&log.line);
                line.redraw();
            }
            Some(Event::JobState(change)) => {
                let line = self.line(&platform_name(change.platform.as_ref()));
                line.state = describe_state(change);
                let finished = matches!(
                    v1::JobState::try_from(change.state),
                    Ok(v1::JobState::Succeeded | v1::JobState::Failed | v1::JobState::Cancelled)
                );
                if finished {
                    line.last_log = printable(&change.message);
                    let mark = if change.state == v1::JobState::Succeeded as i32 {
                        "✔"
                    } else {
                        "✘"
                    };
                    line.finish(mark);
                } else {
                    if !change.message.is_empty() {
                        line.last_log = printable(&change.message);
                    }
                    line.redraw();
                }
            }
            Some(Event::Finished(finished)) => {
                // Below the finished lines, which no longer move.
                self.finish();
                eprintln!("{}", format_finished(finished));
            }
            Some(Event::Publishing(p)) => {
                let _ = self
                    .multi
                    .println(format!("publishing: {}", printable(&p.message)));
            }
            None => {}
        }
    }

    fn finish(&mut self) {
        for line in self.lines.values_mut() {
            if !line.done {
                line.finish(" ");
            }
        }
    }
}

impl Line {
    fn message(&self) -> String {
        if self.last_log.is_empty() {
            self.state.clone()
        } else {
            format!("{}  {}", self.state, self.last_log)
        }
    }

    fn redraw(&self) {
        if !self.done {
            self.bar.set_message(self.message());
        }
    }

    fn finish(&mut self, mark: &str) {
        self.done = true;
        let template = format!("{mark} {{prefix:.bold}} {{wide_msg}}");
        if let Ok(style) = ProgressStyle::with_template(&template) {
            self.bar.set_style(style);
        }
        self.bar.finish_with_message(self.message());
    }
}

/// A log line fit for one terminal line: tabs become spaces, other control characters (colour
/// codes, carriage returns) are dropped.
fn printable(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\t' => out.push(' '),
            // An ANSI escape sequence: ESC [ ... final byte.
            '\u{1b}' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
            }
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(p: &str) -> Option<v1::Platform> {
        Some(Platform::parse(p).unwrap().into())
    }

    fn event(e: Event) -> v1::BuildEvent {
        v1::BuildEvent {
            sequence: 0,
            at_ms: 0,
            event: Some(e),
        }
    }

    fn state(p: &str, state: v1::JobState, worker: &str, attempt: u32, message: &str) -> String {
        format_event(&event(Event::JobState(v1::JobStateChanged {
            platform: wire(p),
            state: state as i32,
            worker: worker.into(),
            attempt,
            message: message.into(),
        })))
        .unwrap()
    }

    #[test]
    fn json_progress_is_one_object_per_event_with_its_platform() {
        let mut log = event(Event::Log(v1::LogLine {
            platform: wire("linux/arm64"),
            line: "#5 RUN uname -m\n".into(),
        }));
        log.sequence = 4;
        log.at_ms = 1700;
        assert_eq!(
            event_json(&log).to_string(),
            r##"{"at_ms":1700,"log":"#5 RUN uname -m","platform":"linux/arm64","sequence":4}"##
        );
        let done = event_json(&event(Event::JobState(v1::JobStateChanged {
            platform: wire("linux/amd64"),
            state: v1::JobState::Succeeded as i32,
            worker: "w1".into(),
            attempt: 1,
            message: "sha256:ab".into(),
        })));
        assert_eq!(done["state"], "succeeded");
        assert_eq!(done["worker"], "w1");
        assert_eq!(done["message"], "sha256:ab");
        let failed = event_json(&event(Event::Finished(v1::BuildFinished {
            state: v1::BuildState::Failed as i32,
            manifest_digest: String::new(),
            error: "linux/arm64 failed".into(),
        })));
        assert_eq!(failed["finished"], "failed");
        assert_eq!(failed["error"], "linux/arm64 failed");
        assert!(!event_json(&log).to_string().contains('\n'));
    }

    #[test]
    fn plain_lines_are_prefixed_with_their_platform() {
        let log = format_event(&event(Event::Log(v1::LogLine {
            platform: wire("linux/arm64"),
            line: "#5 RUN uname -m\n".into(),
        })));
        assert_eq!(log.as_deref(), Some("[linux/arm64] #5 RUN uname -m"));
        assert_eq!(
            state("linux/amd64", v1::JobState::Running, "worker-x86", 1, ""),
            "[linux/amd64] state: running on worker-x86 (attempt 1)"
        );
        assert_eq!(
            state("linux/amd64", v1::JobState::Queued, "", 0, ""),
            "[linux/amd64] state: queued"
        );
        assert_eq!(
            state("linux/arm64", v1::JobState::Assigned, "pi", 2, ""),
            "[linux/arm64] state: assigned to pi (attempt 2)"
        );
        assert_eq!(
            state(
                "linux/arm64",
                v1::JobState::Failed,
                "pi",
                1,
                "RUN make exited with code 2"
            ),
            "[linux/arm64] state: failed on pi (attempt 1): RUN make exited with code 2"
        );
        assert_eq!(
            state(
                "linux/arm/v7",
                v1::JobState::Succeeded,
                "pi",
                1,
                "sha256:ab"
            ),
            "[linux/arm/v7] state: succeeded on pi (attempt 1): sha256:ab"
        );
    }

    #[test]
    fn the_end_of_a_build_says_how_it_ended() {
        let finished = |state: v1::BuildState, digest: &str, error: &str| {
            format_event(&event(Event::Finished(v1::BuildFinished {
                state: state as i32,
                manifest_digest: digest.into(),
                error: error.into(),
            })))
            .unwrap()
        };
        assert_eq!(
            finished(v1::BuildState::Succeeded, "sha256:12", ""),
            "build succeeded: sha256:12"
        );
        assert_eq!(
            finished(v1::BuildState::Failed, "", "linux/arm64: exit 1"),
            "build failed: linux/arm64: exit 1"
        );
        assert_eq!(
            finished(v1::BuildState::Cancelled, "", ""),
            "build cancelled"
        );
        assert_eq!(format_event(&v1::BuildEvent::default()), None);
    }

    #[test]
    fn a_failure_report_shows_the_failing_platform_and_its_log_tail() {
        let build = v1::Build {
            error: "linux/arm64 failed".into(),
            jobs: vec![
                v1::Job {
                    platform: wire("linux/amd64"),
                    state: v1::JobState::Cancelled as i32,
                    ..Default::default()
                },
                v1::Job {
                    platform: wire("linux/arm64"),
                    state: v1::JobState::Failed as i32,
                    worker: "pi".into(),
                    attempt: 1,
                    error: "RUN make exited with code 2".into(),
                    log_tail: vec!["#7 make".into(), "error: no rule".into()],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        assert_eq!(
            failure_report(&build),
            "linux/arm64 failed on pi (attempt 1): RUN make exited with code 2\n  \
             last lines of output:\n  | #7 make\n  | error: no rule\n"
        );
        let no_jobs = v1::Build {
            error: "cancelled by user".into(),
            ..Default::default()
        };
        assert_eq!(failure_report(&no_jobs), "cancelled by user\n");
    }

    #[test]
    fn live_lines_drop_control_characters() {
        assert_eq!(printable("\u{1b}[31mred\u{1b}[0m\tok\r"), "red ok");
    }

    #[test]
    fn odd_platforms_are_shown_as_sent() {
        let odd = v1::Platform {
            os: "plan9".into(),
            architecture: "mips".into(),
            variant: String::new(),
        };
        assert_eq!(platform_name(Some(&odd)), "plan9/mips");
        assert_eq!(platform_name(None), "unknown platform");
    }
}
