use super::*;

fn worker(name: &str, platform: &str, emulated: bool, slots: u32) -> WorkerCaps {
    WorkerCaps {
        name: name.into(),
        platforms: vec![platform.parse().unwrap()],
        emulated,
        slots,
    }
}

/// Runs `events` then one assignment round; returns "job-index->worker" pairs.
#[track_caller]
fn check(workers: &[WorkerCaps], jobs: &[&str], expected: &[&str]) {
    let mut s = Scheduler::new();
    for w in workers {
        s.add_worker(w.clone(), []);
    }
    let t0 = Instant::now();
    let ids: Vec<JobId> = jobs.iter().map(|_| JobId::new()).collect();
    for (i, (id, p)) in ids.iter().zip(jobs).enumerate() {
        s.enqueue(
            *id,
            p.parse().unwrap(),
            t0 + Duration::from_millis(i as u64),
        );
    }
    let got: Vec<String> = s
        .assign()
        .into_iter()
        .map(|a| {
            let i = ids.iter().position(|id| *id == a.job).unwrap();
            format!("{i}->{}", a.worker)
        })
        .collect();
    assert_eq!(got, expected);
}

#[test]
fn assignment_table() {
    let x86 = worker("x86", "linux/amd64", false, 1);
    let arm = worker("arm", "linux/arm64", false, 1);
    let arm_emu = worker("arm-emu", "linux/arm64", true, 4);
    let x86_big = worker("x86-big", "linux/amd64", false, 2);

    // One job per platform goes to the worker of that platform.
    check(
        &[x86.clone(), arm.clone()],
        &["linux/amd64", "linux/arm64"],
        &["0->x86", "1->arm"],
    );
    // No worker of the platform: the job waits.
    check(std::slice::from_ref(&x86), &["linux/arm64"], &[]);
    // Slots bound concurrency; the oldest job goes first.
    check(
        std::slice::from_ref(&x86),
        &["linux/amd64", "linux/amd64"],
        &["0->x86"],
    );
    // Native is preferred over emulated, even when the emulated one has more free slots.
    check(
        &[arm_emu.clone(), arm.clone()],
        &["linux/arm64", "linux/arm64"],
        &["0->arm", "1->arm-emu"],
    );
    // Among native workers the least loaded wins, then the name.
    check(
        &[x86_big.clone(), x86.clone()],
        &["linux/amd64", "linux/amd64", "linux/amd64"],
        &["0->x86", "1->x86-big", "2->x86-big"],
    );
    // A later job of another platform is not held up by an earlier job that must wait.
    check(
        std::slice::from_ref(&x86),
        &["linux/arm64", "linux/amd64"],
        &["1->x86"],
    );
}

#[test]
fn a_round_cut_short_leaves_the_rest_in_the_order_a_whole_round_picks_them() {
    let workers = [
        worker("x86", "linux/amd64", false, 2),
        worker("arm", "linux/arm64", false, 1),
    ];
    let platforms = ["linux/amd64", "linux/arm64", "linux/amd64", "linux/amd64"];
    let t0 = Instant::now();
    let ids: Vec<JobId> = platforms.iter().map(|_| JobId::new()).collect();
    let fresh = || {
        let mut s = Scheduler::new();
        for w in &workers {
            s.add_worker(w.clone(), []);
        }
        for (i, (id, p)) in ids.iter().zip(platforms).enumerate() {
            s.enqueue(
                *id,
                p.parse().unwrap(),
                t0 + Duration::from_millis(i as u64),
            );
        }
        s
    };
    let whole = fresh().assign();
    assert_eq!(whole.len(), 3, "two x86 slots and one arm slot");
    let mut cut = fresh();
    let mut rounds = Vec::new();
    for limit in [1, 0, 1, 5] {
        let round = cut.assign_at_most(limit);
        assert!(round.len() <= limit);
        rounds.extend(round);
    }
    assert_eq!(rounds, whole);
    assert_eq!(cut.queued(), 1);
}

#[test]
fn finishing_a_job_frees_its_slot_for_the_next() {
    let mut s = Scheduler::new();
    s.add_worker(worker("x86", "linux/amd64", false, 1), []);
    let (a, b) = (JobId::new(), JobId::new());
    let now = Instant::now();
    s.enqueue(a, Platform::linux_amd64(), now);
    s.enqueue(b, Platform::linux_amd64(), now);
    assert_eq!(s.assign().len(), 1);
    assert_eq!(s.slots_in_use("x86"), 1);
    assert!(s.assign().is_empty());
    s.finished(a);
    assert_eq!(
        s.assign(),
        vec![Assignment {
            job: b,
            worker: "x86".into()
        }]
    );
}

#[test]
fn a_lost_worker_hands_back_its_jobs() {
    let mut s = Scheduler::new();
    s.add_worker(worker("x86", "linux/amd64", false, 2), []);
    let a = JobId::new();
    s.enqueue(a, Platform::linux_amd64(), Instant::now());
    s.assign();
    assert_eq!(s.remove_worker("x86"), vec![a]);
    assert!(!s.has_worker("x86"));
}

#[test]
fn only_healthy_workers_that_are_not_draining_get_jobs() {
    // (worker name, draining, unhealthy, slots, jobs already running) -> who gets one amd64 job.
    type Row<'a> = (&'a [(&'a str, bool, bool, u32, u32)], Option<&'a str>);
    let table: &[Row] = &[
        (&[("a", false, false, 1, 0)], Some("a")),
        (&[("a", true, false, 1, 0)], None),
        (&[("a", false, true, 1, 0)], None),
        (&[("a", true, true, 1, 0)], None),
        // A full healthy worker is no reason to pick an unhealthy one.
        (&[("a", false, false, 1, 1), ("b", false, true, 4, 0)], None),
        (
            &[("a", false, true, 4, 0), ("b", false, false, 1, 0)],
            Some("b"),
        ),
        (
            &[("a", true, false, 4, 0), ("b", false, false, 2, 1)],
            Some("b"),
        ),
        (&[("a", false, true, 4, 0), ("b", true, false, 4, 0)], None),
    ];
    for (i, (workers, expected)) in table.iter().enumerate() {
        let mut s = Scheduler::new();
        let now = Instant::now();
        for (name, draining, unhealthy, slots, busy) in workers.iter() {
            let busy_jobs: Vec<JobId> = (0..*busy).map(|_| JobId::new()).collect();
            s.add_worker(worker(name, "linux/amd64", false, *slots), busy_jobs);
            if *draining {
                s.drain_worker(name);
            }
            if *unhealthy {
                s.set_unhealthy(name, Some("docker daemon unreachable".into()));
            }
        }
        s.enqueue(JobId::new(), Platform::linux_amd64(), now);
        let got: Vec<String> = s.assign().into_iter().map(|a| a.worker).collect();
        assert_eq!(
            got,
            expected.iter().map(|w| w.to_string()).collect::<Vec<_>>(),
            "row {i}: {workers:?}"
        );
    }
}

#[test]
fn a_worker_that_refused_is_asked_again_only_after_its_next_heartbeat() {
    let mut s = Scheduler::new();
    let now = Instant::now();
    s.add_worker(worker("x86", "linux/amd64", false, 2), []);
    s.hold("x86");
    s.enqueue(JobId::new(), Platform::linux_amd64(), now);
    assert!(s.assign().is_empty());
    assert!(
        s.starved(now + Duration::from_secs(600), Duration::from_secs(1))
            .is_empty()
    );
    s.release("x86");
    assert_eq!(s.assign().len(), 1);
}

#[test]
fn a_worker_that_recovers_gets_the_waiting_job() {
    let mut s = Scheduler::new();
    let t0 = Instant::now();
    let wait = Duration::from_secs(60);
    s.add_worker(worker("x86", "linux/amd64", false, 1), []);
    s.set_unhealthy("x86", Some("ping failed".into()));
    assert_eq!(
        s.status("x86").unwrap().unhealthy.as_deref(),
        Some("ping failed")
    );
    let job = JobId::new();
    s.enqueue(job, Platform::linux_amd64(), t0);
    assert!(s.assign().is_empty());
    // Unhealthy for the whole wait: the job starves, as with no worker at all.
    assert_eq!(s.starved(t0 + wait, wait).len(), 1);
    s.set_unhealthy("x86", None);
    assert!(s.status("x86").unwrap().ready());
    assert!(s.starved(t0 + wait, wait).is_empty());
    assert_eq!(
        s.assign(),
        vec![Assignment {
            job,
            worker: "x86".into()
        }]
    );
}

#[test]
fn a_draining_worker_gets_no_new_job() {
    let mut s = Scheduler::new();
    s.add_worker(worker("x86", "linux/amd64", false, 2), []);
    s.drain_worker("x86");
    s.enqueue(JobId::new(), Platform::linux_amd64(), Instant::now());
    assert!(s.assign().is_empty());
}

#[test]
fn a_job_starves_only_after_the_wait_and_only_without_a_capable_worker() {
    let mut s = Scheduler::new();
    let t0 = Instant::now();
    let wait = Duration::from_secs(60);
    let arm_job = JobId::new();
    s.enqueue(arm_job, Platform::linux_arm64(), t0);
    assert!(s.starved(t0 + Duration::from_secs(59), wait).is_empty());
    assert_eq!(
        s.starved(t0 + wait, wait),
        vec![(arm_job, Platform::linux_arm64())]
    );
    // A capable but busy worker means the job is waiting for a slot, not starving.
    s.add_worker(worker("arm", "linux/arm64", false, 1), []);
    let other = JobId::new();
    s.enqueue(other, Platform::linux_arm64(), t0);
    s.assign();
    assert!(s.starved(t0 + wait * 2, wait).is_empty());
}

#[test]
fn restated_running_jobs_occupy_slots_and_leave_the_queue() {
    let mut s = Scheduler::new();
    let a = JobId::new();
    s.enqueue(a, Platform::linux_amd64(), Instant::now());
    s.add_worker(worker("x86", "linux/amd64", false, 1), [a]);
    assert_eq!(s.queued(), 0);
    assert_eq!(s.slots_in_use("x86"), 1);
}

/// A worker of the team tables: caps, owner, and jobs of given teams already running on it.
#[derive(Clone)]
struct W {
    caps: WorkerCaps,
    owner: Option<&'static str>,
    busy: Vec<&'static str>,
    paused: bool,
    lending: bool,
}

fn w(name: &str, platform: &str) -> W {
    W {
        caps: worker(name, platform, false, 1),
        owner: None,
        busy: Vec::new(),
        paused: false,
        lending: true,
    }
}

impl W {
    fn emulated(mut self) -> Self {
        self.caps.emulated = true;
        self
    }
    fn slots(mut self, slots: u32) -> Self {
        self.caps.slots = slots;
        self
    }
    fn owner(mut self, team: &'static str) -> Self {
        self.owner = Some(team);
        self
    }
    /// Its owner paused it.
    fn paused(mut self) -> Self {
        self.paused = true;
        self
    }
    /// It does not lend itself to other teams.
    fn not_lending(mut self) -> Self {
        self.lending = false;
        self
    }
    /// A job of `team` already runs on it.
    fn busy(mut self, team: &'static str) -> Self {
        self.busy.push(team);
        self
    }
}

/// A queued job of the team tables, named by `label` in the expectations.
struct J {
    label: &'static str,
    platform: &'static str,
    meta: JobMeta,
}

/// A job of `team` (`-` for none) for linux/amd64.
fn j(label: &'static str, team: &str) -> J {
    J {
        label,
        platform: "linux/amd64",
        meta: JobMeta {
            team: (team != "-").then(|| team.to_owned()),
            ..JobMeta::default()
        },
    }
}

impl J {
    fn platform(mut self, platform: &'static str) -> Self {
        self.platform = platform;
        self
    }
    fn priority(mut self, priority: i32) -> Self {
        self.meta.priority = priority;
        self
    }
    fn affinity(mut self, worker: &str) -> Self {
        self.meta.affinity = Some(worker.to_owned());
        self
    }
}

/// Sets up teams and workers (with their busy jobs), queues `jobs` one millisecond apart in
/// order, runs one assignment round and compares "label->worker" in assignment order.
#[track_caller]
fn check_teams(teams: &[Team], workers: &[W], jobs: &[J], expected: &[&str]) {
    let (s, labels, _) = setup(teams, workers, jobs);
    let mut s = s;
    let got: Vec<String> = s
        .assign()
        .into_iter()
        .map(|a| format!("{}->{}", labels[&a.job], a.worker))
        .collect();
    assert_eq!(got, expected);
}

fn setup(
    teams: &[Team],
    workers: &[W],
    jobs: &[J],
) -> (Scheduler, HashMap<JobId, String>, Instant) {
    let mut s = Scheduler::new();
    let t0 = Instant::now();
    let mut labels = HashMap::new();
    for t in teams {
        s.set_team(t.clone());
    }
    for wk in workers {
        let busy: Vec<JobId> = wk
            .busy
            .iter()
            .enumerate()
            .map(|(i, team)| {
                let id = JobId::new();
                let meta = JobMeta {
                    team: Some(team.to_string()),
                    ..JobMeta::default()
                };
                s.enqueue_job(id, wk.caps.platforms[0].clone(), meta, t0);
                labels.insert(id, format!("{}#{i}", wk.caps.name));
                id
            })
            .collect();
        s.add_worker(wk.caps.clone(), busy);
        s.set_worker_owner(&wk.caps.name, wk.owner.map(str::to_owned));
        s.set_paused(&wk.caps.name, wk.paused);
        s.set_lending(&wk.caps.name, wk.lending, t0);
    }
    for (i, job) in jobs.iter().enumerate() {
        let id = JobId::new();
        labels.insert(id, job.label.to_owned());
        s.enqueue_job(
            id,
            job.platform.parse().unwrap(),
            job.meta.clone(),
            t0 + Duration::from_millis(i as u64),
        );
    }
    (s, labels, t0)
}

#[test]
fn team_assignment_table() {
    let a = || Team::new("a");
    let b = || Team::new("b");

    // Owner first: the owner's job takes its worker although another team's job is older.
    check_teams(
        &[a(), b()],
        &[w("a-box", "linux/amd64").owner("a")],
        &[j("b1", "b"), j("a1", "a")],
        &["a1->a-box"],
    );
    // Borrowing when idle: with no job of the owner, any team uses the worker.
    check_teams(
        &[a(), b()],
        &[w("a-box", "linux/amd64").owner("a")],
        &[j("b1", "b")],
        &["b1->a-box"],
    );
    // A borrower prefers common capacity when otherwise equal, keeping the owned worker free.
    check_teams(
        &[a(), b()],
        &[
            w("a-box", "linux/amd64").owner("a"),
            w("pool", "linux/amd64"),
        ],
        &[j("b1", "b")],
        &["b1->pool"],
    );
    // A team that does not borrow waits rather than run on another team's worker ...
    check_teams(
        &[a(), b().borrows(false)],
        &[w("a-box", "linux/amd64").owner("a")],
        &[j("b1", "b")],
        &[],
    );
    // ... and takes common capacity or its own, even where a borrowed worker would be better.
    check_teams(
        &[a(), b().borrows(false)],
        &[
            w("a-box", "linux/amd64").owner("a"),
            w("pool", "linux/amd64").emulated(),
            w("b-box", "linux/arm64").owner("b"),
        ],
        &[j("b1", "b"), j("b2", "b").platform("linux/arm64")],
        &["b2->b-box", "b1->pool"],
    );
    // Its waiting job does not hold back the others: a borrower still gets the worker.
    check_teams(
        &[a(), b().borrows(false), Team::new("c")],
        &[w("a-box", "linux/amd64").owner("a")],
        &[j("b1", "b"), j("c1", "c")],
        &["c1->a-box"],
    );
    // The owner's job only goes first for a platform its worker builds.
    check_teams(
        &[a(), b()],
        &[w("a-box", "linux/amd64").owner("a")],
        &[j("b1", "b"), j("a1", "a").platform("linux/arm64")],
        &["b1->a-box"],
    );
    // Cap respected: team a may run one job; b gets the other slot, a2 waits.
    check_teams(
        &[a().max_running(1), b()],
        &[w("x86", "linux/amd64").slots(3)],
        &[j("a1", "a"), j("a2", "a"), j("b1", "b")],
        &["a1->x86", "b1->x86"],
    );
    // The cap holds on the owner's own worker too: at its cap, the owner lends it.
    check_teams(
        &[a().max_running(1), b()],
        &[w("a-box", "linux/amd64").owner("a").slots(2).busy("a")],
        &[j("a1", "a"), j("b1", "b")],
        &["b1->a-box"],
    );
    // Fair share: the team running least goes next, whatever the age of the other's jobs.
    check_teams(
        &[a(), b()],
        &[w("x86", "linux/amd64").slots(3).busy("a").busy("a")],
        &[j("a1", "a"), j("b1", "b")],
        &["b1->x86"],
    );
    // Equal shares: the team whose oldest queued job is older goes next.
    check_teams(
        &[a(), b()],
        &[w("x86", "linux/amd64").slots(3)],
        &[j("b1", "b"), j("a1", "a"), j("a2", "a"), j("b2", "b")],
        &["b1->x86", "a1->x86", "a2->x86"],
    );
    // Weights: b (weight 2) gets two slots for a's one.
    check_teams(
        &[a(), b().weight(2)],
        &[w("x86", "linux/amd64").slots(3)],
        &[
            j("a1", "a"),
            j("a2", "a"),
            j("a3", "a"),
            j("b1", "b"),
            j("b2", "b"),
        ],
        &["a1->x86", "b1->x86", "b2->x86"],
    );
    // A job without team is in the team "default", which shares like any other.
    check_teams(
        &[a()],
        &[w("x86", "linux/amd64").slots(2).busy("a")],
        &[j("a1", "a"), j("d1", "-")],
        &["d1->x86"],
    );
    // Priority within a team: the higher one goes first, then the oldest.
    check_teams(
        &[a()],
        &[w("x86", "linux/amd64").slots(2)],
        &[
            j("a1", "a"),
            j("a2", "a").priority(5),
            j("a3", "a").priority(5),
        ],
        &["a2->x86", "a3->x86"],
    );
    // Priority does not cross teams: b's older job wins the tie against a's urgent one.
    check_teams(
        &[a(), b()],
        &[w("x86", "linux/amd64")],
        &[j("b1", "b"), j("a1", "a").priority(100)],
        &["b1->x86"],
    );
    // Cache affinity breaks the tie between equal workers...
    check_teams(
        &[a()],
        &[w("x1", "linux/amd64"), w("x2", "linux/amd64")],
        &[j("a1", "a").affinity("x2")],
        &["a1->x2"],
    );
    // ...but does not beat native over emulated...
    check_teams(
        &[a()],
        &[
            w("arm-emu", "linux/arm64").emulated(),
            w("arm", "linux/arm64"),
        ],
        &[j("a1", "a").platform("linux/arm64").affinity("arm-emu")],
        &["a1->arm"],
    );
    // ...nor the least loaded.
    check_teams(
        &[a()],
        &[
            w("x1", "linux/amd64").slots(2),
            w("x2", "linux/amd64").slots(2).busy("a"),
        ],
        &[j("a1", "a").affinity("x2")],
        &["a1->x1"],
    );
    // Native over emulated holds for teams, even when the emulated one is the owner's.
    check_teams(
        &[a(), b()],
        &[
            w("arm-emu", "linux/arm64").emulated().slots(4),
            w("arm", "linux/arm64"),
        ],
        &[
            j("b1", "b").platform("linux/arm64"),
            j("b2", "b").platform("linux/arm64"),
        ],
        &["b1->arm", "b2->arm-emu"],
    );
}

/// One worker owned by team a, full with a job of team b; a's job was queued at t0.
/// Returns "job@worker" preemptions at `t0 + waited` with the given grace.
#[track_caller]
fn check_preemption(
    grace: Option<Duration>,
    a_cap: Option<u32>,
    waited: Duration,
    expected: &[&str],
) {
    let mut a = Team::new("a");
    a.max_running = a_cap;
    let (mut s, labels, t0) = setup(
        &[a, Team::new("b")],
        &[w("a-box", "linux/amd64").owner("a").busy("b")],
        &[j("a1", "a")],
    );
    s.set_preemption_grace(grace);
    assert!(s.assign().is_empty(), "the owned worker is full");
    let got: Vec<String> = s
        .preemptions(t0 + waited)
        .into_iter()
        .map(|p| {
            assert_eq!(p.team, "a");
            format!("{}@{}", labels[&p.job], p.worker)
        })
        .collect();
    assert_eq!(got, expected);
}

#[test]
fn preemption_table() {
    let grace = Duration::from_secs(300);
    // Disabled (the default): never.
    check_preemption(None, None, grace * 10, &[]);
    // Before the grace period: not yet.
    check_preemption(Some(grace), None, grace - Duration::from_secs(1), &[]);
    // After it: the borrowed job is named.
    check_preemption(Some(grace), None, grace, &["a-box#0@a-box"]);
    // An owner at its cap would not get the slot: no preemption.
    check_preemption(Some(grace), Some(0), grace, &[]);
}

#[test]
fn a_preempted_job_returns_to_its_place_and_the_owner_gets_the_worker() {
    let (mut s, labels, t0) = setup(
        &[Team::new("a"), Team::new("b")],
        &[
            w("a-box", "linux/amd64").owner("a").busy("b"),
            w("pool", "linux/amd64").busy("b"),
        ],
        &[j("a1", "a")],
    );
    s.set_preemption_grace(Some(Duration::from_secs(60)));
    let preemptions = s.preemptions(t0 + Duration::from_secs(60));
    assert_eq!(preemptions.len(), 1);
    let p = &preemptions[0];
    assert_eq!(labels[&p.job], "a-box#0");
    assert!(s.preempt(p.job));
    assert!(!s.preempt(p.job), "no longer running");
    assert_eq!(s.queued(), 2);
    let got: Vec<String> = s
        .assign()
        .into_iter()
        .map(|a| format!("{}->{}", labels[&a.job], a.worker))
        .collect();
    assert_eq!(got, ["a1->a-box"]);
    // Nothing left to reclaim: the owner runs on its worker.
    assert!(s.preemptions(t0 + Duration::from_secs(600)).is_empty());
    assert_eq!(s.running_of_team("a"), 1);
    assert_eq!(s.running_of_team("b"), 1);
    // The preempted job kept its team: it takes the next free slot.
    s.finished(
        labels
            .iter()
            .find(|(_, l)| *l == "pool#0")
            .map(|(id, _)| *id)
            .unwrap(),
    );
    let got: Vec<String> = s
        .assign()
        .into_iter()
        .map(|a| format!("{}->{}", labels[&a.job], a.worker))
        .collect();
    assert_eq!(got, ["a-box#0->pool"]);
    assert_eq!(s.running_of_team("b"), 1);
}

/// The workers stop lending at t0 (setup); then `changes` (seconds after t0, lending) apply, and
/// the preemptions at `at` seconds are "job@worker cause team".
#[track_caller]
fn check_taken_back(
    grace: Option<u64>,
    workers: &[W],
    jobs: &[J],
    changes: &[(u64, &str, bool)],
    at: u64,
    expected: &[&str],
) {
    let teams = [Team::new("a"), Team::new("b")];
    let (mut s, labels, t0) = setup(&teams, workers, jobs);
    s.set_preemption_grace(grace.map(Duration::from_secs));
    for (after, worker, lending) in changes {
        s.set_lending(worker, *lending, t0 + Duration::from_secs(*after));
    }
    let got: Vec<String> = s
        .preemptions(t0 + Duration::from_secs(at))
        .into_iter()
        .map(|p| format!("{}@{} {:?} {}", labels[&p.job], p.worker, p.cause, p.team))
        .collect();
    assert_eq!(got, expected);
}

#[test]
fn a_worker_taken_back_keeps_borrowed_jobs_for_the_grace_period_only() {
    let taken_back = || {
        w("a-box", "linux/amd64")
            .owner("a")
            .slots(3)
            .busy("b")
            .busy("a")
            .busy("b")
            .not_lending()
    };
    // The most recently queued borrowed job first.
    let both = [
        "a-box#2@a-box LendingStopped a",
        "a-box#0@a-box LendingStopped a",
    ];
    // Without a grace period (preemption off, the default) borrowed jobs finish.
    check_taken_back(None, &[taken_back()], &[], &[], 3600, &[]);
    // Before the grace period: they stay; from its end: every borrowed job goes, the owner's stays.
    check_taken_back(Some(300), &[taken_back()], &[], &[], 299, &[]);
    check_taken_back(Some(300), &[taken_back()], &[], &[], 300, &both);
    // Repeated heartbeats saying "not lending" do not restart the clock.
    check_taken_back(
        Some(300),
        &[taken_back()],
        &[],
        &[(100, "a-box", false), (200, "a-box", false)],
        300,
        &both,
    );
    // Lending again within the grace period: nothing is preempted; stopping again restarts it.
    check_taken_back(
        Some(300),
        &[taken_back()],
        &[],
        &[(100, "a-box", true)],
        600,
        &[],
    );
    check_taken_back(
        Some(300),
        &[taken_back()],
        &[],
        &[(100, "a-box", true), (200, "a-box", false)],
        499,
        &[],
    );
    check_taken_back(
        Some(300),
        &[taken_back()],
        &[],
        &[(100, "a-box", true), (200, "a-box", false)],
        500,
        &both,
    );
    // A worker nobody owns that stops lending: every job there is borrowed.
    check_taken_back(
        Some(60),
        &[w("x86", "linux/amd64").busy("a").not_lending()],
        &[],
        &[],
        60,
        &["x86#0@x86 LendingStopped "],
    );
    // A worker that lends is never taken back, and one owner job waiting on a full worker takes
    // the first borrowed job as before; the other goes because the worker stopped lending.
    check_taken_back(
        Some(300),
        &[w("pool", "linux/amd64").busy("b")],
        &[],
        &[],
        3600,
        &[],
    );
    check_taken_back(
        Some(300),
        &[taken_back()],
        &[j("a1", "a")],
        &[],
        300,
        &[
            "a-box#2@a-box OwnerWaited a",
            "a-box#0@a-box LendingStopped a",
        ],
    );
}

#[test]
fn a_job_taken_back_runs_elsewhere_never_again_on_the_worker_that_stopped_lending() {
    let (mut s, labels, t0) = setup(
        &[Team::new("a"), Team::new("b")],
        &[
            w("a-box", "linux/amd64").owner("a").busy("b").not_lending(),
            w("pool", "linux/amd64").busy("b"),
        ],
        &[],
    );
    s.set_preemption_grace(Some(Duration::from_secs(60)));
    let p = s.preemptions(t0 + Duration::from_secs(60));
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(s.preempt(p[0].job));
    assert_eq!(s.slots_in_use("a-box"), 0);
    // The pool is full, the owner's worker idle but not lent: the job waits.
    assert!(s.assign().is_empty());
    assert!(s.preemptions(t0 + Duration::from_secs(120)).is_empty());
    let pool_job = labels
        .iter()
        .find(|(_, l)| *l == "pool#0")
        .map(|(id, _)| *id);
    s.finished(pool_job.unwrap());
    let got: Vec<String> = s
        .assign()
        .into_iter()
        .map(|a| format!("{}->{}", labels[&a.job], a.worker))
        .collect();
    assert_eq!(got, ["a-box#0->pool"]);
}

#[test]
fn paused_and_lending_table() {
    let a = || Team::new("a");
    let b = || Team::new("b");
    // A paused worker takes no job, not even its owner's.
    check_teams(
        &[a(), b()],
        &[w("a-box", "linux/amd64").owner("a").paused()],
        &[j("a1", "a"), j("b1", "b")],
        &[],
    );
    // A paused worker's jobs go to another worker of the platform.
    check_teams(
        &[a()],
        &[w("x86", "linux/amd64").paused(), w("x86-2", "linux/amd64")],
        &[j("a1", "a")],
        &["a1->x86-2"],
    );
    // Not lending: the owner's job still runs there.
    check_teams(
        &[a(), b()],
        &[w("a-box", "linux/amd64").owner("a").not_lending()],
        &[j("b1", "b"), j("a1", "a")],
        &["a1->a-box"],
    );
    // Not lending: another team's job waits although the worker is idle...
    check_teams(
        &[a(), b()],
        &[w("a-box", "linux/amd64").owner("a").slots(2).not_lending()],
        &[j("b1", "b")],
        &[],
    );
    // ...or goes to a worker that lends, even with its cache affinity for the one that does not.
    check_teams(
        &[a(), b()],
        &[
            w("a-box", "linux/amd64").owner("a").not_lending(),
            w("pool", "linux/amd64").emulated(),
        ],
        &[j("b1", "b").affinity("a-box"), j("a1", "a")],
        &["a1->a-box", "b1->pool"],
    );
    check_teams(
        &[a(), b()],
        &[
            w("a-box", "linux/amd64").owner("a").not_lending(),
            w("pool", "linux/amd64"),
        ],
        &[j("b1", "b").affinity("a-box")],
        &["b1->pool"],
    );
    // A worker without owner that does not lend takes no job at all.
    check_teams(
        &[a()],
        &[w("x86", "linux/amd64").not_lending()],
        &[j("a1", "a"), j("d1", "-")],
        &[],
    );
    // Lending again: the waiting borrower gets the slot.
    let (mut s, labels, t0) = setup(
        &[a(), b()],
        &[w("a-box", "linux/amd64").owner("a").not_lending()],
        &[j("b1", "b")],
    );
    assert!(s.assign().is_empty());
    s.set_lending("a-box", true, t0);
    let got: Vec<String> = s
        .assign()
        .into_iter()
        .map(|x| format!("{}->{}", labels[&x.job], x.worker))
        .collect();
    assert_eq!(got, ["b1->a-box"]);
    // Paused, then resumed: the job waits, then runs.
    let (mut s, labels, _) = setup(&[a()], &[w("x86", "linux/amd64").paused()], &[j("a1", "a")]);
    assert!(s.assign().is_empty());
    assert_eq!(
        s.status("x86").map(|st| (st.ready(), st.paused)),
        Some((false, true))
    );
    s.set_paused("x86", false);
    let got: Vec<String> = s
        .assign()
        .into_iter()
        .map(|x| format!("{}->{}", labels[&x.job], x.worker))
        .collect();
    assert_eq!(got, ["a1->x86"]);
}
