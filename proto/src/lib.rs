//! Manifold's wire API (gRPC package `manifold.v1`) and the few domain types every crate shares.
//!
//! Layout:
//! - [`v1`]: the generated protobuf messages, clients and servers (from `proto/manifold/v1/manifold.proto`);
//! - [`build_flags`]: [`BuildFlags`], the buildx flags a build carries (`--no-cache`, caches, network...);
//! - [`platform`]: [`Platform`], parsing and normalising what users type (`x86_64`, `arm64/v8`, `armhf` ...);
//! - [`codec`]: the services' gRPC codec (prost's, with malformed messages as `InvalidArgument`);
//! - [`ids`]: the newtype ids of builds and jobs;
//! - [`disk`]: [`DiskUsage`], a worker's free disk and cache size as heartbeats carry them;
//! - [`discovery`]: finding the leading coordinator among several addresses;
//! - [`dockerignore`]: `.dockerignore` applied byte for byte as `docker build` applies it (the CLI
//!   packs with it, the worker applies it again to the context tar).
//!
//! Generated types never travel past a crate's API module: each crate converts them into its own
//! domain types at the edge.

pub mod build_flags;
pub mod codec;
pub mod discovery;
pub mod disk;
pub mod dockerignore;
pub mod ids;
pub mod platform;

pub use build_flags::{BuildFlags, CacheSpec, SecretValue, Secrets};
pub use disk::DiskUsage;
pub use ids::{BuildId, JobId};
pub use platform::{Platform, PlatformError, PlatformSpec};

/// The generated `manifold.v1` protobuf types and gRPC stubs.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("manifold.v1");
}

/// Largest gRPC message either side sends or accepts (chunks of contexts stay far below it).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Size of the chunks build contexts are streamed in.
pub const CONTEXT_CHUNK_BYTES: usize = 1024 * 1024;

/// Default coordinator address used by the CLI and workers.
pub const DEFAULT_COORDINATOR: &str = "http://127.0.0.1:7700";
