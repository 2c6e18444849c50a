//! Build contexts on disk, addressed by the sha256 of their bytes, optionally replicated to an OCI
//! registry so that every coordinator of an HA set can read them.
//!
//! Layout: `<state-dir>/contexts/sha256/<hex>`. An upload is written to a temporary file in the same
//! folder, its digest computed while writing, and renamed into place only when the digest matches
//! the one the client announced. A context file therefore always holds exactly the bytes of its name.
//!
//! With a context repository (`--context-repository REGISTRY/REPO`, for coordinators on etcd), each
//! uploaded context is also pushed there as a blob whose digest is the context's digest, referenced
//! by a small OCI artifact manifest tagged `sha256-<hex>` so that registry garbage collection keeps
//! it. A coordinator missing a context locally (a new leader) fetches it from there, verifying it.
//!
//! Contexts belong to teams. The bytes are stored once, but a team may use a context (ask whether
//! it is there, submit a build of it) only after a caller of that team uploaded bytes hashing to its
//! digest; to every other team it does not exist. Possession is a marker file
//! `<state-dir>/contexts/teams/team-<name>/<hex>` holding the context's size, so it survives restarts;
//! with a context repository it is also a second tag of the context's artifact manifest,
//! `sha256-<hex>.<16 hex of sha256(team)>`, so that a new leader knows it too.
//!
//! Unreferenced contexts are removed from the local store once older than the retention
//! (`--context-ttl`), and so are the teams' markers; a context is "used" again whenever a team asks
//! for it, which renews both its file and that team's marker.

use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

/// Context store failures.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// Not of the form `sha256:<64 hex>`.
    #[error("invalid context digest {0}: expected sha256:<64 lowercase hex digits>")]
    BadDigest(String),
    /// The bytes received hash to something else.
    #[error(
        "context upload does not match its digest: announced {announced}, received bytes hash to {actual}; did files change while packing? run the build again"
    )]
    Mismatch {
        /// What the client announced.
        announced: String,
        /// What the bytes hash to.
        actual: String,
    },
    /// Not stored here.
    #[error(
        "unknown context {0}: upload it with the Contexts service first (the manifold CLI does this)"
    )]
    Unknown(String),
    /// The registry replica failed.
    #[error("context replica: {0}; check --context-repository and that the registry is up")]
    Remote(String),
    /// Disk trouble.
    #[error("context store at {path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// What.
        source: std::io::Error,
    },
}

/// The on-disk store, with its optional registry replica.
#[derive(Clone, Debug)]
pub struct ContextStore {
    dir: PathBuf,
    /// `<state-dir>/contexts/teams`: one folder of possession markers per team.
    teams: PathBuf,
    remote: Option<Remote>,
}

/// Where contexts are replicated.
#[derive(Clone, Debug)]
pub struct Remote {
    /// `registry/repository` holding the contexts.
    pub repository: oci_client::Reference,
    /// Access settings.
    pub registry: manifold_registry::RegistryConfig,
}

impl Remote {
    /// A session (the registry crate's one client and retry policy) for the replica's registry,
    /// with the Docker config's credentials for it.
    async fn session(&self) -> Result<manifold_registry::Session, ContextError> {
        manifold_registry::Session::open(&self.registry, &[self.repository.registry()])
            .await
            .map_err(|e| ContextError::Remote(e.to_string()))
    }

    /// Authenticates for `operation` (a token exchange where the registry uses tokens). Only a
    /// transient failure is one: a registry that refuses the token request may still serve
    /// anonymous reads, which the next request finds out.
    async fn authenticate(
        &self,
        session: &manifold_registry::Session,
        reference: &oci_client::Reference,
        operation: oci_client::RegistryOperation,
        action: &str,
        digest: &str,
    ) -> Result<(), ContextError> {
        match session.authenticate(reference, operation, action).await {
            Err(e) if e.is_transient() => Err(self.error(action, digest, &e)),
            _ => Ok(()),
        }
    }

    fn error(
        &self,
        action: &str,
        digest: &str,
        e: &manifold_registry::RegistryError,
    ) -> ContextError {
        ContextError::Remote(format!(
            "{action} context {digest} in {}: {e}",
            self.repository
        ))
    }
}

/// Artifact type of the manifests that keep replicated contexts alive in the registry.
pub const CONTEXT_ARTIFACT_TYPE: &str = "application/vnd.manifold.context.v1";
/// Media type of a replicated context blob.
pub const CONTEXT_MEDIA_TYPE: &str = "application/vnd.manifold.context.v1.tar";
const EMPTY_JSON_DIGEST: &str =
    "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

/// Checks the `sha256:<hex>` form and returns the hex part.
pub fn parse_digest(digest: &str) -> Result<&str, ContextError> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| {
            h.len() == 64
                && h.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        })
        .ok_or_else(|| ContextError::BadDigest(crate::limits::quote(digest)))
}

impl ContextStore {
    /// Opens (creating) the store under `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Self, ContextError> {
        let dir = state_dir.join("contexts").join("sha256");
        let teams = state_dir.join("contexts").join("teams");
        for d in [&dir, &teams] {
            std::fs::create_dir_all(d).map_err(|source| ContextError::Io {
                path: d.clone(),
                source,
            })?;
        }
        Ok(Self {
            dir,
            teams,
            remote: None,
        })
    }

    /// Replicates contexts to `remote` from now on.
    pub fn with_remote(mut self, remote: Remote) -> Self {
        self.remote = Some(remote);
        self
    }

    /// Whether `team` holds the context: one of its callers uploaded it, here or (with a replica)
    /// to another coordinator of the set. A hit renews the retention of the context and the marker.
    pub async fn held_by(&self, team: &str, digest: &str) -> Result<bool, ContextError> {
        let marker = self.marker(team, digest)?;
        if marker.is_file() && self.has(digest)? {
            touch(&marker);
            touch(&self.path(digest)?);
            return Ok(true);
        }
        let Some(remote) = &self.remote else {
            return Ok(false);
        };
        let session = remote.session().await?;
        let tagged = oci_client::Reference::with_tag(
            remote.repository.registry().to_owned(),
            remote.repository.repository().to_owned(),
            team_tag(digest, team),
        );
        let pull = oci_client::RegistryOperation::Pull;
        remote
            .authenticate(&session, &tagged, pull, "checking", digest)
            .await?;
        let checking = |e: manifold_registry::RegistryError| remote.error("checking", digest, &e);
        if !session
            .manifest_exists(&tagged, "checking")
            .await
            .map_err(checking)?
            || !session
                .blob_exists(&remote.repository, digest)
                .await
                .map_err(checking)?
        {
            return Ok(false);
        }
        let size = self.size(digest).unwrap_or(0);
        self.write_marker(team, digest, size)?;
        Ok(true)
    }

    /// Records that `team` holds the context, after one of its callers uploaded bytes matching
    /// its digest.
    pub fn grant(&self, team: &str, digest: &str) -> Result<(), ContextError> {
        let size = self.size(digest)?;
        self.write_marker(team, digest, size)
    }

    /// The context bytes `team` holds, `except` one context (the one being uploaded again).
    pub fn team_bytes(&self, team: &str, except: &str) -> u64 {
        let Ok(marker) = self.marker(team, except) else {
            return 0;
        };
        let folder = marker.parent().expect("a marker is in a team folder");
        std::fs::read_dir(folder)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path() != marker)
            .filter_map(|e| {
                std::fs::read_to_string(e.path())
                    .ok()?
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    }

    fn write_marker(&self, team: &str, digest: &str, size: u64) -> Result<(), ContextError> {
        let marker = self.marker(team, digest)?;
        let folder = marker.parent().expect("a marker is in a team folder");
        std::fs::create_dir_all(folder)
            .and_then(|()| std::fs::write(&marker, size.to_string()))
            .map_err(|source| ContextError::Io {
                path: marker.clone(),
                source,
            })
    }

    /// The possession marker of `team` for a context (whether or not it exists). The folder is
    /// `team-<name>`, so that no team name (`.`, `..`) can name another folder.
    fn marker(&self, team: &str, digest: &str) -> Result<PathBuf, ContextError> {
        Ok(self
            .teams
            .join(format!("team-{team}"))
            .join(parse_digest(digest)?))
    }

    /// The local file of a context, fetched from the registry replica first if needed.
    pub async fn ensure_local(&self, digest: &str) -> Result<PathBuf, ContextError> {
        let path = self.path(digest)?;
        if path.is_file() {
            return Ok(path);
        }
        let Some(remote) = self.remote.clone() else {
            return Err(ContextError::Unknown(digest.to_owned()));
        };
        let session = remote.session().await?;
        let tagged = oci_client::Reference::with_tag(
            remote.repository.registry().to_owned(),
            remote.repository.repository().to_owned(),
            tag_of(digest),
        );
        let pull = oci_client::RegistryOperation::Pull;
        remote
            .authenticate(&session, &tagged, pull, "fetching", digest)
            .await?;
        let mut upload = self.begin(digest).await?;
        let mut stream = session
            .pull_blob_stream(&remote.repository, digest, "fetching")
            .await
            .map_err(|e| remote.error("fetching", digest, &e))?
            .ok_or_else(|| ContextError::Unknown(digest.to_owned()))?;
        use futures::StreamExt as _;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| ContextError::Io {
                path: path.clone(),
                source: e,
            })?;
            upload.write(&chunk).await?;
        }
        upload.finish().await?;
        tracing::info!(%digest, "context fetched from the registry replica");
        Ok(path)
    }

    /// Pushes a stored context to the registry replica, and tags it as held by `team` there (a
    /// no-op without a replica).
    pub async fn replicate(&self, team: &str, digest: &str) -> Result<(), ContextError> {
        let Some(remote) = &self.remote else {
            return Ok(());
        };
        let path = self.path(digest)?;
        let size = self.size(digest)?;
        let session = remote.session().await?;
        let tagged = oci_client::Reference::with_tag(
            remote.repository.registry().to_owned(),
            remote.repository.repository().to_owned(),
            tag_of(digest),
        );
        let fail = |e: manifold_registry::RegistryError| remote.error("replicating", digest, &e);
        session
            .authenticate(&tagged, oci_client::RegistryOperation::Push, "replicating")
            .await
            .map_err(fail)?;
        if !session
            .blob_exists(&remote.repository, digest)
            .await
            .map_err(fail)?
        {
            session
                .push_blob_file(&remote.repository, &path, digest, size, "uploading")
                .await
                .map_err(fail)?;
        }
        session
            .push_blob(
                &remote.repository,
                bytes::Bytes::from_static(b"{}"),
                EMPTY_JSON_DIGEST,
                "uploading the empty config",
            )
            .await
            .map_err(fail)?;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": CONTEXT_ARTIFACT_TYPE,
            "config": {
                "mediaType": "application/vnd.oci.empty.v1+json",
                "digest": EMPTY_JSON_DIGEST,
                "size": 2
            },
            "layers": [{
                "mediaType": CONTEXT_MEDIA_TYPE,
                "digest": digest,
                "size": size
            }]
        });
        let manifest = serde_json::to_vec(&manifest).expect("json");
        let team_tagged = oci_client::Reference::with_tag(
            remote.repository.registry().to_owned(),
            remote.repository.repository().to_owned(),
            team_tag(digest, team),
        );
        for reference in [&tagged, &team_tagged] {
            session
                .push_manifest(
                    reference,
                    &manifest,
                    "application/vnd.oci.image.manifest.v1+json",
                    "tagging",
                )
                .await
                .map_err(fail)?;
        }
        tracing::info!(%digest, %team, repository = %remote.repository, "context replicated");
        Ok(())
    }

    /// Removes local contexts older than `ttl` that `keep` does not name, and the teams' markers
    /// that are as old and unreferenced or whose context is gone; returns how many contexts went.
    pub fn collect_garbage(
        &self,
        ttl: std::time::Duration,
        keep: &std::collections::HashSet<String>,
    ) -> usize {
        let removed = remove_old(&self.dir, ttl, keep, |_| false);
        for team in std::fs::read_dir(&self.teams)
            .into_iter()
            .flatten()
            .flatten()
        {
            remove_old(&team.path(), ttl, keep, |digest| {
                !self.has(digest).unwrap_or(false)
            });
        }
        removed
    }

    /// Where the context with this digest lives (whether or not it exists).
    pub fn path(&self, digest: &str) -> Result<PathBuf, ContextError> {
        Ok(self.dir.join(parse_digest(digest)?))
    }

    /// Bytes of every file in the store (contexts and partial uploads), for the metrics.
    pub fn bytes(&self) -> u64 {
        std::fs::read_dir(&self.dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| e.metadata().ok())
                    .filter(|m| m.is_file())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Whether the context is stored.
    pub fn has(&self, digest: &str) -> Result<bool, ContextError> {
        Ok(self.path(digest)?.is_file())
    }

    /// Size of a stored context.
    pub fn size(&self, digest: &str) -> Result<u64, ContextError> {
        let path = self.path(digest)?;
        std::fs::metadata(&path)
            .map(|m| m.len())
            .map_err(|_| ContextError::Unknown(digest.to_owned()))
    }

    /// Starts an upload that must hash to `digest`.
    pub async fn begin(&self, digest: &str) -> Result<Upload, ContextError> {
        let target = self.path(digest)?;
        let tmp = tempfile::Builder::new()
            .prefix(".upload-")
            .tempfile_in(&self.dir)
            .map_err(|source| self.io(source))?;
        let (file, tmp_path) = tmp.into_parts();
        Ok(Upload {
            file: tokio::fs::File::from_std(file),
            tmp: Some(tmp_path),
            target,
            announced: digest.to_owned(),
            hasher: Sha256::new(),
            size: 0,
        })
    }

    fn io(&self, source: std::io::Error) -> ContextError {
        ContextError::Io {
            path: self.dir.clone(),
            source,
        }
    }
}

/// The tag that keeps a replicated context alive: `sha256-<hex>`.
fn tag_of(digest: &str) -> String {
    digest.replace(':', "-")
}

/// The tag saying that `team` holds a replicated context: `sha256-<hex>.<16 hex>`, the hex being
/// the start of the team name's sha256 (team names may be longer than a tag allows).
fn team_tag(digest: &str, team: &str) -> String {
    let team = hex::encode(Sha256::digest(team.as_bytes()));
    format!("{}.{}", tag_of(digest), &team[..16])
}

/// Removes the files of `dir` (named by digest hex) older than `ttl` that `keep` does not name, and
/// those for which `gone` holds whatever their age; returns how many went.
fn remove_old(
    dir: &Path,
    ttl: std::time::Duration,
    keep: &std::collections::HashSet<String>,
    gone: impl Fn(&str) -> bool,
) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let digest = format!("sha256:{name}");
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= ttl);
        // Partial uploads (`.upload-*`) are old only if abandoned; they go too.
        let remove = (old && !keep.contains(&digest)) || (!name.starts_with('.') && gone(&digest));
        if remove && std::fs::remove_file(entry.path()).is_ok() {
            tracing::info!(context = %digest, folder = %dir.display(), "removed an unreferenced context");
            removed += 1;
        }
    }
    removed
}

fn touch(path: &Path) {
    if let Ok(f) = std::fs::File::options().append(true).open(path) {
        let _ = f.set_modified(std::time::SystemTime::now());
    }
}

/// An upload in progress; dropped without [`Upload::finish`], it leaves nothing behind.
pub struct Upload {
    file: tokio::fs::File,
    tmp: Option<tempfile::TempPath>,
    target: PathBuf,
    announced: String,
    hasher: Sha256,
    size: u64,
}

impl Upload {
    /// Appends bytes.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), ContextError> {
        self.hasher.update(data);
        self.size += data.len() as u64;
        self.file
            .write_all(data)
            .await
            .map_err(|source| ContextError::Io {
                path: self.target.clone(),
                source,
            })
    }

    /// Verifies the digest and moves the file into place; returns the size.
    pub async fn finish(mut self) -> Result<u64, ContextError> {
        let io = |source| ContextError::Io {
            path: self.target.clone(),
            source,
        };
        self.file.flush().await.map_err(io)?;
        self.file.sync_all().await.map_err(io)?;
        let actual = format!("sha256:{}", hex::encode(self.hasher.finalize_reset()));
        if actual != self.announced {
            return Err(ContextError::Mismatch {
                announced: self.announced.clone(),
                actual,
            });
        }
        let tmp = self.tmp.take().expect("finish runs once");
        tmp.persist(&self.target).map_err(|e| ContextError::Io {
            path: self.target.clone(),
            source: e.error,
        })?;
        Ok(self.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest_of(data: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(data)))
    }

    #[tokio::test]
    async fn an_upload_is_kept_only_when_its_bytes_match_its_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContextStore::open(dir.path()).unwrap();
        let data = b"a tar would be here";
        let good = digest_of(data);
        assert!(!store.has(&good).unwrap());

        let mut up = store.begin(&good).await.unwrap();
        up.write(&data[..5]).await.unwrap();
        up.write(&data[5..]).await.unwrap();
        assert_eq!(up.finish().await.unwrap(), data.len() as u64);
        assert!(store.has(&good).unwrap());
        assert_eq!(std::fs::read(store.path(&good).unwrap()).unwrap(), data);

        let wrong = digest_of(b"something else");
        let mut up = store.begin(&wrong).await.unwrap();
        up.write(data).await.unwrap();
        let err = up.finish().await.unwrap_err();
        assert!(matches!(err, ContextError::Mismatch { .. }), "{err}");
        assert!(!store.has(&wrong).unwrap());
        // Nothing but the good context is left in the folder.
        let left: Vec<_> = std::fs::read_dir(dir.path().join("contexts/sha256"))
            .unwrap()
            .collect();
        assert_eq!(left.len(), 1);
    }

    #[tokio::test]
    async fn a_context_is_held_only_by_the_teams_that_uploaded_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContextStore::open(dir.path()).unwrap();
        let data = b"alice's sources";
        let digest = digest_of(data);
        let mut up = store.begin(&digest).await.unwrap();
        up.write(data).await.unwrap();
        up.finish().await.unwrap();
        store.grant("mobile", &digest).unwrap();
        assert!(store.held_by("mobile", &digest).await.unwrap());
        assert!(!store.held_by("platform", &digest).await.unwrap());
        // A team name cannot reach another team's folder.
        assert!(!store.held_by("..", &digest).await.unwrap());
        assert!(!store.held_by(".", &digest).await.unwrap());

        // Possession is on disk: a store opened again (a restart) knows it.
        let reopened = ContextStore::open(dir.path()).unwrap();
        assert!(reopened.held_by("mobile", &digest).await.unwrap());
        assert!(!reopened.held_by("platform", &digest).await.unwrap());

        // Once the bytes are gone, nobody holds the context, and the marker goes at the next
        // collection whatever its age.
        std::fs::remove_file(store.path(&digest).unwrap()).unwrap();
        assert!(!store.held_by("mobile", &digest).await.unwrap());
        store.collect_garbage(std::time::Duration::from_secs(3600), &Default::default());
        let marker = store.marker("mobile", &digest).unwrap();
        assert!(!marker.exists(), "{marker:?} is removed with its context");
    }

    #[test]
    fn garbage_collection_keeps_young_and_referenced_contexts() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContextStore::open(dir.path()).unwrap();
        let (a, b, c) = (digest_of(b"a"), digest_of(b"b"), digest_of(b"c"));
        for d in [&a, &b, &c] {
            std::fs::write(store.path(d).unwrap(), d).unwrap();
        }
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
        for d in [&a, &b] {
            let f = std::fs::File::options()
                .append(true)
                .open(store.path(d).unwrap())
                .unwrap();
            f.set_modified(old).unwrap();
        }
        let keep = [b.clone()].into_iter().collect();
        let removed = store.collect_garbage(std::time::Duration::from_secs(3600), &keep);
        assert_eq!(removed, 1);
        assert!(!store.has(&a).unwrap(), "old and unreferenced: removed");
        assert!(store.has(&b).unwrap(), "old but referenced: kept");
        assert!(store.has(&c).unwrap(), "young: kept");
    }

    #[test]
    fn bad_digests_are_named() {
        for bad in [
            "",
            "sha256:abc",
            "md5:00",
            &format!("sha256:{}", "A".repeat(64)),
        ] {
            let err = parse_digest(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("`{bad}`")), "{err}");
        }
    }
}
