//! Several lists in one account: decisions routed by type and scope, the strongest type's
//! list winning, moves between lists, capacity shared with bans first.

use super::*;
use std::time::Duration;

/// Lane 0: bans on IPs; lane 1: captchas on IPs (a challenge list); lane 2: bans on AS
/// numbers.
fn policy() -> Policy {
    let lane = |asn: bool, kind: &str| Lane {
        asn,
        decision_types: vec![kind.into()],
    };
    let mut policy = Policy::new(Vec::new(), 64).with_lanes(vec![
        lane(false, "ban"),
        lane(false, "captcha"),
        lane(true, "ban"),
    ]);
    policy.allowlist_asns = vec![64500];
    policy
}

fn decision<'a>(kind: &'a str, scope: &'a str, value: &'a str) -> DecisionRef<'a> {
    DecisionRef {
        scope,
        value,
        kind,
        origin: "cscli",
        scenario: "test/manual",
        duration: "4h",
    }
}

fn ip(text: &str) -> Item {
    Item::from_decision(text, 64).expect("a test item")
}

/// A state with both sides known: `desired` pulled, the lists holding `listed`.
fn primed(desired: &[DecisionRef<'_>], listed: &[Item]) -> SyncState {
    let mut state = SyncState::new(policy());
    state.replace_desired(desired.iter().copied(), Instant::now());
    state.replace_list(
        (listed.iter().enumerate()).map(|(i, item)| (*item, format!("{i:032x}").into(), None)),
    );
    state
}

/// Drains as a perfect Cloudflare would: (lane, add?, items) per write, sorted (the order
/// of writes to different lists is the writer's business).
fn drain(state: &mut SyncState) -> Vec<(usize, bool, Vec<String>)> {
    let mut writes = Vec::new();
    while let Some(batch) = state.take_batch(100) {
        let items = batch.items();
        let lanes: Vec<usize> = items.iter().map(Item::lane).collect();
        assert!(lanes.windows(2).all(|w| w[0] == w[1]), "one list per batch");
        let add = matches!(batch, Batch::Add(_));
        let outcome = if add {
            Confirmed::Added
        } else {
            Confirmed::Removed
        };
        state.confirm(outcome, &items);
        let texts = items.iter().map(ToString::to_string).collect();
        writes.push((lanes[0], add, texts));
    }
    writes.sort();
    writes
}

/// One write of [`drain`]: to `lane`, an add or a removal, of `item`.
fn write(lane: usize, add: bool, item: &str) -> (usize, bool, Vec<String>) {
    (lane, add, vec![item.to_owned()])
}

#[test]
fn each_type_and_scope_goes_to_its_list() {
    let mut state = primed(
        &[
            decision("ban", "Ip", "192.0.2.1"),
            decision("captcha", "Ip", "192.0.2.2"),
            decision("ban", "AS", "13335"),
            decision("captcha", "AS", "64496"),
        ],
        &[],
    );
    let adds: Vec<_> = (drain(&mut state).into_iter())
        .filter(|(_, add, _)| *add)
        .collect();
    assert_eq!(
        adds,
        vec![
            write(0, true, "192.0.2.1"),
            write(1, true, "192.0.2.2"),
            write(2, true, "AS13335"),
        ]
    );
    // No list takes captchas on AS numbers: skipped as a type no list takes.
    assert_eq!(state.skipped().kind, 1);
    assert_eq!(
        state.desired_items(),
        vec![
            ip("192.0.2.1"),
            ip("192.0.2.2").on(1),
            Item::from_asn(13335).on(2)
        ]
    );
}

#[test]
fn ban_beats_captcha_and_the_captcha_returns_when_the_ban_ends() {
    let mut state = primed(&[decision("captcha", "Ip", "192.0.2.7")], &[]);
    assert_eq!(drain(&mut state), vec![write(1, true, "192.0.2.7")]);

    let now = Instant::now();
    state.apply_delta([], [decision("ban", "Ip", "192.0.2.7")], now);
    // Onto the ban list, off the challenge list: at once, since a ban is LAPI's word.
    assert_eq!(
        drain(&mut state),
        vec![write(0, true, "192.0.2.7"), write(1, false, "192.0.2.7")]
    );

    state.apply_delta([decision("ban", "Ip", "192.0.2.7")], [], now);
    assert_eq!(
        drain(&mut state),
        vec![write(0, false, "192.0.2.7"), write(1, true, "192.0.2.7")]
    );
    assert_eq!(state.desired_items(), vec![ip("192.0.2.7").on(1)]);
}

#[test]
fn a_ban_that_expires_beside_a_captcha_moves_it_back() {
    let mut state = SyncState::new(policy());
    let now = Instant::now();
    let mut short = decision("ban", "Ip", "192.0.2.8");
    short.duration = "10s";
    state.replace_desired([short, decision("captcha", "Ip", "192.0.2.8")], now);
    state.replace_list(std::iter::empty());
    assert_eq!(drain(&mut state), vec![write(0, true, "192.0.2.8")]);
    assert_eq!(state.expire(now + Duration::from_secs(11)), 1);
    assert_eq!(
        drain(&mut state),
        vec![write(0, false, "192.0.2.8"), write(1, true, "192.0.2.8")]
    );
}

#[test]
fn a_cut_full_pull_never_weakens_a_ban_to_a_challenge_on_its_own_word() {
    // Banned and challenged, on the ban list.
    let both = [
        decision("ban", "Ip", "192.0.2.9"),
        decision("captcha", "Ip", "192.0.2.9"),
    ];
    let mut state = primed(&both, &[ip("192.0.2.9")]);
    assert!(drain(&mut state).is_empty());

    // A pull cut short keeps the captcha and loses the ban: the item is added to the
    // challenge list, and stays on the ban list until LAPI confirms.
    state.replace_desired([both[1]], Instant::now());
    assert_eq!(drain(&mut state), vec![write(1, true, "192.0.2.9")]);
    assert_eq!(state.awaiting_confirmation(), vec![ip("192.0.2.9")]);

    // LAPI still holds the ban: it stays, and the challenge list entry goes.
    let asked = state.awaiting_confirmation();
    assert_eq!(state.confirm_removals(&asked, [both[0]], Instant::now()), 1);
    assert_eq!(drain(&mut state), vec![write(1, false, "192.0.2.9")]);
    assert_eq!(state.desired_items(), vec![ip("192.0.2.9")]);

    // Cut again; this time LAPI confirms the ban is gone: off the ban list.
    state.replace_desired([both[1]], Instant::now());
    drain(&mut state);
    let asked = state.awaiting_confirmation();
    assert_eq!(state.confirm_removals(&asked, [both[1]], Instant::now()), 0);
    assert_eq!(drain(&mut state), vec![write(0, false, "192.0.2.9")]);
    assert_eq!(state.desired_items(), vec![ip("192.0.2.9").on(1)]);
}

#[test]
fn capacity_is_shared_and_bans_come_before_captchas() {
    let mut state = SyncState::new(policy());
    let mut captcha = decision("captcha", "Ip", "192.0.2.1");
    captcha.origin = "cscli";
    let mut ban = decision("ban", "Ip", "192.0.2.2");
    ban.origin = "CAPI";
    let asn = decision("ban", "AS", "13335");
    state.replace_desired([captcha, ban, asn], Instant::now());
    state.replace_list(std::iter::empty());
    // Two places in the account: both bans, though the captcha's origin ranks higher.
    state.set_capacity(2);
    assert_eq!(
        drain(&mut state),
        vec![write(0, true, "192.0.2.2"), write(2, true, "AS13335")]
    );
    assert_eq!(state.counts().left_out, 1);
    state.set_capacity(3);
    assert_eq!(drain(&mut state), vec![write(1, true, "192.0.2.1")]);
}

#[test]
fn allowlisted_and_malformed_as_numbers_are_refused_and_counted() {
    let state = primed(
        &[
            decision("ban", "AS", "AS64500"),
            decision("ban", "AS", "not-a-number"),
            decision("ban", "AS", "0"),
            decision("ban", "as", "AS64501"),
        ],
        &[],
    );
    assert_eq!(state.desired_items(), vec![Item::from_asn(64501).on(2)]);
    let skipped = state.skipped();
    assert_eq!((skipped.allowlisted, skipped.value), (1, 2));
    let mut state = state;
    let notices = state.take_notices();
    assert!(
        notices
            .iter()
            .any(|n| n.contains("AS64500") && n.contains("allowlisted")),
        "{notices:?}"
    );
}

#[test]
fn a_list_read_puts_each_item_on_its_list() {
    // The challenge list holds an item LAPI bans: it moves to the ban list.
    let mut state = primed(
        &[decision("ban", "Ip", "192.0.2.3")],
        &[ip("192.0.2.3").on(1), Item::from_asn(13335).on(2)],
    );
    // A full pull alone never removes: the two extra items wait for LAPI's word.
    assert_eq!(drain(&mut state), vec![write(0, true, "192.0.2.3")]);
    let asked = state.awaiting_confirmation();
    state.confirm_removals(&asked, [], Instant::now());
    assert_eq!(
        drain(&mut state),
        vec![write(1, false, "192.0.2.3"), write(2, false, "AS13335")]
    );
}

#[test]
fn one_list_of_several_types_keeps_today_s_behaviour() {
    // The one list of `list_name` taking bans and captchas: both on lane 0.
    let mut state = SyncState::new(Policy::new(vec!["ban".into(), "captcha".into()], 64));
    state.replace_desired(
        [
            decision("captcha", "Ip", "192.0.2.4"),
            decision("ban", "Ip", "192.0.2.5"),
            decision("ban", "AS", "13335"),
        ],
        Instant::now(),
    );
    state.replace_list(std::iter::empty());
    assert_eq!(
        state.desired_items(),
        vec![ip("192.0.2.4"), ip("192.0.2.5")]
    );
    // No ASN list: AS decisions are out of scope, as before.
    assert_eq!(state.skipped().scope, 1);
}

#[test]
fn a_move_while_the_add_to_the_old_list_is_in_flight_still_leaves_it() {
    let mut state = primed(&[decision("captcha", "Ip", "192.0.2.7")], &[]);
    let batch = state.take_batch(10).expect("the add to the challenge list");
    // The ban arrives while that add runs.
    state.apply_delta([], [decision("ban", "Ip", "192.0.2.7")], Instant::now());
    state.confirm(Confirmed::Added, &batch.items());
    assert_eq!(
        drain(&mut state),
        vec![write(0, true, "192.0.2.7"), write(1, false, "192.0.2.7")]
    );
}

#[test]
fn when_bans_displace_captchas_the_removals_make_room_before_the_adds() {
    let mut state = SyncState::new(policy());
    let now = Instant::now();
    let captchas = [
        decision("captcha", "Ip", "192.0.2.1"),
        decision("captcha", "Ip", "192.0.2.2"),
    ];
    state.replace_desired(captchas, now);
    state.set_capacity(2);
    state.replace_list(
        [ip("192.0.2.1").on(1), ip("192.0.2.2").on(1)]
            .into_iter()
            .enumerate()
            .map(|(i, item)| (item, format!("{i:032x}").into(), None)),
    );
    assert!(drain(&mut state).is_empty());
    // A ban arrives: one captcha makes room for it; the removal is in flight when a
    // second ban arrives.
    state.apply_delta([], [decision("ban", "Ip", "198.51.100.1")], now);
    state.rebalance();
    let first = state.take_batch(100).expect("a write");
    assert!(matches!(first, Batch::Remove(_)), "{first:?}");
    state.apply_delta([], [decision("ban", "Ip", "198.51.100.2")], now);
    state.rebalance();
    state.confirm(Confirmed::Removed, &first.items());
    // One place free, two bans queued: the other captcha goes before any add, and then
    // both bans fit.
    let next = state.take_batch(100).expect("a write");
    assert!(matches!(next, Batch::Remove(_)), "{next:?}");
    state.confirm(Confirmed::Removed, &next.items());
    assert_eq!(
        drain(&mut state),
        vec![(0, true, vec!["198.51.100.1".into(), "198.51.100.2".into()])]
    );
    assert_eq!(state.counts().listed_items, 2);
}
