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
//! Unreferenced contexts are removed from the local store once older than the retention
//! (`--context-ttl`); a context is "used" again whenever a client asks for it, which renews it.

use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

/// Context store failures.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// Not of the form `sha256:<64 hex>`.
    #[error("invalid context digest `{0}`: expected sha256:<64 lowercase hex digits>")]
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
    #[error("unknown context {0}: upload it first")]
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
    /// An oci-client for the replica's registry and the Docker config credentials for it.
    fn client(&self) -> (oci_client::Client, oci_client::secrets::RegistryAuth) {
        let registry = self.repository.registry();
        (
            self.registry.client(registry),
            manifold_registry::credentials_for(registry),
        )
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
        .ok_or_else(|| ContextError::BadDigest(digest.to_owned()))
}

impl ContextStore {
    /// Opens (creating) the store under `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Self, ContextError> {
        let dir = state_dir.join("contexts").join("sha256");
        std::fs::create_dir_all(&dir).map_err(|source| ContextError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(Self { dir, remote: None })
    }

    /// Replicates contexts to `remote` from now on.
    pub fn with_remote(mut self, remote: Remote) -> Self {
        self.remote = Some(remote);
        self
    }

    /// Whether the context is here or in the registry replica; a hit renews its retention.
    pub async fn has_anywhere(&self, digest: &str) -> Result<bool, ContextError> {
        let path = self.path(digest)?;
        if path.is_file() {
            touch(&path);
            return Ok(true);
        }
        let Some(remote) = &self.remote else {
            return Ok(false);
        };
        let (client, auth) = remote.client();
        // Anonymous registries answer at once; others hand out a pull token.
        let _ = client
            .auth(
                &remote.repository,
                &auth,
                oci_client::RegistryOperation::Pull,
            )
            .await;
        client
            .blob_exists(&remote.repository, digest)
            .await
            .map_err(|e| self.remote_error(remote, "checking", digest, &e))
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
        let (client, auth) = remote.client();
        let tagged = oci_client::Reference::with_tag(
            remote.repository.registry().to_owned(),
            remote.repository.repository().to_owned(),
            tag_of(digest),
        );
        // Authenticate for pulls (anonymous registries answer at once).
        let _ = client
            .auth(&tagged, &auth, oci_client::RegistryOperation::Pull)
            .await;
        let mut upload = self.begin(digest).await?;
        let mut stream = client
            .pull_blob_stream(&remote.repository, digest)
            .await
            .map_err(|e| match e {
                oci_client::errors::OciDistributionError::ImageManifestNotFoundError(_) => {
                    ContextError::Unknown(digest.to_owned())
                }
                e => self.remote_error(&remote, "fetching", digest, &e),
            })?;
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

    /// Pushes a stored context to the registry replica (a no-op without one).
    pub async fn replicate(&self, digest: &str) -> Result<(), ContextError> {
        let Some(remote) = &self.remote else {
            return Ok(());
        };
        let path = self.path(digest)?;
        let size = self.size(digest)?;
        let (client, auth) = remote.client();
        let tagged = oci_client::Reference::with_tag(
            remote.repository.registry().to_owned(),
            remote.repository.repository().to_owned(),
            tag_of(digest),
        );
        let fail = |e: oci_client::errors::OciDistributionError| {
            self.remote_error(remote, "replicating", digest, &e)
        };
        client
            .auth(&tagged, &auth, oci_client::RegistryOperation::Push)
            .await
            .map_err(fail)?;
        if !client
            .blob_exists(&remote.repository, digest)
            .await
            .map_err(fail)?
        {
            let file = tokio::fs::File::open(&path)
                .await
                .map_err(|source| ContextError::Io {
                    path: path.clone(),
                    source,
                })?;
            use futures::StreamExt as _;
            let stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20).map(|r| {
                r.map_err(|e| {
                    oci_client::errors::OciDistributionError::GenericError(Some(e.to_string()))
                })
            });
            client
                .push_blob_stream(&remote.repository, stream, digest, Some(size))
                .await
                .map_err(fail)?;
        }
        client
            .push_blob(&remote.repository, b"{}".to_vec(), EMPTY_JSON_DIGEST)
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
        client
            .push_manifest_raw(
                &tagged,
                serde_json::to_vec(&manifest).expect("json"),
                http::HeaderValue::from_static("application/vnd.oci.image.manifest.v1+json"),
            )
            .await
            .map_err(fail)?;
        tracing::info!(%digest, repository = %remote.repository, "context replicated");
        Ok(())
    }

    /// Removes local contexts older than `ttl` that `keep` does not name; returns how many.
    pub fn collect_garbage(
        &self,
        ttl: std::time::Duration,
        keep: &std::collections::HashSet<String>,
    ) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
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
            if old && !keep.contains(&digest) && std::fs::remove_file(entry.path()).is_ok() {
                tracing::info!(context = %digest, "removed an unreferenced context");
                removed += 1;
            }
        }
        removed
    }

    fn remote_error(
        &self,
        remote: &Remote,
        action: &str,
        digest: &str,
        e: &oci_client::errors::OciDistributionError,
    ) -> ContextError {
        ContextError::Remote(format!(
            "{action} context {digest} in {}: {e}",
            remote.repository
        ))
    }

    /// Where the context with this digest lives (whether or not it exists).
    pub fn path(&self, digest: &str) -> Result<PathBuf, ContextError> {
        Ok(self.dir.join(parse_digest(digest)?))
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
