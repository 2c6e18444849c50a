//! Build contexts: packing a directory into a deterministic tar, hashing it, streaming it.
//!
//! Memory never grows with the size of the context. The tar is produced twice, straight from the
//! file system each time: a first pass writes it into a hashing sink to learn its digest, and only
//! when the coordinator lacks that digest a second pass writes it, from a blocking thread, into a
//! bounded channel of [`CONTEXT_CHUNK_BYTES`] chunks that the gRPC upload drains. The second pass
//! hashes what it sends too, so a file that changed in between is reported by name of the digest
//! instead of as a puzzling rejection.
//!
//! Determinism: entries are written depth first with the names of each directory sorted bytewise,
//! owners are 0:0 without names and modification times are 0, so the same tree always gives the
//! same digest, on any machine and from any checkout. Permission bits are kept.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use manifold_proto::CONTEXT_CHUNK_BYTES;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::client::{ClientError, Coordinator};
use crate::dockerignore::{Matcher, PatternError, Step, Walk};

/// Name of the ignore file at the root of a context.
pub const DOCKERIGNORE: &str = ".dockerignore";

/// How many chunks may wait between the packing thread and the upload: bounds memory to about
/// this many times [`CONTEXT_CHUNK_BYTES`].
const CHUNKS_IN_FLIGHT: usize = 4;

/// What can go wrong while packing or sending a context.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// The context directory is missing or not a directory.
    #[error("context `{path}` is not a directory: {reason}")]
    NotADirectory {
        /// The path as given.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// The `.dockerignore` file cannot be read or has a bad pattern.
    #[error("cannot use `{path}`: {source}")]
    Ignore {
        /// Path of the `.dockerignore` file.
        path: PathBuf,
        /// The pattern error.
        #[source]
        source: PatternError,
    },
    /// Reading the `.dockerignore` file failed.
    #[error("cannot read `{path}`: {source}")]
    ReadIgnore {
        /// Path of the `.dockerignore` file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A file or directory of the context cannot be read.
    #[error("cannot read `{path}` in the context: {source}")]
    Read {
        /// The file, relative to the context root.
        path: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A file shrank while it was being packed.
    #[error(
        "`{path}` in the context changed while it was being packed: run the build again once it stops changing"
    )]
    FileChanged {
        /// The file, relative to the context root.
        path: String,
    },
    /// The tar produced for the upload is not the one first hashed.
    #[error(
        "files in context `{root}` changed between hashing and uploading (digest {expected} became {actual}); the coordinator kept nothing: run the build again once they stop changing"
    )]
    ChangedDuringUpload {
        /// The context root.
        root: PathBuf,
        /// The digest of the first pass.
        expected: String,
        /// The digest of what was uploaded.
        actual: String,
    },
    /// Writing the tar failed (only with a failing sink).
    #[error("cannot write the context archive: {0}")]
    Write(#[source] io::Error),
    /// The packing thread panicked or was cancelled.
    #[error("packing the context stopped: {0}")]
    Aborted(String),
    /// The coordinator refused or lost the upload.
    #[error(transparent)]
    Coordinator(#[from] ClientError),
}

/// The sha256 digest and size of a packed context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextDigest {
    /// `sha256:<64 hex>`.
    pub digest: String,
    /// Size of the tar in bytes.
    pub size: u64,
}

impl ContextDigest {
    /// The digest cut to 12 hex digits for messages, e.g. `sha256:0123456789ab…`.
    pub fn short(&self) -> String {
        let hex = self.digest.trim_start_matches("sha256:");
        format!("sha256:{}…", &hex[..hex.len().min(12)])
    }
}

/// A directory to pack, with its `.dockerignore` rules and the files sent whatever they say.
#[derive(Debug, Clone)]
pub struct ContextSource {
    root: PathBuf,
    ignore: Matcher,
    /// Relative `/`-separated paths always packed (the Dockerfiles and `.dockerignore`), as bytes.
    always: BTreeSet<Vec<u8>>,
}

/// A directory being walked: its entry is written only once something under it is (or it is
/// sent itself).
struct OpenDir {
    rel: String,
    tar_path: PathBuf,
    meta: fs::Metadata,
    written: bool,
}

impl ContextSource {
    /// Opens `root`, reading its `.dockerignore` if there is one. `always_include` lists paths
    /// relative to the root (the Dockerfiles) that are packed even when `.dockerignore` excludes
    /// them; `.dockerignore` itself is always packed too. The worker reads both from the tar
    /// and leaves them out of what `COPY` sees when the patterns exclude them, as Docker does.
    pub fn open(root: &Path, always_include: &[String]) -> Result<Self, ContextError> {
        let not_dir = |reason: String| ContextError::NotADirectory {
            path: root.to_owned(),
            reason,
        };
        let canonical = root.canonicalize().map_err(|e| not_dir(io_reason(&e)))?;
        if !canonical.is_dir() {
            return Err(not_dir("it is a file".to_owned()));
        }
        let ignore_path = canonical.join(DOCKERIGNORE);
        let ignore = match fs::read(&ignore_path) {
            Ok(bytes) => Matcher::parse(&bytes).map_err(|source| ContextError::Ignore {
                path: ignore_path.clone(),
                source,
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Matcher::default(),
            Err(source) => {
                return Err(ContextError::ReadIgnore {
                    path: ignore_path,
                    source,
                });
            }
        };
        let mut always: BTreeSet<Vec<u8>> = always_include
            .iter()
            .map(|p| p.trim_start_matches("./").as_bytes().to_vec())
            .collect();
        always.insert(DOCKERIGNORE.as_bytes().to_vec());
        Ok(Self {
            root: canonical,
            ignore,
            always,
        })
    }

    /// The canonical context directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Writes the context as a tar into `out` and returns `out`.
    pub fn write_tar<W: Write>(&self, out: W) -> Result<W, ContextError> {
        let mut builder = tar::Builder::new(out);
        let mut walk = Walk::new(&self.ignore);
        let mut open = Vec::new();
        self.walk_dir(&mut builder, &mut walk, &self.root, b"", &mut open)?;
        builder.into_inner().map_err(ContextError::Write)
    }

    /// First pass: the digest and size of the tar, computed without keeping it.
    pub fn digest(&self) -> Result<ContextDigest, ContextError> {
        let sink = self.write_tar(HashingSink::default())?;
        Ok(sink.finish())
    }

    /// Second pass: starts packing on a blocking thread and returns the stream of its chunks.
    /// Every chunk but the last is exactly [`CONTEXT_CHUNK_BYTES`] long; at most a few chunks are
    /// buffered, so memory stays bounded whatever the context's size. Must be called inside a
    /// Tokio runtime.
    pub fn chunks(self: Arc<Self>) -> ChunkStream {
        let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
        let cancel = CancellationToken::new();
        let token = cancel.clone();
        let handle = tokio::runtime::Handle::current();
        let producer = tokio::task::spawn_blocking(move || {
            let sink = ChunkSink {
                buf: Vec::with_capacity(CONTEXT_CHUNK_BYTES),
                hash: HashingSink::default(),
                send: move |chunk: Vec<u8>| {
                    let sent = handle.block_on(async {
                        tokio::select! {
                            sent = tx.send(chunk) => sent.is_ok(),
                            () = token.cancelled() => false,
                        }
                    });
                    if sent {
                        Ok(())
                    } else {
                        Err(io::Error::new(io::ErrorKind::BrokenPipe, ReceiverGone))
                    }
                },
            };
            let sink = self.write_tar(sink)?;
            sink.finish()
        });
        ChunkStream {
            rx,
            producer,
            cancel: cancel.drop_guard(),
        }
    }

    /// Recursively packs `dir` (whose path in the tar is `rel`, empty for the root) in Docker's
    /// walk order, each entry decided by `walk` as Docker's file sender decides it. `open` holds
    /// the directories being walked; one not sent itself is written just before the first entry
    /// under it, so a re-included file keeps its parents.
    fn walk_dir<W: Write>(
        &self,
        builder: &mut tar::Builder<W>,
        walk: &mut Walk<'_>,
        dir: &Path,
        rel: &[u8],
        open: &mut Vec<OpenDir>,
    ) -> Result<(), ContextError> {
        let read_err = |source| ContextError::Read {
            path: if rel.is_empty() {
                ".".into()
            } else {
                String::from_utf8_lossy(rel).into_owned()
            },
            source,
        };
        let mut names: Vec<std::ffi::OsString> = fs::read_dir(dir)
            .map_err(read_err)?
            .map(|entry| entry.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(read_err)?;
        names.sort_unstable_by(|a, b| a.as_encoded_bytes().cmp(b.as_encoded_bytes()));
        for name in names {
            // Names are matched and written as their own bytes, UTF-8 or not; the lossy
            // rendering is only for messages.
            let mut child_bytes = rel.to_vec();
            if !rel.is_empty() {
                child_bytes.push(b'/');
            }
            child_bytes.extend_from_slice(name.as_encoded_bytes());
            let child_rel = String::from_utf8_lossy(&child_bytes).into_owned();
            let child = dir.join(&name);
            let child_tar = child
                .strip_prefix(&self.root)
                .expect("walked paths are under the root")
                .to_path_buf();
            let meta = match fs::symlink_metadata(&child) {
                Ok(m) => m,
                // Deleted since the listing: it is simply not part of this snapshot.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(ContextError::Read {
                        path: child_rel,
                        source,
                    });
                }
            };
            let step = walk.visit(&child_bytes, meta.is_dir());
            if meta.is_dir() {
                let forced_under = self.has_always_under(&child_bytes);
                if step == Step::Prune && !forced_under {
                    continue;
                }
                let keep = step == Step::Keep;
                if keep {
                    flush_open(builder, open)?;
                    append_dir(builder, &child_rel, &child_tar, &meta)?;
                }
                open.push(OpenDir {
                    rel: child_rel,
                    tar_path: child_tar,
                    meta,
                    written: keep,
                });
                self.walk_dir(builder, walk, &child, &child_bytes, open)?;
                open.pop();
                continue;
            }
            if step != Step::Keep && !self.always.contains(&child_bytes) {
                continue;
            }
            if meta.is_file() {
                flush_open(builder, open)?;
                append_file(builder, &child, &child_rel, &child_tar, &meta)?;
            } else if meta.file_type().is_symlink() {
                flush_open(builder, open)?;
                let target = fs::read_link(&child).map_err(|source| ContextError::Read {
                    path: child_rel.clone(),
                    source,
                })?;
                append_symlink(builder, &child_rel, &child_tar, &target, &meta)?;
            } else if let Some(kind) = special_entry(&meta) {
                // FIFOs and devices go in as the docker CLI sends them: a header, no data.
                flush_open(builder, open)?;
                append_special(builder, &child_rel, &child_tar, &meta, kind)?;
            } else {
                // The docker CLI leaves sockets out too.
                tracing::debug!(path = %child_rel, "skipping socket");
            }
        }
        Ok(())
    }

    fn has_always_under(&self, dir: &[u8]) -> bool {
        let mut prefix = dir.to_vec();
        prefix.push(b'/');
        self.always
            .range(prefix.clone()..)
            .next()
            .is_some_and(|p| p.starts_with(&prefix))
    }
}

/// Writes the directories being walked that are not written yet, outermost first.
fn flush_open<W: Write>(
    builder: &mut tar::Builder<W>,
    open: &mut [OpenDir],
) -> Result<(), ContextError> {
    for dir in open.iter_mut().filter(|d| !d.written) {
        append_dir(builder, &dir.rel, &dir.tar_path, &dir.meta)?;
        dir.written = true;
    }
    Ok(())
}

fn io_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "no such file or directory".to_owned(),
        io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        _ => e.to_string(),
    }
}

fn header(meta: &fs::Metadata, entry_type: tar::EntryType) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(entry_type);
    header.set_mode(meta.mode() & 0o7777);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(0);
    header
}

fn write_err(path: &str, source: io::Error) -> ContextError {
    if source.kind() == io::ErrorKind::BrokenPipe
        && source.get_ref().is_some_and(|e| e.is::<ReceiverGone>())
    {
        return ContextError::Aborted("the upload stopped reading".to_owned());
    }
    if source.kind() == io::ErrorKind::UnexpectedEof
        && source.get_ref().is_some_and(|e| e.is::<Shrunk>())
    {
        return ContextError::FileChanged { path: path.into() };
    }
    ContextError::Read {
        path: path.into(),
        source,
    }
}

fn append_dir<W: Write>(
    builder: &mut tar::Builder<W>,
    rel: &str,
    tar_path: &Path,
    meta: &fs::Metadata,
) -> Result<(), ContextError> {
    let mut h = header(meta, tar::EntryType::Directory);
    let mut name = tar_path.as_os_str().to_owned();
    name.push("/");
    builder
        .append_data(&mut h, name, io::empty())
        .map_err(|e| write_err(rel, e))
}

/// The tar entry type of a FIFO or a device; `None` for anything else (sockets).
fn special_entry(meta: &fs::Metadata) -> Option<tar::EntryType> {
    use std::os::unix::fs::FileTypeExt as _;
    let t = meta.file_type();
    if t.is_fifo() {
        Some(tar::EntryType::Fifo)
    } else if t.is_char_device() {
        Some(tar::EntryType::Char)
    } else if t.is_block_device() {
        Some(tar::EntryType::Block)
    } else {
        None
    }
}

fn append_special<W: Write>(
    builder: &mut tar::Builder<W>,
    rel: &str,
    tar_path: &Path,
    meta: &fs::Metadata,
    kind: tar::EntryType,
) -> Result<(), ContextError> {
    let mut h = header(meta, kind);
    if kind != tar::EntryType::Fifo {
        // Linux's encoding of a device number (glibc's major()/minor()).
        let rdev = meta.rdev();
        let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
        let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
        let too_big = |_| write_err(rel, io::Error::other("device number too large for tar"));
        h.set_device_major(u32::try_from(major).map_err(too_big)?)
            .map_err(|e| write_err(rel, e))?;
        h.set_device_minor(u32::try_from(minor).map_err(too_big)?)
            .map_err(|e| write_err(rel, e))?;
    }
    builder
        .append_data(&mut h, tar_path, io::empty())
        .map_err(|e| write_err(rel, e))
}

fn append_file<W: Write>(
    builder: &mut tar::Builder<W>,
    path: &Path,
    rel: &str,
    tar_path: &Path,
    meta: &fs::Metadata,
) -> Result<(), ContextError> {
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(source) => {
            return Err(ContextError::Read {
                path: rel.into(),
                source,
            });
        }
    };
    let size = meta.len();
    let mut h = header(meta, tar::EntryType::Regular);
    h.set_size(size);
    let reader = ExactReader {
        inner: file.take(size),
        remaining: size,
    };
    builder
        .append_data(&mut h, tar_path, reader)
        .map_err(|e| write_err(rel, e))
}

fn append_symlink<W: Write>(
    builder: &mut tar::Builder<W>,
    rel: &str,
    tar_path: &Path,
    target: &Path,
    meta: &fs::Metadata,
) -> Result<(), ContextError> {
    let mut h = header(meta, tar::EntryType::Symlink);
    builder
        .append_link(&mut h, tar_path, target)
        .map_err(|e| write_err(rel, e))
}

/// Marks the error of a file that ended before the size its header announced.
#[derive(Debug)]
struct Shrunk;

impl std::fmt::Display for Shrunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the file shrank while it was read")
    }
}

impl std::error::Error for Shrunk {}

/// Marks the error of a chunk that nobody receives any more.
#[derive(Debug)]
struct ReceiverGone;

impl std::fmt::Display for ReceiverGone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the upload stopped reading")
    }
}

impl std::error::Error for ReceiverGone {}

/// Reads exactly the size written in the tar header, failing if the file is shorter: the tar
/// crate would otherwise write a corrupt archive. A file that grew is cut to its header's size.
struct ExactReader<R> {
    inner: R,
    remaining: u64,
}

impl<R: Read> Read for ExactReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, Shrunk));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// A `Write` that only hashes and counts.
#[derive(Default)]
struct HashingSink {
    hasher: Sha256,
    size: u64,
}

impl HashingSink {
    fn finish(self) -> ContextDigest {
        ContextDigest {
            digest: format!("sha256:{}", hex::encode(self.hasher.finalize())),
            size: self.size,
        }
    }
}

impl Write for HashingSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.hasher.update(buf);
        self.size += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A `Write` that cuts what it receives into chunks of exactly [`CONTEXT_CHUNK_BYTES`] and hands
/// each to `send`, hashing everything on the way.
struct ChunkSink<F> {
    buf: Vec<u8>,
    hash: HashingSink,
    send: F,
}

impl<F: FnMut(Vec<u8>) -> io::Result<()>> ChunkSink<F> {
    fn finish(mut self) -> Result<ContextDigest, ContextError> {
        if !self.buf.is_empty() {
            let last = std::mem::take(&mut self.buf);
            (self.send)(last).map_err(|e| write_err("", e))?;
        }
        Ok(self.hash.finish())
    }
}

impl<F: FnMut(Vec<u8>) -> io::Result<()>> Write for ChunkSink<F> {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let written = data.len();
        self.hash.write_all(data)?;
        while !data.is_empty() {
            let room = CONTEXT_CHUNK_BYTES - self.buf.len();
            let take = room.min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == CONTEXT_CHUNK_BYTES {
                let full =
                    std::mem::replace(&mut self.buf, Vec::with_capacity(CONTEXT_CHUNK_BYTES));
                (self.send)(full)?;
            }
        }
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The chunks of a context being packed on a blocking thread (see [`ContextSource::chunks`]).
/// Dropping it stops the packing thread.
pub struct ChunkStream {
    rx: mpsc::Receiver<Vec<u8>>,
    producer: tokio::task::JoinHandle<Result<ContextDigest, ContextError>>,
    cancel: tokio_util::sync::DropGuard,
}

impl ChunkStream {
    /// The next chunk, or None once the tar is complete (or packing failed: see [`Self::finish`]).
    pub async fn next(&mut self) -> Option<Vec<u8>> {
        self.rx.recv().await
    }

    /// Splits off the receiving end, as a stream for a request body, from the handle to the
    /// packing result. The packing stops when both are dropped.
    pub fn split(
        self,
    ) -> (
        tokio_stream::wrappers::ReceiverStream<Vec<u8>>,
        PackingResult,
    ) {
        (
            tokio_stream::wrappers::ReceiverStream::new(self.rx),
            PackingResult {
                producer: self.producer,
                cancel: self.cancel,
            },
        )
    }

    /// Stops the packing if it still runs and returns its outcome: the digest of everything
    /// produced, or why it failed.
    pub async fn finish(self) -> Result<ContextDigest, ContextError> {
        let (rx, result) = self.split();
        drop(rx);
        result.wait().await
    }
}

/// The outcome of a packing thread whose chunks are consumed elsewhere.
pub struct PackingResult {
    producer: tokio::task::JoinHandle<Result<ContextDigest, ContextError>>,
    cancel: tokio_util::sync::DropGuard,
}

impl PackingResult {
    /// Stops the packing thread if it is still blocked on sending, then waits for its outcome.
    pub async fn wait(self) -> Result<ContextDigest, ContextError> {
        drop(self.cancel);
        match self.producer.await {
            Ok(result) => result,
            Err(e) => Err(ContextError::Aborted(e.to_string())),
        }
    }
}

/// What [`send`] had to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendOutcome {
    /// The coordinator already held the digest: nothing was uploaded.
    AlreadyPresent,
    /// The context was uploaded, this many bytes.
    Uploaded(u64),
}

/// Makes sure the coordinator holds the context `digest` (from [`ContextSource::digest`]): asks
/// `Contexts.Has`, and only if absent packs the context again and streams it with
/// `Contexts.Upload`.
pub async fn send(
    coordinator: &Coordinator,
    source: Arc<ContextSource>,
    digest: &ContextDigest,
) -> Result<SendOutcome, ContextError> {
    if coordinator.has_context(&digest.digest).await? {
        return Ok(SendOutcome::AlreadyPresent);
    }
    let root = source.root().to_owned();
    let (chunks, packing) = source.chunks().split();
    let uploaded = coordinator.upload_context(&digest.digest, chunks).await;
    let packed = packing.wait().await;
    match (packed, uploaded) {
        // The upload ended first: the coordinator's reason explains why the packing stopped.
        (Err(ContextError::Aborted(_)), Err(rpc)) => Err(rpc.into()),
        (Err(e), _) => Err(e),
        // A local change explains a rejection better than the coordinator's digest mismatch.
        (Ok(packed), _) if packed.digest != digest.digest => {
            Err(ContextError::ChangedDuringUpload {
                root,
                expected: digest.digest.clone(),
                actual: packed.digest,
            })
        }
        (Ok(_), Err(rpc)) => Err(rpc.into()),
        (Ok(_), Ok(size)) => Ok(SendOutcome::Uploaded(size)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sink_cuts_exact_chunks_and_hashes_everything() {
        let mut sent: Vec<usize> = Vec::new();
        let mut sink = ChunkSink {
            buf: Vec::new(),
            hash: HashingSink::default(),
            send: |c: Vec<u8>| {
                sent.push(c.len());
                Ok(())
            },
        };
        let data = vec![7u8; CONTEXT_CHUNK_BYTES * 2 + 10];
        // Odd write sizes must not change the chunking.
        for piece in data.chunks(333_333) {
            sink.write_all(piece).unwrap();
        }
        let digest = sink.finish().unwrap();
        assert_eq!(sent, vec![CONTEXT_CHUNK_BYTES, CONTEXT_CHUNK_BYTES, 10]);
        assert_eq!(digest.size, data.len() as u64);
        assert_eq!(
            digest.digest,
            format!("sha256:{}", hex::encode(Sha256::digest(&data)))
        );
    }

    #[test]
    fn a_file_shorter_than_its_header_is_reported_as_changed() {
        let mut r = ExactReader {
            inner: &b"abc"[..],
            remaining: 5,
        };
        let mut out = Vec::new();
        let err = io::copy(&mut r, &mut out).unwrap_err();
        assert!(matches!(
            write_err("f", err),
            ContextError::FileChanged { path } if path == "f"
        ));
    }

    #[test]
    fn short_digest_keeps_twelve_hex_digits() {
        let d = ContextDigest {
            digest: format!("sha256:{}", "ab".repeat(32)),
            size: 1,
        };
        assert_eq!(d.short(), "sha256:abababababab…");
    }
}
