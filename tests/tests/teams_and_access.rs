//! Teams share one farm safely: workers prove who they are with a client certificate, people with a
//! bearer token, and each team sees only its own builds. A team-owned worker serves its owner
//! first and lends its slots when the owner has nothing queued.
//!
//! Every farm here serves TLS with certificates made by `manifold-coordinator dev-ca`, and its
//! tokens come from `manifold-coordinator issue-token`; all traffic stays on 127.0.0.1.

use std::time::Duration;

use manifold_proto::v1;
use manifold_tests::faults::signal_pid;
use manifold_tests::{Env, TestFarm, context_dir, issue_token, show, wait_until};

/// Two teams, the mobile team's token for alice and the platform team's for bob.
struct Teams {
    config: String,
    alice: String,
    bob: String,
}

async fn teams() -> anyhow::Result<Teams> {
    let (alice, alice_entry) = issue_token(&["--name", "alice", "--team", "mobile"]).await?;
    let (bob, bob_entry) = issue_token(&["--name", "bob", "--team", "platform"]).await?;
    let config = format!(
        "[[team]]\nname = \"mobile\"\n\n[[team]]\nname = \"platform\"\nweight = 2\n\n{alice_entry}\n\n{bob_entry}\n"
    );
    assert!(
        !config.contains(&alice) && !config.contains(&bob),
        "the config holds digests, never tokens"
    );
    Ok(Teams { config, alice, bob })
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A one-platform build of `ctx` to a fresh repository, submitted with `--detach` under `token`.
async fn submit(
    farm: &TestFarm,
    token: &str,
    env: &Env,
    marker: &str,
    ctx: &tempfile::TempDir,
) -> anyhow::Result<String> {
    let tag = format!("{}:1", env.unique_repo(marker));
    let args = [
        "-t",
        &tag,
        "--platform",
        "linux/amd64",
        ctx.path().to_str().unwrap(),
    ];
    farm.submit_detached_as(Some(token), &args).await
}

/// A context whose RUN step prints `marker`; a fresh nonce keeps Docker from answering it from
/// its cache (a cached step prints nothing).
fn context(env: &Env, marker: &str) -> anyhow::Result<tempfile::TempDir> {
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    context_dir(&[(
        "Dockerfile",
        &format!(
            "FROM {}\nRUN echo {marker}-on-$(uname -m) run-{nonce} && sleep 2\n",
            env.base_image
        ),
    )])
}

#[tokio::test]
async fn a_worker_without_a_client_certificate_is_refused() -> anyhow::Result<()> {
    let env = Env::from_env();
    let t = teams().await?;
    let mut farm = TestFarm::builder()
        .secured(&t.config, &["x86", "mac=mobile"])
        .start()
        .await?;

    farm.worker("x86")
        .docker(&env.amd64_docker)
        .without_certificate()
        .start()?;
    let status = farm
        .wait_worker_exit("x86", Duration::from_secs(60))
        .await?;
    assert!(!status.success(), "a refused worker exits with an error");
    let log = farm.worker_log("x86");
    assert!(
        log.contains("client certificate"),
        "the worker says why it was refused:\n{log}"
    );
    assert!(farm.attached_workers().await?.is_empty());

    // The same machine with the certificate made for it attaches; a team-owned one shows its owner.
    farm.worker("x86").docker(&env.amd64_docker).spawn().await?;
    farm.worker("mac").docker(&env.amd64_docker).spawn().await?;
    let mut attached = farm.attached_workers().await?;
    attached.sort();
    assert_eq!(
        attached,
        [
            ("mac".to_owned(), "mobile".to_owned()),
            ("x86".to_owned(), String::new())
        ]
    );
    let out = farm.cli_as(Some(&t.alice), ["workers"]).await?;
    assert!(out.status.success(), "{}", show(&out));
    let mac_line = stdout(&out)
        .lines()
        .find(|l| l.starts_with("mac"))
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(
        mac_line.contains("mobile"),
        "`manifold workers` shows the owner team:\n{}",
        stdout(&out)
    );
    Ok(())
}

#[tokio::test]
async fn a_wrong_token_is_unauthenticated_and_submits_nothing() -> anyhow::Result<()> {
    let env = Env::from_env();
    let t = teams().await?;
    let farm = TestFarm::builder().secured(&t.config, &[]).start().await?;
    let ctx = context(&env, "never")?;
    let tag = format!("{}:1", env.unique_repo("wrong-token"));
    let build = |token: Option<&'static str>| {
        let (farm, tag, ctx) = (&farm, tag.clone(), ctx.path().to_owned());
        async move {
            farm.cli_as(
                token,
                [
                    "build",
                    "-t",
                    &tag,
                    "--platform",
                    "linux/amd64",
                    ctx.to_str().unwrap(),
                ],
            )
            .await
        }
    };

    let wrong = "mft_not-a-token-of-this-farm";
    let out = build(Some(wrong)).await?;
    assert!(!out.status.success(), "{}", show(&out));
    let err = stderr(&out);
    assert!(
        err.contains("not valid for this farm"),
        "the error says the token was refused:\n{err}"
    );
    assert!(!err.contains(wrong), "the token is never echoed:\n{err}");

    let out = build(None).await?;
    assert!(!out.status.success(), "{}", show(&out));
    assert!(
        stderr(&out).contains("requires a token"),
        "no token: the error says how to give one:\n{}",
        stderr(&out)
    );

    let builds = farm
        .builds()
        .await?
        .list(farm.as_admin(v1::ListBuildsRequest {
            limit: 10,
            ..Default::default()
        }))
        .await?
        .into_inner()
        .builds;
    assert!(builds.is_empty(), "nothing was submitted: {builds:?}");
    let log = farm.coordinator_log();
    assert!(!log.contains(wrong), "the coordinator never logs tokens");
    assert!(!log.contains(&t.alice) && !log.contains(&t.bob));
    Ok(())
}

#[tokio::test]
async fn one_team_cannot_see_or_touch_another_teams_build() -> anyhow::Result<()> {
    let env = Env::from_env();
    let t = teams().await?;
    let mut farm = TestFarm::builder()
        .secured(&t.config, &["x86"])
        .start()
        .await?;
    farm.worker("x86").docker(&env.amd64_docker).spawn().await?;
    let ctx = context(&env, "alices-secret")?;
    let id = submit(&farm, &t.alice, &env, "alices-secret", &ctx).await?;

    // Bob (team platform) does not see it in the list...
    let out = farm.cli_as(Some(&t.bob), ["builds"]).await?;
    assert!(out.status.success(), "{}", show(&out));
    assert!(!stdout(&out).contains(&id), "{}", show(&out));
    // ...and every direct use is PermissionDenied, naming the reason.
    for command in ["build-status", "watch", "logs", "cancel"] {
        let out = farm.cli_as(Some(&t.bob), [command, &id]).await?;
        assert!(!out.status.success(), "bob's `{command}`: {}", show(&out));
        assert!(
            stderr(&out).contains("belongs to another team"),
            "bob's `{command}` is refused as another team's build:\n{}",
            show(&out)
        );
        assert!(!stdout(&out).contains("alices-secret"), "{}", show(&out));
    }

    // Bob's cancel changed nothing: the build succeeds, and alice reads its logs.
    let build = farm.wait_build_end(&id, Duration::from_secs(180)).await?;
    assert_eq!(build.state, v1::BuildState::Succeeded as i32, "{build:?}");
    assert_eq!(build.team, "mobile");
    assert_eq!(build.submitted_by, "alice");
    let out = farm.cli_as(Some(&t.alice), ["logs", &id]).await?;
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        stdout(&out).contains("alices-secret-on-x86_64"),
        "alice reads her build's output:\n{}",
        show(&out)
    );
    let out = farm.cli_as(Some(&t.alice), ["builds"]).await?;
    assert!(stdout(&out).contains(&id), "{}", show(&out));
    // The admin sees every team's builds.
    let out = farm.cli(["builds"]).await?;
    assert!(stdout(&out).contains(&id), "{}", show(&out));

    // The state store knows who submitted the build, never with which token.
    let store = std::fs::read(farm.state_dir.path().join("state.redb"))?;
    let holds = |needle: &str| store.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(holds(&id) || holds("alice"), "the store holds the build");
    assert!(!holds(&t.alice) && !holds(&t.bob), "no token in the store");
    let log = farm.coordinator_log();
    assert!(!log.contains(&t.alice) && !log.contains(&t.bob));
    Ok(())
}

#[tokio::test]
async fn an_owned_worker_runs_its_owners_job_before_a_borrowers_earlier_one() -> anyhow::Result<()>
{
    let env = Env::from_env();
    let t = teams().await?;
    let mut farm = TestFarm::builder()
        .secured(&t.config, &["mac=mobile"])
        .start()
        .await?;
    // Bob's build is queued first, then alice's; only then does the mobile team's worker (one
    // slot) attach.
    let bob_ctx = context(&env, "borrower")?;
    let bob_build = submit(&farm, &t.bob, &env, "borrower", &bob_ctx).await?;
    let alice_ctx = context(&env, "owner")?;
    let alice_build = submit(&farm, &t.alice, &env, "owner", &alice_ctx).await?;
    farm.worker("mac")
        .docker(&env.amd64_docker)
        .slots(1)
        .spawn()
        .await?;

    let first = wait_until(Duration::from_secs(60), "a job to be assigned", || async {
        let alice = farm.build(&alice_build).await.ok()?;
        let bob = farm.build(&bob_build).await.ok()?;
        let started = |b: &v1::Build| b.jobs[0].state != v1::JobState::Queued as i32;
        (started(&alice) || started(&bob)).then_some((alice, bob))
    })
    .await?;
    let (alice, bob) = first;
    assert_ne!(
        alice.jobs[0].state,
        v1::JobState::Queued as i32,
        "the owner's job goes first"
    );
    assert_eq!(
        bob.jobs[0].state,
        v1::JobState::Queued as i32,
        "the borrower's earlier job waits while the owner has work"
    );

    // Once the owner has nothing queued, the borrower gets the worker.
    let alice = farm
        .wait_build_end(&alice_build, Duration::from_secs(180))
        .await?;
    assert_eq!(alice.state, v1::BuildState::Succeeded as i32, "{alice:?}");
    let bob = farm
        .wait_build_end(&bob_build, Duration::from_secs(180))
        .await?;
    assert_eq!(bob.state, v1::BuildState::Succeeded as i32, "{bob:?}");
    assert_eq!(bob.jobs[0].worker, "mac", "borrowed the idle owned worker");
    assert!(bob.jobs[0].attempt == 1 && alice.jobs[0].attempt == 1);
    Ok(())
}

#[tokio::test]
async fn sighup_reloads_tokens_so_a_deleted_entry_is_revoked_at_once() -> anyhow::Result<()> {
    let t = teams().await?;
    let farm = TestFarm::builder().secured(&t.config, &[]).start().await?;
    let pid = farm.coordinator_pid().expect("the coordinator runs");
    let accepted = |token: String| {
        let farm = &farm;
        async move {
            farm.cli_as(Some(&token), ["builds"])
                .await
                .ok()?
                .status
                .success()
                .then_some(())
        }
    };
    assert!(
        accepted(t.bob.clone()).await.is_some(),
        "bob's token works at first"
    );

    // A new token for carol, and bob's entry deleted: one SIGHUP applies both.
    let (carol, carol_entry) = issue_token(&["--name", "carol", "--team", "platform"]).await?;
    let config = std::fs::read_to_string(farm.config_file())?;
    let without_bob: String = config
        .split("[[token]]")
        .filter(|entry| !entry.contains("name = \"bob\""))
        .collect::<Vec<_>>()
        .join("[[token]]");
    assert_ne!(without_bob, config, "bob's entry was found");
    std::fs::write(
        farm.config_file(),
        format!("{without_bob}\n{carol_entry}\n"),
    )?;
    signal_pid(pid, "HUP").await?;

    wait_until(Duration::from_secs(10), "carol's new token to work", || {
        accepted(carol.clone())
    })
    .await?;
    let out = farm.cli_as(Some(&t.bob), ["builds"]).await?;
    assert!(
        !out.status.success(),
        "bob's token is revoked: {}",
        show(&out)
    );
    assert!(
        stderr(&out).contains("not valid for this farm"),
        "{}",
        show(&out)
    );
    assert!(
        accepted(t.alice.clone()).await.is_some(),
        "other tokens stay"
    );

    // A broken file keeps the tokens in use.
    std::fs::write(farm.config_file(), "[[token]\n")?;
    signal_pid(pid, "HUP").await?;
    wait_until(
        Duration::from_secs(10),
        "the coordinator to log the failed reload",
        || async {
            farm.coordinator_log()
                .contains("config reload failed")
                .then_some(())
        },
    )
    .await?;
    assert!(
        accepted(carol.clone()).await.is_some(),
        "carol's token still works"
    );
    Ok(())
}
