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
use cfbouncer::lock::{LockError, WriterLock};
use cfbouncer::telemetry::StatusReport;

/// The systemd unit, named in messages that say how to stop the daemon.
const UNIT: &str = "crowdsec-cloudflare-iplist-bouncer";

/// Keeps a Cloudflare account IP List in step with CrowdSec LAPI ban decisions.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file (TOML); before or after the command.
    #[arg(short, long, value_name = "FILE", default_value = DEFAULT_PATH, global = true)]
    config: PathBuf,
    /// Test the configuration offline (no API is reached, no secret is needed), print
    /// "configuration OK: FILE" and exit 0, or print every problem and exit 1.
    #[arg(short = 't', long = "test-config", global = true)]
    test_config: bool,
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
    Once {
        /// Remove what the mass-removal guard holds (its count and a sample are logged
        /// first): for when LAPI really dropped that many bans.
        #[arg(long)]
        confirm_removals: bool,
    },
    /// Create the list if it is named and missing; with --zone, keep the WAF custom rule
    /// `ip.src in $<list>` in each zone, carving out `cloudflare.exclude_hosts`
    /// (idempotent; rewrites only its own rule; other rules are kept).
    Setup {
        /// A zone ID to protect; repeat for several zones.
        #[arg(long = "zone", value_name = "ZONE_ID")]
        zones: Vec<String>,
        /// The rule's action: block, managed_challenge, js_challenge, challenge or log
        /// (default block). Only for the one list of `list_name`/`list_id`: each
        /// [[cloudflare.lists]] entry has its own `action`.
        #[arg(long)]
        action: Option<String>,
    },
    /// Remove every item this bouncer manages from the list (for uninstall); with
    /// --rules, also the custom rule `setup` added to each --zone; with --delete-list,
    /// also the list.
    Cleanup {
        /// Also remove the custom rule `setup` added (rules made by hand are kept).
        #[arg(long, requires = "zones")]
        rules: bool,
        /// A zone whose rule to remove; repeat for several zones.
        #[arg(long = "zone", value_name = "ZONE_ID", requires = "rules")]
        zones: Vec<String>,
        /// Then delete the list itself (Cloudflare refuses while a rule uses it).
        #[arg(long)]
        delete_list: bool,
    },
    /// Show what the running bouncer reports on its admin listener.
    Status,
}

/// Blocks this large or larger come straight from the kernel and go back to it when freed.
/// glibc's default threshold rises to the size of every large block freed (up to 32 MiB),
/// so the tables' later doublings came from the heap, where a `realloc` copies and the old
/// block stays resident: at a million decisions that was about 20 MiB of peak, 40 of it
/// during a reconcile (BENCHMARKS.md, "Profiles behind the changes").
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 128 * 1024;

fn main() -> ExitCode {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
    let cli = Cli::parse();
    if cli.test_config {
        return test_config(&cli.config);
    }
    // `status` only asks the admin listener: it needs no secret.
    let load = if cli.command == Some(Command::Status) {
        Config::load_offline
    } else {
        Config::load
    };
    let config = match load(&cli.config) {
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
    if matches!(
        command,
        Command::Run | Command::Once { .. } | Command::Cleanup { .. }
    ) {
        cfbouncer::progress::use_terminal(
            std::io::stderr().is_terminal() && config.log.format == LogFormat::Text,
        );
    }
    runtime.block_on(async {
        match command {
            Command::Run => run(config).await,
            Command::Check => check(&cli.config, &config).await,
            Command::Once { confirm_removals } => once(config, confirm_removals).await,
            Command::Setup { zones, action } => setup(config, &zones, action.as_deref()).await,
            Command::Cleanup {
                zones, delete_list, ..
            } => cleanup(config, &zones, delete_list).await,
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

/// `-t`: the configuration checked offline. Parsed and validated as for `run`, the files
/// it names readable; a secret set nowhere is a problem only under systemd (where the
/// unit's credentials are loaded), else a note on stderr.
fn test_config(path: &std::path::Path) -> ExitCode {
    let config = match Config::load_offline(path) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::FAILURE;
        }
    };
    let mut problems = Vec::new();
    let under_systemd = std::env::var_os(cfbouncer::config::ENV_CREDENTIALS_DIRECTORY).is_some();
    let files = [
        ("crowdsec.cert_path", &config.crowdsec.cert_path),
        ("crowdsec.key_path", &config.crowdsec.key_path),
        ("crowdsec.ca_cert_path", &config.crowdsec.ca_cert_path),
    ];
    for (key, file) in files {
        let Some(file) = file else { continue };
        if !under_systemd && file.starts_with("/run/credentials/") {
            eprintln!(
                "note: {key}: {} is a systemd credential, there only for the service: \
                 ExecStartPre checks it",
                file.display()
            );
            continue;
        }
        if let Err(err) = std::fs::File::open(file) {
            problems.push(format!(
                "{key}: cannot read {}: {err} (under the systemd unit's DynamicUser, load it \
                 with LoadCredential= and name the credential's path here)",
                file.display()
            ));
        }
    }
    // A value still the example's `<…>` placeholder would be sent as a key or a token.
    let placeholders = [
        (
            "crowdsec.api_key",
            config.crowdsec.api_key.as_ref().map(|k| k.expose()),
            "the bouncer key (`cscli bouncers add NAME` prints it)",
        ),
        (
            "cloudflare.api_token",
            Some(config.cloudflare.api_token.expose()),
            "the Cloudflare API token",
        ),
    ];
    for (key, value, what) in placeholders {
        if let Some(value) = value.filter(|v| v.starts_with('<') && v.ends_with('>')) {
            problems.push(format!(
                "{key}: still the placeholder {value:?} from config.toml.example: put {what} there, \
                 in the `_file` key, or in the environment or a systemd credential"
            ));
        }
    }
    for missing in &config.missing_secrets {
        if under_systemd {
            problems.push(missing.clone());
        } else {
            eprintln!("note: {missing}");
        }
    }
    for warning in &config.warnings {
        eprintln!("warning: {warning}");
    }
    if problems.is_empty() {
        println!("configuration OK: {}", path.display());
        return ExitCode::SUCCESS;
    }
    let n = problems.len();
    eprintln!(
        "{n} problem{} in {}:",
        if n == 1 { "" } else { "s" },
        path.display()
    );
    for problem in problems {
        eprintln!("  - {problem}");
    }
    ExitCode::FAILURE
}

/// Takes every account's writer lock for a one-shot command, or says why it cannot run:
/// a daemon (or another command) writes to one of the accounts.
fn one_shot_lock(config: &Config) -> Result<Vec<WriterLock>, ExitCode> {
    let mut locks = Vec::new();
    for account in &config.accounts {
        locks.extend(one_account_lock(account)?);
    }
    Ok(locks)
}

fn one_account_lock(
    account: &cfbouncer::config::CloudflareConfig,
) -> Result<Option<WriterLock>, ExitCode> {
    match cfbouncer::lock::acquire(account) {
        Ok(lock) => Ok(Some(lock)),
        Err(err @ LockError::Held { .. }) => {
            eprintln!(
                "error: {err}: the daemon, most likely. Two writers on one account undo each \
                 other's work, so this command does not run beside it. Stop the daemon \
                 (`sudo systemctl stop {UNIT}`), run this command, then start it again \
                 (`sudo systemctl start {UNIT}`)"
            );
            Err(ExitCode::FAILURE)
        }
        Err(err) => {
            warn!("{err}; going on without it");
            Ok(None)
        }
    }
}

async fn run(config: Config) -> ExitCode {
    // With high availability the Lease elects the one writer, and standbys on this host
    // must run beside it: the host lock is not taken.
    let accounts = if config.ha.is_some() {
        &[][..]
    } else {
        &config.accounts[..]
    };
    let mut _locks = Vec::new();
    for account in accounts {
        match cfbouncer::lock::acquire(account) {
            Ok(lock) => _locks.push(lock),
            Err(err @ LockError::Held { .. }) => {
                error!(
                    "{err}: a one-shot command (once, cleanup, setup) or a second daemon; one \
                     writer per account, so this daemon does not start (systemd retries it)"
                );
                return ExitCode::FAILURE;
            }
            Err(err) => warn!("{err}; going on without it"),
        }
    }
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

async fn once(config: Config, confirm_removals: bool) -> ExitCode {
    let _lock = match one_shot_lock(&config) {
        Ok(lock) => lock,
        Err(code) => return code,
    };
    let token = cancel_on_signal();
    let result = match Engine::new(config) {
        Ok(engine) => engine.once_confirming(token, confirm_removals).await,
        Err(err) => Err(err),
    };
    match result {
        Ok(report) => {
            if report.removals_confirmed > 0 {
                println!(
                    "removed the {} items the mass-removal guard held (--confirm-removals)",
                    report.removals_confirmed
                );
            }
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

async fn setup(config: Config, zones: &[String], action: Option<&str>) -> ExitCode {
    let per_list = config.cloudflare.lists.iter().any(|l| l.action.is_some());
    if let (true, Some(action)) = (per_list, action) {
        eprintln!(
            "error: --action {action:?}: with [[cloudflare.lists]], each list's rule takes the \
             list's own `action`; set it there and run setup without --action"
        );
        return ExitCode::from(2);
    }
    let action = action.unwrap_or("block");
    if !cfbouncer::config::RULE_ACTIONS.contains(&action) {
        eprintln!(
            "error: --action {action:?} is not one of {}",
            cfbouncer::config::RULE_ACTIONS.join(", ")
        );
        return ExitCode::from(2);
    }
    let _lock = match one_shot_lock(&config) {
        Ok(lock) => lock,
        Err(code) => return code,
    };
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

async fn cleanup(config: Config, zones: &[String], delete_list: bool) -> ExitCode {
    let _lock = match one_shot_lock(&config) {
        Ok(lock) => lock,
        Err(code) => return code,
    };
    let token = cancel_on_signal();
    let result = match Engine::new(config.clone()) {
        Ok(engine) => engine.cleanup(token).await,
        Err(err) => Err(err),
    };
    match result {
        Ok(removed) => println!("removed {removed} items from the list"),
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    }
    if zones.is_empty() && !delete_list {
        return ExitCode::SUCCESS;
    }
    let result = match Engine::new(config) {
        Ok(engine) => engine.teardown(zones, delete_list).await,
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

async fn status(config: &Config) -> ExitCode {
    let Some(addr) = config.admin.listen else {
        eprintln!(
            "the admin listener is off ([admin] listen = \"off\"): status has nothing to ask; \
             see `systemctl status {UNIT}` and `journalctl -u {UNIT}`, or set [admin] listen"
        );
        return ExitCode::FAILURE;
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
