//! `manifold manifest` and `manifold completion` where no registry answers: flags are checked
//! before anything is dialled, an unreachable registry is named with what to check, docker's
//! staging commands explain themselves, and completions cover every command.

use std::process::{Command, Output};

fn manifold(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_manifold"))
        .args(args)
        .env("DOCKER_CONFIG", "/nonexistent-docker-config")
        .output()
        .expect("run manifold")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn an_unreachable_registry_is_named_with_what_to_check() {
    let out = manifold(&["manifest", "inspect", "127.0.0.1:1/app:1.0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert_eq!(
        stderr(&out),
        "error: cannot reach registry 127.0.0.1:1 while reading 127.0.0.1:1/app:1.0: connection \
         refused; check the address and that the registry is running\n"
    );
}

#[test]
fn bad_flags_fail_before_any_registry_is_dialled() {
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "manifest",
                "inspect",
                "127.0.0.1:1/app:1.0",
                "--platform",
                "linux/&arm",
            ],
            "error: --platform: invalid platform `linux/&arm`",
        ),
        (
            &[
                "manifest",
                "create",
                "127.0.0.1:1/app:1.0",
                "127.0.0.1:1/app:a",
                "--annotate",
                "x",
            ],
            "error: --annotate `x`: it has no `=`",
        ),
        (
            &[
                "manifest",
                "create",
                "127.0.0.1:1/app:1.0",
                "--from-arch-tags",
                "--tag-template",
                "{tag}",
            ],
            "error: --tag-template: tag template `{tag}` does not name the architecture",
        ),
        (
            &["manifest", "create", "127.0.0.1:1/app:1.0"],
            "error: no source: name the images to merge",
        ),
        (
            &["manifest", "push", "127.0.0.1:1/app:1.0"],
            "error: nothing to push: manifold keeps no local copy of lists",
        ),
        (
            &[
                "manifest",
                "create",
                "127.0.0.1:1/app@sha256:0000000000000000000000000000000000000000000000000000000000000000",
                "127.0.0.1:1/app:a",
            ],
            "error: target `127.0.0.1:1/app@sha256:0000000000000000000000000000000000000000000000000000000000000000` must be a tag",
        ),
    ];
    for (args, expected) in cases {
        let out = manifold(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).starts_with(expected),
            "{args:?}: expected `{expected}`, got: {}",
            stderr(&out)
        );
        assert!(
            !stderr(&out).contains("cannot reach"),
            "{args:?} dialled a registry: {}",
            stderr(&out)
        );
    }
}

#[test]
fn rm_removes_nothing_and_says_why() {
    let out = manifold(&["manifest", "rm", "127.0.0.1:1/app:1.0"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
    assert_eq!(
        stderr(&out),
        "nothing to remove: manifold keeps no local copy of `127.0.0.1:1/app:1.0` (`manifest \
         create --push` writes straight to the registry); the registry's copy is untouched\n"
    );
}

#[test]
fn completions_cover_every_command_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = manifold(&["completion", shell]);
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        let script = String::from_utf8(out.stdout).unwrap();
        for word in [
            "manifest",
            "inspect",
            "create",
            "insecure-registry",
            "workers",
            "format",
        ] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
    }
    let out = manifold(&["completion", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
}
