//! `manifold`: installs the TLS crypto provider, parses the command line, installs tracing on
//! stderr, turns Ctrl-C into a counter for the library, runs one subcommand and maps its outcome
//! to an exit code.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use manifold_cli::args::{BuildPlan, Cli, Command, LOG_ENV, ManifestCommand, WorkersAction};
use manifold_cli::client::Coordinator;
use manifold_cli::commands::{self, CommandError, Interrupts};
use manifold_cli::{config, manifest};
use tokio::signal::unix::SignalKind;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // One rustls provider for the coordinator's TLS and the registries, chosen here rather than
    // guessed by rustls (which panics when it finds two). An error only means it is installed.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            // Registry retries are the library's business; the CLI reports the final error.
            EnvFilter::try_from_env(LOG_ENV)
                .unwrap_or_else(|_| EnvFilter::new("warn,manifold_registry::session=error")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
    {
        Ok(rt) => rt,
        Err(e) => return report(&e),
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(&e),
    }
}

/// Prints `error: ...` with the chain of causes and picks the exit code. Library errors often
/// quote their source already; a cause whose text is already shown is not repeated.
fn report(e: &anyhow::Error) -> ExitCode {
    let mut message = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !message.contains(&cause) {
            message.push_str(": ");
            message.push_str(&cause);
        }
    }
    eprintln!("error: {message}");
    let code = e
        .downcast_ref::<CommandError>()
        .map_or(1, CommandError::exit_code);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// Connects to the coordinator the flags, the environment and the config file name.
async fn connect(flags: &config::Flags) -> anyhow::Result<Coordinator> {
    let resolved = config::resolve(flags, |name| std::env::var(name).ok())?;
    Ok(Coordinator::connect_with(&resolved.coordinator, &resolved.options).await?)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let flags = cli.connection_flags();
    match cli.command {
        Command::Build(args) => {
            // Everything local is checked before the coordinator is dialled.
            let plan = BuildPlan::from_args(&args)?;
            let coordinator = connect(&flags).await?;
            // Only `build` handles Ctrl-C itself (to cancel the build); elsewhere the default
            // of ending the process is right. The handler is registered here, synchronously, so
            // no press is lost between now and the first await.
            let mut sigint = tokio::signal::unix::signal(SignalKind::interrupt())
                .context("cannot handle Ctrl-C")?;
            let (tx, rx) = tokio::sync::watch::channel(0u32);
            let signals = tokio::spawn(async move {
                while sigint.recv().await.is_some() {
                    tx.send_modify(|count| *count += 1);
                }
            });
            let result = commands::build(&coordinator, &plan, Interrupts::new(rx)).await;
            signals.abort();
            result?;
        }
        Command::Workers(args) => {
            let coordinator = connect(&flags).await?;
            match args.action {
                None => commands::workers(&coordinator, args.format, args.watch).await?,
                Some(WorkersAction::Drain(drain)) => {
                    commands::drain_worker(&coordinator, &drain.name).await?
                }
                Some(WorkersAction::Pause(w)) => {
                    commands::pause_worker(&coordinator, &w.name, true).await?
                }
                Some(WorkersAction::Resume(w)) => {
                    commands::pause_worker(&coordinator, &w.name, false).await?
                }
            }
        }
        Command::Builds(args) => {
            let coordinator = connect(&flags).await?;
            commands::builds(&coordinator, &args).await?;
        }
        Command::BuildStatus(args) => {
            let coordinator = connect(&flags).await?;
            commands::build_status(&coordinator, args.id, args.format).await?;
        }
        Command::Watch(args) => {
            let coordinator = connect(&flags).await?;
            let mode = if args.quiet {
                manifold_cli::args::ProgressMode::Quiet
            } else {
                args.progress
            };
            commands::watch(&coordinator, args.id, mode).await?;
        }
        Command::Cancel(args) => {
            let coordinator = connect(&flags).await?;
            commands::cancel(&coordinator, args.id).await?;
        }
        Command::Publish(args) => {
            let coordinator = connect(&flags).await?;
            commands::publish(&coordinator, args.id).await?;
        }
        Command::Logs(args) => {
            let coordinator = connect(&flags).await?;
            commands::logs(&coordinator, args.id, args.platform.as_ref()).await?;
        }
        Command::Teams(args) => {
            let coordinator = connect(&flags).await?;
            commands::teams(&coordinator, args.format).await?;
        }
        Command::Queue(args) => {
            let coordinator = connect(&flags).await?;
            commands::queue(&coordinator, args.format).await?;
        }
        Command::Manifest(ManifestCommand::Inspect(args)) => manifest::inspect(&args).await?,
        Command::Manifest(ManifestCommand::Create(args)) => manifest::create(&args, false).await?,
        Command::Manifest(ManifestCommand::Push(args)) => manifest::create(&args, true).await?,
        Command::Manifest(ManifestCommand::Rm(args)) => manifest::rm(&args),
        Command::Completion(args) => manifest::completion(args.shell, &mut std::io::stdout()),
    }
    Ok(())
}
