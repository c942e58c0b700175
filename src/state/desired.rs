//! The desired state: LAPI's active decisions, keyed by (scope, value, type), and the
//! items they map to, reference-counted. Built in place from deltas, or off to the side
//! from a full pull (possibly while the response is still arriving) and swapped in.
//!
//! Compact on purpose (a million decisions must fit a small container): one 40-byte
//! [`Wanted`] per item in an [`ItemTable`], holding the item's usual decision (one whose
//! value is the item's own text) in 9 of those bytes; only other decisions take a
//! (key, entry) pair in a side map, their value stored as the address or network it
//! spells when that prints back as the same text. Type, origin and scenario are small
//! indexes; expiry is whole seconds.

use rustc_hash::FxHashMap as HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use ipnet::IpNet;

use super::table::{ItemTable, Keyed};
use super::{DecisionRef, Policy, Skipped};
use crate::godur;
use crate::item::{Item, ItemError};

/// Expiry for decisions whose duration is absurdly long.
const FAR_FUTURE_SECS: u64 = 100 * 365 * 24 * 3600;
/// Most refusals one pull reports for logging; beyond it they are only counted.
const MAX_REFUSALS: usize = 1000;

/// A decision value exactly as LAPI wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Value {
    /// An address whose text is its canonical form (`1.2.3.4`, `2001:db8::1`).
    Addr(IpAddr),
    /// A network whose text is its canonical form (`10.0.0.0/24`).
    Net(IpNet),
    /// Anything else, kept verbatim (`2001:DB8::1`, `::ffff:1.2.3.4`).
    Text(Box<str>),
}

impl DecisionKey {
    /// Whether the decision is on an IPv6 address or network (IPv4-mapped ones count
    /// as IPv6 here; they are rare and only feed metrics).
    pub(super) fn is_ipv6(&self) -> bool {
        if self.scope_kind & AS_SCOPE != 0 {
            return false;
        }
        match &self.value {
            Value::Addr(addr) => addr.is_ipv6(),
            Value::Net(net) => matches!(net, IpNet::V6(_)),
            Value::Text(text) => text.contains(':'),
        }
    }

    /// The item this decision maps to.
    pub(super) fn item(&self, ipv6_prefix: u8) -> Option<Item> {
        if self.scope_kind & AS_SCOPE != 0 {
            let Value::Text(text) = &self.value else {
                return None;
            };
            return Item::from_asn_decision(text).ok();
        }
        match &self.value {
            Value::Addr(addr) => Item::from_net(IpNet::from(*addr), ipv6_prefix).ok(),
            Value::Net(net) => Item::from_net(*net, ipv6_prefix).ok(),
            Value::Text(text) => Item::from_decision(text, ipv6_prefix).ok(),
        }
    }
}

impl Value {
    fn new(text: &str) -> Value {
        if text.contains('/') {
            if let Ok(net) = text.parse::<IpNet>() {
                if displays_as(&net, text) {
                    return Value::Net(net);
                }
            }
        } else if let Ok(addr) = text.parse::<IpAddr>() {
            if displays_as(&addr, text) {
                return Value::Addr(addr);
            }
        }
        Value::Text(text.into())
    }
}

/// Whether `value` prints exactly as `text`, without allocating.
fn displays_as(value: &impl std::fmt::Display, text: &str) -> bool {
    struct Matcher<'t> {
        rest: &'t [u8],
    }
    impl std::fmt::Write for Matcher<'_> {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            match self.rest.strip_prefix(s.as_bytes()) {
                Some(rest) => {
                    self.rest = rest;
                    Ok(())
                }
                None => Err(std::fmt::Error),
            }
        }
    }
    let mut matcher = Matcher {
        rest: text.as_bytes(),
    };
    std::fmt::write(&mut matcher, format_args!("{value}")).is_ok() && matcher.rest.is_empty()
}

/// `DecisionKey::scope_kind`: the decision is on a range.
const RANGE_SCOPE: u8 = 0x80;
/// `DecisionKey::scope_kind`: the decision is on an AS number.
const AS_SCOPE: u8 = 0x40;
/// `DecisionKey::scope_kind`: the index of the decision's type in `policy.decision_types`.
const TYPE: u8 = 0x3f;

/// The decision type index of a `scope_kind`.
fn type_of(scope_kind: u8) -> u8 {
    scope_kind & TYPE
}

/// The item a decision value maps to, by its scope.
fn item_of(scope_kind: u8, value: &str, ipv6_prefix: u8) -> Result<Item, ItemError> {
    if scope_kind & AS_SCOPE != 0 {
        Item::from_asn_decision(value)
    } else {
        Item::from_decision(value, ipv6_prefix)
    }
}

/// Whether a decision's value is its item's own text: `1.2.3.4` for its item, `13335`
/// for AS13335.
fn is_own_text(item: &Item, value: &str) -> bool {
    if let Some(asn) = item.asn() {
        return displays_as(&asn, value);
    }
    // Dotted-quad text parses back only when canonical (Rust's parser refuses leading
    // zeros and anything else), so a parse and a compare stand in for printing the item.
    if value.len() <= 15 && value.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return match (value.parse::<std::net::Ipv4Addr>(), item.net()) {
            (Ok(addr), Some(IpNet::V4(net))) => net.prefix_len() == 32 && net.addr() == addr,
            _ => false,
        };
    }
    displays_as(item, value)
}

/// The item a decision's value maps to, by its scope (`AS`: an AS number), ignoring the
/// policy; `None` if it maps to none.
pub fn decision_item(decision: &DecisionRef<'_>, ipv6_prefix: u8) -> Option<Item> {
    let scope = if decision.scope.eq_ignore_ascii_case("as") {
        AS_SCOPE
    } else {
        0
    };
    item_of(scope, decision.value, ipv6_prefix).ok()
}

/// (scope, value, type): what LAPI deduplicates on (docs/lapi.md §4.4).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct DecisionKey {
    /// [`RANGE_SCOPE`], [`AS_SCOPE`], and the type index ([`TYPE`]).
    scope_kind: u8,
    value: Value,
}

/// A decision kept in [`Desired::others`]. Its item is not stored: it is derived from
/// the key when needed.
#[derive(Debug, Clone, Copy)]
pub(super) struct Active {
    /// Seconds after the state's epoch.
    pub expires: u32,
    /// Index in the labels.
    pub origin: u32,
}

/// An entry of [`Desired::others`]: a decision and its key. In a table of entries in
/// order with an index of positions ([`ItemTable`]), not a `HashMap`: at a million
/// decisions half of them IPv6 hosts (each widened to its /64, so each an "other"), a
/// map's buckets of 41 bytes ran half empty, about 43 MB; the table's entries and index
/// take about 25 MB.
#[derive(Debug, Clone)]
pub(super) struct Other {
    key: DecisionKey,
    active: Active,
}

impl Keyed for Other {
    type Key = DecisionKey;
    fn key(&self) -> &DecisionKey {
        &self.key
    }
}

/// `Wanted::own` when the item's own decision slot is empty.
const NO_OWN: u8 = u8::MAX;
/// `Wanted::flags`: admitted within capacity (meaningful only over capacity).
const ADMITTED: u8 = 1;
/// `Wanted::flags`: chosen by the admission being computed.
const CHOSEN: u8 = 2;

/// A desired item: why it is wanted, and the decision that wants it in the common case.
///
/// Most decisions are an address or range whose text is exactly the item's text
/// (`1.2.3.4`, `10.0.0.0/24`): one such decision per item is kept here (its scope and
/// type, expiry and origin) rather than as a key in [`Desired::others`]. Any other decision on the item
/// (another type or scope, an IPv6 host widened to its /64, a non-canonical spelling)
/// goes to `others`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Wanted {
    item: Item,
    /// The own decision's `DecisionKey::scope_kind`, or [`NO_OWN`].
    own: u8,
    flags: u8,
    /// The own decision's expiry and origin.
    expires: u32,
    origin: u32,
    /// How many of the item's decisions are in `others`.
    others: u32,
    /// Labels of the latest decision, for the item comment.
    pub comment_origin: u32,
    pub scenario: u32,
}

impl Keyed for Wanted {
    type Key = Item;
    fn key(&self) -> &Item {
        &self.item
    }
}

impl Wanted {
    pub fn item(&self) -> &Item {
        &self.item
    }

    /// How many decisions want this item.
    pub fn decisions(&self) -> u32 {
        self.others + u32::from(self.own != NO_OWN)
    }

    /// Whether the last admission kept this item (see [`Desired::admit`]).
    pub fn admitted(&self) -> bool {
        self.flags & ADMITTED != 0
    }
}

/// Origin and scenario strings, each stored once.
#[derive(Debug, Default)]
pub(super) struct Labels {
    names: Vec<Arc<str>>,
    index: HashMap<Arc<str>, u32>,
}

impl Labels {
    fn intern(&mut self, label: &str) -> u32 {
        if let Some(&i) = self.index.get(label) {
            return i;
        }
        let i = u32::try_from(self.names.len()).unwrap_or(u32::MAX);
        let label: Arc<str> = label.into();
        self.names.push(label.clone());
        self.index.insert(label, i);
        i
    }

    pub fn get(&self, i: u32) -> &str {
        self.names.get(i as usize).map_or("", |s| s)
    }

    /// Every label, by index.
    pub fn all(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(|s| &**s)
    }
}

/// LAPI's active decisions and the items they want on the list.
#[derive(Debug)]
pub struct Desired {
    /// Every desired item, with its own decision.
    pub(super) items: ItemTable<Wanted>,
    /// Decisions not kept in their item's entry.
    others: ItemTable<Other>,
    /// How many decisions are kept in `items`.
    own: usize,
    /// How many items carry [`ADMITTED`].
    admitted: usize,
    pub(super) labels: Labels,
    /// Expiries are seconds after this instant.
    epoch: Instant,
    /// The policy's `ipv6_prefix`, to derive items from keys.
    ipv6_prefix: u8,
    earliest_expiry: Option<u32>,
    pub(super) skipped: Skipped,
    /// (value, reason) of refused decisions, for the log.
    pub(super) refusals: Vec<(Box<str>, String)>,
    /// More than one decision type is configured: an item's best type is tracked, and
    /// `others` is indexed by (item, type) in `other_types`.
    multi_type: bool,
    /// How many decision types the policy has.
    types: u8,
    /// How many decisions of each type `others` holds, by (item, type index).
    other_types: HashMap<(Item, u8), u32>,
    /// Items still desired whose best type changed (a ban came or went beside a captcha):
    /// they may move between lists. Taken by the state after each change.
    pub(super) moved: Vec<Item>,
}

impl Desired {
    /// An empty desired state whose expiries count from `epoch`.
    pub fn new(epoch: Instant, ipv6_prefix: u8) -> Desired {
        Desired {
            items: ItemTable::new(),
            others: ItemTable::new(),
            own: 0,
            admitted: 0,
            labels: Labels::default(),
            epoch,
            ipv6_prefix,
            earliest_expiry: None,
            skipped: Skipped::default(),
            refusals: Vec::new(),
            multi_type: false,
            types: 1,
            other_types: HashMap::default(),
            moved: Vec::new(),
        }
    }

    /// Makes room for as many items and other decisions as `last` holds: a full pull is
    /// about as large as the last one, and tables grown while it is read would hold old
    /// and new buckets at once, beside the state it replaces.
    #[must_use]
    pub fn with_room_of(mut self, last: &Desired) -> Desired {
        self.items.reserve(last.items.len());
        self.others.reserve(last.others.len());
        self
    }

    /// Tracks each item's best decision type, among `types` configured ones (when
    /// there is more than one).
    #[must_use]
    pub fn with_types(mut self, types: usize) -> Desired {
        self.multi_type = types > 1;
        self.types = types.min(usize::from(TYPE)) as u8;
        self
    }

    /// The best (lowest-index, strongest) type among `item`'s decisions: its list is
    /// that type's. 0 when one type is configured.
    pub(super) fn best_type(&self, wanted: &Wanted) -> u8 {
        if !self.multi_type {
            return 0;
        }
        let own = (wanted.own != NO_OWN).then(|| type_of(wanted.own));
        if wanted.others == 0 {
            return own.unwrap_or(0);
        }
        let limit = own.unwrap_or(self.types);
        let other = (0..limit).find(|&t| self.other_types.contains_key(&(wanted.item, t)));
        other.or(own).unwrap_or(0)
    }

    /// `item`'s best type, if it is desired.
    pub(super) fn best_type_of(&self, item: &Item) -> Option<u8> {
        self.items.get(item).map(|wanted| self.best_type(wanted))
    }

    /// Records `item` as moved when its best type is not `before` any more.
    fn note_move(&mut self, item: &Item, before: Option<u8>) {
        if self.multi_type {
            let after = self.best_type_of(item);
            if before.is_some() && after.is_some() && after != before {
                self.moved.push(*item);
            }
        }
    }

    fn count_other_type(&mut self, item: Item, scope_kind: u8, up: bool) {
        if !self.multi_type {
            return;
        }
        let key = (item, type_of(scope_kind));
        if up {
            *self.other_types.entry(key).or_default() += 1;
        } else if let Some(n) = self.other_types.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.other_types.remove(&key);
            }
        }
    }

    /// How many active decisions are recorded.
    pub(super) fn decision_count(&self) -> usize {
        self.own + self.others.len()
    }

    /// How many items are desired.
    pub(super) fn len(&self) -> usize {
        self.items.len()
    }

    pub(super) fn contains(&self, item: &Item) -> bool {
        self.items.contains(item)
    }

    pub(super) fn get(&self, item: &Item) -> Option<&Wanted> {
        self.items.get(item)
    }

    /// How many items carry the admitted flag.
    pub(super) fn admitted_count(&self) -> usize {
        self.admitted
    }

    /// Every active decision as (origin label, on IPv6).
    pub(super) fn decisions(&self) -> impl Iterator<Item = (u32, bool)> + '_ {
        // An own decision's value is its item's text, so they share the IP type.
        let own = self.items.iter().filter(|w| w.own != NO_OWN);
        own.map(|w| (w.origin, w.item.is_ipv6())).chain(
            self.others
                .iter()
                .map(|o| (o.active.origin, o.key.is_ipv6())),
        )
    }

    /// Records an active decision, unless the policy refuses it (counted). Returns its
    /// item when the item just became desired.
    pub fn insert(
        &mut self,
        policy: &Policy,
        decision: &DecisionRef<'_>,
        now: Instant,
    ) -> Option<Item> {
        let scope_kind = self.scope_kind(policy, decision, true)?;
        let item = match item_of(scope_kind, decision.value, policy.ipv6_prefix) {
            Ok(item) => item,
            Err(ItemError::Invalid | ItemError::NotAsn) => {
                self.skipped.value += 1;
                return None;
            }
            Err(ItemError::TooBroad) => {
                self.refuse(decision, "a range wider than Cloudflare accepts".into());
                self.skipped.too_broad += 1;
                return None;
            }
        };
        if !self.passes_rails(policy, decision, item) {
            return None;
        }
        let nanos = match godur::parse_nanos(decision.duration) {
            Ok(nanos) if nanos > 0 => nanos as u64,
            _ => {
                self.skipped.duration += 1;
                return None;
            }
        };
        // Whole seconds, rounded up: LAPI's own expiry has one-second granularity.
        let secs = nanos.div_ceil(1_000_000_000).min(FAR_FUTURE_SECS);
        let since_epoch = now.saturating_duration_since(self.epoch).as_secs();
        let expires = u32::try_from(since_epoch + secs).unwrap_or(u32::MAX);
        self.earliest_expiry = Some(self.earliest_expiry.map_or(expires, |e| e.min(expires)));
        let origin = self.labels.intern(decision.origin);
        let scenario = self.labels.intern(decision.scenario);
        let is_own = is_own_text(&item, decision.value);
        let before = if self.multi_type {
            self.best_type_of(&item)
        } else {
            None
        };

        let (wanted, made) = self.items.get_or_insert_with(item, || Wanted {
            item,
            own: NO_OWN,
            flags: 0,
            expires: 0,
            origin: 0,
            others: 0,
            comment_origin: origin,
            scenario,
        });
        (wanted.comment_origin, wanted.scenario) = (origin, scenario);
        if is_own && wanted.own == scope_kind {
            // The own decision again: LAPI repeats them, extends them, and a snapshot
            // (`GET /v1/decisions`, no dedup) lists every decision on the key. The
            // longest-lived one counts, as LAPI's own dedup keeps it.
            if expires >= wanted.expires {
                (wanted.expires, wanted.origin) = (expires, origin);
            }
            return None;
        }
        let active = Active { expires, origin };
        let key = || DecisionKey {
            scope_kind,
            value: Value::new(decision.value),
        };
        if wanted.others > 0 {
            if let Some(known) = self.others.get_mut(&key()).map(|o| &mut o.active) {
                if active.expires >= known.expires {
                    *known = active;
                }
                return None;
            }
        }
        if is_own && wanted.own == NO_OWN {
            (wanted.own, wanted.expires, wanted.origin) = (scope_kind, expires, origin);
            self.own += 1;
        } else {
            wanted.others += 1;
            self.others.insert(Other { key: key(), active });
            self.count_other_type(item, scope_kind, true);
        }
        self.note_move(&item, before);
        made.then_some(item)
    }

    /// Forgets a decision; returns its item when no decision wants it any more.
    pub(super) fn forget(&mut self, policy: &Policy, decision: &DecisionRef<'_>) -> Option<Item> {
        let scope_kind = self.scope_kind(policy, decision, false)?;
        // Insert derived the item from the same value with the same prefix.
        let item = item_of(scope_kind, decision.value, self.ipv6_prefix).ok()?;
        let wanted = self.items.get(&item)?;
        if wanted.own == scope_kind && is_own_text(&item, decision.value) {
            return self.forget_own(&item);
        }
        let key = DecisionKey {
            scope_kind,
            value: Value::new(decision.value),
        };
        if wanted.others == 0 || !self.others.contains(&key) {
            return None;
        }
        self.forget_other(&key)
    }

    /// Empties `item`'s own decision slot; returns the item when nothing wants it now.
    fn forget_own(&mut self, item: &Item) -> Option<Item> {
        let before = if self.multi_type {
            self.best_type_of(item)
        } else {
            None
        };
        let wanted = self.items.get_mut(item)?;
        if wanted.own == NO_OWN {
            return None;
        }
        wanted.own = NO_OWN;
        self.own -= 1;
        let dropped = self.drop_if_unwanted(item);
        self.note_move(item, before);
        dropped
    }

    /// Removes a decision from `others`; returns its item when nothing wants it now.
    fn forget_other(&mut self, key: &DecisionKey) -> Option<Item> {
        self.others.remove(key)?;
        let item = key.item(self.ipv6_prefix)?;
        let before = if self.multi_type {
            self.best_type_of(&item)
        } else {
            None
        };
        self.count_other_type(item, key.scope_kind, false);
        let wanted = self.items.get_mut(&item)?;
        wanted.others = wanted.others.saturating_sub(1);
        let dropped = self.drop_if_unwanted(&item);
        self.note_move(&item, before);
        dropped
    }

    fn drop_if_unwanted(&mut self, item: &Item) -> Option<Item> {
        let wanted = self.items.get(item)?;
        if wanted.own != NO_OWN || wanted.others > 0 {
            return None;
        }
        if self.items.remove(item)?.admitted() {
            self.admitted -= 1;
        }
        Some(*item)
    }

    /// Drops decisions whose duration has run out; returns the items no longer desired
    /// and how many decisions expired.
    pub(super) fn expire(&mut self, now: Instant) -> (Vec<Item>, usize) {
        let now_secs = now.saturating_duration_since(self.epoch).as_secs();
        let now_secs = u32::try_from(now_secs).unwrap_or(u32::MAX);
        if self.earliest_expiry.is_none_or(|at| at > now_secs) {
            return (Vec::new(), 0);
        }
        let own: Vec<Item> = self
            .items
            .iter()
            .filter(|w| w.own != NO_OWN && w.expires <= now_secs)
            .map(|w| w.item)
            .collect();
        let others: Vec<DecisionKey> = self
            .others
            .iter()
            .filter(|other| other.active.expires <= now_secs)
            .map(|other| other.key.clone())
            .collect();
        let expired = own.len() + others.len();
        let mut gone: Vec<Item> = own.iter().filter_map(|i| self.forget_own(i)).collect();
        gone.extend(others.iter().filter_map(|key| self.forget_other(key)));
        let own_min = self.items.iter().filter(|w| w.own != NO_OWN);
        self.earliest_expiry = own_min
            .map(|w| w.expires)
            .chain(self.others.iter().map(|o| o.active.expires))
            .min();
        (gone, expired)
    }

    /// Marks the `capacity` highest-priority items admitted, and only those: by origin
    /// rank (`ranks`, by label index; lower is better), then by remaining duration,
    /// longest first. An item ranks as its best decision; ties go to the lower item.
    /// Returns the items whose mark changed, when `report` asks for them.
    pub(super) fn admit(&mut self, capacity: usize, ranks: &[u32], report: bool) -> Vec<Item> {
        // The strongest type first (bans before captchas), then origin rank, then the
        // longest remaining.
        let priority = |scope_kind: u8, origin: u32, expires: u32| {
            let rank = ranks.get(origin as usize).copied().unwrap_or(u32::MAX);
            (u64::from(type_of(scope_kind)) << 56)
                | (u64::from(rank.min(0xff_ffff)) << 32)
                | u64::from(u32::MAX - expires)
        };
        // (priority, position): positions hold until the next removal, and this
        // function removes nothing.
        let mut order: Vec<(u64, u32)> = (self.items.iter().enumerate())
            .map(|(i, w)| {
                let own = (w.own != NO_OWN).then(|| priority(w.own, w.origin, w.expires));
                (
                    own.unwrap_or(u64::MAX),
                    u32::try_from(i).unwrap_or(u32::MAX),
                )
            })
            .collect();
        for Other { key, active } in self.others.iter() {
            let at = key.item(self.ipv6_prefix);
            if let Some(i) = at.and_then(|item| self.items.position_of(&item)) {
                order[i].0 =
                    order[i]
                        .0
                        .min(priority(key.scope_kind, active.origin, active.expires));
            }
        }
        if capacity < order.len() {
            let entries = self.items.entries();
            if let Some(last) = capacity.checked_sub(1) {
                order.select_nth_unstable_by(last, |a, b| {
                    let item = |x: &(u64, u32)| entries[x.1 as usize].item;
                    a.0.cmp(&b.0).then_with(|| item(a).cmp(&item(b)))
                });
            }
            order.truncate(capacity);
        }
        let entries = self.items.entries_mut();
        for (_, i) in order {
            entries[i as usize].flags |= CHOSEN;
        }
        let mut changed = Vec::new();
        for wanted in entries.iter_mut() {
            let chosen = wanted.flags & CHOSEN != 0;
            if report && chosen != wanted.admitted() {
                changed.push(wanted.item);
            }
            wanted.flags = if chosen { ADMITTED } else { 0 };
        }
        self.admitted = capacity.min(entries.len());
        changed
    }

    /// The `DecisionKey::scope_kind` of a decision, or `None` (counted) if it is not
    /// ours to push.
    fn scope_kind(
        &mut self,
        policy: &Policy,
        decision: &DecisionRef<'_>,
        count: bool,
    ) -> Option<u8> {
        let scope = if decision.scope.eq_ignore_ascii_case("ip") {
            0
        } else if decision.scope.eq_ignore_ascii_case("range") {
            RANGE_SCOPE
        } else if decision.scope.eq_ignore_ascii_case("as") && policy.has_asn_lane() {
            AS_SCOPE
        } else {
            self.skipped.scope += u64::from(count);
            return None;
        };
        let kind = policy
            .decision_types
            .iter()
            .position(|t| t == decision.kind)
            .filter(|&kind| policy.route(kind, scope == AS_SCOPE).is_some());
        let Some(kind) = kind else {
            self.skipped.kind += u64::from(count);
            return None;
        };
        // `NO_OWN` (0xff) has both scope bits: no decision does.
        Some(scope | (kind.min(usize::from(TYPE)) as u8))
    }

    /// The safety rails: broad ranges and the allowlist. Refusals are counted.
    fn passes_rails(&mut self, policy: &Policy, decision: &DecisionRef<'_>, item: Item) -> bool {
        let Some(net) = item.net() else {
            let asn = item.asn().unwrap_or_default();
            if policy.allowlist_asns.contains(&asn) {
                self.refuse(decision, format!("AS{asn} is allowlisted"));
                self.skipped.allowlisted += 1;
                return false;
            }
            return true;
        };
        let min_prefix = if item.is_ipv6() {
            policy.min_ipv6_prefix
        } else {
            policy.min_ipv4_prefix
        };
        if net.prefix_len() < min_prefix {
            let reason = format!("a range wider than /{min_prefix} (safety.min_ipv*_prefix)");
            self.refuse(decision, reason);
            self.skipped.too_broad += 1;
            return false;
        }
        if let Some(kind) = never_a_client(&net) {
            self.refuse(decision, format!("{kind} addresses are never a client"));
            self.skipped.not_client += 1;
            return false;
        }
        let spanned = span(&net);
        let allowed = (policy.allowlist.iter()).find(|allow| overlaps(span(allow), spanned));
        if let Some(allow) = allowed {
            self.refuse(decision, format!("it overlaps the allowlisted {allow}"));
            self.skipped.allowlisted += 1;
            return false;
        }
        true
    }

    fn refuse(&mut self, decision: &DecisionRef<'_>, reason: String) {
        if self.refusals.len() < MAX_REFUSALS {
            let reason = format!(
                "{reason} ({}, origin {})",
                decision.scenario, decision.origin
            );
            self.refusals.push((decision.value.into(), reason));
        }
    }
}

/// Networks no request ever comes from: a decision on them is a mistake (or an attack on
/// the bouncer's own host), never a client to block.
const NEVER_A_CLIENT: [(&str, &str); 7] = [
    ("0.0.0.0/8", "unspecified"),
    ("127.0.0.0/8", "loopback"),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "broadcast"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("ff00::/8", "multicast"),
];

/// A network's family (4 or 6) and its first and last address.
type Span = (u8, u128, u128);

/// `net`'s [`Span`].
fn span(net: &IpNet) -> Span {
    match net {
        IpNet::V4(v4) => (
            4,
            u32::from(v4.network()).into(),
            u32::from(v4.broadcast()).into(),
        ),
        IpNet::V6(v6) => (6, u128::from(v6.network()), u128::from(v6.broadcast())),
    }
}

/// Whether one of two networks contains the other: for CIDR blocks, whether they are
/// of one family and share an address. Three comparisons of their spans, where
/// `contains` both ways masks four times.
fn overlaps(a: Span, b: Span) -> bool {
    a.0 == b.0 && a.1 <= b.2 && b.1 <= a.2
}

/// What kind of never-a-client network `net` overlaps, if any.
fn never_a_client(net: &IpNet) -> Option<&'static str> {
    static SPANS: std::sync::LazyLock<Vec<(Span, &'static str)>> = std::sync::LazyLock::new(|| {
        NEVER_A_CLIENT
            .iter()
            .filter_map(|(text, kind)| Some((span(&text.parse().ok()?), *kind)))
            .collect()
    });
    let net = span(net);
    SPANS
        .iter()
        .find_map(|&(special, kind)| overlaps(special, net).then_some(kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_text_is_the_items_exact_text() {
        for (value, own) in [
            ("1.2.3.4", true),
            ("1.2.3.4 ", false),
            ("10.0.0.0/24", true),
            ("10.0.0.1/24", false),
            ("2001:db8::1", true),
            ("2001:DB8::1", false),
            ("::ffff:1.2.3.4", false),
        ] {
            let item = Item::from_decision(value, 128).expect("a valid value");
            assert_eq!(is_own_text(&item, value), own, "{value:?}");
            assert_eq!(
                is_own_text(&item, value),
                displays_as(&item, value),
                "{value:?}"
            );
        }
        let item = Item::from_decision("1.2.3.4", 128).expect("a valid value");
        for other in ["1.2.3.5", "01.2.3.4", "1.2.3.04", "1.2.3.4.", "1.2.3"] {
            assert!(!is_own_text(&item, other), "{other:?}");
        }
    }

    proptest::proptest! {
        /// The span comparison agrees with `contains` both ways, across families too.
        #[test]
        fn overlaps_is_containment_either_way(
            a in proptest::prelude::any::<u128>(), a_len in 0u8..=128, a_v4 in proptest::prelude::any::<bool>(),
            b in proptest::prelude::any::<u128>(), b_len in 0u8..=128, b_v4 in proptest::prelude::any::<bool>(),
            near in proptest::prelude::any::<bool>(),
        ) {
            let net = |bits: u128, len: u8, v4: bool| -> IpNet {
                if v4 {
                    IpNet::V4(ipnet::Ipv4Net::new((bits as u32).into(), len % 33).expect("a prefix").trunc())
                } else {
                    IpNet::V6(ipnet::Ipv6Net::new(bits.into(), len).expect("a prefix").trunc())
                }
            };
            // Half the pairs share their leading bits, so that overlaps are common.
            let b = if near { a ^ (b >> 100) ^ ((b as u32 >> 8) as u128) } else { b };
            let (x, y) = (net(a, a_len, a_v4), net(b, b_len, b_v4));
            proptest::prop_assert_eq!(
                overlaps(span(&x), span(&y)),
                x.contains(&y) || y.contains(&x),
                "{} {}", x, y
            );
        }
    }

    #[test]
    fn loopback_unspecified_broadcast_and_multicast_are_never_clients() {
        for (text, kind) in [
            ("127.0.0.1", Some("loopback")),
            ("127.5.0.0/16", Some("loopback")),
            ("0.0.0.0", Some("unspecified")),
            ("255.255.255.255", Some("broadcast")),
            ("239.1.2.3", Some("multicast")),
            ("::1", Some("loopback")),
            ("::", Some("unspecified")),
            ("ff02::1", Some("multicast")),
            ("1.2.3.4", None),
            ("10.0.0.0/8", None),
            ("2001:db8::1", None),
        ] {
            let net: IpNet = match text.parse() {
                Ok(net) => net,
                Err(_) => IpNet::from(text.parse::<IpAddr>().expect("an address")),
            };
            assert_eq!(never_a_client(&net), kind, "{text}");
        }
    }

    #[test]
    fn values_are_kept_exactly_and_compactly() {
        let cases = [
            ("1.2.3.4", true),
            ("10.0.0.0/24", true),
            ("2001:db8::1", true),
            ("2001:DB8::1", false),
            ("10.0.0.1/24", true),
            ("10.0.0.1/024", false),
            ("1.2.3.4/32", true),
            ("not an ip", false),
        ];
        for (text, compact) in cases {
            let value = Value::new(text);
            assert_eq!(!matches!(value, Value::Text(_)), compact, "{text}");
        }
        // Different texts never share a key, even for the same address.
        assert_ne!(Value::new("2001:db8::1"), Value::new("2001:DB8::1"));
        assert_ne!(Value::new("1.2.3.4"), Value::new("1.2.3.4/32"));
    }

    #[test]
    fn compact_sizes() {
        assert!(
            std::mem::size_of::<DecisionKey>() <= 32,
            "{}",
            std::mem::size_of::<DecisionKey>()
        );
        assert!(
            std::mem::size_of::<Active>() <= 8,
            "{}",
            std::mem::size_of::<Active>()
        );
        assert!(
            std::mem::size_of::<Wanted>() <= 40,
            "{}",
            std::mem::size_of::<Wanted>()
        );
    }

    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};
    use std::time::Duration;

    /// Values that share items in every way a decision can: own text, other spellings,
    /// widened IPv6 hosts, host bits in a range.
    const VALUES: [&str; 9] = [
        "1.2.3.4",
        "1.2.3.4/32",
        "::ffff:1.2.3.4",
        "2001:db8::1",
        "2001:db8::2",
        "2001:DB8::1",
        "2001:db8::/64",
        "10.0.0.0/24",
        "10.0.0.7/24",
    ];
    const SCOPES: [&str; 2] = ["Ip", "Range"];
    const KINDS: [&str; 2] = ["ban", "captcha"];
    const ORIGINS: [&str; 3] = ["cscli", "crowdsec", "CAPI"];

    #[derive(Debug, Clone)]
    enum Op {
        Insert {
            scope: usize,
            kind: usize,
            value: usize,
            origin: usize,
            secs: u64,
        },
        Forget {
            scope: usize,
            kind: usize,
            value: usize,
        },
        /// Time passes by this many seconds, then expiry runs.
        Expire(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..2usize, 0..2usize, 0..VALUES.len(), 0..3usize, 1..100u64).prop_map(
                |(scope, kind, value, origin, secs)| Op::Insert { scope, kind, value, origin, secs }
            ),
            3 => (0..2usize, 0..2usize, 0..VALUES.len())
                .prop_map(|(scope, kind, value)| Op::Forget { scope, kind, value }),
            1 => (0..60u64).prop_map(Op::Expire),
        ]
    }

    fn decision(
        scope: usize,
        kind: usize,
        value: usize,
        origin: usize,
        duration: &str,
    ) -> DecisionRef<'_> {
        DecisionRef {
            scope: SCOPES[scope],
            value: VALUES[value],
            kind: KINDS[kind],
            origin: ORIGINS[origin],
            scenario: "prop",
            duration,
        }
    }

    type Model = BTreeMap<(usize, usize, usize), (u64, usize)>;

    fn model_items(model: &Model) -> BTreeSet<Item> {
        model
            .keys()
            .map(|&(_, _, v)| Item::from_decision(VALUES[v], 64).unwrap())
            .collect()
    }

    proptest! {
        /// Any history of inserts, forgets and expiries leaves the same decisions and
        /// items as a plain map of (scope, type, value), however decisions share items.
        #[test]
        fn agrees_with_a_plain_map(ops in prop::collection::vec(op(), 0..120)) {
            let policy = Policy::new(KINDS.map(String::from).to_vec(), 64);
            let epoch = Instant::now();
            let mut desired = Desired::new(epoch, 64).with_types(KINDS.len());
            let mut model = Model::new();
            let mut now = 0u64;
            for op in ops {
                let before = model_items(&model);
                match op {
                    Op::Insert { scope, kind, value, origin, secs } => {
                        let duration = format!("{secs}s");
                        let d = decision(scope, kind, value, origin, &duration);
                        let at = epoch + Duration::from_secs(now);
                        let made = desired.insert(&policy, &d, at);
                        // The longest-lived decision on a key counts.
                        let entry = model.entry((scope, kind, value)).or_insert((0, origin));
                        if now + secs >= entry.0 {
                            *entry = (now + secs, origin);
                        }
                        let item = Item::from_decision(VALUES[value], 64).unwrap();
                        prop_assert_eq!(made, (!before.contains(&item)).then_some(item));
                    }
                    Op::Forget { scope, kind, value } => {
                        let gone = desired.forget(&policy, &decision(scope, kind, value, 0, "1s"));
                        model.remove(&(scope, kind, value));
                        let after = model_items(&model);
                        let want: Vec<Item> = before.difference(&after).copied().collect();
                        prop_assert_eq!(gone.into_iter().collect::<Vec<_>>(), want);
                    }
                    Op::Expire(secs) => {
                        now += secs;
                        let (mut gone, n) = desired.expire(epoch + Duration::from_secs(now));
                        let expired = model.len();
                        model.retain(|_, (expires, _)| *expires > now);
                        prop_assert_eq!(n, expired - model.len());
                        gone.sort();
                        let after = model_items(&model);
                        let want: Vec<Item> = before.difference(&after).copied().collect();
                        prop_assert_eq!(gone, want);
                    }
                }
                prop_assert_eq!(desired.decision_count(), model.len());
                // Each item's best type is the strongest (lowest) of its decisions' types.
                for item in model_items(&model) {
                    let best = (model.keys())
                        .filter(|&&(_, _, v)| Item::from_decision(VALUES[v], 64).ok() == Some(item))
                        .map(|&(_, kind, _)| kind as u8)
                        .min();
                    prop_assert_eq!(desired.best_type_of(&item), best, "{}", item);
                }
                desired.moved.clear();
                let items: BTreeSet<Item> = desired.items.items().copied().collect();
                prop_assert_eq!(items, model_items(&model));
                prop_assert_eq!(desired.decisions().count(), model.len());
            }
        }

        /// Admission keeps exactly the items a full sort of every decision would: by
        /// origin rank, then longest remaining, then lowest item.
        #[test]
        fn admits_what_a_full_sort_would(
            ops in prop::collection::vec((0..2usize, 0..VALUES.len(), 0..3usize, 1..5u64), 1..40),
            capacity in 0..8usize,
        ) {
            let policy = Policy::new(vec!["ban".into()], 64);
            let epoch = Instant::now();
            let mut desired = Desired::new(epoch, 64);
            for &(scope, value, origin, secs) in &ops {
                let duration = format!("{secs}s");
                desired.insert(&policy, &decision(scope, 0, value, origin, &duration), epoch);
            }
            let ranks: Vec<u32> = desired
                .labels
                .all()
                .map(|o| policy.origin_rank(o) as u32)
                .collect();
            let flipped = desired.admit(capacity, &ranks, true);
            prop_assert_eq!(flipped.len(), desired.admitted_count(), "all were unmarked before");

            // The longest-lived insert of each (scope, value) is the live decision (the
            // latest among equals).
            let mut live = BTreeMap::new();
            for &(scope, value, origin, secs) in &ops {
                let entry = live.entry((scope, value)).or_insert((origin, secs));
                if secs >= entry.1 {
                    *entry = (origin, secs);
                }
            }
            let mut ranked: Vec<(usize, std::cmp::Reverse<u64>, Item)> = live
                .iter()
                .map(|(&(_, value), &(origin, secs))| {
                    let rank = policy.origin_rank(ORIGINS[origin]);
                    (rank, std::cmp::Reverse(secs), Item::from_decision(VALUES[value], 64).unwrap())
                })
                .collect();
            ranked.sort();
            let mut want = BTreeSet::new();
            for (_, _, item) in ranked {
                if want.len() < capacity {
                    want.insert(item);
                }
            }
            let admitted: BTreeSet<Item> =
                desired.items.iter().filter(|w| w.admitted()).map(|w| w.item).collect();
            prop_assert_eq!(admitted.len(), desired.admitted_count());
            prop_assert_eq!(admitted, want);
        }
    }
}
