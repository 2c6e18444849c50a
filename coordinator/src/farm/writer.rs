//! The farm's one writer task: build records first, then the worker messages they allow, in the
//! order the transitions happened; and the build logs, buffered and written in batches.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use manifold_proto::{BuildId, JobId};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{FarmError, ToWorker};
use crate::build::Build;
use crate::logs::{LogBook, LogChunk, LogLines, LogWrite};
use crate::store::{StateStore, StoreError};

/// Buffered log lines are written this long after the first of them arrived, at the latest.
const LOG_FLUSH_AFTER: Duration = Duration::from_millis(250);
/// ... or as soon as this many bytes are buffered.
const LOG_FLUSH_BYTES: usize = 256 * 1024;

/// What one farm operation must persist, then send.
#[derive(Default)]
pub(super) struct Batch {
    pub builds: Vec<Build>,
    /// `builds` are new (a submit): when the write fails they are dropped, not kept and written
    /// again, and `done` says so; the submit is refused and the build never listed.
    pub new: bool,
    pub messages: Vec<(mpsc::UnboundedSender<ToWorker>, ToWorker)>,
    /// Output lines, buffered and written in batches (never one write per line).
    pub logs: Vec<LogLines>,
    /// Write every buffered line, then read this build's stored chunks and answer: a read
    /// ordered after every line the transitions before it gave (this task is the only writer).
    pub read_logs: Option<LogRead>,
    /// Builds to delete from the store, with their logs (retention), after the records.
    pub delete: Vec<BuildId>,
    /// Compact the store after the deletions.
    pub compact: bool,
    pub done: Option<oneshot::Sender<Result<(), StoreError>>>,
}

/// Where the stored chunks of a build go, read by the writer ([`Batch::read_logs`]).
pub(super) type LogRead = (BuildId, oneshot::Sender<Result<Vec<LogChunk>, StoreError>>);

/// Applies batches in order, as group commits: every batch already queued when the writer is
/// free goes into the same write (one transaction, one fsync on the embedded store; at most
/// `MAX_GROUP` batches), and then the group's worker messages are sent in the batches' order. A
/// transition waits for the write in progress and the next, never for one write per earlier
/// transition. A record that cannot be written (a full state disk)
/// is kept and written again, newest version first-come, with every later batch and every second
/// until it lands; the messages of its batch are dropped, not sent ahead of their record (an
/// assignment that never arrives is requeued by its acknowledgement timer). A fenced write means another coordinator leads now:
/// nothing more is written or sent, and the term is cancelled so the coordinator steps down.
/// Batches queued before the term ended are still attempted (biased towards the queue): whether
/// they land is the store's fence to decide, not this task's timing, and a shutdown loses nothing
/// the farm already accepted. A build's buffered lines are written before its final record.
/// The writer reports each assignment it sent (or gave up) to `sent`, and says so on `wrote`.
pub(super) async fn write_loop(
    store: Arc<dyn StateStore>,
    mut batches: mpsc::UnboundedReceiver<Batch>,
    sent: SentLog,
    wrote: Arc<tokio::sync::Notify>,
    term: CancellationToken,
) {
    let mut logs = LogBuffer::default();
    let mut unsaved = Unsaved::default();
    loop {
        let due = logs.due();
        let first = tokio::select! {
            biased;
            b = batches.recv() => match b {
                Some(b) => b,
                None => {
                    let _ = unsaved.write(&*store).await;
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
            _ = tokio::time::sleep(UNSAVED_RETRY), if !unsaved.is_empty() => {
                if let Err(e @ StoreError::Fenced(_)) = unsaved.write(&*store).await {
                    tracing::error!(error = %e, "state write rejected; stepping down");
                    term.cancel();
                    return;
                }
                continue;
            }
        };
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match batches.try_recv() {
                Ok(b) => group.push(b),
                Err(_) => break,
            }
        }
        let mut flush = false;
        for batch in &mut group {
            logs.add(std::mem::take(&mut batch.logs));
            flush |= batch.read_logs.is_some() || batch.builds.iter().any(|b| b.state.is_final());
        }
        // The lines go before the records (a final record after all of its build's lines): in
        // the same transaction where the store can ([`StateStore::save_all_with_logs`]).
        let lines = if flush || logs.full() || logs.overdue() {
            logs.take(&*store).await
        } else {
            LogWrite::default()
        };
        let mut mine: Vec<Vec<BuildId>> = Vec::with_capacity(group.len());
        for batch in &mut group {
            mine.push(batch.builds.iter().map(|b| b.id).collect());
            for build in std::mem::take(&mut batch.builds) {
                if build.state.is_final() {
                    logs.book.forget(build.id);
                }
                unsaved.add(build);
            }
        }
        let (records, started) = (unsaved.held.len(), Instant::now());
        let written = match unsaved.write_with(&*store, &lines).await {
            Ok(()) => Ok(()),
            // Apart, as the lines have their own rules: tried again for a while, then lost
            // (fenced: stepping down); the records are held and written again.
            Err(_) if !lines.is_empty() => {
                if let Err(e) = LogBuffer::write(&*store, &lines).await {
                    term.cancel();
                    for done in group.into_iter().filter_map(|b| b.done) {
                        let _ = done.send(Err(e.clone()));
                    }
                    return;
                }
                unsaved.write(&*store).await
            }
            Err(e) => Err(e),
        };
        tracing::debug!(
            batches = group.len(),
            records,
            took_us = started.elapsed().as_micros() as u64,
            "group written"
        );
        if let Err(e @ StoreError::Fenced(_)) = &written {
            term.cancel();
            for done in group.into_iter().filter_map(|b| b.done) {
                let _ = done.send(Err(e.clone()));
            }
            return;
        }
        let mut assignments = Vec::new();
        for (batch, ids) in group.into_iter().zip(mine) {
            let outcome = match &written {
                Err(e) if ids.iter().any(|id| unsaved.holds(*id)) => Err(e.clone()),
                _ => Ok(()),
            };
            if batch.new {
                for id in &ids {
                    match &outcome {
                        Err(_) => {
                            unsaved.held.remove(id);
                        }
                        // Its first lines need no read of the store (a round trip to etcd).
                        Ok(()) => logs.book.begin(*id),
                    }
                }
            }
            assignments.extend(batch.messages.iter().filter_map(|(_, m)| match m {
                ToWorker::Assign(spec) => Some((spec.job, spec.attempt)),
                _ => None,
            }));
            if outcome.is_ok() {
                for (tx, msg) in batch.messages {
                    let _ = tx.send(msg);
                }
            } else if !batch.messages.is_empty() {
                tracing::warn!(
                    messages = batch.messages.len(),
                    "not sending worker messages whose records are not durable"
                );
            }
            for id in batch.delete {
                unsaved.held.remove(&id);
                logs.book.forget(id);
                match store.delete(id).await {
                    Ok(()) => tracing::debug!(build = %id, "build deleted (retention)"),
                    Err(e @ StoreError::Fenced(_)) => {
                        tracing::error!(error = %e, "state write rejected; stepping down");
                        term.cancel();
                        return;
                    }
                    // Still listed in the store's index: the next coordinator deletes it again.
                    Err(e) => tracing::warn!(build = %id, error = %e, "deleting a build failed"),
                }
            }
            if batch.compact {
                let started = Instant::now();
                match store.compact().await {
                    Ok(done) => tracing::info!(
                        compacted = done,
                        took_ms = started.elapsed().as_millis() as u64,
                        "state store compacted after deletions"
                    ),
                    Err(e) => tracing::warn!(error = %e, "compacting the state store failed"),
                }
            }
            if let Some(done) = batch.done {
                let _ = done.send(outcome);
            }
            if let Some((id, answer)) = batch.read_logs {
                let _ = answer.send(store.load_logs(id).await);
            }
        }
        // Sent, or given up with their records: their acknowledgement deadlines run from now.
        if !assignments.is_empty() {
            let at = Instant::now().into_std();
            let mut log = sent.lock().expect("sent log lock poisoned");
            log.extend(
                assignments
                    .into_iter()
                    .map(|(job, attempt)| (job, attempt, at)),
            );
            drop(log);
            wrote.notify_one();
        }
    }
}

/// Batches written together at most, so that one group's messages do not wait for an
/// unbounded write.
const MAX_GROUP: usize = 1024;

/// Assignments the writer sent (or gave up), with when: the farm's next tick starts their
/// acknowledgement deadlines from these times ([`super::state::FarmState::sent`]).
pub(super) type SentLog = Arc<std::sync::Mutex<Vec<(JobId, u32, std::time::Instant)>>>;

/// How often records that could not be written are tried again while no batch comes.
const UNSAVED_RETRY: Duration = Duration::from_secs(1);

/// Build records not yet durable, the newest version of each.
#[derive(Default)]
struct Unsaved {
    held: BTreeMap<BuildId, Build>,
    /// The last write failed (so the next success is worth a line in the log).
    failing: bool,
}

impl Unsaved {
    fn add(&mut self, build: Build) {
        match self.held.get(&build.id) {
            Some(held) if held.version >= build.version => {}
            _ => {
                self.held.insert(build.id, build);
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    fn holds(&self, id: BuildId) -> bool {
        self.held.contains_key(&id)
    }

    /// Writes what it holds in one group write ([`StateStore::save_all`]) and keeps it all when
    /// that fails (writing a record again is harmless); returns the error.
    async fn write(&mut self, store: &dyn StateStore) -> Result<(), StoreError> {
        self.write_with(store, &LogWrite::default()).await
    }

    /// [`Unsaved::write`], with `lines` written first in the same group write; when that fails,
    /// none of it counts as written.
    async fn write_with(
        &mut self,
        store: &dyn StateStore,
        lines: &LogWrite,
    ) -> Result<(), StoreError> {
        if self.held.is_empty() && lines.is_empty() {
            return Ok(());
        }
        let builds: Vec<Build> = std::mem::take(&mut self.held).into_values().collect();
        match save(store, &builds, lines).await {
            Ok(()) => {
                if std::mem::take(&mut self.failing) {
                    tracing::info!(
                        records = builds.len(),
                        "the state store takes writes again; every held record is durable"
                    );
                }
                Ok(())
            }
            Err(e) => {
                self.failing = true;
                for build in builds {
                    self.held.insert(build.id, build);
                }
                Err(e)
            }
        }
    }
}

/// Saves records in one group write, retrying backend errors with backoff (a full disk is not
/// retried here: it is not a blip); stale records (a newer one is there already, as after a
/// replay) count as done.
async fn save(
    store: &dyn StateStore,
    builds: &[Build],
    lines: &LogWrite,
) -> Result<(), StoreError> {
    let mut delay = Duration::from_millis(100);
    loop {
        match store.save_all_with_logs(builds, lines).await {
            Ok(()) => return Ok(()),
            Err(e @ StoreError::Fenced(_)) => {
                tracing::error!(error = %e, "state write rejected; stepping down");
                return Err(e);
            }
            Err(e @ StoreError::DiskFull(_)) => {
                tracing::error!(records = builds.len(), error = %e, "state write failed");
                return Err(e);
            }
            Err(e) if delay <= Duration::from_secs(5) => {
                tracing::warn!(records = builds.len(), error = %e, "state write failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => {
                tracing::error!(records = builds.len(), error = %e, "state write failed");
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
        let write = self.take(store).await;
        Self::write(store, &write).await
    }

    /// Every buffered line as the chunks to write (the book counts them written).
    async fn take(&mut self, store: &dyn StateStore) -> LogWrite {
        let pending = std::mem::take(&mut self.pending);
        (self.bytes, self.since) = (0, None);
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
        write
    }

    /// Writes `write`, retrying; see [`LogBuffer::flush`].
    async fn write(store: &dyn StateStore, write: &LogWrite) -> Result<(), StoreError> {
        if write.is_empty() {
            return Ok(());
        }
        let mut delay = Duration::from_millis(100);
        loop {
            match store.write_logs(write).await {
                Ok(()) => return Ok(()),
                Err(e @ StoreError::Fenced(_)) => {
                    tracing::error!(error = %e, "state write rejected (build logs); stepping down");
                    return Err(e);
                }
                Err(e)
                    if delay <= Duration::from_secs(2) && !matches!(e, StoreError::DiskFull(_)) =>
                {
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::store::memory::MemoryStore;
    use crate::store::suite;

    /// A memory store whose disk can be "full".
    #[derive(Default)]
    struct SmallDisk {
        store: MemoryStore,
        full: AtomicBool,
        /// Group writes asked for.
        writes: std::sync::atomic::AtomicUsize,
        /// Group writes with lines asked for, and how many lines each held.
        with_lines: std::sync::Mutex<Vec<usize>>,
        /// Reads of a build's stored lines.
        log_reads: std::sync::atomic::AtomicUsize,
    }

    #[async_trait]
    impl StateStore for SmallDisk {
        async fn summaries(&self) -> Result<Vec<crate::store::BuildSummary>, StoreError> {
            self.store.summaries().await
        }
        async fn load_builds(&self, ids: &[BuildId]) -> Result<Vec<Build>, StoreError> {
            self.store.load_builds(ids).await
        }
        async fn save(&self, build: &Build) -> Result<(), StoreError> {
            if self.full.load(Ordering::SeqCst) {
                return Err(StoreError::DiskFull(
                    "writing state.redb: No space left".into(),
                ));
            }
            self.store.save(build).await
        }
        async fn save_all(&self, builds: &[Build]) -> Result<(), StoreError> {
            self.writes.fetch_add(1, Ordering::SeqCst);
            for build in builds {
                self.save(build).await?;
            }
            Ok(())
        }
        async fn delete(&self, id: BuildId) -> Result<(), StoreError> {
            self.store.delete(id).await
        }
        async fn write_logs(&self, write: &LogWrite) -> Result<(), StoreError> {
            self.store.write_logs(write).await
        }
        async fn save_all_with_logs(
            &self,
            builds: &[Build],
            logs: &LogWrite,
        ) -> Result<(), StoreError> {
            let lines = logs.put.iter().map(|c| c.lines.len()).sum();
            self.with_lines.lock().unwrap().push(lines);
            self.write_logs(logs).await?;
            self.save_all(builds).await
        }
        async fn load_logs(&self, id: BuildId) -> Result<Vec<LogChunk>, StoreError> {
            self.log_reads.fetch_add(1, Ordering::SeqCst);
            self.store.load_logs(id).await
        }
    }

    /// The writer on `disk`, reading `rx`, in a task of its own.
    fn spawn_writer(
        disk: &Arc<SmallDisk>,
        rx: mpsc::UnboundedReceiver<Batch>,
        sent: SentLog,
        term: &CancellationToken,
    ) {
        tokio::spawn(write_loop(
            disk.clone(),
            rx,
            sent,
            Default::default(),
            term.clone(),
        ));
    }

    /// `lines` of `build`'s first job.
    fn job_lines(build: &Build, lines: &[&str]) -> LogLines {
        LogLines {
            build: build.id,
            job: build.jobs[0].id,
            platform: build.jobs[0].platform.clone(),
            lines: lines.iter().map(|l| (*l).to_owned()).collect(),
        }
    }

    /// A build submitted in this term has no stored lines: its first lines are numbered from 0
    /// with no read of the store. A build from before this term (restored, or another leader's)
    /// is read once, and its numbering goes on after what the store holds.
    #[tokio::test(start_paused = true)]
    async fn a_submitted_builds_lines_read_nothing_back_and_an_older_builds_are_read_once() {
        let disk = Arc::new(SmallDisk::default());
        let (batches, rx) = mpsc::unbounded_channel();
        spawn_writer(&disk, rx, SentLog::default(), &CancellationToken::new());
        let older = suite::build(1);
        let stored = LogBook::default().append(job_lines(&older, &["from the last term"]));
        disk.store.write_logs(&stored).await.unwrap();
        let submitted = suite::build(1);
        let (done, written) = oneshot::channel();
        batches
            .send(Batch {
                builds: vec![submitted.clone()],
                new: true,
                done: Some(done),
                ..Batch::default()
            })
            .unwrap();
        written.await.unwrap().unwrap();

        // Two groups of lines each, then both builds end (their lines are written then).
        for line in ["#1 FROM", "#2 RUN"] {
            batches
                .send(Batch {
                    logs: vec![job_lines(&submitted, &[line]), job_lines(&older, &[line])],
                    ..Batch::default()
                })
                .unwrap();
        }
        let ended = |b: &Build| Build {
            state: crate::build::BuildState::Succeeded,
            version: b.version + 1,
            ..b.clone()
        };
        let (done, written) = oneshot::channel();
        batches
            .send(Batch {
                builds: vec![ended(&submitted), ended(&older)],
                done: Some(done),
                ..Batch::default()
            })
            .unwrap();
        written.await.unwrap().unwrap();

        assert_eq!(
            disk.log_reads.load(Ordering::SeqCst),
            1,
            "only the older build's stored lines are read"
        );
        let numbered = |chunks: Vec<LogChunk>| -> Vec<(u64, u64, Vec<String>)> {
            chunks
                .into_iter()
                .map(|c| (c.seq, c.first, c.lines))
                .collect()
        };
        let one = |l: &str| vec![l.to_owned()];
        assert_eq!(
            numbered(disk.load_logs(submitted.id).await.unwrap()),
            [(0, 0, one("#1 FROM")), (1, 1, one("#2 RUN"))]
        );
        assert_eq!(
            numbered(disk.load_logs(older.id).await.unwrap()),
            [
                (0, 0, one("from the last term")),
                (1, 1, one("#1 FROM")),
                (2, 2, one("#2 RUN"))
            ]
        );
    }

    /// A build's last lines and its final record reach the store in one group write (where the
    /// store has transactions, one commit), the lines first.
    #[tokio::test(start_paused = true)]
    async fn a_final_record_and_the_lines_before_it_share_one_group_write() {
        let disk = Arc::new(SmallDisk::default());
        let (batches, rx) = mpsc::unbounded_channel();
        let mut done = suite::build(1);
        done.state = crate::build::BuildState::Succeeded;
        let lines = job_lines(&done, &["#5 DONE", "pushed"]);
        let (written, rx_done) = oneshot::channel();
        batches
            .send(Batch {
                logs: vec![lines],
                ..Batch::default()
            })
            .unwrap();
        batches
            .send(Batch {
                builds: vec![done.clone()],
                done: Some(written),
                ..Batch::default()
            })
            .unwrap();
        spawn_writer(&disk, rx, SentLog::default(), &CancellationToken::new());
        rx_done.await.unwrap().unwrap();
        assert_eq!(
            *disk.with_lines.lock().unwrap(),
            [2],
            "one write, both lines"
        );
        assert_eq!(disk.writes.load(Ordering::SeqCst), 1);
        assert_eq!(disk.load().await.unwrap(), vec![done.clone()]);
        let stored: Vec<String> = (disk.load_logs(done.id).await.unwrap().into_iter())
            .flat_map(|c| c.lines)
            .collect();
        assert_eq!(stored, ["#5 DONE", "pushed"]);
    }

    fn batch(
        builds: Vec<Build>,
        to: &mpsc::UnboundedSender<ToWorker>,
    ) -> (Batch, oneshot::Receiver<Result<(), StoreError>>) {
        let (done, rx) = oneshot::channel();
        let batch = Batch {
            builds,
            messages: vec![(to.clone(), ToWorker::Drain)],
            done: Some(done),
            ..Batch::default()
        };
        (batch, rx)
    }

    #[tokio::test(start_paused = true)]
    async fn a_record_the_full_disk_refused_is_written_once_there_is_room_and_its_messages_are_not_sent()
     {
        let disk = Arc::new(SmallDisk::default());
        let (batches, rx) = mpsc::unbounded_channel();
        let term = CancellationToken::new();
        let sent = SentLog::default();
        spawn_writer(&disk, rx, sent.clone(), &term);
        let (to_worker, mut worker) = mpsc::unbounded_channel();

        disk.full.store(true, Ordering::SeqCst);
        let mut b = suite::build(1);
        let (first, done) = batch(vec![b.clone()], &to_worker);
        batches.send(first).unwrap();
        assert!(matches!(done.await.unwrap(), Err(StoreError::DiskFull(_))));
        assert!(worker.try_recv().is_err(), "sent ahead of its record");
        assert_eq!(disk.load().await.unwrap(), vec![]);

        // A newer version while still full replaces the held one; still nothing sent.
        b.version = 2;
        let (second, done) = batch(vec![b.clone()], &to_worker);
        batches.send(second).unwrap();
        assert!(done.await.unwrap().is_err());
        assert!(worker.try_recv().is_err());

        // Room again: within the retry period the newest record lands, with no new batch.
        disk.full.store(false, Ordering::SeqCst);
        tokio::time::sleep(UNSAVED_RETRY * 2).await;
        assert_eq!(disk.load().await.unwrap(), vec![b.clone()]);
        assert!(
            !term.is_cancelled(),
            "a full disk is no reason to step down"
        );

        // And the next batch is written and sent as usual.
        b.version = 3;
        let (third, done) = batch(vec![b.clone()], &to_worker);
        batches.send(third).unwrap();
        done.await.unwrap().unwrap();
        assert_eq!(worker.try_recv().unwrap(), ToWorker::Drain);
        assert_eq!(disk.load().await.unwrap(), vec![b]);
    }

    /// Submits wait for one group write, never for one each; a new build the disk refuses is
    /// refused and dropped (the submit fails, the build is never written), while a refused
    /// record of a build the farm holds is kept and written once there is room.
    #[tokio::test(start_paused = true)]
    async fn new_builds_share_a_group_write_and_one_the_full_disk_refused_is_dropped() {
        let disk = Arc::new(SmallDisk::default());
        let (batches, rx) = mpsc::unbounded_channel();
        let term = CancellationToken::new();
        spawn_writer(&disk, rx, SentLog::default(), &term);
        let submit = |build: Build| {
            let (done, rx) = oneshot::channel();
            let batch = Batch {
                builds: vec![build],
                new: true,
                done: Some(done),
                ..Batch::default()
            };
            batches.send(batch).unwrap();
            rx
        };

        let (a, b) = (suite::build(1), suite::build(2));
        let (a_done, b_done) = (submit(a.clone()), submit(b.clone()));
        a_done.await.unwrap().unwrap();
        b_done.await.unwrap().unwrap();
        assert_eq!(disk.writes.load(Ordering::SeqCst), 1, "one write for both");
        let mut stored = disk.load().await.unwrap();
        stored.sort_by_key(|b| b.id);
        let mut both = vec![a.clone(), b.clone()];
        both.sort_by_key(|b| b.id);
        assert_eq!(stored, both);

        disk.full.store(true, Ordering::SeqCst);
        let held = Build {
            version: a.version + 1,
            ..a.clone()
        };
        let (to_worker, _worker) = mpsc::unbounded_channel();
        let (kept, kept_done) = batch(vec![held.clone()], &to_worker);
        batches.send(kept).unwrap();
        let c = suite::build(3);
        let c_done = submit(c.clone());
        assert!(matches!(
            kept_done.await.unwrap(),
            Err(StoreError::DiskFull(_))
        ));
        assert!(matches!(
            c_done.await.unwrap(),
            Err(StoreError::DiskFull(_))
        ));

        disk.full.store(false, Ordering::SeqCst);
        tokio::time::sleep(UNSAVED_RETRY * 2).await;
        let stored = disk.load().await.unwrap();
        assert!(
            stored.contains(&held),
            "the held build's record is written once there is room"
        );
        assert!(
            !stored.iter().any(|s| s.id == c.id),
            "the refused submit is never written"
        );
    }
}
