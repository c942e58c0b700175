//! A full pull never removes on its own word (docs/hardening.md §7): which removals wait
//! for a confirming read of LAPI's active decisions, and what that read settles.

use std::time::Instant;

use rustc_hash::FxHashSet as HashSet;

use super::{DecisionRef, Intent, SyncState};
use crate::item::Item;

impl SyncState {
    /// Removals waiting for a confirming read of LAPI's active decisions: listed items
    /// that a full pull no longer wants, that no delta deleted and that did not expire.
    pub fn awaiting_confirmation(&self) -> Vec<Item> {
        let mut items: Vec<Item> = self.awaiting.iter().copied().collect();
        items.sort();
        items
    }

    /// How many removals wait for a confirming read (cheap: no scan).
    pub fn awaiting_count(&self) -> usize {
        self.awaiting.len()
    }

    /// Applies a confirming read for `asked` (the items of
    /// [`SyncState::awaiting_confirmation`] it covered): `active` holds the decisions LAPI
    /// still has on them, which are wanted again; every other item asked about is gone,
    /// and its removal goes ahead. Returns how many asked items stay.
    pub fn confirm_removals<'a>(
        &mut self,
        asked: &[Item],
        active: impl IntoIterator<Item = DecisionRef<'a>>,
        now: Instant,
    ) -> usize {
        // Asked by value: a decision on it may put it on any of its lists.
        let asked_set: HashSet<Item> = asked.iter().map(|key| key.bare()).collect();
        for decision in active {
            let item = super::desired::decision_item(&decision, self.policy.ipv6_prefix);
            if item.is_some_and(|item| asked_set.contains(&item)) {
                self.desired.insert(&self.policy, &decision, now);
                self.admission_stale = true;
            }
        }
        // Lists an item moved away from by these decisions lost it by LAPI's word.
        self.settle_moves();
        self.collect_refusals();
        let mut kept = 0;
        for &key in asked {
            self.doubtful.remove(&key);
            if self.desires(&key) {
                kept += 1;
            } else {
                self.gone.insert(key);
            }
            self.awaiting.remove(&key);
            self.enqueue(key);
            self.enqueue_value(key.bare());
        }
        kept
    }

    /// Removals the mass-removal guard holds, sorted.
    pub fn held_removals(&self) -> Vec<Item> {
        let mut items: Vec<Item> = self.held.iter().copied().collect();
        items.sort();
        items
    }

    /// An operator confirms the removals the mass-removal guard holds (`once
    /// --confirm-removals`): they go ahead now, as if a second reconcile had confirmed
    /// them. Returns how many were released.
    pub fn release_held_removals(&mut self) -> usize {
        self.mass_removal_seen = false;
        let held: Vec<Item> = std::mem::take(&mut self.held).into_iter().collect();
        let released = held.len();
        self.enqueue_all(held);
        released
    }

    /// Trusts full pulls: removals need no confirming read (`cleanup` empties the
    /// list on purpose).
    pub fn trust_full_pulls(&mut self) {
        self.trust_full_pulls = true;
    }

    /// Stops (or resumes) sending removals, e.g. while another writer is suspected.
    /// Adds go on.
    pub fn pause_removals(&mut self, paused: bool) {
        if self.removals_paused == paused {
            return;
        }
        self.removals_paused = paused;
        if !paused {
            let extra: Vec<Item> = (self.listed.items())
                .filter(|item| self.intent(item) == Some(Intent::Remove))
                .copied()
                .collect();
            self.enqueue_all(extra);
        }
        self.refresh_queue();
    }

    /// Records that no decision wants `item` any more, by a delta or an expiry: its
    /// removal needs no confirmation, unless a full pull earlier left some of its
    /// decisions out (those may still be active).
    pub(super) fn mark_gone(&mut self, item: Item) {
        if self.doubtful.contains(&item) {
            self.awaiting.insert(item);
        } else {
            self.gone.insert(item);
        }
    }

    /// Whether removing `item` waits for LAPI to confirm: no decision wants it, and
    /// nothing but a full pull said so. (An item still desired but left out for
    /// capacity goes at once: that is the bouncer's own choice.)
    /// `look` is [`SyncState::look`]'s, for `item`.
    pub(super) fn unconfirmed(&self, item: &Item, look: &super::Look) -> bool {
        !self.trust_full_pulls && !look.desires && !self.gone.contains(item)
    }
}
