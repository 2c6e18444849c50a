//! The buildx flags of `manifold build` beyond Dockerfile, arguments and labels, read from the
//! command line: caches, network, extra hosts, shm size, named contexts ([`parse_flags`]) and the `--secret`
//! values, read from their files or variables on this machine ([`parse_secrets`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use manifold_proto::build_flags;
use manifold_proto::build_flags::Attest;
use manifold_proto::{BuildFlags, CacheSpec, SecretValue, Secrets};

use crate::args::{ArgsError, BuildArgs};

/// The buildx flags of `args`, each value checked.
pub fn parse_flags(args: &BuildArgs) -> Result<BuildFlags, ArgsError> {
    let caches = |flag: &'static str, values: &[String]| {
        values
            .iter()
            .map(|v| CacheSpec::parse(flag, v))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(BuildFlags {
        no_cache: args.no_cache,
        pull: args.pull,
        cache_from: caches("--cache-from", &args.cache_from)?,
        cache_to: caches("--cache-to", &args.cache_to)?,
        network: args
            .network
            .as_deref()
            .map(build_flags::parse_network)
            .transpose()?,
        add_hosts: args
            .add_hosts
            .iter()
            .map(|h| build_flags::parse_add_host(h))
            .collect::<Result<_, _>>()?,
        shm_size: args
            .shm_size
            .as_deref()
            .map(build_flags::parse_shm_size)
            .transpose()?,
        secret_ids: Vec::new(),
        attests: parse_attests(
            &args.attests,
            no_default_attestations(
                std::env::var("BUILDX_NO_DEFAULT_ATTESTATIONS")
                    .ok()
                    .as_deref(),
            )?,
        )?,
        build_contexts: {
            if args.build_contexts.len() > build_flags::MAX_BUILD_CONTEXTS {
                return Err(build_flags::FlagError {
                    flag: "--build-context",
                    value: format!("{} entries", args.build_contexts.len()),
                    reason: format!("at most {} are taken", build_flags::MAX_BUILD_CONTEXTS),
                }
                .into());
            }
            let mut remote = std::collections::BTreeMap::new();
            for c in &args.build_contexts {
                let (_, source) = build_flags::split_build_context(c)?;
                if build_flags::is_remote_context(source) {
                    let (name, source) = build_flags::parse_build_context(c)?;
                    remote.insert(name, source);
                }
            }
            remote
        },
    })
}

/// The attestation flags of `manifold build`, with buildx's names.
#[derive(Debug, clap::Args)]
pub struct AttestArgs {
    /// Attestation to attach to each platform's image: type=provenance[,mode=min|max] or
    /// type=sbom[,generator=IMAGE] (needs workers on the containerd image store)
    #[arg(long = "attest", value_name = "type=TYPE[,KEY=VALUE]")]
    pub attests: Vec<String>,

    /// Shorthand for --attest=type=provenance: true, false, or mode=min|max. Without it, workers
    /// on the containerd image store attach mode=min provenance as buildx does, unless
    /// BUILDX_NO_DEFAULT_ATTESTATIONS=1
    #[arg(long, value_name = "VALUE")]
    pub provenance: Option<String>,

    /// Shorthand for --attest=type=sbom: true, false, or generator=IMAGE
    #[arg(long, value_name = "VALUE")]
    pub sbom: Option<String>,
}

/// `--attest`, then `--provenance` and `--sbom`, merged as buildx merges them (a later entry of a
/// type wins); with `no_default`, a provenance disabled unless one was asked for.
fn parse_attests(args: &AttestArgs, no_default: bool) -> Result<Vec<Attest>, ArgsError> {
    let mut attests = args
        .attests
        .iter()
        .map(|a| Attest::parse("--attest", a))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(v) = &args.provenance {
        attests.push(Attest::shorthand("--provenance", "provenance", v)?);
    }
    if let Some(v) = &args.sbom {
        attests.push(Attest::shorthand("--sbom", "sbom", v)?);
    }
    let mut attests = build_flags::attest::merge(attests);
    if no_default && !attests.iter().any(|a| a.kind == "provenance") {
        attests.push(Attest::shorthand("--provenance", "provenance", "false")?);
    }
    Ok(attests)
}

/// `BUILDX_NO_DEFAULT_ATTESTATIONS` (its value, if set), read as buildx reads it (a Go boolean).
fn no_default_attestations(value: Option<&str>) -> Result<bool, ArgsError> {
    match value {
        None => Ok(false),
        Some(v) => build_flags::attest::parse_bool(v).ok_or_else(|| {
            build_flags::FlagError {
                flag: "BUILDX_NO_DEFAULT_ATTESTATIONS",
                value: v.to_owned(),
                reason: "expected true or false (1 or 0)".into(),
            }
            .into()
        }),
    }
}

/// The `--build-context NAME=DIR` entries whose source is a directory on this machine (any
/// source that is not an image, a Git or HTTP(S) URL or a stage), canonicalised; relative paths
/// are from the current directory, as buildx takes them. `manifold build` packs and uploads each
/// as it does the main context (its own `.dockerignore` applied).
pub fn local_contexts(args: &BuildArgs) -> Result<BTreeMap<String, PathBuf>, ArgsError> {
    let mut local = BTreeMap::new();
    for c in &args.build_contexts {
        let (name, source) = build_flags::split_build_context(c)?;
        if build_flags::is_remote_context(source) {
            continue;
        }
        let bad = |reason: String| build_flags::FlagError {
            flag: "--build-context",
            value: c.clone(),
            reason,
        };
        let dir = std::fs::canonicalize(source).map_err(|e| {
            bad(format!(
                "`{source}` is neither docker-image://REF, a Git or HTTP(S) URL, target:STAGE nor a directory here: {e}"
            ))
        })?;
        if !dir.is_dir() {
            return Err(bad(format!(
                "`{source}` is a file; name a directory (it is uploaded like the build context)"
            ))
            .into());
        }
        local.insert(name.to_owned(), dir);
    }
    Ok(local)
}

/// Reads `--secret id=ID[,src=PATH|,env=VAR]` values as buildx does: `src` (or `source`) names a
/// file, `env` a variable; with neither, the variable named like the id if it is set, else the
/// file named like the id. `env` looks variables up.
pub fn parse_secrets(
    specs: &[String],
    env: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> Result<Secrets, ArgsError> {
    let mut secrets = Secrets::new();
    for spec in specs {
        let bad = |reason: String| ArgsError::Secret {
            spec: spec.clone(),
            reason,
        };
        let (mut id, mut src, mut var, mut kind) = (None, None, None, None);
        for field in spec.split(',') {
            let (key, value) = field.split_once('=').ok_or_else(|| {
                bad(format!(
                    "`{field}` is not KEY=VALUE; expected id=ID,src=PATH"
                ))
            })?;
            match key.trim() {
                "id" => id = Some(value.to_owned()),
                "src" | "source" => src = Some(value.to_owned()),
                "env" => var = Some(value.to_owned()),
                "type" => kind = Some(value.to_owned()),
                other => {
                    return Err(bad(format!(
                        "unknown key `{other}`; expected id, src, env or type"
                    )));
                }
            }
        }
        let id = id
            .or_else(|| {
                src.as_deref()
                    .and_then(|s| Path::new(s).file_name())
                    .map(|n| n.to_string_lossy().into_owned())
            })
            .ok_or_else(|| bad("no id=; expected id=ID,src=PATH".into()))?;
        build_flags::check_secret_id(&id)?;
        if build_flags::ssh::is_key_secret(&id) {
            return Err(bad(format!(
                "the id `{id}` is reserved for --ssh keys; choose another"
            )));
        }
        let from_env = |name: &str| {
            env(name)
                .map(|v| v.into_encoded_bytes())
                .ok_or_else(|| bad(format!("the environment variable {name} is not set")))
        };
        let read =
            |path: &str| std::fs::read(path).map_err(|e| bad(format!("cannot read {path}: {e}")));
        let value = match kind.as_deref() {
            Some("env") => from_env(var.or(src).as_deref().unwrap_or(&id))?,
            Some("file") if var.is_none() => read(src.as_deref().unwrap_or(&id))?,
            Some("file") => return Err(bad("type=file takes src=, not env=".into())),
            Some(other) => {
                return Err(bad(format!("unknown type `{other}`; expected file or env")));
            }
            None => match (src, var) {
                (Some(_), Some(_)) => return Err(bad("give src= or env=, not both".into())),
                (Some(path), None) => read(&path)?,
                (None, Some(var)) => from_env(&var)?,
                (None, None) => match env(&id) {
                    Some(v) => v.into_encoded_bytes(),
                    None => read(&id).map_err(|_| {
                        bad(format!(
                            "no src= or env=, and neither a variable nor a file is named {id}"
                        ))
                    })?,
                },
            },
        };
        if value.len() > build_flags::MAX_SECRET_BYTES {
            return Err(bad(format!(
                "{} bytes; a secret may hold at most {} bytes",
                value.len(),
                build_flags::MAX_SECRET_BYTES
            )));
        }
        if secrets.insert(id.clone(), SecretValue(value)).is_some() {
            return Err(bad(format!("the id `{id}` is given twice")));
        }
    }
    Ok(secrets)
}

/// The keys of `--ssh ID=PATH[,PATH...]`, read from their files, each checked to be an OpenSSH
/// private key without a passphrase, as secrets under their reserved ids
/// ([`build_flags::ssh::key_secret_id`]).
pub fn parse_ssh_keys(specs: &[String]) -> Result<Secrets, ArgsError> {
    if specs.len() > build_flags::ssh::MAX_SSH_IDS {
        return Err(build_flags::FlagError {
            flag: "--ssh",
            value: format!("{} ids", specs.len()),
            reason: format!("at most {} are taken", build_flags::ssh::MAX_SSH_IDS),
        }
        .into());
    }
    let mut keys = Secrets::new();
    let mut ids = std::collections::BTreeSet::new();
    for spec in specs {
        let (id, paths) = build_flags::ssh::parse_ssh(spec)?;
        let bad = |reason: String| ArgsError::Ssh {
            spec: spec.clone(),
            reason,
        };
        if !ids.insert(id.clone()) {
            return Err(bad(format!(
                "the id `{id}` is given twice; list its keys in one --ssh {id}=PATH,PATH"
            )));
        }
        for (n, path) in paths.iter().enumerate() {
            let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot read {path}: {e}")))?;
            if bytes.len() > build_flags::MAX_SECRET_BYTES {
                return Err(bad(format!("{path} is {} bytes, no ssh key", bytes.len())));
            }
            check_private_key(&bytes).map_err(|reason| bad(format!("{path}: {reason}")))?;
            keys.insert(build_flags::ssh::key_secret_id(&id, n), SecretValue(bytes));
        }
    }
    Ok(keys)
}

/// Whether `bytes` is a private key the workers' agent can sign with.
fn check_private_key(bytes: &[u8]) -> Result<(), String> {
    let key = ssh_key::PrivateKey::from_openssh(bytes).map_err(|e| {
        format!(
            "not an OpenSSH private key ({e}); keys in the older PEM form can be rewritten with `ssh-keygen -p -f PATH`"
        )
    })?;
    if key.is_encrypted() {
        return Err(
            "the key is protected by a passphrase, which the farm cannot ask for; use a key without one (e.g. a deploy key)".into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buildx_no_default_attestations_reads_as_a_go_boolean() {
        for (value, expected) in [
            (None, Some(false)),
            (Some("1"), Some(true)),
            (Some("true"), Some(true)),
            (Some("0"), Some(false)),
            (Some("false"), Some(false)),
            (Some("yes"), None),
        ] {
            let got = no_default_attestations(value);
            assert_eq!(got.as_ref().ok().copied(), expected, "{value:?}");
            if let Err(e) = got {
                assert!(
                    e.to_string().contains("BUILDX_NO_DEFAULT_ATTESTATIONS"),
                    "{e}"
                );
            }
        }
    }
}
