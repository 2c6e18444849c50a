//! Manifold's worker: it drives ONE Docker daemon, announces the platform that daemon builds, and
//! runs the jobs the coordinator assigns to it: fetch the build context (cached by digest), build it
//! with BuildKit, check the image is of the job's platform, push it to the registry by digest only,
//! and report the digest. The worker dials the coordinator and keeps one bidirectional stream open,
//! reconnecting when it breaks; on shutdown it drains.
//!
//! Layout, in reading order:
//! - [`config`]: the one typed [`Config`] and its defaults from the environment;
//! - [`backoff`]: the jittered exponential backoff between two dials of the coordinator;
//! - [`connection`]: [`run`], the stream to the coordinator (hello, heartbeats, reconnect, dispatch,
//!   drain, stopping when the coordinator refuses the worker's identity);
//! - [`assignment`]: an assignment's wire form checked and turned into a [`job::JobSpec`];
//! - [`admission`]: which assignment starts, which is refused, which older attempt it supersedes
//!   (pure);
//! - [`health`]: whether the worker can take a job: the daemon answers, the disk has room;
//! - [`lending`]: whether other teams' jobs may run here now (`--lend always|never|when CMD`);
//! - [`metrics`]: Prometheus metrics of the worker's disk and cache (`--metrics-listen`);
//! - [`tls`]: how the coordinator is dialled: https:// with the worker's client certificate, or
//!   plaintext to loopback only;
//! - [`log_batches`]: a job's log lines batched for the coordinator;
//! - [`job`]: one job end to end once its context is on disk ([`job::execute`]);
//! - [`context_cache`]: build contexts on disk, verified by sha256 while downloading;
//! - [`context_fetch`]: a job's context from the cache or the coordinator, retried when it breaks off;
//! - [`context_view`]: what BuildKit is served of a context: its `.dockerignore` applied (so an
//!   excluded Dockerfile or `.dockerignore` is left out, as Docker does), the Dockerfile apart;
//! - [`buildkit`]: builds through BuildKit's control API with a session (context upload, registry
//!   credentials, secrets), pushing by digest where the engine can;
//! - [`docker`]: the daemon through bollard (platform, image store, inspect, export, untag);
//! - [`progress`]: BuildKit status messages turned into readable log lines;
//! - [`push`]: the push by digest on graphdriver engines (reuse what the registry has or can
//!   mount, stream the rest from the export), and reading a pushed image back;
//! - [`push_proxy`]: the graphdriver fast path: the daemon pushes to the worker's loopback front,
//!   which sends the target repository only the blobs it lacks, and the manifest by digest;
//! - [`pushed_index`]: what BuildKit pushed with attestations: the image and the attestation
//!   manifests about it, reported apart;
//! - [`local_tags`]: the daemon-local tags this worker made, so that it removes its leftovers at start;
//! - [`layers`]: the worker's map from a layer's diff_id to the blob it was pushed as;

pub mod admission;
pub mod assignment;
pub mod backoff;
pub mod buildkit;
pub mod config;
pub mod connection;
pub mod context_cache;
pub mod context_fetch;
pub mod context_view;
pub mod docker;
pub mod health;
pub mod job;
pub mod layers;
pub mod lending;
pub mod local_tags;
pub mod log_batches;
pub mod metrics;
pub mod progress;
pub mod push;
pub mod push_proxy;
pub mod pushed_index;
pub mod tls;

pub use config::Config;
pub use connection::{RunError, run};

/// An error and its causes, `: `-separated: reqwest and hyper keep "connection refused" in a cause.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let more = e.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = e.source();
    }
    text
}
