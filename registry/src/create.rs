//! `manifold manifest create`: merging existing images into one list under a tag, directly in the
//! registries (no Docker daemon, no local staging copy to clean up).
//!
//! Three steps, the first two writing nothing:
//! 1. [`resolve`]: each source is read; an image's platform comes from its config (os,
//!    architecture, variant, os.version, os.features as written, as `docker manifest create`
//!    takes them) or from `--annotate` (as given);
//! 2. [`gather`] (pure): the entries in order. A list source's entries are copied one by one with
//!    their descriptors unchanged (platform fields, annotations, unknown fields, order), whatever
//!    their platform, with or without one; attestations (by annotation or in-toto type: see
//!    [`IndexEntry::is_attestation`]) are carried too, as `docker buildx imagetools create`
//!    carries them, but only with the image they are about, and left out when asked; nested
//!    lists are left out, named. A digest listed twice is listed
//!    once; two images of one platform name both sources. One image media type;
//!    [`build_list`] writes the list ([`crate::manifest::assemble_descriptors`]);
//! 3. [`push`]: every child not yet in the target repository is put there by digest (blobs mounted
//!    from another repository of the same registry, else copied), then
//!    [`crate::publish::publish_assembled`] checks them all and writes the tag, last. A failure
//!    before that leaves the target tag untouched.

use std::collections::BTreeSet;

use manifold_proto::{Platform, PlatformSpec};
use oci_client::Reference;
use sha2::{Digest as _, Sha256};

use crate::inspect::{
    self, ConfigPlatform, Content, IndexEntry, InspectError, REFERENCE_DIGEST_ANNOTATION,
};
use crate::manifest::{
    self, ChildImage, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, ExtraEntry, ListKind, ManifestError,
    ManifestList, OCI_INDEX, OCI_MANIFEST,
};
pub use crate::publish::Transfer;
use crate::publish::{self, Published, bring};
use crate::session::{RegistryConfig, RegistryError, Session};
use crate::tag_template::{TagTemplate, TagTemplateError};

/// Platforms looked for by `--from-arch-tags` when none are named.
pub const COMMON_PLATFORMS: &[&str] = &[
    "linux/amd64",
    "linux/arm64",
    "linux/arm/v7",
    "linux/arm/v6",
    "linux/386",
    "linux/ppc64le",
    "linux/s390x",
    "linux/riscv64",
];

/// Why a list cannot be created. Nothing has been written under the target tag when one of
/// these is returned.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// A value is not an image reference.
    #[error(
        "`{value}` is not an image reference: {reason}; expected e.g. registry.example.com/team/app:1.0"
    )]
    BadReference {
        /// The value as given.
        value: String,
        /// The parser's complaint.
        reason: String,
    },
    /// The target is a digest.
    #[error("target `{0}` must be a tag, not a digest: the list is pushed under a tag")]
    TargetNeedsTag(String),
    /// A source does not exist.
    #[error(
        "source `{image}` not found: {registry} has no such manifest; check the repository and tag"
    )]
    SourceNotFound {
        /// The source as given.
        image: String,
        /// Its registry.
        registry: String,
    },
    /// A source cannot be read as a manifest.
    #[error("source `{image}` cannot be read: {message}")]
    Malformed {
        /// The source.
        image: String,
        /// What is wrong.
        message: String,
    },
    /// An image whose config names no platform Manifold knows.
    #[error(
        "source `{image}` says its platform is `{declared}`, which is not a platform; give it one with --annotate {image}=os/arch[/variant]"
    )]
    UnknownPlatform {
        /// The source.
        image: String,
        /// What its config says.
        declared: String,
    },
    /// `--annotate` for something that is not a source.
    #[error("--annotate names `{image}`, which is not among the sources ({sources})")]
    AnnotateUnknownSource {
        /// The value given.
        image: String,
        /// The sources, comma-separated.
        sources: String,
    },
    /// `--annotate` for a source that is a list.
    #[error(
        "--annotate `{image}`: that source is a list, whose entries already name their platforms; annotate single images only"
    )]
    AnnotateList {
        /// The source.
        image: String,
    },
    /// Two sources give the same platform.
    #[error(
        "two images for {platform}: {first} and {second}; keep one per platform, or correct a wrong platform with --annotate SOURCE=os/arch"
    )]
    DuplicatePlatform {
        /// The platform.
        platform: String,
        /// One source, described.
        first: String,
        /// The other.
        second: String,
    },
    /// Docker and OCI images together.
    #[error(
        "cannot mix media types in one list: {docker} gives a Docker schema2 image but {oci} an OCI image; push them in one format (e.g. `skopeo copy --format oci` or `--format v2s2`)"
    )]
    MixedMediaTypes {
        /// A Docker source, described.
        docker: String,
        /// An OCI source, described.
        oci: String,
    },
    /// `--media-type docker` for OCI images.
    #[error(
        "a Docker manifest list cannot hold OCI images such as {image}: use --media-type oci (or leave it out), or push the images as Docker schema2"
    )]
    DockerListOfOci {
        /// An OCI source, described.
        image: String,
    },
    /// No platform image at all.
    #[error("no platform image among the sources: {0}")]
    NoImages(String),
    /// `--amend` on something that is not a list.
    #[error(
        "--amend: `{0}` is a single image, not a list; drop --amend to replace it with a new list"
    )]
    AmendNotAList(String),
    /// `--from-arch-tags` found nothing.
    #[error(
        "no per-arch tags of `{tag}` in {repository}: looked for {tried} (template `{template}`); push them first, or name the sources"
    )]
    NoArchTags {
        /// The list's tag.
        tag: String,
        /// registry/repository.
        repository: String,
        /// The tags looked for, comma-separated.
        tried: String,
        /// The template.
        template: String,
    },
    /// `--from-arch-tags --platform P` and P's tag is missing.
    #[error("no {platform} image: {repository} has no tag `{tag}` (template `{template}`)")]
    MissingArchTag {
        /// The platform asked for.
        platform: String,
        /// The tag looked for.
        tag: String,
        /// registry/repository.
        repository: String,
        /// The template.
        template: String,
    },
    /// The list cannot be built.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// Per-arch tags cannot be named.
    #[error(transparent)]
    TagTemplate(#[from] TagTemplateError),
    /// Talking to a registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

impl From<InspectError> for CreateError {
    fn from(e: InspectError) -> Self {
        match e {
            InspectError::NotFound {
                reference,
                registry,
            } => CreateError::SourceNotFound {
                image: reference,
                registry,
            },
            InspectError::Registry(e) => CreateError::Registry(e),
            other => CreateError::Malformed {
                image: String::new(),
                message: other.to_string(),
            },
        }
    }
}

/// What to merge, as the user put it.
#[derive(Clone, Debug, Default)]
pub struct CreateRequest {
    /// Where the list goes (`registry/repository:tag`).
    pub target: String,
    /// The images and lists to merge, as given.
    pub sources: Vec<String>,
    /// `--annotate SOURCE=PLATFORM`: the platform to list a single-image source under, instead
    /// of the one its config declares, written as given (containerd's `Parse`).
    pub platform_overrides: Vec<(String, PlatformSpec)>,
    /// Start from the list already under the target: sources replace its entries of their
    /// platforms, its other entries stay.
    pub amend: bool,
    /// The list type; `None` follows the images.
    pub list_kind: Option<ListKind>,
    /// Carry the attestation entries of list sources (OCI indexes only), as `docker buildx
    /// imagetools create` does; `manifold manifest create` does unless `--exclude-attestations`.
    pub include_attestations: bool,
}

/// A source as read from its registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedSource {
    /// As given.
    pub given: String,
    /// Parsed.
    pub reference: Reference,
    /// Digest of the manifest it names.
    pub digest: String,
    /// Its media type.
    pub media_type: String,
    /// Its size in bytes.
    pub size: u64,
    /// What it is.
    pub kind: SourceKind,
}

/// An image or a list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// A single image and the platform its config declares.
    Image(ConfigPlatform),
    /// A list and its entries.
    Index(Vec<IndexEntry>),
}

/// An entry of the list to be, and where it comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedEntry {
    /// The descriptor written into the list: a list source's entry exactly as found, or for a
    /// single image its media type, digest, size and the platform its config (or `--annotate`)
    /// gives, field for field.
    pub descriptor: serde_json::Map<String, serde_json::Value>,
    /// `sha256:<hex>` of the manifest.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its media type.
    pub media_type: String,
    /// Its normalised platform; `None` for an entry without one.
    pub platform: Option<Platform>,
    /// The platform as written (`linux/arm64/v8`, `(no platform)`).
    pub platform_text: String,
    /// Whether it is an attestation (see [`IndexEntry::is_attestation`]).
    pub attestation: bool,
    /// For an attestation, the digest of the image it is about.
    pub about: Option<String>,
    /// Where it comes from, for messages (`` `app:1.0-x86_64` ``, `` list `base:1` ``).
    pub from: String,
    /// Its manifest in the source's repository (`registry/repository@digest`).
    pub origin: Reference,
}

impl PlannedEntry {
    /// The platform as shown: as written, `(attestation)` added for attestations.
    pub fn shown(&self) -> String {
        if self.attestation {
            format!("{} (attestation)", self.platform_text)
        } else {
            self.platform_text.clone()
        }
    }

    /// Whether two entries claim one platform (attestations and `unknown` platforms claim none).
    fn same_platform(&self, other: &PlannedEntry) -> bool {
        fn claims(e: &PlannedEntry) -> Option<&Platform> {
            e.platform
                .as_ref()
                .filter(|p| !e.attestation && p.os() != "unknown" && p.architecture() != "unknown")
        }
        matches!((claims(self), claims(other)), (Some(a), Some(b)) if a == b)
    }
}

/// An entry of a list source left out, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// Where it was.
    pub from: String,
    /// Its digest.
    pub digest: String,
    /// Its platform as written.
    pub platform: String,
    /// Why it was left out.
    pub reason: String,
}

/// What [`gather`] decided.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Gathered {
    /// The list's entries, in the order they are written.
    pub entries: Vec<PlannedEntry>,
    /// Entries left out.
    pub skipped: Vec<Skipped>,
    /// Things the user should know (overridden platforms, replaced entries, duplicates dropped).
    pub notes: Vec<String>,
}

/// The list to push and everything that goes into it.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Where it goes.
    pub target: Reference,
    /// Its parts.
    pub gathered: Gathered,
    /// Its bytes.
    pub list: ManifestList,
}

impl Plan {
    /// `sha256:<hex>` of the list.
    pub fn digest(&self) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(&self.list.bytes)))
    }
}

/// What [`push`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushReport {
    /// Per child, in list order.
    pub transfers: Vec<Transfer>,
    /// The list written, unless a dry run.
    pub published: Option<Published>,
}

/// Parses an image reference, naming the bad value.
pub fn parse_reference(value: &str) -> Result<Reference, CreateError> {
    crate::reference::parse(value.trim()).map_err(|e| CreateError::BadReference {
        value: value.to_owned(),
        reason: e.to_string(),
    })
}

/// The registries `request` touches (the target's and every source's).
pub fn registries(request: &CreateRequest) -> Result<Vec<String>, CreateError> {
    let mut out = BTreeSet::new();
    out.insert(parse_reference(&request.target)?.registry().to_owned());
    for s in &request.sources {
        out.insert(parse_reference(s)?.registry().to_owned());
    }
    Ok(out.into_iter().collect())
}

/// A session for everything `request` touches.
pub async fn open_session(
    config: &RegistryConfig,
    request: &CreateRequest,
) -> Result<Session, CreateError> {
    let registries = registries(request)?;
    let refs: Vec<&str> = registries.iter().map(String::as_str).collect();
    Ok(Session::open(config, &refs).await?)
}

/// The sources `--from-arch-tags` finds for `target`: its per-arch tags named by `template`, for
/// `platforms` (each must exist) or, when empty, for whichever of [`COMMON_PLATFORMS`] exist.
pub async fn arch_tag_sources(
    session: &Session,
    target: &str,
    template: &TagTemplate,
    platforms: &[Platform],
) -> Result<Vec<String>, CreateError> {
    let target = parse_reference(target)?;
    let tag = target.tag().unwrap_or("latest").to_owned();
    let repository = format!("{}/{}", target.registry(), target.repository());
    let existing: BTreeSet<String> = session.list_tags(&target).await?.into_iter().collect();
    let explicit = !platforms.is_empty();
    let candidates: Vec<Platform> = if explicit {
        platforms.to_vec()
    } else {
        COMMON_PLATFORMS
            .iter()
            .map(|p| Platform::parse(p).expect("common platforms parse"))
            .collect()
    };
    let mut found = Vec::new();
    let mut tried = Vec::new();
    for platform in candidates {
        let name = template.render(&tag, &platform)?;
        if existing.contains(&name) {
            found.push(format!("{repository}:{name}"));
        } else if explicit {
            return Err(CreateError::MissingArchTag {
                platform: platform.to_string(),
                tag: name,
                repository,
                template: template.to_string(),
            });
        }
        tried.push(name);
    }
    if found.is_empty() {
        return Err(CreateError::NoArchTags {
            tag,
            repository,
            tried: tried.join(", "),
            template: template.to_string(),
        });
    }
    Ok(found)
}

/// Reads one source (its manifest and, for an image, its config).
pub async fn resolve(session: &Session, given: &str) -> Result<ResolvedSource, CreateError> {
    let reference = parse_reference(given)?;
    let named = |e: CreateError| match e {
        CreateError::Malformed { message, .. } => CreateError::Malformed {
            image: given.to_owned(),
            message,
        },
        CreateError::SourceNotFound { registry, .. } => CreateError::SourceNotFound {
            image: given.to_owned(),
            registry,
        },
        other => other,
    };
    let inspected = inspect::fetch(session, &reference)
        .await
        .map_err(|e| named(e.into()))?;
    let kind = match &inspected.content {
        Content::Index(entries) => SourceKind::Index(entries.clone()),
        Content::Image(image) => SourceKind::Image(
            inspect::config_platform(session, &inspected.reference, image)
                .await
                .map_err(|e| named(e.into()))?,
        ),
    };
    Ok(ResolvedSource {
        given: given.to_owned(),
        digest: inspected.manifest.digest.clone(),
        media_type: inspected.manifest.media_type.clone(),
        size: inspected.manifest.bytes.len() as u64,
        reference,
        kind,
    })
}

/// Decides the list's entries from resolved `sources` (see the module docs); `base` is the list
/// already under the target, for `--amend`. Pure.
pub fn gather(
    sources: &[ResolvedSource],
    base: Option<&ResolvedSource>,
    overrides: &[(String, PlatformSpec)],
    include_attestations: bool,
) -> Result<Gathered, CreateError> {
    for (name, _) in overrides {
        match sources.iter().find(|s| s.given == *name) {
            None => {
                return Err(CreateError::AnnotateUnknownSource {
                    image: name.clone(),
                    sources: sources
                        .iter()
                        .map(|s| s.given.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            Some(ResolvedSource {
                kind: SourceKind::Index(_),
                ..
            }) => {
                return Err(CreateError::AnnotateList {
                    image: name.clone(),
                });
            }
            Some(_) => {}
        }
    }

    let mut out = Gathered::default();
    for source in sources {
        let origin = |digest: &str| source.reference.clone_with_digest(digest.to_owned());
        match &source.kind {
            SourceKind::Image(declared) => {
                let from = format!("`{}`", source.given);
                let overridden = overrides
                    .iter()
                    .rev()
                    .find(|(name, _)| *name == source.given)
                    .map(|(_, p)| p.clone());
                let (written, platform) = match (overridden, declared.platform()) {
                    (Some(spec), actual) => {
                        let p = spec.normalize();
                        if actual.as_ref() != Some(&p) {
                            out.notes.push(format!(
                                "{from} declares {declared} in its config; listed as {p} as --annotate asks"
                            ));
                        }
                        let written = ConfigPlatform {
                            os: spec.os,
                            architecture: spec.architecture,
                            variant: spec.variant,
                            os_version: spec.os_version,
                            os_features: spec.os_features,
                        };
                        (written, p)
                    }
                    (None, Some(p)) => (declared.clone(), p),
                    (None, None) => {
                        return Err(CreateError::UnknownPlatform {
                            image: source.given.clone(),
                            declared: declared.to_string(),
                        });
                    }
                };
                let mut descriptor = serde_json::Map::new();
                descriptor.insert("mediaType".into(), source.media_type.clone().into());
                descriptor.insert("digest".into(), source.digest.clone().into());
                descriptor.insert("size".into(), source.size.into());
                descriptor.insert("platform".into(), platform_json(&written));
                add_entry(
                    &mut out,
                    PlannedEntry {
                        descriptor,
                        digest: source.digest.clone(),
                        size: source.size,
                        media_type: source.media_type.clone(),
                        platform: Some(platform),
                        platform_text: written.to_string(),
                        attestation: false,
                        about: None,
                        from,
                        origin: origin(&source.digest),
                    },
                )?;
            }
            SourceKind::Index(entries) => {
                let from = format!("list `{}`", source.given);
                flatten(&mut out, entries, &from, &origin, include_attestations)?;
            }
        }
    }

    if let Some(base) = base {
        let SourceKind::Index(entries) = &base.kind else {
            return Err(CreateError::AmendNotAList(base.given.clone()));
        };
        let from = format!("the list now under `{}`", base.given);
        let mut kept = Gathered::default();
        flatten(
            &mut kept,
            entries,
            &from,
            &|d: &str| base.reference.clone_with_digest(d.to_owned()),
            include_attestations,
        )?;
        // The existing list's order stays; a source's entry takes the place of the entry of its
        // platform (or digest), the sources' other entries follow.
        let mut new = std::mem::take(&mut out.entries);
        for old in kept.entries {
            match new
                .iter()
                .position(|n| n.digest == old.digest || n.same_platform(&old))
            {
                Some(i) => {
                    let replacement = new.remove(i);
                    if replacement.digest != old.digest {
                        out.notes.push(format!(
                            "{} replaces {} {} of {from}",
                            replacement.from, old.platform_text, old.digest
                        ));
                    }
                    out.entries.push(replacement);
                }
                None => out.entries.push(old),
            }
        }
        out.entries.extend(new);
        out.skipped.extend(kept.skipped);
    }

    if !out.entries.iter().any(|e| !e.attestation) {
        let mut reason = sources
            .iter()
            .map(|s| format!("`{}`", s.given))
            .collect::<Vec<_>>()
            .join(", ");
        let left_out: Vec<String> = out
            .skipped
            .iter()
            .map(|s| format!("{}: {}", s.platform, s.reason))
            .chain(
                out.entries
                    .iter()
                    .map(|e| format!("{}: an attestation", e.platform_text)),
            )
            .collect();
        if !left_out.is_empty() {
            reason.push_str(&format!(
                " hold only entries that are not images ({})",
                left_out.join("; ")
            ));
        }
        return Err(CreateError::NoImages(reason));
    }

    // An attestation is carried only with the image it is about.
    let digests: BTreeSet<String> = out
        .entries
        .iter()
        .filter(|e| !e.attestation)
        .map(|e| e.digest.clone())
        .collect();
    let mut skipped = Vec::new();
    out.entries.retain(|e| {
        let keep = !e.attestation || e.about.as_ref().is_none_or(|d| digests.contains(d));
        if !keep {
            skipped.push(Skipped {
                from: e.from.clone(),
                digest: e.digest.clone(),
                platform: e.platform_text.clone(),
                reason: "attestation of an image not in the list".to_owned(),
            });
        }
        keep
    });
    out.skipped.extend(skipped);

    check_media_types(&out.entries)?;
    Ok(out)
}

/// A descriptor's `platform` object for `p`, with the fields it has.
fn platform_json(p: &ConfigPlatform) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    m.insert("architecture".into(), p.architecture.clone().into());
    m.insert("os".into(), p.os.clone().into());
    if let Some(v) = &p.os_version {
        m.insert("os.version".into(), v.clone().into());
    }
    if !p.os_features.is_empty() {
        m.insert("os.features".into(), p.os_features.clone().into());
    }
    if let Some(v) = &p.variant {
        m.insert("variant".into(), v.clone().into());
    }
    m.into()
}

/// Adds a list's `entries` to `out` as they are (attestations only when
/// `include_attestations`), and records what is left out.
fn flatten(
    out: &mut Gathered,
    entries: &[IndexEntry],
    from: &str,
    origin: &dyn Fn(&str) -> Reference,
    include_attestations: bool,
) -> Result<(), CreateError> {
    for entry in entries {
        let skip = |reason: &str| Skipped {
            from: from.to_owned(),
            digest: entry.digest.clone(),
            platform: entry.platform_text(),
            reason: reason.to_owned(),
        };
        let attestation = entry.is_attestation();
        if attestation && !include_attestations {
            out.skipped.push(skip(
                "an attestation, left out as --exclude-attestations asks",
            ));
            continue;
        }
        if !attestation && !entry.is_image() {
            out.skipped.push(skip(&format!(
                "`{}` is not an image manifest (nested lists are not supported)",
                entry.media_type
            )));
            continue;
        }
        let mut descriptor = entry.descriptor.clone();
        if descriptor.is_empty() {
            descriptor.insert("mediaType".into(), entry.media_type.clone().into());
            descriptor.insert("digest".into(), entry.digest.clone().into());
            descriptor.insert("size".into(), entry.size.into());
        }
        add_entry(
            out,
            PlannedEntry {
                descriptor,
                digest: entry.digest.clone(),
                size: entry.size,
                media_type: entry.media_type.clone(),
                platform: entry.platform(),
                platform_text: entry.platform_text(),
                attestation,
                about: entry
                    .annotations
                    .get(REFERENCE_DIGEST_ANNOTATION)
                    .filter(|_| attestation)
                    .cloned(),
                from: from.to_owned(),
                origin: origin(&entry.digest),
            },
        )?;
    }
    Ok(())
}

fn add_entry(out: &mut Gathered, entry: PlannedEntry) -> Result<(), CreateError> {
    if let Some(first) = out
        .entries
        .iter()
        .find(|e| e.digest != entry.digest && e.same_platform(&entry))
    {
        return Err(CreateError::DuplicatePlatform {
            platform: entry
                .platform
                .as_ref()
                .map_or_else(|| entry.platform_text.clone(), Platform::to_string),
            first: format!("{} ({})", first.from, short(&first.digest)),
            second: format!("{} ({})", entry.from, short(&entry.digest)),
        });
    }
    if let Some(first) = out.entries.iter().find(|e| e.digest == entry.digest) {
        out.notes.push(format!(
            "{} and {} hold the same {} {}; listed once",
            first.from, entry.from, entry.platform_text, entry.digest
        ));
        return Ok(());
    }
    out.entries.push(entry);
    Ok(())
}

fn check_media_types(entries: &[PlannedEntry]) -> Result<(), CreateError> {
    let images = || entries.iter().filter(|e| !e.attestation);
    let docker = images().find(|e| e.media_type == DOCKER_MANIFEST);
    let oci = images().find(|e| e.media_type == OCI_MANIFEST);
    if let (Some(d), Some(o)) = (docker, oci) {
        return Err(CreateError::MixedMediaTypes {
            docker: d.from.clone(),
            oci: o.from.clone(),
        });
    }
    Ok(())
}

/// `sha256:0123456789ab`: enough of a digest to tell it apart in a message.
fn short(digest: &str) -> &str {
    &digest[..digest.len().min(19)]
}

/// Builds the list `gathered` gives, of `kind` when asked: a Docker manifest list when every
/// image is a Docker schema2 manifest (and no attestation is carried), else an OCI index; the
/// entries in their order, each descriptor as planned.
pub fn build_list(
    gathered: &Gathered,
    kind: Option<ListKind>,
) -> Result<ManifestList, CreateError> {
    let images = || gathered.entries.iter().filter(|e| !e.attestation);
    let docker = images().find(|e| e.media_type == DOCKER_MANIFEST);
    let oci = images().find(|e| e.media_type == OCI_MANIFEST);
    if let (Some(o), Some(ListKind::Docker)) = (oci, kind) {
        return Err(CreateError::DockerListOfOci {
            image: o.from.clone(),
        });
    }
    let media_type = match (kind, docker, oci) {
        (Some(kind), _, _) => kind.media_type(),
        (None, Some(_), None) => DOCKER_MANIFEST_LIST,
        _ => OCI_INDEX,
    };
    if let Some(a) = gathered.entries.iter().find(|e| {
        e.attestation
            && (media_type != OCI_INDEX || docker.is_some() || e.media_type != OCI_MANIFEST)
    }) {
        return Err(ManifestError::ExtraNeedsOci {
            digest: a.digest.clone(),
            media_type: a.media_type.clone(),
        }
        .into());
    }
    let descriptors: Vec<_> = gathered
        .entries
        .iter()
        .map(|e| e.descriptor.clone())
        .collect();
    Ok(manifest::assemble_descriptors(&descriptors, media_type)?)
}

/// Resolves every source and decides the list. Reads only.
pub async fn plan(session: &Session, request: &CreateRequest) -> Result<Plan, CreateError> {
    let target = parse_reference(&request.target)?;
    if target.digest().is_some() {
        return Err(CreateError::TargetNeedsTag(request.target.clone()));
    }
    let mut sources = Vec::with_capacity(request.sources.len());
    for given in &request.sources {
        sources.push(resolve(session, given).await?);
    }
    let base = if request.amend {
        match resolve(session, &request.target).await {
            Ok(base) => Some(base),
            Err(CreateError::SourceNotFound { .. }) => None,
            Err(e) => return Err(e),
        }
    } else {
        None
    };
    let mut gathered = gather(
        &sources,
        base.as_ref(),
        &request.platform_overrides,
        request.include_attestations,
    )?;
    if request.amend && base.is_none() {
        gathered.notes.push(format!(
            "--amend: nothing is under `{}` yet; the list holds the sources only",
            request.target
        ));
    }
    let list = build_list(&gathered, request.list_kind)?;
    Ok(Plan {
        target,
        gathered,
        list,
    })
}

/// Puts every entry of `plan` into the target repository, then publishes the list under the
/// target tag (last). With `dry_run`, only reads, and reports what it would do.
pub async fn push(
    session: &Session,
    plan: &Plan,
    dry_run: bool,
) -> Result<PushReport, CreateError> {
    let mut transfers = Vec::new();
    for e in &plan.gathered.entries {
        let mut t = Transfer {
            platform: e.shown(),
            digest: e.digest.clone(),
            from: e.from.clone(),
            ..Transfer::default()
        };
        bring(session, &plan.target, &e.origin, dry_run, &mut t).await?;
        transfers.push(t);
    }
    if dry_run {
        return Ok(PushReport {
            transfers,
            published: None,
        });
    }
    let mut children = Vec::new();
    let mut others = Vec::new();
    for e in &plan.gathered.entries {
        match (&e.platform, e.attestation) {
            (Some(platform), false) => children.push(ChildImage {
                platform: platform.clone(),
                digest: e.digest.clone(),
                size: e.size,
                media_type: e.media_type.clone(),
                attestations: Vec::new(),
            }),
            _ => others.push(ExtraEntry {
                digest: e.digest.clone(),
                size: e.size,
                media_type: e.media_type.clone(),
                os: e.shown(),
                architecture: String::new(),
                annotations: Default::default(),
            }),
        }
    }
    let published = publish::publish_assembled(
        session,
        &plan.target,
        &[],
        &children,
        publish::Children::Unchecked,
        &others,
        &plan.list,
        None,
    )
    .await?;
    Ok(PushReport {
        transfers,
        published: Some(published),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::inspect::REFERENCE_TYPE_ANNOTATION;

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn config(platform: &str) -> ConfigPlatform {
        let parts: Vec<&str> = platform.split('/').collect();
        ConfigPlatform {
            os: parts[0].into(),
            architecture: parts[1].into(),
            variant: parts.get(2).map(|v| v.to_string()),
            os_version: None,
            os_features: Vec::new(),
        }
    }

    fn image(given: &str, platform: &str, d: char, media_type: &str) -> ResolvedSource {
        image_of(given, config(platform), d, media_type)
    }

    fn image_of(
        given: &str,
        declared: ConfigPlatform,
        d: char,
        media_type: &str,
    ) -> ResolvedSource {
        ResolvedSource {
            given: given.into(),
            reference: given.parse().unwrap(),
            digest: digest(d),
            media_type: media_type.into(),
            size: 500,
            kind: SourceKind::Image(declared),
        }
    }

    /// An entry as an index holds it; `platform` `-` for none.
    fn entry(platform: &str, d: char, media_type: &str) -> IndexEntry {
        let mut descriptor = serde_json::json!({
            "mediaType": media_type, "digest": digest(d), "size": 400,
        });
        let parts: Vec<&str> = platform.split('/').collect();
        if platform != "-" {
            let mut p = serde_json::json!({"os": parts[0], "architecture": parts[1]});
            if let Some(v) = parts.get(2) {
                p["variant"] = (*v).into();
            }
            descriptor["platform"] = p;
        }
        let bytes = serde_json::to_vec(&serde_json::json!({"manifests": [descriptor]})).unwrap();
        let Content::Index(mut entries) = inspect::parse_manifest(&bytes, OCI_INDEX).unwrap()
        else {
            panic!("an index")
        };
        entries.remove(0)
    }

    fn attestation(about: char, d: char) -> IndexEntry {
        let mut e = entry("unknown/unknown", d, OCI_MANIFEST);
        let annotations = BTreeMap::from([
            (
                REFERENCE_TYPE_ANNOTATION.to_owned(),
                "attestation-manifest".to_owned(),
            ),
            (REFERENCE_DIGEST_ANNOTATION.to_owned(), digest(about)),
        ]);
        e.descriptor.insert(
            "annotations".into(),
            serde_json::to_value(&annotations).unwrap(),
        );
        e.annotations = annotations;
        e
    }

    fn list(given: &str, entries: Vec<IndexEntry>) -> ResolvedSource {
        ResolvedSource {
            given: given.into(),
            reference: given.parse().unwrap(),
            digest: digest('f'),
            media_type: OCI_INDEX.into(),
            size: 900,
            kind: SourceKind::Index(entries),
        }
    }

    /// (platform as shown, digest letter) of the gathered entries, in list order.
    fn shown(g: &Gathered) -> Vec<(String, char)> {
        g.entries
            .iter()
            .map(|e| (e.shown(), e.digest.chars().last().unwrap()))
            .collect()
    }

    #[track_caller]
    fn check(sources: &[ResolvedSource], expected: &[(&str, char)]) -> Gathered {
        let g = gather(sources, None, &[], false).unwrap_or_else(|e| panic!("{e}"));
        let expected: Vec<(String, char)> =
            expected.iter().map(|(p, d)| (p.to_string(), *d)).collect();
        assert_eq!(shown(&g), expected);
        g
    }

    #[track_caller]
    fn check_err(sources: &[ResolvedSource], expected: &str) {
        let err = gather(sources, None, &[], false).unwrap_err().to_string();
        assert_eq!(err, expected);
    }

    fn list_entries(g: &Gathered) -> Vec<serde_json::Value> {
        let bytes = build_list(g, None).unwrap().bytes;
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        v["manifests"].as_array().unwrap().clone()
    }

    const A: &str = "reg.example.com/app:1.0-x86_64";
    const B: &str = "reg.example.com/app:1.0-aarch64";

    #[test]
    fn per_arch_images_take_every_platform_field_of_their_config() {
        let windows = ConfigPlatform {
            os_version: Some("10.0.17763.5830".into()),
            os_features: vec!["win32k".into()],
            ..config("windows/amd64")
        };
        let g = check(
            &[
                image(A, "linux/amd64", 'a', DOCKER_MANIFEST),
                image(B, "linux/arm64/v8", 'b', DOCKER_MANIFEST),
                image_of("reg.example.com/app:1.0-win", windows, '9', DOCKER_MANIFEST),
            ],
            &[
                ("linux/amd64", 'a'),
                ("linux/arm64/v8", 'b'),
                ("windows(10.0.17763.5830+win32k)/amd64", '9'),
            ],
        );
        assert_eq!(g.entries[1].from, format!("`{B}`"));
        assert_eq!(
            g.entries[1].origin.to_string(),
            format!("reg.example.com/app@{}", digest('b'))
        );
        assert_eq!(
            build_list(&g, None).unwrap().media_type,
            DOCKER_MANIFEST_LIST
        );
        let e = list_entries(&g);
        assert_eq!(
            e[1]["platform"],
            serde_json::json!({"architecture": "arm64", "os": "linux", "variant": "v8"})
        );
        assert_eq!(
            e[2]["platform"],
            serde_json::json!({"architecture": "amd64", "os": "windows",
                "os.version": "10.0.17763.5830", "os.features": ["win32k"]})
        );
        assert_eq!(e[0]["size"], 500);
        assert_eq!(e[0]["mediaType"], DOCKER_MANIFEST);
    }

    #[test]
    fn list_entries_are_copied_verbatim_whatever_their_platform() {
        let mut odd = entry("linux/arm/v8", '8', OCI_MANIFEST);
        odd.descriptor.insert(
            "annotations".into(),
            serde_json::json!({"org.example": "x"}),
        );
        odd.descriptor.insert("x-unknown".into(), 7.into());
        let base = list(
            "reg.example.com/base:1",
            vec![
                entry("linux/amd64", 'a', OCI_MANIFEST),
                attestation('a', 'e'),
                odd,
                entry("-", '0', OCI_MANIFEST),
                entry("linux/mips64le", '4', OCI_MANIFEST),
                entry("linux/arm64/v8.2", '5', OCI_MANIFEST),
                entry("unknown/unknown", '6', OCI_MANIFEST),
                entry("linux/s390x", '7', OCI_INDEX),
            ],
        );
        let g = check(
            std::slice::from_ref(&base),
            &[
                ("linux/amd64", 'a'),
                ("linux/arm/v8", '8'),
                ("(no platform)", '0'),
                ("linux/mips64le", '4'),
                ("linux/arm64/v8.2", '5'),
                ("unknown/unknown", '6'),
            ],
        );
        let reasons: Vec<(String, String)> = g
            .skipped
            .iter()
            .map(|s| (s.platform.clone(), s.reason.clone()))
            .collect();
        assert_eq!(
            reasons,
            [
                (
                    "unknown/unknown".to_owned(),
                    "an attestation, left out as --exclude-attestations asks".to_owned()
                ),
                (
                    "linux/s390x".to_owned(),
                    "`application/vnd.oci.image.index.v1+json` is not an image manifest (nested lists are not supported)".to_owned()
                ),
            ]
        );
        let e = list_entries(&g);
        let source = match &base.kind {
            SourceKind::Index(entries) => entries,
            SourceKind::Image(_) => unreachable!(),
        };
        assert_eq!(
            e[1],
            serde_json::Value::Object(source[2].descriptor.clone())
        );
        assert_eq!(e[1]["x-unknown"], 7);
        assert!(e[2].get("platform").is_none(), "no platform is invented");
        // Asked for, an attestation is carried in its place, with its annotations.
        let g = gather(std::slice::from_ref(&base), None, &[], true).unwrap();
        assert_eq!(
            shown(&g)[1],
            ("unknown/unknown (attestation)".to_owned(), 'e')
        );
        let e = list_entries(&g);
        assert_eq!(e[1]["platform"]["os"], "unknown");
        assert_eq!(
            e[1]["annotations"][REFERENCE_TYPE_ANNOTATION],
            "attestation-manifest"
        );
        // ... but not when the image it is about is left out by a replacement.
        let replaced = gather(
            &[image(A, "linux/amd64", 'c', OCI_MANIFEST)],
            Some(&base),
            &[],
            true,
        )
        .unwrap();
        assert!(!replaced.entries.iter().any(|e| e.attestation));
        assert!(
            replaced
                .skipped
                .iter()
                .any(|s| s.reason == "attestation of an image not in the list")
        );
    }

    #[test]
    fn an_index_input_and_an_image_of_the_same_platform_are_named_both() {
        check_err(
            &[
                list(
                    "reg.example.com/base:1",
                    vec![
                        entry("linux/amd64", 'a', DOCKER_MANIFEST),
                        entry("linux/arm64", 'b', DOCKER_MANIFEST),
                    ],
                ),
                image(B, "linux/arm64/v8", 'c', DOCKER_MANIFEST),
            ],
            &format!(
                "two images for linux/arm64: list `reg.example.com/base:1` (sha256:bbbbbbbbbbbb) and \
                 `{B}` (sha256:cccccccccccc); keep one per platform, or \
                 correct a wrong platform with --annotate SOURCE=os/arch"
            ),
        );
    }

    #[test]
    fn duplicates_name_both_sources_and_identical_ones_are_listed_once() {
        check_err(
            &[
                image(A, "linux/amd64", 'a', DOCKER_MANIFEST),
                image(
                    "reg.example.com/app:other",
                    "linux/x86_64",
                    'c',
                    DOCKER_MANIFEST,
                ),
            ],
            &format!(
                "two images for linux/amd64: `{A}` (sha256:aaaaaaaaaaaa) and \
                 `reg.example.com/app:other` (sha256:cccccccccccc); keep one per platform, or \
                 correct a wrong platform with --annotate SOURCE=os/arch"
            ),
        );
        let g = check(
            &[
                image(A, "linux/amd64", 'a', DOCKER_MANIFEST),
                image(
                    "reg.example.com/app:same",
                    "linux/amd64",
                    'a',
                    DOCKER_MANIFEST,
                ),
            ],
            &[("linux/amd64", 'a')],
        );
        assert_eq!(g.notes.len(), 1, "{:?}", g.notes);
        // Entries that claim no platform never collide.
        check(
            &[list(
                "reg.example.com/base:1",
                vec![
                    entry("-", '0', OCI_MANIFEST),
                    entry("-", '1', OCI_MANIFEST),
                    entry("unknown/unknown", '6', OCI_MANIFEST),
                    entry("unknown/unknown", '2', OCI_MANIFEST),
                ],
            )],
            &[
                ("(no platform)", '0'),
                ("(no platform)", '1'),
                ("unknown/unknown", '6'),
                ("unknown/unknown", '2'),
            ],
        );
    }

    #[test]
    fn media_types_are_never_mixed_and_the_list_type_follows_what_children_allow() {
        check_err(
            &[
                image(A, "linux/amd64", 'a', DOCKER_MANIFEST),
                image(B, "linux/arm64", 'b', OCI_MANIFEST),
            ],
            &format!(
                "cannot mix media types in one list: `{A}` gives a Docker schema2 image but `{B}` \
                 an OCI image; push them in one format (e.g. `skopeo copy --format oci` or \
                 `--format v2s2`)"
            ),
        );
        let docker = check(
            &[image(A, "linux/amd64", 'a', DOCKER_MANIFEST)],
            &[("linux/amd64", 'a')],
        );
        assert_eq!(
            build_list(&docker, Some(ListKind::Oci)).unwrap().media_type,
            OCI_INDEX
        );
        let oci = check(
            &[image(B, "linux/arm64", 'b', OCI_MANIFEST)],
            &[("linux/arm64", 'b')],
        );
        assert_eq!(build_list(&oci, None).unwrap().media_type, OCI_INDEX);
        assert_eq!(
            build_list(&oci, Some(ListKind::Docker))
                .unwrap_err()
                .to_string(),
            format!(
                "a Docker manifest list cannot hold OCI images such as `{B}`: use --media-type oci \
                 (or leave it out), or push the images as Docker schema2"
            )
        );
    }

    #[test]
    fn annotations_override_a_single_image_platform_as_written_and_must_name_a_source() {
        let sources = [
            image(A, "linux/amd64", 'a', DOCKER_MANIFEST),
            image(B, "linux/amd64", 'b', DOCKER_MANIFEST),
        ];
        let spec = |s: &str| Platform::parse_spec(s).unwrap();
        let g = gather(
            &sources,
            None,
            &[(B.to_owned(), spec("linux/arm64/v8"))],
            false,
        )
        .unwrap();
        assert_eq!(
            shown(&g),
            [
                ("linux/amd64".to_owned(), 'a'),
                ("linux/arm64/v8".to_owned(), 'b')
            ]
        );
        assert_eq!(list_entries(&g)[1]["platform"]["variant"], "v8");
        assert_eq!(
            g.notes,
            [format!(
                "`{B}` declares linux/amd64 in its config; listed as linux/arm64 as --annotate asks"
            )]
        );
        let arm8 = gather(
            &sources[..1],
            None,
            &[(A.to_owned(), spec("linux/arm/v8"))],
            false,
        )
        .unwrap();
        assert_eq!(shown(&arm8), [("linux/arm/v8".to_owned(), 'a')]);
        let err = gather(
            &sources,
            None,
            &[("nope".into(), spec("linux/arm64"))],
            false,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("--annotate names `nope`, which is not among the sources ({A}, {B})")
        );
        let unknown = image(A, "li nux/amd64", 'a', DOCKER_MANIFEST);
        assert_eq!(
            gather(std::slice::from_ref(&unknown), None, &[], false)
                .unwrap_err()
                .to_string(),
            format!(
                "source `{A}` says its platform is `li nux/amd64`, which is not a platform; \
                 give it one with --annotate {A}=os/arch[/variant]"
            )
        );
        // A config with a well-formed platform nobody knows is listed as it says.
        check(
            &[image(A, "linux/loong64", 'a', DOCKER_MANIFEST)],
            &[("linux/loong64", 'a')],
        );
    }

    #[test]
    fn amend_keeps_the_order_and_the_other_entries_of_the_existing_list() {
        let target = list(
            "reg.example.com/app:1.0",
            vec![
                entry("linux/amd64", 'a', DOCKER_MANIFEST),
                entry("linux/arm64", 'b', DOCKER_MANIFEST),
                entry("-", '0', DOCKER_MANIFEST),
            ],
        );
        let g = gather(
            &[
                image(B, "linux/arm64", 'c', DOCKER_MANIFEST),
                image(A, "linux/s390x", 'd', DOCKER_MANIFEST),
            ],
            Some(&target),
            &[],
            false,
        )
        .unwrap();
        assert_eq!(
            shown(&g),
            [
                ("linux/amd64".to_owned(), 'a'),
                ("linux/arm64".to_owned(), 'c'),
                ("(no platform)".to_owned(), '0'),
                ("linux/s390x".to_owned(), 'd'),
            ]
        );
        assert_eq!(g.notes.len(), 1, "{:?}", g.notes);
        let single = image(
            "reg.example.com/app:1.0",
            "linux/amd64",
            'a',
            DOCKER_MANIFEST,
        );
        assert!(matches!(
            gather(&[], Some(&single), &[], false),
            Err(CreateError::AmendNotAList(_))
        ));
    }

    #[test]
    fn nothing_to_list_is_explained() {
        check_err(
            &[list("reg.example.com/sbom:1", vec![attestation('a', 'e')])],
            "no platform image among the sources: `reg.example.com/sbom:1` hold only entries that \
             are not images (unknown/unknown: an attestation, left out as --exclude-attestations asks)",
        );
    }

    #[test]
    fn attestations_need_an_oci_index_of_oci_images() {
        let docker = list(
            "reg.example.com/base:1",
            vec![
                entry("linux/amd64", 'a', DOCKER_MANIFEST),
                attestation('a', 'e'),
            ],
        );
        let g = gather(std::slice::from_ref(&docker), None, &[], true).unwrap();
        assert!(matches!(
            build_list(&g, None),
            Err(CreateError::Manifest(ManifestError::ExtraNeedsOci { .. }))
        ));
    }
}
