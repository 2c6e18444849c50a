//! The coordinator's web dashboard (`--dashboard-listen`), used in headless Chromium as a person
//! uses it: a wrong token is refused at sign-in; signed in with her CLI token, Alice of team
//! mobile sees the worker, then a build she submits with the CLI appear and turn succeeded
//! without reloading the page (server-sent events); its page shows its output. Bob of team web,
//! signed in with his token, sees the farm but not Alice's build, and its page is refused.
//! Screenshots are kept in target/test-artifacts/.

use std::time::Duration;

use manifold_tests::browser::{Browser, artifacts_dir};
use manifold_tests::{Env, TestFarm, context_dir, free_port, issue_token, wait_until};

/// `#build-ID`'s `data-state` on the page as it is now, if the build is shown.
async fn shown_state(browser: &Browser, id: &str) -> Option<String> {
    let script = format!(
        "const e = document.getElementById('build-{id}'); return e ? e.dataset.state : null;"
    );
    browser
        .execute(&script)
        .await
        .ok()?
        .as_str()
        .map(str::to_owned)
}

/// Signs in with `token` and waits for the page that follows: the farm (`#who`) or a refusal.
async fn sign_in(browser: &Browser, base: &str, token: &str) -> anyhow::Result<()> {
    browser.goto(&format!("{base}/login")).await?;
    browser.element("#token").await?.type_text(token).await?;
    browser.element("#sign-in").await?.click().await?;
    wait_for(browser, "#who, #login-error").await
}

/// Clicks the element matching `selector`; the live part of a page is replaced every second or
/// so, and an element found just before a replacement is gone: find it again then.
async fn click(browser: &Browser, selector: &str) -> anyhow::Result<()> {
    wait_until(Duration::from_secs(20), selector, || async {
        browser.element(selector).await.ok()?.click().await.ok()
    })
    .await
}

/// The text of the element matching `selector` (found again if a live update replaced it).
async fn text(browser: &Browser, selector: &str) -> anyhow::Result<String> {
    wait_until(Duration::from_secs(20), selector, || async {
        browser.element(selector).await.ok()?.text().await.ok()
    })
    .await
}

/// Waits until the page shows an element matching `selector`.
async fn wait_for(browser: &Browser, selector: &str) -> anyhow::Result<()> {
    wait_until(Duration::from_secs(20), selector, || async {
        browser.find(selector).await.ok()?.map(drop)
    })
    .await
}

#[tokio::test]
async fn a_build_submitted_by_the_cli_appears_and_turns_succeeded() -> anyhow::Result<()> {
    let env = Env::from_env();
    let (alice, alice_entry) = issue_token(&["--name", "alice", "--team", "mobile"]).await?;
    let (bob, bob_entry) = issue_token(&["--name", "bob", "--team", "web"]).await?;
    let config = format!(
        "[[team]]\nname = \"mobile\"\nweight = 2\n\n[[team]]\nname = \"web\"\n\n{alice_entry}\n\n{bob_entry}\n"
    );
    let port = free_port();
    let mut farm = TestFarm::builder()
        .secured(&config, &["x86"])
        .arg("--dashboard-listen")
        .arg(&format!("127.0.0.1:{port}"))
        .start()
        .await?;
    farm.worker("x86").docker(&env.amd64_docker).spawn().await?;
    let base = format!("https://127.0.0.1:{port}");
    let artifacts = artifacts_dir();
    let browser = Browser::start().await?;

    // Not signed in: the dashboard asks for a token, and refuses a wrong one.
    browser.goto(&format!("{base}/")).await?;
    assert!(
        browser.current_url().await?.ends_with("/login"),
        "{}",
        browser.current_url().await?
    );
    sign_in(&browser, &base, "mft_not-a-token-of-this-farm").await?;
    let refusal = text(&browser, "#login-error").await?;
    assert!(refusal.contains("not valid for this farm"), "{refusal}");

    // Alice signs in and sees the farm: the worker, native, with its slot, ready, its disk.
    sign_in(&browser, &base, &alice).await?;
    assert_eq!(browser.current_url().await?, format!("{base}/"));
    let who = text(&browser, "#who").await?;
    assert!(who.contains("alice") && who.contains("mobile"), "{who}");
    let worker = text(&browser, "tr[data-worker=\"x86\"]").await?;
    // The Disk column shows what the worker measured (its hello carries it).
    for want in ["linux/amd64", "native", "0/1", "ready", " free, cache "] {
        assert!(worker.contains(want), "{want} in the worker row: {worker}");
    }

    // A build submitted with the CLI appears on the open page, then turns succeeded.
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let ctx = context_dir(&[(
        "Dockerfile",
        &format!(
            "FROM {}\nRUN echo dashboard-{nonce} && sleep 3\n",
            env.base_image
        ),
    )])?;
    let repo = env.unique_repo("dashboard");
    let tag = format!("{repo}:1");
    let id = farm
        .submit_detached_as(
            Some(&alice),
            &[
                "-t",
                &tag,
                "--platform",
                "linux/amd64",
                ctx.path().to_str().unwrap(),
            ],
        )
        .await?;
    let seen = std::sync::Mutex::new(Vec::<String>::new());
    wait_until(
        Duration::from_secs(180),
        "the build to turn succeeded on the page",
        || async {
            let state = shown_state(&browser, &id).await?;
            let mut seen = seen.lock().unwrap();
            if seen.last() != Some(&state) {
                seen.push(state.clone());
            }
            (state == "succeeded").then_some(())
        },
    )
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "{e}; states seen: {:?}\n{}",
            seen.lock().unwrap(),
            farm.coordinator_log()
        )
    })?;
    let seen = seen.into_inner().unwrap();
    assert!(
        seen.iter().any(|s| s == "queued" || s == "running"),
        "the page showed the build before it ended, without a reload: {seen:?}"
    );
    let row = text(&browser, &format!("#build-{id}")).await?;
    assert!(
        row.contains(&tag) && row.contains("succeeded") && row.contains("linux/amd64"),
        "{row}"
    );
    // The fair share chart has mobile's line.
    browser.element("#share li[data-team=\"mobile\"]").await?;
    let bytes = browser
        .screenshot(&artifacts.join("dashboard-overview.png"))
        .await?;
    assert!(
        bytes > 10_000,
        "a screenshot of a whole page: {bytes} bytes"
    );

    // Its page shows the output of its RUN step.
    click(&browser, &format!("#build-{id} a")).await?;
    wait_for(&browser, "pre.log").await?;
    assert_eq!(browser.current_url().await?, format!("{base}/builds/{id}"));
    let log = text(&browser, "pre.log").await?;
    assert!(log.contains(&format!("dashboard-{nonce}")), "{log}");
    assert!(browser.page_text().await?.contains("succeeded"));
    browser
        .screenshot(&artifacts.join("dashboard-build.png"))
        .await?;

    // Bob of team web sees the farm, but neither the build nor its page.
    click(&browser, "#sign-out").await?;
    wait_for(&browser, "#token").await?;
    assert!(browser.current_url().await?.ends_with("/login"));
    sign_in(&browser, &base, &bob).await?;
    assert_eq!(browser.current_url().await?, format!("{base}/"));
    browser.element("tr[data-worker=\"x86\"]").await?;
    let html = browser.page_html().await?;
    for secret in [id.as_str(), repo.as_str(), nonce.as_str()] {
        assert!(
            !html.contains(secret),
            "bob's page shows `{secret}` of alice's build"
        );
    }
    browser.goto(&format!("{base}/builds/{id}")).await?;
    wait_for(&browser, "#message").await?;
    let message = text(&browser, "#message").await?;
    assert!(message.contains("belongs to another team"), "{message}");
    assert!(!browser.page_html().await?.contains(&nonce));
    Ok(())
}
