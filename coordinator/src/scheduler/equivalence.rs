//! The indexed scheduler against the one it replaced ([`super::reference`]): random scenarios
//! (workers attaching with restated jobs, leaving, draining, turning unhealthy, held and released,
//! owned and given back; jobs of several teams, priorities and affinities queued, finished,
//! cancelled, preempted; teams reconfigured; time advancing, sometimes an enqueue in the past)
//! run through both, and every decision and every observable answer must be the same, after
//! every step. States the farm never creates (a worker attached twice, a job restated by two
//! workers or while queued) are generated on purpose: the two must agree there too. A second
//! property starts from owned, full workers so that preemption has choices to make (the random
//! scenarios reach those only now and then).
//!
//! `PROPTEST_CASES` raises the number of scenarios (default 256).

use std::time::{Duration, Instant};

use manifold_proto::{JobId, Platform};
use proptest::prelude::*;

use super::reference;
use super::{
    Assignment, JobMeta, Preemption, QueuedJob, Scheduler, Team, WorkerCaps, WorkerStatus,
};

const WORKERS: usize = 6;
const JOBS: u128 = 24;
/// Team names; the last is the default team's, so that an owner can be "default" too.
const TEAMS: [&str; 5] = ["a", "b", "c", "d", super::DEFAULT_TEAM];

fn platform(i: usize) -> Platform {
    ["linux/amd64", "linux/arm64", "linux/arm/v7"][i % 3]
        .parse()
        .expect("valid platform")
}

fn job(i: u128) -> JobId {
    JobId(uuid::Uuid::from_u128(i + 1))
}

fn worker_name(i: usize) -> String {
    format!("w{i}")
}

#[derive(Clone, Debug)]
enum Op {
    Attach {
        worker: usize,
        platforms: Vec<usize>,
        emulated: bool,
        slots: u32,
        restated: Vec<u128>,
    },
    Leave(usize),
    Drain(usize),
    Unhealthy(usize, Option<u8>),
    Hold(usize),
    Release(usize),
    Owner(usize, Option<usize>),
    Enqueue {
        job: u128,
        platform: usize,
        team: Option<usize>,
        priority: i32,
        affinity: Option<usize>,
        /// Seconds before now: an enqueue time that goes back.
        back: u64,
    },
    Finished(u128),
    Preempt(u128),
    Assign,
    /// The farm's tick: ask for preemptions and carry them out.
    Tick,
    Starved(u64),
    Advance(u64),
    SetTeam {
        team: usize,
        weight: u32,
        cap: Option<u32>,
        borrows: bool,
    },
    Grace(Option<u64>),
}

fn op() -> impl Strategy<Value = Op> {
    let w = 0..WORKERS;
    let j = 0..JOBS;
    prop_oneof![
        3 => (
            w.clone(),
            prop::collection::vec(0..3usize, 1..3),
            prop::bool::weighted(0.3),
            0..4u32,
            prop::collection::vec(j.clone(), 0..3),
        )
            .prop_map(|(worker, platforms, emulated, slots, restated)| Op::Attach {
                worker,
                platforms,
                emulated,
                slots,
                restated,
            }),
        1 => w.clone().prop_map(Op::Leave),
        1 => w.clone().prop_map(Op::Drain),
        1 => (w.clone(), prop::option::of(0..2u8)).prop_map(|(w, r)| Op::Unhealthy(w, r)),
        1 => w.clone().prop_map(Op::Hold),
        1 => w.clone().prop_map(Op::Release),
        3 => (w.clone(), prop::option::weighted(0.8, 0..TEAMS.len())).prop_map(|(w, t)| Op::Owner(w, t)),
        8 => (
            j.clone(),
            0..3usize,
            prop::option::of(0..TEAMS.len()),
            -1..3i32,
            prop::option::weighted(0.3, w.clone()),
            prop_oneof![9 => Just(0u64), 1 => 1..120u64],
        )
            .prop_map(|(job, platform, team, priority, affinity, back)| Op::Enqueue {
                job,
                platform,
                team,
                priority,
                affinity,
                back,
            }),
        4 => j.clone().prop_map(Op::Finished),
        1 => j.prop_map(Op::Preempt),
        6 => Just(Op::Assign),
        3 => Just(Op::Tick),
        1 => (0..200u64).prop_map(Op::Starved),
        3 => (0..100u64).prop_map(Op::Advance),
        1 => (0..TEAMS.len(), 0..4u32, prop::option::of(0..4u32), prop::bool::weighted(0.8))
            .prop_map(|(team, weight, cap, borrows)| Op::SetTeam { team, weight, cap, borrows }),
        1 => prop::option::weighted(0.8, 0..90u64).prop_map(Op::Grace),
    ]
}

/// Steps of a farm whose workers are mostly owned and full: owner jobs wait behind borrowed ones,
/// some queued with times in the past, so that preemption has choices to make.
fn preemption_op() -> impl Strategy<Value = Op> {
    let j = 0..JOBS;
    prop_oneof![
        8 => (
            j.clone(),
            0..2usize,
            prop::option::of(0..3usize),
            0..3i32,
            prop_oneof![3 => Just(0u64), 1 => 1..60u64],
        )
            .prop_map(|(job, platform, team, priority, back)| Op::Enqueue {
                job,
                platform,
                team,
                priority,
                affinity: None,
                back,
            }),
        3 => Just(Op::Assign),
        4 => Just(Op::Tick),
        3 => (0..20u64).prop_map(Op::Advance),
        2 => j.prop_map(Op::Finished),
        1 => (0..WORKERS, prop::option::of(0..3usize)).prop_map(|(w, t)| Op::Owner(w, t)),
        1 => (0..3usize, 0..3u32, prop::option::of(0..4u32), prop::bool::weighted(0.8))
            .prop_map(|(team, weight, cap, borrows)| Op::SetTeam { team, weight, cap, borrows }),
    ]
}

/// Six workers, four of them owned, attached before a [`preemption_op`] scenario.
fn owned_workers(slots: Vec<u32>) -> Vec<Op> {
    let mut ops = vec![Op::Grace(Some(30))];
    for (w, slots) in slots.into_iter().enumerate() {
        ops.push(Op::Attach {
            worker: w,
            platforms: vec![w % 2, (w / 2) % 2],
            emulated: w == 5,
            slots,
            restated: vec![],
        });
        if w < 4 {
            ops.push(Op::Owner(w, Some(w % 2)));
        }
    }
    ops
}

/// What a step returned, and everything that can be asked of the scheduler after it.
#[derive(Debug, PartialEq)]
struct Outcome {
    returned: Returned,
    queued: usize,
    queued_jobs: Vec<QueuedJob>,
    workers: Vec<(Option<WorkerStatus>, bool, u32)>,
    running_by_team: Vec<u32>,
    builds: Vec<bool>,
    teams: Vec<Team>,
}

#[derive(Debug, PartialEq)]
enum Returned {
    Nothing,
    Jobs(Vec<JobId>),
    Assignments(Vec<Assignment>),
    Preemptions(Vec<Preemption>, Vec<bool>),
    Starved(Vec<(JobId, Platform)>),
    Bool(bool),
}

/// One step through either scheduler; both have the same methods.
macro_rules! step {
    ($name:ident, $ty:ty) => {
        fn $name(s: &mut $ty, op: &Op, now: Instant) -> Outcome {
            let returned = match op {
                Op::Attach {
                    worker,
                    platforms,
                    emulated,
                    slots,
                    restated,
                } => {
                    let caps = WorkerCaps {
                        name: worker_name(*worker),
                        platforms: platforms.iter().map(|p| platform(*p)).collect(),
                        emulated: *emulated,
                        slots: *slots,
                    };
                    s.add_worker(caps, restated.iter().map(|j| job(*j)));
                    Returned::Nothing
                }
                Op::Leave(w) => Returned::Jobs(s.remove_worker(&worker_name(*w))),
                Op::Drain(w) => {
                    s.drain_worker(&worker_name(*w));
                    Returned::Nothing
                }
                Op::Unhealthy(w, reason) => {
                    s.set_unhealthy(&worker_name(*w), reason.map(|r| format!("reason {r}")));
                    Returned::Nothing
                }
                Op::Hold(w) => {
                    s.hold(&worker_name(*w));
                    Returned::Nothing
                }
                Op::Release(w) => {
                    s.release(&worker_name(*w));
                    Returned::Nothing
                }
                Op::Owner(w, team) => {
                    s.set_worker_owner(&worker_name(*w), team.map(|t| TEAMS[t].to_owned()));
                    Returned::Nothing
                }
                Op::Enqueue {
                    job: j,
                    platform: p,
                    team,
                    priority,
                    affinity,
                    back,
                } => {
                    let meta = JobMeta {
                        team: team.map(|t| TEAMS[t].to_owned()),
                        priority: *priority,
                        affinity: affinity.map(worker_name),
                    };
                    let at = now.checked_sub(Duration::from_secs(*back)).unwrap_or(now);
                    s.enqueue_job(job(*j), platform(*p), meta, at);
                    Returned::Nothing
                }
                Op::Finished(j) => {
                    s.finished(job(*j));
                    Returned::Nothing
                }
                Op::Preempt(j) => Returned::Bool(s.preempt(job(*j))),
                Op::Assign => Returned::Assignments(s.assign()),
                Op::Tick => {
                    let preemptions = s.preemptions(now);
                    let done = preemptions.iter().map(|p| s.preempt(p.job)).collect();
                    Returned::Preemptions(preemptions, done)
                }
                Op::Starved(wait) => Returned::Starved(s.starved(now, Duration::from_secs(*wait))),
                Op::Advance(_) => Returned::Nothing,
                Op::SetTeam {
                    team,
                    weight,
                    cap,
                    borrows,
                } => {
                    let mut t = Team::new(TEAMS[*team]).weight(*weight).borrows(*borrows);
                    t.max_running = *cap;
                    s.set_team(t);
                    Returned::Nothing
                }
                Op::Grace(grace) => {
                    s.set_preemption_grace(grace.map(Duration::from_secs));
                    Returned::Nothing
                }
            };
            Outcome {
                returned,
                queued: s.queued(),
                queued_jobs: s.queued_jobs(),
                workers: (0..WORKERS)
                    .map(|w| {
                        let name = worker_name(w);
                        (s.status(&name), s.has_worker(&name), s.slots_in_use(&name))
                    })
                    .collect(),
                running_by_team: TEAMS.iter().map(|t| s.running_of_team(t)).collect(),
                builds: (0..3).map(|p| s.any_worker_builds(&platform(p))).collect(),
                teams: s.teams(),
            }
        }
    };
}

step!(step_indexed, Scheduler);
step!(step_reference, reference::Scheduler);

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut indexed = Scheduler::new();
    let mut model = reference::Scheduler::new();
    // Far enough from the clock's origin for enqueue times in the past.
    let mut now = Instant::now() + Duration::from_secs(3600);
    for (i, op) in ops.iter().enumerate() {
        if let Op::Advance(secs) = op {
            now += Duration::from_secs(*secs);
        }
        let got = step_indexed(&mut indexed, op, now);
        let expected = step_reference(&mut model, op, now);
        prop_assert_eq!(got, expected, "step {}: {:?}", i, op);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256),
        max_shrink_iters: 4096,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_indexed_scheduler_decides_as_the_reference(ops in prop::collection::vec(op(), 1..160)) {
        run(&ops)?;
    }

    #[test]
    fn preemption_decides_as_the_reference(
        slots in prop::collection::vec(1..3u32, WORKERS),
        ops in prop::collection::vec(preemption_op(), 1..120),
    ) {
        let mut all = owned_workers(slots);
        all.extend(ops);
        run(&all)?;
    }
}

/// A scenario the random ones reach only by chance: owners, full owned workers, an old owner
/// job and a borrowed one, then preemption and the reassignment.
#[test]
fn a_preemption_scenario_agrees() {
    let ops = vec![
        Op::Grace(Some(30)),
        Op::SetTeam {
            team: 0,
            weight: 2,
            cap: None,
            borrows: true,
        },
        Op::Attach {
            worker: 0,
            platforms: vec![0],
            emulated: false,
            slots: 2,
            restated: vec![],
        },
        Op::Owner(0, Some(0)),
        Op::Enqueue {
            job: 1,
            platform: 0,
            team: Some(1),
            priority: 0,
            affinity: None,
            back: 0,
        },
        Op::Enqueue {
            job: 2,
            platform: 0,
            team: Some(1),
            priority: 1,
            affinity: None,
            back: 0,
        },
        Op::Assign,
        Op::Enqueue {
            job: 3,
            platform: 0,
            team: Some(0),
            priority: 0,
            affinity: None,
            back: 0,
        },
        Op::Tick,
        Op::Advance(31),
        Op::Tick,
        Op::Assign,
        Op::Finished(2),
        Op::Assign,
    ];
    run(&ops).unwrap();
}
