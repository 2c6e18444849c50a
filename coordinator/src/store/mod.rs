//! Durable state: one seam, three implementations run through the same test suite.
//!
//! - [`embedded::EmbeddedStore`] (the default, `--state-dir DIR`): redb, a transactional store in one
//!   file, `DIR/state.redb`; a single-machine farm needs no server;
//! - [`etcd::EtcdStore`] (`--etcd URL,...`): for several coordinators with leader election; every
//!   write is fenced by the writer's leadership;
//! - [`memory::MemoryStore`]: for unit tests.
//!
//! What is stored: one record per build (the build, its request, and each job's state, attempt,
//! worker, pushed image and log tail: a few KiB, far below etcd's 1.5 MiB request limit), and,
//! apart from the records, each build's output as log chunks ([`crate::logs`]: at most 64 KiB
//! each, at most 1 MiB per platform, written in batches). Build contexts never go into the store.
//! Every state transition of a build is one write of its whole record, in one transaction.
//!
//! Key layout (etcd; redb uses the same keys, records in its `state` table, summaries in its
//! `index` table and log chunks in its own `logs` table):
//! - `<prefix>/builds/<build-id>` → JSON of [`crate::build::Build`];
//! - `<prefix>/index/<build-id>` → JSON of [`BuildSummary`] (team, times, state: about 150
//!   bytes), written in the same transaction as the record. Build ids are UUID v4, so no key is
//!   ordered by time: a restarting coordinator reads every summary (never every record), sorts
//!   them by creation in memory, and reads in full only the unfinished builds and the finished
//!   ones it keeps in memory ([`crate::farm`]'s history window). A store written before the
//!   index existed gets it built from the records by the first [`StateStore::summaries`];
//! - `<prefix>/logs/<build-id>/<seq, 20 digits>` → JSON of [`crate::logs::LogChunk`]; deleting a
//!   build deletes them in the same transaction;
//! - `<prefix>/leader/<lease-id>` → address of a candidate; the lowest create-revision leads
//!   (etcd's election protocol).
//!
//! Version rule: a record carries a version that every transition increments. A store accepts a
//! write only when the stored version is lower (or absent), so replaying a write after an
//! ambiguous timeout is harmless, and an old writer can never roll a build back.

pub mod embedded;
pub mod etcd;
pub mod memory;

use async_trait::async_trait;
use manifold_proto::BuildId;

use crate::build::{Build, BuildState};
use crate::logs::{LogChunk, LogWrite};

/// Store failures.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// The stored record is as new as or newer than the write.
    #[error("build {id}: the store holds version {stored}, refusing version {attempted}")]
    Stale {
        /// Build.
        id: BuildId,
        /// Version in the store.
        stored: u64,
        /// Version of the write.
        attempted: u64,
    },
    /// This coordinator is no longer the leader; its writes are rejected.
    #[error("this coordinator lost its leadership: {0}")]
    Fenced(String),
    /// A record that cannot be decoded.
    #[error("corrupt record {key}: {cause}")]
    Corrupt {
        /// Key.
        key: String,
        /// Decoder error.
        cause: String,
    },
    /// The state disk has no room left (or the quota is spent): nothing more can be written
    /// until space is freed. The coordinator keeps serving reads and goes on by itself once a
    /// write succeeds again.
    #[error(
        "state disk full: {0}; free space on the file system of the state dir (--state-dir); the coordinator goes on by itself once there is room"
    )]
    DiskFull(String),
    /// The backend failed (disk, network).
    #[error("state store: {0}")]
    Backend(String),
}

/// Whether an I/O error says the disk (or the user's quota) is full: `ENOSPC`, `EDQUOT`.
pub fn is_disk_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    ) || matches!(e.raw_os_error(), Some(28 | 122))
}

/// What the store's index holds of every build: enough to list, page and check access without
/// reading the record, and to decide what a restart reads in full.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BuildSummary {
    /// The build.
    pub id: BuildId,
    /// Its team.
    pub team: String,
    /// Unix ms.
    pub created_at_ms: i64,
    /// Unix ms, once final.
    pub finished_at_ms: Option<i64>,
    /// Its state when last saved.
    pub state: BuildState,
}

impl From<&Build> for BuildSummary {
    fn from(b: &Build) -> Self {
        BuildSummary {
            id: b.id,
            team: b.team.clone(),
            created_at_ms: b.created_at_ms,
            finished_at_ms: b.finished_at_ms,
            state: b.state,
        }
    }
}

/// Where the coordinator keeps its builds. See the module docs.
#[async_trait]
pub trait StateStore: Send + Sync + 'static {
    /// The summary of every stored build, in no particular order (the index; built from the
    /// records once if a store predates it).
    async fn summaries(&self) -> Result<Vec<BuildSummary>, StoreError>;
    /// The records of those of `ids` the store holds, in the order of `ids`.
    async fn load_builds(&self, ids: &[BuildId]) -> Result<Vec<Build>, StoreError>;
    /// Every stored build in full (tests and tools; the coordinator reads summaries).
    async fn load(&self) -> Result<Vec<Build>, StoreError> {
        let ids: Vec<BuildId> = self.summaries().await?.iter().map(|s| s.id).collect();
        self.load_builds(&ids).await
    }
    /// Writes a build's record and its summary in one transaction, if its version is newer than
    /// the stored one.
    async fn save(&self, build: &Build) -> Result<(), StoreError>;
    /// Writes several builds' records, skipping each one whose stored version is as new
    /// (a stale write is no error here). The embedded store does it in one transaction, so one
    /// commit (one fsync) makes a whole group of transitions durable; the default saves them one
    /// by one. On an error none of them counts as written (writing one again is harmless).
    async fn save_all(&self, builds: &[Build]) -> Result<(), StoreError> {
        for build in builds {
            match self.save(build).await {
                Ok(()) | Err(StoreError::Stale { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
    /// Removes a build's record, its summary and its log chunks, in one transaction (retention).
    async fn delete(&self, id: BuildId) -> Result<(), StoreError>;
    /// Gives the space of deleted builds back to the file system, where the backend needs to be
    /// told (redb); `true` when it did. etcd compacts by itself (its own `--auto-compaction-*`).
    async fn compact(&self) -> Result<bool, StoreError> {
        Ok(false)
    }
    /// Writes log chunks and deletes the dropped ones (one transaction; on etcd as few as its
    /// limits on operations and request size allow).
    async fn write_logs(&self, write: &LogWrite) -> Result<(), StoreError>;
    /// [`StateStore::write_logs`], then [`StateStore::save_all`]: the embedded store does both
    /// in one transaction (one fsync for a group's records and the lines before them); the
    /// default one after the other. On an error none of it counts as written (writing it again
    /// is harmless).
    async fn save_all_with_logs(
        &self,
        builds: &[Build],
        logs: &LogWrite,
    ) -> Result<(), StoreError> {
        if !logs.is_empty() {
            self.write_logs(logs).await?;
        }
        self.save_all(builds).await
    }
    /// A build's stored log chunks, oldest first.
    async fn load_logs(&self, id: BuildId) -> Result<Vec<LogChunk>, StoreError>;
}

fn encode_chunk(chunk: &LogChunk) -> Vec<u8> {
    serde_json::to_vec(chunk).expect("log chunks always serialise")
}

fn decode_chunk(key: &str, bytes: &[u8]) -> Result<LogChunk, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: key.to_owned(),
        cause: e.to_string(),
    })
}

/// The key of a build's log chunk `seq` under `prefix` (zero-padded, so keys sort by `seq`).
pub fn log_key(prefix: &str, id: BuildId, seq: u64) -> String {
    format!("{prefix}/logs/{id}/{seq:020}")
}

/// The prefix of every log chunk key of a build.
pub fn log_prefix(prefix: &str, id: BuildId) -> String {
    format!("{prefix}/logs/{id}/")
}

fn encode(build: &Build) -> Vec<u8> {
    serde_json::to_vec(build).expect("builds always serialise")
}

fn decode(key: &str, bytes: &[u8]) -> Result<Build, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: key.to_owned(),
        cause: e.to_string(),
    })
}

/// The version of the stored record `bytes`, without decoding the rest of it: what a write
/// compares before it overwrites a record.
fn stored_version(key: &str, bytes: &[u8]) -> Result<u64, StoreError> {
    #[derive(serde::Deserialize)]
    struct Versioned {
        version: u64,
    }
    serde_json::from_slice::<Versioned>(bytes)
        .map(|v| v.version)
        .map_err(|e| StoreError::Corrupt {
            key: key.to_owned(),
            cause: e.to_string(),
        })
}

/// The record key of a build under `prefix`.
pub fn build_key(prefix: &str, id: BuildId) -> String {
    format!("{prefix}/builds/{id}")
}

/// The summary key of a build under `prefix`.
pub fn index_key(prefix: &str, id: BuildId) -> String {
    format!("{prefix}/index/{id}")
}

fn encode_summary(build: &Build) -> Vec<u8> {
    serde_json::to_vec(&BuildSummary::from(build)).expect("summaries always serialise")
}

fn decode_summary(key: &str, bytes: &[u8]) -> Result<BuildSummary, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: key.to_owned(),
        cause: e.to_string(),
    })
}

/// The shared suite every implementation runs (see each implementation's tests).
#[cfg(test)]
pub(crate) mod suite {
    use super::*;
    use crate::build::{BuildRequest, BuildSpec, BuildState, Job, JobState};
    use manifold_proto::{JobId, Platform};

    pub fn build(version: u64) -> Build {
        let platform = Platform::linux_arm64();
        Build {
            id: BuildId::new(),
            spec: BuildSpec {
                image: "127.0.0.1:5000/team/app:1.0".parse().unwrap(),
                platforms: vec![platform.clone()],
                context_digest: format!("sha256:{}", "a".repeat(64)),
                dockerfiles: [(platform.clone(), "Dockerfile".to_owned())].into(),
                build_args: [("V".to_owned(), "1".to_owned())].into(),
                target: None,
                labels: Default::default(),
                arch_tags: true,
                arch_tag_template: Some("{tag}-{goarch}".into()),
                flags: manifold_proto::BuildFlags {
                    no_cache: true,
                    cache_to: vec![
                        manifold_proto::CacheSpec::parse("--cache-to", "127.0.0.1:5000/c").unwrap(),
                    ],
                    secret_ids: vec!["npm".into()],
                    ..Default::default()
                },
                extra_tags: vec!["127.0.0.1:5000/team/app:latest".parse().unwrap()],
            },
            request: BuildRequest {
                image: "127.0.0.1:5000/team/app:1.0".into(),
                platforms: vec!["linux/arm64".into()],
                ..Default::default()
            },
            state: BuildState::Queued,
            jobs: vec![Job {
                id: JobId::new(),
                platform,
                state: JobState::Queued,
                worker: None,
                attempt: 0,
                image: None,
                error: None,
                log_tail: ["line".to_owned()].into(),
            }],
            manifest: None,
            error: None,
            created_at_ms: 1,
            finished_at_ms: None,
            version,
            team: "mobile".into(),
            submitted_by: "alice".into(),
            publishing: None,
            reused: None,
        }
    }

    /// Runs every case against a fresh store from `fresh`.
    pub async fn run<S: StateStore>(fresh: impl Fn() -> S) {
        a_saved_build_loads_back_equal(fresh()).await;
        a_newer_version_replaces_an_older_one(fresh()).await;
        an_older_or_equal_version_is_refused(fresh()).await;
        a_group_write_takes_the_newer_records_and_skips_the_stale(fresh()).await;
        deleted_builds_are_gone(fresh()).await;
        log_chunks_load_back_in_order_apart_from_the_records(fresh()).await;
        dropped_chunks_and_deleted_builds_lose_their_logs(fresh()).await;
        summaries_follow_the_records(fresh()).await;
        records_and_lines_written_together_both_land(fresh()).await;
    }

    async fn records_and_lines_written_together_both_land(store: impl StateStore) {
        let (mut old, new) = (build(2), build(1));
        store.save(&old).await.unwrap();
        let stored_old = old.clone();
        old.version = 1;
        let lines = LogWrite {
            put: vec![chunk(new.id, 0, "a"), chunk(old.id, 0, "b")],
            drop: vec![],
        };
        // A stale record in the group is skipped; the rest, lines included, is written.
        store
            .save_all_with_logs(&[old, new.clone()], &lines)
            .await
            .unwrap();
        let mut loaded = store.load().await.unwrap();
        loaded.sort_by_key(|b| b.id);
        let mut want = vec![stored_old.clone(), new.clone()];
        want.sort_by_key(|b| b.id);
        assert_eq!(loaded, want);
        let lines_of = |chunks: Vec<LogChunk>| -> Vec<String> {
            chunks.into_iter().flat_map(|c| c.lines).collect()
        };
        assert_eq!(lines_of(store.load_logs(new.id).await.unwrap()), ["a"]);
        assert_eq!(
            lines_of(store.load_logs(stored_old.id).await.unwrap()),
            ["b"]
        );
        // Lines alone, and nothing at all, are fine too.
        let more = LogWrite {
            put: vec![chunk(new.id, 1, "c")],
            drop: vec![(new.id, 0)],
        };
        store.save_all_with_logs(&[], &more).await.unwrap();
        store
            .save_all_with_logs(&[], &LogWrite::default())
            .await
            .unwrap();
        assert_eq!(lines_of(store.load_logs(new.id).await.unwrap()), ["c"]);
    }

    async fn summaries_follow_the_records(store: impl StateStore) {
        let (mut a, b, c) = (build(1), build(1), build(1));
        for x in [&a, &b, &c] {
            store.save(x).await.unwrap();
        }
        a.version = 2;
        a.state = BuildState::Succeeded;
        a.finished_at_ms = Some(7);
        store.save(&a).await.unwrap();
        store.delete(c.id).await.unwrap();
        let mut got = store.summaries().await.unwrap();
        got.sort_by_key(|s| s.id);
        let mut want = vec![BuildSummary::from(&a), BuildSummary::from(&b)];
        want.sort_by_key(|s| s.id);
        assert_eq!(got, want);
        assert_eq!(
            got.iter().find(|s| s.id == a.id).unwrap().finished_at_ms,
            Some(7)
        );
        // Records by id, in the order asked, the missing ones left out.
        let loaded = store.load_builds(&[b.id, c.id, a.id]).await.unwrap();
        assert_eq!(loaded, vec![b, a]);
        assert!(store.load_builds(&[]).await.unwrap().is_empty());
    }

    fn chunk(build: BuildId, seq: u64, line: &str) -> LogChunk {
        LogChunk {
            build,
            seq,
            job: JobId::new(),
            platform: Platform::linux_amd64(),
            first: seq,
            lines: vec![line.to_owned()],
        }
    }

    async fn log_chunks_load_back_in_order_apart_from_the_records(store: impl StateStore) {
        let b = build(1);
        store.save(&b).await.unwrap();
        let other = BuildId::new();
        // Written out of order, in two batches; 12 sorts after 2 only if keys are padded.
        let write = LogWrite {
            put: vec![
                chunk(b.id, 12, "c"),
                chunk(b.id, 2, "b"),
                chunk(other, 0, "x"),
            ],
            drop: vec![],
        };
        store.write_logs(&write).await.unwrap();
        let write = LogWrite {
            put: vec![chunk(b.id, 0, "a")],
            drop: vec![],
        };
        store.write_logs(&write).await.unwrap();
        let loaded = store.load_logs(b.id).await.unwrap();
        let lines: Vec<&str> = loaded.iter().map(|c| c.lines[0].as_str()).collect();
        assert_eq!(lines, ["a", "b", "c"]);
        assert_eq!(loaded[2], chunk(b.id, 12, "c").with_job(loaded[2].job));
        // Logs are not records.
        assert_eq!(store.load().await.unwrap(), vec![b]);
        assert!(store.load_logs(BuildId::new()).await.unwrap().is_empty());
    }

    async fn dropped_chunks_and_deleted_builds_lose_their_logs(store: impl StateStore) {
        let (a, b) = (build(1), build(1));
        store.save(&a).await.unwrap();
        store.save(&b).await.unwrap();
        let many: Vec<LogChunk> = (0..150).map(|i| chunk(a.id, i, "line")).collect();
        store
            .write_logs(&LogWrite {
                put: many,
                drop: vec![],
            })
            .await
            .unwrap();
        store
            .write_logs(&LogWrite {
                put: vec![chunk(a.id, 150, "new"), chunk(b.id, 0, "kept")],
                drop: (0..149).map(|i| (a.id, i)).collect(),
            })
            .await
            .unwrap();
        let left: Vec<u64> = store
            .load_logs(a.id)
            .await
            .unwrap()
            .iter()
            .map(|c| c.seq)
            .collect();
        assert_eq!(left, [149, 150]);
        store.delete(a.id).await.unwrap();
        assert!(store.load_logs(a.id).await.unwrap().is_empty());
        assert_eq!(store.load_logs(b.id).await.unwrap().len(), 1);
    }

    impl LogChunk {
        fn with_job(mut self, job: JobId) -> Self {
            self.job = job;
            self
        }
    }

    async fn a_saved_build_loads_back_equal(store: impl StateStore) {
        assert!(store.load().await.unwrap().is_empty());
        let a = build(1);
        let b = build(1);
        store.save(&a).await.unwrap();
        store.save(&b).await.unwrap();
        let mut loaded = store.load().await.unwrap();
        loaded.sort_by_key(|x| x.id);
        let mut expected = vec![a, b];
        expected.sort_by_key(|x| x.id);
        assert_eq!(loaded, expected);
    }

    async fn a_newer_version_replaces_an_older_one(store: impl StateStore) {
        let mut b = build(1);
        store.save(&b).await.unwrap();
        b.version = 2;
        b.jobs[0].state = JobState::Running;
        b.jobs[0].attempt = 1;
        b.jobs[0].worker = Some("arm".into());
        store.save(&b).await.unwrap();
        assert_eq!(store.load().await.unwrap(), vec![b]);
    }

    async fn an_older_or_equal_version_is_refused(store: impl StateStore) {
        let mut b = build(3);
        store.save(&b).await.unwrap();
        let newest = b.clone();
        b.state = BuildState::Failed;
        for v in [3, 2] {
            b.version = v;
            match store.save(&b).await {
                Err(StoreError::Stale {
                    stored: 3,
                    attempted,
                    ..
                }) => assert_eq!(attempted, v),
                other => panic!("version {v} over 3 must be refused, got {other:?}"),
            }
        }
        assert_eq!(store.load().await.unwrap(), vec![newest]);
    }

    async fn a_group_write_takes_the_newer_records_and_skips_the_stale(store: impl StateStore) {
        let (mut a, mut b, c) = (build(3), build(1), build(1));
        store.save(&a).await.unwrap();
        store.save(&b).await.unwrap();
        let stored_a = a.clone();
        a.version = 2;
        a.state = BuildState::Failed;
        b.version = 2;
        b.state = BuildState::Running;
        store.save_all(&[a, b.clone(), c.clone()]).await.unwrap();
        let mut loaded = store.load().await.unwrap();
        loaded.sort_by_key(|x| x.id);
        let mut expected = vec![stored_a, b, c];
        expected.sort_by_key(|x| x.id);
        assert_eq!(loaded, expected);
        store.save_all(&[]).await.unwrap();
    }

    async fn deleted_builds_are_gone(store: impl StateStore) {
        let (a, b) = (build(1), build(1));
        store.save(&a).await.unwrap();
        store.save(&b).await.unwrap();
        store.delete(a.id).await.unwrap();
        assert_eq!(store.load().await.unwrap(), vec![b]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_records_version_is_read_without_the_rest() {
        for version in [0, 1, 7, u64::from(u32::MAX) + 1] {
            let b = suite::build(version);
            assert_eq!(stored_version("k", &encode(&b)).unwrap(), version);
            assert_eq!(decode("k", &encode(&b)).unwrap().version, version);
        }
        let err = stored_version("state/builds/x", b"{\"jobs\":[]}").unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt { key, .. } if key == "state/builds/x"),
            "{err:?}"
        );
    }
}
