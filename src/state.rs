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
use ipnet::IpNet;

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

/// Which decisions become items, and which items the bouncer may write.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Decision types pushed to the list (`ban`); others are skipped.
    pub decision_types: Vec<String>,
    /// IPv6 addresses and narrower networks are widened to this prefix.
    pub ipv6_prefix: u8,
    /// Ranges wider than these are refused.
    pub min_ipv4_prefix: u8,
    pub min_ipv6_prefix: u8,
    /// Networks never pushed, nor anything overlapping them.
    pub allowlist: Vec<IpNet>,
    /// Origins by priority, highest first, for when the desired set exceeds capacity.
    pub origin_priority: Vec<String>,
    /// `false`: only items carrying `tag` may be removed (`manage = "tagged"`).
    pub manage_all: bool,
    /// First word of every comment the bouncer writes.
    pub tag: String,
    /// Mass-removal guard: a reconcile removing more than `share` of the list and more
    /// than `min_items` items waits for the next reconcile to confirm it.
    pub mass_removal_share: f64,
    pub mass_removal_min_items: usize,
}

impl Policy {
    /// The defaults of the configuration file, for tests and tools.
    pub fn new(decision_types: Vec<String>, ipv6_prefix: u8) -> Policy {
        Policy {
            decision_types,
            ipv6_prefix,
            min_ipv4_prefix: 16,
            min_ipv6_prefix: 32,
            allowlist: Vec::new(),
            origin_priority: ["cscli", "crowdsec", "lists", "CAPI"]
                .map(String::from)
                .to_vec(),
            manage_all: true,
            tag: "crowdsec".into(),
            mass_removal_share: 0.5,
            mass_removal_min_items: 10,
        }
    }

    /// Rank of an origin: 0 is the highest. `cscli-import` ranks as `cscli`.
    fn origin_rank(&self, origin: &str) -> usize {
        self.origin_priority
            .iter()
            .position(|p| {
                origin.eq_ignore_ascii_case(p)
                    || origin
                        .strip_prefix(p.as_str())
                        .is_some_and(|rest| rest.starts_with('-'))
            })
            .unwrap_or(self.origin_priority.len())
    }

    fn is_tagged(&self, comment: Option<&str>) -> bool {
        comment.is_some_and(|c| c == self.tag || c.starts_with(&format!("{} ", self.tag)))
    }
}

/// Decisions skipped since start, by reason. Never fatal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Skipped {
    pub kind: u64,
    pub scope: u64,
    pub value: u64,
    pub too_broad: u64,
    pub duration: u64,
    pub allowlisted: u64,
}

impl Skipped {
    pub fn total(&self) -> u64 {
        self.kind + self.scope + self.value + self.too_broad + self.duration + self.allowlisted
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
    origin: Arc<str>,
}

/// An item on the list, as far as the bouncer knows.
#[derive(Debug, Clone)]
struct Listed {
    /// The Cloudflare item id, once a list read or search has shown it.
    id: Option<Box<str>>,
    /// Carries the bouncer's tag (or was added by it).
    ours: bool,
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
    policy: Policy,
    decisions: HashMap<DecisionKey, Active>,
    wanted: HashMap<Item, Wanted>,
    /// When the desired set exceeds capacity: the wanted items that fit, by priority.
    /// `None`: every wanted item fits.
    admitted: Option<HashSet<Item>>,
    capacity: usize,
    /// What the list holds, as far as completed operations and list reads tell.
    listed: HashMap<Item, Listed>,
    queue: VecDeque<Item>,
    queued: HashSet<Item>,
    /// Removals held by the mass-removal guard until the next reconcile confirms them.
    held: HashSet<Item>,
    mass_removal_seen: bool,
    /// Items whose one-item bulk operation failed; retried after the next list read.
    quarantined: HashSet<Item>,
    labels: HashSet<Arc<str>>,
    earliest_expiry: Option<Instant>,
    desired_known: bool,
    list_known: bool,
    skipped: Skipped,
    /// Refusals already reported, so each is logged once.
    noticed: HashSet<Box<str>>,
    notices: Vec<String>,
}

/// Most refusals remembered for log-once; beyond it, refusals are only counted.
const MAX_NOTICED: usize = 10_000;

impl SyncState {
    pub fn new(policy: Policy) -> SyncState {
        SyncState {
            policy,
            decisions: HashMap::new(),
            wanted: HashMap::new(),
            admitted: None,
            capacity: usize::MAX,
            listed: HashMap::new(),
            queue: VecDeque::new(),
            queued: HashSet::new(),
            held: HashSet::new(),
            mass_removal_seen: false,
            quarantined: HashSet::new(),
            labels: HashSet::new(),
            earliest_expiry: None,
            desired_known: false,
            list_known: false,
            skipped: Skipped::default(),
            noticed: HashSet::new(),
            notices: Vec::new(),
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

    /// Replaces the list view with a full read of the list (item, id, comment), queues
    /// every item where desired and listed differ, and runs the mass-removal guard.
    /// Quarantined items get another chance.
    pub fn replace_list<'a>(
        &mut self,
        items: impl IntoIterator<Item = (Item, Box<str>, Option<&'a str>)>,
    ) -> Drift {
        let policy = &self.policy;
        self.listed = items
            .into_iter()
            .map(|(item, id, comment)| {
                let ours = policy.is_tagged(comment);
                (item, Listed { id: Some(id), ours })
            })
            .collect();
        self.quarantined.clear();
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
        let mut drift = Drift::default();
        for item in &changed {
            match self.intent(item) {
                Some(Intent::Add) => drift.missing += 1,
                Some(Intent::Remove) => drift.extra += 1,
                None => {}
            }
        }
        self.enqueue_all(changed);
        self.list_known = true;
        self.guard_mass_removal();
        drift
    }

    /// Takes up to `max` queued items that need the same kind of write, oldest first.
    /// Items already in step leave the queue; so do held and quarantined ones. Returns
    /// `None` when nothing needs writing, or while desired state or list are unknown.
    pub fn take_batch(&mut self, max: usize) -> Option<Batch> {
        if !self.is_primed() || max == 0 {
            return None;
        }
        let mut kind = None;
        let mut taken = Vec::new();
        let mut skipped_other = Vec::new();
        while let Some(item) = self.queue.pop_front() {
            let intent = self
                .intent(&item)
                .filter(|_| !self.quarantined.contains(&item));
            match intent {
                Some(Intent::Remove) if self.held.contains(&item) => {
                    self.queued.remove(&item);
                }
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
                    .map(|item| (item, self.listed.get(&item).and_then(|l| l.id.clone())))
                    .collect(),
            )),
        }
    }

    /// Turns the mass-removal guard off (`cleanup`, which removes everything on purpose).
    pub fn disable_mass_removal_guard(&mut self) {
        self.policy.mass_removal_share = 1.0;
        self.policy.mass_removal_min_items = usize::MAX;
    }

    /// Puts items back at the front of the queue, in order (a write failed or was not
    /// attempted), so a retry takes the same items first.
    pub fn requeue(&mut self, items: impl IntoIterator<Item = Item>) {
        let items: Vec<Item> = items.into_iter().collect();
        for item in items.into_iter().rev() {
            if self.queued.insert(item) {
                self.queue.push_front(item);
            }
        }
    }

    /// Sets an item aside after its one-item bulk operation failed: it is retried after
    /// the next full list read, and does not block the rest of the queue meanwhile.
    pub fn quarantine(&mut self, item: Item) {
        self.quarantined.insert(item);
    }

    /// Records a completed bulk operation: only this changes the list view.
    pub fn confirm(&mut self, outcome: Confirmed, items: &[Item]) {
        for item in items {
            match outcome {
                // The POST response carries no ids; a later read or search finds them.
                Confirmed::Added => {
                    self.listed.insert(
                        *item,
                        Listed {
                            id: None,
                            ours: true,
                        },
                    );
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
        match (id, self.listed.get_mut(&item)) {
            (Some(id), Some(listed)) => listed.id = Some(id),
            (Some(id), None) => {
                self.listed.insert(
                    item,
                    Listed {
                        id: Some(id),
                        ours: true,
                    },
                );
            }
            (None, _) => {
                self.listed.remove(&item);
            }
        }
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

    /// Items that should be on the list (desired, within capacity), sorted.
    pub fn desired_items(&self) -> Vec<Item> {
        let mut items: Vec<Item> = self
            .wanted
            .keys()
            .filter(|item| self.is_admitted(item))
            .copied()
            .collect();
        items.sort();
        items
    }

    /// Items on the list that the bouncer manages (all of them in `manage = "all"`).
    pub fn managed_listed_items(&self) -> Vec<Item> {
        let mut items: Vec<Item> = self
            .listed
            .iter()
            .filter(|(_, listed)| self.policy.manage_all || listed.ours)
            .map(|(item, _)| *item)
            .collect();
        items.sort();
        items
    }

    pub fn counts(&self) -> Counts {
        Counts {
            decisions: self.decisions.len(),
            desired_items: self.wanted.len(),
            listed_items: self.listed.len(),
            listed_without_id: self.listed.values().filter(|l| l.id.is_none()).count(),
            queued: self.queue.len(),
            left_out: self
                .admitted
                .as_ref()
                .map_or(0, |a| self.wanted.len() - a.len()),
            held: self.held.len(),
            quarantined: self.quarantined.len(),
        }
    }

    pub fn skipped(&self) -> Skipped {
        self.skipped
    }

    /// Queued adds and removes that would be sent now (a scan of the queue).
    pub fn pending_changes(&self) -> (usize, usize) {
        let (mut adds, mut removes) = (0, 0);
        for item in &self.queue {
            match self.intent(item) {
                Some(Intent::Add) if !self.quarantined.contains(item) => adds += 1,
                Some(Intent::Remove)
                    if !self.held.contains(item) && !self.quarantined.contains(item) =>
                {
                    removes += 1
                }
                _ => {}
            }
        }
        (adds, removes)
    }

    /// Active decisions by origin (cscli, crowdsec, lists, CAPI, other) and IP type.
    pub fn active_by_origin(&self) -> Vec<(&'static str, &'static str, usize)> {
        const ORIGINS: [&str; 5] = ["cscli", "crowdsec", "lists", "CAPI", "other"];
        let mut counts = [[0usize; 2]; 5];
        for active in self.decisions.values() {
            let origin = ORIGINS[..4]
                .iter()
                .position(|o| {
                    active.origin.eq_ignore_ascii_case(o)
                        || active
                            .origin
                            .strip_prefix(o)
                            .is_some_and(|rest| rest.starts_with('-'))
                })
                .unwrap_or(4);
            counts[origin][usize::from(active.item.is_ipv6())] += 1;
        }
        let mut out = Vec::new();
        for (origin, by_type) in ORIGINS.iter().zip(counts) {
            for (ip_type, n) in ["ipv4", "ipv6"].iter().zip(by_type) {
                out.push((*origin, *ip_type, n));
            }
        }
        out
    }

    /// Refusals and guard decisions worth one log line each, since the last call.
    pub fn take_notices(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notices)
    }

    fn intent(&self, item: &Item) -> Option<Intent> {
        let desired = self.wanted.contains_key(item) && self.is_admitted(item);
        match (desired, self.listed.get(item)) {
            (true, None) => Some(Intent::Add),
            (false, Some(listed)) if self.policy.manage_all || listed.ours => Some(Intent::Remove),
            _ => None,
        }
    }

    fn comment(&self, item: &Item) -> String {
        let Some(wanted) = self.wanted.get(item) else {
            return String::new();
        };
        let mut comment = format!("{} {}: {}", self.policy.tag, wanted.origin, wanted.scenario);
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
        let item = match Item::from_decision(decision.value, self.policy.ipv6_prefix) {
            Ok(item) => item,
            Err(ItemError::Invalid) => {
                self.skipped.value += 1;
                return None;
            }
            Err(ItemError::TooBroad) => {
                self.refuse(decision, "a range wider than Cloudflare accepts");
                self.skipped.too_broad += 1;
                return None;
            }
        };
        if !self.passes_rails(decision, item) {
            return None;
        }
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
        let active = Active {
            item,
            expires_at,
            origin: origin.clone(),
        };
        let previous = self.decisions.insert(key, active);
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

    /// The safety rails: broad ranges and the allowlist. Refusals are counted, and
    /// reported once per value.
    fn passes_rails(&mut self, decision: &DecisionRef<'_>, item: Item) -> bool {
        let net = item.net();
        let min_prefix = if item.is_ipv6() {
            self.policy.min_ipv6_prefix
        } else {
            self.policy.min_ipv4_prefix
        };
        if net.prefix_len() < min_prefix {
            self.refuse(
                decision,
                &format!("a range wider than /{min_prefix} (safety.min_ipv*_prefix)"),
            );
            self.skipped.too_broad += 1;
            return false;
        }
        let allowed = self
            .policy
            .allowlist
            .iter()
            .find(|allow| allow.contains(&net) || net.contains(*allow));
        if let Some(allow) = allowed {
            let reason = format!("it overlaps the allowlisted {allow}");
            self.refuse(decision, &reason);
            self.skipped.allowlisted += 1;
            return false;
        }
        true
    }

    fn refuse(&mut self, decision: &DecisionRef<'_>, reason: &str) {
        if self.noticed.len() < MAX_NOTICED && self.noticed.insert(decision.value.into()) {
            self.notices.push(format!(
                "decision on {} ({}, origin {}) is not pushed: {reason}",
                decision.value, decision.scenario, decision.origin
            ));
        }
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
            .policy
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

/// What a full list read found out of step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drift {
    /// Desired items missing from the list.
    pub missing: usize,
    /// Listed items the bouncer manages that are not desired.
    pub extra: usize,
}

/// Sizes of the state, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub decisions: usize,
    pub desired_items: usize,
    pub listed_items: usize,
    /// Listed items whose Cloudflare id is not known yet (added since the last read).
    pub listed_without_id: usize,
    pub queued: usize,
    /// Desired items left out because the account's capacity is reached.
    pub left_out: usize,
    /// Removals held by the mass-removal guard.
    pub held: usize,
    /// Items whose bulk operation failed on their own, waiting for the next read.
    pub quarantined: usize,
}

#[cfg(test)]
mod proptests;
mod rails;
#[cfg(test)]
mod tests;
