//! Platforms (`os/arch[/variant]`) and the normalisation of what people type.
//!
//! The rules follow containerd's `platforms.Normalize`, which Docker uses: `x86_64` and `x86-64` are
//! `amd64`; `aarch64`, `arm64v8` and `arm64/v8` are `arm64` with no variant; `armhf` is `arm/v7`,
//! `armel` is `arm/v6`, a bare `arm` is `arm/v7`; `i386` is `386`. A missing OS means `linux`.

use std::fmt;
use std::str::FromStr;

use crate::v1;

/// A normalised OCI platform. Construct it with [`Platform::parse`] (or `str::parse`), which rejects
/// what Manifold cannot build and normalises aliases, so two equal platforms always compare equal.
/// Serialises as its `os/arch[/variant]` text.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Platform {
    os: String,
    architecture: String,
    variant: Option<String>,
}

/// A platform string that cannot be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown platform `{input}`: {reason}; expected os/arch[/variant], e.g. linux/amd64, linux/arm64, linux/arm/v7"
)]
pub struct PlatformError {
    /// What was given.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

const KNOWN_OS: &[&str] = &[
    "linux", "windows", "darwin", "freebsd", "netbsd", "openbsd", "solaris", "illumos", "aix",
];

const KNOWN_ARCH: &[&str] = &[
    "amd64", "arm64", "arm", "386", "ppc64le", "ppc64", "s390x", "riscv64", "mips64le", "mips64",
    "loong64", "wasm",
];

impl Platform {
    /// `linux/amd64`.
    pub fn linux_amd64() -> Self {
        Self::new_unchecked("linux", "amd64", None)
    }

    /// `linux/arm64`.
    pub fn linux_arm64() -> Self {
        Self::new_unchecked("linux", "arm64", None)
    }

    fn new_unchecked(os: &str, arch: &str, variant: Option<&str>) -> Self {
        Self {
            os: os.to_owned(),
            architecture: arch.to_owned(),
            variant: variant.map(str::to_owned),
        }
    }

    /// Parses and normalises `os/arch[/variant]`, `arch[/variant]` or an alias such as `x86_64`.
    pub fn parse(input: &str) -> Result<Self, PlatformError> {
        let err = |reason: &str| PlatformError {
            input: input.to_owned(),
            reason: reason.to_owned(),
        };
        let lowered = input.trim().to_ascii_lowercase();
        if lowered.is_empty() {
            return Err(err("it is empty"));
        }
        let parts: Vec<&str> = lowered.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(err("it has an empty component"));
        }
        let (os, arch, variant) = match parts.as_slice() {
            [a] => ("linux", *a, None),
            [first, second] if is_os(first) => (*first, *second, None),
            [a, v] => ("linux", *a, Some(*v)),
            [o, a, v] => (*o, *a, Some(*v)),
            _ => return Err(err("it has more than three components")),
        };
        let os = if os == "macos" { "darwin" } else { os };
        if !is_os(os) {
            return Err(err(&format!("`{os}` is not a known operating system")));
        }
        let (arch, variant) = normalise_arch(arch, variant).ok_or_else(|| {
            err(&match variant {
                Some(v) => format!("`{arch}/{v}` is not a known architecture and variant"),
                None => format!("`{arch}` is not a known architecture"),
            })
        })?;
        Ok(Self::new_unchecked(os, arch, variant))
    }

    /// Builds a platform from the parts a Docker daemon or an image config reports.
    pub fn from_parts(os: &str, arch: &str, variant: Option<&str>) -> Result<Self, PlatformError> {
        let joined = match variant.filter(|v| !v.is_empty()) {
            Some(v) => format!("{os}/{arch}/{v}"),
            None => format!("{os}/{arch}"),
        };
        Self::parse(&joined)
    }

    /// Operating system, e.g. `linux`.
    pub fn os(&self) -> &str {
        &self.os
    }

    /// Architecture in GOARCH terms, e.g. `amd64`, `arm64`.
    pub fn architecture(&self) -> &str {
        &self.architecture
    }

    /// Variant, e.g. `v7` for `arm`; `None` for arm64's default `v8`.
    pub fn variant(&self) -> Option<&str> {
        self.variant.as_deref()
    }

    /// The name `uname -m` prints on this platform, used for per-arch tags (`app:1.0-aarch64`), the
    /// naming teams already use.
    pub fn uname_arch(&self) -> String {
        match (self.architecture.as_str(), self.variant()) {
            ("amd64", _) => "x86_64".into(),
            ("arm64", _) => "aarch64".into(),
            ("arm", Some("v7")) => "armv7l".into(),
            ("arm", Some("v6")) => "armv6l".into(),
            ("arm", Some("v5")) => "armv5l".into(),
            ("386", _) => "i386".into(),
            (arch, Some(v)) => format!("{arch}{v}"),
            (arch, None) => arch.into(),
        }
    }

    /// Whether an image of platform `image` is what a client of `self` would pull, as Docker decides
    /// it: same OS and architecture, and the same variant (arm64's absent variant equals `v8`).
    pub fn matches(&self, image: &Platform) -> bool {
        self == image
    }
}

fn is_os(s: &str) -> bool {
    KNOWN_OS.contains(&s) || s == "macos"
}

/// Returns the normalised (architecture, variant), or None when unknown.
fn normalise_arch<'a>(
    arch: &'a str,
    variant: Option<&'a str>,
) -> Option<(&'a str, Option<&'a str>)> {
    let variant = variant.map(|v| match v {
        "5" => "v5",
        "6" => "v6",
        "7" => "v7",
        "8" => "v8",
        other => other,
    });
    let (arch, variant) = match (arch, variant) {
        ("x86_64" | "x86-64" | "amd64", None | Some("v1")) => ("amd64", None),
        ("x86_64" | "x86-64" | "amd64", Some(v @ ("v2" | "v3" | "v4"))) => ("amd64", Some(v)),
        ("aarch64" | "arm64", None | Some("v8")) => ("arm64", None),
        ("aarch64" | "arm64", Some(v @ ("v8.1" | "v8.2" | "v9"))) => ("arm64", Some(v)),
        ("arm64v8", None) => ("arm64", None),
        ("armhf" | "armv7l" | "armv7", None) => ("arm", Some("v7")),
        ("armel" | "armv6l" | "armv6", None) => ("arm", Some("v6")),
        ("armv5l" | "armv5", None) => ("arm", Some("v5")),
        ("arm", None) => ("arm", Some("v7")),
        ("arm", Some(v @ ("v5" | "v6" | "v7"))) => ("arm", Some(v)),
        ("i386" | "i686" | "386", None) => ("386", None),
        (a, None) if KNOWN_ARCH.contains(&a) => (a, None),
        _ => return None,
    };
    Some((arch, variant))
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.variant {
            Some(v) => write!(f, "{}/{}/{}", self.os, self.architecture, v),
            None => write!(f, "{}/{}", self.os, self.architecture),
        }
    }
}

impl serde::Serialize for Platform {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Platform {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Platform::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl FromStr for Platform {
    type Err = PlatformError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl From<&Platform> for v1::Platform {
    fn from(p: &Platform) -> Self {
        v1::Platform {
            os: p.os.clone(),
            architecture: p.architecture.clone(),
            variant: p.variant.clone().unwrap_or_default(),
        }
    }
}

impl From<Platform> for v1::Platform {
    fn from(p: Platform) -> Self {
        (&p).into()
    }
}

impl TryFrom<&v1::Platform> for Platform {
    type Error = PlatformError;
    fn try_from(p: &v1::Platform) -> Result<Self, Self::Error> {
        Platform::from_parts(&p.os, &p.architecture, Some(&p.variant))
    }
}

impl TryFrom<v1::Platform> for Platform {
    type Error = PlatformError;
    fn try_from(p: v1::Platform) -> Result<Self, Self::Error> {
        Platform::try_from(&p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(input: &str, expected: &str) {
        let p = Platform::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
        assert_eq!(p.to_string(), expected, "normalising `{input}`");
    }

    #[test]
    fn normalises_what_people_type() {
        check("linux/amd64", "linux/amd64");
        check("x86_64", "linux/amd64");
        check("linux/x86-64", "linux/amd64");
        check("LINUX/X86_64", "linux/amd64");
        check("aarch64", "linux/arm64");
        check("arm64", "linux/arm64");
        check("arm64v8", "linux/arm64");
        check("arm64/v8", "linux/arm64");
        check("linux/arm64/v8", "linux/arm64");
        check("linux/arm64/8", "linux/arm64");
        check("armhf", "linux/arm/v7");
        check("arm/v7", "linux/arm/v7");
        check("linux/arm", "linux/arm/v7");
        check("arm/v6", "linux/arm/v6");
        check("armel", "linux/arm/v6");
        check("386", "linux/386");
        check("i386", "linux/386");
        check("linux/ppc64le", "linux/ppc64le");
        check("s390x", "linux/s390x");
        check("riscv64", "linux/riscv64");
        check("windows/amd64", "windows/amd64");
        check(" linux/amd64 ", "linux/amd64");
    }

    #[test]
    fn bad_strings_name_themselves_and_the_expected_form() {
        for bad in [
            "",
            "linux/amd46",
            "linux/",
            "plan9/amd64/v1",
            "linux/arm64/v8/x",
            "arm/v9",
        ] {
            let err = Platform::parse(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("`{bad}`")), "{err}");
            assert!(err.contains("expected os/arch[/variant]"), "{err}");
        }
    }

    #[test]
    fn uname_names_are_the_per_arch_tag_suffixes_teams_use() {
        assert_eq!(Platform::linux_amd64().uname_arch(), "x86_64");
        assert_eq!(Platform::linux_arm64().uname_arch(), "aarch64");
        assert_eq!(Platform::parse("arm/v7").unwrap().uname_arch(), "armv7l");
    }

    #[test]
    fn round_trips_through_the_wire_type() {
        for s in ["linux/amd64", "linux/arm64", "linux/arm/v7"] {
            let p = Platform::parse(s).unwrap();
            let wire: v1::Platform = (&p).into();
            assert_eq!(Platform::try_from(&wire).unwrap(), p);
        }
        let v8 = v1::Platform {
            os: "linux".into(),
            architecture: "arm64".into(),
            variant: "v8".into(),
        };
        assert_eq!(Platform::try_from(&v8).unwrap(), Platform::linux_arm64());
    }
}
