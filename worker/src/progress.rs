//! BuildKit progress (`StatusResponse` messages) turned into the plain lines `docker buildx
//! --progress=plain` prints: `#3 [b 2/2] RUN uname -m > /arch`, then `#3 aarch64`, then `#3 DONE 0.4s`.
//!
//! Pure: messages in, lines out. Vertices are numbered in the order they first appear, and output of
//! a step is split into whole lines (a partial line waits for its end or for the step to finish).

use std::collections::HashMap;

use bollard::moby::buildkit::v1::{StatusResponse, Vertex};

/// Turns a build's successive BuildKit status messages into human-readable lines.
#[derive(Debug, Default)]
pub struct ProgressPrinter {
    vertices: HashMap<String, VertexState>,
    next_number: usize,
    first_error: Option<StepError>,
}

/// The first step that failed, as BuildKit reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepError {
    /// The step's name, e.g. `[b 2/2] RUN exit 3`.
    pub step: String,
    /// BuildKit's error, e.g. `process "/bin/sh -c exit 3" did not complete successfully: exit code: 3`.
    pub error: String,
}

#[derive(Debug, Default)]
struct VertexState {
    number: usize,
    name: String,
    announced: bool,
    finished: bool,
    partial: Vec<u8>,
}

impl ProgressPrinter {
    /// A printer that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The lines one status message adds, in order.
    pub fn feed(&mut self, status: &StatusResponse) -> Vec<String> {
        let mut out = Vec::new();
        for vertex in &status.vertexes {
            self.vertex(vertex, &mut out);
        }
        for s in &status.statuses {
            if s.completed.is_some() {
                let label = if s.name.is_empty() { &s.id } else { &s.name };
                if label.is_empty() {
                    continue;
                }
                let number = self.number(&s.vertex);
                let amount = if s.total > 0 {
                    format!(" {}/{}", human_bytes(s.current), human_bytes(s.total))
                } else if s.current > 0 {
                    format!(" {}", human_bytes(s.current))
                } else {
                    String::new()
                };
                out.push(format!("#{number} {label}{amount} done"));
            }
        }
        for log in &status.logs {
            let number = self.number(&log.vertex);
            let state = self.vertices.get_mut(&log.vertex).expect("numbered above");
            state.partial.extend_from_slice(&log.msg);
            while let Some(end) = state.partial.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = state.partial.drain(..=end).collect();
                out.push(format!("#{number} {}", clean(&line)));
            }
        }
        for warning in &status.warnings {
            let number = self.number(&warning.vertex);
            out.push(format!(
                "#{number} WARNING: {}",
                clean(&warning.short).trim_end()
            ));
        }
        out
    }

    /// Lines still held back (output without a final newline) once the build stream has ended.
    pub fn finish(&mut self) -> Vec<String> {
        let mut pending: Vec<&mut VertexState> = self
            .vertices
            .values_mut()
            .filter(|v| !v.partial.is_empty())
            .collect();
        pending.sort_by_key(|v| v.number);
        pending
            .into_iter()
            .map(|v| {
                let line = std::mem::take(&mut v.partial);
                format!("#{} {}", v.number, clean(&line))
            })
            .collect()
    }

    /// The first step BuildKit reported as failed, if any.
    pub fn first_error(&self) -> Option<&StepError> {
        self.first_error.as_ref()
    }

    fn number(&mut self, digest: &str) -> usize {
        let next = &mut self.next_number;
        self.vertices
            .entry(digest.to_owned())
            .or_insert_with(|| {
                *next += 1;
                VertexState {
                    number: *next,
                    ..VertexState::default()
                }
            })
            .number
    }

    fn vertex(&mut self, vertex: &Vertex, out: &mut Vec<String>) {
        let number = self.number(&vertex.digest);
        let state = self
            .vertices
            .get_mut(&vertex.digest)
            .expect("numbered above");
        if !vertex.name.is_empty() {
            state.name.clone_from(&vertex.name);
        }
        if state.finished {
            return;
        }
        let announce = |state: &mut VertexState, out: &mut Vec<String>| {
            if !state.announced {
                state.announced = true;
                out.push(format!("#{number} {}", state.name));
            }
        };
        if vertex.cached {
            announce(state, out);
            out.push(format!("#{number} CACHED"));
            state.finished = true;
            return;
        }
        if vertex.started.is_some() {
            announce(state, out);
        }
        if vertex.completed.is_some() || !vertex.error.is_empty() {
            announce(state, out);
            if !state.partial.is_empty() {
                let line = std::mem::take(&mut state.partial);
                out.push(format!("#{number} {}", clean(&line)));
            }
            if vertex.error.is_empty() {
                let took = match (&vertex.started, &vertex.completed) {
                    (Some(s), Some(c)) => {
                        let nanos =
                            (c.seconds - s.seconds) as f64 * 1e9 + (c.nanos - s.nanos) as f64;
                        format!(" {:.1}s", (nanos / 1e9).max(0.0))
                    }
                    _ => String::new(),
                };
                out.push(format!("#{number} DONE{took}"));
            } else {
                out.push(format!("#{number} ERROR: {}", vertex.error));
                if self.first_error.is_none() {
                    self.first_error = Some(StepError {
                        step: state.name.clone(),
                        error: vertex.error.clone(),
                    });
                }
            }
            state.finished = true;
        }
    }
}

/// Text of a log chunk without its line ending and carriage returns.
fn clean(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim_end_matches(['\n', '\r']);
    // A carriage return inside a line redraws it (progress bars): keep what was drawn last.
    text.rsplit('\r').next().unwrap_or_default().to_owned()
}

fn human_bytes(n: i64) -> String {
    const UNITS: [&str; 4] = ["B", "kB", "MB", "GB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n}B")
    } else {
        format!("{value:.2}{}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use bollard::moby::buildkit::v1::{VertexLog, VertexStatus, VertexWarning};

    use super::*;

    fn vertex(digest: &str, name: &str) -> Vertex {
        Vertex {
            digest: digest.into(),
            name: name.into(),
            ..Vertex::default()
        }
    }

    fn started(mut v: Vertex, at: i64) -> Vertex {
        v.started = Some(Default::default());
        v.started.as_mut().unwrap().seconds = at;
        v
    }

    fn completed(mut v: Vertex, at: i64, nanos: i32) -> Vertex {
        let mut c = v.started.unwrap_or_default();
        c.seconds = at;
        c.nanos = nanos;
        v.completed = Some(c);
        v
    }

    fn log(digest: &str, msg: &str) -> VertexLog {
        VertexLog {
            vertex: digest.into(),
            msg: msg.as_bytes().to_vec(),
            ..VertexLog::default()
        }
    }

    fn vertices(v: Vec<Vertex>) -> StatusResponse {
        StatusResponse {
            vertexes: v,
            ..StatusResponse::default()
        }
    }

    fn logs(l: Vec<VertexLog>) -> StatusResponse {
        StatusResponse {
            logs: l,
            ..StatusResponse::default()
        }
    }

    #[track_caller]
    fn check(messages: &[StatusResponse], expected: &[&str]) {
        let mut printer = ProgressPrinter::new();
        let mut lines: Vec<String> = messages.iter().flat_map(|m| printer.feed(m)).collect();
        lines.extend(printer.finish());
        assert_eq!(lines, expected);
    }

    #[test]
    fn a_run_step_is_announced_then_its_output_then_done() {
        let run = "sha256:run";
        check(
            &[
                vertices(vec![vertex(run, "[b 2/2] RUN uname -m")]),
                vertices(vec![started(vertex(run, "[b 2/2] RUN uname -m"), 10)]),
                logs(vec![log(run, "aarch")]),
                logs(vec![log(run, "64\nsecond line\n")]),
                vertices(vec![completed(
                    started(vertex(run, "[b 2/2] RUN uname -m"), 10),
                    11,
                    500_000_000,
                )]),
            ],
            &[
                "#1 [b 2/2] RUN uname -m",
                "#1 aarch64",
                "#1 second line",
                "#1 DONE 1.5s",
            ],
        );
    }

    #[test]
    fn steps_are_numbered_in_order_of_first_appearance_and_cached_ones_say_so() {
        check(
            &[
                vertices(vec![
                    vertex("a", "[internal] load build definition from Dockerfile"),
                    vertex("b", "[1/2] FROM base"),
                ]),
                vertices(vec![vertex("b", "[1/2] FROM base")]),
                vertices(vec![Vertex {
                    cached: true,
                    ..vertex("b", "[1/2] FROM base")
                }]),
                vertices(vec![Vertex {
                    cached: true,
                    ..vertex("b", "[1/2] FROM base")
                }]),
                vertices(vec![completed(
                    started(
                        vertex("a", "[internal] load build definition from Dockerfile"),
                        1,
                    ),
                    1,
                    0,
                )]),
            ],
            &[
                "#2 [1/2] FROM base",
                "#2 CACHED",
                "#1 [internal] load build definition from Dockerfile",
                "#1 DONE 0.0s",
            ],
        );
    }

    #[test]
    fn a_failed_step_prints_its_error_and_is_remembered() {
        let mut printer = ProgressPrinter::new();
        let failing = Vertex {
            error: "process \"/bin/sh -c exit 3\" did not complete successfully: exit code: 3"
                .into(),
            ..completed(started(vertex("x", "[2/2] RUN exit 3"), 5), 6, 0)
        };
        let lines = printer.feed(&vertices(vec![failing]));
        assert_eq!(
            lines,
            [
                "#1 [2/2] RUN exit 3",
                "#1 ERROR: process \"/bin/sh -c exit 3\" did not complete successfully: exit code: 3"
            ]
        );
        let err = printer.first_error().expect("an error");
        assert_eq!(err.step, "[2/2] RUN exit 3");
        assert!(err.error.contains("exit code: 3"));
    }

    #[test]
    fn unterminated_output_is_flushed_when_the_step_ends_or_the_build_ends() {
        check(
            &[
                vertices(vec![started(vertex("v", "[1/1] RUN printf x"), 1)]),
                logs(vec![log("v", "no newline")]),
                vertices(vec![completed(
                    started(vertex("v", "[1/1] RUN printf x"), 1),
                    2,
                    0,
                )]),
                logs(vec![log("w", "tail without newline\r\n"), log("w", "end")]),
            ],
            &[
                "#1 [1/1] RUN printf x",
                "#1 no newline",
                "#1 DONE 1.0s",
                "#2 tail without newline",
                "#2 end",
            ],
        );
    }

    #[test]
    fn finished_transfers_and_warnings_are_reported() {
        let status = StatusResponse {
            vertexes: vec![started(vertex("ctx", "[internal] load build context"), 1)],
            statuses: vec![VertexStatus {
                id: "transferring context".into(),
                vertex: "ctx".into(),
                current: 2048,
                completed: Some(Default::default()),
                ..VertexStatus::default()
            }],
            warnings: vec![VertexWarning {
                vertex: "ctx".into(),
                short: b"something odd\n".to_vec(),
                ..VertexWarning::default()
            }],
            ..StatusResponse::default()
        };
        check(
            &[status],
            &[
                "#1 [internal] load build context",
                "#1 transferring context 2.05kB done",
                "#1 WARNING: something odd",
            ],
        );
    }
}
