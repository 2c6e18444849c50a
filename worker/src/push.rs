//! Pushing a built image to a registry BY DIGEST ONLY (no tag), with oci-client.
//!
//! The daemon's `docker save` tar is unpacked into a scratch folder; each layer tar is gzip-compressed
//! (fast level) to a file while both its digests are computed (a layer the daemon exported already
//! gzipped is used as is), and checked against the config's `rootfs.diff_ids` (the sha256 of the
//! uncompressed tars). Blobs the registry lacks are uploaded
//! from those files as streams, one at a time, so memory stays flat whatever the layer sizes. Then an
//! OCI image manifest is pushed to `repository@sha256:<digest of the manifest bytes>`.
//!
//! Registry calls are retried on 5xx, 429, timeouts and connection errors with a bounded
//! exponential backoff (about 15 s in all, so a registry restarting or briefly overloaded does not
//! fail the job); every retry is a line of the job's output.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, TryStreamExt};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use oci_spec::image::{Descriptor, ImageManifestBuilder, MediaType};
use sha2::{Digest as _, Sha256};
use tokio_util::sync::CancellationToken;

use crate::docker::DockerError;
use crate::job::LogSink;
use manifold_registry::auth::{AuthError, DockerConfig};

/// Media type of the manifests the worker pushes.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of the image config blob.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// Media type of the (gzip-compressed) layer blobs.
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// How many times one registry request is tried before the push fails: with
/// [`REGISTRY_FIRST_DELAY`] doubling, the waits add up to about 15 s.
const REGISTRY_ATTEMPTS: u32 = 6;
/// First delay between two tries; it doubles after each.
const REGISTRY_FIRST_DELAY: Duration = Duration::from_millis(500);

/// Where an image goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushTarget {
    /// Repository without tag or digest, e.g. `127.0.0.1:5000/team/app`.
    pub repository: String,
    /// Talk plain HTTP to the registry.
    pub insecure: bool,
    /// Docker config file to read credentials from; `None` pushes anonymously.
    pub docker_config: Option<PathBuf>,
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
    /// `docker save` produced something unexpected.
    #[error("unexpected `docker save` output: {0}")]
    Archive(String),
    /// The scratch folder could not be used.
    #[error(
        "cannot use the scratch folder {path}: {source}; check free space under the --cache-dir folder"
    )]
    Scratch {
        /// The file or folder concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Registry credentials could not be read.
    #[error(transparent)]
    Credentials(#[from] AuthError),
    /// The registry refused or failed a request (after retries, when it looked transient).
    #[error(
        "registry {registry}: {action} failed{}: {}",
        if *attempts > 1 { format!(" after {attempts} attempts") } else { String::new() },
        crate::error_chain(source)
    )]
    Registry {
        /// The registry host.
        registry: String,
        /// What was being done.
        action: String,
        /// How many attempts were made.
        attempts: u32,
        /// Whether the last error looked transient (5xx, connection).
        transient: bool,
        /// oci-client's error.
        #[source]
        source: OciDistributionError,
    },
    /// The push was cancelled.
    #[error("push cancelled")]
    Cancelled,
}

impl PushError {
    /// Whether trying the job again (maybe elsewhere) could succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            PushError::InvalidRepository { .. } | PushError::Credentials(_) => false,
            PushError::Registry { transient, .. } => *transient,
            PushError::Export(e) => !e.is_client_error(),
            PushError::Archive(_) | PushError::Scratch { .. } => true,
            PushError::Cancelled => false,
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

/// Pushes the image exported by `export` (a `docker save` tar stream) to `target` by digest,
/// using `scratch` for temporary files.
pub async fn push_image(
    export: impl Stream<Item = Result<Bytes, DockerError>> + Send + 'static,
    target: &PushTarget,
    scratch: &Path,
    logs: &LogSink,
    cancel: &CancellationToken,
) -> Result<PushedImage, PushError> {
    let registry_client = Registry::for_target(target, logs)?;

    tokio::fs::create_dir_all(scratch)
        .await
        .map_err(|source| PushError::Scratch {
            path: scratch.to_owned(),
            source,
        })?;
    let work = tempfile::Builder::new()
        .prefix("push-")
        .tempdir_in(scratch)
        .map_err(|source| PushError::Scratch {
            path: scratch.to_owned(),
            source,
        })?;

    let image = tokio::select! {
        () = cancel.cancelled() => return Err(PushError::Cancelled),
        image = unpack_and_compress(export, work.path().to_owned()) => image?,
    };
    let layer_bytes: u64 = image.layers.iter().map(|l| l.size).sum();
    logs.line(format!(
        "pushing {} layer(s), {} compressed, to {} by digest",
        image.layers.len(),
        human_size(layer_bytes),
        target.repository
    ));

    let pushed = tokio::select! {
        () = cancel.cancelled() => return Err(PushError::Cancelled),
        pushed = registry_client.push(&image, logs) => pushed?,
    };
    drop(work);
    Ok(pushed)
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

/// Reads back the manifest `pushed` from `target` and its config: the manifest's bytes must hash
/// to the reported digest and size, and the config's platform fields are returned for the
/// platform check. This is how an image BuildKit pushed itself is checked.
pub async fn read_pushed(
    target: &PushTarget,
    pushed: &PushedImage,
    logs: &LogSink,
) -> Result<PushedConfig, PushError> {
    Registry::for_target(target, logs)?
        .read_config(pushed)
        .await
}

/// A layer ready to upload.
#[derive(Debug)]
struct PreparedLayer {
    gz_path: PathBuf,
    digest: String,
    size: u64,
}

/// An image ready to upload.
#[derive(Debug)]
struct PreparedImage {
    config: Bytes,
    config_digest: String,
    layers: Vec<PreparedLayer>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SaveManifestEntry {
    config: String,
    layers: Vec<String>,
}

async fn unpack_and_compress(
    export: impl Stream<Item = Result<Bytes, DockerError>> + Send + 'static,
    work: PathBuf,
) -> Result<PreparedImage, PushError> {
    // The export error, if the stream fails, is kept aside: the tar reader only sees an I/O error.
    let export_error = std::sync::Arc::new(std::sync::Mutex::new(None::<DockerError>));
    let slot = export_error.clone();
    let bytes = Box::pin(export).map_err(move |e| {
        let message = e.to_string();
        *slot.lock().expect("export error lock") = Some(e);
        std::io::Error::other(message)
    });
    let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(bytes));
    let result = tokio::task::spawn_blocking(move || prepare(reader, &work))
        .await
        .map_err(|e| PushError::Archive(format!("the export task failed: {e}")))?;
    match (
        result,
        export_error.lock().expect("export error lock").take(),
    ) {
        (Err(_), Some(export)) => Err(PushError::Export(export)),
        (result, _) => result,
    }
}

/// Unpacks a `docker save` tar into `work`, then compresses each layer. Blocking.
fn prepare(reader: impl Read, work: &Path) -> Result<PreparedImage, PushError> {
    let scratch = |path: &Path| {
        let path = path.to_owned();
        move |source| PushError::Scratch { path, source }
    };
    let unpacked = work.join("image");
    std::fs::create_dir_all(&unpacked).map_err(scratch(&unpacked))?;
    let mut archive = tar::Archive::new(reader);
    archive
        .unpack(&unpacked)
        .map_err(|e| PushError::Archive(format!("cannot unpack the exported image: {e}")))?;

    let manifest_path = unpacked.join("manifest.json");
    let manifest = std::fs::read(&manifest_path)
        .map_err(|e| PushError::Archive(format!("no manifest.json in the export: {e}")))?;
    let mut entries: Vec<SaveManifestEntry> = serde_json::from_slice(&manifest)
        .map_err(|e| PushError::Archive(format!("manifest.json is not understood: {e}")))?;
    if entries.len() != 1 {
        return Err(PushError::Archive(format!(
            "manifest.json describes {} images, expected exactly one",
            entries.len()
        )));
    }
    let entry = entries.remove(0);

    let config = std::fs::read(inside(&unpacked, &entry.config)?)
        .map_err(|e| PushError::Archive(format!("cannot read the config {}: {e}", entry.config)))?;
    let config_digest = sha256_digest(&config);
    let diff_ids = diff_ids(&config)?;
    if diff_ids.len() != entry.layers.len() {
        return Err(PushError::Archive(format!(
            "the config lists {} layer diff_ids but the export has {} layers",
            diff_ids.len(),
            entry.layers.len()
        )));
    }

    let mut done: HashMap<String, usize> = HashMap::new();
    let mut layers: Vec<PreparedLayer> = Vec::with_capacity(entry.layers.len());
    for (index, (layer, diff_id)) in entry.layers.iter().zip(&diff_ids).enumerate() {
        // The same layer twice in one image (e.g. two identical COPY steps) is compressed once.
        if let Some(&earlier) = done.get(diff_id) {
            let e = &layers[earlier];
            layers.push(PreparedLayer {
                gz_path: e.gz_path.clone(),
                digest: e.digest.clone(),
                size: e.size,
            });
            continue;
        }
        let source = inside(&unpacked, layer)?;
        let (uncompressed, gz_path, digest, size) = match layer_compression(&source)? {
            // Daemons with the containerd image store export their stored, already gzipped blobs.
            Compression::Gzip => {
                let (uncompressed, digest, size) = hash_gzipped(&source)?;
                (uncompressed, source.clone(), digest, size)
            }
            Compression::None => {
                let gz_path = work.join(format!("layer-{index}.tar.gz"));
                let (uncompressed, digest, size) = compress(&source, &gz_path)?;
                // The uncompressed copy is no longer needed; free the space early.
                let _ = std::fs::remove_file(&source);
                (uncompressed, gz_path, digest, size)
            }
        };
        if &uncompressed != diff_id {
            return Err(PushError::Archive(format!(
                "layer {layer} hashes to {uncompressed} but the config says {diff_id}"
            )));
        }
        done.insert(diff_id.clone(), layers.len());
        layers.push(PreparedLayer {
            gz_path,
            digest,
            size,
        });
    }
    Ok(PreparedImage {
        config: Bytes::from(config),
        config_digest,
        layers,
    })
}

/// `relative` joined to `root`, refusing paths that climb out of it.
fn inside(root: &Path, relative: &str) -> Result<PathBuf, PushError> {
    let rel = Path::new(relative);
    if rel.is_absolute()
        || rel
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(PushError::Archive(format!(
            "manifest.json names a path outside the export: {relative}"
        )));
    }
    Ok(root.join(rel))
}

fn diff_ids(config: &[u8]) -> Result<Vec<String>, PushError> {
    #[derive(serde::Deserialize)]
    struct Config {
        rootfs: RootFs,
    }
    #[derive(serde::Deserialize)]
    struct RootFs {
        diff_ids: Vec<String>,
    }
    let config: Config = serde_json::from_slice(config)
        .map_err(|e| PushError::Archive(format!("the image config is not understood: {e}")))?;
    Ok(config.rootfs.diff_ids)
}

#[derive(Debug, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
}

/// How a layer file of the export is compressed, from its first bytes.
fn layer_compression(path: &Path) -> Result<Compression, PushError> {
    let mut magic = [0u8; 4];
    let mut file = std::fs::File::open(path)
        .map_err(|e| PushError::Archive(format!("cannot open layer {}: {e}", path.display())))?;
    let mut read = 0;
    while read < magic.len() {
        match file.read(&mut magic[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) => {
                return Err(PushError::Archive(format!(
                    "cannot read layer {}: {e}",
                    path.display()
                )));
            }
        }
    }
    match &magic[..read] {
        [0x1f, 0x8b, ..] => Ok(Compression::Gzip),
        [0x28, 0xb5, 0x2f, 0xfd] => Err(PushError::Archive(format!(
            "layer {} is zstd-compressed, which the worker cannot push yet; use a daemon without the containerd image store",
            path.display()
        ))),
        _ => Ok(Compression::None),
    }
}

/// For an already gzipped layer: (digest of the uncompressed bytes, digest of the file, its size).
fn hash_gzipped(path: &Path) -> Result<(String, String, u64), PushError> {
    let read_error = |e: std::io::Error| {
        PushError::Archive(format!("cannot read layer {}: {e}", path.display()))
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut compressed = HashingReader {
        inner: std::io::BufReader::with_capacity(1 << 20, file),
        hasher: Sha256::new(),
        read: 0,
    };
    let mut uncompressed = HashingWriter {
        inner: std::io::sink(),
        hasher: Sha256::new(),
        written: 0,
    };
    let mut decoder = flate2::read::MultiGzDecoder::new(&mut compressed);
    std::io::copy(&mut decoder, &mut uncompressed).map_err(read_error)?;
    drop(decoder);
    // Whatever follows the gzip members is part of the blob too.
    std::io::copy(&mut compressed, &mut std::io::sink()).map_err(read_error)?;
    Ok((
        format!("sha256:{}", hex::encode(uncompressed.hasher.finalize())),
        format!("sha256:{}", hex::encode(compressed.hasher.finalize())),
        compressed.read,
    ))
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    read: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

/// Gzip-compresses `source` into `dest`; returns (digest of the uncompressed bytes, digest of the
/// compressed bytes, compressed size).
fn compress(source: &Path, dest: &Path) -> Result<(String, String, u64), PushError> {
    let mut input = std::fs::File::open(source)
        .map_err(|e| PushError::Archive(format!("cannot open layer {}: {e}", source.display())))?;
    let scratch = |source| PushError::Scratch {
        path: dest.to_owned(),
        source,
    };
    let output = std::fs::File::create(dest).map_err(scratch)?;
    let hashing = HashingWriter {
        inner: std::io::BufWriter::with_capacity(1 << 20, output),
        hasher: Sha256::new(),
        written: 0,
    };
    // A fixed header (no name, mtime 0) makes the same layer compress to the same blob every time,
    // so a rebuild finds its layers already in the registry.
    let mut encoder = flate2::GzBuilder::new().write(hashing, flate2::Compression::fast());
    let mut uncompressed = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = input.read(&mut buf).map_err(|e| {
            PushError::Archive(format!("cannot read layer {}: {e}", source.display()))
        })?;
        if n == 0 {
            break;
        }
        uncompressed.update(&buf[..n]);
        encoder.write_all(&buf[..n]).map_err(scratch)?;
    }
    let mut hashing = encoder.finish().map_err(scratch)?;
    hashing.inner.flush().map_err(scratch)?;
    Ok((
        format!("sha256:{}", hex::encode(uncompressed.finalize())),
        format!("sha256:{}", hex::encode(hashing.hasher.finalize())),
        hashing.written,
    ))
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The manifest bytes for a config and its layers.
fn manifest_bytes(image: &PreparedImage) -> Result<Vec<u8>, PushError> {
    let descriptor = |media_type: MediaType, size: u64, digest: &str| {
        oci_spec::image::Digest::from_str(digest)
            .map(|d| Descriptor::new(media_type, size, d))
            .map_err(|e| PushError::Archive(format!("bad digest {digest}: {e}")))
    };
    let config = descriptor(
        MediaType::ImageConfig,
        image.config.len() as u64,
        &image.config_digest,
    )?;
    let layers = image
        .layers
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

/// One repository of one registry, with the client and credentials to reach it.
struct Registry {
    client: Client,
    reference: Reference,
    registry: String,
    auth: RegistryAuth,
    /// The job's output, where retries are told.
    logs: LogSink,
}

impl Registry {
    /// The client for `target`'s repository, with the credentials of the worker's Docker config
    /// (`auths`, `credsStore` and `credHelpers`, as the docker CLI reads them).
    fn for_target(target: &PushTarget, logs: &LogSink) -> Result<Self, PushError> {
        let reference = parse_repository(&target.repository)?;
        let registry = reference.registry().to_owned();
        let auth = match target.docker_config.as_deref() {
            Some(path) => DockerConfig::load_from(path)?.credentials(&registry)?.auth,
            None => RegistryAuth::Anonymous,
        };
        Ok(Self::new(
            reference,
            registry,
            auth,
            target.insecure,
            logs.clone(),
        ))
    }

    fn new(
        reference: Reference,
        registry: String,
        auth: RegistryAuth,
        insecure: bool,
        logs: LogSink,
    ) -> Self {
        let client = Client::new(ClientConfig {
            protocol: if insecure {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            // One PUT per blob, its body streamed from the compressed file.
            use_monolithic_push: true,
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(Duration::from_secs(300)),
            ..ClientConfig::default()
        });
        Self {
            client,
            reference,
            registry,
            auth,
            logs,
        }
    }

    async fn push(&self, image: &PreparedImage, logs: &LogSink) -> Result<PushedImage, PushError> {
        self.retry("authenticate", || async {
            self.client
                .auth(&self.reference, &self.auth, RegistryOperation::Push)
                .await
                .map(|_| ())
        })
        .await?;

        let mut pushed: Vec<&str> = Vec::new();
        for layer in &image.layers {
            if pushed.contains(&layer.digest.as_str()) {
                continue;
            }
            pushed.push(&layer.digest);
            if self.exists(&layer.digest).await? {
                logs.line(format!(
                    "layer {} already in the registry",
                    short(&layer.digest)
                ));
                continue;
            }
            let started = std::time::Instant::now();
            self.retry(&format!("upload layer {}", layer.digest), || async {
                let file = tokio::fs::File::open(&layer.gz_path).await?;
                let stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20)
                    .map_err(OciDistributionError::IoError);
                self.client
                    .push_blob_stream(&self.reference, stream, &layer.digest, Some(layer.size))
                    .await
                    .map(|_| ())
            })
            .await?;
            logs.line(format!(
                "pushed layer {} ({}) in {:.1}s",
                short(&layer.digest),
                human_size(layer.size),
                started.elapsed().as_secs_f64()
            ));
        }

        if !self.exists(&image.config_digest).await? {
            self.retry("upload the image config", || async {
                self.client
                    .push_blob(&self.reference, image.config.clone(), &image.config_digest)
                    .await
                    .map(|_| ())
            })
            .await?;
        }

        let manifest = Bytes::from(manifest_bytes(image)?);
        let digest = sha256_digest(&manifest);
        let by_digest = Reference::with_digest(
            self.reference.registry().to_owned(),
            self.reference.repository().to_owned(),
            digest.clone(),
        );
        self.retry("push the manifest", || async {
            self.client
                .push_manifest_raw(
                    &by_digest,
                    manifest.clone(),
                    MANIFEST_MEDIA_TYPE
                        .parse()
                        .expect("the manifest media type is a valid header value"),
                )
                .await
                .map(|_| ())
        })
        .await?;
        logs.line(format!("pushed manifest {by_digest}"));
        Ok(PushedImage {
            digest,
            size: manifest.len() as u64,
            media_type: MANIFEST_MEDIA_TYPE.to_owned(),
        })
    }

    async fn read_config(&self, pushed: &PushedImage) -> Result<PushedConfig, PushError> {
        let by_digest = Reference::with_digest(
            self.reference.registry().to_owned(),
            self.reference.repository().to_owned(),
            pushed.digest.clone(),
        );
        let accepted = [pushed.media_type.as_str(), MANIFEST_MEDIA_TYPE];
        let (manifest, _) = self
            .retry(&format!("read the manifest {by_digest}"), || {
                self.client
                    .pull_manifest_raw(&by_digest, &self.auth, &accepted)
            })
            .await?;
        let actual = sha256_digest(&manifest);
        if actual != pushed.digest || manifest.len() as u64 != pushed.size {
            return Err(PushError::Archive(format!(
                "the registry holds {} bytes with digest {actual} under {by_digest}, but {} bytes were reported",
                manifest.len(),
                pushed.size
            )));
        }
        #[derive(serde::Deserialize)]
        struct Manifest {
            config: Descriptor,
        }
        let parsed: Manifest = serde_json::from_slice(&manifest).map_err(|e| {
            PushError::Archive(format!(
                "the pushed manifest {by_digest} is no image manifest: {e}"
            ))
        })?;
        let config_digest = parsed.config.digest().to_string();
        let config = self
            .retry(&format!("read the config {config_digest}"), || async {
                let mut blob = Vec::new();
                self.client
                    .pull_blob(&by_digest, config_digest.as_str(), &mut blob)
                    .await
                    .map(|()| blob)
            })
            .await?;
        #[derive(serde::Deserialize)]
        struct Config {
            #[serde(default)]
            os: String,
            #[serde(default)]
            architecture: String,
            #[serde(default)]
            variant: String,
        }
        let fields: Config = serde_json::from_slice(&config).map_err(|e| {
            PushError::Archive(format!(
                "the pushed config {config_digest} is not understood: {e}"
            ))
        })?;
        Ok(PushedConfig {
            digest: config_digest,
            os: fields.os,
            architecture: fields.architecture,
            variant: fields.variant,
        })
    }

    async fn exists(&self, digest: &str) -> Result<bool, PushError> {
        self.retry(&format!("check blob {digest}"), || {
            self.client.blob_exists(&self.reference, digest)
        })
        .await
    }

    /// Runs `op` until it succeeds, fails for good, or [`REGISTRY_ATTEMPTS`] transient failures.
    async fn retry<T, F, Fut>(&self, action: &str, mut op: F) -> Result<T, PushError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, OciDistributionError>>,
    {
        let mut delay = REGISTRY_FIRST_DELAY;
        let mut attempt = 1;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(source) => {
                    let transient = is_transient(&source);
                    if !transient || attempt >= REGISTRY_ATTEMPTS {
                        return Err(PushError::Registry {
                            registry: self.registry.clone(),
                            action: action.to_owned(),
                            attempts: attempt,
                            transient,
                            source,
                        });
                    }
                    let wait = jittered(delay);
                    tracing::warn!(registry = %self.registry, action, attempt, error = %source, "registry request failed; retrying in {wait:?}");
                    self.logs.line(format!(
                        "registry {}: {action} failed (try {attempt} of {REGISTRY_ATTEMPTS}): {}; retrying in {:.1}s",
                        self.registry,
                        crate::error_chain(&source),
                        wait.as_secs_f64()
                    ));
                    tokio::time::sleep(wait).await;
                    delay *= 2;
                    attempt += 1;
                }
            }
        }
    }
}

/// Whether a registry error is worth retrying: server errors, throttling, broken connections.
pub fn is_transient(error: &OciDistributionError) -> bool {
    match error {
        OciDistributionError::ServerError { code, .. } => *code >= 500 || *code == 429,
        OciDistributionError::RequestError(e) => {
            e.is_connect()
                || e.is_timeout()
                || e.is_request()
                || e.is_body()
                || e.status()
                    .is_some_and(|s| s.is_server_error() || s.as_u16() == 429)
        }
        OciDistributionError::IoError(_) => true,
        _ => false,
    }
}

/// `delay` scaled by a random factor in [0.75, 1.25), so that workers do not retry in lockstep.
pub(crate) fn jittered(delay: Duration) -> Duration {
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let factor = 0.75 + (random % 1000) as f64 / 2000.0;
    delay.mul_f64(factor)
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

    #[test]
    fn compressing_gives_stable_digests_and_the_uncompressed_diff_id() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("layer.tar");
        std::fs::write(&src, b"some layer bytes, repeated ".repeat(1000)).unwrap();
        let (raw, gz1, size1) = compress(&src, &dir.path().join("a.gz")).unwrap();
        let (_, gz2, size2) = compress(&src, &dir.path().join("b.gz")).unwrap();
        assert_eq!(raw, sha256_digest(&std::fs::read(&src).unwrap()));
        assert_eq!(
            (gz1.clone(), size1),
            (gz2, size2),
            "compression must be deterministic"
        );
        let gz = std::fs::read(dir.path().join("a.gz")).unwrap();
        assert_eq!(sha256_digest(&gz), gz1);
        assert_eq!(gz.len() as u64, size1);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, std::fs::read(&src).unwrap());
    }

    #[test]
    fn an_already_gzipped_layer_is_pushed_as_is_with_the_diff_id_of_its_contents() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("layer.tar");
        std::fs::write(&raw, b"tar bytes ".repeat(500)).unwrap();
        let gz = dir.path().join("blob");
        let (diff_id, digest, size) = compress(&raw, &gz).unwrap();
        assert_eq!(layer_compression(&raw).unwrap(), Compression::None);
        assert_eq!(layer_compression(&gz).unwrap(), Compression::Gzip);
        assert_eq!(hash_gzipped(&gz).unwrap(), (diff_id, digest, size));

        let zstd = dir.path().join("zstd");
        std::fs::write(&zstd, [0x28, 0xb5, 0x2f, 0xfd, 0]).unwrap();
        let err = layer_compression(&zstd).unwrap_err().to_string();
        assert!(err.contains("zstd"), "{err}");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        assert_eq!(layer_compression(&empty).unwrap(), Compression::None);
    }

    #[test]
    fn transient_errors_are_server_errors_and_throttling() {
        let server = |code| OciDistributionError::ServerError {
            code,
            url: "u".into(),
            message: "m".into(),
        };
        assert!(is_transient(&server(500)));
        assert!(is_transient(&server(503)));
        assert!(is_transient(&server(429)));
        assert!(!is_transient(&server(401)));
        assert!(!is_transient(&server(404)));
        assert!(!is_transient(&OciDistributionError::AuthenticationFailure(
            "denied".into()
        )));
    }

    #[test]
    fn jitter_stays_within_a_quarter_of_the_delay() {
        for _ in 0..100 {
            let d = jittered(Duration::from_millis(1000));
            assert!(
                d >= Duration::from_millis(750) && d < Duration::from_millis(1250),
                "{d:?}"
            );
        }
    }
}
