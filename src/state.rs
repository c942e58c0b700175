//! The bouncer's whole picture of the world, with no IO: which items LAPI wants on the
//! list (desired), which items the bouncer believes the list holds (list view), and the
//! pending queue of items where the two may differ.
//!
//! The pending queue holds *items*, not intents. The intent (add or remove) is read from
//! desired vs. list view when a batch is taken, so the latest intent always wins and an
//! add cancelled before it was sent costs nothing. Only a completed bulk operation
//! changes the list view ([`SyncState::confirm`]).

use std::collections::VecDeque;

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::sync::Arc;
use std::time::Instant;

use ipnet::IpNet;

use crate::item::Item;

pub use desired::{decision_item, Desired};
use listed::{Listed, ListedItems};

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

/// `cloudflare.origin_priority`'s default, highest first: a person's decisions (cscli,
/// CrowdSec's console), then the engine's, then blocklists, then the community's.
pub const DEFAULT_ORIGIN_PRIORITY: [&str; 6] = [
    "cscli",
    "console",
    "crowdsec",
    "lists",
    "remediation_sync",
    "CAPI",
];

/// One list of an account, as the state sees it: the kind of its items and the decision
/// types it takes. Its index in [`Policy::lanes`] is the lane of its items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lane {
    /// An `asn` list (AS decisions) rather than an `ip` list (Ip and Range decisions).
    pub asn: bool,
    pub decision_types: Vec<String>,
}

/// Which decisions become items, and which items the bouncer may write.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Decision types pushed to the lists (`ban`), strongest first: an item wanted by
    /// decisions of several types goes to the list of the strongest. Others are skipped.
    decision_types: Vec<String>,
    /// The account's lists, in their configured order.
    lanes: Vec<Lane>,
    /// The lane of each (decision type, on an AS number), by type index.
    routes: Vec<[Option<usize>; 2]>,
    /// AS numbers never pushed (`safety.allowlist` entries like `AS13335`).
    pub allowlist_asns: Vec<u32>,
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
    /// The defaults of the configuration file, for tests and tools: one IP list taking
    /// `decision_types`.
    pub fn new(decision_types: Vec<String>, ipv6_prefix: u8) -> Policy {
        Policy {
            decision_types: Vec::new(),
            lanes: Vec::new(),
            routes: Vec::new(),
            allowlist_asns: Vec::new(),
            ipv6_prefix,
            min_ipv4_prefix: 16,
            min_ipv6_prefix: 32,
            allowlist: Vec::new(),
            origin_priority: DEFAULT_ORIGIN_PRIORITY.map(String::from).to_vec(),
            manage_all: true,
            tag: "crowdsec".into(),
            mass_removal_share: 0.5,
            mass_removal_min_items: 10,
        }
        .with_lanes(vec![Lane {
            asn: false,
            decision_types,
        }])
    }

    /// The account's lists. A decision type's strength: `ban` first, then the order in
    /// which the lists name the types.
    #[must_use]
    pub fn with_lanes(mut self, lanes: Vec<Lane>) -> Policy {
        let mut types: Vec<String> = Vec::new();
        let named = lanes.iter().flat_map(|lane| &lane.decision_types);
        for kind in named.clone().filter(|t| *t == "ban").chain(named) {
            if !types.contains(kind) {
                types.push(kind.clone());
            }
        }
        self.routes = (types.iter())
            .map(|kind| {
                let lane = |asn: bool| {
                    (lanes.iter()).position(|l| l.asn == asn && l.decision_types.contains(kind))
                };
                [lane(false), lane(true)]
            })
            .collect();
        self.decision_types = types;
        self.lanes = lanes;
        self
    }

    /// The lane of decision type `kind` (an index in [`Policy::decision_types`]) for IP
    /// items or, with `asn`, AS numbers; `None`: no list takes it.
    pub fn route(&self, kind: usize, asn: bool) -> Option<usize> {
        self.routes.get(kind)?[usize::from(asn)]
    }

    /// Whether some list holds AS numbers.
    pub fn has_asn_lane(&self) -> bool {
        self.lanes.iter().any(|lane| lane.asn)
    }

    /// The lanes holding items of `item`'s kind.
    pub fn lanes_for(&self, item: &Item) -> impl Iterator<Item = usize> + '_ {
        let asn = item.is_asn();
        (self.lanes.iter().enumerate())
            .filter(move |(_, lane)| lane.asn == asn)
            .map(|(i, _)| i)
    }

    /// Rank of an origin: 0 is the highest. `cscli-import` ranks as `cscli`.
    fn origin_rank(&self, origin: &str) -> usize {
        self.origin_priority
            .iter()
            .position(|p| origin_matches(origin, p))
            .unwrap_or(self.origin_priority.len())
    }

    fn is_tagged(&self, comment: Option<&str>) -> bool {
        // No text is built: this runs for every item of every list read.
        comment
            .and_then(|c| c.strip_prefix(&*self.tag))
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(' '))
    }
}

/// Whether `origin` is `name`, or a variant of it (`cscli-import` of `cscli`).
fn origin_matches(origin: &str, name: &str) -> bool {
    origin.eq_ignore_ascii_case(name)
        || origin
            .strip_prefix(name)
            .is_some_and(|rest| rest.starts_with('-'))
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
    /// Loopback, unspecified, broadcast and multicast addresses: never a client.
    pub not_client: u64,
}

impl Skipped {
    fn add(&mut self, other: &Skipped) {
        self.kind += other.kind;
        self.scope += other.scope;
        self.value += other.value;
        self.too_broad += other.too_broad;
        self.duration += other.duration;
        self.allowlisted += other.allowlisted;
        self.not_client += other.not_client;
    }

    pub fn total(&self) -> u64 {
        self.kind
            + self.scope
            + self.value
            + self.too_broad
            + self.duration
            + self.allowlisted
            + self.not_client
    }
}

/// One write for the drainer: all adds or all removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Batch {
    /// Items to POST, each with its comment (one text shared by the items of one
    /// origin and scenario).
    Add(Vec<(Item, Arc<str>)>),
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Intent {
    Add,
    Remove,
}

/// The lane `wanted`'s decisions put its value on (within capacity or not): its best
/// type's list for its kind; `None` if no list takes it.
fn lane_in(policy: &Policy, desired: &Desired, wanted: &desired::Wanted) -> Option<usize> {
    policy.route(
        usize::from(desired.best_type(wanted)),
        wanted.item().is_asn(),
    )
}

/// What decides an item's write, looked up once ([`SyncState::look`]).
#[derive(Debug, Clone, Copy)]
struct Look {
    /// Decisions want the item on this lane (within capacity or not).
    desires: bool,
    /// ... and it is admitted when over capacity: it should be on the list.
    wants: bool,
    intent: Option<Intent>,
    /// The comment labels (origin, scenario) of its latest decision, if it has one: what
    /// an add's comment is made of, without a second lookup.
    labels: Option<(u32, u32)>,
}

/// Desired state, list view and pending queue. See the module docs.
#[derive(Debug)]
pub struct SyncState {
    policy: Arc<Policy>,
    /// Expiries count from here.
    epoch: Instant,
    desired: Desired,
    /// The desired set exceeds capacity: only items marked admitted are wanted (see
    /// [`Desired::admit`]).
    over_capacity: bool,
    capacity: usize,
    /// The desired state or capacity changed since admission was last computed.
    admission_stale: bool,
    /// What the list holds, as far as completed operations and list reads tell.
    listed: ListedItems,
    queue: VecDeque<Item>,
    /// The queued items, each with the write it needed when last looked at: what
    /// [`SyncState::pending_changes`] counts without scanning the queue.
    queued: HashMap<Item, Option<Intent>>,
    /// Queued items that needed an add, and a remove, when last looked at.
    queued_adds: usize,
    queued_removes: usize,
    /// Removals held by the mass-removal guard until the next reconcile confirms them.
    held: HashSet<Item>,
    mass_removal_seen: bool,
    /// Items whose one-item bulk operation failed; retried after the next list read.
    quarantined: HashSet<Item>,
    /// Items LAPI is known to have dropped: a delta deleted their decisions, they
    /// expired here, or a confirming read found none. Only these leave the list
    /// (see [`SyncState::awaiting_confirmation`]).
    gone: HashSet<Item>,
    /// Listed items no full pull wants any more, whose removal waits for a confirming
    /// read: a full pull may be cut short (docs/lapi.md §9.1), so its word alone never
    /// removes anything.
    awaiting: HashSet<Item>,
    /// Items some of whose decisions a full pull left out while others remain: when
    /// the last one goes, the item's removal waits for a confirming read too.
    doubtful: HashSet<Item>,
    /// Removals are trusted without confirmation (`cleanup`, which removes on purpose).
    trust_full_pulls: bool,
    /// No removal is sent while this is set (another writer is suspected).
    removals_paused: bool,
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
        let epoch = Instant::now();
        let ipv6_prefix = policy.ipv6_prefix;
        let types = policy.decision_types.len();
        SyncState {
            policy: Arc::new(policy),
            epoch,
            desired: Desired::new(epoch, ipv6_prefix).with_types(types),
            over_capacity: false,
            capacity: usize::MAX,
            admission_stale: true,
            listed: ListedItems::default(),
            queue: VecDeque::new(),
            queued: HashMap::default(),
            queued_adds: 0,
            queued_removes: 0,
            held: HashSet::default(),
            mass_removal_seen: false,
            quarantined: HashSet::default(),
            gone: HashSet::default(),
            awaiting: HashSet::default(),
            doubtful: HashSet::default(),
            trust_full_pulls: false,
            removals_paused: false,
            desired_known: false,
            list_known: false,
            skipped: Skipped::default(),
            noticed: HashSet::default(),
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
            if let Some(item) = self.desired.forget(&self.policy, &decision) {
                self.mark_value_gone(item);
                self.enqueue_value(item);
            }
            self.admission_stale = true;
        }
        for decision in new {
            if let Some(item) = self.desired.insert(&self.policy, &decision, now) {
                if let Some(lane) = self.lane_of(&item) {
                    self.gone.remove(&item.on(lane));
                }
                self.enqueue_value(item);
            }
            self.admission_stale = true;
        }
        self.settle_moves();
        self.collect_refusals();
    }

    /// Items whose strongest decision type changed move to that type's list: the list
    /// they leave lost them by LAPI's word (a delta, an expiry, or a stronger decision).
    fn settle_moves(&mut self) {
        for item in std::mem::take(&mut self.desired.moved) {
            let lane = self.lane_of(&item);
            let policy = Arc::clone(&self.policy);
            for key in policy.lanes_for(&item).map(|l| item.on(l)) {
                if Some(key.lane()) == lane {
                    self.gone.remove(&key);
                } else {
                    self.mark_gone(key);
                }
            }
            self.enqueue_value(item);
        }
    }

    /// The lane a desired value's decisions put it on; `None` if not desired.
    fn lane_of(&self, value: &Item) -> Option<usize> {
        let wanted = self.desired.get(&value.bare())?;
        lane_in(&self.policy, &self.desired, wanted)
    }

    /// Whether decisions want `key` on its lane (within capacity or not).
    fn desires(&self, key: &Item) -> bool {
        self.lane_of(key) == Some(key.lane())
    }

    /// No decision wants `value` any more (a delta or an expiry): on any list.
    fn mark_value_gone(&mut self, value: Item) {
        let policy = Arc::clone(&self.policy);
        for lane in policy.lanes_for(&value) {
            self.mark_gone(value.on(lane));
        }
    }

    /// [`SyncState::enqueue`] for a value, on every list of its kind.
    fn enqueue_value(&mut self, value: Item) {
        // A shared handle, not a list of keys: this runs for every decision of a pull.
        let policy = Arc::clone(&self.policy);
        for lane in policy.lanes_for(&value) {
            self.enqueue(value.on(lane));
        }
    }

    /// Replaces the desired state with a full pull (`startup=true`'s `new`). Items that
    /// appear or disappear are queued. A failed pull must never reach this function.
    pub fn replace_desired<'a>(
        &mut self,
        new: impl IntoIterator<Item = DecisionRef<'a>>,
        now: Instant,
    ) {
        let mut desired = self.new_desired();
        for decision in new {
            desired.insert(&self.policy, &decision, now);
        }
        self.replace_desired_with(desired);
    }

    /// An empty desired state to build from a full pull, off to the side (another
    /// thread, while the response arrives), with [`Desired::insert`] and this policy.
    pub fn new_desired(&self) -> Desired {
        Desired::new(self.epoch, self.policy.ipv6_prefix)
            .with_types(self.policy.decision_types.len())
            .with_room_of(&self.desired)
    }

    /// The policy decisions are judged by, for building a [`Desired`].
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.clone()
    }

    /// Swaps in a desired state built from a full pull; queues what changed.
    ///
    /// Items the old state wanted and the new one lacks are not removed on the pull's
    /// word: their removal waits for a confirming read ([`SyncState::awaiting_confirmation`]).
    /// Decisions that expired here before the swap are removed as usual.
    pub fn replace_desired_with(&mut self, desired: Desired) {
        self.expire(Instant::now());
        let old = std::mem::replace(&mut self.desired, desired);
        // Moves while the pull was parsed are no one's word: the comparison below finds them.
        self.desired.moved.clear();
        self.desired_known = true;
        let gone = std::mem::take(&mut self.gone);
        self.gone = gone.into_iter().filter(|key| !self.desires(key)).collect();
        // A new desired state carries no admission marks yet: admit now, then queue
        // whatever needs a write, among the items either state wants.
        let was_over = self.over_capacity;
        self.admission_stale = true;
        // What changed is found below, by comparing the two states.
        self.admit(false);
        let policy = self.policy.clone();
        // The lane an item is wanted on (within capacity), if any.
        let lane = |desired: &Desired, wanted: &desired::Wanted| lane_in(&policy, desired, wanted);
        // The lane of an entry in hand, within capacity.
        let entry_on = |desired: &Desired, over: bool, wanted: &desired::Wanted| {
            Some(wanted)
                .filter(|wanted| !over || wanted.admitted())
                .and_then(|wanted| lane(desired, wanted))
        };
        let wanted_on = |desired: &Desired, over: bool, item: &Item| {
            (desired.get(item)).and_then(|wanted| entry_on(desired, over, wanted))
        };
        let (new, over) = (&self.desired, self.over_capacity);
        let changed: Vec<Item> = (old.items.iter())
            .filter(|wanted| {
                entry_on(&old, was_over, wanted) != wanted_on(new, over, wanted.item())
            })
            .chain((new.items.iter()).filter(|wanted| {
                entry_on(new, over, wanted).is_some() && !old.contains(wanted.item())
            }))
            .map(|wanted| *wanted.item())
            .collect();
        // Items the old state wanted and this pull lacks, or puts on another list, are
        // confirmed with LAPI, listed or not: one not listed yet was an add this pull may
        // have cancelled by mistake, and a ban the pull left out beside a captcha would
        // otherwise weaken to a challenge.
        if !self.trust_full_pulls {
            for wanted in old.items.iter() {
                let item = wanted.item();
                let Some(was) = lane(&old, wanted) else {
                    continue;
                };
                let key = item.on(was);
                match self.desired.get(item) {
                    None if !self.gone.contains(&key) => {
                        self.awaiting.insert(key);
                    }
                    Some(now)
                        if lane(&self.desired, now) != Some(was) && !self.gone.contains(&key) =>
                    {
                        self.awaiting.insert(key);
                    }
                    Some(now) if now.decisions() < wanted.decisions() => {
                        self.doubtful.insert(key);
                    }
                    _ => {}
                }
            }
        }
        drop(old);
        for item in changed {
            self.enqueue_value(item);
        }
        self.collect_refusals();
    }

    /// Drops decisions whose duration has run out, so a missed delete cannot keep a
    /// ban forever. Returns how many expired.
    pub fn expire(&mut self, now: Instant) -> usize {
        let (gone, expired) = self.desired.expire(now);
        self.admission_stale |= expired > 0;
        for item in gone {
            self.mark_value_gone(item);
            self.enqueue_value(item);
        }
        self.settle_moves();
        expired
    }

    /// Moves the desired state's refusal counts and reasons into the totals and notices.
    fn collect_refusals(&mut self) {
        let skipped = std::mem::take(&mut self.desired.skipped);
        self.skipped.add(&skipped);
        for (value, reason) in std::mem::take(&mut self.desired.refusals) {
            if self.noticed.len() < MAX_NOTICED && self.noticed.insert(value.clone()) {
                self.notices
                    .push(format!("decision on {value} is not pushed: {reason}"));
            }
        }
    }

    /// Replaces the list view with a full read of the list (item, id, comment), queues
    /// every item where desired and listed differ, and runs the mass-removal guard.
    /// Quarantined items get another chance.
    pub fn replace_list<'a>(
        &mut self,
        items: impl IntoIterator<Item = (Item, Box<str>, Option<&'a str>)>,
    ) -> Drift {
        let mut view = self.new_list_view();
        for (item, id, comment) in items {
            view.insert(item, &id, comment);
        }
        self.replace_list_with(view)
    }

    /// An empty list view to fill from a list read, page by page, off the lock.
    pub fn new_list_view(&self) -> ListView {
        ListView {
            policy: self.policy.clone(),
            items: ListedItems::default(),
        }
    }

    /// Swaps in a complete list read; see [`SyncState::replace_list`].
    pub fn replace_list_with(&mut self, view: ListView) -> Drift {
        // Items carrying the bouncer's tag that appeared since the last read without
        // this process writing them: another writer with the same tag.
        let foreign_tagged = if self.list_known {
            (view.items.iter())
                .filter(|listed| listed.ours() && !self.listed.contains(listed.item()))
                .count()
        } else {
            0
        };
        // Undone: wanted items the bouncer believed listed (a read showed them, or its own
        // add completed) that this read lacks. An item Cloudflare keeps refusing was never
        // listed, so it never counts.
        let undone_fingerprint = (self.listed.items())
            .filter(|item| !view.items.contains(item) && self.wants(item))
            .fold(0, |print, item| print ^ fingerprint(item));
        self.listed = view.items;
        self.quarantined.clear();
        let listed = &self.listed;
        self.gone.retain(|item| listed.contains(item));
        let doubtful = std::mem::take(&mut self.doubtful);
        self.doubtful = (doubtful.into_iter())
            .filter(|key| self.listed.contains(key) || self.desires(key))
            .collect();
        let mut changed = Vec::new();
        let mut desired_listed = 0;
        for key in self.listed.items() {
            if self.desires(key) {
                desired_listed += 1;
            } else {
                changed.push(*key);
            }
        }
        // Each listed item decisions want is a different wanted entry's key: when as
        // many are listed as entries have a lane, none is missing, and the pass that
        // looks each one up in the list (one cache miss an entry) is not needed.
        let lanes = &|wanted| lane_in(&self.policy, &self.desired, wanted);
        let with_lane = (self.desired.items.iter())
            .filter(|wanted| lanes(wanted).is_some())
            .count();
        if desired_listed < with_lane {
            changed.extend((self.desired.items.iter()).filter_map(|wanted| {
                // The entry in hand gives the lane: no lookup of the item again.
                let key = wanted.item().on(lanes(wanted)?);
                (!self.listed.contains(&key)).then_some(key)
            }));
        }
        let mut drift = Drift {
            foreign_tagged,
            undone_fingerprint,
            ..Drift::default()
        };
        // Known from here on: what follows queues.
        self.list_known = true;
        // Items the new read no longer shows may still be queued for a removal.
        self.refresh_queue();
        for item in changed {
            let look = self.look(&item);
            match look.intent {
                Some(Intent::Add) => drift.missing += 1,
                Some(Intent::Remove) => drift.extra += 1,
                None => {}
            }
            self.enqueue_looked(item, false, look);
        }
        self.guard_mass_removal();
        drift
    }

    /// Takes up to `max` queued items of one list that need the same kind of write, oldest
    /// first.
    /// Items already in step leave the queue; so do held and quarantined ones. Returns
    /// `None` when nothing needs writing, or while desired state or list are unknown.
    ///
    /// When the adds queued would not fit in what the account has left, removals go
    /// first (an admission change queues both: the removals make the room), and an add
    /// batch takes no more than the room there is.
    pub fn take_batch(&mut self, max: usize) -> Option<Batch> {
        if !self.is_primed() || max == 0 {
            return None;
        }
        let room = self.capacity.saturating_sub(self.listed.len());
        if self.queued_removes > 0 && self.queued_adds > room {
            if let Some(batch) = self.take_batch_of(max, Some(Intent::Remove)) {
                return Some(batch);
            }
        }
        self.take_batch_of(max, None)
    }

    /// [`SyncState::take_batch`] of `only` that intent, or of the first one found; adds no
    /// more than the account's room (when there is any: else Cloudflare says why).
    fn take_batch_of(&mut self, max: usize, only: Option<Intent>) -> Option<Batch> {
        let room = self.capacity.saturating_sub(self.listed.len());
        let max_adds = if room > 0 { max.min(room) } else { max };
        let mut kind = only;
        let mut lane = None;
        let mut taken = Vec::new();
        let mut skipped_other = Vec::new();
        while let Some(item) = self.queue.pop_front() {
            // Held, paused, unconfirmed and quarantined items leave the queue too.
            let look = self.look(&item);
            let unconfirmed = self.unconfirmed(&item, &look);
            match self.pending_of(&item, &look, unconfirmed) {
                None => {
                    if look.intent == Some(Intent::Remove) && unconfirmed {
                        self.awaiting.insert(item);
                    }
                    self.unqueue(&item);
                }
                Some(intent)
                    if kind.is_none_or(|k| k == intent)
                        && lane.is_none_or(|l| l == item.lane()) =>
                {
                    kind = Some(intent);
                    lane = Some(item.lane());
                    self.unqueue(&item);
                    taken.push((item, look.labels));
                    let cap = if intent == Intent::Add { max_adds } else { max };
                    if taken.len() >= cap {
                        break;
                    }
                }
                Some(_) => skipped_other.push(item),
            }
        }
        for item in skipped_other.into_iter().rev() {
            self.queue.push_front(item);
        }
        if self.queue.is_empty() && self.queue.capacity() > 4096 {
            // A big sync is over: give the memory back.
            self.queue = VecDeque::new();
            self.queued = HashMap::default();
        }
        if taken.is_empty() {
            return None;
        }
        match kind? {
            Intent::Add => {
                let mut made = HashMap::default();
                Some(Batch::Add(
                    (taken.into_iter())
                        .map(|(item, labels)| (item, self.comment(labels, &mut made)))
                        .collect(),
                ))
            }
            Intent::Remove => Some(Batch::Remove(
                taken
                    .into_iter()
                    .map(|(item, _)| (item, self.listed.id(&item)))
                    .collect(),
            )),
        }
    }

    /// Turns the mass-removal guard off (`cleanup`, which removes everything on purpose).
    pub fn disable_mass_removal_guard(&mut self) {
        let policy = Arc::make_mut(&mut self.policy);
        policy.mass_removal_share = 1.0;
        policy.mass_removal_min_items = usize::MAX;
    }

    /// Puts items back at the front of the queue, in order (a write failed or was not
    /// attempted), so a retry takes the same items first.
    pub fn requeue(&mut self, items: impl IntoIterator<Item = Item>) {
        let items: Vec<Item> = items.into_iter().collect();
        for item in items.into_iter().rev() {
            self.enqueue_at(item, true);
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
            // What the list now holds of it: known without looking it up again.
            let ours = match outcome {
                // The POST response carries no ids; a later read or search finds them.
                Confirmed::Added => {
                    self.listed.insert(*item, None, true);
                    Some(true)
                }
                Confirmed::Removed => {
                    self.listed.remove(item);
                    self.gone.remove(item);
                    None
                }
            };
            // Desired state may have moved while the operation ran.
            let look = self.look_with(item, ours);
            self.enqueue_looked(*item, false, look);
        }
    }

    /// Records what a search for one item found: its id, or that it is not on the list.
    pub fn resolve_id(&mut self, item: Item, id: Option<Box<str>>) {
        match id {
            Some(id) => {
                if !self.listed.set_id(&item, &id) {
                    self.listed.insert(item, Some(&id), true);
                }
            }
            None => {
                self.listed.remove(&item);
                self.gone.remove(&item);
            }
        }
        // Found missing, an item the bouncer thought it had added needs adding again.
        self.enqueue(item);
    }

    /// Forgets the list: nothing is written until the next full read. For a writer that
    /// starts a new term after another instance wrote (`ha.rs`): what it knew of the
    /// list is stale, and the other's items are not a foreign writer's.
    pub fn forget_list(&mut self) {
        self.listed = ListedItems::default();
        self.list_known = false;
    }

    /// True when the first full pull and the first list read have both happened.
    pub fn is_primed(&self) -> bool {
        self.desired_known && self.list_known
    }

    /// True when nothing is queued (every queued item was found in step).
    pub fn is_drained(&mut self) -> bool {
        self.refresh_queue();
        self.queue.is_empty()
    }

    /// Drops the queued items recorded as needing no write. Every change that decides an
    /// item's write queues it again, so the records are current: no look is needed.
    fn drop_settled(&mut self) {
        let mut queue = std::mem::take(&mut self.queue);
        queue.retain(|item| self.still_queued(item));
        self.queue = queue;
    }

    /// Whether `item`'s record says it needs a write; if not, forgets that it is queued
    /// (the caller drops it from the queue).
    fn still_queued(&mut self, item: &Item) -> bool {
        let needed = self.queued.get(item).is_some_and(Option::is_some);
        if !needed {
            self.unqueue(item);
        }
        needed
    }

    /// Looks at every queued item again, recording the write it needs now; those that
    /// need none leave the queue (as [`SyncState::take_batch`] would drop them).
    fn refresh_queue(&mut self) {
        let mut queue = std::mem::take(&mut self.queue);
        queue.retain(|&item| {
            // Already queued: this only records what it needs now.
            self.enqueue(item);
            self.still_queued(&item)
        });
        self.queue = queue;
    }

    /// Items that should be on the lists (desired, within capacity), each on its lane,
    /// sorted.
    pub fn desired_items(&self) -> Vec<Item> {
        let mut items: Vec<Item> = (self.desired.items.iter())
            .filter(|wanted| !self.over_capacity || wanted.admitted())
            .filter_map(|wanted| Some(wanted.item().on(self.lane_of(wanted.item())?)))
            .collect();
        items.sort();
        items
    }

    /// How far the lists are from [`SyncState::desired_items`]: (how many items are
    /// wanted, those of them the lists lack, managed items they hold that nothing wants).
    /// The comparison of the two sorted vectors, by lookups in place: neither is built.
    pub fn out_of_step(&self) -> (usize, usize, usize) {
        let policy = &self.policy;
        let managed = |key: &Item| {
            (self.listed.get(key)).is_some_and(|listed| policy.manage_all || listed.ours())
        };
        let (mut wanted_items, mut missing) = (0, 0);
        let wanted_keys = (self.desired.items.iter())
            .filter(|wanted| !self.over_capacity || wanted.admitted())
            .filter_map(|wanted| Some(wanted.item().on(lane_in(policy, &self.desired, wanted)?)));
        for key in wanted_keys {
            wanted_items += 1;
            missing += usize::from(!managed(&key));
        }
        let extra = (self.listed.iter())
            .filter(|listed| policy.manage_all || listed.ours())
            .filter(|listed| !self.wants(listed.item()))
            .count();
        (wanted_items, missing, extra)
    }

    /// Items on the list that the bouncer manages (all of them in `manage = "all"`).
    pub fn managed_listed_items(&self) -> Vec<Item> {
        let mut items: Vec<Item> = (self.listed.iter())
            .filter(|listed| self.policy.manage_all || listed.ours())
            .map(|listed| *listed.item())
            .collect();
        items.sort();
        items
    }

    pub fn counts(&self) -> Counts {
        Counts {
            decisions: self.desired.decision_count(),
            desired_items: self.desired.len(),
            listed_items: self.listed.len(),
            listed_without_id: self.listed.iter().filter(|l| !l.has_id()).count(),
            queued: self.queue.len(),
            left_out: self.left_out(),
            held: self.held.len(),
            quarantined: self.quarantined.len(),
            awaiting_confirmation: self.awaiting.len(),
            capacity: (self.capacity != usize::MAX).then_some(self.capacity),
        }
    }

    pub fn skipped(&self) -> Skipped {
        self.skipped
    }

    /// Queued adds and removes, as of when each item was last looked at (when queued,
    /// and after every list read); the writer looks again before sending.
    pub fn pending_changes(&self) -> (usize, usize) {
        (self.queued_adds, self.queued_removes)
    }

    /// [`SyncState::pending_changes`] the slow way, for tests: a scan of the queue.
    #[cfg(test)]
    fn scan_pending(&self) -> (usize, usize) {
        assert_eq!(self.queue.len(), self.queued.len(), "queue and set agree");
        let pending: Vec<Intent> = self.queue.iter().filter_map(|i| self.pending(i)).collect();
        let adds = pending.iter().filter(|i| **i == Intent::Add).count();
        (adds, pending.len() - adds)
    }

    /// Active decisions by origin (cscli, console, crowdsec, lists, remediation_sync,
    /// CAPI, other) and IP type.
    pub fn active_by_origin(&self) -> Vec<(&'static str, &'static str, usize)> {
        // The origins of the default priority have a label each; the rest are "other".
        const OTHER: usize = DEFAULT_ORIGIN_PRIORITY.len();
        let class = |origin: &str| {
            DEFAULT_ORIGIN_PRIORITY
                .iter()
                .position(|o| origin_matches(origin, o))
                .unwrap_or(OTHER)
        };
        let classes: Vec<usize> = self.desired.labels.all().map(class).collect();
        let mut counts = [[0usize; 2]; OTHER + 1];
        for (origin, ipv6) in self.desired.decisions() {
            let origin = classes.get(origin as usize).copied().unwrap_or(OTHER);
            counts[origin][usize::from(ipv6)] += 1;
        }
        let mut out = Vec::new();
        let labels = DEFAULT_ORIGIN_PRIORITY.iter().chain(&["other"]);
        for (origin, by_type) in labels.zip(counts) {
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

    /// Whether `key` should be on its list: desired there, and admitted when over capacity.
    fn wants(&self, key: &Item) -> bool {
        self.look(key).wants
    }

    /// What decides `key`'s write, from one lookup in each table.
    fn look(&self, key: &Item) -> Look {
        self.look_with(key, self.listed.get(key).map(Listed::ours))
    }

    /// [`SyncState::look`] with what the list view holds of `key` already known: `None`
    /// if it is not listed, else whether it is the bouncer's own.
    fn look_with(&self, key: &Item, listed_ours: Option<bool>) -> Look {
        let (desires, wants, labels) = match self.desired.get(&key.bare()) {
            Some(wanted) => {
                let desires = lane_in(&self.policy, &self.desired, wanted) == Some(key.lane());
                (
                    desires,
                    desires && (!self.over_capacity || wanted.admitted()),
                    Some((wanted.comment_origin, wanted.scenario)),
                )
            }
            None => (false, false, None),
        };
        let intent = match (wants, listed_ours) {
            (true, None) => Some(Intent::Add),
            (false, Some(ours)) if self.policy.manage_all || ours => Some(Intent::Remove),
            _ => None,
        };
        Look {
            desires,
            wants,
            intent,
            labels,
        }
    }

    fn intent(&self, item: &Item) -> Option<Intent> {
        self.look(item).intent
    }

    /// An item's comment, `tag origin: scenario`, from the labels of its latest decision
    /// ([`Look::labels`]). Items of one origin and scenario share one text (`made` keeps
    /// those made so far).
    fn comment(
        &self,
        labels: Option<(u32, u32)>,
        made: &mut HashMap<(u32, u32), Arc<str>>,
    ) -> Arc<str> {
        let Some(labels) = labels else {
            return Arc::from("");
        };
        let text = made.entry(labels).or_insert_with(|| {
            let names = &self.desired.labels;
            let (origin, scenario) = (names.get(labels.0), names.get(labels.1));
            let mut comment = format!("{} {origin}: {scenario}", self.policy.tag);
            if let Some((cut, _)) = comment.char_indices().nth(MAX_COMMENT_CHARS) {
                comment.truncate(cut);
            }
            comment.into()
        });
        Arc::clone(text)
    }

    /// The write `item` needs and may get now: its intent, unless held or quarantined.
    #[cfg(test)]
    fn pending(&self, item: &Item) -> Option<Intent> {
        let look = self.look(item);
        self.pending_of(item, &look, self.unconfirmed(item, &look))
    }

    /// [`SyncState::pending`] from a look already taken; `unconfirmed` is
    /// [`SyncState::unconfirmed`] (whether a removal waits for LAPI's word).
    fn pending_of(&self, item: &Item, look: &Look, unconfirmed: bool) -> Option<Intent> {
        match look.intent? {
            _ if self.quarantined.contains(item) => None,
            Intent::Remove if self.held.contains(item) || self.removals_paused => None,
            Intent::Remove if unconfirmed => None,
            intent => Some(intent),
        }
    }

    /// Queues `item` if it needs a write; if already queued, records what it needs now.
    /// Called whenever something that decides an item's write changed.
    fn enqueue(&mut self, item: Item) {
        self.enqueue_at(item, false);
    }

    /// [`SyncState::enqueue`], at the back of the queue or, for a retry, at the front.
    fn enqueue_at(&mut self, item: Item, front: bool) {
        let look = self.look(&item);
        self.enqueue_looked(item, front, look);
    }

    /// [`SyncState::enqueue_at`] with `item`'s [`SyncState::look`] already taken (and
    /// nothing changed in the desired state or the list view since).
    fn enqueue_looked(&mut self, item: Item, front: bool, look: Look) {
        if !self.list_known && self.awaiting.is_empty() {
            // Until the list is read nothing is written, and that read queues every item
            // out of step: queuing now would only hold every decision twice (at a
            // million, half the peak memory of a first sync). With removals awaiting
            // confirmation (a list forgotten for a new term), the checks below still run.
            return;
        }
        let unconfirmed = self.unconfirmed(&item, &look);
        let pending = self.pending_of(&item, &look, unconfirmed);
        if pending.is_none() && look.intent == Some(Intent::Remove) && unconfirmed {
            self.awaiting.insert(item);
        } else if !unconfirmed && self.awaiting.remove(&item) && look.desires {
            // Wanted again by a decision, but the ones the pull left out are unknown.
            self.doubtful.insert(item);
        }
        match self.queued.get_mut(&item) {
            Some(recorded) => {
                let was = std::mem::replace(recorded, pending);
                self.count(was, false);
                self.count(pending, true);
            }
            None if pending.is_some() => {
                self.queued.insert(item, pending);
                self.count(pending, true);
                if front {
                    self.queue.push_front(item);
                } else {
                    self.queue.push_back(item);
                }
            }
            None => {}
        }
    }

    /// Forgets that `item` is queued (it just left the queue).
    fn unqueue(&mut self, item: &Item) {
        if let Some(was) = self.queued.remove(item) {
            self.count(was, false);
        }
    }

    fn count(&mut self, intent: Option<Intent>, up: bool) {
        let counter = match intent {
            Some(Intent::Add) => &mut self.queued_adds,
            Some(Intent::Remove) => &mut self.queued_removes,
            None => return,
        };
        *counter = if up {
            *counter + 1
        } else {
            counter.saturating_sub(1)
        };
    }

    fn enqueue_all(&mut self, items: impl IntoIterator<Item = Item>) {
        for item in items {
            self.enqueue(item);
        }
    }
}

/// A list read being collected, page by page; swapped in with
/// [`SyncState::replace_list_with`] once complete.
#[derive(Debug)]
pub struct ListView {
    policy: Arc<Policy>,
    items: ListedItems,
}

impl ListView {
    /// Makes room for `items` items: the lists' sizes, as Cloudflare gives them ahead of
    /// a read. The caller bounds it (a peer's figure is no reason to allocate).
    pub fn reserve(&mut self, items: usize) {
        self.items.reserve(items);
    }

    /// Records one item of the list, as Cloudflare returned it.
    pub fn insert(&mut self, item: Item, id: &str, comment: Option<&str>) {
        let ours = self.policy.is_tagged(comment);
        self.items.insert(item, Some(id), ours);
    }
}

/// An order-free fingerprint of a set of items, from each item's hash.
fn fingerprint(item: &Item) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    BuildHasherDefault::<rustc_hash::FxHasher>::default()
        .hash_one(item)
        .max(1)
}

/// What a full list read found out of step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drift {
    /// Desired items missing from the list.
    pub missing: usize,
    /// The missing items the previous view held (removed since by someone else), as a
    /// set, to tell the same undoing coming back (0: none).
    pub undone_fingerprint: u64,
    /// Listed items with the bouncer's tag that were not on the list at the last read
    /// and that this process did not write.
    pub foreign_tagged: usize,
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
    /// Removals waiting for LAPI to confirm them (a full pull alone never removes).
    pub awaiting_confirmation: usize,
    /// Items the list may hold: the account's capacity minus what its other lists hold,
    /// as of the last list read (`None` before it).
    pub capacity: Option<usize>,
}

mod confirm;
mod desired;
#[cfg(test)]
mod lane_tests;
mod listed;
#[cfg(test)]
mod proptests;
mod rails;
mod table;
#[cfg(test)]
mod tests;
