//! High availability: exactly one writer among several instances, elected by a
//! Kubernetes `Lease` with client-go's semantics (docs/high-availability.md).
//!
//! - [`decide`] is the election's rule, pure: create the Lease when absent, renew it when
//!   held, take it when free or when its record has not changed for its
//!   `leaseDurationSeconds` **as measured on this process's clock from when it saw the
//!   change** (tolerant of skew between nodes), else wait.
//! - [`Elector`] runs it every `retry_period` against a [`LeaseApi`]; every update is a
//!   `PUT` of the object last read, so a `409` means someone else wrote first.
//! - [`Ha`] is what the rest of the bouncer sees: the role (a `watch`), the **fence**
//!   (a write may start only while `now < start of the last successful renewal +
//!   renew_deadline`, and its timeout ends inside that window), and the operation the
//!   leader has pending, recorded in the Lease so that a successor can wait it out.

use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::HaConfig;
use crate::telemetry::Telemetry;

pub mod lease;

use lease::{micro_time, ApiError, LeaseApi, LeaseObject, Record};

/// The three timings of client-go's election.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl From<&HaConfig> for Timings {
    fn from(config: &HaConfig) -> Timings {
        Timings {
            lease_duration: config.lease_duration,
            renew_deadline: config.renew_deadline,
            retry_period: config.retry_period,
        }
    }
}

/// The Lease as this process last saw it, and when it saw it change.
#[derive(Debug, Clone)]
pub struct Observed {
    pub record: Record,
    pub resource_version: String,
    /// Local time of the first read of this `resource_version`.
    pub at: Instant,
}

/// What one round of the election does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Create,
    Renew,
    Take,
    Wait,
}

/// The election's rule; see the module docs. `observed` is `None` when the Lease does
/// not exist.
pub fn decide(observed: Option<&Observed>, me: &str, now: Instant) -> Action {
    match observed {
        None => Action::Create,
        Some(o) if o.record.holder == me => Action::Renew,
        Some(o) if o.record.holder.is_empty() => Action::Take,
        Some(o) if now >= o.at + Duration::from_secs(o.record.lease_duration_s) => Action::Take,
        Some(_) => Action::Wait,
    }
}

/// This instance's part in the election.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// No answer from the Lease API yet.
    Electing,
    Standby,
    /// Holds the Lease; `term` counts the terms of this process, so that a writer can
    /// tell a new term from the one it served.
    Leader {
        term: u64,
    },
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Electing => "electing",
            Role::Standby => "standby",
            Role::Leader { .. } => "leader",
        }
    }
}

/// What `/status` shows of the election.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaStatus {
    pub identity: String,
    pub role: Role,
    /// Who holds the Lease as last read (`None`: nobody, or not read yet).
    pub holder: Option<String>,
    /// When the Lease API last answered.
    pub lease_ok: Option<std::time::Instant>,
    pub lease_error: Option<String>,
}

#[derive(Debug, Default)]
struct Inner {
    /// While leading: writes may start until then.
    valid_until: Option<Instant>,
    holder: Option<String>,
    lease_ok: Option<std::time::Instant>,
    lease_error: Option<String>,
    /// The operation this leader has pending, written into the Lease at each renewal.
    operation: Option<String>,
    /// The operation the previous holder recorded, for the writer's first turn.
    inherited: Option<String>,
}

/// The election's state, shared by the elector, the writer, the Cloudflare client
/// (the fence) and the admin listener.
#[derive(Debug)]
pub struct Ha {
    identity: String,
    timings: Timings,
    role: watch::Sender<Role>,
    inner: Mutex<Inner>,
    /// Wakes the elector to record a new pending operation at once.
    operation_changed: Notify,
}

impl Ha {
    pub fn new(identity: String, timings: Timings) -> Ha {
        Ha {
            identity,
            timings,
            role: watch::Sender::new(Role::Electing),
            inner: Mutex::new(Inner::default()),
            operation_changed: Notify::new(),
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub fn timings(&self) -> Timings {
        self.timings
    }

    pub fn subscribe(&self) -> watch::Receiver<Role> {
        self.role.subscribe()
    }

    pub fn role(&self) -> Role {
        *self.role.borrow()
    }

    pub fn is_leader(&self) -> bool {
        matches!(self.role(), Role::Leader { .. })
    }

    /// How long a write starting `now` may take: `None` when none may start (not
    /// leading, or the last renewal is older than `renew_deadline`).
    pub fn write_window(&self, now: Instant) -> Option<Duration> {
        if !self.is_leader() {
            return None;
        }
        let until = self.inner().valid_until?;
        (now < until).then(|| until - now)
    }

    /// Records the bulk operation now pending (or `None` once it is over); the elector
    /// writes it into the Lease at once.
    pub fn record_operation(&self, op_id: Option<&str>) {
        let mut inner = self.inner();
        let op = op_id.map(str::to_owned);
        if inner.operation != op {
            inner.operation = op;
            drop(inner);
            self.operation_changed.notify_one();
        }
    }

    /// The operation the previous holder left pending, once per term.
    pub fn take_inherited(&self) -> Option<String> {
        self.inner().inherited.take()
    }

    pub fn status(&self) -> HaStatus {
        let inner = self.inner();
        HaStatus {
            identity: self.identity.clone(),
            role: self.role(),
            holder: inner.holder.clone(),
            lease_ok: inner.lease_ok,
            lease_error: inner.lease_error.clone(),
        }
    }
}

/// The outcome of one round.
enum Outcome {
    Leading,
    /// Someone else holds the Lease.
    Following(String),
    Failed(ApiError),
}

/// Runs the election; see the module docs.
pub struct Elector<A> {
    api: A,
    ha: Arc<Ha>,
    telemetry: Arc<Telemetry>,
    observed: Option<Observed>,
    /// The object our last successful write returned: renewals `PUT` it directly.
    ours: Option<LeaseObject>,
    term: u64,
    failures: u32,
}

impl<A: LeaseApi> Elector<A> {
    pub fn new(api: A, ha: Arc<Ha>, telemetry: Arc<Telemetry>) -> Elector<A> {
        Elector {
            api,
            ha,
            telemetry,
            observed: None,
            ours: None,
            term: 0,
            failures: 0,
        }
    }

    /// Runs rounds until `stop` is cancelled, then releases the Lease if held. Cancel
    /// `stop` only once the writer has stopped (a release lets another instance write).
    pub async fn run(mut self, stop: CancellationToken) {
        loop {
            let started = Instant::now();
            let outcome = self.round(started).await;
            self.settle(outcome, started);
            let wait = if self.ha.is_leader() {
                self.ha.timings.retry_period
            } else {
                jittered(self.ha.timings.retry_period)
            };
            let leading = self.ha.is_leader();
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                () = self.ha.operation_changed.notified(), if leading => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
        self.release().await;
    }

    /// One round: renew directly when leading, else read and decide.
    async fn round(&mut self, now: Instant) -> Outcome {
        if self.ha.is_leader() {
            if let Some(ours) = self.ours.take() {
                let record = self.renewed(ours.record());
                match self.api.replace(&ours, &record).await {
                    Ok(object) => return self.wrote(object, now),
                    // Someone wrote since (or our own answer was lost): read it.
                    Err(ApiError::Conflict) => {}
                    Err(err) => return Outcome::Failed(err),
                }
            }
        }
        let current = match self.api.get().await {
            Ok(current) => current,
            Err(err) => return Outcome::Failed(err),
        };
        let Some(object) = current else {
            self.observed = None;
            let record = Record {
                holder: self.ha.identity.clone(),
                lease_duration_s: self.ha.timings.lease_duration.as_secs(),
                acquire_time: Some(micro_time(SystemTime::now())),
                renew_time: Some(micro_time(SystemTime::now())),
                transitions: 0,
                operation: None,
            };
            return match self.api.create(&record).await {
                Ok(object) => self.wrote(object, now),
                // Created by another candidate in between: read it next round.
                Err(ApiError::Conflict) => Outcome::Failed(ApiError::Conflict),
                Err(err) => Outcome::Failed(err),
            };
        };
        self.observe(&object, now);
        let Some(observed) = self.observed.clone() else {
            return Outcome::Failed(ApiError::Other("no Lease observed".into()));
        };
        let record = match decide(Some(&observed), &self.ha.identity, now) {
            Action::Wait | Action::Create => return Outcome::Following(observed.record.holder),
            Action::Renew if self.ha.is_leader() => self.renewed(observed.record),
            // Ours from an earlier run of this identity (a restarted pod): lead again,
            // waiting out what that run left pending.
            Action::Renew => {
                let inherited = observed.record.operation.clone();
                self.ha.inner().inherited = inherited.clone();
                self.ha.inner().operation = inherited;
                self.renewed(observed.record)
            }
            Action::Take => {
                let previous = observed.record;
                let now_text = micro_time(SystemTime::now());
                // What the previous holder left pending: the writer waits it out first.
                let inherited = previous.operation.clone();
                self.ha.inner().inherited = inherited.clone();
                self.ha.inner().operation = inherited.clone();
                Record {
                    holder: self.ha.identity.clone(),
                    lease_duration_s: self.ha.timings.lease_duration.as_secs(),
                    acquire_time: Some(now_text.clone()),
                    renew_time: Some(now_text),
                    transitions: previous.transitions
                        + u64::from(previous.holder != self.ha.identity),
                    operation: inherited,
                }
            }
        };
        match self.api.replace(&object, &record).await {
            Ok(object) => self.wrote(object, now),
            Err(err) => Outcome::Failed(err),
        }
    }

    /// `previous` renewed now by us, carrying the pending operation.
    fn renewed(&self, previous: Record) -> Record {
        Record {
            holder: self.ha.identity.clone(),
            lease_duration_s: self.ha.timings.lease_duration.as_secs(),
            renew_time: Some(micro_time(SystemTime::now())),
            operation: self.ha.inner().operation.clone(),
            ..previous
        }
    }

    /// Notes the record read, and when it changed.
    fn observe(&mut self, object: &LeaseObject, now: Instant) {
        let rv = object.resource_version();
        let changed = self
            .observed
            .as_ref()
            .is_none_or(|o| o.resource_version != rv);
        if changed {
            self.observed = Some(Observed {
                record: object.record(),
                resource_version: rv.to_owned(),
                at: now,
            });
        }
    }

    fn wrote(&mut self, object: LeaseObject, now: Instant) -> Outcome {
        self.observe(&object, now);
        self.ours = Some(object);
        Outcome::Leading
    }

    /// Applies a round's outcome to the role and the fence; `started` is when the
    /// round began (a renewal counts from when it was sent, not answered).
    fn settle(&mut self, outcome: Outcome, started: Instant) {
        let now = Instant::now();
        let was_leader = self.ha.is_leader();
        match outcome {
            Outcome::Leading => {
                self.failures = 0;
                {
                    let mut inner = self.ha.inner();
                    inner.valid_until = Some(started + self.ha.timings.renew_deadline);
                    inner.holder = Some(self.ha.identity.clone());
                    inner.lease_ok = Some(std::time::Instant::now());
                    inner.lease_error = None;
                }
                if !was_leader {
                    self.term += 1;
                    info!(
                        identity = %self.ha.identity,
                        "acquired the lease: this instance now writes to Cloudflare"
                    );
                    self.set_role(Role::Leader { term: self.term });
                }
            }
            Outcome::Following(holder) => {
                self.failures = 0;
                self.ours = None;
                {
                    let mut inner = self.ha.inner();
                    inner.valid_until = None;
                    inner.holder = (!holder.is_empty()).then(|| holder.clone());
                    inner.lease_ok = Some(std::time::Instant::now());
                    inner.lease_error = None;
                    inner.operation = None;
                    inner.inherited = None;
                }
                if was_leader {
                    warn!(
                        identity = %self.ha.identity, holder = %holder,
                        "lost the lease to another instance: writing to Cloudflare stops"
                    );
                } else if self.ha.role() == Role::Electing {
                    info!(identity = %self.ha.identity, holder = %holder, "standing by: another instance holds the lease");
                }
                self.set_role(Role::Standby);
            }
            Outcome::Failed(err) => {
                self.failures += 1;
                let text = err.to_string();
                // The first failure of a run, then every tenth.
                if self.failures == 1 || self.failures % 10 == 0 {
                    warn!(error = %text, failures = self.failures, "the Lease API call failed; retrying");
                }
                let expired = {
                    let mut inner = self.ha.inner();
                    inner.lease_error = Some(text.clone());
                    inner.valid_until.is_none_or(|until| now >= until)
                };
                if was_leader && expired {
                    error!(
                        identity = %self.ha.identity, error = %text,
                        "could not renew the lease within renew_deadline: writing to Cloudflare stops"
                    );
                    self.ours = None;
                    let mut inner = self.ha.inner();
                    inner.valid_until = None;
                    inner.operation = None;
                    inner.inherited = None;
                    drop(inner);
                    self.set_role(Role::Standby);
                }
            }
        }
    }

    fn set_role(&self, role: Role) {
        self.telemetry
            .metrics
            .set_leader(matches!(role, Role::Leader { .. }));
        self.ha.role.send_if_modified(|current| {
            let changed = *current != role;
            *current = role;
            changed
        });
    }

    /// Gives the Lease up (holder cleared, one-second duration, as client-go's
    /// `ReleaseOnCancel`), so that a successor need not wait it out. The pending
    /// operation stays recorded for the successor.
    async fn release(&mut self) {
        if !self.ha.is_leader() {
            return;
        }
        self.ha.inner().valid_until = None;
        self.set_role(Role::Standby);
        let Some(ours) = self.ours.take() else {
            return;
        };
        let now = micro_time(SystemTime::now());
        let record = Record {
            holder: String::new(),
            lease_duration_s: 1,
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            operation: self.ha.inner().operation.clone(),
            ..ours.record()
        };
        match self.api.replace(&ours, &record).await {
            Ok(_) => info!(identity = %self.ha.identity, "released the lease"),
            Err(err) => warn!(error = %err, "could not release the lease; it expires on its own"),
        }
    }
}

/// `period` times a random factor in [1, 1.2), as client-go's `JitterUntil`.
fn jittered(period: Duration) -> Duration {
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let factor = 1.0 + 0.2 * (random % 1000) as f64 / 1000.0;
    period.mul_f64(factor)
}

#[cfg(test)]
mod tests;
