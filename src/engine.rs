//! The sync engine: two tasks around one shared [`SyncState`].
//!
//! - The **poller** is the only code that talks to LAPI. It pulls the decision stream
//!   (a full pull at start, after any failed pull, and every `reconcile_interval`; deltas
//!   in between), updates the desired state, expires decisions, and after a full pull asks
//!   the writer for a fresh list read.
//! - The **writer** is the only code that talks to Cloudflare. It reads the list when
//!   asked, then drains the pending queue one bulk operation at a time: submit, poll to
//!   completion, confirm, next. So at most one write is in flight, by construction.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::cloudflare::{self, CloudflareClient, OpStatus, MAX_PER_PAGE};
use crate::config::Config;
use crate::item::Item;
use crate::lapi::{self, LapiClient, Pull};
use crate::state::{Batch, Confirmed, Filter, SyncState};

/// First wait before polling a bulk operation; later waits grow by [`POLL_GROWTH`].
const FIRST_POLL: Duration = Duration::from_millis(200);
const POLL_GROWTH: f64 = 1.3;
const MAX_POLL: Duration = Duration::from_secs(2);
/// Longest wait between retries of a failing LAPI pull or Cloudflare call.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Lapi(#[from] lapi::Error),
    #[error(transparent)]
    Cloudflare(#[from] cloudflare::Error),
    #[error("bulk operation {op_id} failed: {message}")]
    OperationFailed { op_id: String, message: String },
    #[error("the list still differs from LAPI after syncing: {missing} missing, {extra} extra")]
    NotInStep { missing: usize, extra: usize },
    #[error("stopped before the sync finished")]
    Cancelled,
}

/// What both tasks share: the state, and how the poller wakes the writer.
struct Shared {
    state: Mutex<SyncState>,
    wake: Notify,
    /// A full list read is wanted (set after each full LAPI pull).
    refresh_list: AtomicBool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, SyncState> {
        // A panic while holding the lock leaves the state as consistent as any single
        // step leaves it; keep going rather than poisoning the daemon.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The engine with its clients; see the module docs.
pub struct Engine {
    shared: Arc<Shared>,
    lapi: LapiClient,
    cloudflare: CloudflareClient,
    config: Config,
}

impl Engine {
    /// # Errors
    /// TLS setup errors of either client.
    pub fn new(config: Config) -> Result<Engine, Error> {
        crate::install_tls_provider();
        let filter = Filter {
            decision_types: config.crowdsec.decision_types.clone(),
            ipv6_prefix: config.cloudflare.ipv6_prefix,
        };
        Ok(Engine {
            shared: Arc::new(Shared {
                state: Mutex::new(SyncState::new(filter)),
                wake: Notify::new(),
                refresh_list: AtomicBool::new(false),
            }),
            lapi: LapiClient::new(&config.crowdsec)?,
            cloudflare: CloudflareClient::new(&config.cloudflare)?,
            config,
        })
    }

    /// Runs the daemon until `token` is cancelled, then lets an in-flight bulk operation
    /// finish within `shutdown_grace`. The list is left as it is.
    ///
    /// # Errors
    /// None in practice: failures are logged and retried until cancellation.
    pub async fn run(self, token: CancellationToken) -> Result<(), Error> {
        let Some(list_id) = self.resolve_list(&token).await else {
            return Ok(());
        };
        let engine = Arc::new(self);
        let poller = tokio::spawn({
            let (engine, token) = (engine.clone(), token.clone());
            async move { engine.poll_lapi(token).await }
        });
        let writer = tokio::spawn({
            let engine = engine.clone();
            async move { engine.write_cloudflare(&list_id, token).await }
        });
        let (poller, writer) = tokio::join!(poller, writer);
        for (task, result) in [("poller", poller), ("writer", writer)] {
            if let Err(err) = result {
                error!(task, error = %err, "task ended abnormally");
            }
        }
        let state = engine.shared.state();
        info!(
            queued = state.counts().queued,
            "stopped; the list is left as it is"
        );
        Ok(())
    }

    /// One full reconcile: full pull, list read, apply the diff, then read the list
    /// again and check it matches.
    ///
    /// # Errors
    /// The first error that stops the sync, or [`Error::NotInStep`].
    pub async fn once(self, token: CancellationToken) -> Result<OnceReport, Error> {
        let started = Instant::now();
        let list = self
            .cloudflare
            .find_list(&self.config.cloudflare.list)
            .await?;
        let body = self.lapi.stream(Pull::Full).await?;
        {
            let stream = body.parse()?;
            self.shared
                .state()
                .replace_desired(stream.new_decisions(), Instant::now());
        }
        drop(body);
        self.read_list(&list.id).await?;
        let mut failures = 0;
        let mut writes = 0;
        loop {
            if token.is_cancelled() {
                return Err(Error::Cancelled);
            }
            let batch = self
                .shared
                .state()
                .take_batch(self.config.cloudflare.batch_size);
            let Some(batch) = batch else { break };
            match self.write(&list.id, batch, &token).await {
                Ok(_) => writes += 1,
                Err(err) if failures < 5 && is_transient(&err) => {
                    failures += 1;
                    warn!(error = %err, "write failed; retrying");
                    tokio::time::sleep(retry_delay(&err, failures)).await;
                }
                Err(err) => return Err(err),
            }
        }
        let listed: Vec<Item> = self
            .cloudflare
            .all_items(&list.id)
            .await?
            .iter()
            .filter_map(|listed| Item::from_cloudflare(&listed.ip))
            .collect();
        let desired = self.shared.state().desired_items();
        let missing = desired.iter().filter(|item| !listed.contains(item)).count();
        let extra = listed
            .iter()
            .filter(|item| desired.binary_search(item).is_err())
            .count();
        if missing > 0 || extra > 0 {
            return Err(Error::NotInStep { missing, extra });
        }
        Ok(OnceReport {
            items: desired.len(),
            writes,
            elapsed: started.elapsed(),
        })
    }

    /// Finds the list id, retrying until it works or the token is cancelled.
    async fn resolve_list(&self, token: &CancellationToken) -> Option<String> {
        let mut attempt = 0;
        loop {
            match self
                .cloudflare
                .find_list(&self.config.cloudflare.list)
                .await
            {
                Ok(list) => {
                    info!(list = %list.name, list_id = %list.id, items = list.num_items, "using Cloudflare list");
                    return Some(list.id);
                }
                Err(err) => {
                    attempt += 1;
                    error!(error = %err, "cannot use the Cloudflare list; retrying");
                    let delay = if err.is_retryable() {
                        backoff_delay(attempt)
                    } else {
                        MAX_RETRY_DELAY
                    };
                    if !sleep_or_cancel(delay, token).await {
                        return None;
                    }
                }
            }
        }
    }

    /// The poller task: see the module docs.
    async fn poll_lapi(&self, token: CancellationToken) {
        let frequency = self.config.crowdsec.update_frequency;
        let mut next_full = Instant::now();
        let mut failures = 0;
        loop {
            let pull = if Instant::now() >= next_full {
                Pull::Full
            } else {
                Pull::Delta
            };
            let result = tokio::select! {
                biased;
                () = token.cancelled() => return,
                result = self.pull(pull) => result,
            };
            let delay = match result {
                Ok(()) => {
                    failures = 0;
                    if pull == Pull::Full {
                        next_full = Instant::now() + self.config.sync.reconcile_interval;
                    }
                    frequency
                }
                Err(err) => {
                    failures += 1;
                    // A failed pull may still have moved LAPI's last_pull: only a full
                    // pull is sure to miss nothing.
                    next_full = Instant::now();
                    warn!(error = %err, ?pull, "LAPI pull failed; the list is left untouched");
                    backoff_delay(failures).max(frequency)
                }
            };
            if !sleep_or_cancel(delay, &token).await {
                return;
            }
        }
    }

    /// One pull, applied to the state. A failed pull changes nothing.
    async fn pull(&self, pull: Pull) -> Result<(), Error> {
        let body = self.lapi.stream(pull).await?;
        let stream = body.parse()?;
        let (n_new, n_deleted) = stream.counts();
        let now = Instant::now();
        let mut state = self.shared.state();
        match pull {
            Pull::Full => {
                state.replace_desired(stream.new_decisions(), now);
                self.shared.refresh_list.store(true, Ordering::SeqCst);
                let counts = state.counts();
                info!(
                    decisions = counts.decisions,
                    items = counts.desired_items,
                    skipped = state.skipped().total(),
                    bytes = body.len(),
                    "full pull from LAPI"
                );
            }
            Pull::Delta => {
                state.apply_delta(stream.deleted_decisions(), stream.new_decisions(), now);
                if n_new + n_deleted > 0 {
                    debug!(new = n_new, deleted = n_deleted, "delta from LAPI");
                }
            }
        }
        let expired = state.expire(now);
        if expired > 0 {
            debug!(expired, "decisions expired locally");
        }
        drop(state);
        self.shared.wake.notify_one();
        Ok(())
    }

    /// The writer task: see the module docs.
    async fn write_cloudflare(&self, list_id: &str, token: CancellationToken) {
        let mut failures = 0;
        loop {
            if token.is_cancelled() {
                return;
            }
            if self.shared.refresh_list.swap(false, Ordering::SeqCst) {
                if let Err(err) = self.read_list(list_id).await {
                    self.shared.refresh_list.store(true, Ordering::SeqCst);
                    failures += 1;
                    warn!(error = %err, "reading the list failed; retrying");
                    if !sleep_or_cancel(retry_delay(&err, failures), &token).await {
                        return;
                    }
                    continue;
                }
            }
            let batch = self
                .shared
                .state()
                .take_batch(self.config.cloudflare.batch_size);
            let Some(batch) = batch else {
                tokio::select! {
                    biased;
                    () = token.cancelled() => return,
                    () = self.shared.wake.notified() => continue,
                }
            };
            match self.write(list_id, batch, &token).await {
                Ok(_) => failures = 0,
                Err(Error::Cancelled) => return,
                Err(err) => {
                    failures += 1;
                    warn!(error = %err, "write failed; the change stays queued");
                    if !sleep_or_cancel(retry_delay(&err, failures), &token).await {
                        return;
                    }
                }
            }
        }
    }

    /// Reads the whole list and replaces the list view with it.
    async fn read_list(&self, list_id: &str) -> Result<(), Error> {
        let started = Instant::now();
        let listed = self.cloudflare.all_items(list_id).await?;
        let n_listed = listed.len();
        let items = listed.into_iter().filter_map(|listed| {
            let item = Item::from_cloudflare(&listed.ip);
            if item.is_none() {
                warn!(ip = %listed.ip, "list item is not an IP or CIDR; ignored");
            }
            Some((item?, listed.id.into_boxed_str()))
        });
        let mut state = self.shared.state();
        state.replace_list(items);
        let counts = state.counts();
        info!(
            listed = n_listed,
            desired = counts.desired_items,
            queued = counts.queued,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "read the list"
        );
        Ok(())
    }

    /// Sends one batch as one bulk operation and waits for it. On failure the batch's
    /// items are back in the queue.
    async fn write(
        &self,
        list_id: &str,
        batch: Batch,
        token: &CancellationToken,
    ) -> Result<usize, Error> {
        let items = batch.items();
        let result = self.submit_and_wait(list_id, batch, token).await;
        if result.is_err() {
            self.shared.state().requeue(items);
        }
        result
    }

    async fn submit_and_wait(
        &self,
        list_id: &str,
        batch: Batch,
        token: &CancellationToken,
    ) -> Result<usize, Error> {
        let started = Instant::now();
        let (op_id, outcome, items) = match batch {
            Batch::Add(adds) => {
                let op_id = self.cloudflare.add_items(list_id, &adds).await?;
                (
                    op_id,
                    Confirmed::Added,
                    adds.into_iter().map(|(item, _)| item).collect(),
                )
            }
            Batch::Remove(removes) => {
                let Some((ids, items)) = self.resolve_ids(list_id, removes).await? else {
                    return Ok(0);
                };
                let ids: Vec<&str> = ids.iter().map(|id| &**id).collect();
                let op_id = self.cloudflare.delete_items(list_id, &ids).await?;
                (op_id, Confirmed::Removed, items)
            }
        };
        let items: Vec<Item> = items;
        match self.wait_for(&op_id, token).await? {
            OpStatus::Completed => {
                self.shared.state().confirm(outcome, &items);
                let (added, removed) = match outcome {
                    Confirmed::Added => (items.len(), 0),
                    Confirmed::Removed => (0, items.len()),
                };
                info!(
                    added,
                    removed,
                    op_id,
                    duration_ms = started.elapsed().as_millis() as u64,
                    "bulk operation completed"
                );
                Ok(items.len())
            }
            OpStatus::Failed(message) => Err(Error::OperationFailed { op_id, message }),
            OpStatus::Pending => Err(Error::Cancelled),
        }
    }

    /// Finds the ids a removal needs. Ids come from list reads; for items added by this
    /// bouncer since the last read, search each one when that costs fewer requests than
    /// reading the whole list, else read the whole list (which requeues everything
    /// with fresh ids). Returns `None` when nothing is left to send now.
    async fn resolve_ids(
        &self,
        list_id: &str,
        removes: Vec<(Item, Option<Box<str>>)>,
    ) -> Result<Option<(Vec<Box<str>>, Vec<Item>)>, Error> {
        let unknown = removes.iter().filter(|(_, id)| id.is_none()).count();
        if unknown > 0 {
            let listed = self.shared.state().counts().listed_items;
            let pages = listed.div_ceil(MAX_PER_PAGE).max(1);
            if unknown > pages {
                debug!(unknown, pages, "resolving item ids with a full list read");
                self.shared
                    .state()
                    .requeue(removes.iter().map(|(item, _)| *item));
                self.read_list(list_id).await?;
                return Ok(None);
            }
            debug!(unknown, "resolving item ids by search");
        }
        let mut ids = Vec::with_capacity(removes.len());
        let mut items = Vec::with_capacity(removes.len());
        for (item, id) in removes {
            let id = match id {
                Some(id) => Some(id),
                None => {
                    let found = self.cloudflare.find_item(list_id, item).await?;
                    let found = found.map(String::into_boxed_str);
                    self.shared.state().resolve_id(item, found.clone());
                    found
                }
            };
            if let Some(id) = id {
                ids.push(id);
                items.push(item);
            }
        }
        Ok((!ids.is_empty()).then_some((ids, items)))
    }

    /// Polls a bulk operation with growing intervals until it ends. On shutdown, keeps
    /// polling for `shutdown_grace`, then gives up with [`OpStatus::Pending`].
    async fn wait_for(&self, op_id: &str, token: &CancellationToken) -> Result<OpStatus, Error> {
        let mut interval = FIRST_POLL;
        let mut cancelled_at: Option<Instant> = None;
        loop {
            tokio::time::sleep(interval).await;
            if token.is_cancelled() {
                let since = *cancelled_at.get_or_insert_with(Instant::now);
                if since.elapsed() >= self.config.sync.shutdown_grace {
                    warn!(op_id, "shutting down with a bulk operation still pending");
                    return Ok(OpStatus::Pending);
                }
            }
            match self.cloudflare.operation(op_id).await {
                Ok(OpStatus::Pending) => {}
                Ok(status) => return Ok(status),
                // Never give up on an operation that may still be pending: a second write
                // now would be rejected, and could pile up.
                Err(err) => {
                    warn!(op_id, error = %err, "polling the bulk operation failed; retrying");
                    if let Some(after) = err.retry_after() {
                        interval = interval.max(after);
                        continue;
                    }
                }
            }
            interval = interval.mul_f64(POLL_GROWTH).min(MAX_POLL);
        }
    }
}

/// What `once` did.
#[derive(Debug, Clone, Copy)]
pub struct OnceReport {
    pub items: usize,
    pub writes: usize,
    pub elapsed: Duration,
}

fn is_transient(err: &Error) -> bool {
    match err {
        Error::Cloudflare(err) => err.is_retryable(),
        Error::OperationFailed { .. } => true,
        _ => false,
    }
}

/// Delay before retrying after `err`: Cloudflare's `Retry-After` when it gave one.
fn retry_delay(err: &Error, failures: u32) -> Duration {
    let asked = match err {
        Error::Cloudflare(err) => err.retry_after(),
        _ => None,
    };
    asked.unwrap_or_else(|| backoff_delay(failures))
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
        assert!(backoff_delay(50) <= MAX_RETRY_DELAY * 2);
    }
}
