//! Bounds on everything a caller sends, so that no request can grow the state store, a listing or
//! the disk without limit.
//!
//! Each bound has a default and a key in the `[limits]` table of the config file (`--config`);
//! every refusal names the value, the limit and that key. A bad request (too many or too large
//! build args and labels, too long names) is `InvalidArgument`; a context upload over its size or
//! over the team's stored total is `ResourceExhausted`.
//!
//! The defaults keep one build record within a few hundred KiB (etcd takes 1.5 MiB per request)
//! and a listing of 100 builds far below the 16 MiB message limit.

use crate::build::BuildRequest;

/// The `[limits]` table; every field has a default, so an empty table (or none) is the defaults.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Most `--build-arg`s per build (default 100).
    pub max_build_args: usize,
    /// Most `--label`s per build (default 100).
    pub max_labels: usize,
    /// Most bytes of one build arg or label, key and value together (default 16 KiB).
    pub max_entry_bytes: usize,
    /// Most bytes of all build args and labels of a build together (default 64 KiB).
    pub max_entries_total_bytes: usize,
    /// Longest `--target` stage name, in bytes (default 256).
    pub max_target_bytes: usize,
    /// Longest Dockerfile path (`-f`), in bytes (default 1024).
    pub max_dockerfile_bytes: usize,
    /// Longest image reference, in bytes (default 1024).
    pub max_image_bytes: usize,
    /// Most platforms per build (default 16).
    pub max_platforms: usize,
    /// Longest platform text (`linux/arm64/v8`), in bytes (default 64).
    pub max_platform_bytes: usize,
    /// Largest context upload, in bytes (default 4 GiB).
    pub max_context_bytes: u64,
    /// Most context bytes one team may have stored at once, in bytes (default 50 GiB); a context
    /// that the team's builds no longer use is removed after `--context-ttl` and frees its share.
    pub max_team_context_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_build_args: 100,
            max_labels: 100,
            max_entry_bytes: 16 << 10,
            max_entries_total_bytes: 64 << 10,
            max_target_bytes: 256,
            max_dockerfile_bytes: 1024,
            max_image_bytes: 1024,
            max_platforms: 16,
            max_platform_bytes: 64,
            max_context_bytes: 4 << 30,
            max_team_context_bytes: 50 << 30,
        }
    }
}

/// A request or upload over a limit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{what} is {actual}, over the limit of {limit} (`{key}` in the [limits] table of the coordinator's config file)"
)]
pub struct OverLimit {
    /// What was measured, naming the value (e.g. "build arg `X` (key and value)").
    pub what: String,
    /// How much it was (with its unit).
    pub actual: String,
    /// The limit (with its unit).
    pub limit: String,
    /// The config key.
    pub key: &'static str,
}

fn over(what: String, actual: u64, limit: u64, unit: &str, key: &'static str) -> OverLimit {
    let with_unit = |n: u64| {
        if unit.is_empty() {
            n.to_string()
        } else {
            format!("{n} {unit}")
        }
    };
    OverLimit {
        what,
        actual: with_unit(actual),
        limit: with_unit(limit),
        key,
    }
}

impl Limits {
    /// Checks a build request's sizes (before anything else looks at it).
    pub fn check_request(&self, r: &BuildRequest) -> Result<(), OverLimit> {
        let bytes = |what: String, n: usize, limit: usize, key| {
            if n > limit {
                Err(over(what, n as u64, limit as u64, "bytes", key))
            } else {
                Ok(())
            }
        };
        let count = |what: &str, n: usize, limit: usize, key| {
            if n > limit {
                Err(over(what.to_owned(), n as u64, limit as u64, "", key))
            } else {
                Ok(())
            }
        };
        bytes(
            "the image reference".into(),
            r.image.len(),
            self.max_image_bytes,
            "max_image_bytes",
        )?;
        count(
            "the number of platforms",
            r.platforms.len(),
            self.max_platforms,
            "max_platforms",
        )?;
        for p in r.platforms.iter().chain(r.platform_dockerfiles.keys()) {
            bytes(
                format!("platform {}", quote(p)),
                p.len(),
                self.max_platform_bytes,
                "max_platform_bytes",
            )?;
        }
        bytes(
            "the target stage name".into(),
            r.target.len(),
            self.max_target_bytes,
            "max_target_bytes",
        )?;
        for path in std::iter::once(&r.dockerfile).chain(r.platform_dockerfiles.values()) {
            bytes(
                format!("dockerfile path {}", quote(path)),
                path.len(),
                self.max_dockerfile_bytes,
                "max_dockerfile_bytes",
            )?;
        }
        count(
            "the number of build args",
            r.build_args.len(),
            self.max_build_args,
            "max_build_args",
        )?;
        count(
            "the number of labels",
            r.labels.len(),
            self.max_labels,
            "max_labels",
        )?;
        let mut total = 0;
        for (what, map) in [("build arg", &r.build_args), ("label", &r.labels)] {
            for (k, v) in map {
                let n = k.len() + v.len();
                total += n;
                bytes(
                    format!("{what} {} (key and value)", quote(k)),
                    n,
                    self.max_entry_bytes,
                    "max_entry_bytes",
                )?;
            }
        }
        bytes(
            "all build args and labels together".into(),
            total,
            self.max_entries_total_bytes,
            "max_entries_total_bytes",
        )
    }

    /// Checks an upload that has reached `size` bytes so far.
    pub fn check_upload(&self, digest: &str, size: u64) -> Result<(), OverLimit> {
        if size > self.max_context_bytes {
            return Err(over(
                format!("the upload of context {}", quote(digest)),
                size,
                self.max_context_bytes,
                "bytes (so far)",
                "max_context_bytes",
            ));
        }
        Ok(())
    }

    /// Checks that `team`, holding `stored` context bytes, may store `size` more.
    pub fn check_team_total(&self, team: &str, stored: u64, size: u64) -> Result<(), OverLimit> {
        let total = stored.saturating_add(size);
        if total > self.max_team_context_bytes {
            return Err(over(
                format!("the context bytes stored for team `{team}` with this upload"),
                total,
                self.max_team_context_bytes,
                "bytes",
                "max_team_context_bytes",
            ));
        }
        Ok(())
    }
}

/// A value from a caller, fit for an error message: in backticks, control and non-UTF-8 bytes
/// escaped, and cut to 100 characters (with the length said) when longer.
pub fn quote(value: &str) -> String {
    const SHOWN: usize = 100;
    let escaped: String = value
        .chars()
        .take(SHOWN)
        .flat_map(char::escape_debug)
        .collect();
    let n = value.chars().count();
    if n > SHOWN {
        format!("`{escaped}…` ({} bytes)", value.len())
    } else {
        format!("`{escaped}`")
    }
}

/// Bytes from a caller, fit for an error message: valid UTF-8 quoted as [`quote`] does, anything
/// else as its first bytes in hex.
pub fn quote_bytes(value: &[u8]) -> String {
    match std::str::from_utf8(value) {
        Ok(s) => quote(s),
        Err(_) => {
            let shown = &value[..value.len().min(16)];
            format!(
                "{} bytes of binary data starting with {}",
                value.len(),
                hex::encode(shown)
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(limits: &Limits, edit: impl FnOnce(&mut BuildRequest), expected: Option<&str>) {
        let mut r = BuildRequest {
            image: "127.0.0.1:5000/team/app:1".into(),
            platforms: vec!["linux/amd64".into()],
            ..Default::default()
        };
        edit(&mut r);
        match (limits.check_request(&r), expected) {
            (Ok(()), None) => {}
            (Err(e), Some(needle)) => {
                let text = e.to_string();
                assert!(text.contains(needle), "`{text}` should contain `{needle}`");
                assert!(text.contains(e.key), "{text}");
            }
            (got, want) => panic!("got {got:?}, expected {want:?}"),
        }
    }

    #[test]
    fn each_limit_refuses_one_over_and_names_its_key() {
        let small = Limits {
            max_build_args: 2,
            max_labels: 1,
            max_entry_bytes: 10,
            max_entries_total_bytes: 15,
            max_target_bytes: 5,
            max_dockerfile_bytes: 12,
            max_image_bytes: 30,
            max_platforms: 2,
            ..Limits::default()
        };
        let args = |n: usize| (0..n).map(|i| (format!("A{i}"), "v".to_owned())).collect();
        check(&small, |_| {}, None);
        check(&small, |r| r.build_args = args(2), None);
        check(
            &small,
            |r| r.build_args = args(3),
            Some("the number of build args is 3, over the limit of 2 (`max_build_args`"),
        );
        check(&small, |r| r.labels = args(2), Some("`max_labels`"));
        check(
            &small,
            |r| r.build_args = [("K".into(), "0123456789".into())].into(),
            Some("build arg `K` (key and value) is 11 bytes, over the limit of 10 bytes"),
        );
        check(
            &small,
            |r| {
                r.build_args = [("A".into(), "12345678".into())].into();
                r.labels = [("B".into(), "12345678".into())].into();
            },
            Some("all build args and labels together is 18 bytes"),
        );
        check(
            &small,
            |r| r.target = "stage1".into(),
            Some("`max_target_bytes`"),
        );
        check(&small, |r| r.target = "stage".into(), None);
        check(
            &small,
            |r| r.dockerfile = "a/Dockerfile.x".into(),
            Some("dockerfile path `a/Dockerfile.x`"),
        );
        check(
            &small,
            |r| r.platform_dockerfiles = [("linux/amd64".into(), "b/Dockerfile.x".into())].into(),
            Some("dockerfile path `b/Dockerfile.x`"),
        );
        check(
            &small,
            |r| r.image = format!("127.0.0.1:5000/{}:1", "a".repeat(20)),
            Some("`max_image_bytes`"),
        );
        check(
            &small,
            |r| {
                r.platforms = vec![
                    "linux/amd64".into(),
                    "linux/arm64".into(),
                    "linux/s390x".into(),
                ]
            },
            Some("the number of platforms is 3"),
        );
        check(
            &small,
            |r| r.platforms = vec![format!("linux/{}", "x".repeat(70))],
            Some("`max_platform_bytes`"),
        );
    }

    #[test]
    fn uploads_are_bounded_per_upload_and_per_team() {
        let l = Limits {
            max_context_bytes: 100,
            max_team_context_bytes: 250,
            ..Limits::default()
        };
        assert!(l.check_upload("sha256:x", 100).is_ok());
        let e = l.check_upload("sha256:x", 101).unwrap_err().to_string();
        assert!(
            e.contains("`max_context_bytes`") && e.contains("101 bytes (so far)"),
            "{e}"
        );
        assert!(l.check_team_total("a", 150, 100).is_ok());
        let e = l.check_team_total("a", 200, 100).unwrap_err().to_string();
        assert!(
            e.contains("team `a`") && e.contains("`max_team_context_bytes`"),
            "{e}"
        );
    }

    #[test]
    fn quoted_values_are_escaped_and_short() {
        assert_eq!(quote("ok"), "`ok`");
        assert_eq!(quote("a\u{1b}[31mred\n"), "`a\\u{1b}[31mred\\n`");
        let long = "x".repeat(10_000);
        let q = quote(&long);
        assert!(q.len() < 130 && q.ends_with("(10000 bytes)"), "{q}");
        let q = quote_bytes(&[0x1f, 0x8b, 0xff, 0x00, b'a']);
        assert_eq!(q, "5 bytes of binary data starting with 1f8bff0061");
    }
}
