//! Keeps BuildKit's build cache under the worker's policy (`--cache-max-size`, `--cache-max-age`)
//! through the engine's own control API, as `docker buildx prune` does, and measures it
//! (`Control.DiskUsage`, what `docker buildx du` shows).
//!
//! The policy becomes `Control.Prune` calls ([`prune_requests`]), in this order:
//! 1. an age limit: `keepDuration` (buildx's `--filter until=`): records not used within it go;
//! 2. a size limit: `reservedSpace` (buildx's `--keep-storage`, BuildKit < 0.17's `keepBytes`, the
//!    same field) and `maxUsedSpace` (BuildKit 0.17+): the least recently used records go, one by
//!    one, until the cache is below the limit. BuildKit counts only records not shared with the
//!    daemon's images (the image store keeps those). A limit of 0 removes every unused record.
//!
//! BuildKit itself never removes a record in use: one that a running build holds is skipped
//! (cache/manager.go keeps every record with references). So a prune cannot break a running job;
//! it can at most cost it a cache hit on a record it has not reached yet. The worker therefore
//! prunes after a job ends when no other job runs, like buildkitd's own GC after each solve, at
//! most every [`BUSY_GAP`] while other jobs run, and on a timer so that an idle worker ages out
//! its records and trims what the machine's owner built ([`Schedule`], pure, time passed in).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::moby::buildkit::v1::{DiskUsageRequest, PruneRequest, UsageRecord};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::Endpoint;

/// Longest `--cache-max-age` accepted (a year).
pub const MAX_AGE_LIMIT: Duration = Duration::from_secs(365 * 24 * 3600);
/// The timer's period: the policy is applied at least this often, jobs or not.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(10 * 60);
/// While other jobs run, a job that ends prunes only if the last prune is this old (buildkitd
/// throttles its own GC to once a minute).
pub const BUSY_GAP: Duration = Duration::from_secs(60);
/// How long BuildKit has to measure its cache.
const DISK_USAGE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long one prune may take.
const PRUNE_TIMEOUT: Duration = Duration::from_secs(600);

/// How much build cache the worker keeps. Both limits off (the default): BuildKit's cache is left
/// alone, as the daemon's own GC settings have it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CachePolicy {
    /// Most bytes the cache may hold (`--cache-max-size`); `Some(0)` keeps no unused record.
    pub max_size: Option<u64>,
    /// Records not used for longer go (`--cache-max-age`).
    pub max_age: Option<Duration>,
}

impl CachePolicy {
    /// Whether any limit is set.
    pub fn is_set(&self) -> bool {
        self.max_size.is_some() || self.max_age.is_some()
    }

    /// The timer's period: [`PRUNE_INTERVAL`], or half the age limit when that is shorter, so a
    /// record is gone at most half its limit after it expired.
    pub fn interval(&self) -> Duration {
        self.max_age
            .map_or(PRUNE_INTERVAL, |age| (age / 2).min(PRUNE_INTERVAL))
            .max(Duration::from_secs(1))
    }
}

/// Parses `--cache-max-age`: a duration as the other flags take it (e.g. `48h`, `30m`), at most
/// [`MAX_AGE_LIMIT`].
pub fn parse_max_age(text: &str) -> Result<Duration, String> {
    let age = crate::config::parse_duration(text).map_err(|e| format!("--cache-max-age: {e}"))?;
    if age > MAX_AGE_LIMIT {
        return Err(format!(
            "--cache-max-age `{text}` is longer than a year (8760h): give a shorter age, e.g. 168h"
        ));
    }
    Ok(age)
}

/// What BuildKit's cache holds (`Control.DiskUsage`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheUsage {
    /// Bytes of the records not shared with the daemon's images: what the size limit is checked
    /// against.
    pub bytes: u64,
    /// Of those, the bytes no build uses now: what a prune can free.
    pub reclaimable: u64,
    /// Bytes shared with the daemon's images (freed when those images are removed).
    pub shared: u64,
    /// Number of cache records.
    pub records: usize,
}

/// What one prune removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Bytes freed.
    pub bytes: u64,
    /// Records removed.
    pub records: usize,
}

/// The engine could not be asked about its cache, or failed to prune it.
#[derive(Debug, thiserror::Error)]
#[error("buildkit cache of the docker daemon at {host}: {action} failed: {message}")]
pub struct CacheError {
    /// The engine's address.
    pub host: String,
    /// What was being done.
    pub action: &'static str,
    /// Why it failed.
    pub message: String,
}

/// Sums DiskUsage records. A size BuildKit has not computed yet (negative) counts as 0.
pub fn usage(records: &[UsageRecord]) -> CacheUsage {
    records.iter().fold(
        CacheUsage {
            records: records.len(),
            ..CacheUsage::default()
        },
        |mut u, r| {
            let size = u64::try_from(r.size).unwrap_or(0);
            if r.shared {
                u.shared += size;
            } else {
                u.bytes += size;
                if !r.in_use {
                    u.reclaimable += size;
                }
            }
            u
        },
    )
}

/// The Prune calls that apply `policy`, in order; none when no limit is set.
pub fn prune_requests(policy: &CachePolicy) -> Vec<PruneRequest> {
    let base = PruneRequest {
        filter: Vec::new(),
        all: false,
        keep_duration: 0,
        reserved_space: 0,
        max_used_space: 0,
        min_free_space: 0,
    };
    if policy.max_size == Some(0) {
        // Every unused record; the age limit cannot keep more.
        return vec![base];
    }
    let age = policy.max_age.map(|age| PruneRequest {
        keep_duration: i64::try_from(age.as_nanos()).unwrap_or(i64::MAX),
        ..base.clone()
    });
    let size = policy.max_size.map(|bytes| {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        PruneRequest {
            // Field 4: `keepBytes` before BuildKit 0.17 (Docker < 28), `reservedSpace` since,
            // where `maxUsedSpace` is the cap and the larger of the two wins.
            reserved_space: bytes,
            max_used_space: bytes,
            ..base.clone()
        }
    });
    age.into_iter().chain(size).collect()
}

/// Measures BuildKit's cache at `endpoint`.
pub async fn disk_usage(endpoint: &Endpoint) -> Result<CacheUsage, CacheError> {
    let error = |action, message| CacheError {
        host: endpoint.host().to_owned(),
        action,
        message,
    };
    let Endpoint::Moby { address, .. } = endpoint;
    let call = async {
        let mut control = super::control_client(address)
            .await
            .map_err(|e| error("connecting to the control API", e))?;
        let response = control
            .disk_usage(DiskUsageRequest {
                filter: Vec::new(),
                age_limit: 0,
            })
            .await
            .map_err(|s| error("measuring the cache", s.message().to_owned()))?;
        Ok(usage(&response.into_inner().record))
    };
    tokio::time::timeout(DISK_USAGE_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| {
            Err(error(
                "measuring the cache",
                format!("no answer within {DISK_USAGE_TIMEOUT:?}"),
            ))
        })
}

/// Applies `policy` to BuildKit's cache at `endpoint` once.
pub async fn prune(endpoint: &Endpoint, policy: &CachePolicy) -> Result<Pruned, CacheError> {
    let error = |action, message| CacheError {
        host: endpoint.host().to_owned(),
        action,
        message,
    };
    let Endpoint::Moby { address, .. } = endpoint;
    let call = async {
        let mut control = super::control_client(address)
            .await
            .map_err(|e| error("connecting to the control API", e))?;
        let mut pruned = Pruned::default();
        for request in prune_requests(policy) {
            let mut removed = control
                .prune(request)
                .await
                .map_err(|s| error("pruning", s.message().to_owned()))?
                .into_inner();
            while let Some(record) = removed
                .message()
                .await
                .map_err(|s| error("pruning", s.message().to_owned()))?
            {
                pruned.bytes += u64::try_from(record.size).unwrap_or(0);
                pruned.records += 1;
            }
        }
        Ok(pruned)
    };
    tokio::time::timeout(PRUNE_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| {
            Err(error(
                "pruning",
                format!("not done within {PRUNE_TIMEOUT:?}"),
            ))
        })
}

/// When the worker prunes. Pure: the caller says when jobs end and passes the time.
#[derive(Clone, Debug)]
pub struct Schedule {
    interval: Duration,
    busy_gap: Duration,
    last: Option<Instant>,
    job_ended: bool,
}

impl Schedule {
    /// A schedule pruning at least every `interval`, and after a job ends: at once if no other
    /// job runs, else once the last prune is `busy_gap` old.
    pub fn new(interval: Duration, busy_gap: Duration) -> Self {
        Self {
            interval,
            busy_gap,
            last: None,
            job_ended: false,
        }
    }

    /// A job ended.
    pub fn job_ended(&mut self) {
        self.job_ended = true;
    }

    /// Whether to prune at `now` with `running` jobs. The first call is always due: a worker
    /// starts by applying its policy to what earlier runs left.
    pub fn due(&self, now: Instant, running: usize) -> bool {
        let Some(last) = self.last else { return true };
        let since = now.saturating_duration_since(last);
        since >= self.interval || (self.job_ended && (running == 0 || since >= self.busy_gap))
    }

    /// A prune was tried at `now` (done or failed: a failure waits for the next occasion).
    pub fn pruned(&mut self, now: Instant) {
        self.last = Some(now);
        self.job_ended = false;
    }

    /// The latest moment to look again when no job ends before it.
    pub fn next_check(&self, now: Instant) -> Instant {
        let Some(last) = self.last else { return now };
        let timer = last + self.interval;
        if self.job_ended {
            timer.min(last + self.busy_gap)
        } else {
            timer
        }
    }
}

/// Applies `policy` to the engine's cache until `stop`: at start, when [`Schedule`] says so after
/// `job_ended` is notified (`running` tells how many jobs still run), and on its timer. Returns at
/// once when no limit is set. A failed prune is logged and tried again at the next occasion.
pub async fn keep_pruned(
    endpoint: Endpoint,
    policy: CachePolicy,
    job_ended: Arc<Notify>,
    running: impl Fn() -> usize,
    stop: CancellationToken,
) {
    if !policy.is_set() {
        return;
    }
    let mut schedule = Schedule::new(policy.interval(), BUSY_GAP);
    loop {
        if schedule.due(Instant::now(), running()) {
            tokio::select! {
                () = stop.cancelled() => return,
                result = prune(&endpoint, &policy) => match result {
                    Ok(p) if p.records > 0 => tracing::info!(
                        freed = %crate::health::human_bytes(p.bytes),
                        records = p.records,
                        "pruned the buildkit cache"
                    ),
                    Ok(_) => tracing::debug!("the buildkit cache is within its limits"),
                    Err(e) => tracing::warn!("{e}; trying again after the next job"),
                },
            }
            schedule.pruned(Instant::now());
        }
        let wake = tokio::time::Instant::from_std(schedule.next_check(Instant::now()));
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(wake) => {}
            () = job_ended.notified() => schedule.job_ended(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(size: i64, in_use: bool, shared: bool) -> UsageRecord {
        UsageRecord {
            size,
            in_use,
            shared,
            ..UsageRecord::default()
        }
    }

    #[test]
    fn usage_counts_what_the_limit_is_checked_against() {
        let u = usage(&[
            record(100, false, false),
            record(30, true, false),
            record(500, false, true),
            record(-1, false, false),
        ]);
        assert_eq!(
            u,
            CacheUsage {
                bytes: 130,
                reclaimable: 100,
                shared: 500,
                records: 4
            }
        );
        assert_eq!(usage(&[]), CacheUsage::default());
    }

    #[test]
    fn a_policy_becomes_prune_calls_as_buildx_sends_them() {
        // (max size, max age) -> [(keepDuration, reservedSpace, maxUsedSpace)]
        let check = |max_size: Option<u64>, max_age: Option<Duration>, want: &[(i64, i64, i64)]| {
            let got: Vec<(i64, i64, i64)> = prune_requests(&CachePolicy { max_size, max_age })
                .iter()
                .inspect(|r| {
                    assert!(
                        !r.all && r.filter.is_empty() && r.min_free_space == 0,
                        "{r:?}"
                    )
                })
                .map(|r| (r.keep_duration, r.reserved_space, r.max_used_space))
                .collect();
            assert_eq!(got, want, "{max_size:?} {max_age:?}");
        };
        let hour = Duration::from_secs(3600);
        check(None, None, &[]);
        check(Some(5 << 30), None, &[(0, 5 << 30, 5 << 30)]);
        check(None, Some(hour), &[(3_600_000_000_000, 0, 0)]);
        // Age first, then the size limit over what is left.
        check(
            Some(1 << 20),
            Some(48 * hour),
            &[(172_800_000_000_000, 0, 0), (0, 1 << 20, 1 << 20)],
        );
        // 0 keeps nothing unused, whatever the age.
        check(Some(0), Some(hour), &[(0, 0, 0)]);
    }

    #[test]
    fn the_timer_runs_at_half_the_age_limit_at_most_every_ten_minutes() {
        let policy = |max_age| CachePolicy {
            max_size: Some(1),
            max_age,
        };
        assert_eq!(policy(None).interval(), PRUNE_INTERVAL);
        assert_eq!(
            policy(Some(Duration::from_secs(48 * 3600))).interval(),
            PRUNE_INTERVAL
        );
        assert_eq!(
            policy(Some(Duration::from_secs(60))).interval(),
            Duration::from_secs(30)
        );
        assert_eq!(
            policy(Some(Duration::from_millis(100))).interval(),
            Duration::from_secs(1)
        );
        assert!(!CachePolicy::default().is_set());
    }

    #[test]
    fn max_age_is_a_duration_of_at_most_a_year() {
        assert_eq!(parse_max_age("48h"), Ok(Duration::from_secs(48 * 3600)));
        assert_eq!(parse_max_age("8760h"), Ok(MAX_AGE_LIMIT));
        let err = parse_max_age("8761h").unwrap_err();
        assert!(err.contains("`8761h` is longer than a year"), "{err}");
        let err = parse_max_age("2d").unwrap_err();
        assert!(
            err.starts_with("--cache-max-age: invalid duration `2d`"),
            "{err}"
        );
    }

    #[test]
    fn prunes_after_an_idle_job_end_when_busy_at_most_every_gap_and_on_the_timer() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let interval = Duration::from_secs(600);
        let gap = Duration::from_secs(60);
        let fresh = Schedule::new(interval, gap);
        // At start, whatever runs.
        assert!(fresh.due(t0, 0));
        assert!(fresh.due(t0, 2));
        assert_eq!(fresh.next_check(t0), t0);

        let mut s = fresh.clone();
        s.pruned(t0);
        // (seconds since the prune, a job ended, jobs running) -> due
        let table: [(u64, bool, usize, bool); 10] = [
            (1, false, 0, false),
            (599, false, 0, false),
            (600, false, 0, true),
            (600, false, 3, true),
            (1, true, 0, true),
            (1, true, 1, false),
            (59, true, 2, false),
            (60, true, 2, true),
            (700, true, 1, true),
            (0, true, 0, true),
        ];
        for (since, ended, running, want) in table {
            let mut case = s.clone();
            if ended {
                case.job_ended();
            }
            assert_eq!(
                case.due(at(since), running),
                want,
                "{since}s, ended {ended}, running {running}"
            );
        }
        assert_eq!(s.next_check(at(5)), at(600));
        let mut ended = s.clone();
        ended.job_ended();
        assert_eq!(ended.next_check(at(5)), at(60));
        // A prune clears the job end and restarts both clocks.
        ended.pruned(at(30));
        assert!(!ended.due(at(31), 0));
        assert_eq!(ended.next_check(at(31)), at(630));
    }
}
