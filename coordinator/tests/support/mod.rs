//! What the coordinator's crate tests share: a minimal build context, and a farm driven directly
//! (no network) with that context already stored.

#![allow(dead_code)] // each test file uses its part

pub mod http;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use manifold_coordinator::contexts::ContextStore;
use manifold_coordinator::farm::{Farm, FarmConfig, WorkerHello};
use manifold_coordinator::store::memory::MemoryStore;
use manifold_proto::Platform;
use sha2::Digest as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A context tar holding a Dockerfile, and its digest.
pub fn context_tar() -> (Vec<u8>, String) {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(10);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "Dockerfile", &b"FROM x\nRUN"[..])
        .unwrap();
    let bytes = b.into_inner().unwrap();
    let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes)));
    (bytes, digest)
}

/// A farm on an in-memory store whose context store holds [`context_tar`]; it stops when dropped.
pub struct FarmFixture {
    pub farm: Farm,
    /// Digest of the stored context.
    pub context: String,
    _dir: tempfile::TempDir,
    _stop: tokio_util::sync::DropGuard,
}

impl FarmFixture {
    pub async fn start(config: FarmConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let contexts = ContextStore::open(dir.path()).unwrap();
        let (bytes, context) = context_tar();
        let mut upload = contexts.begin(&context).await.unwrap();
        upload.write(&bytes).await.unwrap();
        upload.finish().await.unwrap();
        let term = CancellationToken::new();
        let farm = Farm::recover(
            config,
            contexts,
            Arc::new(MemoryStore::new()),
            TaskTracker::new(),
            term.clone(),
        )
        .await
        .unwrap();
        Self {
            farm,
            context,
            _dir: dir,
            _stop: term.drop_guard(),
        }
    }
}

/// The hello of a native linux/amd64 worker with one slot.
pub fn amd64_hello(name: &str, owner: Option<&str>) -> WorkerHello {
    WorkerHello {
        name: name.into(),
        platforms: vec![Platform::linux_amd64()],
        emulated: false,
        slots: 1,
        labels: BTreeMap::new(),
        docker_version: "test".into(),
        running: Vec::new(),
        draining: false,
        unhealthy: None,
        owner: owner.map(str::to_owned),
        paused: false,
        lending: true,
        disk: None,
    }
}

/// How long a test waits for a state a stream announces (`Workers.Watch`, `Builds.Watch`).
pub const PATIENCE: Duration = Duration::from_secs(10);
