//! The worker's one typed configuration, and the defaults it takes from the environment.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use manifold_proto::Platform;

/// Environment variable naming the coordinator URL (the `--coordinator` flag wins over it).
pub const ENV_COORDINATOR: &str = "MANIFOLD_COORDINATOR";
/// Environment variable naming the Docker daemon, as the docker CLI reads it.
pub const ENV_DOCKER_HOST: &str = "DOCKER_HOST";
/// Environment variable naming the folder of the Docker config file (registry credentials).
pub const ENV_DOCKER_CONFIG: &str = "DOCKER_CONFIG";
/// Environment variable naming the CA certificate (PEM) trusted for an https:// coordinator's server
/// certificate (the `--ca-cert` flag wins over it).
pub const ENV_CA_CERT: &str = "MANIFOLD_CA_CERT";
/// Environment variable naming the worker's client certificate (PEM) (the `--cert` flag wins over it).
pub const ENV_WORKER_CERT: &str = "MANIFOLD_WORKER_CERT";
/// Environment variable naming the private key (PEM) of the worker's client certificate (the `--key`
/// flag wins over it).
pub const ENV_WORKER_KEY: &str = "MANIFOLD_WORKER_KEY";
/// The Docker daemon used when neither `--docker-host` nor `DOCKER_HOST` is set.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";

/// How a graphdriver engine's image reaches the registry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum GraphdriverPush {
    /// The daemon pushes to the worker's loopback front ([`crate::push_proxy`]), which sends only
    /// what the registry lacks to the target repository by digest; falls back to `save` when the
    /// daemon cannot reach the worker's loopback (a daemon on another machine or in a VM).
    #[default]
    Daemon,
    /// The worker exports the image (`docker save`) and pushes the layers the registry lacks
    /// itself ([`crate::push`]).
    Save,
}

/// Everything a worker needs to serve; build it with [`Config::from_env`] and override fields.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// URL of the coordinator's gRPC endpoint. Default: `MANIFOLD_COORDINATOR`, else
    /// [`manifold_proto::DEFAULT_COORDINATOR`].
    pub coordinator: String,
    /// The Docker daemon this worker drives (`unix://...`, `tcp://...`). Default: `DOCKER_HOST`,
    /// else [`DEFAULT_DOCKER_HOST`].
    pub docker_host: String,
    /// Forces the platform announced to the coordinator (the daemon then builds under emulation).
    /// Default: `None`, the platform the daemon reports.
    pub platform: Option<Platform>,
    /// How many jobs run at once. Default: 1.
    pub slots: u32,
    /// Name shown by `manifold workers`, unique in the farm. Default: the host name.
    pub name: String,
    /// Free-form labels announced in the hello. Default: none.
    pub labels: BTreeMap<String, String>,
    /// Where build contexts and temporary layer files live. Default: `<user cache dir>/manifold-worker`.
    pub cache_dir: PathBuf,
    /// Docker config file read for registry credentials. Default: `$DOCKER_CONFIG/config.json`,
    /// else `~/.docker/config.json`.
    pub docker_config: Option<PathBuf>,
    /// First delay before reconnecting to a coordinator that went away; it doubles up to
    /// `reconnect_max`. Default: 500 ms.
    pub reconnect_initial: Duration,
    /// Longest delay between two reconnection attempts. Default: 2 s.
    pub reconnect_max: Duration,
    /// How often the worker checks that its Docker daemon answers; while it does not, the worker
    /// reports itself unhealthy and gets no job. A failed job checks at once. Default: 5 s.
    pub health_interval: Duration,
    /// Free bytes the cache dir's file system must keep; below them the worker reports itself
    /// unhealthy and takes no job. Default 0 (off).
    pub min_free_disk: u64,
    /// Most bytes of build contexts kept in the cache dir beyond those running jobs hold; the
    /// least recently used go first. Default: [`crate::context_cache::DEFAULT_MAX_BYTES`] (10 GiB).
    pub context_cache_max_size: u64,
    /// How a graphdriver engine's image reaches the registry (`--graphdriver-push`). Default:
    /// [`GraphdriverPush::Daemon`].
    pub graphdriver_push: GraphdriverPush,
    /// How much BuildKit cache the engine keeps (`--cache-max-size`, `--cache-max-age`), pruned
    /// after jobs and on a timer. Default: no limit.
    pub cache_policy: crate::buildkit::prune::CachePolicy,
    /// Whether other teams' jobs may run here (the owner team's always may). Default: always.
    pub lend: crate::lending::LendPolicy,
    /// A daily window in local time outside which the worker does not lend (`--lend-hours`).
    /// Default: none, any hour.
    pub lend_hours: Option<crate::lending::LendHours>,
    /// How often a `--lend when` command is run. Default: 30 s.
    pub lend_check_interval: Duration,
    /// CA certificate (PEM) trusted for an https:// coordinator's server certificate. Default:
    /// `MANIFOLD_CA_CERT`, else `None`: the system's root certificates.
    pub ca_cert: Option<PathBuf>,
    /// The client certificate presented to an https:// coordinator, which checks that it names this
    /// worker. Default: `MANIFOLD_WORKER_CERT` and `MANIFOLD_WORKER_KEY` when both are set, else `None`.
    pub identity: Option<ClientIdentity>,
}

/// A worker's client certificate and its private key, as PEM files; the certificate's subject CN
/// must be the worker's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The certificate (`--cert`), e.g. `worker-arm64-1.pem`.
    pub cert: PathBuf,
    /// Its private key (`--key`), e.g. `worker-arm64-1.key`.
    pub key: PathBuf,
}

/// Only one half of a client identity was given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// `--cert` without `--key`.
    #[error(
        "--cert {} given without --key: pass the private key issued with that certificate, e.g. --key worker-NAME.key (or set MANIFOLD_WORKER_KEY)", .0.display()
    )]
    MissingKey(PathBuf),
    /// `--key` without `--cert`.
    #[error(
        "--key {} given without --cert: pass the certificate issued with that key, e.g. --cert worker-NAME.pem (or set MANIFOLD_WORKER_CERT)", .0.display()
    )]
    MissingCert(PathBuf),
}

impl ClientIdentity {
    /// Pairs `--cert` and `--key`: both make an identity, neither makes none, one alone is an error
    /// naming the missing flag. Empty paths count as not given.
    pub fn from_flags(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
    ) -> Result<Option<Self>, IdentityError> {
        let given = |p: Option<PathBuf>| p.filter(|p| !p.as_os_str().is_empty());
        match (given(cert), given(key)) {
            (Some(cert), Some(key)) => Ok(Some(Self { cert, key })),
            (None, None) => Ok(None),
            (Some(cert), None) => Err(IdentityError::MissingKey(cert)),
            (None, Some(key)) => Err(IdentityError::MissingCert(key)),
        }
    }
}

impl Config {
    /// The defaults, with the environment variables above applied.
    pub fn from_env() -> Self {
        Self {
            coordinator: std::env::var(ENV_COORDINATOR)
                .ok()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| manifold_proto::DEFAULT_COORDINATOR.to_owned()),
            docker_host: default_docker_host(),
            platform: None,
            slots: 1,
            name: default_name(),
            labels: BTreeMap::new(),
            cache_dir: default_cache_dir(),
            docker_config: default_docker_config(),
            reconnect_initial: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(2),
            health_interval: Duration::from_secs(5),
            min_free_disk: 0,
            context_cache_max_size: crate::context_cache::DEFAULT_MAX_BYTES,
            graphdriver_push: GraphdriverPush::Daemon,
            cache_policy: Default::default(),
            lend: crate::lending::LendPolicy::Always,
            lend_hours: None,
            lend_check_interval: Duration::from_secs(30),
            ca_cert: env_path(ENV_CA_CERT),
            identity: ClientIdentity::from_flags(
                env_path(ENV_WORKER_CERT),
                env_path(ENV_WORKER_KEY),
            )
            .ok()
            .flatten(),
        }
    }
}

/// A path from the environment, unless unset or empty.
fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
}

/// `DOCKER_HOST` when set, else [`DEFAULT_DOCKER_HOST`].
pub fn default_docker_host() -> String {
    std::env::var(ENV_DOCKER_HOST)
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_DOCKER_HOST.to_owned())
}

/// The host name, or `manifold-worker` when it cannot be read.
pub fn default_name() -> String {
    let name = gethostname::gethostname()
        .to_string_lossy()
        .trim()
        .to_owned();
    if name.is_empty() {
        "manifold-worker".to_owned()
    } else {
        name
    }
}

/// `<user cache dir>/manifold-worker`, or a folder under the system temp dir without a home.
pub fn default_cache_dir() -> PathBuf {
    dirs::cache_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("manifold-worker")
}

/// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`; `None` without a home directory.
pub fn default_docker_config() -> Option<PathBuf> {
    match std::env::var_os(ENV_DOCKER_CONFIG).filter(|s| !s.is_empty()) {
        Some(dir) => Some(PathBuf::from(dir).join("config.json")),
        None => dirs::home_dir().map(|home| home.join(".docker").join("config.json")),
    }
}

/// Parses a duration flag: a number and a unit (`ms`, `s`, `m`, `h`), e.g. `500ms`, `10s`, `2m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let err =
        || format!("invalid duration `{text}`: expected a number with a unit, e.g. 500ms, 10s, 2m");
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
    let n: u64 = text[..split].parse().map_err(|_| err())?;
    let d = match &text[split..] {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(err()),
    };
    if d.is_zero() {
        return Err(format!(
            "invalid duration `{text}`: it must be longer than 0"
        ));
    }
    Ok(d)
}

/// A `--label` value that is not `KEY=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad label `{0}`: expected KEY=VALUE with a non-empty key, e.g. --label team=web")]
pub struct LabelError(pub String);

/// Parses one `KEY=VALUE` label.
pub fn parse_label(input: &str) -> Result<(String, String), LabelError> {
    match input.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(LabelError(input.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_have_a_unit() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        for bad in ["10", "s", "0s", "1d", ""] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains(&format!("`{bad}`")), "{err}");
        }
    }

    #[test]
    fn a_client_certificate_comes_with_its_key() {
        let path = |p: &str| Some(PathBuf::from(p));
        assert_eq!(
            ClientIdentity::from_flags(path("w.pem"), path("w.key")).unwrap(),
            Some(ClientIdentity {
                cert: "w.pem".into(),
                key: "w.key".into()
            })
        );
        assert_eq!(ClientIdentity::from_flags(None, None).unwrap(), None);
        assert_eq!(
            ClientIdentity::from_flags(path(""), path("")).unwrap(),
            None
        );
        let err = ClientIdentity::from_flags(path("w.pem"), None)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("--cert w.pem given without --key"), "{err}");
        let err = ClientIdentity::from_flags(path(""), path("w.key"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("--key w.key given without --cert"), "{err}");
    }

    #[test]
    fn labels_are_key_value_pairs() {
        assert_eq!(
            parse_label("team=web").unwrap(),
            ("team".into(), "web".into())
        );
        assert_eq!(parse_label("k=").unwrap(), ("k".into(), "".into()));
        assert_eq!(parse_label("k=a=b").unwrap(), ("k".into(), "a=b".into()));
        for bad in ["novalue", "=v", ""] {
            let err = parse_label(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("`{bad}`")), "{err}");
        }
    }
}
