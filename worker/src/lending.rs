//! Whether this worker lends itself to other teams right now (`--lend always|never|when CMD`).
//!
//! A worker owned by a team (its certificate names one) always runs that team's jobs; lending
//! decides whether other teams' jobs may run on it too. `when CMD` runs `sh -c CMD` every
//! `--lend-check-interval` and lends while it exits 0 (a script reading a Mac's idle time or power
//! state, say). A check that cannot run, is killed by a signal or takes longer than
//! [`CHECK_TIMEOUT`] counts as "do not lend": the owner's machine is kept for the owner when in
//! doubt. The answer goes to the coordinator in every heartbeat; a worker without owner that does
//! not lend takes no job at all.

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Longest a `--lend when` check may run.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(10);
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

/// How one run of the `--lend when` command ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckOutcome {
    /// It exited with this code.
    Exited(i32),
    /// It could not run, was killed by a signal, or timed out: why.
    Broken(String),
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

/// Keeps `lending` up to date under `policy`, checking every `interval` until `stop`; each change
/// is logged once.
pub async fn watch_lending(
    policy: LendPolicy,
    interval: Duration,
    lending: watch::Sender<bool>,
    stop: CancellationToken,
) {
    let LendPolicy::When { command } = &policy else {
        lending.send_replace(lends(&policy, None));
        return;
    };
    loop {
        let outcome = check(command).await;
        let now = lends(&policy, Some(&outcome));
        lending.send_if_modified(|current| {
            if *current == now {
                return false;
            }
            match &outcome {
                CheckOutcome::Exited(0) => {
                    tracing::info!(%command, "lending: other teams' jobs may run here")
                }
                CheckOutcome::Exited(code) => {
                    tracing::info!(%command, code, "not lending: only the owner team's jobs run here")
                }
                CheckOutcome::Broken(why) => {
                    tracing::warn!(%why, "not lending: the --lend when check failed")
                }
            }
            *current = now;
            true
        });
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
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

    #[tokio::test]
    async fn a_check_reports_its_exit_status_or_why_it_did_not_run() {
        assert_eq!(check("exit 0").await, CheckOutcome::Exited(0));
        assert_eq!(check("exit 3").await, CheckOutcome::Exited(3));
        assert!(
            matches!(check("kill -9 $$").await, CheckOutcome::Broken(w) if w.contains("signal"))
        );
    }
}
