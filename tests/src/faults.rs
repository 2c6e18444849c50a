//! Harness pieces for fault tests: signals to workers, a TCP proxy on loopback that cuts a worker's
//! network, a private registry a test may stop, processes found by a marker, and following a
//! build's events and end.
//!
//! Everything listens on 127.0.0.1 only.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use manifold_proto::v1;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::{TestFarm, WorkerBuilder, free_port, log_file, run, wait_until};

impl TestFarm {
    /// Sends `signal` (`TERM`, `STOP`, `CONT`, `KILL`...) to a worker process.
    pub async fn signal_worker(&self, name: &str, signal: &str) -> anyhow::Result<()> {
        let pid = self
            .worker_pid(name)
            .with_context(|| format!("no running worker {name}"))?;
        signal_pid(pid, signal).await
    }

    /// The coordinator's address, for a proxy in front of it.
    pub fn coordinator_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Submits a build with `manifold build --detach ARGS...` and returns its id.
    pub async fn submit_detached(&self, args: &[&str]) -> anyhow::Result<String> {
        let admin = self.secure.as_ref().map(|s| s.admin_token.clone());
        self.submit_detached_as(admin.as_deref(), args).await
    }

    /// [`TestFarm::submit_detached`] with this token.
    pub async fn submit_detached_as(
        &self,
        token: Option<&str>,
        args: &[&str],
    ) -> anyhow::Result<String> {
        let out = self
            .cli_as(token, ["build", "--detach"].iter().chain(args.iter()))
            .await?;
        if !out.status.success() {
            bail!("submitting failed:\n{}", crate::show(&out));
        }
        let id = String::from_utf8(out.stdout)?.trim().to_owned();
        if id.len() != 36 {
            bail!("`manifold build --detach` printed `{id}` instead of a build id");
        }
        Ok(id)
    }

    /// The build as the coordinator has it now.
    pub async fn build(&self, id: &str) -> anyhow::Result<v1::Build> {
        Ok(self
            .builds()
            .await?
            .get(self.as_admin(v1::GetBuildRequest {
                build_id: id.to_owned(),
            }))
            .await?
            .into_inner())
    }

    /// Polls the build until it has ended (succeeded, failed or cancelled), for `timeout` at most.
    pub async fn wait_build_end(&self, id: &str, timeout: Duration) -> anyhow::Result<v1::Build> {
        wait_until(timeout, &format!("build {id} to end"), || async {
            let b = self.build(id).await.ok()?;
            is_final(&b).then_some(b)
        })
        .await
    }

    /// Waits until the build printed a line containing `needle` (of `platform`, when given), for
    /// `timeout` at most; fails when the build ends first.
    pub async fn wait_log_line(
        &self,
        id: &str,
        platform: Option<&str>,
        needle: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let what = format!(
            "`{needle}` in the output of {}",
            platform.unwrap_or("the build")
        );
        self.wait_event(id, timeout, &what, |e| {
            matches!(e, v1::build_event::Event::Log(l) if l.line.contains(needle)
                && platform.is_none_or(|p| platform_text(l.platform.as_ref()) == p))
            .then_some(())
        })
        .await
    }

    /// Follows the build's events (history first) until one satisfies `pick`, for `timeout` at
    /// most; fails when the build ends first.
    pub async fn wait_event<T>(
        &self,
        id: &str,
        timeout: Duration,
        what: &str,
        mut pick: impl FnMut(&v1::build_event::Event) -> Option<T>,
    ) -> anyhow::Result<T> {
        let mut stream = self
            .builds()
            .await?
            .watch(self.as_admin(v1::WatchBuildRequest {
                build_id: id.to_owned(),
            }))
            .await?
            .into_inner();
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let event = match tokio::time::timeout(left, stream.message()).await {
                Err(_) => bail!("timed out after {timeout:?} waiting for {what} in build {id}"),
                Ok(m) => m?.with_context(|| format!("build {id} ended before {what}"))?,
            };
            let Some(event) = event.event else { continue };
            if let Some(value) = pick(&event) {
                return Ok(value);
            }
            if let v1::build_event::Event::Finished(f) = &event {
                bail!("build {id} ended before {what}: {f:?}");
            }
        }
    }

    /// Waits until the coordinator lists the worker `name` and `check` holds for it.
    pub async fn wait_worker(
        &self,
        name: &str,
        timeout: Duration,
        check: impl Fn(&v1::WorkerInfo) -> bool,
    ) -> anyhow::Result<v1::WorkerInfo> {
        let url = self.url.clone();
        wait_until(
            timeout,
            &format!("worker {name} in the expected state"),
            || {
                let url = url.clone();
                let check = &check;
                async move {
                    let mut c = v1::workers_client::WorkersClient::connect(url).await.ok()?;
                    let list = c.list(v1::ListWorkersRequest {}).await.ok()?.into_inner();
                    list.workers
                        .into_iter()
                        .find(|w| w.name == name && check(w))
                }
            },
        )
        .await
    }
}

impl WorkerBuilder<'_> {
    /// Any other worker flag.
    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.into());
        self
    }

    /// Spawns it dialling `coordinator` (e.g. a [`TcpProxy`] in front of the farm's coordinator)
    /// and waits until the coordinator lists it.
    pub async fn spawn_via(self, coordinator: &str) -> anyhow::Result<()> {
        let farm = self.farm;
        let cache = farm.state_dir.path().join(format!("cache-{}", self.name));
        let mut cmd = Command::new(crate::bin("manifold-worker"));
        cmd.arg("--coordinator")
            .arg(coordinator)
            .arg("--name")
            .arg(&self.name)
            .arg("--cache-dir")
            .arg(&cache)
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log_file(&farm.state_dir, &format!("worker-{}", self.name))?)
            .kill_on_drop(true);
        if let Some(d) = &self.docker {
            cmd.arg("--docker-host").arg(d);
        }
        let child = cmd.spawn().context("starting manifold-worker")?;
        farm.workers.push((self.name.clone(), child));
        let name = self.name.clone();
        farm.wait_worker(&name, Duration::from_secs(30), |_| true)
            .await
            .map(|_| ())
    }
}

/// Whether a build has ended.
pub fn is_final(b: &v1::Build) -> bool {
    matches!(
        v1::BuildState::try_from(b.state),
        Ok(v1::BuildState::Succeeded | v1::BuildState::Failed | v1::BuildState::Cancelled)
    )
}

/// The job of `platform` (e.g. `linux/arm64`) in a build.
pub fn job_of<'a>(b: &'a v1::Build, platform: &str) -> anyhow::Result<&'a v1::Job> {
    b.jobs
        .iter()
        .find(|j| {
            j.platform
                .as_ref()
                .is_some_and(|p| format!("{}/{}", p.os, p.architecture) == platform)
        })
        .with_context(|| format!("build {} has no {platform} job", b.id))
}

/// `platform` of an event's platform field, as `os/arch`.
pub fn platform_text(p: Option<&v1::Platform>) -> String {
    p.map(|p| format!("{}/{}", p.os, p.architecture))
        .unwrap_or_default()
}

/// Sends a signal with kill(1).
pub async fn signal_pid(pid: u32, signal: &str) -> anyhow::Result<()> {
    run("kill", &[&format!("-{signal}"), &pid.to_string()])
        .await
        .map(|_| ())
}

/// Pids of the processes whose command line contains `marker` (pgrep -f), this one excluded.
pub async fn pgrep(marker: &str) -> anyhow::Result<Vec<u32>> {
    let out = Command::new("pgrep")
        .args(["-f", marker])
        .stdin(Stdio::null())
        .output()
        .await
        .context("running pgrep")?;
    // 1 means "nothing matched".
    if !out.status.success() && out.status.code() != Some(1) {
        bail!(
            "pgrep -f {marker}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .filter(|pid| *pid != std::process::id())
        .collect())
}

/// The platforms of a manifest list under `reference`, sorted, as `os/arch`, per skopeo.
pub async fn list_platforms(reference: &str) -> anyhow::Result<Vec<String>> {
    let list = crate::skopeo_raw(reference).await?;
    let mut platforms: Vec<String> = list["manifests"]
        .as_array()
        .with_context(|| format!("{reference} is not a list: {list}"))?
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m["platform"]["os"].as_str().unwrap_or_default(),
                m["platform"]["architecture"].as_str().unwrap_or_default()
            )
        })
        .collect();
    platforms.sort();
    Ok(platforms)
}

/// The child digests of a manifest list under `reference`, by `os/arch`.
pub async fn list_children(reference: &str) -> anyhow::Result<Vec<(String, String)>> {
    let list = crate::skopeo_raw(reference).await?;
    Ok(list["manifests"]
        .as_array()
        .with_context(|| format!("{reference} is not a list: {list}"))?
        .iter()
        .map(|m| {
            (
                format!(
                    "{}/{}",
                    m["platform"]["os"].as_str().unwrap_or_default(),
                    m["platform"]["architecture"].as_str().unwrap_or_default()
                ),
                m["digest"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect())
}

/// Whether bytes pass through a [`TcpProxy`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    Open,
    /// Connections stay open but carry nothing: a partition without resets.
    Blackholed,
}

/// A TCP proxy on 127.0.0.1 in front of one address (a worker dials it instead of the
/// coordinator), which the test can sever (connections reset, new ones refused), blackhole
/// (nothing passes, nothing is reset) and restore.
pub struct TcpProxy {
    /// Where to dial instead of the target.
    pub addr: SocketAddr,
    target: SocketAddr,
    link: watch::Sender<Link>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TcpProxy {
    /// Starts a proxy to `target` on a free loopback port.
    pub async fn start(target: SocketAddr) -> anyhow::Result<Self> {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let (link, _) = watch::channel(Link::Open);
        let mut proxy = Self {
            addr,
            target,
            link,
            task: None,
        };
        proxy.restore().await?;
        Ok(proxy)
    }

    /// `http://ADDR`, for `--coordinator`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Resets every connection and refuses new ones, until [`TcpProxy::restore`].
    pub fn sever(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Stops passing bytes either way without closing anything, until [`TcpProxy::restore`].
    pub fn blackhole(&self) {
        self.link.send_replace(Link::Blackholed);
    }

    /// Passes traffic again, listening on the same address.
    pub async fn restore(&mut self) -> anyhow::Result<()> {
        self.link.send_replace(Link::Open);
        if self.task.is_some() {
            return Ok(());
        }
        let listener = wait_until(
            Duration::from_secs(10),
            "the proxy port to be free",
            || async { TcpListener::bind(self.addr).await.ok() },
        )
        .await?;
        let (target, link) = (self.target, self.link.clone());
        self.task = Some(tokio::spawn(async move {
            // Dropping the set, when this task is aborted, resets every connection.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let link = link.subscribe();
                connections.spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::join!(
                        pipe(client_read, server_write, link.clone()),
                        pipe(server_read, client_write, link),
                    );
                });
            }
        }));
        Ok(())
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.sever();
    }
}

async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut link: watch::Receiver<Link>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if link.wait_for(|l| *l == Link::Open).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        // Bytes read just before a blackhole are held until it is lifted.
        if link.wait_for(|l| *l == Link::Open).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A registry of the test's own (Debian's docker-registry) on a free loopback port, which the
/// test may stop and start again; its content survives (same root folder). No access log: the
/// load benchmarks send it hundreds of thousands of requests. `GOGC=800`: at Go's default the
/// collector took about half of its CPU on those small requests (measured with wrk, 8
/// connections, one manifest GET by digest: 808 requests/s at 1.67 cores by default, 1,476/s at
/// 1.77 cores with GOGC=800; its peak RSS 190 MiB with 64 connections).
pub struct PrivateRegistry {
    /// `127.0.0.1:PORT`
    pub host: String,
    config: PathBuf,
    dir: tempfile::TempDir,
    process: Option<Child>,
}

impl PrivateRegistry {
    /// Starts it and waits until it answers.
    pub async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let host = format!("127.0.0.1:{}", free_port());
        let config = dir.path().join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  cache:\n    blobdescriptor: inmemory\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n",
                dir.path().join("data").display()
            ),
        )?;
        let mut registry = Self {
            host,
            config,
            dir,
            process: None,
        };
        registry.resume().await?;
        Ok(registry)
    }

    /// Copies every platform of `source` (in the shared test registry) to `target` here.
    pub async fn seed(&self, source: &str, target: &str) -> anyhow::Result<()> {
        run(
            "skopeo",
            &[
                "copy",
                "--all",
                "--src-tls-verify=false",
                "--dest-tls-verify=false",
                &format!("docker://{source}"),
                &format!("docker://{}/{target}", self.host),
            ],
        )
        .await
        .map(|_| ())
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(Child::id)
    }

    /// SIGKILLs it: connections are refused until [`PrivateRegistry::resume`].
    pub async fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            let _ = p.kill().await;
        }
    }

    /// Starts it again (or for the first time) and waits until it answers.
    pub async fn resume(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("registry.log"))?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&self.config)
            .env("GOGC", "800")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .context("starting docker-registry")?;
        self.process = Some(child);
        let url = format!("http://{}/v2/", self.host);
        wait_until(
            Duration::from_secs(20),
            "the private registry to answer",
            || {
                let url = url.clone();
                async move {
                    let out = Command::new("curl")
                        .args(["-fsS", "-o", "/dev/null", &url])
                        .output()
                        .await
                        .ok()?;
                    out.status.success().then_some(())
                }
            },
        )
        .await
    }
}

/// A unix socket in front of a Docker daemon's (a worker's `--docker-host`), which the test can cut
/// (open connections dropped, nothing listening: the daemon looks down) and restore. The daemon
/// itself is never touched.
pub struct DaemonProxy {
    /// The proxy's socket.
    pub path: PathBuf,
    target: PathBuf,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl DaemonProxy {
    /// Starts a proxy to the daemon at `docker_host` (`unix://PATH`).
    pub fn start(docker_host: &str) -> anyhow::Result<Self> {
        let target = docker_host
            .strip_prefix("unix://")
            .with_context(|| format!("{docker_host} is not a unix:// daemon address"))?;
        let dir = tempfile::tempdir()?;
        let mut proxy = Self {
            path: dir.path().join("docker.sock"),
            target: PathBuf::from(target),
            task: None,
            _dir: dir,
        };
        proxy.restore()?;
        Ok(proxy)
    }

    /// `unix://PATH`, for `--docker-host`.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    /// Drops every connection and stops listening, until [`DaemonProxy::restore`].
    pub fn cut(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        let _ = std::fs::remove_file(&self.path);
    }

    /// Listens and forwards again.
    pub fn restore(&mut self) -> anyhow::Result<()> {
        if self.task.is_some() {
            return Ok(());
        }
        let _ = std::fs::remove_file(&self.path);
        let listener = tokio::net::UnixListener::bind(&self.path)?;
        let target = self.target.clone();
        self.task = Some(tokio::spawn(async move {
            // Dropping the set, when this task is aborted, drops every connection.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                let target = target.clone();
                connections.spawn(async move {
                    if let Ok(mut daemon) = tokio::net::UnixStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut daemon).await;
                    }
                });
            }
        }));
        Ok(())
    }
}

impl Drop for DaemonProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

/// A tmpfs mounted on a folder for the test's lifetime.
pub struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. `8m`) on `dir`, made first; the tests run as root.
    pub fn mount(dir: &std::path::Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs on {} (the tests run as root): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: the worker may still hold files there while it is being killed.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}
