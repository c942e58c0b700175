//! Table-style tests of the pure sync core: desired state, diff and queue coalescing.

use super::*;

fn filter() -> Filter {
    Filter {
        decision_types: vec!["ban".into()],
        ipv6_prefix: 64,
    }
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
    let mut state = SyncState::new(filter());
    let now = Instant::now();
    state.replace_desired(desired.iter().map(|v| ban(v)), now);
    state.replace_list(
        listed
            .iter()
            .enumerate()
            .map(|(i, v)| (item(v), format!("{i:032x}").into())),
    );
    state
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
    let mut state = SyncState::new(filter());
    state.apply_delta([], [ban("1.1.1.1")], Instant::now());
    assert!(state.take_batch(10).is_none(), "desired and list unknown");
    state.replace_list([(item("5.5.5.5"), "a".repeat(32).into())]);
    assert!(
        state.take_batch(10).is_none(),
        "a list read alone must never cause removals"
    );
    state.replace_desired([ban("1.1.1.1")], Instant::now());
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
            duration: 2
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
fn full_pull_removes_hard_deleted_decisions() {
    let mut state = primed(&["1.1.1.1", "2.2.2.2"], &["1.1.1.1", "2.2.2.2"]);
    state.replace_desired([ban("1.1.1.1")], Instant::now());
    assert_eq!(removes(&drain(&mut state, 10)[0]), ["2.2.2.2"]);
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
    let writes = drain(&mut state, 10);
    match &writes[1] {
        Batch::Remove(items) => assert_eq!(items[0].1.as_deref(), Some(&*format!("{:032x}", 0))),
        other => panic!("expected a removal, got {other:?}"),
    }
    // 7.7.7.7 was added by a POST: no id known until a read or search finds it.
    assert_eq!(state.listed_without_id(), 1);
    state.apply_delta([ban("7.7.7.7")], [], Instant::now());
    let Some(Batch::Remove(items)) = state.take_batch(10) else {
        panic!("expected a removal");
    };
    assert_eq!(items, [(item("7.7.7.7"), None)]);
    state.resolve_id(item("7.7.7.7"), Some("f".repeat(32).into()));
    assert_eq!(state.listed_without_id(), 0);
}

#[test]
fn comments_name_origin_and_scenario_within_500_chars() {
    let mut state = primed(&[], &[]);
    let long = "s".repeat(600);
    let mut decision = ban("1.1.1.1");
    decision.scenario = &long;
    state.apply_delta([], [decision, ban("2.2.2.2")], Instant::now());
    let Some(Batch::Add(items)) = state.take_batch(10) else {
        panic!("expected adds");
    };
    assert_eq!(items[0].1.chars().count(), 500);
    assert!(items[0].1.starts_with("crowdsec cscli: sss"));
    assert_eq!(items[1].1, "crowdsec cscli: test/manual");
}
