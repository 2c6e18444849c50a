//! What the farm takes from and gives back to the store: the restore at start, finished builds
//! leaving memory (evicted: only their summary stays) and the store (deleted, by retention) as
//! [`crate::farm::history`] decides, and an evicted build taken back in full
//! (`manifold publish` of one).

use std::collections::HashSet;

use manifold_proto::{BuildId, Platform};

use super::{BuildEntry, Effects, FarmState, Now, job_meta, record};
use crate::build::{Build, BuildState, Event, EventKind, JobState};
use crate::farm::history;
use crate::farm::reuse::reuse_key;
use crate::store::BuildSummary;

/// What a history pass did ([`FarmState::retire`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Retired {
    /// Builds that left memory (still in the store).
    pub evicted: Vec<BuildId>,
    /// Builds to delete from the store (gone from the farm already).
    pub deleted: Vec<BuildId>,
    /// No build is due for deletion any more.
    pub drained: bool,
}

impl FarmState {
    /// Takes back what the store holds: unfinished builds resume (queued jobs queue again,
    /// running ones wait `worker_lease` for their worker to restate them, fully built ones are
    /// published); a build that lost its secrets with jobs still to start fails.
    ///
    /// `held` are the records the farm holds in full (the unfinished builds and the finished
    /// ones its history window keeps, [`crate::farm::history::held_at_start`]); `summaries` list
    /// every build of the store.
    pub fn restore(
        &mut self,
        mut builds: Vec<Build>,
        mut summaries: Vec<BuildSummary>,
        now: Now,
    ) -> Effects {
        builds.sort_by_key(|b| (b.created_at_ms, b.id));
        summaries.sort_by_key(|s| (s.created_at_ms, s.id));
        let held: HashSet<BuildId> = builds.iter().map(|b| b.id).collect();
        for s in &summaries {
            self.catalog.insert(s, held.contains(&s.id));
        }
        for b in &builds {
            // Held builds the summaries missed.
            self.catalog.insert(&BuildSummary::from(b), true);
        }
        let restored = builds.len();
        let mut to_publish = Vec::new();
        for build in builds {
            let id = build.id;
            let mut entry = BuildEntry {
                build,
                events: Vec::new(),
                announced: 0,
                dirty: false,
                restored: true,
            };
            for j in entry.build.jobs.clone() {
                self.job_build.insert(j.id, id);
                // A build following another has no attempt of its own ([`joins`]).
                if !entry.build.state.is_final() && entry.build.reused.is_none() {
                    match j.state {
                        JobState::Queued => {
                            let meta = job_meta(&entry.build, &j.platform, &self.warm);
                            self.scheduler
                                .enqueue_job(j.id, j.platform.clone(), meta, now.at);
                        }
                        JobState::Assigned | JobState::Running => {
                            self.orphans
                                .insert(j.id, (j.attempt, now.at + self.config.worker_lease));
                        }
                        _ => {}
                    }
                }
                record(
                    &mut entry,
                    EventKind::JobState {
                        platform: j.platform.clone(),
                        state: j.state,
                        worker: j.worker.clone(),
                        attempt: j.attempt,
                        message: "restored from the state store".into(),
                    },
                    now,
                );
            }
            if entry.build.state.is_final() {
                let finished = EventKind::Finished {
                    state: entry.build.state,
                    manifest_digest: entry.build.manifest.as_ref().map(|m| m.0.clone()),
                    error: entry.build.error.clone(),
                };
                record(&mut entry, finished, now);
            } else {
                self.deadlines.insert(id, entry.build.deadline_ms());
                if entry
                    .build
                    .jobs
                    .iter()
                    .all(|j| j.state == JobState::Succeeded)
                {
                    to_publish.push(id);
                }
            }
            entry.dirty = false;
            self.builds.insert(id, entry);
        }
        to_publish.extend(self.relink_after_restore(now));
        for id in to_publish {
            self.publish(id, now);
        }
        // Secrets were held in memory by the coordinator before this one: a build that still
        // has a job to start cannot get them back.
        let lost: Vec<(BuildId, Vec<String>)> = self
            .builds
            .values()
            .filter(|e| !e.build.state.is_final() && !e.build.spec.flags.secret_ids.is_empty())
            .filter(|e| e.build.jobs.iter().any(|j| j.state == JobState::Queued))
            .map(|e| (e.build.id, e.build.spec.flags.secret_ids.clone()))
            .collect();
        for (id, ids) in lost {
            let error = format!(
                "the coordinator restarted before every platform started, and the build's secrets ({}) are kept in memory only: submit the build again",
                ids.join(", ")
            );
            self.end_build(id, BuildState::Failed, Some(error), None, now);
        }
        if restored > 0 {
            tracing::info!(builds = restored, "state restored");
        }
        self.dispatch(now);
        self.take_effects()
    }

    /// Evicts and deletes what the history policy says at `now`, at most [`history::BATCH`] of
    /// each: evicted builds keep only their summary in memory; deleted ones leave the farm, and
    /// the handle deletes them from the store. Unfinished builds are never touched.
    pub fn retire(&mut self, now: Now) -> Retired {
        let (held, held_len) = self.catalog.held_finished();
        let plan = history::plan(
            held,
            held_len,
            self.catalog.finished(),
            now.ms,
            &self.config.history,
            history::BATCH,
        );
        let evicted = (plan.evict.into_iter())
            .filter(|id| self.forget(*id))
            .collect();
        for id in &plan.delete {
            self.forget(*id);
            self.catalog.remove(*id);
        }
        Retired {
            evicted,
            drained: plan.delete.len() < history::BATCH,
            deleted: plan.delete,
        }
    }

    /// Drops a finished build's record, history and indexes from memory (its summary stays):
    /// `false` if it is not held, not finished, not yet persisted, or still mirrored into
    /// builds that joined it.
    fn forget(&mut self, id: BuildId) -> bool {
        if (self.reuse.followers.get(&id)).is_some_and(|(_, f)| !f.is_empty()) {
            return false;
        }
        match self.builds.get(&id) {
            Some(e) if e.build.state.is_final() && !e.dirty => {}
            _ => return false,
        }
        let entry = self.builds.remove(&id).expect("checked above");
        for j in &entry.build.jobs {
            self.job_build.remove(&j.id);
            self.refusals.remove(&j.id);
        }
        self.reuse.followers.remove(&id);
        if let Some(key) = reuse_key(&entry.build.team, &entry.build.spec)
            && self.reuse.succeeded.get(&key) == Some(&id)
        {
            // Identical submits build again once their success left memory.
            self.reuse.succeeded.remove(&key);
        }
        self.catalog.set_held(id, false);
        true
    }

    /// Takes an evicted build's stored record back in full (as a restore does), so that it can
    /// be published again. Nothing happens to a held or unknown build.
    pub fn readmit(&mut self, build: Build, now: Now) {
        let id = build.id;
        if self.builds.contains_key(&id) || self.catalog.get(id).is_none() {
            return;
        }
        for j in &build.jobs {
            self.job_build.insert(j.id, id);
        }
        let events = record_history(&build, &[], "restored from the state store", now.ms);
        self.builds.insert(
            id,
            BuildEntry {
                announced: events.len(),
                events,
                build,
                dirty: false,
                // Its output before now is in the durable logs only (`Farm::replay`).
                restored: true,
            },
        );
        self.catalog.set_held(id, true);
    }

    /// The team of a build the store holds, held in full or not.
    pub fn team_of(&self, id: BuildId) -> Option<&str> {
        self.catalog.get(id).map(|e| &*e.team)
    }

    /// Whether the farm holds `id` in full.
    pub fn holds(&self, id: BuildId) -> bool {
        self.builds.contains_key(&id)
    }

    /// How many builds the farm lists, and how many it holds in full.
    pub fn counts(&self) -> (usize, usize) {
        (self.catalog.len(), self.builds.len())
    }
}

/// The history a stored record tells of itself (an evicted build, watched): each job's state
/// with `message`, the output `lines`, and the end when it has ended.
pub fn record_history(
    build: &Build,
    lines: &[(Platform, String)],
    message: &str,
    at_ms: i64,
) -> Vec<Event> {
    let jobs = build.jobs.iter().map(|j| EventKind::JobState {
        platform: j.platform.clone(),
        state: j.state,
        worker: j.worker.clone(),
        attempt: j.attempt,
        message: message.to_owned(),
    });
    let logs = (lines.iter()).map(|(platform, line)| EventKind::Log {
        platform: platform.clone(),
        line: line.clone(),
    });
    let end = (build.state.is_final()).then(|| EventKind::Finished {
        state: build.state,
        manifest_digest: build.manifest.as_ref().map(|m| m.0.clone()),
        error: build.error.clone(),
    });
    (jobs.chain(logs).chain(end).enumerate())
        .map(|(i, kind)| Event {
            sequence: i as u64,
            at_ms,
            kind,
        })
        .collect()
}
