//! Harness for Manifold's system tests: real processes of our binaries against the real Docker
//! daemons, registry and base images that `deploy/dev-env.sh` starts on this machine.
//!
//! A test states only what matters:
//!
//! ```no_run
//! # async fn f() -> anyhow::Result<()> {
//! use manifold_tests::{Env, TestFarm};
//! let env = Env::from_env();
//! let mut farm = TestFarm::builder().start().await?;
//! farm.worker("x86").docker(&env.amd64_docker).spawn().await?;
//! farm.worker("arm").docker(&env.arm64_docker).platform("linux/arm64").spawn().await?;
//! let out = farm.cli(["build", "-t", "...", "--platform", "linux/amd64,linux/arm64", "."]).await?;
//! # Ok(()) }
//! ```
//!
//! Every process is killed when its handle drops. Nothing listens beyond 127.0.0.1.

pub mod browser;
pub mod faults;
pub mod ha;
pub mod long_output;
pub mod oci;
pub mod private_registry;
pub mod registry_proxy;
pub mod rogue;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use manifold_proto::v1;
use tokio::process::{Child, Command};

/// Where the real components are (from `deploy/dev-env.sh`'s output, with its defaults).
#[derive(Clone, Debug)]
pub struct Env {
    /// Registry host:port on loopback.
    pub registry: String,
    /// Multi-arch busybox base in that registry.
    pub base_image: String,
    /// Docker daemon building amd64 natively.
    pub amd64_docker: String,
    /// Docker daemon running arm64 under QEMU.
    pub arm64_docker: String,
    /// Docker daemon building amd64 natively, with the containerd image store.
    pub cd_amd64_docker: String,
    /// Docker daemon running arm64 under QEMU, with the containerd image store.
    pub cd_arm64_docker: String,
    /// Docker daemon building amd64 natively (graphdriver) whose build cache tests may prune; the
    /// other four keep theirs, since tests assert cached steps on them.
    pub prune_docker: String,
}

impl Env {
    /// Reads `MANIFOLD_TEST_*`, defaulting to what `deploy/dev-env.sh` starts.
    pub fn from_env() -> Self {
        let var = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_owned());
        Self {
            registry: var("MANIFOLD_TEST_REGISTRY", "127.0.0.1:5000"),
            base_image: var("MANIFOLD_TEST_BASE_IMAGE", "127.0.0.1:5000/base/busybox:1"),
            amd64_docker: var("MANIFOLD_TEST_AMD64_DOCKER", "unix:///var/run/docker.sock"),
            arm64_docker: var(
                "MANIFOLD_TEST_ARM64_DOCKER",
                "unix:///var/tmp/md2/docker.sock",
            ),
            cd_amd64_docker: var(
                "MANIFOLD_TEST_CD_AMD64_DOCKER",
                "unix:///var/tmp/md3/docker.sock",
            ),
            cd_arm64_docker: var(
                "MANIFOLD_TEST_CD_ARM64_DOCKER",
                "unix:///var/tmp/md4/docker.sock",
            ),
            prune_docker: var(
                "MANIFOLD_TEST_PRUNE_DOCKER",
                "unix:///var/tmp/md5/docker.sock",
            ),
        }
    }

    /// The (amd64, arm64) daemon pair of one image-store mode: `containerd` or `graphdriver`.
    pub fn pair(&self, store: &str) -> (String, String) {
        match store {
            "containerd" => (self.cd_amd64_docker.clone(), self.cd_arm64_docker.clone()),
            _ => (self.amd64_docker.clone(), self.arm64_docker.clone()),
        }
    }

    /// A fresh repository name in the test registry, so tests never see each other's tags.
    pub fn unique_repo(&self, name: &str) -> String {
        let id = uuid::Uuid::new_v4().simple().to_string();
        format!("{}/test/{name}-{}", self.registry, &id[..12])
    }
}

/// Path of one of our binaries, built by `cargo build --workspace --bins` next to the test binary.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/debug/deps/<test> -> target/debug/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` before the system tests",
        path.display()
    );
    path
}

/// A free loopback port (bound then released; the race is harmless on a test machine).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0")
}

/// A running coordinator and the workers attached to it.
pub struct TestFarm {
    /// `http://127.0.0.1:PORT`, or `https://…` for a secured farm.
    pub url: String,
    /// Its temp dir: the state dir (unless [`FarmBuilder::state_dir`] named another), the
    /// processes' logs, certificates and config.
    pub state_dir: tempfile::TempDir,
    /// The coordinator's `--state-dir`.
    pub state_path: PathBuf,
    coordinator: Option<Child>,
    workers: Vec<(String, Child)>,
    extra_args: Vec<String>,
    port: u16,
    /// The environment's components.
    pub env: Env,
    /// TLS, tokens and teams, when the farm is secured.
    pub secure: Option<Secured>,
}

/// What a secured farm's clients need: made by `manifold-coordinator dev-ca` and `issue-token`.
#[derive(Clone, Debug)]
pub struct Secured {
    /// Folder of ca.pem, coordinator.pem/.key and worker-NAME.pem/.key.
    pub certs: PathBuf,
    /// A token of the admin the harness adds to the config (for its own checks).
    pub admin_token: String,
    /// The coordinator's config file: `config` as given, plus the harness's admin token.
    pub config: PathBuf,
}

impl Secured {
    /// Makes, in `dir`, certificates with `manifold-coordinator dev-ca` (one per `workers` entry,
    /// `NAME` or `NAME=TEAM`), an admin token for the harness, and the config file (`config`,
    /// TOML: teams and tokens, plus that admin token).
    pub async fn make(dir: &Path, config: &str, workers: &[String]) -> anyhow::Result<Self> {
        let certs = dir.join("certs");
        let mut dev_ca = vec!["dev-ca".to_owned(), "--dir".into()];
        dev_ca.push(certs.display().to_string());
        for w in workers {
            dev_ca.extend(["--worker".into(), w.clone()]);
        }
        let args: Vec<&str> = dev_ca.iter().map(String::as_str).collect();
        run(&bin("manifold-coordinator").display().to_string(), &args).await?;
        let (admin_token, admin_entry) = issue_token(&["--name", "harness", "--admin"]).await?;
        let file = dir.join("config.toml");
        std::fs::write(&file, format!("{config}\n{admin_entry}"))?;
        Ok(Self {
            certs,
            admin_token,
            config: file,
        })
    }

    /// The CA certificate clients trust.
    pub fn ca(&self) -> PathBuf {
        self.certs.join("ca.pem")
    }

    /// The coordinator's flags: its config, its certificate and the CA of worker certificates.
    pub fn coordinator_args(&self) -> Vec<String> {
        let path = |p: PathBuf| p.display().to_string();
        vec![
            "--config".into(),
            path(self.config.clone()),
            "--tls-cert".into(),
            path(self.certs.join("coordinator.pem")),
            "--tls-key".into(),
            path(self.certs.join("coordinator.key")),
            "--client-ca".into(),
            path(self.ca()),
        ]
    }

    /// The environment of worker `name`'s process: the CA, and the certificate `dev-ca` made for
    /// it unless `with_certificate` is false.
    pub fn worker_env(&self, name: &str, with_certificate: bool) -> Vec<(&'static str, PathBuf)> {
        let mut env = vec![("MANIFOLD_CA_CERT", self.ca())];
        if with_certificate {
            env.push((
                "MANIFOLD_WORKER_CERT",
                self.certs.join(format!("worker-{name}.pem")),
            ));
            env.push((
                "MANIFOLD_WORKER_KEY",
                self.certs.join(format!("worker-{name}.key")),
            ));
        }
        env
    }

    /// A TLS channel to the coordinator at `url`, trusting the CA.
    pub async fn channel(&self, url: &str) -> anyhow::Result<tonic::transport::Channel> {
        // The process may hold two rustls providers (ring via other crates): name ours.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let ca = std::fs::read(self.ca())?;
        let endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())?.tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(ca)),
        )?;
        Ok(endpoint.connect().await?)
    }

    /// `message` as a request carrying the harness's admin token.
    pub fn as_admin<T>(&self, message: T) -> tonic::Request<T> {
        with_token(&self.admin_token, message)
    }
}

/// Options of a [`TestFarm`].
#[derive(Default)]
pub struct FarmBuilder {
    args: Vec<String>,
    secure: Option<(String, Vec<String>)>,
    state_path: Option<PathBuf>,
}

impl FarmBuilder {
    /// Passes `--wait-for-workers`.
    pub fn wait_for_workers(mut self, d: &str) -> Self {
        self.args.extend(["--wait-for-workers".into(), d.into()]);
        self
    }

    /// Passes `--max-attempts`.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.args.extend(["--max-attempts".into(), n.to_string()]);
        self
    }

    /// The coordinator's `--state-dir` (default: the farm's temp dir).
    pub fn state_dir(mut self, dir: &Path) -> Self {
        self.state_path = Some(dir.to_owned());
        self
    }

    /// Any other coordinator flag.
    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.into());
        self
    }

    /// Serves TLS with certificates from `manifold-coordinator dev-ca` (one per `workers` entry,
    /// `NAME` or `NAME=TEAM`), and reads `config` (TOML: teams, tokens) plus an admin token the
    /// harness issues for itself. Without this the farm is `--plaintext`.
    pub fn secured(mut self, config: &str, workers: &[&str]) -> Self {
        self.secure = Some((
            config.to_owned(),
            workers.iter().map(|w| (*w).to_owned()).collect(),
        ));
        self
    }

    /// Starts the coordinator and waits until it answers.
    pub async fn start(mut self) -> anyhow::Result<TestFarm> {
        let port = free_port();
        let state_dir = tempfile::tempdir()?;
        let secure = match self.secure.take() {
            None => {
                self.args.push("--plaintext".into());
                None
            }
            Some((config, workers)) => {
                let secure = Secured::make(state_dir.path(), &config, &workers).await?;
                self.args.extend(secure.coordinator_args());
                Some(secure)
            }
        };
        let scheme = if secure.is_some() { "https" } else { "http" };
        let mut farm = TestFarm {
            url: format!("{scheme}://127.0.0.1:{port}"),
            state_path: (self.state_path.take()).unwrap_or_else(|| state_dir.path().to_owned()),
            state_dir,
            coordinator: None,
            workers: Vec::new(),
            extra_args: self.args,
            port,
            env: Env::from_env(),
            secure,
        };
        farm.start_coordinator().await?;
        Ok(farm)
    }
}

/// Runs `manifold-coordinator issue-token ARGS`: the token, and the `[[token]]` entry to add to a
/// config file.
pub async fn issue_token(args: &[&str]) -> anyhow::Result<(String, String)> {
    let mut all = vec!["issue-token"];
    all.extend_from_slice(args);
    let out = run(&bin("manifold-coordinator").display().to_string(), &all).await?;
    let token = out
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .context("issue-token printed no `token: ` line")?
        .to_owned();
    let entry = out
        .lines()
        .skip_while(|l| *l != "[[token]]")
        .collect::<Vec<_>>()
        .join("\n");
    Ok((token, entry))
}

impl TestFarm {
    /// A farm with one worker per daemon of the `store` pair (`containerd` or `graphdriver`):
    /// `x86` on the amd64 daemon, `arm` on the arm64 one (platform linux/arm64).
    pub async fn on_pair(env: &Env, store: &str) -> anyhow::Result<TestFarm> {
        let (amd64, arm64) = env.pair(store);
        let mut farm = TestFarm::builder().start().await?;
        farm.worker("x86").docker(&amd64).spawn().await?;
        farm.worker("arm")
            .docker(&arm64)
            .platform("linux/arm64")
            .spawn()
            .await?;
        Ok(farm)
    }

    /// A farm with default options.
    pub fn builder() -> FarmBuilder {
        FarmBuilder::default()
    }

    async fn start_coordinator(&mut self) -> anyhow::Result<()> {
        let child = Command::new(bin("manifold-coordinator"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--state-dir")
            .arg(&self.state_path)
            .args(&self.extra_args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log_file(&self.state_dir, "coordinator")?)
            .kill_on_drop(true)
            .spawn()
            .context("starting manifold-coordinator")?;
        self.coordinator = Some(child);
        wait_until(
            Duration::from_secs(20),
            "the coordinator to answer",
            || async {
                let mut c = v1::builds_client::BuildsClient::new(self.channel().await.ok()?);
                c.list(self.as_admin(v1::ListBuildsRequest {
                    limit: 1,
                    ..Default::default()
                }))
                .await
                .ok()
                .map(|_| ())
            },
        )
        .await
    }

    /// A channel to the coordinator (TLS trusting the farm's CA when secured).
    pub async fn channel(&self) -> anyhow::Result<tonic::transport::Channel> {
        match &self.secure {
            Some(s) => s.channel(&self.url).await,
            None => Ok(tonic::transport::Endpoint::from_shared(self.url.clone())?
                .connect()
                .await?),
        }
    }

    /// A channel to a secured farm presenting the client certificate `dev-ca` made for worker
    /// `name`: what a program holding that worker's key can do, whatever it runs.
    pub async fn worker_channel(&self, name: &str) -> anyhow::Result<tonic::transport::Channel> {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let s = self
            .secure
            .as_ref()
            .context("worker certificates exist only on a secured farm")?;
        let read = |file: String| std::fs::read(s.certs.join(&file)).context(file);
        let identity = tonic::transport::Identity::from_pem(
            read(format!("worker-{name}.pem"))?,
            read(format!("worker-{name}.key"))?,
        );
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(read(
                "ca.pem".into(),
            )?))
            .identity(identity);
        let endpoint =
            tonic::transport::Endpoint::from_shared(self.url.clone())?.tls_config(tls)?;
        Ok(endpoint.connect().await?)
    }

    /// `message` as a request carrying the harness's admin token (when secured).
    pub fn as_admin<T>(&self, message: T) -> tonic::Request<T> {
        match &self.secure {
            Some(s) => s.as_admin(message),
            None => tonic::Request::new(message),
        }
    }

    /// Names of the attached workers, with their owner teams.
    pub async fn attached_workers(&self) -> anyhow::Result<Vec<(String, String)>> {
        let mut c = v1::workers_client::WorkersClient::new(self.channel().await?);
        let list = c.list(self.as_admin(v1::ListWorkersRequest {})).await?;
        Ok(list
            .into_inner()
            .workers
            .into_iter()
            .map(|w| (w.name, w.owner))
            .collect())
    }

    /// The coordinator's process id, e.g. to signal it.
    pub fn coordinator_pid(&self) -> Option<u32> {
        self.coordinator.as_ref().and_then(Child::id)
    }

    /// The config file of a secured farm (teams and tokens).
    pub fn config_file(&self) -> PathBuf {
        match &self.secure {
            Some(s) => s.config.clone(),
            None => self.state_dir.path().join("config.toml"),
        }
    }

    /// SIGKILLs the coordinator.
    pub async fn kill_coordinator(&mut self) {
        if let Some(mut c) = self.coordinator.take() {
            let _ = c.kill().await;
        }
    }

    /// Starts the coordinator again on the same port and state dir.
    pub async fn restart_coordinator(&mut self) -> anyhow::Result<()> {
        self.kill_coordinator().await;
        self.start_coordinator().await
    }

    /// A worker to configure and spawn.
    pub fn worker(&mut self, name: &str) -> WorkerBuilder<'_> {
        WorkerBuilder {
            farm: self,
            name: name.to_owned(),
            args: Vec::new(),
            docker: None,
            without_certificate: false,
            envs: Vec::new(),
        }
    }

    /// SIGKILLs a worker.
    pub async fn kill_worker(&mut self, name: &str) {
        if let Some(i) = self.workers.iter().position(|(n, _)| n == name) {
            let (_, mut child) = self.workers.remove(i);
            let _ = child.kill().await;
        }
    }

    /// The worker's process, e.g. to signal it.
    pub fn worker_pid(&self, name: &str) -> Option<u32> {
        self.workers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, c)| c.id())
    }

    /// Waits for a worker process to exit and returns its status.
    pub async fn wait_worker_exit(
        &mut self,
        name: &str,
        timeout: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let i = self
            .workers
            .iter()
            .position(|(n, _)| n == name)
            .context("no such worker")?;
        let status = tokio::time::timeout(timeout, self.workers[i].1.wait())
            .await
            .with_context(|| format!("worker {name} did not exit within {timeout:?}"))??;
        self.workers.remove(i);
        Ok(status)
    }

    /// Runs the CLI against this farm and returns its output (whatever the exit code); on a
    /// secured farm as the harness's admin.
    pub async fn cli<I, S>(&self, args: I) -> anyhow::Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let token = self.secure.as_ref().map(|s| s.admin_token.clone());
        self.cli_as(token.as_deref(), args).await
    }

    /// Runs the CLI with this token (`MANIFOLD_TOKEN`; none when `None`).
    pub async fn cli_as<I, S>(&self, token: Option<&str>, args: I) -> anyhow::Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.run_cli(token, args, &[]).await
    }

    /// Runs the CLI as [`TestFarm::cli`] does, with these environment variables set too.
    pub async fn cli_with_env(
        &self,
        args: &[&str],
        vars: &[(&str, &str)],
    ) -> anyhow::Result<Output> {
        let token = self.secure.as_ref().map(|s| s.admin_token.clone());
        self.run_cli(token.as_deref(), args, vars).await
    }

    async fn run_cli<I, S>(
        &self,
        token: Option<&str>,
        args: I,
        vars: &[(&str, &str)],
    ) -> anyhow::Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let out = self
            .cli_command(token)
            .args(args)
            .envs(vars.iter().copied())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .context("running manifold")?;
        Ok(out)
    }

    fn cli_command(&self, token: Option<&str>) -> Command {
        cli_command(&self.url, self.secure.as_ref(), token)
    }

    /// The CLI as a child process (for tests that interrupt it).
    pub fn cli_child<I, S>(&self, args: I) -> anyhow::Result<Child>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let token = self.secure.as_ref().map(|s| s.admin_token.clone());
        self.cli_command(token.as_deref())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("running manifold")
    }

    /// A gRPC client of the Builds service (wrap requests in [`TestFarm::as_admin`] on a
    /// secured farm).
    pub async fn builds(
        &self,
    ) -> anyhow::Result<v1::builds_client::BuildsClient<tonic::transport::Channel>> {
        Ok(v1::builds_client::BuildsClient::new(self.channel().await?))
    }

    /// The coordinator's log so far (for failure messages).
    pub fn coordinator_log(&self) -> String {
        std::fs::read_to_string(self.state_dir.path().join("coordinator.log")).unwrap_or_default()
    }

    /// A worker's log so far.
    pub fn worker_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.state_dir.path().join(format!("worker-{name}.log")))
            .unwrap_or_default()
    }
}

/// Options of a worker process.
pub struct WorkerBuilder<'a> {
    farm: &'a mut TestFarm,
    name: String,
    args: Vec<String>,
    docker: Option<String>,
    without_certificate: bool,
    envs: Vec<(String, String)>,
}

impl<'a> WorkerBuilder<'a> {
    /// An environment variable of the worker process, e.g. `DOCKER_CONFIG`.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.envs.push((key.to_owned(), value.to_owned()));
        self
    }

    /// The Docker daemon it drives.
    pub fn docker(mut self, host: &str) -> Self {
        self.docker = Some(host.to_owned());
        self
    }

    /// Forces the platform (marks the worker emulated).
    pub fn platform(mut self, p: &str) -> Self {
        self.args.extend(["--platform".into(), p.into()]);
        self
    }

    /// Its slots.
    pub fn slots(mut self, n: u32) -> Self {
        self.args.extend(["--slots".into(), n.to_string()]);
        self
    }

    /// On a secured farm: trusts the CA but presents no client certificate.
    pub fn without_certificate(mut self) -> Self {
        self.without_certificate = true;
        self
    }

    /// Spawns it and waits until the coordinator lists it.
    pub async fn spawn(self) -> anyhow::Result<()> {
        let name = self.name.clone();
        let farm = self.start()?;
        wait_until(
            Duration::from_secs(30),
            &format!("worker {name} to attach"),
            || async {
                let workers = farm.attached_workers().await.ok()?;
                workers.iter().any(|(n, _)| *n == name).then_some(())
            },
        )
        .await
        .with_context(|| format!("--- worker {name} ---\n{}", farm.worker_log(&name)))
    }

    /// Spawns it without waiting for it to attach.
    pub fn start(self) -> anyhow::Result<&'a mut TestFarm> {
        let farm = self.farm;
        let cache = farm.state_dir.path().join(format!("cache-{}", self.name));
        let mut cmd = Command::new(bin("manifold-worker"));
        cmd.arg("--coordinator")
            .arg(&farm.url)
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
        cmd.envs(self.envs.iter().map(|(k, v)| (k, v)));
        if let Some(s) = &farm.secure {
            cmd.envs(s.worker_env(&self.name, !self.without_certificate));
        }
        let child = cmd.spawn().context("starting manifold-worker")?;
        farm.workers.push((self.name.clone(), child));
        Ok(farm)
    }
}

fn log_file(dir: &tempfile::TempDir, name: &str) -> anyhow::Result<Stdio> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join(format!("{name}.log")))?;
    Ok(Stdio::from(f))
}

/// `manifold --coordinator COORDINATORS` (one URL, or several comma-separated) with the CA of a
/// secured farm and `token` (`MANIFOLD_TOKEN`; none when `None`) in its environment, and no user
/// config file.
pub fn cli_command(coordinators: &str, secure: Option<&Secured>, token: Option<&str>) -> Command {
    let mut cmd = Command::new(bin("manifold"));
    cmd.arg("--coordinator")
        .arg(coordinators)
        .env_remove("MANIFOLD_TOKEN")
        .env("MANIFOLD_CONFIG", "/dev/null");
    if let Some(s) = secure {
        cmd.env("MANIFOLD_CA_CERT", s.ca());
    }
    if let Some(t) = token {
        cmd.env("MANIFOLD_TOKEN", t);
    }
    cmd
}

/// Two teams with one token each (alice in `mobile`, bob in `platform`): the config's TOML, and
/// alice's and bob's tokens.
pub async fn two_teams() -> anyhow::Result<(String, String, String)> {
    let (alice, alice_entry) = issue_token(&["--name", "alice", "--team", "mobile"]).await?;
    let (bob, bob_entry) = issue_token(&["--name", "bob", "--team", "platform"]).await?;
    let config = format!(
        "[[team]]\nname = \"mobile\"\n\n[[team]]\nname = \"platform\"\n\n{alice_entry}\n\n{bob_entry}\n"
    );
    Ok((config, alice, bob))
}

/// A TLS farm of [`two_teams`] and two workers: `x86` on the amd64 daemon and `arm`
/// (linux/arm64) on the arm64 one. Returns the farm and alice's and bob's tokens.
pub async fn two_team_farm(env: &Env) -> anyhow::Result<(TestFarm, String, String)> {
    let (config, alice, bob) = two_teams().await?;
    let mut farm = TestFarm::builder()
        .secured(&config, &["x86", "arm"])
        .start()
        .await?;
    farm.worker("x86").docker(&env.amd64_docker).spawn().await?;
    farm.worker("arm")
        .docker(&env.arm64_docker)
        .platform("linux/arm64")
        .spawn()
        .await?;
    Ok((farm, alice, bob))
}

/// `message` as a request carrying `token` as its bearer token.
pub fn with_token<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value = format!("Bearer {token}")
        .parse()
        .expect("a token is valid header text");
    request.metadata_mut().insert("authorization", value);
    request
}

/// Polls `probe` until it yields `Some`, or fails after `timeout` naming `what`.
pub async fn wait_until<F, Fut, T>(timeout: Duration, what: &str, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = probe().await {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A build context folder with the given files.
pub fn context_dir(files: &[(&str, &str)]) -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    for (path, content) in files {
        let p = dir.path().join(path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(p, content)?;
    }
    Ok(dir)
}

/// Runs an external command (skopeo, docker) and returns stdout, failing with its stderr.
pub async fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// `skopeo inspect --raw` of a reference in the plain-HTTP test registry.
pub async fn skopeo_raw(reference: &str) -> anyhow::Result<serde_json::Value> {
    let raw = run(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{reference}"),
        ],
    )
    .await?;
    Ok(serde_json::from_str(&raw)?)
}

/// The tags of a repository per skopeo; empty when the repository has none (or does not exist).
pub async fn skopeo_tags(repository: &str) -> anyhow::Result<Vec<String>> {
    let out = Command::new("skopeo")
        .args([
            "list-tags",
            "--tls-verify=false",
            &format!("docker://{repository}"),
        ])
        .output()
        .await?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("NAME_UNKNOWN") || err.contains("404") || err.contains("not found") {
            return Ok(Vec::new());
        }
        bail!("skopeo list-tags {repository}: {err}");
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(v["Tags"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

/// Stdout and stderr of a CLI run, for assertion messages.
pub fn show(out: &Output) -> String {
    format!(
        "exit: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
