//! Registry credentials as the docker CLI keeps them, so `docker login` is all a user does:
//! the Docker config file (`$DOCKER_CONFIG/config.json`, default `~/.docker/config.json`) with its
//! `auths` entries, `credsStore` (one credential helper for every registry) and `credHelpers` (a
//! helper per registry). A helper is the program `docker-credential-<name>`, run as
//! `docker-credential-<name> get` with the registry's server URL on stdin; it prints
//! `{"Username": ..., "Secret": ...}`.
//!
//! Lookup order, as Docker's: `credHelpers.<registry>`, then `credsStore`, then `auths.<registry>`
//! (which is also used when a helper has nothing for the registry). What was used is kept in a
//! [`CredentialOrigin`] so that a refusal (401/403) can say what was tried; secrets are never
//! printed.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;

/// Environment variable naming the folder of the Docker config file, as for the docker CLI.
pub const DOCKER_CONFIG_ENV: &str = "DOCKER_CONFIG";

/// Docker Hub's key in the config file and for credential helpers.
const DOCKER_HUB_SERVER: &str = "https://index.docker.io/v1/";

/// A Docker config file or credential helper that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The config file exists but cannot be read.
    #[error("cannot read the docker config {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The config file is not the JSON the docker CLI writes.
    #[error("the docker config {path} is not valid JSON: {message}; fix or remove it")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// An `auth` entry is not base64 of `user:password`.
    #[error(
        "the docker config {path} has a bad `auth` entry for `{registry}`: expected base64 of user:password; run `docker login {registry}` again"
    )]
    BadAuth {
        /// The config file.
        path: PathBuf,
        /// The registry key of the entry.
        registry: String,
    },
    /// The configured helper is not on PATH.
    #[error(
        "credential helper `{program}` (from {setting} in {path}) is not on PATH: install it, or remove {setting} from the docker config"
    )]
    HelperMissing {
        /// `docker-credential-<name>`.
        program: String,
        /// `credsStore` or `credHelpers.<registry>`.
        setting: String,
        /// The config file.
        path: PathBuf,
    },
    /// The helper failed for another reason than "not found".
    #[error("credential helper `{program}` failed for {registry}: {message}")]
    HelperFailed {
        /// `docker-credential-<name>`.
        program: String,
        /// The registry asked about.
        registry: String,
        /// Its output, or why it could not run.
        message: String,
    },
}

/// Where the credentials for a registry came from, for messages. Holds no secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialOrigin {
    /// None found: the registry is accessed anonymously.
    Anonymous {
        /// The config file looked at, if there is one.
        config: Option<PathBuf>,
    },
    /// An `auths` entry of the config file.
    ConfigFile {
        /// The config file.
        path: PathBuf,
        /// The user name (or `<token>` for a registry token).
        username: String,
    },
    /// A credential helper.
    Helper {
        /// `docker-credential-<name>`.
        program: String,
        /// The user name it gave.
        username: String,
    },
    /// A `[[team.login]]` of the coordinator's config, for the build's team.
    Farm {
        /// The user name.
        username: String,
    },
}

impl fmt::Display for CredentialOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialOrigin::Anonymous { config: Some(path) } => write!(
                f,
                "no credentials (anonymous; {} has none for this registry)",
                path.display()
            ),
            CredentialOrigin::Anonymous { config: None } => {
                write!(f, "no credentials (anonymous; no docker config file)")
            }
            CredentialOrigin::ConfigFile { path, username } => {
                write!(f, "user `{username}` from {}", path.display())
            }
            CredentialOrigin::Helper { program, username } => {
                write!(f, "user `{username}` from credential helper {program}")
            }
            CredentialOrigin::Farm { username } => write!(
                f,
                "user `{username}`, the login the coordinator holds for the build's team"
            ),
        }
    }
}

/// Credentials for one registry and where they came from. Its `Debug` hides the secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// What oci-client sends.
    pub auth: RegistryAuth,
    /// Where it came from.
    pub origin: CredentialOrigin,
}

impl Credentials {
    /// Anonymous access.
    pub fn anonymous(config: Option<PathBuf>) -> Self {
        Self {
            auth: RegistryAuth::Anonymous,
            origin: CredentialOrigin::Anonymous { config },
        }
    }
}

/// Credentials for one registry that the coordinator holds for a team (its config's
/// `[[team.login]]`) and hands to the worker with each of that team's jobs, in memory only. Its
/// `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryLogin {
    /// host[:port], as image references name it.
    pub registry: String,
    /// User name.
    pub username: String,
    /// Password or access token.
    pub password: String,
}

impl fmt::Debug for RegistryLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryLogin")
            .field("registry", &self.registry)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl RegistryLogin {
    /// What oci-client sends, and where it came from.
    pub fn credentials(&self) -> Credentials {
        Credentials {
            auth: RegistryAuth::Basic(self.username.clone(), self.password.clone()),
            origin: CredentialOrigin::Farm {
                username: self.username.clone(),
            },
        }
    }

    /// The login of `logins` for `registry` (host[:port]; Docker Hub under any of its names).
    pub fn find<'a>(logins: &'a [RegistryLogin], registry: &str) -> Option<&'a RegistryLogin> {
        let hub = |r: &str| {
            matches!(
                r,
                "docker.io" | "index.docker.io" | "registry-1.docker.io" | DOCKER_HUB_SERVER
            )
        };
        logins
            .iter()
            .find(|l| l.registry == registry || (hub(&l.registry) && hub(registry)))
    }
}

/// The parts of a Docker config file that hold credentials, plus where helpers are looked for.
#[derive(Clone, Debug, Default)]
pub struct DockerConfig {
    path: Option<PathBuf>,
    auths: BTreeMap<String, AuthEntry>,
    creds_store: Option<String>,
    cred_helpers: BTreeMap<String, String>,
    search_path: Option<OsString>,
}

#[derive(Clone, Default, serde::Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default, rename = "registrytoken")]
    registry_token: Option<String>,
}

impl fmt::Debug for AuthEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthEntry(<redacted>)")
    }
}

#[derive(serde::Deserialize)]
struct ConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
}

#[derive(serde::Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

impl DockerConfig {
    /// Where the docker CLI keeps its config: `$DOCKER_CONFIG/config.json`, else
    /// `~/.docker/config.json`.
    pub fn default_path() -> Option<PathBuf> {
        std::env::var_os(DOCKER_CONFIG_ENV)
            .map(PathBuf::from)
            .or_else(|| dirs::home_dir().map(|h| h.join(".docker")))
            .map(|d| d.join("config.json"))
    }

    /// Reads the config at [`DockerConfig::default_path`]; a missing file is an empty config.
    pub fn load() -> Result<Self, AuthError> {
        match Self::default_path() {
            Some(path) => Self::load_from(&path),
            None => Ok(Self::default()),
        }
    }

    /// Reads the config file at `path`; a missing file is an empty config.
    pub fn load_from(path: &Path) -> Result<Self, AuthError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_json(path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(AuthError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Parses the text of the config file at `path`.
    pub fn from_json(path: &Path, text: &str) -> Result<Self, AuthError> {
        let file: ConfigFile = serde_json::from_str(text).map_err(|e| AuthError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        Ok(Self {
            path: Some(path.to_owned()),
            auths: file.auths,
            creds_store: file.creds_store.filter(|s| !s.is_empty()),
            cred_helpers: file.cred_helpers,
            search_path: None,
        })
    }

    /// Looks for credential helpers in `path` (a PATH-like list) instead of the process's PATH.
    pub fn with_search_path(mut self, path: impl Into<OsString>) -> Self {
        self.search_path = Some(path.into());
        self
    }

    /// The config file this came from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The credentials for `registry` (host[:port], as in an image reference). Runs a credential
    /// helper when one is configured; blocks while it runs.
    pub fn credentials(&self, registry: &str) -> Result<Credentials, AuthError> {
        let registry = canonical_registry(registry);
        let helper = self
            .cred_helpers
            .iter()
            .find(|(k, _)| canonical_registry(k) == registry)
            .map(|(k, name)| (name.clone(), format!("credHelpers.{k}")))
            .or_else(|| {
                self.creds_store
                    .clone()
                    .map(|name| (name, "credsStore".to_owned()))
            });
        if let Some((name, setting)) = helper {
            let program = format!("docker-credential-{name}");
            if let Some((username, secret)) = self.ask_helper(&program, &setting, &registry)? {
                let auth = if username == "<token>" {
                    RegistryAuth::Bearer(secret)
                } else {
                    RegistryAuth::Basic(username.clone(), secret)
                };
                return Ok(Credentials {
                    auth,
                    origin: CredentialOrigin::Helper { program, username },
                });
            }
        }
        self.lookup_auths(&registry)
    }

    fn lookup_auths(&self, registry: &str) -> Result<Credentials, AuthError> {
        let Some(path) = self.path.clone() else {
            return Ok(Credentials::anonymous(None));
        };
        let Some((key, entry)) = self
            .auths
            .iter()
            .find(|(k, _)| canonical_registry(k) == registry)
        else {
            return Ok(Credentials::anonymous(Some(path)));
        };
        let bad = || AuthError::BadAuth {
            path: path.clone(),
            registry: key.clone(),
        };
        if let Some(encoded) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map_err(|_| bad())?;
            let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
            let (user, pass) = decoded.split_once(':').ok_or_else(bad)?;
            return Ok(Credentials {
                auth: RegistryAuth::Basic(user.to_owned(), pass.to_owned()),
                origin: CredentialOrigin::ConfigFile {
                    path,
                    username: user.to_owned(),
                },
            });
        }
        if let (Some(user), Some(pass)) = (&entry.username, &entry.password) {
            return Ok(Credentials {
                auth: RegistryAuth::Basic(user.clone(), pass.clone()),
                origin: CredentialOrigin::ConfigFile {
                    path,
                    username: user.clone(),
                },
            });
        }
        if let Some(token) = entry.registry_token.as_deref().filter(|t| !t.is_empty()) {
            return Ok(Credentials {
                auth: RegistryAuth::Bearer(token.to_owned()),
                origin: CredentialOrigin::ConfigFile {
                    path,
                    username: "<token>".to_owned(),
                },
            });
        }
        Ok(Credentials::anonymous(Some(path)))
    }

    /// Runs `program get`; `None` when the helper has no credentials for the registry.
    fn ask_helper(
        &self,
        program: &str,
        setting: &str,
        registry: &str,
    ) -> Result<Option<(String, String)>, AuthError> {
        let search_path = self
            .search_path
            .clone()
            .or_else(|| std::env::var_os("PATH"))
            .unwrap_or_default();
        let Some(executable) = find_program(program, &search_path) else {
            return Err(AuthError::HelperMissing {
                program: program.to_owned(),
                setting: setting.to_owned(),
                path: self.path.clone().unwrap_or_default(),
            });
        };
        let failed = |message: String| AuthError::HelperFailed {
            program: program.to_owned(),
            registry: registry.to_owned(),
            message,
        };
        let server = helper_server_url(registry);
        let key = (executable.clone(), server.clone());
        if let Some(answer) = helper_answers::get(&key) {
            return Ok(answer);
        }
        let mut child = Command::new(&executable)
            .arg("get")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| failed(format!("cannot run {}: {e}", executable.display())))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A helper that exits without reading its input is judged by its exit status below.
            let _ = stdin.write_all(server.as_bytes());
        }
        let out = child
            .wait_with_output()
            .map_err(|e| failed(format!("cannot run {}: {e}", executable.display())))?;
        let answer =
            parse_helper_output(out.status.success(), &out.stdout, &out.stderr).map_err(failed)?;
        helper_answers::put(key, answer.clone());
        Ok(answer)
    }
}

/// Credential helpers' answers, kept for [`helper_answers::FRESH`]. The coordinator checks each
/// worker's image and pushes each list with a session of its own, and the worker each push: with a
/// `credsStore` or `credHelpers` entry, each would run the helper (a process, and for the cloud
/// registries' helpers a call to the cloud's API) every time. Failures are not kept: the next
/// session asks again.
mod helper_answers {
    use std::collections::HashMap;
    use std::path::PathBuf;
    use std::sync::{LazyLock, Mutex};
    use std::time::{Duration, Instant};

    /// How long an answer is reused: well inside the shortest token lifetimes (ECR's 12 h, GCR's
    /// 1 h), short enough that a rotated login is seen within a minute.
    pub(super) const FRESH: Duration = Duration::from_secs(30);

    /// (helper executable, server URL asked) -> (username, secret) or none, and when.
    type Key = (PathBuf, String);
    type Answer = Option<(String, String)>;
    static ANSWERS: LazyLock<Mutex<HashMap<Key, (Answer, Instant)>>> =
        LazyLock::new(Default::default);

    fn answers() -> std::sync::MutexGuard<'static, HashMap<Key, (Answer, Instant)>> {
        ANSWERS.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn get(key: &Key) -> Option<Answer> {
        answers()
            .get(key)
            .filter(|(_, at)| at.elapsed() < FRESH)
            .map(|(a, _)| a.clone())
    }

    pub(super) fn put(key: Key, answer: Answer) {
        let mut answers = answers();
        if answers.len() >= 256 {
            answers.clear();
        }
        answers.insert(key, (answer, Instant::now()));
    }
}

/// Interprets what `docker-credential-<name> get` printed: `Ok(None)` for "credentials not
/// found", `Ok(Some((user, secret)))` for an answer, `Err(message)` otherwise (never holding
/// the secret).
pub fn parse_helper_output(
    success: bool,
    stdout: &[u8],
    stderr: &[u8],
) -> Result<Option<(String, String)>, String> {
    let out = String::from_utf8_lossy(stdout);
    if !success {
        let said = format!("{} {}", out.trim(), String::from_utf8_lossy(stderr).trim());
        let said = said.trim();
        if said.to_ascii_lowercase().contains("credentials not found") {
            return Ok(None);
        }
        return Err(if said.is_empty() {
            "it exited with an error and said nothing".to_owned()
        } else {
            said.to_owned()
        });
    }
    let answer: HelperAnswer = serde_json::from_str(out.trim()).map_err(|_| {
        "it printed something other than {\"Username\": ..., \"Secret\": ...}".to_owned()
    })?;
    if answer.secret.is_empty() {
        return Ok(None);
    }
    Ok(Some((answer.username, answer.secret)))
}

/// The server URL a helper is asked about: Docker Hub's historical URL for Docker Hub, the
/// host[:port] otherwise (what `docker login` stores).
fn helper_server_url(registry: &str) -> String {
    if registry == "index.docker.io" {
        DOCKER_HUB_SERVER.to_owned()
    } else {
        registry.to_owned()
    }
}

/// A registry key of the config file (`https://host/v1/`, `host`, `http://host:5000`) or a
/// reference's registry, reduced to host[:port], with Docker Hub's names made one.
fn canonical_registry(key: &str) -> String {
    let key = key
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = key.split('/').next().unwrap_or(key).to_ascii_lowercase();
    match host.as_str() {
        "docker.io" | "registry-1.docker.io" | "index.docker.io" => "index.docker.io".to_owned(),
        _ => host,
    }
}

fn find_program(name: &str, search_path: &std::ffi::OsStr) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    std::env::split_paths(search_path)
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Credentials for `registry` from the Docker config, anonymous when there are none or the config
/// cannot be used (the problem is logged). Prefer [`DockerConfig::credentials`], which reports it.
pub fn credentials_for(registry: &str) -> RegistryAuth {
    match DockerConfig::load().and_then(|c| c.credentials(registry)) {
        Ok(c) => c.auth,
        Err(e) => {
            tracing::warn!(registry, error = %e, "using no credentials");
            RegistryAuth::Anonymous
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> DockerConfig {
        DockerConfig::from_json(Path::new("/cfg/config.json"), json).unwrap()
    }

    #[track_caller]
    fn check(json: &str, registry: &str, expected_auth: RegistryAuth, expected_origin: &str) {
        let c = config(json).with_search_path("");
        let got = c.credentials(registry).unwrap();
        assert_eq!(got.auth, expected_auth, "{json} {registry}");
        assert_eq!(got.origin.to_string(), expected_origin, "{json} {registry}");
    }

    fn basic(u: &str, p: &str) -> RegistryAuth {
        RegistryAuth::Basic(u.into(), p.into())
    }

    #[test]
    fn auths_entries_in_every_spelling_docker_writes() {
        let from_file = "user `user` from /cfg/config.json";
        // dXNlcjpwYXNz = user:pass
        check(
            r#"{"auths":{"https://registry.example.com/v1/":{"auth":"dXNlcjpwYXNz"}}}"#,
            "registry.example.com",
            basic("user", "pass"),
            from_file,
        );
        check(
            r#"{"auths":{"127.0.0.1:5001":{"auth":"dXNlcjpwYXNz"}}}"#,
            "127.0.0.1:5001",
            basic("user", "pass"),
            from_file,
        );
        check(
            r#"{"auths":{"http://127.0.0.1:5001":{"username":"user","password":"pass"}}}"#,
            "127.0.0.1:5001",
            basic("user", "pass"),
            from_file,
        );
        check(
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"dXNlcjpwYXNz"}}}"#,
            "docker.io",
            basic("user", "pass"),
            from_file,
        );
        check(
            r#"{"auths":{"other.example.com":{"auth":"dXNlcjpwYXNz"}}}"#,
            "registry.example.com",
            RegistryAuth::Anonymous,
            "no credentials (anonymous; /cfg/config.json has none for this registry)",
        );
        check(
            r#"{"auths":{"registry.example.com":{}}}"#,
            "registry.example.com",
            RegistryAuth::Anonymous,
            "no credentials (anonymous; /cfg/config.json has none for this registry)",
        );
    }

    #[test]
    fn bad_config_files_name_the_file_and_the_fix() {
        let err = DockerConfig::from_json(Path::new("/cfg/config.json"), "{nope").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("the docker config /cfg/config.json is not valid JSON"),
            "{err}"
        );
        let c = config(r#"{"auths":{"reg.example.com":{"auth":"!!!"}}}"#);
        assert_eq!(
            c.credentials("reg.example.com").unwrap_err().to_string(),
            "the docker config /cfg/config.json has a bad `auth` entry for `reg.example.com`: \
             expected base64 of user:password; run `docker login reg.example.com` again"
        );
        let missing = DockerConfig::load_from(Path::new("/nonexistent/config.json")).unwrap();
        assert_eq!(
            missing.credentials("reg.example.com").unwrap(),
            Credentials::anonymous(None)
        );
    }

    #[test]
    fn helper_output_is_parsed_without_leaking_the_secret() {
        let ok = |out: &str| parse_helper_output(true, out.as_bytes(), b"");
        assert_eq!(
            ok(r#"{"ServerURL":"reg","Username":"bob","Secret":"s3cret"}"#),
            Ok(Some(("bob".into(), "s3cret".into())))
        );
        assert_eq!(ok(r#"{"Username":"","Secret":""}"#), Ok(None));
        let garbage = ok("Secret=s3cret").unwrap_err();
        assert!(!garbage.contains("s3cret"), "{garbage}");
        assert_eq!(
            parse_helper_output(false, b"credentials not found in native keychain\n", b""),
            Ok(None)
        );
        assert_eq!(
            parse_helper_output(false, b"", b"keychain locked\n"),
            Err("keychain locked".to_owned())
        );
    }

    /// A fake `docker-credential-<name>` in a temporary folder used as PATH: it records the server
    /// URL it was asked about and answers for one registry only.
    fn fake_helper(name: &str, registry: &str) -> tempfile::TempDir {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join(format!("docker-credential-{name}"));
        let log = dir.path().join("asked");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\n[ \"$1\" = get ] || exit 3\nread -r server || true\n\
                 printf '%s' \"$server\" > '{log}'\n\
                 if [ \"$server\" = '{registry}' ]; then\n\
                 printf '{{\"ServerURL\":\"%s\",\"Username\":\"helper-user\",\"Secret\":\"helper-pass\"}}' \"$server\"\n\
                 else echo 'credentials not found in native keychain'; exit 1; fi\n",
                log = log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    #[test]
    fn creds_store_runs_the_helper_with_the_server_on_stdin() {
        let dir = fake_helper("fake", "127.0.0.1:5001");
        let c =
            config(r#"{"credsStore":"fake","auths":{"127.0.0.1:5002":{"auth":"dXNlcjpwYXNz"}}}"#)
                .with_search_path(dir.path());
        let got = c.credentials("127.0.0.1:5001").unwrap();
        assert_eq!(got.auth, basic("helper-user", "helper-pass"));
        assert_eq!(
            got.origin.to_string(),
            "user `helper-user` from credential helper docker-credential-fake"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("asked")).unwrap(),
            "127.0.0.1:5001"
        );
        // The helper has nothing for this one: the inline entry is used.
        let got = c.credentials("127.0.0.1:5002").unwrap();
        assert_eq!(got.auth, basic("user", "pass"));
        // Nothing anywhere: anonymous.
        let got = c.credentials("127.0.0.1:5003").unwrap();
        assert_eq!(got.auth, RegistryAuth::Anonymous);
    }

    #[test]
    fn cred_helpers_take_precedence_per_registry_and_docker_hub_uses_its_url() {
        let dir = fake_helper("hub", DOCKER_HUB_SERVER);
        let c = config(r#"{"credsStore":"absent","credHelpers":{"docker.io":"hub"}}"#)
            .with_search_path(dir.path());
        let got = c.credentials("docker.io").unwrap();
        assert_eq!(got.auth, basic("helper-user", "helper-pass"));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("asked")).unwrap(),
            DOCKER_HUB_SERVER
        );
        // Other registries fall to credsStore, whose helper is not installed.
        assert_eq!(
            c.credentials("reg.example.com").unwrap_err().to_string(),
            "credential helper `docker-credential-absent` (from credsStore in /cfg/config.json) \
             is not on PATH: install it, or remove credsStore from the docker config"
        );
    }

    #[test]
    fn a_failing_helper_is_named() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("docker-credential-broken");
        std::fs::write(
            &script,
            "#!/bin/sh\necho 'keychain is locked' >&2\nexit 1\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let c = config(r#"{"credsStore":"broken"}"#).with_search_path(dir.path());
        assert_eq!(
            c.credentials("reg.example.com").unwrap_err().to_string(),
            "credential helper `docker-credential-broken` failed for reg.example.com: keychain is locked"
        );
    }

    #[test]
    fn a_helpers_answer_is_reused_for_a_while_and_a_failure_is_not() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let runs = dir.path().join("runs");
        let script = dir.path().join("docker-credential-counting");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nread -r server || true\necho run >> '{runs}'\n\
                 if [ \"$server\" = ok.example.com ]; then\n\
                 printf '{{\"Username\":\"u\",\"Secret\":\"s\"}}'\n\
                 elif [ \"$server\" = fail.example.com ]; then echo 'keychain is locked' >&2; exit 1\n\
                 else echo 'credentials not found in native keychain'; exit 1; fi\n",
                runs = runs.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let c = config(r#"{"credsStore":"counting"}"#).with_search_path(dir.path());
        let count = || {
            std::fs::read_to_string(&runs)
                .unwrap_or_default()
                .lines()
                .count()
        };
        for _ in 0..3 {
            assert_eq!(
                c.credentials("ok.example.com").unwrap().auth,
                basic("u", "s")
            );
        }
        assert_eq!(count(), 1, "asked once within {:?}", helper_answers::FRESH);
        // "Not found" is an answer too (anonymous access), and is reused the same way.
        for _ in 0..2 {
            let none = c.credentials("other.example.com").unwrap();
            assert_eq!(none.auth, RegistryAuth::Anonymous);
        }
        assert_eq!(count(), 2);
        // A failure is not kept: each session asks again.
        for _ in 0..2 {
            assert!(c.credentials("fail.example.com").is_err());
        }
        assert_eq!(count(), 4);
    }
}
