//! The poller: the only code that reads the decision stream. It owns the LAPI client,
//! pulls (a full pull at start, after any failed pull, and every `reconcile_interval`;
//! deltas in between), updates the desired state, expires decisions, confirms the
//! removals a full pull implied (docs/hardening.md §7), and after a full pull asks the
//! writer for a fresh list read. With several Cloudflare accounts, every pull fans out
//! to each account's state (its own lists and policy); one stream, one key.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::{retry_delay, sleep_or_cancel, Error, Shared};
use crate::config::Config;
use crate::lapi::{self, LapiClient, Pull, StreamSink};
use crate::state::{DecisionRef, Desired, Policy};
use crate::telemetry::Telemetry;

/// The only code that reads the decision stream: it owns the LAPI client. See the
/// module docs.
pub(super) struct Poller {
    /// Each account's state and telemetry, the first first.
    accounts: Vec<(Arc<Shared>, Arc<Telemetry>)>,
    lapi: LapiClient,
    config: Config,
    /// How many held removals were last reported, so the log says it once.
    hold_said: usize,
}

impl Poller {
    pub(super) fn new(
        accounts: Vec<(Arc<Shared>, Arc<Telemetry>)>,
        lapi: LapiClient,
        config: Config,
    ) -> Poller {
        Poller {
            accounts,
            lapi,
            config,
            hold_said: 0,
        }
    }

    fn shares(&self) -> impl Iterator<Item = &Arc<Shared>> {
        self.accounts.iter().map(|(shared, _)| shared)
    }

    /// The poller task: see the module docs.
    pub(super) async fn run(mut self, token: CancellationToken) {
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
            for (shared, telemetry) in &self.accounts {
                telemetry.metrics.lapi_poll(kind, result.is_ok());
                let mut health = telemetry.health();
                match &result {
                    Ok(()) => {
                        health.lapi_ok = Some(Instant::now());
                        health.lapi_error = None;
                    }
                    Err(err) => health.lapi_error = Some(err.to_string()),
                }
                drop(health);
                shared.heartbeat();
            }
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
    /// the rest goes. Nothing to do when no removal waits. One read serves every account.
    pub(super) async fn confirm_removals(&self) -> Result<(), Error> {
        let asked: Vec<Vec<crate::item::Item>> = self
            .shares()
            .map(|shared| shared.state().awaiting_confirmation())
            .collect();
        let ipv6_prefix = self.config.cloudflare.ipv6_prefix;
        // By value: the lists an item may be on are each state's business.
        let values: rustc_hash::FxHashSet<crate::item::Item> =
            asked.iter().flatten().map(|key| key.bare()).collect();
        if values.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let mut sink = Confirming {
            asked: values.clone(),
            ipv6_prefix,
            found: Packed::default(),
        };
        let targeted = values.len() <= TARGETED_CONFIRMATIONS;
        if targeted {
            let mut values: Vec<crate::item::Item> = values.into_iter().collect();
            values.sort();
            for item in &values {
                (sink, _) = self.lapi.active_into(Some(item), sink).await?;
            }
        } else {
            (sink, _) = self.lapi.active_into(None, sink).await?;
        }
        let (mut total, mut total_kept) = (0, 0);
        for ((shared, telemetry), asked) in self.accounts.iter().zip(&asked) {
            if asked.is_empty() {
                continue;
            }
            let kept = {
                let mut state = shared.state();
                let kept = state.confirm_removals(asked, sink.found.iter(), Instant::now());
                state.rebalance();
                kept
            };
            telemetry
                .metrics
                .removal_confirmations(asked.len() - kept, kept);
            total += asked.len();
            total_kept += kept;
            shared.wake.notify_one();
        }
        if total_kept > 0 {
            warn!(
                asked = total,
                still_active = total_kept,
                "a full pull from LAPI left out decisions LAPI still holds (an answer cut short?); they stay on the list"
            );
        }
        info!(
            asked = total,
            removed = total - total_kept,
            kept = total_kept,
            targeted,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "LAPI confirmed the removals a full pull implied"
        );
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
    pub(super) fn hold_notice(&mut self) {
        let awaiting = self.shares().map(|s| s.state().awaiting_count()).sum();
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
    pub(super) async fn pull(&self, pull: Pull, source: Source) -> Result<(), Error> {
        let (n_new, n_deleted, size) = match pull {
            Pull::Full => {
                let desired = (self.shares())
                    .map(|shared| {
                        let state = shared.state();
                        (state.policy(), state.new_desired())
                    })
                    .collect();
                let sink = FullPull {
                    desired,
                    now: Instant::now(),
                    new: 0,
                };
                let (sink, size) = match source {
                    Source::Stream => self.lapi.stream_into(Pull::Full, sink).await?,
                    Source::Snapshot => self.lapi.active_into(None, sink).await?,
                };
                for (shared, (_, desired)) in self.shares().zip(sink.desired) {
                    shared.state().replace_desired_with(desired);
                    shared.refresh_list.store(true, Ordering::SeqCst);
                }
                (sink.new, 0, size)
            }
            Pull::Delta => {
                let (sink, size) = self
                    .lapi
                    .stream_into(Pull::Delta, DeltaPull::default())
                    .await?;
                let now = Instant::now();
                for shared in self.shares() {
                    let mut state = shared.state();
                    state.apply_delta(sink.deleted.iter(), sink.new.iter(), now);
                }
                (sink.new.len(), sink.deleted.len(), size)
            }
        };
        for ((shared, _), account) in self.accounts.iter().zip(&self.config.accounts) {
            let mut state = shared.state();
            let expired = state.expire(Instant::now());
            state.rebalance();
            let counts = state.counts();
            let skipped = state.skipped();
            drop(state);
            // One account: no label, as before.
            let label = (self.accounts.len() > 1).then_some(account.name.as_str());
            match pull {
                Pull::Full => info!(
                    account = label,
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
                    debug!(
                        account = label,
                        new = n_new,
                        deleted = n_deleted,
                        expired,
                        "delta from LAPI"
                    );
                }
                Pull::Delta => {}
            }
            shared.log_notices();
            shared.wake.notify_one();
        }
        Ok(())
    }
}

/// Above this many removals to confirm, one read of every active decision is cheaper
/// than one targeted read each.
const TARGETED_CONFIRMATIONS: usize = 20;

/// A confirming read: keeps the decisions on the values asked about (IP items on lane 0,
/// AS numbers).
struct Confirming {
    asked: rustc_hash::FxHashSet<crate::item::Item>,
    ipv6_prefix: u8,
    found: Packed,
}

impl StreamSink for Confirming {
    fn new_decision(&mut self, decision: DecisionRef<'_>) {
        let item = crate::state::decision_item(&decision, self.ipv6_prefix);
        if item.is_some_and(|item| self.asked.contains(&item)) {
            self.found.push(&decision);
        }
    }

    fn deleted_decision(&mut self, _: DecisionRef<'_>) {}
}

/// Where a full pull reads LAPI's active decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
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

/// A full pull being parsed straight into a new desired state, one per account.
struct FullPull {
    desired: Vec<(Arc<Policy>, Desired)>,
    now: Instant,
    new: usize,
}

impl StreamSink for FullPull {
    fn new_decision(&mut self, decision: DecisionRef<'_>) {
        self.new += 1;
        for (policy, desired) in &mut self.desired {
            desired.insert(policy, &decision, self.now);
        }
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
}
