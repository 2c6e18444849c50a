//! `--ssh default|ID=PATH[,PATH...]`, as buildx reads it, for `RUN --mount=type=ssh[,id=ID]`.
//!
//! The CLI reads each key file on its machine; the keys travel as the build's secrets do (in
//! memory only, never stored, logged or listed), under reserved secret ids
//! (`manifold.ssh.<n>.<ID>`, see [`key_secret_id`]). The worker serves them to BuildKit as an
//! ssh-agent (signing only: a build step never sees a key's bytes, and the secret service refuses
//! those ids). A forwarded agent socket (`--ssh default` with no path: buildx's
//! `$SSH_AUTH_SOCK`) cannot reach a farm's workers; the CLI says so and asks for key files.
//!
//! Bounds: at most [`MAX_SSH_IDS`] ids of at most [`MAX_KEYS_PER_ID`] keys each (the keys count
//! among the build's secrets, at most `MAX_SECRET_BYTES` each).

use super::FlagError;

/// Most `--ssh` ids one build takes.
pub const MAX_SSH_IDS: usize = 16;
/// Most key files one `--ssh` id takes.
pub const MAX_KEYS_PER_ID: usize = 8;
/// The id BuildKit asks for when a `RUN --mount=type=ssh` names none.
pub const DEFAULT_ID: &str = "default";

const PREFIX: &str = "manifold.ssh.";

/// `--ssh ID[=PATH[,PATH...]]`: the id and the key files.
pub fn parse_ssh(text: &str) -> Result<(String, Vec<String>), FlagError> {
    let bad = |reason: String| FlagError::new("--ssh", text, reason);
    let (id, paths) = match text.split_once('=') {
        Some((id, paths)) => (id, paths.split(',').map(str::to_owned).collect::<Vec<_>>()),
        None => (text, Vec::new()),
    };
    let id_ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !id_ok {
        return Err(bad(format!(
            "the id `{id}` must be 1 to 64 letters, digits, `-`, `_` or `.`"
        )));
    }
    if paths.is_empty() {
        return Err(bad(format!(
            "no key file: a forwarded ssh-agent socket cannot reach the farm's workers; give the \
             private key files instead, e.g. --ssh {id}=$HOME/.ssh/id_ed25519"
        )));
    }
    if paths.iter().any(String::is_empty) {
        return Err(bad("an empty path; expected ID=PATH[,PATH...]".into()));
    }
    if paths.len() > MAX_KEYS_PER_ID {
        return Err(bad(format!(
            "{} key files; at most {MAX_KEYS_PER_ID} are taken per id",
            paths.len()
        )));
    }
    Ok((id.to_owned(), paths))
}

/// The secret id the `n`-th key of `--ssh` id `id` travels under.
pub fn key_secret_id(id: &str, n: usize) -> String {
    format!("{PREFIX}{n}.{id}")
}

/// Whether `secret_id` is reserved for ssh keys (a `--secret` may not take it).
pub fn is_key_secret(secret_id: &str) -> bool {
    secret_id.starts_with(PREFIX)
}

/// The `--ssh` id and key number of a secret id made by [`key_secret_id`].
pub fn split_key_secret(secret_id: &str) -> Option<(&str, usize)> {
    let rest = secret_id.strip_prefix(PREFIX)?;
    let (n, id) = rest.split_once('.')?;
    Some((id, n.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_flags_read_as_buildx_reads_them_with_key_files_only() {
        assert_eq!(
            parse_ssh("default=/k/a").unwrap(),
            ("default".into(), vec!["/k/a".into()])
        );
        assert_eq!(
            parse_ssh("gitlab=/k/a,/k/b").unwrap(),
            ("gitlab".into(), vec!["/k/a".into(), "/k/b".into()])
        );
        let err = |t: &str| parse_ssh(t).unwrap_err().reason;
        assert!(err("default").contains("--ssh default=$HOME/.ssh/id_ed25519"));
        assert!(err("a b=/k").contains("the id `a b`"));
        assert!(err("x=/k,").contains("an empty path"));
        assert!(err(&format!("x={}", ["/k"; 9].join(","))).contains("at most 8"));
    }

    #[test]
    fn keys_travel_under_reserved_secret_ids() {
        let id = key_secret_id("git.lab", 3);
        assert!(is_key_secret(&id));
        assert_eq!(split_key_secret(&id), Some(("git.lab", 3)));
        assert!(!is_key_secret("token"));
        assert_eq!(split_key_secret("manifold.ssh.x"), None);
        assert!(
            super::super::check_secret_id(&id).is_ok(),
            "{id} is a valid secret id"
        );
    }
}
