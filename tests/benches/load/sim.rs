//! What the load and history benchmarks share: a real coordinator process (a release
//! `manifold-coordinator`, plaintext on 127.0.0.1) with simulated workers attached over real gRPC,
//! a registry of its own (Debian's `docker-registry`) holding one tiny image per platform, and the
//! readings of /proc and git that the reports give.
//!
//! Included by each benchmark with `#[path = "load/sim.rs"] mod sim;`; each uses a part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use manifold_proto::v1::{
    self, builds_client::BuildsClient, contexts_client::ContextsClient,
    coordinator_message::Msg as FromCoordinator, worker_message::Msg as ToCoordinator,
    workers_client::WorkersClient,
};
use sha2::Digest as _;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

// ------------------------------------------------------------------------------------------------
// Simulated workers

#[derive(Default)]
pub struct Sim {
    pub attached: AtomicU64,
    /// Streams that ended while the benchmark still ran (an error or the coordinator closing).
    pub ended: AtomicU64,
    /// Attaches that failed and were tried again.
    pub reattaches: AtomicU64,
    pub assignments: AtomicU64,
    pub received: Mutex<Vec<Received>>,
}

/// An assignment as a worker received it.
pub struct Received {
    pub build: String,
    pub platform: String,
    pub attempt: u32,
    pub at_ms: i64,
}

pub struct SimWorker {
    pub name: String,
    pub architecture: &'static str,
    pub slots: u32,
    pub image: v1::ImageDescriptor,
    pub log_lines: usize,
    pub job_ms: u64,
    pub sim: Arc<Sim>,
    pub stop: watch::Receiver<bool>,
}

impl SimWorker {
    pub async fn run(mut self, url: String) -> anyhow::Result<()> {
        let platform = v1::Platform {
            os: "linux".into(),
            architecture: self.architecture.into(),
            variant: String::new(),
        };
        let send = |tx: &mpsc::Sender<v1::WorkerMessage>, msg: ToCoordinator| {
            let tx = tx.clone();
            async move { tx.send(v1::WorkerMessage { msg: Some(msg) }).await }
        };
        // As a real worker does, an attach that fails (a connection the busy coordinator's
        // listener dropped in a burst of 1,000 attaches) is tried again after a back-off.
        let mut attempt = 0;
        let (tx, mut inbound, every) = loop {
            match self.open(&url, &platform).await {
                Ok(opened) => break opened,
                Err(e) if attempt < ATTACH_ATTEMPTS => {
                    attempt += 1;
                    self.sim.reattaches.fetch_add(1, Ordering::SeqCst);
                    eprintln!("{}: {e:#}; attaching again", self.name);
                    tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
                }
                Err(e) => return Err(e),
            }
        };
        self.sim.attached.fetch_add(1, Ordering::SeqCst);
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let running = Arc::new(AtomicU64::new(0));
        let mut jobs = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                _ = self.stop.changed() => {
                    let _ = send(&tx, ToCoordinator::Goodbye(v1::Goodbye {})).await;
                    return Ok(());
                }
                _ = heartbeat.tick() => {
                    send(&tx, ToCoordinator::Heartbeat(v1::Heartbeat {
                        slots_in_use: running.load(Ordering::SeqCst) as u32,
                        ..Default::default()
                    })).await?;
                }
                Some(_) = jobs.join_next(), if !jobs.is_empty() => {}
                message = inbound.message() => match message {
                    Ok(Some(v1::CoordinatorMessage { msg: Some(FromCoordinator::Assign(a)) })) => {
                        let at_ms = unix_ms();
                        self.sim.assignments.fetch_add(1, Ordering::Relaxed);
                        self.sim.received.lock().expect("lock").push(Received {
                            build: a.build_id.clone(),
                            platform: platform_key(a.platform.as_ref()),
                            attempt: a.attempt,
                            at_ms,
                        });
                        send(&tx, ToCoordinator::Accepted(v1::JobAccepted {
                            job_id: a.job_id.clone(),
                            attempt: a.attempt,
                        })).await?;
                        let job = SimJob {
                            job_id: a.job_id,
                            attempt: a.attempt,
                            lines: (0..self.log_lines)
                                .map(|n| format!("#{n} simulated step {n} of {}", self.log_lines))
                                .collect(),
                            image: self.image.clone(),
                        };
                        if self.job_ms == 0 {
                            job.finish(&tx).await?;
                        } else {
                            let (tx, running, ms) = (tx.clone(), running.clone(), self.job_ms);
                            running.fetch_add(1, Ordering::SeqCst);
                            jobs.spawn(async move {
                                tokio::time::sleep(Duration::from_millis(ms)).await;
                                let _ = job.finish(&tx).await;
                                running.fetch_sub(1, Ordering::SeqCst);
                            });
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        self.sim.ended.fetch_add(1, Ordering::SeqCst);
                        bail!("{}: the coordinator closed the stream", self.name);
                    }
                    Err(status) => {
                        if !*self.stop.borrow() {
                            self.sim.ended.fetch_add(1, Ordering::SeqCst);
                        }
                        bail!("{}: stream ended: {status}", self.name);
                    }
                },
            }
        }
    }

    /// Connects, says hello and waits for the welcome: the stream's sender, its inbound half and
    /// the heartbeat interval.
    async fn open(
        &self,
        url: &str,
        platform: &v1::Platform,
    ) -> anyhow::Result<(
        mpsc::Sender<v1::WorkerMessage>,
        tonic::Streaming<v1::CoordinatorMessage>,
        Duration,
    )> {
        let channel = connect(url).await?;
        let (tx, rx) = mpsc::channel::<v1::WorkerMessage>(1024);
        tx.send(v1::WorkerMessage {
            msg: Some(ToCoordinator::Hello(v1::WorkerHello {
                name: self.name.clone(),
                platforms: vec![platform.clone()],
                slots: self.slots,
                docker_version: "simulated".into(),
                worker_version: env!("CARGO_PKG_VERSION").into(),
                ..Default::default()
            })),
        })
        .await?;
        let mut inbound = WorkersClient::new(channel)
            .attach(ReceiverStream::new(rx))
            .await
            .with_context(|| format!("{}: attach", self.name))?
            .into_inner();
        let every = match tokio::time::timeout(Duration::from_secs(60), inbound.message()).await {
            Ok(Ok(Some(v1::CoordinatorMessage {
                msg: Some(FromCoordinator::Welcome(w)),
            }))) => Duration::from_millis(w.heartbeat_interval_ms.max(100) as u64),
            other => bail!("{}: no Welcome: {other:?}", self.name),
        };
        Ok((tx, inbound, every))
    }
}

/// Attach attempts a simulated worker makes before it gives up.
const ATTACH_ATTEMPTS: u32 = 4;

pub struct SimJob {
    pub job_id: String,
    pub attempt: u32,
    pub lines: Vec<String>,
    pub image: v1::ImageDescriptor,
}

impl SimJob {
    /// The output lines, then the result: the image "pushed".
    pub async fn finish(
        self,
        tx: &mpsc::Sender<v1::WorkerMessage>,
    ) -> Result<(), mpsc::error::SendError<v1::WorkerMessage>> {
        if !self.lines.is_empty() {
            tx.send(v1::WorkerMessage {
                msg: Some(ToCoordinator::Log(v1::JobLog {
                    job_id: self.job_id.clone(),
                    attempt: self.attempt,
                    lines: self.lines,
                })),
            })
            .await?;
        }
        tx.send(v1::WorkerMessage {
            msg: Some(ToCoordinator::Result(v1::JobResult {
                job_id: self.job_id,
                attempt: self.attempt,
                outcome: Some(v1::job_result::Outcome::Pushed(self.image)),
            })),
        })
        .await
    }
}

/// Waits until `n` workers are attached (bounded); fails at once when a worker task failed.
pub async fn wait_attached(
    sim: &Sim,
    n: usize,
    workers: &mut tokio::task::JoinSet<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(180);
    while (sim.attached.load(Ordering::SeqCst) as usize) < n {
        if let Some(Ok(Err(e))) = workers.try_join_next() {
            return Err(e.context("a simulated worker failed to attach"));
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {n} workers attached within 180 s",
                sim.attached.load(Ordering::SeqCst)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Jobs queued at the coordinator (`Builds.Teams`).
pub async fn queued(channel: &Channel) -> anyhow::Result<u32> {
    let teams = BuildsClient::new(channel.clone())
        .teams(v1::ListTeamsRequest {})
        .await?
        .into_inner();
    Ok(teams.teams.iter().map(|t| t.queued).sum())
}

// ------------------------------------------------------------------------------------------------
// The coordinator process

/// A `manifold-coordinator` process; killed when dropped.
pub struct Coordinator {
    child: tokio::process::Child,
    pub pid: u32,
    pub url: String,
    /// Its stderr (the tracing log).
    pub log: PathBuf,
    /// The temp dir of its state and log, when it owns one.
    temp: Option<tempfile::TempDir>,
}

impl Coordinator {
    /// A coordinator on a fresh state dir in a temp dir, with `args` added to its command line,
    /// once it answers (bounded).
    pub async fn start(bin: &Path, args: &[&str], cpus: Option<&str>) -> anyhow::Result<Self> {
        let state = tempfile::tempdir()?;
        let mut c = Self::spawn(
            bin,
            &state.path().join("state"),
            &state.path().join("coordinator.log"),
            args,
            cpus,
        )?;
        c.temp = Some(state);
        c.wait_serving(Duration::from_secs(60)).await?;
        Ok(c)
    }

    /// Starts a coordinator on `state_dir` (which it may already hold) and returns at once;
    /// its stderr goes to `log`. With `cpus` (a `taskset -c` list) it runs on those CPUs only.
    pub fn spawn(
        bin: &Path,
        state_dir: &Path,
        log: &Path,
        args: &[&str],
        cpus: Option<&str>,
    ) -> anyhow::Result<Self> {
        let port = free_port()?;
        // taskset execs the coordinator: the child's pid is the coordinator's.
        let mut command = match cpus {
            Some(cpus) => {
                let mut c = tokio::process::Command::new("taskset");
                c.args(["-c", cpus]).arg(bin);
                c
            }
            None => tokio::process::Command::new(bin),
        };
        let child = command
            .args(["--listen", &format!("127.0.0.1:{port}"), "--plaintext"])
            .arg("--state-dir")
            .arg(state_dir)
            // A farm whose workers attach after 10,000 builds queued must not fail them first.
            .args(["--wait-for-workers", "30m"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log)?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Self {
            pid: child.id().context("coordinator pid")?,
            child,
            url: format!("http://127.0.0.1:{port}"),
            log: log.to_owned(),
            temp: None,
        })
    }

    /// Waits until `Workers.List` answers, at most `within`; fails at once if the process ended.
    pub async fn wait_serving(&mut self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(channel) = connect(&self.url).await
                && WorkersClient::new(channel)
                    .list(v1::ListWorkersRequest {})
                    .await
                    .is_ok()
            {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!(
                    "the coordinator exited ({status}); its log: {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the coordinator did not answer within {within:?}; its log: {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether the process has ended.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    pub async fn channel(&self) -> anyhow::Result<Channel> {
        connect(&self.url).await
    }

    /// SIGKILL, then waits for the exit (bounded).
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }

    /// SIGTERM (a clean shutdown: the store is closed), then waits for the exit, at most
    /// `within`; SIGKILL after that. Whether it ended by itself.
    pub async fn terminate(mut self, within: Duration) -> bool {
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        let ended = sent
            && tokio::time::timeout(within, self.child.wait())
                .await
                .is_ok_and(|r| r.is_ok());
        if !ended {
            self.stop().await;
        }
        ended
    }
}

pub async fn connect(url: &str) -> anyhow::Result<Channel> {
    Endpoint::from_shared(url.to_owned())?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .with_context(|| format!("connecting to {url}"))
}

/// A tiny context (a Dockerfile and one file), uploaded once; returns its digest.
pub async fn upload_context(channel: &Channel) -> anyhow::Result<String> {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, body) in [
        ("Dockerfile", &b"FROM scratch\nCOPY n /n\n"[..]),
        ("n", &b"load\n"[..]),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, name, body)?;
    }
    let bytes = tar.into_inner()?;
    let digest = digest(&bytes);
    let chunk = v1::UploadContextChunk {
        digest: digest.clone(),
        data: bytes,
    };
    ContextsClient::new(channel.clone())
        .upload(tokio_stream::iter([chunk]))
        .await
        .context("uploading the context")?;
    Ok(digest)
}

// ------------------------------------------------------------------------------------------------
// The registry

/// The benchmark's own registry: Debian's `docker-registry` on a free loopback port, storage
/// in a temp dir (the system tests' [`manifold_tests::faults::PrivateRegistry`]).
pub use manifold_tests::faults::PrivateRegistry as Registry;

/// Pushes a tiny image of linux/`architecture` (a config, no layer) to `registry/repository`
/// by digest; returns its descriptor, which workers of that platform report for every job.
pub async fn push_image(
    http: &reqwest::Client,
    registry: &str,
    repository: &str,
    architecture: &str,
) -> anyhow::Result<v1::ImageDescriptor> {
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": architecture,
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": []},
    }))?;
    let config_digest = digest(&config);
    let start = http
        .post(format!("http://{registry}/v2/{repository}/blobs/uploads/"))
        .send()
        .await?
        .error_for_status()?;
    let location = start
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .context("no Location for the blob upload")?;
    let location = if location.starts_with('/') {
        format!("http://{registry}{location}")
    } else {
        location.to_owned()
    };
    let sep = if location.contains('?') { '&' } else { '?' };
    http.put(format!("{location}{sep}digest={config_digest}"))
        .header("content-type", "application/octet-stream")
        .body(config.clone())
        .send()
        .await?
        .error_for_status()
        .context("uploading the image config")?;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len()},
        "layers": [],
    }))?;
    let manifest_digest = digest(&manifest);
    http.put(format!(
        "http://{registry}/v2/{repository}/manifests/{manifest_digest}"
    ))
    .header("content-type", OCI_MANIFEST)
    .body(manifest.clone())
    .send()
    .await?
    .error_for_status()
    .context("pushing the image manifest")?;
    Ok(v1::ImageDescriptor {
        digest: manifest_digest,
        size: manifest.len() as i64,
        media_type: OCI_MANIFEST.into(),
        attestations: Vec::new(),
    })
}

// ------------------------------------------------------------------------------------------------
// Small helpers

/// The whole number in environment variable `<prefix>_<key>`, or `default` when it is unset.
pub fn env_number(prefix: &str, key: &str, default: u64) -> anyhow::Result<u64> {
    let key = format!("{prefix}_{key}");
    match std::env::var(&key) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{key}={v} is not a whole number")),
        Err(_) => Ok(default),
    }
}

pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

pub fn platform_key(p: Option<&v1::Platform>) -> String {
    p.map(|p| format!("{}/{}/{}", p.os, p.architecture, p.variant))
        .unwrap_or_default()
}

pub fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The `p`th percentile (nearest rank) of `v`; 0 when empty.
pub fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// utime + stime of process `pid`, in clock ticks.
pub fn proc_cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces), from field 3 (state) on.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

pub fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

pub fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// This machine's CPUs split in two (load.rs, `MANIFOLD_BENCH_LOAD_PIN`): the last one for the
/// coordinator, the others for this process and what it starts after the split (the registry),
/// as a coordinator and the registry it checks images in run on machines of their own. Assumes
/// the CPUs are numbered 0..n.
#[derive(Clone, Debug)]
pub struct CpuSplit {
    /// The coordinator's CPU, as a `taskset -c` list.
    pub coordinator: String,
    /// The other CPUs: every thread of this process, and its children from now on.
    pub rest: String,
}

impl CpuSplit {
    /// Moves every thread of this process onto `rest`; fails on a machine of one CPU.
    pub fn apply() -> anyhow::Result<Self> {
        let n = std::thread::available_parallelism()?.get();
        if n < 2 {
            bail!(
                "MANIFOLD_BENCH_LOAD_PIN needs 2 CPUs or more and this machine has {n}: unset it"
            );
        }
        let split = Self {
            coordinator: (n - 1).to_string(),
            rest: if n == 2 {
                "0".to_owned()
            } else {
                format!("0-{}", n - 2)
            },
        };
        let status = std::process::Command::new("taskset")
            .args(["-a", "-p", "-c", &split.rest])
            .arg(std::process::id().to_string())
            .stdout(Stdio::null())
            .status()
            .context("running taskset (util-linux) to pin the benchmark's threads")?;
        if !status.success() {
            bail!("taskset -a -p -c {} failed: {status}", split.rest);
        }
        Ok(split)
    }
}

pub fn commit() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let head = git(&["rev-parse", "--short", "HEAD"]);
    let dirty = !git(&["status", "--porcelain", "--untracked-files=no"]).is_empty();
    if dirty {
        format!("{head} (+ local changes)")
    } else {
        head
    }
}

/// `target/release/NAME`, which `cargo bench` does not build (it builds only this benchmark).
pub fn release_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the bench binary lives in target/<profile>/deps")?;
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} is missing: run `nice -n 10 cargo build --release -p manifold-coordinator` first (cargo bench builds only the benchmark)",
            path.display()
        );
    }
    Ok(path)
}

/// Writes `report` to target/manifold-bench/NAME-RUN_ID.md (best effort) and says where.
pub fn write_report(name: &str, report: &str, run_id: i64) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .join("target/manifold-bench");
    let path = dir.join(format!("{name}-{run_id}.md"));
    if std::fs::create_dir_all(&dir).is_ok() && std::fs::write(&path, report).is_ok() {
        println!("report written to {}", path.display());
    }
}

/// A two-platform build (linux/amd64, linux/arm64) of `image:bN`; builds differ by the build
/// argument `N`, so identical-build reuse joins none.
pub fn build_request(image: &str, context: &str, n: usize) -> v1::SubmitBuildRequest {
    v1::SubmitBuildRequest {
        image: format!("{image}:b{n}"),
        platforms: ["amd64", "arm64"]
            .map(|architecture| v1::Platform {
                os: "linux".into(),
                architecture: architecture.into(),
                variant: String::new(),
            })
            .into(),
        context_digest: context.to_owned(),
        build_args: [("N".to_owned(), n.to_string())].into(),
        ..Default::default()
    }
}
