//! A build's output survives a failover: two coordinators elect a leader on a real etcd, a build
//! whose amd64 output passes the per-platform bound (1 MiB) finishes on the first leader, and the
//! leader is SIGKILLed. On the new leader, `manifold logs ID` prints every platform's lines (the
//! tail of amd64's, in order, after a marker), `--platform` filters them, `manifold watch ID`
//! shows the same lines before the build's end, and another team is refused.
//!
//! The set serves TLS with two teams (alice in `mobile`, bob in `platform`); loopback only.

use std::time::Duration;

use manifold_proto::v1;
use manifold_tests::ha::{
    Coordinator, EtcdCluster, start_secured_coordinator, start_secured_worker,
};
use manifold_tests::long_output::{self, LongOutput};
use manifold_tests::{Env, Secured, cli_command, show, two_teams, wait_until};

async fn builds(
    c: &Coordinator,
) -> anyhow::Result<v1::builds_client::BuildsClient<tonic::transport::Channel>> {
    Ok(v1::builds_client::BuildsClient::new(c.channel().await?))
}

async fn workers_on(c: &Coordinator) -> usize {
    let Ok(channel) = c.channel().await else {
        return 0;
    };
    v1::workers_client::WorkersClient::new(channel)
        .list(c.as_admin(v1::ListWorkersRequest {}))
        .await
        .map_or(0, |r| r.into_inner().workers.len())
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_of_a_finished_build_are_read_on_the_new_leader_after_a_failover() -> anyhow::Result<()>
{
    let env = Env::from_env();
    let etcd = EtcdCluster::start(1).await?;
    let dir = tempfile::tempdir()?;
    let (config, alice, bob) = two_teams().await?;
    let secure = Secured::make(dir.path(), &config, &["x86".into(), "arm".into()]).await?;
    // A short leader lease, so that c2 takes over soon after c1's SIGKILL.
    let lease = ["--leader-lease", "3s"];
    let mut c1 = start_secured_coordinator(&etcd, dir.path(), "c1", &lease, &secure).await?;
    wait_until(Duration::from_secs(30), "c1 to lead", || async {
        c1.is_leader().await.then_some(())
    })
    .await?;
    let c2 = start_secured_coordinator(&etcd, dir.path(), "c2", &lease, &secure).await?;
    let urls = format!("{},{}", c1.url, c2.url);
    let _x86 =
        start_secured_worker(&urls, dir.path(), "x86", &env.amd64_docker, None, &secure).await?;
    let arm64 = Some("linux/arm64");
    let _arm =
        start_secured_worker(&urls, dir.path(), "arm", &env.arm64_docker, arm64, &secure).await?;
    wait_until(Duration::from_secs(30), "both workers on c1", || async {
        (workers_on(&c1).await == 2).then_some(())
    })
    .await?;
    let cli = |token: &str, args: &[&str]| {
        let mut cmd = cli_command(&urls, Some(&secure), Some(token));
        cmd.args(args).stdin(std::process::Stdio::null());
        cmd.kill_on_drop(true).output()
    };

    let build = LongOutput::new(&env.base_image);
    let ctx = build.context()?;
    let tag = format!("{}:1", env.unique_repo("failover-logs"));
    let platforms = "linux/amd64,linux/arm64";
    let context = ctx.path().to_str().unwrap();
    let out = cli(
        &alice,
        &[
            "build",
            "--detach",
            "-t",
            &tag,
            "--platform",
            platforms,
            context,
        ],
    )
    .await?;
    assert!(out.status.success(), "{}", show(&out));
    let id = String::from_utf8(out.stdout)?.trim().to_owned();
    let on_c1 = builds(&c1).await?;
    let b = wait_until(
        Duration::from_secs(300),
        &format!("build {id} to end on c1"),
        || async {
            let request = c1.as_admin(v1::GetBuildRequest {
                build_id: id.clone(),
            });
            let b = on_c1.clone().get(request).await.ok()?.into_inner();
            (b.state >= v1::BuildState::Succeeded as i32).then_some(b)
        },
    )
    .await?;
    assert_eq!(
        b.state,
        v1::BuildState::Succeeded as i32,
        "{b:?}\n{}",
        c1.log()
    );

    c1.kill().await;
    wait_until(Duration::from_secs(60), "c2 to lead", || async {
        c2.is_leader().await.then_some(())
    })
    .await?;

    // The CLI, given both addresses, finds c2.
    let out = cli(&alice, &["logs", &id]).await?;
    assert!(
        out.status.success(),
        "{}\n--- c2 ---\n{}",
        show(&out),
        c2.log()
    );
    build.check_logs(&String::from_utf8(out.stdout)?);
    let out = cli(&alice, &["logs", &id, "--platform", "linux/arm64"]).await?;
    assert!(out.status.success(), "{}", show(&out));
    build.check_arm64_logs(&String::from_utf8(out.stdout)?);

    // `watch` on the new leader shows what `logs` shows, then the build's end.
    let mut on_c2 = builds(&c2).await?;
    let stored = long_output::stored_lines(&mut on_c2, &id, &secure.admin_token).await?;
    let watch = cli(&alice, &["watch", &id, "--progress", "json"]).await?;
    long_output::check_watch_agrees(&watch, &stored);

    // Another team may not read them, nor watch the build, and learns nothing of them.
    build.check_refused(&cli(&bob, &["logs", &id]).await?);
    build.check_refused(&cli(&bob, &["watch", &id]).await?);
    let refused = long_output::stored_lines(&mut on_c2, &id, &bob)
        .await
        .expect_err("bob's Logs call is refused");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    Ok(())
}
