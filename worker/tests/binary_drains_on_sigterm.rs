//! The real `manifold-worker` binary: its flags reach the hello, bad flags are refused naming the
//! value, SIGTERM drains (running job finishes, new ones are refused, Goodbye, exit 0), and a
//! coordinator refusing the worker's identity makes it exit non-zero with a hint.

mod support;

use std::process::Stdio;
use std::time::Duration;

use manifold_proto::v1;
use manifold_proto::v1::worker_message::Msg as FromWorker;
use support::coordinator::*;
use support::*;

const BINARY: &str = env!("CARGO_BIN_EXE_manifold-worker");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_running_job_then_the_worker_says_goodbye_and_exits_0() {
    let (fake, address, mut sessions) = Fake::start().await;
    let cache = tempfile::tempdir().unwrap();
    let name = format!("binary-{}", uuid::Uuid::new_v4());
    let mut child = tokio::process::Command::new(BINARY)
        .args([
            "--coordinator",
            &format!("http://{address}"),
            "--docker-host",
            &amd64_docker(),
            "--name",
            &name,
            "--slots",
            "3",
            "--label",
            "team=web",
            "--label",
            "zone=lab",
            "--cache-dir",
        ])
        .arg(cache.path())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    // The worker's log, echoed for failures, and watched for the start of the drain.
    let (log_tx, mut log_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let stderr = child.stderr.take().unwrap();
    tokio::spawn(async move {
        use tokio::io::AsyncBufReadExt as _;
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("worker: {line}");
            let _ = log_tx.send(line);
        }
    });

    let (mut session, hello) = attach(&mut sessions).await;
    assert_eq!(hello.name, name);
    assert_eq!(hello.slots, 3);
    assert_eq!(hello.labels.len(), 2);
    assert_eq!(hello.labels["zone"], "lab");
    assert!(!hello.emulated);
    send(&session, welcome(500)).await;

    let ctx = context(&[(
        "Dockerfile",
        format!(
            "FROM {}\nRUN echo started-{} && sleep 2\n",
            base_image(),
            uuid::Uuid::new_v4()
        ),
    )]);
    let digest = fake.serve_context(&ctx);
    let job = new_job_id();
    send(
        &session,
        assign(&job, "linux/amd64", &digest, &unique_repository("sigterm")),
    )
    .await;
    let mut lines = Vec::new();
    until(&mut session, &mut lines, accepted(&job)).await;
    until(&mut session, &mut lines, logged("started-")).await;

    let pid = child.id().unwrap().to_string();
    let (killed, _, err) = command("kill", &["-TERM", &pid]);
    assert!(killed, "{err}");
    let draining = tokio::time::timeout(PATIENCE, async {
        while let Some(line) = log_rx.recv().await {
            if line.contains("draining") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(draining, Ok(true), "the worker never said it was draining");
    let late = new_job_id();
    send(
        &session,
        assign(&late, "linux/amd64", &digest, &unique_repository("sigterm")),
    )
    .await;
    let mut results = Vec::new();
    until(&mut session, &mut lines, |m| {
        if let FromWorker::Result(r) = m {
            results.push(r.clone());
        }
        matches!(m, FromWorker::Goodbye(_)).then_some(())
    })
    .await;
    // A coordinator ends the stream on Goodbye; the worker then exits at once.
    drop(session);
    let outcome = |id: &str| {
        results
            .iter()
            .find(|r| r.job_id == id)
            .and_then(|r| r.outcome.clone())
            .unwrap_or_else(|| panic!("no result for {id}: {results:?}"))
    };
    match outcome(&late) {
        v1::job_result::Outcome::Failure(f) => {
            assert!(
                f.retryable && f.message.contains("worker draining"),
                "{f:?}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(outcome(&job), v1::job_result::Outcome::Pushed(_)),
        "{results:?}"
    );
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the worker did not exit after its goodbye")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_the_coordinator_refuses_exits_non_zero_saying_what_to_do() {
    let (fake, address, _sessions) = Fake::start().await;
    fake.refuse_next_attach(tonic::Status::unauthenticated(
        "no client certificate was presented",
    ));
    let cache = tempfile::tempdir().unwrap();
    let child = tokio::process::Command::new(BINARY)
        .args([
            "--coordinator",
            &format!("http://{address}"),
            "--docker-host",
            &amd64_docker(),
            "--name",
            "refused-1",
            "--reconnect-max",
            "200ms",
            "--cache-dir",
        ])
        .arg(cache.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the refused worker kept running")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no client certificate was presented")
            && stderr.contains("--cert/--key")
            && stderr.contains("dev-ca --worker refused-1"),
        "{stderr}"
    );
    assert_eq!(fake.attaches(), 1);
}

#[test]
fn bad_flags_are_refused_naming_the_value() {
    for (args, needle) in [
        (&["--slots", "0"][..], "0"),
        (&["--label", "novalue"][..], "`novalue`"),
        (&["--platform", "linux/&arm"][..], "`linux/&arm`"),
        (&["--coordinator", "not a url"][..], "`not a url`"),
        (&["--cert", "w.pem"][..], "--cert w.pem given without --key"),
        (&["--key", "w.key"][..], "--key w.key given without --cert"),
        (
            &["--coordinator", "http://192.0.2.1:7700"][..],
            "refusing plaintext `http://192.0.2.1:7700`",
        ),
        (
            &[
                "--coordinator",
                "https://127.0.0.1:1",
                "--ca-cert",
                "/nonexistent/ca.pem",
            ][..],
            "cannot read the CA certificate (--ca-cert) /nonexistent/ca.pem",
        ),
    ] {
        let (ok, _, err) = command(BINARY, args);
        assert!(!ok, "{args:?} was accepted");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}
