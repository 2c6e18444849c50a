//! The etcd [`StateStore`], for several coordinators sharing one farm.
//!
//! Each save is one etcd transaction that:
//! - compares the build key's mod-revision with the one this store last wrote or read (or, for a
//!   new build, that the key does not exist): a compare-and-swap, so a write never lands on top of a
//!   change this coordinator has not seen;
//! - when fenced, also compares the leader key's create-revision with the one this coordinator won
//!   the election with: once its leadership is gone (its lease expired while it was paused, say),
//!   every write fails, and [`StoreError::Fenced`] tells the farm to step down.
//!
//! A request that times out may or may not have been applied. Saves are therefore retried through
//! the same compare: if the key now holds this very version, the earlier attempt landed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, GetOptions, Txn, TxnOp, TxnOpResponse,
};
use manifold_proto::BuildId;

use super::{
    BuildSummary, StateStore, StoreError, build_key, decode, decode_chunk, decode_summary, encode,
    encode_chunk, encode_summary, index_key, log_key, log_prefix,
};
use crate::build::Build;
use crate::logs::{LogChunk, LogWrite};

/// Operations per log transaction: under etcd's default `--max-txn-ops` (128).
const LOG_OPS_PER_TXN: usize = 100;
/// Bytes of chunks per log transaction: under etcd's default request limit (1.5 MiB).
const LOG_BYTES_PER_TXN: usize = 1024 * 1024;
/// Keys per range request when reading every summary: a page stays far under the client's 4 MiB
/// message limit (a summary is about 150 bytes, a record a few KiB).
const RANGE_PAGE: i64 = 2000;
/// Records read per transaction by `load_builds`: under `--max-txn-ops` (128).
const GETS_PER_TXN: usize = 100;

/// The leadership a fenced store writes under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    /// The leader key this coordinator created when it won.
    pub key: Vec<u8>,
    /// Its create-revision: the epoch of this leadership.
    pub revision: i64,
}

/// etcd-backed store under a key prefix.
pub struct EtcdStore {
    client: Client,
    prefix: String,
    fence: Option<Fence>,
    /// Mod-revision and record version of each build key as last seen by this store.
    revisions: Mutex<HashMap<BuildId, (i64, u64)>>,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("etcd: {e}"))
}

/// Connects to etcd, naming the endpoints in the error. Requests time out after `timeout` (the
/// election's campaign blocks until it wins, so its client has none).
pub async fn connect(
    endpoints: &[String],
    timeout: Option<Duration>,
) -> Result<Client, StoreError> {
    let mut options = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
    if let Some(t) = timeout {
        options = options.with_timeout(t);
    }
    Client::connect(endpoints, Some(options))
        .await
        .map_err(|e| {
            StoreError::Backend(format!(
                "cannot reach etcd at {}: {e}; check --etcd",
                endpoints.join(",")
            ))
        })
}

impl EtcdStore {
    /// A store writing under `prefix`; with `fence`, only while that leadership holds.
    pub fn new(client: Client, prefix: &str, fence: Option<Fence>) -> Self {
        Self {
            client,
            prefix: prefix.trim_end_matches('/').to_owned(),
            fence,
            revisions: Mutex::new(HashMap::new()),
        }
    }

    fn fence_compare(&self) -> Option<Compare> {
        self.fence
            .as_ref()
            .map(|f| Compare::create_revision(f.key.clone(), CompareOp::Equal, f.revision))
    }

    async fn try_save(&self, build: &Build) -> Result<Outcome, StoreError> {
        let key = build_key(&self.prefix, build.id);
        let known = self.revisions.lock().unwrap().get(&build.id).copied();
        if let Some((_, stored)) = known.filter(|(_, v)| *v >= build.version) {
            return Err(StoreError::Stale {
                id: build.id,
                stored,
                attempted: build.version,
            });
        }
        let mut compares = vec![match known {
            Some((rev, _)) => Compare::mod_revision(key.clone(), CompareOp::Equal, rev),
            None => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
        }];
        compares.extend(self.fence_compare());
        let mut or_else = vec![TxnOp::get(key.clone(), None)];
        if let Some(f) = &self.fence {
            or_else.push(TxnOp::get(f.key.clone(), None));
        }
        let txn = Txn::new()
            .when(compares)
            .and_then(vec![
                TxnOp::put(key.clone(), encode(build), None),
                TxnOp::put(
                    index_key(&self.prefix, build.id),
                    encode_summary(build),
                    None,
                ),
            ])
            .or_else(or_else);
        let resp = self.client.clone().txn(txn).await.map_err(backend)?;
        if resp.succeeded() {
            let rev = resp.header().map(|h| h.revision()).unwrap_or_default();
            self.revisions
                .lock()
                .unwrap()
                .insert(build.id, (rev, build.version));
            return Ok(Outcome::Written);
        }
        let responses = resp.op_responses();
        if let Some(f) = &self.fence {
            let holds = match responses.get(1) {
                Some(TxnOpResponse::Get(g)) => g
                    .kvs()
                    .first()
                    .is_some_and(|kv| kv.create_revision() == f.revision),
                _ => false,
            };
            if !holds {
                return Err(StoreError::Fenced(format!(
                    "the leader key {} of epoch {} is gone; another coordinator leads",
                    String::from_utf8_lossy(&f.key),
                    f.revision
                )));
            }
        }
        let current = match responses.first() {
            Some(TxnOpResponse::Get(g)) => g.kvs().first().cloned(),
            _ => None,
        };
        let Some(kv) = current else {
            // Deleted meanwhile: write it as new.
            self.revisions.lock().unwrap().remove(&build.id);
            return Ok(Outcome::Retry);
        };
        let stored = decode(&key, kv.value())?;
        self.revisions
            .lock()
            .unwrap()
            .insert(build.id, (kv.mod_revision(), stored.version));
        if stored.version == build.version && stored == *build {
            return Ok(Outcome::Written); // an earlier, ambiguous attempt landed
        }
        if stored.version >= build.version {
            return Err(StoreError::Stale {
                id: build.id,
                stored: stored.version,
                attempted: build.version,
            });
        }
        Ok(Outcome::Retry)
    }
}

enum Outcome {
    Written,
    Retry,
}

#[async_trait]
impl StateStore for EtcdStore {
    async fn summaries(&self) -> Result<Vec<BuildSummary>, StoreError> {
        let records = self.count(&format!("{}/builds/", self.prefix)).await?;
        let index = format!("{}/index/", self.prefix);
        if self.count(&index).await? != records {
            self.rebuild_index().await?;
        }
        let mut out = Vec::new();
        for (key, value, _) in self.range(&index, false).await? {
            out.push(decode_summary(&key, &value)?);
        }
        Ok(out)
    }

    async fn load_builds(&self, ids: &[BuildId]) -> Result<Vec<Build>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for batch in ids.chunks(GETS_PER_TXN) {
            let ops: Vec<TxnOp> = (batch.iter())
                .map(|id| TxnOp::get(build_key(&self.prefix, *id), None))
                .collect();
            let resp = (self.client.clone())
                .txn(Txn::new().and_then(ops))
                .await
                .map_err(backend)?;
            let mut revisions = self.revisions.lock().unwrap();
            for r in resp.op_responses() {
                let TxnOpResponse::Get(g) = r else { continue };
                if let Some(kv) = g.kvs().first() {
                    let build = decode(&String::from_utf8_lossy(kv.key()), kv.value())?;
                    revisions.insert(build.id, (kv.mod_revision(), build.version));
                    out.push(build);
                }
            }
        }
        Ok(out)
    }

    async fn save(&self, build: &Build) -> Result<(), StoreError> {
        let mut last = None;
        for attempt in 0..5u32 {
            match self.try_save(build).await {
                Ok(Outcome::Written) => return Ok(()),
                Ok(Outcome::Retry) => {}
                Err(e @ StoreError::Backend(_)) => {
                    // Possibly applied: the next round's compare tells.
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            StoreError::Backend(format!("build {}: the key kept changing", build.id))
        }))
    }

    async fn delete(&self, id: BuildId) -> Result<(), StoreError> {
        let key = build_key(&self.prefix, id);
        let logs = log_prefix(&self.prefix, id);
        self.fenced_txn(vec![
            TxnOp::delete(key, None),
            TxnOp::delete(index_key(&self.prefix, id), None),
            TxnOp::delete(logs, Some(DeleteOptions::new().with_prefix())),
        ])
        .await?;
        self.revisions.lock().unwrap().remove(&id);
        Ok(())
    }

    async fn write_logs(&self, write: &LogWrite) -> Result<(), StoreError> {
        let mut ops: Vec<TxnOp> = Vec::new();
        let mut bytes = 0;
        let drops = (write.drop.iter()).map(|(b, seq)| (log_key(&self.prefix, *b, *seq), None));
        let puts = (write.put.iter()).map(|c| (log_key(&self.prefix, c.build, c.seq), Some(c)));
        for (key, chunk) in drops.chain(puts) {
            let op = match chunk {
                Some(c) => {
                    let value = encode_chunk(c);
                    bytes += key.len() + value.len();
                    TxnOp::put(key, value, None)
                }
                None => TxnOp::delete(key, None),
            };
            if !ops.is_empty() && (ops.len() == LOG_OPS_PER_TXN || bytes > LOG_BYTES_PER_TXN) {
                self.fenced_txn(std::mem::take(&mut ops)).await?;
                bytes = 0;
            }
            ops.push(op);
        }
        if !ops.is_empty() {
            self.fenced_txn(ops).await?;
        }
        Ok(())
    }

    async fn load_logs(&self, id: BuildId) -> Result<Vec<LogChunk>, StoreError> {
        let prefix = log_prefix(&self.prefix, id);
        let resp = self
            .client
            .clone()
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(backend)?;
        resp.kvs()
            .iter()
            .map(|kv| decode_chunk(&String::from_utf8_lossy(kv.key()), kv.value()))
            .collect()
    }
}

impl EtcdStore {
    /// How many keys start with `prefix`.
    async fn count(&self, prefix: &str) -> Result<i64, StoreError> {
        let resp = (self.client.clone())
            .get(
                prefix,
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
            .map_err(backend)?;
        Ok(resp.count())
    }

    /// Every key under `prefix` with its value and mod-revision, read a page at a time
    /// (`keys_only` leaves the values empty).
    async fn range(
        &self,
        prefix: &str,
        keys_only: bool,
    ) -> Result<Vec<(String, Vec<u8>, i64)>, StoreError> {
        let end = format!("{}0", prefix.trim_end_matches('/'));
        let mut from = prefix.to_owned().into_bytes();
        let mut out = Vec::new();
        loop {
            let mut options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(RANGE_PAGE);
            if keys_only {
                options = options.with_keys_only();
            }
            let resp = (self.client.clone())
                .get(from.clone(), Some(options))
                .await
                .map_err(backend)?;
            for kv in resp.kvs() {
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                out.push((key, kv.value().to_vec(), kv.mod_revision()));
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok(out),
            }
        }
    }

    /// Writes the summary of every record again (a store from before the index), a page of
    /// records at a time, under the fence.
    async fn rebuild_index(&self) -> Result<(), StoreError> {
        let records = format!("{}/builds/", self.prefix);
        let index = format!("{}/index/", self.prefix);
        let stale: Vec<TxnOp> = (self.range(&index, true).await?.into_iter())
            .map(|(key, _, _)| TxnOp::delete(key, None))
            .collect();
        let mut ops = stale;
        let mut n = 0usize;
        for (key, value, _) in self.range(&records, false).await? {
            let build = decode(&key, &value)?;
            ops.push(TxnOp::put(
                index_key(&self.prefix, build.id),
                encode_summary(&build),
                None,
            ));
            n += 1;
        }
        while !ops.is_empty() {
            let rest = ops.split_off(ops.len().min(LOG_OPS_PER_TXN));
            self.fenced_txn(std::mem::replace(&mut ops, rest)).await?;
        }
        tracing::info!(builds = n, "etcd: build index written from the records");
        Ok(())
    }

    /// Runs `ops` in one transaction, under the fence when there is one.
    async fn fenced_txn(&self, ops: Vec<TxnOp>) -> Result<(), StoreError> {
        let mut txn = Txn::new();
        if let Some(c) = self.fence_compare() {
            txn = txn.when(vec![c]);
        }
        let resp = self
            .client
            .clone()
            .txn(txn.and_then(ops))
            .await
            .map_err(backend)?;
        if !resp.succeeded() {
            return Err(StoreError::Fenced("the leader key is gone".into()));
        }
        Ok(())
    }
}

/// A real etcd on loopback, for tests: one member, its own data dir, killed on drop.
#[cfg(test)]
pub(crate) mod test_etcd {
    use std::process::{Child, Command, Stdio};

    pub struct TestEtcd {
        pub endpoint: String,
        child: Child,
        _dir: tempfile::TempDir,
    }

    impl Drop for TestEtcd {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    // The child is killed and reaped in Drop; the panics below end the test process anyway.
    #[allow(clippy::zombie_processes)]
    pub async fn start() -> TestEtcd {
        let dir = tempfile::tempdir().unwrap();
        let (client, peer) = (free_port(), free_port());
        let endpoint = format!("http://127.0.0.1:{client}");
        let child = Command::new("etcd")
            .args([
                "--name",
                "test",
                "--data-dir",
                dir.path().to_str().unwrap(),
                "--listen-client-urls",
                &endpoint,
                "--advertise-client-urls",
                &endpoint,
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-cluster",
                &format!("test=http://127.0.0.1:{peer}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd (Debian's etcd-server) must be installed: run .ci/install");
        for _ in 0..100 {
            if let Ok(mut c) = etcd_client::Client::connect([&endpoint], None).await
                && c.status().await.is_ok()
            {
                return TestEtcd {
                    endpoint,
                    child,
                    _dir: dir,
                };
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("etcd did not start on {endpoint}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::suite;

    /// A real etcd of the test's own, and a client of it.
    async fn started() -> (test_etcd::TestEtcd, Client) {
        let etcd = test_etcd::start().await;
        let client = connect(
            std::slice::from_ref(&etcd.endpoint),
            Some(Duration::from_secs(5)),
        )
        .await
        .unwrap();
        (etcd, client)
    }

    #[tokio::test]
    async fn passes_the_store_suite_against_a_real_etcd() {
        let (_etcd, client) = started().await;
        let n = std::sync::atomic::AtomicUsize::new(0);
        // Each case gets its own prefix, so each starts empty.
        suite::run(|| {
            let i = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            EtcdStore::new(client.clone(), &format!("/suite-{i}"), None)
        })
        .await;
    }

    #[tokio::test]
    async fn a_write_without_the_leadership_it_was_fenced_with_is_rejected() {
        let (_etcd, mut client) = started().await;
        let lease = client.lease_grant(30, None).await.unwrap().id();
        let won = client.campaign("/fence/leader", "me", lease).await.unwrap();
        let leader = won.leader().unwrap();
        let fence = Fence {
            key: leader.key().to_vec(),
            revision: leader.rev(),
        };
        let store = EtcdStore::new(client.clone(), "/fence", Some(fence));
        let mut b = suite::build(1);
        store.save(&b).await.unwrap();
        // Leadership ends (as when the lease expires during a pause).
        client.lease_revoke(lease).await.unwrap();
        b.version = 2;
        match store.save(&b).await {
            Err(StoreError::Fenced(_)) => {}
            other => panic!("expected a fenced write, got {other:?}"),
        }
        let reader = EtcdStore::new(client, "/fence", None);
        assert_eq!(reader.load().await.unwrap()[0].version, 1);
    }

    #[tokio::test]
    async fn summaries_are_read_in_pages_and_rebuilt_for_a_store_without_them() {
        let (_etcd, mut client) = started().await;
        let store = EtcdStore::new(client.clone(), "/paged", None);
        let n = RANGE_PAGE as usize + 5;
        let mut ids = Vec::new();
        for _ in 0..n {
            let b = suite::build(1);
            ids.push(b.id);
            store.save(&b).await.unwrap();
        }
        assert_eq!(store.summaries().await.unwrap().len(), n);
        // As written by a coordinator without the index.
        client
            .delete("/paged/index/", Some(DeleteOptions::new().with_prefix()))
            .await
            .unwrap();
        let mut got: Vec<BuildId> = store
            .summaries()
            .await
            .unwrap()
            .iter()
            .map(|s| s.id)
            .collect();
        got.sort();
        ids.sort();
        assert_eq!(got, ids);
        assert_eq!(store.load_builds(&ids[..150]).await.unwrap().len(), 150);
    }

    #[tokio::test]
    async fn a_replayed_write_after_an_ambiguous_outcome_is_harmless() {
        let (_etcd, client) = started().await;
        let store = EtcdStore::new(client.clone(), "/replay", None);
        let b = suite::build(1);
        store.save(&b).await.unwrap();
        // A second store instance that never saw the write replays it: it detects it landed.
        let other = EtcdStore::new(client, "/replay", None);
        other.save(&b).await.unwrap();
        assert_eq!(other.load().await.unwrap(), vec![b]);
    }
}
