//! Publishing a finished build: the manifest list pushed under the user's tag with oci-client.
//!
//! Invariant: the tags move last. Every child is checked to be in the target repository first
//! (children the coordinator read from that repository when their worker reported them,
//! [`Children::Verified`], are checked by the registry itself when it takes the list: a registry
//! refuses a list naming a manifest it lacks, `MANIFEST_BLOB_UNKNOWN`, and only then is each
//! checked, to name the missing one), the optional per-arch tags are written next, every child is brought into the repository of each
//! further tag (`-t` given more than once: mounted or copied from the target repository), and only
//! then the list goes under the requested tag and each further tag, so a client never pulls a tag
//! whose children are missing. Every tag holds the same list bytes: one digest.

use oci_client::{Reference, RegistryOperation};
use sha2::{Digest as _, Sha256};

use crate::auth::RegistryLogin;
use crate::inspect::{self, Content};
use crate::manifest::{self, ChildImage, DOCKER_MANIFEST, ExtraEntry, ManifestList, OCI_MANIFEST};
use crate::session::{Mount, Session};
use crate::tag_template::{TagTemplate, TagTemplateError};

pub use crate::auth::credentials_for;
pub use crate::session::{RegistryConfig, RegistryError};
pub use crate::tag_template::arch_tag;

/// What a publish wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    /// Digest of the list.
    pub digest: String,
    /// Its media type.
    pub media_type: &'static str,
    /// Per-arch tags written (`TAG-x86_64` ...), empty unless asked for.
    pub arch_tags: Vec<String>,
}

/// Whether the children of a list are known to be in its target repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Children {
    /// Each is checked first (a `HEAD`): they were named by a user.
    Unchecked,
    /// Each was read from the target repository when its worker reported it (the coordinator's
    /// check, `coordinator::verify`): the registry's own check at the list push is enough, and
    /// only a refused push checks each, to name the one missing. Two requests fewer per build.
    Verified,
}

/// Pushes the list of `children` under `target` (a tagged reference) and each of `also` (more
/// tagged references, any repository), the tags last; with `arch_tags`, each child is also tagged
/// in `target`'s repository by that template (e.g. `{tag}-{arch}`). A login of `logins` for a
/// registry is used instead of the Docker config's credentials.
pub async fn publish_with(
    config: &RegistryConfig,
    target: &Reference,
    also: &[Reference],
    children: &[ChildImage],
    known: Children,
    arch_tags: Option<&TagTemplate>,
    logins: &[RegistryLogin],
) -> Result<Published, RegistryError> {
    let extras: Vec<ExtraEntry> = children
        .iter()
        .flat_map(ChildImage::attestation_entries)
        .collect();
    let list = manifest::assemble_list(children, &extras, None)?;
    let mut registries = vec![target.registry()];
    registries.extend(also.iter().map(Reference::registry));
    registries.sort_unstable();
    registries.dedup();
    let session = Session::open_with_logins(config, &registries, logins).await?;
    publish_assembled(
        &session, target, also, children, known, &extras, &list, arch_tags,
    )
    .await
}

/// The one way a list reaches its tags, shared by the coordinator's merge and `manifold manifest
/// create`: checks that every child (and carried extra entry) is in `target`'s repository, writes
/// the per-arch tags if asked, brings every entry into the repository of each of `also`, then
/// pushes `list` under `target`'s tag and each of `also`, last.
#[allow(clippy::too_many_arguments)]
pub async fn publish_assembled(
    session: &Session,
    target: &Reference,
    also: &[Reference],
    children: &[ChildImage],
    known: Children,
    extras: &[ExtraEntry],
    list: &ManifestList,
    arch_tags: Option<&TagTemplate>,
) -> Result<Published, RegistryError> {
    let registry = target.registry().to_owned();
    let repository = target.repository().to_owned();
    let tag = target.tag().unwrap_or("latest").to_owned();
    session
        .authenticate(
            target,
            RegistryOperation::Push,
            &format!("pushing to {registry}/{repository}"),
        )
        .await?;

    if known == Children::Unchecked {
        check_present(session, target, children, extras).await?;
    }

    // Every per-arch tag is named before any is written, so a template that gives two platforms
    // the same tag writes nothing.
    let mut named: Vec<(&ChildImage, String)> = Vec::new();
    if let Some(template) = arch_tags {
        for c in children {
            let name = template.render(&tag, &c.platform)?;
            if let Some((first, _)) = named.iter().find(|(_, n)| *n == name) {
                return Err(TagTemplateError::Collision {
                    template: template.to_string(),
                    tag: name,
                    first: first.platform.to_string(),
                    second: c.platform.to_string(),
                }
                .into());
            }
            named.push((c, name));
        }
    }
    let mut written = Vec::new();
    for (c, name) in named {
        let child_ref = target.clone_with_digest(c.digest.clone());
        let child = session
            .pull_manifest(&child_ref, &format!("reading {}", c.digest))
            .await?
            .ok_or_else(|| RegistryError::MissingChild {
                platform: c.platform.to_string(),
                digest: c.digest.clone(),
                repository: format!("{registry}/{repository}"),
            })?;
        let media_type = if c.media_type == DOCKER_MANIFEST || c.media_type == OCI_MANIFEST {
            c.media_type.as_str()
        } else {
            child.media_type.as_str()
        };
        let tagged = Reference::with_tag(registry.clone(), repository.clone(), name.clone());
        session
            .push_manifest(
                &tagged,
                &child.bytes,
                media_type,
                &format!("tagging {name}"),
            )
            .await?;
        written.push(name);
    }

    let entries: Vec<&String> = children
        .iter()
        .map(|c| &c.digest)
        .chain(extras.iter().map(|e| &e.digest))
        .collect();
    for other in also {
        if !same_repository(other, target) {
            session
                .authenticate(
                    other,
                    RegistryOperation::Push,
                    &format!("pushing to {}/{}", other.registry(), other.repository()),
                )
                .await?;
            for digest in &entries {
                let origin = target.clone_with_digest((*digest).clone());
                bring(session, other, &origin, false, &mut Transfer::default()).await?;
            }
        }
    }

    let tagged = Reference::with_tag(registry.clone(), repository.clone(), tag.clone());
    for t in std::iter::once(&tagged).chain(also) {
        let shown = format!(
            "{}/{}:{}",
            t.registry(),
            t.repository(),
            t.tag().unwrap_or("latest")
        );
        let pushed = session
            .push_manifest(
                t,
                &list.bytes,
                list.media_type,
                &format!("pushing the manifest list under {shown}"),
            )
            .await;
        if let Err(e) = pushed {
            // Refused: if for a missing child, say which one.
            if known == Children::Verified {
                check_present(session, target, children, extras).await?;
            }
            return Err(e);
        }
    }
    Ok(Published {
        digest: format!("sha256:{}", hex::encode(Sha256::digest(&list.bytes))),
        media_type: list.media_type,
        arch_tags: written,
    })
}

/// Fails naming the first of `children` and `extras` not in `target`'s repository.
async fn check_present(
    session: &Session,
    target: &Reference,
    children: &[ChildImage],
    extras: &[ExtraEntry],
) -> Result<(), RegistryError> {
    let (registry, repository) = (target.registry(), target.repository());
    let present = children
        .iter()
        .map(|c| (c.platform.to_string(), &c.digest))
        .chain(extras.iter().map(|e| {
            let label = if e.architecture.is_empty() {
                e.os.clone()
            } else {
                format!("{}/{} (attestation)", e.os, e.architecture)
            };
            (label, &e.digest)
        }));
    for (platform, digest) in present {
        let child_ref = target.clone_with_digest(digest.clone());
        if !session
            .manifest_exists(&child_ref, &format!("checking {digest}"))
            .await?
        {
            return Err(RegistryError::MissingChild {
                platform,
                digest: digest.clone(),
                repository: format!("{registry}/{repository}"),
            });
        }
    }
    Ok(())
}

/// What [`bring`] did (or, in a dry run, would do) for one child.
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

/// Makes the manifest `origin` names present in `target`'s repository under its digest.
pub async fn bring(
    session: &Session,
    target: &Reference,
    origin: &Reference,
    dry_run: bool,
    t: &mut Transfer,
) -> Result<(), RegistryError> {
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
        .ok_or_else(|| RegistryError::MissingImage {
            image: origin.to_string(),
        })?;
    let Content::Image(image) = inspect::parse_manifest(&manifest.bytes, &manifest.media_type)
        .map_err(|message| RegistryError::Malformed {
            image: origin.to_string(),
            message,
        })?
    else {
        return Err(RegistryError::Malformed {
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
        if same_registry
            && session.mount_blob(target, origin, &blob.digest).await? == Mount::Mounted
        {
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
