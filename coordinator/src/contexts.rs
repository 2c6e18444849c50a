//! Build contexts on disk, addressed by the sha256 of their bytes.
//!
//! Layout: `<state-dir>/contexts/sha256/<hex>`. An upload is written to a temporary file in the same
//! folder, its digest computed while writing, and renamed into place only when the digest matches
//! the one the client announced. A context file therefore always holds exactly the bytes of its name.

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
    /// Disk trouble.
    #[error("context store at {path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// What.
        source: std::io::Error,
    },
}

/// The on-disk store.
#[derive(Clone, Debug)]
pub struct ContextStore {
    dir: PathBuf,
}

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
        Ok(Self { dir })
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
