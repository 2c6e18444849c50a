//! What BuildKit gets of a job's context: the entries a `COPY . /x` sees, and the Dockerfile apart.
//!
//! The context tar always carries the Dockerfiles and `.dockerignore` (the CLI packs them even
//! when the patterns exclude them), so the worker can read them. Docker leaves them out of the
//! build context when `.dockerignore` excludes them, and still builds with the Dockerfile (buildx
//! sends it through a source of its own). So the worker applies the tar's own `.dockerignore`
//! to the tar's entries, with the CLI's rules ([`manifold_proto::dockerignore::Walk`]), and
//! serves BuildKit:
//! - the context: the tar with the excluded entries cut out, as byte ranges of the cached file
//!   (the file is never copied or rewritten, so the context stays the content-addressed bytes
//!   the team uploaded);
//! - the Dockerfile: where its bytes lie in the tar, for the session's `dockerfile` source.
//!
//! On a tar packed by the CLI the only entries cut are the Dockerfiles, `.dockerignore` and
//! directories that held nothing else sent; the rest was left out at packing already.

use std::fs::File;
use std::io::{self, Read, Seek};
use std::ops::Range;
use std::path::{Path, PathBuf};

use manifold_proto::dockerignore::{Matcher, PatternError, Step, Walk};

/// The ignore file at the root of a context.
const DOCKERIGNORE: &[u8] = b".dockerignore";
/// Largest `.dockerignore` read from a context tar.
pub const MAX_DOCKERIGNORE_BYTES: u64 = 1 << 20;

/// What the build session serves of one context tar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContextView {
    /// The context tar on disk.
    pub tar: PathBuf,
    /// The byte ranges of `tar` that make the context BuildKit unpacks, in order.
    pub ranges: Vec<Range<u64>>,
    /// The Dockerfile, served on its own.
    pub dockerfile: DockerfileSource,
}

/// Where the Dockerfile's bytes are in the context tar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DockerfileSource {
    /// Its path in the context, `/`-separated (`Dockerfile`, `docker/Dockerfile.arm64`).
    pub path: String,
    /// Its permission bits.
    pub mode: u32,
    /// Offset of its data in the tar.
    pub offset: u64,
    /// Its size.
    pub size: u64,
}

/// Why a context tar cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    /// The tar cannot be read or is not a tar.
    #[error("cannot read the context tar {path}: {source}")]
    Read {
        /// The tar on disk.
        path: PathBuf,
        /// The I/O or format error.
        #[source]
        source: io::Error,
    },
    /// The job's Dockerfile is not a regular file of the context.
    #[error(
        "the context has no regular file `{dockerfile}` to build with: pass the Dockerfile's path inside the context"
    )]
    NoDockerfile {
        /// The job's Dockerfile path.
        dockerfile: String,
    },
    /// The context's `.dockerignore` is one Docker refuses (the CLI refuses it before upload).
    #[error("the context's .dockerignore: {0}")]
    Ignore(#[from] PatternError),
    /// The context's `.dockerignore` is larger than the worker reads.
    #[error(
        "the context's .dockerignore is {size} bytes, more than the {MAX_DOCKERIGNORE_BYTES} the worker reads"
    )]
    IgnoreTooLarge {
        /// Its size.
        size: u64,
    },
}

/// One entry of the tar: its name, kind, and the bytes from the end of the entry before it
/// (its extension headers included) to the end of its data.
struct Entry {
    path: Vec<u8>,
    is_dir: bool,
    is_file: bool,
    mode: u32,
    span: Range<u64>,
    data: u64,
    size: u64,
}

/// Reads the headers of the context tar at `tar` (seeking past the data) and works out what
/// BuildKit is served for a build of `dockerfile`.
pub fn plan(tar: &Path, dockerfile: &str) -> Result<ContextView, ViewError> {
    let read_err = |source: io::Error| ViewError::Read {
        path: tar.to_owned(),
        source,
    };
    let len = std::fs::metadata(tar).map_err(read_err)?.len();
    let entries = list(tar).map_err(read_err)?;
    let dockerfile_path = dockerfile.trim_start_matches("./");
    let source = entries
        .iter()
        .find(|e| e.is_file && e.path == dockerfile_path.as_bytes())
        .map(|e| DockerfileSource {
            path: dockerfile_path.to_owned(),
            mode: e.mode,
            offset: e.data,
            size: e.size,
        })
        .ok_or_else(|| ViewError::NoDockerfile {
            dockerfile: dockerfile.to_owned(),
        })?;
    let matcher = match entries.iter().find(|e| e.is_file && e.path == DOCKERIGNORE) {
        None => Matcher::default(),
        Some(e) if e.size > MAX_DOCKERIGNORE_BYTES => {
            return Err(ViewError::IgnoreTooLarge { size: e.size });
        }
        Some(e) => Matcher::parse(&read_at(tar, e.data, e.size).map_err(read_err)?)?,
    };
    let kept = sent(&matcher, &entries);
    let end_of_entries = entries.last().map_or(0, |e| e.span.end);
    let mut ranges: Vec<Range<u64>> = Vec::new();
    for (entry, keep) in entries.iter().zip(kept) {
        if !keep {
            continue;
        }
        match ranges.last_mut() {
            Some(last) if last.end == entry.span.start => last.end = entry.span.end,
            _ => ranges.push(entry.span.clone()),
        }
    }
    // The end-of-archive blocks.
    match ranges.last_mut() {
        Some(last) if last.end == end_of_entries => last.end = len,
        _ => ranges.push(end_of_entries..len),
    }
    Ok(ContextView {
        tar: tar.to_owned(),
        ranges,
        dockerfile: source,
    })
}

/// Which entries Docker sends: [`Walk`] over the tar's entries (in the CLI's walk order), a
/// directory sent when it is kept itself or something under it is.
fn sent(matcher: &Matcher, entries: &[Entry]) -> Vec<bool> {
    let mut walk = Walk::new(matcher);
    let mut keep = vec![false; entries.len()];
    // Directories around the current entry: (path with `/`, index, sent yet).
    let mut open: Vec<(Vec<u8>, usize, bool)> = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        if entry.path.is_empty() {
            // The root itself (`./`), or an entry with no name: kept as it is.
            keep[i] = true;
            continue;
        }
        while let Some((dir, ..)) = open.last() {
            if entry.path.starts_with(dir) {
                break;
            }
            open.pop();
        }
        let step = walk.visit(&entry.path, entry.is_dir);
        if step == Step::Keep {
            for (_, index, written) in open.iter_mut().filter(|d| !d.2) {
                keep[*index] = true;
                *written = true;
            }
            keep[i] = true;
        }
        if entry.is_dir {
            let mut with_slash = entry.path.clone();
            with_slash.push(b'/');
            open.push((with_slash, i, step == Step::Keep));
        }
    }
    keep
}

fn list(tar: &Path) -> io::Result<Vec<Entry>> {
    let mut archive = tar::Archive::new(File::open(tar)?);
    let mut entries = Vec::new();
    let mut previous_end = 0;
    for entry in archive.entries_with_seek()? {
        let entry = entry?;
        let header = entry.header();
        let kind = header.entry_type();
        let size = entry.size();
        let data = entry.raw_file_position();
        let end = data + size.div_ceil(512) * 512;
        let raw = entry.path_bytes();
        let mut path: &[u8] = &raw;
        while let Some(rest) = path.strip_prefix(b"./".as_slice()) {
            path = rest;
        }
        let path = path.strip_suffix(b"/".as_slice()).unwrap_or(path).to_vec();
        entries.push(Entry {
            path,
            is_dir: kind.is_dir(),
            is_file: kind.is_file() || kind == tar::EntryType::Continuous,
            mode: header.mode().unwrap_or(0o644),
            span: previous_end..end,
            data,
            size,
        });
        previous_end = end;
    }
    Ok(entries)
}

fn read_at(tar: &Path, offset: u64, size: u64) -> io::Result<Vec<u8>> {
    let mut file = File::open(tar)?;
    file.seek(io::SeekFrom::Start(offset))?;
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    file.take(size).read_to_end(&mut bytes)?;
    if (bytes.len() as u64) < size {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the tar ends inside an entry",
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar of `entries` (a trailing `/` makes a directory) with `ignore` as `.dockerignore`.
    fn tar_of(ignore: Option<&str>, entries: &[&str]) -> tempfile::NamedTempFile {
        let mut builder = tar::Builder::new(Vec::new());
        let mut names: Vec<(String, Vec<u8>)> = entries
            .iter()
            .map(|e| (e.to_string(), e.as_bytes().to_vec()))
            .collect();
        if let Some(text) = ignore {
            names.push((".dockerignore".into(), text.as_bytes().to_vec()));
        }
        names.sort();
        for (name, body) in names {
            let mut h = tar::Header::new_gnu();
            if name.ends_with('/') {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                h.set_mode(0o755);
                builder.append_data(&mut h, &name, io::empty()).unwrap();
            } else {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(body.len() as u64);
                h.set_mode(0o640);
                builder.append_data(&mut h, &name, &body[..]).unwrap();
            }
        }
        let bytes = builder.into_inner().unwrap();
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, &bytes).unwrap();
        file
    }

    /// The names in the tar BuildKit is served.
    fn served(view: &ContextView) -> Vec<String> {
        let mut bytes = Vec::new();
        for r in &view.ranges {
            bytes.extend(read_at(&view.tar, r.start, r.end - r.start).unwrap());
        }
        let mut archive = tar::Archive::new(&bytes[..]);
        archive
            .entries()
            .unwrap()
            .map(|e| String::from_utf8(e.unwrap().path_bytes().to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn nothing_is_cut_when_nothing_is_excluded() {
        let file = tar_of(None, &["Dockerfile", "src/", "src/a"]);
        let view = plan(file.path(), "Dockerfile").unwrap();
        let len = std::fs::metadata(file.path()).unwrap().len();
        assert_eq!(view.ranges, vec![0..len]);
        assert_eq!(served(&view), ["Dockerfile", "src/", "src/a"]);
    }

    #[test]
    fn an_excluded_dockerfile_and_dockerignore_are_cut_and_the_dockerfile_served_apart() {
        let file = tar_of(Some("Dockerfile\n.*\n"), &["Dockerfile", "a"]);
        let view = plan(file.path(), "./Dockerfile").unwrap();
        assert_eq!(served(&view), ["a"]);
        let d = &view.dockerfile;
        assert_eq!((d.path.as_str(), d.mode, d.size), ("Dockerfile", 0o640, 10));
        assert_eq!(
            read_at(file.path(), d.offset, d.size).unwrap(),
            b"Dockerfile"
        );
    }

    #[test]
    fn a_directory_kept_only_for_the_dockerfile_goes_with_it() {
        let file = tar_of(
            Some("docker\n!docker/keep\n"),
            &[
                "docker/",
                "docker/Dockerfile",
                "docker/keep",
                "ops/",
                "ops/Dockerfile",
            ],
        );
        let view = plan(file.path(), "docker/Dockerfile").unwrap();
        assert_eq!(
            served(&view),
            [
                ".dockerignore",
                "docker/",
                "docker/keep",
                "ops/",
                "ops/Dockerfile"
            ]
        );
        let file = tar_of(Some("docker\n"), &["docker/", "docker/Dockerfile", "x"]);
        let view = plan(file.path(), "docker/Dockerfile").unwrap();
        assert_eq!(served(&view), [".dockerignore", "x"]);
    }

    #[test]
    fn a_missing_dockerfile_is_named() {
        let file = tar_of(None, &["a"]);
        let err = plan(file.path(), "Dockerfile").unwrap_err();
        assert!(err.to_string().contains("`Dockerfile`"), "{err}");
    }
}
