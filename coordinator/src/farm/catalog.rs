//! Every build the store holds, as the farm lists it: a summary each (about 100 bytes, so a
//! farm with 100,000 builds in its store spends some 10 MiB on them), in submission order, and
//! which finished builds the farm holds in full ([`super::history`] decides which).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use manifold_proto::BuildId;

use crate::build::Build;
use crate::store::BuildSummary;

/// One build, as listed.
#[derive(Clone, Debug)]
pub(super) struct Entry {
    seq: u64,
    /// Its team (shared with every build of the team).
    pub team: Arc<str>,
    /// Unix ms.
    pub created_at_ms: i64,
    /// Unix ms, once final.
    finished_at_ms: Option<i64>,
    /// Whether the farm holds its record, history and log lines in memory.
    pub held: bool,
}

/// See the module documentation.
#[derive(Default)]
pub(super) struct Catalog {
    next: u64,
    /// Submission order (restored builds first, by creation time).
    order: BTreeMap<u64, BuildId>,
    entries: HashMap<BuildId, Entry>,
    /// Every finished build, by finish time.
    finished: BTreeSet<(i64, BuildId)>,
    /// The finished builds held in full, by finish time.
    held_finished: BTreeSet<(i64, BuildId)>,
    teams: HashSet<Arc<str>>,
}

/// When a build finished: its record's time, or (a record without one) its creation.
fn finished_at(s: &BuildSummary) -> Option<i64> {
    s.state
        .is_final()
        .then(|| s.finished_at_ms.unwrap_or(s.created_at_ms))
}

impl Catalog {
    /// Adds a build after the newest one.
    pub fn insert(&mut self, s: &BuildSummary, held: bool) {
        if self.entries.contains_key(&s.id) {
            return;
        }
        let team = match self.teams.get(s.team.as_str()) {
            Some(t) => t.clone(),
            None => {
                let t: Arc<str> = s.team.as_str().into();
                self.teams.insert(t.clone());
                t
            }
        };
        let seq = self.next;
        self.next += 1;
        self.order.insert(seq, s.id);
        let finished_at_ms = finished_at(s);
        if let Some(at) = finished_at_ms {
            self.finished.insert((at, s.id));
            if held {
                self.held_finished.insert((at, s.id));
            }
        }
        self.entries.insert(
            s.id,
            Entry {
                seq,
                team,
                created_at_ms: s.created_at_ms,
                finished_at_ms,
                held,
            },
        );
    }

    /// Follows a held build's new record (it finished, or was published again).
    pub fn update(&mut self, b: &Build) {
        let s = BuildSummary::from(b);
        let Some(e) = self.entries.get_mut(&b.id) else {
            self.insert(&s, true);
            return;
        };
        let now = finished_at(&s);
        if e.finished_at_ms == now {
            return;
        }
        if let Some(at) = e.finished_at_ms {
            self.finished.remove(&(at, b.id));
            self.held_finished.remove(&(at, b.id));
        }
        if let Some(at) = now {
            self.finished.insert((at, b.id));
            if e.held {
                self.held_finished.insert((at, b.id));
            }
        }
        e.finished_at_ms = now;
    }

    /// The build is held in full (`true`) or only listed (`false`) from now on.
    pub fn set_held(&mut self, id: BuildId, held: bool) {
        let Some(e) = self.entries.get_mut(&id) else {
            return;
        };
        e.held = held;
        if let Some(at) = e.finished_at_ms {
            if held {
                self.held_finished.insert((at, id));
            } else {
                self.held_finished.remove(&(at, id));
            }
        }
    }

    /// Forgets a build (deleted from the store).
    pub fn remove(&mut self, id: BuildId) {
        let Some(e) = self.entries.remove(&id) else {
            return;
        };
        self.order.remove(&e.seq);
        if let Some(at) = e.finished_at_ms {
            self.finished.remove(&(at, id));
            self.held_finished.remove(&(at, id));
        }
    }

    /// A build's entry.
    pub fn get(&self, id: BuildId) -> Option<&Entry> {
        self.entries.get(&id)
    }

    /// Every build, newest first, from `from` (included) when it is listed.
    pub fn newest_first(&self, from: Option<BuildId>) -> impl Iterator<Item = (BuildId, &Entry)> {
        let end = from
            .and_then(|id| self.entries.get(&id))
            .map_or(u64::MAX, |e| e.seq);
        (self.order.range(..=end).rev()).map(|(_, id)| (*id, &self.entries[id]))
    }

    /// Every finished build, oldest finish first.
    pub fn finished(&self) -> impl Iterator<Item = (i64, BuildId)> + '_ {
        self.finished.iter().copied()
    }

    /// The finished builds held in full, oldest finish first, and how many they are.
    pub fn held_finished(&self) -> (impl Iterator<Item = (i64, BuildId)> + '_, usize) {
        (self.held_finished.iter().copied(), self.held_finished.len())
    }

    /// How many builds are listed.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}
