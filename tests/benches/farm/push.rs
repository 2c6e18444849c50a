//! Parts 4 and 5 of the farm benchmark: getting big images into the registry, on both engine modes
//! (graphdriver: the worker exports and pushes; containerd image store: BuildKit pushes by digest).
//!
//! 4. **rebuild**: an image with a cached `MANIFOLD_BENCH_REBUILD_MIB` (256) MiB layer and a small
//!    changed layer, rebuilt again and again; the farm (two workers, platforms in parallel) against
//!    `docker build` + `docker push` on the same two daemons, each path pushing to its own
//!    repository every time. Goal: farm ≤ 1.2 × the slowest direct platform.
//! 5. **cold**: the first push of an image with a `MANIFOLD_BENCH_COLD_MIB` (1024) MiB layer, built
//!    once and cached, to a registry that has none of its blobs (a fresh private registry per
//!    iteration, so neither path can mount or skip anything); the farm (one amd64 worker) against
//!    `docker build` (cached) + `docker push`. Goal: farm ≤ 1.1 × direct.
//!
//! Both report the worker's peak scratch disk per job, sampled every 10 ms from the outside
//! (the bytes under each worker's `--cache-dir`/tmp, the push's scratch folder).

use super::*;

use manifold_tests::faults::PrivateRegistry;

/// The image store of one daemon pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Graphdriver,
    Containerd,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Graphdriver => "graphdriver",
            Mode::Containerd => "containerd",
        }
    }
}

/// The knobs of parts 4 and 5.
pub(crate) struct PushConfig {
    pub modes: Vec<Mode>,
    pub rebuild_iterations: usize,
    pub rebuild_mib: u64,
    pub cold_iterations: usize,
    pub cold_mib: u64,
}

impl PushConfig {
    pub fn from_env(num: &dyn Fn(&str, u64) -> anyhow::Result<u64>) -> anyhow::Result<Self> {
        let modes = std::env::var("MANIFOLD_BENCH_MODES")
            .unwrap_or_else(|_| "graphdriver,containerd".into())
            .split(',')
            .filter(|m| !m.is_empty())
            .map(|m| match m {
                "graphdriver" => Ok(Mode::Graphdriver),
                "containerd" => Ok(Mode::Containerd),
                other => bail!(
                    "MANIFOLD_BENCH_MODES: unknown mode `{other}`: expected graphdriver and/or containerd, comma-separated"
                ),
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            modes,
            rebuild_iterations: num("MANIFOLD_BENCH_REBUILD_ITERATIONS", 7)?.max(1) as usize,
            rebuild_mib: num("MANIFOLD_BENCH_REBUILD_MIB", 256)?.max(1),
            cold_iterations: num("MANIFOLD_BENCH_COLD_ITERATIONS", 3)?.max(1) as usize,
            cold_mib: num("MANIFOLD_BENCH_COLD_MIB", 1024)?.max(1),
        })
    }
}

pub(crate) struct RebuildResults {
    mode: Mode,
    iterations: Vec<RebuildIteration>,
}

struct RebuildIteration {
    farm: Duration,
    /// (build, push) of amd64 then arm64.
    direct: [(Duration, Duration); 2],
    /// Per platform, "built image" → job succeeded (graphdriver: export + push).
    farm_push_ms: BTreeMap<String, i64>,
    /// Largest scratch use of one worker during the build, bytes.
    scratch_peak: u64,
}

impl RebuildIteration {
    fn slowest_direct(&self) -> Duration {
        self.direct
            .iter()
            .map(|(b, p)| *b + *p)
            .max()
            .unwrap_or_default()
    }
}

pub(crate) struct ColdResults {
    mode: Mode,
    iterations: Vec<ColdIteration>,
}

struct ColdIteration {
    farm: Duration,
    direct_build: Duration,
    direct_push: Duration,
    /// "built image" → job succeeded (graphdriver only: the export + push).
    farm_push_ms: Option<i64>,
    scratch_peak: u64,
}

/// Samples the bytes under some folders every 10 ms until stopped; the largest per folder.
struct ScratchSampler {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<u64>,
}

impl ScratchSampler {
    fn start(dirs: Vec<PathBuf>) -> Self {
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut peak = 0u64;
            loop {
                let dirs = dirs.clone();
                let now = tokio::task::spawn_blocking(move || {
                    dirs.iter().map(|d| dir_bytes(d)).max().unwrap_or(0)
                })
                .await
                .unwrap_or(0);
                peak = peak.max(now);
                tokio::select! {
                    _ = &mut stopped => return peak,
                    () = tokio::time::sleep(Duration::from_millis(10)) => {}
                }
            }
        });
        Self { stop, task }
    }

    async fn finish(self) -> u64 {
        let _ = self.stop.send(());
        self.task.await.unwrap_or(0)
    }
}

/// Bytes of the files under `dir` (allocated blocks would hide sparse files; none are made here).
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn scratch_dirs(farm: &TestFarm, workers: &[&str]) -> Vec<PathBuf> {
    workers
        .iter()
        .map(|w| farm.state_dir.path().join(format!("cache-{w}")).join("tmp"))
        .collect()
}

/// `docker build` (BuildKit) then `docker push` of `tag` on `host`: (build, push) times.
async fn direct_build_push(
    host: &str,
    platform: &str,
    tag: &str,
    label: &str,
    ctx: &Path,
) -> anyhow::Result<(Duration, Duration)> {
    let start = Instant::now();
    let build = timed(
        Path::new(DOCKER),
        &[
            "-H",
            host,
            "build",
            "--platform",
            platform,
            "--label",
            label,
            "-t",
            tag,
            path_str(ctx)?,
        ],
        &[("DOCKER_BUILDKIT", "1")],
        false,
    )
    .await?;
    ensure!(
        build.ok,
        "direct docker build for {platform} on {host} failed: {}",
        build.stderr
    );
    let built = start.elapsed();
    let mut pushing = Instant::now();
    let mut push = timed(Path::new(DOCKER), &["-H", host, "push", tag], &[], false).await?;
    if !push.ok && blob_link_race(&format!("{}{}", push.stdout, push.stderr)) {
        // Both platforms push into one repository at once and share the base layer: the CNCF
        // registry rewrites the shared blob link in place (distribution/distribution#4489) and
        // refuses a manifest checked in between. That is the registry's race, not Docker's
        // speed: push again, as a user would, and time the push that went through.
        println!(
            "(direct docker push of {tag} met the registry's blob-link race; pushed again, that push timed)"
        );
        pushing = Instant::now();
        push = timed(Path::new(DOCKER), &["-H", host, "push", tag], &[], false).await?;
    }
    ensure!(
        push.ok,
        "direct docker push of {tag} from {host} failed: {}{}",
        push.stdout,
        push.stderr
    );
    Ok((built, pushing.elapsed()))
}

/// Whether `docker push` output says it failed on its manifest with the registry's 400 (`MANIFEST_BLOB_UNKNOWN`
/// / `DIGEST_INVALID` of a blob link rewritten at that moment).
fn blob_link_race(output: &str) -> bool {
    output.contains("/manifests/") && output.contains("400 Bad Request")
}

/// Per platform: the time from the worker's "built image" line to the job's success.
async fn push_phases(farm: &TestFarm, start_ms: i64, end_ms: i64) -> BTreeMap<String, i64> {
    match farm_phases(farm, start_ms, end_ms).await {
        Ok(p) => p
            .per_platform
            .into_iter()
            .map(|(platform, (_, _, push))| (platform, push))
            .collect(),
        Err(e) => {
            eprintln!("(no phase breakdown: {e:#})");
            BTreeMap::new()
        }
    }
}

impl Run {
    /// Part 4 on one daemon pair.
    pub(crate) async fn rebuilds(
        &self,
        mode: Mode,
        config: &PushConfig,
    ) -> anyhow::Result<RebuildResults> {
        let env = &self.env;
        let (amd64, arm64) = env.pair(mode.name());
        let mut farm = TestFarm::builder().start().await?;
        farm.worker("x86").docker(&amd64).spawn().await?;
        farm.worker("arm")
            .docker(&arm64)
            .platform("linux/arm64")
            .spawn()
            .await?;
        let farm_repo = self.repo(&format!("rebuild-{}-farm", mode.name()));
        let direct_repo = self.repo(&format!("rebuild-{}-direct", mode.name()));
        // The RUN step is the same for both paths and every iteration: built once (in the
        // warm-up), then a cache hit; only the COPY layer changes.
        let dockerfile = format!(
            "FROM {base}\nRUN echo {run} && dd if=/dev/urandom of=/big bs=1M count={mib} 2>/dev/null\nCOPY nonce /nonce\n",
            base = env.base_image,
            run = self.id,
            mib = config.rebuild_mib,
        );
        let scratch = tempfile::tempdir()?;
        let mut results = RebuildResults {
            mode,
            iterations: Vec::new(),
        };
        println!(
            "\n== rebuild, {} daemons: cached {} MiB layer + a changed small layer; {} iterations + 1 warm-up ==",
            mode.name(),
            config.rebuild_mib,
            config.rebuild_iterations
        );
        let dirs = scratch_dirs(&farm, &["x86", "arm"]);
        for i in 0..=config.rebuild_iterations {
            let farm_ctx = small_context(scratch.path(), &format!("farm-{i}"), &dockerfile)?;
            let direct_ctx = small_context(scratch.path(), &format!("direct-{i}"), &dockerfile)?;
            let load = load_average();
            let farm_first = i % 2 == 0;
            let run_farm = async {
                sync_disks().await;
                let sampler = ScratchSampler::start(dirs.clone());
                let start_ms = now_ms();
                let tag = format!("{farm_repo}:{i}");
                let run = timed(
                    &bin("manifold"),
                    &[
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
                        path_str(&farm_ctx)?,
                    ],
                    &[],
                    false,
                )
                .await?;
                let peak = sampler.finish().await;
                if !run.ok {
                    bail!(
                        "farm rebuild {i} ({}) failed: {}\n--- x86 ---\n{}\n--- arm ---\n{}",
                        mode.name(),
                        run.stderr,
                        tail(&farm.worker_log("x86"), 30),
                        tail(&farm.worker_log("arm"), 30)
                    );
                }
                let phases =
                    push_phases(&farm, start_ms, start_ms + run.elapsed.as_millis() as i64).await;
                anyhow::Ok((run.elapsed, phases, peak))
            };
            let run_direct = async {
                sync_disks().await;
                let label = self.label();
                let (amd64_tag, arm64_tag) = (
                    format!("{direct_repo}:{i}-amd64"),
                    format!("{direct_repo}:{i}-arm64"),
                );
                let (a, b) = tokio::join!(
                    direct_build_push(&amd64, PLATFORMS[0].0, &amd64_tag, &label, &direct_ctx),
                    direct_build_push(&arm64, PLATFORMS[1].0, &arm64_tag, &label, &direct_ctx)
                );
                anyhow::Ok([a?, b?])
            };
            let ((farm_time, farm_push_ms, scratch_peak), direct) = if farm_first {
                let f = run_farm.await?;
                (f, run_direct.await?)
            } else {
                let d = run_direct.await?;
                (run_farm.await?, d)
            };
            let it = RebuildIteration {
                farm: farm_time,
                direct,
                farm_push_ms,
                scratch_peak,
            };
            println!(
                "{} {i} ({}, {} first, load {load}): farm {:.2} s | direct amd64 {:.2}+{:.2} s, arm64 {:.2}+{:.2} s | farm/slowest {:.3} | farm push phases {:?} ms | scratch peak {:.1} MiB",
                if i == 0 { "warm-up" } else { "iter" },
                mode.name(),
                if farm_first { "farm" } else { "direct" },
                it.farm.as_secs_f64(),
                it.direct[0].0.as_secs_f64(),
                it.direct[0].1.as_secs_f64(),
                it.direct[1].0.as_secs_f64(),
                it.direct[1].1.as_secs_f64(),
                it.farm.as_secs_f64() / it.slowest_direct().as_secs_f64(),
                it.farm_push_ms,
                it.scratch_peak as f64 / 1_048_576.0
            );
            if i > 0 {
                results.iterations.push(it);
            }
        }
        Ok(results)
    }

    /// Part 5 on one daemon pair's amd64 daemon.
    pub(crate) async fn cold_pushes(
        &self,
        mode: Mode,
        config: &PushConfig,
    ) -> anyhow::Result<ColdResults> {
        let env = &self.env;
        let (amd64, _) = env.pair(mode.name());
        let mut farm = TestFarm::builder().start().await?;
        farm.worker("x86").docker(&amd64).spawn().await?;
        let dockerfile = format!(
            "FROM {base}\nRUN echo {run} cold && dd if=/dev/urandom of=/big bs=1M count={mib} 2>/dev/null\n",
            base = env.base_image,
            run = self.id,
            mib = config.cold_mib,
        );
        let scratch = tempfile::tempdir()?;
        let ctx = small_context(scratch.path(), "cold", &dockerfile)?;
        let dirs = scratch_dirs(&farm, &["x86"]);
        let mut results = ColdResults {
            mode,
            iterations: Vec::new(),
        };
        println!(
            "\n== cold push, {} daemon: a cached {} MiB layer to an empty registry; {} iterations + 1 warm-up ==",
            mode.name(),
            config.cold_mib,
            config.cold_iterations
        );
        for i in 0..=config.cold_iterations {
            // A registry per path and iteration: no blob to skip or mount, for either path (the
            // containerd store compresses as BuildKit does, so in a shared registry the second
            // path would find every blob of the first and upload nothing).
            let farm_registry = PrivateRegistry::start().await?;
            let direct_registry = PrivateRegistry::start().await?;
            let load = load_average();
            let farm_first = i % 2 == 0;
            let run_farm = async {
                sync_disks().await;
                let sampler = ScratchSampler::start(dirs.clone());
                let start_ms = now_ms();
                let tag = format!("{}/bench/cold-farm:{i}", farm_registry.host);
                let run = timed(
                    &bin("manifold"),
                    &[
                        "--coordinator",
                        &farm.url,
                        "build",
                        "-t",
                        &tag,
                        "--platform",
                        "linux/amd64",
                        "--label",
                        &self.label(),
                        "-q",
                        path_str(&ctx)?,
                    ],
                    &[],
                    false,
                )
                .await?;
                let peak = sampler.finish().await;
                if !run.ok {
                    bail!(
                        "farm cold push {i} ({}) failed: {}\n--- x86 ---\n{}",
                        mode.name(),
                        run.stderr,
                        tail(&farm.worker_log("x86"), 30)
                    );
                }
                let phases =
                    push_phases(&farm, start_ms, start_ms + run.elapsed.as_millis() as i64).await;
                anyhow::Ok((run.elapsed, phases.get("linux/amd64").copied(), peak))
            };
            let run_direct = async {
                sync_disks().await;
                let tag = format!("{}/bench/cold-direct:{i}", direct_registry.host);
                direct_build_push(&amd64, PLATFORMS[0].0, &tag, &self.label(), &ctx).await
            };
            let ((farm_time, farm_push_ms, scratch_peak), (direct_build, direct_push)) =
                if farm_first {
                    let f = run_farm.await?;
                    (f, run_direct.await?)
                } else {
                    let d = run_direct.await?;
                    (run_farm.await?, d)
                };
            drop((farm_registry, direct_registry));
            let it = ColdIteration {
                farm: farm_time,
                direct_build,
                direct_push,
                farm_push_ms: farm_push_ms.filter(|_| mode == Mode::Graphdriver),
                scratch_peak,
            };
            let direct = it.direct_build + it.direct_push;
            println!(
                "{} {i} ({}, {} first, load {load}): farm {:.2} s (push phase {:?} ms) | direct build {:.2} s + push {:.2} s | farm/direct {:.3} | scratch peak {:.1} MiB",
                if i == 0 { "warm-up" } else { "iter" },
                mode.name(),
                if farm_first { "farm" } else { "direct" },
                it.farm.as_secs_f64(),
                it.farm_push_ms,
                it.direct_build.as_secs_f64(),
                it.direct_push.as_secs_f64(),
                it.farm.as_secs_f64() / direct.as_secs_f64(),
                it.scratch_peak as f64 / 1_048_576.0
            );
            if i > 0 {
                results.iterations.push(it);
            }
        }
        Ok(results)
    }
}

/// The table rows of part 4.
pub(crate) fn render_rebuild(s: &mut String, r: &RebuildResults, config: &PushConfig) {
    let it = &r.iterations;
    let secs = |d: Duration| d.as_secs_f64();
    let mode = r.mode.name();
    let ratio = stat(it.iter().map(|i| secs(i.farm) / secs(i.slowest_direct())));
    let _ = writeln!(
        s,
        "| rebuild ({mode}, cached {} MiB layer + small layer), n={}: farm end to end, s | {} | | |",
        config.rebuild_mib,
        it.len(),
        stat(it.iter().map(|i| secs(i.farm))).show(2)
    );
    for (k, (platform, _)) in PLATFORMS.iter().enumerate() {
        let _ = writeln!(
            s,
            "| rebuild ({mode}): direct {platform} `docker build` + `docker push`, s | {} + {} | | |",
            stat(it.iter().map(|i| secs(i.direct[k].0))).show(2),
            stat(it.iter().map(|i| secs(i.direct[k].1))).show(2)
        );
        if r.mode == Mode::Graphdriver {
            let _ = writeln!(
                s,
                "| rebuild ({mode}): farm {platform} built → pushed (export + push), s | {} | | |",
                stat(
                    it.iter()
                        .filter_map(|i| i.farm_push_ms.get(*platform))
                        .map(|ms| *ms as f64 / 1000.0)
                )
                .show(3)
            );
        }
    }
    let _ = writeln!(
        s,
        "| **rebuild ({mode}): farm / slowest direct** | **{}** | ≤ 1.2 | {} |",
        ratio.show(3),
        met(ratio.median <= 1.2)
    );
    let _ = writeln!(
        s,
        "| **rebuild ({mode}): worker peak scratch disk per job, MiB** | **{}** | | |",
        stat(it.iter().map(|i| i.scratch_peak as f64 / 1_048_576.0)).show(1)
    );
}

/// The table rows of part 5.
pub(crate) fn render_cold(s: &mut String, r: &ColdResults, config: &PushConfig) {
    let it = &r.iterations;
    let secs = |d: Duration| d.as_secs_f64();
    let mode = r.mode.name();
    let ratio = stat(
        it.iter()
            .map(|i| secs(i.farm) / secs(i.direct_build + i.direct_push)),
    );
    let _ = writeln!(
        s,
        "| cold push ({mode}, {} MiB layer, empty registry), n={}: farm end to end, s | {} | | |",
        config.cold_mib,
        it.len(),
        stat(it.iter().map(|i| secs(i.farm))).show(2)
    );
    let _ = writeln!(
        s,
        "| cold push ({mode}): direct `docker build` (cached) + `docker push`, s | {} + {} | | |",
        stat(it.iter().map(|i| secs(i.direct_build))).show(2),
        stat(it.iter().map(|i| secs(i.direct_push))).show(2)
    );
    if r.mode == Mode::Graphdriver {
        let _ = writeln!(
            s,
            "| cold push ({mode}): farm built → pushed (export + push) / `docker push` | {} | | |",
            stat(it.iter().filter_map(|i| {
                i.farm_push_ms
                    .map(|ms| ms as f64 / 1000.0 / secs(i.direct_push))
            }))
            .show(3)
        );
    }
    let _ = writeln!(
        s,
        "| **cold push ({mode}): farm / direct** | **{}** | ≤ 1.1 | {} |",
        ratio.show(3),
        met(ratio.median <= 1.1)
    );
    let _ = writeln!(
        s,
        "| **cold push ({mode}): worker peak scratch disk per job, MiB** | **{}** | | |",
        stat(it.iter().map(|i| i.scratch_peak as f64 / 1_048_576.0)).show(1)
    );
}
