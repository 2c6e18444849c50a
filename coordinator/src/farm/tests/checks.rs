//! A worker's reported image while the coordinator checks it ([`crate::verify`]): the worker is
//! done, so its slot is free at once; the job waits only for the check, and nothing the worker
//! does afterwards moves it.

use super::*;
use crate::farm::timers::CHECK_WINDOW;

/// When [`reported`] has x86 report the image of the amd64 job's attempt 1.
const REPORTED_AT: u64 = 200;

/// A farm with `config` where x86 took the amd64 job, acknowledged it at 100 ms and reported its
/// image at [`REPORTED_AT`]; the coordinator is checking it.
fn reported(config: FarmConfig) -> Script {
    use Step::*;
    check(
        config,
        &[
            (0, attach("x86"), ""),
            (0, AMD, "assign x86 amd64 #1"),
            (100, Accept("x86", "amd64", 1), ""),
            (REPORTED_AT, Reported("x86", "amd64", 1), ""),
        ],
    )
}

#[test]
fn a_reported_image_frees_the_workers_slot_at_once_and_the_job_waits_for_its_check() {
    use Step::*;
    let s = check(
        config(),
        &[
            (0, attach("x86"), ""),
            (0, AMD, "assign x86 amd64 #1"),
            // A second build (not identical, so not joined) waits: the worker has one slot.
            (0, SubmitNoCache, ""),
            (100, Accept("x86", "amd64", 1), ""),
            // The report alone hands the slot to the second build's job.
            (200, Reported("x86", "amd64", 1), "assign x86 amd64 #1"),
        ],
    );
    let job = s.job_record("amd64");
    assert_eq!(
        (job.state, job.worker.as_deref()),
        (JobState::Running, Some("x86"))
    );
    assert_eq!(job.image, None, "not believed before its check");
    let workers = s.state.workers();
    assert_eq!(workers[0].slots_in_use, 1, "the second build's job only");
    // The check passes: the first build publishes.
    run(s, &[(300, Pushed("x86", "amd64", 1), "publish")]);
}

#[test]
fn an_image_failing_its_check_counts_as_an_attempt_and_goes_to_another_worker() {
    use Step::*;
    let s = check(
        config(),
        &[
            (0, attach("x86"), ""),
            (0, AMD, "assign x86 amd64 #1"),
            (0, attach("x86-b"), ""),
            (100, Accept("x86", "amd64", 1), ""),
            (200, Reported("x86", "amd64", 1), ""),
            // What the handle does on a false image: the worker is unhealthy first...
            (
                300,
                Health(
                    "x86",
                    false,
                    Some("it reported an image that failed verification"),
                ),
                "",
            ),
            // ...so that the retry goes elsewhere; nothing is sent to x86, which is done.
            (300, CheckFailed("x86", "amd64", 1), "assign x86-b amd64 #2"),
        ],
    );
    let error = s.job_record("amd64").error.unwrap();
    assert!(
        error
            .starts_with("attempt 1 on x86: worker x86 reported an image that failed verification"),
        "{error}"
    );
}

#[test]
fn a_worker_that_leaves_and_comes_back_while_its_image_is_checked_moves_nothing() {
    use Step::*;
    run(
        reported(leased()),
        &[
            (300, Detach("x86"), "close x86"),
            // Not orphaned: the lease passes and the job is not requeued...
            (15_301, Tick, ""),
            // ...nor handed back when the worker returns without it.
            (20_000, attach("x86"), ""),
            (20_100, Pushed("x86", "amd64", 1), "publish"),
        ],
    );
}

#[test]
fn a_check_that_does_not_end_within_its_window_requeues_the_job_without_a_cancel() {
    use Step::*;
    let window = CHECK_WINDOW.as_millis() as u64;
    let s = run(
        reported(config()),
        &[
            // Past --stuck-after (600 s) and the acknowledgement deadline: neither runs now.
            (REPORTED_AT + window - 1, Tick, ""),
            (REPORTED_AT + window, Tick, "assign x86 amd64 #2"),
            // The check's verdict, late, changes nothing.
            (REPORTED_AT + window + 1, Pushed("x86", "amd64", 1), ""),
        ],
    );
    assert_eq!(
        s.job_record("amd64").error.as_deref(),
        Some(
            "attempt 1 on x86: the coordinator's check of the reported image did not end within 15m"
        )
    );
}

#[test]
fn a_build_cancelled_while_its_image_is_checked_tells_the_worker_nothing() {
    use Step::*;
    run(
        reported(config()),
        &[
            (300, Cancel, "ended Cancelled"),
            (400, Pushed("x86", "amd64", 1), ""),
        ],
    );
}

#[test]
fn a_report_of_an_attempt_that_is_not_current_on_that_worker_is_not_checked() {
    let mut s = check(
        config(),
        &[
            (0, attach("x86"), ""),
            (0, AMD, "assign x86 amd64 #1"),
            (0, attach("x86-b"), ""),
        ],
    );
    let job = s.job("amd64");
    let (other, now) = (s.session("x86-b"), s.at(100));
    let (check, effects) = s.state.reported(&other, job, 1, now);
    assert_eq!((check, s.render(&effects)), (None, String::new()));
    let (mine, now) = (s.session("x86"), s.at(200));
    assert_eq!(
        s.state.reported(&mine, job, 2, now).0,
        None,
        "attempt 2 was never given"
    );
    let check = s.state.reported(&mine, job, 1, now).0.expect("current");
    assert_eq!(
        (check.platform.to_string(), check.repository.as_str()),
        ("linux/amd64".to_owned(), "127.0.0.1:5000/team/app")
    );
}
