//! A two-platform build whose amd64 output passes the coordinator's per-platform log bound
//! (1 MiB), and the checks of what `manifold logs` and `manifold watch` show of it once the
//! coordinator that saw it build is gone (the durable-logs tests after a restart and after a
//! failover share them).

use std::process::Output;

use manifold_proto::v1;

use crate::{context_dir, show, with_token};

/// The build: its Dockerfile, marked with a nonce so that no other build's lines match.
pub struct LongOutput {
    /// Marks the first and last lines of each platform.
    pub nonce: String,
    /// The Dockerfile.
    pub dockerfile: String,
}

/// Lines of amd64 output: 7 steps of 1,800 lines of ~90 bytes.
pub const AMD64_LINES: u32 = 7 * 1800;

impl LongOutput {
    /// amd64 prints [`AMD64_LINES`] lines of ~90 bytes in 7 steps (more than the 1 MiB kept per
    /// platform; each step under BuildKit's own limit of 200 KiB a second per step, past which it
    /// clips); arm64 (emulated, slower) prints its first and last lines only.
    pub fn new(base_image: &str) -> Self {
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        let step = |s: u32| {
            format!(
                "RUN if [ $(uname -m) = x86_64 ]; then i=0; while [ $i -lt 1800 ]; do \
                 echo \"line $(( {s} * 1800 + i )) {pad}\"; i=$((i+1)); done; fi\n",
                pad = "x".repeat(72)
            )
        };
        let dockerfile = format!(
            "FROM {base_image}\nRUN echo first-{nonce}-$(uname -m)\n{steps}RUN echo last-{nonce}-$(uname -m)\n",
            steps = (0..7).map(step).collect::<String>(),
        );
        Self { nonce, dockerfile }
    }

    /// A context folder holding the Dockerfile.
    pub fn context(&self) -> anyhow::Result<tempfile::TempDir> {
        context_dir(&[("Dockerfile", &self.dockerfile)])
    }

    /// `manifold logs ID` (stdout) of both platforms: both platforms' last lines, arm64's whole
    /// output, amd64's last ~1 MiB in order after a marker saying how many lines were dropped.
    pub fn check_logs(&self, text: &str) {
        let nonce = &self.nonce;
        let lines: Vec<&str> = text.lines().collect();
        let has = |needle: &str| lines.iter().any(|l| l.contains(needle));
        assert!(has(&format!("last-{nonce}-x86_64")), "{}", tail(text));
        assert!(has(&format!("last-{nonce}-aarch64")), "{}", tail(text));
        assert!(has(&format!("first-{nonce}-aarch64")), "{}", tail(text));
        // amd64 passed its bound: its first lines are gone, a marker says how many.
        assert!(
            !has(&format!("first-{nonce}-x86_64")),
            "the head was dropped"
        );
        let marker = lines
            .iter()
            .find(|l| l.contains("earlier lines of linux/amd64 dropped"))
            .unwrap_or_else(|| panic!("no marker in:\n{}", head(text)));
        assert!(
            marker.contains("keeps the last 1024 KiB of each platform's output"),
            "{marker}"
        );
        // What the coordinator stored, without the CLI's `[linux/amd64] ` prefix.
        let amd64_bytes: usize = lines
            .iter()
            .filter(|l| l.starts_with("[linux/amd64] "))
            .map(|l| l.len() - "[linux/amd64] ".len())
            .sum();
        assert!(
            amd64_bytes > 960 * 1024 && amd64_bytes <= 1024 * 1024 + 200,
            "about 1 MiB of amd64 lines kept, got {amd64_bytes} bytes"
        );
        // The kept lines are the last ones, in order.
        let numbers: Vec<u32> = lines
            .iter()
            .filter_map(|l| l.split("line ").nth(1)?.split(' ').next()?.parse().ok())
            .collect();
        assert!(
            numbers.len() > 9_000,
            "{} numbered lines kept",
            numbers.len()
        );
        assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "in order");
        assert_eq!(numbers.last(), Some(&(AMD64_LINES - 1)));
    }

    /// `manifold logs ID --platform linux/arm64` (stdout): arm64's lines only, none dropped.
    pub fn check_arm64_logs(&self, text: &str) {
        let nonce = &self.nonce;
        assert!(text.contains(&format!("last-{nonce}-aarch64")), "{text}");
        assert!(!text.contains(&format!("last-{nonce}-x86_64")), "{text}");
        assert!(
            !text.contains("dropped"),
            "arm64 kept all of its lines: {text}"
        );
    }

    /// Another team's `manifold logs ID` or `watch ID`: refused, naming nothing of the build.
    pub fn check_refused(&self, out: &Output) {
        assert!(!out.status.success(), "{}", show(out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("belongs to another team"), "{err}");
        assert!(!err.contains(&self.nonce), "{err}");
    }
}

/// `Builds.Logs` of build `id` with `token`.
pub async fn stored_lines(
    builds: &mut v1::builds_client::BuildsClient<tonic::transport::Channel>,
    id: &str,
    token: &str,
) -> Result<Vec<v1::LogLine>, tonic::Status> {
    let request = v1::BuildLogsRequest {
        build_id: id.to_owned(),
        platform: None,
    };
    Ok(builds
        .logs(with_token(token, request))
        .await?
        .into_inner()
        .lines)
}

/// `manifold watch ID --progress json` of the ended build agrees with `Builds.Logs`: the same
/// lines of the same platforms in the same order, numbered events from 0, then the build's
/// states, and `Finished` (succeeded) last.
pub fn check_watch_agrees(watch: &Output, stored: &[v1::LogLine]) {
    assert!(watch.status.success(), "{}", show(watch));
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&watch.stderr)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|e: &serde_json::Value| e.get("sequence").is_some())
        .collect();
    let sequences: Vec<u64> = events
        .iter()
        .filter_map(|e| e["sequence"].as_u64())
        .collect();
    assert_eq!(
        sequences,
        (0..events.len() as u64).collect::<Vec<_>>(),
        "every event once, in order"
    );
    let watched: Vec<(String, String)> = events
        .iter()
        .filter_map(|e| {
            let line = e.get("log")?.as_str()?;
            Some((e["platform"].as_str()?.to_owned(), line.to_owned()))
        })
        .collect();
    let logged: Vec<(String, String)> = stored
        .iter()
        .map(|l| {
            let p = l
                .platform
                .as_ref()
                .expect("a stored line names its platform");
            let p = manifold_proto::Platform::try_from(p).expect("a valid platform");
            (p.to_string(), l.line.trim_end().to_owned())
        })
        .collect();
    assert_eq!(
        watched.len(),
        logged.len(),
        "watch and logs show as many lines"
    );
    if let Some(i) = (0..watched.len()).find(|&i| watched[i] != logged[i]) {
        panic!(
            "line {i} differs: watch {:?}, logs {:?}",
            watched[i], logged[i]
        );
    }
    // The lines come before the states restored with the build, and the end is last.
    let first_state = events.iter().position(|e| e.get("state").is_some());
    let last_line = events.iter().rposition(|e| e.get("log").is_some());
    assert!(
        first_state > last_line,
        "the stored lines come first: line {last_line:?}, state {first_state:?}"
    );
    let last = events.last().expect("events");
    assert_eq!(last["finished"], "succeeded", "{last}");
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn head(text: &str) -> String {
    text.lines().take(20).collect::<Vec<_>>().join("\n")
}
