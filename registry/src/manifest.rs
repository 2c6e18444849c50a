//! Assembling a manifest list / OCI image index from per-platform images: a pure function.
//!
//! Invariants:
//! - exactly one entry per platform, each with os/architecture/variant;
//! - the list's media type follows its children: a Docker manifest list when every child is a Docker
//!   schema2 manifest, an OCI image index when every child is an OCI manifest; a mix is refused
//!   (some registries reject mixed indexes, and clients disagree on them);
//! - entries are sorted by platform, so the same children always give the same bytes and digest;
//! - the list type may be chosen ([`ListKind`]) only where the children allow it: an OCI index may
//!   hold Docker schema2 children, a Docker manifest list never holds OCI manifests;
//! - entries that are not platform images (BuildKit attestation manifests, `unknown/unknown`) are
//!   carried only when asked ([`ExtraEntry`]), after the platform entries, and only in an OCI index.

use std::collections::BTreeMap;

use manifold_proto::Platform;

use crate::inspect::{
    ATTESTATION_MANIFEST, REFERENCE_DIGEST_ANNOTATION, REFERENCE_TYPE_ANNOTATION,
};
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
    /// Attestation manifests about it (BuildKit's provenance, SBOM), carried into the list as
    /// buildx carries them ([`ChildImage::attestation_entries`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attestations: Vec<Attestation>,
}

/// An attestation manifest about a child image: an OCI manifest in the child's repository.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Attestation {
    /// `sha256:<hex>` of the manifest.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
}

impl ChildImage {
    /// The list entries of its attestations, as BuildKit writes them: `unknown/unknown`,
    /// annotated with what they are and the image they are about.
    pub fn attestation_entries(&self) -> Vec<ExtraEntry> {
        (self.attestations.iter())
            .map(|a| ExtraEntry {
                digest: a.digest.clone(),
                size: a.size,
                media_type: OCI_MANIFEST.to_owned(),
                os: "unknown".into(),
                architecture: "unknown".into(),
                annotations: BTreeMap::from([
                    (REFERENCE_DIGEST_ANNOTATION.to_owned(), self.digest.clone()),
                    (
                        REFERENCE_TYPE_ANNOTATION.to_owned(),
                        ATTESTATION_MANIFEST.to_owned(),
                    ),
                ]),
            })
            .collect()
    }
}

/// Which list media type to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ListKind {
    /// A Docker manifest list ([`DOCKER_MANIFEST_LIST`]).
    Docker,
    /// An OCI image index ([`OCI_INDEX`]).
    Oci,
}

impl ListKind {
    /// The list's media type.
    pub fn media_type(self) -> &'static str {
        match self {
            ListKind::Docker => DOCKER_MANIFEST_LIST,
            ListKind::Oci => OCI_INDEX,
        }
    }
}

/// An index entry that is not a platform image, carried verbatim: typically a BuildKit
/// attestation manifest (`unknown/unknown`, annotated `vnd.docker.reference.type`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExtraEntry {
    /// `sha256:<hex>` of the manifest.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its media type (an OCI image manifest for attestations).
    pub media_type: String,
    /// The `platform.os` written for it, as found (`unknown` for attestations).
    pub os: String,
    /// The `platform.architecture` written for it, as found.
    pub architecture: String,
    /// Its annotations, written in key order.
    pub annotations: BTreeMap<String, String>,
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
        platform: String,
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
    /// A Docker manifest list was asked for OCI children.
    #[error(
        "a Docker manifest list cannot hold the OCI image manifest {oci}: write an OCI index instead, or push the images as Docker schema2 manifests"
    )]
    DockerListOfOci {
        /// An OCI child's digest.
        oci: String,
    },
    /// Non-platform entries (attestations) need an OCI index of OCI manifests.
    #[error(
        "{digest} (`{media_type}`) can only be carried in an OCI index whose images are OCI manifests; leave attestations out (--exclude-attestations) or use OCI images"
    )]
    ExtraNeedsOci {
        /// The extra entry's digest.
        digest: String,
        /// Its media type.
        media_type: String,
    },
}

/// Builds the list for `children`, its type following theirs. See the module docs for the
/// invariants.
pub fn assemble(children: &[ChildImage]) -> Result<ManifestList, ManifestError> {
    assemble_list(children, &[], None)
}

/// Builds the list for `children` plus `extras` (non-platform entries, in an OCI index only), of
/// type `kind` when given (see the module docs for what children allow), else following them.
pub fn assemble_list(
    children: &[ChildImage],
    extras: &[ExtraEntry],
    kind: Option<ListKind>,
) -> Result<ManifestList, ManifestError> {
    if children.is_empty() {
        return Err(ManifestError::Empty);
    }
    let mut sorted: Vec<&ChildImage> = children.iter().collect();
    sorted.sort_by(|a, b| a.platform.cmp(&b.platform));
    for pair in sorted.windows(2) {
        if pair[0].platform == pair[1].platform {
            return Err(ManifestError::DuplicatePlatform {
                platform: pair[0].platform.to_string(),
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
    let media_type = match (docker, oci, kind) {
        (Some(d), Some(o), _) => {
            return Err(ManifestError::MixedMediaTypes {
                docker: d.digest.clone(),
                oci: o.digest.clone(),
            });
        }
        (_, Some(o), Some(ListKind::Docker)) => {
            return Err(ManifestError::DockerListOfOci {
                oci: o.digest.clone(),
            });
        }
        (_, _, Some(kind)) => kind.media_type(),
        (Some(_), None, None) => DOCKER_MANIFEST_LIST,
        _ => OCI_INDEX,
    };
    if let Some(e) = extras
        .iter()
        .find(|e| media_type != OCI_INDEX || docker.is_some() || e.media_type != OCI_MANIFEST)
    {
        return Err(ManifestError::ExtraNeedsOci {
            digest: e.digest.clone(),
            media_type: e.media_type.clone(),
        });
    }

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
    if extras.is_empty() {
        let bytes = serde_json::to_vec_pretty(&index).expect("an index always serialises");
        return Ok(ManifestList { bytes, media_type });
    }
    // oci-spec keeps annotations in a HashMap, whose order varies between runs: extras are
    // written through JSON values with their annotations in key order, so equal inputs still
    // give equal bytes.
    let mut value = serde_json::to_value(&index).expect("an index always serialises");
    let mut sorted_extras: Vec<&ExtraEntry> = extras.iter().collect();
    sorted_extras.sort_by(|a, b| a.digest.cmp(&b.digest));
    let entries = value["manifests"]
        .as_array_mut()
        .expect("an index has manifests");
    for e in sorted_extras {
        if e.digest.parse::<Digest>().is_err() {
            return Err(ManifestError::BadDigest(e.digest.clone()));
        }
        let mut annotations = serde_json::Map::new();
        for (k, v) in &e.annotations {
            annotations.insert(k.clone(), serde_json::Value::String(v.clone()));
        }
        let mut entry = serde_json::Map::new();
        entry.insert("mediaType".into(), e.media_type.clone().into());
        entry.insert("digest".into(), e.digest.clone().into());
        entry.insert("size".into(), e.size.into());
        if !annotations.is_empty() {
            entry.insert("annotations".into(), annotations.into());
        }
        entry.insert(
            "platform".into(),
            serde_json::json!({ "architecture": e.architecture, "os": e.os }),
        );
        entries.push(entry.into());
    }
    let bytes = serde_json::to_vec_pretty(&value).expect("an index always serialises");
    Ok(ManifestList { bytes, media_type })
}

/// Builds a list of `media_type` whose entries are `descriptors`, each written as given, in the
/// order given (what `manifest create` uses to copy entries unchanged). The digests must be
/// well-formed.
pub fn assemble_descriptors(
    descriptors: &[serde_json::Map<String, serde_json::Value>],
    media_type: &'static str,
) -> Result<ManifestList, ManifestError> {
    if descriptors.is_empty() {
        return Err(ManifestError::Empty);
    }
    for d in descriptors {
        let digest = d.get("digest").and_then(|v| v.as_str()).unwrap_or("");
        if digest.parse::<Digest>().is_err() {
            return Err(ManifestError::BadDigest(digest.to_owned()));
        }
    }
    let mut index = serde_json::Map::new();
    index.insert("schemaVersion".into(), 2.into());
    index.insert("mediaType".into(), media_type.into());
    index.insert(
        "manifests".into(),
        descriptors
            .iter()
            .cloned()
            .map(serde_json::Value::Object)
            .collect(),
    );
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
            attestations: Vec::new(),
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
    fn descriptors_are_written_as_given_in_their_order() {
        let d = |digest: char, extra: serde_json::Value| {
            let mut m = serde_json::Map::new();
            m.insert("mediaType".into(), OCI_MANIFEST.into());
            m.insert(
                "digest".into(),
                format!("sha256:{}", digest.to_string().repeat(64)).into(),
            );
            m.insert("size".into(), 7.into());
            m.insert("x".into(), extra);
            m
        };
        let list = assemble_descriptors(
            &[
                d('b', serde_json::json!({"platform": "kept"})),
                d('a', serde_json::Value::Null),
            ],
            OCI_INDEX,
        )
        .unwrap();
        let e = entries(&list);
        assert_eq!(e[0]["x"]["platform"], "kept");
        assert!(e[1]["digest"].as_str().unwrap().ends_with('a'));
        assert_eq!(
            assemble_descriptors(&[], OCI_INDEX).unwrap_err(),
            ManifestError::Empty
        );
        let mut bad = d('c', serde_json::Value::Null);
        bad.insert("digest".into(), "sha256:nope".into());
        assert_eq!(
            assemble_descriptors(&[bad], OCI_INDEX).unwrap_err(),
            ManifestError::BadDigest("sha256:nope".into())
        );
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

    fn attestation(digest_byte: char, about: char) -> ExtraEntry {
        ExtraEntry {
            digest: format!("sha256:{}", digest_byte.to_string().repeat(64)),
            size: 800,
            media_type: OCI_MANIFEST.into(),
            os: "unknown".into(),
            architecture: "unknown".into(),
            annotations: BTreeMap::from([
                (
                    "vnd.docker.reference.type".to_owned(),
                    "attestation-manifest".to_owned(),
                ),
                (
                    "vnd.docker.reference.digest".to_owned(),
                    format!("sha256:{}", about.to_string().repeat(64)),
                ),
            ]),
        }
    }

    #[test]
    fn the_list_type_can_be_chosen_where_children_allow_it() {
        let docker = [child("linux/amd64", 'a', DOCKER_MANIFEST)];
        let oci = [child("linux/amd64", 'a', OCI_MANIFEST)];
        let check = |children: &[ChildImage], kind, expected: Result<&str, &str>| {
            let got = assemble_list(children, &[], kind)
                .map(|l| l.media_type)
                .map_err(|e| e.to_string());
            match expected {
                Ok(media_type) => assert_eq!(got, Ok(media_type), "{kind:?}"),
                Err(part) => {
                    let err = got.unwrap_err();
                    assert!(err.contains(part), "{kind:?}: {err}");
                }
            }
        };
        check(&docker, None, Ok(DOCKER_MANIFEST_LIST));
        check(&docker, Some(ListKind::Docker), Ok(DOCKER_MANIFEST_LIST));
        check(&docker, Some(ListKind::Oci), Ok(OCI_INDEX));
        check(&oci, None, Ok(OCI_INDEX));
        check(&oci, Some(ListKind::Oci), Ok(OCI_INDEX));
        check(
            &oci,
            Some(ListKind::Docker),
            Err("a Docker manifest list cannot hold the OCI image manifest"),
        );
        // Choosing the type never changes the bytes of the default choice.
        assert_eq!(
            assemble_list(&docker, &[], Some(ListKind::Docker)).unwrap(),
            assemble(&docker).unwrap()
        );
    }

    #[test]
    fn a_childs_attestations_become_entries_about_it_as_buildkit_writes_them() {
        let mut amd64 = child("linux/amd64", 'a', OCI_MANIFEST);
        amd64.attestations = vec![Attestation {
            digest: format!("sha256:{}", "d".repeat(64)),
            size: 800,
        }];
        assert_eq!(amd64.attestation_entries(), [attestation('d', 'a')]);
        assert_eq!(
            child("linux/arm64", 'b', OCI_MANIFEST).attestation_entries(),
            []
        );
        // Stored children of before attestations read as children without any.
        let stored = r#"{"platform":"linux/amd64","digest":"sha256:x","size":1,"media_type":"m"}"#;
        let read: ChildImage = serde_json::from_str(stored).unwrap();
        assert!(read.attestations.is_empty());
    }

    #[test]
    fn attestations_are_carried_after_the_platforms_in_an_oci_index_only() {
        let children = [
            child("linux/arm64", 'b', OCI_MANIFEST),
            child("linux/amd64", 'a', OCI_MANIFEST),
        ];
        let extras = [attestation('e', 'b'), attestation('d', 'a')];
        let list = assemble_list(&children, &extras, None).unwrap();
        assert_eq!(list.media_type, OCI_INDEX);
        let e = entries(&list);
        let order: Vec<&str> = e
            .iter()
            .map(|m| m["platform"]["architecture"].as_str().unwrap())
            .collect();
        assert_eq!(order, ["amd64", "arm64", "unknown", "unknown"]);
        assert!(e[2]["digest"].as_str().unwrap().ends_with('d'));
        assert_eq!(
            e[2]["annotations"]["vnd.docker.reference.type"],
            "attestation-manifest"
        );
        // Equal inputs, equal bytes.
        let again = assemble_list(&children, &[extras[1].clone(), extras[0].clone()], None);
        assert_eq!(again.unwrap(), list);
        // Not in a Docker list, nor beside Docker children.
        let err = assemble_list(&children, &extras, Some(ListKind::Docker)).unwrap_err();
        assert!(
            matches!(err, ManifestError::DockerListOfOci { .. }),
            "{err}"
        );
        let docker = [child("linux/amd64", 'a', DOCKER_MANIFEST)];
        let err = assemble_list(&docker, &extras, Some(ListKind::Oci)).unwrap_err();
        assert!(matches!(err, ManifestError::ExtraNeedsOci { .. }), "{err}");
    }
}
