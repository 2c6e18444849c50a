//! The farm's one writer task: build records first, then the worker messages they allow, in the
//! order the transitions happened; and the build logs, buffered and written in batches.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{FarmError, ToWorker};
use crate::build::Build;
use crate::logs::{LogBook, LogLines, LogWrite};
use crate::store::{StateStore, StoreError};

/// Buffered log lines are written this long after the first of them arrived, at the latest.
const LOG_FLUSH_AFTER: Duration = Duration::from_millis(250);
/// ... or as soon as this many bytes are buffered.
const LOG_FLUSH_BYTES: usize = 256 * 1024;

/// What one farm operation must persist, then send.
pub(super) struct Batch {
    pub builds: Vec<Build>,
    pub messages: Vec<(mpsc::UnboundedSender<ToWorker>, ToWorker)>,
    /// Output lines, buffered and written in batches (never one write per line).
    pub logs: Vec<LogLines>,
    /// Write every buffered line before answering `done` (a reader of the logs waits for it).
    pub flush_logs: bool,
    pub done: Option<oneshot::Sender<Result<(), StoreError>>>,
}

/// Applies batches in order: each build record is written (retrying backend errors with backoff),
/// then the batch's worker messages are sent. A fenced write means another coordinator leads now:
/// nothing more is written or sent, and the term is cancelled so the coordinator steps down.
/// Batches queued before the term ended are still attempted (biased towards the queue): whether
/// they land is the store's fence to decide, not this task's timing, and a shutdown loses nothing
/// the farm already accepted. A build's buffered lines are written before its final record.
pub(super) async fn write_loop(
    store: Arc<dyn StateStore>,
    mut batches: mpsc::UnboundedReceiver<Batch>,
    term: CancellationToken,
) {
    let mut logs = LogBuffer::default();
    loop {
        let due = logs.due();
        let batch = tokio::select! {
            biased;
            b = batches.recv() => match b {
                Some(b) => b,
                None => {
                    let _ = logs.flush(&*store).await;
                    return;
                }
            },
            _ = term.cancelled() => return,
            _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                if logs.flush(&*store).await.is_err() {
                    term.cancel();
                    return;
                }
                continue;
            }
        };
        logs.add(batch.logs);
        let ending = batch.builds.iter().any(|b| b.state.is_final());
        if (ending || batch.flush_logs || logs.full() || logs.overdue())
            && let Err(e) = logs.flush(&*store).await
        {
            term.cancel();
            if let Some(done) = batch.done {
                let _ = done.send(Err(e));
            }
            return;
        }
        let mut outcome = Ok(());
        for build in &batch.builds {
            if let Err(e) = save(&*store, build).await {
                if matches!(e, StoreError::Fenced(_)) {
                    term.cancel();
                    if let Some(done) = batch.done {
                        let _ = done.send(Err(e));
                    }
                    return;
                }
                outcome = Err(e);
            }
            if build.state.is_final() {
                logs.book.forget(build.id);
            }
        }
        for (tx, msg) in batch.messages {
            let _ = tx.send(msg);
        }
        if let Some(done) = batch.done {
            let _ = done.send(outcome);
        }
    }
}

/// Saves one record, retrying backend errors with backoff; a stale write (a newer record is
/// there already, as after a replay) counts as done.
async fn save(store: &dyn StateStore, build: &Build) -> Result<(), StoreError> {
    let mut delay = Duration::from_millis(100);
    loop {
        match store.save(build).await {
            Ok(()) => return Ok(()),
            Err(StoreError::Stale {
                id,
                stored,
                attempted,
            }) => {
                tracing::debug!(build = %id, stored, attempted, "skipping a stale write");
                return Ok(());
            }
            Err(e @ StoreError::Fenced(_)) => {
                tracing::error!(error = %e, "state write rejected; stepping down");
                return Err(e);
            }
            Err(e) if delay <= Duration::from_secs(5) => {
                tracing::warn!(build = %build.id, error = %e, "state write failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => {
                tracing::error!(build = %build.id, error = %e, "state write failed");
                return Err(e);
            }
        }
    }
}

/// Lines waiting to be written, and the book of what is stored.
#[derive(Default)]
struct LogBuffer {
    book: LogBook,
    pending: Vec<LogLines>,
    bytes: usize,
    since: Option<Instant>,
}

impl LogBuffer {
    fn add(&mut self, lines: Vec<LogLines>) {
        for l in lines {
            self.bytes += l.lines.iter().map(String::len).sum::<usize>();
            self.since.get_or_insert_with(Instant::now);
            match self.pending.last_mut() {
                Some(last) if last.job == l.job && last.build == l.build => {
                    last.lines.extend(l.lines)
                }
                _ => self.pending.push(l),
            }
        }
    }

    fn due(&self) -> Option<Instant> {
        self.since.map(|s| s + LOG_FLUSH_AFTER)
    }

    fn overdue(&self) -> bool {
        self.due().is_some_and(|d| d <= Instant::now())
    }

    fn full(&self) -> bool {
        self.bytes >= LOG_FLUSH_BYTES
    }

    /// Writes every buffered line. Fails only when the write is fenced (this coordinator no
    /// longer leads); lines that cannot be written otherwise are dropped with a warning.
    async fn flush(&mut self, store: &dyn StateStore) -> Result<(), StoreError> {
        let pending = std::mem::take(&mut self.pending);
        (self.bytes, self.since) = (0, None);
        if pending.is_empty() {
            return Ok(());
        }
        let mut write = LogWrite::default();
        for lines in pending {
            if !self.book.knows(lines.build) {
                // A build logging since before this coordinator's term: go on after its chunks.
                match store.load_logs(lines.build).await {
                    Ok(stored) => self.book.load(lines.build, &stored),
                    Err(e) => {
                        tracing::warn!(build = %lines.build, error = %e, "reading stored logs failed")
                    }
                }
            }
            let w = self.book.append(lines);
            write.put.retain(|c| !w.drop.contains(&(c.build, c.seq)));
            write.drop.extend(w.drop);
            write.put.extend(w.put);
        }
        let mut delay = Duration::from_millis(100);
        loop {
            match store.write_logs(&write).await {
                Ok(()) => return Ok(()),
                Err(e @ StoreError::Fenced(_)) => {
                    tracing::error!(error = %e, "state write rejected (build logs); stepping down");
                    return Err(e);
                }
                Err(e) if delay <= Duration::from_secs(2) => {
                    tracing::warn!(error = %e, "writing build logs failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(e) => {
                    let lines: usize = write.put.iter().map(|c| c.lines.len()).sum();
                    tracing::error!(error = %e, lines, "writing build logs failed; these lines are lost");
                    return Ok(());
                }
            }
        }
    }
}

/// Waits for a transition's writes.
pub(super) async fn durable(
    rx: oneshot::Receiver<Result<(), StoreError>>,
) -> Result<(), FarmError> {
    rx.await
        .unwrap_or_else(|_| Err(StoreError::Backend("the state writer has stopped".into())))?;
    Ok(())
}
