//! The files that install Manifold as a service are checked by the tools that will read them:
//! `systemd-analyze verify` and `security` on the systemd units, the `plist` crate on the launchd
//! agent the macOS installer writes, `docker compose config` on the compose file. Each check is
//! also shown a broken file and must reject it, and every tool must be installed (`.ci/install`):
//! a missing tool fails the test rather than skipping it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use manifold_tests::{Env, bin, wait_until};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// Runs a tool, failing the test with a pointer to `.ci/install` when it is not installed.
fn tool(program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} ({e}): `bash .ci/install` installs it"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

const UNITS: [&str; 2] = ["manifold-coordinator.service", "manifold-worker.service"];

/// A file system root for `systemd-analyze --root`: the host's system units (targets such as
/// sysinit.target), our units in /etc/systemd/system, their EnvironmentFile from the examples, and
/// an executable at each ExecStart path.
fn systemd_root(units: &[(&str, String)]) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let system_units = ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .into_iter()
        .find(|d| Path::new(d).join("sysinit.target").exists())
        .expect("no systemd units on this machine: `bash .ci/install` installs Debian's systemd");
    std::fs::create_dir_all(r.join("usr/lib/systemd")).unwrap();
    let copied = tool(
        "cp",
        &[
            "-a",
            system_units,
            r.join("usr/lib/systemd/system").to_str().unwrap(),
        ],
    );
    assert!(copied.status.success(), "{}", text(&copied.stderr));
    for dir in ["etc/systemd/system", "etc/manifold", "usr/local/bin", "bin"] {
        std::fs::create_dir_all(r.join(dir)).unwrap();
    }
    let deploy = repo().join("deploy/systemd");
    for (env, example) in [
        ("coordinator.env", "coordinator.env.example"),
        ("worker.env", "worker.env.example"),
    ] {
        std::fs::copy(deploy.join(example), r.join("etc/manifold").join(env)).unwrap();
    }
    for exe in [
        "usr/local/bin/manifold-coordinator",
        "usr/local/bin/manifold-worker",
        "bin/kill",
    ] {
        std::fs::write(r.join(exe), "#!/bin/sh\n").unwrap();
        let chmod = tool("chmod", &["755", r.join(exe).to_str().unwrap()]);
        assert!(chmod.status.success());
    }
    for (name, body) in units {
        std::fs::write(r.join("etc/systemd/system").join(name), body).unwrap();
    }
    root
}

/// `systemd-analyze verify`'s complaints about our units: empty when they are clean. Parse
/// problems are only warnings to systemd (exit 0), so stderr is what counts.
fn systemd_verify(units: &[(&str, String)]) -> String {
    let root = systemd_root(units);
    let root_arg = format!("--root={}", root.path().display());
    let mut args = vec!["verify", root_arg.as_str(), "--man=no"];
    args.extend(units.iter().map(|(name, _)| *name));
    let out = tool("systemd-analyze", &args);
    let mut complaints = text(&out.stderr);
    if !out.status.success() {
        complaints.push_str(&format!("\nexit status {}", out.status));
    }
    complaints.trim().to_owned()
}

fn our_units() -> Vec<(&'static str, String)> {
    UNITS
        .iter()
        .map(|u| {
            let body = std::fs::read_to_string(repo().join("deploy/systemd").join(u)).unwrap();
            (*u, body)
        })
        .collect()
}

/// The value of `Key=` in a unit (the last one, as systemd takes it).
fn directive<'a>(unit: &'a str, key: &str) -> Option<&'a str> {
    unit.lines()
        .rev()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let units = our_units();
    assert_eq!(
        systemd_verify(&units),
        "",
        "systemd-analyze verify complained"
    );

    // The check is able to fail: a misspelt setting and a bad value are reported.
    let mut broken = units.clone();
    broken[1].1 = broken[1]
        .1
        .replace("ProtectSystem=strict", "ProtectSystem=strickt")
        .replace("RestartSec=5s", "RestartSek=5s");
    let complaints = systemd_verify(&broken);
    assert!(
        // systemd versions word it differently ("ProtectSystem=strickt" or "... protect system
        // value, ignoring: strickt"); both name the bad value.
        complaints.contains("strickt") && complaints.contains("RestartSek"),
        "a broken unit passed: {complaints:?}"
    );
}

#[test]
fn systemd_units_are_hardened_and_drain_on_stop() {
    let units = our_units();
    let root = systemd_root(&units);
    for (name, body) in &units {
        // systemd's own exposure score (0 = locked down, 10 = unprotected): at most 2.0.
        let out = tool(
            "systemd-analyze",
            &[
                "security",
                "--offline=true",
                &format!("--root={}", root.path().display()),
                "--threshold=20",
                "--no-pager",
                name,
            ],
        );
        assert!(
            out.status.success(),
            "{name} is exposed above 2.0 per systemd-analyze security:\n{}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        for (key, want) in [
            ("User", "manifold"),
            ("ProtectSystem", "strict"),
            ("NoNewPrivileges", "yes"),
            ("Restart", "on-failure"),
            ("KillSignal", "SIGTERM"),
            ("KillMode", "mixed"),
        ] {
            assert_eq!(directive(body, key), Some(want), "{name}: {key}=");
        }
    }
    // The state dir is the coordinator's only writable path, and the one it is told to use.
    let coordinator = &units[0].1;
    assert_eq!(
        directive(coordinator, "StateDirectory"),
        Some("manifold-coordinator")
    );
    assert_eq!(
        directive(coordinator, "Environment"),
        Some("MANIFOLD_STATE_DIR=/var/lib/manifold-coordinator")
    );
    // A worker's drain waits for its running jobs: longer than the default build timeout (1h).
    let worker = &units[1].1;
    assert_eq!(directive(worker, "TimeoutStopSec"), Some("65min"));
    assert_eq!(directive(worker, "CacheDirectory"), Some("manifold-worker"));
    assert!(
        directive(worker, "ExecStart")
            .unwrap()
            .contains("--cache-dir /var/cache/manifold-worker")
    );
}

/// Every `--flag` in `args` is one the binary documents in its `--help`.
fn assert_flags_exist(binary: &str, args: &str, origin: &str) {
    let help = tool(bin(binary).to_str().unwrap(), &["--help"]);
    let help = text(&help.stdout);
    for flag in args
        .split_whitespace()
        .filter(|a| a.starts_with("--"))
        .map(|a| a.split('=').next().unwrap())
    {
        assert!(
            help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
            "{origin} uses {flag}, which `{binary} --help` does not list"
        );
    }
}

#[test]
fn service_files_use_flags_the_binaries_have() {
    let deploy = repo().join("deploy");
    let worker_env = std::fs::read_to_string(deploy.join("systemd/worker.env.example")).unwrap();
    let worker_args = directive(&worker_env, "MANIFOLD_WORKER_ARGS").unwrap();
    assert_flags_exist("manifold-worker", worker_args, "worker.env.example");
    let unit = &our_units()[1].1;
    assert_flags_exist(
        "manifold-worker",
        directive(unit, "ExecStart").unwrap(),
        "manifold-worker.service",
    );
    let plist = std::fs::read_to_string(deploy.join("macos/dev.manifold.worker.plist")).unwrap();
    let plist_args: String = plist
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("<string>--")?
                .strip_suffix("</string>")
        })
        .map(|f| format!("--{f} "))
        .collect();
    assert!(!plist_args.is_empty());
    assert_flags_exist("manifold-worker", &plist_args, "dev.manifold.worker.plist");
    let compose = std::fs::read_to_string(deploy.join("compose/compose.yaml")).unwrap();
    let compose_args: String = compose
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- --"))
        .map(|f| format!("--{f} "))
        .collect();
    assert!(!compose_args.is_empty());
    assert_flags_exist("manifold-coordinator", &compose_args, "compose.yaml");
}

/// Runs the macOS installer with `--no-load` under a fake home and returns (home, plist path).
fn install_mac_worker(extra: &[&str]) -> (tempfile::TempDir, std::process::Output) {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    for f in ["ca.pem", "worker.pem", "worker.key", "manifold-worker"] {
        std::fs::write(h.join(f), format!("{f}\n")).unwrap();
    }
    assert!(
        tool(
            "chmod",
            &["755", h.join("manifold-worker").to_str().unwrap()]
        )
        .status
        .success()
    );
    let p = |f: &str| h.join(f).to_str().unwrap().to_owned();
    let mut args = vec![
        repo()
            .join("deploy/macos/install-worker.sh")
            .to_str()
            .unwrap()
            .to_owned(),
        "--no-load".into(),
        "--coordinator".into(),
        "https://build-coordinator.example:7700".into(),
        "--name".into(),
        "mac-anna".into(),
        "--slots".into(),
        "2".into(),
        "--ca-cert".into(),
        p("ca.pem"),
        "--cert".into(),
        p("worker.pem"),
        "--key".into(),
        p("worker.key"),
        "--binary".into(),
        p("manifold-worker"),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let out = Command::new("sh")
        .args(&args)
        .env("HOME", h)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (home, out)
}

#[test]
fn mac_installer_writes_a_launchd_agent_that_parses() {
    // The template itself is a well-formed plist.
    let template = repo().join("deploy/macos/dev.manifold.worker.plist");
    plist::Value::from_file(&template).expect("the template parses as a plist");

    let (home, out) = install_mac_worker(&[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let h = home.path();
    let agent = h.join("Library/LaunchAgents/dev.manifold.worker.plist");
    let raw = std::fs::read_to_string(&agent).unwrap();
    assert!(!raw.contains('@'), "a placeholder is left: {raw}");
    let value = plist::Value::from_file(&agent).expect("the installed agent parses as a plist");
    let d = value.as_dictionary().expect("a dictionary at the top");
    assert_eq!(
        d.get("Label").and_then(|v| v.as_string()),
        Some("dev.manifold.worker")
    );
    let prefix = h.join("Library/Application Support/Manifold");
    let program: Vec<&str> = d
        .get("ProgramArguments")
        .and_then(|v| v.as_array())
        .unwrap()
        .iter()
        .map(|v| v.as_string().unwrap())
        .collect();
    let launcher = prefix.join("bin/manifold-worker-launch");
    let cache = prefix.join("cache");
    assert_eq!(
        program,
        [
            launcher.to_str().unwrap(),
            "--name",
            "mac-anna",
            "--slots",
            "2",
            "--cache-dir",
            cache.to_str().unwrap(),
        ]
    );
    assert!(launcher.exists() && prefix.join("bin/manifold-worker").exists());
    // Restarted when it fails, not after a drain (exit 0); killed only long after SIGTERM.
    assert_eq!(d.get("RunAtLoad").and_then(|v| v.as_boolean()), Some(true));
    let keep_alive = d.get("KeepAlive").and_then(|v| v.as_dictionary()).unwrap();
    assert_eq!(
        keep_alive
            .get("SuccessfulExit")
            .and_then(|v| v.as_boolean()),
        Some(false)
    );
    let exit_timeout = d
        .get("ExitTimeOut")
        .and_then(|v| v.as_signed_integer())
        .unwrap();
    assert!(exit_timeout > 3600, "ExitTimeOut {exit_timeout}s");
    let env = d
        .get("EnvironmentVariables")
        .and_then(|v| v.as_dictionary())
        .unwrap();
    let var = |k: &str| env.get(k).and_then(|v| v.as_string()).unwrap().to_owned();
    assert_eq!(
        var("MANIFOLD_COORDINATOR"),
        "https://build-coordinator.example:7700"
    );
    assert_eq!(
        var("DOCKER_HOST"),
        format!("unix://{}/.docker/run/docker.sock", h.display())
    );
    for (k, file, content) in [
        ("MANIFOLD_CA_CERT", "ca.pem", "ca.pem\n"),
        ("MANIFOLD_WORKER_CERT", "worker.pem", "worker.pem\n"),
        ("MANIFOLD_WORKER_KEY", "worker.key", "worker.key\n"),
    ] {
        let path = PathBuf::from(var(k));
        assert_eq!(path, prefix.join("certs").join(file));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), content);
    }
    use std::os::unix::fs::PermissionsExt as _;
    let key_mode = std::fs::metadata(prefix.join("certs/worker.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
}

#[test]
fn mac_installer_refuses_bad_values_naming_them() {
    let (_home, out) = install_mac_worker(&["--slots", "zero"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--slots `zero` is not a positive number"),
        "{}",
        text(&out.stderr)
    );
    let (_home, out) = install_mac_worker(&["--name", "mac anna"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--name `mac anna`"));
}

#[tokio::test]
async fn mac_launcher_waits_for_the_docker_socket() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sock = d.join("docker.sock");
    let seen = d.join("worker-args");
    let worker = d.join("fake-worker");
    std::fs::write(
        &worker,
        format!("#!/bin/sh\necho \"$@\" >{}\n", seen.display()),
    )
    .unwrap();
    assert!(
        tool("chmod", &["755", worker.to_str().unwrap()])
            .status
            .success()
    );
    let log = d.join("launch.log");
    let mut launcher =
        tokio::process::Command::new(repo().join("deploy/macos/manifold-worker-launch"))
            .args(["--name", "mac-anna"])
            .env("DOCKER_HOST", format!("unix://{}", sock.display()))
            .env("MANIFOLD_WORKER_BIN", &worker)
            .env("MANIFOLD_DOCKER_POLL", "1")
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
    wait_until(
        Duration::from_secs(10),
        "the launcher to say it waits",
        || {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            async move { log.contains("waiting for Docker").then_some(()) }
        },
    )
    .await
    .unwrap();
    assert!(!seen.exists(), "the worker started before Docker answered");
    assert!(launcher.try_wait().unwrap().is_none());

    // Docker "starts": the socket appears, and a real daemon answers on it.
    let docker = Env::from_env().amd64_docker;
    let real = docker
        .strip_prefix("unix://")
        .expect("the amd64 test daemon is on a unix socket");
    std::os::unix::fs::symlink(real, &sock).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), launcher.wait())
        .await
        .expect("the launcher started the worker once Docker answered")
        .unwrap();
    assert!(status.success());
    assert_eq!(std::fs::read_to_string(&seen).unwrap(), "--name mac-anna\n");
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("Docker answers")
    );
}

fn compose_config(file: &Path) -> std::process::Output {
    tool(
        "docker",
        &["compose", "-f", file.to_str().unwrap(), "config", "--quiet"],
    )
}

#[test]
fn compose_file_passes_docker_compose_config() {
    let file = repo().join("deploy/compose/compose.yaml");
    let out = compose_config(&file);
    assert!(
        out.status.success(),
        "docker compose config: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    // The check is able to fail: a misspelt key is refused.
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("compose.yaml");
    let body = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &broken,
        body.replace("restart: on-failure", "restrat: on-failure"),
    )
    .unwrap();
    let out = compose_config(&broken);
    assert!(!out.status.success(), "a misspelt key passed");
    assert!(
        text(&out.stderr).contains("restrat"),
        "{}",
        text(&out.stderr)
    );
}
