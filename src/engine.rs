//! The sync engine: two tasks around one shared [`SyncState`].
//!
//! - The **poller** is the only code that talks to LAPI. It pulls the decision stream
//!   (a full pull at start, after any failed pull, and every `reconcile_interval`; deltas
//!   in between), updates the desired state, expires decisions, and after a full pull asks
//!   the writer for a fresh list read.
//! - The **writer** (`engine/writer.rs`) is the only code that talks to Cloudflare. It
//!   reads the list when asked, then drains the pending queue one bulk operation at a
//!   time: submit, poll to completion, confirm, next. At most one write is in flight.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::cloudflare::{self, CloudflareClient};
use crate::config::{Config, Manage};
use crate::lapi::{self, LapiClient, Pull, StreamSink};
use crate::state::{DecisionRef, Desired, Policy, SyncState};
use crate::telemetry::{Snapshot, Telemetry};

mod foreign;
mod operate;
mod writer;

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
        if *.held > 0 { format!(" ({} removals held by the mass-removal guard: run again to confirm)", .held) } else { String::new() }
    )]
    NotInStep {
        missing: usize,
        extra: usize,
        held: usize,
    },
    #[error("stopped before the sync finished")]
    Cancelled,
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

/// The engine: the two actors around their shared state; see the module docs.
pub struct Engine {
    shared: Arc<Shared>,
    poller: Poller,
    writer: Writer,
    config: Config,
    telemetry: Arc<Telemetry>,
    admin: Option<TcpListener>,
}

/// The only code that reads the decision stream: it owns the LAPI client. See the
/// module docs.
struct Poller {
    shared: Arc<Shared>,
    lapi: LapiClient,
    config: Config,
    telemetry: Arc<Telemetry>,
    /// How many held removals were last reported, so the log says it once.
    hold_said: usize,
}

impl Engine {
    /// # Errors
    /// TLS setup errors of either client.
    pub fn new(config: Config) -> Result<Engine, Error> {
        crate::install_tls_provider();
        let policy = Policy {
            decision_types: config.crowdsec.decision_types.clone(),
            ipv6_prefix: config.cloudflare.ipv6_prefix,
            min_ipv4_prefix: config.safety.min_ipv4_prefix,
            min_ipv6_prefix: config.safety.min_ipv6_prefix,
            allowlist: config.safety.allowlist.clone(),
            origin_priority: config.cloudflare.origin_priority.clone(),
            manage_all: config.cloudflare.manage == Manage::All,
            tag: config.cloudflare.tag.clone(),
            mass_removal_share: config.safety.mass_removal_share,
            mass_removal_min_items: config.safety.mass_removal_min_items,
        };
        let telemetry = Arc::new(Telemetry::default());
        let shared = Arc::new(Shared {
            state: Mutex::new(SyncState::new(policy)),
            wake: Notify::new(),
            refresh_list: AtomicBool::new(false),
            beats: Mutex::new(Instant::now()),
        });
        let cloudflare = CloudflareClient::new(&config.cloudflare, telemetry.clone())?;
        Ok(Engine {
            poller: Poller {
                shared: shared.clone(),
                lapi: LapiClient::new(&config.crowdsec)?,
                config: config.clone(),
                telemetry: telemetry.clone(),
                hold_said: 0,
            },
            writer: Writer::new(
                shared.clone(),
                cloudflare,
                config.clone(),
                telemetry.clone(),
            ),
            shared,
            config,
            telemetry,
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

    /// A point-in-time view of the bouncer, for the admin listener.
    pub fn snapshot(&self) -> Snapshot {
        snapshot(&self.shared, &self.telemetry, lapi_stale(&self.config))
    }

    /// Runs the daemon until `token` is cancelled, then lets an in-flight bulk operation
    /// finish within `shutdown_grace`. The list is left as it is.
    ///
    /// # Errors
    /// None in practice: failures are logged and retried until cancellation.
    pub async fn run(mut self, token: CancellationToken) -> Result<(), Error> {
        self.bind_admin().await?;
        let admin = self.admin.take();
        let Some(list_id) = self.writer.resolve_list(&token).await else {
            return Ok(());
        };
        let Engine {
            shared,
            poller,
            writer,
            config,
            telemetry,
            ..
        } = self;
        let mut tasks = tokio::task::JoinSet::new();
        if let Some(listener) = admin {
            let (shared, telemetry) = (shared.clone(), telemetry.clone());
            let stale = lapi_stale(&config);
            let router = crate::admin::router(
                telemetry.clone(),
                Arc::new(move || snapshot(&shared, &telemetry, stale)),
            );
            let token = token.clone();
            tasks.spawn(async move {
                if let Err(err) = crate::admin::serve(listener, router, token).await {
                    error!(error = %err, "the admin listener stopped");
                }
            });
        }
        if let Some(interval) = config.crowdsec.usage_metrics_interval {
            let reporter = operate::UsageReporter::new(shared.clone(), telemetry.clone(), &config)?;
            tasks.spawn(reporter.run(interval, token.clone()));
        }
        tasks.spawn(poller.run(token.clone()));
        tasks.spawn(writer.run(list_id, token.clone()));
        if let Some(period) = sd_notify::watchdog_enabled() {
            let watchdog = operate::Watchdog {
                shared: shared.clone(),
                telemetry: telemetry.clone(),
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
        let state = shared.state();
        info!(
            queued = state.counts().queued,
            "stopped; the list is left as it is"
        );
        Ok(())
    }

    /// Creates the list when it is configured by name and missing, and with `zones`,
    /// adds the custom rule `ip.src in $<list>` to each zone unless one is there.
    ///
    /// # Errors
    /// The first request that fails, or a list configured by id that does not exist.
    pub async fn setup(mut self, zones: &[String], action: &str) -> Result<SetupReport, Error> {
        self.writer.setup(zones, action).await
    }

    /// Removes every item the bouncer manages from the list (all of them with
    /// `manage = "all"`, the tagged ones with `"tagged"`), one bulk operation at a time.
    /// Returns how many were removed.
    ///
    /// # Errors
    /// The first error that stops it.
    pub async fn cleanup(mut self, token: CancellationToken) -> Result<usize, Error> {
        self.writer.cleanup(token).await
    }

    /// One full reconcile: full pull, list read, apply the diff, then read the list
    /// again and check it matches.
    ///
    /// # Errors
    /// The first error that stops the sync, or [`Error::NotInStep`].
    pub async fn once(mut self, token: CancellationToken) -> Result<OnceReport, Error> {
        let started = Instant::now();
        let list = self.writer.look_up_list().await?;
        // A snapshot, not a start-up pull: a daemon using the same key keeps its place
        // in the stream.
        self.poller.pull(Pull::Full, Source::Snapshot).await?;
        self.writer.read_list(&list.id).await?;
        self.poller.hold_notice();
        self.poller.confirm_removals().await?;
        let writes = self.writer.drain_once(&list.id, &token).await?;
        // Read the list again: what Cloudflare holds now, not what the bouncer believes.
        self.writer.read_list(&list.id).await?;
        let state = self.shared.state();
        let desired = state.desired_items();
        let managed = state.managed_listed_items();
        let missing = desired
            .iter()
            .filter(|item| managed.binary_search(item).is_err())
            .count();
        let extra = managed
            .iter()
            .filter(|item| desired.binary_search(item).is_err())
            .count();
        if missing > 0 || extra > 0 {
            let held = state.counts().held;
            return Err(Error::NotInStep {
                missing,
                extra,
                held,
            });
        }
        Ok(OnceReport {
            items: desired.len(),
            left_out: state.counts().left_out,
            writes,
            elapsed: started.elapsed(),
        })
    }
}

impl Poller {
    /// The poller task: see the module docs.
    async fn run(mut self, token: CancellationToken) {
        let frequency = self.config.crowdsec.update_frequency;
        let mut next_full = Instant::now();
        let mut failures = 0;
        let mut started = false;
        loop {
            let pull = if Instant::now() >= next_full {
                Pull::Full
            } else {
                Pull::Delta
            };
            // The first full pull starts the stream (it sets this key's `last_pull`), and
            // so does a recovery after a failed pull; scheduled reconciles read a snapshot
            // of the active decisions, which costs LAPI a quarter of the CPU and half the
            // bytes of a start-up pull (docs/lapi.md §9.3).
            let source = if started && failures == 0 {
                Source::Snapshot
            } else {
                Source::Stream
            };
            let result = tokio::select! {
                biased;
                () = token.cancelled() => return,
                result = self.pull_cycle(pull, source) => result,
            };
            if result.is_ok() {
                self.hold_notice();
                let confirmed = tokio::select! {
                    biased;
                    () = token.cancelled() => return,
                    confirmed = self.confirm_removals() => confirmed,
                };
                if let Err(err) = confirmed {
                    warn!(error = %err, "the read confirming removals failed; they stay held and it is retried at the next poll");
                }
            }
            let kind = if pull == Pull::Full { "full" } else { "delta" };
            self.telemetry.metrics.lapi_poll(kind, result.is_ok());
            {
                let mut health = self.telemetry.health();
                match &result {
                    Ok(()) => {
                        health.lapi_ok = Some(Instant::now());
                        health.lapi_error = None;
                    }
                    Err(err) => health.lapi_error = Some(err.to_string()),
                }
            }
            self.shared.heartbeat();
            let delay = match result {
                Ok(()) => {
                    if failures > 0 {
                        info!("LAPI is back");
                    }
                    failures = 0;
                    if pull == Pull::Full {
                        started = true;
                        next_full = Instant::now() + self.config.sync.reconcile_interval;
                    }
                    frequency
                }
                Err(err) => {
                    failures += 1;
                    // A failed pull may still have moved LAPI's last_pull: only a full
                    // pull is sure to miss nothing.
                    next_full = Instant::now();
                    if matches!(err, Error::Lapi(lapi::Error::Forbidden)) {
                        error!(error = %err, "LAPI pull refused; the list is left untouched");
                    } else {
                        warn!(error = %err, ?pull, "LAPI pull failed; the list is left untouched");
                    }
                    retry_delay(&err, failures).max(frequency)
                }
            };
            if !sleep_or_cancel(delay, &token).await {
                return;
            }
        }
    }

    /// Confirms the removals full pulls implied, through a read of LAPI's active
    /// decisions that fails as a whole (docs/lapi.md §9.1): what LAPI still holds stays,
    /// the rest goes. Nothing to do when no removal waits.
    async fn confirm_removals(&self) -> Result<(), Error> {
        let (asked, ipv6_prefix) = {
            let state = self.shared.state();
            (state.awaiting_confirmation(), state.policy().ipv6_prefix)
        };
        if asked.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let mut sink = Confirming {
            asked: asked.iter().copied().collect(),
            ipv6_prefix,
            found: Packed::default(),
        };
        let targeted = asked.len() <= TARGETED_CONFIRMATIONS;
        if targeted {
            for item in &asked {
                (sink, _) = self.lapi.active_into(Some(item), sink).await?;
            }
        } else {
            (sink, _) = self.lapi.active_into(None, sink).await?;
        }
        let kept = {
            let mut state = self.shared.state();
            let kept = state.confirm_removals(&asked, sink.found.iter(), Instant::now());
            state.rebalance();
            kept
        };
        self.telemetry
            .metrics
            .removal_confirmations(asked.len() - kept, kept);
        if kept > 0 {
            warn!(
                asked = asked.len(),
                still_active = kept,
                "a full pull from LAPI left out decisions LAPI still holds (an answer cut short?); they stay on the list"
            );
        }
        info!(
            asked = asked.len(),
            removed = asked.len() - kept,
            kept,
            targeted,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "LAPI confirmed the removals a full pull implied"
        );
        self.shared.wake.notify_one();
        Ok(())
    }

    /// One turn of the poller. A snapshot is preceded by a delta: LAPI lets a snapshot
    /// move a `last_pull` older than a minute (docs/lapi.md §5), and a fresh one it leaves
    /// alone, so the stream goes on exactly where the delta left it.
    async fn pull_cycle(&self, pull: Pull, source: Source) -> Result<(), Error> {
        if pull == Pull::Full && source == Source::Snapshot {
            self.pull(Pull::Delta, source).await?;
        }
        self.pull(pull, source).await
    }

    /// Says once how many removals wait for LAPI's confirmation, when that changes.
    fn hold_notice(&mut self) {
        let awaiting = self.shared.state().counts().awaiting_confirmation;
        if awaiting > 0 && self.hold_said != awaiting {
            info!(
                removals = awaiting,
                "holding removals until LAPI confirms them (GET /v1/decisions)"
            );
        }
        self.hold_said = awaiting;
    }

    /// One pull, applied to the state. A failed pull changes nothing: a full pull is
    /// parsed into a new desired state, swapped in only once the whole response is in.
    async fn pull(&self, pull: Pull, source: Source) -> Result<(), Error> {
        let (n_new, n_deleted, size) = match pull {
            Pull::Full => {
                let (policy, desired) = {
                    let state = self.shared.state();
                    (state.policy(), state.new_desired())
                };
                let sink = FullPull {
                    policy,
                    desired,
                    now: Instant::now(),
                    new: 0,
                };
                let (sink, size) = match source {
                    Source::Stream => self.lapi.stream_into(Pull::Full, sink).await?,
                    Source::Snapshot => self.lapi.active_into(None, sink).await?,
                };
                let mut state = self.shared.state();
                state.replace_desired_with(sink.desired);
                self.shared.refresh_list.store(true, Ordering::SeqCst);
                (sink.new, 0, size)
            }
            Pull::Delta => {
                let (sink, size) = self
                    .lapi
                    .stream_into(Pull::Delta, DeltaPull::default())
                    .await?;
                let now = Instant::now();
                let mut state = self.shared.state();
                state.apply_delta(sink.deleted.iter(), sink.new.iter(), now);
                (sink.new.len(), sink.deleted.len(), size)
            }
        };
        let mut state = self.shared.state();
        let expired = state.expire(Instant::now());
        state.rebalance();
        let counts = state.counts();
        let skipped = state.skipped();
        drop(state);
        match pull {
            Pull::Full => info!(
                source = source.name(),
                decisions = counts.decisions,
                items = counts.desired_items,
                left_out = counts.left_out,
                skipped = skipped.total(),
                received = n_new,
                bytes = size,
                "full pull from LAPI"
            ),
            Pull::Delta if n_new + n_deleted + expired > 0 => {
                debug!(new = n_new, deleted = n_deleted, expired, "delta from LAPI");
            }
            Pull::Delta => {}
        }
        self.shared.log_notices();
        self.shared.wake.notify_one();
        Ok(())
    }
}

/// Above this many removals to confirm, one read of every active decision is cheaper
/// than one targeted read each.
const TARGETED_CONFIRMATIONS: usize = 20;

/// A confirming read: keeps the decisions on the items asked about.
struct Confirming {
    asked: rustc_hash::FxHashSet<crate::item::Item>,
    ipv6_prefix: u8,
    found: Packed,
}

impl StreamSink for Confirming {
    fn new_decision(&mut self, decision: DecisionRef<'_>) {
        let item = crate::item::Item::from_decision(decision.value, self.ipv6_prefix);
        if item.is_ok_and(|item| self.asked.contains(&item)) {
            self.found.push(&decision);
        }
    }

    fn deleted_decision(&mut self, _: DecisionRef<'_>) {}
}

/// Where a full pull reads LAPI's active decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// `GET /v1/decisions/stream?startup=true`: sets the key's `last_pull`, so deltas
    /// follow; also returns every expired decision still in the database.
    Stream,
    /// `GET /v1/decisions`: active decisions only, queried before LAPI answers; the
    /// stream's `last_pull` is left alone when a delta came less than a minute before.
    Snapshot,
}

impl Source {
    fn name(self) -> &'static str {
        match self {
            Source::Stream => "stream",
            Source::Snapshot => "decisions",
        }
    }
}

/// A full pull being parsed straight into a new desired state.
struct FullPull {
    policy: Arc<Policy>,
    desired: Desired,
    now: Instant,
    new: usize,
}

impl StreamSink for FullPull {
    fn new_decision(&mut self, decision: DecisionRef<'_>) {
        self.new += 1;
        self.desired.insert(&self.policy, &decision, self.now);
    }

    // A full pull's `deleted` lists every expired decision still in LAPI's database:
    // nothing to do with them, the new desired state simply lacks them.
    fn deleted_decision(&mut self, _: DecisionRef<'_>) {}
}

/// A delta, kept until complete, then applied at once.
#[derive(Default)]
struct DeltaPull {
    new: Packed,
    deleted: Packed,
}

impl StreamSink for DeltaPull {
    fn new_decision(&mut self, decision: DecisionRef<'_>) {
        self.new.push(&decision);
    }

    fn deleted_decision(&mut self, decision: DecisionRef<'_>) {
        self.deleted.push(&decision);
    }
}

/// Decisions owned until their delta is complete: the six fields of each, one after
/// another in one string. Two allocations for any number of decisions (a first delta
/// can repeat every decision of the full pull before it).
#[derive(Default)]
struct Packed {
    text: String,
    /// Where each field of each decision ends in `text`.
    ends: Vec<[usize; 6]>,
}

impl Packed {
    fn push(&mut self, d: &DecisionRef<'_>) {
        let mut ends = [0; 6];
        let fields = [d.scope, d.value, d.kind, d.origin, d.scenario, d.duration];
        for (end, field) in ends.iter_mut().zip(fields) {
            self.text.push_str(field);
            *end = self.text.len();
        }
        self.ends.push(ends);
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    fn iter(&self) -> impl Iterator<Item = DecisionRef<'_>> {
        let mut start = 0;
        self.ends.iter().map(move |ends| {
            let mut fields = [""; 6];
            for (field, &end) in fields.iter_mut().zip(ends) {
                *field = self.text.get(start..end).unwrap_or_default();
                start = end;
            }
            let [scope, value, kind, origin, scenario, duration] = fields;
            DecisionRef {
                scope,
                value,
                kind,
                origin,
                scenario,
                duration,
            }
        })
    }
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
    Snapshot {
        ready: health.readiness(now, lapi_stale),
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
    }
}

/// What `once` did.
#[derive(Debug, Clone, Copy)]
pub struct OnceReport {
    pub items: usize,
    pub left_out: usize,
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
    fn a_delta_gives_back_every_decision_as_received() {
        let decisions = [
            [
                "Ip",
                "1.2.3.4",
                "ban",
                "crowdsec",
                "crowdsecurity/ssh-bf",
                "3h59m",
            ],
            ["Range", "10.0.0.0/24", "ban", "cscli", "", "1h"],
            ["", "", "", "", "", ""],
            ["Ip", "2001:db8::1", "captcha", "CAPI", "é ✓ unicode", "-5s"],
        ];
        let mut packed = Packed::default();
        for [scope, value, kind, origin, scenario, duration] in decisions {
            let d = DecisionRef {
                scope,
                value,
                kind,
                origin,
                scenario,
                duration,
            };
            packed.push(&d);
        }
        assert_eq!(packed.len(), decisions.len());
        let back: Vec<[&str; 6]> = packed
            .iter()
            .map(|d| [d.scope, d.value, d.kind, d.origin, d.scenario, d.duration])
            .collect();
        assert_eq!(back, decisions);
    }

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
