//! An in-memory [`StateStore`] for unit tests; forgets everything when dropped.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use manifold_proto::BuildId;

use super::{BuildSummary, StateStore, StoreError};
use crate::build::Build;
use crate::logs::{LogChunk, LogWrite};

/// Builds in a map, with the same version rule as the durable stores.
#[derive(Default)]
pub struct MemoryStore {
    builds: Mutex<BTreeMap<BuildId, Build>>,
    logs: Mutex<BTreeMap<(BuildId, u64), LogChunk>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl StateStore for MemoryStore {
    async fn summaries(&self) -> Result<Vec<BuildSummary>, StoreError> {
        Ok(self
            .builds
            .lock()
            .unwrap()
            .values()
            .map(Into::into)
            .collect())
    }

    async fn load_builds(&self, ids: &[BuildId]) -> Result<Vec<Build>, StoreError> {
        let builds = self.builds.lock().unwrap();
        Ok(ids
            .iter()
            .filter_map(|id| builds.get(id).cloned())
            .collect())
    }

    async fn save(&self, build: &Build) -> Result<(), StoreError> {
        let mut builds = self.builds.lock().unwrap();
        if let Some(stored) = builds.get(&build.id)
            && stored.version >= build.version
        {
            return Err(StoreError::Stale {
                id: build.id,
                stored: stored.version,
                attempted: build.version,
            });
        }
        builds.insert(build.id, build.clone());
        Ok(())
    }

    async fn delete(&self, id: BuildId) -> Result<(), StoreError> {
        self.builds.lock().unwrap().remove(&id);
        self.logs.lock().unwrap().retain(|(b, _), _| *b != id);
        Ok(())
    }

    async fn write_logs(&self, write: &LogWrite) -> Result<(), StoreError> {
        let mut logs = self.logs.lock().unwrap();
        for key in &write.drop {
            logs.remove(key);
        }
        for c in &write.put {
            logs.insert((c.build, c.seq), c.clone());
        }
        Ok(())
    }

    async fn load_logs(&self, id: BuildId) -> Result<Vec<LogChunk>, StoreError> {
        let logs = self.logs.lock().unwrap();
        Ok(logs
            .range((id, 0)..=(id, u64::MAX))
            .map(|(_, c)| c.clone())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn passes_the_store_suite() {
        super::super::suite::run(super::MemoryStore::new).await;
    }
}
