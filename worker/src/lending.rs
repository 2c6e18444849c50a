//! Whether this worker lends itself to other teams right now (`--lend always|never|when CMD`).
//!
//! A worker owned by a team (its certificate names one) always runs that team's jobs; lending
//! decides whether other teams' jobs may run on it too. `when CMD` runs `sh -c CMD` every
//! `--lend-check-interval` and lends while it exits 0 (a script reading a Mac's idle time or power
//! state, say). A check that cannot run, is killed by a signal or takes longer than
//! [`CHECK_TIMEOUT`] counts as "do not lend": the owner's machine is kept for the owner when in
//! doubt. The answer goes to the coordinator in every heartbeat; a worker without owner that does
//! not lend takes no job at all.
//!
//! `--lend-hours 19:00-08:00` adds a window in the worker's local time (crossing midnight allowed):
//! the worker lends only inside it AND when the policy says so; outside it a `when` command is not
//! run. The window is read again at each of its edges, so a worker lends from 19:00:00 sharp.

use std::time::Duration;

use chrono::{NaiveTime, Timelike as _};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Longest a `--lend when` check may run.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest the window goes unread: a clock set anew or a daylight-saving change is seen within it.
const WINDOW_REREAD: Duration = Duration::from_secs(600);
/// Longest `--lend when` command accepted.
pub const MAX_COMMAND_BYTES: usize = 4096;

/// The lending policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LendPolicy {
    /// Other teams' jobs may always run here (the default).
    Always,
    /// Only the owner team's jobs run here.
    Never,
    /// Lend while `sh -c COMMAND` exits 0.
    When {
        /// The shell command.
        command: String,
    },
}

impl LendPolicy {
    /// Parses `--lend`'s values: `always`, `never`, or `when` followed by the command.
    pub fn parse(values: &[String]) -> Result<Self, String> {
        match values {
            [mode] if mode == "always" => Ok(Self::Always),
            [mode] if mode == "never" => Ok(Self::Never),
            [mode] if mode == "when" => Err(
                "--lend when needs the command to run, e.g. --lend when \"/usr/local/bin/idle-for 600\""
                    .into(),
            ),
            [mode, command] if mode == "when" => {
                if command.trim().is_empty() {
                    Err("--lend when got an empty command: give the command whose exit status 0 means lend".into())
                } else if command.len() > MAX_COMMAND_BYTES {
                    Err(format!(
                        "--lend when command is {} bytes, more than {MAX_COMMAND_BYTES}: put it in a script",
                        command.len()
                    ))
                } else {
                    Ok(Self::When {
                        command: command.clone(),
                    })
                }
            }
            other => Err(format!(
                "invalid --lend `{}`: expected always, never or when \"CMD\"",
                other.join(" ")
            )),
        }
    }
}

/// A daily lending window in local time, `[from, to)`; `from > to` crosses midnight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LendHours {
    /// Minutes after midnight the window opens.
    from: u32,
    /// Minutes after midnight it closes (1440 for `24:00`).
    to: u32,
}

impl LendHours {
    /// Parses `HH:MM-HH:MM` (24-hour clock; `24:00` only as the end), e.g. `19:00-08:00`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "invalid --lend-hours `{text}`: {why}; expected HH:MM-HH:MM in local time, e.g. 19:00-08:00"
            )
        };
        let minutes = |part: &str, end: bool| -> Result<u32, String> {
            let (h, m) = part
                .trim()
                .split_once(':')
                .ok_or_else(|| bad(&format!("`{part}` is not HH:MM")))?;
            let digits = |d: &str| d.len() == 2 && d.bytes().all(|b| b.is_ascii_digit());
            if !digits(h) || !digits(m) {
                return Err(bad(&format!("`{part}` is not HH:MM")));
            }
            let (h, m): (u32, u32) = (h.parse().expect("digits"), m.parse().expect("digits"));
            match (h, m) {
                (24, 0) if end => Ok(24 * 60),
                (0..=23, 0..=59) => Ok(h * 60 + m),
                _ => Err(bad(&format!("`{part}` is not a time of day"))),
            }
        };
        let (from, to) = text
            .split_once('-')
            .ok_or_else(|| bad("no `-` between the two times"))?;
        let (from, to) = (minutes(from, false)?, minutes(to, true)?);
        if from == to || (from == 0 && to == 24 * 60) {
            return Err(bad(
                "the window is empty or the whole day; to lend at any hour leave --lend-hours out",
            ));
        }
        Ok(Self { from, to })
    }

    /// Whether local time `t` is inside the window.
    pub fn contains(&self, t: NaiveTime) -> bool {
        let m = t.hour() * 60 + t.minute();
        if self.from < self.to {
            self.from <= m && m < self.to
        } else {
            m >= self.from || m < self.to
        }
    }

    /// How long from local time `t` until the window next opens or closes.
    pub fn until_change(&self, t: NaiveTime) -> Duration {
        const DAY: u32 = 24 * 3600;
        let now = t.num_seconds_from_midnight();
        let edge = if self.contains(t) { self.to } else { self.from } * 60 % DAY;
        let secs = (edge + DAY - now) % DAY;
        // An edge in this very second: the next one is a day away.
        let secs = if secs == 0 { DAY } else { secs };
        Duration::from_secs(u64::from(secs))
            - Duration::from_nanos(u64::from(t.nanosecond() % 1_000_000_000))
    }
}

impl std::fmt::Display for LendHours {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hm = |m: u32| format!("{:02}:{:02}", m / 60, m % 60);
        write!(f, "{}-{}", hm(self.from), hm(self.to))
    }
}

/// How one run of the `--lend when` command ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckOutcome {
    /// It exited with this code.
    Exited(i32),
    /// It could not run, was killed by a signal, or timed out: why.
    Broken(String),
}

/// Whether to lend at local time `t`: inside `hours` (when given) and as `policy` says, given the
/// latest check (for `when`).
pub fn lends_at(
    policy: &LendPolicy,
    hours: Option<&LendHours>,
    t: NaiveTime,
    latest: Option<&CheckOutcome>,
) -> bool {
    hours.is_none_or(|h| h.contains(t)) && lends(policy, latest)
}

/// Whether to lend now, under `policy`, given the latest check (for `when`).
pub fn lends(policy: &LendPolicy, latest: Option<&CheckOutcome>) -> bool {
    match policy {
        LendPolicy::Always => true,
        LendPolicy::Never => false,
        LendPolicy::When { .. } => matches!(latest, Some(CheckOutcome::Exited(0))),
    }
}

/// Runs `sh -c command` once, bounded by [`CHECK_TIMEOUT`].
pub async fn check(command: &str) -> CheckOutcome {
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .status();
    match tokio::time::timeout(CHECK_TIMEOUT, child).await {
        Err(_) => CheckOutcome::Broken(format!(
            "`{command}` did not finish within {}s",
            CHECK_TIMEOUT.as_secs()
        )),
        Ok(Err(e)) => CheckOutcome::Broken(format!("`{command}` could not run: {e}")),
        Ok(Ok(status)) => match status.code() {
            Some(code) => CheckOutcome::Exited(code),
            None => CheckOutcome::Broken(format!("`{command}` was killed by a signal")),
        },
    }
}

/// Keeps `lending` up to date under `policy` and `hours`: the `when` command every `interval`
/// (only inside the window), the window at each of its edges, until `stop`; each change is logged
/// once.
pub async fn watch_lending(
    policy: LendPolicy,
    hours: Option<LendHours>,
    interval: Duration,
    lending: watch::Sender<bool>,
    stop: CancellationToken,
) {
    loop {
        let local = || chrono::Local::now().time();
        let inside = hours.is_none_or(|h| h.contains(local()));
        let outcome = match &policy {
            LendPolicy::When { command } if inside => Some(check(command).await),
            _ => None,
        };
        let t = local();
        let now = lends_at(&policy, hours.as_ref(), t, outcome.as_ref());
        lending.send_if_modified(|current| {
            if *current == now {
                return false;
            }
            match (&outcome, &policy) {
                _ if !hours.is_none_or(|h| h.contains(t)) => tracing::info!(
                    hours = %hours.expect("outside a window"),
                    local_time = %t.format("%H:%M"),
                    "not lending: outside --lend-hours"
                ),
                (_, LendPolicy::Never) => {}
                (None, _) | (Some(CheckOutcome::Exited(0)), _) => {
                    tracing::info!("lending: other teams' jobs may run here")
                }
                (Some(CheckOutcome::Exited(code)), LendPolicy::When { command }) => {
                    tracing::info!(%command, code, "not lending: only the owner team's jobs run here")
                }
                (Some(CheckOutcome::Exited(_)), _) => {}
                (Some(CheckOutcome::Broken(why)), _) => {
                    tracing::warn!(%why, "not lending: the --lend when check failed")
                }
            }
            *current = now;
            true
        });
        let wait = match (&policy, hours) {
            (LendPolicy::When { .. }, None) => interval,
            (LendPolicy::When { .. }, Some(h)) if h.contains(t) => {
                interval.min(h.until_change(local()).min(WINDOW_REREAD))
            }
            (LendPolicy::Never, _) | (_, None) => return,
            (_, Some(h)) => h.until_change(local()).min(WINDOW_REREAD),
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lend_values_parse_or_say_what_is_expected() {
        let check = |values: &[&str], want: Result<LendPolicy, &str>| {
            let values: Vec<String> = values.iter().map(|v| (*v).to_owned()).collect();
            match (LendPolicy::parse(&values), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{values:?}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{values:?}: {got}"),
                (got, want) => panic!("{values:?}: got {got:?}, want {want:?}"),
            }
        };
        check(&["always"], Ok(LendPolicy::Always));
        check(&["never"], Ok(LendPolicy::Never));
        check(
            &["when", "test -e /tmp/away"],
            Ok(LendPolicy::When {
                command: "test -e /tmp/away".into(),
            }),
        );
        check(&["when"], Err("needs the command"));
        check(&["when", " "], Err("empty command"));
        check(&["sometimes"], Err("invalid --lend `sometimes`"));
        check(&["always", "x"], Err("invalid --lend `always x`"));
        let long = "x".repeat(MAX_COMMAND_BYTES + 1);
        check(&["when", &long], Err("put it in a script"));
    }

    #[test]
    fn lending_follows_the_policy_and_the_latest_check() {
        let when = LendPolicy::When {
            command: "c".into(),
        };
        let table: [(&LendPolicy, Option<CheckOutcome>, bool); 8] = [
            (&LendPolicy::Always, None, true),
            (&LendPolicy::Always, Some(CheckOutcome::Exited(1)), true),
            (&LendPolicy::Never, None, false),
            (&LendPolicy::Never, Some(CheckOutcome::Exited(0)), false),
            (&when, None, false),
            (&when, Some(CheckOutcome::Exited(0)), true),
            (&when, Some(CheckOutcome::Exited(1)), false),
            (&when, Some(CheckOutcome::Broken("timed out".into())), false),
        ];
        for (policy, latest, want) in table {
            assert_eq!(
                lends(policy, latest.as_ref()),
                want,
                "{policy:?} {latest:?}"
            );
        }
    }

    #[test]
    fn lend_hours_parse_or_name_the_bad_value() {
        let ok = |text: &str| LendHours::parse(text).unwrap().to_string();
        assert_eq!(ok("19:00-08:00"), "19:00-08:00");
        assert_eq!(ok("09:30-17:45"), "09:30-17:45");
        assert_eq!(ok("22:00-24:00"), "22:00-24:00");
        for (bad, why) in [
            ("19:00", "no `-` between the two times"),
            ("7:00-08:00", "`7:00` is not HH:MM"),
            ("19h-08h", "`19h` is not HH:MM"),
            ("25:00-08:00", "`25:00` is not a time of day"),
            ("24:00-08:00", "`24:00` is not a time of day"),
            ("19:60-08:00", "`19:60` is not a time of day"),
            ("08:00-08:00", "the window is empty or the whole day"),
            ("00:00-24:00", "the window is empty or the whole day"),
        ] {
            let err = LendHours::parse(bad).unwrap_err();
            assert!(
                err.starts_with(&format!("invalid --lend-hours `{bad}`: {why}")),
                "{bad}: {err}"
            );
            assert!(err.ends_with("e.g. 19:00-08:00"), "{err}");
        }
    }

    fn at(hms: &str) -> NaiveTime {
        NaiveTime::parse_from_str(hms, "%H:%M:%S%.f").unwrap()
    }

    #[test]
    fn a_window_across_midnight_holds_from_its_first_to_before_its_last_minute() {
        let night = LendHours::parse("19:00-08:00").unwrap();
        let day = LendHours::parse("09:00-17:30").unwrap();
        let late = LendHours::parse("22:00-24:00").unwrap();
        // (time, in 19:00-08:00, in 09:00-17:30, in 22:00-24:00)
        let table = [
            ("00:00:00", true, false, false),
            ("07:59:59.999", true, false, false),
            ("08:00:00", false, false, false),
            ("08:59:59", false, false, false),
            ("09:00:00", false, true, false),
            ("12:00:00", false, true, false),
            ("17:29:59", false, true, false),
            ("17:30:00", false, false, false),
            ("18:59:59.999", false, false, false),
            ("19:00:00", true, false, false),
            ("21:59:59", true, false, false),
            ("22:00:00", true, false, true),
            ("23:59:59.999", true, false, true),
        ];
        for (t, n, d, l) in table {
            assert_eq!(
                (
                    night.contains(at(t)),
                    day.contains(at(t)),
                    late.contains(at(t))
                ),
                (n, d, l),
                "{t}"
            );
        }
    }

    #[test]
    fn the_window_is_read_again_at_its_next_edge() {
        let night = LendHours::parse("19:00-08:00").unwrap();
        let late = LendHours::parse("22:00-24:00").unwrap();
        let h = |n: u64| Duration::from_secs(n * 3600);
        let table = [
            (night, "12:00:00", h(7)),
            (night, "18:59:59", Duration::from_secs(1)),
            (night, "18:59:59.250", Duration::from_millis(750)),
            (night, "19:00:00", h(13)),
            (night, "23:00:00", h(9)),
            (night, "07:59:00", Duration::from_secs(60)),
            (night, "08:00:00", h(11)),
            (late, "23:00:00", h(1)),
            (late, "00:00:00", h(22)),
        ];
        for (window, t, want) in table {
            assert_eq!(window.until_change(at(t)), want, "{window} at {t}");
        }
    }

    #[test]
    fn lending_needs_the_window_and_the_policy() {
        let night = LendHours::parse("19:00-08:00").unwrap();
        let when = LendPolicy::When {
            command: "c".into(),
        };
        let yes = CheckOutcome::Exited(0);
        let no = CheckOutcome::Exited(1);
        // (policy, window, time, latest check) -> lends
        type Case<'a> = (
            &'a LendPolicy,
            Option<&'a LendHours>,
            &'a str,
            Option<&'a CheckOutcome>,
            bool,
        );
        let table: [Case; 10] = [
            (&LendPolicy::Always, None, "12:00:00", None, true),
            (&LendPolicy::Always, Some(&night), "12:00:00", None, false),
            (&LendPolicy::Always, Some(&night), "19:00:00", None, true),
            (&LendPolicy::Always, Some(&night), "07:59:59", None, true),
            (&LendPolicy::Never, Some(&night), "23:00:00", None, false),
            (&when, Some(&night), "23:00:00", Some(&yes), true),
            (&when, Some(&night), "23:00:00", Some(&no), false),
            (&when, Some(&night), "23:00:00", None, false),
            (&when, Some(&night), "08:00:00", Some(&yes), false),
            (&when, None, "12:00:00", Some(&yes), true),
        ];
        for (policy, hours, t, latest, want) in table {
            assert_eq!(
                lends_at(policy, hours, at(t), latest),
                want,
                "{policy:?} {hours:?} {t} {latest:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_check_reports_its_exit_status_or_why_it_did_not_run() {
        assert_eq!(check("exit 0").await, CheckOutcome::Exited(0));
        assert_eq!(check("exit 3").await, CheckOutcome::Exited(3));
        assert!(
            matches!(check("kill -9 $$").await, CheckOutcome::Broken(w) if w.contains("signal"))
        );
    }
}
