//! The `crowdsec-cloudflare-iplist-bouncer` binary: command line, logging, exit codes.
//! Everything else lives in the library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use cfbouncer::admin::render_status;
use cfbouncer::config::{Config, LogConfig, LogFormat, DEFAULT_PATH};
use cfbouncer::engine::Engine;
use cfbouncer::telemetry::StatusReport;

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

#[derive(Subcommand, Clone, PartialEq, Eq)]
enum Command {
    /// Run the daemon (the default).
    Run,
    /// Validate the configuration, then reach LAPI and Cloudflare; exit 0 only if all is well.
    Check,
    /// One full reconcile: make the list equal LAPI's bans, then exit.
    Once,
    /// Create the list if it is named and missing; with --zone, add the WAF custom rule
    /// `ip.src in $<list>` to each zone (idempotent; other rules are kept).
    Setup {
        /// A zone ID to protect; repeat for several zones.
        #[arg(long = "zone", value_name = "ZONE_ID")]
        zones: Vec<String>,
        /// The rule's action: block, managed_challenge, js_challenge, challenge or log.
        #[arg(long, default_value = "block")]
        action: String,
    },
    /// Remove every item this bouncer manages from the list (for uninstall).
    Cleanup,
    /// Show what the running bouncer reports on its admin listener.
    Status,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::from(2);
        }
    };
    let logging_warning = init_logging(&config.log);
    for warning in logging_warning.iter().chain(&config.warnings) {
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
    let command = cli.command.unwrap_or(Command::Run);
    // `once`, `cleanup` and the daemon's start-up sync draw a progress bar on a terminal.
    if matches!(command, Command::Run | Command::Once | Command::Cleanup) {
        cfbouncer::progress::use_terminal(
            std::io::stderr().is_terminal() && config.log.format == LogFormat::Text,
        );
    }
    runtime.block_on(async {
        match command {
            Command::Run => run(config).await,
            Command::Check => check(&cli.config, &config).await,
            Command::Once => once(config).await,
            Command::Setup { zones, action } => setup(config, &zones, &action).await,
            Command::Cleanup => cleanup(config).await,
            Command::Status => status(&config).await,
        }
    })
}

/// Logs go to stderr, filtered by `RUST_LOG` when it is set, else by `log.level` (valid:
/// the configuration checked it). Returns a warning when `RUST_LOG` is not a valid filter.
fn init_logging(log: &LogConfig) -> Option<String> {
    use tracing_subscriber::EnvFilter;
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|value| !value.trim().is_empty())
        .map(|value| EnvFilter::try_new(&value));
    let (filter, ignored) = match from_env {
        Some(Ok(filter)) => (filter, None),
        other => {
            let ignored = other.and_then(Result::err).map(|err| {
                format!(
                    "RUST_LOG is not a valid filter ({err}); using log.level {:?} instead",
                    log.level
                )
            });
            let filter = EnvFilter::try_new(&log.level).unwrap_or_else(|_| "info".into());
            (filter, ignored)
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(cfbouncer::progress::LogWriter);
    match log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
    ignored
}

async fn run(config: Config) -> ExitCode {
    let token = cancel_on_signal();
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
    let token = cancel_on_signal();
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

async fn setup(config: Config, zones: &[String], action: &str) -> ExitCode {
    const ACTIONS: [&str; 5] = [
        "block",
        "managed_challenge",
        "js_challenge",
        "challenge",
        "log",
    ];
    if !ACTIONS.contains(&action) {
        eprintln!(
            "error: --action {action:?} is not one of {}",
            ACTIONS.join(", ")
        );
        return ExitCode::from(2);
    }
    let result = match Engine::new(config) {
        Ok(engine) => engine.setup(zones, action).await,
        Err(err) => Err(err),
    };
    match result {
        Ok(report) => {
            for line in report {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn cleanup(config: Config) -> ExitCode {
    let token = cancel_on_signal();
    let result = match Engine::new(config) {
        Ok(engine) => engine.cleanup(token).await,
        Err(err) => Err(err),
    };
    match result {
        Ok(removed) => {
            println!("removed {removed} items from the list");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn status(config: &Config) -> ExitCode {
    let Some(addr) = config.admin.listen else {
        eprintln!("error: the admin listener is off ([admin] listen): nothing to ask");
        return ExitCode::from(2);
    };
    cfbouncer::install_tls_provider();
    let url = format!("http://{addr}/status");
    let report = async {
        let response = reqwest::Client::new()
            .get(&url)
            .timeout(std::time::Duration::from_secs(5))
            .send()
            .await?;
        response.error_for_status()?.json::<StatusReport>().await
    };
    match report.await {
        Ok(report) => {
            print!("{}", render_status(&report));
            if report.ready {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(err) => {
            eprintln!(
                "error: cannot read {url}: {err} (is the bouncer running with this configuration?)"
            );
            ExitCode::FAILURE
        }
    }
}

/// A token cancelled on SIGTERM or SIGINT.
fn cancel_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    tokio::spawn({
        let token = token.clone();
        async move {
            shutdown_signal().await;
            info!("shutdown requested");
            token.cancel();
        }
    });
    token
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
