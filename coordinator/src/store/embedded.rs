//! The default [`StateStore`]: redb, an embedded transactional store in `<state-dir>/state.redb`.
//! Every save is one redb write transaction, durable when it returns, so SIGKILL at any moment
//! loses no acknowledged write.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use manifold_proto::BuildId;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{
    StateStore, StoreError, build_key, decode, decode_chunk, encode, encode_chunk, log_key,
    log_prefix,
};
use crate::build::Build;
use crate::logs::{LogChunk, LogWrite};

const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");
/// Log chunks, apart from the records: `load` never reads them.
const LOGS: TableDefinition<&str, &[u8]> = TableDefinition::new("logs");
const PREFIX: &str = "manifold";

/// redb-backed store.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl EmbeddedStore {
    /// Opens (creating) `<state_dir>/state.redb`.
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(state_dir).map_err(backend)?;
        let path = state_dir.join("state.redb");
        let db = Database::create(&path)
            .map_err(|e| StoreError::Backend(format!("opening {}: {e}", path.display())))?;
        let tx = db.begin_write().map_err(backend)?;
        tx.open_table(STATE).map_err(backend)?;
        tx.open_table(LOGS).map_err(backend)?;
        tx.commit().map_err(backend)?;
        Ok(Self { db: Arc::new(db) })
    }

    fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> impl std::future::Future<Output = Result<T, StoreError>> {
        let db = self.db.clone();
        async move {
            tokio::task::spawn_blocking(move || f(&db))
                .await
                .map_err(backend)?
        }
    }
}

#[async_trait]
impl StateStore for EmbeddedStore {
    async fn load(&self) -> Result<Vec<Build>, StoreError> {
        self.blocking(|db| {
            let tx = db.begin_read().map_err(backend)?;
            let table = tx.open_table(STATE).map_err(backend)?;
            let prefix = format!("{PREFIX}/builds/");
            let mut out = Vec::new();
            for item in table.range(prefix.as_str()..).map_err(backend)? {
                let (k, v) = item.map_err(backend)?;
                if !k.value().starts_with(&prefix) {
                    break;
                }
                out.push(decode(k.value(), v.value())?);
            }
            Ok(out)
        })
        .await
    }

    async fn save(&self, build: &Build) -> Result<(), StoreError> {
        let build = build.clone();
        self.blocking(move |db| {
            let key = build_key(PREFIX, build.id);
            let tx = db.begin_write().map_err(backend)?;
            {
                let mut table = tx.open_table(STATE).map_err(backend)?;
                let stored = match table.get(key.as_str()).map_err(backend)? {
                    Some(v) => Some(decode(&key, v.value())?.version),
                    None => None,
                };
                if let Some(stored) = stored.filter(|s| *s >= build.version) {
                    return Err(StoreError::Stale {
                        id: build.id,
                        stored,
                        attempted: build.version,
                    });
                }
                table
                    .insert(key.as_str(), encode(&build).as_slice())
                    .map_err(backend)?;
            }
            tx.commit().map_err(backend)
        })
        .await
    }

    async fn delete(&self, id: BuildId) -> Result<(), StoreError> {
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(backend)?;
            {
                let mut table = tx.open_table(STATE).map_err(backend)?;
                table
                    .remove(build_key(PREFIX, id).as_str())
                    .map_err(backend)?;
                let mut logs = tx.open_table(LOGS).map_err(backend)?;
                let prefix = log_prefix(PREFIX, id);
                // Every key under `.../<id>/` sorts before `.../<id>0` ('0' follows '/').
                let end = format!("{}0", prefix.trim_end_matches('/'));
                logs.retain_in(prefix.as_str()..end.as_str(), |_, _| false)
                    .map_err(backend)?;
            }
            tx.commit().map_err(backend)
        })
        .await
    }

    async fn write_logs(&self, write: &LogWrite) -> Result<(), StoreError> {
        let put: Vec<(String, Vec<u8>)> = write
            .put
            .iter()
            .map(|c| (log_key(PREFIX, c.build, c.seq), encode_chunk(c)))
            .collect();
        let drop: Vec<String> = (write.drop.iter())
            .map(|(b, seq)| log_key(PREFIX, *b, *seq))
            .collect();
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(backend)?;
            {
                let mut logs = tx.open_table(LOGS).map_err(backend)?;
                for key in &drop {
                    logs.remove(key.as_str()).map_err(backend)?;
                }
                for (key, value) in &put {
                    logs.insert(key.as_str(), value.as_slice())
                        .map_err(backend)?;
                }
            }
            tx.commit().map_err(backend)
        })
        .await
    }

    async fn load_logs(&self, id: BuildId) -> Result<Vec<LogChunk>, StoreError> {
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(backend)?;
            let logs = tx.open_table(LOGS).map_err(backend)?;
            let prefix = log_prefix(PREFIX, id);
            let mut out = Vec::new();
            for item in logs.range(prefix.as_str()..).map_err(backend)? {
                let (k, v) = item.map_err(backend)?;
                if !k.value().starts_with(&prefix) {
                    break;
                }
                out.push(decode_chunk(k.value(), v.value())?);
            }
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passes_the_store_suite() {
        let dirs = std::sync::Mutex::new(Vec::new());
        super::super::suite::run(|| {
            let dir = tempfile::tempdir().unwrap();
            let store = EmbeddedStore::open(dir.path()).unwrap();
            dirs.lock().unwrap().push(dir);
            store
        })
        .await;
    }

    #[tokio::test]
    async fn what_was_saved_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let b = super::super::suite::build(1);
        {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            store.save(&b).await.unwrap();
        }
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(store.load().await.unwrap(), vec![b]);
    }
}
