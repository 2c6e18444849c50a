//! buildx's flags through the farm, on real daemons with the containerd image store (Docker
//! Desktop's default) and with a graphdriver: `--secret` (its hash is in the image, its bytes in
//! no file of the coordinator's state, no log, no CLI output), `TARGETARCH`/`BUILDPLATFORM` as
//! buildx sets them, `--no-cache`, and a `FROM` on a registry that needs a login, with the
//! credentials in the worker's Docker config and with none (a clear error naming the registry and
//! the config read), and `--ssh` keys served as an ssh-agent that a step signs with and never reads.

use std::path::Path;

use manifold_tests::private_registry::PrivateRegistry;
use manifold_tests::{Env, TestFarm, context_dir, run, show};
use sha2::Digest as _;

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

async fn file_in_image(
    docker: &str,
    image: &str,
    platform: &str,
    path: &str,
) -> anyhow::Result<String> {
    run(
        "docker",
        &["-H", docker, "pull", "-q", "--platform", platform, image],
    )
    .await?;
    let out = run(
        "docker",
        &[
            "-H",
            docker,
            "run",
            "--rm",
            "--platform",
            platform,
            image,
            "cat",
            path,
        ],
    )
    .await?;
    Ok(out.trim().to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secret_reaches_the_run_step_and_nothing_else_on_containerd_store() -> anyhow::Result<()>
{
    secret_no_cache_and_target_args("containerd").await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secret_reaches_the_run_step_and_nothing_else_on_graphdriver() -> anyhow::Result<()> {
    secret_no_cache_and_target_args("graphdriver").await
}

/// `--secret` (its hash in both images, its bytes nowhere else), TARGETARCH / TARGETPLATFORM /
/// BUILDPLATFORM as buildx sets them, a cached rebuild and `--no-cache`, on the daemon pair of
/// `store`.
async fn secret_no_cache_and_target_args(store: &str) -> anyhow::Result<()> {
    let env = Env::from_env();
    let farm = TestFarm::on_pair(&env, store).await?;

    let secret = format!("s3cr3t-{}", uuid::Uuid::new_v4());
    let nonce = uuid::Uuid::new_v4().to_string();
    let dockerfile = format!(
        "FROM {base}\n\
         ARG TARGETARCH\nARG TARGETPLATFORM\nARG BUILDPLATFORM\n\
         RUN --mount=type=secret,id=token,required=true sha256sum /run/secrets/token | cut -d' ' -f1 > /token.sha \
         && echo \"$TARGETARCH $TARGETPLATFORM $BUILDPLATFORM\" > /platform && echo {nonce}\n",
        base = env.base_image
    );
    let ctx = context_dir(&[("Dockerfile", &dockerfile)])?;
    let secret_dir = tempfile::tempdir()?;
    let secret_file = secret_dir.path().join("token");
    std::fs::write(&secret_file, &secret)?;
    let tag = format!("{}:1", env.unique_repo("secret"));
    let build = |extra: &'static [&'static str]| {
        let mut args: Vec<String> = [
            "build",
            "-t",
            &tag,
            "--platform",
            "linux/amd64,linux/arm64",
            "--progress",
            "plain",
            "--secret",
            &format!("id=token,src={}", secret_file.display()),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(ctx.path().display().to_string());
        args
    };
    let first = farm.cli(build(&[])).await?;
    assert!(
        first.status.success(),
        "{}\n--- x86 ---\n{}\n--- arm ---\n{}",
        show(&first),
        farm.worker_log("x86"),
        farm.worker_log("arm")
    );

    // The RUN step saw the secret: its hash is in both images; TARGET*/BUILDPLATFORM as buildx
    // sets them (the arm64 daemon is an amd64 machine running arm64 under QEMU).
    let expected_sha = hex::encode(sha2::Sha256::digest(secret.as_bytes()));
    for (platform, expected) in [
        ("linux/amd64", "amd64 linux/amd64 linux/amd64"),
        ("linux/arm64", "arm64 linux/arm64 linux/amd64"),
    ] {
        assert_eq!(
            file_in_image(&env.amd64_docker, &tag, platform, "/token.sha").await?,
            expected_sha,
            "{platform}"
        );
        assert_eq!(
            file_in_image(&env.amd64_docker, &tag, platform, "/platform").await?,
            expected,
            "{platform}"
        );
    }
    let _ = run("docker", &["-H", &env.amd64_docker, "rmi", "-f", &tag]).await;

    // A second build takes the RUN step from the cache (no output line of it); --no-cache runs
    // it again on both platforms.
    let ran = |out: &str| {
        out.lines()
            .filter(|l| !l.contains("echo") && l.trim_end().ends_with(&format!(" {nonce}")))
            .count()
    };
    assert_eq!(ran(&show(&first)), 2, "{}", show(&first));
    let cached = farm.cli(build(&[])).await?;
    assert!(cached.status.success(), "{}", show(&cached));
    let cached_out = show(&cached);
    assert!(cached_out.contains("CACHED"), "{cached_out}");
    assert_eq!(ran(&cached_out), 0, "{cached_out}");
    let fresh = farm.cli(build(&["--no-cache"])).await?;
    assert!(fresh.status.success(), "{}", show(&fresh));
    let fresh_out = show(&fresh);
    assert_eq!(
        ran(&fresh_out),
        2,
        "both platforms ran the step again: {fresh_out}"
    );

    // The secret's bytes are nowhere: not in the coordinator's state or any log, not in the CLI's
    // output, not in `manifold logs`.
    let builds = farm.cli(["builds", "--format", "json"]).await?;
    let listing = show(&builds);
    for (what, text) in [
        ("first build output", show(&first)),
        ("second build output", cached_out),
        ("--no-cache output", fresh_out),
        ("builds listing", listing),
    ] {
        assert!(!text.contains(&secret), "the secret is in the {what}");
    }
    let found = files_containing(farm.state_dir.path(), secret.as_bytes());
    assert!(found.is_empty(), "the secret is in {found:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_from_behind_a_login_uses_the_workers_docker_config_or_says_what_is_missing()
-> anyhow::Result<()> {
    use base64::Engine as _;
    let env = Env::from_env();
    let registry = PrivateRegistry::start(&env).await?;
    let logged_in = tempfile::tempdir()?;
    let auth = base64::engine::general_purpose::STANDARD.encode("builder:pa55word");
    std::fs::write(
        logged_in.path().join("config.json"),
        format!(
            r#"{{"auths": {{"{}": {{"auth": "{auth}"}}}}}}"#,
            registry.address
        ),
    )?;
    let anonymous = tempfile::tempdir()?;
    std::fs::write(anonymous.path().join("config.json"), "{}")?;

    let dockerfile = format!(
        "FROM {}/private/busybox:1\nRUN echo {} > /n\n",
        registry.address,
        uuid::Uuid::new_v4()
    );
    let ctx = context_dir(&[("Dockerfile", &dockerfile)])?;
    for store in ["graphdriver", "containerd"] {
        let (amd64, _) = env.pair(store);
        let tag = format!("{}:1", env.unique_repo("private-base"));
        let args = [
            "build",
            "-t",
            &tag,
            "--platform",
            "linux/amd64",
            ctx.path().to_str().unwrap(),
        ];

        // Without a login: the build fails, naming the registry and the config the worker read.
        let mut farm = TestFarm::builder().start().await?;
        farm.worker("anon")
            .docker(&amd64)
            .env("DOCKER_CONFIG", anonymous.path().to_str().unwrap())
            .spawn()
            .await?;
        let out = farm.cli(args).await?;
        assert!(!out.status.success(), "{store}: {}", show(&out));
        let text = show(&out);
        let config = anonymous.path().join("config.json");
        assert!(
            text.contains(&format!(
                "registry {} needs a login and the worker's docker config {} has none for it",
                registry.address,
                config.display()
            )),
            "{store}: {text}\n--- worker ---\n{}",
            farm.worker_log("anon")
        );
        drop(farm);

        // With the login in the worker's Docker config: the base is pulled and the build succeeds.
        let mut farm = TestFarm::builder().start().await?;
        farm.worker("login")
            .docker(&amd64)
            .env("DOCKER_CONFIG", logged_in.path().to_str().unwrap())
            .spawn()
            .await?;
        let out = farm.cli(args).await?;
        assert!(
            out.status.success(),
            "{store}: {}\n--- worker ---\n{}",
            show(&out),
            farm.worker_log("login")
        );
    }
    Ok(())
}

/// The host's `ssh-add` and `ssh-keygen` with the libraries they load, laid out under `dir` as
/// they are on the host, for an amd64 image (the base image has no ssh client).
fn copy_ssh_tools(dir: &Path) -> anyhow::Result<()> {
    for tool in ["/usr/bin/ssh-add", "/usr/bin/ssh-keygen"] {
        let ldd = std::process::Command::new("ldd").arg(tool).output()?;
        let listed = String::from_utf8(ldd.stdout)?;
        let libraries = listed
            .split_whitespace()
            .filter(|w| w.starts_with('/'))
            .map(str::to_owned);
        for file in std::iter::once(tool.to_owned()).chain(libraries) {
            let to = dir.join(file.trim_start_matches('/'));
            std::fs::create_dir_all(to.parent().unwrap())?;
            std::fs::copy(&file, &to)?; // through symlinks: the library itself
        }
    }
    // ssh-keygen wants its user to exist.
    std::fs::create_dir_all(dir.join("etc"))?;
    std::fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    Ok(())
}

/// A new passphrase-less key at `dir/name` (and `name.pub`), by ssh-keygen; its public line.
async fn ssh_key(dir: &Path, name: &str, passphrase: &str) -> anyhow::Result<String> {
    let path = dir.join(name);
    let path = path.to_str().unwrap();
    run(
        "ssh-keygen",
        &[
            "-q", "-t", "ed25519", "-N", passphrase, "-C", name, "-f", path,
        ],
    )
    .await?;
    Ok(std::fs::read_to_string(format!("{path}.pub"))?
        .trim()
        .to_owned())
}

/// `--ssh` on the amd64 daemon of `store`: a `RUN --mount=type=ssh` lists the keys of its id and
/// signs with them (the signature checked here with ssh-keygen), a step can never read a key as a
/// secret, the key's bytes are in no file of the coordinator's state and no output, and the
/// errors name what is wrong (a `required=true` mount of an id the build lacks fails naming it;
/// an optional one is left out, as with buildx).
async fn ssh_keys_sign_and_are_never_read(store: &str) -> anyhow::Result<()> {
    let env = Env::from_env();
    let (amd64, _) = env.pair(store);
    let mut farm = TestFarm::builder().start().await?;
    farm.worker("x86").docker(&amd64).spawn().await?;
    let keys = tempfile::tempdir()?;
    let default_pub = ssh_key(keys.path(), "default-key", "").await?;
    let deploy_pub = ssh_key(keys.path(), "deploy-key", "").await?;
    ssh_key(keys.path(), "locked-key", "a passphrase").await?;
    let key = |name: &str| keys.path().join(name).display().to_string();
    let private = std::fs::read_to_string(key("default-key"))?;
    let private_body = private.lines().nth(1).unwrap().to_owned();

    let ctx = context_dir(&[
        ("id.pub", &default_pub),
        (
            "Dockerfile",
            &format!(
                "FROM {}\nCOPY tools/ /\nCOPY id.pub /id.pub\n\
                 RUN --mount=type=ssh,required=true /usr/bin/ssh-add -L > /agent-keys && printf 'signed in the build' > /signed \
                 && /usr/bin/ssh-keygen -Y sign -n manifold-test -f /id.pub /signed\n\
                 RUN --mount=type=ssh,id=deploy /usr/bin/ssh-add -L > /deploy-keys\n\
                 RUN --mount=type=secret,id=manifold.ssh.0.default cat /run/secrets/manifold.ssh.0.default > /stolen \
                 || echo refused > /stolen\n",
                env.base_image
            ),
        ),
    ])?;
    copy_ssh_tools(&ctx.path().join("tools"))?;
    let tag = format!("{}:1", env.unique_repo(&format!("ssh-{store}")));
    let ctx_arg = ctx.path().display().to_string();
    let default_arg = format!("default={}", key("default-key"));
    let deploy_arg = format!("deploy={}", key("deploy-key"));
    let build = |ssh: Vec<String>| {
        let mut args = vec!["build".to_owned(), "-t".into(), tag.clone()];
        args.extend(["--platform".into(), "linux/amd64".into()]);
        for s in ssh {
            args.extend(["--ssh".into(), s]);
        }
        args.push(ctx_arg.clone());
        args
    };
    let out = farm
        .cli(build(vec![default_arg.clone(), deploy_arg.clone()]))
        .await?;
    assert!(
        out.status.success(),
        "{}\n--- x86 ---\n{}",
        show(&out),
        farm.worker_log("x86")
    );

    let file = |path: &'static str| file_in_image(&env.amd64_docker, &tag, "linux/amd64", path);
    assert_eq!(file("/agent-keys").await?, default_pub);
    assert_eq!(file("/deploy-keys").await?, deploy_pub);
    assert_eq!(file("/stolen").await?, "refused", "a key is no secret");
    let signature = keys.path().join("signed.sig");
    std::fs::write(&signature, format!("{}\n", file("/signed.sig").await?))?;
    let signers = keys.path().join("allowed_signers");
    std::fs::write(&signers, format!("builder {default_pub}\n"))?;
    let verify = std::process::Command::new("ssh-keygen")
        .args(["-Y", "verify", "-n", "manifold-test", "-I", "builder", "-f"])
        .arg(&signers)
        .arg("-s")
        .arg(&signature)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(b"signed in the build")?;
            child.wait_with_output()
        })?;
    assert!(
        verify.status.success(),
        "the build's signature verifies: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let _ = run("docker", &["-H", &env.amd64_docker, "rmi", "-f", &tag]).await;

    // The key's bytes are nowhere: not in the state, the listing or the output.
    let builds = farm.cli(["builds", "--format", "json"]).await?;
    for text in [show(&out), show(&builds)] {
        assert!(!text.contains(&private_body), "the key is in {text}");
    }
    let found = files_containing(farm.state_dir.path(), private_body.as_bytes());
    assert!(found.is_empty(), "the key is in {found:?}");

    // Errors name the value and what to do; a step that wants an id the build lacks says so.
    for (ssh, expected) in [
        (
            vec!["default".to_owned()],
            "--ssh default=$HOME/.ssh/id_ed25519",
        ),
        (vec![format!("default={}", key("missing"))], "cannot read"),
        (vec![format!("default={}", key("locked-key"))], "passphrase"),
        (
            vec![format!("default={}", key("default-key.pub"))],
            "not an OpenSSH private key",
        ),
        (vec![deploy_arg.clone()], "no --ssh default=PATH"),
    ] {
        // --no-cache: a cached step asks for no agent.
        let mut args = build(ssh.clone());
        args.insert(1, "--no-cache".into());
        let out = farm.cli(args).await?;
        assert!(!out.status.success(), "{ssh:?}: {}", show(&out));
        assert!(show(&out).contains(expected), "{ssh:?}: {}", show(&out));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_keys_sign_in_the_build_and_are_never_read_on_containerd_store() -> anyhow::Result<()> {
    ssh_keys_sign_and_are_never_read("containerd").await
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_keys_sign_in_the_build_and_are_never_read_on_graphdriver() -> anyhow::Result<()> {
    ssh_keys_sign_and_are_never_read("graphdriver").await
}
