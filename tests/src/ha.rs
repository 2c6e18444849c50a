//! Harness pieces for a highly available farm: a real etcd cluster on loopback and several
//! coordinators electing a leader on it.

use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use manifold_proto::v1;
use tokio::process::{Child, Command};

use crate::{Secured, bin, free_port, wait_until};

/// A real etcd cluster (Debian's etcd-server) of `n` members on loopback ports, each with its own
/// data dir; killed on drop.
pub struct EtcdCluster {
    /// Client URLs of the members.
    pub endpoints: Vec<String>,
    members: Vec<Child>,
    _dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts `n` members and waits until the cluster answers.
    pub async fn start(n: usize) -> anyhow::Result<Self> {
        // Data on tmpfs where there is one: etcd fsyncs its log on every write, and on a disk that
        // the suite's Docker builds keep busy a slow fsync stalls etcd's raft loop past its
        // election timeout; every etcd leader change renews all leases, which would keep a paused
        // coordinator's lease (and its leadership) alive for as long as the churn lasts.
        // Each member preallocates a 64 MiB log segment: use tmpfs only with room for several
        // clusters (a container's /dev/shm is often 64 MiB in all).
        let shm = std::path::Path::new("/dev/shm");
        let room = rustix::fs::statvfs(shm).map_or(0, |s| s.f_bavail.saturating_mul(s.f_frsize));
        let dir = if shm.is_dir() && room >= 2 << 30 {
            tempfile::Builder::new().prefix("etcd-").tempdir_in(shm)?
        } else {
            tempfile::tempdir()?
        };
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect();
        let mut members = Vec::new();
        let mut endpoints = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let log = std::fs::File::create(dir.path().join(format!("etcd-m{i}.log")))?;
            let child = Command::new("etcd")
                .args(["--name", &format!("m{i}")])
                .arg("--data-dir")
                .arg(dir.path().join(format!("m{i}")))
                .args([
                    "--listen-client-urls",
                    &url,
                    "--advertise-client-urls",
                    &url,
                ])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &initial.join(",")])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "manifold-test"])
                .stdout(Stdio::null())
                .stderr(Stdio::from(log))
                .kill_on_drop(true)
                .spawn()
                .context("starting etcd (Debian's etcd-server; .ci/install installs it)")?;
            members.push(child);
            endpoints.push(url);
        }
        let probe = endpoints[0].clone();
        wait_until(Duration::from_secs(30), "the etcd cluster", || {
            let probe = probe.clone();
            async move {
                let out = Command::new("etcdctl")
                    .args(["--endpoints", &probe, "endpoint", "health"])
                    .env("ETCDCTL_API", "3")
                    .output()
                    .await
                    .ok()?;
                out.status.success().then_some(())
            }
        })
        .await?;
        Ok(Self {
            endpoints,
            members,
            _dir: dir,
        })
    }

    /// `--etcd` value.
    pub fn flag(&self) -> String {
        self.endpoints.join(",")
    }

    /// The last lines of each member's log, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for i in 0..self.endpoints.len() {
            let path = self._dir.path().join(format!("etcd-m{i}.log"));
            let log = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(30)..];
            out.push_str(&format!("--- etcd m{i} (last {} lines) ---\n", tail.len()));
            for line in tail {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// Number of members still running.
    pub fn members(&self) -> usize {
        self.members.len()
    }
}

/// One coordinator process of a highly available set.
pub struct Coordinator {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    child: Option<Child>,
    /// Its log file.
    pub log: std::path::PathBuf,
    /// TLS and the harness's admin token, when the set is secured.
    secure: Option<Secured>,
}

impl Coordinator {
    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// SIGKILL.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    /// Sends a signal (e.g. "STOP", "CONT") with kill(1).
    pub async fn signal(&self, sig: &str) -> anyhow::Result<()> {
        let pid = self.pid().context("the coordinator is not running")?;
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()
            .await?;
        anyhow::ensure!(status.success(), "kill -{sig} {pid} failed");
        Ok(())
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A channel to it (TLS trusting the set's CA when secured).
    pub async fn channel(&self) -> anyhow::Result<tonic::transport::Channel> {
        match &self.secure {
            Some(s) => s.channel(&self.url).await,
            None => Ok(tonic::transport::Endpoint::from_shared(self.url.clone())?
                .connect()
                .await?),
        }
    }

    /// `message` as a request carrying the harness's admin token (when secured).
    pub fn as_admin<T>(&self, message: T) -> tonic::Request<T> {
        match &self.secure {
            Some(s) => s.as_admin(message),
            None => tonic::Request::new(message),
        }
    }

    /// Whether it serves as leader right now (followers answer `Unavailable`).
    pub async fn is_leader(&self) -> bool {
        let Ok(channel) = self.channel().await else {
            return false;
        };
        v1::builds_client::BuildsClient::new(channel)
            .list(self.as_admin(v1::ListBuildsRequest {
                limit: 1,
                ..Default::default()
            }))
            .await
            .is_ok()
    }
}

/// Starts a plaintext coordinator on etcd, logging into `dir`.
pub async fn start_coordinator(
    etcd: &EtcdCluster,
    dir: &std::path::Path,
    name: &str,
    extra: &[&str],
) -> anyhow::Result<Coordinator> {
    launch_coordinator(etcd, dir, name, extra, None).await
}

/// Starts a coordinator on etcd serving TLS with `secure`'s certificate and config (teams,
/// tokens), logging into `dir`.
pub async fn start_secured_coordinator(
    etcd: &EtcdCluster,
    dir: &std::path::Path,
    name: &str,
    extra: &[&str],
    secure: &Secured,
) -> anyhow::Result<Coordinator> {
    launch_coordinator(etcd, dir, name, extra, Some(secure)).await
}

async fn launch_coordinator(
    etcd: &EtcdCluster,
    dir: &std::path::Path,
    name: &str,
    extra: &[&str],
    secure: Option<&Secured>,
) -> anyhow::Result<Coordinator> {
    // `free_port` only found a port free a moment ago: another process may take it first, and
    // then the coordinator exits naming it. Each try gets a new port; three tries in all.
    for attempt in 1..=3 {
        match try_launch(etcd, dir, name, extra, secure).await? {
            Launch::Listening(c) => return Ok(*c),
            Launch::PortTaken(log) if attempt < 3 => {
                eprintln!("coordinator {name}: its port was taken, trying another:\n{log}");
            }
            Launch::PortTaken(log) => {
                anyhow::bail!("coordinator {name}: three ports in a row were taken:\n{log}")
            }
        }
    }
    unreachable!("the last try returns or fails")
}

enum Launch {
    Listening(Box<Coordinator>),
    /// It exited because its port was in use; its log.
    PortTaken(String),
}

/// Starts the coordinator on a free port and waits until it listens (its log says so), or fails
/// with its log if it exited otherwise or did not listen within 30 s.
async fn try_launch(
    etcd: &EtcdCluster,
    dir: &std::path::Path,
    name: &str,
    extra: &[&str],
    secure: Option<&Secured>,
) -> anyhow::Result<Launch> {
    let port = free_port();
    let scheme = if secure.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://127.0.0.1:{port}");
    let state = dir.join(name);
    std::fs::create_dir_all(&state)?;
    let log = dir.join(format!("{name}.log"));
    let mut cmd = Command::new(bin("manifold-coordinator"));
    cmd.args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--state-dir")
        .arg(&state)
        .args(["--etcd", &etcd.flag(), "--advertise", &url]);
    match secure {
        Some(s) => cmd.args(s.coordinator_args()),
        None => cmd.arg("--plaintext"),
    };
    let child = cmd
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log)?))
        .kill_on_drop(true)
        .spawn()
        .context("starting manifold-coordinator")?;
    let mut coordinator = Coordinator {
        url,
        child: Some(child),
        log,
        secure: secure.cloned(),
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if coordinator.log().contains("coordinator listening") {
            return Ok(Launch::Listening(Box::new(coordinator)));
        }
        if let Some(status) = (coordinator.child.as_mut()).and_then(|c| c.try_wait().ok().flatten())
        {
            let log = coordinator.log();
            if log.contains("Address already in use") {
                return Ok(Launch::PortTaken(log));
            }
            anyhow::bail!("coordinator {name} exited ({status}) before listening:\n{log}");
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!(
                "coordinator {name} did not listen within 30s:\n{}",
                coordinator.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts a worker process against `coordinators` (comma-separated), logging into `dir`; killed
/// on drop of the returned child.
pub async fn start_worker(
    coordinators: &str,
    dir: &std::path::Path,
    name: &str,
    docker: &str,
    platform: Option<&str>,
) -> anyhow::Result<Child> {
    launch_worker(coordinators, dir, name, docker, platform, None)
}

/// Like [`start_worker`], against a secured set: the worker trusts its CA and presents the
/// certificate `dev-ca` made for `name`.
pub async fn start_secured_worker(
    coordinators: &str,
    dir: &std::path::Path,
    name: &str,
    docker: &str,
    platform: Option<&str>,
    secure: &Secured,
) -> anyhow::Result<Child> {
    launch_worker(coordinators, dir, name, docker, platform, Some(secure))
}

fn launch_worker(
    coordinators: &str,
    dir: &std::path::Path,
    name: &str,
    docker: &str,
    platform: Option<&str>,
    secure: Option<&Secured>,
) -> anyhow::Result<Child> {
    let mut cmd = Command::new(bin("manifold-worker"));
    cmd.args([
        "--coordinator",
        coordinators,
        "--name",
        name,
        "--docker-host",
        docker,
    ])
    .arg("--cache-dir")
    .arg(dir.join(format!("cache-{name}")))
    .env("RUST_LOG", "info")
    .stdout(Stdio::null())
    .stderr(Stdio::from(std::fs::File::create(
        dir.join(format!("worker-{name}.log")),
    )?))
    .kill_on_drop(true);
    if let Some(p) = platform {
        cmd.args(["--platform", p]);
    }
    if let Some(s) = secure {
        cmd.envs(s.worker_env(name, true));
    }
    cmd.spawn().context("starting manifold-worker")
}
