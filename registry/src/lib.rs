//! The registry side of Manifold, shared by the coordinator (publishing a build's list), the worker
//! (pushing images by digest) and the CLI (`manifold manifest`): one implementation of what goes into
//! a manifest list and how it reaches a registry.
//!
//! Layout:
//! - [`manifest`]: pure assembly of a Docker manifest list / OCI image index from per-platform images;
//! - [`publish`]: pushing such a list under a tag with oci-client, the tag last, plus registry access
//!   settings (plain HTTP for loopback and `--insecure-registry`) and Docker config credentials.

pub mod manifest;
pub mod publish;

pub use manifest::{ChildImage, ManifestError, ManifestList, assemble};
pub use publish::{Published, RegistryConfig, RegistryError, arch_tag, credentials_for, publish};
