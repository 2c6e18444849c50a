//! The farm applies the team policy end to end (without the network): builds carry the
//! submitter's team, an owned worker serves its owner first, and with preemption on, an owner
//! whose job waited past the grace period gets its worker back: the borrowed job is cancelled on
//! the worker and requeued without spending an attempt. Time is passed to `Farm::tick`.

use std::time::{Duration, Instant};

use manifold_coordinator::access::Caller;
use manifold_coordinator::build::{BuildRequest, JobState};
use manifold_coordinator::farm::{FarmConfig, JobOutcome, ToWorker};
use manifold_coordinator::paging::PageQuery;
use manifold_coordinator::scheduler::Team;
use manifold_proto::BuildId;
use tokio::sync::mpsc::UnboundedReceiver;

mod support;

use support::{FarmFixture, amd64_hello as hello};

const GRACE: Duration = Duration::from_secs(60);

async fn farm(preemption: Option<Duration>) -> FarmFixture {
    FarmFixture::start(FarmConfig {
        teams: vec![Team::new("mobile"), Team::new("platform")],
        preemption_grace: preemption,
        // The test moves time far ahead: keep the other timers out of the way.
        worker_lease: Duration::from_secs(3600),
        stuck_after: Duration::from_secs(3600),
        assign_timeout: Duration::from_secs(3600),
        wait_for_workers: Duration::from_secs(3600),
        ..FarmConfig::default()
    })
    .await
}

fn member(team: &str) -> Caller {
    Caller {
        name: format!("someone-of-{team}"),
        team: team.into(),
        admin: false,
    }
}

/// Submits a linux/amd64 build as a member of `team`.
async fn submit(f: &FarmFixture, team: &str) -> BuildId {
    let request = BuildRequest {
        image: format!("127.0.0.1:1/{team}/app:1"),
        platforms: vec!["linux/amd64".into()],
        context_digest: f.context.clone(),
        ..Default::default()
    };
    f.farm.submit(request, &member(team)).await.unwrap()
}

/// The state and attempt of the build's (only) job.
fn job_state(f: &FarmFixture, build: BuildId) -> (JobState, u32) {
    let b = f.farm.get(build).unwrap();
    (b.jobs[0].state, b.jobs[0].attempt)
}

/// The next message for the worker, once it is sent (writes are durable first).
async fn next(rx: &mut UnboundedReceiver<ToWorker>) -> ToWorker {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a message for the worker")
        .expect("the worker's channel is open")
}

fn assigned_build(m: ToWorker) -> BuildId {
    match m {
        ToWorker::Assign(spec) => spec.build,
        other => panic!("expected an assignment, got {other:?}"),
    }
}

#[tokio::test]
async fn builds_belong_to_the_submitters_team_and_lists_show_only_the_callers_team() {
    let f = farm(None).await;
    let mobile = submit(&f, "mobile").await;
    let platform = submit(&f, "platform").await;
    assert_eq!(f.farm.get(mobile).unwrap().team, "mobile");
    assert_eq!(
        f.farm.get(mobile).unwrap().submitted_by,
        "someone-of-mobile"
    );
    let seen: Vec<BuildId> = f
        .farm
        .list(&PageQuery::newest(10), &member("mobile"))
        .await
        .unwrap()
        .items
        .iter()
        .map(|b| b.id)
        .collect();
    assert_eq!(seen, [mobile]);
    let admin = Caller {
        admin: true,
        ..member("mobile")
    };
    assert_eq!(
        f.farm
            .list(&PageQuery::newest(10), &admin)
            .await
            .unwrap()
            .items
            .len(),
        2
    );
    let queue = f.farm.queue();
    assert_eq!(queue.len(), 2);
    assert_eq!(queue[0].1.id, mobile);
    assert_eq!(queue[1].0.team, "platform");
    let teams = f.farm.teams();
    let queued: Vec<(&str, u32)> = teams
        .iter()
        .map(|t| (t.team.name.as_str(), t.queued))
        .collect();
    assert_eq!(queued, [("mobile", 1), ("platform", 1)]);
    assert_eq!(f.farm.get(platform).unwrap().team, "platform");
}

#[tokio::test]
async fn an_owned_worker_takes_its_owners_later_job_first() {
    let f = farm(None).await;
    let borrower = submit(&f, "platform").await;
    let owner = submit(&f, "mobile").await;
    let (_, mut rx) = f.farm.attach(hello("mac", Some("mobile"))).unwrap();
    assert_eq!(assigned_build(next(&mut rx).await), owner);
    assert_eq!(job_state(&f, borrower).0, JobState::Queued);
    assert_eq!(f.farm.workers()[0].owner.as_deref(), Some("mobile"));
}

#[tokio::test]
async fn an_owner_past_the_grace_period_preempts_a_borrowed_job_without_spending_its_attempt() {
    let f = farm(Some(GRACE)).await;
    // The platform team borrows the mobile team's idle worker.
    let borrowed = submit(&f, "platform").await;
    let (session, mut rx) = f.farm.attach(hello("mac", Some("mobile"))).unwrap();
    let job = match next(&mut rx).await {
        ToWorker::Assign(spec) => spec,
        other => panic!("expected an assignment, got {other:?}"),
    };
    assert_eq!(job.build, borrowed);
    f.farm.accepted(&session, job.job, job.attempt);

    // The owner's job waits; before the grace period nothing happens.
    let owners = submit(&f, "mobile").await;
    f.farm.tick(Instant::now() + GRACE / 2);
    assert_eq!(job_state(&f, borrowed), (JobState::Running, 1));
    assert_eq!(job_state(&f, owners).0, JobState::Queued);

    // Past it, the borrowed attempt is cancelled on the worker and the owner's job takes the slot.
    f.farm.tick(Instant::now() + GRACE + Duration::from_secs(1));
    match next(&mut rx).await {
        ToWorker::Cancel { job: j, attempt } => assert_eq!((j, attempt), (job.job, 1)),
        other => panic!("expected the borrowed job's cancel, got {other:?}"),
    }
    assert_eq!(assigned_build(next(&mut rx).await), owners);
    assert_eq!(job_state(&f, borrowed), (JobState::Queued, 1));
    let events = f.farm.events(borrowed, 0).unwrap().0;
    assert!(
        events
            .iter()
            .any(|e| format!("{:?}", e.kind).contains("preempted")),
        "the borrower's history says why it went back to the queue: {events:?}"
    );
    // The worker confirms the cancel late; that changes nothing.
    f.farm.result(
        &session,
        job.job,
        1,
        JobOutcome::Failed {
            message: "cancelled".into(),
            retryable: false,
            cancelled: true,
            refused: false,
        },
    );
    assert_eq!(job_state(&f, borrowed), (JobState::Queued, 1));
}

#[tokio::test]
async fn without_preemption_a_borrowed_job_keeps_the_worker() {
    let f = farm(None).await;
    let borrowed = submit(&f, "platform").await;
    let (session, mut rx) = f.farm.attach(hello("mac", Some("mobile"))).unwrap();
    let job = match next(&mut rx).await {
        ToWorker::Assign(spec) => spec,
        other => panic!("expected an assignment, got {other:?}"),
    };
    f.farm.accepted(&session, job.job, job.attempt);
    let owners = submit(&f, "mobile").await;
    f.farm.tick(Instant::now() + GRACE * 10);
    assert_eq!(job_state(&f, borrowed).0, JobState::Running);
    assert_eq!(job_state(&f, owners).0, JobState::Queued);
}
