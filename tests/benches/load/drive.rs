//! The load benchmark's drivers (see load.rs): the submitters, the waits and reads at the end,
//! and the once-a-second sampler of the coordinator's CPU, listing latencies and assignments.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use manifold_proto::v1::{self, builds_client::BuildsClient, workers_client::WorkersClient};
use tokio::sync::watch;
use tonic::transport::Channel;

use super::sim::{Sim, build_request, clock_ticks, connect, proc_cpu_ticks, unix_ms};

// ------------------------------------------------------------------------------------------------
// Submitters

pub struct Submissions {
    pub image: String,
    pub context: String,
    pub builds: usize,
    pub submitters: usize,
    pub url: String,
}

pub struct Submitted {
    pub ids: Vec<String>,
    /// Unix ms when the Submit of each build started.
    pub started_ms: HashMap<String, i64>,
    /// Milliseconds each Submit took.
    pub latencies: Vec<f64>,
    pub secs: f64,
}

impl Submissions {
    /// `builds` builds from `submitters` concurrent clients, each on its own connection.
    pub async fn run(&self) -> anyhow::Result<Submitted> {
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for s in 0..self.submitters {
            let channel = connect(&self.url).await?;
            let (image, context) = (self.image.clone(), self.context.clone());
            let mine: Vec<usize> = (s..self.builds).step_by(self.submitters).collect();
            tasks.spawn(async move {
                let mut client = BuildsClient::new(channel);
                let mut out = Vec::with_capacity(mine.len());
                for n in mine {
                    let request = build_request(&image, &context, n);
                    let (t, at_ms) = (Instant::now(), unix_ms());
                    let id = tokio::time::timeout(Duration::from_secs(60), client.submit(request))
                        .await
                        .context("a Submit took longer than 60 s")?
                        .with_context(|| format!("submitting build {n}"))?
                        .into_inner()
                        .build_id;
                    out.push((id, at_ms, t.elapsed().as_secs_f64() * 1e3));
                }
                anyhow::Ok(out)
            });
        }
        let mut all = Vec::new();
        while let Some(r) = tasks.join_next().await {
            all.extend(r??);
        }
        let secs = started.elapsed().as_secs_f64();
        Ok(Submitted {
            started_ms: all.iter().map(|(id, at, _)| (id.clone(), *at)).collect(),
            latencies: all.iter().map(|(_, _, l)| *l).collect(),
            ids: all.into_iter().map(|(id, _, _)| id).collect(),
            secs,
        })
    }
}

/// Waits (bounded by the scenario's timeout) until every build has ended; returns their summaries.
pub async fn wait_all_final(
    channel: &Channel,
    n: usize,
    workers: &mut tokio::task::JoinSet<anyhow::Result<()>>,
) -> anyhow::Result<Vec<v1::Build>> {
    let mut client = BuildsClient::new(channel.clone());
    let mut last_print = Instant::now();
    loop {
        if let Some(Ok(Err(e))) = workers.try_join_next() {
            eprintln!("load bench: a simulated worker stopped: {e:#}");
        }
        let teams = client.teams(v1::ListTeamsRequest {}).await?.into_inner();
        let (running, queued): (u32, u32) = teams
            .teams
            .iter()
            .fold((0, 0), |(r, q), t| (r + t.running, q + t.queued));
        if running == 0 && queued == 0 {
            let all = list_all(&mut client).await?;
            let done = all
                .iter()
                .filter(|b| {
                    b.state != v1::BuildState::Queued as i32
                        && b.state != v1::BuildState::Running as i32
                })
                .count();
            if done >= n {
                return Ok(all);
            }
            // Paging through every build costs the coordinator (a clone of each under its
            // lock): while the last lists are pushed, look again only every 2 s.
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        if last_print.elapsed() > Duration::from_secs(5) {
            println!("  ... {running} jobs running, {queued} queued");
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Every build's summary, paging through `Builds.List`.
pub async fn list_all(client: &mut BuildsClient<Channel>) -> anyhow::Result<Vec<v1::Build>> {
    let mut all = Vec::new();
    let mut before = String::new();
    for _ in 0..10_000 {
        let page = client
            .list(v1::ListBuildsRequest {
                limit: 1000,
                before: before.clone(),
                since_ms: 0,
            })
            .await?
            .into_inner();
        all.extend(page.builds);
        if page.next_before.is_empty() {
            return Ok(all);
        }
        before = page.next_before;
    }
    bail!("more than 10,000 pages of builds")
}

/// Each build's whole history (`Builds.Watch` of a finished build), 16 at a time.
pub async fn histories(
    url: &str,
    ids: &[String],
) -> anyhow::Result<Vec<(String, Vec<v1::BuildEvent>)>> {
    let channel = connect(url).await?;
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(16) {
        let mut tasks = tokio::task::JoinSet::new();
        for id in chunk {
            let (mut client, id) = (BuildsClient::new(channel.clone()), id.clone());
            tasks.spawn(async move {
                let watch = async {
                    let mut stream = client
                        .watch(v1::WatchBuildRequest {
                            build_id: id.clone(),
                        })
                        .await?
                        .into_inner();
                    let mut events = Vec::new();
                    while let Some(e) = stream.message().await? {
                        events.push(e);
                    }
                    anyhow::Ok(events)
                };
                let events = tokio::time::timeout(Duration::from_secs(30), watch)
                    .await
                    .context("Watch of a finished build took longer than 30 s")??;
                anyhow::Ok((id, events))
            });
        }
        while let Some(r) = tasks.join_next().await {
            out.push(r??);
        }
    }
    Ok(out)
}

// ------------------------------------------------------------------------------------------------
// Sampling once a second during the load

pub struct Sampler {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Samples>,
}

#[derive(Default)]
pub struct Samples {
    pub cpu: Vec<f64>,
    pub cpu_mean: f64,
    pub bench_cpu_mean: f64,
    /// The benchmark's registry, mean % of one core (it shares the machine's cores).
    pub registry_cpu_mean: Option<f64>,
    pub builds_list: Vec<f64>,
    pub workers_list: Vec<f64>,
    /// Assignments received per second, each second of the load.
    pub assignments: Vec<u64>,
}

impl Samples {
    /// The per-second assignment counts from the first second with one to the last with one.
    pub fn assignments_in_span(&self) -> Vec<f64> {
        let first = self.assignments.iter().position(|&a| a > 0);
        let last = self.assignments.iter().rposition(|&a| a > 0);
        match (first, last) {
            (Some(f), Some(l)) => self.assignments[f..=l].iter().map(|&a| a as f64).collect(),
            _ => Vec::new(),
        }
    }
}

impl Sampler {
    pub fn start(pid: u32, registry: Option<u32>, channel: Channel, sim: Arc<Sim>) -> Self {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let ticks = clock_ticks();
            let mut s = Samples::default();
            let t0 = Instant::now();
            let (cpu0, me0) = (
                proc_cpu_ticks(pid).unwrap_or(0),
                proc_cpu_ticks(std::process::id()).unwrap_or(0),
            );
            let registry0 = registry.and_then(proc_cpu_ticks);
            let (mut last_cpu, mut last_at) = (cpu0, Instant::now());
            let mut last_assigned = sim.assignments.load(Ordering::Relaxed);
            let mut builds = BuildsClient::new(channel.clone());
            let mut workers = WorkersClient::new(channel);
            let mut interval = tokio::time::interval(Duration::from_secs(1));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval.tick().await;
            loop {
                tokio::select! {
                    _ = stopped.changed() => break,
                    _ = interval.tick() => {}
                }
                let t = Instant::now();
                if let Ok(Ok(_)) = tokio::time::timeout(
                    Duration::from_secs(10),
                    builds.list(v1::ListBuildsRequest::default()),
                )
                .await
                {
                    s.builds_list.push(t.elapsed().as_secs_f64() * 1e3);
                }
                let t = Instant::now();
                if let Ok(Ok(_)) = tokio::time::timeout(
                    Duration::from_secs(10),
                    workers.list(v1::ListWorkersRequest {}),
                )
                .await
                {
                    s.workers_list.push(t.elapsed().as_secs_f64() * 1e3);
                }
                let cpu = proc_cpu_ticks(pid).unwrap_or(last_cpu);
                let secs = last_at.elapsed().as_secs_f64();
                s.cpu
                    .push((cpu - last_cpu) as f64 / ticks / secs.max(1e-3) * 100.0);
                (last_cpu, last_at) = (cpu, Instant::now());
                let assigned = sim.assignments.load(Ordering::Relaxed);
                s.assignments.push(assigned - last_assigned);
                last_assigned = assigned;
            }
            let secs = t0.elapsed().as_secs_f64().max(1e-3);
            s.cpu_mean = (proc_cpu_ticks(pid).unwrap_or(cpu0) - cpu0) as f64 / ticks / secs * 100.0;
            s.bench_cpu_mean =
                (proc_cpu_ticks(std::process::id()).unwrap_or(me0) - me0) as f64 / ticks / secs
                    * 100.0;
            s.registry_cpu_mean = registry
                .zip(registry0)
                .and_then(|(r, r0)| Some((proc_cpu_ticks(r)? - r0) as f64 / ticks / secs * 100.0));
            s
        });
        Self { stop, task }
    }

    pub async fn stop(self) -> Samples {
        self.stop.send_replace(true);
        self.task.await.unwrap_or_default()
    }
}
