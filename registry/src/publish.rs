//! Publishing a finished build: the manifest list pushed under the user's tag with oci-client.
//!
//! Invariant: the tag moves last. Every child is checked to be in the target repository first, the
//! optional per-arch tags are written next, and only then the list goes under the requested tag, so
//! a client never pulls a tag whose children are missing.

use oci_client::{Reference, RegistryOperation};
use sha2::{Digest as _, Sha256};

use crate::auth::RegistryLogin;
use crate::manifest::{self, ChildImage, DOCKER_MANIFEST, ExtraEntry, ManifestList, OCI_MANIFEST};
use crate::session::Session;
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

/// Pushes the list of `children` under `target` (a tagged reference), the tag last; with
/// `arch_tags`, each child is also tagged by that template (e.g. `{tag}-{arch}`). A login of
/// `logins` for the target's registry is used instead of the Docker config's credentials.
pub async fn publish_with(
    config: &RegistryConfig,
    target: &Reference,
    children: &[ChildImage],
    arch_tags: Option<&TagTemplate>,
    logins: &[RegistryLogin],
) -> Result<Published, RegistryError> {
    let list = manifest::assemble(children)?;
    let session = Session::open_with_logins(config, &[target.registry()], logins).await?;
    publish_assembled(&session, target, children, &[], &list, arch_tags).await
}

/// The one way a list reaches its tag, shared by the coordinator's merge and `manifold manifest
/// create`: checks that every child (and carried extra entry) is in `target`'s repository, writes
/// the per-arch tags if asked, then pushes `list` under `target`'s tag, last.
pub async fn publish_assembled(
    session: &Session,
    target: &Reference,
    children: &[ChildImage],
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

    let tagged = Reference::with_tag(registry.clone(), repository.clone(), tag.clone());
    session
        .push_manifest(
            &tagged,
            &list.bytes,
            list.media_type,
            &format!("pushing the manifest list under {tag}"),
        )
        .await?;
    Ok(Published {
        digest: format!("sha256:{}", hex::encode(Sha256::digest(&list.bytes))),
        media_type: list.media_type,
        arch_tags: written,
    })
}
