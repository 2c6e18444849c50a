//! The deadlines of attempts and workers at exact times: acknowledgements (counted from the
//! send), stuck attempts, and worker leases.

use super::*;

#[test]
fn an_assignment_not_acknowledged_in_time_is_cancelled_and_requeued_and_a_late_ack_cancelled() {
    use Step::*;
    let s = check(
        config(),
        &[
            (0, attach("x86"), ""),
            (0, AMD, "assign x86 amd64 #1"),
            (29_999, Tick, ""),
            // The deadline counts from the assignment: at 30 s exactly it is over.
            (30_000, Tick, "cancel x86 amd64 #1; assign x86 amd64 #2"),
            (30_100, Accept("x86", "amd64", 2), ""),
            // Attempt 1's acknowledgement arrives late: the worker is told to drop it.
            (30_200, Accept("x86", "amd64", 1), "cancel x86 amd64 #1"),
            // Attempt 2 was acknowledged: no acknowledgement deadline for it any more.
            (60_100, Tick, ""),
            (
                60_200,
                Failed("x86", "amd64", 2, false, false),
                "ended Failed",
            ),
        ],
    );
    let error = s.build().jobs[0].error.clone().unwrap();
    assert!(
        error.starts_with(
            "attempt 1 on x86: the worker did not acknowledge the assignment within 30s"
        ),
        "{error}"
    );
}

#[test]
fn the_acknowledgement_deadline_runs_from_the_send_not_the_decision() {
    use Step::*;
    let mut held = Script::new(config());
    held.hold_sends = true;
    run(
        held,
        &[
            (0, attach("x86"), ""),
            (0, AMD, "assign x86 amd64 #1"),
            // The writer held the assignment for 40 s: no deadline ran meanwhile.
            (40_000, Tick, ""),
            (40_000, Sent("amd64", 1), ""),
            (69_999, Tick, ""),
            (70_000, Tick, "cancel x86 amd64 #1; assign x86 amd64 #2"),
            // Attempt 2 is not sent yet either: no deadline.
            (200_000, Tick, ""),
            (200_000, Sent("amd64", 2), ""),
            (200_001, Accept("x86", "amd64", 2), ""),
            (500_000, Tick, ""),
        ],
    );
}

#[test]
fn output_keeps_an_attempt_alive_and_silence_for_stuck_after_requeues_it() {
    use Step::*;
    let s = check(
        config(),
        &[
            (0, attach("x86"), ""),
            (0, AMD, "assign x86 amd64 #1"),
            (1_000, Accept("x86", "amd64", 1), ""),
            (300_000, Log("x86", "amd64", 1), "log amd64 1"),
            // 600 s after the acknowledgement: the line kept it alive.
            (601_000, Tick, ""),
            (700_000, Heartbeat("x86"), ""),
            // Heartbeats are not output: 600 s after the last line, it is stuck.
            (899_999, Tick, ""),
            (900_000, Tick, "cancel x86 amd64 #1; assign x86 amd64 #2"),
        ],
    );
    let error = s.build().jobs[0].error.clone().unwrap();
    assert_eq!(
        error,
        "attempt 1 on x86: no output for 10m: treated as stuck (raise --stuck-after for steps that are silent longer)"
    );
}

#[test]
fn a_detached_worker_keeps_its_job_for_the_lease_then_the_job_moves() {
    use Step::*;
    let s = check(
        leased(),
        &[
            (0, attach("a"), ""),
            (0, AMD, "assign a amd64 #1"),
            (1_000, Accept("a", "amd64", 1), ""),
            (10_000, Detach("a"), "close a"),
            (11_000, attach("b"), ""),
            (24_999, Tick, ""),
            (25_000, Tick, "assign b amd64 #2"),
            (26_000, Pushed("b", "amd64", 2), "publish"),
            (27_000, Published(Ok("sha256:list")), "ended Succeeded"),
        ],
    );
    let b = s.build();
    assert_eq!(b.state, BuildState::Succeeded);
    assert_eq!(
        b.jobs[0].error.as_deref(),
        Some("attempt 1 on a: worker lost")
    );
}

#[test]
fn a_worker_back_within_the_lease_restating_its_job_keeps_it() {
    use Step::*;
    let back = Attach {
        name: "a",
        arch: "amd64",
        owner: None,
        running: &[("amd64", 1)],
    };
    let s = check(
        leased(),
        &[
            (0, attach("a"), ""),
            (0, AMD, "assign a amd64 #1"),
            (1_000, Accept("a", "amd64", 1), ""),
            (10_000, Detach("a"), "close a"),
            (24_999, back, ""),
            (30_000, Tick, ""),
            (31_000, Pushed("a", "amd64", 1), "publish"),
        ],
    );
    assert_eq!(s.build().jobs[0].attempt, 1, "adopted, not restarted");
}

#[test]
fn a_worker_back_without_its_job_hands_it_back_at_once_and_stale_restatements_are_cancelled() {
    use Step::*;
    let stale = Attach {
        name: "b",
        arch: "amd64",
        owner: None,
        running: &[("amd64", 1)],
    };
    check(
        leased(),
        &[
            (0, attach("a"), ""),
            (0, AMD, "assign a amd64 #1"),
            (1_000, Accept("a", "amd64", 1), ""),
            (2_000, Detach("a"), "close a"),
            // Restarted without it: no waiting for the rest of the lease.
            (3_000, attach("a"), "assign a amd64 #2"),
            // Another worker restating an attempt that is not current is told to drop it.
            (4_000, stale, "cancel b amd64 #1"),
        ],
    );
}

#[test]
fn a_silent_worker_is_declared_lost_after_its_lease_and_its_session_closed() {
    use Step::*;
    check(
        leased(),
        &[
            (0, attach("a"), ""),
            (0, AMD, "assign a amd64 #1"),
            (1_000, Accept("a", "amd64", 1), ""),
            (5_000, Heartbeat("a"), ""),
            (6_000, attach("b"), ""),
            (20_000, Heartbeat("b"), ""),
            // 15 s after its last message it is still within its lease...
            (20_000, Tick, ""),
            // ...and lost just after; its job moves at once.
            (20_001, Tick, "assign b amd64 #2; close a"),
            // Its late news changes nothing.
            (20_002, Log("a", "amd64", 1), ""),
        ],
    );
}

#[test]
fn no_more_than_max_unsent_assignments_wait_for_the_writer_and_the_rest_are_decided_as_it_sends() {
    use Step::*;
    let two = AMD_ARM;
    let arm = ARM;
    let mut held = Script::new(FarmConfig {
        max_unsent: 1,
        ..config()
    });
    held.hold_sends = true;
    let s = run(
        held,
        &[
            (0, attach("x86"), ""),
            (0, arm, ""),
            // Both platforms have a free worker; one assignment may wait for the writer.
            (0, two, "assign x86 amd64 #1"),
            (10, Tick, ""),
            // The writer sent it: the arm64 job is decided now, not before.
            (20, Sent("amd64", 1), "assign arm arm64 #1"),
            (30, Sent("arm64", 1), ""),
        ],
    );
    let arm64 = s.job_record("arm64");
    assert_eq!((arm64.state, arm64.attempt), (JobState::Assigned, 1));
}
