//! Packing a build context: deterministic, honouring .dockerignore, always sending the Dockerfile
//! and .dockerignore, and streaming in fixed-size chunks without holding the archive.

mod support;

use std::collections::BTreeSet;
use std::io::Read;
use std::sync::Arc;

use manifold_cli::context::{ContextError, ContextSource};
use manifold_proto::CONTEXT_CHUNK_BYTES;
use sha2::{Digest, Sha256};
use support::tree;

/// The entries of a tar, directories with a trailing `/`, and the contents of regular files.
fn entries(tar_bytes: &[u8]) -> Vec<(String, Option<String>)> {
    let mut archive = tar::Archive::new(tar_bytes);
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            match e.header().entry_type() {
                tar::EntryType::Directory => (format!("{}/", path.trim_end_matches('/')), None),
                _ => {
                    let mut s = String::new();
                    e.read_to_string(&mut s).unwrap();
                    (path, Some(s))
                }
            }
        })
        .collect()
}

fn names(tar_bytes: &[u8]) -> Vec<String> {
    entries(tar_bytes).into_iter().map(|(p, _)| p).collect()
}

fn pack(dir: &std::path::Path, always: &[&str]) -> Vec<u8> {
    let always: Vec<String> = always.iter().map(|s| s.to_string()).collect();
    ContextSource::open(dir, &always)
        .unwrap()
        .write_tar(Vec::new())
        .unwrap()
}

#[test]
fn the_same_tree_gives_the_same_digest() {
    let files = [
        ("Dockerfile", "FROM scratch\nCOPY . /\n"),
        ("src/main.rs", "fn main() {}\n"),
        ("src/lib/a.rs", "// a\n"),
        ("README.md", "hello\n"),
    ];
    let first = tree(&files);
    let source = ContextSource::open(first.path(), &["Dockerfile".into()]).unwrap();
    let a = source.digest().unwrap();
    let b = source.digest().unwrap();
    assert_eq!(a, b);
    assert!(
        a.digest.starts_with("sha256:") && a.digest.len() == 71,
        "{a:?}"
    );

    // The digest is the sha256 of exactly the bytes written.
    let bytes = source.write_tar(Vec::new()).unwrap();
    assert_eq!(a.size, bytes.len() as u64);
    assert_eq!(
        a.digest,
        format!("sha256:{}", hex::encode(Sha256::digest(&bytes)))
    );

    // Another copy of the tree, written in another order at another time: same digest.
    let mut reversed = files;
    reversed.reverse();
    let second = tree(&reversed);
    let other = ContextSource::open(second.path(), &["Dockerfile".into()])
        .unwrap()
        .digest()
        .unwrap();
    assert_eq!(a, other);

    // A changed byte changes it.
    std::fs::write(second.path().join("README.md"), "hellO\n").unwrap();
    let changed = ContextSource::open(second.path(), &["Dockerfile".into()])
        .unwrap()
        .digest()
        .unwrap();
    assert_ne!(a.digest, changed.digest);
}

#[test]
fn entries_are_sorted_with_directories_before_their_contents() {
    let dir = tree(&[
        ("b.txt", "b"),
        ("a/z.txt", "z"),
        ("a/b/c.txt", "c"),
        ("Dockerfile", "FROM scratch"),
    ]);
    assert_eq!(
        names(&pack(dir.path(), &["Dockerfile"])),
        ["Dockerfile", "a/", "a/b/", "a/b/c.txt", "a/z.txt", "b.txt"]
    );
}

#[test]
fn dockerignore_exclusions_are_absent_from_the_tar() {
    let dir = tree(&[
        ("Dockerfile", "FROM scratch"),
        (
            ".dockerignore",
            "# build output\ntarget\n**/*.log\n*.md\n!README.md\nsecrets/*\n!secrets/public.pem\n",
        ),
        ("target/debug/app", "binary"),
        ("src/main.rs", "fn main() {}"),
        ("src/debug.log", "log"),
        ("deep/er/trace.log", "log"),
        ("CHANGES.md", "changes"),
        ("README.md", "readme"),
        ("docs/guide.md", "nested md is not matched by *.md"),
        ("secrets/key.pem", "private"),
        ("secrets/public.pem", "public"),
    ]);
    let got: BTreeSet<String> = names(&pack(dir.path(), &["Dockerfile"]))
        .into_iter()
        .collect();
    let expected: BTreeSet<String> = [
        ".dockerignore",
        "Dockerfile",
        "README.md",
        "deep/",
        "deep/er/",
        "docs/",
        "docs/guide.md",
        "secrets/",
        "secrets/public.pem",
        "src/",
        "src/main.rs",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(got, expected);
}

#[test]
fn an_excluded_directory_keeps_a_re_included_file_and_its_parents() {
    let dir = tree(&[
        ("Dockerfile", "FROM scratch"),
        (".dockerignore", "vendor\n!vendor/keep/me.txt\n"),
        ("vendor/drop.txt", "x"),
        ("vendor/keep/me.txt", "kept"),
        ("vendor/keep/not-me.txt", "x"),
    ]);
    assert_eq!(
        names(&pack(dir.path(), &["Dockerfile"])),
        [
            ".dockerignore",
            "Dockerfile",
            "vendor/",
            "vendor/keep/",
            "vendor/keep/me.txt"
        ]
    );
}

#[test]
fn the_dockerfile_and_dockerignore_are_sent_even_when_excluded() {
    let dir = tree(&[
        ("Dockerfile", "FROM scratch"),
        ("build/Dockerfile.arm64", "FROM scratch"),
        (".dockerignore", "Dockerfile\n.dockerignore\nbuild\n*\n"),
        ("app.py", "print()"),
    ]);
    let tar = pack(dir.path(), &["Dockerfile", "build/Dockerfile.arm64"]);
    let got = entries(&tar);
    let names: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        names,
        [
            ".dockerignore",
            "Dockerfile",
            "build/",
            "build/Dockerfile.arm64"
        ]
    );
    assert_eq!(got[1].1.as_deref(), Some("FROM scratch"));
}

#[test]
fn owners_and_times_are_normalised_and_modes_kept() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tree(&[("Dockerfile", "FROM scratch"), ("run.sh", "#!/bin/sh\n")]);
    std::fs::set_permissions(
        dir.path().join("run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("run.sh", dir.path().join("link")).unwrap();
    let tar = pack(dir.path(), &["Dockerfile"]);
    let mut archive = tar::Archive::new(&tar[..]);
    let mut seen = Vec::new();
    for e in archive.entries().unwrap() {
        let e = e.unwrap();
        let h = e.header();
        assert_eq!(h.mtime().unwrap(), 0);
        assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
        let path = e.path().unwrap().to_string_lossy().into_owned();
        if path == "run.sh" {
            assert_eq!(h.mode().unwrap(), 0o755);
        }
        if path == "link" {
            assert_eq!(h.entry_type(), tar::EntryType::Symlink);
            assert_eq!(e.link_name().unwrap().unwrap().to_string_lossy(), "run.sh");
        }
        seen.push(path);
    }
    assert_eq!(seen, ["Dockerfile", "link", "run.sh"]);
}

#[test]
fn a_bad_dockerignore_is_reported_with_its_line() {
    let dir = tree(&[
        ("Dockerfile", "FROM scratch"),
        (".dockerignore", "ok\n[oops\n"),
    ]);
    let err = ContextSource::open(dir.path(), &[]).unwrap_err();
    assert!(matches!(err, ContextError::Ignore { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains(".dockerignore"), "{text}");
    assert!(text.contains("`[oops` on line 2"), "{text}");
}

#[test]
fn a_missing_context_is_named() {
    let err = ContextSource::open(std::path::Path::new("/no/such/ctx"), &[]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "context `/no/such/ctx` is not a directory: no such file or directory"
    );
}

/// 200 MB, mostly a sparse file: the upload stream yields chunks of exactly CONTEXT_CHUNK_BYTES
/// (the last one shorter), as produced, and their hash is the first pass's digest. Nothing holds
/// the whole archive: the producer is a bounded channel of chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_context_streams_in_fixed_size_chunks() {
    const SIZE: u64 = 200 * 1024 * 1024;
    let dir = tree(&[("Dockerfile", "FROM scratch"), ("small.txt", "small")]);
    let big = std::fs::File::create(dir.path().join("big.bin")).unwrap();
    big.set_len(SIZE).unwrap();
    drop(big);

    let source = Arc::new(ContextSource::open(dir.path(), &["Dockerfile".into()]).unwrap());
    let hashing = Arc::clone(&source);
    let first = tokio::task::spawn_blocking(move || hashing.digest())
        .await
        .unwrap()
        .unwrap();
    assert!(first.size > SIZE, "{first:?}");

    let mut chunks = source.chunks();
    let mut sizes = Vec::new();
    while let Some(chunk) = chunks.next().await {
        sizes.push(chunk.len());
    }
    let second = chunks.finish().await.unwrap();
    assert_eq!(second, first, "both passes produce the same archive");

    let (last, full) = sizes.split_last().unwrap();
    assert!(full.iter().all(|&n| n == CONTEXT_CHUNK_BYTES), "{sizes:?}");
    assert!(*last > 0 && *last <= CONTEXT_CHUNK_BYTES);
    assert_eq!(sizes.iter().map(|&n| n as u64).sum::<u64>(), first.size);
    assert_eq!(
        sizes.len() as u64,
        first.size.div_ceil(CONTEXT_CHUNK_BYTES as u64)
    );
}

#[tokio::test]
async fn dropping_the_stream_stops_the_packing_thread() {
    let dir = tree(&[("Dockerfile", "FROM scratch")]);
    let big = std::fs::File::create(dir.path().join("big.bin")).unwrap();
    big.set_len(64 * CONTEXT_CHUNK_BYTES as u64).unwrap();
    drop(big);
    let source = Arc::new(ContextSource::open(dir.path(), &["Dockerfile".into()]).unwrap());
    let mut chunks = source.chunks();
    assert_eq!(
        chunks.next().await.map(|c| c.len()),
        Some(CONTEXT_CHUNK_BYTES)
    );
    // The producer is blocked on the bounded channel; finishing early must not hang.
    let err = chunks.finish().await.unwrap_err();
    assert!(matches!(err, ContextError::Aborted(_)), "{err}");
}

#[test]
fn names_that_are_not_utf8_are_kept_byte_for_byte_and_fifos_are_sent() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt as _;

    let dir = tree(&[("Dockerfile", "FROM scratch\n")]);
    // Two Latin-1 names that a lossy conversion would both turn into `caf\u{FFFD}`.
    for (name, body) in [
        (&b"caf\xe9"[..], "latin-1 e"),
        (&b"caf\xe8"[..], "latin-1 e grave"),
    ] {
        std::fs::write(dir.path().join(OsStr::from_bytes(name)), body).unwrap();
    }
    let long: Vec<u8> = [&b"d\xff"[..], &[b'x'; 120]].concat();
    std::fs::write(dir.path().join(OsStr::from_bytes(&long)), "long").unwrap();
    let fifo = dir.path().join("pipe");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());

    let bytes = pack(dir.path(), &["Dockerfile"]);
    let mut archive = tar::Archive::new(&bytes[..]);
    let mut seen: Vec<(Vec<u8>, tar::EntryType, String)> = Vec::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path_bytes().into_owned();
        let kind = e.header().entry_type();
        let mut body = String::new();
        e.read_to_string(&mut body).unwrap();
        seen.push((name, kind, body));
    }
    let find = |n: &[u8]| {
        seen.iter()
            .find(|(name, ..)| name == n)
            .unwrap_or_else(|| panic!("{} missing from {seen:?}", String::from_utf8_lossy(n)))
    };
    assert_eq!(find(b"caf\xe9").2, "latin-1 e");
    assert_eq!(find(b"caf\xe8").2, "latin-1 e grave");
    assert_eq!(
        find(&long).2,
        "long",
        "a long name goes through a GNU long-name entry"
    );
    assert_eq!(find(b"pipe").1, tar::EntryType::Fifo);
    assert_eq!(seen.len(), 5, "{seen:?}");
}
