//! Whether this worker can take a job: its Docker daemon answers, and its cache dir's file system
//! has at least `--min-free-disk` free (contexts and scratch space live there). A worker that
//! cannot is reported unhealthy with the reason in its heartbeats, so the coordinator sends its
//! jobs elsewhere and `manifold workers` shows why.

use std::path::Path;

use tokio::sync::watch;

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
pub fn publish(health: &watch::Sender<Option<String>>, reason: Option<String>) {
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

/// `512 B`, `1.5 KiB`, `20.0 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
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
    fn bytes_read_like_df_h() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(20 << 30), "20.0 GiB");
    }
}
