//! The `manifold` binary without a coordinator: a clear message naming the address and the fix,
//! and a non-zero exit; flags checked locally fail before anything is dialled.

mod support;

use std::process::{Command, Output};

const UNREACHABLE: &str = "http://127.0.0.1:1";

fn manifold(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_manifold"));
    // Nothing from the caller's shell or config file: no token, no CA.
    cmd.args(args)
        .env_remove("MANIFOLD_COORDINATOR")
        .env_remove("MANIFOLD_TOKEN")
        .env_remove("MANIFOLD_CA_CERT")
        .env("MANIFOLD_CONFIG", "/dev/null");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run manifold")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn an_unreachable_coordinator_is_named_with_what_to_do() {
    let out = manifold(&["--coordinator", UNREACHABLE, "workers"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert_eq!(
        stderr(&out),
        "error: cannot reach the coordinator at http://127.0.0.1:1: connection refused; \
         is manifold-coordinator running? set --coordinator or MANIFOLD_COORDINATOR\n"
    );
}

#[test]
fn the_coordinator_can_come_from_the_environment() {
    let out = manifold(&["builds"], &[("MANIFOLD_COORDINATOR", UNREACHABLE)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out)
            .contains("cannot reach the coordinator at http://127.0.0.1:1: connection refused"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn build_reports_the_unreachable_coordinator_after_checking_its_flags() {
    let dir = support::tree(&[("Dockerfile", "FROM scratch\n")]);
    let ctx = dir.path().to_str().unwrap();
    let out = manifold(
        &[
            "build",
            "--coordinator",
            UNREACHABLE,
            "-t",
            "reg/app:1",
            "--platform",
            "linux/amd64,linux/arm64",
            ctx,
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with("error: cannot reach the coordinator at http://127.0.0.1:1"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_bad_platform_fails_before_the_coordinator_is_contacted() {
    let dir = support::tree(&[("Dockerfile", "FROM scratch\n")]);
    let ctx = dir.path().to_str().unwrap();
    let out = manifold(
        &[
            "--coordinator",
            UNREACHABLE,
            "build",
            "-t",
            "reg/app:1",
            "--platform",
            "linux/amd64,linux/&arm",
            ctx,
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "error: --platform: invalid platform `linux/&arm`: `&arm` is not a valid architecture: use \
         letters, digits, `_`, `.` and `-`; expected os/arch[/variant], e.g. linux/amd64, \
         linux/arm64, linux/arm/v7\n"
    );
}

#[test]
fn a_missing_dockerfile_fails_before_the_coordinator_is_contacted() {
    let dir = support::tree(&[("src/app.py", "print()\n")]);
    let ctx = dir.path().to_str().unwrap();
    let out = manifold(
        &[
            "--coordinator",
            UNREACHABLE,
            "build",
            "-t",
            "reg/app:1",
            "--platform",
            "arm64",
            "-f",
            "linux/arm64=Dockerfile.arm64",
            ctx,
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!(
            "error: dockerfile `Dockerfile.arm64` not found in context `{ctx}`: pass -f PATH\n"
        )
    );
}

#[test]
fn a_bad_build_id_is_refused_by_the_parser() {
    let out = manifold(&["--coordinator", UNREACHABLE, "cancel", "abc"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("`abc` is not a build id: expected a UUID"),
        "{}",
        stderr(&out)
    );
}
