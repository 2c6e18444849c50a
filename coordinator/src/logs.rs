//! Durable build logs: what workers stream for each platform, kept in the state store beside the
//! build records (never inside them), so `manifold logs ID` answers after a restart or a failover.
//!
//! - Lines arrive in the farm's effects ([`LogLines`]); the state writer buffers them and writes
//!   them in batches (a quarter of a second, or 256 KiB, whichever comes first, and always before
//!   a build's final record), as [`LogChunk`]s of one job each.
//! - **Bound**: each platform's output keeps its last [`MAX_LOG_BYTES_PER_JOB`] (1 MiB); the
//!   oldest chunks go first, and [`render`] puts a marker line where lines were dropped. A line
//!   longer than [`MAX_LOG_LINE_BYTES`] is cut.
//! - [`LogBook`] is the pure part: it numbers chunks and lines and says which chunks the bound
//!   drops. It is table-tested; the writer only applies what it decides.
//! - Retention: deleting a build from the store deletes its logs in the same transaction.

use std::collections::{BTreeMap, HashMap, VecDeque};

use manifold_proto::{BuildId, JobId, Platform};

/// Output kept per platform (job) of a build: the newest bytes of its lines.
pub const MAX_LOG_BYTES_PER_JOB: usize = 1 << 20;
/// Lines longer than this are cut (the worker cuts at the same length).
pub const MAX_LOG_LINE_BYTES: usize = 16 * 1024;
/// A chunk holds at most this many bytes of lines (far below etcd's 1.5 MiB request limit).
pub const MAX_CHUNK_BYTES: usize = 64 * 1024;

/// Lines of one job's attempt, as a transition hands them to the writer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLines {
    /// The build.
    pub build: BuildId,
    /// The job.
    pub job: JobId,
    /// Its platform.
    pub platform: Platform,
    /// The lines, oldest first.
    pub lines: Vec<String>,
}

/// Consecutive lines of one job as stored: one value under `logs/<build>/<seq>`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogChunk {
    /// The build.
    pub build: BuildId,
    /// Position among the build's chunks (all jobs), from 0: the order lines arrived in.
    pub seq: u64,
    /// The job.
    pub job: JobId,
    /// Its platform.
    pub platform: Platform,
    /// Number of the chunk's first line among the job's lines, from 0.
    pub first: u64,
    /// The lines.
    pub lines: Vec<String>,
}

impl LogChunk {
    fn bytes(&self) -> usize {
        self.lines.iter().map(String::len).sum()
    }
}

/// What the writer must do to the store for some appended lines.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LogWrite {
    /// Chunks to write.
    pub put: Vec<LogChunk>,
    /// Chunks to delete (build, seq): over the bound.
    pub drop: Vec<(BuildId, u64)>,
}

impl LogWrite {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.put.is_empty() && self.drop.is_empty()
    }
}

/// The stored chunks of the builds being written to: their numbering and sizes, so that the
/// bound is kept without reading the store back. Pure; see the module documentation.
#[derive(Debug)]
pub struct LogBook {
    limit: usize,
    builds: HashMap<BuildId, BookBuild>,
}

#[derive(Debug, Default)]
struct BookBuild {
    next_seq: u64,
    jobs: HashMap<JobId, BookJob>,
}

#[derive(Debug, Default)]
struct BookJob {
    next_line: u64,
    /// (seq, bytes) of its stored chunks, oldest first.
    chunks: VecDeque<(u64, usize)>,
    bytes: usize,
}

impl Default for LogBook {
    fn default() -> Self {
        Self::new(MAX_LOG_BYTES_PER_JOB)
    }
}

impl LogBook {
    /// A book keeping at most `limit` bytes per job.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            builds: HashMap::new(),
        }
    }

    /// Whether `build` is known (written to or loaded since it was last forgotten).
    pub fn knows(&self, build: BuildId) -> bool {
        self.builds.contains_key(&build)
    }

    /// A build submitted in this coordinator's term, once its first record is written: the
    /// store holds none of its lines, so its numbering starts at 0 without reading the store.
    pub fn begin(&mut self, build: BuildId) {
        self.builds.entry(build).or_default();
    }

    /// Takes in what the store already holds of `build` (a build that was logging when this
    /// coordinator took over), so that numbering goes on after it.
    pub fn load(&mut self, build: BuildId, stored: &[LogChunk]) {
        let b = self.builds.entry(build).or_default();
        for c in stored {
            b.next_seq = b.next_seq.max(c.seq + 1);
            let j = b.jobs.entry(c.job).or_default();
            j.next_line = j.next_line.max(c.first + c.lines.len() as u64);
            j.chunks.push_back((c.seq, c.bytes()));
            j.bytes += c.bytes();
        }
    }

    /// Appends lines: the chunks to write, and the oldest chunks of the job that no longer fit
    /// its bound (the newest chunk is always kept).
    pub fn append(&mut self, lines: LogLines) -> LogWrite {
        let limit = self.limit;
        let b = self.builds.entry(lines.build).or_default();
        let j = b.jobs.entry(lines.job).or_default();
        let mut out = LogWrite::default();
        let mut current: Option<LogChunk> = None;
        for mut line in lines.lines {
            cut(&mut line);
            let full = current
                .as_ref()
                .is_some_and(|c| c.bytes() + line.len() > MAX_CHUNK_BYTES.min(limit.max(1)));
            if full {
                out.put.extend(current.take());
            }
            let c = current.get_or_insert_with(|| {
                let c = LogChunk {
                    build: lines.build,
                    seq: b.next_seq,
                    job: lines.job,
                    platform: lines.platform.clone(),
                    first: j.next_line,
                    lines: Vec::new(),
                };
                b.next_seq += 1;
                c
            });
            c.lines.push(line);
            j.next_line += 1;
        }
        out.put.extend(current);
        for c in &out.put {
            j.chunks.push_back((c.seq, c.bytes()));
            j.bytes += c.bytes();
        }
        while j.bytes > limit && j.chunks.len() > 1 {
            let (seq, bytes) = j.chunks.pop_front().expect("more than one chunk");
            j.bytes -= bytes;
            match out.put.iter().position(|c| c.seq == seq) {
                // Dropped before it was ever written.
                Some(i) => {
                    out.put.remove(i);
                }
                None => out.drop.push((lines.build, seq)),
            }
        }
        out
    }

    /// Forgets a build (it ended, and its last lines are written).
    pub fn forget(&mut self, build: BuildId) {
        self.builds.remove(&build);
    }
}

/// Cuts a line to [`MAX_LOG_LINE_BYTES`] on a character boundary.
fn cut(line: &mut String) {
    if line.len() > MAX_LOG_LINE_BYTES {
        let mut at = MAX_LOG_LINE_BYTES;
        while !line.is_char_boundary(at) {
            at -= 1;
        }
        line.truncate(at);
    }
}

/// The marker line put where `dropped` earlier lines of `platform` are missing.
pub fn dropped_marker(dropped: u64, platform: &Platform) -> String {
    format!(
        "[manifold] {dropped} earlier line{} of {platform} dropped: the coordinator keeps the last {} KiB of each platform's output",
        if dropped == 1 { "" } else { "s" },
        MAX_LOG_BYTES_PER_JOB / 1024
    )
}

/// A build's stored lines in the order they arrived (of `only` when given), with a marker line
/// before each job's first kept line when its earlier lines were dropped.
pub fn render(mut chunks: Vec<LogChunk>, only: Option<&Platform>) -> Vec<(Platform, String)> {
    chunks.sort_by_key(|c| c.seq);
    let mut seen: BTreeMap<JobId, ()> = BTreeMap::new();
    let mut out = Vec::new();
    for c in chunks {
        if only.is_some_and(|p| *p != c.platform) {
            continue;
        }
        if seen.insert(c.job, ()).is_none() && c.first > 0 {
            out.push((c.platform.clone(), dropped_marker(c.first, &c.platform)));
        }
        out.extend(c.lines.into_iter().map(|l| (c.platform.clone(), l)));
    }
    out
}

/// What a watcher of a build restored from the store (a restart, a failover) is shown before the
/// build's in-memory history: the stored lines that came before the last `recent[p]` lines of
/// each platform `p`, which that history holds already (it began at the restore). Rendered as
/// [`render`] does, in the order the lines arrived, with its markers.
pub fn before_recent(
    chunks: Vec<LogChunk>,
    recent: &BTreeMap<Platform, u64>,
) -> Vec<(Platform, String)> {
    // Lines are numbered per job from its first line on, dropped ones included: the cut is
    // exact whatever the bound dropped.
    let mut total: HashMap<JobId, u64> = HashMap::new();
    for c in &chunks {
        let end = c.first + c.lines.len() as u64;
        let t = total.entry(c.job).or_default();
        *t = (*t).max(end);
    }
    let kept = chunks
        .into_iter()
        .filter_map(|mut c| {
            let shown = recent.get(&c.platform).copied().unwrap_or(0);
            let cut = total[&c.job].saturating_sub(shown);
            if c.first >= cut {
                return None;
            }
            c.lines.truncate((cut - c.first) as usize);
            Some(c)
        })
        .collect();
    render(kept, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(build: BuildId, job: JobId, n: std::ops::Range<usize>, width: usize) -> LogLines {
        LogLines {
            build,
            job,
            platform: Platform::linux_amd64(),
            lines: n.map(|i| format!("{i:0width$}")).collect(),
        }
    }

    /// Applies writes to a map standing for the store.
    fn apply(store: &mut BTreeMap<u64, LogChunk>, w: LogWrite) {
        for (_, seq) in w.drop {
            assert!(
                store.remove(&seq).is_some(),
                "dropped chunk {seq} was stored"
            );
        }
        for c in w.put {
            assert!(store.insert(c.seq, c).is_none(), "chunk numbers are unique");
        }
    }

    #[test]
    fn lines_are_numbered_in_chunks_of_one_job_each() {
        let (b, x, y) = (BuildId::new(), JobId::new(), JobId::new());
        let mut book = LogBook::new(1000);
        let w = book.append(lines(b, x, 0..3, 2));
        assert_eq!(w.put.len(), 1);
        assert_eq!((w.put[0].seq, w.put[0].first), (0, 0));
        assert_eq!(w.put[0].lines, ["00", "01", "02"]);
        let w = book.append(lines(b, y, 0..2, 2));
        assert_eq!((w.put[0].seq, w.put[0].first, w.put[0].job), (1, 0, y));
        let w = book.append(lines(b, x, 3..5, 2));
        assert_eq!((w.put[0].seq, w.put[0].first), (2, 3));
        assert!(w.drop.is_empty());
    }

    #[test]
    fn the_bound_keeps_the_tail_of_each_job_and_render_marks_the_cut() {
        // Limit 100 bytes per job, lines of 10 bytes: 10 lines fit.
        let (b, x, y) = (BuildId::new(), JobId::new(), JobId::new());
        let mut book = LogBook::new(100);
        let mut store = BTreeMap::new();
        for i in 0..5 {
            apply(&mut store, book.append(lines(b, x, i * 6..i * 6 + 6, 10)));
        }
        apply(&mut store, book.append(lines(b, y, 0..3, 10)));
        let x_lines: usize = store
            .values()
            .filter(|c| c.job == x)
            .map(|c| c.lines.len())
            .sum();
        assert!(x_lines <= 10, "{x_lines} lines of x kept");
        assert!(x_lines >= 6, "the newest chunk is kept: {x_lines}");
        let shown = render(store.values().cloned().collect(), None);
        let text: Vec<&str> = shown.iter().map(|(_, l)| l.as_str()).collect();
        let dropped = 30 - x_lines;
        assert_eq!(
            text[0],
            dropped_marker(dropped as u64, &Platform::linux_amd64())
        );
        assert!(text[0].contains(&format!("{dropped} earlier lines of linux/amd64 dropped")));
        // The tail of x, in order, then y untouched.
        let expected_x: Vec<String> = (30 - x_lines..30).map(|i| format!("{i:010}")).collect();
        assert_eq!(
            text[1..=x_lines],
            expected_x.iter().map(String::as_str).collect::<Vec<_>>()
        );
        assert_eq!(
            &text[x_lines + 1..],
            ["0000000000", "0000000001", "0000000002"]
        );
    }

    #[test]
    fn one_append_larger_than_the_bound_keeps_only_its_newest_chunk() {
        let (b, x) = (BuildId::new(), JobId::new());
        let mut book = LogBook::new(50);
        let w = book.append(lines(b, x, 0..20, 10));
        // Chunks of at most 50 bytes: 4 of 5 lines; only the last survives, never written twice.
        assert!(w.drop.is_empty(), "nothing was stored yet: {w:?}");
        assert_eq!(w.put.len(), 1);
        assert_eq!(w.put[0].first, 15);
        assert_eq!(w.put[0].lines.len(), 5);
    }

    #[test]
    fn numbering_goes_on_after_what_the_store_holds() {
        let (b, x) = (BuildId::new(), JobId::new());
        let mut first = LogBook::new(1000);
        let mut store = BTreeMap::new();
        apply(&mut store, first.append(lines(b, x, 0..4, 3)));
        // Another coordinator takes over: it loads what is stored before appending.
        let mut next = LogBook::new(1000);
        assert!(!next.knows(b));
        next.load(b, &store.values().cloned().collect::<Vec<_>>());
        assert!(next.knows(b));
        let w = next.append(lines(b, x, 4..6, 3));
        assert_eq!((w.put[0].seq, w.put[0].first), (1, 4));
        next.forget(b);
        assert!(!next.knows(b));
    }

    #[test]
    fn render_filters_by_platform_and_cuts_long_lines() {
        let (b, x) = (BuildId::new(), JobId::new());
        let mut book = LogBook::new(MAX_LOG_BYTES_PER_JOB);
        let mut long = LogLines {
            build: b,
            job: x,
            platform: Platform::linux_arm64(),
            lines: vec!["é".repeat(MAX_LOG_LINE_BYTES)],
        };
        long.lines.push("next".into());
        let w = book.append(long);
        assert!(w.put[0].lines[0].len() <= MAX_LOG_LINE_BYTES);
        let chunks = w.put;
        assert_eq!(render(chunks.clone(), Some(&Platform::linux_amd64())), []);
        let shown = render(chunks, Some(&Platform::linux_arm64()));
        assert_eq!(shown.len(), 2);
        assert_eq!(shown[1].1, "next");
    }

    #[test]
    fn before_recent_leaves_out_the_lines_the_history_holds() {
        let (b, x, y) = (BuildId::new(), JobId::new(), JobId::new());
        let arm = |mut l: LogLines| {
            l.platform = Platform::linux_arm64();
            l
        };
        // x (amd64): lines 0..30 of 10 bytes, bound 100 bytes: only its tail is stored.
        // y (arm64): lines 0..4, interleaved.
        let mut book = LogBook::new(100);
        let mut store = BTreeMap::new();
        apply(&mut store, book.append(arm(lines(b, y, 0..2, 10))));
        for i in 0..5 {
            apply(&mut store, book.append(lines(b, x, i * 6..i * 6 + 6, 10)));
        }
        apply(&mut store, book.append(arm(lines(b, y, 2..4, 10))));
        let stored: Vec<LogChunk> = store.values().cloned().collect();
        let text = |shown: Vec<(Platform, String)>| -> Vec<String> {
            shown.into_iter().map(|(p, l)| format!("{p} {l}")).collect()
        };
        let all = text(render(stored.clone(), None));
        let check = |recent: &[(Platform, u64)], expected: Vec<String>| {
            let recent: BTreeMap<Platform, u64> = recent.iter().cloned().collect();
            assert_eq!(
                text(before_recent(stored.clone(), &recent)),
                expected,
                "{recent:?}"
            );
        };
        // Nothing recent (a finished build restored): everything stored, as `logs` shows it.
        check(&[], all.clone());
        let amd = |n: usize| format!("linux/amd64 {n:010}");
        let arm64 = |n: usize| format!("linux/arm64 {n:010}");
        // The history holds amd64's last 4 lines and arm64's last one.
        let mut expected = all.clone();
        expected.retain(|l| !(26..30).any(|n| *l == amd(n)) && *l != arm64(3));
        check(
            &[(Platform::linux_amd64(), 4), (Platform::linux_arm64(), 1)],
            expected,
        );
        // It holds more amd64 lines than are stored (the bound dropped the rest): no amd64
        // line and no marker for it, arm64 untouched.
        let arm_only: Vec<String> = all
            .iter()
            .filter(|l| l.starts_with("linux/arm64"))
            .cloned()
            .collect();
        check(&[(Platform::linux_amd64(), 29)], arm_only);
        assert_eq!(all[0], arm64(0));
        assert!(
            all[2].contains("earlier lines of linux/amd64 dropped"),
            "{all:?}"
        );
    }
}
