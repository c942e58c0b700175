//! `cf-lists-emulator`: runs the Cloudflare Lists API emulator (`cf_lists_emulator`) as a
//! process for the demo. Parses flags, creates the lists, prints one machine-readable line
//! on stdout, serves until SIGINT/SIGTERM. Logs go to stderr (`RUST_LOG`, e.g. `debug`).

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use cf_lists_emulator::{
    is_valid_list_name, CapacityError, Emulator, HostBits, PendingWrite, Permissions, Settings,
};
use clap::{Parser, ValueEnum};

#[derive(Debug, Parser)]
#[command(about = "Stateful emulator of the Cloudflare Lists API")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8787")]
    listen: SocketAddr,
    /// Account id (32 chars); default: the emulator's fixed one.
    #[arg(long)]
    account_id: Option<String>,
    /// API token accepted as `Authorization: Bearer <token>`.
    #[arg(long)]
    token: Option<String>,
    /// IP list(s) created at start; the first one is printed on the start line.
    #[arg(long = "list-name", default_value = "crowdsec_ban")]
    list_names: Vec<String>,
    /// Bulk operation latency range in milliseconds, `MIN..MAX`.
    #[arg(long, default_value = "300..1200", value_parser = parse_latency)]
    op_latency_ms: (Duration, Duration),
    /// Added to a bulk operation's latency per item it writes, in microseconds (0: the
    /// latency ignores the size; 100 = 0.1 ms an item).
    #[arg(long, default_value_t = 0)]
    op_item_cost_us: u64,
    /// Send `Ratelimit` and `Ratelimit-Policy` on every answer: `on` (today's API) or `off`.
    #[arg(long, value_enum, default_value_t = SwitchArg::On)]
    rate_limit_headers: SwitchArg,
    /// Write while an operation is in flight: `reject` (429) or `queue` (FIFO).
    #[arg(long, value_enum, default_value_t = PendingWriteArg::Reject)]
    pending_write: PendingWriteArg,
    /// Largest IPv6 prefix accepted: 128 (current API) or 64 (pre-2025-07 API).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u8).range(12..=128))]
    ipv6_max_prefix: u8,
    /// CIDRs with host bits set: `mask` or `reject`.
    #[arg(long, value_enum, default_value_t = HostBitsArg::Mask)]
    host_bits: HostBitsArg,
    /// Account item quota, across all lists.
    #[arg(long, default_value_t = 10_000)]
    capacity: usize,
    /// Global requests per window, or `off`.
    #[arg(long, default_value = "1200", value_parser = parse_rate_limit)]
    rate_limit: RateLimit,
    /// Window of the global rate limit, in seconds (300 documented).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    rate_limit_window_secs: u64,
    /// What the API token may do: `edit` everything, `read` GETs only, `none` nothing.
    #[arg(long, value_enum, default_value_t = PermissionsArg::Edit)]
    permissions: PermissionsArg,
    // Faults are runtime-only: `POST /__emulator/faults` (see the library docs).
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum PendingWriteArg {
    Reject,
    Queue,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum SwitchArg {
    On,
    Off,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum HostBitsArg {
    Mask,
    Reject,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum PermissionsArg {
    Edit,
    Read,
    None,
}

/// `Some(n)` requests per window, `None` for `off` (a newtype so clap does not treat the
/// flag as optional).
#[derive(Clone, Copy, Debug)]
struct RateLimit(Option<u32>);

fn parse_latency(text: &str) -> Result<(Duration, Duration), String> {
    let (min, max) = text
        .split_once("..")
        .ok_or_else(|| format!("expected MIN..MAX in milliseconds, got {text:?}"))?;
    let parse = |part: &str| {
        part.trim()
            .parse::<u64>()
            .map_err(|err| format!("{part:?}: {err}"))
    };
    let (min, max) = (parse(min)?, parse(max)?);
    if min > max {
        return Err(format!("min {min} is greater than max {max}"));
    }
    Ok((Duration::from_millis(min), Duration::from_millis(max)))
}

fn parse_rate_limit(text: &str) -> Result<RateLimit, String> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(RateLimit(None));
    }
    match text.parse::<u32>() {
        Ok(n) if n > 0 => Ok(RateLimit(Some(n))),
        _ => Err(format!("expected a positive number or `off`, got {text:?}")),
    }
}

impl Args {
    fn settings(&self) -> Settings {
        let defaults = Settings::default();
        Settings {
            account_id: self.account_id.clone().unwrap_or(defaults.account_id),
            api_token: self.token.clone().unwrap_or(defaults.api_token),
            op_latency: self.op_latency_ms,
            op_item_cost: Duration::from_micros(self.op_item_cost_us),
            rate_limit_headers: self.rate_limit_headers == SwitchArg::On,
            pending_write: match self.pending_write {
                PendingWriteArg::Reject => PendingWrite::Reject,
                PendingWriteArg::Queue => PendingWrite::Queue,
            },
            ipv6_max_prefix: self.ipv6_max_prefix,
            host_bits: match self.host_bits {
                HostBitsArg::Mask => HostBits::Mask,
                HostBitsArg::Reject => HostBits::Reject,
            },
            asn_zero: defaults.asn_zero,
            capacity_error: CapacityError::FailedOperation,
            account_item_limit: self.capacity,
            global_rate_limit: self.rate_limit.0,
            rate_limit_window: Duration::from_secs(self.rate_limit_window_secs),
            permissions: match self.permissions {
                PermissionsArg::Edit => Permissions::Edit,
                PermissionsArg::Read => Permissions::Read,
                PermissionsArg::None => Permissions::None,
            },
            default_per_page: defaults.default_per_page,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    for (position, name) in args.list_names.iter().enumerate() {
        if !is_valid_list_name(name) {
            bail!("invalid list name {name:?}: must match ^[a-z0-9_]{{1,50}}$");
        }
        if args.list_names[..position].contains(name) {
            bail!("list name {name:?} given twice");
        }
    }
    let emulator = Emulator::start(args.settings(), args.listen)
        .await
        .with_context(|| format!("could not listen on {}", args.listen))?;
    let mut first = None;
    for name in &args.list_names {
        let id = emulator.create_list(name);
        tracing::info!(list_id = %id, list_name = %name, "list created");
        first.get_or_insert((id, name.clone()));
    }
    let (list_id, list_name) = first.context("at least one --list-name is required")?;
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "cf-lists-emulator listening url={} account_id={} list_id={list_id} list_name={list_name} token={}",
        emulator.base_url(),
        emulator.account_id(),
        emulator.api_token(),
    )?;
    stdout.flush()?;
    drop(stdout);
    shutdown_signal().await;
    tracing::info!("shutting down");
    emulator.shutdown().await;
    Ok(())
}

/// SIGINT or SIGTERM (systemd and `kill` send the latter).
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
