//! Draining a worker, by SIGTERM or by `manifold workers drain NAME`: its running job finishes and
//! succeeds, no new job goes to it (a build submitted meanwhile waits, then runs on another
//! worker), `manifold workers` shows it draining, and the worker says goodbye and exits 0.
//! `manifold workers --watch`, started before the drain, prints the worker busy, then draining,
//! then gone, each as its own list.

use std::time::{Duration, Instant};

use manifold_proto::v1;
use manifold_tests::{Env, TestFarm, context_dir, show};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::ChildStdout;

/// `manifold workers --watch --format json` as it prints: one JSON document per list.
struct Watching(Lines<BufReader<ChildStdout>>);

impl Watching {
    /// Reads lists until one has what `wanted` looks for (30 s at most); returns that list's
    /// (name, status, slots in use) per worker.
    async fn until(
        &mut self,
        what: &str,
        wanted: impl Fn(&[(String, String, u64)]) -> bool,
    ) -> anyhow::Result<Vec<(String, String, u64)>> {
        let read = async {
            let mut doc = String::new();
            while let Some(line) = self.0.next_line().await? {
                doc.push_str(&line);
                // Each list is a pretty-printed object: its last line is a lone `}`.
                if line != "}" {
                    continue;
                }
                let list: serde_json::Value = serde_json::from_str(&std::mem::take(&mut doc))?;
                let workers: Vec<(String, String, u64)> = list["workers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|w| {
                        (
                            w["name"].as_str().unwrap_or_default().to_owned(),
                            w["status"].as_str().unwrap_or_default().to_owned(),
                            w["slots_in_use"].as_u64().unwrap_or_default(),
                        )
                    })
                    .collect();
                if wanted(&workers) {
                    return Ok(workers);
                }
            }
            anyhow::bail!("`manifold workers --watch` ended before {what}")
        };
        tokio::time::timeout(Duration::from_secs(30), read)
            .await
            .map_err(|_| anyhow::anyhow!("`manifold workers --watch` showed no {what} in 30 s"))?
    }
}

/// How the drain is asked for.
enum Ask {
    Sigterm,
    Cli,
}

async fn drain_finishes_the_running_job_and_takes_no_new_one(ask: Ask) -> anyhow::Result<()> {
    let started = Instant::now();
    let env = Env::from_env();
    let mut farm = TestFarm::builder().start().await?;
    farm.worker("x86").docker(&env.amd64_docker).spawn().await?;
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let ctx = context_dir(&[(
        "Dockerfile",
        &format!(
            "FROM {}\nRUN echo draining-{nonce} && sleep 5\n",
            env.base_image
        ),
    )])?;
    let running_tag = format!("{}:1", env.unique_repo("drain-running"));
    let running = farm
        .submit_detached(&[
            "-t",
            &running_tag,
            "--platform",
            "linux/amd64",
            ctx.path().to_str().unwrap(),
        ])
        .await?;
    let marker = format!("draining-{nonce}");
    farm.wait_log_line(&running, None, &marker, Duration::from_secs(90))
        .await?;

    let mut watcher = farm.cli_child(["workers", "--watch", "--format", "json"])?;
    let mut watching = Watching(BufReader::new(watcher.stdout.take().unwrap()).lines());
    let busy =
        |w: &[(String, String, u64)]| w.iter().any(|w| *w == ("x86".into(), "ready".into(), 1));
    watching.until("x86 running its job", busy).await?;
    match ask {
        Ask::Sigterm => farm.signal_worker("x86", "TERM").await?,
        Ask::Cli => {
            let out = farm.cli(["workers", "drain", "x86"]).await?;
            assert!(out.status.success(), "{}", show(&out));
            assert!(
                String::from_utf8_lossy(&out.stdout).contains("worker x86: draining"),
                "{}",
                show(&out)
            );
        }
    }
    farm.wait_worker("x86", Duration::from_secs(10), |w| w.draining)
        .await?;
    let listing = farm.cli(["workers"]).await?;
    assert!(
        String::from_utf8_lossy(&listing.stdout)
            .lines()
            .any(|l| l.starts_with("x86 ") && l.contains("draining")),
        "{}",
        show(&listing)
    );

    // Submitted during the drain: it must wait, not go to the draining worker.
    let waiting_tag = format!("{}:1", env.unique_repo("drain-waiting"));
    let waiting = farm
        .submit_detached(&[
            "-t",
            &waiting_tag,
            "--platform",
            "linux/amd64",
            ctx.path().to_str().unwrap(),
        ])
        .await?;

    let done = farm
        .wait_build_end(&running, Duration::from_secs(120))
        .await?;
    assert_eq!(
        done.state,
        v1::BuildState::Succeeded as i32,
        "the running job finishes: {done:?}\n{}",
        farm.worker_log("x86")
    );
    let status = farm
        .wait_worker_exit("x86", Duration::from_secs(60))
        .await?;
    assert_eq!(status.code(), Some(0), "{}", farm.worker_log("x86"));
    let draining = watching
        .until("x86 draining", |w| {
            w.iter().any(|w| w.0 == "x86" && w.1 == "draining")
        })
        .await?;
    assert_eq!(
        draining,
        [("x86".into(), "draining".into(), 1)],
        "its job still runs"
    );
    watching
        .until("x86 gone", |w| !w.iter().any(|w| w.0 == "x86"))
        .await?;
    watcher.kill().await?;
    assert!(
        farm.worker_log("x86").contains("said goodbye"),
        "{}",
        farm.worker_log("x86")
    );

    // Nothing was ever assigned to x86 for the second build; another worker takes it now.
    let b = farm.build(&waiting).await?;
    assert_eq!(b.state, v1::BuildState::Queued as i32, "{b:?}");
    assert_eq!(b.jobs[0].attempt, 0, "never assigned: {b:?}");
    farm.worker("x86-2")
        .docker(&env.amd64_docker)
        .spawn()
        .await?;
    let b = farm
        .wait_build_end(&waiting, Duration::from_secs(120))
        .await?;
    assert_eq!(b.state, v1::BuildState::Succeeded as i32, "{b:?}");
    assert_eq!((b.jobs[0].worker.as_str(), b.jobs[0].attempt), ("x86-2", 1));
    eprintln!("drain: {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_a_worker() -> anyhow::Result<()> {
    drain_finishes_the_running_job_and_takes_no_new_one(Ask::Sigterm).await
}

#[tokio::test(flavor = "multi_thread")]
async fn manifold_workers_drain_drains_a_worker() -> anyhow::Result<()> {
    drain_finishes_the_running_job_and_takes_no_new_one(Ask::Cli).await
}

#[tokio::test(flavor = "multi_thread")]
async fn draining_an_unknown_worker_names_it() -> anyhow::Result<()> {
    let farm = TestFarm::builder().start().await?;
    let out = farm.cli(["workers", "drain", "nobody"]).await?;
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no worker named `nobody` is attached"),
        "{}",
        show(&out)
    );
    Ok(())
}
