//! The on-disk cache of build contexts, addressed by the sha256 of their bytes:
//! `<cache-dir>/contexts/sha256/<hex>`.
//!
//! Architecture invariant: a file under that name always holds bytes whose sha256 is its name. A
//! download is written to a temporary file beside it while its digest is computed, and renamed into
//! place only when the digest matches; a failed, corrupted or abandoned download leaves nothing.
//!
//! The cache is kept under a byte budget (`--context-cache-max-size`): after each download, and
//! when the worker starts, the least recently used contexts are removed until the rest fit
//! ([`to_evict`], pure). A context's last use is its file's modification time, set on every use, so
//! it survives a restart. A context a job holds ([`ContextCache::hold`]) is never removed, even
//! when the held ones alone exceed the budget.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

/// Names of downloads in progress start with this.
const PARTIAL_PREFIX: &str = ".download-";

/// A `sha256:<64 lowercase hex>` digest of a build context.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ContextDigest(String);

impl ContextDigest {
    /// Checks the `sha256:<hex>` form.
    pub fn parse(input: &str) -> Result<Self, CacheError> {
        let hex = input.strip_prefix("sha256:").unwrap_or_default();
        if hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(Self(input.to_owned()))
        } else {
            Err(CacheError::InvalidDigest(input.to_owned()))
        }
    }

    /// The 64 hex characters after `sha256:`.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }
}

impl fmt::Display for ContextDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What can go wrong while fetching a context into the cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The digest is not of the `sha256:<64 hex>` form.
    #[error("bad context digest `{0}`: expected sha256:<64 lowercase hex characters>")]
    InvalidDigest(String),
    /// The downloaded bytes do not hash to the digest asked for; nothing was kept.
    #[error(
        "context download for {expected} was corrupted: its bytes hash to {actual} ({size} bytes); nothing was kept, fetch it again"
    )]
    DigestMismatch {
        /// The digest asked for.
        expected: ContextDigest,
        /// The digest of what arrived.
        actual: String,
        /// How many bytes arrived.
        size: u64,
    },
    /// The source of the bytes failed (e.g. the coordinator's stream broke).
    #[error("context download for {digest} failed: {message}")]
    Download {
        /// The digest being fetched.
        digest: ContextDigest,
        /// What the source said.
        message: String,
        /// Whether the source says the context does not exist at all.
        not_found: bool,
    },
    /// The cache folder could not be written.
    #[error("cannot write the context cache at {path}: {source}; check the --cache-dir folder")]
    Io {
        /// The file or folder concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl CacheError {
    /// Whether fetching again may succeed: the source broke off or sent bytes that do not match
    /// (e.g. the coordinator restarted mid-download). A context the source does not hold, a bad
    /// digest or an unwritable cache stay as they are.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Download {
                not_found: false,
                ..
            } | Self::DigestMismatch { .. }
        )
    }
}

/// A failure reported by a download source, mapped into [`CacheError::Download`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceError {
    /// What went wrong.
    pub message: String,
    /// The source does not hold the context at all (retrying elsewhere will not help).
    pub not_found: bool,
}

/// Default of `--context-cache-max-size`: 10 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 10 << 30;

/// A cached context as eviction sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Its file name (the digest's hex).
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// When a job last used it.
    pub last_used: SystemTime,
}

/// The entries to remove so that the rest fit in `budget` bytes: least recently used first (ties
/// by name), never one in `in_use`. When the held entries alone exceed the budget, every other
/// one goes and the cache stays over it until they are released.
pub fn to_evict(entries: &[Entry], in_use: &HashSet<String>, budget: u64) -> Vec<String> {
    let mut total: u64 = entries.iter().map(|e| e.size).sum();
    let mut oldest_first: Vec<&Entry> = entries
        .iter()
        .filter(|e| !in_use.contains(&e.name))
        .collect();
    oldest_first.sort_by(|a, b| (a.last_used, &a.name).cmp(&(b.last_used, &b.name)));
    let mut evict = Vec::new();
    for e in oldest_first {
        if total <= budget {
            break;
        }
        total -= e.size;
        evict.push(e.name.clone());
    }
    evict
}

/// The context cache rooted at a worker's cache folder.
#[derive(Clone, Debug)]
pub struct ContextCache {
    dir: PathBuf,
    max_bytes: u64,
    // One lock per digest, so that concurrent jobs of one build download their context once.
    in_flight: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    // How many jobs hold each context (by hex): those are never evicted.
    held: Arc<Mutex<HashMap<String, usize>>>,
}

/// A job's hold on a context: while it lives, the context is not evicted.
#[derive(Debug)]
pub struct Hold {
    hex: String,
    held: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut held = self.held.lock().expect("context holds lock");
        if let Some(n) = held.get_mut(&self.hex) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.hex);
            }
        }
    }
}

impl ContextCache {
    /// A cache under `<cache_dir>/contexts/sha256/` of at most `max_bytes` (beyond what jobs
    /// hold); the folder is made on first use.
    pub fn new(cache_dir: &Path, max_bytes: u64) -> Self {
        Self {
            dir: cache_dir.join("contexts").join("sha256"),
            max_bytes,
            in_flight: Arc::default(),
            held: Arc::default(),
        }
    }

    /// Holds the context of `digest` (cached or not yet) against eviction until the hold drops.
    pub fn hold(&self, digest: &ContextDigest) -> Hold {
        let hex = digest.hex().to_owned();
        *self
            .held
            .lock()
            .expect("context holds lock")
            .entry(hex.clone())
            .or_default() += 1;
        Hold {
            hex,
            held: self.held.clone(),
        }
    }

    /// Removes the least recently used contexts until the cache fits its budget (held ones
    /// stay); returns the names removed. Files it cannot read or remove are skipped.
    pub fn evict(&self) -> Vec<String> {
        let Ok(files) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let entries: Vec<Entry> = files
            .flatten()
            .filter_map(|f| {
                let name = f.file_name().into_string().ok()?;
                let meta = f.metadata().ok()?;
                (meta.is_file() && !name.starts_with(PARTIAL_PREFIX)).then(|| Entry {
                    name,
                    size: meta.len(),
                    last_used: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                })
            })
            .collect();
        let in_use: HashSet<String> = self
            .held
            .lock()
            .expect("context holds lock")
            .keys()
            .cloned()
            .collect();
        let mut removed = to_evict(&entries, &in_use, self.max_bytes);
        removed.retain(|name| {
            let gone = std::fs::remove_file(self.dir.join(name)).is_ok();
            if gone {
                tracing::info!(context = %name, budget = self.max_bytes, "evicted a least recently used build context");
            }
            gone
        });
        removed
    }

    /// Removes what downloads interrupted by a crash left behind. The cache folder must belong to
    /// this worker alone: another process's download in progress would be removed too.
    pub fn remove_partial_downloads(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(PARTIAL_PREFIX)
            {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// Where the context of `digest` lives once cached.
    pub fn path_for(&self, digest: &ContextDigest) -> PathBuf {
        self.dir.join(digest.hex())
    }

    /// The cached path of `digest`, downloading it with `open` first when it is absent. `open`
    /// returns the stream of the context's bytes. A download that fails is asked about with
    /// `retry`: `Some(wait)` opens it again after `wait`, `None` returns the error. Other jobs
    /// needing the same context wait for this one's download, retries included.
    pub async fn get_or_fetch<F, Fut, S>(
        &self,
        digest: &ContextDigest,
        mut open: F,
        mut retry: impl FnMut(&CacheError) -> Option<std::time::Duration>,
    ) -> Result<PathBuf, CacheError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<S, SourceError>>,
        S: Stream<Item = Result<Bytes, SourceError>>,
    {
        let lock = {
            let mut map = self.in_flight.lock().expect("context cache lock poisoned");
            map.entry(digest.hex().to_owned()).or_default().clone()
        };
        let _guard = lock.lock().await;
        let path = self.path_for(digest);
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            tracing::debug!(%digest, "build context found in the cache");
            // Its last use, for eviction.
            if let Ok(file) = std::fs::File::options().append(true).open(&path) {
                let _ = file.set_modified(SystemTime::now());
            }
            return Ok(path);
        }
        let download = |e: SourceError| CacheError::Download {
            digest: digest.clone(),
            message: e.message,
            not_found: e.not_found,
        };
        let result = loop {
            let attempt = match open().await.map_err(download) {
                Ok(stream) => {
                    self.store(digest, stream.map(|r| r.map_err(download)))
                        .await
                }
                Err(e) => Err(e),
            };
            match attempt {
                Err(e) => match retry(&e) {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => break Err(e),
                },
                ok => break ok,
            }
        };
        drop(_guard);
        self.in_flight
            .lock()
            .expect("context cache lock poisoned")
            .remove(digest.hex());
        if result.is_ok() {
            let cache = self.clone();
            let _ = tokio::task::spawn_blocking(move || cache.evict()).await;
        }
        result
    }

    /// Writes `chunks` into the cache under `digest`, verifying the digest while writing. On any
    /// error, including a digest mismatch, no file is left behind.
    pub async fn store(
        &self,
        digest: &ContextDigest,
        chunks: impl Stream<Item = Result<Bytes, CacheError>>,
    ) -> Result<PathBuf, CacheError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| CacheError::Io { path, source }
        };
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(io(&self.dir))?;
        // Dropped (and so deleted) on every early return, and if this future is dropped.
        let temp = tempfile::Builder::new()
            .prefix(PARTIAL_PREFIX)
            .tempfile_in(&self.dir)
            .map_err(io(&self.dir))?;
        let mut file = tokio::fs::File::from_std(temp.reopen().map_err(io(temp.path()))?);
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut chunks = std::pin::pin!(chunks);
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            hasher.update(&chunk);
            size += chunk.len() as u64;
            file.write_all(&chunk).await.map_err(io(temp.path()))?;
        }
        file.flush().await.map_err(io(temp.path()))?;
        file.sync_all().await.map_err(io(temp.path()))?;
        drop(file);
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if actual != digest.0 {
            return Err(CacheError::DigestMismatch {
                expected: digest.clone(),
                actual,
                size,
            });
        }
        let path = self.path_for(digest);
        temp.persist(&path).map_err(|e| CacheError::Io {
            path: path.clone(),
            source: e.error,
        })?;
        tracing::debug!(%digest, size, "build context cached");
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest_of(bytes: &[u8]) -> ContextDigest {
        ContextDigest::parse(&format!("sha256:{}", hex::encode(Sha256::digest(bytes)))).unwrap()
    }

    fn chunks(parts: &[&'static [u8]]) -> impl Stream<Item = Result<Bytes, SourceError>> {
        futures::stream::iter(
            parts
                .iter()
                .map(|p| Ok(Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        )
    }

    fn files_under(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    out.extend(files_under(&p));
                } else {
                    out.push(p);
                }
            }
        }
        out
    }

    #[tokio::test]
    async fn a_verified_download_is_stored_under_its_digest_and_reused() {
        let root = tempfile::tempdir().unwrap();
        let cache = ContextCache::new(root.path(), DEFAULT_MAX_BYTES);
        let digest = digest_of(b"hello context");
        let path = cache
            .get_or_fetch(
                &digest,
                || async { Ok(chunks(&[b"hello ", b"context"])) },
                never,
            )
            .await
            .unwrap();
        assert_eq!(path, root.path().join("contexts/sha256").join(digest.hex()));
        assert_eq!(std::fs::read(&path).unwrap(), b"hello context");

        // The second fetch must not call the source at all.
        let again = cache
            .get_or_fetch(
                &digest,
                || async {
                    Err::<futures::stream::Empty<_>, _>(SourceError {
                        message: "the source must not be asked twice".into(),
                        not_found: false,
                    })
                },
                never,
            )
            .await
            .unwrap();
        assert_eq!(again, path);
        assert_eq!(files_under(root.path()), vec![path]);
    }

    #[tokio::test]
    async fn a_corrupted_download_is_rejected_and_leaves_no_file() {
        let root = tempfile::tempdir().unwrap();
        let cache = ContextCache::new(root.path(), DEFAULT_MAX_BYTES);
        let digest = digest_of(b"the real bytes");
        let err = cache
            .get_or_fetch(
                &digest,
                || async { Ok(chunks(&[b"the ", b"fake bytes"])) },
                never,
            )
            .await
            .unwrap_err();
        match &err {
            CacheError::DigestMismatch {
                expected,
                actual,
                size,
            } => {
                assert_eq!(expected, &digest);
                assert_eq!(actual, &digest_of(b"the fake bytes").to_string());
                assert_eq!(*size, 14);
            }
            other => panic!("expected a digest mismatch, got {other:?}"),
        }
        assert!(err.to_string().contains(&digest.to_string()), "{err}");
        assert_eq!(files_under(root.path()), Vec::<PathBuf>::new());
    }

    type Chunks = futures::stream::Iter<std::vec::IntoIter<Result<Bytes, SourceError>>>;

    /// A source whose first `breaks` downloads break off after a few bytes.
    fn breaking_source(
        bytes: &'static [u8],
        breaks: usize,
    ) -> impl FnMut() -> futures::future::Ready<Result<Chunks, SourceError>> {
        let mut opened = 0;
        move || {
            opened += 1;
            let parts = if opened <= breaks {
                vec![
                    Ok(Bytes::from_static(&bytes[..2])),
                    Err(SourceError {
                        message: format!("coordinator went away ({opened})"),
                        not_found: false,
                    }),
                ]
            } else {
                vec![Ok(Bytes::from_static(bytes))]
            };
            futures::future::ready(Ok(futures::stream::iter(parts)))
        }
    }

    fn never(_: &CacheError) -> Option<std::time::Duration> {
        None
    }

    #[tokio::test]
    async fn a_download_that_breaks_midway_leaves_no_file() {
        let root = tempfile::tempdir().unwrap();
        let cache = ContextCache::new(root.path(), DEFAULT_MAX_BYTES);
        let digest = digest_of(b"whatever");
        let err = cache
            .get_or_fetch(&digest, breaking_source(b"whatever", 1), never)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, CacheError::Download { message, not_found: false, .. } if message == "coordinator went away (1)"),
            "{err:?}"
        );
        assert!(err.is_transient());
        assert_eq!(files_under(root.path()), Vec::<PathBuf>::new());
    }

    #[tokio::test(start_paused = true)]
    async fn a_broken_download_is_opened_again_while_retry_says_so() {
        let root = tempfile::tempdir().unwrap();
        let cache = ContextCache::new(root.path(), DEFAULT_MAX_BYTES);
        let digest = digest_of(b"whatever");
        let mut asked = Vec::new();
        let path = cache
            .get_or_fetch(&digest, breaking_source(b"whatever", 2), |e| {
                asked.push(e.to_string());
                Some(std::time::Duration::from_secs(1))
            })
            .await
            .unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"whatever");
        assert_eq!(asked.len(), 2, "{asked:?}");
        assert!(asked[1].contains("coordinator went away (2)"), "{asked:?}");
        assert_eq!(files_under(root.path()), vec![path]);

        // Retries run out: the last error is returned and nothing is kept.
        let other = digest_of(b"another");
        let mut tries = 0;
        let err = cache
            .get_or_fetch(&other, breaking_source(b"another", 5), |_| {
                tries += 1;
                (tries < 3).then_some(std::time::Duration::from_secs(1))
            })
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("coordinator went away (3)"),
            "{err}"
        );
        assert!(!cache.path_for(&other).exists());
    }

    #[test]
    fn only_a_broken_or_garbled_download_is_worth_trying_again() {
        let digest = digest_of(b"x");
        let download = |not_found| CacheError::Download {
            digest: digest.clone(),
            message: "m".into(),
            not_found,
        };
        assert!(download(false).is_transient());
        assert!(!download(true).is_transient());
        assert!(
            CacheError::DigestMismatch {
                expected: digest.clone(),
                actual: "sha256:00".into(),
                size: 1
            }
            .is_transient()
        );
        assert!(!CacheError::InvalidDigest("x".into()).is_transient());
        assert!(
            !CacheError::Io {
                path: "/x".into(),
                source: std::io::Error::other("full")
            }
            .is_transient()
        );
    }

    #[test]
    fn the_least_recently_used_go_first_and_held_ones_never() {
        let t = |secs: u64| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        let e = |name: &str, size: u64, used: u64| Entry {
            name: name.into(),
            size,
            last_used: t(used),
        };
        let entries = [
            e("a", 40, 10),
            e("b", 30, 30),
            e("c", 20, 20),
            e("d", 10, 40),
        ];
        #[track_caller]
        fn check(entries: &[Entry], held: &[&str], budget: u64, want: &[&str]) {
            let held = held.iter().map(|h| h.to_string()).collect();
            assert_eq!(to_evict(entries, &held, budget), want, "budget {budget}");
        }
        // 100 bytes in all.
        check(&entries, &[], 100, &[]);
        check(&entries, &[], 99, &["a"]);
        check(&entries, &[], 60, &["a"]);
        check(&entries, &[], 59, &["a", "c"]);
        check(&entries, &[], 0, &["a", "c", "b", "d"]);
        // The oldest is held: the next oldest go instead.
        check(&entries, &["a"], 60, &["c", "b"]);
        // Held ones alone exceed the budget: all others go, the held stay.
        check(&entries, &["a", "b"], 10, &["c", "d"]);
        // Equal times: by name, so the decision is the same on every run.
        let ties = [e("y", 10, 5), e("x", 10, 5)];
        check(&ties, &[], 10, &["x"]);
        check(&[], &[], 0, &[]);
    }

    #[tokio::test]
    async fn a_real_cache_keeps_its_budget_by_last_use_and_spares_held_contexts() {
        let root = tempfile::tempdir().unwrap();
        // Room for two 1000-byte contexts.
        let cache = ContextCache::new(root.path(), 2500);
        let body = |c: u8| vec![c; 1000];
        let fetch = |cache: &ContextCache, c: u8| {
            let cache = cache.clone();
            async move {
                let bytes = Bytes::from(body(c));
                let digest = digest_of(&bytes);
                cache
                    .get_or_fetch(
                        &digest,
                        || {
                            let bytes = bytes.clone();
                            async move { Ok(futures::stream::iter(vec![Ok(bytes)])) }
                        },
                        never,
                    )
                    .await
                    .unwrap();
                digest
            }
        };
        let a = fetch(&cache, b'a').await;
        let b = fetch(&cache, b'b').await;
        // a is used again later than b: b is now the least recently used.
        let old = SystemTime::now() - std::time::Duration::from_secs(60);
        std::fs::File::options()
            .append(true)
            .open(cache.path_for(&b))
            .unwrap()
            .set_modified(old)
            .unwrap();
        std::fs::File::options()
            .append(true)
            .open(cache.path_for(&a))
            .unwrap()
            .set_modified(old - std::time::Duration::from_secs(60))
            .unwrap();
        fetch(&cache, b'a').await; // a hit: a's last use is now
        let c = fetch(&cache, b'c').await;
        let present = |d: &ContextDigest| cache.path_for(d).exists();
        assert!(present(&a) && !present(&b) && present(&c), "b went");

        // A held context stays even when it is the oldest and the budget is exceeded.
        let hold = cache.hold(&a);
        std::fs::File::options()
            .append(true)
            .open(cache.path_for(&a))
            .unwrap()
            .set_modified(old)
            .unwrap();
        let d = fetch(&cache, b'd').await;
        assert!(
            present(&a) && !present(&c) && present(&d),
            "c went, not held a"
        );
        drop(hold);
        assert_eq!(cache.evict(), Vec::<String>::new(), "within budget again");
        let e = fetch(&cache, b'e').await;
        assert!(
            !present(&a) && present(&d) && present(&e),
            "a went once released"
        );
    }

    #[test]
    fn digests_must_be_sha256_hex() {
        assert!(ContextDigest::parse(&format!("sha256:{}", "a".repeat(64))).is_ok());
        for bad in [
            "",
            "sha256:abc",
            &format!("sha512:{}", "a".repeat(64)),
            &format!("sha256:{}", "A".repeat(64)),
            &format!("sha256:{}", "g".repeat(64)),
        ] {
            let err = ContextDigest::parse(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("`{bad}`")), "{err}");
        }
    }
}
