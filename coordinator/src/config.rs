//! The coordinator's configuration, from flags (see the binary).

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::farm::FarmConfig;

/// Everything the coordinator needs to start.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address to serve gRPC on. Default 127.0.0.1:7700.
    pub listen: SocketAddr,
    /// Folder for local state: build contexts, and the embedded store. Created if missing.
    pub state_dir: PathBuf,
    /// Where builds are kept.
    pub store: StoreConfig,
    /// `registry/repository` to replicate build contexts to (for HA sets on etcd). Default: none.
    pub context_repository: Option<String>,
    /// How long an unreferenced build context is kept. Default: 24 h.
    pub context_ttl: std::time::Duration,
    /// Scheduling and registry tunables, teams included.
    pub farm: FarmConfig,
    /// TLS, or plaintext on loopback.
    pub transport: Transport,
    /// The tokens the API accepts.
    pub access: crate::access::Access,
    /// Address to serve Prometheus metrics on (`GET /metrics`). Default: none.
    pub metrics_listen: Option<SocketAddr>,
    /// Address to serve the web dashboard on (TLS when the API has TLS). Default: none.
    pub dashboard_listen: Option<SocketAddr>,
    /// Bounds on requests and uploads (the config file's `[limits]`).
    pub limits: crate::limits::Limits,
}

/// Which state store the coordinator uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum StoreConfig {
    /// redb in `<state-dir>/state.redb` (the default): one coordinator, no server needed.
    #[default]
    Embedded,
    /// etcd, with leader election between coordinators sharing the same prefix.
    Etcd {
        /// `http://host:port` of each member.
        endpoints: Vec<String>,
        /// Key prefix, e.g. `/manifold`.
        prefix: String,
        /// Leadership lease: how long a silent leader keeps its role.
        lease: std::time::Duration,
        /// Address other coordinators and clients should use to reach this one.
        advertise: String,
    },
}

/// TLS for the API: the coordinator's certificate, and the CA whose certificates identify workers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM certificate chain of the coordinator.
    pub cert: PathBuf,
    /// PEM private key of the coordinator.
    pub key: PathBuf,
    /// PEM CA certificate(s) that sign worker client certificates.
    pub client_ca: PathBuf,
}

/// How the API is served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transport {
    /// TLS; workers must present a client certificate signed by the client CA.
    Tls(TlsConfig),
    /// Plain HTTP/2, explicitly chosen (`--plaintext`), on a loopback address only; workers are
    /// identified by the name they give and own nothing.
    Plaintext,
}

/// The coordinator's config file (`--config`, TOML): teams, tokens and scheduling policy.
///
/// ```toml
/// [[team]]
/// name = "mobile"
/// weight = 2                  # share of contended slots (default 1)
/// max_concurrent_jobs = 8     # optional cap
///
/// [[token]]
/// name = "alice"
/// team = "mobile"
/// sha256 = "…"                # printed by `manifold-coordinator issue-token`
///
/// [[token]]
/// name = "ops"
/// admin = true
/// sha256 = "…"
///
/// repositories = ["registry.example.com/mobile/**"]   # where it may push (see `repo_rules`)
///
/// [[team.login]]              # optional: credentials the farm uses for this team's builds
/// registry = "registry.example.com"
/// username = "mobile-ci"
/// password_file = "/etc/manifold/mobile-registry.password"
///
/// [scheduling]
/// preemption_grace = "5m"     # off unless set
///
/// [limits]                    # each key optional; see `limits::Limits` for all and their defaults
/// max_build_args = 100
/// max_context_bytes = 4294967296
/// ```
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Teams sharing the farm.
    #[serde(default)]
    pub team: Vec<TeamEntry>,
    /// Bearer tokens, by digest.
    #[serde(default)]
    pub token: Vec<crate::access::TokenEntry>,
    /// Scheduling policy.
    #[serde(default)]
    pub scheduling: Scheduling,
    /// Bounds on requests and uploads; each key defaults (see [`crate::limits::Limits`]).
    #[serde(default)]
    pub limits: crate::limits::Limits,
}

/// A `[[team]]` entry.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamEntry {
    /// Unique name, as tokens and worker certificates name it.
    pub name: String,
    /// Share of contended slots (default 1).
    #[serde(default = "one")]
    pub weight: u32,
    /// Most jobs of the team running at once (default: no cap).
    #[serde(default)]
    pub max_concurrent_jobs: Option<u32>,
    /// `registry/repository` patterns the team may push to (see [`crate::repo_rules`]). Absent:
    /// no rule (anywhere while no team has rules; nowhere once one has).
    #[serde(default)]
    pub repositories: Option<Vec<String>>,
    /// Registry logins the farm uses for the team's builds (default: none; the farm's Docker
    /// config is used).
    #[serde(default)]
    pub login: Vec<LoginEntry>,
}

/// A `[[team.login]]` entry: credentials for one registry, the password in a file of its own.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginEntry {
    /// host[:port], as image references name it.
    pub registry: String,
    /// User name.
    pub username: String,
    /// File holding the password or access token (a trailing newline is ignored).
    pub password_file: PathBuf,
}

fn one() -> u32 {
    1
}

/// The `[scheduling]` table.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scheduling {
    /// How long an owner's job waits for its own full worker before a borrowed job there is
    /// preempted (requeued without spending an attempt), and how long borrowed jobs may stay on a
    /// worker after it stopped lending. Unset: no preemption.
    #[serde(default)]
    pub preemption_grace: Option<String>,
}

/// A config file that cannot be used; the message names the file and the bad value.
#[derive(Debug, thiserror::Error)]
#[error("config file {path}: {problem}")]
pub struct ConfigError {
    /// The file.
    pub path: String,
    /// What is wrong and how to fix it.
    pub problem: String,
}

impl FileConfig {
    /// Reads and checks the file at `path`.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.display().to_string(),
            problem: format!("cannot read it: {e}"),
        })?;
        Self::parse(&text).map_err(|problem| ConfigError {
            path: path.display().to_string(),
            problem,
        })
    }

    /// Parses and checks the text of a config file.
    pub fn parse(text: &str) -> Result<Self, String> {
        let config: Self = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut names = std::collections::BTreeSet::new();
        for t in &config.team {
            check_name("team", &t.name)?;
            if !names.insert(t.name.as_str()) {
                return Err(format!("team `{}` is declared twice", t.name));
            }
            if t.weight == 0 {
                return Err(format!(
                    "team `{}` has weight 0; weights are 1 or more",
                    t.name
                ));
            }
            for pattern in t.repositories.iter().flatten() {
                crate::repo_rules::Pattern::parse(pattern)
                    .map_err(|e| format!("team `{}`: {e}", t.name))?;
            }
            let mut registries = std::collections::BTreeSet::new();
            for login in &t.login {
                if login.registry.is_empty() || login.registry.contains('/') {
                    return Err(format!(
                        "team `{}`: login registry `{}` is not a host[:port], e.g. registry.example.com or 127.0.0.1:5000",
                        t.name, login.registry
                    ));
                }
                if !registries.insert(login.registry.as_str()) {
                    return Err(format!(
                        "team `{}` has two logins for registry `{}`; keep one",
                        t.name, login.registry
                    ));
                }
            }
            if t.max_concurrent_jobs == Some(0) {
                return Err(format!(
                    "team `{}` has max_concurrent_jobs = 0, so it could never build; remove the cap or set 1 or more",
                    t.name
                ));
            }
        }
        let mut holders = std::collections::BTreeSet::new();
        let mut digests = std::collections::BTreeSet::new();
        for t in &config.token {
            if t.name.trim().is_empty() {
                return Err("a [[token]] has an empty name".into());
            }
            if !holders.insert(t.name.as_str()) {
                return Err(format!("token name `{}` is used twice", t.name));
            }
            if t.sha256.len() != 64 || !t.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "token `{}`: sha256 must be 64 hex digits (the digest `manifold-coordinator issue-token` prints, never the token itself)",
                    t.name
                ));
            }
            if !digests.insert(t.sha256.to_ascii_lowercase()) {
                return Err(format!("token `{}` repeats another token's sha256", t.name));
            }
            match &t.team {
                Some(team) if !names.contains(team.as_str()) => {
                    return Err(format!(
                        "token `{}` names team `{team}`, which no [[team]] declares",
                        t.name
                    ));
                }
                None if !t.admin => {
                    return Err(format!(
                        "token `{}` has no team; give it `team = \"...\"` (or `admin = true`)",
                        t.name
                    ));
                }
                _ => {}
            }
        }
        config.preemption_grace()?;
        Ok(config)
    }

    /// The teams, for the scheduler.
    pub fn teams(&self) -> Vec<crate::scheduler::Team> {
        self.team
            .iter()
            .map(|t| crate::scheduler::Team {
                name: t.name.clone(),
                weight: t.weight,
                max_running: t.max_concurrent_jobs,
                // A team's login must not reach a machine another team owns.
                borrows: t.login.is_empty(),
            })
            .collect()
    }

    /// Each team's repository rules and logins, the passwords read from their files.
    pub fn repo_rules(&self) -> Result<crate::repo_rules::RepoRules, String> {
        let mut teams = std::collections::BTreeMap::new();
        for t in &self.team {
            let repositories = t
                .repositories
                .as_ref()
                .map(|r| {
                    r.iter()
                        .map(|p| crate::repo_rules::Pattern::parse(p))
                        .collect::<Result<Vec<_>, _>>()
                })
                .transpose()?;
            let logins = t
                .login
                .iter()
                .map(|l| {
                    let password = std::fs::read_to_string(&l.password_file).map_err(|e| {
                        format!(
                            "team `{}`: cannot read the password_file {} of the login for {}: {e}",
                            t.name,
                            l.password_file.display(),
                            l.registry
                        )
                    })?;
                    Ok(manifold_registry::RegistryLogin {
                        registry: l.registry.clone(),
                        username: l.username.clone(),
                        password: password.trim_end_matches(['\r', '\n']).to_owned(),
                    })
                })
                .collect::<Result<Vec<_>, String>>()?;
            teams.insert(
                t.name.clone(),
                crate::repo_rules::TeamRules {
                    repositories,
                    logins,
                },
            );
        }
        Ok(crate::repo_rules::RepoRules::new(teams))
    }

    /// The preemption grace period, if preemption is on.
    pub fn preemption_grace(&self) -> Result<Option<std::time::Duration>, String> {
        self.scheduling
            .preemption_grace
            .as_deref()
            .map(|g| parse_duration(g).map_err(|e| format!("[scheduling] preemption_grace: {e}")))
            .transpose()
    }

    /// The tokens the API accepts.
    pub fn access(&self) -> crate::access::Access {
        crate::access::Access::new(&self.token)
    }
}

/// Team names (and worker names in certificates) are short identifiers.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(format!(
            "{what} name `{name}` is not valid: use letters, digits, `-`, `_` and `.`"
        ));
    }
    Ok(())
}

/// Parses `30s`, `2m`, `500ms`, `1h` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    use std::time::Duration;
    let err = || {
        format!(
            "invalid duration `{s}`: expected a number with a unit, e.g. 30s, 2m, 500ms, 1h, 30d"
        )
    };
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, "s"), |i| s.split_at(i));
    let n: u64 = num.parse().map_err(|_| err())?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        "d" => Ok(Duration::from_secs(n * 86_400)),
        _ => Err(err()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn a_full_config_gives_teams_tokens_and_grace() {
        let text = format!(
            r#"
            [[team]]
            name = "mobile"
            weight = 2
            max_concurrent_jobs = 4
            [[team]]
            name = "platform"
            [[token]]
            name = "alice"
            team = "mobile"
            sha256 = "{DIGEST}"
            [scheduling]
            preemption_grace = "5m"
            "#
        );
        let config = FileConfig::parse(&text).unwrap();
        let teams = config.teams();
        assert_eq!(teams[0].weight, 2);
        assert_eq!(teams[0].max_running, Some(4));
        assert_eq!(teams[1].weight, 1);
        assert_eq!(teams[1].max_running, None);
        assert_eq!(
            config.preemption_grace().unwrap(),
            Some(std::time::Duration::from_secs(300))
        );
        let caller = config.access().authenticate(Some("Bearer abc")).unwrap();
        assert_eq!(
            (caller.name.as_str(), caller.team.as_str()),
            ("alice", "mobile")
        );
    }

    #[test]
    fn bad_entries_are_named() {
        let cases = [
            ("[[team]]\nname = \"a b\"", "team name `a b` is not valid"),
            (
                "[[team]]\nname = \"a\"\n[[team]]\nname = \"a\"",
                "declared twice",
            ),
            ("[[team]]\nname = \"a\"\nweight = 0", "weight 0"),
            (
                "[[token]]\nname = \"x\"\nteam = \"ghost\"\nsha256 = \"DIGEST\"",
                "team `ghost`, which no [[team]] declares",
            ),
            (
                "[[token]]\nname = \"x\"\nsha256 = \"DIGEST\"",
                "token `x` has no team",
            ),
            (
                "[[token]]\nname = \"x\"\nadmin = true\nsha256 = \"mft_secret\"",
                "64 hex digits",
            ),
            (
                "[scheduling]\npreemption_grace = \"soon\"",
                "invalid duration `soon`",
            ),
            ("[[teams]]\nname = \"a\"", "unknown field `teams`"),
            (
                "[[team]]\nname = \"a\"\nrepositories = [\"r.example\"]",
                "team `a`: repository rule `r.example` names no registry and repository",
            ),
            (
                "[[team]]\nname = \"a\"\n[[team.login]]\nregistry = \"r.example/x\"\nusername = \"u\"\npassword_file = \"/p\"",
                "login registry `r.example/x` is not a host[:port]",
            ),
        ];
        for (text, expected) in cases {
            let err = FileConfig::parse(&text.replace("DIGEST", DIGEST)).unwrap_err();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }

    #[test]
    fn repository_rules_and_logins_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let password = dir.path().join("a.password");
        std::fs::write(&password, "s3cret\n").unwrap();
        let text = format!(
            r#"
            [[team]]
            name = "a"
            repositories = ["r.example/a/**"]
            [[team.login]]
            registry = "r.example"
            username = "ci"
            password_file = "{}"
            [[team]]
            name = "b"
            "#,
            password.display()
        );
        let rules = FileConfig::parse(&text).unwrap().repo_rules().unwrap();
        assert!(rules.is_enforced());
        assert_eq!(rules.patterns("a"), ["r.example/a/**"]);
        assert!(rules.patterns("b").is_empty());
        assert_eq!(rules.login_registries("a"), ["r.example"]);

        let missing = text.replace("a.password", "gone.password");
        let err = FileConfig::parse(&missing)
            .unwrap()
            .repo_rules()
            .unwrap_err();
        assert!(err.contains("cannot read the password_file"), "{err}");
        assert!(err.contains("gone.password"), "{err}");
    }

    #[test]
    fn an_empty_file_is_an_open_farm_without_teams() {
        let config = FileConfig::parse("").unwrap();
        assert!(config.teams().is_empty());
        assert!(config.access().is_open());
        assert_eq!(config.preemption_grace().unwrap(), None);
    }
}
