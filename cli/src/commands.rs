//! One function per subcommand. Results go to stdout (the digest, a table, a JSON document);
//! progress and diagnostics go to stderr through [`Progress`].

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use manifold_proto::BuildId;
use manifold_proto::v1::{self, build_event::Event};
use tokio::sync::watch;

use crate::args::BuildsArgs;
use crate::args::{BuildPlan, Format, ProgressMode};
use crate::client::{ClientError, Coordinator, ListQuery};
use crate::context::{self, ContextDigest, ContextError, ContextSource, SendOutcome};
use crate::listing;
use crate::progress::{Progress, failure_report, platform_name};
use crate::result_files;

/// How many times a lost watch stream is re-opened before giving up.
const WATCH_RETRIES: u32 = 5;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// Talking to the coordinator failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Packing or sending the context failed.
    #[error(transparent)]
    Context(#[from] ContextError),
    /// The build ended FAILED.
    #[error("build {id} failed: {error}")]
    BuildFailed {
        /// The build.
        id: BuildId,
        /// The coordinator's summary, naming the failing platform.
        error: String,
    },
    /// The build ended CANCELLED.
    #[error("build {id} was cancelled{}", reason_suffix(.reason))]
    Cancelled {
        /// The build.
        id: BuildId,
        /// Why, if the coordinator said.
        reason: String,
    },
    /// Ctrl-C before the build ended.
    #[error("{}", interrupted_message(.id))]
    Interrupted {
        /// The build, if it had been submitted.
        id: Option<BuildId>,
    },
    /// `--iidfile` or `--metadata-file` could not be written.
    #[error(transparent)]
    ResultFile(#[from] crate::result_files::WriteError),
    /// The watch stream could not be re-opened.
    #[error("lost the progress of build {id}: {reason}; re-attach with `manifold watch {id}`")]
    WatchLost {
        /// The build.
        id: BuildId,
        /// The last error.
        reason: String,
    },
}

fn reason_suffix(reason: &str) -> String {
    if reason.is_empty() {
        String::new()
    } else {
        format!(": {reason}")
    }
}

fn interrupted_message(id: &Option<BuildId>) -> String {
    match id {
        None => "interrupted before the build was submitted".to_owned(),
        Some(id) => format!(
            "interrupted; build {id} may still be running: `manifold build-status {id}` shows it, \
             `manifold cancel {id}` stops it"
        ),
    }
}

impl CommandError {
    /// The process exit code for this error: 130 after Ctrl-C, as shells expect, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            CommandError::Interrupted { .. } => 130,
            _ => 1,
        }
    }
}

/// Ctrl-C presses, counted by the binary (the only place that knows about signals) and passed
/// down as a value.
#[derive(Debug, Clone)]
pub struct Interrupts {
    rx: Option<watch::Receiver<u32>>,
}

impl Interrupts {
    /// Follows a counter of presses that the binary increments.
    pub fn new(rx: watch::Receiver<u32>) -> Self {
        Self { rx: Some(rx) }
    }

    /// Never interrupted.
    pub fn none() -> Self {
        Self { rx: None }
    }

    /// Presses so far.
    pub fn count(&self) -> u32 {
        self.rx.as_ref().map_or(0, |rx| *rx.borrow())
    }

    /// Resolves once at least `n` presses happened; never if nobody counts.
    pub async fn reached(&mut self, n: u32) {
        if let Some(rx) = &mut self.rx
            && rx.wait_for(|count| *count >= n).await.is_ok()
        {
            return;
        }
        std::future::pending::<()>().await;
    }

    async fn unless_interrupted<T>(
        &mut self,
        n: u32,
        id: Option<BuildId>,
        work: impl Future<Output = T>,
    ) -> Result<T, CommandError> {
        tokio::select! {
            biased;
            () = self.reached(n) => Err(CommandError::Interrupted { id }),
            value = work => Ok(value),
        }
    }
}

/// How `manifold build` ended without error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildOutcome {
    /// `--detach`: submitted, not followed.
    Detached(BuildId),
    /// Every platform built and the manifest list pushed.
    Succeeded {
        /// The build.
        id: BuildId,
        /// Digest of the manifest list.
        digest: String,
    },
}

/// `manifold build`: packs and sends the context, submits, and follows the build to its end.
/// Prints the manifest list digest on stdout on success. The first Ctrl-C cancels the build on
/// the coordinator and waits for it to end; the second returns at once.
pub async fn build(
    coordinator: &Coordinator,
    plan: &BuildPlan,
    mut interrupts: Interrupts,
) -> Result<BuildOutcome, CommandError> {
    let mut progress = Progress::new(plan.progress, &[]);
    let (digest, sent) = send_context(
        coordinator,
        &plan.context,
        &plan.dockerfiles(),
        &mut interrupts,
    )
    .await?;
    match sent {
        SendOutcome::AlreadyPresent => progress.note(&format!(
            "context {} already on the coordinator, 0 bytes uploaded",
            digest.short()
        )),
        SendOutcome::Uploaded(bytes) => progress.note(&format!(
            "context {} uploaded, {bytes} bytes",
            digest.short()
        )),
    }

    // Each `--build-context NAME=DIR` is a context of its own, uploaded once like the main one.
    let mut request = plan.request(&digest.digest);
    for (name, dir) in &plan.local_contexts {
        let uploaded = send_context(coordinator, dir, &[], &mut interrupts).await?;
        let note = match uploaded.1 {
            SendOutcome::AlreadyPresent => {
                "already on the coordinator, 0 bytes uploaded".to_owned()
            }
            SendOutcome::Uploaded(bytes) => format!("uploaded, {bytes} bytes"),
        };
        progress.note(&format!(
            "build context {name} ({}) {}: {note}",
            dir.display(),
            uploaded.0.short()
        ));
        if let Some(flags) = request.flags.as_mut() {
            flags.build_contexts.insert(
                name.clone(),
                format!(
                    "{}{}",
                    manifold_proto::build_flags::UPLOADED_CONTEXT,
                    uploaded.0.digest
                ),
            );
        }
    }

    // A first Ctrl-C during the submission is handled once the build id is known; a second one
    // gives up waiting.
    let id = interrupts
        .unless_interrupted(2, None, coordinator.submit(request))
        .await??;
    if plan.detach {
        progress.note(&format!(
            "build {id} submitted; follow it with `manifold watch {id}`"
        ));
        println!("{id}");
        return Ok(BuildOutcome::Detached(id));
    }
    let platforms: Vec<String> = plan.platforms.iter().map(ToString::to_string).collect();
    progress.note(&format!(
        "build {id}: {} for {}",
        plan.image,
        platforms.join(", ")
    ));
    progress.add_platforms(&plan.platforms);
    let finished = follow(coordinator, id, &mut progress, &mut interrupts, false).await?;
    let outcome = conclude(coordinator, id, finished, progress).await?;
    if let BuildOutcome::Succeeded { digest, .. } = &outcome {
        write_result_files(coordinator, plan, id, digest).await?;
    }
    Ok(outcome)
}

/// Hashes the directory `dir` as a context (its `.dockerignore` applied, `always` kept) and makes
/// sure the coordinator holds it.
async fn send_context(
    coordinator: &Coordinator,
    dir: &std::path::Path,
    always: &[String],
    interrupts: &mut Interrupts,
) -> Result<(ContextDigest, SendOutcome), CommandError> {
    let source = Arc::new(ContextSource::open(dir, always)?);
    let hashing = Arc::clone(&source);
    let digest = interrupts
        .unless_interrupted(
            1,
            None,
            tokio::task::spawn_blocking(move || hashing.digest()),
        )
        .await?
        .map_err(|e| ContextError::Aborted(e.to_string()))??;
    let sent = interrupts
        .unless_interrupted(1, None, context::send(coordinator, source, &digest))
        .await??;
    Ok((digest, sent))
}

/// `--iidfile` gets the list digest (as buildx writes it, no newline); `--metadata-file` the
/// build's result document (see [`crate::result_files`]).
async fn write_result_files(
    coordinator: &Coordinator,
    plan: &BuildPlan,
    id: BuildId,
    digest: &str,
) -> Result<(), CommandError> {
    if let Some(path) = &plan.iidfile {
        result_files::write("--iidfile", path, digest)?;
    }
    if let Some(path) = &plan.metadata_file {
        let build = coordinator.get_build(id).await?;
        let tags: Vec<String> = std::iter::once(plan.image.clone())
            .chain(plan.extra_tags.iter().cloned())
            .collect();
        let document = result_files::metadata(&build, &tags);
        let text = serde_json::to_string_pretty(&document).expect("a JSON value serialises");
        result_files::write("--metadata-file", path, &text)?;
    }
    Ok(())
}

/// `manifold watch ID`: the same display as `build`, for a build submitted earlier.
pub async fn watch(
    coordinator: &Coordinator,
    id: BuildId,
    mode: ProgressMode,
) -> Result<BuildOutcome, CommandError> {
    let build = coordinator.get_build(id).await?;
    let platforms: Vec<manifold_proto::Platform> = build
        .request
        .iter()
        .flat_map(|r| &r.platforms)
        .filter_map(|p| manifold_proto::Platform::try_from(p).ok())
        .collect();
    let mut progress = Progress::new(mode, &platforms);
    let finished = follow(
        coordinator,
        id,
        &mut progress,
        &mut Interrupts::none(),
        true,
    )
    .await?;
    conclude(coordinator, id, finished, progress).await
}

/// `manifold publish ID`: pushes the list of a build that failed at publishing again, then
/// follows it to its end (the digest on stdout).
pub async fn publish(coordinator: &Coordinator, id: BuildId) -> Result<BuildOutcome, CommandError> {
    coordinator.publish_build(id).await?;
    eprintln!("build {id}: pushing its manifest list again");
    let mut progress = Progress::new(ProgressMode::Quiet, &[]);
    let finished = follow(
        coordinator,
        id,
        &mut progress,
        &mut Interrupts::none(),
        true,
    )
    .await?;
    conclude(coordinator, id, finished, progress).await
}

/// Follows `Builds.Watch` until BuildFinished, re-opening a lost stream and skipping the history
/// already shown. With `reopenable` (a build `manifold publish` may have reopened: its history
/// holds more than one BuildFinished), a BuildFinished is the end only if the build, read again,
/// still ended that way. Ctrl-C: the first cancels the build, the second gives up.
async fn follow(
    coordinator: &Coordinator,
    id: BuildId,
    progress: &mut Progress,
    interrupts: &mut Interrupts,
    reopenable: bool,
) -> Result<v1::BuildFinished, CommandError> {
    let mut last_sequence: Option<u64> = None;
    let mut cancel_requested = false;
    let mut failures = 0;
    loop {
        let reason = match coordinator.watch(id).await {
            Ok(mut stream) => loop {
                let wanted = if cancel_requested { 2 } else { 1 };
                tokio::select! {
                    biased;
                    () = interrupts.reached(wanted) => {
                        if cancel_requested {
                            return Err(CommandError::Interrupted { id: Some(id) });
                        }
                        cancel_requested = true;
                        request_cancel(coordinator, id, progress).await;
                    }
                    message = stream.message() => match message {
                        Ok(Some(event)) => {
                            failures = 0;
                            if last_sequence.is_some_and(|last| event.sequence <= last) {
                                continue;
                            }
                            last_sequence = Some(event.sequence);
                            progress.event(&event);
                            if let Some(Event::Finished(finished)) = event.event
                                && (!reopenable || ended_so(coordinator, id, &finished).await?)
                            {
                                return Ok(finished);
                            }
                        }
                        Ok(None) => break "the coordinator ended the stream early".to_owned(),
                        Err(status) => {
                            let err = coordinator.status_error("watching the build", status);
                            if err.code().is_some() {
                                return Err(err.into());
                            }
                            break err.to_string();
                        }
                    },
                }
            },
            // Only a lost connection is worth retrying; NotFound and the like are final.
            Err(err @ ClientError::Rpc { .. }) => return Err(err.into()),
            Err(err) => err.to_string(),
        };
        failures += 1;
        if failures > WATCH_RETRIES {
            return Err(CommandError::WatchLost { id, reason });
        }
        tracing::warn!(%id, %reason, attempt = failures, "re-opening the build's event stream");
        let backoff = Duration::from_millis(500 * 2u64.pow(failures.min(5)));
        interrupts
            .unless_interrupted(2, Some(id), tokio::time::sleep(backoff))
            .await?;
    }
}

/// Whether build `id` is still ended as `finished` says (not published again since).
async fn ended_so(
    coordinator: &Coordinator,
    id: BuildId,
    finished: &v1::BuildFinished,
) -> Result<bool, CommandError> {
    let b = coordinator.get_build(id).await?;
    Ok(b.state == finished.state
        && b.error == finished.error
        && b.manifest_digest == finished.manifest_digest)
}

async fn request_cancel(coordinator: &Coordinator, id: BuildId, progress: &Progress) {
    progress.note(&format!(
        "cancelling build {id}; press Ctrl-C again to stop waiting"
    ));
    if let Err(e) = coordinator.cancel_build(id).await {
        progress.note(&format!("could not cancel build {id}: {e}"));
    }
}

/// Reports how a followed build ended: the digest on stdout, or the failing platforms' errors
/// and log tails on stderr.
async fn conclude(
    coordinator: &Coordinator,
    id: BuildId,
    finished: v1::BuildFinished,
    mut progress: Progress,
) -> Result<BuildOutcome, CommandError> {
    progress.finish();
    match v1::BuildState::try_from(finished.state) {
        Ok(v1::BuildState::Succeeded) => {
            println!("{}", finished.manifest_digest);
            Ok(BuildOutcome::Succeeded {
                id,
                digest: finished.manifest_digest,
            })
        }
        Ok(v1::BuildState::Cancelled) => Err(CommandError::Cancelled {
            id,
            reason: finished.error,
        }),
        _ => {
            // The failure report is shown even with -q: it is what the person needs next.
            match coordinator.get_build(id).await {
                Ok(build) => eprint!("{}", failure_report(&build)),
                Err(e) => {
                    tracing::warn!(%id, error = %e, "cannot fetch the failed build's details")
                }
            }
            Err(CommandError::BuildFailed {
                id,
                error: if finished.error.is_empty() {
                    "the coordinator gave no reason".to_owned()
                } else {
                    finished.error
                },
            })
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `manifold workers [--watch]`: the list; with `watch`, again after each change (a blank line
/// between two tables), until the coordinator ends the stream.
pub async fn workers(
    coordinator: &Coordinator,
    format: Format,
    watch: bool,
) -> Result<(), CommandError> {
    let print = |workers: &[v1::WorkerInfo]| match format {
        Format::Table => print!("{}", listing::workers_table(workers, now_ms())),
        Format::Json => println!("{}", listing::workers_json(workers)),
    };
    if !watch {
        print(&coordinator.list_workers().await?);
        return Ok(());
    }
    let mut lists = coordinator.watch_workers().await?;
    let mut first = true;
    while let Some(list) = lists
        .message()
        .await
        .map_err(|s| coordinator.status_error("watching the workers", s))?
    {
        if !std::mem::take(&mut first) && format == Format::Table {
            println!();
        }
        print(&list.workers);
    }
    Ok(())
}

/// `manifold workers drain NAME`: asks the coordinator to drain the worker and says what follows.
pub async fn drain_worker(coordinator: &Coordinator, name: &str) -> Result<(), CommandError> {
    let worker = coordinator.drain_worker(name).await?;
    match worker {
        Some(w) if w.slots_in_use > 0 => println!(
            "worker {}: draining; it takes no new job and exits once its {} running job(s) finish",
            w.name, w.slots_in_use
        ),
        _ => println!("worker {name}: draining; it runs no job and exits now"),
    }
    Ok(())
}

/// `manifold workers pause|resume NAME`.
pub async fn pause_worker(
    coordinator: &Coordinator,
    name: &str,
    pause: bool,
) -> Result<(), CommandError> {
    let worker = coordinator.pause_worker(name, pause).await?;
    let running = worker.map_or(0, |w| w.slots_in_use);
    if pause {
        println!(
            "worker {name}: paused; it takes no new job ({running} running job(s) continue) until `manifold workers resume {name}`"
        );
    } else {
        println!("worker {name}: resumed; it takes jobs again");
    }
    Ok(())
}

/// `manifold builds`: one page, newest first; where more builds match, stderr says how to get
/// the next page.
pub async fn builds(coordinator: &Coordinator, args: &BuildsArgs) -> Result<(), CommandError> {
    let now = now_ms();
    let page = coordinator
        .list_builds(ListQuery {
            limit: args.limit,
            before: args.before,
            since_ms: args.since.map(|s| s.resolve(now)),
        })
        .await?;
    match args.format {
        Format::Table => print!("{}", listing::builds_table(&page.builds, now)),
        Format::Json => println!("{}", listing::builds_json(&page.builds, &page.next_before)),
    }
    if !page.next_before.is_empty() {
        let same = if args.since.is_some() {
            " and the same --since"
        } else {
            ""
        };
        eprintln!(
            "more builds: manifold builds --before {}{same}",
            page.next_before
        );
    }
    Ok(())
}

/// `manifold build-status ID`.
pub async fn build_status(
    coordinator: &Coordinator,
    id: BuildId,
    format: Format,
) -> Result<(), CommandError> {
    let build = coordinator.get_build(id).await?;
    match format {
        Format::Table => print!("{}", listing::build_status_text(&build, now_ms())),
        Format::Json => println!("{}", listing::build_json(&build)),
    }
    Ok(())
}

/// `manifold logs ID [--platform P]`: the build's recorded output on stdout.
pub async fn logs(
    coordinator: &Coordinator,
    id: BuildId,
    platform: Option<&manifold_proto::Platform>,
) -> Result<(), CommandError> {
    let lines = coordinator.build_logs(id, platform).await?;
    if lines.is_empty() {
        match platform {
            Some(p) => eprintln!("build {id} has no recorded output for {p}"),
            None => eprintln!("build {id} has no recorded output"),
        }
    }
    print!("{}", listing::logs_text(&lines));
    Ok(())
}

/// `manifold teams`.
pub async fn teams(coordinator: &Coordinator, format: Format) -> Result<(), CommandError> {
    let teams = coordinator.list_teams().await?;
    match format {
        Format::Table => print!("{}", listing::teams_table(&teams)),
        Format::Json => println!("{}", listing::teams_json(&teams)),
    }
    Ok(())
}

/// `manifold queue`.
pub async fn queue(coordinator: &Coordinator, format: Format) -> Result<(), CommandError> {
    let jobs = coordinator.queue().await?;
    match format {
        Format::Table => print!("{}", listing::queue_table(&jobs)),
        Format::Json => println!("{}", listing::queue_json(&jobs)),
    }
    Ok(())
}

/// `manifold cancel ID`: asks for the cancellation and says what the coordinator answered.
pub async fn cancel(coordinator: &Coordinator, id: BuildId) -> Result<(), CommandError> {
    let build = coordinator.cancel_build(id).await?;
    match build {
        Some(build) => {
            let unfinished: Vec<String> = build
                .jobs
                .iter()
                .filter(|j| {
                    matches!(
                        v1::JobState::try_from(j.state),
                        Ok(v1::JobState::Queued | v1::JobState::Assigned | v1::JobState::Running)
                    )
                })
                .map(|j| platform_name(j.platform.as_ref()))
                .collect();
            if unfinished.is_empty() {
                println!(
                    "build {id}: {}",
                    crate::progress::build_state_name(build.state)
                );
            } else {
                println!("build {id}: cancelling {}", unfinished.join(", "));
            }
        }
        None => println!("build {id}: cancel requested"),
    }
    Ok(())
}
