//! The whole mutable state of the emulated account behind one `std::sync::Mutex`, and the rules
//! that tie its parts together: lazy advancing of operations, the one-pending-operation rule
//! (docs/cloudflare-lists.md §3), the account capacity (docs/cloudflare-lists.md §4.1), operation
//! faults, counters.
//!
//! The mutex is only ever held for a few map operations and never across an `.await`.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::http::StatusCode;
use ipnet::IpNet;
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::Instant;

use super::canonical::{ip_text, ItemKey};
use super::clock::Clock;
use super::envelope::{code, ApiError};
use super::faults::Faults;
use super::items::{parse_delete_ids, parse_items, ItemRules};
use super::limits::TokenLimits;
use super::ops::{Operation, Operations, TIMELINE_IPS};
use super::rulesets::Zones;
use super::store::{new_id, Change, List, Store};
use super::{CapacityError, Counters, PendingWrite, Settings};

/// Error of an operation that would push the account over its item quota. The real text is
/// unverified (docs/cloudflare-lists.md §12).
const CAPACITY_MESSAGE: &str = "list item limit exceeded";

/// The state shared by the HTTP handlers and the [`super::Emulator`] handle.
pub(crate) type Shared = Arc<Mutex<State>>;

/// Locks the state; a poisoned lock (a panicking test helper) is still usable.
pub(crate) fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Which item write endpoint was called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WriteKind {
    /// POST items.
    Upsert,
    /// PUT items.
    Replace,
    /// DELETE items.
    Delete,
}

#[derive(Debug)]
pub(crate) struct State {
    pub settings: Settings,
    pub store: Store,
    /// Zone rulesets; they reference lists of `store` by name.
    pub zones: Zones,
    pub ops: Operations,
    pub counters: Counters,
    pub faults: Faults,
    /// `None` when the global rate limit is off.
    pub limiter: Option<TokenLimits>,
    pub clock: Clock,
    pub rng: fastrand::Rng,
    /// Set once the server is shutting down: releases responses held back by faults.
    pub stopping: watch::Sender<bool>,
}

impl State {
    pub(crate) fn new(settings: Settings) -> State {
        let window = settings.rate_limit_window;
        State {
            limiter: settings
                .global_rate_limit
                .map(|limit| TokenLimits::new(limit, window)),
            settings,
            store: Store::default(),
            zones: Zones::default(),
            ops: Operations::default(),
            counters: Counters::default(),
            faults: Faults::default(),
            clock: Clock::new(),
            rng: fastrand::Rng::new(),
            stopping: watch::Sender::new(false),
        }
    }

    /// Replaces the global rate limit; a new window opens on the next request.
    pub(crate) fn set_rate_limit(&mut self, limit: Option<u32>, window: Duration) {
        self.settings.global_rate_limit = limit;
        self.settings.rate_limit_window = window;
        self.limiter = limit.map(|limit| TokenLimits::new(limit, window));
    }

    /// The JSON of a list, with `num_referencing_filters` counted over the zone rules.
    pub(crate) fn list_json(&self, list: &List) -> Value {
        list.json(self.zones.referencing(&list.name))
    }

    pub(crate) fn now_text(&self, now: Instant) -> String {
        self.clock.rfc3339(now)
    }

    /// Completes every operation whose deadline is `<= now`, in FIFO order, each as of its
    /// own deadline. Called first on every request and every handle call.
    pub(crate) fn advance(&mut self, now: Instant) {
        while let Some((op, deadline)) = self.ops.pop_due(now) {
            let id = op.id.clone();
            let list_id = op.list_id.clone();
            let forced_error = op.forced_error.take();
            let change = op.change.take();
            let completed = self.clock.rfc3339(deadline);
            let error = match (forced_error, change) {
                (Some(message), _) => Some(message),
                (None, Some(change)) => self.apply(&list_id, change, &completed).err(),
                (None, None) => None,
            };
            self.ops.finish(&id, completed, error);
        }
    }

    /// Applies a completed operation to the store, all or nothing.
    fn apply(&mut self, list_id: &str, change: Change, now: &str) -> Result<(), String> {
        let total = self.store.total_after(list_id, &change);
        let Some(total) = total else {
            return Err("list not found".to_owned());
        };
        if total > self.settings.account_item_limit {
            return Err(CAPACITY_MESSAGE.to_owned());
        }
        let list = self.store.list_mut(list_id).ok_or("list not found")?;
        self.counters.item_changes += list.apply(change, now, &mut self.rng);
        Ok(())
    }

    /// Validates one item write and creates its bulk operation; returns the operation id.
    ///
    /// Order: unknown list (404), then body validation (400), then the one-pending-operation
    /// rule (429 or queue), then the synchronous capacity check if selected.
    pub(crate) fn submit_write(
        &mut self,
        list_id: &str,
        kind: WriteKind,
        body: &[u8],
        now: Instant,
    ) -> Result<String, ApiError> {
        self.advance(now);
        let list = self
            .store
            .list(list_id)
            .ok_or_else(|| ApiError::not_found("list"))?;
        let list_kind = list.kind.clone();
        let busy = self.ops.busy();
        if busy {
            // Counted in both modes: the bouncer must never write while an op is in flight.
            self.counters.writes_while_pending += 1;
        }
        let result = self.checked_change(list_id, &list_kind, kind, body, busy);
        let change = result.inspect_err(|_| self.counters.rejected_writes += 1)?;
        self.counters.writes += 1;
        let id = new_id(&mut self.rng);
        let (min, max) = self.settings.op_latency;
        let drawn = min + max.saturating_sub(min).mul_f64(self.rng.f64());
        let stuck = self.faults.stuck_operations.take();
        let forced_error = match self.faults.failed_operations.take() {
            Some(message) => Some(message),
            None => self.faults.poisoned(&self.nets_of(list_id, &change)),
        };
        self.counters.faults_injected +=
            u64::from(stuck.is_some()) + u64::from(forced_error.is_some());
        let sized = drawn + self.settings.op_item_cost.saturating_mul(change.len());
        let latency = stuck.unwrap_or(sized);
        let ips = if change.len() <= TIMELINE_IPS {
            self.nets_of(list_id, &change).iter().map(ip_text).collect()
        } else {
            Vec::new()
        };
        let mut op = Operation::new(id.clone(), list_id.to_owned(), change, latency);
        op.forced_error = forced_error;
        op.ips = ips;
        self.ops.submit(op, now);
        Ok(id)
    }

    /// The item networks a change names: its items, or the stored items of its ids.
    fn nets_of(&self, list_id: &str, change: &Change) -> Vec<IpNet> {
        let keys: Vec<ItemKey> = match change {
            Change::Upsert(items) | Change::Replace(items) => {
                items.iter().map(|item| item.key).collect()
            }
            Change::Delete(ids) => self.store.list(list_id).map_or_else(Vec::new, |list| {
                let deleted = list.items.iter().filter(|(_, item)| ids.contains(&item.id));
                deleted.map(|(key, _)| *key).collect()
            }),
        };
        let net = |key: ItemKey| match key {
            ItemKey::Ip(net) => Some(net),
            ItemKey::Asn(_) => None,
        };
        keys.into_iter().filter_map(net).collect()
    }

    fn checked_change(
        &self,
        list_id: &str,
        list_kind: &str,
        kind: WriteKind,
        body: &[u8],
        busy: bool,
    ) -> Result<Change, ApiError> {
        let rules = match list_kind {
            "ip" => Some(ItemRules::Ip(self.settings.ip_rules())),
            "asn" => Some(ItemRules::Asn(self.settings.asn_zero)),
            _ => None,
        };
        let change = match (kind, rules) {
            (WriteKind::Upsert | WriteKind::Replace, None) => {
                // The emulator implements IP and ASN lists only (see the crate docs in lib.rs).
                return Err(ApiError::bad_request(
                    code::INCOMPATIBLE_ITEMS,
                    "List items incompatible with list type",
                ));
            }
            (WriteKind::Upsert, Some(rules)) => Change::Upsert(parse_items(body, rules)?),
            (WriteKind::Replace, Some(rules)) => Change::Replace(parse_items(body, rules)?),
            (WriteKind::Delete, _) => Change::Delete(parse_delete_ids(body)?),
        };
        if busy && self.settings.pending_write == PendingWrite::Reject {
            // docs/cloudflare-lists.md §3: "you will receive a 429"; the code 10040 is a guess
            // (docs/cloudflare-lists.md §12).
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                code::LIST_RATE_LIMITED,
                "you have been ratelimited please wait and try again",
            )
            .with_retry_after(1));
        }
        let total = self.store.total_after(list_id, &change).unwrap_or(0);
        if self.settings.capacity_error == CapacityError::Sync
            && total > self.settings.account_item_limit
        {
            // Invented synchronous form of the unverified quota error
            // (docs/cloudflare-lists.md §4.1).
            return Err(ApiError::bad_request(
                code::CAPACITY_EXCEEDED,
                CAPACITY_MESSAGE,
            ));
        }
        Ok(change)
    }

    /// Creates a list as the API does (validation is the caller's job).
    pub(crate) fn create_list(
        &mut self,
        name: &str,
        kind: &str,
        description: Option<String>,
        now: Instant,
    ) -> &List {
        let now_text = self.now_text(now);
        let list = List {
            id: new_id(&mut self.rng),
            name: name.to_owned(),
            description,
            kind: kind.to_owned(),
            created_on: now_text.clone(),
            modified_on: now_text,
            items: Default::default(),
        };
        self.store.lists.push(list);
        &self.store.lists[self.store.lists.len() - 1]
    }
}

#[cfg(test)]
mod tests {
    //! The operation timeline with explicit instants: no sleeping, no paused clock needed.

    use std::time::Duration;

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn state(pending_write: PendingWrite) -> (State, String) {
        let settings = Settings {
            op_latency: (100 * MS, 100 * MS),
            pending_write,
            ..Settings::default()
        };
        let mut state = State::new(settings);
        let list_id = state
            .create_list("l", "ip", None, Instant::now())
            .id
            .clone();
        (state, list_id)
    }

    fn status(state: &mut State, op_id: &str, at: Instant) -> String {
        state.advance(at);
        let json = state.ops.status_json(op_id, at).unwrap_or_default();
        json["status"].as_str().unwrap_or("").to_owned()
    }

    #[test]
    fn operation_goes_pending_running_completed() {
        let (mut state, list_id) = state(PendingWrite::Reject);
        let t0 = Instant::now();
        let op = state.submit_write(&list_id, WriteKind::Upsert, br#"[{"ip":"1.1.1.1"}]"#, t0);
        let op = op.unwrap();
        assert_eq!(status(&mut state, &op, t0 + 49 * MS), "pending");
        assert_eq!(state.store.total_items(), 0);
        assert_eq!(status(&mut state, &op, t0 + 50 * MS), "running");
        assert_eq!(status(&mut state, &op, t0 + 100 * MS), "completed");
        assert_eq!(state.store.total_items(), 1);
    }

    #[test]
    fn queued_operations_start_when_the_previous_one_completes() {
        let (mut state, list_id) = state(PendingWrite::Queue);
        let t0 = Instant::now();
        let body = br#"[{"ip":"1.1.1.1"}]"#;
        let first = state
            .submit_write(&list_id, WriteKind::Upsert, body, t0)
            .unwrap();
        let delete = br#"{"items":[{"id":"0123456789abcdef0123456789abcdef"}]}"#;
        let second = state.submit_write(&list_id, WriteKind::Delete, delete, t0 + 10 * MS);
        let second = second.unwrap();
        assert_eq!(state.counters.writes_while_pending, 1);
        assert_eq!(status(&mut state, &second, t0 + 140 * MS), "pending");
        assert_eq!(status(&mut state, &first, t0 + 140 * MS), "completed");
        assert_eq!(status(&mut state, &second, t0 + 150 * MS), "running");
        assert_eq!(status(&mut state, &second, t0 + 200 * MS), "completed");
        assert!(!state.ops.busy());
    }

    #[test]
    fn rejected_write_creates_no_operation() {
        let (mut state, list_id) = state(PendingWrite::Reject);
        let t0 = Instant::now();
        let body = br#"[{"ip":"1.1.1.1"}]"#;
        state
            .submit_write(&list_id, WriteKind::Upsert, body, t0)
            .unwrap();
        let err = state
            .submit_write(&list_id, WriteKind::Upsert, body, t0)
            .unwrap_err();
        assert_eq!(
            (err.status, err.retry_after),
            (StatusCode::TOO_MANY_REQUESTS, Some(1))
        );
        assert_eq!(
            (state.counters.writes, state.counters.rejected_writes),
            (1, 1)
        );
    }
}
