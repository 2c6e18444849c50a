//! Fair share under load, simulated: three teams of weights 1:2:1 flood one platform with 300 jobs
//! each on four one-slot workers (attached 15 s apart, so slots free up at different times); a
//! fourth team submits a single job midway. Pure: simulated time, no I/O, no sleep.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use manifold_proto::{JobId, Platform};

use super::{JobMeta, Scheduler, Team, WorkerCaps};

const JOB: Duration = Duration::from_secs(60);
const FLOOD: usize = 300;
const END: Duration = Duration::from_secs(6000);
const LONE_SUBMIT: Duration = Duration::from_secs(3007);
const ATTACH_EVERY: Duration = Duration::from_secs(15);

#[test]
fn weighted_teams_get_their_share_and_a_lone_job_waits_at_most_one_job_duration() {
    let t0 = Instant::now();
    let mut s = Scheduler::new();
    let weights = [("a", 1u32), ("b", 2), ("c", 1), ("d", 1)];
    for (team, weight) in weights {
        s.set_team(Team::new(team).weight(weight));
    }
    let mut team_of: BTreeMap<JobId, &str> = BTreeMap::new();
    let meta = |team: &str| JobMeta {
        team: Some(team.to_owned()),
        ..JobMeta::default()
    };
    // The flood, interleaved as three CI pipelines would submit it.
    for _ in 0..FLOOD {
        for team in ["a", "b", "c"] {
            let job = JobId::new();
            team_of.insert(job, team);
            s.enqueue_job(job, Platform::linux_amd64(), meta(team), t0);
        }
    }
    let lone = JobId::new();
    team_of.insert(lone, "d");

    let attach_at: Vec<Duration> = (0..4u32).map(|i| ATTACH_EVERY * i).collect();
    // Running jobs: job -> (start, end).
    let mut running: BTreeMap<JobId, (Duration, Duration)> = BTreeMap::new();
    let mut slot_time: BTreeMap<&str, Duration> = BTreeMap::new();
    let mut lone_started = None;
    let mut now = Duration::ZERO;
    loop {
        // Events at `now`: finishes, attachments, the lone submission; then one assignment round.
        let done: Vec<JobId> = running
            .iter()
            .filter(|(_, (_, end))| *end == now)
            .map(|(job, _)| *job)
            .collect();
        for job in done {
            let (start, end) = running.remove(&job).unwrap();
            *slot_time.entry(team_of[&job]).or_default() += end - start;
            s.finished(job);
        }
        for (i, at) in attach_at.iter().enumerate() {
            if *at == now {
                let caps = WorkerCaps {
                    name: format!("w{i}"),
                    platforms: vec![Platform::linux_amd64()],
                    emulated: false,
                    slots: 1,
                };
                s.add_worker(caps, []);
            }
        }
        if now == LONE_SUBMIT {
            s.enqueue_job(lone, Platform::linux_amd64(), meta("d"), t0 + now);
        }
        for a in s.assign() {
            running.insert(a.job, (now, now + JOB));
            if a.job == lone {
                lone_started = Some(now);
            }
        }
        let next = running
            .values()
            .map(|(_, end)| *end)
            .chain(attach_at.iter().copied().filter(|at| *at > now))
            .chain(Some(LONE_SUBMIT).filter(|at| *at > now))
            .min()
            .expect("the flood keeps workers busy");
        if next >= END {
            break;
        }
        now = next;
    }
    // Jobs still running at the end count up to the end.
    for (job, (start, _)) in &running {
        *slot_time.entry(team_of[job]).or_default() += END - *start;
    }
    for team in ["a", "b", "c"] {
        assert!(
            s.queue.values().any(|q| q.team() == team),
            "team {team} must still have queued jobs at the end of the simulation"
        );
    }

    let total: f64 = slot_time.values().map(Duration::as_secs_f64).sum();
    let flood_weight: f64 = 4.0;
    for (team, weight) in [("a", 1.0), ("b", 2.0), ("c", 1.0)] {
        let actual = slot_time[team].as_secs_f64() / total;
        let expected = weight / flood_weight;
        println!(
            "team {team}: {:.1}% of slot-time (expected {:.1}%)",
            actual * 100.0,
            expected * 100.0
        );
        assert!(
            (actual - expected).abs() <= 0.10 * expected,
            "team {team}: {actual:.4} of slot-time, expected {expected:.4} ± 10%"
        );
    }
    let wait = lone_started.expect("the lone job ran") - LONE_SUBMIT;
    println!("team d: its one job waited {wait:?} (job duration {JOB:?})");
    assert!(wait <= JOB, "the lone job waited {wait:?}");
}
