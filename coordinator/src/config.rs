//! The coordinator's configuration, from flags (see the binary).

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::farm::FarmConfig;

/// Everything the coordinator needs to start.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address to serve gRPC on. Default 127.0.0.1:7700.
    pub listen: SocketAddr,
    /// Folder for durable state (build contexts). Created if missing.
    pub state_dir: PathBuf,
    /// Scheduling and registry tunables.
    pub farm: FarmConfig,
}
