//! The default [`StateStore`]: redb, an embedded transactional store in `<state-dir>/state.redb`.
//! Every save is one redb write transaction, durable when it returns, so SIGKILL at any moment
//! loses no acknowledged write.
//!
//! Disk faults: after an I/O error redb refuses every later transaction ("previous i/o error")
//! until the database is closed and opened again. So an I/O error closes the database here, and
//! the next call opens it again (redb repairs it from its last commit): a full disk fails the
//! writes made while it is full, as [`StoreError::DiskFull`], and nothing after space returns.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use manifold_proto::BuildId;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::{
    BuildSummary, StateStore, StoreError, build_key, decode, decode_chunk, decode_summary, encode,
    encode_chunk, encode_summary, index_key, is_disk_full, log_key, log_prefix, stored_version,
};
use crate::build::Build;
use crate::logs::{LogChunk, LogWrite};

const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");
/// One [`super::BuildSummary`] per record, written with it: what a restart reads of every build.
const INDEX: TableDefinition<&str, &[u8]> = TableDefinition::new("index");
/// Log chunks, apart from the records: `load` never reads them.
const LOGS: TableDefinition<&str, &[u8]> = TableDefinition::new("logs");
const PREFIX: &str = "manifold";

/// redb-backed store.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// `None` after an I/O error closed it; opened again by the next call.
    db: RwLock<Option<Database>>,
}

/// What a redb call's failure means for the caller.
fn fault(e: impl Into<redb::Error>) -> StoreError {
    match e.into() {
        redb::Error::Io(e) if is_disk_full(&e) => {
            StoreError::DiskFull(format!("writing state.redb: {e}"))
        }
        redb::Error::Io(e) => StoreError::Backend(format!("state.redb: I/O error: {e}")),
        redb::Error::PreviousIo => {
            StoreError::Backend("state.redb: an earlier I/O error closed the database".into())
        }
        e => StoreError::Backend(e.to_string()),
    }
}

/// Errors that leave redb unusable until it is opened again.
fn needs_reopen(e: &StoreError) -> bool {
    matches!(e, StoreError::DiskFull(_))
        || matches!(e, StoreError::Backend(m) if m.starts_with("state.redb: "))
}

/// redb's page cache. Its default (1 GiB) keeps every page the coordinator writes: the resident
/// memory grew by ~6 KiB per finished build, to 712 MiB after 89,000 builds (tests/benches/
/// history.rs), although the farm holds only the newest finished builds. The file's pages stay in
/// the kernel's page cache for the rare reads of evicted builds.
const CACHE_BYTES: usize = 32 << 20;

fn open(path: &Path) -> Result<Database, StoreError> {
    let db = redb::Builder::new()
        .set_cache_size(CACHE_BYTES)
        .create(path)
        .map_err(|e| match fault(e) {
            StoreError::Backend(m) => {
                StoreError::Backend(format!("opening {}: {m}", path.display()))
            }
            other => other,
        })?;
    let tx = db.begin_write().map_err(fault)?;
    tx.open_table(STATE).map_err(fault)?;
    tx.open_table(INDEX).map_err(fault)?;
    tx.open_table(LOGS).map_err(fault)?;
    tx.commit().map_err(fault)?;
    Ok(db)
}

impl EmbeddedStore {
    /// Opens (creating) `<state_dir>/state.redb`.
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(state_dir)
            .map_err(|e| StoreError::Backend(format!("creating {}: {e}", state_dir.display())))?;
        let path = state_dir.join("state.redb");
        let db = open(&path)?;
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                db: RwLock::new(Some(db)),
            }),
        })
    }

    /// Runs `f` on a blocking thread with the open database (opening it again first if an I/O
    /// error closed it); an I/O error in `f` closes it.
    fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> impl std::future::Future<Output = Result<T, StoreError>> {
        let inner = self.inner.clone();
        async move {
            tokio::task::spawn_blocking(move || inner.run(f))
                .await
                .map_err(|e| StoreError::Backend(e.to_string()))?
        }
    }
}

impl Inner {
    fn run<T>(&self, f: impl FnOnce(&Database) -> Result<T, StoreError>) -> Result<T, StoreError> {
        if self.db.read().unwrap_or_else(|p| p.into_inner()).is_none() {
            // Closed by an earlier I/O error: open it again (one caller does; the others find it
            // open).
            let mut guard = self.db.write().unwrap_or_else(|p| p.into_inner());
            if guard.is_none() {
                *guard = Some(open(&self.path)?);
                tracing::info!(path = %self.path.display(), "state store opened again after an I/O error");
            }
        }
        let result = {
            let guard = self.db.read().unwrap_or_else(|p| p.into_inner());
            match guard.as_ref() {
                Some(db) => f(db),
                None => Err(StoreError::Backend(
                    "state.redb: closed by an I/O error in another call".into(),
                )),
            }
        };
        if let Err(e) = &result
            && needs_reopen(e)
        {
            tracing::warn!(error = %e, "closing the state store after an I/O error; the next write opens it again");
            *self.db.write().unwrap_or_else(|p| p.into_inner()) = None;
        }
        result
    }
}

/// Writes the summary of every record again (a store from before the index, or one whose index
/// does not match its records), in one transaction.
fn rebuild_index(db: &Database) -> Result<(), StoreError> {
    let tx = db.begin_write().map_err(fault)?;
    {
        let state = tx.open_table(STATE).map_err(fault)?;
        let mut index = tx.open_table(INDEX).map_err(fault)?;
        index.retain(|_, _| false).map_err(fault)?;
        let mut n = 0usize;
        for item in state.iter().map_err(fault)? {
            let (k, v) = item.map_err(fault)?;
            let build = decode(k.value(), v.value())?;
            index
                .insert(
                    index_key(PREFIX, build.id).as_str(),
                    encode_summary(&build).as_slice(),
                )
                .map_err(fault)?;
            n += 1;
        }
        tracing::info!(
            builds = n,
            "state.redb: build index written from the records"
        );
    }
    tx.commit().map_err(fault)
}

#[async_trait]
impl StateStore for EmbeddedStore {
    async fn summaries(&self) -> Result<Vec<BuildSummary>, StoreError> {
        self.blocking(|db| {
            let complete = {
                let tx = db.begin_read().map_err(fault)?;
                let (state, index) = (
                    tx.open_table(STATE).map_err(fault)?,
                    tx.open_table(INDEX).map_err(fault)?,
                );
                state.len().map_err(fault)? == index.len().map_err(fault)?
            };
            if !complete {
                rebuild_index(db)?;
            }
            let tx = db.begin_read().map_err(fault)?;
            let index = tx.open_table(INDEX).map_err(fault)?;
            let mut out = Vec::with_capacity(index.len().map_err(fault)? as usize);
            for item in index.iter().map_err(fault)? {
                let (k, v) = item.map_err(fault)?;
                out.push(decode_summary(k.value(), v.value())?);
            }
            Ok(out)
        })
        .await
    }

    async fn load_builds(&self, ids: &[BuildId]) -> Result<Vec<Build>, StoreError> {
        let ids = ids.to_vec();
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(fault)?;
            let table = tx.open_table(STATE).map_err(fault)?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                let key = build_key(PREFIX, id);
                if let Some(v) = table.get(key.as_str()).map_err(fault)? {
                    out.push(decode(&key, v.value())?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn compact(&self) -> Result<bool, StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            // Compaction needs the database to itself: the write lock waits for every call.
            let mut guard = inner.db.write().unwrap_or_else(|p| p.into_inner());
            let Some(db) = guard.as_mut() else {
                return Ok(false);
            };
            db.compact()
                .map_err(|e| StoreError::Backend(format!("compacting state.redb: {e}")))
        })
        .await
        .map_err(|e| StoreError::Backend(e.to_string()))?
    }

    async fn save(&self, build: &Build) -> Result<(), StoreError> {
        let build = build.clone();
        self.blocking(move |db| {
            let key = build_key(PREFIX, build.id);
            let tx = db.begin_write().map_err(fault)?;
            {
                let mut table = tx.open_table(STATE).map_err(fault)?;
                let stored = match table.get(key.as_str()).map_err(fault)? {
                    Some(v) => Some(stored_version(&key, v.value())?),
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
                    .map_err(fault)?;
                let mut index = tx.open_table(INDEX).map_err(fault)?;
                index
                    .insert(
                        index_key(PREFIX, build.id).as_str(),
                        encode_summary(&build).as_slice(),
                    )
                    .map_err(fault)?;
            }
            tx.commit().map_err(fault)
        })
        .await
    }

    async fn save_all(&self, builds: &[Build]) -> Result<(), StoreError> {
        self.save_all_with_logs(builds, &LogWrite::default()).await
    }

    async fn save_all_with_logs(
        &self,
        builds: &[Build],
        logs: &LogWrite,
    ) -> Result<(), StoreError> {
        if builds.is_empty() && logs.is_empty() {
            return Ok(());
        }
        let records = record_rows(builds);
        let (put, drop) = log_rows(logs);
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(fault)?;
            put_logs(&tx, &put, &drop)?;
            put_records(&tx, &records)?;
            tx.commit().map_err(fault)
        })
        .await
    }

    async fn delete(&self, id: BuildId) -> Result<(), StoreError> {
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(fault)?;
            {
                let mut table = tx.open_table(STATE).map_err(fault)?;
                table
                    .remove(build_key(PREFIX, id).as_str())
                    .map_err(fault)?;
                let mut index = tx.open_table(INDEX).map_err(fault)?;
                index
                    .remove(index_key(PREFIX, id).as_str())
                    .map_err(fault)?;
                let mut logs = tx.open_table(LOGS).map_err(fault)?;
                let prefix = log_prefix(PREFIX, id);
                // Every key under `.../<id>/` sorts before `.../<id>0` ('0' follows '/').
                let end = format!("{}0", prefix.trim_end_matches('/'));
                logs.retain_in(prefix.as_str()..end.as_str(), |_, _| false)
                    .map_err(fault)?;
            }
            tx.commit().map_err(fault)
        })
        .await
    }

    async fn write_logs(&self, write: &LogWrite) -> Result<(), StoreError> {
        self.save_all_with_logs(&[], write).await
    }

    async fn load_logs(&self, id: BuildId) -> Result<Vec<LogChunk>, StoreError> {
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(fault)?;
            let logs = tx.open_table(LOGS).map_err(fault)?;
            let prefix = log_prefix(PREFIX, id);
            let mut out = Vec::new();
            for item in logs.range(prefix.as_str()..).map_err(fault)? {
                let (k, v) = item.map_err(fault)?;
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

/// A record to write: key, version, bytes, index key, summary bytes.
type RecordRow = (String, u64, Vec<u8>, String, Vec<u8>);

fn record_rows(builds: &[Build]) -> Vec<RecordRow> {
    builds
        .iter()
        .map(|b| {
            (
                build_key(PREFIX, b.id),
                b.version,
                encode(b),
                index_key(PREFIX, b.id),
                encode_summary(b),
            )
        })
        .collect()
}

/// Log chunks to put (key, bytes) and the keys of those to drop.
fn log_rows(write: &LogWrite) -> (Vec<(String, Vec<u8>)>, Vec<String>) {
    let put = (write.put.iter())
        .map(|c| (log_key(PREFIX, c.build, c.seq), encode_chunk(c)))
        .collect();
    let drop = (write.drop.iter())
        .map(|(b, seq)| log_key(PREFIX, *b, *seq))
        .collect();
    (put, drop)
}

/// Writes each record whose stored version is older (a stale one is skipped), with its summary.
fn put_records(tx: &redb::WriteTransaction, records: &[RecordRow]) -> Result<(), StoreError> {
    if records.is_empty() {
        return Ok(());
    }
    let mut table = tx.open_table(STATE).map_err(fault)?;
    let mut index = tx.open_table(INDEX).map_err(fault)?;
    for (key, version, bytes, index_key, summary) in records {
        let stored = match table.get(key.as_str()).map_err(fault)? {
            Some(v) => Some(stored_version(key, v.value())?),
            None => None,
        };
        if stored.is_some_and(|s| s >= *version) {
            continue;
        }
        table
            .insert(key.as_str(), bytes.as_slice())
            .map_err(fault)?;
        index
            .insert(index_key.as_str(), summary.as_slice())
            .map_err(fault)?;
    }
    Ok(())
}

fn put_logs(
    tx: &redb::WriteTransaction,
    put: &[(String, Vec<u8>)],
    drop: &[String],
) -> Result<(), StoreError> {
    if put.is_empty() && drop.is_empty() {
        return Ok(());
    }
    let mut logs = tx.open_table(LOGS).map_err(fault)?;
    for key in drop {
        logs.remove(key.as_str()).map_err(fault)?;
    }
    for (key, value) in put {
        logs.insert(key.as_str(), value.as_slice()).map_err(fault)?;
    }
    Ok(())
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

    #[tokio::test]
    async fn a_store_from_before_the_index_gets_one_from_its_records() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (super::super::suite::build(1), super::super::suite::build(1));
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store.save(&a).await.unwrap();
        store.save(&b).await.unwrap();
        // As written by a coordinator without the index.
        store
            .blocking(|db| {
                let tx = db.begin_write().map_err(fault)?;
                tx.open_table(INDEX)
                    .map_err(fault)?
                    .retain(|_, _| false)
                    .map_err(fault)?;
                tx.commit().map_err(fault)
            })
            .await
            .unwrap();
        let mut got = store.summaries().await.unwrap();
        got.sort_by_key(|s| s.id);
        let mut want = vec![BuildSummary::from(&a), BuildSummary::from(&b)];
        want.sort_by_key(|s| s.id);
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn compaction_gives_the_space_of_deleted_builds_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let mut ids = Vec::new();
        for _ in 0..2000 {
            let b = super::super::suite::build(1);
            ids.push(b.id);
            store.save(&b).await.unwrap();
        }
        let size = || {
            std::fs::metadata(dir.path().join("state.redb"))
                .unwrap()
                .len()
        };
        let full = size();
        for id in ids {
            store.delete(id).await.unwrap();
        }
        assert!(store.compact().await.unwrap());
        assert!(
            size() < full / 2,
            "{} after compaction, {full} before",
            size()
        );
        assert!(store.summaries().await.unwrap().is_empty());
    }
}
