//! Identical builds reused ([`crate::farm::reuse`]): a submitted build whose key matches a
//! succeeded build of its team takes that build's per-platform images and only pushes its own
//! list and tags (no worker); one whose key matches an unfinished build joins it: it gets no job
//! of its own, mirrors that build's job states and output lines into its own history (so both
//! CLIs see the same progress), takes its images, and pushes its own list once they are all
//! built. If the joined build fails, so does the follower (the same inputs); if it is cancelled,
//! the follower queues its own jobs and builds on its own.

use manifold_proto::BuildId;

use super::{FarmState, MAX_LOG_EVENTS, Now, job_meta, note, record};
use crate::build::{BuildState, Event, EventKind, JobState, Reused};
use crate::farm::reuse::reuse_key;
use crate::logs::LogLines;

impl FarmState {
    /// Joins or reuses an identical build for the just-inserted build `id`, if there is one;
    /// `false` when `id` must build on its own (it then becomes the build others join).
    pub(super) fn reuse_at_submit(&mut self, id: BuildId, now: Now) -> bool {
        let build = &self.builds[&id].build;
        let Some(key) = reuse_key(&build.team, &build.spec) else {
            return false;
        };
        if let Some(done) = self.reuse.succeeded.get(&key).copied()
            && self.reuse_images(id, done, now)
        {
            return true;
        }
        if let Some(leader) = self.reuse.running.get(&key).copied()
            && self
                .builds
                .get(&leader)
                .is_some_and(|l| !l.build.state.is_final())
        {
            self.join(id, leader, now);
            return true;
        }
        self.reuse.running.insert(key, id);
        false
    }

    /// Gives build `id` the images of the succeeded build `done` and starts its list push, when
    /// `done` still holds an image for every platform of `id`.
    fn reuse_images(&mut self, id: BuildId, done: BuildId, now: Now) -> bool {
        let Some(source) = self.builds.get(&done).map(|e| &e.build) else {
            return false;
        };
        if source.state != BuildState::Succeeded {
            return false;
        }
        let images: Vec<_> = self.builds[&id]
            .build
            .jobs
            .iter()
            .map(|j| {
                source
                    .jobs
                    .iter()
                    .find(|s| s.platform == j.platform)
                    .and_then(|s| s.image.clone())
            })
            .collect();
        if images.iter().any(Option::is_none) {
            return false;
        }
        let entry = self.builds.get_mut(&id).expect("just submitted");
        entry.build.reused = Some(Reused::From(done));
        entry.build.state = BuildState::Running;
        let mut events = Vec::new();
        for (j, image) in entry.build.jobs.iter_mut().zip(images) {
            let image = image.expect("checked above");
            events.push(EventKind::JobState {
                platform: j.platform.clone(),
                state: JobState::Succeeded,
                worker: None,
                attempt: 0,
                message: format!(
                    "reused {} from build {done} (identical inputs, same team and repository): no worker needed",
                    image.digest
                ),
            });
            j.state = JobState::Succeeded;
            j.image = Some(image);
        }
        for ev in events {
            record(entry, ev, now);
        }
        tracing::info!(build = %id, from = %done, "identical build reused");
        self.publish(id, now);
        true
    }

    /// Build `id` follows the unfinished build `leader`: what `leader` recorded so far is
    /// replayed into its history, the rest follows as it happens ([`FarmState::propagate`]).
    fn join(&mut self, id: BuildId, leader: BuildId, now: Now) {
        let entry = self.builds.get_mut(&id).expect("just submitted");
        entry.build.reused = Some(Reused::Joined(leader));
        for j in entry.build.jobs.clone() {
            record(
                entry,
                EventKind::JobState {
                    platform: j.platform,
                    state: JobState::Queued,
                    worker: None,
                    attempt: 0,
                    message: format!(
                        "joined build {leader}, which builds the same inputs: its progress and images are this build's"
                    ),
                },
                now,
            );
        }
        let len = self.builds[&leader].events.len();
        let seen = self.reuse.followers.get(&leader).map_or(len, |(n, _)| *n);
        let past: Vec<Event> = self.builds[&leader].events[..seen].to_vec();
        for ev in &past {
            self.mirror(leader, id, ev);
        }
        (self
            .reuse
            .followers
            .entry(leader)
            .or_insert((seen, Vec::new()))
            .1)
            .push(id);
        tracing::info!(build = %id, %leader, "joined an identical build");
    }

    /// Copies what joined builds recorded since the last transition into their followers.
    pub(super) fn propagate(&mut self) {
        let leaders: Vec<BuildId> = self.reuse.followers.keys().copied().collect();
        for leader in leaders {
            let Some((seen, followers)) = self.reuse.followers.get(&leader).cloned() else {
                continue;
            };
            let events: Vec<Event> = self.builds[&leader].events[seen..].to_vec();
            if events.is_empty() {
                continue;
            }
            if let Some(e) = self.reuse.followers.get_mut(&leader) {
                e.0 = seen + events.len();
            }
            for f in followers {
                for ev in &events {
                    self.mirror(leader, f, ev);
                }
            }
        }
    }

    /// One event of `leader` as its follower `f` lives it.
    fn mirror(&mut self, leader: BuildId, f: BuildId, ev: &Event) {
        if self.builds[&f].build.state.is_final() {
            return;
        }
        let now = Now {
            at: self
                .last_at
                .expect("a build was submitted, so a transition dispatched"),
            ms: ev.at_ms,
        };
        match &ev.kind {
            EventKind::JobState {
                platform,
                state,
                worker,
                attempt,
                ..
            } if !matches!(state, JobState::Failed | JobState::Cancelled) => {
                let image = (self.builds[&leader].build.jobs.iter())
                    .find(|j| j.platform == *platform)
                    .and_then(|j| j.image.clone())
                    .filter(|_| *state == JobState::Succeeded);
                let entry = self.builds.get_mut(&f).expect("followers exist");
                let Some(j) = entry
                    .build
                    .jobs
                    .iter_mut()
                    .find(|j| j.platform == *platform)
                else {
                    return;
                };
                if j.state.is_final() {
                    return;
                }
                (j.state, j.worker, j.attempt, j.image) = (*state, worker.clone(), *attempt, image);
                if entry.build.state == BuildState::Queued && *state != JobState::Queued {
                    entry.build.state = BuildState::Running;
                }
                record(entry, ev.kind.clone(), now);
                let all_built = (entry.build.jobs.iter()).all(|j| j.state == JobState::Succeeded);
                if all_built {
                    self.publish(f, now);
                }
            }
            EventKind::Log { platform, line } => {
                let entry = self.builds.get_mut(&f).expect("followers exist");
                let Some(job) = entry.build.jobs.iter().find(|j| j.platform == *platform) else {
                    return;
                };
                self.pending.logs.push(LogLines {
                    build: f,
                    job: job.id,
                    platform: platform.clone(),
                    lines: vec![line.clone()],
                });
                if entry.events.len() < MAX_LOG_EVENTS {
                    note(entry, ev.kind.clone(), now);
                }
            }
            EventKind::Finished {
                state: BuildState::Failed,
                error,
                ..
            } => {
                let error = format!(
                    "build {leader}, which this build joined (identical inputs), failed: {}",
                    error.as_deref().unwrap_or("no reason given")
                );
                self.end_build(f, BuildState::Failed, Some(error), None, now);
            }
            EventKind::Finished {
                state: BuildState::Cancelled,
                ..
            } => self.go_own_way(
                f,
                &format!("build {leader}, which this build joined, was cancelled"),
                now,
            ),
            _ => {}
        }
    }

    /// Follower `f` stops following and queues its unfinished jobs to build them itself.
    fn go_own_way(&mut self, f: BuildId, why: &str, now: Now) {
        self.reuse.unfollow(f);
        let entry = self.builds.get_mut(&f).expect("followers exist");
        entry.build.reused = None;
        let mut queued = Vec::new();
        for j in entry.build.jobs.iter_mut().filter(|j| !j.state.is_final()) {
            // Its attempts were the joined build's: its own count from 0.
            (j.state, j.worker, j.attempt) = (JobState::Queued, None, 0);
            queued.push((j.id, j.platform.clone()));
        }
        for (_, platform) in &queued {
            record(
                entry,
                EventKind::JobState {
                    platform: platform.clone(),
                    state: JobState::Queued,
                    worker: None,
                    attempt: 0,
                    message: format!("{why}: building on its own"),
                },
                now,
            );
        }
        for (job, platform) in queued {
            let meta = job_meta(&self.builds[&f].build, &platform, &self.warm);
            self.scheduler.enqueue_job(job, platform, meta, now.at);
        }
        let build = &self.builds[&f].build;
        if let Some(key) = reuse_key(&build.team, &build.spec) {
            self.reuse.running.entry(key).or_insert(f);
        }
        self.dispatch(now);
    }

    /// Build `id` ended: it is no longer joinable, a success becomes reusable, a follower stops
    /// following.
    pub(super) fn reuse_ended(&mut self, id: BuildId) {
        self.reuse.unfollow(id);
        let build = &self.builds[&id].build;
        let Some(key) = reuse_key(&build.team, &build.spec) else {
            return;
        };
        if self.reuse.running.get(&key) == Some(&id) {
            self.reuse.running.remove(&key);
        }
        if build.state == BuildState::Succeeded {
            self.reuse.succeeded.insert(key, id);
        }
    }

    /// After a restore: the index is rebuilt from the records, followers find the build they
    /// joined again (or its outcome). Returns the followers whose images are all there now.
    pub(super) fn relink_after_restore(&mut self, now: Now) -> Vec<BuildId> {
        self.last_at = Some(now.at);
        let mut ids: Vec<BuildId> = self.builds.keys().copied().collect();
        ids.sort_by_key(|id| (self.builds[id].build.created_at_ms, *id));
        let mut publish = Vec::new();
        for id in ids {
            let build = &self.builds[&id].build;
            let key = reuse_key(&build.team, &build.spec);
            match (build.state, build.reused, key) {
                (BuildState::Succeeded, _, Some(key)) => {
                    self.reuse.succeeded.insert(key, id);
                }
                (s, None, Some(key)) if !s.is_final() => {
                    self.reuse.running.insert(key, id);
                }
                (s, Some(Reused::Joined(leader)), _) if !s.is_final() => {
                    let state = self.builds.get(&leader).map(|l| l.build.state);
                    match state {
                        Some(s) if !s.is_final() => {
                            let len = self.builds[&leader].events.len();
                            (self
                                .reuse
                                .followers
                                .entry(leader)
                                .or_insert((len, Vec::new()))
                                .1)
                                .push(id);
                        }
                        Some(BuildState::Succeeded) => {
                            let images: Vec<_> = self.builds[&leader].build.jobs.clone();
                            let entry = self.builds.get_mut(&id).expect("listed");
                            for j in &mut entry.build.jobs {
                                if let Some(src) = images.iter().find(|s| s.platform == j.platform)
                                {
                                    (j.state, j.image) = (JobState::Succeeded, src.image.clone());
                                }
                            }
                            if entry.build.jobs.iter().all(|j| j.image.is_some()) {
                                entry.dirty = true;
                                publish.push(id);
                            }
                        }
                        Some(BuildState::Failed) => {
                            let error = format!(
                                "build {leader}, which this build joined (identical inputs), failed: {}",
                                self.builds[&leader]
                                    .build
                                    .error
                                    .as_deref()
                                    .unwrap_or("no reason given")
                            );
                            self.end_build(id, BuildState::Failed, Some(error), None, now);
                        }
                        _ => self.go_own_way(
                            id,
                            &format!("build {leader}, which this build joined, did not finish"),
                            now,
                        ),
                    }
                }
                _ => {}
            }
        }
        publish
    }
}
