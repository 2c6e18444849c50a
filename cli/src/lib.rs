//! The `manifold` command line: packs a build context, sends it to the coordinator once per
//! content digest, submits a multi-platform build and follows it to the pushed manifest list; also
//! lists workers, builds, teams and the queue, prints a build's logs, re-attaches to a build and
//! cancels one. It talks to the coordinator only through the `manifold.v1` gRPC API of
//! `manifold-proto`. `manifold manifest` talks to registries directly, through
//! `manifold-registry`.
//!
//! Layout, in reading order:
//! - [`args`]: the clap definitions and [`args::BuildPlan`], `manifold build`'s flags checked
//!   locally (platforms normalised, Dockerfiles found) before anything is contacted;
//! - [`build_flags`]: the buildx flags (caches, network, hosts, shm size) and `--secret` values;
//! - [`config`]: where the coordinator address, the token and the CA come from (flag,
//!   environment, `~/.config/manifold/config.toml`, default);
//! - [`dockerignore`]: `.dockerignore` patterns with Docker's exact rules (shared with the worker,
//!   from `manifold-proto`);
//! - [`context`]: the deterministic tar of a context, its digest, and the bounded-memory
//!   streaming upload that is skipped when the coordinator already has the digest;
//! - [`client`]: connecting to the coordinator (TLS off loopback, the bearer token on every
//!   call), one method per RPC, and error messages a person can act on;
//! - [`progress`]: rendering build events (plain lines, live lines per platform, or quiet);
//! - [`listing`]: the tables and JSON documents of `workers`, `builds`, `build-status`, `teams`
//!   and `queue`, and the text of `logs`;
//! - [`result_files`]: `--iidfile` and `--metadata-file`, written once a build succeeded;
//! - [`commands`]: one function per subcommand;
//! - [`manifest`]: `manifold manifest inspect/create/push/rm`, straight against registries with
//!   `manifold-registry` (no coordinator, no Docker daemon), and `manifold completion`.

pub mod args;
pub mod build_flags;
pub mod client;
pub mod commands;
pub use manifold_proto::dockerignore;
pub mod config;
pub mod context;
pub mod listing;
pub mod manifest;
pub mod progress;
pub mod result_files;
pub mod since;
