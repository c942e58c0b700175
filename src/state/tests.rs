//! Table-style tests of the pure sync core: desired state, diff and queue coalescing.

use super::*;
use std::time::Duration;

fn policy() -> Policy {
    Policy::new(vec!["ban".into()], 64)
}

fn ban(value: &str) -> DecisionRef<'_> {
    DecisionRef {
        scope: if value.contains('/') { "Range" } else { "Ip" },
        value,
        kind: "ban",
        origin: "cscli",
        scenario: "test/manual",
        duration: "4h",
    }
}

fn item(text: &str) -> Item {
    Item::from_decision(text, 64).expect("test items are valid")
}

/// A state whose desired set and list are both known (empty unless given).
fn primed(desired: &[&str], listed: &[&str]) -> SyncState {
    let mut state = SyncState::new(policy());
    let now = Instant::now();
    state.replace_desired(desired.iter().map(|v| ban(v)), now);
    state.replace_list(
        listed
            .iter()
            .enumerate()
            .map(|(i, v)| (item(v), format!("{i:032x}").into(), None)),
    );
    state
}

/// LAPI's confirming read finds no active decision on any item awaiting it: every
/// removal a full pull implied goes ahead.
fn confirm_none(state: &mut SyncState) {
    let asked = state.awaiting_confirmation();
    state.confirm_removals(&asked, [], Instant::now());
}

/// Drains the state as a perfect Cloudflare would, returning the writes in order.
fn drain(state: &mut SyncState, max: usize) -> Vec<Batch> {
    let mut writes = Vec::new();
    while let Some(batch) = state.take_batch(max) {
        let outcome = match batch {
            Batch::Add(_) => Confirmed::Added,
            Batch::Remove(_) => Confirmed::Removed,
        };
        state.confirm(outcome, &batch.items());
        writes.push(batch);
    }
    writes
}

fn adds(batch: &Batch) -> Vec<String> {
    match batch {
        Batch::Add(items) => items.iter().map(|(item, _)| item.to_string()).collect(),
        Batch::Remove(_) => panic!("expected an add batch, got {batch:?}"),
    }
}

fn removes(batch: &Batch) -> Vec<String> {
    match batch {
        Batch::Remove(items) => items.iter().map(|(item, _)| item.to_string()).collect(),
        Batch::Add(_) => panic!("expected a remove batch, got {batch:?}"),
    }
}

#[test]
fn diff_adds_missing_and_removes_extra() {
    let mut state = primed(
        &["1.1.1.1", "2.2.2.2", "10.0.0.0/24"],
        &["2.2.2.2", "9.9.9.9"],
    );
    confirm_none(&mut state);
    let writes = drain(&mut state, 100);
    assert_eq!(writes.len(), 2, "{writes:?}");
    let mut added = adds(&writes[0]);
    added.sort();
    assert_eq!(added, ["1.1.1.1", "10.0.0.0/24"]);
    assert_eq!(removes(&writes[1]), ["9.9.9.9"]);
    assert!(state.take_batch(100).is_none());
}

#[test]
fn in_step_state_writes_nothing() {
    let mut state = primed(&["1.1.1.1", "2001:db8::1"], &["1.1.1.1", "2001:db8::/64"]);
    assert!(drain(&mut state, 100).is_empty());
    assert!(state.is_drained());
}

#[test]
fn nothing_is_written_before_both_sides_are_known() {
    let mut state = SyncState::new(policy());
    state.apply_delta([], [ban("1.1.1.1")], Instant::now());
    assert!(state.take_batch(10).is_none(), "desired and list unknown");
    state.replace_list([(item("5.5.5.5"), "a".repeat(32).into(), None)]);
    assert!(
        state.take_batch(10).is_none(),
        "a list read alone must never cause removals"
    );
    state.replace_desired([ban("1.1.1.1")], Instant::now());
    confirm_none(&mut state);
    let writes = drain(&mut state, 10);
    assert_eq!(adds(&writes[0]), ["1.1.1.1"]);
    assert_eq!(removes(&writes[1]), ["5.5.5.5"]);
}

#[test]
fn add_cancelled_before_sending_costs_nothing() {
    let mut state = primed(&[], &[]);
    let now = Instant::now();
    state.apply_delta([], [ban("1.2.3.4")], now);
    state.apply_delta([ban("1.2.3.4")], [], now);
    assert!(state.take_batch(10).is_none());
    assert!(state.is_drained());
}

#[test]
fn remove_then_readd_before_sending_costs_nothing() {
    let mut state = primed(&["1.2.3.4"], &["1.2.3.4"]);
    let now = Instant::now();
    state.apply_delta([ban("1.2.3.4")], [], now);
    state.apply_delta([], [ban("1.2.3.4")], now);
    assert!(state.take_batch(10).is_none());
}

#[test]
fn repeated_deltas_are_idempotent() {
    let mut state = primed(&[], &[]);
    let now = Instant::now();
    for _ in 0..3 {
        state.apply_delta([], [ban("1.2.3.4")], now);
    }
    assert_eq!(adds(&drain(&mut state, 10)[0]), ["1.2.3.4"]);
    for _ in 0..3 {
        state.apply_delta([ban("1.2.3.4")], [], now);
    }
    let writes = drain(&mut state, 10);
    assert_eq!(writes.len(), 1);
    assert_eq!(removes(&writes[0]), ["1.2.3.4"]);
}

#[test]
fn item_shared_by_two_decisions_stays_until_both_go() {
    let mut state = primed(&[], &[]);
    let now = Instant::now();
    state.apply_delta([], [ban("2001:db8::1"), ban("2001:db8::2")], now);
    assert_eq!(adds(&drain(&mut state, 10)[0]), ["2001:db8::/64"]);

    state.apply_delta([ban("2001:db8::1")], [], now);
    assert!(drain(&mut state, 10).is_empty(), "one host still banned");

    state.apply_delta([ban("2001:db8::2")], [], now);
    assert_eq!(removes(&drain(&mut state, 10)[0]), ["2001:db8::/64"]);
}

#[test]
fn one_ip_banned_by_two_scenarios_is_one_decision_key() {
    // LAPI dedups per (value, scope, type); two scenarios on one IP arrive as one key,
    // and a `deleted` for the key means no active decision remains (docs/lapi.md §4.4).
    let mut state = primed(&[], &[]);
    let now = Instant::now();
    let mut second = ban("9.9.9.9");
    second.scenario = "dup-long";
    state.apply_delta([], [ban("9.9.9.9"), second], now);
    assert_eq!(state.counts().decisions, 1);
    drain(&mut state, 10);
    state.apply_delta([ban("9.9.9.9")], [], now);
    assert_eq!(removes(&drain(&mut state, 10)[0]), ["9.9.9.9"]);
}

#[test]
fn ban_and_range_on_same_value_are_independent() {
    let mut state = primed(&[], &[]);
    let now = Instant::now();
    let mut as_range = ban("1.2.3.4");
    as_range.scope = "Range";
    state.apply_delta([], [ban("1.2.3.4"), as_range], now);
    drain(&mut state, 10);
    state.apply_delta([as_range], [], now);
    assert!(
        drain(&mut state, 10).is_empty(),
        "the Ip-scope ban still holds"
    );
}

#[test]
fn skips_and_counts_what_is_not_ours() {
    let mut state = primed(&[], &[]);
    let now = Instant::now();
    let mut captcha = ban("5.6.7.8");
    captcha.kind = "captcha";
    let mut country = ban("FR");
    country.scope = "Country";
    let mut garbage = ban("1.2.3");
    garbage.scope = "Ip";
    let mut negative = ban("4.4.4.4");
    negative.duration = "-1s";
    let mut bad_duration = ban("4.4.4.5");
    bad_duration.duration = "forever";
    state.apply_delta(
        [],
        [
            captcha,
            country,
            garbage,
            negative,
            bad_duration,
            ban("0.0.0.0/0"),
        ],
        now,
    );
    assert_eq!(
        state.skipped(),
        Skipped {
            kind: 1,
            scope: 1,
            value: 1,
            too_broad: 1,
            duration: 2,
            allowlisted: 0,
            not_client: 0,
        }
    );
    assert!(state.take_batch(10).is_none());
    // A captcha delete must not touch a ban on the same IP.
    state.apply_delta([], [ban("5.6.7.8")], now);
    drain(&mut state, 10);
    state.apply_delta([captcha], [], now);
    assert!(drain(&mut state, 10).is_empty());
}

#[test]
fn decisions_expire_locally() {
    let mut state = primed(&[], &[]);
    let start = Instant::now();
    let mut short = ban("3.3.3.3");
    short.duration = "5s";
    state.apply_delta([], [short, ban("4.4.4.4")], start);
    drain(&mut state, 10);
    assert_eq!(state.expire(start + Duration::from_secs(4)), 0);
    assert_eq!(state.expire(start + Duration::from_secs(5)), 1);
    assert_eq!(removes(&drain(&mut state, 10)[0]), ["3.3.3.3"]);
    assert_eq!(state.counts().decisions, 1);
}

#[test]
fn full_pull_removes_hard_deleted_decisions_once_lapi_confirms() {
    let mut state = primed(&["1.1.1.1", "2.2.2.2"], &["1.1.1.1", "2.2.2.2"]);
    state.replace_desired([ban("1.1.1.1")], Instant::now());
    assert!(drain(&mut state, 10).is_empty(), "the pull's word alone");
    assert_eq!(state.awaiting_confirmation(), [item("2.2.2.2")]);
    assert_eq!(state.counts().awaiting_confirmation, 1);
    confirm_none(&mut state);
    assert_eq!(removes(&drain(&mut state, 10)[0]), ["2.2.2.2"]);
    assert_eq!(state.counts().awaiting_confirmation, 0);
}

#[test]
fn a_cut_full_pull_removes_nothing_lapi_still_holds() {
    let all = [
        "1.1.1.1",
        "2.2.2.2",
        "3.3.3.3",
        "10.0.0.0/24",
        "2001:db8::1",
    ];
    let listed = [
        "1.1.1.1",
        "2.2.2.2",
        "3.3.3.3",
        "10.0.0.0/24",
        "2001:db8::/64",
    ];
    let mut state = primed(&all, &listed);
    assert!(drain(&mut state, 10).is_empty());
    // LAPI 1.7 cut its answer after the first decision: valid JSON, most of `new` missing.
    state.replace_desired([ban("1.1.1.1")], Instant::now());
    state.replace_list(
        listed
            .iter()
            .enumerate()
            .map(|(i, v)| (item(v), format!("{i:032x}").into(), None)),
    );
    assert!(
        drain(&mut state, 10).is_empty(),
        "nothing removed on its word"
    );
    assert_eq!(state.awaiting_confirmation().len(), 4);
    // The confirming read: everything but 3.3.3.3 (hard-deleted meanwhile) is active.
    let asked = state.awaiting_confirmation();
    let active = [
        ban("2.2.2.2"),
        ban("10.0.0.0/24"),
        ban("2001:db8::1"),
        ban("9.9.9.9"),
    ];
    let kept = state.confirm_removals(&asked, active, Instant::now());
    assert_eq!(kept, 3);
    let writes = drain(&mut state, 10);
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!(removes(&writes[0]), ["3.3.3.3"]);
    assert!(
        !state.desired_items().contains(&item("9.9.9.9")),
        "a decision that was not asked about is left to the stream"
    );
    assert_eq!(state.desired_items().len(), 4);
}

#[test]
fn deleted_and_expired_decisions_leave_at_once() {
    let mut state = primed(&["1.1.1.1"], &["1.1.1.1"]);
    state.apply_delta([ban("1.1.1.1")], [], Instant::now());
    assert_eq!(removes(&drain(&mut state, 10)[0]), ["1.1.1.1"]);
    let now = Instant::now();
    let mut short = ban("2.2.2.2");
    short.duration = "1s";
    state.apply_delta([], [short], now);
    drain(&mut state, 10);
    state.expire(now + std::time::Duration::from_secs(3));
    assert_eq!(removes(&drain(&mut state, 10)[0]), ["2.2.2.2"]);
    // Deleted, then banned again, then left out of a cut pull: held again.
    state.apply_delta([], [ban("4.4.4.4")], now);
    drain(&mut state, 10);
    state.apply_delta([ban("4.4.4.4")], [ban("4.4.4.4")], now);
    state.replace_desired([], now);
    assert!(drain(&mut state, 10).is_empty());
    assert_eq!(state.awaiting_confirmation(), [item("4.4.4.4")]);
}

#[test]
fn paused_removals_wait_and_adds_go_on() {
    let mut state = primed(&["1.1.1.1"], &["9.9.9.9"]);
    confirm_none(&mut state);
    state.pause_removals(true);
    let writes = drain(&mut state, 10);
    assert_eq!(writes.len(), 1);
    assert_eq!(adds(&writes[0]), ["1.1.1.1"]);
    state.pause_removals(false);
    assert_eq!(removes(&drain(&mut state, 10)[0]), ["9.9.9.9"]);
}

#[test]
fn batches_respect_max_and_fifo_order() {
    let mut state = primed(&[], &[]);
    let now = Instant::now();
    let values: Vec<String> = (1..=5).map(|i| format!("10.0.0.{i}")).collect();
    state.apply_delta([], values.iter().map(|v| ban(v)), now);
    let writes = drain(&mut state, 2);
    let sizes: Vec<usize> = writes.iter().map(Batch::len).collect();
    assert_eq!(sizes, [2, 2, 1]);
    let order: Vec<String> = writes.iter().flat_map(adds).collect();
    assert_eq!(order, values);
}

#[test]
fn a_batch_holds_one_kind_and_keeps_the_other_queued() {
    let mut state = primed(&["1.1.1.1"], &["1.1.1.1"]);
    assert!(state.is_drained());
    let now = Instant::now();
    state.apply_delta([], [ban("2.2.2.2")], now);
    state.apply_delta([ban("1.1.1.1")], [], now);
    state.apply_delta([], [ban("3.3.3.3")], now);
    let writes = drain(&mut state, 10);
    assert_eq!(adds(&writes[0]), ["2.2.2.2", "3.3.3.3"]);
    assert_eq!(removes(&writes[1]), ["1.1.1.1"]);
}

#[test]
fn failed_write_is_requeued_and_nothing_is_lost() {
    let mut state = primed(&["1.1.1.1", "2.2.2.2"], &[]);
    let batch = state.take_batch(10).expect("two adds");
    assert!(state.take_batch(10).is_none());
    state.requeue(batch.items());
    let writes = drain(&mut state, 10);
    assert_eq!(writes.iter().map(Batch::len).sum::<usize>(), 2);
}

#[test]
fn changes_during_an_operation_are_applied_after_it() {
    let mut state = primed(&[], &[]);
    let now = Instant::now();
    state.apply_delta([], [ban("1.1.1.1")], now);
    let batch = state.take_batch(10).expect("an add");
    // While the add is in flight, the ban is lifted.
    state.apply_delta([ban("1.1.1.1")], [], now);
    state.confirm(Confirmed::Added, &batch.items());
    let writes = drain(&mut state, 10);
    assert_eq!(removes(&writes[0]), ["1.1.1.1"]);
}

#[test]
fn removal_carries_known_ids_and_learns_missing_ones() {
    let mut state = primed(&["7.7.7.7"], &["1.1.1.1"]);
    confirm_none(&mut state);
    let writes = drain(&mut state, 10);
    match &writes[1] {
        Batch::Remove(items) => assert_eq!(items[0].1.as_deref(), Some(&*format!("{:032x}", 0))),
        other => panic!("expected a removal, got {other:?}"),
    }
    // 7.7.7.7 was added by a POST: no id known until a read or search finds it.
    assert_eq!(state.counts().listed_without_id, 1);
    state.apply_delta([ban("7.7.7.7")], [], Instant::now());
    let Some(Batch::Remove(items)) = state.take_batch(10) else {
        panic!("expected a removal");
    };
    assert_eq!(items, [(item("7.7.7.7"), None)]);
    state.resolve_id(item("7.7.7.7"), Some("f".repeat(32).into()));
    assert_eq!(state.counts().listed_without_id, 0);
}

#[test]
fn comments_name_origin_and_scenario_within_500_chars() {
    let mut state = primed(&[], &[]);
    let long = "s".repeat(600);
    let mut decision = ban("1.1.1.1");
    decision.scenario = &long;
    state.apply_delta(
        [],
        [decision, ban("2.2.2.2"), ban("3.3.3.3")],
        Instant::now(),
    );
    let Some(Batch::Add(items)) = state.take_batch(10) else {
        panic!("expected adds");
    };
    assert_eq!(items[0].1.chars().count(), 500);
    assert!(items[0].1.starts_with("crowdsec cscli: sss"));
    assert_eq!(&*items[1].1, "crowdsec cscli: test/manual");
    // Items of one origin and scenario share one text.
    assert!(std::sync::Arc::ptr_eq(&items[1].1, &items[2].1));
    assert!(!std::sync::Arc::ptr_eq(&items[0].1, &items[1].1));
}

fn ban_from(
    value: &'static str,
    origin: &'static str,
    duration: &'static str,
) -> DecisionRef<'static> {
    DecisionRef {
        origin,
        duration,
        ..ban(value)
    }
}

#[test]
fn broad_ranges_and_allowlisted_networks_are_refused_once_each() {
    let mut policy = policy();
    policy.allowlist = vec![
        "192.0.2.0/24".parse().expect("net"),
        "2001:db8::1/128".parse().expect("net"),
    ];
    let mut state = SyncState::new(policy);
    state.replace_desired([], Instant::now());
    state.replace_list([]);
    let now = Instant::now();
    let decisions = [
        ban("10.0.0.0/15"),   // wider than /16
        ban("2001:db8::/31"), // wider than /32
        ban("192.0.2.7"),     // inside the allowlist
        ban("192.0.0.0/16"),  // contains an allowlisted network
        ban("2001:db8::5"),   // its /64 contains an allowlisted address
        ban("10.0.0.0/16"),   // fine
    ];
    state.apply_delta([], decisions, now);
    state.apply_delta([], decisions, now);
    let skipped = state.skipped();
    assert_eq!(
        (skipped.too_broad, skipped.allowlisted),
        (4, 6),
        "{skipped:?}"
    );
    assert_eq!(
        state.take_notices().len(),
        5,
        "each refusal is reported once"
    );
    assert_eq!(adds(&drain(&mut state, 10)[0]), ["10.0.0.0/16"]);
}

#[test]
fn over_capacity_the_highest_priority_items_are_kept() {
    let mut state = primed(&[], &[]);
    let now = Instant::now();
    state.apply_delta(
        [],
        [
            ban_from("1.0.0.1", "CAPI", "4h"),
            ban_from("1.0.0.2", "lists", "4h"),
            ban_from("1.0.0.3", "crowdsec", "1h"),
            ban_from("1.0.0.4", "crowdsec", "3h"),
            ban_from("1.0.0.5", "cscli-import", "1m"),
        ],
        now,
    );
    state.set_capacity(3);
    let mut kept = adds(&drain(&mut state, 10)[0]);
    kept.sort();
    assert_eq!(
        kept,
        ["1.0.0.3", "1.0.0.4", "1.0.0.5"],
        "cscli first, then crowdsec"
    );
    assert_eq!(state.counts().left_out, 2);
    assert!(state
        .take_notices()
        .iter()
        .any(|n| n.starts_with("2 desired items are left out")));

    // A higher-priority ban pushes out the lowest: crowdsec with 1h left. The list
    // is full, so the removal goes first.
    state.apply_delta([], [ban_from("1.0.0.6", "cscli", "4h")], now);
    state.rebalance();
    let writes = drain(&mut state, 10);
    assert_eq!(removes(&writes[0]), ["1.0.0.3"]);
    assert_eq!(adds(&writes[1]), ["1.0.0.6"]);

    // Room again: everything fits.
    state.set_capacity(10);
    let mut added = adds(&drain(&mut state, 10)[0]);
    added.sort();
    assert_eq!(added, ["1.0.0.1", "1.0.0.2", "1.0.0.3"]);
    assert_eq!(state.counts().left_out, 0);
}

#[test]
fn a_mass_removal_waits_for_a_second_reconcile() {
    let values: Vec<String> = (1..=30).map(|i| format!("10.9.0.{i}")).collect();
    let refs: Vec<&str> = values.iter().map(String::as_str).collect();
    let mut state = primed(&refs, &refs);
    assert!(drain(&mut state, 100).is_empty());
    let listed = |state: &SyncState| -> Vec<(Item, Box<str>, Option<&'static str>)> {
        state
            .managed_listed_items()
            .into_iter()
            .enumerate()
            .map(|(i, item)| (item, format!("{i:032x}").into(), None))
            .collect()
    };
    // LAPI comes back nearly empty (restored from an old backup).
    state.replace_desired([ban("10.9.0.1")], Instant::now());
    let items = listed(&state);
    state.replace_list(items);
    assert!(
        drain(&mut state, 100).is_empty(),
        "29 of 30 removals are held"
    );
    assert_eq!(state.counts().held, 29);
    assert!(state.take_notices()[0].starts_with("MASS REMOVAL HELD"));

    // A delta still works meanwhile.
    state.apply_delta([ban("10.9.0.1")], [], Instant::now());
    assert_eq!(removes(&drain(&mut state, 100)[0]), ["10.9.0.1"]);

    // The next reconcile sees the same, and LAPI confirms: the removal goes ahead.
    state.replace_desired([], Instant::now());
    let items = listed(&state);
    state.replace_list(items);
    confirm_none(&mut state);
    let removed: usize = drain(&mut state, 100).iter().map(Batch::len).sum();
    assert_eq!(removed, 29);
    assert_eq!(state.counts().held, 0);
}

#[test]
fn a_mass_removal_cancelled_by_the_next_reconcile_removes_nothing() {
    let values: Vec<String> = (1..=30).map(|i| format!("10.8.0.{i}")).collect();
    let refs: Vec<&str> = values.iter().map(String::as_str).collect();
    let mut state = primed(&refs, &refs);
    drain(&mut state, 100);
    state.replace_desired([], Instant::now());
    state.replace_list(
        refs.iter()
            .enumerate()
            .map(|(i, v)| (item(v), format!("{i:032x}").into(), None)),
    );
    assert!(drain(&mut state, 100).is_empty());
    // LAPI recovered: the next full pull has everything again.
    state.replace_desired(refs.iter().map(|v| ban(v)), Instant::now());
    state.replace_list(
        refs.iter()
            .enumerate()
            .map(|(i, v)| (item(v), format!("{i:032x}").into(), None)),
    );
    assert!(drain(&mut state, 100).is_empty());
    assert_eq!(state.counts().held, 0);
}

#[test]
fn tagged_mode_removes_only_tagged_items() {
    let mut policy = policy();
    policy.manage_all = false;
    let mut state = SyncState::new(policy);
    state.replace_desired([ban("1.1.1.1")], Instant::now());
    state.replace_list([
        (item("1.1.1.1"), "a".repeat(32).into(), Some("made by hand")),
        (item("2.2.2.2"), "b".repeat(32).into(), Some("made by hand")),
        (
            item("3.3.3.3"),
            "c".repeat(32).into(),
            Some("crowdsec cscli: old ban"),
        ),
        (
            item("4.4.4.4"),
            "d".repeat(32).into(),
            Some("crowdsecurity is not our tag"),
        ),
    ]);
    confirm_none(&mut state);
    let writes = drain(&mut state, 10);
    assert_eq!(
        writes.len(),
        1,
        "1.1.1.1 is already there, untagged: left alone"
    );
    assert_eq!(removes(&writes[0]), ["3.3.3.3"]);
}

#[test]
fn a_quarantined_item_waits_for_the_next_list_read() {
    let mut state = primed(&["1.1.1.1", "2.2.2.2"], &[]);
    let batch = state.take_batch(1).expect("an add");
    let bad = batch.items()[0];
    let good = if bad == item("1.1.1.1") {
        "2.2.2.2"
    } else {
        "1.1.1.1"
    };
    state.requeue(batch.items());
    assert_eq!(
        state.take_batch(1),
        Some(batch.clone()),
        "requeued items come first"
    );
    state.quarantine(bad);
    state.requeue(batch.items());
    let rest = drain(&mut state, 10);
    assert_eq!(rest.len(), 1);
    assert_eq!(adds(&rest[0]), [good]);
    assert_eq!(state.counts().quarantined, 1);
    state.replace_list([(item(good), "b".repeat(32).into(), None)]);
    assert_eq!(adds(&drain(&mut state, 10)[0]), [bad.to_string()]);
}

#[test]
fn active_decisions_have_a_label_per_known_origin() {
    let mut state = primed(&[], &[]);
    state.apply_delta(
        [],
        [
            ban_from("1.0.0.1", "cscli", "4h"),
            ban_from("1.0.0.2", "cscli-import", "4h"),
            ban_from("1.0.0.3", "console", "4h"),
            ban_from("1.0.0.4", "crowdsec", "4h"),
            ban_from("1.0.0.5", "lists", "4h"),
            ban_from("1.0.0.6", "remediation_sync", "4h"),
            ban_from("1.0.0.7", "CAPI", "4h"),
            ban_from("1.0.0.8", "somewhere-new", "4h"),
            ban_from("2001:db8::1", "console", "4h"),
        ],
        Instant::now(),
    );
    let counts = state.active_by_origin();
    let labels: Vec<&str> = counts
        .iter()
        .filter(|(_, ip_type, _)| *ip_type == "ipv4")
        .map(|(origin, _, _)| *origin)
        .collect();
    assert_eq!(
        labels,
        [
            "cscli",
            "console",
            "crowdsec",
            "lists",
            "remediation_sync",
            "CAPI",
            "other"
        ]
    );
    let count = |origin: &str, ip_type: &str| {
        counts
            .iter()
            .find(|(o, t, _)| *o == origin && *t == ip_type)
            .map(|(_, _, n)| *n)
    };
    assert_eq!(
        count("cscli", "ipv4"),
        Some(2),
        "cscli-import counts as cscli"
    );
    assert_eq!(count("console", "ipv4"), Some(1));
    assert_eq!(count("console", "ipv6"), Some(1));
    assert_eq!(count("remediation_sync", "ipv4"), Some(1));
    assert_eq!(count("other", "ipv4"), Some(1));
}

#[test]
fn the_longest_decision_on_a_key_counts() {
    // A snapshot of active decisions is not deduplicated: a short decision listed after
    // a long one on the same key must not shorten it.
    let mut state = primed(&[], &[]);
    let now = Instant::now();
    let mut short = ban("1.1.1.1");
    short.duration = "1s";
    let mut short_v6 = ban("2001:db8::5");
    short_v6.duration = "1s";
    state.apply_delta(
        [],
        [ban("1.1.1.1"), short, ban("2001:db8::5"), short_v6],
        now,
    );
    state.expire(now + std::time::Duration::from_secs(5));
    assert_eq!(
        state.desired_items(),
        [item("1.1.1.1"), item("2001:db8::/64")]
    );
}

#[test]
fn only_items_the_list_held_count_as_undone() {
    let read = |state: &mut SyncState, listed: &[&str]| {
        state.replace_list(
            listed
                .iter()
                .enumerate()
                .map(|(i, v)| (item(v), format!("{i:032x}").into(), None)),
        )
    };
    let mut state = primed(&["1.1.1.1", "2.2.2.2"], &["1.1.1.1"]);
    // 2.2.2.2 was never on the list (say Cloudflare refuses it): missing, not undone.
    let drift = read(&mut state, &["1.1.1.1"]);
    assert_eq!((drift.missing, drift.undone_fingerprint), (1, 0));
    // 1.1.1.1 was on the list and someone removed it: undone.
    let drift = read(&mut state, &[]);
    assert_eq!(drift.missing, 2);
    assert_ne!(drift.undone_fingerprint, 0);
}

#[test]
fn a_comment_is_tagged_when_it_is_the_tag_or_starts_with_it_and_a_space() {
    let policy = Policy::new(vec!["ban".into()], 64);
    for (comment, tagged) in [
        (Some("crowdsec"), true),
        (Some("crowdsec ban: crowdsecurity/ssh-bf"), true),
        (Some("crowdsec "), true),
        (Some("crowdsecurity"), false),
        (Some("crowdsec\tban"), false),
        (Some("my crowdsec"), false),
        (Some("crowdse"), false),
        (Some(""), false),
        (None, false),
    ] {
        assert_eq!(policy.is_tagged(comment), tagged, "{comment:?}");
    }
}
