//! The builds the state holds in memory, remembering which of them a transition was handed to
//! change, so that gathering its effects ([`super::FarmState::take_effects`]) looks at those
//! builds only: it had looked at every held build after every transition, which made each
//! worker message cost time in proportion to the builds kept for history (6% of the
//! coordinator's CPU with 4,000 held, in the load benchmark's profile).

use std::collections::{HashMap, HashSet};

use manifold_proto::BuildId;

use super::BuildEntry;

/// Held builds by id. Reading goes through `Deref` (a plain map); every way to change one goes
/// through this type, which notes the build as touched.
#[derive(Default)]
pub(super) struct Held {
    map: HashMap<BuildId, BuildEntry>,
    /// Builds handed out for change since the last [`Held::take_touched`].
    touched: HashSet<BuildId>,
}

impl Held {
    /// `id`'s entry, to change.
    pub(super) fn get_mut(&mut self, id: &BuildId) -> Option<&mut BuildEntry> {
        if self.map.contains_key(id) {
            self.touched.insert(*id);
        }
        self.map.get_mut(id)
    }

    pub(super) fn insert(&mut self, id: BuildId, entry: BuildEntry) {
        self.touched.insert(id);
        self.map.insert(id, entry);
    }

    pub(super) fn remove(&mut self, id: &BuildId) -> Option<BuildEntry> {
        self.map.remove(id)
    }

    /// The builds touched since the last call (those still held), each once.
    pub(super) fn take_touched(&mut self) -> Vec<BuildId> {
        let touched = std::mem::take(&mut self.touched);
        (touched.into_iter())
            .filter(|id| self.map.contains_key(id))
            .collect()
    }

    /// `id`'s entry, to change, without noting it (for the one who gathers the effects).
    pub(super) fn entry_untracked(&mut self, id: &BuildId) -> Option<&mut BuildEntry> {
        self.map.get_mut(id)
    }
}

impl std::ops::Deref for Held {
    type Target = HashMap<BuildId, BuildEntry>;

    fn deref(&self) -> &Self::Target {
        &self.map
    }
}
