//! Image references parsed by hand, to the grammar of distribution/reference (Docker's), with
//! the result oci-client's parser gives.
//!
//! Why not `str::parse::<Reference>()`: oci-spec matches one large regular expression with
//! captures, whose tag part (`[\w][\w.-]{0,127}`, `\w` Unicode) compiles to a big automaton; the
//! regex crate keeps a 2.6 MiB matching cache per thread that ever parsed a reference. A heap
//! profile of the coordinator (docs/benchmarks.md) found about 37 MB of its live heap there, from
//! validating submits on the blocking pool's threads and checking workers' images. This parser
//! allocates only the parts it returns.
//!
//! The one deliberate difference: a tag's `\w` is ASCII (`[A-Za-z0-9_]`), as in Docker's Go
//! grammar, where oci-spec's regex takes any Unicode word character.

use oci_client::Reference;
use oci_spec::distribution::ParseError;

/// Most characters of a repository name.
const NAME_TOTAL_LENGTH_MAX: usize = 255;

/// `value` as an image reference: `[REGISTRY[:PORT]/]REPOSITORY[:TAG][@DIGEST]`, normalised as
/// Docker does (`docker.io`, `library/` for official images, tag `latest` when neither a tag nor a
/// digest is given).
pub fn parse(value: &str) -> Result<Reference, ParseError> {
    if value.is_empty() {
        return Err(ParseError::NameEmpty);
    }
    let (rest, digest) = match value.split_once('@') {
        Some((rest, digest)) => {
            if !is_digest(digest) {
                return Err(ParseError::ReferenceInvalidFormat);
            }
            (rest, Some(digest))
        }
        None => (value, None),
    };
    // A tag follows the last `:` after the last `/` (a registry's port comes before a `/`).
    let last_part = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_part..].rfind(':') {
        Some(i) => {
            let (name, tag) = (&rest[..last_part + i], &rest[last_part + i + 1..]);
            if !is_tag(tag) {
                return Err(ParseError::ReferenceInvalidFormat);
            }
            (name, Some(tag))
        }
        None => (rest, None),
    };
    if !is_name(name) {
        return Err(ParseError::ReferenceInvalidFormat);
    }
    let (registry, repository) = split_domain(name);
    if repository.len() > NAME_TOTAL_LENGTH_MAX {
        return Err(ParseError::NameTooLong);
    }
    if let Some(digest) = digest {
        let expected = match digest.split_once(':') {
            Some(("sha256", _)) => 64,
            Some(("sha384", _)) => 96,
            Some(("sha512", _)) => 128,
            Some(_) => return Err(ParseError::DigestUnsupported),
            None => return Err(ParseError::DigestInvalidFormat),
        };
        if digest.len() - digest.find(':').map_or(0, |i| i + 1) != expected {
            return Err(ParseError::DigestInvalidLength);
        }
    }
    Ok(match (tag, digest) {
        (Some(tag), Some(digest)) => {
            Reference::with_tag_and_digest(registry, repository, tag.into(), digest.into())
        }
        (None, Some(digest)) => Reference::with_digest(registry, repository, digest.into()),
        (tag, None) => Reference::with_tag(registry, repository, tag.unwrap_or("latest").into()),
    })
}

/// `[DOMAIN/]PATH`.
fn is_name(name: &str) -> bool {
    if is_path(name) {
        return true;
    }
    name.split_once('/')
        .is_some_and(|(domain, path)| is_domain(domain) && is_path(path))
}

/// Components `[a-z0-9]+` joined by `.`, `_`, `__` or dashes, separated by `/`.
fn is_path(path: &str) -> bool {
    path.split('/').all(is_path_component)
}

fn is_path_component(component: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = component.as_bytes();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    // Between runs of [a-z0-9]: exactly `.`, `_`, `__`, or one or more `-`.
    let mut separator = String::new();
    for &b in bytes {
        if alnum(b) {
            let ok = matches!(separator.as_str(), "" | "." | "_" | "__")
                || separator.bytes().all(|s| s == b'-');
            if !ok {
                return false;
            }
            separator.clear();
        } else if matches!(b, b'.' | b'_' | b'-') {
            separator.push(b as char);
        } else {
            return false;
        }
    }
    true
}

/// `COMPONENT(.COMPONENT)*[:PORT]`, a component `[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?`.
fn is_domain(domain: &str) -> bool {
    let (host, port) = match domain.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (domain, None),
    };
    let component_ok = |c: &str| {
        let b = c.as_bytes();
        match (b.first(), b.last()) {
            (Some(f), Some(l)) => {
                f.is_ascii_alphanumeric()
                    && l.is_ascii_alphanumeric()
                    && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
            }
            _ => false,
        }
    };
    host.split('.').all(component_ok)
        && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// `[\w][\w.-]{0,127}`, `\w` ASCII.
fn is_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && word(bytes[0])
        && bytes[1..]
            .iter()
            .all(|&b| word(b) || b == b'.' || b == b'-')
}

/// `ALGORITHM:HEX`, the algorithm `[A-Za-z][A-Za-z0-9]*` parts joined by one of `-_+.`, the hex
/// part at least 32 characters.
fn is_digest(digest: &str) -> bool {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return false;
    };
    let part_ok = |p: &str| {
        let b = p.as_bytes();
        !b.is_empty() && b[0].is_ascii_alphabetic() && b.iter().all(u8::is_ascii_alphanumeric)
    };
    algorithm.split(['-', '_', '+', '.']).all(part_ok)
        && hex.len() >= 32
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Docker's normalisation (distribution/reference `splitDomain`): the first component is the
/// registry when it has a `.` or a `:` or is `localhost`; else `docker.io`, where a one-component
/// name is an official image under `library/`.
fn split_domain(name: &str) -> (String, String) {
    let (mut domain, mut remainder) = match name.split_once('/') {
        Some((left, right)) if left.contains(['.', ':']) || left == "localhost" => {
            (left.to_owned(), right.to_owned())
        }
        _ => ("docker.io".to_owned(), name.to_owned()),
    };
    if domain == "index.docker.io" {
        domain = "docker.io".into();
    }
    if domain == "docker.io" && !remainder.contains('/') {
        remainder = format!("library/{remainder}");
    }
    (domain, remainder)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This parser and oci-spec's give the same reference or the same error.
    #[track_caller]
    fn same_as_oci_spec(value: &str) {
        let ours = parse(value);
        let theirs = Reference::try_from(value);
        match (&ours, &theirs) {
            (Ok(a), Ok(b)) => assert_eq!(
                (a.registry(), a.repository(), a.tag(), a.digest()),
                (b.registry(), b.repository(), b.tag(), b.digest()),
                "{value:?}"
            ),
            (Err(a), Err(b)) => assert_eq!(a, b, "{value:?}"),
            _ => panic!("{value:?}: ours {ours:?}, oci-spec's {theirs:?}"),
        }
    }

    #[test]
    fn references_parse_as_oci_spec_parses_them() {
        let digest = format!("sha256:{}", "a".repeat(64));
        for value in [
            "busybox",
            "busybox:1",
            "library/busybox",
            "docker.io/busybox",
            "index.docker.io/library/busybox:latest",
            "localhost/app",
            "localhost:5000/app:1.0",
            "127.0.0.1:5000/team/app:1.0",
            "[::1]:5000/app",
            "Registry.Example.com/team/app",
            "registry.example.com:443/a/b/c/d:v1.2-rc_3",
            "registry-1.example.com/a__b/c.d/e-f/g--h",
            "registry.example.com/a___b",
            "registry.example.com/a..b",
            "registry.example.com/a_-b",
            "registry.example.com/-a",
            "registry.example.com/a-",
            "registry.example.com/A",
            "registry.example.com//a",
            "registry.example.com/a/",
            "-registry.example.com/a",
            "registry.example.com:/a",
            "registry.example.com:5x/a",
            "a_b/c",
            "a:b/c",
            "app:",
            "app:-x",
            "app:.x",
            "app:_x",
            &format!("app:{}", "t".repeat(128)),
            &format!("app:{}", "t".repeat(129)),
            &format!("app@{digest}"),
            &format!("app:1@{digest}"),
            &format!("127.0.0.1:5000/app@{digest}"),
            "app@sha256:abc",
            &format!("app@sha512:{}", "a".repeat(64)),
            &format!("app@md5:{}", "a".repeat(32)),
            &format!("app@sha256+b64:{}", "a".repeat(64)),
            &format!("app@1sha:{}", "a".repeat(64)),
            &format!("app@@{digest}"),
            &format!("app@{digest}:1"),
            &format!("a/{}", "b".repeat(260)),
            "",
            " ",
            "app 1",
            "app:1 ",
            "/app",
            ":1",
            "@x",
        ] {
            same_as_oci_spec(value);
        }
    }

    #[test]
    fn random_strings_parse_as_oci_spec_parses_them() {
        // A fixed-seed walk over strings of the grammar's characters (ASCII only: see the module
        // doc for the one difference).
        const ALPHABET: &[u8] = b"aAz09-_.:/@+bcf";
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..200_000 {
            let len = 1 + (next() % 24) as usize;
            let value: String = (0..len)
                .map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize] as char)
                .collect();
            same_as_oci_spec(&value);
        }
    }

    #[test]
    fn a_tag_is_ascii_as_in_docker() {
        assert!(Reference::try_from("app:é").is_ok(), "oci-spec takes it");
        assert_eq!(
            parse("app:é").unwrap_err(),
            ParseError::ReferenceInvalidFormat
        );
    }
}
