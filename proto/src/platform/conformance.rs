//! Conformance with containerd's `platforms` package: its test tables (`TestParseSelector`,
//! `TestParseSelectorInvalid`, `TestFormatAllEncoding`, `TestOnly`, `TestOnlyStrict`,
//! `TestCompareOSFeatures`) ported case by case, the cases issue 12 found differing, Manifold's
//! deliberate extras, and the choice among the children of realistic indexes. One `check_*`
//! helper per API; every case counts (see `the_table_is_big_enough`).

use std::cell::Cell;

use super::*;

thread_local! {
    static CASES: Cell<usize> = const { Cell::new(0) };
}

fn count() {
    CASES.with(|c| c.set(c.get() + 1));
}

/// The architecture a lone OS takes on this machine, as containerd's tests compute it.
fn host() -> String {
    let (arch, variant) = host_architecture();
    match variant {
        Some(v) => format!("{arch}/{v}"),
        None => arch.to_owned(),
    }
}

#[track_caller]
fn check_parse(input: &str, expected: &str) {
    count();
    let p = Platform::parse(input).unwrap_or_else(|e| panic!("`{input}` should parse: {e}"));
    assert_eq!(p.to_string(), expected, "normalising `{input}`");
    let again = Platform::parse(&p.to_string()).unwrap();
    assert_eq!(again, p, "`{expected}` does not survive a round trip");
}

#[track_caller]
fn check_invalid(input: &str, names: &str) {
    count();
    let err = Platform::parse(input)
        .map(|p| panic!("`{input}` should be refused, got {p}"))
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("`{input}`")), "{err}");
    assert!(
        err.contains(names),
        "the error should name `{names}`: {err}"
    );
    assert!(err.contains("expected os/arch[/variant]"), "{err}");
}

#[track_caller]
fn check_descriptor(os: &str, arch: &str, variant: Option<&str>, expected: &str) {
    count();
    let p = Platform::from_parts(os, arch, variant).unwrap();
    assert_eq!(
        p.to_string(),
        expected,
        "normalising {os}/{arch}/{variant:?}"
    );
}

/// containerd's `Only(platform).Match(other)` for every `other` in `yes` and `no`.
#[track_caller]
fn check_only(platform: &str, yes: &[&str], no: &[&str]) {
    let p = Platform::parse(platform).unwrap();
    for (expected, list) in [(true, yes), (false, no)] {
        for other in list {
            count();
            let o = Platform::parse(other).unwrap();
            assert_eq!(p.runs(&o), expected, "Only({platform}).Match({other})");
        }
    }
}

/// containerd's `OnlyStrict(platform).Match(other)`.
#[track_caller]
fn check_strict(platform: &str, yes: &[&str], no: &[&str]) {
    let p = Platform::parse(platform).unwrap();
    for (expected, list) in [(true, yes), (false, no)] {
        for other in list {
            count();
            let o = Platform::parse(other).unwrap();
            assert_eq!(
                p.matches(&o),
                expected,
                "OnlyStrict({platform}).Match({other})"
            );
        }
    }
}

/// Sorting `platforms` by containerd's `Less` (stable) gives `expected`.
#[track_caller]
fn check_order(matchers: &[Platform], platforms: &[&str], expected: &[&str]) {
    count();
    let mut ps: Vec<Platform> = platforms.iter().map(|p| p.parse().unwrap()).collect();
    ps.sort_by(|a, b| {
        if less(matchers, a, b) {
            std::cmp::Ordering::Less
        } else if less(matchers, b, a) {
            std::cmp::Ordering::Greater
        } else {
            std::cmp::Ordering::Equal
        }
    });
    let got: Vec<String> = ps.iter().map(Platform::to_string).collect();
    assert_eq!(got, expected, "ordering {platforms:?}");
}

/// From an index whose children are `children` (in order), a `wanted` machine pulls `expected`
/// (an index into `children`), as containerd's `Only` chooses.
#[track_caller]
fn check_choose(children: &[&str], wanted: &str, expected: Option<usize>) {
    count();
    let ps: Vec<Platform> = children.iter().map(|p| p.parse().unwrap()).collect();
    let got = Platform::parse(wanted).unwrap().choose(&ps);
    assert_eq!(
        got.map(|i| children[i]),
        expected.map(|i| children[i]),
        "{wanted} from {children:?}"
    );
    assert_eq!(got, expected, "{wanted} from {children:?}");
}

#[test]
fn parse_as_containerd_parses() {
    let host = host();
    // TestParseSelector (the wildcard cases containerd skips are refused, below).
    check_parse("linux/arm64", "linux/arm64");
    check_parse("linux/arm64/v8", "linux/arm64");
    check_parse("linux/arm", "linux/arm/v7");
    check_parse("linux/arm/v6", "linux/arm/v6");
    check_parse("linux/arm/v7", "linux/arm/v7");
    check_parse("arm", "linux/arm/v7");
    check_parse("armel", "linux/arm/v6");
    check_parse("armhf", "linux/arm/v7");
    check_parse("Aarch64", "linux/arm64");
    check_parse("x86_64", "linux/amd64");
    check_parse("Linux/x86_64", "linux/amd64");
    check_parse("i386", "linux/386");
    check_parse("linux", &format!("linux/{host}"));
    check_parse("s390x", "linux/s390x");
    check_parse("linux/s390x", "linux/s390x");
    check_parse("macOS", &format!("darwin/{host}"));
    check_parse("windows", &format!("windows/{host}"));
    check_parse("windows()", &format!("windows/{host}"));
    check_parse(
        "windows(10.0.17763)",
        &format!("windows(10.0.17763)/{host}"),
    );
    check_parse(
        "windows(10.0.17763+win32k)",
        &format!("windows(10.0.17763+win32k)/{host}"),
    );
    check_parse("linux(+gpu)", &format!("linux(+gpu)/{host}"));
    check_parse("linux(+gpu+simd)", &format!("linux(+gpu+simd)/{host}"));
    check_parse(
        "linux(+unsorted+erofs)",
        &format!("linux(+erofs+unsorted)/{host}"),
    );
    check_parse(
        "windows(10.0.17763%2Bbuild.42)",
        &format!("windows(10.0.17763%2Bbuild.42)/{host}"),
    );
    check_parse(
        "windows(10.0.17763%2Bbuild.42+win32k)",
        &format!("windows(10.0.17763%2Bbuild.42+win32k)/{host}"),
    );
    check_parse("windows(50%25done)", &format!("windows(50%25done)/{host}"));
    check_parse("darwin", &format!("darwin/{host}"));
    // TestFormatAllEncoding, through the parser.
    check_parse(
        "windows(1.0%28beta%29)/amd64",
        "windows(1.0%28beta%29)/amd64",
    );
    check_parse("windows(a%2Fb)/amd64", "windows(a%2Fb)/amd64");
    check_parse("linux(+feat%2Bv2)/amd64", "linux(+feat%2Bv2)/amd64");
    check_parse("linux(+100%25gpu)/amd64", "linux(+100%25gpu)/amd64");
    check_parse(
        "windows(10.0%2Bbuild+feat%2B1)/amd64",
        "windows(10.0%2Bbuild+feat%2B1)/amd64",
    );
    let p = Platform::parse("windows(10.0.17763%2Bbuild.42+win32k)/amd64").unwrap();
    assert_eq!(p.os_version(), Some("10.0.17763+build.42"));
    assert_eq!(p.os_features(), ["win32k"]);
}

#[test]
fn well_formed_unknown_values_are_platforms() {
    // The strings issue 12 found refused or mislabelled.
    check_parse("linux/arm/v8", "linux/arm/v8");
    check_parse("linux/arm/8", "linux/arm/v8");
    check_parse("linux/arm/v4", "linux/arm/v4");
    check_parse("linux/arm/5", "linux/arm/v5");
    check_parse("linux/mips64le", "linux/mips64le");
    check_parse("linux/arm64/v8.2", "linux/arm64/v8.2");
    check_parse("linux/arm64/v8.0", "linux/arm64");
    check_parse("linux/arm64/v9", "linux/arm64/v9");
    check_parse("linux/arm64/9", "linux/arm64/v9");
    check_parse("linux/arm64/v9.0", "linux/arm64/v9");
    check_parse("linux/arm64/9.0", "linux/arm64/v9");
    check_parse("linux/arm64/v9.6", "linux/arm64/v9.6");
    check_parse("linux/arm64/8", "linux/arm64");
    check_parse("android/arm64", "android/arm64");
    check_parse("plan9/amd64", "plan9/amd64");
    check_parse("plan9/amd64/v1", "plan9/amd64");
    check_parse("linux/riscv64", "linux/riscv64");
    check_parse("linux/loong64", "linux/loong64");
    check_parse("freebsd/amd64", "freebsd/amd64");
    check_parse("linux/amd64/v2", "linux/amd64/v2");
    check_parse("linux/amd64/v1", "linux/amd64");
    check_parse("linux/x86-64/v3", "linux/amd64/v3");
    check_parse("linux/i386/v2", "linux/386");
    check_parse("linux/armhf/v6", "linux/arm/v7");
    check_parse("linux/armel", "linux/arm/v6");
    check_parse("LINUX/ARM64/V8", "linux/arm64");
    check_parse("linux/amd46", "linux/amd46");
    check_parse("linux/mips64le/r6", "linux/mips64le/r6");
    check_parse("unknown/unknown", "unknown/unknown");
    check_parse("windows/amd64", "windows/amd64");
    check_parse(
        "windows(10.0.20348.2582)/amd64",
        "windows(10.0.20348.2582)/amd64",
    );
    check_parse("macos/arm64", "darwin/arm64");
    check_parse("ppc64le", "linux/ppc64le");
    check_parse("mips64le", "linux/mips64le");
    check_parse("wasm", "linux/wasm");
    check_parse("x86-64", "linux/amd64");
    check_parse("arm64", "linux/arm64");
}

#[test]
fn manifold_accepts_its_aliases_where_containerd_refuses() {
    check_parse("arm64v8", "linux/arm64");
    check_parse("armv7l", "linux/arm/v7");
    check_parse("armv7", "linux/arm/v7");
    check_parse("armv6l", "linux/arm/v6");
    check_parse("armv6", "linux/arm/v6");
    check_parse("armv5l", "linux/arm/v5");
    check_parse("i686", "linux/386");
    check_parse("arm/v7", "linux/arm/v7");
    check_parse("arm/v6", "linux/arm/v6");
    check_parse("arm/8", "linux/arm/v8");
    check_parse("arm64/v8", "linux/arm64");
    check_parse("arm64/v8.2", "linux/arm64/v8.2");
    check_parse("amd64/v3", "linux/amd64/v3");
    check_parse("x86_64/v2", "linux/amd64/v2");
    check_parse("armv7l/v7", "linux/arm/v7");
    check_parse(" linux/amd64 ", "linux/amd64");
    // Where containerd gives a two-part string a meaning (os/arch), it keeps it.
    check_parse("linux/arm64v8", "linux/arm64v8");
    check_parse("linux/armv7l", "linux/armv7l");
}

#[test]
fn malformed_strings_are_refused_naming_the_part() {
    // TestParseSelectorInvalid.
    check_invalid("", "empty");
    check_invalid("/linux/arm", "operating system (the first part) is empty");
    check_invalid("linux/arm/", "the variant is empty");
    check_invalid("linux /arm", "`linux ` is not an operating system");
    check_invalid("linux/&arm", "`&arm` is not a valid architecture");
    check_invalid("linux/arm/foo/bar", "at most three");
    // Containerd's skipped wildcard cases.
    check_invalid("*", "wildcards");
    check_invalid("linux/*", "wildcards");
    check_invalid("*/arm64", "wildcards");
    // More.
    check_invalid("linux/", "the architecture is empty");
    check_invalid("linux//v7", "the architecture is empty");
    check_invalid("linux/arm64/v8/x", "at most three");
    check_invalid("linux/arm 64", "`arm 64` is not a valid architecture");
    check_invalid("linux/arm/v7!", "`v7!` is not a valid variant");
    check_invalid("amd46", "`amd46` is neither a known operating system nor");
    check_invalid("foo", "`foo` is neither");
    check_invalid("windows(10.0/amd64", "must be closed");
    check_invalid("windows(10.0)x/amd64", "must be closed");
    check_invalid(
        "windows(10 0)/amd64",
        "`10 0` in `windows(10 0)` is not an os.version",
    );
    check_invalid("linux(++gpu)/amd64", "is not an os feature");
    check_invalid("windows(50%zz)/amd64", "invalid %-escape `%zz`");
    check_invalid("lin.ux/amd64", "`lin.ux` is not an operating system");
    check_invalid("amd64(1.0)", "is neither");
}

#[test]
fn descriptors_normalise_as_containerd_normalises() {
    check_descriptor("linux", "arm64", Some("v8"), "linux/arm64");
    check_descriptor("linux", "arm64", Some("8"), "linux/arm64");
    check_descriptor("linux", "aarch64", None, "linux/arm64");
    check_descriptor("linux", "arm", None, "linux/arm/v7");
    check_descriptor("linux", "arm", Some("7"), "linux/arm/v7");
    check_descriptor("linux", "arm", Some("8"), "linux/arm/v8");
    check_descriptor("linux", "armhf", None, "linux/arm/v7");
    check_descriptor("linux", "armel", None, "linux/arm/v6");
    check_descriptor("linux", "x86_64", None, "linux/amd64");
    check_descriptor("linux", "amd64", Some("v1"), "linux/amd64");
    check_descriptor("linux", "amd64", Some(""), "linux/amd64");
    check_descriptor("Linux", "AMD64", None, "linux/amd64");
    check_descriptor("linux", "i386", None, "linux/386");
    check_descriptor("unknown", "unknown", None, "unknown/unknown");
    check_descriptor("linux", "mips64le", None, "linux/mips64le");
    check_descriptor("macos", "arm64", None, "darwin/arm64");
    let w = Platform::from_descriptor(
        "windows",
        "amd64",
        None,
        Some("10.0.17763.5830"),
        &["win32k".into(), "win32k".into()],
    )
    .unwrap();
    assert_eq!(w.to_string(), "windows(10.0.17763.5830+win32k)/amd64");
    for (os, arch, names) in [
        ("", "amd64", "the os is empty"),
        ("linux", "", "the architecture is empty"),
        ("li/nux", "amd64", "`li/nux` is not an operating system"),
        ("linux", "amd 64", "`amd 64` is not a valid architecture"),
    ] {
        count();
        let err = Platform::from_parts(os, arch, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains(names), "{err}");
    }
}

#[test]
fn only_matches_as_containerd_only_does() {
    // TestOnly, every pair.
    check_only(
        "linux/amd64",
        &["linux/amd64", "linux/386"],
        &[
            "linux/amd64/v2",
            "linux/arm/v7",
            "linux/arm64",
            "windows/amd64",
            "windows/arm",
        ],
    );
    check_only(
        "linux/amd64/v2",
        &[
            "linux/amd64",
            "linux/amd64/v1",
            "linux/amd64/v2",
            "linux/386",
        ],
        &[
            "linux/amd64/v3",
            "linux/amd64/v4",
            "linux/arm/v7",
            "linux/arm64",
            "windows/amd64",
            "windows/arm",
        ],
    );
    check_only(
        "linux/386",
        &["linux/386"],
        &[
            "linux/amd64",
            "linux/arm/v7",
            "linux/arm64",
            "windows/amd64",
            "windows/arm",
        ],
    );
    check_only(
        "windows/amd64",
        &["windows/amd64", "windows(10.0.17763)/amd64"],
        &["linux/amd64", "linux/arm/v7", "linux/arm64", "windows/arm"],
    );
    check_only(
        "linux/arm/v8",
        &[
            "linux/arm",
            "linux/arm/v5",
            "linux/arm/v6",
            "linux/arm/v7",
            "linux/arm/v8",
        ],
        &[
            "linux/amd64",
            "linux/arm/v4",
            "linux/arm64",
            "windows/amd64",
            "windows/arm",
        ],
    );
    check_only(
        "linux/arm/v7",
        &["linux/arm", "linux/arm/v5", "linux/arm/v6", "linux/arm/v7"],
        &[
            "linux/amd64",
            "linux/arm/v4",
            "linux/arm/v8",
            "linux/arm64",
            "windows/amd64",
            "windows/arm",
        ],
    );
    check_only(
        "linux/arm/v6",
        &["linux/arm/v5", "linux/arm/v6"],
        &[
            "linux/amd64",
            "linux/arm",
            "linux/arm/v4",
            "linux/arm/v7",
            "linux/arm/v8",
            "linux/arm64",
            "windows/amd64",
            "windows/arm",
        ],
    );
    check_only(
        "linux/arm/v5",
        &["linux/arm/v5"],
        &[
            "linux/amd64",
            "linux/arm",
            "linux/arm/v4",
            "linux/arm/v6",
            "linux/arm/v7",
            "linux/arm/v8",
            "linux/arm64",
            "windows/amd64",
            "windows/arm",
        ],
    );
    check_only(
        "linux/arm/v4",
        &["linux/arm/v4"],
        &[
            "linux/amd64",
            "linux/arm",
            "linux/arm/v5",
            "linux/arm/v6",
            "linux/arm/v7",
            "linux/arm/v8",
            "linux/arm64",
            "windows/amd64",
            "windows/arm",
        ],
    );
    check_only(
        "linux/arm64/v9.6",
        &[
            "linux/arm",
            "linux/arm/v5",
            "linux/arm/v6",
            "linux/arm/v7",
            "linux/arm/v8",
            "linux/arm64",
            "linux/arm64/v8",
            "linux/arm64/v8.1",
            "linux/arm64/v8.2",
            "linux/arm64/v8.3",
            "linux/arm64/v8.4",
            "linux/arm64/v8.5",
            "linux/arm64/v8.6",
            "linux/arm64/v8.7",
            "linux/arm64/v8.8",
            "linux/arm64/v8.9",
            "linux/arm64/v9",
            "linux/arm64/v9.0",
            "linux/arm64/v9.1",
            "linux/arm64/v9.2",
            "linux/arm64/v9.3",
            "linux/arm64/v9.4",
            "linux/arm64/v9.5",
            "linux/arm64/v9.6",
        ],
        &[
            "linux/amd64",
            "linux/arm/v4",
            "windows/amd64",
            "windows/arm",
            "linux/arm64/v8.10",
        ],
    );
    check_only(
        "linux/arm64/v9",
        &[
            "linux/arm",
            "linux/arm/v5",
            "linux/arm/v6",
            "linux/arm/v7",
            "linux/arm/v8",
            "linux/arm64",
            "linux/arm64/v8",
            "linux/arm64/v8.1",
            "linux/arm64/v8.2",
            "linux/arm64/v8.3",
            "linux/arm64/v8.4",
            "linux/arm64/v8.5",
            "linux/arm64/v9",
            "linux/arm64/v9.0",
        ],
        &[
            "linux/amd64",
            "linux/arm/v4",
            "windows/amd64",
            "windows/arm",
            "linux/arm64/v8.6",
        ],
    );
    check_only(
        "linux/arm64/v8.1",
        &[
            "linux/arm",
            "linux/arm/v5",
            "linux/arm/v6",
            "linux/arm/v7",
            "linux/arm/v8",
            "linux/arm64",
            "linux/arm64/v8",
            "linux/arm64/v8.1",
        ],
        &[
            "linux/amd64",
            "linux/arm/v4",
            "linux/arm/v9",
            "linux/arm64/v9",
            "windows/amd64",
            "windows/arm",
        ],
    );
    check_only(
        "linux/arm64",
        &[
            "linux/arm",
            "linux/arm/v5",
            "linux/arm/v6",
            "linux/arm/v7",
            "linux/arm/v8",
            "linux/arm64",
            "linux/arm64/v8",
        ],
        &[
            "linux/amd64",
            "linux/arm/v4",
            "linux/arm/v9",
            "linux/arm64/v9",
            "windows/amd64",
            "windows/arm",
        ],
    );
    // Windows versions (containerd's host/container compatibility).
    check_only(
        "windows(10.0.17763)/amd64",
        &["windows/amd64", "windows(10.0.17763.5830)/amd64"],
        &["windows(10.0.20348.2582)/amd64", "windows(6.3.9600)/amd64"],
    );
    check_only(
        "windows(10.0.26100)/amd64",
        &[
            "windows(10.0.20348)/amd64",
            "windows(10.0.26100.1)/amd64",
            "windows(10.0.22621)/amd64",
        ],
        &["windows(10.0.17763)/amd64", "windows(10.0.26200)/amd64"],
    );
    check_only(
        "windows(10.0.26200)/amd64",
        &["windows(10.0.26100)/amd64", "windows(10.0.26200)/amd64"],
        &["windows(10.0.20348)/amd64"],
    );
    // OS features: the image's must be among ours; win32k is ignored on Windows.
    check_only(
        "linux(+gpu)/amd64",
        &["linux/amd64", "linux(+gpu)/amd64", "linux(+gpu)/386"],
        &["linux(+gpu+simd)/amd64", "linux(+simd)/amd64"],
    );
    check_only("windows/amd64", &["windows(+win32k)/amd64"], &[]);
}

#[test]
fn only_strict_matches_as_containerd_only_strict_does() {
    check_strict(
        "linux/amd64",
        &["linux/amd64"],
        &[
            "linux/386",
            "linux/arm/v7",
            "linux/arm64",
            "windows/amd64",
            "windows/arm",
        ],
    );
    check_strict(
        "linux/386",
        &["linux/386"],
        &[
            "linux/amd64",
            "linux/arm/v7",
            "linux/arm64",
            "windows/amd64",
            "windows/arm",
        ],
    );
    check_strict(
        "windows/amd64",
        &["windows/amd64", "windows(10.0.17763)/amd64"],
        &["linux/amd64", "linux/arm/v7", "linux/arm64", "windows/arm"],
    );
    check_strict(
        "windows(10.0.17763)/amd64",
        &["windows/amd64", "windows(10.0.17763)/amd64"],
        &["linux/amd64", "linux/arm/v7", "linux/arm64", "windows/arm"],
    );
    check_strict(
        "linux/arm/v8",
        &["linux/arm/v8"],
        &[
            "linux/arm",
            "linux/arm/v5",
            "linux/arm/v6",
            "linux/arm/v7",
            "linux/amd64",
            "linux/arm/v4",
            "linux/arm64",
            "windows/amd64",
            "windows/arm",
        ],
    );
    check_strict(
        "linux/arm/v7",
        &["linux/arm", "linux/arm/v7"],
        &[
            "linux/arm/v5",
            "linux/arm/v6",
            "linux/amd64",
            "linux/arm/v4",
            "linux/arm/v8",
            "linux/arm64",
            "windows/amd64",
            "windows/arm",
        ],
    );
    check_strict(
        "linux/arm/v6",
        &["linux/arm/v6"],
        &[
            "linux/arm/v5",
            "linux/amd64",
            "linux/arm",
            "linux/arm/v4",
            "linux/arm/v7",
            "linux/arm/v8",
            "linux/arm64",
            "windows/amd64",
            "windows/arm",
        ],
    );
    check_strict(
        "linux/arm/v5",
        &["linux/arm/v5"],
        &[
            "linux/amd64",
            "linux/arm",
            "linux/arm/v4",
            "linux/arm/v6",
            "linux/arm/v7",
            "linux/arm/v8",
            "linux/arm64",
            "windows/amd64",
            "windows/arm",
        ],
    );
    check_strict(
        "linux/arm/v4",
        &["linux/arm/v4"],
        &[
            "linux/amd64",
            "linux/arm",
            "linux/arm/v5",
            "linux/arm/v6",
            "linux/arm/v7",
            "linux/arm/v8",
            "linux/arm64",
            "windows/amd64",
            "windows/arm",
        ],
    );
    check_strict(
        "linux/arm64/v9.5",
        &["linux/arm64/v9.5"],
        &[
            "linux/arm",
            "linux/arm/v5",
            "linux/arm/v6",
            "linux/arm/v7",
            "linux/arm/v8",
            "linux/amd64",
            "linux/arm/v4",
            "linux/arm64/v8",
            "linux/arm64/v8.1",
            "linux/arm64/v9",
            "linux/arm64/v9.1",
            "linux/arm64/v9.4",
            "windows/amd64",
            "windows/arm",
        ],
    );
    check_strict(
        "linux/arm64/v9",
        &["linux/arm64/v9", "linux/arm64/v9.0"],
        &[
            "linux/arm",
            "linux/arm/v5",
            "linux/arm/v6",
            "linux/arm/v7",
            "linux/arm/v8",
            "linux/amd64",
            "linux/arm/v4",
            "linux/arm/v9",
            "linux/arm64/v8",
            "linux/arm64/v8.1",
            "windows/amd64",
            "windows/arm",
        ],
    );
    check_strict(
        "linux/arm64/v8.1",
        &["linux/arm64/v8.1"],
        &[
            "linux/arm",
            "linux/arm/v5",
            "linux/arm/v6",
            "linux/arm/v7",
            "linux/arm/v8",
            "linux/amd64",
            "linux/arm/v4",
            "linux/arm/v9",
            "linux/arm64/v8",
            "linux/arm64/v9",
            "windows/amd64",
            "windows/arm",
        ],
    );
    check_strict(
        "linux/arm64",
        &["linux/arm64", "linux/arm64/v8"],
        &[
            "linux/arm",
            "linux/arm/v5",
            "linux/arm/v6",
            "linux/arm/v7",
            "linux/arm/v8",
            "linux/amd64",
            "linux/arm/v4",
            "linux/arm/v9",
            "linux/arm64/v9",
            "windows/amd64",
            "windows/arm",
        ],
    );
}

#[test]
fn ordering_by_os_features_is_containerd_s() {
    // TestCompareOSFeatures, for Only, OnlyStrict and Ordered (one matcher each).
    let cases: &[(&str, [&str; 4], [&str; 4])] = &[
        (
            "linux/amd64",
            [
                "windows/amd64",
                "linux/amd64",
                "linux(+other)/amd64",
                "linux/arm64",
            ],
            [
                "linux/amd64",
                "linux(+other)/amd64",
                "windows/amd64",
                "linux/arm64",
            ],
        ),
        (
            "linux(+none)/amd64",
            [
                "windows/amd64",
                "linux/amd64",
                "linux/arm64",
                "linux(+other)/amd64",
            ],
            [
                "linux/amd64",
                "linux(+other)/amd64",
                "windows/amd64",
                "linux/arm64",
            ],
        ),
        (
            "linux(+other)/amd64",
            [
                "windows/amd64",
                "linux/amd64",
                "linux/arm64",
                "linux(+other)/amd64",
            ],
            [
                "linux(+other)/amd64",
                "linux/amd64",
                "windows/amd64",
                "linux/arm64",
            ],
        ),
        (
            "linux(+af+other+zf)/amd64",
            [
                "windows/amd64",
                "linux/amd64",
                "linux/arm64",
                "linux(+other)/amd64",
            ],
            [
                "linux(+other)/amd64",
                "linux/amd64",
                "windows/amd64",
                "linux/arm64",
            ],
        ),
        (
            "linux(+f1+f2)/amd64",
            [
                "linux/amd64",
                "linux(+f2)/amd64",
                "linux(+f1)/amd64",
                "linux(+f1+f2)/amd64",
            ],
            [
                "linux(+f1+f2)/amd64",
                "linux(+f2)/amd64",
                "linux(+f1)/amd64",
                "linux/amd64",
            ],
        ),
        (
            "linux(7.2+other)/amd64",
            [
                "linux/amd64",
                "linux(+other)/amd64",
                "linux(7.1)/amd64",
                "linux(7.2+other)/amd64",
            ],
            [
                "linux(+other)/amd64",
                "linux(7.2+other)/amd64",
                "linux/amd64",
                "linux(7.1)/amd64",
            ],
        ),
    ];
    for (platform, input, expected) in cases {
        let p: Platform = platform.parse().unwrap();
        check_order(&p.compatible(), input, expected);
        check_order(std::slice::from_ref(&p), input, expected);
    }
}

#[test]
fn the_child_chosen_from_an_index_is_containerd_s() {
    // What buildx pushes: two images and their attestations (unknown/unknown never matches).
    let buildx = [
        "linux/amd64",
        "linux/arm64",
        "unknown/unknown",
        "unknown/unknown",
    ];
    check_choose(&buildx, "linux/amd64", Some(0));
    check_choose(&buildx, "linux/arm64", Some(1));
    check_choose(&buildx, "linux/arm64/v8", Some(1));
    check_choose(&buildx, "linux/arm/v7", None);
    check_choose(&buildx, "linux/386", None);
    check_choose(&buildx, "windows/amd64", None);
    check_choose(&buildx, "linux/s390x", None);
    // An official-image style index.
    let official = [
        "linux/amd64",
        "linux/arm/v5",
        "linux/arm/v7",
        "linux/arm64/v8",
        "linux/386",
        "linux/mips64le",
        "linux/ppc64le",
        "linux/s390x",
    ];
    check_choose(&official, "linux/amd64", Some(0));
    check_choose(&official, "linux/amd64/v3", Some(0));
    check_choose(&official, "linux/arm64", Some(3));
    check_choose(&official, "linux/arm64/v9", Some(3));
    check_choose(&official, "linux/arm/v7", Some(2));
    check_choose(&official, "linux/arm/v8", Some(2));
    check_choose(&official, "linux/arm/v6", Some(1));
    check_choose(&official, "linux/arm/v5", Some(1));
    check_choose(&official, "linux/arm/v4", None);
    check_choose(&official, "linux/386", Some(4));
    check_choose(&official, "linux/mips64le", Some(5));
    check_choose(&official, "linux/riscv64", None);
    // The exact platform wins over a compatible one listed first, arm/v8 over arm/v7.
    check_choose(&["linux/arm/v6", "linux/arm/v7"], "linux/arm/v7", Some(1));
    check_choose(&["linux/arm/v7", "linux/arm/v8"], "linux/arm64", Some(1));
    check_choose(&["linux/arm/v5", "linux/arm/v6"], "linux/arm/v7", Some(1));
    check_choose(&["linux/arm/v7"], "linux/arm64", Some(0));
    check_choose(&["linux/386"], "linux/amd64", Some(0));
    check_choose(
        &["linux/amd64", "linux/amd64/v2"],
        "linux/amd64/v3",
        Some(1),
    );
    check_choose(&["linux/amd64/v2", "linux/amd64"], "linux/amd64", Some(1));
    check_choose(
        &["linux/arm64", "linux/arm64/v8.2", "linux/arm64/v9"],
        "linux/arm64/v9.1",
        Some(2),
    );
    check_choose(
        &["linux/arm64", "linux/arm64/v8.2"],
        "linux/arm64/v9",
        Some(1),
    );
    check_choose(&["linux/arm64/v8.2"], "linux/arm64", None);
    // Among equals the index's order decides.
    check_choose(&["linux/arm64", "linux/arm64/v8"], "linux/arm64", Some(0));
    check_choose(&["linux/arm64/v8", "linux/arm64"], "linux/arm64", Some(0));
    // More OS features first among equals.
    check_choose(
        &["linux/amd64", "linux(+gpu)/amd64"],
        "linux(+gpu)/amd64",
        Some(1),
    );
    // Windows: a host of build 17763 takes only its own build.
    check_choose(
        &[
            "windows(10.0.20348.2582)/amd64",
            "windows(10.0.17763.5830)/amd64",
        ],
        "windows(10.0.17763)/amd64",
        Some(1),
    );
    // OnlyStrict takes the exact platform only.
    count();
    let official: Vec<Platform> = official.iter().map(|p| p.parse().unwrap()).collect();
    assert_eq!(
        Platform::parse("linux/arm/v6")
            .unwrap()
            .choose_strict(&official),
        None
    );
    count();
    assert_eq!(
        Platform::parse("linux/arm64")
            .unwrap()
            .choose_strict(&official),
        Some(3)
    );
}

#[test]
fn the_table_is_big_enough() {
    CASES.with(|c| c.set(0));
    parse_as_containerd_parses();
    well_formed_unknown_values_are_platforms();
    manifold_accepts_its_aliases_where_containerd_refuses();
    malformed_strings_are_refused_naming_the_part();
    descriptors_normalise_as_containerd_normalises();
    only_matches_as_containerd_only_does();
    only_strict_matches_as_containerd_only_strict_does();
    ordering_by_os_features_is_containerd_s();
    the_child_chosen_from_an_index_is_containerd_s();
    let n = CASES.with(Cell::get);
    assert!(n >= 150, "only {n} platform cases");
}
