//! [`DiskUsage`]: what a worker says about its disk in its hello and heartbeats, and how
//! `manifold workers` and the dashboard print it ("41.2 GiB free, cache 3.1 GiB").

use std::fmt;

use crate::v1;

/// A worker's disk at its last health check.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskUsage {
    /// Bytes free to the worker on the file system of its cache dir.
    pub free_bytes: u64,
    /// Bytes under its cache dir (build contexts, scratch space, layer records).
    pub cache_bytes: u64,
    /// Bytes of its Docker daemon's BuildKit cache; `None` when not measured.
    pub build_cache_bytes: Option<u64>,
}

impl fmt::Display for DiskUsage {
    /// `41.2 GiB free, cache 3.1 GiB`, then `, build cache 2.0 GiB` when measured.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} free, cache {}",
            human_bytes(self.free_bytes),
            human_bytes(self.cache_bytes)
        )?;
        if let Some(build) = self.build_cache_bytes {
            write!(f, ", build cache {}", human_bytes(build))?;
        }
        Ok(())
    }
}

impl From<&v1::DiskUsage> for DiskUsage {
    fn from(d: &v1::DiskUsage) -> Self {
        Self {
            free_bytes: d.free_bytes,
            cache_bytes: d.cache_bytes,
            build_cache_bytes: d.build_cache_bytes,
        }
    }
}

impl From<&DiskUsage> for v1::DiskUsage {
    fn from(d: &DiskUsage) -> Self {
        Self {
            free_bytes: d.free_bytes,
            cache_bytes: d.cache_bytes,
            build_cache_bytes: d.build_cache_bytes,
        }
    }
}

/// `512 B`, `1.5 KiB`, `20.0 GiB` (powers of 1024, as `df -h`).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_usage_reads_like_df_h() {
        let d = DiskUsage {
            free_bytes: (412 << 30) / 10,
            cache_bytes: (31 << 30) / 10,
            build_cache_bytes: None,
        };
        assert_eq!(d.to_string(), "41.2 GiB free, cache 3.1 GiB");
        let d = DiskUsage {
            build_cache_bytes: Some(2 << 30),
            ..d
        };
        assert_eq!(
            d.to_string(),
            "41.2 GiB free, cache 3.1 GiB, build cache 2.0 GiB"
        );
        assert_eq!(DiskUsage::from(&v1::DiskUsage::from(&d)), d);
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }
}
