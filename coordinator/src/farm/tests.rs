//! Table tests of the pure farm at exact times: each script is a list of (milliseconds after
//! t0, step, the effects the step must have), the effects written as text by [`render`]:
//! `assign W ARCH #N`, `cancel W ARCH #N`, `drain W` (messages, in order), `close W` (a session
//! ended), `publish`, `stop-publishing`, `ended STATE` (the build reached a final state), `log ARCH
//! N` (N lines for the durable logs).
//! Nothing else happens in a step whose expectation is empty.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use manifold_proto::{BuildId, JobId, Platform};

use super::state::{Effects, FarmState, Now, PublishFailure, Session};
use super::{FarmConfig, JobOutcome, ToWorker, WorkerHealth, WorkerHello};
use crate::access::Caller;
use crate::build::{Build, BuildRequest, BuildSpec, BuildState, Job, JobState};
use crate::scheduler::Team;

mod checks;
mod deadlines;

/// One thing that happens to the farm.
#[derive(Clone, Debug)]
enum Step {
    /// A build of these architectures (linux/ARCH), as `team`, with `--timeout` seconds (0: 1 h).
    Submit {
        archs: &'static [&'static str],
        team: &'static str,
        timeout: u64,
    },
    /// A worker for linux/ARCH attaches, owned by a team or shared; it restates `running` (arch,
    /// attempt) of the first build.
    Attach {
        name: &'static str,
        arch: &'static str,
        owner: Option<&'static str>,
        running: &'static [(&'static str, u32)],
    },
    /// The worker acknowledges attempt N of the job of ARCH.
    Accept(&'static str, &'static str, u32),
    /// The worker sends an output line of attempt N.
    Log(&'static str, &'static str, u32),
    /// The worker reported the image attempt N pushed; the coordinator starts checking it.
    Reported(&'static str, &'static str, u32),
    /// The image of attempt N passed its check (or, in tables that are not about the check, the
    /// worker pushed it).
    Pushed(&'static str, &'static str, u32),
    /// The image reported for attempt N failed its check.
    CheckFailed(&'static str, &'static str, u32),
    /// Attempt N failed: (worker, arch, attempt, retryable, refused).
    Failed(&'static str, &'static str, u32, bool, bool),
    /// The worker confirms it stopped attempt N, as it does after a cancel.
    Stopped(&'static str, &'static str, u32),
    /// A heartbeat saying how the worker is: (worker, draining, unhealthy).
    Health(&'static str, bool, Option<&'static str>),
    /// A message from the worker that is only a sign of life.
    Heartbeat(&'static str),
    /// `manifold workers pause` (true) or `resume` (false) of the worker.
    Pause(&'static str, bool),
    /// A heartbeat saying whether the worker is paused and whether it lends itself.
    Availability(&'static str, bool, bool),
    /// The worker's stream ended.
    Detach(&'static str),
    /// The list push of the first build ended: its digest, or a failure that waiting does not
    /// fix (401/403, a missing child).
    Published(Result<&'static str, &'static str>),
    /// A try of the list push failed transiently (5xx, connection).
    PublishFailed(&'static str),
    /// `manifold publish` of the first build, by a user named `ops`.
    Republish,
    /// The user cancels the first build.
    Cancel,
    /// The list push of build N (in submission order, from 0) ended.
    PublishedOf(usize, Result<&'static str, &'static str>),
    /// A build of linux/amd64 as team `default`, with `--no-cache`.
    SubmitNoCache,
    /// Housekeeping.
    Tick,
    /// The handle sent the assignment of attempt N of the job of ARCH (in scripts that hold
    /// sends; the others send every assignment with its transition).
    Sent(&'static str, u32),
}

/// A pure farm, its clock and what the script refers to.
struct Script {
    state: FarmState,
    t0: Instant,
    wall0: i64,
    builds: Vec<BuildId>,
    sessions: HashMap<String, Session>,
    /// Job id -> arch, for rendering.
    archs: HashMap<JobId, String>,
    /// Assignments leave only at a [`Step::Sent`] (a busy writer), not with their transition.
    hold_sends: bool,
}

impl Script {
    fn new(config: FarmConfig) -> Self {
        Self {
            state: FarmState::new(config),
            t0: Instant::now(),
            wall0: 1_700_000_000_000,
            builds: Vec::new(),
            sessions: HashMap::new(),
            archs: HashMap::new(),
            hold_sends: false,
        }
    }

    /// Submits a build of `spec` as `team`.
    fn submit(
        &mut self,
        (spec, request): (BuildSpec, BuildRequest),
        team: &str,
        now: Now,
    ) -> Effects {
        let by = Caller {
            name: format!("someone-of-{team}"),
            team: team.into(),
            admin: false,
        };
        let (id, effects) = self
            .state
            .submit(spec, request, Default::default(), &by, now);
        self.builds.push(id);
        for j in self.state.get(id).unwrap().jobs {
            self.archs
                .insert(j.id, j.platform.architecture().to_string());
        }
        effects
    }

    fn at(&self, ms: u64) -> Now {
        Now {
            at: self.t0 + Duration::from_millis(ms),
            ms: self.wall0 + ms as i64,
        }
    }

    fn build(&self) -> Build {
        self.state.get(self.builds[0]).unwrap()
    }

    /// The first build's job of linux/ARCH, as the farm holds it now.
    fn job_record(&self, arch: &str) -> Job {
        self.build()
            .jobs
            .into_iter()
            .find(|j| j.platform.architecture() == arch)
            .unwrap_or_else(|| panic!("no {arch} job"))
    }

    fn job(&self, arch: &str) -> JobId {
        self.job_record(arch).id
    }

    fn session(&self, name: &str) -> Session {
        self.sessions
            .get(name)
            .unwrap_or_else(|| panic!("{name} never attached"))
            .clone()
    }

    fn step(&mut self, ms: u64, step: &Step) -> Effects {
        let now = self.at(ms);
        match step.clone() {
            Step::Submit {
                archs,
                team,
                timeout,
            } => self.submit(spec(archs, timeout), team, now),
            Step::Attach {
                name,
                arch,
                owner,
                running,
            } => {
                let running = running
                    .iter()
                    .map(|(arch, attempt)| (self.job(arch), *attempt))
                    .collect();
                let (session, effects) = self
                    .state
                    .attach(hello(name, arch, owner, running), now)
                    .expect("hello accepted");
                self.sessions.insert(name.into(), session);
                effects
            }
            Step::Accept(w, arch, n) => {
                let (s, job) = (self.session(w), self.job(arch));
                self.state.accepted(&s, job, n, now)
            }
            Step::Log(w, arch, n) => {
                let (s, job) = (self.session(w), self.job(arch));
                self.state
                    .log(&s, job, n, vec![format!("line at {ms}")], now)
            }
            Step::Pushed(w, arch, n) => {
                let (s, job) = (self.session(w), self.job(arch));
                let outcome = JobOutcome::Pushed {
                    digest: format!("sha256:{}", "b".repeat(64)),
                    size: 500,
                    media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                    attestations: Vec::new(),
                };
                self.state.result(&s, job, n, outcome, now)
            }
            Step::Reported(w, arch, n) => {
                let (s, job) = (self.session(w), self.job(arch));
                self.state.reported(&s, job, n, now).1
            }
            Step::CheckFailed(w, arch, n) => {
                let (s, job) = (self.session(w), self.job(arch));
                let outcome = JobOutcome::Failed {
                    message: format!(
                        "worker {w} reported an image that failed verification: manifest sha256:{} is not in 127.0.0.1:5000/team/app",
                        "b".repeat(64)
                    ),
                    retryable: true,
                    cancelled: false,
                    refused: false,
                };
                self.state.result(&s, job, n, outcome, now)
            }
            Step::Failed(w, arch, n, retryable, refused) => {
                let (s, job) = (self.session(w), self.job(arch));
                let outcome = JobOutcome::Failed {
                    message: if refused {
                        "no free slot".into()
                    } else if retryable {
                        "docker daemon unreachable".into()
                    } else {
                        "RUN failed".into()
                    },
                    retryable,
                    cancelled: false,
                    refused,
                };
                self.state.result(&s, job, n, outcome, now)
            }
            Step::Stopped(w, arch, n) => {
                let (s, job) = (self.session(w), self.job(arch));
                let outcome = JobOutcome::Failed {
                    message: "cancelled by the coordinator".into(),
                    retryable: false,
                    cancelled: true,
                    refused: false,
                };
                self.state.result(&s, job, n, outcome, now)
            }
            Step::Health(w, draining, unhealthy) => {
                let s = self.session(w);
                let health = WorkerHealth {
                    draining,
                    unhealthy: unhealthy.map(Into::into),
                    ..WorkerHealth::default()
                };
                self.state.health(&s, health, now)
            }
            Step::Pause(w, paused) => self.state.pause(w, paused, now).unwrap().1,
            Step::Availability(w, paused, lending) => {
                let s = self.session(w);
                let health = WorkerHealth {
                    paused_lending: Some((paused, lending)),
                    ..WorkerHealth::default()
                };
                self.state.health(&s, health, now)
            }
            Step::Heartbeat(w) => {
                let s = self.session(w);
                self.state.heartbeat(&s, now);
                Effects::default()
            }
            Step::Detach(w) => {
                let s = self.session(w);
                self.state.detach(&s, now)
            }
            Step::Published(result) => self.state.published(
                self.builds[0],
                result
                    .map(|d| {
                        (
                            d.to_owned(),
                            "application/vnd.oci.image.index.v1+json".into(),
                        )
                    })
                    .map_err(|e| PublishFailure {
                        message: e.into(),
                        transient: false,
                    }),
                now,
            ),
            Step::PublishFailed(e) => self.state.published(
                self.builds[0],
                Err(PublishFailure {
                    message: e.into(),
                    transient: true,
                }),
                now,
            ),
            Step::Republish => match self.state.republish(self.builds[0], "ops", now) {
                Ok((_, effects)) => effects,
                Err(e) => panic!("republish refused: {e}"),
            },
            Step::Cancel => self.state.cancel(self.builds[0], now).unwrap().1,
            Step::PublishedOf(n, result) => self.state.published(
                self.builds[n],
                result
                    .map(|d| {
                        (
                            d.to_owned(),
                            "application/vnd.oci.image.index.v1+json".into(),
                        )
                    })
                    .map_err(|e| PublishFailure {
                        message: e.into(),
                        transient: false,
                    }),
                now,
            ),
            Step::SubmitNoCache => {
                let (mut spec, request) = spec(&["amd64"], 0);
                spec.flags.no_cache = true;
                self.submit((spec, request), "default", now)
            }
            Step::Tick => self.state.tick(now),
            Step::Sent(arch, n) => {
                let job = self.job(arch);
                self.state.sent_all([(job, n, now.at)], now)
            }
        }
    }

    /// Effects as text, messages in order, then closes, publishing and builds that ended.
    fn render(&self, effects: &Effects) -> String {
        let mut out = Vec::new();
        for (session, message) in &effects.send {
            let w = &session.worker;
            out.push(match message {
                ToWorker::Assign(spec) => {
                    format!(
                        "assign {w} {} #{}",
                        spec.platform.architecture(),
                        spec.attempt
                    )
                }
                ToWorker::Cancel { job, attempt } => {
                    format!("cancel {w} {} #{attempt}", self.archs[job])
                }
                ToWorker::Drain => format!("drain {w}"),
                ToWorker::Pause(true) => format!("pause {w}"),
                ToWorker::Pause(false) => format!("resume {w}"),
            });
        }
        for session in &effects.close {
            out.push(format!("close {}", session.worker));
        }
        for _ in &effects.publish {
            out.push("publish".into());
        }
        for _ in &effects.stop_publishing {
            out.push("stop-publishing".into());
        }
        for l in &effects.logs {
            out.push(format!("log {} {}", self.archs[&l.job], l.lines.len()));
        }
        // Nothing is recorded after a build's end, so a final record is persisted only by the
        // transition that ended the build.
        for b in effects.persist.iter().filter(|b| b.state.is_final()) {
            out.push(format!("ended {:?}", b.state));
        }
        out.join("; ")
    }
}

/// Runs `steps` on a farm with `config`; each step's effects must read as its expectation.
/// Returns the script for further checks of the build.
fn check(config: FarmConfig, steps: &[(u64, Step, &str)]) -> Script {
    run(Script::new(config), steps)
}

fn run(mut script: Script, steps: &[(u64, Step, &str)]) -> Script {
    for (ms, step, expected) in steps {
        let effects = script.step(*ms, step);
        // Persist-then-send: every message of a transition rides with the records it changed;
        // an assignment's record says "assigned" with that attempt.
        for (_, message) in &effects.send {
            if let ToWorker::Assign(spec) = message {
                let record = effects
                    .persist
                    .iter()
                    .find(|b| b.id == spec.build)
                    .expect("an assignment is persisted with its transition");
                let job = record.jobs.iter().find(|j| j.id == spec.job).unwrap();
                assert_eq!((job.state, job.attempt), (JobState::Assigned, spec.attempt));
                if !script.hold_sends {
                    script.state.sent(spec.job, spec.attempt, script.at(*ms).at);
                }
            }
        }
        assert_eq!(script.render(&effects), *expected, "at {ms} ms, {step:?}");
    }
    script
}

fn spec(archs: &[&str], timeout: u64) -> (BuildSpec, BuildRequest) {
    let platforms: Vec<Platform> = archs
        .iter()
        .map(|a| format!("linux/{a}").parse().unwrap())
        .collect();
    let spec = BuildSpec {
        image: "127.0.0.1:5000/team/app:1.0".parse().unwrap(),
        platforms: platforms.clone(),
        context_digest: format!("sha256:{}", "a".repeat(64)),
        dockerfiles: platforms
            .iter()
            .map(|p| (p.clone(), "Dockerfile".to_owned()))
            .collect(),
        build_args: BTreeMap::new(),
        target: None,
        labels: BTreeMap::new(),
        arch_tags: false,
        arch_tag_template: None,
        flags: Default::default(),
        extra_tags: Vec::new(),
    };
    let request = BuildRequest {
        image: "127.0.0.1:5000/team/app:1.0".into(),
        platforms: platforms.iter().map(ToString::to_string).collect(),
        timeout_seconds: timeout,
        ..Default::default()
    };
    (spec, request)
}

fn hello(name: &str, arch: &str, owner: Option<&str>, running: Vec<(JobId, u32)>) -> WorkerHello {
    WorkerHello {
        name: name.into(),
        platforms: vec![format!("linux/{arch}").parse().unwrap()],
        emulated: false,
        slots: 1,
        labels: BTreeMap::new(),
        docker_version: "26.1.5".into(),
        running,
        draining: false,
        unhealthy: None,
        owner: owner.map(Into::into),
        paused: false,
        lending: true,
        disk: None,
    }
}

/// The default timers, but a worker lease long enough that workers need no heartbeats in the
/// tables that are not about the lease ([`leased`] is).
fn config() -> FarmConfig {
    FarmConfig {
        wait_for_workers: Duration::from_secs(120),
        worker_lease: Duration::from_secs(3600),
        max_attempts: 3,
        assign_timeout: Duration::from_secs(30),
        stuck_after: Duration::from_secs(600),
        ..FarmConfig::default()
    }
}

/// The default 15 s worker lease.
fn leased() -> FarmConfig {
    FarmConfig {
        worker_lease: Duration::from_secs(15),
        ..config()
    }
}

const AMD: Step = Step::Submit {
    archs: &["amd64"],
    team: "default",
    timeout: 0,
};

/// A build of linux/amd64 and linux/arm64 as team `default`.
const AMD_ARM: Step = Step::Submit {
    archs: &["amd64", "arm64"],
    team: "default",
    timeout: 0,
};

/// A shared linux/arm64 worker named `arm`.
const ARM: Step = Step::Attach {
    name: "arm",
    arch: "arm64",
    owner: None,
    running: &[],
};

fn attach(name: &'static str) -> Step {
    Step::Attach {
        name,
        arch: "amd64",
        owner: None,
        running: &[],
    }
}

#[test]
fn infrastructure_failures_retry_until_max_attempts_and_refusals_do_not_count() {
    use Step::*;
    let s = check(
        FarmConfig {
            max_attempts: 2,
            ..config()
        },
        &[
            (0, attach("x86"), ""),
            (0, AMD, "assign x86 amd64 #1"),
            // A refusal: requeued, uncounted, and the worker is asked again only after a
            // heartbeat says how it is.
            (100, Failed("x86", "amd64", 1, false, true), ""),
            (200, Health("x86", false, None), "assign x86 amd64 #2"),
            (300, Accept("x86", "amd64", 2), ""),
            (
                400,
                Failed("x86", "amd64", 2, true, false),
                "assign x86 amd64 #3",
            ),
            (500, Accept("x86", "amd64", 3), ""),
            (600, Failed("x86", "amd64", 3, true, false), "ended Failed"),
        ],
    );
    assert_eq!(
        s.build().error.unwrap(),
        "linux/amd64 failed after 2 attempts: attempt 2 on x86: docker daemon unreachable; attempt 3 on x86: docker daemon unreachable"
    );
}

#[test]
fn max_attempts_0_means_one_attempt() {
    use Step::*;
    check(
        FarmConfig {
            max_attempts: 0,
            ..config()
        },
        &[
            (0, attach("x86"), ""),
            (0, AMD, "assign x86 amd64 #1"),
            (100, Failed("x86", "amd64", 1, true, false), "ended Failed"),
        ],
    );
}

#[test]
fn a_build_failure_is_not_retried_and_cancels_the_other_platform() {
    use Step::*;
    let two = AMD_ARM;
    let arm = ARM;
    let s = check(
        config(),
        &[
            (0, attach("x86"), ""),
            (0, arm, ""),
            (0, two, "assign x86 amd64 #1; assign arm arm64 #1"),
            (
                100,
                Failed("x86", "amd64", 1, false, false),
                "cancel arm arm64 #1; ended Failed",
            ),
        ],
    );
    assert_eq!(
        s.build().error.unwrap(),
        "linux/amd64 failed on worker x86: RUN failed"
    );
}

#[test]
fn a_build_past_its_timeout_fails_naming_its_unfinished_platforms() {
    use Step::*;
    let two = Submit {
        archs: &["amd64", "arm64"],
        team: "default",
        timeout: 60,
    };
    let s = check(
        config(),
        &[
            (0, attach("x86"), ""),
            (1_000, two, "assign x86 amd64 #1"),
            (2_000, Accept("x86", "amd64", 1), ""),
            // Queueing counts: 60 s after the submit, whatever ran meanwhile.
            (60_999, Tick, ""),
            (61_000, Tick, "cancel x86 amd64 #1; ended Failed"),
        ],
    );
    assert_eq!(
        s.build().error.unwrap(),
        "timed out after 1m: linux/amd64 (running on x86, attempt 1), linux/arm64 (waiting for a worker) had not finished; pass a longer --timeout to `manifold build` if the build needs more time"
    );
}

#[test]
fn a_build_whose_platforms_all_succeeded_does_not_time_out_while_publishing() {
    use Step::*;
    let quick = Submit {
        archs: &["amd64"],
        team: "default",
        timeout: 10,
    };
    check(
        config(),
        &[
            (0, attach("x86"), ""),
            (0, quick, "assign x86 amd64 #1"),
            (9_000, Pushed("x86", "amd64", 1), "publish"),
            (10_000, Tick, ""),
            (11_000, Published(Ok("sha256:list")), "ended Succeeded"),
        ],
    );
}

#[test]
fn a_cancel_while_publishing_stops_the_push_and_its_late_end_changes_nothing() {
    use Step::*;
    let s = check(
        config(),
        &[
            (0, attach("x86"), ""),
            (0, AMD, "assign x86 amd64 #1"),
            (1_000, Pushed("x86", "amd64", 1), "publish"),
            (2_000, Cancel, "stop-publishing; ended Cancelled"),
            (3_000, Published(Ok("sha256:list")), ""),
        ],
    );
    assert_eq!(s.build().state, BuildState::Cancelled);
}

#[test]
fn a_failed_list_push_fails_the_build() {
    use Step::*;
    let s = check(
        config(),
        &[
            (0, attach("x86"), ""),
            (0, AMD, "assign x86 amd64 #1"),
            (1_000, Pushed("x86", "amd64", 1), "publish"),
            (
                2_000,
                Published(Err("registry answered 500")),
                "ended Failed",
            ),
        ],
    );
    assert_eq!(
        s.build().error.unwrap(),
        format!(
            "every platform was built, but pushing the manifest list to 127.0.0.1:5000/team/app:1.0 failed: registry answered 500; the built platforms are kept: `manifold publish {}` pushes the list again",
            s.builds[0]
        )
    );
}

#[test]
fn a_platform_nobody_can_take_fails_after_wait_for_workers() {
    use Step::*;
    let arm = Submit {
        archs: &["arm64"],
        team: "default",
        timeout: 0,
    };
    let s = check(
        config(),
        &[
            (0, attach("x86"), ""),
            (1_000, arm, ""),
            (120_999, Tick, ""),
            (121_000, Tick, "ended Failed"),
        ],
    );
    let error = s.build().error.unwrap();
    assert!(
        error.starts_with("no worker for linux/arm64 attached within 2m"),
        "{error}"
    );
}

#[test]
fn a_draining_or_unhealthy_worker_gets_no_job_and_starves_its_platform() {
    use Step::*;
    let s = check(
        config(),
        &[
            (0, attach("x86"), ""),
            (0, Health("x86", false, Some("ping failed")), ""),
            (1_000, AMD, ""),
            (60_000, Health("x86", false, None), "assign x86 amd64 #1"),
            (61_000, Failed("x86", "amd64", 1, false, true), ""),
            (62_000, Health("x86", true, None), ""),
            // The wait counts from the requeue after the refusal.
            (180_999, Tick, ""),
            (181_000, Tick, "ended Failed"),
        ],
    );
    let error = s.build().error.unwrap();
    assert!(
        error.starts_with(
            "no worker for linux/amd64 could take the job within 2m (x86 is draining)"
        ),
        "{error}"
    );
}

#[test]
fn an_owner_past_the_grace_period_preempts_a_borrowed_job_without_counting_it() {
    use Step::*;
    let mac = Attach {
        name: "mac",
        arch: "amd64",
        owner: Some("mobile"),
        running: &[],
    };
    let borrowed = Submit {
        archs: &["amd64"],
        team: "platform",
        timeout: 0,
    };
    let owners = Submit {
        archs: &["amd64"],
        team: "mobile",
        timeout: 0,
    };
    let s = check(
        FarmConfig {
            teams: vec![Team::new("mobile"), Team::new("platform")],
            preemption_grace: Some(Duration::from_secs(60)),
            max_attempts: 1,
            ..config()
        },
        &[
            (0, mac, ""),
            (0, borrowed, "assign mac amd64 #1"),
            (1_000, Accept("mac", "amd64", 1), ""),
            (10_000, owners, ""),
            (69_999, Tick, ""),
            // The owner's job waited 60 s: the borrowed attempt is called off, the owner's job
            // takes the slot (its attempt 1).
            (70_000, Tick, "cancel mac amd64 #1; assign mac amd64 #1"),
        ],
    );
    // The borrowed job is back in the queue, its attempt not counted, its history saying why.
    let b = s.build();
    assert_eq!((b.jobs[0].state, b.jobs[0].attempt), (JobState::Queued, 1));
    let (events, _) = s.state.events(b.id, 0).unwrap();
    assert!(
        events
            .iter()
            .any(|e| format!("{:?}", e.kind)
                .contains("preempted: worker mac belongs to team mobile")),
        "{events:?}"
    );
}

#[test]
fn what_a_worker_says_about_a_job_given_to_another_worker_changes_nothing() {
    use Step::*;
    let s = check(
        config(),
        &[
            (0, attach("x86"), ""),
            (0, AMD, "assign x86 amd64 #1"),
            // Another worker (a rogue one, or a buggy one) names x86's job and attempt: its
            // acknowledgement is answered with a cancel to itself, its output and its result
            // are dropped.
            (100, attach("rogue"), ""),
            (200, Accept("rogue", "amd64", 1), "cancel rogue amd64 #1"),
            (300, Log("rogue", "amd64", 1), ""),
            (400, Pushed("rogue", "amd64", 1), ""),
            (500, Failed("rogue", "amd64", 1, false, false), ""),
            // The job is still x86's, which finishes it.
            (1_000, Accept("x86", "amd64", 1), ""),
            (2_000, Pushed("x86", "amd64", 1), "publish"),
            (3_000, Published(Ok("sha256:list")), "ended Succeeded"),
        ],
    );
    let b = s.build();
    assert!(b.jobs[0].log_tail.is_empty(), "{:?}", b.jobs[0].log_tail);
    assert_eq!(b.jobs[0].worker.as_deref(), Some("x86"));
}

#[test]
fn news_of_a_requeued_attempt_is_ignored_while_the_job_waits_for_a_worker() {
    use Step::*;
    let s = check(
        config(),
        &[
            (0, attach("a"), ""),
            (0, AMD, "assign a amd64 #1"),
            (1_000, Accept("a", "amd64", 1), ""),
            // The worker drains; then its attempt goes silent and is called off. The job waits
            // with attempt number 1 still on it: no worker can take it.
            (2_000, Health("a", true, None), ""),
            (601_000, Tick, "cancel a amd64 #1"),
            // The worker confirms the cancel and sends a line of attempt 1: both stale.
            (601_100, Stopped("a", "amd64", 1), ""),
            (601_200, Log("a", "amd64", 1), ""),
            (601_300, Accept("a", "amd64", 1), "cancel a amd64 #1"),
            (602_000, attach("b"), "assign b amd64 #2"),
            (
                603_000,
                Failed("b", "amd64", 2, false, false),
                "ended Failed",
            ),
        ],
    );
    let b = s.build();
    assert_eq!(
        b.error.unwrap(),
        "linux/amd64 failed on worker b: RUN failed"
    );
    assert!(b.jobs[0].log_tail.is_empty(), "{:?}", b.jobs[0].log_tail);
}

#[test]
fn a_drain_request_tells_the_worker_and_no_job_goes_to_it() {
    let mut s = check(config(), &[(0, attach("x86"), "")]);
    let (view, effects) = s.state.drain("x86").unwrap();
    assert!(view.draining);
    assert_eq!(s.render(&effects), "drain x86");
    assert!(matches!(
        s.state.drain("nobody"),
        Err(super::FarmError::UnknownWorker(name)) if name == "nobody"
    ));
    let effects = s.step(1_000, &AMD);
    assert_eq!(s.render(&effects), "");
    let effects = s.step(2_000, &attach("x86-2"));
    assert_eq!(s.render(&effects), "assign x86-2 amd64 #1");
}

#[test]
fn a_restored_farm_waits_the_lease_for_running_jobs_and_queues_the_others() {
    use Step::*;
    let two = AMD_ARM;
    let before = check(
        leased(),
        &[
            (0, attach("x86"), ""),
            (0, two, "assign x86 amd64 #1"),
            (1_000, Accept("x86", "amd64", 1), ""),
        ],
    );
    let record = before.build();
    // A new coordinator takes the record back at its own t0.
    let mut s = Script::new(leased());
    let effects = s.state.restore(vec![record.clone()], vec![], s.at(0));
    assert_eq!(s.render(&effects), "");
    s.builds.push(record.id);
    for j in &record.jobs {
        s.archs.insert(j.id, j.platform.architecture().to_string());
    }
    let arm = ARM;
    for (ms, step, expected) in [
        (1_000, arm, "assign arm arm64 #1"),
        // Another amd64 worker gets nothing while the job waits for its own worker...
        (1_000, attach("x86-b"), ""),
        (14_999, Tick, ""),
        // ...which did not come back within the lease: the job moves, the attempt counted.
        (15_000, Tick, "assign x86-b amd64 #2"),
    ] {
        let effects = s.step(ms, &step);
        assert_eq!(s.render(&effects), expected, "at {ms} ms, {step:?}");
    }
    let amd = s.job_record("amd64");
    assert_eq!((amd.state, amd.attempt), (JobState::Assigned, 2));
    assert_eq!(amd.error.as_deref(), Some("attempt 1 on x86: worker lost"));
}

/// An acknowledgement is not written on its own (a restart from the assigned record does what one
/// from a running record does): watchers see it at once, and the build's next record carries it.
#[test]
fn an_acknowledgement_rides_with_the_builds_next_record_and_a_restart_from_before_it_adopts_the_job()
 {
    use Step::*;
    let mut s = check(leased(), &[(0, attach("x86"), "")]);
    let assigned = s.step(0, &AMD);
    assert_eq!(s.render(&assigned), "assign x86 amd64 #1");
    let written = assigned
        .persist
        .last()
        .cloned()
        .expect("the assignment is written");
    assert_eq!(written.jobs[0].state, JobState::Assigned);

    let accepted = s.step(1_000, &Accept("x86", "amd64", 1));
    assert!(accepted.persist.is_empty(), "{:?}", accepted.persist);
    assert_eq!(accepted.history.len(), 1, "watchers hear of it");
    let held = s.build();
    assert_eq!(
        (held.state, held.jobs[0].state),
        (BuildState::Running, JobState::Running)
    );
    assert!(s.step(2_000, &Log("x86", "amd64", 1)).persist.is_empty());
    let pushed = s.step(3_000, &Pushed("x86", "amd64", 1));
    let next = pushed.persist.last().expect("the image is written");
    assert_eq!(
        (next.state, next.jobs[0].state),
        (BuildState::Running, JobState::Succeeded)
    );
    assert_eq!(next.version, written.version + 1);

    // A coordinator that restarts from the assigned record: the worker restating the attempt
    // gets it back (no new assignment) within the lease, and the adoption is written.
    let mut r = Script::new(leased());
    let _ = r.state.restore(vec![written.clone()], vec![], r.at(0));
    r.builds.push(written.id);
    r.archs.insert(written.jobs[0].id, "amd64".into());
    let back = Attach {
        name: "x86",
        arch: "amd64",
        owner: None,
        running: &[("amd64", 1)],
    };
    let adopted = r.step(5_000, &back);
    assert_eq!(r.render(&adopted), "");
    let record = adopted.persist.last().expect("the adoption is written");
    assert_eq!(
        (record.state, record.jobs[0].state, record.jobs[0].attempt),
        (BuildState::Running, JobState::Running, 1)
    );
    let later = r.step(20_000, &Tick);
    assert_eq!(r.render(&later), "", "adopted: no lease requeue");
}

#[test]
fn a_paused_worker_gets_no_job_until_resumed_and_one_that_does_not_lend_only_its_owners() {
    use Step::*;
    let mac = Attach {
        name: "mac",
        arch: "amd64",
        owner: Some("mobile"),
        running: &[],
    };
    let submit = |team| Submit {
        archs: &["amd64"],
        team,
        timeout: 0,
    };
    let teams = || FarmConfig {
        teams: vec![Team::new("mobile"), Team::new("web")],
        ..config()
    };
    // Paused: told so, and the build waits through heartbeats; resumed, it is assigned at once.
    check(
        teams(),
        &[
            (0, mac.clone(), ""),
            (0, Pause("mac", true), "pause mac"),
            (10, submit("mobile"), ""),
            (1_000, Availability("mac", true, true), ""),
            (2_000, Tick, ""),
            (
                3_000,
                Pause("mac", false),
                "resume mac; assign mac amd64 #1",
            ),
        ],
    );
    // Not lending: another team's build waits; lending again, it is assigned.
    check(
        teams(),
        &[
            (0, mac.clone(), ""),
            (0, Availability("mac", false, false), ""),
            (10, submit("web"), ""),
            (2_000, Tick, ""),
            (
                3_000,
                Availability("mac", false, true),
                "assign mac amd64 #1",
            ),
        ],
    );
    // Not lending: the owner's build still runs there.
    check(
        teams(),
        &[
            (0, mac, ""),
            (0, Availability("mac", false, false), ""),
            (10, submit("mobile"), "assign mac amd64 #1"),
        ],
    );
}

#[test]
fn a_worker_s_disk_is_what_its_last_report_said() {
    use manifold_proto::DiskUsage;
    let mut s = check(config(), &[(0, attach("x86"), "")]);
    let disk = |free: u64| DiskUsage {
        free_bytes: free,
        cache_bytes: 7,
        build_cache_bytes: None,
    };
    let views = |s: &Script| s.state.workers()[0].disk;
    assert_eq!(views(&s), None, "not reported yet");
    let session = s.session("x86");
    let report = |disk: Option<DiskUsage>| WorkerHealth {
        disk,
        ..WorkerHealth::default()
    };
    let _ = s
        .state
        .health(&session, report(Some(disk(100))), s.at(1_000));
    assert_eq!(views(&s), Some(disk(100)));
    // A heartbeat without a measurement (the disk could not be read) keeps the last one.
    let _ = s.state.health(&session, report(None), s.at(2_000));
    assert_eq!(views(&s), Some(disk(100)));
    let _ = s
        .state
        .health(&session, report(Some(disk(50))), s.at(3_000));
    assert_eq!(views(&s), Some(disk(50)));
}

#[test]
fn an_owner_taking_the_machine_back_preempts_borrowed_jobs_past_the_grace_period() {
    use Step::*;
    let mac = Attach {
        name: "mac",
        arch: "amd64",
        owner: Some("mobile"),
        running: &[],
    };
    let borrowed = Submit {
        archs: &["amd64"],
        team: "web",
        timeout: 0,
    };
    let config = |grace: Option<u64>| FarmConfig {
        teams: vec![Team::new("mobile"), Team::new("web")],
        preemption_grace: grace.map(Duration::from_secs),
        max_attempts: 1,
        ..config()
    };
    // The owner stops lending at 10 s, with no job of its own: the borrowed attempt is called off
    // once the grace period has passed, and its job waits (the machine is no longer lent).
    let s = check(
        config(Some(60)),
        &[
            (0, mac.clone(), ""),
            (0, borrowed.clone(), "assign mac amd64 #1"),
            (1_000, Accept("mac", "amd64", 1), ""),
            (10_000, Availability("mac", false, false), ""),
            (40_000, Availability("mac", false, false), ""),
            (69_999, Tick, ""),
            (70_000, Tick, "cancel mac amd64 #1"),
            (71_000, Stopped("mac", "amd64", 1), ""),
            (80_000, Tick, ""),
            // Lent again: the job runs there as attempt 2, although max_attempts is 1: the
            // preempted attempt did not count.
            (
                90_000,
                Availability("mac", false, true),
                "assign mac amd64 #2",
            ),
        ],
    );
    let b = s.build();
    assert_eq!(
        (b.jobs[0].state, b.jobs[0].attempt),
        (JobState::Assigned, 2)
    );
    let (events, _) = s.state.events(b.id, 0).unwrap();
    assert!(
        events.iter().any(|e| format!("{:?}", e.kind)
            .contains("preempted: worker mac stopped lending (its owner took it back)")),
        "{events:?}"
    );
    // Lending again within the grace period: nothing is called off.
    check(
        config(Some(60)),
        &[
            (0, mac.clone(), ""),
            (0, borrowed.clone(), "assign mac amd64 #1"),
            (1_000, Accept("mac", "amd64", 1), ""),
            (10_000, Availability("mac", false, false), ""),
            (50_000, Availability("mac", false, true), ""),
            (200_000, Tick, ""),
        ],
    );
    // Without a grace period (preemption off, the default) the borrowed job finishes.
    check(
        config(None),
        &[
            (0, mac, ""),
            (0, borrowed, "assign mac amd64 #1"),
            (1_000, Accept("mac", "amd64", 1), ""),
            (10_000, Availability("mac", false, false), ""),
            (300_000, Tick, ""),
            (301_000, Pushed("mac", "amd64", 1), "publish"),
        ],
    );
}

#[test]
fn a_list_push_failing_transiently_waits_and_tries_again_within_the_window() {
    use Step::*;
    let s = check(
        config(),
        &[
            (0, attach("x86"), ""),
            (0, AMD, "assign x86 amd64 #1"),
            (1_000, Pushed("x86", "amd64", 1), "publish"),
            (16_000, PublishFailed("registry answered 500"), ""),
            (17_999, Tick, ""),
            (18_000, Tick, "publish"),
            (18_250, Tick, ""),
            (33_000, PublishFailed("registry answered 500"), ""),
            (36_999, Tick, ""),
            (37_000, Tick, "publish"),
            (40_000, Published(Ok("sha256:list")), "ended Succeeded"),
        ],
    );
    let b = s.build();
    assert_eq!(b.manifest.unwrap().0, "sha256:list");
    assert_eq!((b.publishing, b.error), (None, None));
    assert_eq!(b.jobs[0].attempt, 1, "published without rebuilding");
}

#[test]
fn a_waiting_list_push_says_so_in_the_build_and_its_history() {
    use Step::*;
    let mut s = check(
        config(),
        &[
            (0, attach("x86"), ""),
            (0, AMD, "assign x86 amd64 #1"),
            (1_000, Pushed("x86", "amd64", 1), "publish"),
        ],
    );
    assert_eq!(s.build().publishing.as_deref(), Some("publishing"));
    let _ = s.step(16_000, &PublishFailed("registry R answered 500"));
    let expected = "retrying: registry R answered 500; next try in 2s, giving up in 9m45s";
    assert_eq!(
        s.build().publishing.unwrap(),
        format!("publishing ({expected})")
    );
    let (events, ended) = s.state.events(s.builds[0], 0).unwrap();
    assert!(!ended);
    assert!(matches!(
        &events.last().unwrap().kind,
        crate::build::EventKind::Publishing { message } if message == expected
    ));
}

#[test]
fn a_list_push_failing_past_the_window_fails_the_build_and_manifold_publish_pushes_it_later() {
    use Step::*;
    let window = FarmConfig {
        publish_window: Duration::from_secs(30),
        ..config()
    };
    let s = check(
        window,
        &[
            (0, attach("x86"), ""),
            (0, AMD, "assign x86 amd64 #1"),
            (1_000, Pushed("x86", "amd64", 1), "publish"),
            (16_000, PublishFailed("registry answered 500"), ""),
            (18_000, Tick, "publish"),
            // 30 s after the first try started: the wait is cut to the window's end.
            (29_000, PublishFailed("registry answered 500"), ""),
            (31_000, Tick, "publish"),
            (
                46_000,
                PublishFailed("registry answered 500"),
                "ended Failed",
            ),
            (50_000, Tick, ""),
            (100_000, Republish, "publish"),
            (101_000, Published(Ok("sha256:list")), "ended Succeeded"),
        ],
    );
    let b = s.build();
    assert_eq!(b.state, BuildState::Succeeded);
    assert_eq!(b.jobs[0].attempt, 1, "published without rebuilding");
    assert_eq!(b.jobs[0].state, JobState::Succeeded);
    let (events, ended) = s.state.events(s.builds[0], 0).unwrap();
    assert!(ended);
    let finished: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.kind {
            crate::build::EventKind::Finished { state, .. } => Some(format!("{state:?}")),
            crate::build::EventKind::Publishing { message } if message.contains("again") => {
                Some(message.clone())
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        finished,
        [
            "Failed",
            "publishing the manifest list again (`manifold publish`, by ops)",
            "Succeeded"
        ]
    );
}

#[test]
fn the_failure_after_the_window_names_it_and_the_way_out() {
    use Step::*;
    let window = FarmConfig {
        publish_window: Duration::from_secs(10),
        ..config()
    };
    let s = check(
        window,
        &[
            (0, attach("x86"), ""),
            (0, AMD, "assign x86 amd64 #1"),
            (1_000, Pushed("x86", "amd64", 1), "publish"),
            (
                16_000,
                PublishFailed("registry answered 500"),
                "ended Failed",
            ),
        ],
    );
    let b = s.build();
    assert_eq!(
        b.error.unwrap(),
        format!(
            "every platform was built, but pushing the manifest list to 127.0.0.1:5000/team/app:1.0 failed (retried for 15s, --publish-window): registry answered 500; the built platforms are kept: `manifold publish {}` pushes the list again",
            s.builds[0]
        )
    );
    assert!(b.jobs[0].image.is_some(), "the built platform is kept");
    assert_eq!(b.publishing, None);
}

#[test]
fn a_cancel_while_a_list_push_waits_ends_the_build_and_no_try_follows() {
    use Step::*;
    let s = check(
        config(),
        &[
            (0, attach("x86"), ""),
            (0, AMD, "assign x86 amd64 #1"),
            (1_000, Pushed("x86", "amd64", 1), "publish"),
            (16_000, PublishFailed("registry answered 500"), ""),
            (17_000, Cancel, "stop-publishing; ended Cancelled"),
            (18_000, Tick, ""),
            (30_000, Tick, ""),
        ],
    );
    assert_eq!(s.build().state, BuildState::Cancelled);
    assert_eq!(s.build().publishing, None);
}

#[test]
fn only_a_build_that_failed_at_publishing_can_be_published_again() {
    use Step::*;
    let mut s = check(
        config(),
        &[(0, attach("x86"), ""), (0, AMD, "assign x86 amd64 #1")],
    );
    let id = s.builds[0];
    let refused = |s: &mut Script, ms| {
        let now = s.at(ms);
        match s.state.republish(id, "ops", now) {
            Ok(_) => panic!("published again"),
            Err(e) => e.to_string(),
        }
    };
    assert_eq!(
        refused(&mut s, 500),
        format!("build {id} cannot be published again: it is queued, not failed")
    );
    let _ = s.step(1_000, &Failed("x86", "amd64", 1, false, false));
    assert_eq!(
        refused(&mut s, 2_000),
        format!(
            "build {id} cannot be published again: its linux/amd64 platform was not built (failed); submit the build again"
        )
    );
}

const OTHER_TEAM: Step = Step::Submit {
    archs: &["amd64"],
    team: "other",
    timeout: 0,
};

#[test]
fn an_identical_submit_joins_the_running_build_and_another_teams_does_not() {
    use crate::build::Reused;
    use Step::*;
    let mut s = check(
        config(),
        &[
            (0, attach("x86"), ""),
            (0, AMD, "assign x86 amd64 #1"),
            (1_000, Accept("x86", "amd64", 1), ""),
            (2_000, Log("x86", "amd64", 1), "log amd64 1"),
            // Joins: no job; the line so far is replayed into its own logs.
            (3_000, AMD, "log amd64 1"),
            // Another team's identical build is not shared: it waits for the one slot.
            (3_000, OTHER_TEAM, ""),
            (4_000, Log("x86", "amd64", 1), "log amd64 1; log amd64 1"),
            // One push serves both builds of the team; the slot goes to the other team's job.
            (
                5_000,
                Pushed("x86", "amd64", 1),
                "assign x86 amd64 #1; publish; publish",
            ),
            (6_000, Published(Ok("sha256:list")), "ended Succeeded"),
            (6_000, PublishedOf(1, Ok("sha256:list")), "ended Succeeded"),
        ],
    );
    let (leader, joined, other) = (
        s.state.get(s.builds[0]).unwrap(),
        s.state.get(s.builds[1]).unwrap(),
        s.state.get(s.builds[2]).unwrap(),
    );
    assert_eq!(joined.reused, Some(Reused::Joined(leader.id)));
    assert_eq!(joined.jobs[0].image, leader.jobs[0].image);
    assert!(joined.jobs[0].image.is_some());
    assert_eq!(other.reused, None);
    assert_eq!(
        (other.jobs[0].state, other.jobs[0].attempt),
        (JobState::Assigned, 1)
    );
    // The follower saw the leader's progress in its own history.
    let (events, _) = s.state.events(joined.id, 0).unwrap();
    let text: Vec<String> = events.iter().map(|e| format!("{:?}", e.kind)).collect();
    assert!(text.iter().any(|e| e.contains("joined build")), "{text:?}");
    assert!(
        text.iter().any(|e| e.contains("state: Running")),
        "{text:?}"
    );
    assert_eq!(text.iter().filter(|e| e.contains("line at")).count(), 2);

    // Resubmitted after success: the images are reused, no worker is involved.
    let effects = s.step(7_000, &AMD);
    assert_eq!(s.render(&effects), "publish");
    let reused = s.state.get(s.builds[3]).unwrap();
    assert!(matches!(reused.reused, Some(Reused::From(_))), "{reused:?}");
    assert_eq!((reused.jobs[0].attempt, &reused.jobs[0].worker), (0, &None));
    assert_eq!(reused.jobs[0].image, leader.jobs[0].image);
    let effects = s.step(8_000, &PublishedOf(3, Ok("sha256:list")));
    assert_eq!(s.render(&effects), "ended Succeeded");
    // --no-cache never reuses: it waits for the slot the other team holds.
    let effects = s.step(9_000, &SubmitNoCache);
    assert_eq!(s.render(&effects), "");
    assert_eq!(s.state.get(s.builds[4]).unwrap().reused, None);
    assert_eq!(
        s.state.get(s.builds[4]).unwrap().jobs[0].state,
        JobState::Queued
    );
}

#[test]
fn a_follower_builds_on_its_own_when_the_joined_build_is_cancelled_and_fails_with_it() {
    use crate::build::Reused;
    use Step::*;
    let s = check(
        config(),
        &[
            (0, attach("x86"), ""),
            (0, AMD, "assign x86 amd64 #1"),
            (1_000, AMD, ""),
            // Cancelled: the follower queues its own job, which takes the freed slot.
            (
                2_000,
                Cancel,
                "cancel x86 amd64 #1; assign x86 amd64 #1; ended Cancelled",
            ),
        ],
    );
    let follower = s.state.get(s.builds[1]).unwrap();
    assert_eq!(follower.reused, None);
    assert_eq!(follower.jobs[0].state, JobState::Assigned);

    let s = check(
        config(),
        &[
            (0, attach("x86"), ""),
            (0, AMD, "assign x86 amd64 #1"),
            (1_000, AMD, ""),
            (2_000, Accept("x86", "amd64", 1), ""),
            // A RUN step failed: the same inputs fail the same way.
            (
                3_000,
                Failed("x86", "amd64", 1, false, false),
                "ended Failed; ended Failed",
            ),
        ],
    );
    let follower = s.state.get(s.builds[1]).unwrap();
    assert_eq!(follower.reused, Some(Reused::Joined(s.builds[0])));
    let error = follower.error.unwrap();
    assert!(
        error.contains(&format!("build {}, which this build joined (identical inputs), failed: linux/amd64 failed on worker x86", s.builds[0])),
        "{error}"
    );
}

mod history;
