//! `--attest`, `--provenance` and `--sbom`, read as buildx reads them
//! (`util/buildflags/attests.go`): one [`Attest`] per attestation type, in buildx's CSV form
//! (`type=provenance,mode=max`, `type=sbom,generator=IMAGE`, `type=provenance,disabled=true`).
//!
//! - `--provenance VALUE` is `--attest type=provenance,VALUE`, and a boolean `VALUE` means
//!   `disabled=!VALUE` (`--provenance=false` turns the default off); `--sbom` likewise.
//! - A later entry of one type replaces an earlier one, as buildx merges them.
//! - BuildKit makes two types: `provenance` (SLSA, by BuildKit itself) and `sbom` (SPDX, by a
//!   generator image, `docker/buildkit-syft-scanner` unless `generator=` names another).
//! - A type with no entry gets buildx's default from the worker: `provenance` `mode=min` where
//!   the engine can attach attestations (the containerd image store), as `docker buildx build`
//!   adds it; `BUILDX_NO_DEFAULT_ATTESTATIONS=1` on the CLI's machine sends `disabled=true`.
//!
//! Bounds: at most one entry per type (so two), each at most [`MAX_ATTEST_BYTES`].

use std::collections::BTreeMap;

use super::FlagError;

/// Longest `--attest` value taken.
pub const MAX_ATTEST_BYTES: usize = 1024;
/// The attestation types BuildKit makes.
pub const ATTEST_TYPES: [&str; 2] = ["provenance", "sbom"];

/// One attestation request.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Attest {
    /// `provenance` or `sbom`.
    pub kind: String,
    /// `disabled=true`: none of this type, not even the default.
    pub disabled: bool,
    /// The other attributes (`mode`, `generator`, `builder-id`...), passed to BuildKit as given.
    pub attrs: BTreeMap<String, String>,
}

impl Attest {
    /// Parses buildx's CSV form; `flag` names the flag in errors.
    pub fn parse(flag: &'static str, text: &str) -> Result<Self, FlagError> {
        let bad = |reason: String| FlagError::new(flag, text, reason);
        if text.len() > MAX_ATTEST_BYTES {
            return Err(bad(format!(
                "{} bytes; at most {MAX_ATTEST_BYTES} are taken",
                text.len()
            )));
        }
        let mut attest = Attest::default();
        for field in text.split(',').map(str::trim).filter(|f| !f.is_empty()) {
            let (key, value) = field.split_once('=').ok_or_else(|| {
                bad(format!(
                    "`{field}` is not KEY=VALUE; expected e.g. type=provenance,mode=max"
                ))
            })?;
            match key.trim().to_ascii_lowercase().as_str() {
                "type" => attest.kind = value.trim().to_owned(),
                "disabled" => {
                    attest.disabled = parse_bool(value.trim())
                        .ok_or_else(|| bad(format!("`{field}`: expected true or false")))?;
                }
                other => {
                    attest
                        .attrs
                        .insert(other.to_owned(), value.trim().to_owned());
                }
            }
        }
        match attest.kind.as_str() {
            "" => Err(bad(
                "no `type=`; expected type=provenance or type=sbom".into()
            )),
            k if ATTEST_TYPES.contains(&k) => Ok(attest),
            other => Err(bad(format!(
                "unknown attestation type `{other}`; BuildKit makes provenance and sbom"
            ))),
        }
    }

    /// `--provenance VALUE` / `--sbom VALUE` (`kind`), as buildx's `CanonicalizeAttest` reads it:
    /// a boolean turns the type on or off, anything else is its attributes.
    pub fn shorthand(flag: &'static str, kind: &str, value: &str) -> Result<Self, FlagError> {
        let text = match parse_bool(value.trim()) {
            Some(on) => format!("type={kind},disabled={}", !on),
            None => format!("type={kind},{value}"),
        };
        Self::parse(flag, &text).map_err(|e| FlagError {
            value: value.to_owned(),
            ..e
        })
    }

    /// buildx's CSV form, attributes in key order: the wire form and the state store's.
    pub fn to_csv(&self) -> String {
        let mut fields = vec![format!("type={}", self.kind)];
        if self.disabled {
            fields.push("disabled=true".into());
        }
        fields.extend(self.attrs.iter().map(|(k, v)| format!("{k}={v}")));
        fields.join(",")
    }

    /// The Dockerfile frontend's attribute for it (`attest:provenance` = `type=provenance,...`,
    /// what buildx sends), or `None` when disabled.
    pub fn frontend_attr(&self) -> Option<(String, String)> {
        (!self.disabled).then(|| (format!("attest:{}", self.kind), self.to_csv()))
    }
}

/// `attests` with a later entry of a type replacing an earlier one (buildx's
/// `removeAttestDupes`), in the order each type first came.
pub fn merge(attests: Vec<Attest>) -> Vec<Attest> {
    let mut merged: Vec<Attest> = Vec::new();
    for a in attests {
        match merged.iter_mut().find(|m| m.kind == a.kind) {
            Some(m) => *m = a,
            None => merged.push(a),
        }
    }
    merged
}

/// The provenance buildx asks for when none was: minimal, only for exporters that attach it.
pub fn default_provenance() -> Attest {
    Attest {
        kind: "provenance".into(),
        disabled: false,
        attrs: BTreeMap::from([
            ("inline-only".to_owned(), "true".to_owned()),
            ("mode".to_owned(), "min".to_owned()),
        ]),
    }
}

/// Go's `strconv.ParseBool`, which buildx uses.
pub fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_read_as_buildx_reads_them() {
        let csv = |r: Result<Attest, FlagError>| r.map(|a| a.to_csv()).map_err(|e| e.reason);
        let table: [(&str, &str, Result<&str, &str>); 9] = [
            ("--provenance", "true", Ok("type=provenance")),
            ("--provenance", "false", Ok("type=provenance,disabled=true")),
            ("--provenance", "mode=max", Ok("type=provenance,mode=max")),
            ("--sbom", "1", Ok("type=sbom")),
            (
                "--sbom",
                "generator=r/scanner:1",
                Ok("type=sbom,generator=r/scanner:1"),
            ),
            ("--sbom", "maybe", Err("`maybe` is not KEY=VALUE")),
            (
                "--attest",
                "type=provenance,mode=max,builder-id=ci",
                Ok("type=provenance,builder-id=ci,mode=max"),
            ),
            ("--attest", "mode=max", Err("no `type=`")),
            (
                "--attest",
                "type=vex",
                Err("unknown attestation type `vex`"),
            ),
        ];
        for (flag, value, expected) in table {
            let got = if flag == "--attest" {
                csv(Attest::parse(flag, value))
            } else {
                let kind = flag.trim_start_matches("--");
                csv(Attest::shorthand(flag, kind, value))
            };
            match (got, expected) {
                (Ok(g), Ok(e)) => assert_eq!(g, e, "{flag} {value}"),
                (Err(g), Err(e)) => assert!(g.contains(e), "{flag} {value}: {g}"),
                (g, e) => panic!("{flag} {value}: got {g:?}, expected {e:?}"),
            }
        }
        let long = format!("type=sbom,generator={}", "x".repeat(MAX_ATTEST_BYTES));
        assert!(Attest::parse("--attest", &long).is_err());
    }

    #[test]
    fn a_later_entry_of_a_type_wins_and_a_disabled_one_sends_nothing() {
        let p = |t: &str| Attest::parse("--attest", t).unwrap();
        let merged = merge(vec![
            p("type=provenance,mode=max"),
            p("type=sbom"),
            p("type=provenance,disabled=true"),
        ]);
        assert_eq!(
            merged.iter().map(Attest::to_csv).collect::<Vec<_>>(),
            ["type=provenance,disabled=true", "type=sbom"]
        );
        assert_eq!(merged[0].frontend_attr(), None);
        assert_eq!(
            merged[1].frontend_attr(),
            Some(("attest:sbom".into(), "type=sbom".into()))
        );
        assert_eq!(
            default_provenance().frontend_attr().unwrap().1,
            "type=provenance,inline-only=true,mode=min"
        );
    }
}
