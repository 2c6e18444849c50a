//! The bearer token, as the coordinator receives it: from `--token`, else `MANIFOLD_TOKEN`, else
//! the config file; a refused token explained without being echoed; a config file that cannot be
//! used named with its problem.

mod support;

use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use support::{Twin, serve};

/// The CLI with a clean environment: no coordinator, token or CA from the caller's shell, and
/// the config file `config` (written to a temporary directory; empty when None).
struct Run {
    dir: tempfile::TempDir,
    cmd: Command,
}

impl Run {
    fn new(config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, config).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_manifold"));
        cmd.env_remove("MANIFOLD_COORDINATOR")
            .env_remove("MANIFOLD_TOKEN")
            .env_remove("MANIFOLD_CA_CERT")
            .env("MANIFOLD_CONFIG", &path)
            .stdin(Stdio::null());
        Self { dir, cmd }
    }

    fn config_path(&self) -> String {
        self.dir.path().join("config.toml").display().to_string()
    }

    fn env(mut self, key: &str, value: &str) -> Self {
        self.cmd.env(key, value);
        self
    }

    async fn run(mut self, args: &[&str]) -> (Output, String) {
        self.cmd.args(args);
        let config = self.config_path();
        let out = tokio::task::spawn_blocking(move || self.cmd.output().expect("run manifold"))
            .await
            .unwrap();
        (out, config)
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The `authorization` values received since `from`, deduplicated.
fn received_since(twin: &Twin, from: usize) -> Vec<Option<String>> {
    let mut seen: Vec<Option<String>> = twin.authorizations.lock().unwrap()[from..].to_vec();
    seen.dedup();
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flag_beats_the_environment_which_beats_the_config_file() {
    let twin = Twin::new();
    let served = serve(Arc::clone(&twin)).await;
    let file = "token = \"from-file\"\n";
    let cases: [(&str, Option<&str>, bool, Option<&str>); 4] = [
        (file, Some("from-env"), true, Some("Bearer from-flag")),
        (file, Some("from-env"), false, Some("Bearer from-env")),
        (file, None, false, Some("Bearer from-file")),
        ("", None, false, None),
    ];
    for (config, env, flag, expected) in cases {
        let mut run = Run::new(config);
        if let Some(env) = env {
            run = run.env("MANIFOLD_TOKEN", env);
        }
        let mut args = vec!["--coordinator", served.address.as_str()];
        if flag {
            args.extend(["--token", "from-flag"]);
        }
        args.push("teams");
        let before = twin.authorizations.lock().unwrap().len();
        let (out, _) = run.run(&args).await;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        // Every call of the run (the leader probe and the listing) carried the same token.
        assert_eq!(
            received_since(&twin, before),
            [expected.map(str::to_owned)],
            "config {config:?}, env {env:?}, flag {flag}"
        );
        assert!(twin.authorizations.lock().unwrap().len() >= before + 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_of_a_build_carries_the_token() {
    let twin = Twin::new();
    let served = serve(Arc::clone(&twin)).await;
    let dir = support::tree(&[("Dockerfile", "FROM scratch\n")]);
    let config = format!(
        "coordinator = \"{}\"\ntoken = \"build-token\"\n",
        served.address
    );
    let (out, _) = Run::new(&config)
        .run(&[
            "build",
            "--detach",
            "-t",
            "app:1",
            "--platform",
            "amd64",
            dir.path().to_str().unwrap(),
        ])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // Probe, Has, Upload, Submit: all with the token, from the coordinator the file names.
    let all = twin.authorizations.lock().unwrap().clone();
    assert!(all.len() >= 4, "{all:?}");
    assert!(
        all.iter()
            .all(|a| a.as_deref() == Some("Bearer build-token")),
        "{all:?}"
    );
    assert_eq!(twin.submitted.lock().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_explained_without_echoing_it() {
    let twin = Twin::new();
    *twin.required_token.lock().unwrap() = Some("the-right-one".into());
    let served = serve(Arc::clone(&twin)).await;
    let secret = "wr0ng-s3cr3t-value";

    let (out, config) = Run::new("")
        .env("MANIFOLD_TOKEN", secret)
        .run(&["--coordinator", &served.address, "builds"])
        .await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "error: the coordinator at {} refused the token from MANIFOLD_TOKEN: unknown or \
             revoked token; pass --token, set MANIFOLD_TOKEN, or put token = \"...\" in {config}\n",
            served.address
        )
    );
    assert!(!stderr.contains(secret) && !text(&out.stdout).contains(secret));

    // From the file, the message names the file; without any token it says one is needed.
    let (out, config) = Run::new(&format!("token = \"{secret}\"\n"))
        .run(&["--coordinator", &served.address, "teams"])
        .await;
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "refused the token from {config}: unknown or revoked token"
        )),
        "{stderr}"
    );
    assert!(!stderr.contains(secret), "{stderr}");
    let (out, _) = Run::new("")
        .run(&["--coordinator", &served.address, "queue"])
        .await;
    assert!(
        text(&out.stderr).starts_with(&format!(
            "error: the coordinator at {} requires a token: this coordinator requires a token; \
             pass --token",
            served.address
        )),
        "{}",
        text(&out.stderr)
    );

    // The right token works.
    let (out, _) = Run::new("")
        .run(&[
            "--coordinator",
            &served.address,
            "--token",
            "the-right-one",
            "queue",
        ])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "nothing is queued\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permission_denied_shows_what_the_coordinator_does_not_allow() {
    let twin = Twin::new();
    *twin.refuse_listings.lock().unwrap() = Some(tonic::Status::permission_denied(
        "token `ci-web` (team web) may not see the queue of other teams",
    ));
    let served = serve(Arc::clone(&twin)).await;
    let (out, _) = Run::new("")
        .run(&["--coordinator", &served.address, "--token", "t", "queue"])
        .await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "error: listing the queue: permission denied: token `ci-web` (team web) may not see the \
         queue of other teams\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_that_cannot_be_used_is_named_with_its_problem() {
    let (out, config) = Run::new("token = \"s3cr3t-t0ken\"\ncolour = \"blue\"\n")
        .run(&["--coordinator", "http://127.0.0.1:1", "teams"])
        .await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "error: config file `{config}`: line 2, column 1: unknown field `colour`, expected one of"
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cr3t"), "{stderr}");

    let (out, config) = Run::new("token = s3cr3t-t0ken\n")
        .run(&["--coordinator", "http://127.0.0.1:1", "teams"])
        .await;
    let stderr = text(&out.stderr);
    assert_eq!(
        stderr,
        format!(
            "error: config file `{config}`: line 1, column 9: `token` must be a string in quotes, \
             e.g. token = \"...\" (its value is not shown)\n"
        )
    );

    // Commands that do not talk to the coordinator do not read it.
    let (out, _) = Run::new("not toml at all [")
        .run(&["completion", "bash"])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_never_shows_in_parse_errors_or_help() {
    let secret = "s3cr3t-t0ken";
    for args in [
        vec!["--token", secret, "teams", "--format", "yaml"],
        vec!["--token", secret, "nosuchcommand"],
        vec!["--token", secret, "--help"],
    ] {
        let (out, _) = Run::new("")
            .env("MANIFOLD_TOKEN", "env-s3cr3t")
            .run(&args)
            .await;
        let all = text(&out.stdout) + &text(&out.stderr);
        assert!(
            !all.contains(secret) && !all.contains("env-s3cr3t"),
            "{args:?}: {all}"
        );
    }
}
