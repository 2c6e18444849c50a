//! `-- memory` and `-- unbounded`: the coordinator's memory along finished builds.

use super::*;

/// The coordinator at a number of finished builds.
pub(super) struct Sample {
    finished: u64,
    secs: f64,
    held: u64,
    rss_kib: u64,
    hwm_kib: u64,
    redb_bytes: u64,
}

pub(super) struct MemoryOutcome {
    builds: usize,
    load_before: String,
    load_after: String,
    idle_rss_kib: u64,
    samples: Vec<Sample>,
    /// After the last build finished and 10 s without load.
    settled: Option<Sample>,
    /// The deadline came first.
    unfinished: bool,
    cpu_mean: f64,
}

impl MemoryOutcome {
    pub(super) fn table(&self, scenario: &str, flags: &[&str]) -> String {
        let mut t = String::new();
        let last = self.samples.last();
        let _ = writeln!(
            t,
            "## {scenario}: {} two-platform builds through {WORKERS} simulated workers x {SLOTS} slots, {}\n",
            self.builds,
            if flags.is_empty() {
                "default history flags (--keep-finished 1000 --keep-finished-for 1h)".to_owned()
            } else {
                flags.join(" ")
            }
        );
        let _ = writeln!(
            t,
            "load average before: {}; after: {}; coordinator CPU mean {:.0}% of one core; idle RSS with the workers attached {:.0} MiB{}\n",
            self.load_before,
            self.load_after,
            self.cpu_mean,
            mib(self.idle_rss_kib),
            if self.unfinished {
                format!(
                    "; **unfinished**: the deadline (MANIFOLD_BENCH_HISTORY_TIMEOUT_S) came at {} finished builds",
                    last.map_or(0, |s| s.finished)
                )
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            t,
            "| finished builds | s | builds/s since the previous row | held in full | VmRSS, MiB | VmHWM, MiB | state.redb, MiB |\n| --- | --- | --- | --- | --- | --- | --- |"
        );
        let mut prev = (0u64, 0f64);
        for s in self.samples.iter().chain(self.settled.as_ref()) {
            let rate = (s.finished - prev.0) as f64 / (s.secs - prev.1).max(1e-3);
            let _ = writeln!(
                t,
                "| {} | {:.0} | {} | {} | {:.0} | {:.0} | {:.0} |",
                s.finished,
                s.secs,
                if s.finished > prev.0 {
                    format!("{rate:.0}")
                } else {
                    "(settled, 10 s idle)".to_owned()
                },
                s.held,
                mib(s.rss_kib),
                mib(s.hwm_kib),
                s.redb_bytes as f64 / 1048576.0
            );
            prev = (s.finished, s.secs);
        }
        if scenario == "memory"
            && let Some(s) = self.samples.iter().rfind(|s| s.finished >= 100_000)
        {
            let _ = writeln!(
                t,
                "\n**RSS after {} finished builds: {:.0} MiB** (goal <= {GOAL_RSS_MIB:.0} MiB: {})",
                s.finished,
                mib(s.rss_kib),
                verdict(mib(s.rss_kib) <= GOAL_RSS_MIB)
            );
        }
        t.push('\n');
        t
    }
}

pub(super) async fn memory(
    config: &Config,
    scenario: &str,
    builds: usize,
    flags: &[&str],
    registry: &Registry,
    bin: &Path,
    run_id: i64,
) -> anyhow::Result<MemoryOutcome> {
    let deadline = Instant::now() + config.timeout;
    let repository = format!("history/{run_id}-{scenario}");
    let http = reqwest::Client::builder().no_proxy().build()?;
    let amd64 = push_image(&http, &registry.host, &repository, "amd64").await?;
    let arm64 = push_image(&http, &registry.host, &repository, "arm64").await?;
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state");
    let metrics = format!("127.0.0.1:{}", free_port()?);
    let mut args = vec!["--metrics-listen", metrics.as_str()];
    args.extend_from_slice(flags);
    let mut coordinator = Coordinator::spawn(
        bin,
        &state,
        &dir.path().join("coordinator.log"),
        &args,
        None,
    )?;
    coordinator.wait_serving(Duration::from_secs(60)).await?;
    let control = coordinator.channel().await?;
    let context = upload_context(&control).await?;
    let load_before = load_average();

    let sim = Arc::new(Sim::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut workers = tokio::task::JoinSet::new();
    for i in 0..WORKERS {
        let (architecture, image) = if i % 2 == 0 {
            ("amd64", amd64.clone())
        } else {
            ("arm64", arm64.clone())
        };
        let w = SimWorker {
            name: format!("sim-{scenario}-{i}"),
            architecture,
            slots: SLOTS,
            image,
            log_lines: 3,
            job_ms: 0,
            sim: sim.clone(),
            stop: stop_rx.clone(),
        };
        let url = coordinator.url.clone();
        workers.spawn(async move { w.run(url).await });
    }
    wait_attached(&sim, WORKERS, &mut workers).await?;
    let idle_rss_kib = proc_status_kib(coordinator.pid, "VmRSS:").unwrap_or(0);

    // Submitters keep at most `window` builds unfinished, from the finished count of the last
    // scrape.
    let finished = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let mut submitters = tokio::task::JoinSet::new();
    for _ in 0..SUBMITTERS {
        let channel = connect(&coordinator.url).await?;
        let (finished, next, window) = (finished.clone(), next.clone(), config.window as u64);
        let (image, context) = (format!("{}/{repository}", registry.host), context.clone());
        let mut stop = stop_rx.clone();
        submitters.spawn(async move {
            let mut client = BuildsClient::new(channel);
            loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n >= builds {
                    return anyhow::Ok(());
                }
                while n as u64 >= finished.load(Ordering::SeqCst) + window {
                    tokio::select! {
                        _ = stop.changed() => return Ok(()),
                        _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                    }
                }
                tokio::time::timeout(
                    Duration::from_secs(60),
                    client.submit(build_request(&image, &context, n)),
                )
                .await
                .context("a Submit took longer than 60 s")?
                .with_context(|| format!("submitting build {n}"))?;
            }
        });
    }

    let redb = state.join("state.redb");
    let step = (builds as u64 / 20).max(1);
    let started = Instant::now();
    let (ticks, cpu0) = (clock_ticks(), proc_cpu_ticks(coordinator.pid).unwrap_or(0));
    let sample = |counts: Counts, pid: u32| Sample {
        finished: counts.finished(),
        secs: started.elapsed().as_secs_f64(),
        held: counts.held,
        rss_kib: proc_status_kib(pid, "VmRSS:").unwrap_or(0),
        hwm_kib: proc_status_kib(pid, "VmHWM:").unwrap_or(0),
        redb_bytes: std::fs::metadata(&redb).map_or(0, |m| m.len()),
    };
    let mut samples: Vec<Sample> = Vec::new();
    let mut next_sample = step;
    let mut unfinished = false;
    let mut last_print = Instant::now();
    loop {
        let counts = scrape(&metrics).await?;
        finished.store(counts.finished(), Ordering::SeqCst);
        if counts.finished() >= next_sample.min(builds as u64) {
            let s = sample(counts, coordinator.pid);
            println!(
                "  {} finished in {:.0} s: RSS {:.0} MiB (peak {:.0}), {} held in full, state.redb {:.0} MiB",
                s.finished,
                s.secs,
                mib(s.rss_kib),
                mib(s.hwm_kib),
                s.held,
                s.redb_bytes as f64 / 1048576.0
            );
            next_sample = (s.finished / step + 1) * step;
            samples.push(s);
            last_print = Instant::now();
        }
        if counts.finished() >= builds as u64 {
            break;
        }
        if let Some(Ok(Err(e))) = submitters.try_join_next() {
            stop_tx.send_replace(true);
            return Err(e.context("a submitter failed"));
        }
        if let Some(Ok(Err(e))) = workers.try_join_next() {
            eprintln!("history bench: a simulated worker stopped: {e:#}");
        }
        if coordinator.exited() {
            bail!(
                "the coordinator exited; its log: {}",
                std::fs::read_to_string(&coordinator.log).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            unfinished = true;
            if samples
                .last()
                .is_none_or(|s| s.finished < counts.finished())
            {
                samples.push(sample(counts, coordinator.pid));
            }
            break;
        }
        if last_print.elapsed() > Duration::from_secs(30) {
            println!(
                "  ... {} finished, {} queued, {} running, {} held",
                counts.finished(),
                counts.queued,
                counts.running,
                counts.held
            );
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let cpu_mean = (proc_cpu_ticks(coordinator.pid).unwrap_or(cpu0) - cpu0) as f64
        / ticks
        / started.elapsed().as_secs_f64().max(1e-3)
        * 100.0;
    let settled = if unfinished {
        None
    } else {
        tokio::time::sleep(Duration::from_secs(10)).await;
        Some(sample(scrape(&metrics).await?, coordinator.pid))
    };
    let load_after = load_average();
    stop_tx.send_replace(true);
    while tokio::time::timeout(Duration::from_secs(10), workers.join_next())
        .await
        .ok()
        .flatten()
        .is_some()
    {}
    workers.abort_all();
    submitters.abort_all();
    coordinator.stop().await;
    Ok(MemoryOutcome {
        builds,
        load_before,
        load_after,
        idle_rss_kib,
        samples,
        settled,
        unfinished,
        cpu_mean,
    })
}
