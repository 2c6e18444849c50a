//! Speed benchmark of the farm against plain Docker on the same two daemons, side by side in one run.
//!
//! ```text
//! bash deploy/dev-env.sh
//! cargo build --release --workspace --bins && cargo bench -p manifold-tests --bench farm
//! ```
//!
//! It measures RELEASE binaries: `cargo bench` builds this file with the (optimised) bench
//! profile into target/release/deps, and the harness's `bin()` takes the coordinator, worker and
//! CLI from target/release, which `cargo bench` does not build by itself (hence the first
//! command). Missing binaries stop the run with that instruction; binaries older than the sources
//! are reported in the output.
//!
//! Five parts (pass `small`, `context`, `rebuild`, `cold` as arguments after `--` to run only some
//! of them):
//!
//! 1. **small**: the same two-platform build (a few seconds of real work in a `RUN` step, a fresh
//!    nonce file per build so nothing comes from the cache) through the farm (coordinator + a
//!    native amd64 worker on daemon 1 + an arm64 worker on daemon 2, under QEMU), and directly
//!    (`DOCKER_BUILDKIT=1 docker build --platform P` + `docker push` on each daemon, both
//!    platforms in parallel). Reported: farm time / slowest direct platform, and the farm's fixed
//!    overhead (farm - slowest direct), with where the farm's time goes (from the build's events).
//! 2. **context**: a 1 GiB incompressible context: `manifold build --detach` (pack, hash, upload,
//!    submit, to a coordinator with no workers) under `/usr/bin/time -f %M` for the CLI's peak RSS,
//!    against the classic builder's `docker build` of the same context (it sends the whole
//!    context to the daemon before step 1): throughput of each and their ratio.
//! 3. the same context submitted again, unchanged: bytes uploaded (the CLI's line), cross-checked
//!    against the coordinator's context store (file mtime, "context stored" log lines).
//! 4. **rebuild** and 5. **cold**, on both engine modes: see [`push`] (the incremental rebuild of
//!    an image with a cached 256 MiB layer, the first push of a 1 GiB image, the worker's peak
//!    scratch disk per job).
//!
//! Knobs (environment): MANIFOLD_BENCH_ITERATIONS (small builds per path, default 7, plus one
//! warm-up), MANIFOLD_BENCH_CONTEXT_ITERATIONS (default 3), MANIFOLD_BENCH_CONTEXT_MIB (default
//! 1024), MANIFOLD_BENCH_WORK_MIB (MiB hashed by the RUN step, default 48), those of [`push`]
//! (MANIFOLD_BENCH_MODES, MANIFOLD_BENCH_REBUILD_ITERATIONS/_MIB, MANIFOLD_BENCH_COLD_ITERATIONS/_MIB) and the
//! MANIFOLD_TEST_* variables of the harness. Every step has a timeout; images, processes, temp
//! dirs and pushed manifests are removed at the end, also after a failure.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail, ensure};
use manifold_proto::v1;
use manifold_tests::{Env, TestFarm, bin};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

#[path = "farm/push.rs"]
mod push;

/// Debian's docker CLI 20.10: BuildKit builds natively (the other CLI on the machine has no buildx).
const DOCKER: &str = "/usr/bin/docker";
/// GNU time, for the peak RSS of a process.
const TIME: &str = "/usr/bin/time";
const PLATFORMS: [(&str, &str); 2] = [("linux/amd64", "amd64"), ("linux/arm64", "arm64")];
const STEP_TIMEOUT: Duration = Duration::from_secs(300);
/// The whole run stops with an error past this.
const RUN_DEADLINE: Duration = Duration::from_secs(45 * 60);

struct Config {
    iterations: usize,
    context_iterations: usize,
    context_mib: u64,
    work_mib: u64,
    small: bool,
    context: bool,
    rebuild: bool,
    cold: bool,
    push: push::PushConfig,
}

impl Config {
    fn from_env() -> anyhow::Result<Self> {
        let num = |k: &str, d: u64| -> anyhow::Result<u64> {
            match std::env::var(k) {
                Ok(v) => v
                    .parse()
                    .with_context(|| format!("{k}={v} is not a number")),
                Err(_) => Ok(d),
            }
        };
        let parts: Vec<String> = std::env::args()
            .skip(1)
            .filter(|a| !a.starts_with('-'))
            .collect();
        const PARTS: [&str; 4] = ["small", "context", "rebuild", "cold"];
        for p in &parts {
            ensure!(
                PARTS.contains(&p.as_str()),
                "unknown part `{p}`: pass some of {}",
                PARTS.join(", ")
            );
        }
        let all = parts.is_empty();
        Ok(Self {
            iterations: num("MANIFOLD_BENCH_ITERATIONS", 7)?.max(1) as usize,
            context_iterations: num("MANIFOLD_BENCH_CONTEXT_ITERATIONS", 3)?.max(1) as usize,
            context_mib: num("MANIFOLD_BENCH_CONTEXT_MIB", 1024)?.max(1),
            work_mib: num("MANIFOLD_BENCH_WORK_MIB", 48)?,
            small: all || parts.iter().any(|p| p == "small"),
            context: all || parts.iter().any(|p| p == "context"),
            rebuild: all || parts.iter().any(|p| p == "rebuild"),
            cold: all || parts.iter().any(|p| p == "cold"),
            push: push::PushConfig::from_env(&num)?,
        })
    }
}

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; `cargo test --benches`/`--all-targets` does not: the
    // benchmark then only says how to run it, instead of minutes of work on debug binaries.
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "farm benchmark: skipped (not under `cargo bench`); run `cargo build --release --workspace --bins && cargo bench -p manifold-tests --bench farm`"
        );
        return ExitCode::SUCCESS;
    }
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("farm bench: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = runtime.block_on(async {
        let run = Run::new();
        let result = tokio::time::timeout(RUN_DEADLINE, run.all(&config)).await;
        run.cleanup().await;
        match result {
            Ok(Ok(())) => ExitCode::SUCCESS,
            Ok(Err(e)) => {
                eprintln!("farm bench FAILED: {e:#}");
                ExitCode::FAILURE
            }
            Err(_) => {
                eprintln!("farm bench FAILED: still running after {RUN_DEADLINE:?}");
                ExitCode::FAILURE
            }
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    code
}

/// One benchmark run: its id (labels every image it builds), the repositories it pushed to.
struct Run {
    id: String,
    env: Env,
    repos: std::sync::Mutex<Vec<String>>,
}

impl Run {
    fn new() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
        Self {
            id,
            env: Env::from_env(),
            repos: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn label(&self) -> String {
        format!("manifold.bench.run={}", self.id)
    }

    fn repo(&self, name: &str) -> String {
        let repo = format!("{}/bench/{name}-{}", self.env.registry, self.id);
        self.repos.lock().unwrap().push(repo.clone());
        repo
    }

    async fn all(&self, config: &Config) -> anyhow::Result<()> {
        let binaries = check_binaries()?;
        let machine = machine_facts(&self.env).await;
        println!("manifold farm benchmark, run {}", self.id);
        println!("{machine}");
        println!("binaries (release): {binaries}");
        let mut report = Report {
            header: format!("{machine}\nbinaries (release): {binaries}\n"),
            ..Report::default()
        };
        if config.small {
            report.small = Some(self.small_builds(config).await?);
        }
        if config.context {
            report.context = Some(self.big_context(config).await?);
        }
        for &mode in &config.push.modes {
            if config.rebuild {
                report
                    .rebuilds
                    .push(self.rebuilds(mode, &config.push).await?);
            }
            if config.cold {
                report
                    .colds
                    .push(self.cold_pushes(mode, &config.push).await?);
            }
        }
        report.load_end = load_average();
        let text = report.render(config);
        println!("\n{text}");
        let out = bin("manifold")
            .parent()
            .and_then(Path::parent)
            .map(|t| t.join("manifold-bench"))
            .context("target dir")?;
        std::fs::create_dir_all(&out)?;
        let file = out.join(format!("farm-{}.md", self.id));
        std::fs::write(&file, &text)?;
        println!("(also written to {})", file.display());
        Ok(())
    }

    // ---------------------------------------------------------------------------------------
    // Part 1: the small two-platform build, farm vs direct.
    // ---------------------------------------------------------------------------------------

    async fn small_builds(&self, config: &Config) -> anyhow::Result<SmallResults> {
        let env = &self.env;
        let mut farm = TestFarm::builder().start().await?;
        farm.worker("x86").docker(&env.amd64_docker).spawn().await?;
        farm.worker("arm")
            .docker(&env.arm64_docker)
            .platform("linux/arm64")
            .spawn()
            .await?;
        let farm_repo = self.repo("small-farm");
        let direct_repo = self.repo("small-direct");
        let dockerfile = format!(
            "FROM {base}\nCOPY nonce /nonce\nRUN dd if=/dev/zero bs=1M count={work} 2>/dev/null | sha256sum > /work && cat /nonce >> /work\n",
            base = env.base_image,
            work = config.work_mib
        );
        let scratch = tempfile::tempdir()?;
        let mut results = SmallResults::default();
        println!(
            "\n== small build: `RUN` hashes {} MiB; {} measured iterations + 1 warm-up, order alternating ==",
            config.work_mib, config.iterations
        );
        for i in 0..=config.iterations {
            let warmup = i == 0;
            // Same-size nonces, distinct per path: neither path can reuse the other's cache.
            let farm_ctx = small_context(scratch.path(), &format!("farm-{i}"), &dockerfile)?;
            let direct_ctx = small_context(scratch.path(), &format!("direct-{i}"), &dockerfile)?;
            let load = load_average();
            let farm_first = i % 2 == 0;
            let (f, d) = if farm_first {
                let f = self.farm_small(&farm, &farm_repo, i, &farm_ctx).await?;
                let d = self.direct_small(&direct_repo, i, &direct_ctx).await?;
                (f, d)
            } else {
                let d = self.direct_small(&direct_repo, i, &direct_ctx).await?;
                let f = self.farm_small(&farm, &farm_repo, i, &farm_ctx).await?;
                (f, d)
            };
            let slowest = d.slowest();
            let ratio = f.total.as_secs_f64() / slowest.as_secs_f64();
            let overhead = f.total.as_secs_f64() - slowest.as_secs_f64();
            println!(
                "{} {i} ({} first, load {load}): farm {:.2} s | direct amd64 {:.2}+{:.2} s, arm64 {:.2}+{:.2} s (build+push) | farm/slowest {:.3}, overhead {:+.2} s | CLI peak RSS {} KiB",
                if warmup { "warm-up" } else { "iter" },
                if farm_first { "farm" } else { "direct" },
                f.total.as_secs_f64(),
                d.per_platform[0].0.as_secs_f64(),
                d.per_platform[0].1.as_secs_f64(),
                d.per_platform[1].0.as_secs_f64(),
                d.per_platform[1].1.as_secs_f64(),
                ratio,
                overhead,
                f.rss_kib
            );
            println!("      farm phases: {}", f.phases.describe());
            if !warmup {
                results.iterations.push((f, d));
            }
        }
        drop(farm);
        Ok(results)
    }

    async fn farm_small(
        &self,
        farm: &TestFarm,
        repo: &str,
        i: usize,
        ctx: &Path,
    ) -> anyhow::Result<FarmSmall> {
        sync_disks().await;
        let started_ms = now_ms();
        let tag = format!("{repo}:{i}");
        let args = [
            "--coordinator",
            &farm.url,
            "build",
            "-t",
            &tag,
            "--platform",
            "linux/amd64,linux/arm64",
            "--label",
            &self.label(),
            "-q",
            path_str(ctx)?,
        ];
        let run = timed(&bin("manifold"), &args, &[], true).await?;
        if !run.ok {
            bail!(
                "farm build {i} failed: {}\n--- coordinator ---\n{}\n--- x86 ---\n{}\n--- arm ---\n{}",
                run.stderr,
                tail(&farm.coordinator_log(), 40),
                tail(&farm.worker_log("x86"), 40),
                tail(&farm.worker_log("arm"), 40)
            );
        }
        let phases = farm_phases(
            farm,
            started_ms,
            started_ms + run.elapsed.as_millis() as i64,
        )
        .await
        .unwrap_or_else(|e| {
            eprintln!("(no phase breakdown: {e:#})");
            FarmPhases::default()
        });
        Ok(FarmSmall {
            total: run.elapsed,
            rss_kib: run.rss_kib.unwrap_or(0),
            phases,
        })
    }

    async fn direct_small(&self, repo: &str, i: usize, ctx: &Path) -> anyhow::Result<DirectSmall> {
        sync_disks().await;
        let label = self.label();
        let one = |platform: &'static str, arch: &'static str, host: String| {
            let tag = format!("{repo}:{i}-{arch}");
            let label = label.clone();
            async move {
                let start = Instant::now();
                let build = timed(
                    Path::new(DOCKER),
                    &[
                        "-H",
                        &host,
                        "build",
                        "--platform",
                        platform,
                        "--label",
                        &label,
                        "-t",
                        &tag,
                        path_str(ctx)?,
                    ],
                    &[("DOCKER_BUILDKIT", "1")],
                    false,
                )
                .await?;
                ensure!(
                    build.ok,
                    "direct docker build for {platform} failed: {}",
                    build.stderr
                );
                let built = start.elapsed();
                let push =
                    timed(Path::new(DOCKER), &["-H", &host, "push", &tag], &[], false).await?;
                ensure!(
                    push.ok,
                    "direct docker push for {platform} failed: {}{}",
                    push.stdout,
                    push.stderr
                );
                anyhow::Ok((built, start.elapsed() - built))
            }
        };
        let (a, b) = tokio::join!(
            one(
                PLATFORMS[0].0,
                PLATFORMS[0].1,
                self.env.amd64_docker.clone()
            ),
            one(
                PLATFORMS[1].0,
                PLATFORMS[1].1,
                self.env.arm64_docker.clone()
            )
        );
        Ok(DirectSmall {
            per_platform: [a?, b?],
        })
    }

    // ---------------------------------------------------------------------------------------
    // Parts 2 and 3: the big context, and resubmitting it unchanged.
    // ---------------------------------------------------------------------------------------

    async fn big_context(&self, config: &Config) -> anyhow::Result<ContextResults> {
        let farm = TestFarm::builder().wait_for_workers("60m").start().await?;
        let dir = tempfile::Builder::new()
            .prefix("manifold-bench-ctx")
            .tempdir()?;
        println!(
            "\n== {} MiB context: {} iterations, order alternating ==",
            config.context_mib, config.context_iterations
        );
        let gen_start = Instant::now();
        let root = dir.path().to_owned();
        let mib = config.context_mib;
        tokio::task::spawn_blocking(move || write_big_context(&root, mib)).await??;
        println!(
            "generated {} MiB of incompressible data in {:.1} s",
            mib,
            gen_start.elapsed().as_secs_f64()
        );
        let store = farm.state_dir.path().join("contexts").join("sha256");
        let repo = self.repo("big-context");
        let mut results = ContextResults::default();
        for i in 0..config.context_iterations {
            // A new nonce: a new digest, so the coordinator must receive everything again.
            std::fs::write(dir.path().join("small"), format!("{}-{i:04}\n", self.id))?;
            let load = load_average();
            let docker_first = i % 2 == 0;
            let (m, d) = if docker_first {
                let d = self.docker_send(dir.path(), i).await?;
                let m = self.manifold_upload(&farm, &repo, i, dir.path()).await?;
                (m, d)
            } else {
                let m = self.manifold_upload(&farm, &repo, i, dir.path()).await?;
                let d = self.docker_send(dir.path(), i).await?;
                (m, d)
            };

            let stored = find_stored(&store, &m.short_digest)?;
            let mut m = m;
            m.phases = upload_phases(&farm, &m, &stored)
                .await
                .map_err(|e| eprintln!("(no upload phases: {e:#})"))
                .ok();

            // Part 3: the same context again.
            let file_before = file_identity(&stored)?;
            let stored_lines_before = farm.coordinator_log().matches("context stored").count();
            let again = self.manifold_submit(&farm, &repo, i, dir.path()).await?;
            let file_after = file_identity(&stored)?;
            let stored_lines_after = farm.coordinator_log().matches("context stored").count();
            let resubmit = Resubmit {
                bytes: again.uploaded,
                already_present_line: again.already_present,
                same_stored_file: file_before == file_after,
                no_new_store_log: stored_lines_before == stored_lines_after,
                elapsed: again.elapsed,
                rss_kib: again.rss_kib,
            };
            // Free the disk for the next iteration (both builds are cancelled already).
            let _ = std::fs::remove_file(&stored);

            let mbps = |bytes: u64, t: Duration| bytes as f64 / 1_048_576.0 / t.as_secs_f64();
            if let Some(p) = m.phases {
                println!(
                    "      manifold phases: hash pass {} ms, upload {} ms = {:.0} MiB/s, fsync + validate + submit {} ms, exit {} ms",
                    p.hash_ms,
                    p.upload_ms,
                    m.uploaded as f64 / 1_048_576.0 / (p.upload_ms.max(1) as f64 / 1000.0),
                    p.submit_ms,
                    p.exit_ms
                );
            }
            println!(
                "iter {i} ({} first, load {load}): manifold {:.2} s = {:.0} MiB/s (peak RSS {} KiB) | docker send {:.2} s = {:.0} MiB/s (whole build {:.2} s, CLI peak RSS {} KiB) | ratio {:.2} | resubmit {} bytes in {:.2} s (same stored file: {}, no new \"context stored\": {})",
                if docker_first { "docker" } else { "manifold" },
                m.elapsed.as_secs_f64(),
                mbps(m.uploaded, m.elapsed),
                m.rss_kib,
                d.send.as_secs_f64(),
                mbps(m.uploaded, d.send),
                d.total.as_secs_f64(),
                d.rss_kib,
                d.send.as_secs_f64() / m.elapsed.as_secs_f64(),
                resubmit.bytes,
                resubmit.elapsed.as_secs_f64(),
                resubmit.same_stored_file,
                resubmit.no_new_store_log
            );
            results.iterations.push((m, d, resubmit));
        }
        drop(farm);
        drop(dir);
        Ok(results)
    }

    /// `manifold build --detach` of a context the coordinator lacks, then cancels the build.
    async fn manifold_upload(
        &self,
        farm: &TestFarm,
        repo: &str,
        i: usize,
        ctx: &Path,
    ) -> anyhow::Result<ManifoldUpload> {
        let run = self.manifold_submit(farm, repo, i, ctx).await?;
        ensure!(
            !run.already_present && run.uploaded > 0,
            "expected an upload, the CLI said: {}",
            run.stderr
        );
        Ok(run)
    }

    async fn manifold_submit(
        &self,
        farm: &TestFarm,
        repo: &str,
        i: usize,
        ctx: &Path,
    ) -> anyhow::Result<ManifoldUpload> {
        sync_disks().await;
        let tag = format!("{repo}:{i}");
        let started_ms = now_ms();
        let args = [
            "--coordinator",
            &farm.url,
            "build",
            "-t",
            &tag,
            "--platform",
            "linux/amd64",
            "--progress",
            "plain",
            "--detach",
            path_str(ctx)?,
        ];
        let run = timed(&bin("manifold"), &args, &[], true).await?;
        ensure!(
            run.ok,
            "manifold build --detach failed: {}\n--- coordinator ---\n{}",
            run.stderr,
            tail(&farm.coordinator_log(), 40)
        );
        let id = run.stdout.trim().to_owned();
        let cancel = timed(
            &bin("manifold"),
            &["--coordinator", &farm.url, "cancel", &id],
            &[],
            false,
        )
        .await?;
        ensure!(cancel.ok, "manifold cancel {id}: {}", cancel.stderr);
        parse_context_line(&run.stderr)
            .map(|(short_digest, uploaded, already_present)| ManifoldUpload {
                id,
                started_ms,
                elapsed: run.elapsed,
                rss_kib: run.rss_kib.unwrap_or(0),
                uploaded,
                already_present,
                short_digest,
                stderr: run.stderr.clone(),
                phases: None,
            })
            .with_context(|| format!("no context line in the CLI's output: {}", run.stderr))
    }

    /// The classic builder's `docker build` of the same context: the time until step 1 is the
    /// time to send (and unpack) the context on the daemon.
    async fn docker_send(&self, ctx: &Path, i: usize) -> anyhow::Result<DockerSend> {
        sync_disks().await;
        let rss_file = tempfile::NamedTempFile::new()?;
        let tag = format!("manifold-bench-{}/context:{i}", self.id);
        let label = self.label();
        let start = Instant::now();
        let mut child = Command::new(TIME)
            .args(["-o", path_str(rss_file.path())?, "-f", "%M", DOCKER])
            .args([
                "-H",
                &self.env.amd64_docker,
                "build",
                "--label",
                &label,
                "-t",
                &tag,
                path_str(ctx)?,
            ])
            .env("DOCKER_BUILDKIT", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("running docker build")?;
        let mut stdout = BufReader::new(child.stdout.take().context("stdout")?);
        let mut stderr = child.stderr.take().context("stderr")?;
        let work = async {
            let mut send = None;
            let mut seen = Vec::new();
            let mut line = Vec::new();
            loop {
                line.clear();
                if stdout.read_until(b'\n', &mut line).await? == 0 {
                    break;
                }
                if send.is_none() && String::from_utf8_lossy(&line).contains("Step 1/") {
                    send = Some(start.elapsed());
                }
                seen.extend_from_slice(&line);
            }
            let mut err = String::new();
            stderr.read_to_string(&mut err).await?;
            let status = child.wait().await?;
            anyhow::Ok((
                send,
                status,
                String::from_utf8_lossy(&seen).into_owned(),
                err,
            ))
        };
        let (send, status, out, err) = tokio::time::timeout(STEP_TIMEOUT, work)
            .await
            .context("docker build of the big context timed out")??;
        let total = start.elapsed();
        ensure!(status.success(), "docker build failed: {out}{err}");
        let send = send.with_context(|| format!("no `Step 1/` in docker's output: {out}"))?;
        Ok(DockerSend {
            send,
            total,
            rss_kib: read_rss(rss_file.path()).unwrap_or(0),
        })
    }

    /// Removes what the run made: images (by label) on both daemons, manifests it pushed.
    async fn cleanup(&self) {
        let label = self.label();
        for host in [&self.env.amd64_docker, &self.env.arm64_docker] {
            let ids = match output(
                DOCKER,
                &[
                    "-H",
                    host,
                    "image",
                    "ls",
                    "-q",
                    "--no-trunc",
                    "--filter",
                    &format!("label={label}"),
                ],
            )
            .await
            {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("cleanup: cannot list images on {host}: {e:#}");
                    continue;
                }
            };
            let mut ids: Vec<&str> = ids.lines().filter(|l| !l.is_empty()).collect();
            ids.sort_unstable();
            ids.dedup();
            if !ids.is_empty() {
                let mut args = vec!["-H", host.as_str(), "rmi", "-f"];
                args.extend(ids.iter().copied());
                if let Err(e) = output(DOCKER, &args).await {
                    eprintln!("cleanup: removing images on {host}: {e:#}");
                }
            }
        }
        let repos = self.repos.lock().unwrap().clone();
        for repo in repos {
            if let Err(e) = delete_manifests(&repo).await {
                eprintln!("cleanup: deleting manifests of {repo}: {e:#}");
            }
        }
    }
}

// -------------------------------------------------------------------------------------------
// Measurements
// -------------------------------------------------------------------------------------------

struct Timed {
    ok: bool,
    elapsed: Duration,
    stdout: String,
    stderr: String,
    rss_kib: Option<u64>,
}

/// Runs `program args` to its end (at most [`STEP_TIMEOUT`]) and times it; with `rss`, under GNU
/// time for the peak resident set size.
async fn timed(
    program: &Path,
    args: &[&str],
    envs: &[(&str, &str)],
    rss: bool,
) -> anyhow::Result<Timed> {
    let rss_file = tempfile::NamedTempFile::new()?;
    let mut cmd = if rss {
        let mut c = Command::new(TIME);
        c.args(["-o", path_str(rss_file.path())?, "-f", "%M"])
            .arg(program);
        c
    } else {
        Command::new(program)
    };
    cmd.args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let start = Instant::now();
    let out = tokio::time::timeout(STEP_TIMEOUT, cmd.output())
        .await
        .with_context(|| format!("{} {} timed out", program.display(), args.join(" ")))?
        .with_context(|| format!("running {}", program.display()))?;
    let elapsed = start.elapsed();
    Ok(Timed {
        ok: out.status.success(),
        elapsed,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        rss_kib: if rss { read_rss(rss_file.path()) } else { None },
    })
}

fn read_rss(path: &Path) -> Option<u64> {
    // GNU time appends its line after anything else it had to say (e.g. "Command exited ...").
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .rev()
        .find_map(|l| l.trim().parse().ok())
}

#[derive(Default, Clone)]
struct FarmPhases {
    /// CLI start -> build created on the coordinator: pack, hash, Has, upload, submit.
    submit_ms: i64,
    /// Per platform: created -> RUNNING, RUNNING -> "built image", "built image" -> SUCCEEDED.
    per_platform: BTreeMap<String, (i64, i64, i64)>,
    /// Last job SUCCEEDED -> Finished: children checked, list pushed under the tag.
    merge_ms: i64,
    /// Finished -> the CLI's exit.
    tail_ms: i64,
}

impl FarmPhases {
    fn describe(&self) -> String {
        let mut s = format!("submit {} ms", self.submit_ms);
        for (p, (queue, build, push)) in &self.per_platform {
            let _ = write!(
                s,
                "; {p}: to running {queue} ms, build {build} ms, push {push} ms"
            );
        }
        let _ = write!(
            s,
            "; merge {} ms; CLI tail {} ms",
            self.merge_ms, self.tail_ms
        );
        s
    }
}

/// Where the time of the farm's last build went, from the coordinator's record and events.
async fn farm_phases(farm: &TestFarm, cli_start: i64, cli_end: i64) -> anyhow::Result<FarmPhases> {
    let mut client = farm.builds().await?;
    let build = client
        .list(v1::ListBuildsRequest {
            limit: 1,
            ..Default::default()
        })
        .await?
        .into_inner()
        .builds
        .into_iter()
        .next()
        .context("no build listed")?;
    let mut stream = client
        .watch(v1::WatchBuildRequest {
            build_id: build.id.clone(),
        })
        .await?
        .into_inner();
    let name = |p: &Option<v1::Platform>| {
        p.as_ref()
            .map(|p| format!("{}/{}", p.os, p.architecture))
            .unwrap_or_default()
    };
    let mut running: BTreeMap<String, i64> = BTreeMap::new();
    let mut built: BTreeMap<String, i64> = BTreeMap::new();
    let mut succeeded: BTreeMap<String, i64> = BTreeMap::new();
    let mut finished = None;
    while let Some(event) = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .context("watch stalled")??
    {
        match event.event {
            Some(v1::build_event::Event::JobState(change)) => {
                let p = name(&change.platform);
                if change.state == v1::JobState::Running as i32 {
                    running.entry(p).or_insert(event.at_ms);
                } else if change.state == v1::JobState::Succeeded as i32 {
                    succeeded.insert(p, event.at_ms);
                }
            }
            Some(v1::build_event::Event::Log(line)) if line.line.starts_with("built image ") => {
                built.insert(name(&line.platform), event.at_ms);
            }
            Some(v1::build_event::Event::Finished(_)) => {
                finished = Some(event.at_ms);
                break;
            }
            _ => {}
        }
    }
    let finished = finished.context("no Finished event")?;
    let created = build.created_at_ms;
    let mut phases = FarmPhases {
        submit_ms: created - cli_start,
        merge_ms: finished - succeeded.values().copied().max().unwrap_or(finished),
        tail_ms: cli_end - finished,
        ..FarmPhases::default()
    };
    for (p, run_at) in &running {
        let b = built.get(p).copied().unwrap_or(*run_at);
        let s = succeeded.get(p).copied().unwrap_or(b);
        phases
            .per_platform
            .insert(p.clone(), (run_at - created, b - run_at, s - b));
    }
    Ok(phases)
}

struct FarmSmall {
    total: Duration,
    rss_kib: u64,
    phases: FarmPhases,
}

struct DirectSmall {
    /// (build, push) of amd64 then arm64.
    per_platform: [(Duration, Duration); 2],
}

impl DirectSmall {
    fn slowest(&self) -> Duration {
        self.per_platform
            .iter()
            .map(|(b, p)| *b + *p)
            .max()
            .unwrap_or_default()
    }
}

#[derive(Default)]
struct SmallResults {
    iterations: Vec<(FarmSmall, DirectSmall)>,
}

struct ManifoldUpload {
    id: String,
    started_ms: i64,
    elapsed: Duration,
    rss_kib: u64,
    uploaded: u64,
    already_present: bool,
    short_digest: String,
    stderr: String,
    /// Filled for a first upload: where its time went.
    phases: Option<UploadPhases>,
}

/// A first upload's time, split by what the coordinator recorded: the stored file's birth (first
/// chunk received) and last modification (last chunk written), and the build's creation.
#[derive(Clone, Copy)]
struct UploadPhases {
    /// CLI start -> first chunk on the coordinator: process start, hashing pass, `Has`.
    hash_ms: i64,
    /// First -> last chunk written: the upload proper.
    upload_ms: i64,
    /// Last chunk -> build created: fsync, rename, validation (reads the tar), submit.
    submit_ms: i64,
    /// Build created -> CLI exit.
    exit_ms: i64,
}

struct DockerSend {
    /// Start -> "Step 1/": context sent and unpacked by the daemon.
    send: Duration,
    /// The whole `docker build` (FROM scratch + COPY of a small file).
    total: Duration,
    rss_kib: u64,
}

struct Resubmit {
    bytes: u64,
    already_present_line: bool,
    /// The stored context is the same file (inode, birth time, size): not written again. (Its
    /// mtime moves: `Has` renews a context's retention by touching it.)
    same_stored_file: bool,
    no_new_store_log: bool,
    elapsed: Duration,
    rss_kib: u64,
}

#[derive(Default)]
struct ContextResults {
    iterations: Vec<(ManifoldUpload, DockerSend, Resubmit)>,
}

/// "context sha256:0123456789ab… uploaded, N bytes" or "... already on the coordinator, 0 bytes
/// uploaded": (short digest hex, bytes, already present).
fn parse_context_line(stderr: &str) -> Option<(String, u64, bool)> {
    let line = stderr.lines().find(|l| l.starts_with("context sha256:"))?;
    let short = line
        .trim_start_matches("context sha256:")
        .split('…')
        .next()?
        .to_owned();
    if line.contains("already on the coordinator") {
        let bytes = line.split(", ").nth(1)?.split(' ').next()?.parse().ok()?;
        return Some((short, bytes, true));
    }
    let bytes = line
        .rsplit("uploaded, ")
        .next()?
        .trim_end_matches(" bytes")
        .parse()
        .ok()?;
    Some((short, bytes, false))
}

async fn upload_phases(
    farm: &TestFarm,
    m: &ManifoldUpload,
    stored: &Path,
) -> anyhow::Result<UploadPhases> {
    let meta = std::fs::metadata(stored)?;
    let ms = |t: SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    };
    let first = ms(meta.created().context("file birth time (statx)")?);
    let last = ms(meta.modified()?);
    let created = farm
        .builds()
        .await?
        .get(v1::GetBuildRequest {
            build_id: m.id.clone(),
        })
        .await?
        .into_inner()
        .created_at_ms;
    let end = m.started_ms + m.elapsed.as_millis() as i64;
    Ok(UploadPhases {
        hash_ms: first - m.started_ms,
        upload_ms: last - first,
        submit_ms: created - last,
        exit_ms: end - created,
    })
}

/// What changes if the coordinator writes a context again (a new temp file renamed into place).
fn file_identity(path: &Path) -> anyhow::Result<(u64, Option<SystemTime>, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path)?;
    Ok((meta.ino(), meta.created().ok(), meta.len()))
}

fn find_stored(store: &Path, short_hex: &str) -> anyhow::Result<PathBuf> {
    for entry in std::fs::read_dir(store).with_context(|| format!("reading {}", store.display()))? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(short_hex) {
            return Ok(entry.path());
        }
    }
    bail!("no context {short_hex}… in {}", store.display())
}

// -------------------------------------------------------------------------------------------
// Report
// -------------------------------------------------------------------------------------------

#[derive(Default)]
struct Report {
    header: String,
    small: Option<SmallResults>,
    context: Option<ContextResults>,
    rebuilds: Vec<push::RebuildResults>,
    colds: Vec<push::ColdResults>,
    load_end: String,
}

/// Median, min and max of a sample.
struct Stat {
    median: f64,
    min: f64,
    max: f64,
}

fn stat(values: impl IntoIterator<Item = f64>) -> Stat {
    let mut v: Vec<f64> = values.into_iter().collect();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return Stat {
            median: f64::NAN,
            min: f64::NAN,
            max: f64::NAN,
        };
    }
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Stat {
        median,
        min: v[0],
        max: v[n - 1],
    }
}

impl Stat {
    fn show(&self, decimals: usize) -> String {
        format!(
            "{:.d$} ({:.d$} – {:.d$})",
            self.median,
            self.min,
            self.max,
            d = decimals
        )
    }
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

impl Report {
    fn render(&self, config: &Config) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "## Results (median (min – max)), run at unix time {}\n",
            now_ms() / 1000
        );
        let _ = writeln!(
            s,
            "```text\n{}load average at the end: {}\n```\n",
            self.header, self.load_end
        );
        let _ = writeln!(s, "| figure | value | goal | |");
        let _ = writeln!(s, "|---|---|---|---|");
        if let Some(small) = &self.small {
            let it = &small.iterations;
            let secs = |d: Duration| d.as_secs_f64();
            let farm = stat(it.iter().map(|(f, _)| secs(f.total)));
            let direct = stat(it.iter().map(|(_, d)| secs(d.slowest())));
            let amd = stat(
                it.iter()
                    .map(|(_, d)| secs(d.per_platform[0].0 + d.per_platform[0].1)),
            );
            let arm = stat(
                it.iter()
                    .map(|(_, d)| secs(d.per_platform[1].0 + d.per_platform[1].1)),
            );
            let ratio = stat(it.iter().map(|(f, d)| secs(f.total) / secs(d.slowest())));
            let overhead = stat(it.iter().map(|(f, d)| secs(f.total) - secs(d.slowest())));
            let rss = stat(it.iter().map(|(f, _)| f.rss_kib as f64 / 1024.0));
            let _ = writeln!(
                s,
                "| small build ({} MiB hashed in `RUN`), n={}: farm end to end, s | {} | | |",
                config.work_mib,
                it.len(),
                farm.show(2)
            );
            let _ = writeln!(s, "| direct amd64 build + push, s | {} | | |", amd.show(2));
            let _ = writeln!(
                s,
                "| direct arm64 (QEMU) build + push, s | {} | | |",
                arm.show(2)
            );
            let _ = writeln!(s, "| direct slowest platform, s | {} | | |", direct.show(2));
            let _ = writeln!(
                s,
                "| **farm / slowest direct** | **{}** | ≤ 1.15 | {} |",
                ratio.show(3),
                met(ratio.median <= 1.15)
            );
            let _ = writeln!(
                s,
                "| **farm fixed overhead (farm − slowest direct), s** | **{}** | < 1.0 | {} |",
                overhead.show(2),
                met(overhead.median < 1.0)
            );
            let _ = writeln!(
                s,
                "| CLI peak RSS during a small build, MiB | {} | | |",
                rss.show(1)
            );
            // Where the farm's time goes, for the platform that finished last.
            let phase = |f: &dyn Fn(&FarmPhases) -> i64| {
                stat(it.iter().map(|(fs, _)| f(&fs.phases) as f64 / 1000.0))
            };
            let _ = writeln!(
                s,
                "| farm phase: CLI pack + upload + submit, s | {} | | |",
                phase(&|p| p.submit_ms).show(3)
            );
            for (i, (platform, _)) in PLATFORMS.iter().enumerate() {
                let get = |p: &FarmPhases, k: usize| {
                    p.per_platform
                        .get(*platform)
                        .map_or(0, |v| [v.0, v.1, v.2][k])
                };
                let _ = writeln!(
                    s,
                    "| farm phase {platform}: submitted → running, s | {} | | |",
                    phase(&|p| get(p, 0)).show(3)
                );
                let _ = writeln!(
                    s,
                    "| farm phase {platform}: running → built (fetch + BuildKit), s | {} | | |",
                    phase(&|p| get(p, 1)).show(2)
                );
                let _ = writeln!(
                    s,
                    "| farm phase {platform}: built → pushed (export + push by digest), s | {} | | |",
                    phase(&|p| get(p, 2)).show(3)
                );
                let d = stat(it.iter().map(|(_, d)| secs(d.per_platform[i].0)));
                let p = stat(it.iter().map(|(_, d)| secs(d.per_platform[i].1)));
                let _ = writeln!(
                    s,
                    "| direct {platform}: `docker build`, s | {} | | |",
                    d.show(2)
                );
                let _ = writeln!(
                    s,
                    "| direct {platform}: `docker push`, s | {} | | |",
                    p.show(3)
                );
            }
            let _ = writeln!(
                s,
                "| farm phase: last job done → list pushed (merge), s | {} | | |",
                phase(&|p| p.merge_ms).show(3)
            );
            let _ = writeln!(
                s,
                "| farm phase: finished → CLI exit, s | {} | | |",
                phase(&|p| p.tail_ms).show(3)
            );
        }
        if let Some(ctx) = &self.context {
            let it = &ctx.iterations;
            let mib = |b: u64| b as f64 / 1_048_576.0;
            let m_tp = stat(
                it.iter()
                    .map(|(m, _, _)| mib(m.uploaded) / m.elapsed.as_secs_f64()),
            );
            let d_tp = stat(
                it.iter()
                    .map(|(m, d, _)| mib(m.uploaded) / d.send.as_secs_f64()),
            );
            let ratio = stat(
                it.iter()
                    .map(|(m, d, _)| d.send.as_secs_f64() / m.elapsed.as_secs_f64()),
            );
            let rss = stat(it.iter().map(|(m, _, _)| m.rss_kib as f64 / 1024.0));
            let d_rss = stat(it.iter().map(|(_, d, _)| d.rss_kib as f64 / 1024.0));
            let size = it.first().map_or(0, |(m, _, _)| m.uploaded);
            let phases: Vec<(u64, UploadPhases)> = it
                .iter()
                .filter_map(|(m, _, _)| m.phases.map(|p| (m.uploaded, p)))
                .collect();
            let phase = |f: &dyn Fn(&UploadPhases) -> i64| {
                stat(phases.iter().map(|(_, p)| f(p) as f64 / 1000.0))
            };
            let upload_only = stat(
                phases
                    .iter()
                    .map(|(b, p)| mib(*b) / (p.upload_ms.max(1) as f64 / 1000.0)),
            );
            let _ = writeln!(
                s,
                "| {} MiB context ({size} bytes), n={}: `manifold build --detach`, s | {} | | |",
                config.context_mib,
                it.len(),
                stat(it.iter().map(|(m, _, _)| m.elapsed.as_secs_f64())).show(2)
            );
            let _ = writeln!(
                s,
                "| `docker build` (classic) until step 1 (context sent), s | {} | | |",
                stat(it.iter().map(|(_, d, _)| d.send.as_secs_f64())).show(2)
            );
            let _ = writeln!(
                s,
                "| `docker build` whole, s | {} | | |",
                stat(it.iter().map(|(_, d, _)| d.total.as_secs_f64())).show(2)
            );
            let _ = writeln!(
                s,
                "| manifold throughput (whole --detach run), MiB/s | {} | | |",
                m_tp.show(0)
            );
            let _ = writeln!(
                s,
                "| docker context send throughput, MiB/s | {} | | |",
                d_tp.show(0)
            );
            let _ = writeln!(
                s,
                "| **manifold / docker throughput** | **{}** | ≥ 0.8 | {} |",
                ratio.show(2),
                met(ratio.median >= 0.8)
            );
            let _ = writeln!(
                s,
                "| **CLI peak RSS, {} MiB upload, MiB** | **{}** | < 64 | {} |",
                config.context_mib,
                rss.show(1),
                met(rss.max < 64.0)
            );
            let _ = writeln!(
                s,
                "| docker CLI peak RSS, same context, MiB | {} | | |",
                d_rss.show(1)
            );
            let _ = writeln!(
                s,
                "| unchanged resubmit: whole run (hash pass + Has + submit), s | {} | | |",
                stat(it.iter().map(|(_, _, r)| r.elapsed.as_secs_f64())).show(2)
            );
            let _ = writeln!(
                s,
                "| manifold phase: start → first chunk stored (hashing pass, `Has`), s | {} | | |",
                phase(&|p| p.hash_ms).show(2)
            );
            let _ = writeln!(
                s,
                "| manifold phase: first → last chunk written (upload), s | {} | | |",
                phase(&|p| p.upload_ms).show(2)
            );
            let _ = writeln!(
                s,
                "| manifold phase: last chunk → build created (fsync, validation, submit), s | {} | | |",
                phase(&|p| p.submit_ms).show(2)
            );
            let _ = writeln!(
                s,
                "| manifold phase: build created → CLI exit, s | {} | | |",
                phase(&|p| p.exit_ms).show(3)
            );
            let _ = writeln!(
                s,
                "| upload phase alone, MiB/s | {} | | |",
                upload_only.show(0)
            );
            let _ = writeln!(
                s,
                "| CLI peak RSS, unchanged resubmit, MiB | {} | | |",
                stat(it.iter().map(|(_, _, r)| r.rss_kib as f64 / 1024.0)).show(1)
            );
            let bytes = stat(it.iter().map(|(_, _, r)| r.bytes as f64));
            let all_checks = it.iter().all(|(_, _, r)| {
                r.bytes == 0 && r.already_present_line && r.same_stored_file && r.no_new_store_log
            });
            let _ = writeln!(
                s,
                "| **unchanged resubmit: bytes uploaded** | **{}** (CLI line; same stored file (inode, birth time, size); no new \"context stored\" log: {}) | 0 | {} |",
                bytes.show(0),
                if all_checks { "all agree" } else { "DISAGREE" },
                met(all_checks)
            );
        }
        for r in &self.rebuilds {
            push::render_rebuild(&mut s, r, &config.push);
        }
        for r in &self.colds {
            push::render_cold(&mut s, r, &config.push);
        }
        s
    }
}

// -------------------------------------------------------------------------------------------
// Setup helpers
// -------------------------------------------------------------------------------------------

/// A small context: the Dockerfile and a nonce of fixed size.
fn small_context(scratch: &Path, name: &str, dockerfile: &str) -> anyhow::Result<PathBuf> {
    let dir = scratch.join(name);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("Dockerfile"), dockerfile)?;
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    std::fs::write(dir.join("nonce"), format!("{name:>12}-{nonce}\n"))?;
    Ok(dir)
}

/// `mib` MiB of incompressible bytes in 64 MiB files (a splitmix64 stream: fast, and gzip or
/// zstd gain nothing on it), a trivial Dockerfile and a small file for the nonce.
fn write_big_context(root: &Path, mib: u64) -> anyhow::Result<()> {
    std::fs::write(root.join("Dockerfile"), "FROM scratch\nCOPY small /small\n")?;
    std::fs::write(root.join("small"), "0\n")?;
    let data = root.join("data");
    std::fs::create_dir_all(&data)?;
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15 ^ now_ms() as u64;
    let mut buf = vec![0u8; 1 << 20];
    let files = mib.div_ceil(64);
    let mut left = mib;
    for f in 0..files {
        let mut out = std::io::BufWriter::new(std::fs::File::create(
            data.join(format!("part-{f:03}.bin")),
        )?);
        for _ in 0..left.min(64) {
            for word in buf.chunks_exact_mut(8) {
                state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                word.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
            }
            out.write_all(&buf)?;
        }
        out.flush()?;
        left = left.saturating_sub(64);
    }
    Ok(())
}

/// Fails clearly when the release binaries are missing; warns when they are older than the
/// sources (the run would measure old code).
fn check_binaries() -> anyhow::Result<String> {
    let names = ["manifold", "manifold-coordinator", "manifold-worker"];
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("bench binary lives in target/<profile>/deps")?
        .to_owned();
    let mut oldest: Option<SystemTime> = None;
    for name in names {
        let path = dir.join(name);
        let Ok(meta) = std::fs::metadata(&path) else {
            bail!(
                "{} is missing: run `cargo build --release --workspace --bins` first \
                 (cargo bench builds only this benchmark, and it measures release binaries)",
                path.display()
            );
        };
        let m = meta.modified()?;
        oldest = Some(oldest.map_or(m, |o| o.min(m)));
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace")?;
    let mut newest_source: Option<(SystemTime, PathBuf)> = None;
    for krate in ["proto", "registry", "coordinator", "worker", "cli"] {
        newest_file(&workspace.join(krate), &mut newest_source);
    }
    let mut note = format!("{}/{{{}}}", dir.display(), names.join(","));
    if let (Some(oldest), Some((newest, path))) = (oldest, newest_source)
        && newest > oldest
    {
        let _ = write!(
            note,
            " — WARNING: {} is newer than a binary; run `cargo build --release --workspace --bins` to measure the current code",
            path.display()
        );
        eprintln!("farm bench: {note}");
    }
    Ok(note)
}

fn newest_file(dir: &Path, newest: &mut Option<(SystemTime, PathBuf)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            if entry.file_name() != "target" {
                newest_file(&path, newest);
            }
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("rs" | "proto" | "toml")
        ) && let Ok(m) = meta.modified()
            && newest.as_ref().is_none_or(|(t, _)| m > *t)
        {
            *newest = Some((m, path));
        }
    }
}

async fn machine_facts(env: &Env) -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = output("uname", &["-sr"]).await.unwrap_or_default();
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("PRETTY_NAME=")
                    .map(|v| v.trim_matches('"').to_owned())
            })
        })
        .unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_default();
    let mut daemons = String::new();
    for (host, what) in [
        (&env.amd64_docker, "daemon 1"),
        (&env.arm64_docker, "daemon 2"),
    ] {
        let v = output(
            DOCKER,
            &[
                "-H",
                host,
                "version",
                "--format",
                "{{.Server.Version}} (API {{.Server.APIVersion}})",
            ],
        )
        .await
        .unwrap_or_else(|e| format!("unreachable: {e:#}"));
        let _ = write!(daemons, "{what} {host}: Docker {}; ", v.trim());
    }
    format!(
        "machine: {cores} cores ({cpu}), {os}, {}\n{daemons}registry {}\nload average at the start: {}",
        kernel.trim(),
        env.registry,
        load_average()
    )
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Flushes dirty pages so that one measurement does not pay for the previous one's writes.
async fn sync_disks() {
    let _ = Command::new("sync").status().await;
}

async fn output(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .with_context(|| format!("{program} timed out"))??;
    ensure!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Deletes every manifest under the repository's tags (lists and their children). Blobs stay
/// until the registry's garbage collection.
async fn delete_manifests(repo: &str) -> anyhow::Result<()> {
    let tags = manifold_tests::skopeo_tags(repo).await?;
    let (host, name) = repo.split_once('/').context("repository without a host")?;
    let accept = "Accept: application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";
    let mut digests = Vec::new();
    for tag in tags {
        let headers = output(
            "curl",
            &[
                "-fsS",
                "-I",
                "-H",
                accept,
                &format!("http://{host}/v2/{name}/manifests/{tag}"),
            ],
        )
        .await?;
        if let Some(d) = headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("docker-content-digest")
                .then(|| v.trim().to_owned())
        }) {
            if let Ok(list) = manifold_tests::skopeo_raw(&format!("{repo}:{tag}")).await {
                for child in list["manifests"].as_array().into_iter().flatten() {
                    if let Some(c) = child["digest"].as_str() {
                        digests.push(c.to_owned());
                    }
                }
            }
            digests.push(d);
        }
    }
    digests.sort();
    digests.dedup();
    for d in digests {
        let _ = output(
            "curl",
            &[
                "-fsS",
                "-X",
                "DELETE",
                &format!("http://{host}/v2/{name}/manifests/{d}"),
            ],
        )
        .await;
    }
    Ok(())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str().context("non-UTF-8 temp path")
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
