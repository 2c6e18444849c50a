//! The farm's view of a worker: what its hello and heartbeats say, and what `manifold workers`
//! shows of it.

use std::collections::BTreeMap;

use manifold_proto::{DiskUsage, JobId, Platform};

/// A worker's hello, as the farm sees it.
#[derive(Clone, Debug)]
pub struct WorkerHello {
    /// Unique name.
    pub name: String,
    /// Platforms.
    pub platforms: Vec<Platform>,
    /// Emulated?
    pub emulated: bool,
    /// Slots.
    pub slots: u32,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Docker server version.
    pub docker_version: String,
    /// Jobs it is running (job, attempt).
    pub running: Vec<(JobId, u32)>,
    /// It is draining already (it reconnected during a drain).
    pub draining: bool,
    /// Why its Docker daemon cannot build, when it cannot.
    pub unhealthy: Option<String>,
    /// The team that owns it, from its client certificate (never from what the worker says).
    pub owner: Option<String>,
    /// Paused by its owner (it reconnected during a pause).
    pub paused: bool,
    /// Lends itself to other teams than its owner.
    pub lending: bool,
    /// Its disk when it said hello.
    pub disk: Option<DiskUsage>,
}

/// What a heartbeat says besides "alive".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerHealth {
    /// The worker drains.
    pub draining: bool,
    /// Why its Docker daemon cannot build, when it cannot.
    pub unhealthy: Option<String>,
    /// Paused by its owner, and lending to other teams (`None`: as they were).
    pub paused_lending: Option<(bool, bool)>,
    /// Its disk at its last check (`None`: as it was).
    pub disk: Option<DiskUsage>,
}

/// A worker as `manifold workers` shows it.
#[derive(Clone, Debug)]
pub struct WorkerView {
    /// Name.
    pub name: String,
    /// Platforms.
    pub platforms: Vec<Platform>,
    /// Emulated?
    pub emulated: bool,
    /// Slots.
    pub slots: u32,
    /// Slots in use.
    pub slots_in_use: u32,
    /// Unix ms of its last message.
    pub last_heartbeat_ms: i64,
    /// Unix ms of its hello.
    pub connected_at_ms: i64,
    /// Docker version.
    pub docker_version: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Draining: no new job.
    pub draining: bool,
    /// Why its Docker daemon cannot build, when it cannot.
    pub unhealthy: Option<String>,
    /// The team that owns it (its jobs go first on it); `None` for shared capacity.
    pub owner: Option<String>,
    /// Paused by its owner: keeps its jobs, takes no new one.
    pub paused: bool,
    /// Lends itself to other teams than its owner.
    pub lending: bool,
    /// Its disk as last reported; `None` until it reports one.
    pub disk: Option<DiskUsage>,
}
