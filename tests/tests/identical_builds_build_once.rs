//! Identical builds are built once: two identical submits of one team at the same time give one
//! set of jobs (one per platform on the workers) and two successful CLIs with the same list
//! digest; a resubmit after success reuses the per-platform images (no job assigned) and writes
//! only its list and tag; `--no-cache` builds again. Tenants are adversaries: another team's
//! identical submit (same files, same repository) is never shared, it builds on its own.
//!
//! The farm serves TLS with two teams (alice in `mobile`, bob in `platform`); loopback only.

use manifold_proto::v1;
use manifold_tests::{Env, TestFarm, context_dir, show, skopeo_raw, two_team_farm};

/// Distinct jobs the coordinator has assigned so far (its log says "job assigned job=ID" once
/// per attempt; a retry on a loaded machine assigns the same job again and counts once).
fn assigned(farm: &TestFarm) -> usize {
    let log = farm.coordinator_log();
    let mut plain = String::new();
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // An ANSI colour sequence: ESC [ ... m.
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    let jobs: std::collections::BTreeSet<&str> = plain
        .lines()
        .filter(|l| l.contains("job assigned"))
        .filter_map(|l| l.split(" job=").nth(1)?.get(..36))
        .collect();
    jobs.len()
}

#[tokio::test(flavor = "multi_thread")]
async fn identical_submits_build_once_and_another_team_builds_its_own() -> anyhow::Result<()> {
    let env = Env::from_env();
    let (farm, alice, bob) = two_team_farm(&env).await?;
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    // The sleep keeps the first build running while the second is submitted.
    let ctx = context_dir(&[(
        "Dockerfile",
        &format!(
            "FROM {}\nRUN echo {nonce} && sleep 4 && uname -m > /arch\n",
            env.base_image
        ),
    )])?;
    let repo = env.unique_repo("identical");
    let dir = tempfile::tempdir()?;
    let build = |token: &str, tag: String, iid: &str, extra: &[&str]| {
        let mut args: Vec<String> = vec!["build".into(), "-t".into(), tag];
        args.extend(["--platform".into(), "linux/amd64,linux/arm64".into()]);
        args.extend([
            "--iidfile".into(),
            dir.path().join(iid).display().to_string(),
        ]);
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args.push(ctx.path().display().to_string());
        let farm = &farm;
        let token = token.to_owned();
        async move { farm.cli_as(Some(&token), args).await }
    };
    let iid = |name: &str| std::fs::read_to_string(dir.path().join(name));

    // Two CI jobs of one team submit the same build at once (different tags, same repository).
    let (a, b) = tokio::join!(
        build(&alice, format!("{repo}:a"), "a", &[]),
        build(&alice, format!("{repo}:b"), "b", &[])
    );
    let (a, b) = (a?, b?);
    assert!(a.status.success(), "{}", show(&a));
    assert!(b.status.success(), "{}", show(&b));
    assert_eq!(
        assigned(&farm),
        2,
        "one job per platform:\n{}",
        farm.coordinator_log()
    );
    let both = format!("{}{}", show(&a), show(&b));
    assert!(
        both.contains("joined build") || both.contains("from build"),
        "one CLI says which build it joined or reused:\n{both}"
    );
    let (digest_a, digest_b) = (iid("a")?, iid("b")?);
    assert!(digest_a.starts_with("sha256:"), "{digest_a}");
    assert_eq!(digest_a, digest_b, "both CLIs get the same list");
    // Both tags hold that list (checked with skopeo), with both platforms.
    for tag in ["a", "b"] {
        let raw = manifold_tests::run(
            "skopeo",
            &[
                "inspect",
                "--raw",
                "--tls-verify=false",
                &format!("docker://{repo}:{tag}"),
            ],
        )
        .await?;
        let digest = format!(
            "sha256:{}",
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(raw.as_bytes()))
        );
        assert_eq!(digest, digest_a, "{repo}:{tag}");
    }
    assert_eq!(
        skopeo_raw(&format!("{repo}:a")).await?["manifests"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // A resubmit after success reuses the images: no job, the list under its own tag.
    let c = build(&alice, format!("{repo}:c"), "c", &[]).await?;
    assert!(c.status.success(), "{}", show(&c));
    assert!(show(&c).contains("from build"), "{}", show(&c));
    assert_eq!(assigned(&farm), 2, "no job for a reused build");
    assert_eq!(iid("c")?, digest_a);

    // --no-cache never reuses.
    let d = build(&alice, format!("{repo}:d"), "d", &["--no-cache"]).await?;
    assert!(d.status.success(), "{}", show(&d));
    assert_eq!(assigned(&farm), 4, "--no-cache builds both platforms again");

    // Another team's identical build (its own upload of the same files, the same repository)
    // shares nothing: it gets jobs of its own, and no word of alice's builds.
    let e = build(&bob, format!("{repo}:e"), "e", &[]).await?;
    assert!(e.status.success(), "{}", show(&e));
    assert_eq!(assigned(&farm), 6, "bob's build runs its own jobs");
    assert!(
        !show(&e).contains("joined build") && !show(&e).contains("from build"),
        "{}",
        show(&e)
    );
    let list = farm
        .builds()
        .await?
        .list(farm.as_admin(v1::ListBuildsRequest {
            limit: 10,
            ..Default::default()
        }))
        .await?
        .into_inner();
    let bobs: Vec<_> = list
        .builds
        .iter()
        .filter(|b| b.team == "platform")
        .collect();
    assert_eq!(bobs.len(), 1);
    assert_eq!(
        bobs[0].state,
        v1::BuildState::Succeeded as i32,
        "{:?}",
        bobs[0]
    );
    Ok(())
}
