//! The command line: clap definitions, and [`BuildPlan`], the checked form of `manifold build`'s
//! flags. Everything here is decided locally, before the coordinator is contacted.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use manifold_proto::build_flags;
use manifold_proto::{BuildFlags, BuildId, Platform, PlatformError, Secrets, v1};
use manifold_registry::tag_template::{DEFAULT_TAG_TEMPLATE, TagTemplate, TagTemplateError};

use crate::client::{Token, parse_token};
use crate::config::Flags;
use crate::dockerignore::clean;

/// Environment variable naming the coordinator (same as `--coordinator`).
pub const COORDINATOR_ENV: &str = "MANIFOLD_COORDINATOR";
/// Environment variable holding a tracing filter for the CLI's diagnostics (default `warn`).
pub const LOG_ENV: &str = "MANIFOLD_LOG";
/// The Dockerfile used when no `-f` applies to a platform.
pub const DEFAULT_DOCKERFILE: &str = "Dockerfile";

/// `manifold`: build multi-arch container images on a farm of native workers.
#[derive(Debug, Parser)]
#[command(
    name = "manifold",
    version,
    about = "Build multi-platform container images on a farm of native workers",
    long_about = "Build multi-platform container images on a farm of native workers.\n\n\
        `manifold build` packs a build context, sends it to the coordinator once per content digest, \
        builds every platform on a worker of that platform and pushes one manifest list under your tag."
)]
pub struct Cli {
    /// Coordinator address, or several comma-separated; https:// anywhere, http:// only to
    /// loopback [default: `coordinator` in the config file, else http://127.0.0.1:7700]
    #[arg(
        long,
        global = true,
        value_name = "URL",
        env = COORDINATOR_ENV,
        hide_env_values = true
    )]
    pub coordinator: Option<String>,

    /// Bearer token for the coordinator [env: MANIFOLD_TOKEN; config: token]; prefer the
    /// environment or the config file, other users can see command lines
    #[arg(long, global = true, value_name = "TOKEN", value_parser = parse_token)]
    pub token: Option<Token>,

    /// PEM CA certificate to trust for an https:// coordinator instead of the system's roots
    /// [env: MANIFOLD_CA_CERT; config: ca_cert]
    #[arg(long, global = true, value_name = "PATH")]
    pub ca_cert: Option<PathBuf>,

    /// What to do
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The flags about reaching the coordinator, for [`crate::config::resolve`].
    pub fn connection_flags(&self) -> Flags {
        Flags {
            coordinator: self.coordinator.clone(),
            token: self.token.clone(),
            ca_cert: self.ca_cert.clone(),
        }
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build an image for several platforms and push it under one tag
    Build(Box<BuildArgs>),
    /// List the workers connected to the coordinator (STATUS: ready, draining, paused, unhealthy), or drain, pause or resume one
    Workers(WorkersArgs),
    /// List builds, newest first
    Builds(BuildsArgs),
    /// Show a build and the state of each of its platforms
    BuildStatus(StatusArgs),
    /// Re-attach to a build's progress until it ends
    Watch(WatchArgs),
    /// Cancel a build: every unfinished platform stops and no tag is written
    Cancel(IdArgs),
    /// Push the manifest list of a build that failed only at publishing again, without rebuilding
    Publish(IdArgs),
    /// Print a build's recorded output, every platform's or one's
    Logs(LogsArgs),
    /// Show each team's weight, cap, running and queued jobs, and share of the running jobs
    Teams(FormatArgs),
    /// List the jobs waiting for a worker, per platform, in the order they are considered
    Queue(FormatArgs),
    /// Inspect and merge manifest lists directly in registries (no coordinator, no Docker daemon)
    #[command(subcommand)]
    Manifest(ManifestCommand),
    /// Print a shell completion script: `source <(manifold completion bash)`
    Completion(CompletionArgs),
}

/// `manifold manifest ...`: the docker manifest workflow without a daemon or a local staging copy.
#[derive(Debug, Subcommand)]
pub enum ManifestCommand {
    /// Show a manifest or list: its platforms, or the image a platform's client pulls
    Inspect(InspectArgs),
    /// Merge images (per-arch tags, or whole lists) into one list under a tag
    #[command(
        long_about = "Merge images (per-arch tags, or whole lists) into one list under a tag.\n\n\
        Each source's platform is read from its config; a source that is itself a list gives its \
        entries as they are, attestations included as buildx imagetools carries them (with the \
        image they are about; --exclude-attestations leaves them out). Without --push \
        nothing is written: the list is printed. With --push, images from other repositories are \
        mounted or copied into the target repository by digest, and the tag is written last, so a \
        failure leaves the target tag as it was. Nothing is staged locally: there is nothing to \
        clean up with `manifest rm`."
    )]
    Create(CreateArgs),
    /// Same as `create --push`: nothing is staged locally, so a push names its sources
    Push(CreateArgs),
    /// Accepted for `docker manifest rm` habits: manifold keeps no local copy, so nothing is removed
    Rm(RmArgs),
}

/// Registry access flags of the `manifest` commands.
#[derive(Debug, Clone, Args)]
pub struct RegistryArgs {
    /// Registry to reach over plain HTTP (loopback registries always are); repeatable
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    pub insecure_registries: Vec<String>,
}

/// Flags of `manifold manifest inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Image or list, e.g. registry.example.com/team/app:1.0 or ...@sha256:...
    #[arg(value_name = "REF")]
    pub reference: String,

    /// Show only the image a client of this platform pulls (as Docker chooses it), e.g. linux/arm64
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Option<String>,

    /// Print the manifest's exact bytes, as the registry serves them
    #[arg(long, conflicts_with = "format")]
    pub raw: bool,

    /// Output format
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = Format::Table)]
    pub format: Format,

    /// Registry access.
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// The list media type `manifest create` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MediaTypeArg {
    /// A Docker manifest list (Docker schema2 images only)
    Docker,
    /// An OCI image index (OCI or Docker schema2 images)
    Oci,
}

/// Flags of `manifold manifest create` (and `push`).
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Where the list goes, e.g. registry.example.com/team/app:1.0
    #[arg(value_name = "TARGET")]
    pub target: String,

    /// Images or lists to merge, e.g. app:1.0-x86_64 app:1.0-aarch64
    #[arg(value_name = "SOURCE")]
    pub sources: Vec<String>,

    /// Also take TARGET's per-arch tags (TAG-x86_64, TAG-aarch64 ..., see --tag-template)
    #[arg(long)]
    pub from_arch_tags: bool,

    /// With --from-arch-tags: the platforms whose tags must exist (default: those found),
    /// comma-separated and/or repeated
    #[arg(
        long = "platform",
        value_name = "PLATFORMS",
        requires = "from_arch_tags"
    )]
    pub platforms: Vec<String>,

    /// How per-arch tags are named; placeholders {tag}, {arch} (uname -m: x86_64, aarch64),
    /// {goarch} (amd64, arm64), {variant}, {os}
    #[arg(long, value_name = "TEMPLATE", default_value = DEFAULT_TAG_TEMPLATE)]
    pub tag_template: String,

    /// Start from the list already under TARGET: sources replace its entries of their platforms
    #[arg(long)]
    pub amend: bool,

    /// List a single-image SOURCE under this platform instead of the one its config declares
    #[arg(long, value_name = "SOURCE=OS/ARCH[/VARIANT]")]
    pub annotate: Vec<String>,

    /// List type (default: follows the images: Docker images give a Docker list, OCI an OCI index)
    #[arg(long, value_enum, value_name = "TYPE")]
    pub media_type: Option<MediaTypeArg>,

    /// Leave out the attestation entries of list sources (carried by default, as `docker
    /// buildx imagetools create` carries them)
    #[arg(long)]
    pub exclude_attestations: bool,

    /// Carry attestations (the default; kept for scripts written when it was not)
    #[arg(long, hide = true, conflicts_with = "exclude_attestations")]
    pub include_attestations: bool,

    /// Write the list to the registry (without it, the list is only printed)
    #[arg(long)]
    pub push: bool,

    /// Check everything, print what would be done, write nothing
    #[arg(long)]
    pub dry_run: bool,

    /// Print only the list's digest
    #[arg(short, long)]
    pub quiet: bool,

    /// Registry access.
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// Flags of `manifold manifest rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Lists as given to `docker manifest rm`
    #[arg(value_name = "REF")]
    pub references: Vec<String>,
}

/// The shells `manifold completion` writes for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompletionShell {
    /// `source <(manifold completion bash)`
    Bash,
    /// `manifold completion zsh > "${fpath[1]}/_manifold"`
    Zsh,
    /// `manifold completion fish > ~/.config/fish/completions/manifold.fish`
    Fish,
}

/// Flags of `manifold completion`.
#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: CompletionShell,
}

/// How build progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    /// A live line per platform on a terminal, plain lines otherwise
    Auto,
    /// Every event as a line prefixed with its platform
    Plain,
    /// Nothing but the final digest
    Quiet,
    /// Every event as one JSON object per line (also accepted as `rawjson`, buildx's name)
    #[value(alias = "rawjson")]
    Json,
}

/// How listings are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns for people
    Table,
    /// One JSON document for programs
    Json,
}

/// Flags of `manifold build`, as typed.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Image to push the multi-platform manifest list to, e.g. registry.example.com/team/app:1.0;
    /// repeat for more tags (the same list under each, every tag written last)
    #[arg(short = 't', long = "tag", value_name = "REF", required = true)]
    pub tags: Vec<String>,

    /// Platforms to build, comma-separated and/or repeated, e.g. linux/amd64,linux/arm64
    #[arg(long = "platform", value_name = "PLATFORMS", required = true)]
    pub platforms: Vec<String>,

    /// Dockerfile for all platforms (default `Dockerfile`), or PLATFORM=PATH for one platform;
    /// paths are relative to the context
    #[arg(short = 'f', long = "file", value_name = "[PLATFORM=]PATH")]
    pub files: Vec<String>,

    /// Build-time variable; a bare KEY takes its value from the environment
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    pub build_args: Vec<String>,

    /// Build stage to build (default: the last one)
    #[arg(long, value_name = "STAGE")]
    pub target: Option<String>,

    /// Label to set on the images
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,

    /// Also tag each platform's image as REF-<uname -m> (app:1.0-x86_64, app:1.0-aarch64)
    #[arg(long)]
    pub arch_tags: bool,

    /// How --arch-tags names the per-arch tags; placeholders {tag}, {arch} (uname -m),
    /// {goarch}, {variant}, {os}
    #[arg(long, value_name = "TEMPLATE", requires = "arch_tags", default_value = DEFAULT_TAG_TEMPLATE)]
    pub tag_template: String,

    /// How to show progress
    #[arg(long, value_enum, value_name = "MODE", default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,

    /// Print only the manifest list digest (same as --progress quiet)
    #[arg(short, long)]
    pub quiet: bool,

    /// Print the build id and return once the build is submitted
    #[arg(long)]
    pub detach: bool,

    /// Higher runs first among your team's queued jobs; it never reorders teams
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub priority: i32,

    /// Fail the build (and stop its platforms) when it has not ended this long after submission,
    /// waiting for workers included, e.g. 30m, 2h, 1h30m
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Do not use the build cache for any step
    #[arg(long)]
    pub no_cache: bool,

    /// Always resolve base images again, even when cached
    #[arg(long)]
    pub pull: bool,

    /// External cache source, e.g. type=registry,ref=REG/team/cache:main (a registry cache is
    /// kept apart per platform: its tag gets -linux-arm64 appended unless platform-split=false)
    #[arg(long = "cache-from", value_name = "CACHE")]
    pub cache_from: Vec<String>,

    /// Cache export destination, e.g. type=registry,ref=REG/team/cache:main,mode=max or type=inline
    #[arg(long = "cache-to", value_name = "CACHE")]
    pub cache_to: Vec<String>,

    /// Secret for RUN --mount=type=secret: id=ID[,src=PATH|,env=VAR]; read here, held in memory
    /// by the farm, never stored or logged
    #[arg(long = "secret", value_name = "id=ID[,src=PATH]")]
    pub secrets: Vec<String>,

    /// SSH keys for RUN --mount=type=ssh[,id=ID]: default=PATH or ID=PATH[,PATH...] (OpenSSH
    /// private key files without a passphrase); read here, held in memory by the farm like
    /// secrets, served to the build as an ssh-agent (a step can sign with them, never read them)
    #[arg(long = "ssh", value_name = "ID=PATH[,PATH]")]
    pub ssh: Vec<String>,

    /// Networking mode of RUN steps: default, none or host
    #[arg(long, value_name = "MODE")]
    pub network: Option<String>,

    /// Extra host-to-IP mapping for RUN steps (HOST:IP)
    #[arg(long = "add-host", value_name = "HOST:IP")]
    pub add_hosts: Vec<String>,

    /// Size of /dev/shm in RUN steps, e.g. 64m, 1g
    #[arg(long = "shm-size", value_name = "SIZE")]
    pub shm_size: Option<String>,

    /// Extra named context for the Dockerfile (FROM NAME, COPY --from=NAME):
    /// NAME=docker-image://REF, a Git or HTTP(S) URL, or target:STAGE
    #[arg(long = "build-context", value_name = "NAME=SOURCE")]
    pub build_contexts: Vec<String>,

    #[command(flatten)]
    pub attests: crate::build_flags::AttestArgs,

    /// Write the build's result as JSON to FILE (buildx's keys: containerimage.digest,
    /// image.name; plus manifold.build.id and each platform's manifest digest)
    #[arg(long = "metadata-file", value_name = "FILE")]
    pub metadata_file: Option<PathBuf>,

    /// Write the manifest list digest to FILE
    #[arg(long = "iidfile", value_name = "FILE")]
    pub iidfile: Option<PathBuf>,

    /// Build context directory
    #[arg(value_name = "CONTEXT")]
    pub context: PathBuf,
}

/// `manifold workers [drain|pause|resume NAME]`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct WorkersArgs {
    /// Without one, list the workers
    #[command(subcommand)]
    pub action: Option<WorkersAction>,

    /// Output format of the list
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = Format::Table)]
    pub format: Format,

    /// Keep watching: print the list again each time a worker attaches, detaches or changes
    /// (slots in use, drain, pause, health), until interrupted
    #[arg(long, short = 'w')]
    pub watch: bool,
}

/// What `manifold workers` can do besides listing.
#[derive(Debug, Subcommand)]
pub enum WorkersAction {
    /// Stop giving a worker jobs: it finishes its running ones, says goodbye and exits (as on SIGTERM)
    Drain(DrainArgs),
    /// Pause a worker: it stays attached and keeps its running jobs, but takes no new one (owner team or admin)
    Pause(DrainArgs),
    /// Resume a paused worker: it takes jobs again (owner team or admin)
    Resume(DrainArgs),
}

/// Flags of `manifold workers drain`.
#[derive(Debug, Args)]
pub struct DrainArgs {
    /// The worker's name, as `manifold workers` shows it
    #[arg(value_name = "NAME")]
    pub name: String,
}

/// `--format` alone.
#[derive(Debug, Args)]
pub struct FormatArgs {
    /// Output format
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = Format::Table)]
    pub format: Format,
}

/// Flags of `manifold builds`.
#[derive(Debug, Args)]
pub struct BuildsArgs {
    /// Output format
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = Format::Table)]
    pub format: Format,

    /// How many builds to show, newest first (0: the coordinator's default, 100; at most 1000)
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub limit: u32,

    /// Only builds submitted before this one (the last id of the previous page)
    #[arg(long, value_name = "ID")]
    pub before: Option<BuildId>,

    /// Only builds created since T: an RFC 3339 time (2026-12-01T08:00:00Z) or a duration ago (90s, 15m, 2h, 7d)
    #[arg(long, value_name = "T")]
    pub since: Option<crate::since::Since>,
}

/// Flags of `manifold build-status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Build id, as printed by `manifold build` and `manifold builds`
    #[arg(value_name = "ID")]
    pub id: BuildId,

    /// Output format
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = Format::Table)]
    pub format: Format,
}

/// Flags of `manifold watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Build id
    #[arg(value_name = "ID")]
    pub id: BuildId,

    /// How to show progress
    #[arg(long, value_enum, value_name = "MODE", default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,

    /// Print only the manifest list digest (same as --progress quiet)
    #[arg(short, long)]
    pub quiet: bool,
}

/// Flags of `manifold logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Build id
    #[arg(value_name = "ID")]
    pub id: BuildId,

    /// Only this platform's output, e.g. linux/arm64
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Option<Platform>,
}

/// A build id alone.
#[derive(Debug, Args)]
pub struct IdArgs {
    /// Build id
    #[arg(value_name = "ID")]
    pub id: BuildId,
}

/// A `manifold build` flag that cannot be used, named with the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    /// A buildx flag with a bad value (`--cache-to`, `--network`, `--add-host`, `--shm-size`).
    #[error(transparent)]
    Flag(#[from] manifold_proto::build_flags::FlagError),
    /// A `--secret` that cannot be read.
    #[error("--secret `{spec}`: {reason}")]
    Secret {
        /// The flag value.
        spec: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// A bad `--ssh`.
    #[error("--ssh {spec}: {reason}")]
    Ssh {
        /// The flag value.
        spec: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// A `--platform` value is not a platform.
    #[error("--platform: {0}")]
    Platform(#[source] PlatformError),
    /// `--platform` was given only empty values.
    #[error("--platform is empty: pass e.g. --platform linux/amd64,linux/arm64")]
    NoPlatform,
    /// Two `--platform` values normalise to the same platform.
    #[error(
        "--platform lists {platform} twice: `{first}` and `{second}` are the same platform; remove one"
    )]
    DuplicatePlatform {
        /// The normalised platform.
        platform: Platform,
        /// The first spelling.
        first: String,
        /// The second spelling.
        second: String,
    },
    /// `-f PLATFORM=PATH` with a bad platform.
    #[error("-f `{flag}`: {source}")]
    FilePlatform {
        /// The flag value.
        flag: String,
        /// Why the platform is bad.
        #[source]
        source: PlatformError,
    },
    /// `-f PLATFORM=PATH` for a platform that is not built.
    #[error("-f `{flag}` names {platform}, which is not among --platform {platforms}")]
    FileForOtherPlatform {
        /// The flag value.
        flag: String,
        /// Its platform.
        platform: Platform,
        /// The platforms built, comma-separated.
        platforms: String,
    },
    /// Two `-f` for the same platforms.
    #[error("-f given twice {scope}: `{first}` and `{second}`; {hint}")]
    DuplicateFile {
        /// `for linux/arm64`, or `for all platforms`.
        scope: String,
        /// The first path.
        first: String,
        /// The second path.
        second: String,
        /// What to do instead.
        hint: &'static str,
    },
    /// `-f` with no path.
    #[error("-f `{0}` has no path: pass -f PATH or -f PLATFORM=PATH")]
    EmptyFile(String),
    /// The context is not a directory.
    #[error("context `{path}` is not a directory: {reason}")]
    Context {
        /// The context as given.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A Dockerfile does not exist in the context.
    #[error("dockerfile `{path}` not found in context `{context}`: pass -f PATH")]
    DockerfileNotFound {
        /// The Dockerfile as given.
        path: String,
        /// The context directory.
        context: PathBuf,
    },
    /// A Dockerfile lies outside the context, so no worker would receive it.
    #[error(
        "dockerfile `{path}` is outside the context `{context}`: move it into the context or build from a directory that contains it"
    )]
    DockerfileOutsideContext {
        /// The Dockerfile as given.
        path: String,
        /// The context directory.
        context: PathBuf,
    },
    /// A `--label` or `--build-arg` that is not `KEY=VALUE`.
    #[error("{flag} `{value}` is not KEY=VALUE")]
    KeyValue {
        /// `--label` or `--build-arg`.
        flag: &'static str,
        /// The value given.
        value: String,
    },
    /// A `--tag-template` that cannot be used.
    #[error("--tag-template: {0}")]
    TagTemplate(#[source] TagTemplateError),
    /// The image reference is empty or has spaces.
    #[error(
        "invalid tag `{0}`: expected an image reference such as registry.example.com/team/app:1.0"
    )]
    Tag(String),
    /// More `-t` than a build takes.
    #[error(
        "{0} tags given with -t; a build takes at most {max}: push the others with `manifold manifest create`",
        max = build_flags::MAX_TAGS
    )]
    TooManyTags(usize),
}

/// `manifold build`'s flags, checked: normalised platforms, Dockerfiles found in the context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildPlan {
    /// Where the manifest list is pushed: the first `-t`.
    pub image: String,
    /// The other `-t`s, in order, without duplicates.
    pub extra_tags: Vec<String>,
    /// `--metadata-file`.
    pub metadata_file: Option<PathBuf>,
    /// `--iidfile`.
    pub iidfile: Option<PathBuf>,
    /// Platforms in the order given, without duplicates.
    pub platforms: Vec<Platform>,
    /// The canonical context directory.
    pub context: PathBuf,
    /// The Dockerfile of platforms without an override, relative to the context, `/`-separated.
    pub dockerfile: String,
    /// Per-platform Dockerfiles, relative to the context.
    pub platform_dockerfiles: BTreeMap<Platform, String>,
    /// `--build-arg`s; the last of a key wins.
    pub build_args: BTreeMap<String, String>,
    /// `--target`.
    pub target: Option<String>,
    /// `--label`s; the last of a key wins.
    pub labels: BTreeMap<String, String>,
    /// `--arch-tags`.
    pub arch_tags: bool,
    /// `--tag-template`: how the per-arch tags are named.
    pub arch_tag_template: TagTemplate,
    /// The progress display (`-q` folded in).
    pub progress: ProgressMode,
    /// `--detach`.
    pub detach: bool,
    /// `--timeout`.
    pub timeout: Duration,
    /// `--priority`: order among the team's queued jobs, higher first.
    pub priority: i32,
    /// `--no-cache`, `--pull`, caches, network, extra hosts, shm size, remote named contexts.
    pub flags: BuildFlags,
    /// `--build-context NAME=DIR` with a directory here: uploaded before the submit, then named
    /// in the request as [`manifold_proto::build_flags::UPLOADED_CONTEXT`] sources.
    pub local_contexts: BTreeMap<String, PathBuf>,
    /// `--secret` values, read from their files or variables.
    pub secrets: Secrets,
}

impl BuildPlan {
    /// Checks `args` against the file system (context and Dockerfiles) and the environment (bare
    /// `--build-arg KEY`).
    pub fn from_args(args: &BuildArgs) -> Result<Self, ArgsError> {
        let mut tags: Vec<String> = Vec::with_capacity(args.tags.len());
        for tag in &args.tags {
            let trimmed = tag.trim();
            if trimmed.is_empty() || trimmed.contains(char::is_whitespace) {
                return Err(ArgsError::Tag(tag.clone()));
            }
            if !tags.iter().any(|t| t == trimmed) {
                tags.push(trimmed.to_owned());
            }
        }
        if tags.len() > build_flags::MAX_TAGS {
            return Err(ArgsError::TooManyTags(tags.len()));
        }
        let image = tags.remove(0);
        let platforms = parse_platforms(&args.platforms)?;
        let (common, per_platform) = parse_file_flags(&args.files, &platforms)?;
        let context = args
            .context
            .canonicalize()
            .map_err(|e| ArgsError::Context {
                path: args.context.clone(),
                reason: match e.kind() {
                    std::io::ErrorKind::NotFound => "no such file or directory".to_owned(),
                    _ => e.to_string(),
                },
            })?;
        if !context.is_dir() {
            return Err(ArgsError::Context {
                path: args.context.clone(),
                reason: "it is a file; pass the directory that holds the Dockerfile".to_owned(),
            });
        }
        let dockerfile = resolve_dockerfile(
            &context,
            &args.context,
            common.as_deref().unwrap_or(DEFAULT_DOCKERFILE),
            // The default Dockerfile is only needed when some platform uses it.
            common.is_some() || platforms.iter().any(|p| !per_platform.contains_key(p)),
        )?;
        let platform_dockerfiles = per_platform
            .iter()
            .map(|(p, path)| {
                Ok((
                    p.clone(),
                    resolve_dockerfile(&context, &args.context, path, true)?,
                ))
            })
            .collect::<Result<_, ArgsError>>()?;
        let build_args = parse_key_values("--build-arg", &args.build_args, |key| {
            std::env::var(key).ok()
        })?;
        let labels = parse_key_values("--label", &args.labels, |_| None)?;
        let arch_tag_template =
            TagTemplate::parse(&args.tag_template).map_err(ArgsError::TagTemplate)?;
        let flags = crate::build_flags::parse_flags(args)?;
        let local_contexts = crate::build_flags::local_contexts(args)?;
        let mut secrets =
            crate::build_flags::parse_secrets(&args.secrets, |var| std::env::var_os(var))?;
        secrets.extend(crate::build_flags::parse_ssh_keys(&args.ssh)?);
        Ok(Self {
            image,
            extra_tags: tags,
            metadata_file: args.metadata_file.clone(),
            iidfile: args.iidfile.clone(),
            platforms,
            context,
            dockerfile,
            platform_dockerfiles,
            build_args,
            target: args.target.clone().filter(|t| !t.is_empty()),
            labels,
            arch_tags: args.arch_tags,
            arch_tag_template,
            progress: if args.quiet {
                ProgressMode::Quiet
            } else {
                args.progress
            },
            detach: args.detach,
            timeout: args.timeout,
            priority: args.priority,
            flags,
            local_contexts,
            secrets,
        })
    }

    /// Every Dockerfile the build uses, relative to the context: they are packed even when
    /// `.dockerignore` excludes them.
    pub fn dockerfiles(&self) -> Vec<String> {
        let mut all: Vec<String> = std::iter::once(self.dockerfile.clone())
            .chain(self.platform_dockerfiles.values().cloned())
            .collect();
        all.sort();
        all.dedup();
        all
    }

    /// The `Builds.Submit` request for a context already on the coordinator.
    pub fn request(&self, context_digest: &str) -> v1::SubmitBuildRequest {
        v1::SubmitBuildRequest {
            image: self.image.clone(),
            platforms: self.platforms.iter().map(v1::Platform::from).collect(),
            context_digest: context_digest.to_owned(),
            dockerfile: self.dockerfile.clone(),
            platform_dockerfiles: self
                .platform_dockerfiles
                .iter()
                .map(|(p, f)| (p.to_string(), f.clone()))
                .collect(),
            build_args: to_hash_map(&self.build_args),
            target: self.target.clone().unwrap_or_default(),
            labels: to_hash_map(&self.labels),
            arch_tags: self.arch_tags,
            priority: self.priority,
            timeout_seconds: self.timeout.as_secs_f64().ceil() as u64,
            arch_tag_template: if self.arch_tag_template.is_default() {
                String::new()
            } else {
                self.arch_tag_template.as_str().to_owned()
            },
            flags: Some(build_flags::to_wire(&self.flags)),
            secrets: self
                .secrets
                .iter()
                .map(|(id, value)| v1::Secret {
                    id: id.clone(),
                    value: value.0.clone(),
                })
                .collect(),
            extra_tags: self.extra_tags.clone(),
        }
    }
}

/// Parses a duration as people write it: a sequence of NUMBER UNIT with units h, m, s, ms, e.g.
/// `1h`, `30m`, `1h30m`, `90s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let err =
        || format!("invalid duration `{text}`: expected e.g. 30m, 2h or 1h30m (units h, m, s, ms)");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(err());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
        let n: u64 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let step = match &rest[..unit_len] {
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "s" => Duration::from_secs(n),
            "ms" => Duration::from_millis(n),
            _ => return Err(err()),
        };
        total = total.saturating_add(step);
        rest = &rest[unit_len..];
    }
    if total.is_zero() {
        return Err(format!(
            "invalid duration `{text}`: it must be longer than 0"
        ));
    }
    Ok(total)
}

fn to_hash_map(map: &BTreeMap<String, String>) -> HashMap<String, String> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// Parses `--platform` values (each comma-separated), keeping the order and refusing two
/// spellings of one platform.
pub fn parse_platforms(values: &[String]) -> Result<Vec<Platform>, ArgsError> {
    let mut seen: Vec<(Platform, String)> = Vec::new();
    for raw in values.iter().flat_map(|v| v.split(',')) {
        let raw = raw.trim();
        if raw.is_empty() {
            continue;
        }
        let platform = Platform::parse(raw).map_err(ArgsError::Platform)?;
        if let Some((_, first)) = seen.iter().find(|(p, _)| *p == platform) {
            return Err(ArgsError::DuplicatePlatform {
                platform,
                first: first.clone(),
                second: raw.to_owned(),
            });
        }
        seen.push((platform, raw.to_owned()));
    }
    if seen.is_empty() {
        return Err(ArgsError::NoPlatform);
    }
    Ok(seen.into_iter().map(|(p, _)| p).collect())
}

/// Splits `-f` values into the Dockerfile for all platforms and per-platform ones. A value with
/// `=` is always `PLATFORM=PATH`.
pub fn parse_file_flags(
    values: &[String],
    platforms: &[Platform],
) -> Result<(Option<String>, BTreeMap<Platform, String>), ArgsError> {
    let mut common: Option<String> = None;
    let mut per_platform: BTreeMap<Platform, String> = BTreeMap::new();
    for flag in values {
        match flag.split_once('=') {
            Some((platform, path)) => {
                let platform =
                    Platform::parse(platform).map_err(|source| ArgsError::FilePlatform {
                        flag: flag.clone(),
                        source,
                    })?;
                let path = path.trim();
                if path.is_empty() {
                    return Err(ArgsError::EmptyFile(flag.clone()));
                }
                if !platforms.contains(&platform) {
                    return Err(ArgsError::FileForOtherPlatform {
                        flag: flag.clone(),
                        platform,
                        platforms: join(platforms),
                    });
                }
                if let Some(first) = per_platform.get(&platform) {
                    return Err(ArgsError::DuplicateFile {
                        scope: format!("for {platform}"),
                        first: first.clone(),
                        second: path.to_owned(),
                        hint: "keep one",
                    });
                }
                per_platform.insert(platform, path.to_owned());
            }
            None => {
                let path = flag.trim();
                if path.is_empty() {
                    return Err(ArgsError::EmptyFile(flag.clone()));
                }
                if let Some(first) = &common {
                    return Err(ArgsError::DuplicateFile {
                        scope: "for all platforms".to_owned(),
                        first: first.clone(),
                        second: path.to_owned(),
                        hint: "use -f PLATFORM=PATH for a per-platform Dockerfile",
                    });
                }
                common = Some(path.to_owned());
            }
        }
    }
    Ok((common, per_platform))
}

fn join(platforms: &[Platform]) -> String {
    platforms
        .iter()
        .map(Platform::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Resolves a Dockerfile path (relative to the context, or absolute inside it) to a clean
/// relative `/`-separated path, and when `must_exist` checks that it is a file in the context.
fn resolve_dockerfile(
    context: &Path,
    context_as_given: &Path,
    given: &str,
    must_exist: bool,
) -> Result<String, ArgsError> {
    let outside = || ArgsError::DockerfileOutsideContext {
        path: given.to_owned(),
        context: context_as_given.to_owned(),
    };
    let not_found = || ArgsError::DockerfileNotFound {
        path: given.to_owned(),
        context: context_as_given.to_owned(),
    };
    let relative = if Path::new(given).is_absolute() {
        let cleaned = PathBuf::from(clean(given));
        let absolute_context = std::path::absolute(context_as_given).unwrap_or_default();
        let inside = [context, absolute_context.as_path()]
            .into_iter()
            .find_map(|root| cleaned.strip_prefix(root).ok().map(Path::to_owned))
            // The context may have been given through a symlink.
            .or_else(|| {
                cleaned
                    .canonicalize()
                    .ok()
                    .and_then(|c| c.strip_prefix(context).ok().map(Path::to_owned))
            });
        match inside {
            Some(rel) => rel.to_string_lossy().into_owned(),
            None if cleaned.exists() || !must_exist => return Err(outside()),
            None => return Err(not_found()),
        }
    } else {
        let cleaned = clean(given);
        if cleaned == ".." || cleaned.starts_with("../") {
            return Err(outside());
        }
        cleaned
    };
    if relative.is_empty() || relative == "." {
        return Err(not_found());
    }
    if must_exist && !context.join(&relative).is_file() {
        return Err(not_found());
    }
    Ok(relative)
}

/// Parses `KEY=VALUE` flags; a bare `KEY` asks `lookup` (the environment for build args, as
/// Docker does) and is dropped when it has no value.
fn parse_key_values(
    flag: &'static str,
    values: &[String],
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, String>, ArgsError> {
    let mut out = BTreeMap::new();
    for value in values {
        let bad = || ArgsError::KeyValue {
            flag,
            value: value.clone(),
        };
        match value.split_once('=') {
            Some((key, _)) if key.trim().is_empty() => return Err(bad()),
            Some((key, v)) => {
                out.insert(key.trim().to_owned(), v.to_owned());
            }
            None if flag == "--build-arg" && !value.trim().is_empty() => {
                if let Some(v) = lookup(value.trim()) {
                    out.insert(value.trim().to_owned(), v);
                }
            }
            None => return Err(bad()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("manifold").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    fn build_args(args: &[&str]) -> BuildArgs {
        match cli(args).command {
            Command::Build(b) => *b,
            other => panic!("not a build: {other:?}"),
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn context_with(files: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for f in files {
            let path = dir.path().join(f);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, "FROM scratch\n").unwrap();
        }
        dir
    }

    #[test]
    fn build_timeout_defaults_to_an_hour_and_reaches_the_request() {
        let ctx = context_with(&["Dockerfile"]);
        let dir = ctx.path().to_str().unwrap();
        let plan = |extra: &[&str]| {
            let mut args = vec![
                "build",
                "-t",
                "127.0.0.1:5000/a:1",
                "--platform",
                "linux/amd64",
            ];
            args.extend_from_slice(extra);
            args.push(dir);
            BuildPlan::from_args(&build_args(&args)).unwrap()
        };
        assert_eq!(plan(&[]).request("sha256:x").timeout_seconds, 3600);
        assert_eq!(
            plan(&["--timeout", "1h30m"])
                .request("sha256:x")
                .timeout_seconds,
            5400
        );
        assert_eq!(
            plan(&["--timeout", "1500ms"])
                .request("sha256:x")
                .timeout_seconds,
            2
        );
        for bad in ["0s", "10", "1d", "m", ""] {
            let err = Cli::try_parse_from([
                "manifold",
                "build",
                "-t",
                "r/a:1",
                "--platform",
                "linux/amd64",
                "--timeout",
                bad,
                dir,
            ])
            .unwrap_err()
            .to_string();
            assert!(err.contains(&format!("`{bad}`")), "{bad}: {err}");
        }
    }

    #[test]
    fn workers_lists_or_drains_one() {
        match cli(&["workers", "--format", "json"]).command {
            Command::Workers(w) => {
                assert!(w.action.is_none() && w.format == Format::Json && !w.watch)
            }
            other => panic!("{other:?}"),
        }
        match cli(&["workers", "drain", "x86-1"]).command {
            Command::Workers(WorkersArgs {
                action: Some(WorkersAction::Drain(d)),
                ..
            }) => assert_eq!(d.name, "x86-1"),
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["manifold", "workers", "drain"]).is_err());
        match cli(&["workers", "pause", "mac-1"]).command {
            Command::Workers(WorkersArgs {
                action: Some(WorkersAction::Pause(d)),
                ..
            }) => assert_eq!(d.name, "mac-1"),
            other => panic!("{other:?}"),
        }
        match cli(&["workers", "resume", "mac-1"]).command {
            Command::Workers(WorkersArgs {
                action: Some(WorkersAction::Resume(d)),
                ..
            }) => assert_eq!(d.name, "mac-1"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn platforms_are_comma_separated_repeated_and_normalised() {
        let p = parse_platforms(&strings(&["x86_64,arm64/v8", "linux/arm/v7"])).unwrap();
        let names: Vec<String> = p.iter().map(Platform::to_string).collect();
        assert_eq!(names, ["linux/amd64", "linux/arm64", "linux/arm/v7"]);
    }

    #[test]
    fn a_bad_platform_is_named_with_the_expected_form() {
        let err = parse_platforms(&strings(&["linux/amd64,linux/&arm"])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--platform: invalid platform `linux/&arm`: `&arm` is not a valid architecture: use \
             letters, digits, `_`, `.` and `-`; expected os/arch[/variant], e.g. linux/amd64, \
             linux/arm64, linux/arm/v7"
        );
    }

    #[test]
    fn two_spellings_of_one_platform_are_rejected_naming_both() {
        let err = parse_platforms(&strings(&["arm64,aarch64"])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--platform lists linux/arm64 twice: `arm64` and `aarch64` are the same platform; remove one"
        );
        let err = parse_platforms(&strings(&["linux/amd64", "x86_64"])).unwrap_err();
        assert!(matches!(err, ArgsError::DuplicatePlatform { .. }), "{err}");
        assert_eq!(
            parse_platforms(&strings(&[",", ""])).unwrap_err(),
            ArgsError::NoPlatform
        );
    }

    #[test]
    fn file_flags_split_into_common_and_per_platform() {
        let platforms = parse_platforms(&strings(&["linux/amd64,linux/arm64"])).unwrap();
        let (common, per) = parse_file_flags(
            &strings(&["build/Dockerfile", "linux/arm64=Dockerfile.arm64"]),
            &platforms,
        )
        .unwrap();
        assert_eq!(common.as_deref(), Some("build/Dockerfile"));
        assert_eq!(per.len(), 1);
        assert_eq!(per[&Platform::linux_arm64()], "Dockerfile.arm64");
        // Aliases are normalised: `aarch64=` is linux/arm64.
        let (_, per) = parse_file_flags(&strings(&["aarch64=Dockerfile.arm"]), &platforms).unwrap();
        assert_eq!(per[&Platform::linux_arm64()], "Dockerfile.arm");
    }

    #[test]
    fn file_flags_refuse_bad_platforms_strangers_and_repeats() {
        let platforms = parse_platforms(&strings(&["linux/amd64,linux/arm64"])).unwrap();
        let check = |flags: &[&str], expected: &str| {
            let err = parse_file_flags(&strings(flags), &platforms).unwrap_err();
            assert_eq!(err.to_string(), expected, "{flags:?}");
        };
        check(
            &["linux/&arm=Dockerfile"],
            "-f `linux/&arm=Dockerfile`: invalid platform `linux/&arm`: `&arm` is not a valid \
             architecture: use letters, digits, `_`, `.` and `-`; expected os/arch[/variant], e.g. \
             linux/amd64, linux/arm64, linux/arm/v7",
        );
        check(
            &["linux/s390x=Dockerfile.s390x"],
            "-f `linux/s390x=Dockerfile.s390x` names linux/s390x, which is not among --platform linux/amd64,linux/arm64",
        );
        check(
            &["a", "b"],
            "-f given twice for all platforms: `a` and `b`; use -f PLATFORM=PATH for a per-platform Dockerfile",
        );
        check(
            &["arm64=a", "aarch64=b"],
            "-f given twice for linux/arm64: `a` and `b`; keep one",
        );
        check(
            &["linux/arm64="],
            "-f `linux/arm64=` has no path: pass -f PATH or -f PLATFORM=PATH",
        );
    }

    #[test]
    fn the_command_line_parses_like_buildx() {
        let b = build_args(&[
            "build",
            "-t",
            "reg/app:1",
            "--platform",
            "linux/amd64,linux/arm64",
            "--platform",
            "arm/v7",
            "-f",
            "linux/arm64=Dockerfile.arm64",
            "--build-arg",
            "A=1",
            "--build-arg",
            "B=x=y",
            "--label",
            "team=core",
            "--target",
            "final",
            "--arch-tags",
            "-q",
            ".",
        ]);
        assert_eq!(b.tags, ["reg/app:1"]);
        assert_eq!(b.platforms, ["linux/amd64,linux/arm64", "arm/v7"]);
        assert_eq!(b.files, ["linux/arm64=Dockerfile.arm64"]);
        assert_eq!(b.build_args, ["A=1", "B=x=y"]);
        assert!(b.arch_tags && b.quiet && !b.detach);
        assert_eq!(b.context, PathBuf::from("."));
        assert_eq!(b.progress, ProgressMode::Auto);
    }

    #[test]
    fn several_tags_give_one_image_and_the_others_in_order_without_duplicates() {
        let dir = context_with(&["Dockerfile"]);
        let ctx = dir.path().to_str().unwrap();
        let plan = |tags: &[&str]| {
            let mut args = vec!["build", "--platform", "linux/amd64"];
            for t in tags {
                args.extend_from_slice(&["-t", t]);
            }
            args.push(ctx);
            BuildPlan::from_args(&build_args(&args))
        };
        let p = plan(&["r/app:1", "r/app:latest", "r/app:1", "other/app:1"]).unwrap();
        assert_eq!(p.image, "r/app:1");
        assert_eq!(p.extra_tags, ["r/app:latest", "other/app:1"]);
        assert_eq!(
            p.request("sha256:x").extra_tags,
            ["r/app:latest", "other/app:1"]
        );
        let many: Vec<String> = (0..=build_flags::MAX_TAGS)
            .map(|i| format!("r/app:{i}"))
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let e = plan(&many).unwrap_err().to_string();
        assert!(e.contains("17 tags") && e.contains("at most 16"), "{e}");
        let e = plan(&["r/app:1", "bad ref"]).unwrap_err().to_string();
        assert!(e.contains("`bad ref`"), "{e}");
    }

    #[test]
    fn a_plan_resolves_dockerfiles_and_folds_quiet_into_progress() {
        let dir = context_with(&["Dockerfile", "arm/Dockerfile"]);
        let ctx = dir.path().to_str().unwrap();
        let b = build_args(&[
            "build",
            "-t",
            "reg/app:1",
            "--platform",
            "amd64,aarch64",
            "-f",
            "linux/arm64=./arm/../arm/Dockerfile",
            "--build-arg",
            "K=V",
            "--build-arg",
            "K=W",
            "-q",
            ctx,
        ]);
        let plan = BuildPlan::from_args(&b).unwrap();
        assert_eq!(
            plan.platforms,
            [Platform::linux_amd64(), Platform::linux_arm64()]
        );
        assert_eq!(plan.dockerfile, "Dockerfile");
        assert_eq!(
            plan.platform_dockerfiles[&Platform::linux_arm64()],
            "arm/Dockerfile"
        );
        assert_eq!(plan.build_args["K"], "W");
        assert_eq!(plan.progress, ProgressMode::Quiet);
        assert_eq!(plan.dockerfiles(), ["Dockerfile", "arm/Dockerfile"]);
        let request = plan.request("sha256:00");
        assert_eq!(request.platforms.len(), 2);
        assert_eq!(
            request.platform_dockerfiles["linux/arm64"],
            "arm/Dockerfile"
        );
        assert_eq!(request.context_digest, "sha256:00");
        assert_eq!(request.target, "");
    }

    #[test]
    fn absolute_dockerfiles_inside_the_context_become_relative() {
        let dir = context_with(&["docker/Dockerfile.prod"]);
        let ctx = dir.path().to_str().unwrap();
        let abs = dir.path().join("docker/Dockerfile.prod");
        let b = build_args(&[
            "build",
            "-t",
            "app",
            "--platform",
            "amd64",
            "-f",
            abs.to_str().unwrap(),
            ctx,
        ]);
        assert_eq!(
            BuildPlan::from_args(&b).unwrap().dockerfile,
            "docker/Dockerfile.prod"
        );
    }

    #[test]
    fn missing_and_outside_dockerfiles_are_refused_with_the_fix() {
        let dir = context_with(&["src/main.rs"]);
        let ctx = dir.path().to_str().unwrap();
        let plan = |extra: &[&str]| {
            let mut args = vec!["build", "-t", "app", "--platform", "amd64"];
            args.extend_from_slice(extra);
            args.push(ctx);
            BuildPlan::from_args(&build_args(&args))
        };
        assert_eq!(
            plan(&[]).unwrap_err().to_string(),
            format!("dockerfile `Dockerfile` not found in context `{ctx}`: pass -f PATH")
        );
        assert_eq!(
            plan(&["-f", "../Dockerfile"]).unwrap_err().to_string(),
            format!(
                "dockerfile `../Dockerfile` is outside the context `{ctx}`: move it into the \
                 context or build from a directory that contains it"
            )
        );
        assert!(matches!(
            plan(&["-f", "/etc/hostname"]),
            Err(ArgsError::DockerfileOutsideContext { .. })
        ));
        // The default is not needed when every platform has its own, but those must exist.
        assert!(matches!(
            plan(&["-f", "amd64=Dockerfile.amd64"]),
            Err(ArgsError::DockerfileNotFound { path, .. }) if path == "Dockerfile.amd64"
        ));
    }

    #[test]
    fn key_values_need_an_equals_sign_except_env_build_args() {
        let lookup = |k: &str| (k == "FROM_ENV").then(|| "env-value".to_owned());
        let args = parse_key_values(
            "--build-arg",
            &strings(&["A=1", "FROM_ENV", "UNSET", "EMPTY="]),
            lookup,
        )
        .unwrap();
        assert_eq!(
            args.into_iter().collect::<Vec<_>>(),
            [
                ("A".to_owned(), "1".to_owned()),
                ("EMPTY".to_owned(), String::new()),
                ("FROM_ENV".to_owned(), "env-value".to_owned()),
            ]
        );
        let err = parse_key_values("--label", &strings(&["team"]), |_| None).unwrap_err();
        assert_eq!(err.to_string(), "--label `team` is not KEY=VALUE");
        let err = parse_key_values("--build-arg", &strings(&["=x"]), |_| None).unwrap_err();
        assert_eq!(err.to_string(), "--build-arg `=x` is not KEY=VALUE");
    }

    #[test]
    fn ids_and_formats_are_checked_by_the_parser() {
        let err = Cli::try_parse_from(["manifold", "cancel", "nope"]).unwrap_err();
        assert!(
            err.to_string().contains("`nope` is not a build id"),
            "{err}"
        );
        let c = cli(&["builds", "--format", "json", "--limit", "5"]);
        assert!(matches!(
            c.command,
            Command::Builds(BuildsArgs {
                format: Format::Json,
                limit: 5,
                before: None,
                since: None,
            })
        ));
        let err = Cli::try_parse_from(["manifold", "workers", "--format", "yaml"]).unwrap_err();
        assert!(err.to_string().contains("yaml"), "{err}");
    }

    #[test]
    fn build_takes_a_tag_template_only_with_arch_tags() {
        let dir = context_with(&["Dockerfile"]);
        let ctx = dir.path().to_str().unwrap();
        let plan = |extra: &[&str]| {
            let mut args = vec!["build", "-t", "reg/app:1", "--platform", "amd64"];
            args.extend_from_slice(extra);
            args.push(ctx);
            BuildPlan::from_args(&build_args(&args))
        };
        assert!(plan(&[]).unwrap().arch_tag_template.is_default());
        assert!(
            plan(&["--arch-tags", "--tag-template", "{tag}-{arch}"])
                .unwrap()
                .arch_tags
        );
        let custom = plan(&["--arch-tags", "--tag-template", "{tag}-{goarch}"]).unwrap();
        assert_eq!(
            custom.request("sha256:x").arch_tag_template,
            "{tag}-{goarch}"
        );
        assert_eq!(
            plan(&["--arch-tags"])
                .unwrap()
                .request("sha256:x")
                .arch_tag_template,
            ""
        );
        assert!(matches!(
            plan(&["--arch-tags", "--tag-template", "{tag}"]),
            Err(ArgsError::TagTemplate(TagTemplateError::NoArch { .. }))
        ));
        let err = Cli::try_parse_from([
            "manifold",
            "build",
            "-t",
            "a",
            "--platform",
            "amd64",
            "--tag-template",
            "{tag}-{arch}",
            ".",
        ])
        .unwrap_err();
        assert!(err.to_string().contains("--arch-tags"), "{err}");
    }

    #[test]
    fn manifest_commands_parse_like_docker_manifest() {
        let c = cli(&[
            "manifest",
            "create",
            "reg/app:1.0",
            "reg/app:1.0-x86_64",
            "reg/app:1.0-aarch64",
            "--annotate",
            "reg/app:1.0-aarch64=linux/arm64",
            "--media-type",
            "oci",
            "--insecure-registry",
            "reg:5000",
            "--push",
        ]);
        let Command::Manifest(ManifestCommand::Create(a)) = c.command else {
            panic!("not manifest create");
        };
        assert_eq!(a.target, "reg/app:1.0");
        assert_eq!(a.sources, ["reg/app:1.0-x86_64", "reg/app:1.0-aarch64"]);
        assert_eq!(a.annotate, ["reg/app:1.0-aarch64=linux/arm64"]);
        assert_eq!(a.media_type, Some(MediaTypeArg::Oci));
        assert_eq!(a.registry.insecure_registries, ["reg:5000"]);
        assert_eq!(a.tag_template, DEFAULT_TAG_TEMPLATE);
        assert!(a.push && !a.dry_run && !a.amend && !a.from_arch_tags);

        let c = cli(&[
            "manifest",
            "inspect",
            "reg/app:1.0",
            "--platform",
            "linux/arm64/v8",
        ]);
        let Command::Manifest(ManifestCommand::Inspect(i)) = c.command else {
            panic!("not manifest inspect");
        };
        assert_eq!(i.platform.as_deref(), Some("linux/arm64/v8"));
        assert_eq!(i.format, Format::Table);
        let err = Cli::try_parse_from([
            "manifold", "manifest", "inspect", "r", "--raw", "--format", "json",
        ])
        .unwrap_err();
        assert!(err.to_string().contains("cannot be used with"), "{err}");
        // --platform of create belongs to --from-arch-tags.
        let err = Cli::try_parse_from([
            "manifold",
            "manifest",
            "create",
            "r:1",
            "--platform",
            "linux/amd64",
        ])
        .unwrap_err();
        assert!(err.to_string().contains("--from-arch-tags"), "{err}");
        assert!(matches!(
            cli(&["manifest", "rm", "reg/app:1.0"]).command,
            Command::Manifest(ManifestCommand::Rm(_))
        ));
        assert!(matches!(
            cli(&["completion", "zsh"]).command,
            Command::Completion(CompletionArgs {
                shell: CompletionShell::Zsh
            })
        ));
        assert!(Cli::try_parse_from(["manifold", "completion", "tcsh"]).is_err());
    }

    #[test]
    fn the_token_flag_never_shows_in_debug_output() {
        let c = cli(&[
            "--token",
            "s3cr3t-t0ken",
            "--ca-cert",
            "/pki/ca.pem",
            "--coordinator",
            "https://c:7700",
            "teams",
        ]);
        assert!(!format!("{c:?}").contains("s3cr3t"), "{c:?}");
        let flags = c.connection_flags();
        assert!(!format!("{flags:?}").contains("s3cr3t"), "{flags:?}");
        assert_eq!(flags.token, Some(Token::new("s3cr3t-t0ken")));
        assert_eq!(flags.ca_cert, Some(PathBuf::from("/pki/ca.pem")));
        assert_eq!(flags.coordinator.as_deref(), Some("https://c:7700"));
        // Global: accepted after the subcommand too.
        let c = cli(&["queue", "--token", "t", "--format", "json"]);
        assert_eq!(c.connection_flags().token, Some(Token::new("t")));
        assert!(matches!(
            c.command,
            Command::Queue(FormatArgs {
                format: Format::Json
            })
        ));
    }

    #[test]
    fn logs_takes_a_build_and_an_optional_platform() {
        match cli(&[
            "logs",
            "3f2b8c1e-7d4a-4c61-9a57-0b6e2f1d9c3a",
            "--platform",
            "arm64",
        ])
        .command
        {
            Command::Logs(l) => assert_eq!(l.platform, Some(Platform::linux_arm64())),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            cli(&["teams"]).command,
            Command::Teams(FormatArgs {
                format: Format::Table
            })
        ));
        assert!(Cli::try_parse_from(["manifold", "logs"]).is_err());
    }

    #[test]
    fn build_priority_defaults_to_zero_and_may_be_negative() {
        let ctx = context_with(&["Dockerfile"]);
        let dir = ctx.path().to_str().unwrap();
        let priority = |extra: &[&str]| {
            let mut args = vec!["build", "-t", "app:1", "--platform", "amd64"];
            args.extend_from_slice(extra);
            args.push(dir);
            BuildPlan::from_args(&build_args(&args))
                .unwrap()
                .request("sha256:x")
                .priority
        };
        assert_eq!(priority(&[]), 0);
        assert_eq!(priority(&["--priority", "5"]), 5);
        assert_eq!(priority(&["--priority", "-2"]), -2);
        assert_eq!(priority(&["--priority=-9"]), -9);
    }
}
