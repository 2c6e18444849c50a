//! `-- restart`: the coordinator started on a store seeded with finished and queued builds.

use super::*;

/// One start of the coordinator on the seeded store.
pub(super) struct Start {
    after: &'static str,
    list_s: f64,
    queue_s: f64,
    rss_kib: u64,
    hwm_kib: u64,
    held: u64,
    /// How long the SIGTERM before it took to end the previous process.
    stop_s: Option<f64>,
}

pub(super) struct RestartOutcome {
    load_before: String,
    load_after: String,
    seed_s: f64,
    /// This process's VmRSS before seeding, with the store open after it, once it is closed.
    seed_rss_kib: [u64; 3],
    seeded_bytes: u64,
    final_bytes: u64,
    starts: Vec<Start>,
}

impl RestartOutcome {
    pub(super) fn table(&self, c: &Config) -> String {
        let mut t = String::new();
        // The first start follows the seeding, which closed the store as a SIGTERM does.
        let clean: Vec<&Start> = self
            .starts
            .iter()
            .filter(|s| s.after != "SIGKILL")
            .collect();
        let col = |f: fn(&Start) -> f64| -> Vec<f64> { clean.iter().map(|s| f(s)).collect() };
        let (list, queue) = (col(|s| s.list_s), col(|s| s.queue_s));
        let (rss, hwm) = (col(|s| mib(s.rss_kib)), col(|s| mib(s.hwm_kib)));
        let _ = writeln!(
            t,
            "## restart: {} builds in the store ({} queued, {} finished), {} clean starts (after the seeding, then after SIGTERM) and one after SIGKILL\n",
            c.builds,
            c.queued,
            c.builds - c.queued,
            clean.len()
        );
        let _ = writeln!(
            t,
            "load average before: {}; after: {}; seeded in {:.1} s through `EmbeddedStore::save_all`\n",
            self.load_before, self.load_after, self.seed_s
        );
        let _ = writeln!(
            t,
            "| figure | median | max | goal | |\n| --- | --- | --- | --- | --- |"
        );
        let _ = writeln!(
            t,
            "| spawn to first `Builds.List` answer, s | {:.2} | {:.2} | | |",
            pct(&list, 50.0),
            pct(&list, 100.0)
        );
        let _ = writeln!(
            t,
            "| **spawn to `Builds.Teams` counting all {} queued jobs, s** | **{:.2}** | **{:.2}** | <= {GOAL_RESTART_S:.0} | {} |",
            2 * c.queued,
            pct(&queue, 50.0),
            pct(&queue, 100.0),
            verdict(pct(&queue, 100.0) <= GOAL_RESTART_S)
        );
        let _ = writeln!(
            t,
            "| coordinator RSS once serving (VmRSS), MiB | {:.0} | {:.0} | | |",
            pct(&rss, 50.0),
            pct(&rss, 100.0)
        );
        let _ = writeln!(
            t,
            "| coordinator peak RSS (VmHWM), MiB | {:.0} | {:.0} | | |",
            pct(&hwm, 50.0),
            pct(&hwm, 100.0)
        );
        let stops: Vec<f64> = self.starts.iter().filter_map(|s| s.stop_s).collect();
        if !stops.is_empty() {
            let _ = writeln!(
                t,
                "| SIGTERM to exit of the previous process, s | {:.2} | {:.2} | | |",
                pct(&stops, 50.0),
                pct(&stops, 100.0)
            );
        }
        let _ = writeln!(
            t,
            "| state.redb after seeding / after the restarts, MiB | {:.0} / {:.0} | | | |",
            self.seeded_bytes as f64 / 1048576.0,
            self.final_bytes as f64 / 1048576.0
        );
        let [before, open, closed] = self.seed_rss_kib.map(mib);
        let _ = writeln!(
            t,
            "| the benchmark's own VmRSS seeding through `EmbeddedStore`: before / after the writes, store open / closed, MiB | {before:.0} / {open:.0} / {closed:.0} | | | |"
        );
        let _ = writeln!(
            t,
            "\n| start | after | first List, s | queue complete, s | VmRSS / VmHWM, MiB | held in full |\n| --- | --- | --- | --- | --- | --- |"
        );
        for (i, s) in self.starts.iter().enumerate() {
            let _ = writeln!(
                t,
                "| {} | {} | {:.2} | {:.2} | {:.0} / {:.0} | {} |",
                i + 1,
                s.after,
                s.list_s,
                s.queue_s,
                mib(s.rss_kib),
                mib(s.hwm_kib),
                s.held
            );
        }
        t.push('\n');
        t
    }
}

pub(super) async fn restart(config: &Config, bin: &Path) -> anyhow::Result<RestartOutcome> {
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state");
    let load_before = load_average();
    let (t, rss_before) = (Instant::now(), own_rss_kib());
    let (rss_open, rss_closed) = seed(&state, config.builds, config.queued).await?;
    let seed_s = t.elapsed().as_secs_f64();
    let redb = state.join("state.redb");
    let seeded_bytes = std::fs::metadata(&redb)?.len();
    println!(
        "seeded {} builds ({} queued) in {seed_s:.1} s; state.redb {:.0} MiB; this process's RSS {:.0} MiB before, {:.0} with the store open after the writes, {:.0} once closed",
        config.builds,
        config.queued,
        seeded_bytes as f64 / 1048576.0,
        mib(rss_before),
        mib(rss_open),
        mib(rss_closed)
    );
    let mut starts = Vec::new();
    let mut after = "seeding";
    let mut stop_s = None;
    for i in 0..=config.restarts {
        let metrics = format!("127.0.0.1:{}", free_port()?);
        let log = dir.path().join(format!("coordinator-{i}.log"));
        let spawned = Instant::now();
        let mut c = Coordinator::spawn(
            bin,
            &state,
            &log,
            &["--metrics-listen", metrics.as_str()],
            None,
        )?;
        let (list_s, queue_s) = until_serving(&mut c, 2 * config.queued as u32, spawned).await?;
        let (rss_kib, hwm_kib) = (
            proc_status_kib(c.pid, "VmRSS:").unwrap_or(0),
            proc_status_kib(c.pid, "VmHWM:").unwrap_or(0),
        );
        let counts = scrape(&metrics).await?;
        if counts.stored != config.builds as u64 {
            bail!(
                "the restarted coordinator lists {} builds, not the {} seeded",
                counts.stored,
                config.builds
            );
        }
        println!(
            "start {} (after {after}): first List {list_s:.2} s, queue complete {queue_s:.2} s; RSS {:.0} MiB (peak {:.0}); {} builds stored, {} held",
            i + 1,
            mib(rss_kib),
            mib(hwm_kib),
            counts.stored,
            counts.held
        );
        starts.push(Start {
            after,
            list_s,
            queue_s,
            rss_kib,
            hwm_kib,
            held: counts.held,
            stop_s,
        });
        if i + 1 < config.restarts {
            let t = Instant::now();
            if !c.terminate(Duration::from_secs(30)).await {
                bail!("the coordinator did not end within 30 s of SIGTERM");
            }
            stop_s = Some(t.elapsed().as_secs_f64());
            after = "SIGTERM";
        } else {
            c.stop().await;
            stop_s = None;
            after = "SIGKILL";
        }
    }
    Ok(RestartOutcome {
        load_before,
        load_after: load_average(),
        seed_s,
        seed_rss_kib: [rss_before, rss_open, rss_closed],
        seeded_bytes,
        final_bytes: std::fs::metadata(&redb)?.len(),
        starts,
    })
}

/// Seconds from `spawned` to the first `Builds.List` answer, and to the first `Builds.Teams`
/// answer that counts `jobs` queued jobs (bounded: 120 s).
pub(super) async fn until_serving(
    c: &mut Coordinator,
    jobs: u32,
    spawned: Instant,
) -> anyhow::Result<(f64, f64)> {
    let deadline = spawned + Duration::from_secs(120);
    let channel = loop {
        if Instant::now() > deadline {
            bail!(
                "the coordinator did not answer within 120 s; its log: {}",
                std::fs::read_to_string(&c.log).unwrap_or_default()
            );
        }
        if c.exited() {
            bail!(
                "the coordinator exited; its log: {}",
                std::fs::read_to_string(&c.log).unwrap_or_default()
            );
        }
        let attempt = async {
            let channel = connect(&c.url).await?;
            let page = BuildsClient::new(channel.clone())
                .list(v1::ListBuildsRequest::default())
                .await?
                .into_inner();
            anyhow::ensure!(!page.builds.is_empty(), "Builds.List answered no build");
            anyhow::Ok(channel)
        };
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(channel)) => break channel,
            Ok(Err(_)) | Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    };
    let list_s = spawned.elapsed().as_secs_f64();
    loop {
        let seen = queued(&channel).await?;
        if seen >= jobs {
            return Ok((list_s, spawned.elapsed().as_secs_f64()));
        }
        if Instant::now() > deadline {
            bail!("after 120 s the coordinator counts {seen} queued jobs, not {jobs}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Writes `builds` builds into a new embedded store in `state_dir`, `queued` of them queued, in
/// transactions of 1,000 (see the module docs). Returns this process's VmRSS, KiB, with the store
/// still open after the writes and once it is closed: what redb's cache keeps of what it wrote.
pub(super) async fn seed(
    state_dir: &Path,
    builds: usize,
    queued: usize,
) -> anyhow::Result<(u64, u64)> {
    let store = EmbeddedStore::open(state_dir)?;
    let now = unix_ms();
    let finished = builds - queued;
    let (hours_20, minutes_10) = (20 * 3_600_000_i64, 600_000_i64);
    let ids: Vec<usize> = (0..builds).collect();
    for chunk in ids.chunks(1_000) {
        let mut records = Vec::with_capacity(chunk.len());
        let mut logs = LogWrite {
            put: Vec::new(),
            drop: Vec::new(),
        };
        for &n in chunk {
            let b = if n < finished {
                // Spread over the last 20 hours, each taking half a minute.
                let created =
                    now - hours_20 - 60_000 + hours_20 * n as i64 / finished.max(1) as i64;
                finished_build(n, created, created + 30_000)
            } else {
                let k = (n - finished) as i64;
                queued_build(n, now - minutes_10 + minutes_10 * k / queued.max(1) as i64)
            };
            if b.state.is_final() {
                for (seq, j) in b.jobs.iter().enumerate() {
                    logs.put.push(LogChunk {
                        build: b.id,
                        seq: seq as u64,
                        job: j.id,
                        platform: j.platform.clone(),
                        first: 0,
                        lines: j.log_tail.iter().cloned().collect(),
                    });
                }
            }
            records.push(b);
        }
        store.save_all(&records).await?;
        store.write_logs(&logs).await?;
    }
    let open = own_rss_kib();
    drop(store);
    Ok((open, own_rss_kib()))
}

pub(super) fn own_rss_kib() -> u64 {
    proc_status_kib(std::process::id(), "VmRSS:").unwrap_or(0)
}

pub(super) fn spec(n: usize) -> (BuildSpec, BuildRequest) {
    let image = format!("127.0.0.1:5000/history/app:b{n}");
    let context = format!("sha256:{}", "c".repeat(64));
    let platforms = [Platform::linux_amd64(), Platform::linux_arm64()];
    let args: std::collections::BTreeMap<String, String> = [("N".to_owned(), n.to_string())].into();
    let spec = BuildSpec {
        image: image.parse().expect("a valid reference"),
        platforms: platforms.to_vec(),
        context_digest: context.clone(),
        dockerfiles: platforms
            .iter()
            .map(|p| (p.clone(), "Dockerfile".to_owned()))
            .collect(),
        build_args: args.clone(),
        target: None,
        labels: Default::default(),
        arch_tags: false,
        arch_tag_template: None,
        flags: Default::default(),
        extra_tags: Vec::new(),
    };
    let request = BuildRequest {
        image,
        platforms: vec!["linux/amd64".into(), "linux/arm64".into()],
        context_digest: context,
        build_args: args,
        ..Default::default()
    };
    (spec, request)
}

/// A build just submitted, both jobs queued: the record the farm makes for a submit
/// ([`FarmState::new_build`]), created at `created_at_ms`, as stored once (version 1).
pub(super) fn queued_build(n: usize, created_at_ms: i64) -> Build {
    let (spec, request) = spec(n);
    let by = Caller {
        name: "bench".into(),
        team: "default".into(),
        admin: false,
    };
    let now = Now {
        at: std::time::Instant::now(),
        ms: created_at_ms,
    };
    let mut build = FarmState::new_build(spec, request, &by, now);
    build.version = 1;
    build
}

/// A finished build as the farm leaves it: 9 in 10 succeeded with both images and the list, the
/// others failed on amd64 with arm64 cancelled.
pub(super) fn finished_build(n: usize, created_at_ms: i64, finished_at_ms: i64) -> Build {
    let mut b = queued_build(n, created_at_ms);
    let failed = n % 10 == 9;
    let hex = |x: usize, p: usize| format!("sha256:{:064x}", ((x as u128) << 8) | p as u128);
    for (p, j) in b.jobs.iter_mut().enumerate() {
        j.worker = Some(format!("sim-{}", (n + p) % WORKERS));
        j.attempt = 1;
        j.log_tail = (0..3)
            .map(|k| format!("#{k} simulated step {k} of 3"))
            .collect();
        match (failed, p) {
            (false, _) => {
                j.state = JobState::Succeeded;
                j.image = Some(ChildImage {
                    platform: j.platform.clone(),
                    digest: hex(n, p),
                    size: 480,
                    media_type: sim::OCI_MANIFEST.into(),
                    attestations: Vec::new(),
                });
            }
            (true, 0) => {
                j.state = JobState::Failed;
                j.error = Some(
                    "RUN make: process \"/bin/sh -c make\" did not complete successfully: exit code: 2"
                        .into(),
                );
            }
            (true, _) => {
                j.state = JobState::Cancelled;
                j.error = Some("cancelled: linux/amd64 failed".into());
            }
        }
    }
    if failed {
        b.state = BuildState::Failed;
        b.error = Some("linux/amd64 failed: RUN make: exit code: 2".into());
    } else {
        b.state = BuildState::Succeeded;
        b.manifest = Some((hex(n, 9), OCI_INDEX.into()));
    }
    b.finished_at_ms = Some(finished_at_ms);
    // queued, assigned, running and the end of each job, then the build's end.
    b.version = 9;
    b
}
