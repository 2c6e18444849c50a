//! How the CLI reaches a coordinator: https:// with the CA given (`--ca-cert`, `MANIFOLD_CA_CERT`
//! or the config file's `ca_cert`), a clear message naming `--ca-cert` when the certificate is not
//! trusted, and plain http:// refused to any host but loopback before anything is dialled.

mod support;

use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use support::{Pki, Twin, serve, serve_tls};

fn manifold(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_manifold"));
    cmd.args(args)
        .env_remove("MANIFOLD_COORDINATOR")
        .env_remove("MANIFOLD_TOKEN")
        .env_remove("MANIFOLD_CA_CERT")
        .env("MANIFOLD_CONFIG", "/dev/null")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

async fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = manifold(args, env);
    tokio::task::spawn_blocking(move || cmd.output().expect("run manifold"))
        .await
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn team(name: &str) -> manifold_proto::v1::TeamInfo {
    manifold_proto::v1::TeamInfo {
        name: name.into(),
        weight: 1,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_another_host_is_refused_before_anything_is_dialled() {
    let twin = Twin::new();
    let served = serve(Arc::clone(&twin)).await;
    let out = run(
        &["--coordinator", "http://build.example.com:7700", "workers"],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "error: refusing plain http:// to `build.example.com` in \
         `http://build.example.com:7700`: only loopback coordinators may be reached without TLS; \
         use https:// (https://build.example.com:7700)\n"
    );
    // In a list, the loopback coordinator is not dialled either: the whole list is checked
    // first. A bare host:port means http://.
    let list = format!("{},10.1.2.3:7700", served.address);
    let out = run(&["--coordinator", &list, "teams"], &[]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr)
            .starts_with("error: refusing plain http:// to `10.1.2.3` in `http://10.1.2.3:7700`"),
        "{}",
        text(&out.stderr)
    );
    assert!(twin.authorizations.lock().unwrap().is_empty());
    // Loopback in any spelling is fine.
    let port = served.address.rsplit(':').next().unwrap();
    for host in ["localhost", "127.0.0.1"] {
        let out = run(
            &["--coordinator", &format!("http://{host}:{port}"), "teams"],
            &[],
        )
        .await;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_the_farm_ca_connects_and_carries_the_token() {
    let pki = Pki::new();
    let twin = Twin::new();
    twin.teams.lock().unwrap().push(team("web"));
    let served = serve_tls(Arc::clone(&twin), &pki).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = pki.write_ca(dir.path(), "ca.pem");

    let out = run(
        &[
            "--coordinator",
            &served.address,
            "--ca-cert",
            ca.to_str().unwrap(),
            "--token",
            "tls-token",
            "teams",
        ],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("\nweb "),
        "{}",
        text(&out.stdout)
    );
    let seen = twin.authorizations.lock().unwrap().clone();
    assert!(!seen.is_empty());
    assert!(
        seen.iter()
            .all(|a| a.as_deref() == Some("Bearer tls-token")),
        "{seen:?}"
    );

    // The CA from the environment.
    let out = run(
        &["--coordinator", &served.address, "teams"],
        &[("MANIFOLD_CA_CERT", ca.to_str().unwrap())],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_file_can_name_an_https_coordinator_its_ca_and_a_token() {
    let pki = Pki::new();
    let twin = Twin::new();
    let served = serve_tls(Arc::clone(&twin), &pki).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("pki")).unwrap();
    pki.write_ca(&dir.path().join("pki"), "farm-ca.pem");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "coordinator = \"{}\"\nca_cert = \"pki/farm-ca.pem\"\ntoken = \"file-token\"\n",
            served.address
        ),
    )
    .unwrap();
    // Run from elsewhere: ca_cert is relative to the file, not to the working directory.
    let out = run(&["queue"], &[("MANIFOLD_CONFIG", config.to_str().unwrap())]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "nothing is queued\n");
    assert_eq!(
        twin.authorizations
            .lock()
            .unwrap()
            .last()
            .cloned()
            .flatten(),
        Some("Bearer file-token".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_names_the_address_and_suggests_ca_cert() {
    let pki = Pki::new();
    let twin = Twin::new();
    let served = serve_tls(Arc::clone(&twin), &pki).await;

    // No CA given: the system's roots do not know the farm's CA.
    let out = run(&["--coordinator", &served.address, "teams"], &[]).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "error: TLS handshake with the coordinator at {} failed: ",
            served.address
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("pass --ca-cert PATH (or set MANIFOLD_CA_CERT, or put ca_cert = \"PATH\""),
        "{stderr}"
    );

    // Another CA given: it is named. A CA of another name is unknown; one of the same name
    // is found but its signature does not match.
    let dir = tempfile::tempdir().unwrap();
    for (other, reason) in [
        (
            Pki::named("another CA"),
            "its certificate is signed by an unknown CA",
        ),
        (
            Pki::new(),
            "its certificate is signed by an unknown CA (one named like a trusted CA)",
        ),
    ] {
        let other = other.write_ca(dir.path(), "other-ca.pem");
        let out = run(
            &[
                "--coordinator",
                &served.address,
                "--ca-cert",
                other.to_str().unwrap(),
                "teams",
            ],
            &[],
        )
        .await;
        assert_eq!(
            text(&out.stderr),
            format!(
                "error: TLS handshake with the coordinator at {} failed: {reason}; check that \
                 `{}` (from --ca-cert) is the CA that signed the coordinator's certificate\n",
                served.address,
                other.display()
            )
        );
    }
    assert!(
        twin.authorizations.lock().unwrap().is_empty(),
        "no call got through"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_to_a_plaintext_coordinator_says_it_does_not_speak_tls() {
    let twin = Twin::new();
    let served = serve(Arc::clone(&twin)).await;
    let https = served.address.replace("http://", "https://");
    let out = run(&["--coordinator", &https, "teams"], &[]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!(
            "error: TLS handshake with the coordinator at {https} failed: the server did not \
             answer with TLS; check that the coordinator serves TLS at this address\n"
        )
    );
}
