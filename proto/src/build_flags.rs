//! The buildx flags a build carries past the Dockerfile, arguments and labels: `--no-cache`,
//! `--pull`, `--cache-from`/`--cache-to`, `--network`, `--add-host`, `--shm-size`,
//! `--build-context`, `--attest`/`--provenance`/`--sbom` ([`attest`]), and the ids of `--secret`s. Parsed here once, with buildx's syntax, for the CLI, the coordinator and the worker.
//!
//! Secret values are not part of [`BuildFlags`]: they never reach the state store. Only their ids
//! are kept, so that a build whose secrets were lost (a coordinator restart) can say so.
//!
//! Bounds: at most [`MAX_CACHE_ENTRIES`] cache imports and exports each, [`MAX_ADD_HOSTS`] extra
//! hosts, [`MAX_SECRETS`] secrets of at most [`MAX_SECRET_BYTES`] each, [`MAX_BUILD_CONTEXTS`]
//! named contexts of at most [`MAX_BUILD_CONTEXT_BYTES`] each.

use std::collections::BTreeMap;

pub mod attest;
pub mod ssh;
pub use attest::Attest;

/// Most `--cache-from` (and, separately, `--cache-to`) entries one build takes.
pub const MAX_CACHE_ENTRIES: usize = 16;
/// Most `--add-host` entries one build takes.
pub const MAX_ADD_HOSTS: usize = 64;
/// Most `--build-context`s one build takes.
pub const MAX_BUILD_CONTEXTS: usize = 32;
/// Longest `--build-context NAME=SOURCE`.
pub const MAX_BUILD_CONTEXT_BYTES: usize = 1024;
/// Most `-t` tags one build takes (the first and the extra ones).
pub const MAX_TAGS: usize = 16;
/// Most `--secret`s one build takes.
pub const MAX_SECRETS: usize = 64;
/// Largest secret value (BuildKit's own limit is 500 KiB).
pub const MAX_SECRET_BYTES: usize = 500 * 1024;

/// The flags, as the coordinator stores them and the worker applies them.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct BuildFlags {
    /// `--no-cache`: no step is taken from the build cache.
    pub no_cache: bool,
    /// `--pull`: base images are resolved again, even when cached.
    pub pull: bool,
    /// `--cache-from`.
    pub cache_from: Vec<CacheSpec>,
    /// `--cache-to`.
    pub cache_to: Vec<CacheSpec>,
    /// `--network`: `default`, `none` or `host`; `None` is `default`.
    pub network: Option<String>,
    /// `--add-host HOST:IP`, in order.
    pub add_hosts: Vec<String>,
    /// `--shm-size` in bytes.
    pub shm_size: Option<u64>,
    /// The ids of the build's `--secret`s (their values live in memory only).
    pub secret_ids: Vec<String>,
    /// `--build-context NAME=SOURCE` by name.
    pub build_contexts: BTreeMap<String, String>,
    /// `--attest`, `--provenance`, `--sbom`: at most one per type ([`attest`]).
    pub attests: Vec<Attest>,
}

/// A secret's bytes. Its `Debug` shows only the length, and it has no `Serialize`: it cannot reach
/// a log line, the state store or a listing by accident.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretValue(pub Vec<u8>);

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretValue({} bytes)", self.0.len())
    }
}

/// The `--secret`s of one build by id, in memory only.
pub type Secrets = BTreeMap<String, SecretValue>;

/// One cache import or export in buildx's CSV form: `type=registry,ref=R,mode=max`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CacheSpec {
    /// `registry`, `inline`, `local`, `gha`...
    pub kind: String,
    /// The other attributes, e.g. `ref`, `mode`.
    pub attrs: BTreeMap<String, String>,
}

/// A flag value that is not buildx's syntax; the message names the value and the form expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag} `{value}`: {reason}")]
pub struct FlagError {
    /// The flag, e.g. `--cache-to`.
    pub flag: &'static str,
    /// What was given.
    pub value: String,
    /// What is wrong and what is expected.
    pub reason: String,
}

impl FlagError {
    fn new(flag: &'static str, value: &str, reason: impl Into<String>) -> Self {
        Self {
            flag,
            value: value.to_owned(),
            reason: reason.into(),
        }
    }
}

impl CacheSpec {
    /// Parses `type=registry,ref=R[,mode=min|max]`; a bare `REF` means `type=registry,ref=REF`,
    /// as buildx reads it. `flag` names the flag in errors.
    pub fn parse(flag: &'static str, text: &str) -> Result<Self, FlagError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(FlagError::new(
                flag,
                text,
                "empty; expected e.g. type=registry,ref=registry.example.com/team/cache",
            ));
        }
        if !text.contains('=') {
            return Ok(Self {
                kind: "registry".into(),
                attrs: BTreeMap::from([("ref".to_owned(), text.to_owned())]),
            });
        }
        let mut kind = None;
        let mut attrs = BTreeMap::new();
        for field in text.split(',') {
            let (key, value) = field.split_once('=').ok_or_else(|| {
                FlagError::new(
                    flag,
                    text,
                    format!(
                        "`{field}` is not KEY=VALUE; expected e.g. type=registry,ref=R,mode=max"
                    ),
                )
            })?;
            let key = key.trim().to_ascii_lowercase();
            if key == "type" {
                kind = Some(value.trim().to_owned());
            } else if attrs.insert(key.clone(), value.trim().to_owned()).is_some() {
                return Err(FlagError::new(
                    flag,
                    text,
                    format!("`{key}` is given twice"),
                ));
            }
        }
        let kind = kind.ok_or_else(|| {
            FlagError::new(flag, text, "no `type=`; expected e.g. type=registry,ref=R")
        })?;
        match kind.as_str() {
            "registry" if !attrs.contains_key("ref") => {
                return Err(FlagError::new(
                    flag,
                    text,
                    "type=registry needs ref=REPOSITORY[:TAG]",
                ));
            }
            "registry" | "inline" | "local" | "gha" | "s3" | "azblob" => {}
            other => {
                return Err(FlagError::new(
                    flag,
                    text,
                    format!(
                        "unknown cache type `{other}`; expected registry, inline, local, gha, s3 or azblob"
                    ),
                ));
            }
        }
        if let Some(mode) = attrs.get("mode")
            && mode != "min"
            && mode != "max"
        {
            return Err(FlagError::new(
                flag,
                text,
                format!("mode `{mode}` is neither min nor max"),
            ));
        }
        Ok(Self { kind, attrs })
    }

    /// This entry for one platform's job. A registry cache is kept apart per platform, so the
    /// platforms of one build never overwrite each other's cache (docker/buildx#1044): the tag
    /// gets the platform appended (`R:TAG-linux-arm64`, or `R:linux-arm64` without a tag). An
    /// entry with `platform-split=false` is left as it is.
    pub fn for_platform(&self, platform: &crate::Platform) -> Self {
        let mut entry = self.clone();
        let split = entry.attrs.remove("platform-split");
        if entry.kind != "registry" || split.as_deref() == Some("false") {
            return entry;
        }
        let suffix = platform.to_string().replace('/', "-");
        if let Some(reference) = entry.attrs.get_mut("ref") {
            *reference = platform_reference(reference, &suffix);
        }
        entry
    }

    /// The buildx CSV form, attributes in order.
    pub fn to_csv(&self) -> String {
        std::iter::once(format!("type={}", self.kind))
            .chain(self.attrs.iter().map(|(k, v)| format!("{k}={v}")))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// `reference` with `suffix` added to its tag (or as its tag).
fn platform_reference(reference: &str, suffix: &str) -> String {
    let (name, digest) = match reference.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (reference, None),
    };
    if digest.is_some() {
        // A cache pinned by digest names one manifest: nothing to split.
        return reference.to_owned();
    }
    let last = name.rsplit('/').next().unwrap_or_default();
    if last.contains(':') {
        format!("{name}-{suffix}")
    } else {
        format!("{name}:{suffix}")
    }
}

/// The wire form of `flags` (caches as buildx CSV); secret ids do not travel in it.
pub fn to_wire(flags: &BuildFlags) -> crate::v1::BuildFlags {
    crate::v1::BuildFlags {
        no_cache: flags.no_cache,
        pull: flags.pull,
        cache_from: flags.cache_from.iter().map(CacheSpec::to_csv).collect(),
        cache_to: flags.cache_to.iter().map(CacheSpec::to_csv).collect(),
        network: flags.network.clone().unwrap_or_default(),
        add_hosts: flags.add_hosts.clone(),
        shm_size: flags.shm_size.unwrap_or_default(),
        build_contexts: flags.build_contexts.clone().into_iter().collect(),
        attests: flags.attests.iter().map(Attest::to_csv).collect(),
    }
}

/// Reads the wire form, checking every value as the CLI does; the error names the bad one.
pub fn from_wire(wire: &crate::v1::BuildFlags) -> Result<BuildFlags, FlagError> {
    let too_many = |flag: &'static str, n: usize, max: usize| {
        FlagError::new(
            flag,
            &format!("{n} entries"),
            format!("at most {max} are taken"),
        )
    };
    if wire.cache_from.len() > MAX_CACHE_ENTRIES {
        return Err(too_many(
            "--cache-from",
            wire.cache_from.len(),
            MAX_CACHE_ENTRIES,
        ));
    }
    if wire.cache_to.len() > MAX_CACHE_ENTRIES {
        return Err(too_many(
            "--cache-to",
            wire.cache_to.len(),
            MAX_CACHE_ENTRIES,
        ));
    }
    if wire.add_hosts.len() > MAX_ADD_HOSTS {
        return Err(too_many("--add-host", wire.add_hosts.len(), MAX_ADD_HOSTS));
    }
    if wire.build_contexts.len() > MAX_BUILD_CONTEXTS {
        return Err(too_many(
            "--build-context",
            wire.build_contexts.len(),
            MAX_BUILD_CONTEXTS,
        ));
    }
    if wire.attests.len() > attest::ATTEST_TYPES.len() {
        return Err(too_many(
            "--attest",
            wire.attests.len(),
            attest::ATTEST_TYPES.len(),
        ));
    }
    let attests = wire
        .attests
        .iter()
        .map(|a| Attest::parse("--attest", a))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(twice) = attests
        .iter()
        .enumerate()
        .find(|(i, a)| attests[..*i].iter().any(|b| b.kind == a.kind))
    {
        return Err(FlagError::new(
            "--attest",
            &twice.1.to_csv(),
            format!("type={} is given twice; give each type once", twice.1.kind),
        ));
    }
    let mut build_contexts = BTreeMap::new();
    for (name, source) in &wire.build_contexts {
        let (name, source) = parse_build_context(&format!("{name}={source}"))?;
        build_contexts.insert(name, source);
    }
    Ok(BuildFlags {
        no_cache: wire.no_cache,
        pull: wire.pull,
        cache_from: wire
            .cache_from
            .iter()
            .map(|c| CacheSpec::parse("--cache-from", c))
            .collect::<Result<_, _>>()?,
        cache_to: wire
            .cache_to
            .iter()
            .map(|c| CacheSpec::parse("--cache-to", c))
            .collect::<Result<_, _>>()?,
        network: match wire.network.as_str() {
            "" => None,
            n => Some(parse_network(n)?),
        },
        add_hosts: wire
            .add_hosts
            .iter()
            .map(|h| parse_add_host(h))
            .collect::<Result<_, _>>()?,
        shm_size: Some(wire.shm_size).filter(|n| *n > 0),
        secret_ids: Vec::new(),
        build_contexts,
        attests,
    })
}

/// The source the CLI gives a `--build-context NAME=DIR` once it uploaded `DIR`:
/// `manifold-context://sha256:<hex>`, a context of the caller's team (the coordinator checks).
pub const UPLOADED_CONTEXT: &str = "manifold-context://";

/// Splits `--build-context NAME=SOURCE` and checks its size and name (letters, digits, `-_./:@`).
pub fn split_build_context(text: &str) -> Result<(&str, &str), FlagError> {
    let bad = |reason: String| FlagError::new("--build-context", text, reason);
    if text.len() > MAX_BUILD_CONTEXT_BYTES {
        return Err(bad(format!(
            "{} bytes; at most {MAX_BUILD_CONTEXT_BYTES} are taken",
            text.len()
        )));
    }
    let (name, source) = text
        .split_once('=')
        .ok_or_else(|| bad("expected NAME=SOURCE, e.g. base=docker-image://alpine:3".into()))?;
    let name_ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:@".contains(c));
    if !name_ok {
        return Err(bad(format!(
            "the name `{name}` is empty or holds other characters than letters, digits and -_./:@"
        )));
    }
    Ok((name, source))
}

/// Whether a `--build-context` source is one a worker fetches itself (an image, a Git or HTTP(S)
/// URL, another stage), rather than a directory on the CLI's machine.
pub fn is_remote_context(source: &str) -> bool {
    REMOTE_CONTEXTS.iter().any(|p| source.starts_with(p))
}

const REMOTE_CONTEXTS: [&str; 6] = [
    "docker-image://",
    "https://",
    "http://",
    "git://",
    "git@",
    "target:",
];

/// Parses `--build-context NAME=SOURCE` as a request carries it: `docker-image://REF`, a Git or
/// HTTP(S) URL, `target:STAGE`, or a directory the CLI uploaded ([`UPLOADED_CONTEXT`]). A local
/// path here means a client that did not upload it: refused, saying what to do instead.
pub fn parse_build_context(text: &str) -> Result<(String, String), FlagError> {
    let bad = |reason: String| FlagError::new("--build-context", text, reason);
    let (name, source) = split_build_context(text)?;
    if let Some(digest) = source.strip_prefix(UPLOADED_CONTEXT) {
        let hex = digest.strip_prefix("sha256:").unwrap_or_default();
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(bad(format!(
                "`{digest}` is not a context digest (sha256:<64 lowercase hex>)"
            )));
        }
        return Ok((name.to_owned(), source.to_owned()));
    }
    let rest = REMOTE_CONTEXTS.iter().find_map(|p| source.strip_prefix(p));
    match rest {
        Some(rest) if !rest.is_empty() && !source.contains(char::is_whitespace) => {}
        Some(_) => return Err(bad(format!("`{source}` names nothing after its scheme"))),
        None => {
            return Err(bad(
                "the source must be docker-image://REF, a Git or HTTP(S) URL, target:STAGE, or a \
                 directory on the CLI's machine, which the manifold CLI uploads (this client sent \
                 the path itself, which no worker can reach)"
                    .into(),
            ));
        }
    }
    Ok((name.to_owned(), source.to_owned()))
}

impl BuildFlags {
    /// The uploaded directories among the named contexts: (name, context digest).
    pub fn uploaded_contexts(&self) -> impl Iterator<Item = (&str, &str)> {
        self.build_contexts.iter().filter_map(|(name, source)| {
            Some((name.as_str(), source.strip_prefix(UPLOADED_CONTEXT)?))
        })
    }
}

/// Checks the `--secret`s of a request: ids, count and sizes; the error names the bad one.
pub fn check_secrets(secrets: &[crate::v1::Secret]) -> Result<(), FlagError> {
    if secrets.len() > MAX_SECRETS {
        return Err(FlagError::new(
            "--secret",
            &format!("{} secrets", secrets.len()),
            format!("at most {MAX_SECRETS} are taken"),
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for s in secrets {
        check_secret_id(&s.id)?;
        if !seen.insert(s.id.as_str()) {
            return Err(FlagError::new("--secret", &s.id, "this id is given twice"));
        }
        if s.value.len() > MAX_SECRET_BYTES {
            return Err(FlagError::new(
                "--secret",
                &s.id,
                format!(
                    "{} bytes; a secret may hold at most {MAX_SECRET_BYTES} bytes",
                    s.value.len()
                ),
            ));
        }
    }
    Ok(())
}

/// Parses `--network`: `default`, `none` or `host`.
pub fn parse_network(text: &str) -> Result<String, FlagError> {
    match text {
        "default" | "none" | "host" => Ok(text.to_owned()),
        _ => Err(FlagError::new(
            "--network",
            text,
            "expected default, none or host (a build cannot join another network)",
        )),
    }
}

/// Parses `--add-host HOST:IP` (also `HOST=IP`, as buildx accepts).
pub fn parse_add_host(text: &str) -> Result<String, FlagError> {
    let (host, ip) = text
        .split_once('=')
        .or_else(|| text.split_once(':'))
        .ok_or_else(|| FlagError::new("--add-host", text, "expected HOST:IP, e.g. db:10.0.0.2"))?;
    let ip = ip.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains(',') || host.contains(char::is_whitespace) {
        return Err(FlagError::new(
            "--add-host",
            text,
            "the host name is empty or holds a comma or a space",
        ));
    }
    if ip != "host-gateway" && ip.parse::<std::net::IpAddr>().is_err() {
        return Err(FlagError::new(
            "--add-host",
            text,
            format!("`{ip}` is not an IP address (or host-gateway)"),
        ));
    }
    Ok(format!("{host}:{ip}"))
}

/// Parses `--shm-size`: bytes, or a number with `b`, `k`, `m` or `g` (powers of 1024), as the
/// docker CLI reads it.
pub fn parse_shm_size(text: &str) -> Result<u64, FlagError> {
    let lower = text.trim().to_ascii_lowercase();
    let (digits, unit) = match lower.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => lower.split_at(i),
        None => (lower.as_str(), ""),
    };
    let multiplier: u64 = match unit.trim_end_matches('b') {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => {
            return Err(FlagError::new(
                "--shm-size",
                text,
                "expected a size such as 64m or 2g",
            ));
        }
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .filter(|n| *n > 0)
        .ok_or_else(|| FlagError::new("--shm-size", text, "expected a size such as 64m or 2g"))
}

/// A secret id: what `RUN --mount=type=secret,id=ID` names.
pub fn check_secret_id(id: &str) -> Result<(), FlagError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(FlagError::new(
            "--secret",
            id,
            "the id must be 1 to 128 letters, digits, `-`, `_` or `.`",
        ))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn build_contexts_take_remote_sources_and_uploaded_directories_not_paths() {
        use super::parse_build_context as p;
        assert_eq!(
            p("base=docker-image://127.0.0.1:5000/base/busybox:1").unwrap(),
            (
                "base".to_owned(),
                "docker-image://127.0.0.1:5000/base/busybox:1".to_owned()
            )
        );
        assert!(p("src=https://github.com/o/r.git#main").is_ok());
        assert!(p("src=git@github.com:o/r.git").is_ok());
        assert!(p("deps=target:deps").is_ok());
        let uploaded = format!("vendor=manifold-context://sha256:{}", "ab".repeat(32));
        assert!(p(&uploaded).is_ok());
        for (bad, says) in [
            ("base=./vendor", "which the manifold CLI uploads"),
            ("base=/abs/dir", "which the manifold CLI uploads"),
            (
                "base=manifold-context://sha256:00",
                "is not a context digest",
            ),
            ("base", "expected NAME=SOURCE"),
            ("=docker-image://x", "the name `` is empty"),
            ("a b=docker-image://x", "the name `a b`"),
            ("base=docker-image://", "names nothing after its scheme"),
            ("base=docker-image://a b", "names nothing after its scheme"),
        ] {
            let e = p(bad).unwrap_err().to_string();
            assert!(
                e.contains(says) && e.contains("--build-context"),
                "{bad}: {e}"
            );
        }
        let long = format!(
            "x=docker-image://{}",
            "a".repeat(super::MAX_BUILD_CONTEXT_BYTES)
        );
        assert!(p(&long).unwrap_err().to_string().contains("at most 1024"));
    }

    use super::*;

    #[track_caller]
    fn cache(text: &str) -> Result<String, String> {
        CacheSpec::parse("--cache-to", text)
            .map(|c| c.to_csv())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn cache_entries_read_as_buildx_reads_them() {
        assert_eq!(
            cache("type=registry,ref=r.example/c:main,mode=max"),
            Ok("type=registry,mode=max,ref=r.example/c:main".into())
        );
        assert_eq!(
            cache("r.example/c"),
            Ok("type=registry,ref=r.example/c".into())
        );
        assert_eq!(cache("type=inline"), Ok("type=inline".into()));
        assert_eq!(
            cache("type=registry"),
            Err("--cache-to `type=registry`: type=registry needs ref=REPOSITORY[:TAG]".into())
        );
        assert_eq!(
            cache("type=registry,ref=r/c,mode=all"),
            Err(
                "--cache-to `type=registry,ref=r/c,mode=all`: mode `all` is neither min nor max"
                    .into()
            )
        );
        assert_eq!(
            cache("type=floppy"),
            Err("--cache-to `type=floppy`: unknown cache type `floppy`; expected registry, inline, local, gha, s3 or azblob".into())
        );
        assert_eq!(
            cache("ref=r/c"),
            Err("--cache-to `ref=r/c`: no `type=`; expected e.g. type=registry,ref=R".into())
        );
    }

    #[test]
    fn a_registry_cache_is_kept_apart_per_platform() {
        let arm: crate::Platform = "linux/arm64".parse().unwrap();
        let split = |text: &str| {
            CacheSpec::parse("--cache-to", text)
                .unwrap()
                .for_platform(&arm)
                .to_csv()
        };
        assert_eq!(
            split("type=registry,ref=127.0.0.1:5000/t/cache:main,mode=max"),
            "type=registry,mode=max,ref=127.0.0.1:5000/t/cache:main-linux-arm64"
        );
        assert_eq!(
            split("type=registry,ref=127.0.0.1:5000/t/cache"),
            "type=registry,ref=127.0.0.1:5000/t/cache:linux-arm64"
        );
        assert_eq!(
            split("type=registry,ref=r/c:x,platform-split=false"),
            "type=registry,ref=r/c:x"
        );
        assert_eq!(split("type=inline"), "type=inline");
        let v7: crate::Platform = "linux/arm/v7".parse().unwrap();
        assert_eq!(
            CacheSpec::parse("--cache-to", "r/c:1")
                .unwrap()
                .for_platform(&v7)
                .to_csv(),
            "type=registry,ref=r/c:1-linux-arm-v7"
        );
    }

    #[test]
    fn network_hosts_and_shm_size() {
        assert_eq!(parse_network("none"), Ok("none".into()));
        assert!(
            parse_network("bridge")
                .unwrap_err()
                .to_string()
                .contains("expected default, none or host")
        );
        assert_eq!(parse_add_host("db:10.0.0.2"), Ok("db:10.0.0.2".into()));
        assert_eq!(parse_add_host("db=10.0.0.2"), Ok("db:10.0.0.2".into()));
        assert_eq!(parse_add_host("v6=[::1]"), Ok("v6:::1".into()));
        assert_eq!(
            parse_add_host("gw:host-gateway"),
            Ok("gw:host-gateway".into())
        );
        assert_eq!(
            parse_add_host("db:ten").unwrap_err().to_string(),
            "--add-host `db:ten`: `ten` is not an IP address (or host-gateway)"
        );
        assert_eq!(parse_shm_size("64m"), Ok(64 << 20));
        assert_eq!(parse_shm_size("2g"), Ok(2 << 30));
        assert_eq!(parse_shm_size("512"), Ok(512));
        assert_eq!(parse_shm_size("1kb"), Ok(1024));
        assert!(parse_shm_size("lots").is_err());
        assert!(parse_shm_size("0").is_err());
    }

    #[test]
    fn a_secret_never_shows_in_debug_output() {
        let secrets: Secrets = [("token".to_owned(), SecretValue(b"hunter2".to_vec()))].into();
        let shown = format!("{secrets:?}");
        assert_eq!(shown, r#"{"token": SecretValue(7 bytes)}"#);
    }

    #[test]
    fn secret_ids() {
        assert_eq!(check_secret_id("npm_token"), Ok(()));
        assert_eq!(
            check_secret_id("a b").unwrap_err().to_string(),
            "--secret `a b`: the id must be 1 to 128 letters, digits, `-`, `_` or `.`"
        );
    }
}
