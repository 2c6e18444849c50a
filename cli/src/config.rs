//! Where the settings for reaching the coordinator come from, highest first: a flag
//! (`--coordinator`, `--token`, `--ca-cert`), its environment variable, the config file
//! (`~/.config/manifold/config.toml`, or the file `MANIFOLD_CONFIG` names), the built-in default.
//!
//! The config file is TOML with three optional keys:
//!
//! ```toml
//! coordinator = "https://build.example.com:7700"
//! token = "..."
//! ca_cert = "ca.pem"   # relative to the file's directory
//! ```

use std::path::{Path, PathBuf};

use manifold_proto::DEFAULT_COORDINATOR;
use serde::Deserialize;

use crate::client::{ConnectOptions, Setting, Token};

/// Environment variable naming the config file (default `<config dir>/manifold/config.toml`).
pub const CONFIG_ENV: &str = "MANIFOLD_CONFIG";
/// Environment variable holding the bearer token (same as `--token`).
pub const TOKEN_ENV: &str = "MANIFOLD_TOKEN";
/// Environment variable naming the CA certificate to trust (same as `--ca-cert`).
pub const CA_CERT_ENV: &str = "MANIFOLD_CA_CERT";

/// The CLI's config file. Every key is optional; an unknown key is an error, so a typo does not
/// silently drop a setting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Bearer token sent on every call (default: none).
    pub token: Option<Token>,
    /// Coordinator address(es), used when neither `--coordinator` nor `MANIFOLD_COORDINATOR` is
    /// given (default: `http://127.0.0.1:7700`).
    pub coordinator: Option<String>,
    /// PEM file of the CA to trust for https:// coordinators, relative to the config file's
    /// directory or starting with `~/` (default: the system's roots).
    pub ca_cert: Option<PathBuf>,
}

/// A config file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but cannot be read.
    #[error("cannot read the config file `{path}`: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// `MANIFOLD_CONFIG` names a file that does not exist.
    #[error(
        "config file `{path}` (from MANIFOLD_CONFIG) does not exist; create it or unset MANIFOLD_CONFIG"
    )]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// The file is not TOML, or has a key the CLI does not know.
    #[error("config file `{path}`: {problem}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong and where (line, column); never the token.
        problem: String,
    },
}

/// What the command line says about reaching the coordinator. `coordinator` already holds
/// `MANIFOLD_COORDINATOR` when the flag is absent (clap reads it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flags {
    /// `--coordinator`.
    pub coordinator: Option<String>,
    /// `--token`.
    pub token: Option<Token>,
    /// `--ca-cert`.
    pub ca_cert: Option<PathBuf>,
}

/// The settings in effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Coordinator address(es), comma-separated.
    pub coordinator: String,
    /// Token, CA and the config file's path for hints.
    pub options: ConnectOptions,
}

/// The config file's path, and whether it was named by `MANIFOLD_CONFIG` (then it must exist).
/// None when there is no config directory (no `HOME`).
pub fn config_path(env: &dyn Fn(&str) -> Option<String>) -> Option<(PathBuf, bool)> {
    match env(CONFIG_ENV).filter(|v| !v.trim().is_empty()) {
        Some(path) => Some((PathBuf::from(path), true)),
        None => dirs::config_dir().map(|dir| (dir.join("manifold").join("config.toml"), false)),
    }
}

/// Reads and parses the config file at `path`. An absent file is no config, unless `explicit`.
pub fn load(path: &Path, explicit: bool) -> Result<Option<FileConfig>, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ConfigError::Missing {
                path: path.to_owned(),
            });
        }
        Err(e) => {
            return Err(ConfigError::Read {
                path: path.to_owned(),
                reason: e.to_string(),
            });
        }
    };
    parse(&text)
        .map(Some)
        .map_err(|problem| ConfigError::Invalid {
            path: path.to_owned(),
            problem,
        })
}

/// Parses the text of a config file. The error says where (`line L, column C: ...`) and never
/// repeats the token's value: toml's own `Display` quotes the offending line, so it is not used.
pub fn parse(text: &str) -> Result<FileConfig, String> {
    toml::from_str(text).map_err(|e: toml::de::Error| {
        let message = e.message().trim().to_owned();
        let Some(span) = e.span() else {
            return message;
        };
        let start = span.start.min(text.len());
        let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line = text[..start].matches('\n').count() + 1;
        let column = text[line_start..start].chars().count() + 1;
        let line_text = text[line_start..].lines().next().unwrap_or("");
        let message = if is_token_line(line_text) && !message.contains("duplicate key") {
            "`token` must be a string in quotes, e.g. token = \"...\" (its value is not shown)"
                .to_owned()
        } else {
            message
        };
        format!("line {line}, column {column}: {message}")
    })
}

/// Whether a TOML line sets `token` (the only secret: its errors must not quote the line).
fn is_token_line(line: &str) -> bool {
    let line = line.trim_start();
    let key = line
        .strip_prefix("token")
        .or_else(|| line.strip_prefix("\"token\""))
        .or_else(|| line.strip_prefix("'token'"));
    key.is_some_and(|rest| rest.trim_start().starts_with('='))
}

/// Loads the config file (see [`config_path`]) and applies the precedence to `flags`, the
/// environment read through `env`, and the file.
pub fn resolve(
    flags: &Flags,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Resolved, ConfigError> {
    let path = config_path(&env);
    let file = match &path {
        Some((path, explicit)) => load(path, *explicit)?,
        None => None,
    };
    Ok(merge(
        flags,
        &env,
        file.as_ref(),
        path.as_ref().map(|(p, _)| p.as_path()),
    ))
}

/// The precedence itself, without touching the file system: flag, environment, file, default.
/// Empty values count as absent.
pub fn merge(
    flags: &Flags,
    env: &dyn Fn(&str) -> Option<String>,
    file: Option<&FileConfig>,
    config_file: Option<&Path>,
) -> Resolved {
    let file_origin =
        || config_file.map_or_else(|| "the config file".to_owned(), |p| p.display().to_string());
    let coordinator = flags
        .coordinator
        .clone()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| {
            file.and_then(|f| f.coordinator.clone())
                .filter(|c| !c.trim().is_empty())
        })
        .unwrap_or_else(|| DEFAULT_COORDINATOR.to_owned());
    let token = flags
        .token
        .clone()
        .filter(|t| !t.is_empty())
        .map(|t| Setting::new(t, "--token"))
        .or_else(|| {
            env(TOKEN_ENV)
                .map(Token::new)
                .filter(|t| !t.is_empty())
                .map(|t| Setting::new(t, TOKEN_ENV))
        })
        .or_else(|| {
            file.and_then(|f| f.token.clone())
                .filter(|t| !t.is_empty())
                .map(|t| Setting::new(t, file_origin()))
        });
    let ca_cert = flags
        .ca_cert
        .clone()
        .filter(|p| !p.as_os_str().is_empty())
        .map(|p| Setting::new(p, "--ca-cert"))
        .or_else(|| {
            env(CA_CERT_ENV)
                .filter(|p| !p.trim().is_empty())
                .map(|p| Setting::new(PathBuf::from(p), CA_CERT_ENV))
        })
        .or_else(|| {
            file.and_then(|f| f.ca_cert.clone())
                .filter(|p| !p.as_os_str().is_empty())
                .map(|p| Setting::new(relative_to_file(&p, config_file), file_origin()))
        });
    Resolved {
        coordinator,
        options: ConnectOptions {
            token,
            ca_cert,
            config_file: config_file.map(Path::to_owned),
        },
    }
}

/// A path from the config file: `~/...` under the home directory, a relative one under the
/// file's directory, so the file means the same from any working directory.
fn relative_to_file(path: &Path, config_file: Option<&Path>) -> PathBuf {
    if let Ok(rest) = path.strip_prefix("~")
        && let Some(home) = dirs::home_dir()
    {
        return home.join(rest);
    }
    match config_file.and_then(Path::parent) {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| vars.get(k).cloned()
    }

    fn token_origin(r: &Resolved) -> Option<(Token, String)> {
        r.options.token.clone().map(|t| (t.value, t.origin.clone()))
    }

    #[test]
    fn the_token_comes_from_the_flag_then_the_environment_then_the_file() {
        let path = Path::new("/etc/m/config.toml");
        let file = parse("token = \"from-file\"\n").unwrap();
        let flag = Flags {
            token: Some(Token::new("from-flag")),
            ..Default::default()
        };
        let with_env = env(&[(TOKEN_ENV, "from-env")]);
        let check = |flags: &Flags,
                     env: &dyn Fn(&str) -> Option<String>,
                     expected: Option<(&str, &str)>| {
            let resolved = merge(flags, env, Some(&file), Some(path));
            assert_eq!(
                token_origin(&resolved),
                expected.map(|(t, o)| (Token::new(t), o.to_owned()))
            );
        };
        check(&flag, &with_env, Some(("from-flag", "--token")));
        check(&Flags::default(), &with_env, Some(("from-env", TOKEN_ENV)));
        check(
            &Flags::default(),
            &env(&[]),
            Some(("from-file", "/etc/m/config.toml")),
        );
        // Empty values fall through.
        check(
            &Flags {
                token: Some(Token::new("")),
                ..Default::default()
            },
            &env(&[(TOKEN_ENV, " ")]),
            Some(("from-file", "/etc/m/config.toml")),
        );
        let none = merge(&Flags::default(), &env(&[]), None, None);
        assert_eq!(none.options.token, None);
    }

    #[test]
    fn the_coordinator_comes_from_the_flag_then_the_file_then_the_default() {
        let file = parse("coordinator = \"https://build.example.com:7700\"\n").unwrap();
        let flagged = Flags {
            coordinator: Some("http://127.0.0.1:9".into()),
            ..Default::default()
        };
        assert_eq!(
            merge(&flagged, &env(&[]), Some(&file), None).coordinator,
            "http://127.0.0.1:9"
        );
        assert_eq!(
            merge(&Flags::default(), &env(&[]), Some(&file), None).coordinator,
            "https://build.example.com:7700"
        );
        assert_eq!(
            merge(&Flags::default(), &env(&[]), None, None).coordinator,
            DEFAULT_COORDINATOR
        );
    }

    #[test]
    fn the_ca_comes_from_the_flag_then_the_environment_then_the_file_relative_to_it() {
        let path = Path::new("/etc/m/config.toml");
        let file = parse("ca_cert = \"certs/ca.pem\"\n").unwrap();
        let ca = |flags: &Flags, env: &dyn Fn(&str) -> Option<String>| {
            let c = merge(flags, env, Some(&file), Some(path))
                .options
                .ca_cert
                .unwrap();
            (c.value, c.origin)
        };
        assert_eq!(
            ca(
                &Flags {
                    ca_cert: Some("a.pem".into()),
                    ..Default::default()
                },
                &env(&[(CA_CERT_ENV, "b.pem")])
            ),
            (PathBuf::from("a.pem"), "--ca-cert".to_owned())
        );
        assert_eq!(
            ca(&Flags::default(), &env(&[(CA_CERT_ENV, "b.pem")])),
            (PathBuf::from("b.pem"), CA_CERT_ENV.to_owned())
        );
        assert_eq!(
            ca(&Flags::default(), &env(&[])),
            (
                PathBuf::from("/etc/m/certs/ca.pem"),
                "/etc/m/config.toml".to_owned()
            )
        );
        let absolute = parse("ca_cert = \"/pki/ca.pem\"\n").unwrap();
        let resolved = merge(&Flags::default(), &env(&[]), Some(&absolute), Some(path));
        assert_eq!(
            resolved.options.ca_cert.unwrap().value,
            PathBuf::from("/pki/ca.pem")
        );
    }

    #[test]
    fn the_config_file_is_manifold_config_or_the_config_directory() {
        assert_eq!(
            config_path(&env(&[(CONFIG_ENV, "/tmp/m.toml")])),
            Some((PathBuf::from("/tmp/m.toml"), true))
        );
        if let Some((path, explicit)) = config_path(&env(&[])) {
            assert!(path.ends_with("manifold/config.toml"), "{path:?}");
            assert!(!explicit);
        }
    }

    #[test]
    fn an_absent_file_is_no_config_unless_named_explicitly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        assert_eq!(load(&path, false), Ok(None));
        assert_eq!(
            load(&path, true).unwrap_err().to_string(),
            format!(
                "config file `{}` (from MANIFOLD_CONFIG) does not exist; create it or unset MANIFOLD_CONFIG",
                path.display()
            )
        );
        std::fs::write(&path, "").unwrap();
        assert_eq!(load(&path, true), Ok(Some(FileConfig::default())));
    }

    #[test]
    fn bad_files_name_the_line_and_the_problem() {
        let err = parse("coordinator = \"https://c:7700\"\ntokn = \"abc\"\n").unwrap_err();
        assert!(
            err.starts_with("line 2, column 1: unknown field `tokn`, expected one of"),
            "{err}"
        );
        let err = parse("coordinator = https://c\n").unwrap_err();
        assert!(err.starts_with("line 1, column 15: "), "{err}");
        let err = parse("[server]\naddress = \"x\"\n").unwrap_err();
        assert!(err.contains("unknown field `server`"), "{err}");
    }

    #[test]
    fn errors_about_the_token_never_show_its_value() {
        for text in [
            "token = 98765432123\n",
            "token = s3cr3t-t0ken\n",
            "token = \"s3cr3t-t0ken\n",
            "coordinator = \"x\"\n  \"token\" = [\"s3cr3t-t0ken\"]\n",
            "token = \"\"\"s3cr3t-t0ken\n",
        ] {
            let err = parse(text).unwrap_err();
            assert!(
                !err.contains("s3cr3t") && !err.contains("98765432123"),
                "{text:?}: {err}"
            );
            assert!(err.starts_with("line "), "{text:?}: {err}");
        }
        let err = parse("token = \"a\"\ntoken = \"b\"\n").unwrap_err();
        assert!(err.contains("duplicate key"), "{err}");
        // A parsed config shows no token either.
        let config = parse("token = \"s3cr3t-t0ken\"\n").unwrap();
        assert!(!format!("{config:?}").contains("s3cr3t"));
    }

    #[test]
    fn load_names_the_file_in_its_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "colour = \"blue\"\n").unwrap();
        let err = load(&path, false).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "config file `{}`: line 1, column 1: unknown field `colour`",
                path.display()
            )),
            "{err}"
        );
    }
}
