//! What workers do to the farm's state: attach (adopting restated attempts), heartbeat, say how
//! they are, acknowledge, log, report results, drain, detach.

use manifold_proto::JobId;
use manifold_registry::ChildImage;

use super::{
    Effects, FarmState, ImageCheck, Now, Session, WorkerConn, append_error, job_mut, note, record,
    timers,
};
use crate::build::{BuildState, EventKind, JobState, LOG_TAIL_LINES};
use crate::farm::{FarmError, JobOutcome, ToWorker, WorkerHealth, WorkerHello, WorkerView};
use crate::scheduler::WorkerCaps;

use super::MAX_LOG_EVENTS;

impl FarmState {
    /// The handle handed the assignment of `attempt` of `job` to its worker's stream at `at`
    /// (after its record was durable), or gave it up: its acknowledgement deadline runs from then.
    pub fn sent(&mut self, job: JobId, attempt: u32, at: std::time::Instant) {
        self.unsent.remove(&(job, attempt));
        if let Some(live) = self.live.get_mut(&job).filter(|l| l.attempt == attempt) {
            live.sent(at);
        }
    }

    /// The writer sent these assignments (or gave them up): their deadlines run, and the jobs
    /// held back while `max_unsent` assignments waited for the writer are decided now.
    pub fn sent_all(
        &mut self,
        sent: impl IntoIterator<Item = (JobId, u32, std::time::Instant)>,
        now: Now,
    ) -> Effects {
        for (job, attempt, at) in sent {
            self.sent(job, attempt, at);
        }
        self.dispatch(now);
        self.take_effects()
    }

    /// `manifold workers drain NAME`: the worker gets no new job and is told to drain.
    pub fn drain(&mut self, name: &str) -> Result<(WorkerView, Effects), FarmError> {
        let Some(session) = self.session_of(name) else {
            return Err(FarmError::UnknownWorker(name.to_owned()));
        };
        self.scheduler.drain_worker(name);
        self.pending.send.push((session, ToWorker::Drain));
        tracing::info!(worker = %name, "drain requested");
        let view = self.worker_view(&self.workers[name]);
        Ok((view, self.take_effects()))
    }

    /// `manifold workers pause|resume NAME`: the worker is told to pause (keep its running jobs,
    /// take no new one) or resume, and the scheduler treats it so at once.
    pub fn pause(
        &mut self,
        name: &str,
        paused: bool,
        now: Now,
    ) -> Result<(WorkerView, Effects), FarmError> {
        let Some(session) = self.session_of(name) else {
            return Err(FarmError::UnknownWorker(name.to_owned()));
        };
        self.scheduler.set_paused(name, paused);
        self.pending.send.push((session, ToWorker::Pause(paused)));
        tracing::info!(worker = %name, paused, "pause requested");
        let view = self.worker_view(&self.workers[name]);
        self.dispatch(now);
        Ok((view, self.take_effects()))
    }

    /// A worker said hello: it gets a session; restated jobs whose attempt is still out are
    /// adopted, the others cancelled on it; jobs of its earlier session it did not restate are
    /// handed back at once.
    pub fn attach(
        &mut self,
        hello: WorkerHello,
        now: Now,
    ) -> Result<(Session, Effects), FarmError> {
        if hello.name.trim().is_empty() {
            return Err(FarmError::BadHello("the worker name is empty".into()));
        }
        if hello.platforms.is_empty() {
            return Err(FarmError::BadHello(format!(
                "worker `{}` announced no platform",
                hello.name
            )));
        }
        if hello.slots == 0 {
            return Err(FarmError::BadHello(format!(
                "worker `{}` announced 0 slots; use --slots 1 or more",
                hello.name
            )));
        }
        if self.workers.contains_key(&hello.name) {
            return Err(FarmError::DuplicateWorker(hello.name));
        }
        self.next_session += 1;
        let session = Session {
            worker: hello.name.clone(),
            id: self.next_session,
        };

        // Adopt the restated jobs whose attempt is still out (assigned or running, not requeued);
        // tell the worker to drop the others.
        let mut adopted = Vec::new();
        for (job, attempt) in &hello.running {
            if self.current_build_on(&hello.name, *job, *attempt).is_some() {
                adopted.push(*job);
            } else {
                self.pending.send.push((
                    session.clone(),
                    ToWorker::Cancel {
                        job: *job,
                        attempt: *attempt,
                    },
                ));
            }
        }
        for job in &adopted {
            self.orphans.remove(job);
            let build_id = self.job_build[job];
            let entry = self.builds.get_mut(&build_id).expect("job's build exists");
            let j = job_mut(&mut entry.build, *job);
            j.worker = Some(hello.name.clone());
            j.state = JobState::Running;
            let (platform, attempt) = (j.platform.clone(), j.attempt);
            if entry.build.state == BuildState::Queued {
                entry.build.state = BuildState::Running;
            }
            record(
                entry,
                EventKind::JobState {
                    platform,
                    state: JobState::Running,
                    worker: Some(hello.name.clone()),
                    attempt,
                    message: "adopted after the worker reconnected".into(),
                },
                now,
            );
            self.live
                .insert(*job, timers::LiveAttempt::acknowledged(attempt, now.at));
        }
        // Jobs left behind by an earlier session of this worker that it did not restate: it
        // restarted without them, so there is no point waiting for the rest of the lease.
        let forgotten: Vec<(JobId, u32)> = self
            .orphans
            .iter()
            .filter(|(job, _)| self.worker_of(**job).as_deref() == Some(hello.name.as_str()))
            .map(|(job, (attempt, _))| (*job, *attempt))
            .collect();
        // Before the worker is registered, so that it is not told to cancel what it does not run.
        for (job, attempt) in forgotten {
            self.attempt_failed(
                job,
                attempt,
                "the worker came back without it (restarted?)",
                now,
            );
        }
        self.scheduler.add_worker(
            WorkerCaps {
                name: hello.name.clone(),
                platforms: hello.platforms.clone(),
                emulated: hello.emulated,
                slots: hello.slots,
            },
            adopted,
        );
        self.scheduler
            .set_worker_owner(&hello.name, hello.owner.clone());
        if hello.draining {
            self.scheduler.drain_worker(&hello.name);
        }
        self.scheduler
            .set_unhealthy(&hello.name, hello.unhealthy.clone());
        self.scheduler.set_paused(&hello.name, hello.paused);
        self.scheduler
            .set_lending(&hello.name, hello.lending, now.at);
        tracing::info!(
            worker = %hello.name,
            platforms = ?hello.platforms.iter().map(ToString::to_string).collect::<Vec<_>>(),
            emulated = hello.emulated,
            slots = hello.slots,
            draining = hello.draining,
            unhealthy = ?hello.unhealthy,
            "worker attached"
        );
        self.workers.insert(
            hello.name.clone(),
            WorkerConn {
                session: session.id,
                disk: hello.disk,
                hello,
                connected_at_ms: now.ms,
                last_seen: now.at,
                last_seen_ms: now.ms,
            },
        );
        self.dispatch(now);
        Ok((session, self.take_effects()))
    }

    /// Any message from a worker counts as a heartbeat.
    pub fn heartbeat(&mut self, session: &Session, now: Now) {
        if let Some(w) = self.workers.get_mut(&session.worker)
            && w.session == session.id
        {
            w.last_seen = now.at;
            w.last_seen_ms = now.ms;
        }
    }

    /// A heartbeat saying whether the worker drains and whether its Docker daemon answers. A
    /// draining or unhealthy worker gets no new job; a worker that refused an assignment is asked
    /// again only after such a heartbeat.
    pub fn health(&mut self, session: &Session, health: WorkerHealth, now: Now) -> Effects {
        if !self.is_current(session) {
            return self.take_effects();
        }
        self.heartbeat(session, now);
        let name = session.worker.as_str();
        if let Some(w) = self.workers.get_mut(name)
            && health.disk.is_some()
        {
            w.disk = health.disk;
        }
        let before = self
            .scheduler
            .status(name)
            .expect("attached workers are scheduled");
        if health.draining && !before.draining {
            tracing::info!(worker = %name, "worker drains: no new job goes to it");
            self.scheduler.drain_worker(name);
        }
        if health.unhealthy != before.unhealthy {
            match &health.unhealthy {
                Some(reason) => {
                    tracing::warn!(worker = %name, %reason, "worker unhealthy: no job goes to it")
                }
                None => tracing::info!(worker = %name, "worker healthy again"),
            }
            self.scheduler.set_unhealthy(name, health.unhealthy);
        }
        if let Some((paused, lending)) = health.paused_lending
            && (paused, lending) != (before.paused, before.lending)
        {
            tracing::info!(worker = %name, paused, lending, "worker availability changed");
            self.scheduler.set_paused(name, paused);
            self.scheduler.set_lending(name, lending, now.at);
        }
        self.scheduler.release(name);
        self.dispatch(now);
        self.take_effects()
    }

    /// The worker acknowledged an assignment. A late acknowledgement of an attempt that is no
    /// longer current (requeued after the deadline, or its build ended) is answered with a cancel.
    pub fn accepted(&mut self, session: &Session, job: JobId, attempt: u32, now: Now) -> Effects {
        self.heartbeat(session, now);
        let Some(build_id) = self.current_build_on(&session.worker, job, attempt) else {
            tracing::info!(%job, attempt, worker = %session.worker, "cancelling an acknowledged attempt that is no longer current");
            if self.is_current(session) {
                self.pending
                    .send
                    .push((session.clone(), ToWorker::Cancel { job, attempt }));
            }
            return self.take_effects();
        };
        let entry = self.builds.get_mut(&build_id).expect("current build");
        let j = job_mut(&mut entry.build, job);
        if j.state == JobState::Assigned {
            j.state = JobState::Running;
            let ev = EventKind::JobState {
                platform: j.platform.clone(),
                state: JobState::Running,
                worker: j.worker.clone(),
                attempt,
                message: String::new(),
            };
            if entry.build.state == BuildState::Queued {
                entry.build.state = BuildState::Running;
            }
            // Not written on its own: a restart from the assigned record does the same.
            note(entry, ev, now);
        }
        if let Some(live) = self.live.get_mut(&job).filter(|l| l.attempt == attempt) {
            live.acknowledge(now.at);
        }
        self.take_effects()
    }

    /// Output lines of an attempt; they also show the attempt is not stuck.
    pub fn log(
        &mut self,
        session: &Session,
        job: JobId,
        attempt: u32,
        lines: Vec<String>,
        now: Now,
    ) -> Effects {
        self.heartbeat(session, now);
        let Some(build_id) = self.current_build_on(&session.worker, job, attempt) else {
            return self.take_effects();
        };
        let entry = self.builds.get_mut(&build_id).expect("current build");
        let platform = job_mut(&mut entry.build, job).platform.clone();
        self.pending.logs.push(crate::logs::LogLines {
            build: build_id,
            job,
            platform: platform.clone(),
            lines: lines.clone(),
        });
        for line in lines {
            let j = job_mut(&mut entry.build, job);
            if j.log_tail.len() == LOG_TAIL_LINES {
                j.log_tail.pop_front();
            }
            j.log_tail.push_back(line.clone());
            if entry.events.len() < MAX_LOG_EVENTS {
                note(
                    entry,
                    EventKind::Log {
                        platform: platform.clone(),
                        line,
                    },
                    now,
                );
            }
        }
        if let Some(live) = self.live.get_mut(&job).filter(|l| l.attempt == attempt) {
            live.progress(now.at);
        }
        self.take_effects()
    }

    /// The worker reports that attempt `attempt` of `job` pushed its image: the worker is done
    /// with it, so its slot is free at once and it may get its next job, while the coordinator
    /// checks the image ([`crate::verify`]) against what is returned; the verdict comes back as
    /// [`FarmState::result`]. Until then the job stays running on that worker with only the
    /// check's timer ([`timers::CHECK_WINDOW`]): nothing is orphaned when the worker leaves and
    /// nothing handed back when it reconnects without the job; a restart forgets the check, and
    /// the job waits the worker lease like any running one. `None` (and no change) for news of an
    /// attempt that is not current on that worker.
    pub fn reported(
        &mut self,
        session: &Session,
        job: JobId,
        attempt: u32,
        now: Now,
    ) -> (Option<ImageCheck>, Effects) {
        self.heartbeat(session, now);
        if self
            .current_build_on(&session.worker, job, attempt)
            .is_none()
        {
            tracing::info!(%job, attempt, worker = %session.worker, "ignoring the result of an attempt that is no longer current");
            return (None, self.take_effects());
        }
        let check = self.image_check(job, attempt);
        self.orphans.remove(&job);
        self.scheduler.finished(job);
        self.live
            .entry(job)
            .or_insert_with(|| timers::LiveAttempt::acknowledged(attempt, now.at))
            .reported(now.at);
        self.dispatch(now);
        (check, self.take_effects())
    }

    /// An attempt ended. The result of an attempt that is no longer current changes nothing.
    pub fn result(
        &mut self,
        session: &Session,
        job: JobId,
        attempt: u32,
        outcome: JobOutcome,
        now: Now,
    ) -> Effects {
        self.heartbeat(session, now);
        let Some(build_id) = self.current_build_on(&session.worker, job, attempt) else {
            tracing::info!(%job, attempt, worker = %session.worker, "ignoring the result of an attempt that is no longer current");
            return self.take_effects();
        };
        let entry = self.builds.get_mut(&build_id).expect("current build");
        match outcome {
            JobOutcome::Pushed {
                digest,
                size,
                media_type,
                attestations,
            } => {
                let j = job_mut(&mut entry.build, job);
                let platform = j.platform.clone();
                j.state = JobState::Succeeded;
                j.image = Some(ChildImage {
                    platform: platform.clone(),
                    digest: digest.clone(),
                    size,
                    media_type,
                    attestations,
                });
                let ev = EventKind::JobState {
                    platform: platform.clone(),
                    state: JobState::Succeeded,
                    worker: j.worker.clone(),
                    attempt,
                    message: digest,
                };
                record(entry, ev, now);
                // This worker's layer cache is now warm for the image's next build there.
                let warm_key = (entry.build.spec.repository(), platform);
                let all_built = entry
                    .build
                    .jobs
                    .iter()
                    .all(|j| j.state == JobState::Succeeded);
                self.warm.insert(warm_key, session.worker.clone());
                self.attempt_over(job);
                self.refusals.remove(&job);
                if all_built {
                    self.publish(build_id, now);
                }
            }
            JobOutcome::Failed {
                message,
                retryable,
                cancelled,
                refused,
            } => {
                let j = job_mut(&mut entry.build, job);
                let worker = j.worker.clone().unwrap_or_default();
                let platform = j.platform.clone();
                self.attempt_over(job);
                if refused && !cancelled {
                    // Never started: requeued without counting, and the worker is not asked again
                    // before its next heartbeat says how it is.
                    *self.refusals.entry(job).or_default() += 1;
                    self.scheduler.hold(&worker);
                    self.requeue(
                        build_id,
                        job,
                        &format!("worker {worker} did not take it: {message}"),
                        now,
                    );
                } else if retryable && !cancelled {
                    self.retry_or_give_up(build_id, job, &message, now);
                } else {
                    let j = job_mut(&mut self.builds.get_mut(&build_id).unwrap().build, job);
                    append_error(j, format!("attempt {attempt} on {worker}: {message}"));
                    let error = if cancelled {
                        format!("{platform} was cancelled on worker {worker}")
                    } else {
                        format!("{platform} failed on worker {worker}: {message}")
                    };
                    self.end_build(
                        build_id,
                        BuildState::Failed,
                        Some(error),
                        Some((job, platform)),
                        now,
                    );
                }
            }
        }
        self.dispatch(now);
        self.take_effects()
    }

    /// The worker's stream ended (or it said goodbye). Its jobs wait for it for the worker lease.
    pub fn detach(&mut self, session: &Session, now: Now) -> Effects {
        if !self.is_current(session) {
            return self.take_effects();
        }
        self.workers.remove(&session.worker);
        self.pending.close.push(session.clone());
        let jobs = self.scheduler.remove_worker(&session.worker);
        let deadline = now.at + self.config.worker_lease;
        for job in jobs {
            if let Some(attempt) = self.attempt_of(job) {
                self.orphans.insert(job, (attempt, deadline));
            }
        }
        tracing::info!(worker = %session.worker, "worker detached");
        self.dispatch(now);
        self.take_effects()
    }

    /// The worker announced it drains: no new job goes to it.
    pub fn draining(&mut self, session: &Session) -> Effects {
        if self.is_current(session) {
            self.scheduler.drain_worker(&session.worker);
        }
        self.take_effects()
    }
}
