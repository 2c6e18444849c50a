//! The farm's publishing transitions: a build whose platforms are all built pushes its list;
//! a failed try waits and tries again within `publish_window` ([`crate::farm::publish_retry`]);
//! giving up fails the build but keeps its built platforms, so that `manifold publish ID`
//! ([`FarmState::republish`]) pushes the list again later without rebuilding.

use std::time::Instant;

use manifold_proto::BuildId;

use super::{Effects, FarmState, Now, record};
use crate::build::{Build, BuildState, EventKind, JobState, human_duration};
use crate::farm::FarmError;
use crate::farm::publish_retry::{self, PublishRetry};

/// A build in its publishing phase: when its first try started, how many tries failed, and
/// when the next one is due while it waits.
#[derive(Clone, Copy, Debug)]
pub(super) struct PublishTry {
    since: Instant,
    failed: u32,
    next: Option<Instant>,
}

/// Why a try of a list push failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishFailure {
    /// The registry error's text.
    pub message: String,
    /// It may go away by itself (connection, timeout, 5xx, 429): worth another try.
    pub transient: bool,
}

impl FarmState {
    /// Starts the publishing phase of a build whose platforms all succeeded: its first try.
    pub(super) fn publish(&mut self, build_id: BuildId, now: Now) {
        self.publishing.insert(
            build_id,
            PublishTry {
                since: now.at,
                failed: 0,
                next: None,
            },
        );
        // Every job is built: no worker needs the secrets any more.
        self.secrets.remove(&build_id);
        let entry = self.builds.get_mut(&build_id).expect("build exists");
        entry.build.publishing = Some("publishing".into());
        self.pending.publish.push(entry.build.clone());
    }

    /// Starts the tries whose wait is over (housekeeping, from [`FarmState::tick`]).
    pub(super) fn publish_due(&mut self, now: Now) {
        let due: Vec<BuildId> = self
            .publishing
            .iter()
            .filter(|(_, t)| t.next.is_some_and(|next| now.at >= next))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            if let Some(t) = self.publishing.get_mut(&id) {
                t.next = None;
            }
            self.pending.publish.push(self.builds[&id].build.clone());
        }
    }

    /// A try of the list push ended: `Ok((digest, media type))`, or why it failed. A transient
    /// failure within the window waits for the next try (the build says so); anything else ends
    /// the build.
    pub fn published(
        &mut self,
        build_id: BuildId,
        result: Result<(String, String), PublishFailure>,
        now: Now,
    ) -> Effects {
        let Some(tries) = self.publishing.get(&build_id).copied() else {
            // Ended meanwhile (cancelled while publishing): the list may have been written.
            tracing::warn!(build = %build_id, "build ended while its manifest list was being pushed");
            return self.take_effects();
        };
        let Some(entry) = self.builds.get_mut(&build_id) else {
            return self.take_effects();
        };
        let failure = match result {
            Ok((digest, media_type)) => {
                self.publishing.remove(&build_id);
                self.deadlines.remove(&build_id);
                entry.build.state = BuildState::Succeeded;
                entry.build.manifest = Some((digest.clone(), media_type));
                entry.build.publishing = None;
                entry.build.error = None;
                entry.build.finished_at_ms = Some(now.ms);
                tracing::info!(build = %build_id, %digest, "manifest list pushed");
                record(
                    entry,
                    EventKind::Finished {
                        state: BuildState::Succeeded,
                        manifest_digest: Some(digest),
                        error: None,
                    },
                    now,
                );
                self.reuse_ended(build_id);
                return self.take_effects();
            }
            Err(failure) => failure,
        };
        let failed = tries.failed + 1;
        let window = self.config.publish_window;
        match publish_retry::decide(failed, tries.since, now.at, window, failure.transient) {
            PublishRetry::After(wait) => {
                let left = (tries.since + window).saturating_duration_since(now.at);
                let message = format!(
                    "retrying: {}; next try in {}, giving up in {}",
                    failure.message,
                    human_duration(wait),
                    human_duration(left)
                );
                tracing::warn!(build = %build_id, try_ = failed, error = %failure.message, "manifest list push failed; retrying");
                self.publishing.insert(
                    build_id,
                    PublishTry {
                        failed,
                        next: Some(now.at + wait),
                        ..tries
                    },
                );
                entry.build.publishing = Some(format!("publishing ({message})"));
                record(entry, EventKind::Publishing { message }, now);
            }
            PublishRetry::GiveUp => {
                self.publishing.remove(&build_id);
                let tried = if failure.transient {
                    format!(
                        " (retried for {}, --publish-window)",
                        human_duration(now.at.saturating_duration_since(tries.since))
                    )
                } else {
                    String::new()
                };
                let error = format!(
                    "every platform was built, but pushing the manifest list to {} failed{tried}: {}; the built platforms are kept: `manifold publish {build_id}` pushes the list again",
                    entry.build.spec.image, failure.message
                );
                self.end_build(build_id, BuildState::Failed, Some(error), None, now);
            }
        }
        self.take_effects()
    }

    /// `manifold publish ID`: a build that failed only at publishing (every platform built)
    /// pushes its list again, in a new window; `by` names who asked, in its history.
    pub fn republish(
        &mut self,
        build_id: BuildId,
        by: &str,
        now: Now,
    ) -> Result<(Build, Effects), FarmError> {
        let entry = self
            .builds
            .get_mut(&build_id)
            .ok_or(FarmError::UnknownBuild(build_id))?;
        let b = &entry.build;
        let why_not = if b.state != BuildState::Failed {
            Some(format!(
                "it is {}, not failed",
                format!("{:?}", b.state).to_lowercase()
            ))
        } else {
            b.jobs
                .iter()
                .find(|j| j.state != JobState::Succeeded || j.image.is_none())
                .map(|j| {
                    format!(
                        "its {} platform was not built ({}); submit the build again",
                        j.platform,
                        format!("{:?}", j.state).to_lowercase()
                    )
                })
        };
        if let Some(reason) = why_not {
            return Err(FarmError::NotPublishable {
                id: build_id,
                reason,
            });
        }
        entry.build.state = BuildState::Running;
        entry.build.error = None;
        entry.build.finished_at_ms = None;
        record(
            entry,
            EventKind::Publishing {
                message: format!(
                    "publishing the manifest list again (`manifold publish`, by {by})"
                ),
            },
            now,
        );
        tracing::info!(build = %build_id, by, "publishing again");
        self.publish(build_id, now);
        let build = self.builds[&build_id].build.clone();
        Ok((build, self.take_effects()))
    }
}
