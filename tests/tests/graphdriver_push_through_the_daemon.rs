//! On a graphdriver engine the daemon pushes the built image itself, through the worker's loopback
//! front (`--graphdriver-push daemon`, the default): a rebuild whose big layer is cached sends the
//! registry only its new layer and config; the registry gets each image by digest (an OCI manifest of the daemon's blobs), with no tag
//! but the requested ones; the daemon keeps no `manifold-push` tag; the layers are the blobs
//! `docker push` of the same image makes; and the front refuses requests of pushes it does not
//! hold. Everything listens on 127.0.0.1.

use manifold_tests::{Env, TestFarm, context_dir, run, show, skopeo_raw, skopeo_tags};

/// `(already there, mounted, uploaded)` from the worker's line
/// `pushed N blob(s) to REPO by digest through the daemon: A already there, M mounted, U uploaded`.
fn tally(logs: &str) -> Option<(u32, u32, u32)> {
    let line = logs
        .lines()
        .find(|l| l.contains("by digest through the daemon: "))?;
    let rest = line.split("through the daemon: ").nth(1)?;
    let numbers: Vec<u32> = rest
        .split(", ")
        .filter_map(|part| part.split(' ').next()?.parse().ok())
        .collect();
    match numbers[..] {
        [present, mounted, uploaded, ..] => Some((present, mounted, uploaded)),
        _ => None,
    }
}

async fn build(farm: &TestFarm, tag: &str, dir: &std::path::Path) -> anyhow::Result<String> {
    let id = farm
        .submit_detached(&[
            "-t",
            tag,
            "--platform",
            "linux/amd64",
            dir.to_str().unwrap(),
        ])
        .await?;
    let b = farm
        .wait_build_end(&id, std::time::Duration::from_secs(300))
        .await?;
    assert_eq!(
        b.state(),
        manifold_proto::v1::BuildState::Succeeded,
        "{b:?}\n--- worker ---\n{}",
        farm.worker_log("x86")
    );
    let out = farm.cli(["logs", &id]).await?;
    assert!(out.status.success(), "{}", show(&out));
    Ok(String::from_utf8(out.stdout)?)
}

fn layers(manifest: &serde_json::Value) -> Vec<String> {
    manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rebuild_sends_only_what_the_registry_lacks_and_writes_no_tag() -> anyhow::Result<()> {
    let env = Env::from_env();
    let (amd64, _) = env.pair("graphdriver");
    let mut farm = TestFarm::builder().start().await?;
    farm.worker("x86").docker(&amd64).spawn().await?;
    let dockerfile = format!(
        "FROM {}\nRUN dd if=/dev/urandom of=/big bs=1M count=16\nCOPY nonce /nonce\n",
        env.base_image
    );
    let repo = env.unique_repo("through-daemon");

    let first = context_dir(&[("Dockerfile", &dockerfile), ("nonce", "1")])?;
    let logs = build(&farm, &format!("{repo}:1"), first.path()).await?;
    let (_, _, uploaded) = tally(&logs).unwrap_or_else(|| panic!("no push tally:\n{logs}"));
    assert!(
        uploaded >= 3,
        "a first push sends the layers and config:\n{logs}"
    );

    // The same Dockerfile, a new nonce: the base and the 16 MiB layer are cached.
    let second = context_dir(&[("Dockerfile", &dockerfile), ("nonce", "2")])?;
    let logs = build(&farm, &format!("{repo}:2"), second.path()).await?;
    let (present, mounted, uploaded) =
        tally(&logs).unwrap_or_else(|| panic!("no push tally:\n{logs}"));
    assert_eq!(
        (present, mounted, uploaded),
        (2, 0, 2),
        "the base and the big layer are there; only the nonce layer and the config are sent:\n{logs}"
    );

    // The registry has the requested tags only; the child is an image manifest of amd64.
    let mut tags = skopeo_tags(&repo).await?;
    tags.sort();
    assert_eq!(tags, ["1", "2"], "no tag but the requested ones");
    let list = skopeo_raw(&format!("{repo}:2")).await?;
    let child = list["manifests"][0]["digest"].as_str().unwrap().to_owned();
    let manifest = skopeo_raw(&format!("{repo}@{child}")).await?;
    // An OCI manifest of the daemon's blobs, like every child the farm pushes.
    assert_eq!(
        manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json",
        "{manifest}"
    );
    let config = run(
        "skopeo",
        &[
            "inspect",
            "--config",
            "--tls-verify=false",
            &format!("docker://{repo}@{child}"),
        ],
    )
    .await?;
    let config: serde_json::Value = serde_json::from_str(&config)?;
    assert_eq!(
        (config["os"].as_str(), config["architecture"].as_str()),
        (Some("linux"), Some("amd64"))
    );

    // Where this worker's front listens (other tests' workers share the daemon).
    let log = farm.worker_log("x86");
    let addr = log
        .lines()
        .find(|l| l.contains("graphdriver push front listening"))
        .and_then(|l| l.split("addr=").nth(1))
        .map(|a| a.split_whitespace().next().unwrap_or(a).to_owned())
        .unwrap_or_else(|| panic!("the worker does not say where its front listens:\n{log}"));
    // Nothing of this worker's pushes is left tagged on the daemon.
    let images = run(
        "docker",
        &[
            "-H",
            &amd64,
            "images",
            "--format",
            "{{.Repository}}:{{.Tag}}",
        ],
    )
    .await?;
    assert!(
        !images.contains(&format!("{addr}/manifold-push")),
        "{images}"
    );

    // `docker push` of the same image makes the same layer blobs (the daemon compressed them).
    let local = format!("{repo}-direct:2");
    let out = tokio::process::Command::new("docker")
        .args(["-H", &amd64, "build", "-q", "-t", &local])
        .arg(second.path())
        .env("DOCKER_BUILDKIT", "1")
        .output()
        .await?;
    assert!(out.status.success(), "{}", show(&out));
    run("docker", &["-H", &amd64, "push", "-q", &local]).await?;
    let direct = skopeo_raw(&local).await?;
    run("docker", &["-H", &amd64, "rmi", &local]).await?;
    assert_eq!(
        layers(&manifest)[..2],
        layers(&direct)[..2],
        "the farm's base and RUN layers are docker push's\nfarm: {manifest}\ndocker push: {direct}"
    );

    // The front answers the registry API check, and refuses a push it does not hold.
    let http = reqwest::Client::new();
    let ping = http.get(format!("http://{addr}/v2/")).send().await?;
    assert_eq!(ping.status(), 200);
    let rogue = http
        .put(format!(
            "http://{addr}/v2/manifold-push/{}/manifests/latest",
            "0".repeat(32)
        ))
        .header(
            "content-type",
            "application/vnd.docker.distribution.manifest.v2+json",
        )
        .body(manifest.to_string())
        .send()
        .await?;
    assert_eq!(rogue.status(), 404);
    assert!(rogue.text().await?.contains("NAME_UNKNOWN"));
    let rogue = http
        .post(format!(
            "http://{addr}/v2/manifold-push/{}/blobs/uploads/",
            "1".repeat(32)
        ))
        .send()
        .await?;
    assert_eq!(rogue.status(), 404, "no upload opens for an unknown push");
    Ok(())
}
