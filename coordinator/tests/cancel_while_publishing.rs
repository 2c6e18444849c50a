//! A build cancelled while its manifest list is being pushed writes no tag: the push stops where
//! it is. The registry here is a scripted one on 127.0.0.1 that answers `GET /v2/` (the first
//! request of a list push: is the registry open, `registry::session::open`) slowly, so the cancel
//! lands before the tag write; it records every request, and `CLOSED AFTER GET /v2/` when a
//! client closes a connection on which it asked that, and the test waits on that record. (The
//! push no longer checks children the coordinator verified before the PUT: the registry does.)

use std::sync::Arc;
use std::time::Duration;

use manifold_coordinator::access::Caller;
use manifold_coordinator::build::{BuildRequest, BuildState};
use manifold_coordinator::farm::{FarmConfig, JobOutcome, ToWorker};

mod support;

use support::{FarmFixture, amd64_hello};

/// How long the scripted registry takes to answer `GET /v2/`.
const SLOW: Duration = Duration::from_millis(1500);

/// Request lines (`METHOD PATH`) the scripted registry received, and `CLOSED AFTER GET /v2/` for
/// each connection with that request that the client closed; a watch, so the test can wait for one.
type Seen = Arc<tokio::sync::watch::Sender<Vec<String>>>;

/// Waits until the scripted registry has seen a record for which `wanted` holds (10 s at most).
async fn wait_for(seen: &Seen, what: &str, wanted: impl Fn(&str) -> bool) {
    let mut records = seen.subscribe();
    let found = records.wait_for(|r| r.iter().any(|r| wanted(r)));
    tokio::time::timeout(Duration::from_secs(10), found)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}: {:?}", *seen.borrow()))
        .expect("the registry's record lives as long as the test");
}

/// A registry open to all (saying so after [`SLOW`]) that says every manifest exists and accepts
/// every push.
async fn scripted_registry() -> (String, Seen) {
    let seen: Seen = Arc::new(tokio::sync::watch::Sender::new(Vec::new()));
    let (log, closes) = (Arc::clone(&seen), Arc::clone(&seen));
    let address = support::http::serve(
        move |request| {
            log.send_modify(|r| r.push(request.clone()));
            Box::pin(async move {
                if request.starts_with("HEAD") {
                    let digest = request.rsplit('/').next().unwrap_or_default().to_owned();
                    format!(
                        "HTTP/1.1 200 OK\r\nDocker-Content-Digest: {digest}\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: 2\r\n\r\n"
                    )
                } else if request.starts_with("PUT") {
                    "HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n".to_owned()
                } else {
                    if request == "GET /v2/" {
                        tokio::time::sleep(SLOW).await;
                    }
                    support::http::ok()
                }
            })
        },
        move |requests| {
            if requests.iter().any(|r| r == "GET /v2/") {
                closes.send_modify(|r| r.push("CLOSED AFTER GET /v2/".into()));
            }
        },
    )
    .await;
    (address, seen)
}

#[tokio::test]
async fn a_build_cancelled_while_its_list_is_pushed_writes_no_tag() {
    let (registry, seen) = scripted_registry().await;
    let FarmFixture { farm, context, .. } = &FarmFixture::start(FarmConfig::default()).await;

    let request = BuildRequest {
        image: format!("{registry}/team/app:1.0"),
        platforms: vec!["linux/amd64".into()],
        context_digest: context.clone(),
        ..Default::default()
    };
    let id = farm.submit(request, &Caller::anonymous()).await.unwrap();
    let (session, mut rx) = farm.attach(amd64_hello("x86", None)).unwrap();
    let job = match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
        Ok(Some(ToWorker::Assign(spec))) => spec,
        other => panic!("expected an assignment, got {other:?}"),
    };
    farm.accepted(&session, job.job, job.attempt);
    let child = format!("sha256:{}", "c".repeat(64));
    farm.result(
        &session,
        job.job,
        job.attempt,
        JobOutcome::Pushed {
            digest: child,
            size: 2,
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            attestations: Vec::new(),
        },
    );

    // The list push is asking the registry how to authorise: cancel now.
    let asking = "the list push to ask the registry";
    wait_for(&seen, asking, |r| r == "GET /v2/").await;
    let build = farm.cancel(id).await.unwrap();
    assert_eq!(build.state, BuildState::Cancelled);

    // The stopped push drops its connection in the middle of the question; had it gone on, it
    // would have sent its PUT and kept the connection open.
    let dropped = "the stopped push to close its connection";
    wait_for(&seen, dropped, |r| r == "CLOSED AFTER GET /v2/").await;
    let requests = seen.borrow().clone();
    assert!(
        !requests.iter().any(|r| r.starts_with("PUT")),
        "a cancelled build pushed: {requests:?}"
    );
    assert_eq!(farm.get(id).unwrap().state, BuildState::Cancelled);
}
