//! Chaos: N builds (amd64 only, arm64 only, and both) run on two amd64 and two arm64 workers while
//! a seeded schedule SIGKILLs workers (then restarts them) and freezes them with SIGSTOP for longer
//! than the lease (then SIGCONTs them), at random points. Every build must end: succeeded with a
//! list of exactly its platforms (per skopeo), or failed with an error naming a platform. None may
//! be lost or stuck.
//!
//! `MANIFOLD_CHAOS_SEED` replays a schedule; the seed, the faults and the outcome counts are printed.

use std::time::{Duration, Instant};

use manifold_proto::v1;
use manifold_tests::faults::{is_final, list_platforms};
use manifold_tests::{Env, TestFarm, bin, context_dir, show};

/// Builds submitted.
const BUILDS: usize = 24;
/// Faults injected (at most; the schedule stops early when every build has ended).
const FAULTS: usize = 12;
/// Every build must have ended this long after the first submission.
const ALL_END_WITHIN: Duration = Duration::from_secs(300);

/// xorshift64*: a seeded, reproducible schedule without another dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from))
    }
}

/// A worker of the chaos farm.
struct Spec {
    name: &'static str,
    docker: String,
    platform: Option<&'static str>,
    slots: u32,
}

async fn spawn(farm: &mut TestFarm, w: &Spec) -> anyhow::Result<()> {
    let mut builder = farm
        .worker(w.name)
        .docker(&w.docker)
        .slots(w.slots)
        .arg("--reconnect-max")
        .arg("2s");
    if let Some(p) = w.platform {
        builder = builder.platform(p);
    }
    builder.spawn().await
}

/// One submitted build and what it asked for.
struct Submitted {
    id: String,
    tag: String,
    platforms: Vec<String>,
}

/// Submits the builds at random intervals, then polls until every one has ended or the deadline
/// passes; returns them with their last state.
async fn submit_and_follow(
    url: String,
    env: Env,
    mut rng: Rng,
) -> anyhow::Result<Vec<(Submitted, v1::Build)>> {
    let started = Instant::now();
    let mut submitted = Vec::new();
    for i in 0..BUILDS {
        tokio::time::sleep(rng.millis(0, 800)).await;
        let platforms: Vec<String> = match i % 3 {
            0 => vec!["linux/amd64".into()],
            1 => vec!["linux/arm64".into()],
            _ => vec!["linux/amd64".into(), "linux/arm64".into()],
        };
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        let ctx = context_dir(&[(
            "Dockerfile",
            &format!(
                "FROM {}\nRUN echo chaos-{i}-{nonce} on $(uname -m) > /id && sleep {}\n",
                env.base_image,
                1 + rng.below(3)
            ),
        )])?;
        let tag = format!("{}:{i}", env.unique_repo("chaos"));
        let out = tokio::process::Command::new(bin("manifold"))
            .args(["--coordinator", &url, "build", "--detach", "-t", &tag])
            .args(["--platform", &platforms.join(",")])
            .arg(ctx.path())
            .output()
            .await?;
        anyhow::ensure!(out.status.success(), "submitting build {i}: {}", show(&out));
        let id = String::from_utf8(out.stdout)?.trim().to_owned();
        submitted.push(Submitted { id, tag, platforms });
    }
    let mut client = v1::builds_client::BuildsClient::connect(url).await?;
    loop {
        let mut builds = Vec::new();
        for s in &submitted {
            let b = client
                .get(v1::GetBuildRequest {
                    build_id: s.id.clone(),
                })
                .await?
                .into_inner();
            builds.push(b);
        }
        if builds.iter().all(is_final) || started.elapsed() > ALL_END_WITHIN {
            return Ok(submitted.into_iter().zip(builds).collect());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_build_ends_clearly_while_workers_are_killed_and_frozen() -> anyhow::Result<()> {
    let started = Instant::now();
    let seed = std::env::var("MANIFOLD_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_2026_u64);
    let env = Env::from_env();
    let mut farm = TestFarm::builder()
        .arg("--worker-lease")
        .arg("3s")
        .arg("--assign-timeout")
        .arg("10s")
        .start()
        .await?;
    // Two amd64 workers on two daemons, two arm64 ones (emulated) likewise.
    let workers = [
        Spec {
            name: "amd-1",
            docker: env.amd64_docker.clone(),
            platform: None,
            slots: 2,
        },
        Spec {
            name: "amd-2",
            docker: env.arm64_docker.clone(),
            platform: None,
            slots: 1,
        },
        Spec {
            name: "arm-1",
            docker: env.arm64_docker.clone(),
            platform: Some("linux/arm64"),
            slots: 1,
        },
        Spec {
            name: "arm-2",
            docker: env.amd64_docker.clone(),
            platform: Some("linux/arm64"),
            slots: 2,
        },
    ];
    for w in &workers {
        spawn(&mut farm, w).await?;
    }

    let follower = tokio::spawn(submit_and_follow(
        farm.url.clone(),
        env.clone(),
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15),
    ));
    let mut rng = Rng(seed);
    let mut faults: Vec<String> = Vec::new();
    while faults.len() < FAULTS && !follower.is_finished() {
        tokio::time::sleep(rng.millis(1500, 4000)).await;
        let w = &workers[rng.below(workers.len() as u64) as usize];
        let at = started.elapsed().as_secs_f64();
        if rng.below(10) < 7 {
            farm.kill_worker(w.name).await;
            let down = rng.millis(500, 3000);
            tokio::time::sleep(down).await;
            spawn(&mut farm, w).await?;
            faults.push(format!(
                "{at:.1}s SIGKILL {} (restarted after {:.1}s)",
                w.name,
                down.as_secs_f64()
            ));
        } else {
            farm.signal_worker(w.name, "STOP").await?;
            // Longer than the 3 s lease: the coordinator declares it lost meanwhile.
            let frozen = rng.millis(4000, 6000);
            tokio::time::sleep(frozen).await;
            farm.signal_worker(w.name, "CONT").await?;
            faults.push(format!(
                "{at:.1}s SIGSTOP {} for {:.1}s",
                w.name,
                frozen.as_secs_f64()
            ));
        }
    }
    let results = follower.await??;

    let (mut succeeded, mut failed) = (0, 0);
    let mut problems = Vec::new();
    for (s, b) in &results {
        match v1::BuildState::try_from(b.state) {
            Ok(v1::BuildState::Succeeded) => {
                succeeded += 1;
                let mut wanted = s.platforms.clone();
                wanted.sort();
                match list_platforms(&s.tag).await {
                    Ok(got) if got == wanted => {}
                    Ok(got) => problems.push(format!(
                        "{} succeeded but its list has {got:?}, not {wanted:?}",
                        s.id
                    )),
                    Err(e) => problems.push(format!("{} succeeded but: {e}", s.id)),
                }
            }
            Ok(v1::BuildState::Failed) => {
                failed += 1;
                if !b.error.contains("linux/") {
                    problems.push(format!(
                        "{} failed without naming a platform: `{}`",
                        s.id, b.error
                    ));
                }
            }
            other => problems.push(format!(
                "{} did not end within {ALL_END_WITHIN:?}: {other:?}, jobs {:?}",
                s.id, b.jobs
            )),
        }
    }
    let failures: Vec<&str> = results
        .iter()
        .filter(|(_, b)| b.state == v1::BuildState::Failed as i32)
        .map(|(_, b)| b.error.as_str())
        .collect();
    // Jobs that needed more than one attempt: the faults did hit running work.
    let retried = results
        .iter()
        .flat_map(|(_, b)| &b.jobs)
        .filter(|j| j.attempt > 1)
        .count();
    eprintln!(
        "chaos (seed {seed:#x}): N={} builds, {} faults:\n  {}\noutcome: {succeeded} succeeded, {failed} failed, {} not ended; {retried} jobs needed more than one attempt; {:.1}s\nfailures:\n  {}",
        results.len(),
        faults.len(),
        faults.join("\n  "),
        results.len() - succeeded - failed,
        started.elapsed().as_secs_f64(),
        failures.join("\n  ")
    );
    assert!(
        problems.is_empty(),
        "{}\n--- coordinator ---\n{}",
        problems.join("\n"),
        farm.coordinator_log()
    );
    assert_eq!(results.len(), BUILDS);
    // Three attempts per job outlast this many faults: most builds must get through.
    assert!(
        succeeded >= BUILDS / 2,
        "only {succeeded} of {BUILDS} builds succeeded"
    );
    Ok(())
}
