//! Asynchronous bulk operations (docs/cloudflare-lists.md §2.7, §3): their FIFO queue and their
//! timeline.
//!
//! Time is evaluated lazily: nothing runs in the background. Before serving anything the
//! state asks [`Operations::pop_due`] for every operation whose deadline has passed and
//! applies it. An operation's clock starts when it reaches the head of the queue, at the
//! deadline of its predecessor, so queued operations (`PendingWrite::Queue`) run one after
//! the other exactly as if a worker had been processing them.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use super::store::Change;

/// A bulk operation from submission to its outcome.
#[derive(Debug)]
pub(crate) struct Operation {
    pub id: String,
    pub list_id: String,
    /// Taken out when the operation completes.
    pub change: Option<Change>,
    /// Drawn from `Settings::op_latency` at submission (plus the per-item cost).
    pub latency: Duration,
    /// Items the change names.
    pub items: u32,
    /// `Some(message)`: the operation will fail with it (`fail_next_operations`, poison).
    pub forced_error: Option<String>,
    /// When the operation reached the head of the queue.
    start: Option<Instant>,
    outcome: Option<Outcome>,
    /// The timeline (`/__emulator/operations`): submitted, ended, first status poll that
    /// saw it ended.
    submitted: Option<Instant>,
    ended: Option<Instant>,
    seen_ended: Option<Instant>,
    /// Canonical IPs written, for operations of at most [`TIMELINE_IPS`] items.
    pub ips: Vec<String>,
}

/// Operations up to this size keep their IPs for the timeline.
pub(crate) const TIMELINE_IPS: u32 = 64;

#[derive(Debug)]
struct Outcome {
    completed: String,
    error: Option<String>,
}

impl Operation {
    pub(crate) fn new(id: String, list_id: String, change: Change, latency: Duration) -> Operation {
        Operation {
            id,
            list_id,
            items: change.len(),
            change: Some(change),
            latency,
            forced_error: None,
            start: None,
            outcome: None,
            submitted: None,
            ended: None,
            seen_ended: None,
            ips: Vec::new(),
        }
    }

    /// The bulk-operation result object (docs/cloudflare-lists.md §2.7).
    fn json(&self, now: Instant) -> Value {
        match &self.outcome {
            Some(Outcome {
                completed,
                error: None,
            }) => {
                json!({"id": self.id, "status": "completed", "completed": completed})
            }
            Some(Outcome {
                completed,
                error: Some(error),
            }) => json!({
                "id": self.id, "status": "failed", "completed": completed, "error": error,
            }),
            None => {
                // Pending for the first half of the latency, running for the second half.
                let running = self
                    .start
                    .is_some_and(|start| now >= start + self.latency / 2);
                let status = if running { "running" } else { "pending" };
                json!({"id": self.id, "status": status})
            }
        }
    }
}

/// Every operation of the account, and the FIFO of those not finished yet.
#[derive(Debug, Default)]
pub(crate) struct Operations {
    all: HashMap<String, Operation>,
    queue: VecDeque<String>,
}

impl Operations {
    /// True while an operation is pending or running. Call after draining [`Self::pop_due`].
    pub(crate) fn busy(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Operations created so far, finished or not.
    pub(crate) fn count(&self) -> u64 {
        self.all.len() as u64
    }

    /// Queues `op`; it starts at once if nothing else is in flight.
    pub(crate) fn submit(&mut self, mut op: Operation, now: Instant) {
        op.submitted = Some(now);
        if self.queue.is_empty() {
            op.start = Some(now);
        }
        self.queue.push_back(op.id.clone());
        self.all.insert(op.id.clone(), op);
    }

    /// Removes the head operation if its deadline is `<= now` and returns it with the
    /// deadline (the instant it completed). The next operation starts at that deadline.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(&mut Operation, Instant)> {
        let head_id = self.queue.front()?;
        let head = self.all.get(head_id)?;
        let deadline = head.start? + head.latency;
        if deadline > now {
            return None;
        }
        let head_id = self.queue.pop_front()?;
        if let Some(next) = self.queue.front().and_then(|id| self.all.get_mut(id)) {
            next.start = Some(deadline);
        }
        self.all.get_mut(&head_id).map(|op| (op, deadline))
    }

    /// Records the end of an operation returned by [`Self::pop_due`].
    pub(crate) fn finish(&mut self, id: &str, completed: String, error: Option<String>) {
        if let Some(op) = self.all.get_mut(id) {
            op.outcome = Some(Outcome { completed, error });
            op.ended = op.start.map(|start| start + op.latency);
        }
    }

    /// The status JSON of an operation, `None` if unknown; a poll that sees it ended is
    /// recorded in the timeline.
    pub(crate) fn status_json(&mut self, id: &str, now: Instant) -> Option<Value> {
        let op = self.all.get_mut(id)?;
        if op.outcome.is_some() && op.seen_ended.is_none() {
            op.seen_ended = Some(now);
        }
        Some(op.json(now))
    }

    /// Every operation in submission order: `{id, items, ips, submitted, started, ended,
    /// seen_ended}`, times in seconds since the Unix epoch (`null` until they happen).
    pub(crate) fn timeline(&self, clock: &crate::clock::Clock) -> Vec<Value> {
        let mut ops: Vec<&Operation> = self.all.values().collect();
        ops.sort_by_key(|op| op.submitted);
        let secs = |at: Option<Instant>| at.map(|at| clock.unix_secs(at));
        ops.into_iter()
            .map(|op| {
                json!({
                    "id": op.id, "items": op.items, "ips": op.ips,
                    "submitted": secs(op.submitted), "started": secs(op.start),
                    "ended": secs(op.ended), "seen_ended": secs(op.seen_ended),
                })
            })
            .collect()
    }
}
