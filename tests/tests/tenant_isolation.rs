//! Tenants are adversaries: one team cannot use another team's build context by knowing its
//! digest, and a worker gets only the contexts of the jobs it holds.
//!
//! Every farm here serves TLS with `manifold-coordinator dev-ca` certificates and two teams
//! (alice in `mobile`, bob in `platform`); all traffic stays on 127.0.0.1.

use std::time::Duration;

use manifold_proto::v1;
use manifold_tests::rogue::RogueWorker;
use manifold_tests::{
    Env, TestFarm, context_dir, issue_token, show, skopeo_tags, wait_until, with_token,
};
use sha2::Digest as _;

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
        "[[team]]\nname = \"mobile\"\n\n[[team]]\nname = \"platform\"\n\n{alice_entry}\n\n{bob_entry}\n"
    );
    Ok(Teams { config, alice, bob })
}

/// Alice's sources: a secret file that the build prints.
fn alices_sources(env: &Env, secret: &str, run: &str) -> anyhow::Result<tempfile::TempDir> {
    context_dir(&[
        ("secret.txt", secret),
        (
            "Dockerfile",
            &format!(
                "FROM {}\nCOPY secret.txt /secret.txt\nRUN cat /secret.txt && {run}\n",
                env.base_image
            ),
        ),
    ])
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

async fn has(farm: &TestFarm, token: &str, digest: &str) -> anyhow::Result<bool> {
    let mut c = v1::contexts_client::ContextsClient::new(farm.channel().await?);
    let request = v1::HasContextRequest {
        digest: digest.to_owned(),
    };
    Ok(c.has(with_token(token, request))
        .await?
        .into_inner()
        .present)
}

/// `Builds.Submit` of a one-platform build of `digest` to `image`, as `token`.
async fn submit_raw(
    farm: &TestFarm,
    token: &str,
    image: &str,
    digest: &str,
) -> Result<String, tonic::Status> {
    let mut c = farm.builds().await.expect("a channel to the coordinator");
    let request = v1::SubmitBuildRequest {
        image: image.to_owned(),
        platforms: vec![v1::Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: String::new(),
        }],
        context_digest: digest.to_owned(),
        ..Default::default()
    };
    c.submit(with_token(token, request))
        .await
        .map(|r| r.into_inner().build_id)
}

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

#[tokio::test]
async fn another_teams_context_is_unknown_even_to_a_caller_who_knows_its_digest()
-> anyhow::Result<()> {
    let env = Env::from_env();
    let t = teams().await?;
    let mut farm = TestFarm::builder()
        .secured(&t.config, &["x86"])
        .start()
        .await?;
    farm.worker("x86").docker(&env.amd64_docker).spawn().await?;
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let secret = format!("alices-secret-{nonce}");
    let sources = alices_sources(&env, &secret, "true")?;
    let alice_tag = format!("{}:1", env.unique_repo("alice-app"));
    let alice_build = farm
        .submit_detached_as(
            Some(&t.alice),
            &[
                "-t",
                &alice_tag,
                "--platform",
                "linux/amd64",
                sources.path().to_str().unwrap(),
            ],
        )
        .await?;
    let b = farm
        .wait_build_end(&alice_build, Duration::from_secs(180))
        .await?;
    assert_eq!(b.state, v1::BuildState::Succeeded as i32, "{b:?}");
    let digest = b.request.unwrap().context_digest;
    assert!(
        has(&farm, &t.alice, &digest).await?,
        "alice holds her context"
    );

    // To bob, alice's context is exactly a context nobody uploaded.
    let unknown = sha256(nonce.as_bytes());
    assert!(!has(&farm, &t.bob, &digest).await?, "bob must not see it");
    assert!(!has(&farm, &t.bob, &unknown).await?);
    let bob_repo = env.unique_repo("bob-app");
    let bob_tag = format!("{bob_repo}:1");
    let foreign = submit_raw(&farm, &t.bob, &bob_tag, &digest)
        .await
        .expect_err("bob's build of alice's context must be refused");
    let never = submit_raw(&farm, &t.bob, &bob_tag, &unknown)
        .await
        .expect_err("a build of an unknown context is refused");
    assert_eq!(foreign.code(), tonic::Code::NotFound, "{foreign:?}");
    assert_eq!(never.code(), tonic::Code::NotFound, "{never:?}");
    assert_eq!(
        foreign.message().replace(&digest, "DIGEST"),
        never.message().replace(&unknown, "DIGEST"),
        "the same words for another team's context and an unknown one"
    );
    assert!(
        foreign.message().contains("upload it"),
        "{}",
        foreign.message()
    );

    // Announcing alice's digest with other bytes proves nothing: refused, and bob still lacks it.
    let mut c = v1::contexts_client::ContextsClient::new(farm.channel().await?);
    let chunk = v1::UploadContextChunk {
        digest: digest.clone(),
        data: b"not alice's sources".to_vec(),
    };
    let refused = c
        .upload(with_token(&t.bob, futures::stream::iter(vec![chunk])))
        .await
        .expect_err("bytes that do not hash to the digest are refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("does not match its digest"),
        "{refused:?}"
    );
    assert!(!has(&farm, &t.bob, &digest).await?);

    // Nothing was written: alice's build is the only one, and bob's repository has no tag.
    assert_eq!(build_ids(&farm).await?, std::slice::from_ref(&alice_build));
    let bob_tags = skopeo_tags(&bob_repo).await.unwrap_or_default();
    assert!(bob_tags.is_empty(), "bob's repository: {bob_tags:?}");

    // Possession is durable: after a restart alice still holds the context, and bob still not.
    farm.restart_coordinator().await?;
    assert!(has(&farm, &t.alice, &digest).await?);
    assert!(!has(&farm, &t.bob, &digest).await?);

    // The legitimate path: bob has the same files himself, uploads them, and builds them.
    let out = farm
        .cli_as(
            Some(&t.bob),
            [
                "build",
                "-t",
                &bob_tag,
                "--platform",
                "linux/amd64",
                sources.path().to_str().unwrap(),
            ],
        )
        .await?;
    assert!(out.status.success(), "{}", show(&out));
    let ids = build_ids(&farm).await?;
    let bob_build = ids
        .iter()
        .find(|id| **id != alice_build)
        .expect("bob's build is listed");
    let b = farm.build(bob_build).await?;
    assert_eq!(b.state, v1::BuildState::Succeeded as i32, "{b:?}");
    assert_eq!(
        b.request.unwrap().context_digest,
        digest,
        "the same bytes, stored once"
    );
    assert!(has(&farm, &t.bob, &digest).await?, "bob holds it now");
    assert_eq!(skopeo_tags(&bob_repo).await?, ["1"]);
    Ok(())
}

/// Downloads a context with a worker's certificate; the bytes' digest, or the refusal.
async fn download(farm: &TestFarm, worker: &str, digest: &str) -> Result<String, tonic::Status> {
    let channel = farm
        .worker_channel(worker)
        .await
        .expect("a TLS channel with the worker's certificate");
    let mut c = v1::workers_client::WorkersClient::new(channel);
    let mut chunks = c
        .download_context(v1::DownloadContextRequest {
            digest: digest.to_owned(),
        })
        .await?
        .into_inner();
    let mut hasher = sha2::Sha256::new();
    while let Some(chunk) = chunks.message().await? {
        hasher.update(&chunk.data);
    }
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

#[tokio::test]
async fn a_worker_downloads_only_the_context_of_a_job_it_holds() -> anyhow::Result<()> {
    let env = Env::from_env();
    let t = teams().await?;
    // `spy` is a worker certificate of team platform that never gets alice's job.
    let mut farm = TestFarm::builder()
        .secured(&t.config, &["x86", "spy=platform"])
        .start()
        .await?;
    farm.worker("x86").docker(&env.amd64_docker).spawn().await?;
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let sources = alices_sources(&env, &format!("secret-{nonce}"), "sleep 6")?;
    let tag = format!("{}:1", env.unique_repo("alice-slow"));
    let id = farm
        .submit_detached_as(
            Some(&t.alice),
            &[
                "-t",
                &tag,
                "--platform",
                "linux/amd64",
                sources.path().to_str().unwrap(),
            ],
        )
        .await?;
    let running = wait_until(
        Duration::from_secs(60),
        "alice's job to run on x86",
        || async {
            let b = farm.build(&id).await.ok()?;
            (b.jobs[0].state == v1::JobState::Running as i32).then_some(b)
        },
    )
    .await?;
    assert_eq!(running.jobs[0].worker, "x86");
    let digest = running.request.unwrap().context_digest;

    // The spy's certificate is valid, but no job of it uses the context.
    let refused = download(&farm, "spy", &digest)
        .await
        .expect_err("the spy must not get alice's context");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("`spy`") && refused.message().contains(&digest),
        "the refusal names the worker and the context: {refused:?}"
    );
    // An unknown context is refused the same way: no oracle for what exists.
    let unknown = sha256(nonce.as_bytes());
    let refused = download(&farm, "spy", &unknown)
        .await
        .expect_err("nobody's context");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    let bad = download(&farm, "spy", "sha256:nope")
        .await
        .expect_err("a malformed digest");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");

    // The worker holding the job gets the context, byte for byte.
    assert_eq!(download(&farm, "x86", &digest).await?, digest);
    let b = farm.wait_build_end(&id, Duration::from_secs(180)).await?;
    assert_eq!(b.state, v1::BuildState::Succeeded as i32, "{b:?}");

    // Once the job is over, its worker holds nothing that uses the context.
    let refused = download(&farm, "x86", &digest)
        .await
        .expect_err("x86 holds no job of it any more");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    let log = farm.coordinator_log();
    assert!(
        log.contains("refused a context download"),
        "the refusal is logged:\n{log}"
    );
    Ok(())
}

/// The message of the job state change that says an attempt failed verification (60 s at most).
async fn failed_verification(farm: &TestFarm, id: &str) -> anyhow::Result<String> {
    farm.wait_event(
        id,
        Duration::from_secs(60),
        "the rogue's attempt to fail verification",
        |e| match e {
            v1::build_event::Event::JobState(s) if s.message.contains("failed verification") => {
                Some(s.message.clone())
            }
            _ => None,
        },
    )
    .await
}

/// `rogue`, a worker with a valid certificate (of team platform) that claims to build arm64
/// natively, so the scheduler prefers it to the emulated arm worker; once the farm lists it.
async fn attach_native_arm64_rogue(farm: &TestFarm) -> anyhow::Result<RogueWorker> {
    let arm64 = v1::Platform {
        os: "linux".into(),
        architecture: "arm64".into(),
        variant: String::new(),
    };
    let rogue = RogueWorker::attach(farm, "rogue", arm64).await?;
    wait_until(Duration::from_secs(30), "the rogue to attach", || async {
        let workers = farm.attached_workers().await.ok()?;
        workers.iter().any(|(n, _)| n == "rogue").then_some(())
    })
    .await?;
    Ok(rogue)
}

#[tokio::test]
async fn a_rogue_workers_wrong_platform_image_fails_its_attempt_and_never_reaches_the_index()
-> anyhow::Result<()> {
    use v1::worker_message::Msg;
    let env = Env::from_env();
    let t = teams().await?;
    // `rogue` holds a valid worker certificate of team platform and claims to build arm64
    // natively, so the scheduler prefers it to the emulated arm worker.
    let mut farm = TestFarm::builder()
        .secured(&t.config, &["x86", "arm", "rogue=platform"])
        .start()
        .await?;
    farm.worker("x86").docker(&env.amd64_docker).spawn().await?;
    farm.worker("arm")
        .docker(&env.arm64_docker)
        .platform("linux/arm64")
        .spawn()
        .await?;
    let mut rogue = attach_native_arm64_rogue(&farm).await?;

    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let sources = alices_sources(&env, &format!("secret-{nonce}"), "uname -m > /arch")?;
    let tag = format!("{}:1", env.unique_repo("alice-multi"));
    let id = farm
        .submit_detached_as(
            Some(&t.alice),
            &[
                "-t",
                &tag,
                "--platform",
                "linux/amd64,linux/arm64",
                sources.path().to_str().unwrap(),
            ],
        )
        .await?;
    let job = rogue.assignment().await?;
    rogue.send(Msg::Accepted(v1::JobAccepted {
        job_id: job.job_id.clone(),
        attempt: job.attempt,
    }))?;

    // The rogue reports the amd64 image (in the right repository, with its true digest and
    // size) as its arm64 result.
    let amd64 = wait_until(
        Duration::from_secs(120),
        "the amd64 job to succeed",
        || async {
            let b = farm.build(&id).await.ok()?;
            let j = b
                .jobs
                .iter()
                .find(|j| j.platform.as_ref().map(|p| p.architecture.as_str()) == Some("amd64"))?;
            (j.state == v1::JobState::Succeeded as i32).then(|| j.image.clone())?
        },
    )
    .await?;
    rogue.send(Msg::Result(v1::JobResult {
        job_id: job.job_id.clone(),
        attempt: job.attempt,
        outcome: Some(v1::job_result::Outcome::Pushed(amd64.clone())),
    }))?;

    // The attempt fails naming the worker and what is wrong; the retry goes elsewhere.
    let failed = failed_verification(&farm, &id).await?;
    assert!(
        failed.contains("worker rogue")
            && failed.contains(&amd64.digest)
            && failed.contains("is for linux/amd64, not for the job's platform linux/arm64"),
        "{failed}"
    );
    let b = farm.wait_build_end(&id, Duration::from_secs(300)).await?;
    assert_eq!(b.state, v1::BuildState::Succeeded as i32, "{b:?}");
    let arm_job = b
        .jobs
        .iter()
        .find(|j| j.id == job.job_id)
        .expect("the arm64 job");
    assert_eq!(arm_job.worker, "arm", "retried on another worker");
    assert_eq!(arm_job.attempt, 2, "the rogue's attempt counted");

    // The index, read with skopeo, holds the real arm64 image.
    let children = manifold_tests::faults::list_children(&tag).await?;
    let arm_child = children
        .iter()
        .find(|(p, _)| p == "linux/arm64")
        .map(|(_, d)| d.clone())
        .expect("an arm64 entry");
    assert_ne!(arm_child, amd64.digest);
    let registry_ref = format!("{}@{arm_child}", tag.rsplit_once(':').unwrap().0);
    let config = manifold_tests::run(
        "skopeo",
        &[
            "inspect",
            "--config",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{registry_ref}"),
        ],
    )
    .await?;
    let config: serde_json::Value = serde_json::from_str(&config)?;
    assert_eq!(config["architecture"], "arm64", "{config}");

    // The rogue gets nothing more, and `manifold workers` says why.
    let out = farm.cli(["workers"]).await?;
    let line = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with("rogue"))
        .unwrap_or_default()
        .to_owned();
    assert!(line.contains("failed verification"), "{}", show(&out));
    Ok(())
}

/// A rogue worker pushes a real arm64 image of its own into the build's repository, and reports
/// beside it an "attestation" that is an ordinary image manifest (a tar layer, no in-toto
/// statement): the coordinator reads it, refuses the attempt naming the worker, and the build's
/// index never carries it.
#[tokio::test]
async fn a_rogue_workers_false_attestation_fails_its_attempt_and_never_reaches_the_index()
-> anyhow::Result<()> {
    use manifold_tests::oci::{put_blob, put_manifest};
    use v1::worker_message::Msg;
    const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    let env = Env::from_env();
    let t = teams().await?;
    let mut farm = TestFarm::builder()
        .secured(&t.config, &["arm", "rogue=platform"])
        .start()
        .await?;
    farm.worker("arm")
        .docker(&env.arm64_docker)
        .platform("linux/arm64")
        .spawn()
        .await?;
    let mut rogue = attach_native_arm64_rogue(&farm).await?;
    let sources = alices_sources(&env, "not-a-secret", "uname -m > /arch")?;
    let repository = env.unique_repo("alice-attested");
    let tag = format!("{repository}:1");
    let id = farm
        .submit_detached_as(
            Some(&t.alice),
            &[
                "-t",
                &tag,
                "--platform",
                "linux/arm64",
                sources.path().to_str().unwrap(),
            ],
        )
        .await?;
    let job = rogue.assignment().await?;
    rogue.send(Msg::Accepted(v1::JobAccepted {
        job_id: job.job_id.clone(),
        attempt: job.attempt,
    }))?;

    // An arm64 image that passes every image check, and a plain manifest as its attestation.
    let name = repository
        .strip_prefix(&format!("{}/", env.registry))
        .unwrap();
    let config =
        br#"{"architecture":"arm64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config = put_blob(
        &env.registry,
        name,
        config,
        "application/vnd.oci.image.config.v1+json",
    )
    .await?;
    let layer = put_blob(
        &env.registry,
        name,
        b"not a statement",
        "application/vnd.oci.image.layer.v1.tar+gzip",
    )
    .await?;
    let mut pushed = Vec::new();
    for layers in [vec![], vec![layer]] {
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": layers
        }))?;
        let digest = sha256(&manifest);
        put_manifest(&env.registry, name, &digest, &manifest, OCI_MANIFEST).await?;
        pushed.push(v1::ImageDescriptor {
            digest,
            size: manifest.len() as i64,
            media_type: OCI_MANIFEST.into(),
            attestations: Vec::new(),
        });
    }
    let fake = pushed.pop().unwrap();
    let mut image = pushed.pop().unwrap();
    image.attestations.push(fake.clone());
    rogue.send(Msg::Result(v1::JobResult {
        job_id: job.job_id.clone(),
        attempt: job.attempt,
        outcome: Some(v1::job_result::Outcome::Pushed(image)),
    }))?;

    let failed = failed_verification(&farm, &id).await?;
    assert!(
        failed.contains("worker rogue")
            && failed.contains(&fake.digest)
            && failed.contains("is not one")
            && failed.contains("application/vnd.oci.image.layer.v1.tar+gzip"),
        "{failed}"
    );
    let b = farm.wait_build_end(&id, Duration::from_secs(300)).await?;
    assert_eq!(b.state, v1::BuildState::Succeeded as i32, "{b:?}");
    assert_eq!(b.jobs[0].worker, "arm", "retried on another worker");
    // The index, read with skopeo, holds the real worker's image and no false attestation.
    let index = manifold_tests::skopeo_raw(&tag).await?;
    assert!(!index.to_string().contains(&fake.digest), "{index:#}");
    Ok(())
}

#[tokio::test]
async fn wrong_tokens_are_logged_by_their_hash_prefix_and_slowed_per_source() -> anyhow::Result<()>
{
    let t = teams().await?;
    let farm = TestFarm::builder().secured(&t.config, &[]).start().await?;
    let list = |token: String| {
        let farm = &farm;
        async move {
            let mut c = farm.builds().await.expect("channel");
            let started = std::time::Instant::now();
            let r = c
                .list(with_token(
                    &token,
                    v1::ListBuildsRequest {
                        limit: 1,
                        ..Default::default()
                    },
                ))
                .await;
            (r.map(|_| ()), started.elapsed())
        }
    };
    let mut took = Vec::new();
    for i in 0..6 {
        let (r, elapsed) = list(format!("mft_guess-{i}-{}", uuid::Uuid::new_v4())).await;
        let status = r.expect_err("a wrong token");
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
        took.push(elapsed);
    }
    // The 4th, 5th and 6th wrong tokens in a row wait 250 ms, 500 ms and 1 s.
    assert!(took[3] >= Duration::from_millis(250), "{took:?}");
    assert!(took[4] >= Duration::from_millis(500), "{took:?}");
    assert!(took[5] >= Duration::from_millis(1000), "{took:?}");
    // A valid token still works from the same source.
    let (r, _) = list(t.alice.clone()).await;
    r.map_err(|e| anyhow::anyhow!("{e:?}"))?;

    let wrong = "mft_a-token-that-must-never-be-logged";
    let (r, _) = list(wrong.into()).await;
    assert!(r.is_err());
    let prefix = &hex::encode(sha2::Sha256::digest(wrong.as_bytes()))[..12];
    let log = wait_until(
        Duration::from_secs(10),
        "the refusal to be logged",
        || async {
            let log = farm.coordinator_log();
            // Field names may be set off by colour codes: look for the value.
            log.contains(prefix).then_some(log)
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}:\n{}", farm.coordinator_log()))?;
    assert!(
        log.contains("refused a wrong token") && log.contains("127.0.0.1"),
        "{log}"
    );
    assert!(!log.contains(wrong), "the token itself is never logged");
    Ok(())
}
