//! What the bouncer tells operators about itself: Prometheus metrics and health.
//!
//! Every label value comes from a fixed set. Health holds the last successes and errors
//! of each side; readiness is computed from it (see [`Health::readiness`]).

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::state::{Counts, Skipped};

/// Prefix of every metric name.
pub const PREFIX: &str = "cf_iplist_bouncer";
/// A bulk operation pending longer than this makes the bouncer not ready.
pub const PENDING_TOO_LONG: Duration = Duration::from_secs(60);
/// Cloudflare failing for longer than this makes the bouncer not ready.
const CLOUDFLARE_FAILING_TOO_LONG: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    origin: &'static str,
    ip_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PullLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinceLabels {
    what: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

/// The metrics, registered once. See README for their meaning.
pub struct Metrics {
    registry: Registry,
    active_decisions: Family<DecisionLabels, Gauge>,
    list_items: Gauge,
    list_capacity: Gauge,
    pending_changes: Family<ActionLabels, Gauge>,
    items_left_out: Gauge,
    removals_held: Gauge,
    removals_awaiting_confirmation: Gauge,
    removal_confirmations: Family<OutcomeLabels, Counter>,
    foreign_writer_suspected: Gauge,
    items_quarantined: Gauge,
    cloudflare_requests: Family<RequestLabels, Counter>,
    bulk_operations: Family<OutcomeLabels, Counter>,
    bulk_operation_seconds: Histogram,
    lapi_polls: Family<PullLabels, Counter>,
    lapi_poll_failures: Family<PullLabels, Counter>,
    seconds_since_success: Family<SinceLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    decisions_refused: Family<ReasonLabels, Counter>,
    reconcile_drift: Family<DirectionLabels, Counter>,
    ready: Gauge,
    /// 1 when this instance writes to Cloudflare (it holds the Lease, or high
    /// availability is off), 0 on a standby.
    leader: Gauge,
    /// Refusals already counted, to turn the state's totals into counter increments.
    refused_seen: Mutex<Skipped>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix(PREFIX);
        let metrics = Metrics {
            registry: Registry::default(),
            active_decisions: Family::default(),
            list_items: Gauge::default(),
            list_capacity: Gauge::default(),
            pending_changes: Family::default(),
            items_left_out: Gauge::default(),
            removals_held: Gauge::default(),
            removals_awaiting_confirmation: Gauge::default(),
            removal_confirmations: Family::default(),
            foreign_writer_suspected: Gauge::default(),
            items_quarantined: Gauge::default(),
            cloudflare_requests: Family::default(),
            bulk_operations: Family::default(),
            bulk_operation_seconds: Histogram::new(exponential_buckets(0.1, 2.0, 12)),
            lapi_polls: Family::default(),
            lapi_poll_failures: Family::default(),
            seconds_since_success: Family::default(),
            decisions_refused: Family::default(),
            reconcile_drift: Family::default(),
            ready: Gauge::default(),
            leader: Gauge::default(),
            refused_seen: Mutex::new(Skipped::default()),
        };
        let r = &mut registry;
        r.register(
            "active_decisions",
            "Active LAPI decisions the bouncer holds, by origin and IP type",
            metrics.active_decisions.clone(),
        );
        r.register(
            "list_items",
            "Items the bouncer believes the Cloudflare list holds",
            metrics.list_items.clone(),
        );
        r.register(
            "list_capacity",
            "Items the list may hold: cloudflare.capacity minus what the account's other lists hold (as of the last list read)",
            metrics.list_capacity.clone(),
        );
        r.register(
            "pending_changes",
            "Queued list changes not yet sent, by action",
            metrics.pending_changes.clone(),
        );
        r.register(
            "items_left_out",
            "Desired items left out because the account's capacity is reached",
            metrics.items_left_out.clone(),
        );
        r.register(
            "removals_held",
            "Removals held by the mass-removal guard until the next reconcile",
            metrics.removals_held.clone(),
        );
        r.register(
            "removals_awaiting_confirmation",
            "Removals a full pull implied, held until a read of LAPI's active decisions confirms them",
            metrics.removals_awaiting_confirmation.clone(),
        );
        r.register(
            "removal_confirmations",
            "Removals a confirming read settled: removed (LAPI has no such decision) or kept (it does)",
            metrics.removal_confirmations.clone(),
        );
        r.register(
            "foreign_writer_suspected",
            "1 while another writer on the list is suspected (removals are paused), else 0",
            metrics.foreign_writer_suspected.clone(),
        );
        r.register(
            "items_quarantined",
            "Items Cloudflare refused, set aside until the next reconcile",
            metrics.items_quarantined.clone(),
        );
        r.register(
            "cloudflare_requests",
            "Cloudflare API requests, by endpoint and status class",
            metrics.cloudflare_requests.clone(),
        );
        r.register(
            "bulk_operations",
            "Bulk operations, by outcome",
            metrics.bulk_operations.clone(),
        );
        r.register(
            "bulk_operation_duration_seconds",
            "Time from submitting a bulk operation to its end",
            metrics.bulk_operation_seconds.clone(),
        );
        r.register(
            "lapi_polls",
            "LAPI decision-stream pulls, by kind",
            metrics.lapi_polls.clone(),
        );
        r.register(
            "lapi_poll_failures",
            "Failed LAPI decision-stream pulls, by kind",
            metrics.lapi_poll_failures.clone(),
        );
        r.register(
            "seconds_since_last_success",
            "Seconds since the last successful LAPI poll, Cloudflare write and reconcile",
            metrics.seconds_since_success.clone(),
        );
        r.register("decisions_refused", "Decisions not pushed, by reason (allowlist, not_a_client, too_broad, invalid, type, scope, duration)", metrics.decisions_refused.clone());
        r.register(
            "reconcile_drift",
            "Items a reconcile found to add or remove",
            metrics.reconcile_drift.clone(),
        );
        r.register(
            "ready",
            "1 when ready (see /readyz), else 0",
            metrics.ready.clone(),
        );
        r.register(
            "leader",
            "1 when this instance writes to Cloudflare (it holds the Lease, or high availability is off), 0 on a standby",
            metrics.leader.clone(),
        );
        // Without high availability, every instance is the one that writes.
        metrics.leader.set(1);
        // Shown at 0 before the first event, so alert and dashboard queries (rates,
        // ratios) find them from the first scrape.
        for outcome in ["removed", "kept"] {
            let _ = metrics
                .removal_confirmations
                .get_or_create(&OutcomeLabels { outcome });
        }
        for outcome in ["completed", "failed", "unconfirmed", "lost"] {
            let _ = metrics
                .bulk_operations
                .get_or_create(&OutcomeLabels { outcome });
        }
        for kind in ["full", "delta"] {
            let _ = metrics.lapi_polls.get_or_create(&PullLabels { kind });
            let _ = metrics
                .lapi_poll_failures
                .get_or_create(&PullLabels { kind });
        }
        Metrics {
            registry,
            ..metrics
        }
    }

    /// Whether this instance is the one that writes to Cloudflare.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    pub fn cloudflare_request(&self, endpoint: &'static str, status: &'static str) {
        self.cloudflare_requests
            .get_or_create(&RequestLabels { endpoint, status })
            .inc();
    }

    pub fn bulk_operation(&self, outcome: &'static str, duration: Option<Duration>) {
        self.bulk_operations
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        if let Some(duration) = duration {
            self.bulk_operation_seconds.observe(duration.as_secs_f64());
        }
    }

    pub fn lapi_poll(&self, kind: &'static str, ok: bool) {
        self.lapi_polls.get_or_create(&PullLabels { kind }).inc();
        if !ok {
            self.lapi_poll_failures
                .get_or_create(&PullLabels { kind })
                .inc();
        }
    }

    pub fn removal_confirmations(&self, removed: usize, kept: usize) {
        for (outcome, n) in [("removed", removed), ("kept", kept)] {
            self.removal_confirmations
                .get_or_create(&OutcomeLabels { outcome })
                .inc_by(n as u64);
        }
    }

    pub fn reconcile_drift(&self, added: usize, removed: usize) {
        self.reconcile_drift
            .get_or_create(&DirectionLabels { direction: "added" })
            .inc_by(added as u64);
        self.reconcile_drift
            .get_or_create(&DirectionLabels {
                direction: "removed",
            })
            .inc_by(removed as u64);
    }

    /// Renders the OpenMetrics text, refreshing the gauges from a snapshot first.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        self.refresh(snapshot);
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    fn refresh(&self, snapshot: &Snapshot) {
        for (origin, ip_type, n) in &snapshot.active_by_origin {
            self.active_decisions
                .get_or_create(&DecisionLabels { origin, ip_type })
                .set(*n as i64);
        }
        let counts = &snapshot.counts;
        self.list_items.set(counts.listed_items as i64);
        if let Some(capacity) = counts.capacity {
            self.list_capacity.set(capacity as i64);
        }
        self.pending_changes
            .get_or_create(&ActionLabels { action: "add" })
            .set(snapshot.pending_adds as i64);
        self.pending_changes
            .get_or_create(&ActionLabels { action: "remove" })
            .set(snapshot.pending_removes as i64);
        self.items_left_out.set(counts.left_out as i64);
        self.removals_held.set(counts.held as i64);
        self.removals_awaiting_confirmation
            .set(counts.awaiting_confirmation as i64);
        self.foreign_writer_suspected
            .set(i64::from(snapshot.foreign_writer.is_some()));
        self.items_quarantined.set(counts.quarantined as i64);
        for (what, ago) in [
            ("lapi_poll", snapshot.lapi_poll_ago),
            ("cloudflare_write", snapshot.cloudflare_write_ago),
            ("reconcile", snapshot.reconcile_ago),
        ] {
            // Never succeeded: the bouncer's uptime, so alerts on "too long ago" fire.
            let ago = ago.unwrap_or(snapshot.uptime);
            self.seconds_since_success
                .get_or_create(&SinceLabels { what })
                .set(ago.as_secs_f64());
        }
        self.ready.set(i64::from(snapshot.ready.is_ok()));
        let mut seen = self.refused_seen.lock().unwrap_or_else(|p| p.into_inner());
        let now = snapshot.skipped;
        for (reason, total, before) in [
            ("allowlist", now.allowlisted, seen.allowlisted),
            ("not_a_client", now.not_client, seen.not_client),
            ("too_broad", now.too_broad, seen.too_broad),
            ("invalid", now.value, seen.value),
            ("type", now.kind, seen.kind),
            ("scope", now.scope, seen.scope),
            ("duration", now.duration, seen.duration),
        ] {
            self.decisions_refused
                .get_or_create(&ReasonLabels { reason })
                .inc_by(total.saturating_sub(before));
        }
        *seen = now;
    }
}

/// Last successes and errors of each side.
#[derive(Debug)]
pub struct Health {
    started: Instant,
    pub primed: bool,
    pub lapi_ok: Option<Instant>,
    pub lapi_error: Option<String>,
    pub cloudflare_ok: Option<Instant>,
    pub cloudflare_error: Option<(Instant, String)>,
    pub write_ok: Option<Instant>,
    pub reconcile_ok: Option<Instant>,
    /// When the bulk operation in flight was submitted.
    pub pending_since: Option<Instant>,
    /// When the writer must have turned by (it sets this before every wait, from the
    /// wait's own length); past it, the writer is wedged. `None`: idle, or not running.
    pub writer_due: Option<Instant>,
    /// Why another writer on the list is suspected, while it is.
    pub foreign_writer: Option<String>,
}

impl Default for Health {
    fn default() -> Health {
        Health {
            started: Instant::now(),
            primed: false,
            lapi_ok: None,
            lapi_error: None,
            cloudflare_ok: None,
            cloudflare_error: None,
            write_ok: None,
            reconcile_ok: None,
            pending_since: None,
            writer_due: None,
            foreign_writer: None,
        }
    }
}

impl Health {
    /// Ready when synced once, LAPI pulled within `lapi_stale`, Cloudflare not failing
    /// for over a minute, and no bulk operation pending for over a minute. The error is
    /// a one-line reason.
    pub fn readiness(&self, now: Instant, lapi_stale: Duration) -> Result<(), String> {
        if !self.primed {
            let why = self
                .lapi_error
                .as_deref()
                .or(self.cloudflare_error.as_ref().map(|(_, e)| e.as_str()))
                .map_or_else(String::new, |e| format!(": {e}"));
            return Err(format!(
                "not synced yet: waiting for the first full LAPI pull and list read{why}"
            ));
        }
        let lapi_age = self.lapi_ok.map(|at| now.duration_since(at));
        if lapi_age.is_none_or(|age| age > lapi_stale) {
            let age = lapi_age
                .unwrap_or(now.duration_since(self.started))
                .as_secs();
            let why = self.lapi_error.as_deref().unwrap_or("no answer");
            return Err(format!("no successful LAPI pull for {age}s: {why}"));
        }
        if let Some((since, error)) = &self.cloudflare_error {
            let failing = now.duration_since(*since);
            if failing > CLOUDFLARE_FAILING_TOO_LONG {
                return Err(format!(
                    "Cloudflare failing for {}s: {error}",
                    failing.as_secs()
                ));
            }
        }
        if let Some(why) = &self.foreign_writer {
            return Err(format!(
                "another writer on the list is suspected ({why}); removals are paused: \
                 check that only one bouncer writes to this Cloudflare account"
            ));
        }
        self.liveness(now)?;
        if let Some(since) = self.pending_since {
            let pending = now.duration_since(since);
            if pending > PENDING_TOO_LONG {
                return Err(format!(
                    "a bulk operation has been pending for {}s",
                    pending.as_secs()
                ));
            }
        }
        Ok(())
    }

    /// Alive unless the writer is wedged: it has not turned by the time its own waits
    /// promised. `/healthz` and the systemd watchdog follow this.
    pub fn liveness(&self, now: Instant) -> Result<(), String> {
        match self.writer_due {
            Some(due) if now > due => Err(format!(
                "the Cloudflare writer has not turned for {}s longer than its longest wait",
                now.duration_since(due).as_secs()
            )),
            _ => Ok(()),
        }
    }

    pub fn uptime(&self, now: Instant) -> Duration {
        now.duration_since(self.started)
    }

    pub fn cloudflare_failed(&mut self, error: String) {
        let since = self
            .cloudflare_error
            .as_ref()
            .map_or_else(Instant::now, |(since, _)| *since);
        self.cloudflare_error = Some((since, error));
    }

    pub fn cloudflare_succeeded(&mut self) {
        self.cloudflare_ok = Some(Instant::now());
        self.cloudflare_error = None;
    }
}

/// Telemetry shared by the engine, the clients and the admin listener.
#[derive(Default)]
pub struct Telemetry {
    pub metrics: Metrics,
    health: Mutex<Health>,
}

impl Telemetry {
    pub fn health(&self) -> MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A point-in-time view for `/metrics`, `/readyz` and `/status`.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub ready: Result<(), String>,
    pub uptime: Duration,
    pub counts: Counts,
    pub skipped: Skipped,
    pub pending_adds: usize,
    pub pending_removes: usize,
    pub active_by_origin: Vec<(&'static str, &'static str, usize)>,
    pub lapi_poll_ago: Option<Duration>,
    pub cloudflare_write_ago: Option<Duration>,
    pub reconcile_ago: Option<Duration>,
    pub lapi_error: Option<String>,
    pub cloudflare_error: Option<String>,
    pub foreign_writer: Option<String>,
    /// With high availability: the election as this instance sees it.
    pub ha: Option<crate::ha::HaStatus>,
}

/// What `/status` serves and `status` prints.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct StatusReport {
    pub version: String,
    pub ready: bool,
    pub reason: Option<String>,
    pub uptime_seconds: u64,
    pub decisions: usize,
    pub desired_items: usize,
    pub listed_items: usize,
    pub pending_adds: usize,
    pub pending_removes: usize,
    pub left_out: usize,
    pub removals_held: usize,
    #[serde(default)]
    pub removals_awaiting_confirmation: usize,
    pub quarantined: usize,
    pub decisions_refused: u64,
    pub last_lapi_poll_seconds_ago: Option<u64>,
    pub last_cloudflare_write_seconds_ago: Option<u64>,
    pub last_reconcile_seconds_ago: Option<u64>,
    pub lapi_error: Option<String>,
    pub cloudflare_error: Option<String>,
    #[serde(default)]
    pub foreign_writer: Option<String>,
    /// With high availability: who holds the Lease, and this instance's part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha: Option<HaReport>,
    /// With several Cloudflare accounts: each account's own report (the fields above
    /// then sum or combine them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accounts: Vec<AccountReport>,
}

/// One account's part of `/status`, with several accounts.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct AccountReport {
    pub name: String,
    #[serde(flatten)]
    pub report: StatusReport,
}

impl StatusReport {
    /// The report of several accounts: ready when each is (else the first reason, naming
    /// its account); counts summed; the LAPI side (the same for all) from the first; a
    /// Cloudflare error or a suspected writer from the first account that has one.
    pub fn combine(parts: Vec<(String, StatusReport)>) -> StatusReport {
        let Some((_, first)) = parts.first() else {
            return StatusReport::default();
        };
        let mut all = first.clone();
        let named = |name: &str, text: &Option<String>| {
            text.as_ref().map(|text| format!("account {name}: {text}"))
        };
        let not_ready = parts.iter().find(|(_, r)| !r.ready);
        all.ready = not_ready.is_none();
        all.reason = not_ready.and_then(|(name, r)| named(name, &r.reason));
        let sum = |f: fn(&StatusReport) -> usize| parts.iter().map(|(_, r)| f(r)).sum();
        all.decisions = first.decisions;
        all.desired_items = sum(|r| r.desired_items);
        all.listed_items = sum(|r| r.listed_items);
        all.pending_adds = sum(|r| r.pending_adds);
        all.pending_removes = sum(|r| r.pending_removes);
        all.left_out = sum(|r| r.left_out);
        all.removals_held = sum(|r| r.removals_held);
        all.removals_awaiting_confirmation = sum(|r| r.removals_awaiting_confirmation);
        all.quarantined = sum(|r| r.quarantined);
        // The oldest write or reconcile of any account: the one to worry about.
        let oldest = |f: fn(&StatusReport) -> Option<u64>| {
            (parts.iter().map(|(_, r)| f(r))).try_fold(0, |max, ago| ago.map(|a| a.max(max)))
        };
        all.last_cloudflare_write_seconds_ago = oldest(|r| r.last_cloudflare_write_seconds_ago);
        all.last_reconcile_seconds_ago = oldest(|r| r.last_reconcile_seconds_ago);
        all.cloudflare_error = (parts.iter()).find_map(|(n, r)| named(n, &r.cloudflare_error));
        all.foreign_writer = (parts.iter()).find_map(|(n, r)| named(n, &r.foreign_writer));
        all.accounts = (parts.into_iter())
            .map(|(name, report)| AccountReport { name, report })
            .collect();
        all
    }
}

/// One `/metrics` text from each account's: every sample gets an `account` label, and each
/// family's metadata is given once (each account registers the same families, in the same
/// order).
pub fn label_accounts(parts: &[(String, String)]) -> String {
    // Family name → (metadata lines, samples), in first-seen order.
    let mut families: Vec<(String, Vec<String>, Vec<String>)> = Vec::new();
    for (account, text) in parts {
        let mut current: Option<usize> = None;
        for line in text.lines() {
            if line == "# EOF" {
                continue;
            }
            if let Some(meta) = line.strip_prefix("# ") {
                let name = meta.split_whitespace().nth(1).unwrap_or_default();
                let at = match families.iter().position(|(n, _, _)| n == name) {
                    Some(at) => at,
                    None => {
                        families.push((name.to_owned(), Vec::new(), Vec::new()));
                        families.len() - 1
                    }
                };
                if !families[at].1.iter().any(|m| m == line) {
                    families[at].1.push(line.to_owned());
                }
                current = Some(at);
                continue;
            }
            let Some(at) = current else {
                continue;
            };
            families[at].2.push(with_account(line, account));
        }
    }
    let mut out = String::new();
    for (_, meta, samples) in families {
        for line in meta.iter().chain(&samples) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str("# EOF\n");
    out
}

/// A sample line with `account="NAME"` as its first label. Account names are checked by
/// the configuration: letters, digits, `_` and `-`, nothing to escape.
fn with_account(line: &str, account: &str) -> String {
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    let (name, rest) = line.split_at(name_end);
    match rest.strip_prefix('{') {
        Some(labels) if labels.starts_with('}') => format!("{name}{{account=\"{account}\"{labels}"),
        Some(labels) => format!("{name}{{account=\"{account}\",{labels}"),
        None => format!("{name}{{account=\"{account}\"}}{rest}"),
    }
}

/// The election in `/status`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct HaReport {
    /// This instance's identity in the Lease.
    pub identity: String,
    /// `leader`, `standby` or `electing`.
    pub role: String,
    /// Who holds the Lease as last read (`None`: nobody).
    pub holder: Option<String>,
    pub lease_error: Option<String>,
}

impl From<&Snapshot> for StatusReport {
    fn from(s: &Snapshot) -> StatusReport {
        let secs = |d: Option<Duration>| d.map(|d| d.as_secs());
        StatusReport {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            ready: s.ready.is_ok(),
            reason: s.ready.clone().err(),
            uptime_seconds: s.uptime.as_secs(),
            decisions: s.counts.decisions,
            desired_items: s.counts.desired_items,
            listed_items: s.counts.listed_items,
            pending_adds: s.pending_adds,
            pending_removes: s.pending_removes,
            left_out: s.counts.left_out,
            removals_held: s.counts.held,
            removals_awaiting_confirmation: s.counts.awaiting_confirmation,
            quarantined: s.counts.quarantined,
            decisions_refused: s.skipped.allowlisted + s.skipped.too_broad + s.skipped.not_client,
            last_lapi_poll_seconds_ago: secs(s.lapi_poll_ago),
            last_cloudflare_write_seconds_ago: secs(s.cloudflare_write_ago),
            last_reconcile_seconds_ago: secs(s.reconcile_ago),
            lapi_error: s.lapi_error.clone(),
            cloudflare_error: s.cloudflare_error.clone(),
            foreign_writer: s.foreign_writer.clone(),
            ha: s.ha.as_ref().map(|ha| HaReport {
                identity: ha.identity.clone(),
                role: ha.role.as_str().to_owned(),
                holder: ha.holder.clone(),
                lease_error: ha.lease_error.clone(),
            }),
            accounts: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_accounts_metrics_are_labelled_and_each_family_described_once() {
        let metrics = Metrics::new();
        metrics.cloudflare_request("items_add", "2xx");
        let one = metrics.render(&Snapshot::for_tests());
        let other = Metrics::new();
        let two = other.render(&Snapshot::for_tests());
        let merged = label_accounts(&[("main".into(), one.clone()), ("b-2".into(), two)]);
        assert_eq!(merged.matches("# EOF").count(), 1);
        assert!(merged.ends_with("# EOF\n"));
        for line in one.lines().filter(|l| l.starts_with("# HELP")) {
            assert_eq!(merged.matches(&format!("{line}\n")).count(), 1, "{line}");
        }
        assert!(
            merged.contains(
                "cf_iplist_bouncer_cloudflare_requests_total{account=\"main\",endpoint=\"items_add\",status=\"2xx\"} 1"
            ),
            "{merged}"
        );
        assert!(
            merged.contains("cf_iplist_bouncer_list_items{account=\"b-2\"} 0"),
            "{merged}"
        );
        // Every sample carries the label; samples of one family stay together.
        for line in merged.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.contains("{account=\""), "{line}");
        }
        assert_eq!(
            with_account("x_bucket{le=\"0.1\"} 0", "a"),
            "x_bucket{account=\"a\",le=\"0.1\"} 0"
        );
        assert_eq!(with_account("x{} 1", "a"), "x{account=\"a\"} 1");
    }

    #[test]
    fn readiness_names_the_reason() {
        let start = Instant::now();
        let stale = Duration::from_secs(30);
        let mut health = Health::default();
        let not_synced = health.readiness(start, stale).expect_err("not primed");
        assert!(not_synced.starts_with("not synced yet"), "{not_synced}");

        health.primed = true;
        health.lapi_ok = Some(start);
        assert_eq!(
            health.readiness(start + Duration::from_secs(10), stale),
            Ok(())
        );

        health.lapi_error = Some("cannot reach LAPI".into());
        let lapi = health
            .readiness(start + Duration::from_secs(31), stale)
            .expect_err("stale");
        assert_eq!(lapi, "no successful LAPI pull for 31s: cannot reach LAPI");

        health.lapi_ok = Some(start + Duration::from_secs(100));
        health.cloudflare_error = Some((start, "HTTP 503".into()));
        let cf = health
            .readiness(start + Duration::from_secs(101), stale)
            .expect_err("cloudflare failing");
        assert_eq!(cf, "Cloudflare failing for 101s: HTTP 503");

        health.cloudflare_error = None;
        health.pending_since = Some(start + Duration::from_secs(30));
        let pending = health
            .readiness(start + Duration::from_secs(101), stale)
            .expect_err("stuck");
        assert_eq!(pending, "a bulk operation has been pending for 71s");
    }

    impl Snapshot {
        fn for_tests() -> Snapshot {
            Snapshot {
                ready: Ok(()),
                uptime: Duration::from_secs(5),
                counts: Counts {
                    decisions: 0,
                    desired_items: 0,
                    listed_items: 0,
                    listed_without_id: 0,
                    queued: 0,
                    left_out: 0,
                    held: 0,
                    quarantined: 0,
                    awaiting_confirmation: 0,
                    capacity: None,
                },
                skipped: Skipped::default(),
                pending_adds: 0,
                pending_removes: 0,
                active_by_origin: Vec::new(),
                lapi_poll_ago: None,
                cloudflare_write_ago: None,
                reconcile_ago: None,
                lapi_error: None,
                cloudflare_error: None,
                foreign_writer: None,
                ha: None,
            }
        }
    }

    #[test]
    fn metrics_render_with_one_prefix_and_fixed_labels() {
        let metrics = Metrics::new();
        metrics.cloudflare_request("items_add", "2xx");
        metrics.bulk_operation("completed", Some(Duration::from_millis(700)));
        metrics.lapi_poll("delta", false);
        let snapshot = Snapshot {
            counts: Counts {
                decisions: 3,
                desired_items: 2,
                listed_items: 2,
                listed_without_id: 0,
                queued: 0,
                left_out: 1,
                held: 0,
                quarantined: 0,
                awaiting_confirmation: 0,
                capacity: Some(9_000),
            },
            skipped: Skipped {
                allowlisted: 2,
                ..Skipped::default()
            },
            pending_adds: 4,
            pending_removes: 1,
            active_by_origin: vec![("cscli", "ipv4", 3)],
            lapi_poll_ago: Some(Duration::from_secs(2)),
            ..Snapshot::for_tests()
        };
        let text = metrics.render(&snapshot);
        for line in [
            "cf_iplist_bouncer_active_decisions{origin=\"cscli\",ip_type=\"ipv4\"} 3",
            "cf_iplist_bouncer_cloudflare_requests_total{endpoint=\"items_add\",status=\"2xx\"} 1",
            "cf_iplist_bouncer_bulk_operations_total{outcome=\"completed\"} 1",
            "cf_iplist_bouncer_lapi_poll_failures_total{kind=\"delta\"} 1",
            "cf_iplist_bouncer_pending_changes{action=\"add\"} 4",
            "cf_iplist_bouncer_items_left_out 1",
            "cf_iplist_bouncer_decisions_refused_total{reason=\"allowlist\"} 2",
            "cf_iplist_bouncer_seconds_since_last_success{what=\"cloudflare_write\"} 5.0",
            "cf_iplist_bouncer_ready 1",
            "cf_iplist_bouncer_leader 1",
            "cf_iplist_bouncer_list_capacity 9000",
            // At 0 before any such event, so rates and ratios over them have data.
            "cf_iplist_bouncer_bulk_operations_total{outcome=\"failed\"} 0",
            "cf_iplist_bouncer_lapi_poll_failures_total{kind=\"full\"} 0",
            "cf_iplist_bouncer_lapi_polls_total{kind=\"full\"} 0",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        metrics.set_leader(false);
        assert!(metrics
            .render(&snapshot)
            .contains("cf_iplist_bouncer_leader 0"));
        // Rendering again does not count refusals twice.
        let again = metrics.render(&snapshot);
        assert!(again.contains("cf_iplist_bouncer_decisions_refused_total{reason=\"allowlist\"} 2"));
    }
}
