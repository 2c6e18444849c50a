//! The registry side of Manifold, shared by the coordinator (publishing a build's list), the worker
//! (pushing images by digest) and the CLI (`manifold manifest`): one implementation of what goes into
//! a manifest list and how it reaches a registry.
//!
//! Layout, in reading order:
//! - [`manifest`]: pure assembly of a Docker manifest list / OCI image index from per-platform images;
//! - [`tag_template`]: per-arch tag names (`TAG-x86_64`, `TAG-aarch64`, or a template);
//! - [`auth`]: credentials from the Docker config file and Docker credential helpers, and the
//!   per-team logins a coordinator holds;
//! - [`session`]: one oci-client for the registries a task touches (plain HTTP for loopback and
//!   `--insecure-registry`), retries, and errors that name the registry and the credentials tried;
//! - [`publish`]: pushing a list under a tag, the tag last — the coordinator's merge and
//!   `manifold manifest create` both end here;
//! - [`inspect`]: reading a reference, and choosing the child a platform's client pulls, as Docker does;
//! - [`create`]: merging existing images and lists into one list (`manifold manifest create`).

pub mod auth;
pub mod create;
pub mod inspect;
pub mod manifest;
pub mod publish;
pub mod reference;
pub mod session;
pub mod tag_template;

pub use auth::{Credentials, DockerConfig, RegistryLogin};
pub use manifest::{ChildImage, ListKind, ManifestError, ManifestList, assemble};
pub use oci_client::Reference;
pub use publish::{
    Children, Published, RegistryConfig, RegistryError, arch_tag, credentials_for, publish_with,
};
pub use session::Session;
pub use tag_template::{DEFAULT_TAG_TEMPLATE, TagTemplate};
