//! Property tests: whatever LAPI and Cloudflare do, draining converges to the desired set.

use rustc_hash::FxHashMap as HashMap;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

/// One thing that can happen to the bouncer.
#[derive(Debug, Clone)]
enum Event {
    Ban(u8),
    Unban(u8),
    /// A full pull holding exactly these bans.
    FullPull(Vec<u8>),
    /// A full pull cut short (docs/lapi.md §9.1): only the first `n` of LAPI's bans.
    TruncatedPull(u8),
    /// The poller's confirming read of LAPI's active decisions.
    Confirm,
    /// Someone adds or removes an item by hand, then a list read shows it.
    HandAdd(u8),
    HandRemove(u8),
    /// The next `n` writes fail (requeued) before reaching Cloudflare.
    FailWrites(u8),
    /// The next write's operation fails (the writer halves and retries).
    FailOperation,
    /// Drain up to `n` batches.
    Drain(u8),
    /// The list's capacity changes (admission by priority kicks in below 40).
    Capacity(u8),
    /// The next write fails on its own and its first item is set aside.
    Poison,
}

fn value(i: u8) -> String {
    // A few IPv6 hosts share /64s, to exercise items shared by several decisions.
    if i % 4 == 0 {
        format!("2001:db8::{:x}", i % 12)
    } else {
        format!("10.0.{}.{}", i / 64, i % 64)
    }
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        4 => (0u8..40).prop_map(Event::Ban),
        3 => (0u8..40).prop_map(Event::Unban),
        1 => proptest::collection::vec(0u8..40, 0..20).prop_map(Event::FullPull),
        1 => (0u8..20).prop_map(Event::TruncatedPull),
        1 => Just(Event::Confirm),
        1 => (0u8..40).prop_map(Event::HandAdd),
        1 => (0u8..40).prop_map(Event::HandRemove),
        1 => (1u8..4).prop_map(Event::FailWrites),
        1 => Just(Event::FailOperation),
        2 => (1u8..5).prop_map(Event::Drain),
        1 => (0u8..45).prop_map(Event::Capacity),
        1 => Just(Event::Poison),
    ]
}

fn decision(value: &str) -> DecisionRef<'_> {
    DecisionRef {
        scope: "Ip",
        value,
        kind: "ban",
        origin: "crowdsec",
        scenario: "prop",
        duration: "4h",
    }
}

/// A perfect Cloudflare: a list of (item, id).
struct FakeList {
    items: HashMap<Item, String>,
    next_id: u64,
}

impl FakeList {
    fn read(&self) -> Vec<(Item, Box<str>, Option<&'static str>)> {
        self.items
            .iter()
            .map(|(item, id)| (*item, id.clone().into_boxed_str(), None))
            .collect()
    }

    fn add(&mut self, item: Item) {
        let id = format!("{:032x}", self.next_id);
        self.next_id += 1;
        self.items.entry(item).or_insert(id);
    }
}

/// What a confirming read returns: LAPI's active bans on the items asked about.
fn confirm(state: &mut SyncState, banned: &HashSet<String>, now: Instant) {
    let asked = state.awaiting_confirmation();
    let active: Vec<&String> = banned
        .iter()
        .filter(|v| asked.contains(&Item::from_decision(v, 64).expect("valid")))
        .collect();
    state.confirm_removals(&asked, active.iter().map(|v| decision(v)), now);
}

/// Runs one batch against the fake list the way the writer does. A removal of an item
/// LAPI still bans is a lost ban, unless the item is desired and left out for capacity.
fn write_one(
    state: &mut SyncState,
    banned: &HashSet<String>,
    list: &mut FakeList,
    cap: usize,
    fail_write: bool,
    fail_op: bool,
    poison: bool,
) -> bool {
    let Some(batch) = state.take_batch(cap) else {
        return false;
    };
    if poison {
        let items = batch.items();
        state.quarantine(items[0]);
        state.requeue(items[1..].iter().copied());
        return true;
    }
    if fail_write || fail_op {
        state.requeue(batch.items());
        return true;
    }
    match &batch {
        Batch::Add(items) => {
            for (item, _) in items {
                list.add(*item);
            }
            state.confirm(Confirmed::Added, &batch.items());
        }
        Batch::Remove(items) => {
            for (item, id) in items {
                let still_banned = banned
                    .iter()
                    .any(|v| Item::from_decision(v, 64).ok() == Some(*item));
                assert!(
                    !still_banned || state.desired.contains(item),
                    "{item} removed while LAPI still bans it"
                );
                // Removal needs an id: the writer resolves unknown ones by search.
                let found = list.items.get(item).cloned();
                if id.is_none() {
                    state.resolve_id(*item, found.clone().map(String::into_boxed_str));
                }
                if found.is_some() {
                    list.items.remove(item);
                }
            }
            state.confirm(Confirmed::Removed, &batch.items());
        }
    }
    true
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn any_history_converges_to_the_desired_set(events in proptest::collection::vec(event(), 1..60)) {
        let mut policy = Policy::new(vec!["ban".into()], 64);
        policy.mass_removal_share = 1.0;
        let mut state = SyncState::new(policy);
        let mut list = FakeList { items: HashMap::default(), next_id: 0 };
        let mut banned: HashSet<String> = HashSet::default();
        let now = Instant::now();
        state.replace_desired([], now);
        state.replace_list(list.read());
        let (mut failing_writes, mut failing_ops, mut poisoned) = (0u8, 0u8, false);
        for event in events {
            match event {
                Event::Capacity(n) => state.set_capacity(n.into()),
                Event::Poison => poisoned = true,
                Event::Ban(i) => {
                    banned.insert(value(i));
                    state.apply_delta([], [decision(&value(i))], now);
                }
                Event::Unban(i) => {
                    banned.remove(&value(i));
                    state.apply_delta([decision(&value(i))], [], now);
                }
                Event::FullPull(bans) => {
                    banned = bans.iter().map(|i| value(*i)).collect();
                    state.replace_desired(banned.iter().map(|v| decision(v)), now);
                    state.replace_list(list.read());
                }
                Event::TruncatedPull(n) => {
                    let mut bans: Vec<&String> = banned.iter().collect();
                    bans.sort();
                    state.replace_desired(bans.into_iter().take(n.into()).map(|v| decision(v)), now);
                    state.replace_list(list.read());
                }
                Event::Confirm => confirm(&mut state, &banned, now),
                Event::HandAdd(i) => {
                    list.add(Item::from_decision(&value(i), 64).expect("valid"));
                    state.replace_list(list.read());
                }
                Event::HandRemove(i) => {
                    list.items.remove(&Item::from_decision(&value(i), 64).expect("valid"));
                    state.replace_list(list.read());
                }
                Event::FailWrites(n) => failing_writes = n,
                Event::FailOperation => failing_ops = 1,
                Event::Drain(n) => {
                    for _ in 0..n {
                        let fail_write = failing_writes > 0;
                        let fail_op = !fail_write && failing_ops > 0;
                        let poison = std::mem::take(&mut poisoned);
                        if !write_one(&mut state, &banned, &mut list, 3, fail_write, fail_op, poison) {
                            break;
                        }
                        failing_writes = failing_writes.saturating_sub(1);
                        if fail_op {
                            failing_ops = 0;
                        }
                    }
                }
            }
            prop_assert_eq!(state.pending_changes(), state.scan_pending());
        }
        // Faults end, the list has room, a list read frees what was set aside; the
        // writer drains everything.
        state.set_capacity(usize::MAX);
        state.replace_list(list.read());
        confirm(&mut state, &banned, now);
        prop_assert_eq!(state.pending_changes(), state.scan_pending());
        let mut rounds = 0;
        while write_one(&mut state, &banned, &mut list, 3, false, false, false) {
            prop_assert_eq!(state.pending_changes(), state.scan_pending());
            prop_assert_eq!(state.out_of_step(), compared(&state));
            rounds += 1;
            prop_assert!(rounds < 1000, "the drain terminates");
        }
        let mut want: Vec<Item> = banned
            .iter()
            .map(|v| Item::from_decision(v, 64).expect("valid"))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        want.sort();
        let mut got: Vec<Item> = list.items.keys().copied().collect();
        got.sort();
        prop_assert_eq!(&got, &want);
        prop_assert_eq!(state.out_of_step(), (want.len(), 0, 0));
        prop_assert_eq!(state.desired_items(), want);
        prop_assert_eq!(state.pending_changes(), (0, 0));
    }

    #[test]
    fn canonical_items_are_stable(a in any::<u32>(), len in 8u8..=32, b in any::<u128>(), len6 in 12u8..=128) {
        for text in [
            format!("{}/{len}", std::net::Ipv4Addr::from(a)),
            format!("{}/{len6}", std::net::Ipv6Addr::from(b)),
            std::net::Ipv4Addr::from(a).to_string(),
            std::net::Ipv6Addr::from(b).to_string().to_uppercase(),
        ] {
            if let Ok(item) = Item::from_decision(&text, 64) {
                // What Cloudflare stores reads back as the same item, and maps to itself.
                prop_assert_eq!(Item::from_cloudflare(&item.to_string()), Some(item));
                prop_assert_eq!(Item::from_decision(&item.to_string(), 64), Ok(item));
                let host_suffix = if item.is_ipv6() { "/128" } else { "/32" };
                prop_assert!(!item.to_string().ends_with(host_suffix));
            }
        }
    }

    #[test]
    fn decision_parsing_never_panics(scope in ".{0,8}", value in ".{0,40}", duration in ".{0,24}") {
        let mut state = SyncState::new(Policy::new(vec!["ban".into()], 64));
        let d = DecisionRef { scope: &scope, value: &value, kind: "ban", origin: "o", scenario: "s", duration: &duration };
        state.apply_delta([d], [d], Instant::now());
        let _ = crate::godur::parse_nanos(&duration);
    }

    #[test]
    fn go_durations_parse_to_their_value(h in 0u64..1000, m in 0u64..60, s in 0u64..60, ns in 0u64..1_000_000_000, negative in any::<bool>()) {
        let text = format!("{}{h}h{m}m{s}.{ns:09}s", if negative { "-" } else { "" });
        let want = ((h * 3600 + m * 60 + s) * 1_000_000_000 + ns) as i64;
        prop_assert_eq!(crate::godur::parse_nanos(&text), Ok(if negative { -want } else { want }));
        let _ = Duration::from_nanos(want as u64);
    }
}

/// [`SyncState::out_of_step`] the slow way: the two sorted vectors compared.
fn compared(state: &SyncState) -> (usize, usize, usize) {
    let (desired, managed) = (state.desired_items(), state.managed_listed_items());
    let missing = (desired.iter()).filter(|i| managed.binary_search(i).is_err());
    let extra = (managed.iter()).filter(|i| desired.binary_search(i).is_err());
    (desired.len(), missing.count(), extra.count())
}
