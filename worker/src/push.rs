//! Getting an image from a graphdriver engine into its repository BY DIGEST ONLY (no tag), and
//! reading a pushed image back for the platform check. Every registry request goes through
//! [`manifold_registry::Session`] (one client, one retry policy; each retry is a line of the job's
//! output).
//!
//! A push reuses what is known, then streams only what is not:
//! 1. For each layer (by diff_id, from the daemon's image inspect) the [`LayerMap`] says which
//!    blob it became when this worker pushed it before. A blob the target repository holds is
//!    skipped; one this worker pushed to another repository of the same registry is mounted from
//!    there (the registry checks that our credentials may read it; the layer is this job's own
//!    output, so nothing crosses between teams). Up to [`PARALLEL_CHECKS`] layers are checked at
//!    once. The config is one more blob (its digest is the image id), found the same way.
//! 2. What is left comes from one `docker save` stream (Docker 25+: an OCI layout whose blobs are
//!    named by digest, layers by their diff_id): each needed layer is gzip-compressed as it is read
//!    and uploaded while it is compressed, in [`CHUNK_BYTES`] requests, its diff_id checked at its
//!    end; every other entry is read past. Nothing is written to disk, and memory stays at a few
//!    chunks whatever the layer sizes. A transient failure of a streamed upload (which cannot be
//!    replayed) is retried with another export of the missing layers, up to [`EXPORT_PASSES`].
//! 3. The config (if missing) and an OCI image manifest are pushed; the manifest goes to
//!    `repository@sha256:<digest of its bytes>`, and the map learns the repository.
//!
//! The compression is deterministic (fixed gzip header, same level), so the same layer always
//! becomes the same blob, also after the map is lost.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::str::FromStr;

use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};
use manifold_registry::session::{Mount, RegistryError, Session, backoff};
use manifold_registry::{DockerConfig, RegistryConfig};
use oci_client::{Reference, RegistryOperation};
use oci_spec::image::{Descriptor, ImageManifestBuilder, MediaType};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::docker::{BuiltImage, DockerEngine, DockerError};
use crate::job::LogSink;
use crate::layers::LayerMap;

/// Media type of the manifests the worker pushes.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of the image config blob.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// Media type of the (gzip-compressed) layer blobs.
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Layers whose presence is checked (or which are mounted) at once.
pub const PARALLEL_CHECKS: usize = 4;
/// Compressed bytes per upload request of a streamed layer.
pub const CHUNK_BYTES: usize = 4 << 20;
/// Exports of the image a push may make: the first, and one more per transient upload failure.
pub const EXPORT_PASSES: u32 = 3;
/// Largest image config read into memory.
const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// Where an image goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushTarget {
    /// Repository without tag or digest, e.g. `127.0.0.1:5000/team/app`.
    pub repository: String,
    /// Talk plain HTTP to the registry.
    pub insecure: bool,
    /// Docker config file to read credentials from; `None` pushes anonymously.
    pub docker_config: Option<PathBuf>,
    /// The build team's login for this registry, from the coordinator: used instead of the
    /// Docker config.
    pub login: Option<manifold_registry::RegistryLogin>,
}

/// A manifest that is now in the registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushedImage {
    /// `sha256:<hex>` of the manifest bytes.
    pub digest: String,
    /// Length of the manifest bytes.
    pub size: u64,
    /// The manifest's media type ([`MANIFEST_MEDIA_TYPE`]).
    pub media_type: String,
    /// Attestation manifests pushed beside it (BuildKit's provenance and SBOM), in the order
    /// BuildKit listed them.
    pub attestations: Vec<manifold_registry::manifest::Attestation>,
}

/// Why a push failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The job's repository is not a repository name.
    #[error(
        "bad repository `{repository}`: {reason}; expected e.g. registry.example.com/team/app, without tag or digest"
    )]
    InvalidRepository {
        /// What was given.
        repository: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The daemon could not export the image.
    #[error(transparent)]
    Export(#[from] DockerError),
    /// `docker save` or a pushed document is not what was expected.
    #[error("unexpected image content: {0}")]
    Archive(String),
    /// The registry refused or failed a request (after retries, when it looked transient), or
    /// the credentials could not be read.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The push was cancelled.
    #[error("push cancelled")]
    Cancelled,
}

impl PushError {
    /// Whether trying the job again (maybe elsewhere) could succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            PushError::InvalidRepository { .. } | PushError::Cancelled => false,
            PushError::Registry(e) => e.is_transient(),
            PushError::Export(e) => !e.is_client_error(),
            PushError::Archive(_) => true,
        }
    }
}

/// Checks that `repository` names a repository (no tag, no digest) and returns a reference to it.
pub fn parse_repository(repository: &str) -> Result<Reference, PushError> {
    let bad = |reason: &str| PushError::InvalidRepository {
        repository: repository.to_owned(),
        reason: reason.to_owned(),
    };
    if repository.is_empty() {
        return Err(bad("it is empty"));
    }
    if repository.contains('@') {
        return Err(bad("it has a digest"));
    }
    let last = repository.rsplit('/').next().unwrap_or_default();
    if last.contains(':') {
        return Err(bad("it has a tag"));
    }
    let probe = format!("{repository}@sha256:{}", "0".repeat(64));
    Reference::try_from(probe.as_str()).map_err(|e| bad(&e.to_string()))
}

/// The platform fields of an image config in a registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushedConfig {
    /// Digest of the config blob (the image id).
    pub digest: String,
    /// `os` of the config.
    pub os: String,
    /// `architecture` of the config.
    pub architecture: String,
    /// `variant`, empty when absent.
    pub variant: String,
}

/// A registry session for `target`'s registry with the team's login the coordinator sent, else
/// the worker's credentials, its retries told in the job's output, and the reference of
/// `target`'s repository.
pub(crate) async fn open(
    target: &PushTarget,
    logs: &LogSink,
) -> Result<(Session, Reference), PushError> {
    let repository = parse_repository(&target.repository)?;
    let registry = repository.registry().to_owned();
    let docker = match target.docker_config.clone() {
        Some(path) => tokio::task::spawn_blocking(move || DockerConfig::load_from(&path))
            .await
            .expect("reading the docker config does not panic")
            .map_err(RegistryError::from)?,
        None => DockerConfig::default(),
    };
    let config = RegistryConfig {
        insecure: if target.insecure {
            vec![registry.clone()]
        } else {
            Vec::new()
        },
    };
    let logs = logs.clone();
    let logins: Vec<_> = target.login.iter().cloned().collect();
    let session = Session::open_from(&config, docker, &[&registry], &logins)
        .await?
        .on_retry(move |retry| logs.line(retry.to_string()));
    Ok((session, repository))
}

fn at_digest(repository: &Reference, digest: &str) -> Reference {
    Reference::with_digest(
        repository.registry().to_owned(),
        repository.repository().to_owned(),
        digest.to_owned(),
    )
}

/// Reads back the manifest `pushed` from `target` and its config: the manifest's bytes must hash
/// to the reported digest and size, and the config's platform fields are returned for the
/// platform check, whoever pushed the image (BuildKit or this worker).
pub async fn read_pushed(
    target: &PushTarget,
    pushed: &PushedImage,
    logs: &LogSink,
) -> Result<PushedConfig, PushError> {
    let (session, by_digest, bytes) = read_manifest(target, pushed, logs).await?;
    #[derive(serde::Deserialize)]
    struct Manifest {
        config: Descriptor,
    }
    let parsed: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
        PushError::Archive(format!(
            "the pushed manifest {by_digest} is no image manifest: {e}"
        ))
    })?;
    let config_digest = parsed.config.digest().to_string();
    let config = session
        .pull_small_blob(
            &by_digest,
            &config_digest,
            &format!("reading the config {config_digest}"),
        )
        .await?;
    platform_of(&config, &config_digest)
}

/// The bytes of the manifest (or index) `pushed` in `target`, checked to hash to its digest and
/// to have its size; with the session and the reference by digest they were read through.
pub(crate) async fn read_manifest(
    target: &PushTarget,
    pushed: &PushedImage,
    logs: &LogSink,
) -> Result<(Session, Reference, Vec<u8>), PushError> {
    let (session, repository) = open(target, logs).await?;
    let by_digest = at_digest(&repository, &pushed.digest);
    let manifest = session
        .pull_manifest(&by_digest, &format!("reading the manifest {by_digest}"))
        .await?
        .ok_or_else(|| {
            PushError::Archive(format!(
                "the manifest {by_digest} was reported pushed but the registry does not have it"
            ))
        })?;
    let actual = sha256_digest(&manifest.bytes);
    if actual != pushed.digest || manifest.bytes.len() as u64 != pushed.size {
        return Err(PushError::Archive(format!(
            "the registry holds {} bytes with digest {actual} under {by_digest}, but {} bytes were reported",
            manifest.bytes.len(),
            pushed.size
        )));
    }
    Ok((session, by_digest, manifest.bytes))
}

fn platform_of(config: &[u8], digest: &str) -> Result<PushedConfig, PushError> {
    #[derive(serde::Deserialize)]
    struct Config {
        #[serde(default)]
        os: String,
        #[serde(default)]
        architecture: String,
        #[serde(default)]
        variant: String,
    }
    let fields: Config = serde_json::from_slice(config).map_err(|e| {
        PushError::Archive(format!("the image config {digest} is not understood: {e}"))
    })?;
    Ok(PushedConfig {
        digest: digest.to_owned(),
        os: fields.os,
        architecture: fields.architecture,
        variant: fields.variant,
    })
}

/// A compressed layer blob in the target repository.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Blob {
    digest: String,
    size: u64,
}

/// Pushes `image` (in `engine`, by its id and diff_ids) to `target` by digest: see the module
/// doc. `layers` is the worker's map of pushed layers, read and updated.
pub async fn push_image(
    engine: &DockerEngine,
    image: &BuiltImage,
    target: &PushTarget,
    layers: &LayerMap,
    logs: &LogSink,
    cancel: &CancellationToken,
) -> Result<PushedImage, PushError> {
    tokio::select! {
        () = cancel.cancelled() => Err(PushError::Cancelled),
        pushed = push(engine, image, target, layers, logs) => pushed,
    }
}

async fn push(
    engine: &DockerEngine,
    image: &BuiltImage,
    target: &PushTarget,
    layers: &LayerMap,
    logs: &LogSink,
) -> Result<PushedImage, PushError> {
    let (session, repository) = open(target, logs).await?;
    session
        .authenticate(
            &repository,
            RegistryOperation::Push,
            &format!("authenticating to push to {}", target.repository),
        )
        .await?;
    let mut distinct: Vec<&str> = Vec::new();
    for d in &image.diff_ids {
        if !distinct.contains(&d.as_str()) {
            distinct.push(d);
        }
    }

    // 1. What the repository holds already, or can mount; and the config if it is there.
    // Built into a Vec first: a stream over a borrowing closure would make the job's future
    // lose `Send` (a higher-ranked lifetime rustc cannot prove).
    let mut lookups = Vec::with_capacity(distinct.len());
    for diff_id in distinct.iter().map(|d| d.to_string()) {
        let (session, repository) = (&session, &repository);
        lookups.push(async move {
            let found = reuse(session, repository, layers, &diff_id, "layer", logs).await?;
            Ok::<_, PushError>((diff_id, found))
        });
    }
    let checks = futures::stream::iter(lookups)
        .buffer_unordered(PARALLEL_CHECKS)
        .try_collect::<Vec<_>>();
    let config_check = async {
        if let Some((blob, _)) =
            reuse(&session, &repository, layers, &image.id, "config", logs).await?
        {
            return Ok::<_, PushError>(Some(blob.size));
        }
        if session.blob_exists(&repository, &image.id).await? {
            let bytes = session
                .pull_small_blob(
                    &repository,
                    &image.id,
                    &format!("reading the config {}", image.id),
                )
                .await?;
            return Ok(Some(bytes.len() as u64));
        }
        Ok(None)
    };
    let (checked, config_size) = tokio::try_join!(checks, config_check)?;
    let mut blobs: HashMap<String, Blob> = HashMap::new();
    let (mut present, mut mounted) = (0, 0);
    for (diff_id, found) in checked {
        match found {
            Some((blob, Reuse::Present)) => {
                present += 1;
                blobs.insert(diff_id, blob);
            }
            Some((blob, Reuse::Mounted)) => {
                mounted += 1;
                blobs.insert(diff_id, blob);
            }
            None => {}
        }
    }
    let missing: HashSet<String> = distinct
        .iter()
        .filter(|d| !blobs.contains_key(**d))
        .map(|d| d.to_string())
        .collect();
    logs.line(format!(
        "pushing {} layer(s) to {} by digest: {present} already there, {mounted} mounted, {} to upload",
        distinct.len(),
        target.repository,
        missing.len()
    ));

    // 2. The rest from the daemon's export, streamed.
    let mut missing = missing;
    let mut config: Option<Bytes> = None;
    let mut pass = 0;
    while !missing.is_empty() || (config_size.is_none() && config.is_none()) {
        pass += 1;
        let exported = export_pass(
            engine,
            &image.id,
            &missing,
            config_size.is_none() && config.is_none(),
            &session,
            &repository,
            logs,
        )
        .await?;
        if config.is_none() {
            config = exported.config;
        }
        let mut transient = None;
        for (diff_id, result) in exported.uploads {
            match result {
                Ok(blob) => {
                    missing.remove(&diff_id);
                    blobs.insert(diff_id, blob);
                }
                Err(e) if e.is_transient() && pass < EXPORT_PASSES => transient = Some(e),
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(e) = transient {
            let wait = backoff(pass);
            logs.line(format!(
                "{e}; exporting the image again for {} layer(s) in {:.1}s (pass {} of {EXPORT_PASSES})",
                missing.len(),
                wait.as_secs_f64(),
                pass + 1
            ));
            tokio::time::sleep(wait).await;
            continue;
        }
        if let Some(diff_id) = missing.iter().next() {
            return Err(PushError::Archive(format!(
                "the export of image {} has no layer {diff_id}, which its config lists",
                image.id
            )));
        }
        if config_size.is_none() && config.is_none() {
            return Err(PushError::Archive(format!(
                "the export of image {} has no config blob named after it",
                image.id
            )));
        }
    }

    // 3. Config, manifest; the map learns where each blob now is.
    let config_size = match (config_size, config) {
        (Some(size), _) => size,
        (None, Some(config)) => {
            session
                .push_blob(
                    &repository,
                    config.clone(),
                    &image.id,
                    "uploading the image config",
                )
                .await?;
            config.len() as u64
        }
        (None, None) => unreachable!("the loop ends only with the config"),
    };
    let ordered = image
        .diff_ids
        .iter()
        .map(|d| blobs.get(d).cloned().expect("every layer has a blob now"))
        .collect::<Vec<_>>();
    let manifest = Bytes::from(manifest_bytes(&image.id, config_size, &ordered)?);
    let digest = sha256_digest(&manifest);
    let by_digest = at_digest(&repository, &digest);
    session
        .push_manifest(
            &by_digest,
            &manifest,
            MANIFEST_MEDIA_TYPE,
            "pushing the manifest",
        )
        .await?;
    logs.line(format!("pushed manifest {by_digest}"));
    for (diff_id, blob) in &blobs {
        layers.record(diff_id, &blob.digest, blob.size, &target.repository);
    }
    layers.record(&image.id, &image.id, config_size, &target.repository);
    Ok(PushedImage {
        digest,
        size: manifest.len() as u64,
        media_type: MANIFEST_MEDIA_TYPE.to_owned(),
        attestations: Vec::new(),
    })
}

#[derive(Debug, PartialEq, Eq)]
enum Reuse {
    Present,
    Mounted,
}

/// The blob of `diff_id` (a layer's, or the config's own digest) if the map knows it and the
/// repository has it or mounted it; `what` names it in the job's output.
async fn reuse(
    session: &Session,
    repository: &Reference,
    layers: &LayerMap,
    diff_id: &str,
    what: &str,
    logs: &LogSink,
) -> Result<Option<(Blob, Reuse)>, PushError> {
    let Some(known) = layers.get(diff_id) else {
        return Ok(None);
    };
    let blob = Blob {
        digest: known.digest.clone(),
        size: known.size,
    };
    if session.blob_exists(repository, &blob.digest).await? {
        logs.line(format!(
            "{what} {} already in the registry",
            short(&blob.digest)
        ));
        return Ok(Some((blob, Reuse::Present)));
    }
    let own = format!("{}/{}", repository.registry(), repository.repository());
    let sources = known.repositories.iter().filter_map(|r| {
        let (registry, name) = r.split_once('/')?;
        (registry == repository.registry() && *r != own)
            .then(|| Reference::with_tag(registry.to_owned(), name.to_owned(), "latest".to_owned()))
    });
    for source in sources.take(3) {
        match session
            .mount_blob(repository, &source, &blob.digest)
            .await?
        {
            Mount::Mounted => {
                logs.line(format!(
                    "{what} {} mounted from {}",
                    short(&blob.digest),
                    source.repository()
                ));
                return Ok(Some((blob, Reuse::Mounted)));
            }
            Mount::Refused(why) => logs.line(format!(
                "{what} {} not mounted from {} ({why}); it is uploaded instead",
                short(&blob.digest),
                source.repository()
            )),
        }
    }
    Ok(None)
}

/// What one pass over the export gave.
struct Exported {
    /// The config, if it was wanted.
    config: Option<Bytes>,
    /// Each wanted layer met in the export, and how its upload went.
    uploads: Vec<(String, Result<Blob, RegistryError>)>,
}

/// What the export reader hands to the uploader.
enum Found {
    Config(Vec<u8>),
    Layer {
        diff_id: String,
        chunks: mpsc::Receiver<std::io::Result<Bytes>>,
    },
}

/// One `docker save` of `image_id`, read as a stream: the `wanted` layers are compressed and
/// uploaded on the way (the next while the last finishes), the config kept if `want_config`.
async fn export_pass(
    engine: &DockerEngine,
    image_id: &str,
    wanted: &HashSet<String>,
    want_config: bool,
    session: &Session,
    repository: &Reference,
    logs: &LogSink,
) -> Result<Exported, PushError> {
    // The export error, if the stream fails, is kept aside: the tar reader only sees an I/O error.
    let export_error = std::sync::Arc::new(std::sync::Mutex::new(None::<DockerError>));
    let slot = export_error.clone();
    let bytes = Box::pin(engine.export(image_id)).map_err(move |e| {
        let message = e.to_string();
        *slot.lock().expect("export error lock") = Some(e);
        std::io::Error::other(message)
    });
    let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(bytes));
    let (found_tx, mut found_rx) = mpsc::channel::<Found>(1);
    let image_id_owned = image_id.to_owned();
    let wanted_owned = wanted.clone();
    let reader_task = tokio::task::spawn_blocking(move || {
        read_export(
            reader,
            &image_id_owned,
            &wanted_owned,
            want_config,
            &found_tx,
        )
    });

    let mut config = None;
    let mut uploads = Vec::new();
    let mut running = futures::stream::FuturesUnordered::new();
    let mut reading = true;
    while reading || !running.is_empty() {
        tokio::select! {
            found = found_rx.recv(), if reading => match found {
                Some(Found::Config(bytes)) => config = Some(Bytes::from(bytes)),
                Some(Found::Layer { diff_id, chunks }) => {
                    running.push(async move {
                        let started = std::time::Instant::now();
                        let stream = tokio_stream::wrappers::ReceiverStream::new(chunks);
                        let result = session
                            .push_blob_streamed(
                                repository,
                                stream,
                                &format!("uploading layer {diff_id}"),
                            )
                            .await
                            .map(|(digest, size)| Blob { digest, size });
                        (diff_id, result, started.elapsed())
                    });
                }
                None => reading = false,
            },
            Some((diff_id, result, took)) = running.next(), if !running.is_empty() => {
                if let Ok(blob) = &result {
                    logs.line(format!(
                        "pushed layer {} ({}) in {:.1}s",
                        short(&blob.digest),
                        human_size(blob.size),
                        took.as_secs_f64()
                    ));
                }
                uploads.push((diff_id, result));
            }
        }
    }
    let read = reader_task
        .await
        .map_err(|e| PushError::Archive(format!("the export task failed: {e}")))?;
    let exported = export_error.lock().expect("export error lock").take();
    match (read, exported) {
        (Err(_), Some(export)) => Err(PushError::Export(export)),
        (Err(e), None) => Err(e),
        (Ok(()), _) => Ok(Exported { config, uploads }),
    }
}

/// Reads a `docker save` tar (blocking): hands the config and each wanted layer (as compressed
/// chunks) to `found`, and reads past everything else.
fn read_export(
    reader: impl Read,
    image_id: &str,
    wanted: &HashSet<String>,
    want_config: bool,
    found: &mpsc::Sender<Found>,
) -> Result<(), PushError> {
    let archive_error = |e: std::io::Error| {
        PushError::Archive(format!("cannot read the exported image {image_id}: {e}"))
    };
    let mut archive = tar::Archive::new(reader);
    let mut seen_layers: HashSet<String> = HashSet::new();
    for entry in archive.entries().map_err(archive_error)? {
        let mut entry = entry.map_err(archive_error)?;
        let path = entry.path().map_err(archive_error)?.into_owned();
        let Some(hex) = path.to_str().and_then(|p| p.strip_prefix("blobs/sha256/")) else {
            continue;
        };
        let digest = format!("sha256:{hex}");
        if digest == image_id && want_config {
            if entry.size() > MAX_CONFIG_BYTES {
                return Err(PushError::Archive(format!(
                    "the config of image {image_id} is {} bytes, more than {MAX_CONFIG_BYTES}",
                    entry.size()
                )));
            }
            let mut bytes = Vec::with_capacity(entry.size() as usize);
            entry.read_to_end(&mut bytes).map_err(archive_error)?;
            if sha256_digest(&bytes) != image_id {
                return Err(PushError::Archive(format!(
                    "the exported config of image {image_id} hashes to {}",
                    sha256_digest(&bytes)
                )));
            }
            let _ = found.blocking_send(Found::Config(bytes));
        } else if wanted.contains(&digest) && seen_layers.insert(digest.clone()) {
            let (tx, rx) = mpsc::channel(2);
            if found
                .blocking_send(Found::Layer {
                    diff_id: digest.clone(),
                    chunks: rx,
                })
                .is_err()
            {
                return Ok(());
            }
            compress_entry(&mut entry, &digest, tx)?;
        }
    }
    Ok(())
}

/// Gzip-compresses one layer entry into `chunks` of about [`CHUNK_BYTES`], checking that its
/// uncompressed bytes hash to `diff_id`. A mismatch ends the chunks with an error, so the upload
/// is never committed. If the uploader went away (its upload failed), the rest is read past.
fn compress_entry(
    entry: &mut impl Read,
    diff_id: &str,
    chunks: mpsc::Sender<std::io::Result<Bytes>>,
) -> Result<(), PushError> {
    let sink = ChunkSender {
        buf: Vec::with_capacity(CHUNK_BYTES),
        tx: chunks.clone(),
        gone: false,
    };
    // A fixed header (no name, mtime 0) and level make the same layer compress to the same blob
    // every time, so a rebuild finds its layers already in the registry.
    let mut encoder = flate2::GzBuilder::new().write(sink, flate2::Compression::fast());
    let mut uncompressed = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = entry.read(&mut buf).map_err(|e| {
            PushError::Archive(format!("cannot read layer {diff_id} of the export: {e}"))
        })?;
        if n == 0 {
            break;
        }
        uncompressed.update(&buf[..n]);
        // Writes fail only once the uploader is gone; the entry is then just read to its end.
        let _ = encoder.write_all(&buf[..n]);
    }
    let actual = format!("sha256:{}", hex::encode(uncompressed.finalize()));
    if actual != diff_id {
        let _ = chunks.blocking_send(Err(std::io::Error::other(format!(
            "layer hashes to {actual}, not {diff_id}"
        ))));
        return Err(PushError::Archive(format!(
            "layer {diff_id} of the export hashes to {actual}: the daemon's export does not match the image"
        )));
    }
    if let Ok(mut sink) = encoder.finish() {
        let _ = sink.flush_chunk();
    }
    Ok(())
}

/// Collects compressed bytes into chunks and sends each full one (blocking) to the uploader.
struct ChunkSender {
    buf: Vec<u8>,
    tx: mpsc::Sender<std::io::Result<Bytes>>,
    gone: bool,
}

impl ChunkSender {
    fn flush_chunk(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(CHUNK_BYTES),
        ));
        if self.gone || self.tx.blocking_send(Ok(chunk)).is_err() {
            self.gone = true;
            return Err(std::io::Error::other("the upload ended"));
        }
        Ok(())
    }
}

impl Write for ChunkSender {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.gone {
            return Err(std::io::Error::other("the upload ended"));
        }
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK_BYTES {
            self.flush_chunk()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The manifest bytes for a config and its layers.
fn manifest_bytes(
    config_digest: &str,
    config_size: u64,
    layers: &[Blob],
) -> Result<Vec<u8>, PushError> {
    let descriptor = |media_type: MediaType, size: u64, digest: &str| {
        oci_spec::image::Digest::from_str(digest)
            .map(|d| Descriptor::new(media_type, size, d))
            .map_err(|e| PushError::Archive(format!("bad digest {digest}: {e}")))
    };
    let config = descriptor(MediaType::ImageConfig, config_size, config_digest)?;
    let layers = layers
        .iter()
        .map(|l| descriptor(MediaType::ImageLayerGzip, l.size, &l.digest))
        .collect::<Result<Vec<_>, _>>()?;
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(config)
        .layers(layers)
        .build()
        .map_err(|e| PushError::Archive(format!("cannot build the manifest: {e}")))?;
    serde_json::to_vec(&manifest)
        .map_err(|e| PushError::Archive(format!("cannot serialise the manifest: {e}")))
}

fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "kB", "MB", "GB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_have_no_tag_or_digest() {
        let r = parse_repository("127.0.0.1:5000/team/app").unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "team/app");
        for (bad, why) in [
            ("", "empty"),
            ("127.0.0.1:5000/app:1.0", "tag"),
            ("reg.example.com/app@sha256:abc", "digest"),
            ("127.0.0.1:5000/UPPER", "invalid"),
        ] {
            let err = parse_repository(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("`{bad}`")), "{err}");
            assert!(err.to_lowercase().contains(why), "{bad}: {err}");
        }
    }

    /// Compresses `data` as a layer entry through a chunk channel; returns the chunks' bytes.
    fn compress(
        data: &[u8],
        diff_id: &str,
    ) -> (Result<(), PushError>, Vec<std::io::Result<Bytes>>) {
        let (tx, mut rx) = mpsc::channel(1024);
        let result = compress_entry(&mut &data[..], diff_id, tx);
        let mut chunks = Vec::new();
        while let Ok(c) = rx.try_recv() {
            chunks.push(c);
        }
        (result, chunks)
    }

    #[test]
    fn a_layer_compresses_to_the_same_blob_every_time_and_back_to_its_bytes() {
        // Incompressible enough to need several chunks.
        let mut data = Vec::new();
        let mut x: u64 = 7;
        while data.len() < 3 * CHUNK_BYTES {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            data.extend_from_slice(&x.to_le_bytes());
        }
        let diff_id = sha256_digest(&data);
        let (ok, first) = compress(&data, &diff_id);
        ok.unwrap();
        let (_, second) = compress(&data, &diff_id);
        let join = |chunks: Vec<std::io::Result<Bytes>>| -> Vec<u8> {
            chunks
                .into_iter()
                .flat_map(|c| c.unwrap().to_vec())
                .collect()
        };
        let (a, b) = (join(first), join(second));
        assert!(a.len() > 2 * CHUNK_BYTES, "several chunks: {}", a.len());
        assert_eq!(sha256_digest(&a), sha256_digest(&b), "deterministic");
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&a[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn a_layer_that_is_not_its_diff_id_never_completes_an_upload() {
        let data = b"layer bytes".repeat(100);
        let wrong = sha256_digest(b"something else");
        let (result, chunks) = compress(&data, &wrong);
        let err = result.unwrap_err().to_string();
        assert!(
            err.contains(&wrong) && err.contains(&sha256_digest(&data)),
            "{err}"
        );
        assert!(
            chunks.last().is_some_and(|c| c.is_err()),
            "the upload stream ends with an error, so the blob is never committed"
        );
    }

    #[test]
    fn an_upload_that_went_away_lets_the_export_go_on() {
        let data = vec![1u8; 2 * CHUNK_BYTES];
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        compress_entry(&mut &data[..], &sha256_digest(&data), tx).unwrap();
    }

    #[test]
    fn the_manifest_lists_layers_in_order() {
        let blob = |c: char, size| Blob {
            digest: format!("sha256:{}", c.to_string().repeat(64)),
            size,
        };
        let bytes = manifest_bytes(&blob('c', 0).digest, 5, &[blob('a', 1), blob('b', 2)]).unwrap();
        let m: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(m["mediaType"], MANIFEST_MEDIA_TYPE);
        assert_eq!(m["config"]["mediaType"], CONFIG_MEDIA_TYPE);
        assert_eq!(m["config"]["size"], 5);
        let layers = m["layers"].as_array().unwrap();
        assert_eq!(layers[0]["digest"], blob('a', 1).digest);
        assert_eq!(layers[1]["size"], 2);
        assert!(layers.iter().all(|l| l["mediaType"] == LAYER_MEDIA_TYPE));
    }
}
