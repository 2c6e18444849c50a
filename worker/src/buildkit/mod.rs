//! Builds through BuildKit's own control API with a session, as `docker buildx build` does.
//!
//! The engine is the Docker daemon's embedded BuildKit, reached over the daemon's upgraded `/grpc`
//! (control API) and `/session` (build session) endpoints ([`hijack`]). The context goes to
//! BuildKit through the session's upload service, never as a `/build` request body (that path is
//! broken with the containerd image store: moby/moby#47717). Registry credentials, secrets and the
//! `--ssh` keys (as a read-only agent, [`ssh_agent`]) are served by the same session ([`session`]).
//!
//! Two exporters, chosen by the daemon's image store:
//! - containerd image store (Docker Desktop, Docker Engine 29's default): BuildKit's own image
//!   exporter pushes the result **by digest** to the job's repository (`push-by-digest`, no tag,
//!   not stored in the daemon), each layer compressed once;
//! - graphdriver (overlay2): the `moby` exporter puts the image into the daemon under a local tag,
//!   and the worker pushes it from `docker save` ([`crate::push`]).
//!
//! Architecture invariant: [`Endpoint`] is the one seam to the build engine. A standalone buildkitd
//! (buildx's remote driver) would be a second variant: its control API is a plain gRPC channel and
//! its session runs over `Control.Session`; none can be installed on the test machines today.

pub mod dockerfile_source;
pub mod hijack;
pub mod named_context;
pub mod prune;
pub mod session;
pub mod ssh_agent;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::moby::buildkit::v1::control_client::ControlClient;
use bollard::moby::buildkit::v1::{
    CacheOptions, CacheOptionsEntry, Exporter as WireExporter, SolveRequest, StatusRequest,
};
use hyper_util::rt::TokioIo;
use manifold_proto::{BuildFlags, CacheSpec, Platform};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::job::LogSink;
use crate::progress::ProgressPrinter;
pub use hijack::DaemonAddress;
pub use session::{CredentialLookup, SessionContent, SessionLog};

/// Largest message exchanged with BuildKit's control API (BuildKit's own default).
const MAX_MESSAGE: usize = 16 << 20;
/// How long the progress stream may run on after the solve ended.
const STATUS_DRAIN: Duration = Duration::from_secs(5);
/// How soon progress is asked for again when BuildKit did not know the build yet.
const STATUS_RETRY: Duration = Duration::from_millis(200);

/// Where BuildKit is reached. One worker drives one engine.
#[derive(Clone, Debug)]
pub enum Endpoint {
    /// The Docker daemon's own BuildKit, at this Docker host (`unix://...`, `tcp://...`).
    Moby {
        /// The Docker host as configured, for messages.
        host: String,
        /// Its parsed address.
        address: DaemonAddress,
    },
}

impl Endpoint {
    /// The BuildKit embedded in the Docker daemon at `host`.
    pub fn moby(host: &str) -> Result<Self, String> {
        Ok(Self::Moby {
            host: host.to_owned(),
            address: DaemonAddress::parse(host)?,
        })
    }

    /// The engine's address, for messages.
    pub fn host(&self) -> &str {
        match self {
            Endpoint::Moby { host, .. } => host,
        }
    }
}

/// What becomes of the built image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Into the daemon's image store under `tag` (graphdriver daemons).
    DaemonTag {
        /// A daemon-local tag, never pushed.
        tag: String,
    },
    /// Pushed by BuildKit to `repository` by digest, no tag, not kept in the daemon (containerd
    /// image store).
    PushByDigest {
        /// Repository without tag, e.g. `127.0.0.1:5000/team/app`.
        repository: String,
        /// Plain HTTP to the registry (loopback registries always are).
        insecure: bool,
    },
}

/// Everything one solve needs.
#[derive(Clone, Debug)]
pub struct Solve<'a> {
    /// The platform to build for.
    pub platform: &'a Platform,
    /// Path of the Dockerfile inside the context.
    pub dockerfile: &'a str,
    /// `--build-arg` values.
    pub build_args: &'a BTreeMap<String, String>,
    /// Multi-stage target; `None` builds the last stage.
    pub target: Option<&'a str>,
    /// Labels set on the image.
    pub labels: &'a BTreeMap<String, String>,
    /// The other flags.
    pub flags: &'a BuildFlags,
    /// Where the result goes.
    pub output: Output,
}

/// What BuildKit said about the exported result (`containerimage.digest` and friends).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Solved {
    /// The exporter's response, as BuildKit sent it.
    pub exporter_response: HashMap<String, String>,
}

/// Why a build did not produce an image.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The build itself failed (a RUN step exited non-zero, a bad Dockerfile, a base image that
    /// cannot be pulled...): another attempt would fail the same way.
    #[error("build failed{}: {message}", step.as_ref().map(|s| format!(" at step `{s}`")).unwrap_or_default())]
    Failed {
        /// The failing step's name, when BuildKit said which one.
        step: Option<String>,
        /// The error, as BuildKit put it, plus what to do when the worker knows.
        message: String,
    },
    /// The engine could not be reached, broke off, or failed to push: not the build's fault.
    #[error("buildkit of the docker daemon at {host}: {action} failed: {message}")]
    Engine {
        /// The engine's address.
        host: String,
        /// What was being done.
        action: String,
        /// Why it failed.
        message: String,
    },
    /// The build was cancelled before it ended.
    #[error("build cancelled")]
    Cancelled,
}

impl BuildError {
    /// Whether another attempt, maybe on another worker, could succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, BuildError::Engine { .. })
    }
}

/// Runs one build on `endpoint`: opens a session offering `content`, solves with the Dockerfile
/// frontend, streams progress lines to `logs`. Stops, cancelling the solve, when `cancel` fires.
pub async fn build(
    endpoint: &Endpoint,
    solve: &Solve<'_>,
    content: SessionContent,
    logs: &LogSink,
    cancel: &CancellationToken,
) -> Result<Solved, BuildError> {
    let Endpoint::Moby { host, address } = endpoint;
    let engine_error = |action: &str, message: String| BuildError::Engine {
        host: host.clone(),
        action: action.to_owned(),
        message,
    };
    let session_id = content.session_id.clone();
    let mut headers = vec![
        ("X-Docker-Expose-Session-Uuid", session_id.clone()),
        ("X-Docker-Expose-Session-Name", "manifold-worker".to_owned()),
        ("X-Docker-Expose-Session-Sharedkey", session_id.clone()),
    ];
    headers.extend(
        session::METHODS
            .iter()
            .map(|m| ("X-Docker-Expose-Session-Grpc-Method", (*m).to_owned())),
    );
    let conn = hijack::upgrade(address, "/session", &headers)
        .await
        .map_err(|e| engine_error("opening the build session", e.to_string()))?;
    let stop = CancellationToken::new();
    let session_log = SessionLog::default();
    let server = tokio::spawn(session::serve(
        conn,
        content,
        session_log.clone(),
        stop.clone(),
    ));
    let _stop_session = stop.clone().drop_guard();

    let control = control_client(address)
        .await
        .map_err(|e| engine_error("connecting to the control API", e))?;
    let build_ref = uuid::Uuid::new_v4().simple().to_string();
    let request = solve_request(solve, &session_id, &build_ref);

    let printer = Arc::new(Mutex::new(ProgressPrinter::new()));
    let mut status = tokio::spawn(follow_status(
        control.clone(),
        build_ref,
        logs.clone(),
        printer.clone(),
    ));
    let mut solve_call = control;
    let result = tokio::select! {
        () = cancel.cancelled() => Err(BuildError::Cancelled),
        response = solve_call.solve(request) => Ok(response),
    };
    if tokio::time::timeout(STATUS_DRAIN, &mut status)
        .await
        .is_err()
    {
        status.abort();
    }
    stop.cancel();
    let _ = server.await;
    let (first_error, tail) = {
        let mut printer = printer.lock().expect("printer lock");
        (printer.first_error().cloned(), printer.finish())
    };
    tail.into_iter().for_each(|l| logs.line(l));
    let response = result?;
    match response {
        Ok(response) => Ok(Solved {
            exporter_response: response.into_inner().exporter_response,
        }),
        Err(status) => Err(classify(
            host,
            status,
            first_error.map(|e| e.step),
            &session_log,
        )),
    }
}

/// The control API over the daemon's `/grpc` endpoint.
async fn control_client(address: &DaemonAddress) -> Result<ControlClient<Channel>, String> {
    let address = address.clone();
    let connector = tower::service_fn(move |_: tonic::transport::Uri| {
        let address = address.clone();
        async move {
            hijack::upgrade(&address, "/grpc", &[])
                .await
                .map(TokioIo::new)
        }
    });
    let channel = tonic::transport::Endpoint::from_static("http://docker.invalid")
        .connect_with_connector(connector)
        .await
        .map_err(|e| crate::error_chain(&e))?;
    Ok(ControlClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE))
}

/// Feeds BuildKit's status stream for `build_ref` to a printer until it ends. BuildKit answers
/// "no such job" when asked before the solve registered the job (it waits 6 s for it, which a
/// loaded engine can exceed): then the worker asks again until the solve ends and this task is
/// dropped.
async fn follow_status(
    mut control: ControlClient<Channel>,
    build_ref: String,
    logs: LogSink,
    printer: Arc<Mutex<ProgressPrinter>>,
) {
    loop {
        let mut received = false;
        match control
            .status(StatusRequest {
                r#ref: build_ref.clone(),
            })
            .await
        {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(status)) => {
                            received = true;
                            let lines = printer.lock().expect("printer lock").feed(&status);
                            lines.into_iter().for_each(|l| logs.line(l));
                        }
                        Ok(None) => return,
                        Err(e) if received => {
                            tracing::debug!(%build_ref, error = %e, "build progress broke off");
                            return;
                        }
                        Err(e) => {
                            tracing::debug!(%build_ref, error = %e, "no build progress yet");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::debug!(%build_ref, error = %e, "no build progress yet"),
        }
        tokio::time::sleep(STATUS_RETRY).await;
    }
}

/// The SolveRequest for `solve`: the Dockerfile frontend on the session's context upload.
pub fn solve_request(solve: &Solve<'_>, session_id: &str, build_ref: &str) -> SolveRequest {
    let mut attrs = HashMap::from([
        ("context".to_owned(), session::context_url(session_id)),
        ("filename".to_owned(), solve.dockerfile.to_owned()),
        // The Dockerfile comes from its own source, so `.dockerignore` may leave it out of the
        // context as Docker does.
        (
            "dockerfilekey".to_owned(),
            dockerfile_source::LOCAL_NAME.to_owned(),
        ),
        ("platform".to_owned(), solve.platform.to_string()),
    ]);
    for (key, value) in solve.build_args {
        attrs.insert(format!("build-arg:{key}"), value.clone());
    }
    for (key, value) in solve.labels {
        attrs.insert(format!("label:{key}"), value.clone());
    }
    if let Some(target) = solve.target {
        attrs.insert("target".into(), target.to_owned());
    }
    let flags = solve.flags;
    if flags.no_cache {
        attrs.insert("no-cache".into(), String::new());
    }
    if flags.pull {
        attrs.insert("image-resolve-mode".into(), "pull".into());
    }
    let mut entitlements = Vec::new();
    match flags.network.as_deref() {
        None | Some("default") => {}
        Some(mode) => {
            attrs.insert("force-network-mode".into(), mode.to_owned());
            if mode == "host" {
                entitlements.push("network.host".to_owned());
            }
        }
    }
    if !flags.add_hosts.is_empty() {
        attrs.insert("add-hosts".into(), flags.add_hosts.join(","));
    }
    if let Some(bytes) = flags.shm_size {
        attrs.insert("shm-size".into(), bytes.to_string());
    }
    // Attestations as buildx asks for them; the default provenance only where the exporter
    // attaches attestations (the image exporter: the containerd image store), as buildx adds it
    // only on drivers that support them.
    let default_provenance = matches!(solve.output, Output::PushByDigest { .. })
        && !flags.attests.iter().any(|a| a.kind == "provenance");
    let default = default_provenance.then(manifold_proto::build_flags::attest::default_provenance);
    attrs.extend(
        (flags.attests.iter())
            .chain(default.as_ref())
            .filter_map(|a| a.frontend_attr()),
    );
    let mut frontend_inputs = HashMap::new();
    let mut uploaded = 0;
    for (name, source) in &flags.build_contexts {
        if source.starts_with(manifold_proto::build_flags::UPLOADED_CONTEXT) {
            // A directory of the CLI's machine: the `uploaded`-th named tar of the session.
            let url = session::named_context_url(session_id, uploaded);
            uploaded += 1;
            frontend_inputs.insert(name.clone(), named_context::definition(name, &url));
            attrs.insert(format!("context:{name}"), format!("input:{name}"));
        } else {
            attrs.insert(format!("context:{name}"), source.clone());
        }
    }
    let (exporter, exporter_attrs) = match &solve.output {
        Output::DaemonTag { tag } => ("moby", HashMap::from([("name".to_owned(), tag.clone())])),
        Output::PushByDigest {
            repository,
            insecure,
        } => (
            "image",
            [
                ("name".to_owned(), repository.clone()),
                ("push".to_owned(), "true".to_owned()),
                ("push-by-digest".to_owned(), "true".to_owned()),
                ("store".to_owned(), "false".to_owned()),
                // The same media types as the graphdriver path, so one list never mixes them.
                ("oci-mediatypes".to_owned(), "true".to_owned()),
            ]
            .into_iter()
            .chain(insecure.then(|| ("registry.insecure".to_owned(), "true".to_owned())))
            .collect(),
        ),
    };
    let entries = |specs: &[CacheSpec]| {
        specs
            .iter()
            .map(|s| s.for_platform(solve.platform))
            .map(|s| CacheOptionsEntry {
                r#type: s.kind.clone(),
                attrs: s.attrs.clone().into_iter().collect(),
            })
            .collect::<Vec<_>>()
    };
    let imports = entries(&flags.cache_from);
    if !imports.is_empty() {
        // The Dockerfile frontend solves the build itself: it finds the cache to import only in
        // its attributes, as BuildKit's client puts them there (JSON of Type/Attrs entries).
        let json: Vec<serde_json::Value> = imports
            .iter()
            .map(|e| serde_json::json!({ "Type": e.r#type, "Attrs": e.attrs }))
            .collect();
        attrs.insert(
            "cache-imports".into(),
            serde_json::Value::Array(json).to_string(),
        );
    }
    SolveRequest {
        r#ref: build_ref.to_owned(),
        definition: None,
        // Both the old fields (BuildKit < 0.13, Docker < 25) and the list.
        exporter_deprecated: exporter.to_owned(),
        exporter_attrs_deprecated: exporter_attrs.clone(),
        exporters: vec![WireExporter {
            r#type: exporter.to_owned(),
            attrs: exporter_attrs,
        }],
        session: session_id.to_owned(),
        frontend: "dockerfile.v0".to_owned(),
        frontend_attrs: attrs,
        cache: Some(CacheOptions {
            export_ref_deprecated: String::new(),
            import_refs_deprecated: Vec::new(),
            export_attrs_deprecated: HashMap::new(),
            exports: entries(&flags.cache_to),
            imports,
        }),
        entitlements,
        frontend_inputs,
        internal: false,
        source_policy: None,
        enable_session_exporter: false,
        source_policy_session: String::new(),
    }
}

/// Sorts a failed solve into the build's fault or the engine's, and says what to do when a
/// registry wanted credentials the worker does not have.
fn classify(
    host: &str,
    status: tonic::Status,
    step: Option<String>,
    session: &SessionLog,
) -> BuildError {
    let message = status.message().trim().to_owned();
    let transport = matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
    ) && !message.contains("did not complete successfully");
    let push = message.contains("failed to push")
        || message.contains("failed to copy")
        || message.contains("failed to do request");
    if transport || (push && !unauthorized(&message)) {
        return BuildError::Engine {
            host: host.to_owned(),
            action: if push {
                "pushing the image"
            } else {
                "the build"
            }
            .to_owned(),
            message,
        };
    }
    let mut message = message;
    if unauthorized(&message) {
        let hints: Vec<String> = session
            .lookups()
            .into_iter()
            .filter(|l| message.contains(&l.host) || l.host == "registry-1.docker.io")
            .map(|l| credential_hint(&l))
            .collect();
        if !hints.is_empty() {
            message.push_str(": ");
            message.push_str(&hints.join("; "));
        }
    }
    BuildError::Failed { step, message }
}

fn unauthorized(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    lower.contains("401 unauthorized")
        || lower.contains("403 forbidden")
        || lower.contains("failed to authorize")
        || lower.contains("authorization failed")
        || lower.contains("pull access denied")
        || lower.contains("insufficient_scope")
}

fn credential_hint(lookup: &CredentialLookup) -> String {
    use manifold_registry::auth::CredentialOrigin::*;
    match &lookup.origin {
        Anonymous { config: Some(path) } => format!(
            "registry {} needs a login and the worker's docker config {} has none for it: run `docker login {}` as the worker's user",
            lookup.host,
            path.display(),
            lookup.host
        ),
        Anonymous { config: None } => format!(
            "registry {} needs a login and the worker has no docker config file: run `docker login {}` as the worker's user or set DOCKER_CONFIG",
            lookup.host, lookup.host
        ),
        origin => format!(
            "registry {} refused the credentials the worker sent ({origin}): check that login",
            lookup.host
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn request(flags: BuildFlags, output: Output) -> SolveRequest {
        let platform: Platform = "linux/arm64".parse().unwrap();
        let args = BTreeMap::from([("V".to_owned(), "1".to_owned())]);
        let labels = BTreeMap::from([("team".to_owned(), "a".to_owned())]);
        solve_request(
            &Solve {
                platform: &platform,
                dockerfile: "docker/Dockerfile",
                build_args: &args,
                target: Some("app"),
                labels: &labels,
                flags: &flags,
                output,
            },
            "S",
            "R",
        )
    }

    #[test]
    fn the_dockerfile_frontend_reads_the_context_from_the_session() {
        let r = request(
            BuildFlags::default(),
            Output::DaemonTag {
                tag: "manifold-local/j:1".into(),
            },
        );
        let attrs: BTreeMap<_, _> = r.frontend_attrs.iter().collect();
        let expected: BTreeMap<String, String> = [
            ("build-arg:V", "1"),
            ("context", "http://buildkit-session/S/context.tar"),
            ("dockerfilekey", "dockerfile"),
            ("filename", "docker/Dockerfile"),
            ("label:team", "a"),
            ("platform", "linux/arm64"),
            ("target", "app"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(attrs, expected.iter().collect());
        assert_eq!((r.session.as_str(), r.r#ref.as_str()), ("S", "R"));
        assert_eq!(r.frontend, "dockerfile.v0");
        assert_eq!(r.exporter_deprecated, "moby");
        assert_eq!(r.exporters[0].attrs["name"], "manifold-local/j:1");
    }

    #[test]
    fn the_containerd_store_pushes_by_digest_without_a_tag_or_a_local_image() {
        let r = request(
            BuildFlags::default(),
            Output::PushByDigest {
                repository: "127.0.0.1:5000/a/app".into(),
                insecure: false,
            },
        );
        let attrs: BTreeMap<_, _> = r.exporters[0].attrs.iter().collect();
        assert_eq!(r.exporters[0].r#type, "image");
        assert_eq!(
            attrs,
            [
                ("name", "127.0.0.1:5000/a/app"),
                ("oci-mediatypes", "true"),
                ("push", "true"),
                ("push-by-digest", "true"),
                ("store", "false"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>()
            .iter()
            .collect()
        );
    }

    #[test]
    fn attestations_are_asked_for_as_buildx_asks_with_its_default_provenance() {
        use manifold_proto::build_flags::Attest;
        let push = || Output::PushByDigest {
            repository: "127.0.0.1:5000/a/app".into(),
            insecure: false,
        };
        let attests = |r: &SolveRequest| {
            (r.frontend_attrs.iter())
                .filter(|(k, _)| k.starts_with("attest:"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<BTreeMap<_, _>>()
        };
        let with = |list: &[&str]| BuildFlags {
            attests: list
                .iter()
                .map(|a| Attest::parse("--attest", a).unwrap())
                .collect(),
            ..BuildFlags::default()
        };
        type Case = (BuildFlags, Output, &'static [(&'static str, &'static str)]);
        let table: [Case; 5] = [
            // Nothing asked: buildx's default where attestations can be attached...
            (
                with(&[]),
                push(),
                &[(
                    "attest:provenance",
                    "type=provenance,inline-only=true,mode=min",
                )],
            ),
            // ...and none on a graphdriver engine.
            (with(&[]), Output::DaemonTag { tag: "t".into() }, &[]),
            (with(&["type=provenance,disabled=true"]), push(), &[]),
            (
                with(&["type=provenance,mode=max"]),
                push(),
                &[("attest:provenance", "type=provenance,mode=max")],
            ),
            (
                with(&[
                    "type=sbom,generator=r/scan:1",
                    "type=provenance,disabled=true",
                ]),
                push(),
                &[("attest:sbom", "type=sbom,generator=r/scan:1")],
            ),
        ];
        for (flags, output, expected) in table {
            let expected: BTreeMap<String, String> = expected
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            assert_eq!(
                attests(&request(flags.clone(), output)),
                expected,
                "{flags:?}"
            );
        }
    }

    #[test]
    fn flags_become_frontend_attributes_as_buildx_sends_them() {
        let r = request(
            BuildFlags {
                no_cache: true,
                pull: true,
                network: Some("host".into()),
                add_hosts: vec!["db:10.0.0.2".into(), "cache:10.0.0.3".into()],
                shm_size: Some(1 << 30),
                cache_from: vec![CacheSpec {
                    kind: "registry".into(),
                    attrs: [("ref".to_owned(), "r/c:amd64".to_owned())].into(),
                }],
                cache_to: vec![],
                secret_ids: vec![],
                build_contexts: [("base".to_owned(), "docker-image://r/base:1".to_owned())].into(),
                attests: vec![],
            },
            Output::DaemonTag { tag: "t".into() },
        );
        let a = &r.frontend_attrs;
        assert_eq!(a["no-cache"], "");
        assert_eq!(a["image-resolve-mode"], "pull");
        assert_eq!(a["force-network-mode"], "host");
        assert_eq!(a["add-hosts"], "db:10.0.0.2,cache:10.0.0.3");
        assert_eq!(a["shm-size"], "1073741824");
        assert_eq!(a["context:base"], "docker-image://r/base:1");
        assert_eq!(r.entitlements, vec!["network.host".to_owned()]);
        let cache = r.cache.unwrap();
        assert_eq!(cache.imports[0].r#type, "registry");
        // Kept apart per platform.
        assert_eq!(cache.imports[0].attrs["ref"], "r/c:amd64-linux-arm64");
        let in_attrs: serde_json::Value = serde_json::from_str(&a["cache-imports"]).unwrap();
        assert_eq!(
            in_attrs,
            serde_json::json!([{"Type": "registry", "Attrs": {"ref": "r/c:amd64-linux-arm64"}}])
        );
        assert!(cache.exports.is_empty());
    }

    #[test]
    fn a_failed_step_is_the_builds_fault_and_a_lost_engine_is_not() {
        let log = SessionLog::default();
        let failed = classify(
            "unix:///d.sock",
            tonic::Status::unknown(
                "process \"/bin/sh -c exit 3\" did not complete successfully: exit code: 3",
            ),
            Some("[2/2] RUN exit 3".into()),
            &log,
        );
        assert!(!failed.is_retryable());
        assert_eq!(
            failed.to_string(),
            "build failed at step `[2/2] RUN exit 3`: process \"/bin/sh -c exit 3\" did not complete successfully: exit code: 3"
        );
        let lost = classify(
            "unix:///d.sock",
            tonic::Status::unavailable("error reading from server: EOF"),
            None,
            &log,
        );
        assert!(lost.is_retryable());
        let push = classify(
            "unix:///d.sock",
            tonic::Status::unknown("failed to push 127.0.0.1:5000/a/app: 503 Service Unavailable"),
            None,
            &log,
        );
        assert!(push.is_retryable());
    }

    #[test]
    fn a_missing_login_names_the_registry_and_the_config_read() {
        let log = SessionLog::default();
        log.record(CredentialLookup {
            host: "127.0.0.1:5001".into(),
            origin: manifold_registry::auth::CredentialOrigin::Anonymous {
                config: Some(PathBuf::from("/home/w/.docker/config.json")),
            },
        });
        let failed = classify(
            "unix:///d.sock",
            tonic::Status::unknown(
                "failed to resolve source metadata for 127.0.0.1:5001/p/base:1: unexpected status from HEAD request to http://127.0.0.1:5001/v2/p/base/manifests/1: 401 Unauthorized",
            ),
            None,
            &log,
        );
        assert!(!failed.is_retryable());
        assert!(
            failed.to_string().ends_with(": registry 127.0.0.1:5001 needs a login and the worker's docker config /home/w/.docker/config.json has none for it: run `docker login 127.0.0.1:5001` as the worker's user"),
            "{failed}"
        );
    }
}
