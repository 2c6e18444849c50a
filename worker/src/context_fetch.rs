//! A job's build context, from the worker's cache or downloaded from the coordinator
//! (`Workers.DownloadContext`), with the download opened again when it breaks off.

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use manifold_proto::v1;
use manifold_proto::v1::workers_client::WorkersClient;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::backoff::Backoff;
use crate::context_cache::{CacheError, ContextCache, ContextDigest, SourceError};
use crate::job::{JobFailure, LogSink};

/// How many times a context download is opened before the job fails: with the back-off below,
/// about 30 s, enough for a coordinator to restart or fail over without failing the jobs that were
/// downloading from it.
const CONTEXT_DOWNLOAD_TRIES: u32 = 8;

/// The context `digest` in the cache, downloaded from the coordinator if it is not there. A
/// download that breaks off is opened again (a new connection when the coordinator restarted),
/// up to [`CONTEXT_DOWNLOAD_TRIES`] times, each retry said in the job's log.
pub async fn fetch(
    cache: &ContextCache,
    channel: &Mutex<Channel>,
    digest: &ContextDigest,
    logs: &LogSink,
    cancel: &CancellationToken,
) -> Result<std::path::PathBuf, JobFailure> {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(8));
    let mut tries = 1;
    let retry = |e: &CacheError| {
        if !e.is_transient() || tries >= CONTEXT_DOWNLOAD_TRIES {
            return None;
        }
        tries += 1;
        let wait = backoff.next_wait();
        tracing::warn!(%digest, error = %e, ?wait, "context download failed; trying again");
        logs.line(format!(
            "{e}; trying again in {:.1}s (try {tries} of {CONTEXT_DOWNLOAD_TRIES})",
            wait.as_secs_f64()
        ));
        Some(wait)
    };
    let fetch = cache.get_or_fetch(
        digest,
        || {
            download(
                channel.lock().expect("channel lock").clone(),
                digest.clone(),
            )
        },
        retry,
    );
    tokio::select! {
        () = cancel.cancelled() => Err(JobFailure::cancelled()),
        context = fetch => context.map_err(|e| match &e {
            CacheError::InvalidDigest(_) | CacheError::Download { not_found: true, .. } => {
                JobFailure::permanent(e.to_string())
            }
            _ => JobFailure::retryable(e.to_string()),
        }),
    }
}

/// Opens `Workers.DownloadContext` for `digest`.
async fn download(
    channel: Channel,
    digest: ContextDigest,
) -> Result<impl futures::Stream<Item = Result<Bytes, SourceError>>, SourceError> {
    let mut client = WorkersClient::new(channel)
        .max_decoding_message_size(manifold_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(manifold_proto::MAX_MESSAGE_BYTES);
    let stream = client
        .download_context(v1::DownloadContextRequest {
            digest: digest.to_string(),
        })
        .await
        .map_err(|s| source_error(&s))?
        .into_inner();
    Ok(stream.map(|chunk| {
        chunk
            .map(|c| Bytes::from(c.data))
            .map_err(|s| source_error(&s))
    }))
}

fn source_error(status: &tonic::Status) -> SourceError {
    SourceError {
        message: format!(
            "the coordinator answered: {}",
            crate::connection::describe_status(status)
        ),
        not_found: status.code() == tonic::Code::NotFound,
    }
}
