//! Publishing outlasts registry outages: a registry that answers 500 to the manifest-list push
//! for about a minute (a loopback proxy in front of the real registry) delays the build, which
//! then ends succeeded without rebuilding anything; one that fails past `--publish-window` fails
//! the build saying so, with its platforms kept, and `manifold publish ID` pushes the list once
//! the registry is back (another team may not). The tag is checked with skopeo on the registry
//! itself, behind the proxy.

use std::time::{Duration, Instant};

use manifold_proto::v1;
use manifold_tests::faults::{job_of, list_children};
use manifold_tests::registry_proxy::{Failing, RegistryProxy};
use manifold_tests::{Env, TestFarm, context_dir, issue_token, show, wait_until};

const PLATFORMS: [&str; 2] = ["linux/amd64", "linux/arm64"];

/// A context whose image is new (a nonce file) and needs no emulated RUN step.
fn sources(env: &Env) -> anyhow::Result<tempfile::TempDir> {
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    context_dir(&[
        (
            "Dockerfile",
            &format!("FROM {}\nCOPY n /n\n", env.base_image),
        ),
        ("n", &nonce),
    ])
}

/// `test/NAME-ID:1` behind `host`.
fn repository(host: &str, name: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}/test/{name}-{}", &id[..12])
}

/// The list under `tag` in the registry itself has one child per platform, each the image its
/// job pushed.
async fn check_list(tag: &str, b: &v1::Build) -> anyhow::Result<()> {
    let mut children = list_children(tag).await?;
    children.sort();
    let mut built: Vec<(String, String)> = PLATFORMS
        .iter()
        .map(|p| {
            let job = job_of(b, p)?;
            anyhow::ensure!(
                job.attempt == 1 && job.state == v1::JobState::Succeeded as i32,
                "{p} was rebuilt or did not succeed: {job:?}"
            );
            Ok((p.to_string(), job.image.clone().unwrap_or_default().digest))
        })
        .collect::<anyhow::Result<_>>()?;
    built.sort();
    assert_eq!(children, built, "the list holds the images the jobs built");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_list_push_outlasts_a_minute_of_registry_500s() -> anyhow::Result<()> {
    let started = Instant::now();
    let env = Env::from_env();
    let proxy = RegistryProxy::start(&env.registry, Failing::For(Duration::from_secs(60))).await?;
    let mut farm = TestFarm::builder().start().await?;
    farm.worker("x86").docker(&env.amd64_docker).spawn().await?;
    farm.worker("arm")
        .docker(&env.arm64_docker)
        .platform("linux/arm64")
        .spawn()
        .await?;
    let ctx = sources(&env)?;
    let repo = repository(&proxy.host, "outage");
    let id = farm
        .submit_detached(&[
            "-t",
            &format!("{repo}:1"),
            "--platform",
            &PLATFORMS.join(","),
            ctx.path().to_str().unwrap(),
        ])
        .await?;

    // Every platform is built; the list push fails and the build says it waits to retry.
    let waiting = wait_until(
        Duration::from_secs(240),
        "the build to wait for another try of its list push",
        || async {
            let b = farm.build(&id).await.ok()?;
            assert!(
                b.state != v1::BuildState::Failed as i32,
                "failed during the outage: {b:?}"
            );
            b.publishing.contains("retrying").then_some(b)
        },
    )
    .await?;
    assert_eq!(waiting.state, v1::BuildState::Running as i32);
    assert!(
        waiting.publishing.starts_with("publishing (retrying: ")
            && waiting.publishing.contains("500"),
        "{}",
        waiting.publishing
    );
    let status = farm.cli(["build-status", &id]).await?;
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("state     publishing (retrying: "),
        "{}",
        show(&status)
    );

    let b = farm.wait_build_end(&id, Duration::from_secs(300)).await?;
    assert_eq!(
        b.state,
        v1::BuildState::Succeeded as i32,
        "{b:?}\n--- coordinator ---\n{}",
        farm.coordinator_log()
    );
    assert!(b.publishing.is_empty() && b.error.is_empty(), "{b:?}");
    assert!(proxy.refused() > 1, "the list push was refused and retried");
    // Through the registry itself, not the proxy.
    let tag = format!("{}:1", repo.replacen(&proxy.host, &env.registry, 1));
    check_list(&tag, &b).await?;
    eprintln!(
        "publish_outlasts_registry_outage: {} list pushes refused over a minute, then published; {:.1}s",
        proxy.refused(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_list_push_failing_past_the_window_is_published_later_by_its_team() -> anyhow::Result<()>
{
    let env = Env::from_env();
    let (alice, alice_entry) = issue_token(&["--name", "alice", "--team", "a"]).await?;
    let (bob, bob_entry) = issue_token(&["--name", "bob", "--team", "b"]).await?;
    let config = format!(
        "[[team]]\nname = \"a\"\n\n[[team]]\nname = \"b\"\n\n{alice_entry}\n\n{bob_entry}\n"
    );
    let proxy = RegistryProxy::start(&env.registry, Failing::Always).await?;
    let mut farm = TestFarm::builder()
        .secured(&config, &["x86", "arm"])
        .arg("--publish-window")
        .arg("20s")
        .start()
        .await?;
    farm.worker("x86").docker(&env.amd64_docker).spawn().await?;
    farm.worker("arm")
        .docker(&env.arm64_docker)
        .platform("linux/arm64")
        .spawn()
        .await?;
    let ctx = sources(&env)?;
    let repo = repository(&proxy.host, "window");
    let id = farm
        .submit_detached_as(
            Some(&alice),
            &[
                "-t",
                &format!("{repo}:1"),
                "--platform",
                &PLATFORMS.join(","),
                ctx.path().to_str().unwrap(),
            ],
        )
        .await?;

    let b = farm.wait_build_end(&id, Duration::from_secs(300)).await?;
    assert_eq!(b.state, v1::BuildState::Failed as i32, "{b:?}");
    assert!(
        b.error
            .contains("every platform was built, but pushing the manifest list to")
            && b.error.contains("--publish-window")
            && b.error
                .contains(&format!("`manifold publish {id}` pushes the list again")),
        "{}",
        b.error
    );
    for p in PLATFORMS {
        let job = job_of(&b, p)?;
        assert!(
            job.state == v1::JobState::Succeeded as i32 && job.image.is_some(),
            "{p} is kept: {job:?}"
        );
    }
    proxy.heal();
    let refused = proxy.refused();

    // Bob may not publish team a's build: refused before the farm acts, nothing pushed.
    let out = farm.cli_as(Some(&bob), ["publish", &id]).await?;
    assert!(!out.status.success(), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("build {id} belongs to another team")),
        "{}",
        show(&out)
    );
    assert_eq!(farm.build(&id).await?.state, v1::BuildState::Failed as i32);

    // Alice publishes it: the list goes up without a rebuild.
    let out = farm.cli_as(Some(&alice), ["publish", &id]).await?;
    assert!(out.status.success(), "{}", show(&out));
    let digest = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let b = farm.build(&id).await?;
    assert_eq!(b.state, v1::BuildState::Succeeded as i32, "{b:?}");
    assert_eq!(b.manifest_digest, digest);
    assert!(b.error.is_empty(), "{b:?}");
    assert_eq!(proxy.refused(), refused, "the proxy was healed");
    let tag = format!("{}:1", repo.replacen(&proxy.host, &env.registry, 1));
    check_list(&tag, &b).await?;
    let pushed = manifold_tests::skopeo_raw(&tag).await?;
    assert!(pushed["manifests"].is_array(), "{pushed}");

    // Published once is enough: a second `manifold publish` says why not.
    let out = farm.cli_as(Some(&alice), ["publish", &id]).await?;
    assert!(!out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("cannot be published again: it is succeeded, not failed"),
        "{}",
        show(&out)
    );
    Ok(())
}
