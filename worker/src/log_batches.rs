//! A job's log lines on their way to the coordinator: batched into `JobLog` messages for the
//! worker's outbox, long lines cut, and lines dropped (counted, never results) when the
//! coordinator does not keep up.

use std::time::Duration;

use manifold_proto::v1;
use manifold_proto::v1::worker_message::Msg as ToCoordinator;
use tokio::sync::mpsc;

/// A log batch is sent when it holds this many lines, or every [`LOG_FLUSH`].
const LOG_BATCH_LINES: usize = 500;
/// See [`LOG_BATCH_LINES`].
const LOG_FLUSH: Duration = Duration::from_millis(100);
/// Longer lines are cut, so a batch stays far below the message size limit.
const MAX_LINE_BYTES: usize = 16 * 1024;

/// Batches a job's lines into `JobLog` messages, flushed every [`LOG_FLUSH`] or when full, until
/// every sender of `lines` is gone.
pub async fn forward(
    mut lines: mpsc::UnboundedReceiver<String>,
    outbox: mpsc::Sender<v1::WorkerMessage>,
    job_id: String,
    attempt: u32,
) {
    let mut batch: Vec<String> = Vec::new();
    let mut dropped = 0usize;
    let mut flush = tokio::time::interval(LOG_FLUSH);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut send = |batch: &mut Vec<String>| {
        if batch.is_empty() {
            return;
        }
        let lines = std::mem::take(batch);
        let count = lines.len();
        let log = v1::WorkerMessage {
            msg: Some(ToCoordinator::Log(v1::JobLog {
                job_id: job_id.clone(),
                attempt,
                lines,
            })),
        };
        if outbox.try_send(log).is_err() {
            if dropped == 0 {
                tracing::warn!("the coordinator is not keeping up: dropping log lines");
            }
            dropped += count;
        }
    };
    loop {
        tokio::select! {
            line = lines.recv() => match line {
                Some(mut line) => {
                    if line.len() > MAX_LINE_BYTES {
                        let mut cut = MAX_LINE_BYTES;
                        while !line.is_char_boundary(cut) {
                            cut -= 1;
                        }
                        line.truncate(cut);
                        line.push_str(" [cut]");
                    }
                    batch.push(line);
                    if batch.len() >= LOG_BATCH_LINES {
                        send(&mut batch);
                    }
                }
                None => {
                    send(&mut batch);
                    break;
                }
            },
            _ = flush.tick() => send(&mut batch),
        }
    }
    if dropped > 0 {
        tracing::warn!(dropped, "log lines were dropped");
    }
}
