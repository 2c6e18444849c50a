//! Whether this worker can take a job: its Docker daemon answers, and its cache dir's file system
//! has at least `--min-free-disk` free (contexts and scratch space live there). A worker that
//! cannot is reported unhealthy with the reason in its heartbeats, so the coordinator sends its
//! jobs elsewhere and `manifold workers` shows why. Each check also measures the disk (free
//! space, bytes under the cache dir, the daemon's BuildKit cache), which every heartbeat carries.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use manifold_proto::DiskUsage;
pub use manifold_proto::disk::human_bytes;
use tokio::sync::{Notify, watch};

use crate::buildkit::Endpoint;
use crate::docker::DockerEngine;

/// How long the daemon has to answer a health check.
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a worker takes no job after one ran out of disk on it, so that the retry goes to
/// another worker (and its other queued jobs too) while the space is freed.
pub const OUT_OF_DISK_HOLD: Duration = Duration::from_secs(60);
/// How often BuildKit's cache is measured for the heartbeats (`Control.DiskUsage`).
pub const BUILD_CACHE_EVERY: Duration = Duration::from_secs(30);

/// The worker's health as the session reports it: the reason it takes no job (if any), and its
/// disk at the last check. [`Monitor::watch`] keeps both current.
#[derive(Debug)]
pub struct Monitor {
    reason: watch::Sender<Option<String>>,
    disk: Mutex<Option<DiskUsage>>,
    check_now: Notify,
    /// When a job last ran out of disk here.
    out_of_disk: Mutex<Option<Instant>>,
}

impl Monitor {
    /// A healthy monitor whose disk is `disk` until the first check (the hello reports it).
    pub fn new(disk: Option<DiskUsage>) -> Self {
        Self {
            reason: watch::channel(None).0,
            disk: Mutex::new(disk),
            check_now: Notify::new(),
            out_of_disk: Mutex::default(),
        }
    }

    /// Why the worker cannot build right now, if it cannot.
    pub fn unhealthy(&self) -> Option<String> {
        self.reason.borrow().clone()
    }

    /// Changes of [`Monitor::unhealthy`].
    pub fn subscribe(&self) -> watch::Receiver<Option<String>> {
        self.reason.subscribe()
    }

    /// The disk at the last check; `None` before the first or when it cannot be read.
    pub fn disk(&self) -> Option<DiskUsage> {
        *self.disk.lock().expect("disk lock")
    }

    /// A job ran out of disk here: unhealthy at once (before its result leaves, so that the
    /// retry is not sent back here) and for [`OUT_OF_DISK_HOLD`].
    pub fn ran_out_of_disk(&self) {
        let now = Instant::now();
        *self.out_of_disk.lock().expect("out of disk lock") = Some(now);
        publish(&self.reason, out_of_disk_hold(Some(now), now));
    }

    /// Asks [`Monitor::watch`] to check now (a job failed on the infrastructure).
    pub fn check_soon(&self) {
        self.check_now.notify_one();
    }

    /// Checks the daemon and the disk every `interval`, and at once when asked, until dropped.
    /// BuildKit's cache (through `buildkit`, when given) is measured at most every
    /// [`BUILD_CACHE_EVERY`].
    pub async fn watch(
        &self,
        engine: &DockerEngine,
        buildkit: Option<&Endpoint>,
        cache_dir: &Path,
        min_free: u64,
        interval: Duration,
    ) {
        let mut build_cache: Option<(Instant, u64)> = None;
        let mut warned = false;
        loop {
            let dir = cache_dir.to_owned();
            let mut disk = tokio::task::spawn_blocking(move || measure(&dir))
                .await
                .ok()
                .flatten();
            if let Some(endpoint) = buildkit
                && build_cache.is_none_or(|(at, _)| at.elapsed() >= BUILD_CACHE_EVERY)
            {
                match crate::buildkit::prune::disk_usage(endpoint).await {
                    Ok(usage) => build_cache = Some((Instant::now(), usage.bytes)),
                    Err(e) => {
                        // Said once, not at every check.
                        if build_cache.is_some() || !warned {
                            tracing::warn!(error = %e, "the build cache is not measured");
                        }
                        warned = true;
                        build_cache = None;
                    }
                }
            }
            if let Some(d) = disk.as_mut() {
                d.build_cache_bytes = build_cache.map(|(_, bytes)| bytes);
            }
            *self.disk.lock().expect("disk lock") = disk;
            let reason = match engine.ping(PING_TIMEOUT).await {
                Err(reason) => Some(reason),
                Ok(()) => check_disk(cache_dir, min_free).or_else(|| {
                    let since = *self.out_of_disk.lock().expect("out of disk lock");
                    out_of_disk_hold(since, Instant::now())
                }),
            };
            publish(&self.reason, reason);
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = self.check_now.notified() => {}
            }
        }
    }
}

/// Why a worker on which a job ran out of disk at `since` takes no job at `now`: for
/// [`OUT_OF_DISK_HOLD`] after it. The text does not change within the hold (each change is a
/// heartbeat).
pub fn out_of_disk_hold(since: Option<Instant>, now: Instant) -> Option<String> {
    let since = since?;
    (now.saturating_duration_since(since) < OUT_OF_DISK_HOLD).then(|| {
        format!(
            "a job ran out of disk here: taking no job for {}s after it, so that it is retried on another worker; free disk on this worker (`docker builder prune`, a smaller --context-cache-max-size or --cache-max-size)",
            OUT_OF_DISK_HOLD.as_secs()
        )
    })
}

/// The disk of `cache_dir`: free space on its file system, bytes under it; `None` when the
/// free space cannot be read.
pub fn measure(cache_dir: &Path) -> Option<DiskUsage> {
    Some(DiskUsage {
        free_bytes: free_bytes(cache_dir).ok()?,
        cache_bytes: tree_bytes(cache_dir),
        build_cache_bytes: None,
    })
}

/// Bytes of the files under `path` (not following symbolic links).
pub fn tree_bytes(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if meta.is_file() {
        return meta.len();
    }
    if !meta.is_dir() {
        return 0;
    }
    std::fs::read_dir(path)
        .map(|entries| entries.flatten().map(|e| tree_bytes(&e.path())).sum())
        .unwrap_or(0)
}

/// Bytes free to unprivileged users on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let stat = rustix::fs::statvfs(dir)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Why a worker with `free` bytes on `dir` must take no job under `min_free`; `None` when it may.
pub fn disk_shortage(free: u64, min_free: u64, dir: &Path) -> Option<String> {
    (free < min_free).then(|| {
        format!(
            "free disk {} on {} is below --min-free-disk {}: free space there (old contexts, `docker system prune`) or lower --min-free-disk",
            human_bytes(free),
            dir.display(),
            human_bytes(min_free)
        )
    })
}

/// Checks the free space of `dir`; a file system that cannot be read is a reason too.
pub fn check_disk(dir: &Path, min_free: u64) -> Option<String> {
    if min_free == 0 {
        return None;
    }
    match free_bytes(dir) {
        Ok(free) => disk_shortage(free, min_free, dir),
        Err(e) => Some(format!(
            "cannot read the free disk of {}: {e}; check that the cache dir exists",
            dir.display()
        )),
    }
}

/// Publishes `reason` (None: healthy) to the session, logging each change once.
fn publish(health: &watch::Sender<Option<String>>, reason: Option<String>) {
    health.send_if_modified(|current| {
        if *current == reason {
            return false;
        }
        match &reason {
            Some(reason) => tracing::warn!(%reason, "unhealthy: taking no job until this clears"),
            None => tracing::info!("healthy: the docker daemon answers and the disk has room"),
        }
        *current = reason;
        true
    });
}

/// Parses a size such as `10GiB`, `500MB`, `2G` or `0`; bounded to 1 EiB.
/// `K`/`M`/`G`/`T` and `KiB`.. are powers of 1024, `KB`/`MB`/`GB`/`TB` powers of 1000.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let err = || {
        format!(
            "invalid size `{text}`: expected a number with an optional unit, e.g. 10GiB, 500MB, 0"
        )
    };
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let n: u64 = t[..split].parse().map_err(|_| err())?;
    let factor: u64 = match t[split..].trim() {
        "" | "B" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => return Err(err()),
    };
    n.checked_mul(factor)
        .filter(|v| *v <= 1 << 60)
        .ok_or_else(|| format!("size `{text}` is too large: at most 1 EiB"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        let check = |text: &str, want: Result<u64, &str>| {
            assert_eq!(parse_size(text), want.map_err(str::to_owned), "{text}")
        };
        check("0", Ok(0));
        check("512", Ok(512));
        check("10GiB", Ok(10 << 30));
        check("2G", Ok(2 << 30));
        check("500MB", Ok(500_000_000));
        check("64M", Ok(64 << 20));
        check(
            "ten",
            Err(
                "invalid size `ten`: expected a number with an optional unit, e.g. 10GiB, 500MB, 0",
            ),
        );
        check(
            "5XB",
            Err(
                "invalid size `5XB`: expected a number with an optional unit, e.g. 10GiB, 500MB, 0",
            ),
        );
        check(
            "99999999TiB",
            Err("size `99999999TiB` is too large: at most 1 EiB"),
        );
    }

    #[test]
    fn a_disk_below_the_threshold_is_a_reason_naming_both() {
        let dir = Path::new("/var/cache/manifold-worker");
        assert_eq!(disk_shortage(10 << 30, 5 << 30, dir), None);
        assert_eq!(disk_shortage(5 << 30, 5 << 30, dir), None);
        assert_eq!(
            disk_shortage(1 << 30, 5 << 30, dir).as_deref(),
            Some(
                "free disk 1.0 GiB on /var/cache/manifold-worker is below --min-free-disk 5.0 GiB: free space there (old contexts, `docker system prune`) or lower --min-free-disk"
            )
        );
        // 0 turns the check off, whatever the disk says.
        assert_eq!(check_disk(Path::new("/no/such/dir"), 0), None);
        assert!(
            check_disk(Path::new("/no/such/dir"), 1)
                .unwrap()
                .contains("cannot read the free disk of /no/such/dir")
        );
    }

    #[test]
    fn free_bytes_reads_the_real_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        assert!(free > 0);
        assert!(check_disk(dir.path(), free.saturating_mul(1024).max(1 << 50)).is_some());
    }

    #[test]
    fn a_worker_out_of_disk_takes_no_job_for_the_hold() {
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        assert_eq!(out_of_disk_hold(None, at(0)), None);
        let held = out_of_disk_hold(Some(t0), at(0)).unwrap();
        assert!(
            held.starts_with("a job ran out of disk here: taking no job for 60s"),
            "{held}"
        );
        assert_eq!(out_of_disk_hold(Some(t0), at(59)), Some(held));
        assert_eq!(out_of_disk_hold(Some(t0), at(60)), None);
        // A clock read before the failure (another thread) counts as within the hold.
        assert!(out_of_disk_hold(Some(at(5)), at(0)).is_some());
    }

    #[test]
    fn the_disk_is_measured_under_the_cache_dir() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("contexts/sha256")).unwrap();
        std::fs::write(dir.path().join("contexts/sha256/ab"), vec![0u8; 3000]).unwrap();
        std::fs::write(dir.path().join("other"), vec![0u8; 500]).unwrap();
        let disk = measure(dir.path()).unwrap();
        assert_eq!(disk.cache_bytes, 3500);
        assert!(disk.free_bytes > 0);
        assert_eq!(disk.build_cache_bytes, None);
        assert_eq!(measure(Path::new("/no/such/dir")), None);
    }
}
