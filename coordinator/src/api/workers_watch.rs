//! `Workers.Watch`: the attached workers now, then again after each change that is more than a
//! heartbeat's time, spaced at least [`GAP`] apart. The farm only counts its transitions
//! ([`crate::farm::Farm::transitions`]); what changed is found here by reading the list again.

use std::time::Duration;

use manifold_proto::v1;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::Status;

/// The shortest time between two lists of a `Workers.Watch` stream.
const GAP: Duration = Duration::from_millis(100);

/// The lists of a `Workers.Watch` stream: `snapshot` now, then again after each of the farm's
/// `transitions` that changed it in more than heartbeat times, [`GAP`] apart at
/// least; until the caller goes away or this coordinator's term ends (`stopped`).
pub(super) async fn follow(
    mut transitions: watch::Receiver<u64>,
    stopped: CancellationToken,
    snapshot: impl Fn() -> Vec<v1::WorkerInfo>,
    tx: mpsc::Sender<Result<v1::ListWorkersResponse, Status>>,
) {
    let mut sent: Option<Vec<v1::WorkerInfo>> = None;
    loop {
        transitions.borrow_and_update();
        let workers = snapshot();
        if sent
            .as_ref()
            .is_none_or(|s| !same_but_heartbeats(s, &workers))
        {
            let list = v1::ListWorkersResponse {
                workers: workers.clone(),
            };
            if tx.send(Ok(list)).await.is_err() {
                return;
            }
            sent = Some(workers);
        }
        if !super::next_change(&mut transitions, &tx, &stopped, "the workers").await {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(GAP) => {}
            _ = tx.closed() => return,
        }
    }
}

/// Whether two lists of workers differ only in when each was last heard from.
fn same_but_heartbeats(a: &[v1::WorkerInfo], b: &[v1::WorkerInfo]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(a, b)| {
            v1::WorkerInfo {
                last_heartbeat_ms: b.last_heartbeat_ms,
                ..a.clone()
            } == *b
        })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn worker(name: &str, slots_in_use: u32, last_heartbeat_ms: i64) -> v1::WorkerInfo {
        v1::WorkerInfo {
            name: name.into(),
            slots: 2,
            slots_in_use,
            last_heartbeat_ms,
            ..Default::default()
        }
    }

    #[test]
    fn a_workers_watch_sends_again_for_anything_but_heartbeat_times() {
        let before = [worker("x86", 0, 1_000), worker("arm", 1, 1_000)];
        let cases: [(&str, Vec<v1::WorkerInfo>, bool); 5] = [
            ("the same", before.to_vec(), true),
            (
                "heard from later",
                vec![worker("x86", 0, 2_000), worker("arm", 1, 3_000)],
                true,
            ),
            (
                "a slot taken",
                vec![worker("x86", 1, 1_000), worker("arm", 1, 1_000)],
                false,
            ),
            ("one detached", vec![worker("x86", 0, 1_000)], false),
            (
                "another in its place",
                vec![worker("x86", 0, 1_000), worker("mac", 1, 1_000)],
                false,
            ),
        ];
        for (what, after, same) in cases {
            assert_eq!(same_but_heartbeats(&before, &after), same, "{what}");
        }
    }

    /// A watch of the workers at exact (paused) times: the list now; nothing for transitions
    /// that changed only heartbeat times; the next change at least the gap after the last list;
    /// changes in between sent as one.
    #[tokio::test(start_paused = true)]
    async fn a_workers_watch_sends_changes_only_and_spaces_them() {
        let (bump, transitions) = watch::channel(0u64);
        let farm = Arc::new(std::sync::Mutex::new(vec![worker("x86", 0, 1_000)]));
        let (tx, mut rx) = mpsc::channel(1);
        let stopped = CancellationToken::new();
        let shown = farm.clone();
        tokio::spawn(follow(
            transitions,
            stopped.clone(),
            move || shown.lock().unwrap().clone(),
            tx,
        ));
        let slots = |list: Result<v1::ListWorkersResponse, Status>| -> Vec<u32> {
            list.unwrap()
                .workers
                .iter()
                .map(|w| w.slots_in_use)
                .collect()
        };
        let t0 = tokio::time::Instant::now();
        assert_eq!(slots(rx.recv().await.unwrap()), [0], "the list now");
        // Heard from, five times: no list.
        for at in 1..=5 {
            farm.lock().unwrap()[0].last_heartbeat_ms = 1_000 + at;
            bump.send_modify(|n| *n += 1);
            tokio::time::sleep(GAP).await;
        }
        assert!(rx.try_recv().is_err(), "a list for heartbeats alone");
        // Two changes 1 ms apart: one list, a gap after the last one.
        let before = tokio::time::Instant::now();
        farm.lock().unwrap()[0].slots_in_use = 1;
        bump.send_modify(|n| *n += 1);
        assert_eq!(slots(rx.recv().await.unwrap()), [1]);
        farm.lock().unwrap()[0].slots_in_use = 2;
        bump.send_modify(|n| *n += 1);
        tokio::time::sleep(Duration::from_millis(1)).await;
        farm.lock().unwrap().push(worker("arm", 0, 1_000));
        bump.send_modify(|n| *n += 1);
        let list = rx.recv().await.unwrap();
        assert_eq!(slots(list), [2, 0], "both changes in one list");
        assert_eq!(tokio::time::Instant::now() - before, GAP);
        assert!(before - t0 >= GAP * 5);
        // The term ends: the watcher is told, and the stream ends.
        stopped.cancel();
        bump.send_modify(|n| *n += 1);
        let end = rx.recv().await.unwrap().unwrap_err();
        assert_eq!(end.code(), tonic::Code::Unavailable);
        assert!(rx.recv().await.is_none());
    }
}
