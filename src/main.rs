//! The `crowdsec-cloudflare-iplist-bouncer` binary: command line, logging, exit codes.
//! Everything else lives in the library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use cfbouncer::config::{Config, DEFAULT_PATH};
use cfbouncer::engine::Engine;

/// Keeps a Cloudflare account IP List in step with CrowdSec LAPI ban decisions.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file (TOML).
    #[arg(short, long, value_name = "FILE", default_value = DEFAULT_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Clone, Copy, PartialEq, Eq)]
enum Command {
    /// Run the daemon (the default).
    Run,
    /// Validate the configuration, then reach LAPI and Cloudflare; exit 0 only if all is well.
    Check,
    /// One full reconcile: make the list equal LAPI's bans, then exit.
    Once,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::from(2);
        }
    };
    for warning in &config.warnings {
        warn!("{warning}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match cli.command.unwrap_or(Command::Run) {
            Command::Run => run(config).await,
            Command::Check => check(&cli.config, &config).await,
            Command::Once => once(config).await,
        }
    })
}

async fn run(config: Config) -> ExitCode {
    let token = CancellationToken::new();
    tokio::spawn({
        let token = token.clone();
        async move {
            shutdown_signal().await;
            info!("shutdown requested");
            token.cancel();
        }
    });
    let result = match Engine::new(config) {
        Ok(engine) => engine.run(token).await,
        Err(err) => Err(err),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            error!(error = %err, "stopped");
            ExitCode::FAILURE
        }
    }
}

async fn check(path: &std::path::Path, config: &Config) -> ExitCode {
    println!("ok   config     {} is valid", path.display());
    let findings = cfbouncer::check::run(config).await;
    let (report, all_ok) = cfbouncer::check::render(&findings);
    print!("{report}");
    if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn once(config: Config) -> ExitCode {
    let token = CancellationToken::new();
    tokio::spawn({
        let token = token.clone();
        async move {
            shutdown_signal().await;
            token.cancel();
        }
    });
    let result = match Engine::new(config) {
        Ok(engine) => engine.once(token).await,
        Err(err) => Err(err),
    };
    match result {
        Ok(report) => {
            println!(
                "in step: the list holds the {} items LAPI's bans map to ({} bulk operations, {:.1}s)",
                report.items,
                report.writes,
                report.elapsed.as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM (systemd, Kubernetes) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
