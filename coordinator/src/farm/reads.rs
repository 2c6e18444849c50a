//! The handle's reads of the store, each after the writer has written what was handed to it
//! before (so a read never misses a record or a line): stored logs and their replay, and the
//! side of bounded memory ([`history`]) that reads: builds the farm no longer holds in full, the
//! history pass that evicts and deletes, and what a starting farm loads.

use std::collections::HashMap;

use manifold_proto::{BuildId, Platform};
use tokio::sync::{oneshot, watch};

use super::writer::{Batch, durable};
use super::{Farm, FarmError, Listed, Now, history, now_ms, state};
use crate::access::Caller;
use crate::build::{Build, Event, EventKind};
use crate::logs;
use crate::paging::{Page, PageError, PageQuery};
use crate::store::{StateStore, StoreError};

impl Farm {
    /// A build's stored output (of `only` when given), oldest first, with a marker where the
    /// per-platform bound dropped lines ([`crate::logs`]); lines still buffered are written first.
    pub async fn logs(
        &self,
        id: BuildId,
        only: Option<&Platform>,
    ) -> Result<Vec<(Platform, String)>, FarmError> {
        let (tx, rx) = oneshot::channel();
        let chunks = match self.read_logs(id, tx) {
            Ok(()) => stored(rx).await?,
            // The writer stopped with the term: what is stored is all there is.
            Err(()) => self.inner.store.load_logs(id).await?,
        };
        Ok(logs::render(chunks, only))
    }

    /// The lines a watcher of build `id` is shown before its in-memory history, numbered from 0
    /// (the history's events follow, numbered after them). None for a build this coordinator
    /// recorded from its start; for one restored from the store (a restart or a failover), whose
    /// history began at the restore, the stored lines that came before it
    /// ([`logs::before_recent`]), so that `watch` shows what `logs` shows. They carry the time of
    /// the restore (lines are stored without their own).
    pub async fn replay(&self, id: BuildId) -> Result<Vec<Event>, FarmError> {
        let (tx, rx) = oneshot::channel();
        let since = {
            let sh = self.lock();
            if !sh.state.holds(id) && sh.state.team_of(id).is_some() {
                // Evicted: [`Farm::history`] tells its lines with the rest of its record.
                return Ok(Vec::new());
            }
            let Some(since) = sh.state.lines_since_restore(id)? else {
                return Ok(Vec::new());
            };
            // Under the lock: the read comes after exactly the lines the history holds.
            if self.read_logs(id, tx).is_err() {
                return Ok(Vec::new()); // the term ended: the watch ends too
            }
            since
        };
        let lines = logs::before_recent(stored(rx).await?, &since.lines);
        Ok(lines
            .into_iter()
            .enumerate()
            .map(|(i, (platform, line))| Event {
                sequence: i as u64,
                at_ms: since.at_ms,
                kind: EventKind::Log { platform, line },
            })
            .collect())
    }

    /// Asks the writer for build `id`'s stored chunks once every line given so far is written;
    /// `Err` when the writer has stopped.
    fn read_logs(&self, id: BuildId, answer: oneshot::Sender<StoredChunks>) -> Result<(), ()> {
        let read = Batch {
            read_logs: Some((id, answer)),
            ..Batch::default()
        };
        self.inner.writes.send(read).map_err(|_| ())
    }

    /// A snapshot of any build of the store: held in full, or read from the store (evicted).
    pub async fn find(&self, id: BuildId) -> Result<Build, FarmError> {
        {
            let sh = self.lock();
            if sh.state.holds(id) {
                return sh.state.get(id);
            }
            if sh.state.team_of(id).is_none() {
                return Err(FarmError::UnknownBuild(id));
            }
        }
        self.read_stored(&[id])
            .await?
            .pop()
            .ok_or(FarmError::UnknownBuild(id))
    }

    /// Whether `id` is a build of the store that the farm does not hold in full.
    pub(super) fn evicted(&self, id: BuildId) -> bool {
        let sh = self.lock();
        !sh.state.holds(id) && sh.state.team_of(id).is_some()
    }

    /// The team of any build of the store, without reading its record.
    pub fn team_of(&self, id: BuildId) -> Result<String, FarmError> {
        (self.lock().state.team_of(id).map(str::to_owned)).ok_or(FarmError::UnknownBuild(id))
    }

    /// The stored records of `ids` (those the store holds), once every record handed to the
    /// writer is durable.
    async fn read_stored(&self, ids: &[BuildId]) -> Result<Vec<Build>, FarmError> {
        self.flush().await?;
        Ok(self.inner.store.load_builds(ids).await?)
    }

    /// Waits until the writer has written every record handed to it so far.
    async fn flush(&self) -> Result<(), FarmError> {
        let (tx, rx) = oneshot::channel();
        let flush = Batch {
            done: Some(tx),
            ..Batch::default()
        };
        if self.inner.writes.send(flush).is_ok() {
            durable(rx).await?;
        }
        Ok(())
    }

    /// The page of the builds that `by` may see that `q` asks for, newest first, as listings show
    /// them ([`Build::listing`]); evicted builds are read from the store (one read for the page).
    pub async fn list(&self, q: &PageQuery, by: &Caller) -> Result<Page<Build>, FarmError> {
        let page = self.lock().state.list(q, by, Build::listing)?;
        let evicted: Vec<BuildId> = (page.items.iter())
            .filter_map(|l| match l {
                Listed::Stored(id) => Some(*id),
                Listed::Held(_) => None,
            })
            .collect();
        let mut stored: HashMap<BuildId, Build> = if evicted.is_empty() {
            HashMap::new()
        } else {
            (self.read_stored(&evicted).await?.into_iter())
                .map(|b| (b.id, b))
                .collect()
        };
        let items = (page.items.into_iter())
            .filter_map(|l| match l {
                Listed::Held(b) => Some(*b),
                // Deleted meanwhile: left out.
                Listed::Stored(id) => stored.remove(&id).map(|b| b.listing()),
            })
            .collect();
        Ok(Page {
            items,
            next_before: page.next_before,
        })
    }

    /// Like [`Farm::list`] without reading the store: evicted builds by id only.
    pub fn list_held(&self, q: &PageQuery, by: &Caller) -> Result<Page<Listed>, PageError> {
        self.lock().state.list(q, by, Build::clone)
    }

    /// How many builds the farm lists, and how many it holds in full.
    pub fn counts(&self) -> (usize, usize) {
        self.lock().state.counts()
    }

    /// Events of any build of the store from `from` on, a receiver that changes when more
    /// arrive, and whether the history has ended. An evicted build (finished) tells its
    /// history from its stored record and logs ([`state::record_history`]); for a watcher that
    /// saw part of its history before it was evicted (`from` > 0), only its end.
    pub async fn history(
        &self,
        id: BuildId,
        from: usize,
    ) -> Result<(Vec<Event>, watch::Receiver<usize>, bool), FarmError> {
        match self.events(id, from) {
            Err(FarmError::UnknownBuild(_)) if self.team_of(id).is_ok() => {}
            other => return other,
        }
        let build = self.find(id).await?;
        let lines = self.logs(id, None).await?;
        let mut events = state::record_history(&build, &lines, "from the stored record", now_ms());
        if from > 0 {
            events = events.split_off(events.len().saturating_sub(1));
        }
        Ok((events, watch::channel(0).1, true))
    }

    /// A history pass at `now` ([`FarmState::retire`]): evicted builds lose their watch channel,
    /// deleted ones are deleted from the store by the writer (after every record handed to it
    /// before), which compacts the store when [`history::compaction_due`] says so.
    pub(super) fn retire(&self, now: Now) {
        let mut sh = self.lock();
        let retired = sh.state.retire(now);
        for id in retired.evicted.iter().chain(&retired.deleted) {
            sh.histories.remove(id);
        }
        if !retired.evicted.is_empty() || !retired.deleted.is_empty() {
            tracing::debug!(
                evicted = retired.evicted.len(),
                deleted = retired.deleted.len(),
                "history pass"
            );
        }
        sh.deleted_since_compaction += retired.deleted.len();
        let since = sh
            .compacted_at
            .map(|at| now.at.saturating_duration_since(at));
        let compact = history::compaction_due(sh.deleted_since_compaction, retired.drained, since);
        if compact {
            (sh.deleted_since_compaction, sh.compacted_at) = (0, Some(now.at));
        }
        if retired.deleted.is_empty() && !compact {
            return;
        }
        let _ = self.inner.writes.send(Batch {
            delete: retired.deleted,
            compact,
            ..Batch::default()
        });
    }
}

/// What a starting farm holds in full: every unfinished build, the finished ones its history
/// window keeps ([`history::held_at_start`]) and the builds that unfinished ones joined; with the
/// summary of every build of the store.
pub(super) async fn load_held(
    store: &dyn StateStore,
    policy: &history::HistoryPolicy,
) -> Result<(Vec<Build>, Vec<crate::store::BuildSummary>), FarmError> {
    let summaries = store.summaries().await?;
    let mut finished: Vec<(i64, BuildId)> = (summaries.iter())
        .filter(|s| s.state.is_final())
        .map(|s| (s.finished_at_ms.unwrap_or(s.created_at_ms), s.id))
        .collect();
    finished.sort();
    let mut ids: Vec<BuildId> = (summaries.iter())
        .filter(|s| !s.state.is_final())
        .map(|s| s.id)
        .collect();
    ids.extend(history::held_at_start(&finished, now_ms(), policy));
    let mut builds = store.load_builds(&ids).await?;
    let loaded: std::collections::HashSet<BuildId> = builds.iter().map(|b| b.id).collect();
    let leaders: Vec<BuildId> = (builds.iter())
        .filter(|b| !b.state.is_final())
        .filter_map(|b| match b.reused {
            Some(crate::build::Reused::Joined(leader)) => Some(leader),
            _ => None,
        })
        .filter(|l| !loaded.contains(l))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    builds.extend(store.load_builds(&leaders).await?);
    Ok((builds, summaries))
}

/// Waits for the chunks the writer read.
async fn stored(rx: oneshot::Receiver<StoredChunks>) -> Result<Vec<logs::LogChunk>, FarmError> {
    Ok(rx.await.unwrap_or_else(|_| {
        Err(StoreError::Backend(
            "the state writer stopped before reading the build's logs".into(),
        ))
    })?)
}

type StoredChunks = Result<Vec<logs::LogChunk>, StoreError>;
