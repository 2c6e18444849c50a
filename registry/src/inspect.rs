//! Reading what a reference names (an image manifest, or a Docker manifest list / OCI index with
//! its entries), and choosing the child a client of a given platform would pull.
//!
//! The choice is Docker's (containerd's `platforms.Only`, which the Docker daemon uses for `docker
//! pull --platform`; the rules are in `manifold_proto::platform`): platforms are normalised first,
//! so `linux/arm64/v8` and `linux/arm64` are one platform; the exact platform is preferred, then
//! the ones it can run in order (`arm/v7` → `arm/v6` → `arm/v5`; `arm64` → `arm/v8` → `arm/v7`...;
//! `amd64` → `386`); among equals the first in the index wins. Entries without a platform come
//! last and are judged by their config's platform, as containerd does. An entry is an attestation
//! only when it says so (the `vnd.docker.reference.type: attestation-manifest` annotation or the
//! in-toto artifact type); attestations are never chosen (their `unknown/unknown` matches nothing).

use std::collections::BTreeMap;

use manifold_proto::Platform;
use oci_client::Reference;

use crate::manifest::{DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST};
use crate::session::{RawManifest, RegistryError, Session};

/// The annotation BuildKit puts on attestation entries of an index.
pub const REFERENCE_TYPE_ANNOTATION: &str = "vnd.docker.reference.type";
/// The annotation naming the image an attestation entry is about.
pub const REFERENCE_DIGEST_ANNOTATION: &str = "vnd.docker.reference.digest";
/// The value of [`REFERENCE_TYPE_ANNOTATION`] on an attestation manifest.
pub const ATTESTATION_MANIFEST: &str = "attestation-manifest";
/// The artifact type of in-toto attestations.
pub const IN_TOTO_ARTIFACT_TYPE: &str = "application/vnd.in-toto+json";

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
    /// `platform.os.version`, if any.
    pub os_version: Option<String>,
    /// `platform.os.features`, as written.
    pub os_features: Vec<String>,
    /// `artifactType`, if any.
    pub artifact_type: Option<String>,
    /// Its annotations.
    pub annotations: BTreeMap<String, String>,
    /// The descriptor exactly as the index holds it (field order and unknown fields included),
    /// which `manifest create` copies unchanged.
    #[serde(skip)]
    pub descriptor: serde_json::Map<String, serde_json::Value>,
}

impl IndexEntry {
    /// The normalised platform, or `None` for an entry without one (or with one too malformed to
    /// be a platform, such as an empty architecture). `unknown/unknown` is a platform, which no
    /// machine runs.
    pub fn platform(&self) -> Option<Platform> {
        Platform::from_descriptor(
            self.os.as_deref()?,
            self.architecture.as_deref()?,
            self.variant.as_deref(),
            self.os_version.as_deref(),
            &self.os_features,
        )
        .ok()
    }

    /// The platform as written in the index (`linux/arm64/v8`, `unknown/unknown`,
    /// `windows(10.0.17763.5830)/amd64`), or `(no platform)`.
    pub fn platform_text(&self) -> String {
        let (Some(os), Some(arch)) = (&self.os, &self.architecture) else {
            return "(no platform)".to_owned();
        };
        let mut text = os.clone();
        if self.os_version.is_some() || !self.os_features.is_empty() {
            text.push('(');
            text.push_str(self.os_version.as_deref().unwrap_or(""));
            for f in &self.os_features {
                text.push('+');
                text.push_str(f);
            }
            text.push(')');
        }
        text.push('/');
        text.push_str(arch);
        if let Some(v) = &self.variant {
            text.push('/');
            text.push_str(v);
        }
        text
    }

    /// Whether this is an attestation: annotated `vnd.docker.reference.type:
    /// attestation-manifest` (BuildKit) or of the in-toto artifact type. Nothing else is.
    pub fn is_attestation(&self) -> bool {
        self.annotations
            .get(REFERENCE_TYPE_ANNOTATION)
            .is_some_and(|t| t == ATTESTATION_MANIFEST)
            || self.artifact_type.as_deref() == Some(IN_TOTO_ARTIFACT_TYPE)
    }

    /// Whether this is an image manifest (not a nested list) that is not an attestation.
    pub fn is_image(&self) -> bool {
        !self.is_attestation()
            && (self.media_type == DOCKER_MANIFEST || self.media_type == OCI_MANIFEST)
    }

    /// Whether a client may pull this entry as the image of the platform it names.
    pub fn is_platform_image(&self) -> bool {
        self.is_image() && self.platform().is_some()
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
    /// `os.version`, if any (Windows images).
    pub os_version: Option<String>,
    /// `os.features`, as written.
    pub os_features: Vec<String>,
}

impl ConfigPlatform {
    /// The normalised platform, when it is one.
    pub fn platform(&self) -> Option<Platform> {
        Platform::from_descriptor(
            &self.os,
            &self.architecture,
            self.variant.as_deref(),
            self.os_version.as_deref(),
            &self.os_features,
        )
        .ok()
    }
}

impl std::fmt::Display for ConfigPlatform {
    /// As written: `linux/arm64/v8`, `windows(10.0.17763.5830)/amd64`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.os)?;
        if self.os_version.is_some() || !self.os_features.is_empty() {
            write!(f, "({}", self.os_version.as_deref().unwrap_or(""))?;
            for feature in &self.os_features {
                write!(f, "+{feature}")?;
            }
            f.write_str(")")?;
        }
        write!(f, "/{}", self.architecture)?;
        match &self.variant {
            Some(v) if !v.is_empty() => write!(f, "/{v}"),
            _ => Ok(()),
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
    #[serde(rename = "artifactType", default)]
    artifact_type: Option<String>,
}

#[derive(serde::Deserialize)]
struct RawPlatform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
    #[serde(rename = "os.version", default)]
    os_version: Option<String>,
    #[serde(rename = "os.features", default)]
    os_features: Option<Vec<String>>,
}

#[derive(serde::Deserialize)]
struct RawDocument {
    #[serde(default)]
    manifests: Option<Vec<serde_json::Map<String, serde_json::Value>>>,
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
                .enumerate()
                .map(|(i, raw)| {
                    let d: RawDescriptor = serde_json::from_value(serde_json::Value::Object(
                        raw.clone(),
                    ))
                    .map_err(|e| format!("entry {} of the list is malformed: {e}", i + 1))?;
                    let p = d.platform.as_ref();
                    Ok(IndexEntry {
                        size: size(&d)?,
                        media_type: d.media_type,
                        digest: d.digest,
                        os: p.map(|p| p.os.clone()),
                        architecture: p.map(|p| p.architecture.clone()),
                        variant: p.and_then(|p| p.variant.clone()).filter(|v| !v.is_empty()),
                        os_version: p
                            .and_then(|p| p.os_version.clone())
                            .filter(|v| !v.is_empty()),
                        os_features: p.and_then(|p| p.os_features.clone()).unwrap_or_default(),
                        artifact_type: d.artifact_type,
                        annotations: d.annotations.unwrap_or_default(),
                        descriptor: raw,
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
        os_version: p.os_version.filter(|v| !v.is_empty()),
        os_features: p.os_features.unwrap_or_default(),
    })
}

/// The entries a client of `wanted` would try, best first: the platform images it runs in
/// containerd's order, then the image entries without a platform (to be judged by their config).
pub fn selection_order<'a>(entries: &'a [IndexEntry], wanted: &Platform) -> Vec<&'a IndexEntry> {
    let with_platform: Vec<(&IndexEntry, Platform)> = entries
        .iter()
        .filter(|e| e.is_image())
        .filter_map(|e| Some((e, e.platform()?)))
        .collect();
    let platforms: Vec<Platform> = with_platform.iter().map(|(_, p)| p.clone()).collect();
    let mut out: Vec<&IndexEntry> = wanted
        .preference(&platforms)
        .into_iter()
        .map(|i| with_platform[i].0)
        .collect();
    out.extend(entries.iter().filter(|e| e.is_image() && e.os.is_none()));
    out
}

/// The entry with a platform that a client of `wanted` pulls from `entries`, and whether it is of
/// exactly `wanted`. (Entries without a platform need their config: see [`select`].)
pub fn select_entry<'a>(
    entries: &'a [IndexEntry],
    wanted: &Platform,
) -> Option<(&'a IndexEntry, bool)> {
    selection_order(entries, wanted)
        .into_iter()
        .find_map(|e| Some((e, wanted.matches(&e.platform()?))))
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
            for entry in selection_order(entries, wanted) {
                let child_ref = inspected.reference.clone_with_digest(entry.digest.clone());
                let (platform, exact) = match entry.platform() {
                    Some(p) => (entry.platform_text(), wanted.matches(&p)),
                    None => {
                        // No platform in the index: containerd reads the child's config.
                        let child = fetch(session, &child_ref).await?;
                        let Content::Image(image) = &child.content else {
                            continue;
                        };
                        let declared = config_platform(session, &child_ref, image).await?;
                        match declared.platform().filter(|p| wanted.runs(p)) {
                            Some(p) => {
                                (format!("{declared} (from its config)"), wanted.matches(&p))
                            }
                            None => continue,
                        }
                    }
                };
                let child = fetch(session, &child_ref).await?;
                return Ok(Selected {
                    child,
                    platform,
                    exact,
                    list_digest: Some(inspected.manifest.digest.clone()),
                });
            }
            Err(InspectError::NoMatch {
                reference: reference.clone(),
                wanted: wanted.to_string(),
                available: describe_platforms(entries),
            })
        }
        Content::Image(image) => {
            let declared = config_platform(session, &inspected.reference, image).await?;
            let ok = declared
                .platform()
                .filter(|actual| wanted.runs(actual))
                .map(|actual| wanted.matches(&actual));
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

/// `linux/amd64, linux/arm64, (no platform) (and 2 attestations)`, or `no platform image`.
fn describe_platforms(entries: &[IndexEntry]) -> String {
    let platforms: Vec<String> = entries
        .iter()
        .filter(|e| e.is_image())
        .map(IndexEntry::platform_text)
        .collect();
    let attestations = entries.iter().filter(|e| e.is_attestation()).count();
    let lists = entries.len() - platforms.len() - attestations;
    let mut text = if platforms.is_empty() {
        "no platform image".to_owned()
    } else {
        platforms.join(", ")
    };
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    if attestations > 0 {
        text.push_str(&format!(
            " (and {attestations} attestation{})",
            plural(attestations)
        ));
    }
    if lists > 0 {
        text.push_str(&format!(" (and {lists} nested list{})", plural(lists)));
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
            os_version: None,
            os_features: Vec::new(),
            artifact_type: None,
            annotations: BTreeMap::new(),
            descriptor: serde_json::Map::new(),
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
        // Platforms Manifold once refused are chosen as containerd chooses them.
        check(
            &[("linux/arm/v7", 'c'), ("linux/arm/v8", 'h')],
            "linux/arm64",
            Some(('h', false)),
        );
        check(&[("linux/arm/v8", 'h')], "linux/arm/v8", Some(('h', true)));
        check(
            &[("linux/mips64le", 'm')],
            "linux/mips64le",
            Some(('m', true)),
        );
        check(
            &[("linux/arm64", 'b'), ("linux/arm64/v8.2", 'j')],
            "linux/arm64/v9",
            Some(('j', false)),
        );
    }

    #[test]
    fn entries_without_a_platform_come_last() {
        let mut bare = entry("linux/amd64", 'n');
        bare.os = None;
        bare.architecture = None;
        let entries = vec![bare, entry("linux/386", 'i')];
        let order: Vec<char> = selection_order(&entries, &Platform::linux_amd64())
            .iter()
            .map(|e| e.digest.chars().last().unwrap())
            .collect();
        assert_eq!(order, ['i', 'n']);
        assert_eq!(entries[0].platform_text(), "(no platform)");
        assert!(entries[0].is_image() && !entries[0].is_attestation());
        assert!(!entries[0].is_platform_image());
    }

    #[test]
    fn attestations_are_never_chosen() {
        let entries = vec![attestation('a', 'z'), entry("linux/amd64", 'a')];
        let (e, _) = select_entry(&entries, &Platform::linux_amd64()).unwrap();
        assert!(e.digest.ends_with('a'));
        assert!(entries[0].is_attestation());
        assert!(!entries[0].is_platform_image());
        // Without the annotation, unknown/unknown is a platform no machine runs, not an
        // attestation; an in-toto artifact is one.
        let unknown = IndexEntry {
            media_type: OCI_MANIFEST.into(),
            ..entry("unknown/unknown", 'y')
        };
        assert!(!unknown.is_attestation());
        assert_eq!(
            select_entry(std::slice::from_ref(&unknown), &Platform::linux_amd64()),
            None
        );
        let in_toto = IndexEntry {
            artifact_type: Some(IN_TOTO_ARTIFACT_TYPE.into()),
            ..entry("linux/amd64", 'x')
        };
        assert!(in_toto.is_attestation());
        let other_reference = IndexEntry {
            annotations: BTreeMap::from([(REFERENCE_TYPE_ANNOTATION.into(), "sbom".into())]),
            ..entry("linux/amd64", 'w')
        };
        assert!(!other_reference.is_attestation());
        assert_eq!(
            describe_platforms(&[unknown, entry("linux/amd64", 'a'), attestation('a', 'z')]),
            "unknown/unknown, linux/amd64 (and 1 attestation)"
        );
    }

    #[test]
    fn manifests_and_configs_parse() {
        let list = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json",
            "manifests":[{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","size":528,
            "digest":"sha256:050a","platform":{"architecture":"arm64","os":"linux","variant":"v8"}},
            {"mediaType":"application/vnd.docker.distribution.manifest.v2+json","size":9,"digest":"sha256:0b",
            "platform":{"architecture":"amd64","os":"windows","os.version":"10.0.17763.5830","os.features":["win32k"]},"x-extra":1}]}"#;
        let Content::Index(entries) = parse_manifest(list, DOCKER_MANIFEST_LIST).unwrap() else {
            panic!("an index");
        };
        assert_eq!(entries[0].platform(), Some(Platform::linux_arm64()));
        assert_eq!(entries[0].platform_text(), "linux/arm64/v8");
        assert_eq!(
            entries[1].platform_text(),
            "windows(10.0.17763.5830+win32k)/amd64"
        );
        assert_eq!(
            entries[1].platform().unwrap().to_string(),
            "windows(10.0.17763.5830+win32k)/amd64"
        );
        assert_eq!(entries[1].descriptor["x-extra"], 1, "kept verbatim");
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
