//! Tenants are adversaries: a team pushes only to the repositories its rules allow, whatever
//! credentials the farm holds, and a team's registry login reaches the registry through the
//! coordinator and the worker running its job, and no other team's worker or build.
//!
//! Every farm here serves TLS with `manifold-coordinator dev-ca` certificates and two teams
//! (alice in `a`, bob in `b`); all traffic stays on 127.0.0.1.

use std::path::Path;
use std::time::Duration;

use manifold_proto::v1;
use manifold_tests::private_registry::{self, PrivateRegistry};
use manifold_tests::rogue::RogueWorker;
use manifold_tests::{
    Env, TestFarm, context_dir, issue_token, show, skopeo_raw, skopeo_tags, wait_until,
};

/// The config of teams `a` and `b` with these extra lines in each `[[team]]`, and the tokens of
/// alice (team a) and bob (team b).
async fn teams(a: &str, b: &str) -> anyhow::Result<(String, String, String)> {
    let (alice, alice_entry) = issue_token(&["--name", "alice", "--team", "a"]).await?;
    let (bob, bob_entry) = issue_token(&["--name", "bob", "--team", "b"]).await?;
    let config = format!(
        "[[team]]\nname = \"a\"\n{a}\n\n[[team]]\nname = \"b\"\n{b}\n\n{alice_entry}\n\n{bob_entry}\n"
    );
    Ok((config, alice, bob))
}

fn sources(env: &Env) -> anyhow::Result<tempfile::TempDir> {
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    context_dir(&[(
        "Dockerfile",
        &format!("FROM {}\nRUN echo {nonce} > /n\n", env.base_image),
    )])
}

/// Ids of every build the farm lists (as its admin).
async fn build_ids(farm: &TestFarm) -> anyhow::Result<Vec<String>> {
    let list = farm
        .builds()
        .await?
        .list(farm.as_admin(v1::ListBuildsRequest {
            limit: 100,
            ..Default::default()
        }))
        .await?
        .into_inner();
    Ok(list.builds.into_iter().map(|b| b.id).collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_team_pushes_only_where_its_rules_allow() -> anyhow::Result<()> {
    let env = Env::from_env();
    let reg = &env.registry;
    let (config, _alice, bob) = teams(
        &format!("repositories = [\"{reg}/test/a-*\"]"),
        &format!("repositories = [\"{reg}/test/b-*\"]"),
    )
    .await?;
    let mut farm = TestFarm::builder()
        .secured(&config, &["x86"])
        .start()
        .await?;
    farm.worker("x86").docker(&env.amd64_docker).spawn().await?;
    let ctx = sources(&env)?;
    let dir = ctx.path().to_str().unwrap();
    let a_repo = env.unique_repo("a-app");
    let b_repo = env.unique_repo("b-app");
    let a_cache = env.unique_repo("a-cache");

    // Bob into team a's repository: refused at submit, naming the repository and bob's rule.
    let out = farm
        .cli_as(
            Some(&bob),
            [
                "build",
                "-t",
                &format!("{a_repo}:1"),
                "--platform",
                "linux/amd64",
                dir,
            ],
        )
        .await?;
    assert!(!out.status.success(), "{}", show(&out));
    let text = show(&out);
    assert!(
        text.contains(&format!(
            "team `b` may not push to {a_repo} (the image): no repository rule of the team matches it (its rules: {reg}/test/b-*)"
        )),
        "{text}"
    );
    assert!(text.contains("ask an admin to add one"), "{text}");
    // Bob's own image with a cache export into team a's repository: refused the same way.
    let cache_to = format!("type=registry,ref={a_cache}:main");
    let out = farm
        .cli_as(
            Some(&bob),
            [
                "build",
                "-t",
                &format!("{b_repo}:1"),
                "--platform",
                "linux/amd64",
                "--cache-to",
                &cache_to,
                dir,
            ],
        )
        .await?;
    assert!(!out.status.success(), "{}", show(&out));
    assert!(
        show(&out).contains(&format!(
            "team `b` may not push to {a_cache} (--cache-to {a_cache}:main)"
        )),
        "{}",
        show(&out)
    );
    // Nothing was written: no build, no tag in either repository.
    assert!(build_ids(&farm).await?.is_empty());
    assert!(skopeo_tags(&a_repo).await?.is_empty());
    assert!(skopeo_tags(&a_cache).await?.is_empty());
    assert!(skopeo_tags(&b_repo).await?.is_empty());

    // Bob's own repository works.
    let out = farm
        .cli_as(
            Some(&bob),
            [
                "build",
                "-t",
                &format!("{b_repo}:1"),
                "--platform",
                "linux/amd64",
                dir,
            ],
        )
        .await?;
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(skopeo_tags(&b_repo).await?, ["1"]);
    let list = skopeo_raw(&format!("{b_repo}:1")).await?;
    // One image (beside the provenance buildx adds by default on the containerd image store).
    let images = (list["manifests"].as_array().into_iter().flatten())
        .filter(|m| m["platform"]["os"] != "unknown")
        .count();
    assert_eq!(images, 1, "{list}");

    // `manifold teams` shows each team's rules.
    let out = farm.cli_as(Some(&bob), ["teams"]).await?;
    assert!(out.status.success(), "{}", show(&out));
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    let row = |team: &str| {
        table
            .lines()
            .find(|l| l.starts_with(&format!("{team} ")))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        table.lines().next().unwrap_or_default().contains("PUSH TO"),
        "{table}"
    );
    assert!(row("a").ends_with(&format!("{reg}/test/a-*")), "{table}");
    assert!(row("b").ends_with(&format!("{reg}/test/b-*")), "{table}");
    let log = farm.coordinator_log();
    assert!(!log.contains("any team may push"), "{log}");

    // A farm without rules keeps the old behaviour, and says so when it starts.
    let open = TestFarm::builder().start().await?;
    assert!(
        open.coordinator_log().contains(
            "no [[team]] in the config has `repositories` rules: any team may push to any repository"
        ),
        "{}",
        open.coordinator_log()
    );
    Ok(())
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                found.push(p.display().to_string());
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn a_teams_login_reaches_its_registry_and_no_other_teams_worker() -> anyhow::Result<()> {
    use v1::worker_message::Msg;
    let env = Env::from_env();
    let private = PrivateRegistry::start(&env).await?;
    let secrets = tempfile::tempdir()?;
    let password_file = secrets.path().join("a-registry.password");
    std::fs::write(&password_file, format!("{}\n", private_registry::PASSWORD))?;
    let priv_reg = &private.address;
    let (config, alice, bob) = teams(
        &format!(
            "repositories = [\"{priv_reg}/a/**\"]\n[[team.login]]\nregistry = \"{priv_reg}\"\nusername = \"{}\"\npassword_file = \"{}\"",
            private_registry::USER,
            password_file.display()
        ),
        &format!("repositories = [\"{}/test/b-*\"]", env.registry),
    )
    .await?;
    // `spy` is a machine of team b: a worker certificate that team b holds.
    let mut farm = TestFarm::builder()
        .secured(&config, &["x86", "cd-x86", "spy=b"])
        .start()
        .await?;
    let amd64 = v1::Platform {
        os: "linux".into(),
        architecture: "amd64".into(),
        variant: String::new(),
    };
    let mut spy = RogueWorker::attach(&farm, "spy", amd64).await?;
    wait_until(Duration::from_secs(20), "the spy to attach", || async {
        let workers = farm.attached_workers().await.ok()?;
        workers.iter().any(|(n, _)| n == "spy").then_some(())
    })
    .await?;
    // Workers without any login of their own: what reaches the registry comes from the farm.
    let anonymous = tempfile::tempdir()?;
    std::fs::write(anonymous.path().join("config.json"), "{}")?;
    let ctx = sources(&env)?;
    let dir = ctx.path().to_str().unwrap();

    // Alice's job waits rather than go to team b's machine, the only amd64 worker so far.
    let app = format!("{priv_reg}/a/app");
    let alices = farm
        .submit_detached_as(
            Some(&alice),
            &["-t", &format!("{app}:1"), "--platform", "linux/amd64", dir],
        )
        .await?;
    assert!(
        spy.assignment_within(Duration::from_secs(5))
            .await?
            .is_none(),
        "team a's job, which carries its login, must not reach team b's worker"
    );

    // Bob's job goes to his team's machine, without any login; the spy fails it.
    let b_repo = env.unique_repo("b-app");
    let bobs = farm
        .submit_detached_as(
            Some(&bob),
            &[
                "-t",
                &format!("{b_repo}:1"),
                "--platform",
                "linux/amd64",
                dir,
            ],
        )
        .await?;
    let got = spy.assignment().await?;
    assert_eq!(got.build_id, bobs);
    assert_eq!(got.repository, b_repo);
    assert!(got.registry_logins.is_empty(), "{:?}", got.registry_logins);
    spy.send(Msg::Accepted(v1::JobAccepted {
        job_id: got.job_id.clone(),
        attempt: got.attempt,
    }))?;
    spy.send(Msg::Result(v1::JobResult {
        job_id: got.job_id.clone(),
        attempt: got.attempt,
        outcome: Some(v1::job_result::Outcome::Failure(v1::JobFailure {
            message: "the spy builds nothing".into(),
            ..Default::default()
        })),
    }))?;
    let b = farm.wait_build_end(&bobs, Duration::from_secs(60)).await?;
    assert_eq!(b.state, v1::BuildState::Failed as i32, "{b:?}");

    // Bob into team a's private repository: refused before anything is written.
    let out = farm
        .cli_as(
            Some(&bob),
            [
                "build",
                "-t",
                &format!("{priv_reg}/a/stolen:1"),
                "--platform",
                "linux/amd64",
                dir,
            ],
        )
        .await?;
    assert!(!out.status.success(), "{}", show(&out));
    assert!(
        show(&out).contains(&format!("team `b` may not push to {priv_reg}/a/stolen")),
        "{}",
        show(&out)
    );
    assert!(
        private
            .tags(&format!("{priv_reg}/a/stolen"))
            .await?
            .is_empty()
    );

    // A shared worker takes alice's job: pushed by oci-client (graphdriver) with the team's
    // login, checked and published by the coordinator with it.
    farm.worker("x86")
        .docker(&env.amd64_docker)
        .env("DOCKER_CONFIG", anonymous.path().to_str().unwrap())
        .spawn()
        .await?;
    let b = farm
        .wait_build_end(&alices, Duration::from_secs(240))
        .await?;
    assert_eq!(
        b.state,
        v1::BuildState::Succeeded as i32,
        "{b:?}\n--- worker ---\n{}",
        farm.worker_log("x86")
    );
    assert_eq!(b.jobs[0].worker, "x86");
    let list = private.inspect_raw(&format!("{app}:1")).await?;
    assert_eq!(
        list["manifests"][0]["platform"]["architecture"], "amd64",
        "{list}"
    );
    farm.kill_worker("x86").await;

    // The containerd image store: BuildKit pushes by digest with the login from the session.
    farm.worker("cd-x86")
        .docker(&env.cd_amd64_docker)
        .env("DOCKER_CONFIG", anonymous.path().to_str().unwrap())
        .spawn()
        .await?;
    let app2 = format!("{priv_reg}/a/app2");
    let out = farm
        .cli_as(
            Some(&alice),
            [
                "build",
                "-t",
                &format!("{app2}:1"),
                "--platform",
                "linux/amd64",
                dir,
            ],
        )
        .await?;
    assert!(
        out.status.success(),
        "{}\n--- worker ---\n{}",
        show(&out),
        farm.worker_log("cd-x86")
    );
    let list = private.inspect_raw(&format!("{app2}:1")).await?;
    let images = (list["manifests"].as_array().into_iter().flatten())
        .filter(|m| m["platform"]["os"] != "unknown")
        .count();
    assert_eq!(images, 1, "{list}");

    // The spy never got anything else, and the password is in no file of the farm (state, logs).
    assert!(
        spy.assignment_within(Duration::from_secs(1))
            .await?
            .is_none()
    );
    let found = files_containing(farm.state_dir.path(), private_registry::PASSWORD.as_bytes());
    assert!(found.is_empty(), "the password is in {found:?}");
    // Bob sees team a's rules and that a login exists, never the credentials.
    let out = farm
        .cli_as(Some(&bob), ["teams", "--format", "json"])
        .await?;
    let text = show(&out);
    assert!(text.contains(&format!("{priv_reg}/a/**")), "{text}");
    assert!(!text.contains(private_registry::PASSWORD), "{text}");
    assert!(!text.contains(private_registry::USER), "{text}");
    Ok(())
}
