//! `manifold manifest` when a registry does not cooperate: nothing listening (a free loopback
//! port), or a second real registry with htpasswd authentication that answers 401. The errors
//! name the registry and, for a 401, the credentials that were tried (never the secret); nothing
//! is written under the target tag. Credentials come from the Docker config file, including a
//! `credsStore` credential helper, and then work across registries.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use manifold_tests::{Env, bin, free_port, run, show, skopeo_raw, skopeo_tags, wait_until};

const USER: &str = "tester";
const PASSWORD: &str = "manifold-test-pass";
/// bcrypt (cost 4) of PASSWORD: the distribution registry's htpasswd takes bcrypt only.
const PASSWORD_BCRYPT: &str = "$2b$04$0Ot941ZLmjzP13hb4zTBIOodNvuKOAvSfcKGz9nBPW3LXeYcIxLyO";

/// Runs `manifold` with the Docker config folder `docker_config` and PATH extended by `path`.
async fn manifold(
    docker_config: &Path,
    path: Option<&Path>,
    args: &[&str],
) -> anyhow::Result<std::process::Output> {
    let mut cmd = tokio::process::Command::new(bin("manifold"));
    cmd.args(args)
        .env("DOCKER_CONFIG", docker_config)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(dir) = path {
        let system = std::env::var("PATH").unwrap_or_default();
        cmd.env("PATH", format!("{}:{system}", dir.display()));
    }
    Ok(cmd.output().await?)
}

#[track_caller]
fn assert_refused(out: &std::process::Output, parts: &[&str]) {
    assert_eq!(out.status.code(), Some(1), "{}", show(out));
    assert!(out.stdout.is_empty(), "{}", show(out));
    let err = String::from_utf8_lossy(&out.stderr);
    for part in parts {
        assert!(err.contains(part), "expected `{part}` in:\n{}", show(out));
    }
}

/// A second distribution registry on a free loopback port, requiring USER/PASSWORD; killed on drop.
struct AuthRegistry {
    addr: String,
    _dir: tempfile::TempDir,
    _process: tokio::process::Child,
}

impl AuthRegistry {
    async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let addr = format!("127.0.0.1:{}", free_port());
        std::fs::write(
            dir.path().join("htpasswd"),
            format!("{USER}:{PASSWORD_BCRYPT}\n"),
        )?;
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {root}\n\
                 http:\n  addr: {addr}\nauth:\n  htpasswd:\n    realm: manifold-test\n    path: {htpasswd}\n",
                root = dir.path().join("data").display(),
                htpasswd = dir.path().join("htpasswd").display(),
            ),
        )?;
        let process = tokio::process::Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("registry.log"))?)
            .kill_on_drop(true)
            .spawn()?;
        let url = format!("http://{addr}/v2/");
        wait_until(
            Duration::from_secs(20),
            "the htpasswd registry to answer",
            || {
                let url = url.clone();
                async move {
                    let code = run(
                        "curl",
                        &["-s", "-o", "/dev/null", "-w", "%{http_code}", &url],
                    )
                    .await
                    .ok()?;
                    (code == "401").then_some(())
                }
            },
        )
        .await?;
        Ok(Self {
            addr,
            _dir: dir,
            _process: process,
        })
    }

    /// Copies `source` (in the plain test registry) to `name` here, with the right credentials.
    async fn seed(&self, source: &str, name: &str) -> anyhow::Result<String> {
        let dest = format!("{}/{name}", self.addr);
        run(
            "skopeo",
            &[
                "copy",
                "--src-tls-verify=false",
                "--dest-tls-verify=false",
                "--dest-creds",
                &format!("{USER}:{PASSWORD}"),
                &format!("docker://{source}"),
                &format!("docker://{dest}"),
            ],
        )
        .await?;
        Ok(dest)
    }

    /// The tags of `repository` here, read with the right credentials.
    async fn tags(&self, repository: &str) -> anyhow::Result<Vec<String>> {
        let out = run(
            "skopeo",
            &[
                "list-tags",
                "--tls-verify=false",
                "--creds",
                &format!("{USER}:{PASSWORD}"),
                &format!("docker://{}/{repository}", self.addr),
            ],
        )
        .await?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        let mut tags: Vec<String> = v["Tags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str().map(str::to_owned))
            .collect();
        tags.sort();
        Ok(tags)
    }
}

/// A Docker config folder whose config.json is `json`.
fn docker_config(json: &str) -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("config.json"), json)?;
    Ok(dir)
}

/// A folder holding `docker-credential-manifoldtest`, a helper that gives USER/PASSWORD for
/// `registry` and records the server it was asked about.
fn credential_helper(registry: &str) -> anyhow::Result<(tempfile::TempDir, PathBuf)> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir()?;
    let asked = dir.path().join("asked");
    let script = dir.path().join("docker-credential-manifoldtest");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 3\nread -r server || true\n\
             echo \"$server\" >> '{asked}'\n\
             if [ \"$server\" = '{registry}' ]; then\n\
             printf '{{\"ServerURL\":\"%s\",\"Username\":\"{USER}\",\"Secret\":\"{PASSWORD}\"}}' \"$server\"\n\
             else echo 'credentials not found in native keychain'; exit 1; fi\n",
            asked = asked.display()
        ),
    )?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    Ok((dir, asked))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_registry_is_named_and_nothing_is_written() -> anyhow::Result<()> {
    let env = Env::from_env();
    let nothing = format!("127.0.0.1:{}", free_port());
    let empty = docker_config("{}")?;
    let repo = env.unique_repo("unreachable");
    let target = format!("{repo}:1.0");

    // A source on a registry that is not there.
    let source = format!("{nothing}/app:1.0-x86_64");
    let out = manifold(
        empty.path(),
        None,
        &[
            "manifest",
            "create",
            &target,
            &env.base_image,
            &source,
            "--push",
        ],
    )
    .await?;
    assert_refused(
        &out,
        &[
            &format!("cannot reach registry {nothing} while reading {source}: connection refused"),
            "check the address and that the registry is running",
            &format!("nothing was written under {target}"),
        ],
    );
    assert!(skopeo_tags(&repo).await?.is_empty());

    // A target on a registry that is not there.
    let far = format!("{nothing}/app:1.0");
    let out = manifold(
        empty.path(),
        None,
        &["manifest", "create", &far, &env.base_image, "--push"],
    )
    .await?;
    assert_refused(&out, &[&format!("cannot reach registry {nothing}")]);

    // inspect says the same.
    let out = manifold(empty.path(), None, &["manifest", "inspect", &far]).await?;
    assert_refused(&out, &[&format!("cannot reach registry {nothing}")]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_401_names_the_registry_and_the_credentials_tried() -> anyhow::Result<()> {
    let env = Env::from_env();
    let registry = AuthRegistry::start().await?;
    let base_repo = env.base_image.rsplit_once(':').map(|(b, _)| b).unwrap();
    let x86 = registry
        .seed(&format!("{base_repo}:1-x86_64"), "app:1.0-x86_64")
        .await?;
    let arm = registry
        .seed(&format!("{base_repo}:1-aarch64"), "app:1.0-aarch64")
        .await?;
    let target = format!("{}/app:1.0", registry.addr);
    let login_hint = format!("run `docker login {}`", registry.addr);

    // No credentials at all.
    let anonymous = docker_config("{}")?;
    let out = manifold(
        anonymous.path(),
        None,
        &["manifest", "create", &target, &x86, &arm, "--push"],
    )
    .await?;
    let config_path = anonymous.path().join("config.json");
    assert_refused(
        &out,
        &[
            &format!(
                "registry {} refused reading {x86} (401 unauthorized)",
                registry.addr
            ),
            &format!(
                "with no credentials (anonymous; {} has none for this registry)",
                config_path.display()
            ),
            &login_hint,
            &format!("nothing was written under {target}"),
        ],
    );

    // A wrong password in the config file: the user is named, the password never is.
    let auth = run(
        "sh",
        &[
            "-c",
            &format!("printf %s '{USER}:not-the-password' | base64 -w0"),
        ],
    )
    .await?;
    let wrong = docker_config(&format!(
        r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#,
        registry.addr
    ))?;
    let out = manifold(
        wrong.path(),
        None,
        &["manifest", "create", &target, &x86, &arm, "--push"],
    )
    .await?;
    assert_refused(
        &out,
        &[
            "(401 unauthorized)",
            &format!(
                "with user `{USER}` from {}",
                wrong.path().join("config.json").display()
            ),
            &login_hint,
        ],
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("not-the-password"));
    let out = manifold(wrong.path(), None, &["manifest", "inspect", &target]).await?;
    assert_refused(&out, &["refused reading", "(401 unauthorized)"]);
    assert_eq!(
        registry.tags("app").await?,
        ["1.0-aarch64", "1.0-x86_64"],
        "no 1.0 tag was written"
    );

    // The right credentials from a credsStore helper: the merge works.
    let (helper_dir, asked) = credential_helper(&registry.addr)?;
    let store = docker_config(r#"{"credsStore":"manifoldtest"}"#)?;
    let out = manifold(
        store.path(),
        Some(helper_dir.path()),
        &["manifest", "create", &target, &x86, &arm, "--push"],
    )
    .await?;
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        std::fs::read_to_string(&asked)?
            .lines()
            .all(|server| server == registry.addr),
        "the helper is asked with the registry's host:port"
    );
    assert_eq!(
        registry.tags("app").await?,
        ["1.0", "1.0-aarch64", "1.0-x86_64"]
    );
    let out = manifold(
        store.path(),
        Some(helper_dir.path()),
        &["manifest", "inspect", &target, "--format", "json"],
    )
    .await?;
    assert!(out.status.success(), "{}", show(&out));
    let view: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(
        view["manifests"].as_array().map(Vec::len),
        Some(2),
        "{view}"
    );

    // Across registries: the open test registry's list, copied into the authenticated one.
    let copied = format!("{}/copied:1", registry.addr);
    let out = manifold(
        store.path(),
        Some(helper_dir.path()),
        &["manifest", "create", &copied, &env.base_image, "--push"],
    )
    .await?;
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("copied"),
        "{}",
        show(&out)
    );
    let children = skopeo_raw(&env.base_image).await?["manifests"]
        .as_array()
        .map(Vec::len);
    let raw = run(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            "--creds",
            &format!("{USER}:{PASSWORD}"),
            &format!("docker://{copied}"),
        ],
    )
    .await?;
    let raw: serde_json::Value = serde_json::from_str(&raw)?;
    assert_eq!(raw["manifests"].as_array().map(Vec::len), children);
    Ok(())
}
