//! What this worker knows about the layers it pushed: for a layer's diff_id (the sha256 of its
//! uncompressed tar, which the daemon reports for every image) the compressed blob it became
//! (digest, size) and the repositories it was pushed to. With it, a rebuild on a graphdriver
//! engine skips a layer the target repository already holds without compressing it again, and
//! mounts one it pushed to another repository of the same registry instead of uploading it.
//!
//! Layout: `<cache-dir>/layers/sha256/<diff_id hex>.json`, one small JSON file per layer, written
//! to a temporary file and renamed, so a crash never leaves half a record; a record that cannot be
//! read counts as unknown. Two jobs recording the same layer at once may lose one repository of
//! the list: that costs a mount later, never correctness, since every blob is checked in the
//! registry (or mounted by it) before a manifest names it. At most [`MAX_REPOSITORIES`] recent
//! repositories are kept per layer.

use std::path::{Path, PathBuf};

/// Repositories remembered per layer, most recent first.
pub const MAX_REPOSITORIES: usize = 8;

/// The compressed blob a layer became when this worker pushed it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KnownBlob {
    /// `sha256:<hex>` of the compressed (gzip) blob.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
    /// `registry/repository` names it was pushed to, most recent first.
    pub repositories: Vec<String>,
}

/// The per-worker map from diff_id to [`KnownBlob`], on disk.
#[derive(Clone, Debug)]
pub struct LayerMap {
    dir: PathBuf,
}

impl LayerMap {
    /// The map under `<cache_dir>/layers/sha256/`; the folder is made on the first record.
    pub fn new(cache_dir: &Path) -> Self {
        Self {
            dir: cache_dir.join("layers").join("sha256"),
        }
    }

    fn path(&self, diff_id: &str) -> Option<PathBuf> {
        let hex = diff_id.strip_prefix("sha256:")?;
        (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| self.dir.join(format!("{hex}.json")))
    }

    /// What is known of the layer `diff_id` (`sha256:<hex>`), if anything.
    pub fn get(&self, diff_id: &str) -> Option<KnownBlob> {
        let text = std::fs::read(self.path(diff_id)?).ok()?;
        let known: KnownBlob = serde_json::from_slice(&text).ok()?;
        known.digest.starts_with("sha256:").then_some(known)
    }

    /// Records that layer `diff_id` is blob `digest` (`size` bytes) in `repository`. Failures are
    /// logged, not returned: the map only saves work.
    pub fn record(&self, diff_id: &str, digest: &str, size: u64, repository: &str) {
        let Some(path) = self.path(diff_id) else {
            return;
        };
        let mut repositories = vec![repository.to_owned()];
        if let Some(old) = self.get(diff_id).filter(|k| k.digest == digest) {
            repositories.extend(old.repositories.into_iter().filter(|r| r != repository));
        }
        repositories.truncate(MAX_REPOSITORIES);
        let known = KnownBlob {
            digest: digest.to_owned(),
            size,
            repositories,
        };
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(&self.dir)?;
            let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
            serde_json::to_writer(&mut tmp, &known)?;
            tmp.persist(&path).map_err(|e| e.error)?;
            Ok(())
        };
        if let Err(e) = write() {
            tracing::warn!(path = %path.display(), error = %e, "cannot record a pushed layer");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn a_record_survives_and_keeps_the_latest_repositories_first() {
        let dir = tempfile::tempdir().unwrap();
        let map = LayerMap::new(dir.path());
        assert_eq!(map.get(&id('a')), None);
        map.record(&id('a'), &id('b'), 10, "reg/one");
        map.record(&id('a'), &id('b'), 10, "reg/two");
        map.record(&id('a'), &id('b'), 10, "reg/one");
        let again = LayerMap::new(dir.path());
        assert_eq!(
            again.get(&id('a')),
            Some(KnownBlob {
                digest: id('b'),
                size: 10,
                repositories: vec!["reg/one".into(), "reg/two".into()],
            })
        );
        for i in 0..20 {
            map.record(&id('a'), &id('b'), 10, &format!("reg/r{i}"));
        }
        let known = map.get(&id('a')).unwrap();
        assert_eq!(known.repositories.len(), MAX_REPOSITORIES);
        assert_eq!(known.repositories[0], "reg/r19");
    }

    #[test]
    fn another_blob_for_a_layer_replaces_the_record_and_bad_input_is_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let map = LayerMap::new(dir.path());
        map.record(&id('a'), &id('b'), 10, "reg/one");
        map.record(&id('a'), &id('c'), 11, "reg/two");
        let known = map.get(&id('a')).unwrap();
        assert_eq!(
            (known.digest, known.repositories),
            (id('c'), vec!["reg/two".to_owned()])
        );
        // Names that are no digest never reach the file system.
        for bad in ["", "sha256:../../etc/passwd", "md5:00", "sha256:abc"] {
            map.record(bad, &id('b'), 1, "reg/x");
            assert_eq!(map.get(bad), None, "{bad}");
        }
        std::fs::write(
            dir.path()
                .join("layers/sha256")
                .join(format!("{}.json", "d".repeat(64))),
            b"{not json",
        )
        .unwrap();
        assert_eq!(map.get(&id('d')), None);
    }
}
