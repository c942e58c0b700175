//! The desired state: LAPI's active decisions, keyed by (scope, value, type), and the
//! items they map to, reference-counted. Built in place from deltas, or off to the side
//! from a full pull (possibly while the response is still arriving) and swapped in.
//!
//! Compact on purpose (a million decisions must fit a small container): a decision value
//! in its plain text form is stored as the address or network it spells, not as a
//! string; type, origin and scenario are small indexes; expiry is whole seconds.

use rustc_hash::FxHashMap as HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use ipnet::IpNet;

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
        match &self.value {
            Value::Addr(addr) => addr.is_ipv6(),
            Value::Net(net) => matches!(net, IpNet::V6(_)),
            Value::Text(text) => text.contains(':'),
        }
    }

    /// The item this decision maps to.
    pub(super) fn item(&self, ipv6_prefix: u8) -> Option<Item> {
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

/// (scope, value, type): what LAPI deduplicates on (docs/lapi.md §4.4).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct DecisionKey {
    /// Bit 7: range scope; bits 0–6: index in `policy.decision_types`.
    scope_kind: u8,
    value: Value,
}

/// An active decision. Its item is not stored: it is derived from the key when needed.
#[derive(Debug, Clone, Copy)]
pub(super) struct Active {
    /// Seconds after the state's epoch.
    pub expires: u32,
    /// Index in the labels.
    pub origin: u32,
}

/// Why an item is desired: how many active decisions map to it, and the labels of the
/// latest one (for the item comment).
#[derive(Debug, Clone, Copy)]
pub(super) struct Wanted {
    pub refs: u32,
    pub origin: u32,
    pub scenario: u32,
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
    pub(super) decisions: HashMap<DecisionKey, Active>,
    pub(super) wanted: HashMap<Item, Wanted>,
    pub(super) labels: Labels,
    /// Expiries are seconds after this instant.
    epoch: Instant,
    /// The policy's `ipv6_prefix`, to derive items from keys.
    ipv6_prefix: u8,
    pub(super) earliest_expiry: Option<u32>,
    pub(super) skipped: Skipped,
    /// (value, reason) of refused decisions, for the log.
    pub(super) refusals: Vec<(Box<str>, String)>,
}

impl Desired {
    /// An empty desired state whose expiries count from `epoch`.
    pub fn new(epoch: Instant, ipv6_prefix: u8) -> Desired {
        Desired {
            ipv6_prefix,
            decisions: HashMap::default(),
            wanted: HashMap::default(),
            labels: Labels::default(),
            epoch,
            earliest_expiry: None,
            skipped: Skipped::default(),
            refusals: Vec::new(),
        }
    }

    /// Records an active decision, unless the policy refuses it (counted). Returns its
    /// item when the item just became desired.
    pub fn insert(
        &mut self,
        policy: &Policy,
        decision: &DecisionRef<'_>,
        now: Instant,
    ) -> Option<Item> {
        let key = self.key_of(policy, decision, true)?;
        let item = match Item::from_decision(decision.value, policy.ipv6_prefix) {
            Ok(item) => item,
            Err(ItemError::Invalid) => {
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
        let previous = self.decisions.insert(key, Active { expires, origin });
        let wanted = self.wanted.entry(item).or_insert(Wanted {
            refs: 0,
            origin,
            scenario,
        });
        (wanted.origin, wanted.scenario) = (origin, scenario);
        if previous.is_some() {
            return None;
        }
        wanted.refs += 1;
        (wanted.refs == 1).then_some(item)
    }

    /// Forgets a decision; returns its item when no decision wants it any more.
    pub(super) fn forget(&mut self, policy: &Policy, decision: &DecisionRef<'_>) -> Option<Item> {
        let key = self.key_of(policy, decision, false)?;
        self.forget_key(&key)
    }

    fn forget_key(&mut self, key: &DecisionKey) -> Option<Item> {
        self.decisions.remove(key)?;
        let item = key.item(self.ipv6_prefix)?;
        let wanted = self.wanted.get_mut(&item)?;
        wanted.refs -= 1;
        if wanted.refs > 0 {
            return None;
        }
        self.wanted.remove(&item);
        Some(item)
    }

    /// Drops decisions whose duration has run out; returns the items no longer desired
    /// and how many decisions expired.
    pub(super) fn expire(&mut self, now: Instant) -> (Vec<Item>, usize) {
        let now_secs = now.saturating_duration_since(self.epoch).as_secs();
        let now_secs = u32::try_from(now_secs).unwrap_or(u32::MAX);
        if self.earliest_expiry.is_none_or(|at| at > now_secs) {
            return (Vec::new(), 0);
        }
        let expired: Vec<DecisionKey> = self
            .decisions
            .iter()
            .filter(|(_, active)| active.expires <= now_secs)
            .map(|(key, _)| key.clone())
            .collect();
        let gone = expired
            .iter()
            .filter_map(|key| self.forget_key(key))
            .collect();
        self.earliest_expiry = self.decisions.values().map(|a| a.expires).min();
        (gone, expired.len())
    }

    /// The state key of a decision, or `None` (counted) if it is not ours to push.
    fn key_of(
        &mut self,
        policy: &Policy,
        decision: &DecisionRef<'_>,
        count: bool,
    ) -> Option<DecisionKey> {
        let range = if decision.scope.eq_ignore_ascii_case("ip") {
            0
        } else if decision.scope.eq_ignore_ascii_case("range") {
            0x80
        } else {
            self.skipped.scope += u64::from(count);
            return None;
        };
        let Some(kind) = policy
            .decision_types
            .iter()
            .position(|t| t == decision.kind)
        else {
            self.skipped.kind += u64::from(count);
            return None;
        };
        Some(DecisionKey {
            scope_kind: range | (kind.min(0x7f) as u8),
            value: Value::new(decision.value),
        })
    }

    /// The safety rails: broad ranges and the allowlist. Refusals are counted.
    fn passes_rails(&mut self, policy: &Policy, decision: &DecisionRef<'_>, item: Item) -> bool {
        let net = item.net();
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
        let allowed = policy
            .allowlist
            .iter()
            .find(|allow| allow.contains(&net) || net.contains(*allow));
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(std::mem::size_of::<Wanted>() <= 12);
    }
}
