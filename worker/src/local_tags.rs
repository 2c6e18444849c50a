//! The daemon-local tags this worker made for its jobs (`manifold-local/JOB:ATTEMPT`, graphdriver
//! engines), recorded in `<cache-dir>/local-tags/` before the build that makes one starts and
//! forgotten once the tag is removed. A worker killed mid-job leaves the record behind, and removes
//! the tag when it starts again. Only recorded tags are removed: another worker (or a person) may
//! share the daemon, and its tags are not this worker's to remove.

use std::path::{Path, PathBuf};

use crate::docker::DockerEngine;

/// The records of one worker's local tags.
#[derive(Clone, Debug)]
pub struct LocalTags {
    dir: PathBuf,
}

impl LocalTags {
    /// Records under `<cache_dir>/local-tags/`; the folder is made on the first record.
    pub fn new(cache_dir: &Path) -> Self {
        Self {
            dir: cache_dir.join("local-tags"),
        }
    }

    fn file(&self, tag: &str) -> PathBuf {
        self.dir.join(tag.replace('/', "_"))
    }

    /// Records `tag` before the build that makes it.
    pub fn record(&self, tag: &str) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        std::fs::write(self.file(tag), tag)
    }

    /// Forgets `tag` once it is removed from the daemon.
    pub fn forget(&self, tag: &str) {
        let _ = std::fs::remove_file(self.file(tag));
    }

    /// The tags recorded and not forgotten.
    pub fn recorded(&self) -> Vec<String> {
        let Ok(files) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut tags: Vec<String> = files
            .flatten()
            .filter_map(|f| std::fs::read_to_string(f.path()).ok())
            .filter(|tag| tag.starts_with("manifold-local/"))
            .collect();
        tags.sort();
        tags
    }

    /// Removes the recorded tags a previous run left in the daemon (at start, before any job),
    /// and their records; returns those removed. A tag the daemon cannot remove now stays recorded.
    pub async fn remove_leftovers(&self, engine: &DockerEngine) -> Vec<String> {
        let mut removed = Vec::new();
        for tag in self.recorded() {
            match engine.untag(&tag).await {
                Ok(()) => {
                    tracing::info!(%tag, "removed a local tag a previous run left behind");
                    self.forget(&tag);
                    removed.push(tag);
                }
                Err(e) => tracing::warn!(%tag, error = %e, "cannot remove a leftover local tag"),
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_recorded_until_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let tags = LocalTags::new(dir.path());
        assert_eq!(tags.recorded(), Vec::<String>::new());
        tags.record("manifold-local/j1:1").unwrap();
        tags.record("manifold-local/j2:3").unwrap();
        assert_eq!(
            tags.recorded(),
            ["manifold-local/j1:1", "manifold-local/j2:3"]
        );
        tags.forget("manifold-local/j1:1");
        assert_eq!(tags.recorded(), ["manifold-local/j2:3"]);
        // Only Manifold's tags are ever read back from the folder.
        std::fs::write(dir.path().join("local-tags/x"), "busybox:latest").unwrap();
        assert_eq!(tags.recorded(), ["manifold-local/j2:3"]);
    }
}
