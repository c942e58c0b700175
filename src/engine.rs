//! The sync engine: two actors around one shared [`SyncState`].
//!
//! - The **poller** (`engine/poller.rs`) is the only code that reads the decision stream.
//!   It pulls (a full pull at start, after any failed pull, and every
//!   `reconcile_interval`; deltas in between), updates the desired state, expires
//!   decisions, confirms the removals a full pull implied, and after a full pull asks the
//!   writer for a fresh list read.
//! - The **writer** (`engine/writer.rs`) is the only code that talks to Cloudflare. It
//!   reads the list when asked, then drains the pending queue one bulk operation at a
//!   time: submit, poll to completion, confirm, next. At most one write is in flight.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::cloudflare::{self, CloudflareClient};
use crate::config::{Config, Manage};
use crate::ha::lease::HttpLeaseApi;
use crate::ha::{Elector, Ha, HaStatus, Role, Timings};
use crate::lapi::{self, LapiClient, Pull};
use crate::state::{Lane, Policy, SyncState};
use crate::telemetry::{Snapshot, Telemetry};

mod foreign;
mod operate;
mod poller;
mod writer;

use poller::{Poller, Source};
pub use writer::SetupReport;
use writer::Writer;

/// Longest wait between retries of a failing LAPI pull or Cloudflare call.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);
/// How long tasks may take past `shutdown_grace` before they are stopped.
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(1);
/// Cloudflare's global limit blocks every call for the rest of a 5-minute window.
const GLOBAL_LIMIT_WAIT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Lapi(#[from] lapi::Error),
    #[error(transparent)]
    Cloudflare(#[from] cloudflare::Error),
    #[error("bulk operation {op_id} failed: {message}")]
    OperationFailed { op_id: String, message: String },
    /// A write whose answer was lost: an operation may be pending that we cannot poll.
    #[error("a write may have been accepted without our knowing its operation: {0}")]
    Unconfirmed(#[source] cloudflare::Error),
    #[error("bulk operation {0} is unknown to Cloudflare")]
    OperationLost(String),
    #[error(
        "the list still differs from LAPI after syncing: {missing} missing, {extra} extra{}",
        if *.held > 0 { format!(
            " ({} removals held by the mass-removal guard, e.g. {}: if LAPI really dropped those \
             bans, run `once --confirm-removals` to remove them; the daemon removes them itself \
             at its next reconcile)",
            .held, .held_sample.join(", ")
        ) } else { String::new() }
    )]
    NotInStep {
        missing: usize,
        extra: usize,
        held: usize,
        /// A few of the held removals, for the message.
        held_sample: Vec<String>,
    },
    #[error("stopped before the sync finished")]
    Cancelled,
    #[error("high availability: {0}")]
    Lease(String),
    #[error(
        "cannot listen on {addr} for [admin] listen: {source} (choose another address, or \"off\")"
    )]
    Admin {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What both tasks share: the state, and how the poller wakes the writer.
struct Shared {
    state: Mutex<SyncState>,
    wake: Notify,
    /// A full list read is wanted (set after each full LAPI pull).
    refresh_list: AtomicBool,
    /// When each task last went round its loop, for the systemd watchdog.
    beats: Mutex<Instant>,
    /// With high availability (`[ha]`): the election's state.
    ha: Option<Arc<Ha>>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, SyncState> {
        // A panic while holding the lock leaves the state as consistent as any single
        // step leaves it; keep going rather than poisoning the daemon.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records that a task loop is alive.
    fn heartbeat(&self) {
        *self.beats.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    fn last_beat(&self) -> Instant {
        *self.beats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Logs what the state wants an operator to know (refusals, guard decisions).
    fn log_notices(&self) {
        for notice in self.state().take_notices() {
            warn!("{notice}");
        }
    }
}

/// One Cloudflare account: its state, its writer (the account's one writer, for all its
/// lists) and its telemetry. Accounts share only the poller.
struct Account {
    shared: Arc<Shared>,
    writer: Writer,
    telemetry: Arc<Telemetry>,
    /// The configuration with `cloudflare` = this account.
    config: Config,
}

impl Account {
    fn new(config: Config) -> Result<Account, Error> {
        let lanes = (config.cloudflare.lists.iter())
            .map(|list| Lane {
                asn: list.asn,
                decision_types: list.decision_types.clone(),
            })
            .collect();
        let mut policy = Policy::new(Vec::new(), config.cloudflare.ipv6_prefix).with_lanes(lanes);
        policy.min_ipv4_prefix = config.safety.min_ipv4_prefix;
        policy.min_ipv6_prefix = config.safety.min_ipv6_prefix;
        policy.allowlist = config.safety.allowlist.clone();
        policy.allowlist_asns = config.safety.allowlist_asns.clone();
        policy.origin_priority = config.cloudflare.origin_priority.clone();
        policy.manage_all = config.cloudflare.manage == Manage::All;
        policy.tag = config.cloudflare.tag.clone();
        policy.mass_removal_share = config.safety.mass_removal_share;
        policy.mass_removal_min_items = config.safety.mass_removal_min_items;
        let telemetry = Arc::new(Telemetry::default());
        let shared = Arc::new(Shared {
            state: Mutex::new(SyncState::new(policy)),
            wake: Notify::new(),
            refresh_list: AtomicBool::new(false),
            beats: Mutex::new(Instant::now()),
            ha: config
                .ha
                .as_ref()
                .map(|ha| Arc::new(Ha::new(ha.identity.clone(), Timings::from(ha)))),
        });
        let cloudflare = CloudflareClient::new(&config.cloudflare, telemetry.clone())?;
        Ok(Account {
            writer: Writer::new(
                shared.clone(),
                cloudflare,
                config.clone(),
                telemetry.clone(),
            ),
            shared,
            telemetry,
            config,
        })
    }

    fn snapshot(&self) -> Snapshot {
        snapshot(&self.shared, &self.telemetry, lapi_stale(&self.config))
    }
}

/// The engine: the two actors around their shared state; see the module docs. With
/// several Cloudflare accounts, one poller feeds each account's state and writer.
pub struct Engine {
    accounts: Vec<Account>,
    poller: Poller,
    config: Config,
    admin: Option<TcpListener>,
}

impl Engine {
    /// # Errors
    /// TLS setup errors of either client.
    pub fn new(config: Config) -> Result<Engine, Error> {
        crate::install_tls_provider();
        let accounts = (0..config.accounts.len().max(1))
            .map(|i| Account::new(config.for_account(i)))
            .collect::<Result<Vec<Account>, Error>>()?;
        let fed = (accounts.iter())
            .map(|a| (a.shared.clone(), a.telemetry.clone()))
            .collect();
        Ok(Engine {
            poller: Poller::new(fed, LapiClient::new(&config.crowdsec)?, config.clone()),
            accounts,
            config,
            admin: None,
        })
    }

    /// Binds the admin listener now (so a caller learns the port before `run`);
    /// `None` when it is disabled.
    ///
    /// # Errors
    /// The bind error, naming the address.
    pub async fn bind_admin(&mut self) -> Result<Option<SocketAddr>, Error> {
        let Some(addr) = self.config.admin.listen else {
            return Ok(None);
        };
        if self.admin.is_none() {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Admin { addr, source })?;
            self.admin = Some(listener);
        }
        Ok(self.admin.as_ref().and_then(|l| l.local_addr().ok()))
    }

    /// A point-in-time view of the bouncer (of its first account), for the admin
    /// listener.
    pub fn snapshot(&self) -> Snapshot {
        self.accounts[0].snapshot()
    }

    /// Runs the daemon until `token` is cancelled, then lets an in-flight bulk operation
    /// finish within `shutdown_grace`. The list is left as it is.
    ///
    /// # Errors
    /// None in practice: failures are logged and retried until cancellation.
    pub async fn run(mut self, token: CancellationToken) -> Result<(), Error> {
        self.bind_admin().await?;
        let admin = self.admin.take();
        // With high availability (one account, by the configuration) the list is looked
        // up by the first term, not before: a standby never talks to Cloudflare.
        let first = &mut self.accounts[0];
        let elected = match (&first.shared.ha, &self.config.ha) {
            (Some(ha), Some(ha_config)) => {
                let api = HttpLeaseApi::new(ha_config).map_err(Error::Lease)?;
                info!(
                    identity = %ha.identity(),
                    lease = %format!("{}/{}", ha_config.namespace, ha_config.lease_name),
                    "high availability: electing the writer by the Lease"
                );
                if url::Url::parse(&self.config.crowdsec.api_url)
                    .is_ok_and(|url| crate::net::is_loopback(&url))
                {
                    warn!(
                        "high availability with LAPI reached on a loopback address: instances that share \
                         a key then share one LAPI row and stream position, and a standby's pulls take the \
                         leader's deltas; give each instance its own key, or reach LAPI by the pod's IP \
                         (see docs/high-availability.md)"
                    );
                }
                first.telemetry.metrics.set_leader(false);
                first.writer.serve(ha.clone());
                Some((ha.clone(), api))
            }
            _ => None,
        };
        let Engine {
            accounts,
            poller,
            config,
            ..
        } = self;
        let mut tasks = tokio::task::JoinSet::new();
        let views: Vec<(Arc<Shared>, Arc<Telemetry>)> = (accounts.iter())
            .map(|a| (a.shared.clone(), a.telemetry.clone()))
            .collect();
        if let Some(listener) = admin {
            let stale = lapi_stale(&config);
            let several = accounts.len() > 1;
            let views = (accounts.iter())
                .map(|account| {
                    let (shared, telemetry) = (account.shared.clone(), account.telemetry.clone());
                    crate::admin::AccountView {
                        name: several.then(|| account.config.cloudflare.name.clone()),
                        telemetry: telemetry.clone(),
                        snapshot: Arc::new(move || snapshot(&shared, &telemetry, stale)),
                    }
                })
                .collect();
            let router = crate::admin::router_for(views);
            let token = token.clone();
            tasks.spawn(async move {
                if let Err(err) = crate::admin::serve(listener, router, token).await {
                    error!(error = %err, "the admin listener stopped");
                }
            });
        }
        if let Some(interval) = config.crowdsec.usage_metrics_interval {
            let (shared, telemetry) = views[0].clone();
            let reporter = operate::UsageReporter::new(shared, telemetry, &config)?;
            tasks.spawn(reporter.run(interval, token.clone()));
        }
        tasks.spawn(poller.run(token.clone()));
        let mut elected = elected;
        for account in accounts {
            let Account {
                mut writer,
                config: account_config,
                telemetry,
                ..
            } = account;
            match elected.take() {
                Some((ha, api)) => {
                    // The Lease is released only once the writer has stopped (the guard
                    // fires when the writer's task ends, or is aborted).
                    let writer_stopped = CancellationToken::new();
                    let guard = writer_stopped.clone().drop_guard();
                    let writer_token = token.clone();
                    let writer_ha = ha.clone();
                    tasks.spawn(async move {
                        let _guard = guard;
                        writer.run_terms(writer_ha, writer_token).await;
                    });
                    tasks.spawn(Elector::new(api, ha, telemetry).run(writer_stopped));
                }
                None => {
                    let token = token.clone();
                    let name = account_config.cloudflare.name.clone();
                    tasks.spawn(async move {
                        // Each account looks its lists up on its own: one that cannot
                        // (a bad token, a missing list) never holds another.
                        let lists = writer.resolve_lists(&token).await;
                        if let Some(lists) = lists {
                            writer.run(&lists, token).await;
                        } else {
                            info!(account = %name, "stopped before the lists were found");
                        }
                    });
                }
            }
        }
        if let Some(period) = sd_notify::watchdog_enabled() {
            let watchdog = operate::Watchdog {
                accounts: views.clone(),
                alive_within: period
                    .max(config.crowdsec.request_timeout + Duration::from_secs(120)),
            };
            tasks.spawn(watchdog.run(period, token.clone()));
        }
        // Type=notify: started. Readiness to serve is /readyz's business.
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        // Shutdown is bounded from the signal: the writer has `shutdown_grace` for an
        // operation in flight, and whatever still runs a moment after is stopped.
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            let until = deadline.unwrap_or_else(tokio::time::Instant::now);
            tokio::select! {
                biased;
                joined = tasks.join_next() => match joined {
                    None => break,
                    Some(Err(err)) if !err.is_cancelled() => error!(error = %err, "task ended abnormally"),
                    Some(_) => {}
                },
                () = token.cancelled(), if deadline.is_none() => {
                    deadline = Some(tokio::time::Instant::now() + config.sync.shutdown_grace + SHUTDOWN_MARGIN);
                }
                () = tokio::time::sleep_until(until), if deadline.is_some() => {
                    warn!("stopping tasks that outlived the shutdown grace");
                    tasks.abort_all();
                    deadline = Some(tokio::time::Instant::now() + SHUTDOWN_MARGIN);
                }
            }
        }
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        let queued: usize = views.iter().map(|(s, _)| s.state().counts().queued).sum();
        info!(queued, "stopped; the list is left as it is");
        Ok(())
    }

    /// Creates the list when it is configured by name and missing, and with `zones`,
    /// keeps the custom rule for the list in each zone: added if no rule uses the list,
    /// rewritten in place if setup's own differs (action, `exclude_hosts`).
    ///
    /// # Errors
    /// The first request that fails, or a list configured by id that does not exist.
    pub async fn setup(mut self, zones: &[String], action: &str) -> Result<SetupReport, Error> {
        let several = self.accounts.len() > 1;
        let mut report = Vec::new();
        for account in &mut self.accounts {
            let lines = account.writer.setup(zones, action).await?;
            report.extend(labelled(several, &account.config, lines));
        }
        Ok(report)
    }

    /// Removes every item the bouncer manages from the list (all of them with
    /// `manage = "all"`, the tagged ones with `"tagged"`), one bulk operation at a time.
    /// Returns how many were removed.
    ///
    /// # Errors
    /// The first error that stops it.
    pub async fn cleanup(mut self, token: CancellationToken) -> Result<usize, Error> {
        let mut removed = 0;
        for account in &mut self.accounts {
            removed += account.writer.cleanup(token.clone()).await?;
        }
        Ok(removed)
    }

    /// Removes what `setup` added to each zone (the custom rules it wrote for the list,
    /// recognised by description and expression), and with `delete_list`, deletes the list
    /// once it is empty. Returns one line per thing done or found.
    ///
    /// # Errors
    /// The first request that fails.
    pub async fn teardown(
        mut self,
        zones: &[String],
        delete_list: bool,
    ) -> Result<SetupReport, Error> {
        let several = self.accounts.len() > 1;
        let mut report = Vec::new();
        for account in &mut self.accounts {
            let lines = account.writer.teardown(zones, delete_list).await?;
            report.extend(labelled(several, &account.config, lines));
        }
        Ok(report)
    }

    /// One full reconcile: full pull, list read, apply the diff, then read the list
    /// again and check it matches.
    ///
    /// # Errors
    /// The first error that stops the sync, or [`Error::NotInStep`].
    pub async fn once(self, token: CancellationToken) -> Result<OnceReport, Error> {
        self.once_confirming(token, false).await
    }

    /// [`Engine::once`]; with `confirm_removals`, the removals the mass-removal guard
    /// holds go ahead (an operator's confirmation, `once --confirm-removals`), after a
    /// log line with their count and a sample.
    ///
    /// # Errors
    /// As [`Engine::once`].
    pub async fn once_confirming(
        mut self,
        token: CancellationToken,
        confirm_removals: bool,
    ) -> Result<OnceReport, Error> {
        let started = Instant::now();
        let mut targets = Vec::new();
        for account in &mut self.accounts {
            let lists = account.writer.look_up_lists().await?;
            targets.push(lists.iter().map(writer::Target::from).collect::<Vec<_>>());
        }
        // A snapshot, not a start-up pull: a daemon using the same key keeps its place
        // in the stream.
        self.poller.pull(Pull::Full, Source::Snapshot).await?;
        for (account, targets) in self.accounts.iter_mut().zip(&targets) {
            account.writer.read_list(targets).await?;
        }
        self.poller.hold_notice();
        self.poller.confirm_removals().await?;
        let mut report = OnceReport {
            items: 0,
            left_out: 0,
            removals_confirmed: 0,
            writes: 0,
            elapsed: Duration::ZERO,
        };
        for (account, targets) in self.accounts.iter_mut().zip(&targets) {
            let done = account
                .once_drain(targets, &token, confirm_removals)
                .await?;
            report.items += done.items;
            report.left_out += done.left_out;
            report.removals_confirmed += done.removals_confirmed;
            report.writes += done.writes;
        }
        report.elapsed = started.elapsed();
        Ok(report)
    }
}

impl Account {
    /// `once` for this account, after the pull and the first list read: releases the held
    /// removals when asked, drains, reads the list again and checks it matches.
    async fn once_drain(
        &mut self,
        targets: &[writer::Target],
        token: &CancellationToken,
        confirm_removals: bool,
    ) -> Result<OnceReport, Error> {
        let held = self.shared.state().held_removals();
        let held_sample: Vec<String> = held.iter().take(5).map(ToString::to_string).collect();
        let released = if confirm_removals && !held.is_empty() {
            warn!(
                held = held.len(),
                sample = %held_sample.join(", "),
                "removing the items the mass-removal guard held (--confirm-removals)"
            );
            self.shared.state().release_held_removals()
        } else {
            0
        };
        let writes = self.writer.drain_once(targets, token).await?;
        // Read the list again: what Cloudflare holds now, not what the bouncer believes.
        self.writer.read_list(targets).await?;
        let state = self.shared.state();
        let (wanted, missing, extra) = state.out_of_step();
        if missing > 0 || extra > 0 {
            // Counted before the second read, which would take the hold for a confirmation.
            let held = if released > 0 { 0 } else { held.len() };
            return Err(Error::NotInStep {
                missing,
                extra,
                held,
                held_sample,
            });
        }
        Ok(OnceReport {
            items: wanted,
            left_out: state.counts().left_out,
            removals_confirmed: released,
            writes,
            elapsed: Duration::ZERO,
        })
    }
}

/// Report lines of one account, prefixed with its name when there are several.
fn labelled(several: bool, config: &Config, lines: Vec<String>) -> Vec<String> {
    if !several {
        return lines;
    }
    let name = &config.cloudflare.name;
    lines
        .into_iter()
        .map(|line| format!("account {name}: {line}"))
        .collect()
}

/// How old the last successful LAPI pull may be while ready.
fn lapi_stale(config: &Config) -> Duration {
    (config.crowdsec.update_frequency * 3).max(Duration::from_secs(3))
}

/// A snapshot of state and health; see [`Engine::snapshot`].
fn snapshot(shared: &Shared, telemetry: &Telemetry, lapi_stale: Duration) -> Snapshot {
    let now = Instant::now();
    let state = shared.state();
    let counts = state.counts();
    let skipped = state.skipped();
    let (pending_adds, pending_removes) = state.pending_changes();
    let active_by_origin = state.active_by_origin();
    drop(state);
    let health = telemetry.health();
    let ago = |at: Option<Instant>| at.map(|at| now.duration_since(at));
    let ha = shared.ha.as_ref().map(|ha| (ha.status(), ha.timings()));
    let ready = match &ha {
        Some((status, timings)) if !matches!(status.role, Role::Leader { .. }) => {
            standby_readiness(&health, status, now, lapi_stale, timings.lease_duration)
        }
        _ => health.readiness(now, lapi_stale),
    };
    Snapshot {
        ready,
        uptime: health.uptime(now),
        counts,
        skipped,
        pending_adds,
        pending_removes,
        active_by_origin,
        lapi_poll_ago: ago(health.lapi_ok),
        cloudflare_write_ago: ago(health.write_ok),
        reconcile_ago: ago(health.reconcile_ok),
        lapi_error: health.lapi_error.clone(),
        cloudflare_error: health.cloudflare_error.as_ref().map(|(_, e)| e.clone()),
        foreign_writer: health.foreign_writer.clone(),
        ha: ha.map(|(status, _)| status),
    }
}

/// A standby is ready while it could take over at once: it follows LAPI (so its
/// desired state is current) and reaches the Lease API (so it would see the leader go).
/// It never talks to Cloudflare, so Cloudflare's health is not its business.
fn standby_readiness(
    health: &crate::telemetry::Health,
    ha: &HaStatus,
    now: Instant,
    lapi_stale: Duration,
    lease_stale: Duration,
) -> Result<(), String> {
    let lapi_age = health.lapi_ok.map(|at| now.duration_since(at));
    if lapi_age.is_none_or(|age| age > lapi_stale) {
        let why = health.lapi_error.as_deref().unwrap_or("no answer yet");
        return Err(format!("standby, not following LAPI: {why}"));
    }
    let lease_age = ha.lease_ok.map(|at| now.duration_since(at));
    if lease_age.is_none_or(|age| age > lease_stale) {
        let why = ha.lease_error.as_deref().unwrap_or("no answer yet");
        return Err(format!("standby, cannot reach the Lease API: {why}"));
    }
    Ok(())
}

/// What `once` did.
#[derive(Debug, Clone, Copy)]
pub struct OnceReport {
    pub items: usize,
    pub left_out: usize,
    /// Held removals an operator confirmed (`--confirm-removals`).
    pub removals_confirmed: usize,
    pub writes: usize,
    pub elapsed: Duration,
}

/// Delay before retrying after `err`. Cloudflare's `Retry-After` when given; the rest
/// of the 5-minute window for its global limit; a minute for refused credentials (they
/// need a person); else capped exponential backoff with jitter.
fn retry_delay(err: &Error, failures: u32) -> Duration {
    match err {
        Error::Cloudflare(err) => {
            if let Some(after) = err.retry_after() {
                return after;
            }
            if err.is_global_limit() {
                return GLOBAL_LIMIT_WAIT;
            }
            if !err.is_retryable() {
                return MAX_RETRY_DELAY;
            }
            backoff_delay(failures)
        }
        Error::Lapi(lapi::Error::Forbidden) => MAX_RETRY_DELAY,
        _ => backoff_delay(failures),
    }
}

/// Capped exponential backoff with jitter: about 1 s, 2 s, 4 s … up to a minute.
fn backoff_delay(failures: u32) -> Duration {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(MAX_RETRY_DELAY)
        .with_jitter()
        .without_max_times()
        .build()
        .nth(failures.saturating_sub(1) as usize)
        .unwrap_or(MAX_RETRY_DELAY)
        // Jitter adds up to the delay itself; the cap holds for the total.
        .min(MAX_RETRY_DELAY)
}

/// Sleeps unless cancelled first; returns whether to go on.
async fn sleep_or_cancel(delay: Duration, token: &CancellationToken) -> bool {
    tokio::select! {
        biased;
        () = token.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let first = backoff_delay(1);
        assert!(
            first >= Duration::from_secs(1) && first <= Duration::from_secs(2),
            "{first:?}"
        );
        let later = backoff_delay(4);
        assert!(later >= Duration::from_secs(8), "{later:?}");
        assert!(backoff_delay(50) <= MAX_RETRY_DELAY);
    }

    #[test]
    fn retry_delay_honours_cloudflare() {
        let limited = |retry_after, message: &str, code| {
            Error::Cloudflare(cloudflare::Error::RateLimited {
                retry_after,
                errors: vec![cloudflare::ApiMessage {
                    code,
                    message: message.into(),
                }],
            })
        };
        let pending = limited(
            Some(Duration::from_secs(1)),
            "you have been ratelimited",
            10040,
        );
        assert_eq!(retry_delay(&pending, 3), Duration::from_secs(1));
        let global = limited(None, "More than 1200 requests per 300 seconds reached", 971);
        assert_eq!(retry_delay(&global, 1), GLOBAL_LIMIT_WAIT);
        let auth = Error::Cloudflare(cloudflare::Error::Api {
            what: "adding list items",
            status: 403,
            errors: vec![],
        });
        assert_eq!(retry_delay(&auth, 1), MAX_RETRY_DELAY);
        assert_eq!(
            retry_delay(&Error::Lapi(lapi::Error::Forbidden), 1),
            MAX_RETRY_DELAY
        );
    }
}
