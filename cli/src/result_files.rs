//! What `manifold build` writes for programs once a build has succeeded: `--iidfile` (the list
//! digest, as buildx writes it for a pushed multi-platform image) and `--metadata-file` (buildx's
//! keys, plus Manifold's own under `manifold.`).
//!
//! The metadata document of a build pushed to `reg/app:1` and `reg/app:latest`:
//! ```json
//! {
//!   "containerimage.digest": "sha256:…",
//!   "containerimage.mediaType": "application/vnd.oci.image.index.v1+json",
//!   "image.name": "reg/app:1,reg/app:latest",
//!   "manifold.build.id": "…",
//!   "manifold.platforms": {
//!     "linux/amd64": { "containerimage.digest": "sha256:…",
//!                      "containerimage.descriptor": { "mediaType": "…", "digest": "sha256:…", "size": 1234 } }
//!   }
//! }
//! ```

use std::path::{Path, PathBuf};

use manifold_proto::v1;
use serde_json::{Map, Value, json};

use crate::progress::platform_name;

/// A result file that could not be written.
#[derive(Debug, thiserror::Error)]
#[error("the build succeeded, but {flag} {} cannot be written: {source}; the digest is on stdout", .path.display())]
pub struct WriteError {
    /// `--iidfile` or `--metadata-file`.
    pub flag: &'static str,
    /// The file.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// The `--metadata-file` document of the succeeded `build`, pushed under `tags`.
pub fn metadata(build: &v1::Build, tags: &[String]) -> Value {
    let mut platforms = Map::new();
    for job in &build.jobs {
        if let Some(image) = &job.image {
            platforms.insert(
                platform_name(job.platform.as_ref()),
                json!({
                    "containerimage.digest": image.digest,
                    "containerimage.descriptor": {
                        "mediaType": image.media_type,
                        "digest": image.digest,
                        "size": image.size,
                    },
                }),
            );
        }
    }
    json!({
        "containerimage.digest": build.manifest_digest,
        "containerimage.mediaType": build.manifest_media_type,
        "image.name": tags.join(","),
        "manifold.build.id": build.id,
        "manifold.platforms": platforms,
    })
}

/// Writes `text` to `path` whole: into a temporary file beside it, then renamed over it, so a
/// reader never sees half a file.
pub fn write(flag: &'static str, path: &Path, text: &str) -> Result<(), WriteError> {
    let err = |source| WriteError {
        flag,
        path: path.to_owned(),
        source,
    };
    let name = path
        .file_name()
        .ok_or_else(|| err(std::io::Error::other("it names a directory, not a file")))?;
    let mut partial = name.to_owned();
    partial.push(".partial");
    let partial = path.with_file_name(partial);
    std::fs::write(&partial, text).map_err(err)?;
    std::fs::rename(&partial, path).map_err(|e| {
        let _ = std::fs::remove_file(&partial);
        err(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(arch: &str, digest: &str) -> v1::Job {
        v1::Job {
            platform: Some(v1::Platform {
                os: "linux".into(),
                architecture: arch.into(),
                variant: String::new(),
            }),
            state: v1::JobState::Succeeded as i32,
            image: Some(v1::ImageDescriptor {
                digest: digest.into(),
                size: 480,
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                attestations: Vec::new(),
            }),
            ..v1::Job::default()
        }
    }

    #[test]
    fn metadata_has_buildx_keys_and_each_platform() {
        let build = v1::Build {
            id: "b1".into(),
            manifest_digest: "sha256:list".into(),
            manifest_media_type: "application/vnd.oci.image.index.v1+json".into(),
            jobs: vec![job("amd64", "sha256:a"), job("arm64", "sha256:b")],
            ..v1::Build::default()
        };
        let m = metadata(&build, &["r/app:1".into(), "r/app:latest".into()]);
        assert_eq!(m["containerimage.digest"], "sha256:list");
        assert_eq!(m["image.name"], "r/app:1,r/app:latest");
        assert_eq!(m["manifold.build.id"], "b1");
        let p = &m["manifold.platforms"];
        assert_eq!(p["linux/amd64"]["containerimage.digest"], "sha256:a");
        assert_eq!(p["linux/arm64"]["containerimage.descriptor"]["size"], 480);
        assert_eq!(p.as_object().unwrap().len(), 2);
    }

    #[test]
    fn write_replaces_the_file_whole_and_names_the_flag_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("iid");
        std::fs::write(&path, "old").unwrap();
        write("--iidfile", &path, "sha256:new").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "sha256:new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        let missing = dir.path().join("no/such/dir/iid");
        let e = write("--iidfile", &missing, "x").unwrap_err().to_string();
        assert!(
            e.contains("--iidfile") && e.contains("no/such/dir/iid"),
            "{e}"
        );
    }
}
