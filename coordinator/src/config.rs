//! The coordinator's configuration, from flags (see the binary).

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::farm::FarmConfig;

/// Everything the coordinator needs to start.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address to serve gRPC on. Default 127.0.0.1:7700.
    pub listen: SocketAddr,
    /// Folder for local state: build contexts, and the embedded store. Created if missing.
    pub state_dir: PathBuf,
    /// Where builds are kept.
    pub store: StoreConfig,
    /// `registry/repository` to replicate build contexts to (for HA sets on etcd). Default: none.
    pub context_repository: Option<String>,
    /// How long an unreferenced build context is kept. Default: 24 h.
    pub context_ttl: std::time::Duration,
    /// Scheduling and registry tunables.
    pub farm: FarmConfig,
}

/// Which state store the coordinator uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum StoreConfig {
    /// redb in `<state-dir>/state.redb` (the default): one coordinator, no server needed.
    #[default]
    Embedded,
    /// etcd, with leader election between coordinators sharing the same prefix.
    Etcd {
        /// `http://host:port` of each member.
        endpoints: Vec<String>,
        /// Key prefix, e.g. `/manifold`.
        prefix: String,
        /// Leadership lease: how long a silent leader keeps its role.
        lease: std::time::Duration,
        /// Address other coordinators and clients should use to reach this one.
        advertise: String,
    },
}
