//! `manifold builds` pages through a team's builds: 1,000 queued builds (no worker runs, so they
//! stay queued) are each listed exactly once, newest first, following `next_before`; another team
//! sees none of them and cannot page from one of their ids; `--since` bounds the listing.
//!
//! The farm serves TLS with two teams; all traffic stays on 127.0.0.1.

use manifold_proto::v1;
use manifold_tests::{TestFarm, context_dir, issue_token, show, with_token};

const BUILDS: usize = 1000;

/// `manifold builds --format json ARGS` as `token`: the ids listed and the `next_before`.
async fn page(
    farm: &TestFarm,
    token: &str,
    args: &[&str],
) -> anyhow::Result<(Vec<String>, String)> {
    let mut all = vec!["builds", "--format", "json"];
    all.extend_from_slice(args);
    let out = farm.cli_as(Some(token), &all).await?;
    anyhow::ensure!(out.status.success(), "manifold {all:?}:\n{}", show(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let ids = doc["builds"]
        .as_array()
        .expect("a builds array")
        .iter()
        .map(|b| b["id"].as_str().expect("an id").to_owned())
        .collect();
    let next = doc["next_before"].as_str().unwrap_or_default().to_owned();
    Ok((ids, next))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_builds_are_paged_each_once_newest_first() -> anyhow::Result<()> {
    let (alice, alice_entry) = issue_token(&["--name", "alice", "--team", "mobile"]).await?;
    let (bob, bob_entry) = issue_token(&["--name", "bob", "--team", "platform"]).await?;
    let config = format!(
        "[[team]]\nname = \"mobile\"\n\n[[team]]\nname = \"platform\"\n\n{alice_entry}\n\n{bob_entry}\n"
    );
    let farm = TestFarm::builder().secured(&config, &[]).start().await?;

    // The first build uploads the context with the CLI; the rest reuse it over the API.
    let ctx = context_dir(&[("Dockerfile", &format!("FROM {}\n", farm.env.base_image))])?;
    let image = farm.env.unique_repo("paged");
    let first = farm
        .submit_detached_as(
            Some(&alice),
            &[
                "-t",
                &format!("{image}:0"),
                "--platform",
                "linux/amd64",
                ctx.path().to_str().unwrap(),
            ],
        )
        .await?;
    let request = farm.build(&first).await?.request.expect("a request");
    let mut submitted = vec![first];
    let mut c = farm.builds().await?;
    for i in 1..BUILDS {
        let mut r = request.clone();
        r.image = format!("{image}:{i}");
        submitted.push(c.submit(with_token(&alice, r)).await?.into_inner().build_id);
    }
    // Bob's builds are interleaved nowhere in Alice's pages.
    let bob_build = farm
        .submit_detached_as(
            Some(&bob),
            &[
                "-t",
                &format!("{image}:bob"),
                "--platform",
                "linux/amd64",
                ctx.path().to_str().unwrap(),
            ],
        )
        .await?;

    // Pages of 128 through the CLI: every build once, newest first.
    let newest_first: Vec<String> = submitted.iter().rev().cloned().collect();
    let mut listed = Vec::new();
    let mut before = String::new();
    let mut pages = 0;
    loop {
        let mut args = vec!["--limit", "128"];
        if !before.is_empty() {
            args.extend(["--before", &before]);
        }
        let (ids, next) = page(&farm, &alice, &args).await?;
        pages += 1;
        assert!(ids.len() <= 128, "a page of {}", ids.len());
        listed.extend(ids);
        if next.is_empty() {
            break;
        }
        assert_eq!(
            Some(&next),
            listed.last(),
            "next_before is the page's last build"
        );
        before = next;
    }
    assert_eq!(pages, BUILDS.div_ceil(128));
    assert_eq!(
        listed, newest_first,
        "each build exactly once, newest first"
    );
    assert!(!listed.contains(&bob_build));

    // The default page is 100; a larger limit is cut to 1,000.
    let (ids, next) = page(&farm, &alice, &[]).await?;
    assert_eq!(ids, newest_first[..100]);
    assert_eq!(next, newest_first[99]);
    let (ids, next) = page(&farm, &alice, &["--limit", "5000"]).await?;
    assert_eq!(ids, newest_first, "all 1,000 in one page of at most 1,000");
    assert!(next.is_empty(), "no more after the 1,000: {next}");
    // The admin sees Bob's build too, newest.
    let admin_page = farm
        .builds()
        .await?
        .list(farm.as_admin(v1::ListBuildsRequest {
            limit: 2,
            ..Default::default()
        }))
        .await?
        .into_inner();
    let admin_ids: Vec<_> = admin_page.builds.iter().map(|b| b.id.clone()).collect();
    assert_eq!(admin_ids, [bob_build.clone(), newest_first[0].clone()]);

    // `--since`: a duration ago and an RFC 3339 time.
    let (ids, _) = page(&farm, &alice, &["--since", "1h", "--limit", "1000"]).await?;
    assert_eq!(ids.len(), BUILDS);
    let (ids, next) = page(&farm, &alice, &["--since", "2999-01-01T00:00:00Z"]).await?;
    assert!(ids.is_empty() && next.is_empty(), "{ids:?} {next}");
    let out = farm
        .cli_as(Some(&alice), ["builds", "--since", "yesterday"])
        .await?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("`yesterday`"),
        "{}",
        show(&out)
    );

    // Another team: none of Alice's builds, and her ids are no cursor for it.
    let (ids, _) = page(&farm, &bob, &["--limit", "1000"]).await?;
    assert_eq!(ids, std::slice::from_ref(&bob_build));
    let out = farm
        .cli_as(Some(&bob), ["builds", "--before", &newest_first[10]])
        .await?;
    assert!(!out.status.success(), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&newest_first[10]) && err.contains("next_before"),
        "{err}"
    );
    Ok(())
}
