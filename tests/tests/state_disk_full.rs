//! A full state disk is stated and survived: while the state dir's file system is full, a submit
//! is refused with "state disk full" (ResourceExhausted, not "cannot reach the coordinator") and
//! the refused build is never listed; reads go on; once space returns the same coordinator takes
//! builds again, and after a SIGKILL and restart every accepted build is there.
//!
//! The state dir is a 16 MiB tmpfs the test mounts (the tests run as root); no worker attaches,
//! so builds stay queued. Everything listens on 127.0.0.1.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use manifold_proto::v1;
use manifold_tests::faults::Tmpfs;
use manifold_tests::{TestFarm, context_dir, show};

/// Fills the file system of `dir` with one file, to its last byte.
fn fill(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("creating the filler");
    let block = vec![0xa5u8; 64 << 10];
    loop {
        match f.write(&block) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("filling {}: {e}", dir.display()),
        }
    }
    // Whatever a smaller write still finds.
    while let Ok(n) = f.write(&block[..512]) {
        if n == 0 {
            break;
        }
    }
    path
}

async fn listed(farm: &TestFarm) -> anyhow::Result<BTreeSet<String>> {
    let page = farm
        .builds()
        .await?
        .list(farm.as_admin(v1::ListBuildsRequest {
            limit: 1000,
            ..Default::default()
        }))
        .await?
        .into_inner();
    Ok(page.builds.into_iter().map(|b| b.id).collect())
}

#[tokio::test]
async fn a_full_state_disk_refuses_submits_and_the_coordinator_recovers_when_space_returns()
-> anyhow::Result<()> {
    let mount = tempfile::tempdir()?;
    let state = mount.path().join("state");
    let tmpfs = Tmpfs::mount(&state, "16m");
    let mut farm = TestFarm::builder()
        .state_dir(&state)
        .wait_for_workers("30m")
        .start()
        .await?;
    let dir = context_dir(&[("Dockerfile", "FROM scratch\nCOPY . /\n")])?;
    let image = format!("{}:1", farm.env.unique_repo("disk-full"));
    let context = dir.path().display().to_string();
    let build = |pad: &str| {
        vec![
            "-t".to_owned(),
            image.clone(),
            "--platform".into(),
            "linux/amd64".into(),
            "--build-arg".into(),
            format!("PAD={pad}"),
            context.clone(),
        ]
    };
    let first = farm
        .submit_detached(&build("0").iter().map(String::as_str).collect::<Vec<_>>())
        .await?;
    let mut accepted = BTreeSet::from([first.clone()]);
    let request = farm
        .build(&first)
        .await?
        .request
        .expect("the build's request");

    // Fill the disk, then submit (over gRPC, each with a 4 KiB build arg) until the store refuses.
    let filler = fill(&state);
    let mut refused = None;
    for i in 0..400 {
        let mut r = request.clone();
        r.build_args
            .insert("PAD".into(), format!("{i:04}{}", "x".repeat(4096)));
        match farm.builds().await?.submit(farm.as_admin(r)).await {
            Ok(answer) => {
                accepted.insert(answer.into_inner().build_id);
            }
            Err(status) => {
                refused = Some(status);
                break;
            }
        }
    }
    let status = refused.expect("400 submits on a full 16 MiB disk must meet its end");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("state disk full")
            && status.message().contains("--state-dir")
            && status.message().contains("No space left on device"),
        "the refusal should name the full state disk and what to do: {}",
        status.message()
    );

    // The CLI says the same, and does not claim the coordinator is unreachable. (A refused write
    // may leave room for a small one: keep submitting until one is refused.)
    let mut cli_refused = None;
    for i in 0..20 {
        let args = build(&format!("cli-{i}-{}", "y".repeat(4096)));
        let out = farm
            .cli(
                ["build", "--detach"]
                    .into_iter()
                    .chain(args.iter().map(String::as_str)),
            )
            .await?;
        if out.status.success() {
            accepted.insert(String::from_utf8(out.stdout)?.trim().to_owned());
        } else {
            cli_refused = Some(out);
            break;
        }
    }
    let out = cli_refused.expect("20 CLI submits on a full disk must meet its end");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("state disk full") && !stderr.contains("cannot reach"),
        "`manifold build` on a full state disk: {}",
        show(&out)
    );

    // Reads go on, and list exactly the accepted builds: the refused ones were never shown.
    assert_eq!(
        listed(&farm).await?,
        accepted,
        "listed while the disk is full"
    );

    // Space returns: the same coordinator takes builds again, without a restart.
    std::fs::remove_file(&filler)?;
    let after = manifold_tests::wait_until(
        Duration::from_secs(20),
        "a submit to succeed once space is back",
        || async {
            let mut r = request.clone();
            r.build_args.insert("PAD".into(), "after".into());
            let mut c = farm.builds().await.ok()?;
            c.submit(farm.as_admin(r))
                .await
                .ok()
                .map(|a| a.into_inner().build_id)
        },
    )
    .await?;
    accepted.insert(after);
    assert_eq!(
        listed(&farm).await?,
        accepted,
        "listed after space returned"
    );
    let log = farm.coordinator_log();
    assert!(
        log.contains("state store opened again after an I/O error"),
        "the coordinator should say it reopened its store:\n{log}"
    );

    // Every accepted build was durable: a SIGKILL and restart lists the same set.
    farm.kill_coordinator().await;
    farm.restart_coordinator().await?;
    assert_eq!(
        listed(&farm).await?,
        accepted,
        "listed after a SIGKILL and restart"
    );
    drop(farm);
    drop(tmpfs);
    Ok(())
}
