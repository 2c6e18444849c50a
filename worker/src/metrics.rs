//! Prometheus metrics of a worker (`manifold-worker --metrics-listen ADDR`, `GET /metrics`,
//! OpenMetrics text): the free disk of its cache dir's file system, the `--min-free-disk`
//! threshold, and the bytes its cache dir holds (build contexts, scratch space), read at each
//! scrape. No token is asked and nothing of a team's builds is shown.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

/// Renders the worker's metrics for `cache_dir` and `min_free_disk`.
pub fn render(cache_dir: &Path, min_free_disk: u64) -> String {
    let mut registry = Registry::default();
    let free = Gauge::<i64>::default();
    let min = Gauge::<i64>::default();
    let cache: Family<KindLabels, Gauge> = Family::default();
    registry.register_with_unit(
        "manifold_worker_disk_free",
        "Free bytes on the file system of the worker's cache dir",
        Unit::Bytes,
        free.clone(),
    );
    registry.register_with_unit(
        "manifold_worker_disk_min_free",
        "The --min-free-disk threshold (0: no check)",
        Unit::Bytes,
        min.clone(),
    );
    registry.register_with_unit(
        "manifold_worker_cache",
        "Bytes in the worker's cache dir by kind (contexts, scratch, other)",
        Unit::Bytes,
        cache.clone(),
    );
    let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    if let Ok(bytes) = crate::health::free_bytes(cache_dir) {
        free.set(clamp(bytes));
    }
    min.set(clamp(min_free_disk));
    for kind in ["contexts", "scratch", "other"] {
        cache
            .get_or_create(&KindLabels { kind: kind.into() })
            .set(0);
    }
    if let Ok(entries) = std::fs::read_dir(cache_dir) {
        for entry in entries.flatten() {
            let kind = match entry.file_name().to_str() {
                Some("contexts") => "contexts",
                Some("tmp") => "scratch",
                _ => "other",
            };
            cache
                .get_or_create(&KindLabels { kind: kind.into() })
                .inc_by(clamp(crate::health::tree_bytes(&entry.path())));
        }
    }
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        let _ = writeln!(out, "# encoding failed: {e}");
    }
    out
}

/// Binds the metrics address, naming it when that fails.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("binding --metrics-listen {addr}: {e}; is something else listening there?"),
        )
    })
}

/// Serves `GET /metrics` on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    cache_dir: PathBuf,
    min_free_disk: u64,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let dir = cache_dir.clone();
            async move {
                let body = tokio::task::spawn_blocking(move || render(&dir, min_free_disk))
                    .await
                    .unwrap_or_default();
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    body,
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_is_measured_by_kind() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("contexts/sha256")).unwrap();
        std::fs::write(d.join("contexts/sha256/ab"), vec![0u8; 3000]).unwrap();
        std::fs::create_dir_all(d.join("tmp/job-1")).unwrap();
        std::fs::write(d.join("tmp/job-1/image.tar"), vec![0u8; 500]).unwrap();
        let text = render(d, 10 << 30);
        for line in [
            r#"manifold_worker_cache_bytes{kind="contexts"} 3000"#,
            r#"manifold_worker_cache_bytes{kind="scratch"} 500"#,
            r#"manifold_worker_cache_bytes{kind="other"} 0"#,
            "manifold_worker_disk_min_free_bytes 10737418240",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        let free: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("manifold_worker_disk_free_bytes "))
            .and_then(|v| v.parse().ok())
            .unwrap();
        let now = crate::health::free_bytes(d).unwrap();
        assert!(
            free > 0 && free.abs_diff(now) < 256 << 20,
            "{free} vs {now}"
        );
    }
}
