//! Reading what a reference names (an image manifest, or a Docker manifest list / OCI index with
//! its entries), and choosing the child a client of a given platform would pull.
//!
//! The choice is Docker's (containerd's `platforms.Only`, which the Docker daemon uses for `docker
//! pull --platform`): same OS; platforms are normalised first, so `linux/arm64/v8` and
//! `linux/arm64` are one platform; the exact platform is preferred, then the ones it can run in
//! order (`arm/v7` → `arm/v6` → `arm/v5`; `arm64` → `arm/v7`...; `amd64` → `386`); among equals
//! the first in the index wins. Attestation entries (`unknown/unknown`) are never chosen.

use std::collections::BTreeMap;

use manifold_proto::Platform;
use oci_client::Reference;

use crate::manifest::{DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST};
use crate::session::{RawManifest, RegistryError, Session};

/// The annotation BuildKit puts on attestation entries of an index.
pub const REFERENCE_TYPE_ANNOTATION: &str = "vnd.docker.reference.type";
/// The annotation naming the image an attestation entry is about.
pub const REFERENCE_DIGEST_ANNOTATION: &str = "vnd.docker.reference.digest";

/// Why a reference cannot be inspected.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// The registry has no such manifest.
    #[error(
        "`{reference}` not found: {registry} has no such manifest; check the repository and tag"
    )]
    NotFound {
        /// The reference as given.
        reference: String,
        /// Its registry.
        registry: String,
    },
    /// Talking to the registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The manifest or config is not something Manifold can read.
    #[error("`{reference}` cannot be read: {message}")]
    Malformed {
        /// The reference.
        reference: String,
        /// What is wrong.
        message: String,
    },
    /// No entry of an index suits the platform.
    #[error("`{reference}` has no image a {wanted} client would pull; it has {available}")]
    NoMatch {
        /// The reference.
        reference: String,
        /// The platform asked for.
        wanted: String,
        /// Its platforms, comma-separated.
        available: String,
    },
    /// A single image of another platform.
    #[error("`{reference}` is a single {actual} image, which a {wanted} client would not pull")]
    WrongPlatform {
        /// The reference.
        reference: String,
        /// The platform asked for.
        wanted: String,
        /// The image's platform, as its config says.
        actual: String,
    },
}

/// A blob an image manifest refers to.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BlobRef {
    /// Its media type.
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// Whether it is a foreign layer (served from `urls`, not pushed to registries).
    pub foreign: bool,
}

/// An image manifest's blobs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageManifest {
    /// The config blob.
    pub config: BlobRef,
    /// The layers, in order.
    pub layers: Vec<BlobRef>,
}

/// One entry of a manifest list / index, as found.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct IndexEntry {
    /// The child's media type.
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// `platform.os`, if any.
    pub os: Option<String>,
    /// `platform.architecture`, if any.
    pub architecture: Option<String>,
    /// `platform.variant`, if any.
    pub variant: Option<String>,
    /// Its annotations.
    pub annotations: BTreeMap<String, String>,
}

impl IndexEntry {
    /// The normalised platform, or `None` for an entry without one or with one that is not a
    /// platform (`unknown/unknown`).
    pub fn platform(&self) -> Option<Platform> {
        Platform::from_parts(
            self.os.as_deref()?,
            self.architecture.as_deref()?,
            self.variant.as_deref(),
        )
        .ok()
    }

    /// The platform as written in the index (`linux/arm64/v8`, `unknown/unknown`, `-`).
    pub fn platform_text(&self) -> String {
        match (&self.os, &self.architecture, &self.variant) {
            (Some(o), Some(a), Some(v)) if !v.is_empty() => format!("{o}/{a}/{v}"),
            (Some(o), Some(a), _) => format!("{o}/{a}"),
            _ => "-".to_owned(),
        }
    }

    /// Whether this is an attestation or another entry that is not a runnable image: annotated
    /// as a reference (BuildKit), or without a real platform.
    pub fn is_attestation(&self) -> bool {
        self.annotations.contains_key(REFERENCE_TYPE_ANNOTATION) || self.platform().is_none()
    }

    /// Whether a client may pull this entry as the image of its platform.
    pub fn is_platform_image(&self) -> bool {
        !self.is_attestation()
            && (self.media_type == DOCKER_MANIFEST || self.media_type == OCI_MANIFEST)
    }
}

/// What a manifest holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    /// An image manifest.
    Image(ImageManifest),
    /// A manifest list / index, entries in their order.
    Index(Vec<IndexEntry>),
}

/// A reference, what the registry answered for it, and its parsed content.
#[derive(Clone, Debug)]
pub struct Inspected {
    /// The reference asked about.
    pub reference: Reference,
    /// The manifest as served.
    pub manifest: RawManifest,
    /// Its content.
    pub content: Content,
}

impl Inspected {
    /// `registry/repository@digest`: what `docker pull` takes to get exactly this manifest.
    pub fn pinned(&self) -> String {
        format!(
            "{}/{}@{}",
            self.reference.registry(),
            self.reference.repository(),
            self.manifest.digest
        )
    }
}

/// The platform an image's config declares, as written.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ConfigPlatform {
    /// `os`.
    pub os: String,
    /// `architecture`.
    pub architecture: String,
    /// `variant`, if any.
    pub variant: Option<String>,
}

impl ConfigPlatform {
    /// The normalised platform, when it is one.
    pub fn platform(&self) -> Option<Platform> {
        Platform::from_parts(&self.os, &self.architecture, self.variant.as_deref()).ok()
    }
}

impl std::fmt::Display for ConfigPlatform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.variant {
            Some(v) if !v.is_empty() => write!(f, "{}/{}/{v}", self.os, self.architecture),
            _ => write!(f, "{}/{}", self.os, self.architecture),
        }
    }
}

#[derive(serde::Deserialize)]
struct RawDescriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: i64,
    #[serde(default)]
    platform: Option<RawPlatform>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
    #[serde(default)]
    urls: Option<Vec<String>>,
}

#[derive(serde::Deserialize)]
struct RawPlatform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

#[derive(serde::Deserialize)]
struct RawDocument {
    #[serde(default)]
    manifests: Option<Vec<RawDescriptor>>,
    #[serde(default)]
    config: Option<RawDescriptor>,
    #[serde(default)]
    layers: Option<Vec<RawDescriptor>>,
}

/// Parses manifest bytes of `media_type` (see [`crate::session::media_type_of`]).
pub fn parse_manifest(bytes: &[u8], media_type: &str) -> Result<Content, String> {
    let doc: RawDocument =
        serde_json::from_slice(bytes).map_err(|e| format!("it is not valid JSON: {e}"))?;
    let size = |d: &RawDescriptor| {
        u64::try_from(d.size).map_err(|_| format!("{} has a negative size", d.digest))
    };
    match media_type {
        DOCKER_MANIFEST_LIST | OCI_INDEX => {
            let entries = doc.manifests.unwrap_or_default();
            entries
                .into_iter()
                .map(|d| {
                    Ok(IndexEntry {
                        size: size(&d)?,
                        media_type: d.media_type,
                        digest: d.digest,
                        os: d.platform.as_ref().map(|p| p.os.clone()),
                        architecture: d.platform.as_ref().map(|p| p.architecture.clone()),
                        variant: d.platform.and_then(|p| p.variant).filter(|v| !v.is_empty()),
                        annotations: d.annotations.unwrap_or_default(),
                    })
                })
                .collect::<Result<_, String>>()
                .map(Content::Index)
        }
        DOCKER_MANIFEST | OCI_MANIFEST => {
            let blob = |d: RawDescriptor| -> Result<BlobRef, String> {
                Ok(BlobRef {
                    size: size(&d)?,
                    foreign: d.urls.is_some_and(|u| !u.is_empty()),
                    media_type: d.media_type,
                    digest: d.digest,
                })
            };
            let config = doc
                .config
                .ok_or_else(|| "the image manifest has no config".to_owned())?;
            Ok(Content::Image(ImageManifest {
                config: blob(config)?,
                layers: doc
                    .layers
                    .unwrap_or_default()
                    .into_iter()
                    .map(blob)
                    .collect::<Result<_, _>>()?,
            }))
        }
        other => Err(format!(
            "its media type `{other}` is neither an image manifest nor a manifest list"
        )),
    }
}

/// The platform an image config declares (`os`, `architecture`, `variant`).
pub fn parse_config_platform(bytes: &[u8]) -> Result<ConfigPlatform, String> {
    let p: RawPlatform =
        serde_json::from_slice(bytes).map_err(|e| format!("its config is not valid JSON: {e}"))?;
    if p.os.is_empty() || p.architecture.is_empty() {
        return Err("its config names no os and architecture".to_owned());
    }
    Ok(ConfigPlatform {
        os: p.os,
        architecture: p.architecture,
        variant: p.variant.filter(|v| !v.is_empty()),
    })
}

/// The platforms a client of `wanted` accepts, best first (see the module docs).
pub fn compatible_platforms(wanted: &Platform) -> Vec<Platform> {
    let os = wanted.os();
    let p = |arch: &str, variant: Option<&str>| {
        Platform::from_parts(os, arch, variant).expect("known architectures and variants")
    };
    let arm_from = |top: u32| (5..=top).rev().map(move |v| format!("v{v}"));
    let mut out = vec![wanted.clone()];
    match (wanted.architecture(), wanted.variant()) {
        ("amd64", variant) => {
            if let Some(n) = variant.and_then(|v| v.strip_prefix('v')?.parse::<u32>().ok()) {
                out.extend((2..n).rev().map(|v| p("amd64", Some(&format!("v{v}")))));
                out.push(p("amd64", None));
            }
            out.push(p("386", None));
        }
        ("arm64", variant) => {
            if variant.is_some() {
                out.push(p("arm64", None));
            }
            out.extend(arm_from(7).map(|v| p("arm", Some(&v))));
        }
        ("arm", Some(v)) => {
            if let Some(n) = v.strip_prefix('v').and_then(|n| n.parse::<u32>().ok()) {
                out.extend(arm_from(n).skip(1).map(|v| p("arm", Some(&v))));
            }
        }
        _ => {}
    }
    out
}

/// The entry a client of `wanted` pulls from `entries`, and whether it is of exactly `wanted`.
pub fn select_entry<'a>(
    entries: &'a [IndexEntry],
    wanted: &Platform,
) -> Option<(&'a IndexEntry, bool)> {
    compatible_platforms(wanted)
        .iter()
        .enumerate()
        .find_map(|(rank, candidate)| {
            entries
                .iter()
                .filter(|e| e.is_platform_image())
                .find(|e| e.platform().as_ref() == Some(candidate))
                .map(|e| (e, rank == 0))
        })
}

/// Fetches and parses what `reference` names.
pub async fn fetch(session: &Session, reference: &Reference) -> Result<Inspected, InspectError> {
    let manifest = session
        .pull_manifest(reference, &format!("reading {reference}"))
        .await?
        .ok_or_else(|| InspectError::NotFound {
            reference: reference.to_string(),
            registry: reference.registry().to_owned(),
        })?;
    let content = parse_manifest(&manifest.bytes, &manifest.media_type).map_err(|message| {
        InspectError::Malformed {
            reference: reference.to_string(),
            message,
        }
    })?;
    Ok(Inspected {
        reference: reference.clone(),
        manifest,
        content,
    })
}

/// The platform the config of `image` declares (one blob read).
pub async fn config_platform(
    session: &Session,
    reference: &Reference,
    image: &ImageManifest,
) -> Result<ConfigPlatform, InspectError> {
    let config = session
        .pull_small_blob(
            reference,
            &image.config.digest,
            &format!("reading the config of {reference}"),
        )
        .await?;
    parse_config_platform(&config).map_err(|message| InspectError::Malformed {
        reference: reference.to_string(),
        message,
    })
}

/// The child of `inspected` a client of `wanted` pulls.
#[derive(Clone, Debug)]
pub struct Selected {
    /// The child manifest (for a single image: the image itself).
    pub child: Inspected,
    /// Its platform as the index (or, for a single image, its config) declares it.
    pub platform: String,
    /// Whether it is exactly `wanted` (otherwise a compatible fallback, e.g. arm/v6 for arm/v7).
    pub exact: bool,
    /// The list it was chosen from, if `inspected` is a list.
    pub list_digest: Option<String>,
}

/// Chooses, as Docker would, the image a `wanted` client pulls from `inspected`, and fetches it.
pub async fn select(
    session: &Session,
    inspected: Inspected,
    wanted: &Platform,
) -> Result<Selected, InspectError> {
    let reference = inspected.reference.to_string();
    match &inspected.content {
        Content::Index(entries) => {
            let (entry, exact) =
                select_entry(entries, wanted).ok_or_else(|| InspectError::NoMatch {
                    reference: reference.clone(),
                    wanted: wanted.to_string(),
                    available: describe_platforms(entries),
                })?;
            let child_ref = inspected.reference.clone_with_digest(entry.digest.clone());
            let child = fetch(session, &child_ref).await?;
            Ok(Selected {
                child,
                platform: entry.platform_text(),
                exact,
                list_digest: Some(inspected.manifest.digest.clone()),
            })
        }
        Content::Image(image) => {
            let declared = config_platform(session, &inspected.reference, image).await?;
            let ok = declared
                .platform()
                .and_then(|actual| {
                    compatible_platforms(wanted)
                        .iter()
                        .position(|c| *c == actual)
                })
                .map(|rank| rank == 0);
            match ok {
                Some(exact) => Ok(Selected {
                    platform: declared.to_string(),
                    child: inspected,
                    exact,
                    list_digest: None,
                }),
                None => Err(InspectError::WrongPlatform {
                    reference,
                    wanted: wanted.to_string(),
                    actual: declared.to_string(),
                }),
            }
        }
    }
}

/// `linux/amd64, linux/arm64 (and 2 attestations)`, or `no platform image`.
fn describe_platforms(entries: &[IndexEntry]) -> String {
    let platforms: Vec<String> = entries
        .iter()
        .filter(|e| e.is_platform_image())
        .map(IndexEntry::platform_text)
        .collect();
    let others = entries.len() - platforms.len();
    let mut text = if platforms.is_empty() {
        "no platform image".to_owned()
    } else {
        platforms.join(", ")
    };
    if others > 0 {
        text.push_str(&format!(
            " (and {others} attestation{})",
            if others == 1 { "" } else { "s" }
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(platform: &str, digest: char) -> IndexEntry {
        let parts: Vec<&str> = platform.split('/').collect();
        IndexEntry {
            media_type: DOCKER_MANIFEST.into(),
            digest: format!("sha256:{}", digest.to_string().repeat(64)),
            size: 500,
            os: Some(parts[0].into()),
            architecture: Some(parts[1].into()),
            variant: parts.get(2).map(|v| v.to_string()),
            annotations: BTreeMap::new(),
        }
    }

    fn attestation(about: char, digest: char) -> IndexEntry {
        IndexEntry {
            media_type: OCI_MANIFEST.into(),
            annotations: BTreeMap::from([
                (
                    REFERENCE_TYPE_ANNOTATION.into(),
                    "attestation-manifest".into(),
                ),
                (
                    REFERENCE_DIGEST_ANNOTATION.into(),
                    format!("sha256:{}", about.to_string().repeat(64)),
                ),
            ]),
            ..entry("unknown/unknown", digest)
        }
    }

    /// `index` is a list of (platform, digest letter); checks which letter `wanted` selects.
    #[track_caller]
    fn check(index: &[(&str, char)], wanted: &str, expected: Option<(char, bool)>) {
        let entries: Vec<IndexEntry> = index.iter().map(|(p, d)| entry(p, *d)).collect();
        let wanted = Platform::parse(wanted).unwrap();
        let got = select_entry(&entries, &wanted)
            .map(|(e, exact)| (e.digest.chars().last().unwrap(), exact));
        assert_eq!(got, expected, "{index:?} for {wanted}");
    }

    #[test]
    fn platforms_are_chosen_as_docker_chooses_them() {
        let multi = [
            ("linux/amd64", 'a'),
            ("linux/arm64", 'b'),
            ("linux/arm/v7", 'c'),
        ];
        check(&multi, "linux/amd64", Some(('a', true)));
        check(&multi, "linux/arm64", Some(('b', true)));
        // arm64/v8 is arm64, whichever side spells the variant.
        check(&multi, "linux/arm64/v8", Some(('b', true)));
        check(&[("linux/arm64/v8", 'b')], "linux/arm64", Some(('b', true)));
        check(
            &[("linux/arm64/v8", 'b')],
            "linux/arm64/v8",
            Some(('b', true)),
        );
        check(&multi, "linux/arm/v7", Some(('c', true)));
        // Fallbacks a client of that platform can run, best first.
        check(&multi, "linux/arm/v6", None);
        check(
            &[("linux/arm/v5", 'e'), ("linux/arm/v6", 'f')],
            "linux/arm/v7",
            Some(('f', false)),
        );
        check(&[("linux/arm/v7", 'c')], "linux/arm64", Some(('c', false)));
        check(&[("linux/386", 'i')], "linux/amd64", Some(('i', false)));
        check(
            &[("linux/amd64", 'a'), ("linux/amd64/v2", 'd')],
            "linux/amd64/v3",
            Some(('d', false)),
        );
        // The exact variant is preferred over a compatible one listed first.
        check(
            &[("linux/arm/v6", 'f'), ("linux/arm/v7", 'c')],
            "linux/arm/v7",
            Some(('c', true)),
        );
        // Among equals, the first in the index wins.
        check(
            &[("linux/arm64", 'b'), ("linux/arm64/v8", 'g')],
            "linux/arm64",
            Some(('b', true)),
        );
        check(&multi, "windows/amd64", None);
        check(&multi, "linux/s390x", None);
    }

    #[test]
    fn attestations_are_never_chosen() {
        let entries = vec![attestation('a', 'z'), entry("linux/amd64", 'a')];
        let (e, _) = select_entry(&entries, &Platform::linux_amd64()).unwrap();
        assert!(e.digest.ends_with('a'));
        assert!(entries[0].is_attestation());
        assert!(!entries[0].is_platform_image());
        // An entry without the annotation but with a platform that is not one is kept out too.
        let unknown = IndexEntry {
            media_type: OCI_MANIFEST.into(),
            ..entry("unknown/unknown", 'y')
        };
        assert!(unknown.is_attestation());
        assert_eq!(
            describe_platforms(&[unknown, entry("linux/amd64", 'a'), attestation('a', 'z')]),
            "linux/amd64 (and 2 attestations)"
        );
    }

    #[test]
    fn manifests_and_configs_parse() {
        let list = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json",
            "manifests":[{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","size":528,
            "digest":"sha256:050a","platform":{"architecture":"arm64","os":"linux","variant":"v8"}}]}"#;
        let Content::Index(entries) = parse_manifest(list, DOCKER_MANIFEST_LIST).unwrap() else {
            panic!("an index");
        };
        assert_eq!(entries[0].platform(), Some(Platform::linux_arm64()));
        assert_eq!(entries[0].platform_text(), "linux/arm64/v8");
        let image = br#"{"schemaVersion":2,"config":{"mediaType":"c","digest":"sha256:c","size":3},
            "layers":[{"mediaType":"l","digest":"sha256:l","size":9,"urls":["https://x"]}]}"#;
        let Content::Image(m) = parse_manifest(image, OCI_MANIFEST).unwrap() else {
            panic!("an image");
        };
        assert_eq!(m.config.size, 3);
        assert!(m.layers[0].foreign);
        assert!(parse_manifest(b"{", OCI_MANIFEST).is_err());
        assert!(
            parse_manifest(b"{}", "application/json")
                .unwrap_err()
                .contains("`application/json`")
        );
        let config = parse_config_platform(
            br#"{"architecture":"arm","os":"linux","variant":"v7","config":{}}"#,
        )
        .unwrap();
        assert_eq!(config.to_string(), "linux/arm/v7");
        assert_eq!(config.platform(), Some(Platform::parse("arm/v7").unwrap()));
        assert!(parse_config_platform(br#"{"rootfs":{}}"#).is_err());
    }
}
