//! What the farm's state answers without changing: builds, histories, queues, teams, workers.

use std::collections::{BTreeMap, HashSet};

use manifold_proto::{BuildId, JobId, Platform};
use manifold_registry::RegistryLogin;

use super::{FarmState, WorkerConn};
use crate::access::Caller;
use crate::build::{Build, Event, EventKind, JobState};
use crate::farm::{FarmError, TeamUsage, WorkerView};
use crate::paging::{self, Page, PageError, PageQuery};
use crate::scheduler::{QueuedJob, Team, WorkerStatus};

/// What the history of a build restored from the store holds ([`FarmState::lines_since_restore`]).
#[derive(Debug, PartialEq, Eq)]
pub struct SinceRestore {
    /// Lines of each platform in the history (those since the restore).
    pub lines: BTreeMap<Platform, u64>,
    /// When the build was restored (Unix ms).
    pub at_ms: i64,
}

/// What a worker's reported image is checked against ([`crate::verify`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageCheck {
    /// The job's platform.
    pub platform: Platform,
    /// `registry/repository` of the build.
    pub repository: String,
    /// The build team's logins, for reading it.
    pub logins: Vec<RegistryLogin>,
}

/// A build of a page: held in full, or only in the store.
#[derive(Clone, Debug, PartialEq)]
pub enum Listed {
    /// Held in full.
    Held(Box<Build>),
    /// Evicted: its record is in the store.
    Stored(BuildId),
}

impl Listed {
    /// The build's id.
    pub fn id(&self) -> BuildId {
        match self {
            Listed::Held(b) => b.id,
            Listed::Stored(id) => *id,
        }
    }
}

impl FarmState {
    /// A snapshot of a build.
    pub fn get(&self, id: BuildId) -> Result<Build, FarmError> {
        self.builds
            .get(&id)
            .map(|e| e.build.clone())
            .ok_or(FarmError::UnknownBuild(id))
    }

    /// The page of the builds that `by` may see that `q` asks for, newest first: the held ones
    /// as `copy` copies them (whole, or [`Build::listing`]), the evicted ones by id (the handle
    /// reads them from the store).
    pub fn list(
        &self,
        q: &PageQuery,
        by: &Caller,
        copy: fn(&Build) -> Build,
    ) -> Result<Page<Listed>, PageError> {
        let visible = (self.catalog.newest_first(q.before)).filter(|(_, e)| by.sees(&e.team));
        let p = paging::page(visible, |(id, e)| (*id, e.created_at_ms), q)?;
        Ok(Page {
            items: (p.items.into_iter())
                .map(|(id, _)| match self.builds.get(&id) {
                    Some(e) => Listed::Held(Box::new(copy(&e.build))),
                    None => Listed::Stored(id),
                })
                .collect(),
            next_before: p.next_before,
        })
    }

    /// Usage per team: the configured teams and any other team with running or queued jobs.
    pub fn teams(&self) -> Vec<TeamUsage> {
        let queued = self.scheduler.queued_jobs();
        let mut teams: BTreeMap<String, Team> = self
            .scheduler
            .teams()
            .into_iter()
            .map(|t| (t.name.clone(), t))
            .collect();
        for q in &queued {
            teams
                .entry(q.team.clone())
                .or_insert_with(|| Team::new(q.team.clone()));
        }
        for e in self.builds.values().filter(|e| !e.build.state.is_final()) {
            teams
                .entry(e.build.team.clone())
                .or_insert_with(|| Team::new(e.build.team.clone()));
        }
        teams
            .into_values()
            .map(|team| TeamUsage {
                running: self.scheduler.running_of_team(&team.name),
                queued: queued.iter().filter(|q| q.team == team.name).count() as u32,
                team,
            })
            .collect()
    }

    /// The queued jobs, oldest first, with the build each belongs to.
    pub fn queue(&self) -> Vec<(QueuedJob, Build)> {
        self.scheduler
            .queued_jobs()
            .into_iter()
            .filter_map(|q| {
                let build = self
                    .job_build
                    .get(&q.job)
                    .and_then(|b| self.builds.get(b))?;
                Some((q, build.build.clone()))
            })
            .collect()
    }

    /// Events of a build from `from` on, and whether its history has ended.
    pub fn events(&self, id: BuildId, from: usize) -> Result<(Vec<Event>, bool), FarmError> {
        let entry = self.builds.get(&id).ok_or(FarmError::UnknownBuild(id))?;
        let events = entry.events.get(from..).unwrap_or_default().to_vec();
        let ended = matches!(
            entry.events.last(),
            Some(Event {
                kind: EventKind::Finished { .. },
                ..
            })
        );
        Ok((events, ended))
    }

    /// For a build restored from the store (its history began at the restore): how many lines of
    /// each platform its history holds, and the time of the restore (Unix ms). `None` for a
    /// build whose whole history is here.
    pub fn lines_since_restore(&self, id: BuildId) -> Result<Option<SinceRestore>, FarmError> {
        let entry = self.builds.get(&id).ok_or(FarmError::UnknownBuild(id))?;
        if !entry.restored {
            return Ok(None);
        }
        let mut lines = BTreeMap::new();
        for e in &entry.events {
            if let EventKind::Log { platform, .. } = &e.kind {
                *lines.entry(platform.clone()).or_default() += 1;
            }
        }
        let at_ms = entry.events.first().map_or(0, |e| e.at_ms);
        Ok(Some(SinceRestore { lines, at_ms }))
    }

    /// The number of events in a build's history (0 for an unknown build).
    pub fn history_len(&self, id: BuildId) -> usize {
        self.builds.get(&id).map_or(0, |e| e.events.len())
    }

    /// Whether worker `name` holds a current attempt (assigned or running) of a job whose build
    /// uses context `digest`: the only contexts a worker may download.
    pub fn worker_needs_context(&self, name: &str, digest: &str) -> bool {
        self.builds.values().any(|e| {
            !e.build.state.is_final()
                && e.build.spec.uses_context(digest)
                && e.build.jobs.iter().any(|j| {
                    matches!(j.state, JobState::Assigned | JobState::Running)
                        && j.worker.as_deref() == Some(name)
                })
        })
    }

    /// What the image reported for `attempt` of `job` is checked against, while that attempt is
    /// current.
    pub(super) fn image_check(&self, job: JobId, attempt: u32) -> Option<ImageCheck> {
        let build_id = self.current_build(job, attempt)?;
        let build = &self.builds[&build_id].build;
        let platform = build.jobs.iter().find(|j| j.id == job)?.platform.clone();
        let logins = (self.config.repositories).logins_for(&build.team, &build.spec);
        Some(ImageCheck {
            platform,
            repository: build.spec.repository(),
            logins,
        })
    }

    /// Contexts that unfinished builds still need (garbage collection keeps them).
    pub fn referenced_contexts(&self) -> HashSet<String> {
        self.builds
            .values()
            .filter(|e| !e.build.state.is_final())
            .flat_map(|e| e.build.spec.contexts())
            .collect()
    }

    /// The attached workers.
    pub fn workers(&self) -> Vec<WorkerView> {
        self.workers.values().map(|w| self.worker_view(w)).collect()
    }

    pub(super) fn worker_view(&self, w: &WorkerConn) -> WorkerView {
        let status = self.scheduler.status(&w.hello.name);
        WorkerView {
            name: w.hello.name.clone(),
            platforms: w.hello.platforms.clone(),
            emulated: w.hello.emulated,
            slots: w.hello.slots,
            slots_in_use: self.scheduler.slots_in_use(&w.hello.name),
            last_heartbeat_ms: w.last_seen_ms,
            connected_at_ms: w.connected_at_ms,
            docker_version: w.hello.docker_version.clone(),
            labels: w.hello.labels.clone(),
            draining: status.as_ref().is_some_and(|s| s.draining),
            paused: status.as_ref().is_some_and(|s| s.paused),
            lending: status.as_ref().is_none_or(|s| s.lending),
            unhealthy: status.and_then(|s| s.unhealthy),
            owner: w.hello.owner.clone(),
            disk: w.disk,
        }
    }
}

/// `ready`, `draining`, `unhealthy: REASON`, or both of the last two.
pub(super) fn status_text(status: &WorkerStatus) -> String {
    match (status.draining, &status.unhealthy) {
        (false, None) => "ready".into(),
        (true, None) => "draining".into(),
        (false, Some(reason)) => format!("unhealthy: {reason}"),
        (true, Some(reason)) => format!("draining, unhealthy: {reason}"),
    }
}
