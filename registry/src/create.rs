//! `manifold manifest create`: merging existing images into one list under a tag, directly in the
//! registries (no Docker daemon, no local staging copy to clean up).
//!
//! Three steps, the first two writing nothing:
//! 1. [`resolve`]: each source is read; an image's platform comes from its config (or from an
//!    override), a source that is itself a list is flattened into its platform images;
//! 2. [`gather`] (pure): one child per platform (a duplicate names both sources), attestation
//!    entries (`unknown/unknown`) kept out unless asked for, one media type; the list is built by
//!    [`crate::manifest::assemble_list`], the same builder the coordinator uses;
//! 3. [`push`]: every child not yet in the target repository is put there by digest (blobs mounted
//!    from another repository of the same registry, else copied), then
//!    [`crate::publish::publish_assembled`] checks them all and writes the tag, last. A failure
//!    before that leaves the target tag untouched.

use std::collections::BTreeSet;

use manifold_proto::Platform;
use oci_client::Reference;
use sha2::{Digest as _, Sha256};

use crate::inspect::{
    self, ConfigPlatform, Content, IndexEntry, InspectError, REFERENCE_DIGEST_ANNOTATION,
};
use crate::manifest::{
    self, ChildImage, DOCKER_MANIFEST, ExtraEntry, ListKind, ManifestError, ManifestList,
    OCI_MANIFEST,
};
use crate::publish::{self, Published};
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
    /// of the one its config declares.
    pub platform_overrides: Vec<(String, Platform)>,
    /// Start from the list already under the target: sources replace its entries of their
    /// platforms, its other entries stay.
    pub amend: bool,
    /// The list type; `None` follows the images.
    pub list_kind: Option<ListKind>,
    /// Carry the attestation entries of list sources (OCI indexes only).
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

/// A child of the list to be, and where it comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedChild {
    /// The list entry.
    pub image: ChildImage,
    /// Where it comes from, for messages (`` `app:1.0-x86_64` ``, `` list `base:1` ``).
    pub from: String,
    /// Its manifest in the source's repository (`registry/repository@digest`).
    pub origin: Reference,
}

/// A carried non-platform entry (attestation) and where it comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedExtra {
    /// The entry.
    pub entry: ExtraEntry,
    /// Where it comes from, for messages.
    pub from: String,
    /// Its manifest in the source's repository.
    pub origin: Reference,
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
    /// One per platform.
    pub children: Vec<PlannedChild>,
    /// Attestations carried.
    pub extras: Vec<PlannedExtra>,
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

/// What [`push`] did (or, in a dry run, would do) for one child.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Transfer {
    /// The child's platform (`attestation` for a carried attestation).
    pub platform: String,
    /// Its digest.
    pub digest: String,
    /// Where it comes from.
    pub from: String,
    /// It was already in the target repository.
    pub already_there: bool,
    /// Blobs already in the target repository.
    pub blobs_present: usize,
    /// Blobs mounted from the source repository (same registry).
    pub blobs_mounted: usize,
    /// Blobs copied through this process.
    pub blobs_copied: usize,
    /// Bytes copied.
    pub bytes_copied: u64,
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
    value
        .trim()
        .parse::<Reference>()
        .map_err(|e| CreateError::BadReference {
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
    overrides: &[(String, Platform)],
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
    let mut extras_found: Vec<PlannedExtra> = Vec::new();
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
                let platform = match (overridden, declared.platform()) {
                    (Some(p), actual) => {
                        if actual.as_ref() != Some(&p) {
                            out.notes.push(format!(
                                "{from} declares {declared} in its config; listed as {p} as --annotate asks"
                            ));
                        }
                        p
                    }
                    (None, Some(p)) => p,
                    (None, None) => {
                        return Err(CreateError::UnknownPlatform {
                            image: source.given.clone(),
                            declared: declared.to_string(),
                        });
                    }
                };
                add_child(
                    &mut out,
                    PlannedChild {
                        image: ChildImage {
                            platform,
                            digest: source.digest.clone(),
                            size: source.size,
                            media_type: source.media_type.clone(),
                        },
                        from,
                        origin: origin(&source.digest),
                    },
                )?;
            }
            SourceKind::Index(entries) => {
                let from = format!("list `{}`", source.given);
                flatten(
                    &mut out,
                    &mut extras_found,
                    entries,
                    &from,
                    &origin,
                    include_attestations,
                )?;
            }
        }
    }

    if let Some(base) = base {
        let SourceKind::Index(entries) = &base.kind else {
            return Err(CreateError::AmendNotAList(base.given.clone()));
        };
        let from = format!("the list now under `{}`", base.given);
        let mut kept = Gathered::default();
        let mut base_extras = Vec::new();
        flatten(
            &mut kept,
            &mut base_extras,
            entries,
            &from,
            &|d: &str| base.reference.clone_with_digest(d.to_owned()),
            include_attestations,
        )?;
        for child in kept.children {
            match out
                .children
                .iter()
                .find(|c| c.image.platform == child.image.platform)
            {
                Some(new) if new.image.digest != child.image.digest => out.notes.push(format!(
                    "{} replaces {} {} of {from}",
                    new.from, child.image.platform, child.image.digest
                )),
                Some(_) => {}
                None => out.children.push(child),
            }
        }
        out.skipped.extend(kept.skipped);
        extras_found.extend(base_extras);
    }

    if out.children.is_empty() {
        let mut reason = sources
            .iter()
            .map(|s| format!("`{}`", s.given))
            .collect::<Vec<_>>()
            .join(", ");
        if !out.skipped.is_empty() {
            reason.push_str(&format!(
                " hold only entries that are not platform images ({})",
                out.skipped
                    .iter()
                    .map(|s| format!("{}: {}", s.platform, s.reason))
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
        return Err(CreateError::NoImages(reason));
    }

    // An attestation is carried only with the image it is about.
    let digests: BTreeSet<&str> = out
        .children
        .iter()
        .map(|c| c.image.digest.as_str())
        .collect();
    for extra in extras_found {
        let about = extra.entry.annotations.get(REFERENCE_DIGEST_ANNOTATION);
        if about.is_none_or(|d| digests.contains(d.as_str())) {
            if !out
                .extras
                .iter()
                .any(|e| e.entry.digest == extra.entry.digest)
            {
                out.extras.push(extra);
            }
        } else {
            out.skipped.push(Skipped {
                from: extra.from,
                digest: extra.entry.digest,
                platform: format!("{}/{}", extra.entry.os, extra.entry.architecture),
                reason: "attestation of an image not in the list".to_owned(),
            });
        }
    }

    check_media_types(&out.children)?;
    Ok(out)
}

/// Adds the platform images of a list's `entries` to `out`, attestations to `extras` when
/// `include_attestations`, and records what is left out.
fn flatten(
    out: &mut Gathered,
    extras: &mut Vec<PlannedExtra>,
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
        if entry.is_platform_image() {
            let platform = entry.platform().expect("platform images have a platform");
            add_child(
                out,
                PlannedChild {
                    image: ChildImage {
                        platform,
                        digest: entry.digest.clone(),
                        size: entry.size,
                        media_type: entry.media_type.clone(),
                    },
                    from: from.to_owned(),
                    origin: origin(&entry.digest),
                },
            )?;
        } else if entry.is_attestation() {
            if include_attestations {
                extras.push(PlannedExtra {
                    entry: ExtraEntry {
                        digest: entry.digest.clone(),
                        size: entry.size,
                        media_type: entry.media_type.clone(),
                        os: entry.os.clone().unwrap_or_else(|| "unknown".to_owned()),
                        architecture: entry
                            .architecture
                            .clone()
                            .unwrap_or_else(|| "unknown".to_owned()),
                        annotations: entry.annotations.clone(),
                    },
                    from: from.to_owned(),
                    origin: origin(&entry.digest),
                });
            } else {
                out.skipped.push(skip("attestation, not a platform image"));
            }
        } else {
            out.skipped.push(skip(&format!(
                "`{}` is not an image manifest (nested lists are not flattened)",
                entry.media_type
            )));
        }
    }
    Ok(())
}

fn add_child(out: &mut Gathered, child: PlannedChild) -> Result<(), CreateError> {
    match out
        .children
        .iter()
        .find(|c| c.image.platform == child.image.platform)
    {
        Some(first) if first.image.digest == child.image.digest => {
            out.notes.push(format!(
                "{} and {} are the same {} image; listed once",
                first.from, child.from, child.image.platform
            ));
            Ok(())
        }
        Some(first) => Err(CreateError::DuplicatePlatform {
            platform: child.image.platform.to_string(),
            first: format!("{} ({})", first.from, short(&first.image.digest)),
            second: format!("{} ({})", child.from, short(&child.image.digest)),
        }),
        None => {
            out.children.push(child);
            Ok(())
        }
    }
}

fn check_media_types(children: &[PlannedChild]) -> Result<(), CreateError> {
    let docker = children
        .iter()
        .find(|c| c.image.media_type == DOCKER_MANIFEST);
    let oci = children.iter().find(|c| c.image.media_type == OCI_MANIFEST);
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

/// Builds the list `gathered` gives, of `kind` when asked.
pub fn build_list(
    gathered: &Gathered,
    kind: Option<ListKind>,
) -> Result<ManifestList, CreateError> {
    let children: Vec<ChildImage> = gathered.children.iter().map(|c| c.image.clone()).collect();
    let extras: Vec<ExtraEntry> = gathered.extras.iter().map(|e| e.entry.clone()).collect();
    manifest::assemble_list(&children, &extras, kind).map_err(|e| match e {
        ManifestError::DockerListOfOci { oci } => CreateError::DockerListOfOci {
            image: gathered
                .children
                .iter()
                .find(|c| c.image.digest == oci)
                .map_or(oci, |c| c.from.clone()),
        },
        other => other.into(),
    })
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

/// Puts every child of `plan` into the target repository, then publishes the list under the
/// target tag (last). With `dry_run`, only reads, and reports what it would do.
pub async fn push(
    session: &Session,
    plan: &Plan,
    dry_run: bool,
) -> Result<PushReport, CreateError> {
    let parts = plan
        .gathered
        .children
        .iter()
        .map(|c| {
            (
                c.image.platform.to_string(),
                &c.image.digest,
                &c.from,
                &c.origin,
            )
        })
        .chain(plan.gathered.extras.iter().map(|e| {
            (
                "attestation".to_owned(),
                &e.entry.digest,
                &e.from,
                &e.origin,
            )
        }));
    let mut transfers = Vec::new();
    for (platform, digest, from, origin) in parts {
        let mut t = Transfer {
            platform,
            digest: digest.clone(),
            from: from.clone(),
            ..Transfer::default()
        };
        bring(session, &plan.target, origin, dry_run, &mut t).await?;
        transfers.push(t);
    }
    if dry_run {
        return Ok(PushReport {
            transfers,
            published: None,
        });
    }
    let children: Vec<ChildImage> = plan
        .gathered
        .children
        .iter()
        .map(|c| c.image.clone())
        .collect();
    let extras: Vec<ExtraEntry> = plan
        .gathered
        .extras
        .iter()
        .map(|e| e.entry.clone())
        .collect();
    let published =
        publish::publish_assembled(session, &plan.target, &children, &extras, &plan.list, None)
            .await?;
    Ok(PushReport {
        transfers,
        published: Some(published),
    })
}

/// Makes the manifest `origin` names present in `target`'s repository under its digest.
async fn bring(
    session: &Session,
    target: &Reference,
    origin: &Reference,
    dry_run: bool,
    t: &mut Transfer,
) -> Result<(), CreateError> {
    let digest = origin
        .digest()
        .expect("origins are pinned by digest")
        .to_owned();
    let there = target.clone_with_digest(digest.clone());
    if same_repository(target, origin)
        || session
            .manifest_exists(&there, &format!("checking {digest}"))
            .await?
    {
        t.already_there = true;
        return Ok(());
    }
    let manifest = session
        .pull_manifest(origin, &format!("reading {origin}"))
        .await?
        .ok_or_else(|| CreateError::SourceNotFound {
            image: origin.to_string(),
            registry: origin.registry().to_owned(),
        })?;
    let Content::Image(image) = inspect::parse_manifest(&manifest.bytes, &manifest.media_type)
        .map_err(|message| CreateError::Malformed {
            image: origin.to_string(),
            message,
        })?
    else {
        return Err(CreateError::Malformed {
            image: origin.to_string(),
            message: "a list entry is itself a list; nested lists are not supported".to_owned(),
        });
    };
    let same_registry = target.registry() == origin.registry();
    for blob in std::iter::once(&image.config).chain(&image.layers) {
        if blob.foreign || session.blob_exists(target, &blob.digest).await? {
            t.blobs_present += 1;
            continue;
        }
        if dry_run {
            if same_registry {
                t.blobs_mounted += 1;
            } else {
                t.blobs_copied += 1;
                t.bytes_copied += blob.size;
            }
            continue;
        }
        if same_registry && session.mount_blob(target, origin, &blob.digest).await? {
            t.blobs_mounted += 1;
            continue;
        }
        session
            .copy_blob(target, origin, &blob.digest, blob.size)
            .await?;
        t.blobs_copied += 1;
        t.bytes_copied += blob.size;
    }
    if !dry_run {
        session
            .push_manifest(
                &there,
                &manifest.bytes,
                &manifest.media_type,
                &format!("pushing {digest} into {}", target.repository()),
            )
            .await?;
    }
    Ok(())
}

fn same_repository(a: &Reference, b: &Reference) -> bool {
    a.registry() == b.registry() && a.repository() == b.repository()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::inspect::REFERENCE_TYPE_ANNOTATION;
    use crate::manifest::{DOCKER_MANIFEST_LIST, OCI_INDEX};

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn image(given: &str, platform: &str, d: char, media_type: &str) -> ResolvedSource {
        let parts: Vec<&str> = platform.split('/').collect();
        ResolvedSource {
            given: given.into(),
            reference: given.parse().unwrap(),
            digest: digest(d),
            media_type: media_type.into(),
            size: 500,
            kind: SourceKind::Image(ConfigPlatform {
                os: parts[0].into(),
                architecture: parts[1].into(),
                variant: parts.get(2).map(|v| v.to_string()),
                os_version: None,
                os_features: Vec::new(),
            }),
        }
    }

    fn entry(platform: &str, d: char, media_type: &str) -> IndexEntry {
        let parts: Vec<&str> = platform.split('/').collect();
        IndexEntry {
            media_type: media_type.into(),
            digest: digest(d),
            size: 400,
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

    fn attestation(about: char, d: char) -> IndexEntry {
        IndexEntry {
            annotations: BTreeMap::from([
                (
                    REFERENCE_TYPE_ANNOTATION.into(),
                    "attestation-manifest".into(),
                ),
                (REFERENCE_DIGEST_ANNOTATION.into(), digest(about)),
            ]),
            ..entry("unknown/unknown", d, OCI_MANIFEST)
        }
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

    /// Platform → digest letter of the gathered children, sorted.
    fn children(g: &Gathered) -> Vec<(String, char)> {
        let mut v: Vec<(String, char)> = g
            .children
            .iter()
            .map(|c| {
                (
                    c.image.platform.to_string(),
                    c.image.digest.chars().last().unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    }

    #[track_caller]
    fn check(sources: &[ResolvedSource], expected: &[(&str, char)]) -> Gathered {
        let g = gather(sources, None, &[], false).unwrap_or_else(|e| panic!("{e}"));
        let expected: Vec<(String, char)> =
            expected.iter().map(|(p, d)| (p.to_string(), *d)).collect();
        assert_eq!(children(&g), expected);
        g
    }

    #[track_caller]
    fn check_err(sources: &[ResolvedSource], expected: &str) {
        let err = gather(sources, None, &[], false).unwrap_err().to_string();
        assert_eq!(err, expected);
    }

    const A: &str = "reg.example.com/app:1.0-x86_64";
    const B: &str = "reg.example.com/app:1.0-aarch64";

    #[test]
    fn per_arch_images_take_the_platform_of_their_config() {
        let g = check(
            &[
                image(A, "linux/amd64", 'a', DOCKER_MANIFEST),
                image(B, "linux/arm64/v8", 'b', DOCKER_MANIFEST),
            ],
            &[("linux/amd64", 'a'), ("linux/arm64", 'b')],
        );
        assert_eq!(g.children[1].from, format!("`{B}`"));
        assert_eq!(
            g.children[1].origin.to_string(),
            format!("reg.example.com/app@{}", digest('b'))
        );
        let list = build_list(&g, None).unwrap();
        assert_eq!(list.media_type, DOCKER_MANIFEST_LIST);
    }

    #[test]
    fn lists_are_flattened_and_attestations_kept_out() {
        let base = list(
            "reg.example.com/base:1",
            vec![
                entry("linux/amd64", 'a', OCI_MANIFEST),
                attestation('a', 'e'),
                entry("linux/arm64", 'b', OCI_MANIFEST),
                entry("linux/s390x", 'n', OCI_INDEX),
            ],
        );
        let g = check(
            std::slice::from_ref(&base),
            &[("linux/amd64", 'a'), ("linux/arm64", 'b')],
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
                    "attestation, not a platform image".to_owned()
                ),
                (
                    "linux/s390x".to_owned(),
                    "`application/vnd.oci.image.index.v1+json` is not an image manifest (nested lists are not flattened)".to_owned()
                ),
            ]
        );
        assert!(g.extras.is_empty());
        // Asked for, an attestation is carried after the platform entries, with its annotations.
        let g = gather(std::slice::from_ref(&base), None, &[], true).unwrap();
        assert_eq!(g.extras.len(), 1);
        let bytes = build_list(&g, None).unwrap().bytes;
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["manifests"][2]["platform"]["os"], "unknown");
        assert_eq!(
            v["manifests"][2]["annotations"][REFERENCE_TYPE_ANNOTATION],
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
        assert!(replaced.extras.is_empty());
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
                image(B, "linux/arm64", 'c', DOCKER_MANIFEST),
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
    fn annotations_override_a_single_image_platform_and_must_name_a_source() {
        let sources = [
            image(A, "linux/amd64", 'a', DOCKER_MANIFEST),
            image(B, "linux/amd64", 'b', DOCKER_MANIFEST),
        ];
        let g = gather(
            &sources,
            None,
            &[(B.to_owned(), Platform::linux_arm64())],
            false,
        )
        .unwrap();
        assert_eq!(
            children(&g),
            [
                ("linux/amd64".to_owned(), 'a'),
                ("linux/arm64".to_owned(), 'b')
            ]
        );
        assert_eq!(
            g.notes,
            [format!(
                "`{B}` declares linux/amd64 in its config; listed as linux/arm64 as --annotate asks"
            )]
        );
        let err = gather(
            &sources,
            None,
            &[("nope".into(), Platform::linux_arm64())],
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
    }

    #[test]
    fn amend_keeps_the_other_platforms_of_the_existing_list() {
        let target = list(
            "reg.example.com/app:1.0",
            vec![
                entry("linux/amd64", 'a', DOCKER_MANIFEST),
                entry("linux/arm64", 'b', DOCKER_MANIFEST),
            ],
        );
        let g = gather(
            &[image(B, "linux/arm64", 'c', DOCKER_MANIFEST)],
            Some(&target),
            &[],
            false,
        )
        .unwrap();
        assert_eq!(
            children(&g),
            [
                ("linux/amd64".to_owned(), 'a'),
                ("linux/arm64".to_owned(), 'c')
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
             are not platform images (unknown/unknown: attestation, not a platform image)",
        );
    }
}
