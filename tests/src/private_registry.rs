//! A registry that needs a login (htpasswd, user `builder`, password `pa55word`) on a free
//! loopback port, holding a copy of the multi-arch base image; stopped when dropped.

use std::time::Duration;

use crate::{Env, free_port, run, wait_until};

/// The user name the registry accepts.
pub const USER: &str = "builder";
/// Its password.
pub const PASSWORD: &str = "pa55word";

/// A running private registry.
pub struct PrivateRegistry {
    /// host:port on 127.0.0.1.
    pub address: String,
    _dir: tempfile::TempDir,
    _process: tokio::process::Child,
}

impl PrivateRegistry {
    /// Starts one and copies `env`'s base image into it as `private/busybox:1`.
    pub async fn start(env: &Env) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let address = format!("127.0.0.1:{}", free_port());
        let htpasswd = run("htpasswd", &["-Bbn", USER, PASSWORD]).await?;
        std::fs::write(dir.path().join("htpasswd"), htpasswd)?;
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {root}\nhttp:\n  addr: {address}\nauth:\n  htpasswd:\n    realm: manifold-test\n    path: {htpasswd}\n",
            root = dir.path().join("data").display(),
            htpasswd = dir.path().join("htpasswd").display()
        );
        std::fs::write(dir.path().join("config.yml"), config)?;
        let process = tokio::process::Command::new("docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        wait_until(Duration::from_secs(20), "the private registry", || async {
            let url = format!("http://{address}/v2/");
            let out = tokio::process::Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &url])
                .output()
                .await
                .ok()?;
            (String::from_utf8_lossy(&out.stdout) == "401").then_some(())
        })
        .await?;
        run(
            "skopeo",
            &[
                "copy",
                "--all",
                "--src-tls-verify=false",
                "--dest-tls-verify=false",
                "--dest-creds",
                &format!("{USER}:{PASSWORD}"),
                &format!("docker://{}", env.base_image),
                &format!("docker://{address}/private/busybox:1"),
            ],
        )
        .await?;
        Ok(Self {
            address,
            _dir: dir,
            _process: process,
        })
    }

    /// `skopeo inspect --raw` of `reference` with the login.
    pub async fn inspect_raw(&self, reference: &str) -> anyhow::Result<serde_json::Value> {
        let raw = run(
            "skopeo",
            &[
                "inspect",
                "--raw",
                "--tls-verify=false",
                "--creds",
                &format!("{USER}:{PASSWORD}"),
                &format!("docker://{reference}"),
            ],
        )
        .await?;
        Ok(serde_json::from_str(&raw)?)
    }

    /// The tags of `repository` per skopeo with the login; empty when it has none.
    pub async fn tags(&self, repository: &str) -> anyhow::Result<Vec<String>> {
        let out = tokio::process::Command::new("skopeo")
            .args([
                "list-tags",
                "--tls-verify=false",
                "--creds",
                &format!("{USER}:{PASSWORD}"),
                &format!("docker://{repository}"),
            ])
            .output()
            .await?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            if err.contains("NAME_UNKNOWN") || err.contains("404") || err.contains("not found") {
                return Ok(Vec::new());
            }
            anyhow::bail!("skopeo list-tags {repository}: {err}");
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        Ok(v["Tags"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }
}
