//! Platforms (`os[(os.version+features)]/arch[/variant]`): parsing, normalising and matching by
//! containerd's rules (its `platforms` package, which the Docker daemon, BuildKit and buildx use).
//!
//! Parsing ([`Platform::parse`], containerd's `Parse` followed by `Normalize`):
//! - a specifier has one to three parts separated by `/`. The first is an OS name (letters,
//!   digits, `_`, `-`), optionally followed by `(os.version+feature+...)`, with `%`-escapes for
//!   `%`, `+`, `(`, `)` and `/`; the others are letters, digits, `_`, `.` and `-`. Anything else
//!   (empty parts, spaces inside, `&`, a wildcard `*`, four parts) is refused, and the error names
//!   the part that is wrong;
//! - every well-formed value is a platform, known or not: `linux/mips64le`, `plan9/amd64`,
//!   `linux/arm64/v8.2`, `linux/arm/v4`, `android/arm64`;
//! - one part: an OS containerd knows (`linux`, `windows`, `darwin`, ...) takes the architecture
//!   of the machine Manifold runs on; otherwise an architecture containerd knows (`arm64`,
//!   `x86_64`, `armhf`, ...) on `linux`;
//! - two parts are `os/arch`; three are `os/arch/variant`;
//! - normalising: OS, architecture and variant are lowercased, `macos` is `darwin`; `x86_64`,
//!   `x86-64` are `amd64`, whose `v1` is no variant; `aarch64` is `arm64`, whose `8`, `v8`, `v8.0`
//!   are no variant and `9`, `9.0`, `v9.0` are `v9`; `armhf` is `arm/v7`, `armel` is `arm/v6`;
//!   `arm` with no variant or `7` is `arm/v7`, `5`/`6`/`8` are `v5`/`v6`/`v8`; `i386` is `386`;
//!   OS features are sorted and deduplicated. Other variants are kept as written.
//!
//! Matching ([`Platform::matches`], containerd's `NewMatcher`/`OnlyStrict`): equal normalised
//! OS, architecture and variant; for Windows, a compatible `os.version` (same major.minor, same
//! build before LTSC 2022, a build between the LTSC and the host's from then on; an empty version
//! on either side matches) with `win32k` ignored; the other side's OS features a subset of ours.
//!
//! What a machine runs ([`Platform::compatible`], containerd's `Only`): the platform itself, then
//! `amd64/vN` → `amd64/vN-1` ... `amd64` → `386`; `arm/vN` → ... `arm/v5`; `arm64/v9.x` → `v9.x-1`
//! ... `v9` → `v8.(x+5)` ... `v8` → `arm/v8` ... `arm/v5` (an `arm64` variant containerd does not
//! list runs no `arm64` image). [`Platform::choose`] picks among an index's children as
//! containerd does: the first matcher in that order that matches wins, more OS features first
//! among equals, then the index's order.
//!
//! Where Manifold deliberately accepts more than containerd (only where containerd refuses the
//! string, so no string means two things):
//! - surrounding whitespace is ignored, case is not significant;
//! - a lone word that is neither a known OS nor a known architecture but a common alias:
//!   `arm64v8` (arm64), `armv7l`/`armv7` (arm/v7), `armv6l`/`armv6` (arm/v6), `armv5l`/`armv5`
//!   (arm/v5), `i686` (386);
//! - two parts whose first is an architecture (or one of those aliases) and not an OS are
//!   `arch/variant` on linux: `arm/v7`, `arm64/v8`, `amd64/v3`;
//! - a missing OS is `linux` (containerd takes the OS of the machine it runs on: the platforms
//!   Manifold builds are Linux ones whatever the client's OS);
//! - a lone OS on an ARM machine takes `arm/v7` or `arm64` (containerd reads the CPU variant from
//!   `/proc/cpuinfo`).

use std::fmt;
use std::str::FromStr;

use crate::v1;

/// A normalised OCI platform. Construct it with [`Platform::parse`] (or `str::parse`) from what
/// people type, or [`Platform::from_descriptor`] from what an index or config says; both
/// normalise, so two equal platforms always compare equal. Serialises as its text
/// (`linux/arm/v7`, `windows(10.0.17763)/amd64`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Platform {
    os: Box<str>,
    architecture: Box<str>,
    variant: Option<String>,
    /// `os.version` and `os.features`, boxed: rare, and errors holding a platform stay small.
    options: Option<Box<OsOptions>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct OsOptions {
    version: Option<String>,
    features: Vec<String>,
}

/// A platform string (or descriptor) that is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid platform `{input}`: {reason}; expected os/arch[/variant], e.g. linux/amd64, linux/arm64, linux/arm/v7"
)]
pub struct PlatformError {
    /// What was given.
    pub input: String,
    /// What is wrong with it, naming the part.
    pub reason: String,
}

/// The operating systems containerd knows (Go's GOOS values).
const KNOWN_OS: &[&str] = &[
    "aix",
    "android",
    "darwin",
    "dragonfly",
    "freebsd",
    "hurd",
    "illumos",
    "ios",
    "js",
    "linux",
    "nacl",
    "netbsd",
    "openbsd",
    "plan9",
    "solaris",
    "windows",
    "zos",
];

/// The architectures containerd knows (Go's GOARCH values).
const KNOWN_ARCH: &[&str] = &[
    "386",
    "amd64",
    "amd64p32",
    "arm",
    "armbe",
    "arm64",
    "arm64be",
    "ppc64",
    "ppc64le",
    "loong64",
    "mips",
    "mipsle",
    "mips64",
    "mips64le",
    "mips64p32",
    "mips64p32le",
    "ppc",
    "riscv",
    "riscv64",
    "s390",
    "s390x",
    "sparc",
    "sparc64",
    "wasm",
];

/// Manifold's own single-word aliases (architecture, variant), for words containerd refuses.
const MANIFOLD_ALIASES: &[(&str, &str, Option<&str>)] = &[
    ("arm64v8", "arm64", None),
    ("armv7l", "arm", Some("v7")),
    ("armv7", "arm", Some("v7")),
    ("armv6l", "arm", Some("v6")),
    ("armv6", "arm", Some("v6")),
    ("armv5l", "arm", Some("v5")),
    ("armv5", "arm", Some("v5")),
    ("i686", "386", None),
];

/// arm64 variants containerd orders, as (majors, highest minor per major) of what they run.
const ARM64_VERSIONS: &[(&str, &[(u32, u32)])] = &[
    ("v8", &[(8, 0)]),
    ("v8.0", &[(8, 0)]),
    ("v8.1", &[(8, 1)]),
    ("v8.2", &[(8, 2)]),
    ("v8.3", &[(8, 3)]),
    ("v8.4", &[(8, 4)]),
    ("v8.5", &[(8, 5)]),
    ("v8.6", &[(8, 6)]),
    ("v8.7", &[(8, 7)]),
    ("v8.8", &[(8, 8)]),
    ("v8.9", &[(8, 9)]),
    ("v9", &[(9, 0), (8, 5)]),
    ("v9.0", &[(9, 0), (8, 5)]),
    ("v9.1", &[(9, 1), (8, 6)]),
    ("v9.2", &[(9, 2), (8, 7)]),
    ("v9.3", &[(9, 3), (8, 8)]),
    ("v9.4", &[(9, 4), (8, 9)]),
    ("v9.5", &[(9, 5), (8, 9)]),
    ("v9.6", &[(9, 6), (8, 9)]),
    ("v9.7", &[(9, 7), (8, 9)]),
];

/// Whether containerd knows `os` (after normalising).
pub fn is_known_os(os: &str) -> bool {
    KNOWN_OS.contains(&os)
}

/// Whether containerd knows `arch` (after normalising).
pub fn is_known_arch(arch: &str) -> bool {
    KNOWN_ARCH.contains(&arch)
}

impl Platform {
    /// `linux/amd64`.
    pub fn linux_amd64() -> Self {
        Self::normalised("linux", "amd64", None)
    }

    /// `linux/arm64`.
    pub fn linux_arm64() -> Self {
        Self::normalised("linux", "arm64", None)
    }

    fn normalised(os: &str, arch: &str, variant: Option<&str>) -> Self {
        let (architecture, variant) = normalize_arch(arch, variant.unwrap_or(""));
        Self {
            os: normalize_os(os).into(),
            architecture: architecture.into(),
            variant,
            options: None,
        }
    }

    /// Sets `os.version` (empty is none) and `os.features` (sorted, deduplicated).
    fn set_options(&mut self, version: Option<String>, features: Vec<String>) {
        let version = version.filter(|v| !v.is_empty());
        let features = normalize_features(features);
        self.options = (version.is_some() || !features.is_empty())
            .then(|| Box::new(OsOptions { version, features }));
    }

    /// Parses and normalises a platform specifier as containerd does (see the module docs for
    /// the rules and for what Manifold accepts beyond them).
    pub fn parse(input: &str) -> Result<Self, PlatformError> {
        Ok(Self::parse_spec(input)?.normalize())
    }

    /// Parses a platform specifier without normalising it (containerd's `Parse`): what
    /// `docker manifest annotate` writes into a descriptor, e.g. `linux/arm64/v8` keeps its `v8`.
    pub fn parse_spec(input: &str) -> Result<PlatformSpec, PlatformError> {
        let err = |reason: String| PlatformError {
            input: input.to_owned(),
            reason,
        };
        let spec = input.trim();
        if spec.is_empty() {
            return Err(err("it is empty".into()));
        }
        if spec.contains('*') {
            return Err(err("wildcards (`*`) are not supported".into()));
        }
        let parts: Vec<&str> = spec.split('/').collect();
        if parts.len() > 3 {
            return Err(err(format!(
                "it has {} parts separated by `/`, at most three are allowed",
                parts.len()
            )));
        }
        let os_part = parse_os_part(parts[0]).map_err(&err)?;
        for (i, part) in parts.iter().enumerate().skip(1) {
            let what = if i == 1 { "architecture" } else { "variant" };
            check_component(part, what).map_err(&err)?;
        }
        // As containerd's Parse: two parts drop arm's implied v7, three give arm64 its v8.
        let two = |arch: &str| {
            let (arch, variant) = normalize_arch(arch, "");
            let variant = variant.filter(|v| !(arch == "arm" && v == "v7"));
            (arch, variant)
        };
        let three = |arch: &str, variant: &str| {
            let (arch, variant) = normalize_arch(arch, variant);
            let variant = match (arch.as_str(), variant) {
                ("arm64", None) => Some("v8".to_owned()),
                (_, v) => v,
            };
            (arch, variant)
        };
        let (os, (architecture, variant)) = match parts.as_slice() {
            [word] => {
                if is_known_os(&os_part.name) {
                    let (arch, variant) = host_architecture();
                    let variant = variant.filter(|v| *v != "v7").map(str::to_owned);
                    (os_part.name.clone(), (arch.to_owned(), variant))
                } else if is_known_arch(&normalize_arch(word, "").0) && os_part.version.is_none() {
                    ("linux".to_owned(), two(word))
                } else if let Some((_, arch, variant)) = MANIFOLD_ALIASES
                    .iter()
                    .find(|(w, ..)| w.eq_ignore_ascii_case(word))
                {
                    (
                        "linux".to_owned(),
                        ((*arch).to_owned(), variant.map(str::to_owned)),
                    )
                } else {
                    return Err(err(format!(
                        "`{word}` is neither a known operating system nor a known architecture; give both, e.g. linux/{word}"
                    )));
                }
            }
            [first, second] if is_arch_shorthand(first) && os_part.version.is_none() => {
                let (arch, _) = one_word_arch(first).expect("shorthand is an architecture");
                ("linux".to_owned(), three(&arch, second))
            }
            [_, arch] => (os_part.name.clone(), two(arch)),
            [_, arch, variant] => (os_part.name.clone(), three(arch, variant)),
            _ => unreachable!("one to three parts"),
        };
        let with_options = parts.len() > 1 || is_known_os(&os_part.name);
        Ok(PlatformSpec {
            os,
            architecture,
            variant,
            os_version: os_part.version.filter(|v| with_options && !v.is_empty()),
            os_features: if with_options {
                os_part.features
            } else {
                Vec::new()
            },
        })
    }

    /// Builds a platform from what an index entry, an image config or a Docker daemon says
    /// (`os`, `architecture`, `variant`, `os.version`, `os.features`), normalised. Only values
    /// that are empty (os, architecture) or hold characters a platform cannot have are refused.
    pub fn from_descriptor(
        os: &str,
        architecture: &str,
        variant: Option<&str>,
        os_version: Option<&str>,
        os_features: &[String],
    ) -> Result<Self, PlatformError> {
        let shown = match variant.filter(|v| !v.is_empty()) {
            Some(v) => format!("{os}/{architecture}/{v}"),
            None => format!("{os}/{architecture}"),
        };
        let err = |reason: String| PlatformError {
            input: shown.clone(),
            reason,
        };
        if os.is_empty() {
            return Err(err("the os is empty".into()));
        }
        if !os
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(err(format!(
                "`{os}` is not an operating system name: use letters, digits, `_` and `-`"
            )));
        }
        check_component(architecture, "architecture").map_err(&err)?;
        let variant = variant.filter(|v| !v.is_empty());
        if let Some(v) = variant {
            check_component(v, "variant").map_err(&err)?;
        }
        let mut p = Self::normalised(os, architecture, variant);
        p.set_options(os_version.map(str::to_owned), os_features.to_vec());
        Ok(p)
    }

    /// Builds a platform from the three parts a Docker daemon or an image config reports.
    pub fn from_parts(os: &str, arch: &str, variant: Option<&str>) -> Result<Self, PlatformError> {
        Self::from_descriptor(os, arch, variant, None, &[])
    }

    /// Operating system, e.g. `linux`.
    pub fn os(&self) -> &str {
        &self.os
    }

    /// Architecture in GOARCH terms, e.g. `amd64`, `arm64`.
    pub fn architecture(&self) -> &str {
        &self.architecture
    }

    /// Variant, e.g. `v7` for `arm`; `None` for arm64's default `v8` and amd64's `v1`.
    pub fn variant(&self) -> Option<&str> {
        self.variant.as_deref()
    }

    /// `os.version`, e.g. `10.0.17763.5830` for a Windows image.
    pub fn os_version(&self) -> Option<&str> {
        self.options.as_ref()?.version.as_deref()
    }

    /// `os.features`, sorted and deduplicated (e.g. `win32k`).
    pub fn os_features(&self) -> &[String] {
        self.options.as_ref().map_or(&[], |o| &o.features)
    }

    /// This platform without `os.version` and `os.features`: what a worker builds.
    pub fn without_os_options(&self) -> Self {
        Self {
            options: None,
            ..self.clone()
        }
    }

    /// The name `uname -m` prints on this platform, used for per-arch tags (`app:1.0-aarch64`), the
    /// naming teams already use.
    pub fn uname_arch(&self) -> String {
        match (&*self.architecture, self.variant()) {
            ("amd64", None) => "x86_64".into(),
            ("arm64", None) => "aarch64".into(),
            ("arm", Some("v7")) => "armv7l".into(),
            ("arm", Some("v6")) => "armv6l".into(),
            ("arm", Some("v5")) => "armv5l".into(),
            ("386", _) => "i386".into(),
            ("amd64", Some(v)) => format!("x86_64{v}"),
            ("arm64", Some(v)) => format!("aarch64{v}"),
            (arch, Some(v)) => format!("{arch}{v}"),
            (arch, None) => arch.into(),
        }
    }

    /// Whether an image of platform `image` is exactly this platform, as containerd's matcher
    /// (`OnlyStrict`) decides it: see the module docs.
    pub fn matches(&self, image: &Platform) -> bool {
        if self.os != image.os
            || self.architecture != image.architecture
            || self.variant != image.variant
        {
            return false;
        }
        let mut features: Vec<&str> = image.os_features().iter().map(String::as_str).collect();
        if &*self.os == "windows" {
            if !windows_versions_match(self.os_version(), image.os_version()) {
                return false;
            }
            features.retain(|f| *f != "win32k");
        }
        features
            .iter()
            .all(|f| self.os_features().iter().any(|mine| mine == f))
    }

    /// The platforms a machine of this platform runs, best first (containerd's `Only`): see the
    /// module docs.
    pub fn compatible(&self) -> Vec<Platform> {
        platform_vector(self)
    }

    /// Whether a machine of this platform runs an image of `image` (containerd's `Only`).
    pub fn runs(&self, image: &Platform) -> bool {
        self.compatible().iter().any(|m| m.matches(image))
    }

    /// The index (into `candidates`, e.g. an index's children in order) of the one a machine of
    /// this platform pulls, as containerd chooses it with `Only`; `None` when none runs here.
    pub fn choose(&self, candidates: &[Platform]) -> Option<usize> {
        self.preference(candidates).first().copied()
    }

    /// The indexes of the `candidates` a machine of this platform runs, best first (containerd's
    /// `Only` with its `Less`, sorted stably).
    pub fn preference(&self, candidates: &[Platform]) -> Vec<usize> {
        order_among(&self.compatible(), candidates)
    }

    /// As [`Platform::choose`], accepting only this exact platform (containerd's `OnlyStrict`).
    pub fn choose_strict(&self, candidates: &[Platform]) -> Option<usize> {
        order_among(std::slice::from_ref(self), candidates)
            .first()
            .copied()
    }
}

/// A platform as a descriptor writes it (`platform` of an index entry, or containerd's `Parse`
/// before `Normalize`): `linux/arm64/v8` keeps its `v8` here, [`PlatformSpec::normalize`] drops it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlatformSpec {
    /// `os`.
    pub os: String,
    /// `architecture`.
    pub architecture: String,
    /// `variant`.
    pub variant: Option<String>,
    /// `os.version`.
    pub os_version: Option<String>,
    /// `os.features`, in the order given.
    pub os_features: Vec<String>,
}

impl PlatformSpec {
    /// The normalised platform (containerd's `Normalize`).
    pub fn normalize(&self) -> Platform {
        let mut p = Platform::normalised(&self.os, &self.architecture, self.variant.as_deref());
        p.set_options(self.os_version.clone(), self.os_features.clone());
        p
    }
}

/// The first part of a specifier: an OS name and its optional `(version+features)`.
struct OsPart {
    name: String,
    version: Option<String>,
    features: Vec<String>,
}

fn parse_os_part(part: &str) -> Result<OsPart, String> {
    if part.is_empty() {
        return Err("the operating system (the first part) is empty".into());
    }
    let (name, options) = match part.find('(') {
        Some(open) => {
            let Some(inner) = part[open + 1..].strip_suffix(')') else {
                return Err(format!(
                    "`{part}` is not an operating system: `(` must be closed by a `)` at the end, as in windows(10.0.17763)"
                ));
            };
            (&part[..open], Some(inner))
        }
        None => (part, None),
    };
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    if !name_ok(name) {
        return Err(format!(
            "`{part}` is not an operating system: use letters, digits, `_` and `-`, optionally followed by (os.version+feature), e.g. linux or windows(10.0.17763)"
        ));
    }
    let mut out = OsPart {
        name: normalize_os(name),
        version: None,
        features: Vec::new(),
    };
    let Some(options) = options else {
        return Ok(out);
    };
    let option_ok = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'%' | b'-'))
    };
    let mut pieces = options.split('+');
    let version = pieces.next().unwrap_or("");
    if !option_ok(version) {
        return Err(format!(
            "`{version}` in `{part}` is not an os.version: use letters, digits, `_`, `.`, `-` and %-escapes"
        ));
    }
    out.version = Some(percent_decode(version).map_err(|e| format!("`{part}`: {e}"))?);
    for feature in pieces {
        if feature.is_empty() || !option_ok(feature) {
            return Err(format!(
                "`{feature}` in `{part}` is not an os feature: features are `+` followed by letters, digits, `_`, `.`, `-` and %-escapes"
            ));
        }
        let decoded = percent_decode(feature).map_err(|e| format!("`{part}`: {e}"))?;
        if !decoded.is_empty() {
            out.features.push(decoded);
        }
    }
    Ok(out)
}

fn check_component(part: &str, what: &str) -> Result<(), String> {
    if part.is_empty() {
        return Err(format!("the {what} is empty"));
    }
    if !part
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err(format!(
            "`{part}` is not a valid {what}: use letters, digits, `_`, `.` and `-`"
        ));
    }
    Ok(())
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            let Some(b) = hex else {
                return Err(format!(
                    "invalid %-escape `{}`: expected % and two hex digits",
                    &s[i..(i + 3).min(s.len())]
                ));
            };
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("`{s}` does not decode to UTF-8"))
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '%' => out.push_str("%25"),
            '+' => out.push_str("%2B"),
            '(' => out.push_str("%28"),
            ')' => out.push_str("%29"),
            '/' => out.push_str("%2F"),
            c => out.push(c),
        }
    }
    out
}

fn normalize_os(os: &str) -> String {
    let os = os.to_ascii_lowercase();
    if os == "macos" { "darwin".into() } else { os }
}

fn normalize_features(mut features: Vec<String>) -> Vec<String> {
    features.retain(|f| !f.is_empty());
    features.sort();
    features.dedup();
    features
}

/// containerd's `normalizeArch`, plus `arm` with no variant being `v7` (as `Normalize` gives).
fn normalize_arch(arch: &str, variant: &str) -> (String, Option<String>) {
    let arch = arch.to_ascii_lowercase();
    let mut variant = variant.to_ascii_lowercase();
    let arch = match arch.as_str() {
        "i386" => {
            variant.clear();
            "386".to_owned()
        }
        "x86_64" | "x86-64" | "amd64" => {
            if variant == "v1" {
                variant.clear();
            }
            "amd64".to_owned()
        }
        "aarch64" | "arm64" => {
            match variant.as_str() {
                "8" | "v8" | "v8.0" => variant.clear(),
                "9" | "9.0" | "v9.0" => variant = "v9".into(),
                _ => {}
            }
            "arm64".to_owned()
        }
        "armhf" => {
            variant = "v7".into();
            "arm".to_owned()
        }
        "armel" => {
            variant = "v6".into();
            "arm".to_owned()
        }
        "arm" => {
            match variant.as_str() {
                "" | "7" => variant = "v7".into(),
                "5" | "6" | "8" => variant = format!("v{variant}"),
                _ => {}
            }
            "arm".to_owned()
        }
        _ => arch,
    };
    (arch, Some(variant).filter(|v| !v.is_empty()))
}

/// The architecture a lone word names, containerd's or one of Manifold's aliases.
fn one_word_arch(word: &str) -> Option<(String, Option<String>)> {
    let (arch, variant) = normalize_arch(word, "");
    if is_known_arch(&arch) {
        return Some((arch, variant));
    }
    MANIFOLD_ALIASES
        .iter()
        .find(|(w, ..)| w.eq_ignore_ascii_case(word))
        .map(|(_, a, v)| ((*a).to_owned(), v.map(str::to_owned)))
}

/// Whether `first/second` is Manifold's `arch/variant` shorthand rather than `os/arch`.
fn is_arch_shorthand(first: &str) -> bool {
    !is_known_os(&normalize_os(first)) && one_word_arch(first).is_some()
}

/// The GOARCH of the machine this runs on (containerd's default for a lone OS).
fn host_architecture() -> (&'static str, Option<&'static str>) {
    let little = cfg!(target_endian = "little");
    match std::env::consts::ARCH {
        "x86_64" => ("amd64", None),
        "x86" => ("386", None),
        "aarch64" => ("arm64", None),
        "arm" => ("arm", Some("v7")),
        "powerpc64" if little => ("ppc64le", None),
        "powerpc64" => ("ppc64", None),
        "powerpc" => ("ppc", None),
        "mips64" if little => ("mips64le", None),
        "mips64" => ("mips64", None),
        "mips" if little => ("mipsle", None),
        "mips" => ("mips", None),
        "loongarch64" => ("loong64", None),
        "wasm32" => ("wasm", None),
        other => (other, None),
    }
}

fn windows_build(version: &str) -> Option<(u8, u8, u16)> {
    if version.matches('.').count() < 2 {
        return None;
    }
    let mut it = version.split('.');
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    let build = it.next()?.parse().ok()?;
    Some((major, minor, build))
}

/// containerd's Windows host/container compatibility, `host` being the requested platform.
fn windows_versions_match(host: Option<&str>, image: Option<&str>) -> bool {
    const LTSC2022: u16 = 20348;
    const LTSC_RELEASES: &[u16] = &[20348, 26100];
    let host = host.and_then(windows_build).filter(|v| *v != (0, 0, 0));
    let (Some(host), Some(image)) = (host, image.filter(|v| !v.is_empty())) else {
        return true;
    };
    let image = windows_build(image).unwrap_or((0, 0, 0));
    if host.0 != image.0 || host.1 != image.1 {
        return false;
    }
    if host.2 < LTSC2022 {
        return host.2 == image.2;
    }
    let supported = LTSC_RELEASES
        .iter()
        .rev()
        .find(|r| host.2 > **r)
        .copied()
        .unwrap_or(LTSC2022);
    supported <= image.2 && image.2 <= host.2
}

/// containerd's `platformVector`.
fn platform_vector(p: &Platform) -> Vec<Platform> {
    let like = |arch: &str, variant: Option<String>| {
        let mut q = Platform::normalised(&p.os, arch, variant.as_deref());
        q.options = p.options.clone();
        q
    };
    let version = |v: Option<&str>| v?.strip_prefix('v').unwrap_or(v?).parse::<i64>().ok();
    let mut out = vec![p.clone()];
    match &*p.architecture {
        "amd64" => {
            if let Some(n) = version(p.variant()).filter(|n| *n > 1) {
                out.extend((1..n).rev().map(|v| like("amd64", Some(format!("v{v}")))));
            }
            out.push(like("386", None));
        }
        "arm" => {
            if let Some(n) = version(p.variant()).filter(|n| *n > 5) {
                out.extend((5..n).rev().map(|v| like("arm", Some(format!("v{v}")))));
            }
        }
        "arm64" => {
            let variant = p.variant().unwrap_or("v8");
            out.clear();
            if let Some((_, versions)) = ARM64_VERSIONS.iter().find(|(v, _)| *v == variant) {
                for (major, top) in versions.iter() {
                    for minor in (0..=*top).rev() {
                        let v = if minor == 0 {
                            format!("v{major}")
                        } else {
                            format!("v{major}.{minor}")
                        };
                        out.push(like("arm64", Some(v)));
                    }
                }
            }
            let arm = if variant.starts_with("v8") || variant.starts_with("v9") {
                "v8"
            } else {
                variant
            };
            out.extend(platform_vector(&like("arm", Some(arm.to_owned()))));
        }
        _ => {}
    }
    out
}

/// containerd's `orderedPlatformComparer.Less` over `matchers`.
fn less(matchers: &[Platform], a: &Platform, b: &Platform) -> bool {
    for m in matchers {
        let (am, bm) = (m.matches(a), m.matches(b));
        if am && !bm {
            return true;
        }
        if am || bm {
            if am && bm && a.os_features().len() != b.os_features().len() {
                return a.os_features().len() > b.os_features().len();
            }
            return false;
        }
    }
    if !a.os_features().is_empty() || !b.os_features().is_empty() {
        let strip = |p: &Platform| {
            let mut q = p.clone();
            q.set_options(p.os_version().map(str::to_owned), Vec::new());
            q
        };
        return less(matchers, &strip(a), &strip(b));
    }
    false
}

/// The indexes of the `candidates` a matcher accepts, sorted by `less` (stable).
fn order_among(matchers: &[Platform], candidates: &[Platform]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..candidates.len())
        .filter(|&i| matchers.iter().any(|m| m.matches(&candidates[i])))
        .collect();
    order.sort_by(|&i, &j| {
        if less(matchers, &candidates[i], &candidates[j]) {
            std::cmp::Ordering::Less
        } else if less(matchers, &candidates[j], &candidates[i]) {
            std::cmp::Ordering::Greater
        } else {
            std::cmp::Ordering::Equal
        }
    });
    order
}

impl fmt::Display for Platform {
    /// containerd's `FormatAll`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.os)?;
        if let Some(options) = &self.options {
            f.write_str("(")?;
            if let Some(v) = &options.version {
                f.write_str(&percent_encode(v))?;
            }
            if !options.features.is_empty() {
                let features: Vec<String> =
                    options.features.iter().map(|s| percent_encode(s)).collect();
                write!(f, "+{}", features.join("+"))?;
            }
            f.write_str(")")?;
        }
        write!(f, "/{}", self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
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

/// The wire type carries os, architecture and variant only: `os.version` and features are what a
/// worker cannot build to, and are not sent.
impl From<&Platform> for v1::Platform {
    fn from(p: &Platform) -> Self {
        v1::Platform {
            os: p.os.to_string(),
            architecture: p.architecture.to_string(),
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
mod conformance;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_keep_what_containerd_parse_keeps() {
        let spec = |s: &str| {
            let p = Platform::parse_spec(s).unwrap();
            (p.os, p.architecture, p.variant)
        };
        let some = |v: &str| Some(v.to_owned());
        assert_eq!(
            spec("linux/arm64/v8"),
            ("linux".into(), "arm64".into(), some("v8"))
        );
        assert_eq!(
            spec("linux/arm64/8"),
            ("linux".into(), "arm64".into(), some("v8"))
        );
        assert_eq!(
            spec("linux/aarch64"),
            ("linux".into(), "arm64".into(), None)
        );
        assert_eq!(spec("linux/arm"), ("linux".into(), "arm".into(), None));
        assert_eq!(
            spec("linux/arm/v8"),
            ("linux".into(), "arm".into(), some("v8"))
        );
        assert_eq!(
            spec("linux/arm/7"),
            ("linux".into(), "arm".into(), some("v7"))
        );
        assert_eq!(spec("armhf"), ("linux".into(), "arm".into(), None));
        assert_eq!(
            spec("arm64/v8"),
            ("linux".into(), "arm64".into(), some("v8"))
        );
        let w = Platform::parse_spec("windows(10.0.17763.5830+win32k)/amd64").unwrap();
        assert_eq!(w.os_version.as_deref(), Some("10.0.17763.5830"));
        assert_eq!(w.os_features, ["win32k"]);
        assert_eq!(
            w.normalize().to_string(),
            "windows(10.0.17763.5830+win32k)/amd64"
        );
    }

    #[test]
    fn uname_names_are_the_per_arch_tag_suffixes_teams_use() {
        assert_eq!(Platform::linux_amd64().uname_arch(), "x86_64");
        assert_eq!(Platform::linux_arm64().uname_arch(), "aarch64");
        assert_eq!(Platform::parse("arm/v7").unwrap().uname_arch(), "armv7l");
        assert_eq!(
            Platform::parse("linux/arm64/v8.2").unwrap().uname_arch(),
            "aarch64v8.2"
        );
    }

    #[test]
    fn round_trips_through_the_wire_type() {
        for s in [
            "linux/amd64",
            "linux/arm64",
            "linux/arm/v7",
            "linux/mips64le",
        ] {
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
        let empty = v1::Platform::default();
        assert!(
            Platform::try_from(&empty)
                .unwrap_err()
                .to_string()
                .contains("the os is empty")
        );
    }

    #[test]
    fn os_options_survive_the_text_form() {
        let p = Platform::parse("windows(10.0.17763+win32k)/amd64").unwrap();
        assert_eq!(p.os_version(), Some("10.0.17763"));
        assert_eq!(p.os_features(), ["win32k"]);
        assert_eq!(p.to_string(), "windows(10.0.17763+win32k)/amd64");
        assert_eq!(Platform::parse(&p.to_string()).unwrap(), p);
        assert_eq!(p.without_os_options().to_string(), "windows/amd64");
    }
}
