//! The domain of a build: its validated request, its jobs, their states and the events watchers see.
//!
//! These are plain data; [`crate::farm`] drives their transitions and [`crate::api`] converts them
//! to and from wire types.

use std::collections::{BTreeMap, VecDeque};

use manifold_proto::{BuildFlags, BuildId, JobId, Platform, Secrets};
use oci_client::Reference;

use crate::contexts::{self, ContextStore};
use manifold_registry::ChildImage;

/// A build request that passed validation.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BuildSpec {
    /// Where the list goes; always carries a tag.
    #[serde(with = "reference_text")]
    pub image: Reference,
    /// Distinct, normalised.
    pub platforms: Vec<Platform>,
    /// `sha256:<hex>` of a stored context.
    pub context_digest: String,
    /// Dockerfile per platform (the default one where no override was given).
    pub dockerfiles: BTreeMap<Platform, String>,
    /// `--build-arg`s.
    pub build_args: BTreeMap<String, String>,
    /// `--target`, if any.
    pub target: Option<String>,
    /// `--label`s.
    pub labels: BTreeMap<String, String>,
    /// `--arch-tags`.
    pub arch_tags: bool,
    /// `--tag-template` for the per-arch tags; `None` is the default `{tag}-{arch}`.
    #[serde(default)]
    pub arch_tag_template: Option<String>,
    /// `--no-cache`, `--pull`, caches, network... and the ids (never the values) of the secrets.
    #[serde(default)]
    pub flags: BuildFlags,
    /// The further `-t`s: the same list goes under each (children brought into their repositories).
    #[serde(default, with = "reference_texts")]
    pub extra_tags: Vec<Reference>,
}

/// How long a build may take, queueing included, when the request does not say (1 hour).
pub const DEFAULT_BUILD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

/// A build request as the client sent it, before validation.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BuildRequest {
    /// Image reference text.
    pub image: String,
    /// Platform texts as received.
    pub platforms: Vec<String>,
    /// Context digest.
    pub context_digest: String,
    /// Default Dockerfile path (empty: `Dockerfile`).
    pub dockerfile: String,
    /// Per-platform Dockerfiles keyed by platform text.
    pub platform_dockerfiles: BTreeMap<String, String>,
    /// Build args.
    pub build_args: BTreeMap<String, String>,
    /// Target stage (empty: last).
    pub target: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Per-arch tags.
    pub arch_tags: bool,
    /// Seconds the build may take; 0 means [`DEFAULT_BUILD_TIMEOUT`].
    #[serde(default)]
    pub timeout_seconds: u64,
    /// Naming template of the per-arch tags (empty: the default `{tag}-{arch}`).
    #[serde(default)]
    pub arch_tag_template: String,
    /// Order among the submitting team's queued jobs: higher first (default 0).
    #[serde(default)]
    pub priority: i32,
    /// The buildx flags, already checked at the API edge.
    #[serde(default)]
    pub flags: BuildFlags,
    /// `--secret` values. Never serialised: the farm takes them out of the request at submit and
    /// holds them in memory only.
    #[serde(skip)]
    pub secrets: Secrets,
    /// Further tags (`-t` given more than once), as received.
    #[serde(default)]
    pub extra_tags: Vec<String>,
}

/// Why a request was refused; each message names the bad value and the fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidRequest {
    /// Bad reference.
    #[error(
        "invalid image reference {image}: {reason}; expected REGISTRY/REPOSITORY:TAG, e.g. 127.0.0.1:5000/team/app:1.0"
    )]
    Image {
        /// What was sent.
        image: String,
        /// Why.
        reason: String,
    },
    /// More tags than a build takes.
    #[error(
        "{0} tags requested; a build takes at most {max}: add the others with `manifold manifest create`",
        max = manifold_proto::build_flags::MAX_TAGS
    )]
    TooManyTags(usize),
    /// No platform.
    #[error("no platform requested: pass --platform, e.g. --platform linux/amd64,linux/arm64")]
    NoPlatform,
    /// Bad platform.
    #[error(transparent)]
    Platform(#[from] manifold_proto::PlatformError),
    /// Same platform twice.
    #[error("platform {0} is requested twice (after normalisation); list each platform once")]
    DuplicatePlatform(Platform),
    /// A per-platform Dockerfile for a platform not built.
    #[error(
        "a Dockerfile is given for {platform}, which is not among the requested platforms ({requested}); add it to --platform or drop the -f"
    )]
    DockerfileForUnrequested {
        /// The platform of the override.
        platform: Platform,
        /// The requested ones.
        requested: String,
    },
    /// Bad Dockerfile path.
    #[error("dockerfile path {0} must be relative to the context and stay inside it")]
    DockerfilePath(String),
    /// The Dockerfile is not in the context.
    #[error(
        "dockerfile `{dockerfile}` not found in the build context; pass -f with its path relative to the context"
    )]
    MissingDockerfile {
        /// The path looked for.
        dockerfile: String,
    },
    /// The Dockerfile is a symbolic link.
    #[error(
        "dockerfile `{dockerfile}` is a symbolic link in the build context; the Dockerfile must be a regular file: pass -f with the path of the file itself"
    )]
    DockerfileNotRegular {
        /// The path.
        dockerfile: String,
    },
    /// Context problems.
    #[error("{0}")]
    Context(String),
    /// A tag template that cannot name per-arch tags.
    #[error("invalid --tag-template `{template}`: {reason}")]
    TagTemplate {
        /// The template.
        template: String,
        /// Why.
        reason: String,
    },
    /// An empty or malformed key.
    #[error("invalid {what} {key}: keys must be non-empty and contain no `=` or whitespace")]
    Key {
        /// build arg or label
        what: &'static str,
        /// The key.
        key: String,
    },
}

impl BuildSpec {
    /// Every context the build reads: its own, and each uploaded `--build-context NAME=DIR`.
    pub fn contexts(&self) -> Vec<String> {
        std::iter::once(self.context_digest.clone())
            .chain(self.flags.uploaded_contexts().map(|(_, d)| d.to_owned()))
            .collect()
    }

    /// Whether the build reads context `digest`.
    pub fn uses_context(&self, digest: &str) -> bool {
        self.context_digest == digest || self.flags.uploaded_contexts().any(|(_, d)| d == digest)
    }

    /// Validates `req` against what the coordinator holds.
    pub fn validate(req: BuildRequest, contexts: &ContextStore) -> Result<Self, InvalidRequest> {
        let image = parse_image(&req.image)?;
        if req.extra_tags.len() + 1 > manifold_proto::build_flags::MAX_TAGS {
            return Err(InvalidRequest::TooManyTags(req.extra_tags.len() + 1));
        }
        let mut extra_tags: Vec<Reference> = Vec::new();
        for tag in &req.extra_tags {
            let tag = parse_image(tag)?;
            if tag != image && !extra_tags.contains(&tag) {
                extra_tags.push(tag);
            }
        }
        if req.platforms.is_empty() {
            return Err(InvalidRequest::NoPlatform);
        }
        let mut platforms: Vec<Platform> = Vec::new();
        for p in &req.platforms {
            let p = Platform::parse(p)?;
            if platforms.contains(&p) {
                return Err(InvalidRequest::DuplicatePlatform(p));
            }
            platforms.push(p);
        }
        let present = stored_context(contexts, &req.context_digest, "")?;
        // Each uploaded `--build-context NAME=DIR` stays inside its root too.
        for (name, digest) in req.flags.uploaded_contexts() {
            stored_context(contexts, digest, &format!(" of --build-context {name}"))?;
        }
        let default = clean_dockerfile(if req.dockerfile.is_empty() {
            "Dockerfile"
        } else {
            &req.dockerfile
        })?;
        let mut dockerfiles: BTreeMap<Platform, String> = platforms
            .iter()
            .map(|p| (p.clone(), default.clone()))
            .collect();
        for (p, path) in &req.platform_dockerfiles {
            let p = Platform::parse(p)?;
            if !platforms.contains(&p) {
                return Err(InvalidRequest::DockerfileForUnrequested {
                    platform: p,
                    requested: platforms
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(","),
                });
            }
            dockerfiles.insert(p, clean_dockerfile(path)?);
        }
        for d in dockerfiles.values() {
            if present.links.iter().any(|e| e == d) {
                return Err(InvalidRequest::DockerfileNotRegular {
                    dockerfile: d.clone(),
                });
            }
            if !present.files.iter().any(|e| e == d) {
                return Err(InvalidRequest::MissingDockerfile {
                    dockerfile: d.clone(),
                });
            }
        }
        for (what, map) in [("build arg", &req.build_args), ("label", &req.labels)] {
            if let Some(key) = map
                .keys()
                .find(|k| k.is_empty() || k.contains('=') || k.contains(char::is_whitespace))
            {
                return Err(InvalidRequest::Key {
                    what,
                    key: crate::limits::quote(key),
                });
            }
        }
        let arch_tag_template = Some(req.arch_tag_template.clone())
            .filter(|t| !t.is_empty())
            .map(|t: String| {
                manifold_registry::tag_template::TagTemplate::parse(&t)
                    .map(|_| t.clone())
                    .map_err(|e| InvalidRequest::TagTemplate {
                        template: t.clone(),
                        reason: e.to_string(),
                    })
            })
            .transpose()?;
        Ok(Self {
            arch_tag_template,
            image,
            platforms,
            context_digest: req.context_digest,
            dockerfiles,
            build_args: req.build_args,
            target: Some(req.target).filter(|t| !t.is_empty()),
            labels: req.labels,
            arch_tags: req.arch_tags,
            flags: BuildFlags {
                secret_ids: req.secrets.keys().cloned().collect(),
                ..req.flags
            },
            extra_tags,
        })
    }

    /// `registry/repository` of the target, where every child is pushed by digest.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.image.registry(), self.image.repository())
    }
}

impl BuildRequest {
    /// Every context the request names: its own, and each uploaded `--build-context NAME=DIR`.
    pub fn contexts(&self) -> Vec<String> {
        std::iter::once(self.context_digest.clone())
            .chain(self.flags.uploaded_contexts().map(|(_, d)| d.to_owned()))
            .collect()
    }

    /// How long the build may take, queueing included: `--timeout`, else [`DEFAULT_BUILD_TIMEOUT`].
    pub fn timeout(&self) -> std::time::Duration {
        match self.timeout_seconds {
            0 => DEFAULT_BUILD_TIMEOUT,
            n => std::time::Duration::from_secs(n),
        }
    }
}

/// A duration as people write it: `1h`, `10m`, `1m30s`, `45s`, `500ms`.
pub fn human_duration(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return format!("{}ms", d.as_millis());
    }
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    for (n, unit) in [(h, "h"), (m, "m"), (s, "s")] {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    out
}

/// Serialises an image reference as its text.
mod reference_text {
    use oci_client::Reference;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(r: &Reference, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&r.whole())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Reference, D::Error> {
        let text = String::deserialize(d)?;
        manifold_registry::reference::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Serialises a list of image references as their texts.
mod reference_texts {
    use oci_client::Reference;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(refs: &[Reference], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(refs.iter().map(Reference::whole))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Reference>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|t| manifold_registry::reference::parse(t).map_err(serde::de::Error::custom))
            .collect()
    }
}

fn parse_image(image: &str) -> Result<Reference, InvalidRequest> {
    let err = |reason: String| InvalidRequest::Image {
        image: crate::limits::quote(image),
        reason,
    };
    if image.trim().is_empty() {
        return Err(err("it is empty".into()));
    }
    let r = manifold_registry::reference::parse(image).map_err(|e| err(format!("{e}")))?;
    if r.digest().is_some() {
        return Err(err("a build writes a tag, not a digest".into()));
    }
    if r.tag().is_none() {
        return Ok(Reference::with_tag(
            r.registry().to_owned(),
            r.repository().to_owned(),
            "latest".into(),
        ));
    }
    Ok(r)
}

fn clean_dockerfile(path: &str) -> Result<String, InvalidRequest> {
    let trimmed = path.trim_start_matches("./");
    let bad = trimmed.is_empty()
        || trimmed.starts_with('/')
        || trimmed.split('/').any(|c| c == ".." || c.is_empty());
    if bad {
        return Err(InvalidRequest::DockerfilePath(crate::limits::quote(path)));
    }
    Ok(trimmed.to_owned())
}

/// What a context tar holds, once checked to stay inside its root.
struct TarListing {
    /// Paths of its regular files, normalised without a leading `./`.
    files: Vec<String>,
    /// Paths of its symbolic links.
    links: Vec<String>,
}

/// Why a context tar is refused.
enum TarProblem {
    /// Not a readable tar.
    Unreadable(std::io::Error),
    /// An entry that leaves the context's root.
    Escapes {
        /// The entry's path.
        entry: String,
        /// How.
        why: String,
    },
}

/// `path`'s components with `.` dropped and `..` applied; `None` when it is absolute or climbs
/// above the root.
fn inside(path: &str) -> Option<Vec<&str>> {
    if path.starts_with('/') {
        return None;
    }
    let mut out = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            c => out.push(c),
        }
    }
    Some(out)
}

/// Reads a context tar's headers (seeking past the data) and checks every entry: no absolute
/// path, no `..` component, no hard link to outside, no symbolic link resolving outside.
/// Checks that context `digest` (`what` says which, e.g. ` of --build-context vendor`) is stored
/// and stays inside its root; returns what it holds.
fn stored_context(
    contexts: &ContextStore,
    digest: &str,
    what: &str,
) -> Result<TarListing, InvalidRequest> {
    contexts::parse_digest(digest).map_err(|e| InvalidRequest::Context(e.to_string()))?;
    let path = contexts
        .path(digest)
        .map_err(|e| InvalidRequest::Context(e.to_string()))?;
    if !path.is_file() {
        return Err(InvalidRequest::Context(format!(
            "unknown context {digest}{what}: upload it with the Contexts service first (the manifold CLI does this)"
        )));
    }
    check_tar(&path).map_err(|e| match e {
        TarProblem::Unreadable(e) => InvalidRequest::Context(format!(
            "context {digest}{what} is not a readable tar archive: {e}"
        )),
        TarProblem::Escapes { entry, why } => InvalidRequest::Context(format!(
            "context {digest}{what} has the entry {entry}, which leaves the context: {why}; pack it with the manifold CLI"
        )),
    })
}

fn check_tar(path: &std::path::Path) -> Result<TarListing, TarProblem> {
    use crate::limits::quote;
    let file = std::fs::File::open(path).map_err(TarProblem::Unreadable)?;
    let mut archive = tar::Archive::new(file);
    let mut listing = TarListing {
        files: Vec::new(),
        links: Vec::new(),
    };
    for entry in archive
        .entries_with_seek()
        .map_err(TarProblem::Unreadable)?
    {
        let entry = entry.map_err(TarProblem::Unreadable)?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let escapes = |why: String| TarProblem::Escapes {
            entry: quote(&name),
            why,
        };
        if name.starts_with('/') {
            return Err(escapes("it is an absolute path".into()));
        }
        if name.split('/').any(|c| c == "..") {
            return Err(escapes("it has a `..` component".into()));
        }
        let kind = entry.header().entry_type();
        let target = entry
            .link_name_bytes()
            .map(|t| String::from_utf8_lossy(&t).into_owned())
            .unwrap_or_default();
        if kind.is_hard_link()
            && (target.split('/').any(|c| c == "..") || inside(&target).is_none())
        {
            return Err(escapes(format!(
                "it is a hard link to {}, outside the context",
                quote(&target)
            )));
        }
        if kind.is_symlink() {
            let dir = name
                .trim_end_matches('/')
                .rsplit_once('/')
                .map_or("", |(d, _)| d);
            let resolved = if dir.is_empty() || target.starts_with('/') {
                target.clone()
            } else {
                format!("{dir}/{target}")
            };
            if inside(&resolved).is_none() {
                return Err(escapes(format!(
                    "it is a symbolic link to {}, which leaves the context",
                    quote(&target)
                )));
            }
        }
        let clean = name.trim_start_matches("./").to_owned();
        if kind.is_file() || kind == tar::EntryType::Continuous {
            listing.files.push(clean);
        } else if kind.is_symlink() {
            listing.links.push(clean);
        }
    }
    Ok(listing)
}

/// Where a build is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BuildState {
    /// No job has started.
    Queued,
    /// At least one job started; or every job succeeded and the list is being pushed.
    Running,
    /// The list is under the tag.
    Succeeded,
    /// A job failed, or the list could not be pushed; no tag was written.
    Failed,
    /// Cancelled by a user; no tag was written.
    Cancelled,
}

impl BuildState {
    /// Whether the build has ended.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum JobState {
    /// Waiting for a worker slot.
    Queued,
    /// Sent to a worker, not yet acknowledged.
    Assigned,
    /// The worker is building.
    Running,
    /// Built, checked and pushed.
    Succeeded,
    /// Will not succeed.
    Failed,
    /// Stopped on request, or because another platform failed.
    Cancelled,
}

impl JobState {
    /// Whether the job has ended.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

/// Lines of output kept per job for failure reports.
pub const LOG_TAIL_LINES: usize = 30;

/// One platform's job.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Job {
    /// Stable across attempts.
    pub id: JobId,
    /// What it builds for.
    pub platform: Platform,
    /// State.
    pub state: JobState,
    /// Worker of the current (or last) attempt.
    pub worker: Option<String>,
    /// 0 until first assigned; each assignment increments it, so it names one attempt.
    pub attempt: u32,
    /// The pushed image, once succeeded.
    pub image: Option<ChildImage>,
    /// Why it failed; one line per failed attempt for retried jobs.
    pub error: Option<String>,
    /// The last [`LOG_TAIL_LINES`] lines of output.
    pub log_tail: VecDeque<String>,
}

/// A build and its jobs: what the state store keeps.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Build {
    /// Id.
    pub id: BuildId,
    /// What was asked.
    pub spec: BuildSpec,
    /// The request as received (echoed back to clients).
    pub request: BuildRequest,
    /// State.
    pub state: BuildState,
    /// One per platform, in request order.
    pub jobs: Vec<Job>,
    /// Digest and media type of the pushed list.
    pub manifest: Option<(String, String)>,
    /// Why it failed or was cancelled.
    pub error: Option<String>,
    /// Unix ms.
    pub created_at_ms: i64,
    /// Unix ms, once final.
    pub finished_at_ms: Option<i64>,
    /// Incremented by every state transition; the store refuses to go back to an older version.
    pub version: u64,
    /// The team that submitted it; only its members (and admins) see it.
    #[serde(default = "default_team")]
    pub team: String,
    /// The name of the token that submitted it (never the token).
    #[serde(default)]
    pub submitted_by: String,
    /// While its list is being pushed: `publishing`, or `publishing (retrying: ...)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publishing: Option<String>,
    /// Built by another, identical build of its team instead of by workers of its own
    /// (`crate::farm` reuse: joined while that one ran, or its images reused after it succeeded).
    #[serde(default)]
    pub reused: Option<Reused>,
}

/// How a build got its images from an identical build of its team.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Reused {
    /// It follows this unfinished build: same progress, same images, then its own list and tags.
    Joined(BuildId),
    /// It took the per-platform images of this succeeded build and wrote only its list and tags.
    From(BuildId),
}

impl Build {
    /// The build as a listing shows it (`Builds.List`): all of it but its build args, labels and
    /// output tails, which `Builds.Get` has. A page of listings costs what its builds' states
    /// cost to copy (under the farm's lock), not their logs; and its size is bounded by the
    /// number of builds.
    pub fn listing(&self) -> Build {
        let (s, r) = (&self.spec, &self.request);
        Build {
            id: self.id,
            spec: BuildSpec {
                image: s.image.clone(),
                platforms: s.platforms.clone(),
                context_digest: s.context_digest.clone(),
                dockerfiles: s.dockerfiles.clone(),
                build_args: BTreeMap::new(),
                target: s.target.clone(),
                labels: BTreeMap::new(),
                arch_tags: s.arch_tags,
                arch_tag_template: s.arch_tag_template.clone(),
                flags: s.flags.clone(),
                extra_tags: s.extra_tags.clone(),
            },
            request: BuildRequest {
                image: r.image.clone(),
                platforms: r.platforms.clone(),
                context_digest: r.context_digest.clone(),
                dockerfile: r.dockerfile.clone(),
                platform_dockerfiles: r.platform_dockerfiles.clone(),
                build_args: BTreeMap::new(),
                target: r.target.clone(),
                labels: BTreeMap::new(),
                arch_tags: r.arch_tags,
                timeout_seconds: r.timeout_seconds,
                arch_tag_template: r.arch_tag_template.clone(),
                priority: r.priority,
                flags: r.flags.clone(),
                secrets: Default::default(),
                extra_tags: r.extra_tags.clone(),
            },
            state: self.state,
            jobs: (self.jobs.iter())
                .map(|j| Job {
                    id: j.id,
                    platform: j.platform.clone(),
                    state: j.state,
                    worker: j.worker.clone(),
                    attempt: j.attempt,
                    image: j.image.clone(),
                    error: j.error.clone(),
                    log_tail: VecDeque::new(),
                })
                .collect(),
            manifest: self.manifest.clone(),
            error: self.error.clone(),
            created_at_ms: self.created_at_ms,
            finished_at_ms: self.finished_at_ms,
            version: self.version,
            team: self.team.clone(),
            submitted_by: self.submitted_by.clone(),
            publishing: self.publishing.clone(),
            reused: self.reused,
        }
    }

    /// When the build times out, in Unix ms.
    pub fn deadline_ms(&self) -> i64 {
        let timeout = i64::try_from(self.request.timeout().as_millis()).unwrap_or(i64::MAX);
        self.created_at_ms.saturating_add(timeout)
    }

    /// Why the build timed out, naming each platform that had not finished.
    pub fn timeout_error(&self) -> String {
        let unfinished: Vec<String> = self
            .jobs
            .iter()
            .filter(|j| !j.state.is_final())
            .map(|j| match (&j.state, &j.worker) {
                (JobState::Assigned | JobState::Running, Some(w)) => {
                    format!("{} (running on {w}, attempt {})", j.platform, j.attempt)
                }
                _ => format!("{} (waiting for a worker)", j.platform),
            })
            .collect();
        format!(
            "timed out after {}: {} had not finished; pass a longer --timeout to `manifold build` if the build needs more time",
            human_duration(self.request.timeout()),
            unfinished.join(", ")
        )
    }
}

impl Job {
    /// The error of a job that used up its `n` attempts: each attempt's worker and cause.
    pub fn give_up_error(&self, n: u32) -> String {
        let history: Vec<&str> = self.error.as_deref().unwrap_or_default().lines().collect();
        format!(
            "{} failed after {n} attempt{}: {}",
            self.platform,
            if n == 1 { "" } else { "s" },
            history.join("; ")
        )
    }
}

fn default_team() -> String {
    crate::scheduler::DEFAULT_TEAM.to_owned()
}

/// What watchers see, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A job changed state.
    JobState {
        /// Its platform.
        platform: Platform,
        /// New state.
        state: JobState,
        /// Worker, if any.
        worker: Option<String>,
        /// Attempt.
        attempt: u32,
        /// Free text (error on failure, digest on success).
        message: String,
    },
    /// A line of build output.
    Log {
        /// Its platform.
        platform: Platform,
        /// The line.
        line: String,
    },
    /// The list push of a fully built build (re)started, or waits to retry.
    Publishing {
        /// What happens, e.g. `retrying: ...; next try in 8s, giving up in 9m`.
        message: String,
    },
    /// The build ended; the last event (a `manifold publish` of a build that failed at
    /// publishing goes on with `Publishing` and a second `Finished`).
    Finished {
        /// Final state.
        state: BuildState,
        /// List digest on success.
        manifest_digest: Option<String>,
        /// Error otherwise.
        error: Option<String>,
    },
}

/// A numbered event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// 0-based position in the build's history.
    pub sequence: u64,
    /// Unix ms.
    pub at_ms: i64,
    /// What happened.
    pub kind: EventKind,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_is_the_build_without_its_args_labels_and_output_tails() {
        let mut build = crate::store::suite::build(7);
        build.spec.labels = [("team".to_owned(), "mobile".to_owned())].into();
        build.request.build_args = [("V".to_owned(), "1".to_owned())].into();
        build.request.labels = build.spec.labels.clone();
        build.request.target = "app".into();
        build.jobs[0].worker = Some("mac-1".into());
        build.jobs[0].error = Some("attempt 1 on mac-1: worker lost".into());
        build.error = Some("cancelled".into());
        let mut expected = build.clone();
        (expected.spec.build_args, expected.spec.labels) = Default::default();
        (expected.request.build_args, expected.request.labels) = Default::default();
        expected.jobs[0].log_tail.clear();
        assert_eq!(build.listing(), expected);
        assert!(!build.jobs[0].log_tail.is_empty() && !build.spec.build_args.is_empty());
    }

    struct Ctx {
        _dir: tempfile::TempDir,
        store: ContextStore,
        digest: String,
    }

    /// A store holding one context with the given files.
    fn context(files: &[&str]) -> Ctx {
        let dir = tempfile::tempdir().unwrap();
        let store = ContextStore::open(dir.path()).unwrap();
        let mut builder = tar::Builder::new(Vec::new());
        for f in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(4);
            h.set_mode(0o644);
            h.set_cksum();
            builder.append_data(&mut h, f, &b"FROM"[..]).unwrap();
        }
        let bytes = builder.into_inner().unwrap();
        use sha2::Digest as _;
        let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes)));
        std::fs::write(store.path(&digest).unwrap(), &bytes).unwrap();
        Ctx {
            _dir: dir,
            store,
            digest,
        }
    }

    fn request(ctx: &Ctx) -> BuildRequest {
        BuildRequest {
            image: "127.0.0.1:5000/team/app:1.0".into(),
            platforms: vec!["linux/amd64".into(), "aarch64".into()],
            context_digest: ctx.digest.clone(),
            ..Default::default()
        }
    }

    #[track_caller]
    fn check_err(ctx: &Ctx, edit: impl FnOnce(&mut BuildRequest), expected: &str) {
        let mut req = request(ctx);
        edit(&mut req);
        let err = BuildSpec::validate(req, &ctx.store)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(expected),
            "`{err}` should contain `{expected}`"
        );
    }

    /// A store holding one context of raw entries (path, type, link target), written byte by
    /// byte so that paths the tar crate would refuse to write can be tested.
    fn raw_context(entries: &[(&str, tar::EntryType, &str)]) -> Ctx {
        let dir = tempfile::tempdir().unwrap();
        let store = ContextStore::open(dir.path()).unwrap();
        let mut bytes = Vec::new();
        for (path, kind, target) in entries {
            let mut h = tar::Header::new_old();
            let data: &[u8] = if kind.is_file() { b"FROM" } else { b"" };
            h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
            h.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            bytes.extend_from_slice(h.as_bytes());
            bytes.extend_from_slice(data);
            bytes.resize(bytes.len().next_multiple_of(512), 0);
        }
        bytes.resize(bytes.len() + 1024, 0);
        use sha2::Digest as _;
        let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes)));
        std::fs::write(store.path(&digest).unwrap(), &bytes).unwrap();
        Ctx {
            _dir: dir,
            store,
            digest,
        }
    }

    #[test]
    fn a_context_tar_must_stay_inside_its_root() {
        use tar::EntryType::{Link, Regular, Symlink};
        let check = |extra: (&str, tar::EntryType, &str), expected: Option<&str>| {
            let ctx = raw_context(&[("Dockerfile", Regular, ""), extra]);
            let mut req = request(&ctx);
            req.platforms = vec!["linux/amd64".into()];
            match (BuildSpec::validate(req, &ctx.store), expected) {
                (Ok(_), None) => {}
                (Err(e), Some(needle)) => {
                    let text = e.to_string();
                    assert!(text.contains(needle), "`{text}` should contain `{needle}`");
                }
                (got, want) => panic!("{extra:?}: got {got:?}, expected {want:?}"),
            }
        };
        check(("src/a.txt", Regular, ""), None);
        check(("src/link", Symlink, "../Dockerfile"), None);
        check(("src/hard", Link, "Dockerfile"), None);
        check(
            ("/etc/passwd", Regular, ""),
            Some("entry `/etc/passwd`, which leaves the context: it is an absolute path"),
        );
        check(
            ("../x", Regular, ""),
            Some("entry `../x`, which leaves the context: it has a `..` component"),
        );
        check(("a/../../x", Regular, ""), Some("`..` component"));
        check(
            ("src/up", Symlink, "../../etc"),
            Some("symbolic link to `../../etc`, which leaves the context"),
        );
        check(
            ("abs", Symlink, "/etc/shadow"),
            Some("symbolic link to `/etc/shadow`"),
        );
        check(
            ("hard", Link, "/etc/shadow"),
            Some("hard link to `/etc/shadow`, outside the context"),
        );
        check(
            ("hard", Link, "../secret"),
            Some("hard link to `../secret`"),
        );
        // The Dockerfile itself must be a regular file.
        let ctx = raw_context(&[("real", Regular, ""), ("Dockerfile", Symlink, "real")]);
        let mut req = request(&ctx);
        req.platforms = vec!["linux/amd64".into()];
        let err = BuildSpec::validate(req, &ctx.store)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("dockerfile `Dockerfile` is a symbolic link"),
            "{err}"
        );
    }

    #[test]
    fn a_good_request_is_normalised() {
        let ctx = context(&["Dockerfile", "arm/Dockerfile.arm64"]);
        let mut req = request(&ctx);
        req.platform_dockerfiles
            .insert("linux/arm64/v8".into(), "./arm/Dockerfile.arm64".into());
        let spec = BuildSpec::validate(req, &ctx.store).unwrap();
        assert_eq!(
            spec.platforms,
            vec![Platform::linux_amd64(), Platform::linux_arm64()]
        );
        assert_eq!(spec.dockerfiles[&Platform::linux_amd64()], "Dockerfile");
        assert_eq!(
            spec.dockerfiles[&Platform::linux_arm64()],
            "arm/Dockerfile.arm64"
        );
        assert_eq!(spec.repository(), "127.0.0.1:5000/team/app");
        assert_eq!(spec.image.tag(), Some("1.0"));
    }

    #[test]
    fn extra_tags_are_references_with_tags_without_repeats() {
        let ctx = context(&["Dockerfile"]);
        let mut req = request(&ctx);
        req.extra_tags = vec![
            "127.0.0.1:5000/team/app:latest".into(),
            "127.0.0.1:5000/team/app:1.0".into(),
            "127.0.0.1:5000/other/app".into(),
            "127.0.0.1:5000/team/app:latest".into(),
        ];
        let spec = BuildSpec::validate(req, &ctx.store).unwrap();
        let tags: Vec<String> = spec.extra_tags.iter().map(Reference::whole).collect();
        assert_eq!(
            tags,
            [
                "127.0.0.1:5000/team/app:latest",
                "127.0.0.1:5000/other/app:latest"
            ]
        );
        check_err(
            &ctx,
            |r| r.extra_tags = vec!["127.0.0.1:5000/team/app@sha256:".to_owned() + &"a".repeat(64)],
            "a build writes a tag, not a digest",
        );
        check_err(
            &ctx,
            |r| r.extra_tags = (0..16).map(|i| format!("127.0.0.1:5000/t/a:{i}")).collect(),
            "17 tags requested; a build takes at most 16",
        );
    }

    #[test]
    fn durations_read_as_people_write_them() {
        use std::time::Duration;
        for (d, text) in [
            (Duration::from_secs(3600), "1h"),
            (Duration::from_secs(600), "10m"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(3661), "1h1m1s"),
            (Duration::from_secs(3), "3s"),
            (Duration::from_millis(500), "500ms"),
        ] {
            assert_eq!(human_duration(d), text);
        }
    }

    #[test]
    fn the_timeout_defaults_to_an_hour() {
        let mut req = BuildRequest::default();
        assert_eq!(req.timeout(), DEFAULT_BUILD_TIMEOUT);
        req.timeout_seconds = 90;
        assert_eq!(req.timeout(), std::time::Duration::from_secs(90));
    }

    #[test]
    fn bad_requests_are_refused_with_the_bad_value_named() {
        let ctx = context(&["Dockerfile"]);
        check_err(&ctx, |r| r.image = "Bad Ref!".into(), "`Bad Ref!`");
        check_err(&ctx, |r| r.image.clear(), "invalid image reference");
        check_err(&ctx, |r| r.platforms.clear(), "no platform requested");
        check_err(
            &ctx,
            |r| r.platforms.push("linux/&arm".into()),
            "`linux/&arm`",
        );
        check_err(
            &ctx,
            |r| r.platforms.push("x86_64".into()),
            "linux/amd64 is requested twice",
        );
        check_err(
            &ctx,
            |r| r.context_digest = format!("sha256:{}", "0".repeat(64)),
            "unknown context",
        );
        check_err(&ctx, |r| r.context_digest = "nope".into(), "`nope`");
        check_err(
            &ctx,
            |r| r.dockerfile = "Dockerfile.missing".into(),
            "dockerfile `Dockerfile.missing` not found",
        );
        check_err(
            &ctx,
            |r| r.dockerfile = "../Dockerfile".into(),
            "`../Dockerfile`",
        );
        check_err(
            &ctx,
            |r| {
                r.platform_dockerfiles
                    .insert("linux/s390x".into(), "Dockerfile".into());
            },
            "given for linux/s390x",
        );
        check_err(
            &ctx,
            |r| {
                r.build_args.insert("A B".into(), "1".into());
            },
            "invalid build arg `A B`",
        );
        check_err(
            &ctx,
            |r| {
                r.arch_tags = true;
                r.arch_tag_template = "{tag}".into();
            },
            "invalid --tag-template `{tag}`",
        );
    }
}
