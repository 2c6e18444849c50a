//! Assembling a manifest list / OCI image index from per-platform images: a pure function.
//!
//! Invariants:
//! - exactly one entry per platform, each with os/architecture/variant;
//! - the list's media type follows its children: a Docker manifest list when every child is a Docker
//!   schema2 manifest, an OCI image index when every child is an OCI manifest; a mix is refused
//!   (some registries reject mixed indexes, and clients disagree on them);
//! - entries are sorted by platform, so the same children always give the same bytes and digest.

use manifold_proto::Platform;
use oci_spec::image::{
    Arch, DescriptorBuilder, Digest, ImageIndexBuilder, MediaType, Os, PlatformBuilder,
};

/// Docker schema2 image manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// A pushed per-platform image manifest.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChildImage {
    /// The platform the image was built for (and checked to be of).
    pub platform: Platform,
    /// `sha256:<hex>` of the manifest bytes.
    pub digest: String,
    /// Size of the manifest in bytes.
    pub size: u64,
    /// The manifest's media type.
    pub media_type: String,
}

/// An assembled list, ready to push.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestList {
    /// The exact bytes to push (their sha256 is the list's digest).
    pub bytes: Vec<u8>,
    /// [`DOCKER_MANIFEST_LIST`] or [`OCI_INDEX`].
    pub media_type: &'static str,
}

/// Why children cannot form one list.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    /// No child at all.
    #[error("no per-platform image to put in the manifest list")]
    Empty,
    /// Two children claim the same platform.
    #[error("two images for platform {platform}: {first} and {second}; keep one per platform")]
    DuplicatePlatform {
        /// The platform.
        platform: Platform,
        /// One digest.
        first: String,
        /// The other digest.
        second: String,
    },
    /// Docker and OCI children together.
    #[error(
        "cannot mix media types in one list: {docker} is a Docker manifest but {oci} is an OCI manifest"
    )]
    MixedMediaTypes {
        /// A Docker child's digest.
        docker: String,
        /// An OCI child's digest.
        oci: String,
    },
    /// A child that is not an image manifest.
    #[error(
        "{digest} has media type `{media_type}`, which is not an image manifest ({DOCKER_MANIFEST} or {OCI_MANIFEST})"
    )]
    NotAnImage {
        /// The child's digest.
        digest: String,
        /// Its media type.
        media_type: String,
    },
    /// A malformed digest.
    #[error("invalid digest `{0}`: expected sha256:<64 hex digits>")]
    BadDigest(String),
}

/// Builds the list for `children`. See the module docs for the invariants.
pub fn assemble(children: &[ChildImage]) -> Result<ManifestList, ManifestError> {
    if children.is_empty() {
        return Err(ManifestError::Empty);
    }
    let mut sorted: Vec<&ChildImage> = children.iter().collect();
    sorted.sort_by(|a, b| a.platform.cmp(&b.platform));
    for pair in sorted.windows(2) {
        if pair[0].platform == pair[1].platform {
            return Err(ManifestError::DuplicatePlatform {
                platform: pair[0].platform.clone(),
                first: pair[0].digest.clone(),
                second: pair[1].digest.clone(),
            });
        }
    }
    for c in &sorted {
        if c.media_type != DOCKER_MANIFEST && c.media_type != OCI_MANIFEST {
            return Err(ManifestError::NotAnImage {
                digest: c.digest.clone(),
                media_type: c.media_type.clone(),
            });
        }
    }
    let docker = sorted.iter().find(|c| c.media_type == DOCKER_MANIFEST);
    let oci = sorted.iter().find(|c| c.media_type == OCI_MANIFEST);
    let media_type = match (docker, oci) {
        (Some(d), Some(o)) => {
            return Err(ManifestError::MixedMediaTypes {
                docker: d.digest.clone(),
                oci: o.digest.clone(),
            });
        }
        (Some(_), None) => DOCKER_MANIFEST_LIST,
        _ => OCI_INDEX,
    };

    let mut manifests = Vec::with_capacity(sorted.len());
    for c in sorted {
        let mut platform = PlatformBuilder::default()
            .os(Os::from(c.platform.os()))
            .architecture(Arch::from(c.platform.architecture()));
        if let Some(v) = c.platform.variant() {
            platform = platform.variant(v.to_owned());
        }
        let platform = platform.build().expect("os and architecture are set");
        let digest: Digest = c
            .digest
            .parse()
            .map_err(|_| ManifestError::BadDigest(c.digest.clone()))?;
        let descriptor = DescriptorBuilder::default()
            .media_type(MediaType::from(c.media_type.as_str()))
            .digest(digest)
            .size(c.size)
            .platform(platform)
            .build()
            .expect("media type, digest and size are set");
        manifests.push(descriptor);
    }
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::from(media_type))
        .manifests(manifests)
        .build()
        .expect("schema version and manifests are set");
    let bytes = serde_json::to_vec_pretty(&index).expect("an index always serialises");
    Ok(ManifestList { bytes, media_type })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn child(platform: &str, digest_byte: char, media_type: &str) -> ChildImage {
        ChildImage {
            platform: platform.parse().unwrap(),
            digest: format!("sha256:{}", digest_byte.to_string().repeat(64)),
            size: 500,
            media_type: media_type.into(),
        }
    }

    fn entries(list: &ManifestList) -> Vec<serde_json::Value> {
        let v: serde_json::Value = serde_json::from_slice(&list.bytes).unwrap();
        v["manifests"].as_array().unwrap().clone()
    }

    #[test]
    fn oci_children_give_an_oci_index_with_one_entry_per_platform() {
        let list = assemble(&[
            child("linux/arm64", 'b', OCI_MANIFEST),
            child("linux/amd64", 'a', OCI_MANIFEST),
        ])
        .unwrap();
        assert_eq!(list.media_type, OCI_INDEX);
        let v: serde_json::Value = serde_json::from_slice(&list.bytes).unwrap();
        assert_eq!(v["schemaVersion"], 2);
        assert_eq!(v["mediaType"], OCI_INDEX);
        let e = entries(&list);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0]["platform"]["architecture"], "amd64");
        assert_eq!(e[0]["platform"]["os"], "linux");
        assert_eq!(e[0]["digest"], format!("sha256:{}", "a".repeat(64)));
        assert_eq!(e[0]["mediaType"], OCI_MANIFEST);
        assert_eq!(e[0]["size"], 500);
        assert_eq!(e[1]["platform"]["architecture"], "arm64");
        assert!(e[1]["platform"].get("variant").is_none());
    }

    #[test]
    fn docker_children_give_a_docker_manifest_list() {
        let list = assemble(&[
            child("linux/amd64", 'a', DOCKER_MANIFEST),
            child("linux/arm/v7", 'c', DOCKER_MANIFEST),
        ])
        .unwrap();
        assert_eq!(list.media_type, DOCKER_MANIFEST_LIST);
        let e = entries(&list);
        assert_eq!(e[1]["platform"]["variant"], "v7");
    }

    #[test]
    fn the_same_children_in_any_order_give_the_same_bytes() {
        let a = child("linux/amd64", 'a', OCI_MANIFEST);
        let b = child("linux/arm64", 'b', OCI_MANIFEST);
        assert_eq!(
            assemble(&[a.clone(), b.clone()]).unwrap(),
            assemble(&[b, a]).unwrap()
        );
    }

    #[test]
    fn refusals_name_what_is_wrong() {
        assert_eq!(assemble(&[]), Err(ManifestError::Empty));
        let mixed = assemble(&[
            child("linux/amd64", 'a', DOCKER_MANIFEST),
            child("linux/arm64", 'b', OCI_MANIFEST),
        ])
        .unwrap_err();
        assert!(matches!(mixed, ManifestError::MixedMediaTypes { .. }));
        let dup = assemble(&[
            child("linux/arm64", 'a', OCI_MANIFEST),
            child("linux/arm64/v8", 'b', OCI_MANIFEST),
        ])
        .unwrap_err();
        assert!(
            dup.to_string().contains("linux/arm64"),
            "{dup}: names the platform"
        );
        let nested = assemble(&[child("linux/amd64", 'a', OCI_INDEX)]).unwrap_err();
        assert!(matches!(nested, ManifestError::NotAnImage { .. }));
        let bad = ChildImage {
            digest: "sha256:nothex".into(),
            ..child("linux/amd64", 'a', OCI_MANIFEST)
        };
        assert_eq!(
            assemble(&[bad]),
            Err(ManifestError::BadDigest("sha256:nothex".into()))
        );
    }
}
