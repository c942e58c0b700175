//! The bouncer's whole picture of the world, with no IO: which items LAPI wants on the
//! list (desired), which items the bouncer believes the list holds (list view), and the
//! pending queue of items where the two may differ.
//!
//! The pending queue holds *items*, not intents. The intent (add or remove) is read from
//! desired vs. list view when a batch is taken, so the latest intent always wins and an
//! add cancelled before it was sent costs nothing. Only a completed bulk operation
//! changes the list view ([`SyncState::confirm`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::godur;
use crate::item::{Item, ItemError};

/// Expiry used for decisions whose duration does not fit in an `Instant` (absurdly long).
const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
/// Cloudflare's limit on an item comment (docs/cloudflare-lists.md §6.5).
const MAX_COMMENT_CHARS: usize = 500;

/// A decision as LAPI sent it, borrowed from the response body.
#[derive(Debug, Clone, Copy)]
pub struct DecisionRef<'a> {
    pub scope: &'a str,
    pub value: &'a str,
    pub kind: &'a str,
    pub origin: &'a str,
    pub scenario: &'a str,
    pub duration: &'a str,
}

/// Which decisions become items, and how.
#[derive(Debug, Clone)]
pub struct Filter {
    /// Decision types pushed to the list (`ban`); others are skipped.
    pub decision_types: Vec<String>,
    /// IPv6 addresses and narrower networks are widened to this prefix.
    pub ipv6_prefix: u8,
}

/// Decisions skipped since start, by reason. Never fatal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Skipped {
    pub kind: u64,
    pub scope: u64,
    pub value: u64,
    pub too_broad: u64,
    pub duration: u64,
}

impl Skipped {
    pub fn total(&self) -> u64 {
        self.kind + self.scope + self.value + self.too_broad + self.duration
    }
}

/// One write for the drainer: all adds or all removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Batch {
    /// Items to POST, each with its comment.
    Add(Vec<(Item, String)>),
    /// Items to DELETE, each with its Cloudflare id when known.
    Remove(Vec<(Item, Option<Box<str>>)>),
}

impl Batch {
    pub fn len(&self) -> usize {
        match self {
            Batch::Add(items) => items.len(),
            Batch::Remove(items) => items.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn items(&self) -> Vec<Item> {
        match self {
            Batch::Add(items) => items.iter().map(|(item, _)| *item).collect(),
            Batch::Remove(items) => items.iter().map(|(item, _)| *item).collect(),
        }
    }
}

/// Outcome of a completed bulk operation, fed back with [`SyncState::confirm`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirmed {
    Added,
    Removed,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct DecisionKey {
    range_scope: bool,
    value: Box<str>,
    kind: Box<str>,
}

#[derive(Debug, Clone)]
struct Active {
    item: Item,
    expires_at: Instant,
}

/// Why an item is desired: how many active decisions map to it, and the labels of the
/// latest one (for the item comment).
#[derive(Debug, Clone)]
struct Wanted {
    refs: u32,
    origin: Arc<str>,
    scenario: Arc<str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Intent {
    Add,
    Remove,
}

/// Desired state, list view and pending queue. See the module docs.
#[derive(Debug)]
pub struct SyncState {
    filter: Filter,
    decisions: HashMap<DecisionKey, Active>,
    wanted: HashMap<Item, Wanted>,
    /// What the list holds, as far as completed operations and list reads tell;
    /// the Cloudflare item id when a list read has shown it.
    listed: HashMap<Item, Option<Box<str>>>,
    queue: VecDeque<Item>,
    queued: HashSet<Item>,
    labels: HashSet<Arc<str>>,
    earliest_expiry: Option<Instant>,
    desired_known: bool,
    list_known: bool,
    skipped: Skipped,
}

impl SyncState {
    pub fn new(filter: Filter) -> SyncState {
        SyncState {
            filter,
            decisions: HashMap::new(),
            wanted: HashMap::new(),
            listed: HashMap::new(),
            queue: VecDeque::new(),
            queued: HashSet::new(),
            labels: HashSet::new(),
            earliest_expiry: None,
            desired_known: false,
            list_known: false,
            skipped: Skipped::default(),
        }
    }

    /// Applies a stream delta: `deleted` first, then `new`. Idempotent: LAPI repeats
    /// entries around poll boundaries (docs/lapi.md §4.3).
    pub fn apply_delta<'a>(
        &mut self,
        deleted: impl IntoIterator<Item = DecisionRef<'a>>,
        new: impl IntoIterator<Item = DecisionRef<'a>>,
        now: Instant,
    ) {
        for decision in deleted {
            if let Some(key) = self.key_of(&decision, false) {
                self.forget(&key);
            }
        }
        for decision in new {
            self.insert(&decision, now);
        }
    }

    /// Replaces the desired state with a full pull (`startup=true`'s `new`). Items that
    /// appear or disappear are queued. A failed pull must never reach this function.
    pub fn replace_desired<'a>(
        &mut self,
        new: impl IntoIterator<Item = DecisionRef<'a>>,
        now: Instant,
    ) {
        let old_wanted = std::mem::take(&mut self.wanted);
        self.decisions.clear();
        self.labels.clear();
        self.earliest_expiry = None;
        for decision in new {
            self.insert_quietly(&decision, now);
        }
        let changed: Vec<Item> = old_wanted
            .keys()
            .filter(|item| !self.wanted.contains_key(item))
            .chain(
                self.wanted
                    .keys()
                    .filter(|item| !old_wanted.contains_key(item)),
            )
            .copied()
            .collect();
        self.enqueue_all(changed);
        self.desired_known = true;
    }

    /// Drops decisions whose duration has run out, so a missed delete cannot keep a
    /// ban forever. Returns how many expired.
    pub fn expire(&mut self, now: Instant) -> usize {
        if self.earliest_expiry.is_none_or(|at| at > now) {
            return 0;
        }
        let expired: Vec<DecisionKey> = self
            .decisions
            .iter()
            .filter(|(_, active)| active.expires_at <= now)
            .map(|(key, _)| key.clone())
            .collect();
        for key in &expired {
            self.forget(key);
        }
        self.earliest_expiry = self.decisions.values().map(|a| a.expires_at).min();
        expired.len()
    }

    /// Replaces the list view with a full read of the list (item, id) and queues every
    /// item where desired and listed differ.
    pub fn replace_list(&mut self, items: impl IntoIterator<Item = (Item, Box<str>)>) {
        self.listed = items
            .into_iter()
            .map(|(item, id)| (item, Some(id)))
            .collect();
        let changed: Vec<Item> = self
            .listed
            .keys()
            .filter(|item| !self.wanted.contains_key(item))
            .chain(
                self.wanted
                    .keys()
                    .filter(|item| !self.listed.contains_key(item)),
            )
            .copied()
            .collect();
        self.enqueue_all(changed);
        self.list_known = true;
    }

    /// Takes up to `max` queued items that need the same kind of write, oldest first.
    /// Items already in step leave the queue. Returns `None` when nothing needs writing,
    /// or while desired state or list contents are still unknown.
    pub fn take_batch(&mut self, max: usize) -> Option<Batch> {
        if !self.desired_known || !self.list_known || max == 0 {
            return None;
        }
        let mut kind = None;
        let mut taken = Vec::new();
        let mut skipped_other = Vec::new();
        while let Some(item) = self.queue.pop_front() {
            match self.intent(&item) {
                None => {
                    self.queued.remove(&item);
                }
                Some(intent) if kind.is_none_or(|k| k == intent) => {
                    kind = Some(intent);
                    self.queued.remove(&item);
                    taken.push(item);
                    if taken.len() == max {
                        break;
                    }
                }
                Some(_) => skipped_other.push(item),
            }
        }
        for item in skipped_other.into_iter().rev() {
            self.queue.push_front(item);
        }
        match kind? {
            Intent::Add => Some(Batch::Add(
                taken
                    .into_iter()
                    .map(|item| (item, self.comment(&item)))
                    .collect(),
            )),
            Intent::Remove => Some(Batch::Remove(
                taken
                    .into_iter()
                    .map(|item| (item, self.listed.get(&item).cloned().flatten()))
                    .collect(),
            )),
        }
    }

    /// Puts items back in the queue (a write failed or was not attempted).
    pub fn requeue(&mut self, items: impl IntoIterator<Item = Item>) {
        self.enqueue_all(items);
    }

    /// Records a completed bulk operation: only this changes the list view.
    pub fn confirm(&mut self, outcome: Confirmed, items: &[Item]) {
        for item in items {
            match outcome {
                // The POST response carries no ids; a later read or search finds them.
                Confirmed::Added => {
                    self.listed.entry(*item).or_insert(None);
                }
                Confirmed::Removed => {
                    self.listed.remove(item);
                }
            }
            // Desired state may have moved while the operation ran.
            if self.intent(item).is_some() {
                self.enqueue(*item);
            }
        }
    }

    /// Records what a search for one item found: its id, or that it is not on the list.
    pub fn resolve_id(&mut self, item: Item, id: Option<Box<str>>) {
        match id {
            Some(id) => {
                self.listed.insert(item, Some(id));
            }
            None => {
                self.listed.remove(&item);
            }
        }
    }

    /// Items on the list whose ids the bouncer does not know.
    pub fn listed_without_id(&self) -> usize {
        self.listed.values().filter(|id| id.is_none()).count()
    }

    /// True when the first full pull and the first list read have both happened.
    pub fn is_primed(&self) -> bool {
        self.desired_known && self.list_known
    }

    /// True when nothing is queued (every queued item was found in step).
    pub fn is_drained(&mut self) -> bool {
        let queue = std::mem::take(&mut self.queue);
        for item in queue {
            if self.intent(&item).is_some() {
                self.queue.push_back(item);
            } else {
                self.queued.remove(&item);
            }
        }
        self.queue.is_empty()
    }

    /// Items desired, sorted (for `once`'s final comparison and for tests).
    pub fn desired_items(&self) -> Vec<Item> {
        let mut items: Vec<Item> = self.wanted.keys().copied().collect();
        items.sort();
        items
    }

    pub fn counts(&self) -> Counts {
        Counts {
            decisions: self.decisions.len(),
            desired_items: self.wanted.len(),
            listed_items: self.listed.len(),
            queued: self.queue.len(),
        }
    }

    pub fn skipped(&self) -> Skipped {
        self.skipped
    }

    fn intent(&self, item: &Item) -> Option<Intent> {
        match (
            self.wanted.contains_key(item),
            self.listed.contains_key(item),
        ) {
            (true, false) => Some(Intent::Add),
            (false, true) => Some(Intent::Remove),
            _ => None,
        }
    }

    fn comment(&self, item: &Item) -> String {
        let Some(wanted) = self.wanted.get(item) else {
            return String::new();
        };
        let mut comment = format!("crowdsec {}: {}", wanted.origin, wanted.scenario);
        if let Some((cut, _)) = comment.char_indices().nth(MAX_COMMENT_CHARS) {
            comment.truncate(cut);
        }
        comment
    }

    fn insert(&mut self, decision: &DecisionRef<'_>, now: Instant) {
        if let Some(item) = self.insert_quietly(decision, now) {
            self.enqueue(item);
        }
    }

    /// Records an active decision; returns its item if the item just became desired.
    fn insert_quietly(&mut self, decision: &DecisionRef<'_>, now: Instant) -> Option<Item> {
        let key = self.key_of(decision, true)?;
        let item = match Item::from_decision(decision.value, self.filter.ipv6_prefix) {
            Ok(item) => item,
            Err(ItemError::Invalid) => {
                self.skipped.value += 1;
                return None;
            }
            Err(ItemError::TooBroad) => {
                self.skipped.too_broad += 1;
                return None;
            }
        };
        let nanos = match godur::parse_nanos(decision.duration) {
            Ok(nanos) if nanos > 0 => nanos as u64,
            _ => {
                self.skipped.duration += 1;
                return None;
            }
        };
        let expires_at = now
            .checked_add(Duration::from_nanos(nanos).min(FAR_FUTURE))
            .unwrap_or(now);
        self.earliest_expiry = Some(
            self.earliest_expiry
                .map_or(expires_at, |e| e.min(expires_at)),
        );
        let origin = self.intern(decision.origin);
        let scenario = self.intern(decision.scenario);
        let previous = self.decisions.insert(key, Active { item, expires_at });
        let wanted = self.wanted.entry(item).or_insert(Wanted {
            refs: 0,
            origin: origin.clone(),
            scenario: scenario.clone(),
        });
        (wanted.origin, wanted.scenario) = (origin, scenario);
        if previous.is_some() {
            return None;
        }
        wanted.refs += 1;
        (wanted.refs == 1).then_some(item)
    }

    fn forget(&mut self, key: &DecisionKey) {
        let Some(active) = self.decisions.remove(key) else {
            return;
        };
        let Some(wanted) = self.wanted.get_mut(&active.item) else {
            return;
        };
        wanted.refs -= 1;
        if wanted.refs == 0 {
            self.wanted.remove(&active.item);
            self.enqueue(active.item);
        }
    }

    /// The state key of a decision, or `None` (counted) if it is not ours to push.
    fn key_of(&mut self, decision: &DecisionRef<'_>, count: bool) -> Option<DecisionKey> {
        let range_scope = if decision.scope.eq_ignore_ascii_case("ip") {
            false
        } else if decision.scope.eq_ignore_ascii_case("range") {
            true
        } else {
            self.skipped.scope += u64::from(count);
            return None;
        };
        if !self
            .filter
            .decision_types
            .iter()
            .any(|t| t == decision.kind)
        {
            self.skipped.kind += u64::from(count);
            return None;
        }
        Some(DecisionKey {
            range_scope,
            value: decision.value.into(),
            kind: decision.kind.into(),
        })
    }

    fn intern(&mut self, label: &str) -> Arc<str> {
        if let Some(existing) = self.labels.get(label) {
            return existing.clone();
        }
        let label: Arc<str> = label.into();
        self.labels.insert(label.clone());
        label
    }

    fn enqueue(&mut self, item: Item) {
        if self.queued.insert(item) {
            self.queue.push_back(item);
        }
    }

    fn enqueue_all(&mut self, items: impl IntoIterator<Item = Item>) {
        for item in items {
            self.enqueue(item);
        }
    }
}

/// Sizes of the state, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub decisions: usize,
    pub desired_items: usize,
    pub listed_items: usize,
    pub queued: usize,
}

#[cfg(test)]
mod tests;
