//! Registry credentials, read from the Docker config file the docker CLI writes on `docker login`
//! (`auths.<registry>.auth`, base64 of `user:password`).
//!
//! Credentials are never logged: [`Credentials`] prints its user name only.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;

/// A user name and password for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password or token; never printed.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// A Docker config file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The file exists but cannot be read.
    #[error("cannot read the docker config {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not the JSON the docker CLI writes.
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
}

#[derive(serde::Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: std::collections::HashMap<String, AuthEntry>,
}

#[derive(serde::Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// The credentials for `registry` (e.g. `127.0.0.1:5000`, `docker.io`) in the Docker config file at
/// `path`; `None` when the file is absent or has no entry for it.
pub fn lookup(
    path: Option<&Path>,
    registry: &str,
) -> Result<Option<Credentials>, CredentialsError> {
    let Some(path) = path else { return Ok(None) };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CredentialsError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    parse(&text, path, registry)
}

/// Finds `registry`'s credentials in the text of a Docker config file (`path` names it in errors).
pub fn parse(
    text: &str,
    path: &Path,
    registry: &str,
) -> Result<Option<Credentials>, CredentialsError> {
    let config: DockerConfig = serde_json::from_str(text).map_err(|e| CredentialsError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let wanted = normalise_registry(registry);
    let Some((key, entry)) = config
        .auths
        .iter()
        .find(|(key, _)| normalise_registry(key) == wanted)
    else {
        return Ok(None);
    };
    let bad = || CredentialsError::BadAuth {
        path: path.to_owned(),
        registry: key.clone(),
    };
    if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| bad())?;
        let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
        let (username, password) = decoded.split_once(':').ok_or_else(bad)?;
        return Ok(Some(Credentials {
            username: username.to_owned(),
            password: password.to_owned(),
        }));
    }
    match (&entry.username, &entry.password) {
        (Some(u), Some(p)) if !u.is_empty() => Ok(Some(Credentials {
            username: u.clone(),
            password: p.clone(),
        })),
        _ => Ok(None),
    }
}

/// A registry key as the docker CLI may spell it (`https://index.docker.io/v1/`, `http://host:5000`)
/// reduced to its host and port, with Docker Hub's aliases folded into `docker.io`.
fn normalise_registry(key: &str) -> String {
    let key = key.trim();
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = key
        .split('/')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".into()
        }
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[track_caller]
    fn check(config: &str, registry: &str, expected: Option<(&str, &str)>) {
        let got = parse(config, Path::new("/cfg/config.json"), registry).unwrap();
        let got = got.map(|c| (c.username, c.password));
        assert_eq!(
            got,
            expected.map(|(u, p)| (u.to_owned(), p.to_owned())),
            "registry {registry} in {config}"
        );
    }

    #[test]
    fn finds_the_auth_entry_of_the_registry() {
        let config = format!(
            r#"{{"auths": {{
                "127.0.0.1:5000": {{"auth": "{}"}},
                "https://index.docker.io/v1/": {{"auth": "{}"}},
                "http://reg.example.com:8443/": {{"auth": "{}"}},
                "other.example.com": {{"username": "u", "password": "p"}}
            }}, "credsStore": "desktop"}}"#,
            b64("alice:s3cr:et"),
            b64("bob:hub"),
            b64("carol:pw")
        );
        check(&config, "127.0.0.1:5000", Some(("alice", "s3cr:et")));
        check(&config, "docker.io", Some(("bob", "hub")));
        check(&config, "index.docker.io", Some(("bob", "hub")));
        check(&config, "reg.example.com:8443", Some(("carol", "pw")));
        check(&config, "other.example.com", Some(("u", "p")));
        check(&config, "127.0.0.1:5001", None);
        check(&config, "reg.example.com", None);
        check("{}", "127.0.0.1:5000", None);
        check(
            r#"{"auths": {"127.0.0.1:5000": {}}}"#,
            "127.0.0.1:5000",
            None,
        );
    }

    #[test]
    fn bad_files_and_entries_are_errors_that_name_the_file() {
        let path = Path::new("/cfg/config.json");
        let err = parse("{not json", path, "r").unwrap_err().to_string();
        assert!(err.contains("/cfg/config.json"), "{err}");
        let err = parse(
            r#"{"auths": {"r:5000": {"auth": "!!!not base64"}}}"#,
            path,
            "r:5000",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("`r:5000`") && err.contains("docker login"),
            "{err}"
        );
        let no_colon = format!(r#"{{"auths": {{"r": {{"auth": "{}"}}}}}}"#, b64("nocolon"));
        assert!(matches!(
            parse(&no_colon, path, "r"),
            Err(CredentialsError::BadAuth { .. })
        ));
    }

    #[test]
    fn a_missing_file_means_anonymous_and_credentials_never_print_the_password() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            lookup(Some(&dir.path().join("absent.json")), "r").unwrap(),
            None
        );
        assert_eq!(lookup(None, "r").unwrap(), None);
        let creds = Credentials {
            username: "alice".into(),
            password: "hunter2".into(),
        };
        let shown = format!("{creds:?}");
        assert!(
            shown.contains("alice") && !shown.contains("hunter2"),
            "{shown}"
        );
    }
}
