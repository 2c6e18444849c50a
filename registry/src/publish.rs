//! Publishing a finished build: the manifest list pushed under the user's tag with oci-client.
//!
//! Invariant: the tag moves last. Every child is checked to be in the target repository first, the
//! optional per-arch tags are written next, and only then the list goes under the requested tag, so
//! a client never pulls a tag whose children are missing.

use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use sha2::{Digest as _, Sha256};

use crate::manifest::{self, ChildImage, DOCKER_MANIFEST, ManifestError, OCI_MANIFEST};

/// Registry failures, named for what the user has to fix.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The children cannot form one list.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A child manifest is not in the target repository.
    #[error("{platform} image {digest} is not in {repository}: it was never pushed or was deleted")]
    MissingChild {
        /// Child platform.
        platform: String,
        /// Child digest.
        digest: String,
        /// Target repository.
        repository: String,
    },
    /// The registry could not be reached or refused a request.
    #[error("registry {registry}: {action} failed: {cause}")]
    Request {
        /// host[:port]
        registry: String,
        /// What was attempted.
        action: String,
        /// The client's error.
        cause: String,
    },
}

/// How the coordinator talks to registries.
#[derive(Clone, Debug, Default)]
pub struct RegistryConfig {
    /// Registries (host:port) reached over plain HTTP besides loopback ones.
    pub insecure: Vec<String>,
}

impl RegistryConfig {
    /// Whether `registry` (host[:port]) is reached over plain HTTP: loopback registries are, as
    /// Docker treats them, and so is every registry listed with --insecure-registry.
    pub fn is_insecure(&self, registry: &str) -> bool {
        let host = registry
            .rsplit_once(':')
            .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
            .map_or(registry, |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
            || self.insecure.iter().any(|i| i == registry || i == host)
    }

    /// An oci-client for `registry`.
    pub fn client(&self, registry: &str) -> Client {
        let protocol = if self.is_insecure(registry) {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        };
        Client::new(ClientConfig {
            protocol,
            ..Default::default()
        })
    }
}

/// What a publish wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    /// Digest of the list.
    pub digest: String,
    /// Its media type.
    pub media_type: &'static str,
    /// Per-arch tags written (`TAG-x86_64` ...), empty unless asked for.
    pub arch_tags: Vec<String>,
}

/// Pushes the list of `children` under `target` (a tagged reference); see the module invariant.
pub async fn publish(
    config: &RegistryConfig,
    target: &Reference,
    children: &[ChildImage],
    arch_tags: bool,
) -> Result<Published, RegistryError> {
    let list = manifest::assemble(children)?;
    let registry = target.registry().to_owned();
    let client = config.client(&registry);
    let auth = credentials_for(&registry);
    let fail = |action: String| {
        let registry = registry.clone();
        move |e: oci_client::errors::OciDistributionError| RegistryError::Request {
            registry,
            action,
            cause: e.to_string(),
        }
    };
    retry(|| client.auth(target, &auth, RegistryOperation::Push))
        .await
        .map_err(fail(format!("authenticating for {}", target.repository())))?;

    for c in children {
        let child_ref = target.clone_with_digest(c.digest.clone());
        match retry(|| client.fetch_manifest_digest(&child_ref, &auth)).await {
            Ok(_) => {}
            Err(oci_client::errors::OciDistributionError::ImageManifestNotFoundError(_)) => {
                return Err(RegistryError::MissingChild {
                    platform: c.platform.to_string(),
                    digest: c.digest.clone(),
                    repository: format!("{registry}/{}", target.repository()),
                });
            }
            Err(e) => return Err(fail(format!("checking {}", c.digest))(e)),
        }
    }

    let tag = target.tag().unwrap_or("latest").to_owned();
    let mut written = Vec::new();
    if arch_tags {
        for c in children {
            let child_ref = target.clone_with_digest(c.digest.clone());
            let (bytes, _) = retry(|| {
                client.pull_manifest_raw(&child_ref, &auth, &[DOCKER_MANIFEST, OCI_MANIFEST])
            })
            .await
            .map_err(fail(format!("reading {}", c.digest)))?;
            let arch_tag = arch_tag(&tag, &c.platform);
            let tagged = Reference::with_tag(
                registry.clone(),
                target.repository().to_owned(),
                arch_tag.clone(),
            );
            retry(|| client.push_manifest_raw(&tagged, bytes.clone(), header(&c.media_type)))
                .await
                .map_err(fail(format!("tagging {arch_tag}")))?;
            written.push(arch_tag);
        }
    }

    let tagged = Reference::with_tag(
        registry.clone(),
        target.repository().to_owned(),
        tag.clone(),
    );
    retry(|| client.push_manifest_raw(&tagged, list.bytes.clone(), header(list.media_type)))
        .await
        .map_err(fail(format!("pushing the manifest list under {tag}")))?;
    Ok(Published {
        digest: format!("sha256:{}", hex::encode(Sha256::digest(&list.bytes))),
        media_type: list.media_type,
        arch_tags: written,
    })
}

/// The per-arch tag teams already use: `1.0` + linux/arm64 → `1.0-aarch64`.
pub fn arch_tag(tag: &str, platform: &manifold_proto::Platform) -> String {
    format!("{tag}-{}", platform.uname_arch())
}

fn header(media_type: &str) -> http::HeaderValue {
    http::HeaderValue::from_str(media_type).expect("media types are valid header values")
}

/// Runs `op` up to four times with exponential backoff (0.5 s, 1 s, 2 s) while it fails with a
/// transient error (connection failure, 5xx, 429).
async fn retry<T, F, Fut>(mut op: F) -> Result<T, oci_client::errors::OciDistributionError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, oci_client::errors::OciDistributionError>>,
{
    let mut delay = Duration::from_millis(500);
    let mut attempt = 1;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt < 4 && is_transient(&e) => {
                tracing::warn!(attempt, error = %e, "registry request failed, retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

fn is_transient(e: &oci_client::errors::OciDistributionError) -> bool {
    use oci_client::errors::OciDistributionError as E;
    match e {
        E::RequestError(_) => true,
        E::ServerError { code, .. } => *code >= 500 || *code == 429,
        other => {
            let s = other.to_string();
            s.contains("connect") || s.contains(" 50") || s.contains("timed out")
        }
    }
}

/// Credentials for `registry` from the Docker config file (DOCKER_CONFIG or ~/.docker/config.json):
/// `auths.<registry>.auth` (base64 `user:password`). Anonymous when absent. Never logged.
pub fn credentials_for(registry: &str) -> RegistryAuth {
    let path = std::env::var_os("DOCKER_CONFIG")
        .map(std::path::PathBuf::from)
        .or_else(|| dirs::home_dir().map(|h| h.join(".docker")))
        .map(|d| d.join("config.json"));
    let Some(text) = path.and_then(|p| std::fs::read_to_string(p).ok()) else {
        return RegistryAuth::Anonymous;
    };
    parse_docker_config(&text, registry).unwrap_or(RegistryAuth::Anonymous)
}

fn parse_docker_config(text: &str, registry: &str) -> Option<RegistryAuth> {
    use base64::Engine as _;
    let config: serde_json::Value = serde_json::from_str(text).ok()?;
    let auths = config.get("auths")?.as_object()?;
    let entry = auths.iter().find_map(|(k, v)| {
        let key = k
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .trim_end_matches("/v1")
            .trim_end_matches("/v2");
        (key == registry).then_some(v)
    })?;
    let encoded = entry.get("auth")?.as_str()?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, pass) = decoded.split_once(':')?;
    Some(RegistryAuth::Basic(user.to_owned(), pass.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_are_plain_http_as_docker_treats_them() {
        let c = RegistryConfig {
            insecure: vec!["build-cache.lan:5000".into()],
        };
        assert!(c.is_insecure("127.0.0.1:5000"));
        assert!(c.is_insecure("localhost:5000"));
        assert!(c.is_insecure("[::1]:5000"));
        assert!(c.is_insecure("build-cache.lan:5000"));
        assert!(!c.is_insecure("registry.example.com"));
        assert!(!c.is_insecure("build-cache.lan:5001"));
    }

    #[test]
    fn credentials_come_from_the_docker_config_auths() {
        let config = r#"{"auths":{"https://registry.example.com/v1/":{"auth":"dXNlcjpwYXNz"}}}"#;
        match parse_docker_config(config, "registry.example.com") {
            Some(RegistryAuth::Basic(u, p)) => {
                assert_eq!((u.as_str(), p.as_str()), ("user", "pass"))
            }
            other => panic!("expected basic auth, got {other:?}"),
        }
        assert!(parse_docker_config(config, "other.example.com").is_none());
    }

    #[test]
    fn arch_tags_use_uname_names() {
        assert_eq!(
            arch_tag("1.0", &manifold_proto::Platform::linux_arm64()),
            "1.0-aarch64"
        );
        assert_eq!(
            arch_tag("1.0", &manifold_proto::Platform::linux_amd64()),
            "1.0-x86_64"
        );
    }
}
