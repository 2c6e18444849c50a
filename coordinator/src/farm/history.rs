//! How long finished builds stay in memory and in the store: pure decisions, time passed in.
//!
//! - A finished build is **held** (its record, history and log lines in the farm's memory) until
//!   `keep_finished_for` after it finished, and only the newest `keep_finished` finished builds
//!   are held; then it is **evicted**: only its summary stays in memory (for listing, paging and
//!   access checks), and the farm reads its record from the store when asked.
//! - A finished build is **deleted** from the store, with its logs, `retention` after it
//!   finished (`None` keeps every build).
//! - After a pass that deleted builds and left none due, the store is compacted, at most once
//!   per [`COMPACT_EVERY`] (redb does not shrink its file by itself; etcd compacts by itself).
//!
//! Unfinished builds are never evicted nor deleted.

use std::collections::HashSet;
use std::time::Duration;

use manifold_proto::BuildId;

/// Finished builds held in full, at most, by default (`--keep-finished`).
pub const DEFAULT_KEEP_FINISHED: usize = 1000;
/// How long a finished build is held in full, by default (`--keep-finished-for`).
pub const DEFAULT_KEEP_FINISHED_FOR: Duration = Duration::from_secs(3600);
/// How long the store keeps a finished build, by default (`--retention`).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
/// Builds evicted, and builds deleted, per pass at most (a pass runs on every tick).
pub const BATCH: usize = 500;
/// The store is compacted at most this often.
pub const COMPACT_EVERY: Duration = Duration::from_secs(3600);

/// How many finished builds the farm holds, and for how long the store keeps them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryPolicy {
    /// Finished builds held in full at most (the latest finished).
    pub keep_finished: usize,
    /// A finished build is evicted this long after it finished.
    pub keep_finished_for: Duration,
    /// A finished build is deleted from the store this long after it finished; `None`: never.
    pub retention: Option<Duration>,
}

impl Default for HistoryPolicy {
    fn default() -> Self {
        Self {
            keep_finished: DEFAULT_KEEP_FINISHED,
            keep_finished_for: DEFAULT_KEEP_FINISHED_FOR,
            retention: Some(DEFAULT_RETENTION),
        }
    }
}

/// What one pass does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Held finished builds that leave memory (they stay in the store).
    pub evict: Vec<BuildId>,
    /// Finished builds deleted from the store (and from memory, if held).
    pub delete: Vec<BuildId>,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The pass at `now_ms`: `held` are the finished builds held in full and `stored` every finished
/// build, each as (finished at, Unix ms; id), oldest finish first; at most `batch` of each kind.
pub fn plan(
    held: impl IntoIterator<Item = (i64, BuildId)>,
    held_len: usize,
    stored: impl IntoIterator<Item = (i64, BuildId)>,
    now_ms: i64,
    policy: &HistoryPolicy,
    batch: usize,
) -> Plan {
    let delete: Vec<BuildId> = match policy.retention {
        Some(r) => (stored.into_iter())
            .take_while(|(at, _)| at.saturating_add(ms(r)) <= now_ms)
            .take(batch)
            .map(|(_, id)| id)
            .collect(),
        None => Vec::new(),
    };
    let deleted: HashSet<BuildId> = delete.iter().copied().collect();
    let keep_for = ms(policy.keep_finished_for);
    let mut left = held_len;
    let mut evict = Vec::new();
    for (at, id) in held {
        if deleted.contains(&id) {
            left -= 1;
            continue;
        }
        if evict.len() == batch {
            break;
        }
        if left > policy.keep_finished || at.saturating_add(keep_for) <= now_ms {
            evict.push(id);
            left -= 1;
        } else {
            break; // the rest finished later: neither too many nor too old
        }
    }
    Plan { evict, delete }
}

/// Of the finished builds in the store (oldest finish first), those a coordinator starting at
/// `now_ms` holds in full: what [`plan`] would leave held, so a restart holds what it held.
pub fn held_at_start(
    finished: &[(i64, BuildId)],
    now_ms: i64,
    policy: &HistoryPolicy,
) -> Vec<BuildId> {
    let p = plan(
        finished.iter().copied(),
        finished.len(),
        finished.iter().copied(),
        now_ms,
        policy,
        usize::MAX,
    );
    let gone: HashSet<BuildId> = p.evict.into_iter().chain(p.delete).collect();
    (finished.iter())
        .map(|(_, id)| *id)
        .filter(|id| !gone.contains(id))
        .collect()
}

/// Whether to compact the store now: builds were deleted since the last compaction, none is
/// due any more (`drained`), and the last compaction (`None`: none by this coordinator) was at
/// least [`COMPACT_EVERY`] ago.
pub fn compaction_due(deleted_since: usize, drained: bool, since_last: Option<Duration>) -> bool {
    deleted_since > 0 && drained && since_last.is_none_or(|d| d >= COMPACT_EVERY)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1000;

    fn policy(keep: usize, for_s: u64, retention_s: Option<u64>) -> HistoryPolicy {
        HistoryPolicy {
            keep_finished: keep,
            keep_finished_for: Duration::from_secs(for_s),
            retention: retention_s.map(Duration::from_secs),
        }
    }

    /// Builds named by index, finished at the given seconds (oldest first); held: all of them.
    /// Returns the evicted and deleted indexes at `now_s`.
    fn check(
        finished_s: &[i64],
        policy: &HistoryPolicy,
        now_ms: i64,
        batch: usize,
    ) -> (Vec<usize>, Vec<usize>) {
        let ids: Vec<BuildId> = finished_s.iter().map(|_| BuildId::new()).collect();
        let rows: Vec<(i64, BuildId)> = finished_s
            .iter()
            .map(|s| s * S)
            .zip(ids.iter().copied())
            .collect();
        let p = plan(rows.clone(), rows.len(), rows, now_ms, policy, batch);
        let index = |v: &[BuildId]| {
            v.iter()
                .map(|id| ids.iter().position(|x| x == id).unwrap())
                .collect()
        };
        (index(&p.evict), index(&p.delete))
    }

    #[test]
    fn builds_leave_memory_by_age_and_by_count_and_the_store_by_retention() {
        // (finished at s, policy, now ms, batch, evicted, deleted)
        type Row = (
            &'static [i64],
            HistoryPolicy,
            i64,
            usize,
            &'static [usize],
            &'static [usize],
        );
        let table: Vec<Row> = vec![
            // Age: held for exactly 10 s after finishing.
            (&[0, 5], policy(10, 10, None), 9_999, 10, &[], &[]),
            (&[0, 5], policy(10, 10, None), 10_000, 10, &[0], &[]),
            (&[0, 5], policy(10, 10, None), 15_000, 10, &[0, 1], &[]),
            // Count: at most two held, the oldest go first, however young.
            (
                &[0, 1, 2, 3],
                policy(2, 3600, None),
                4_000,
                10,
                &[0, 1],
                &[],
            ),
            (&[0, 1], policy(2, 3600, None), 4_000, 10, &[], &[]),
            (
                &[0, 1, 2],
                policy(0, 3600, None),
                4_000,
                10,
                &[0, 1, 2],
                &[],
            ),
            // Retention: deleted exactly 20 s after finishing; a deleted build is not also evicted.
            (
                &[0, 5, 30],
                policy(10, 10, Some(20)),
                19_999,
                10,
                &[0, 1],
                &[],
            ),
            (
                &[0, 5, 30],
                policy(10, 10, Some(20)),
                20_000,
                10,
                &[1],
                &[0],
            ),
            (
                &[0, 5, 30],
                policy(10, 10, Some(20)),
                25_000,
                10,
                &[],
                &[0, 1],
            ),
            // Retention shorter than the window: deletion takes held builds out of memory too.
            (&[0, 5], policy(10, 3600, Some(3)), 6_000, 10, &[], &[0]),
            (&[0, 5], policy(10, 3600, Some(3)), 8_000, 10, &[], &[0, 1]),
            // Deleted held builds count against the limit: one left of two, none evicted.
            (&[0, 5], policy(1, 3600, Some(3)), 3_000, 10, &[], &[0]),
            // Bounded passes: at most `batch` of each.
            (
                &[0, 1, 2, 3, 4],
                policy(0, 0, None),
                10_000,
                2,
                &[0, 1],
                &[],
            ),
            (
                &[0, 1, 2, 3, 4],
                policy(10, 3600, Some(1)),
                10_000,
                3,
                &[],
                &[0, 1, 2],
            ),
        ];
        for (finished, policy, now, batch, evict, delete) in table {
            let (e, d) = check(finished, &policy, now, batch);
            assert_eq!(
                (e.as_slice(), d.as_slice()),
                (evict, delete),
                "{finished:?} {policy:?} at {now} ms"
            );
        }
    }

    #[test]
    fn a_restart_holds_what_the_passes_would_have_left() {
        let ids: Vec<BuildId> = (0..4).map(|_| BuildId::new()).collect();
        let finished: Vec<(i64, BuildId)> = [0, 10, 20, 30]
            .iter()
            .map(|s| s * S)
            .zip(ids.iter().copied())
            .collect();
        // Two held at most, for 25 s: at 40 s the build finished at 10 s is too old.
        assert_eq!(
            held_at_start(&finished, 40 * S, &policy(2, 25, None)),
            vec![ids[2], ids[3]]
        );
        assert_eq!(
            held_at_start(&finished, 46 * S, &policy(2, 25, None)),
            vec![ids[3]]
        );
        assert_eq!(
            held_at_start(&finished, 40 * S, &policy(10, 3600, Some(25))),
            vec![ids[2], ids[3]]
        );
        assert!(held_at_start(&[], 0, &HistoryPolicy::default()).is_empty());
    }

    #[test]
    fn compaction_follows_a_drained_deletion_at_most_hourly() {
        let hour = COMPACT_EVERY;
        for (deleted, drained, since, due) in [
            (0, true, None, false),
            (3, false, None, false),
            (3, true, None, true),
            (3, true, Some(hour - Duration::from_millis(1)), false),
            (3, true, Some(hour), true),
        ] {
            assert_eq!(
                compaction_due(deleted, drained, since),
                due,
                "{deleted} {drained} {since:?}"
            );
        }
    }

    #[test]
    fn the_defaults_are_documented_ones() {
        let p = HistoryPolicy::default();
        assert_eq!(
            (p.keep_finished, p.keep_finished_for, p.retention),
            (
                1000,
                Duration::from_secs(3600),
                Some(Duration::from_secs(2_592_000))
            )
        );
    }
}
