//! The writer: the only code that talks to Cloudflare. See the `engine` module docs.
//!
//! Rules it keeps:
//! - one write in flight: a write is followed by polling its operation to the end;
//! - a write whose answer was lost may have started an operation nobody can poll, so
//!   the next write waits well past any operation seen so far;
//! - a failed operation is split in halves until the bad item is found and set aside.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

mod clock;
mod commands;
mod terms;

use clock::{OpClock, MAX_POLL, NEXT_POLL, POLL_GROWTH};

pub use commands::SetupReport;

use super::foreign::{ForeignWatch, Verdict};
use super::{retry_delay, sleep_or_cancel, Error, Shared};
use crate::budget::WriteBudget;
use crate::cloudflare::{CloudflareClient, ListInfo, ListKind};
use crate::cloudflare::{OpStatus, MAX_PER_PAGE};
use crate::config::Config;
use crate::item::Item;
use crate::progress::Progress;
use crate::state::{Batch, Confirmed};
use crate::telemetry::Telemetry;

/// Polling slows down to this once an operation is pending for long.
const SLOW_POLL: Duration = Duration::from_secs(15);
/// After this, a still-pending operation is reported (and again every such period).
const PENDING_TOO_LONG: Duration = Duration::from_secs(60);
/// An operation Cloudflare says it does not know for this long is given up.
const LOST_AFTER: Duration = Duration::from_secs(30);
/// What the writer may take beyond its own waits and requests before it counts as wedged.
const WEDGE_MARGIN: Duration = Duration::from_secs(60);
/// Bounds of the wait after a write whose answer was lost.
const MIN_UNCONFIRMED_WAIT: Duration = Duration::from_secs(5);
const MAX_UNCONFIRMED_WAIT: Duration = Duration::from_secs(120);

/// The writer's memory between writes.
pub(super) struct Pace {
    /// Current most items per write: halves after a failed operation, doubles back.
    cap: usize,
    /// Longest operation seen, to size the wait after an unconfirmed write.
    longest_op: Duration,
    failures: u32,
}

impl Pace {
    /// After a write of `sent` items succeeded: below `batch_size` (a failure halved
    /// it) the cap doubles back; from there it doubles only after a full batch, so it
    /// grows while operations of that size succeed, up to `max_batch`
    /// (docs/cloudflare-lists.md §4.2: no per-request cap is documented, the account's
    /// capacity bounds a request).
    fn grow(&mut self, sent: usize, batch_size: usize, max_batch: usize) {
        let ceiling = max_batch.max(batch_size);
        if self.cap < batch_size {
            self.cap = (self.cap * 2).min(batch_size);
        } else if sent >= self.cap {
            self.cap = (self.cap * 2).min(ceiling);
        }
    }

    /// After a failed write: a request that timed out or failed on its way (perhaps for
    /// its size) falls back to `batch_size`. (A failed operation is bisected in `write`;
    /// a refusal for the rate or a pending operation says nothing about the size.)
    fn shrink(&mut self, err: &Error, batch_size: usize) {
        let size_blind = match err {
            Error::OperationFailed { .. } | Error::Cancelled => true,
            Error::Cloudflare(cf) => matches!(cf, crate::cloudflare::Error::RateLimited { .. }),
            _ => false,
        };
        if !size_blind {
            self.cap = self.cap.min(batch_size);
        }
    }
}

/// One list the writer keeps in step, as the start-up lookup found it. Its index among
/// the writer's targets is the lane of its items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub id: String,
    pub name: String,
    /// A list of kind `asn` (items are AS numbers).
    pub asn: bool,
}

impl From<&ListInfo> for Target {
    fn from(list: &ListInfo) -> Target {
        Target {
            id: list.id.clone(),
            name: list.name.clone(),
            asn: list.kind == ListKind::Asn.as_str(),
        }
    }
}

/// The only code that talks to Cloudflare: it owns the Cloudflare client, and with it
/// everything only writes need (the poll clock, the write budgets, the watch for another
/// writer). See the module docs.
pub struct Writer {
    shared: Arc<Shared>,
    cloudflare: CloudflareClient,
    config: Config,
    telemetry: Arc<Telemetry>,
    op_clock: OpClock,
    writes: WriteBudget,
    /// The account's lists as found by the start-up lookup, for the first list read.
    known_lists: Option<Vec<ListInfo>>,
    foreign: ForeignWatch,
    /// With high availability: the election this writer serves (see `terms.rs`).
    ha: Option<Arc<crate::ha::Ha>>,
}

impl Writer {
    pub(super) fn new(
        shared: Arc<Shared>,
        cloudflare: CloudflareClient,
        config: Config,
        telemetry: Arc<Telemetry>,
    ) -> Writer {
        Writer {
            shared,
            cloudflare,
            config,
            telemetry,
            op_clock: OpClock::default(),
            writes: WriteBudget::default(),
            known_lists: None,
            foreign: ForeignWatch::new(),
            ha: None,
        }
    }

    /// Looks the configured lists up among the account's lists (a read, before any
    /// write), each of the kind its configuration says, and keeps those lists for the
    /// first list read, which needs the other lists' sizes. In configuration order.
    pub(super) async fn look_up_lists(&mut self) -> Result<Vec<ListInfo>, Error> {
        let lists = self.cloudflare.lists().await?;
        let found = (self.config.cloudflare.lists.iter())
            .map(|list| {
                let kind = if list.asn {
                    ListKind::Asn
                } else {
                    ListKind::Ip
                };
                crate::cloudflare::choose_list_of_kind(&lists, &list.list, kind)
            })
            .collect::<Result<Vec<ListInfo>, _>>();
        self.known_lists = Some(lists);
        Ok(found?)
    }

    /// Looks the lists up, retrying until it works or the token is cancelled.
    pub(super) async fn resolve_lists(&mut self, token: &CancellationToken) -> Option<Vec<Target>> {
        let mut attempt = 0;
        loop {
            let found = tokio::select! {
                biased;
                () = token.cancelled() => return None,
                found = self.look_up_lists() => found,
            };
            match found {
                Ok(lists) => {
                    for list in &lists {
                        info!(list = %list.name, list_id = %list.id, kind = %list.kind, items = list.num_items, "using Cloudflare list");
                    }
                    return Some(lists.iter().map(Target::from).collect());
                }
                Err(err) => {
                    attempt += 1;
                    error!(error = %err, "cannot use the Cloudflare lists; retrying");
                    let delay = retry_delay(&err, attempt);
                    if !sleep_or_cancel(delay, token).await {
                        return None;
                    }
                }
            }
        }
    }

    /// The writer task: see the module docs.
    pub(super) async fn run(&mut self, lists: &[Target], token: CancellationToken) {
        let mut pace = Pace {
            cap: self.config.cloudflare.batch_size,
            longest_op: Duration::ZERO,
            failures: 0,
        };
        let mut progress = Progress::new();
        loop {
            if token.is_cancelled() {
                return;
            }
            self.shared.heartbeat();
            self.turn(Duration::ZERO);
            if self.shared.refresh_list.swap(false, Ordering::SeqCst) {
                let read = tokio::select! {
                    biased;
                    () = token.cancelled() => return,
                    read = self.read_list(lists) => read,
                };
                if let Err(err) = read {
                    self.shared.refresh_list.store(true, Ordering::SeqCst);
                    pace.failures += 1;
                    warn!(error = %err, "reading the list failed; retrying");
                    if !self.wait(retry_delay(&err, pace.failures), &token).await {
                        return;
                    }
                    continue;
                }
                pace.failures = 0;
            }
            let batch = self.shared.state().take_batch(pace.cap);
            let Some(batch) = batch else {
                progress.finish();
                // Idle is no wedge: nothing is due until the poller wakes us.
                self.telemetry.health().writer_due = None;
                tokio::select! {
                    biased;
                    () = token.cancelled() => return,
                    () = self.shared.wake.notified() => continue,
                }
            };
            let queued = self.shared.state().counts().queued;
            progress.batch(batch.len(), queued);
            let result = self.write(lists, batch, &token, &mut pace).await;
            progress.written(*result.as_ref().unwrap_or(&0));
            if let Some(delay) = self.after_write(result, &mut pace) {
                if !self.wait(delay, &token).await {
                    return;
                }
            }
        }
    }

    /// `once`'s drain: like the writer task, but gives up after repeated failures.
    pub(super) async fn drain_once(
        &mut self,
        lists: &[Target],
        token: &CancellationToken,
    ) -> Result<usize, Error> {
        let mut pace = Pace {
            cap: self.config.cloudflare.batch_size,
            longest_op: Duration::ZERO,
            failures: 0,
        };
        let mut writes = 0;
        let mut progress = Progress::new();
        loop {
            if token.is_cancelled() {
                return Err(Error::Cancelled);
            }
            let batch = self.shared.state().take_batch(pace.cap);
            let Some(batch) = batch else {
                progress.finish();
                return Ok(writes);
            };
            let queued = self.shared.state().counts().queued;
            progress.batch(batch.len(), queued);
            let result = self.write(lists, batch, token, &mut pace).await;
            progress.written(*result.as_ref().unwrap_or(&0));
            match result {
                Ok(n) if n > 0 => {
                    writes += 1;
                    let (batch_size, max_batch) = (
                        self.config.cloudflare.batch_size,
                        self.config.sync.max_batch,
                    );
                    pace.grow(n, batch_size, max_batch);
                }
                Ok(_) => {}
                Err(Error::Cancelled) => return Err(Error::Cancelled),
                Err(err) if pace.failures >= 5 => return Err(err),
                Err(err) => {
                    if let Some(delay) = self.after_write(Err(err), &mut pace) {
                        if !self.wait(delay, token).await {
                            return Err(Error::Cancelled);
                        }
                    }
                }
            }
        }
    }

    /// Adjusts the pace after a write; returns how long to wait before the next one.
    fn after_write(&mut self, result: Result<usize, Error>, pace: &mut Pace) -> Option<Duration> {
        let err = match result {
            Ok(sent) => {
                pace.failures = 0;
                pace.grow(
                    sent,
                    self.config.cloudflare.batch_size,
                    self.config.sync.max_batch,
                );
                return None;
            }
            Err(Error::Cancelled) => return None,
            Err(err) => err,
        };
        pace.failures += 1;
        pace.shrink(&err, self.config.cloudflare.batch_size);
        match &err {
            // Whether the write was applied is unknown: read the list before the next one.
            Error::Unconfirmed(_) | Error::OperationLost(_) => {
                self.foreign.own_operation_uncertain();
                self.shared.refresh_list.store(true, Ordering::SeqCst);
                Some(self.unconfirmed_wait(&err, pace))
            }
            // A write refused because an operation we do not know of is pending (a lost
            // answer of ours, a killed predecessor, another writer): it is waited out
            // like a write with an unknown outcome, and the list read again before the
            // next write, so nothing that operation wrote is written twice.
            Error::Cloudflare(cf)
                if matches!(cf, crate::cloudflare::Error::RateLimited { .. })
                    && !cf.is_global_limit() =>
            {
                let verdict = self.foreign.write_refused_for_pending(Instant::now());
                self.act_on(verdict);
                self.shared.refresh_list.store(true, Ordering::SeqCst);
                Some(
                    self.unconfirmed_wait(&err, pace)
                        .max(retry_delay(&err, pace.failures)),
                )
            }
            Error::OperationFailed { .. } => None,
            Error::Cloudflare(cf) if cf.is_auth() => {
                error!(error = %err, "Cloudflare refused the token; the change stays queued");
                Some(retry_delay(&err, pace.failures))
            }
            _ => {
                warn!(error = %err, "write failed; the change stays queued");
                Some(retry_delay(&err, pace.failures))
            }
        }
    }

    /// Promises that the writer turns within `wait` (plus a request's time and a margin):
    /// past that, `/healthz` fails and the watchdog starves (see `Health::liveness`).
    pub(super) fn turn(&self, wait: Duration) {
        let slack = self.config.cloudflare.request_timeout * 2 + WEDGE_MARGIN;
        self.telemetry.health().writer_due = Some(Instant::now() + wait + slack);
    }

    /// Waits `delay` unless cancelled first (then `false`), promising to turn after it.
    async fn wait(&self, delay: Duration, token: &CancellationToken) -> bool {
        self.turn(delay);
        sleep_or_cancel(delay, token).await
    }

    /// Raises or clears the suspicion of another writer: the warning, the readiness
    /// reason and the metric, and removals paused while it stands.
    fn act_on(&self, verdict: Verdict) {
        match verdict {
            Verdict::Unchanged => {}
            Verdict::Suspected(why) => {
                warn!(
                    reason = %why,
                    "another bouncer writes to this account, or someone edits the list: removals are paused \
                     (adds go on); check that only one bouncer instance uses this Cloudflare account and list"
                );
                self.shared.state().pause_removals(true);
                self.telemetry.health().foreign_writer = Some(why);
            }
            Verdict::Cleared => {
                info!("no sign of another writer for a while: removals resume");
                self.shared.state().pause_removals(false);
                self.telemetry.health().foreign_writer = None;
                self.shared.wake.notify_one();
            }
        }
    }

    /// How long to wait before writing again when an operation we cannot poll may be
    /// pending: ten times the longest operation seen, within bounds.
    fn unconfirmed_wait(&self, err: &Error, pace: &Pace) -> Duration {
        let wait = (pace.longest_op * 10).clamp(MIN_UNCONFIRMED_WAIT, MAX_UNCONFIRMED_WAIT);
        warn!(error = %err, wait_s = wait.as_secs(), "waiting out a possibly pending operation before the next write");
        wait
    }

    /// Reads the account's lists (for the capacity left by the others) and every list
    /// the writer keeps, whole, and replaces the list view with them.
    pub(super) async fn read_list(&mut self, targets: &[Target]) -> Result<(), Error> {
        let started = Instant::now();
        let known = self.known_lists.take();
        let lists = match known {
            Some(lists) => lists,
            None => self.cloudflare.lists().await?,
        };
        let ours = |id: &str| targets.iter().any(|t| t.id == id);
        let others: u64 = lists
            .iter()
            .filter(|l| !ours(&l.id))
            .map(|l| l.num_items)
            .sum();
        // Page by page into a view of its own: one page in memory at a time, and the
        // state's view replaced only by a complete read of every list.
        let mut view = self.shared.state().new_list_view();
        // Room for what the lists say they hold, within what the account can hold.
        let listed: u64 = (lists.iter())
            .filter(|l| ours(&l.id))
            .map(|l| l.num_items)
            .sum();
        let room = usize::try_from(listed).unwrap_or(usize::MAX);
        view.reserve(room.min(self.config.cloudflare.capacity));
        let (mut n_listed, mut unreadable) = (0, 0);
        for (lane, target) in targets.iter().enumerate() {
            let num_items = lists
                .iter()
                .find(|l| l.id == target.id)
                .map_or(0, |l| l.num_items);
            let mut pages = crate::cloudflare::PageGuard::new(num_items);
            let mut cursor = None;
            loop {
                self.turn(Duration::ZERO);
                self.cloudflare.lead(pages.left());
                let next = if target.asn {
                    let page = (self.cloudflare)
                        .asn_items_page(&target.id, cursor.as_deref(), None)
                        .await?;
                    for listed in &page.items {
                        let item = Item::from_asn(listed.asn).on(lane);
                        view.insert(item, &listed.id, listed.comment.as_deref());
                    }
                    n_listed += page.items.len() + page.unreadable;
                    unreadable += page.unreadable;
                    page.next
                } else {
                    // Each item goes into the view as it is decoded, its strings
                    // borrowed from the answer.
                    (self.cloudflare)
                        .items_page_each(&target.id, cursor.as_deref(), None, |listed| {
                            n_listed += 1;
                            match Item::from_cloudflare(listed.ip) {
                                Some(item) => view.insert(item.on(lane), listed.id, listed.comment),
                                None => unreadable += 1,
                            }
                        })
                        .await?
                };
                pages.next_page(next.as_deref())?;
                match next {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
        }
        let mut state = self.shared.state();
        state.set_capacity(
            self.config
                .cloudflare
                .capacity
                .saturating_sub(others as usize),
        );
        let drift = state.replace_list_with(view);
        let counts = state.counts();
        let primed = state.is_primed();
        drop(state);
        let verdict = self.foreign.list_read(
            Instant::now(),
            drift.undone_fingerprint,
            drift.foreign_tagged,
        );
        self.act_on(verdict);
        self.telemetry
            .metrics
            .reconcile_drift(drift.missing, drift.extra);
        {
            let mut health = self.telemetry.health();
            health.primed = primed;
            health.reconcile_ok = Some(Instant::now());
        }
        if unreadable > 0 {
            warn!(
                unreadable,
                "list items that are not an IP, a CIDR or an AS number were ignored"
            );
        }
        info!(
            listed = n_listed,
            desired = counts.desired_items,
            missing = drift.missing,
            extra = drift.extra,
            queued = counts.queued,
            left_out = counts.left_out,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "read the list"
        );
        self.shared.log_notices();
        Ok(())
    }

    /// Sends one batch as one bulk operation and waits for it. On failure the batch's
    /// items are back at the front of the queue; a failed operation halves the pace,
    /// and a failed one-item operation sets its item aside.
    async fn write(
        &mut self,
        targets: &[Target],
        batch: Batch,
        token: &CancellationToken,
        pace: &mut Pace,
    ) -> Result<usize, Error> {
        let items = batch.items();
        // A batch is of one list (`take_batch`): its lane's.
        let lane = items.first().map_or(0, Item::lane);
        let Some(target) = targets.get(lane) else {
            // No list for this lane: nothing configured writes it; never reached.
            return Ok(0);
        };
        let started = Instant::now();
        let result = self.submit_and_wait(target, targets, batch, token).await;
        match &result {
            Ok(_) => pace.longest_op = pace.longest_op.max(started.elapsed()),
            Err(Error::OperationFailed { message, .. }) if items.len() == 1 => {
                error!(item = %items[0], error = %message, "Cloudflare refused this item; set aside until the next reconcile");
                self.shared.state().quarantine(items[0]);
            }
            Err(err @ Error::OperationFailed { .. }) => {
                pace.cap = (items.len() / 2).max(1);
                warn!(error = %err, items = items.len(), "bulk operation failed; retrying in halves to find the bad item");
                self.shared.state().requeue(items);
            }
            Err(_) => self.shared.state().requeue(items),
        }
        result
    }

    async fn submit_and_wait(
        &mut self,
        target: &Target,
        targets: &[Target],
        batch: Batch,
        token: &CancellationToken,
    ) -> Result<usize, Error> {
        let list_id = &target.id;
        let started = Instant::now();
        let telemetry = self.telemetry.clone();
        let unconfirmed = |err: crate::cloudflare::Error| {
            if err.may_have_been_accepted() {
                telemetry.metrics.bulk_operation("unconfirmed", None);
                Error::Unconfirmed(err)
            } else {
                Error::Cloudflare(err)
            }
        };
        let (op_id, outcome, items) = match batch {
            Batch::Add(adds) if target.asn => {
                let numbers: Vec<(u32, std::sync::Arc<str>)> = (adds.iter())
                    .filter_map(|(item, comment)| Some((item.asn()?, comment.clone())))
                    .collect();
                let op_id = (self.cloudflare)
                    .add_asn_items(list_id, &numbers)
                    .await
                    .map_err(unconfirmed)?;
                (
                    op_id,
                    Confirmed::Added,
                    adds.into_iter().map(|(item, _)| item).collect(),
                )
            }
            Batch::Add(adds) => {
                let op_id = self
                    .cloudflare
                    .add_items(list_id, &adds)
                    .await
                    .map_err(unconfirmed)?;
                (
                    op_id,
                    Confirmed::Added,
                    adds.into_iter().map(|(item, _)| item).collect(),
                )
            }
            Batch::Remove(removes) => {
                let Some((ids, items)) = self.resolve_ids(target, targets, removes).await? else {
                    return Ok(0);
                };
                let ids: Vec<&str> = ids.iter().map(|id| &**id).collect();
                let op_id = self
                    .cloudflare
                    .delete_items(list_id, &ids)
                    .await
                    .map_err(unconfirmed)?;
                (op_id, Confirmed::Removed, items)
            }
        };
        let items: Vec<Item> = items;
        self.record_write(items.len());
        self.telemetry.health().pending_since = Some(Instant::now());
        if let Some(ha) = &self.ha {
            ha.record_operation(Some(&op_id));
        }
        let status = self.wait_for(&op_id, token).await;
        self.telemetry.health().pending_since = None;
        // Still pending at shutdown: stays recorded, for a successor to wait out.
        if let (Some(ha), Ok(OpStatus::Completed | OpStatus::Failed(_)) | Err(_)) =
            (&self.ha, &status)
        {
            ha.record_operation(None);
        }
        let metrics = &self.telemetry.metrics;
        match &status {
            Ok(OpStatus::Completed) => metrics.bulk_operation("completed", Some(started.elapsed())),
            Ok(OpStatus::Failed(_)) => metrics.bulk_operation("failed", Some(started.elapsed())),
            Ok(OpStatus::Pending) => {}
            Err(_) => metrics.bulk_operation("lost", None),
        }
        match status? {
            OpStatus::Completed => {
                self.foreign
                    .own_operation_completed(outcome == Confirmed::Added);
                self.shared.state().confirm(outcome, &items);
                self.telemetry.health().write_ok = Some(Instant::now());
                let (added, removed) = match outcome {
                    Confirmed::Added => (items.len(), 0),
                    Confirmed::Removed => (0, items.len()),
                };
                info!(
                    list = %target.name,
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

    fn record_write(&mut self, items: usize) {
        if let Some(warning) = self.writes.record(items as u64, Instant::now()).warning {
            warn!("{warning}");
        }
    }

    /// Finds the ids a removal needs. Ids come from list reads; for items added by this
    /// bouncer since the last read, search each one when that costs fewer requests than
    /// reading the whole list, else read the whole list (which requeues everything
    /// with fresh ids). Returns `None` when nothing is left to send now.
    async fn resolve_ids(
        &mut self,
        target: &Target,
        targets: &[Target],
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
                self.read_list(targets).await?;
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
                    let found = match item.asn() {
                        Some(asn) if target.asn => {
                            self.cloudflare.find_asn_item(&target.id, asn).await?
                        }
                        _ => self.cloudflare.find_item(&target.id, item).await?,
                    };
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

    /// Polls a bulk operation with growing intervals until it ends. Never gives up on an
    /// operation that may still be pending (a second write now would be refused and could
    /// pile up), except on shutdown after `shutdown_grace` ([`OpStatus::Pending`]) or when
    /// Cloudflare keeps saying it does not know it ([`Error::OperationLost`]).
    async fn wait_for(
        &mut self,
        op_id: &str,
        token: &CancellationToken,
    ) -> Result<OpStatus, Error> {
        let started = Instant::now();
        // Writes waiting behind the operation: poll early and often (`OpClock`).
        let waiting = |writer: &Self| writer.shared.state().pending_changes() != (0, 0);
        let mut behind = waiting(self);
        let mut next_at = if behind {
            self.op_clock.early_poll()
        } else {
            self.op_clock.first_poll()
        };
        let mut interval = next_at;
        let mut polls = 0u32;
        let mut last_pending: Option<Duration> = None;
        let mut cancelled_at: Option<Instant> = None;
        let mut unknown_since: Option<Instant> = None;
        let mut reported = Duration::ZERO;
        // A failed poll hides when the operation ended: such an operation teaches the
        // clock nothing (after a burst of faults it would aim far too late).
        let mut every_poll_answered = true;
        let grace = self.config.sync.shutdown_grace;
        loop {
            let until_next = next_at.saturating_sub(started.elapsed());
            // Shutdown counts from the signal: the wait is cut short by it, and never
            // runs past the end of the grace.
            let wait = match cancelled_at {
                Some(since) => until_next
                    .min(MAX_POLL)
                    .min(grace.saturating_sub(since.elapsed())),
                None => until_next,
            };
            self.turn(wait);
            if cancelled_at.is_none() {
                tokio::select! {
                    biased;
                    () = token.cancelled() => {
                        cancelled_at = Some(Instant::now());
                        interval = interval.min(MAX_POLL);
                    }
                    // New work while nothing waited: from now on it waits, poll sooner.
                    () = self.shared.wake.notified(), if !behind => {
                        behind = waiting(self);
                        if behind {
                            next_at = next_at.min(self.op_clock.early_poll().max(started.elapsed()));
                        }
                        continue;
                    }
                    () = tokio::time::sleep(wait) => {}
                }
            } else {
                tokio::time::sleep(wait).await;
            }
            polls += 1;
            if let Some(since) = cancelled_at {
                if since.elapsed() >= grace {
                    warn!(op_id, "shutting down with a bulk operation still pending");
                    return Ok(OpStatus::Pending);
                }
            }
            let sent = started.elapsed();
            match self.cloudflare.operation(op_id).await {
                Ok(OpStatus::Pending) => {
                    unknown_since = None;
                    last_pending = Some(sent);
                }
                Ok(status) => {
                    if every_poll_answered {
                        self.op_clock.learn(clock::Polled {
                            last_pending,
                            done: sent,
                        });
                    }
                    return Ok(status);
                }
                Err(crate::cloudflare::Error::Api { status: 404, .. }) => {
                    every_poll_answered = false;
                    let since = *unknown_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= LOST_AFTER {
                        return Err(Error::OperationLost(op_id.to_owned()));
                    }
                }
                Err(err) => {
                    every_poll_answered = false;
                    warn!(op_id, error = %err, "polling the bulk operation failed; retrying");
                    if let Some(after) = err.retry_after() {
                        interval = interval.max(after);
                        next_at = started.elapsed() + interval;
                        continue;
                    }
                }
            }
            let pending = started.elapsed();
            if pending >= reported + PENDING_TOO_LONG {
                reported = pending;
                warn!(
                    op_id,
                    pending_s = pending.as_secs(),
                    "bulk operation still pending; no other write is sent until it ends"
                );
            }
            let cap = if pending >= PENDING_TOO_LONG {
                SLOW_POLL
            } else {
                MAX_POLL
            };
            // Behind it, writes wait: a poll every NEXT_POLL, until the operation runs
            // well past the usual; then, and otherwise, growing.
            let dense = behind && pending < self.op_clock.first_poll() * 2;
            interval = if polls == 1 || dense {
                NEXT_POLL
            } else {
                interval.mul_f64(POLL_GROWTH).min(cap)
            };
            next_at = started.elapsed() + interval;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pace(cap: usize) -> Pace {
        Pace {
            cap,
            longest_op: Duration::ZERO,
            failures: 0,
        }
    }

    #[test]
    fn the_batch_grows_while_full_batches_succeed_and_falls_back_on_failure() {
        let mut p = pace(1000);
        let mut caps = Vec::new();
        for _ in 0..6 {
            let sent = p.cap;
            p.grow(sent, 1000, 10_000);
            caps.push(p.cap);
        }
        assert_eq!(caps, [2000, 4000, 8000, 10_000, 10_000, 10_000]);
        // A batch smaller than the cap (the queue ran short) proves nothing larger.
        let mut p = pace(2000);
        p.grow(300, 1000, 10_000);
        assert_eq!(p.cap, 2000);
        // A request that timed out falls back to batch_size; a refusal for the rate
        // keeps the size.
        let mut p = pace(8000);
        let limited = crate::cloudflare::Error::RateLimited {
            retry_after: None,
            errors: Vec::new(),
        };
        p.shrink(&Error::Cloudflare(limited), 1000);
        assert_eq!(p.cap, 8000);
        p.shrink(&Error::OperationLost("op".into()), 1000);
        assert_eq!(p.cap, 1000);
        // After a bisection the cap doubles back to batch_size even on short batches.
        let mut p = pace(125);
        p.grow(3, 1000, 10_000);
        assert_eq!(p.cap, 250);
        // max_batch below batch_size never shrinks the configured size.
        let mut p = pace(1000);
        p.grow(1000, 1000, 500);
        assert_eq!(p.cap, 1000);
    }
}
