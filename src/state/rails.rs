//! The rails on what reaches the list: capacity admission by priority, and the
//! mass-removal guard. Part of [`SyncState`]; no IO.

use rustc_hash::FxHashSet as HashSet;
use std::cmp::Reverse;

use super::{Intent, SyncState};
use crate::item::Item;

impl SyncState {
    /// Sets how many items the list may hold (the account's capacity minus what its
    /// other lists hold), then re-admits by priority.
    pub fn set_capacity(&mut self, capacity: usize) {
        if capacity != self.capacity {
            self.capacity = capacity;
            self.admission_stale = true;
            self.rebalance();
        }
    }

    /// When the desired set exceeds capacity, admits the `capacity` highest-priority
    /// items: by origin (`policy.origin_priority`), then by remaining duration, longest
    /// first. Items whose admission changed are queued. Cheap when under capacity.
    pub fn rebalance(&mut self) {
        // Nothing that admission depends on changed since the last time.
        if !std::mem::take(&mut self.admission_stale) {
            return;
        }
        let before = self.admitted.take();
        if self.desired.wanted.len() > self.capacity {
            self.admitted = Some(self.highest_priority(self.capacity));
        }
        let changed: Vec<Item> = match (&before, &self.admitted) {
            (None, None) => Vec::new(),
            (Some(old), None) => self
                .desired
                .wanted
                .keys()
                .filter(|i| !old.contains(i))
                .copied()
                .collect(),
            (None, Some(new)) => self
                .desired
                .wanted
                .keys()
                .filter(|i| !new.contains(i))
                .copied()
                .collect(),
            (Some(old), Some(new)) => old.symmetric_difference(new).copied().collect(),
        };
        let left_out = |admitted: &Option<HashSet<Item>>| {
            admitted
                .as_ref()
                .map_or(0, |a| self.desired.wanted.len().saturating_sub(a.len()))
        };
        let (was, now) = (left_out(&before), left_out(&self.admitted));
        if was != now && now > 0 {
            self.notices.push(format!(
                "{now} desired items are left out: the list may hold {} (cloudflare.capacity minus \
                 the account's other lists); the highest-priority ones are kept",
                self.capacity
            ));
        } else if was > 0 && now == 0 {
            self.notices
                .push("every desired item fits in the list again".into());
        }
        self.enqueue_all(changed);
        if self.admitted.is_some() {
            // Items left out for capacity were queued when they became desired: drop
            // them from the queue now rather than hold them until their turn.
            self.is_drained();
        }
    }

    pub(super) fn is_admitted(&self, item: &Item) -> bool {
        self.admitted
            .as_ref()
            .is_none_or(|admitted| admitted.contains(item))
    }

    fn highest_priority(&self, capacity: usize) -> HashSet<Item> {
        // Every decision with its rank, best first; an item ranks as its best decision.
        let ranks: Vec<usize> = self
            .desired
            .labels
            .all()
            .map(|origin| self.policy.origin_rank(origin))
            .collect();
        let prefix = self.policy.ipv6_prefix;
        let mut ranked: Vec<(usize, Reverse<u32>, Item)> = self
            .desired
            .decisions
            .iter()
            .filter_map(|(key, active)| {
                let origin = ranks
                    .get(active.origin as usize)
                    .copied()
                    .unwrap_or(usize::MAX);
                Some((origin, Reverse(active.expires), key.item(prefix)?))
            })
            .collect();
        ranked.sort_unstable();
        let mut admitted = HashSet::with_capacity_and_hasher(capacity, Default::default());
        for (_, _, item) in ranked {
            if admitted.len() == capacity {
                break;
            }
            admitted.insert(item);
        }
        admitted
    }

    /// After a full list read: if the diff would remove more than
    /// `mass_removal_share` of the list and more than `mass_removal_min_items`, hold those
    /// removals until the next reconcile. If that one still wants them, they go ahead.
    /// A LAPI that was wiped or restored from an old backup cannot unban everyone at once.
    pub(super) fn guard_mass_removal(&mut self) {
        let removals: Vec<Item> = self
            .listed
            .keys()
            .filter(|item| self.intent(item) == Some(Intent::Remove))
            .copied()
            .collect();
        let share = (self.listed.len() as f64 * self.policy.mass_removal_share).floor() as usize;
        let threshold = share.max(self.policy.mass_removal_min_items);
        let excessive = removals.len() > threshold;
        if excessive && !self.mass_removal_seen {
            self.mass_removal_seen = true;
            self.notices.push(format!(
                "MASS REMOVAL HELD: this reconcile would remove {} of the {} listed items (more than \
                 safety.mass_removal_share = {}); they stay on the list until the next reconcile \
                 confirms LAPI really dropped them",
                removals.len(),
                self.listed.len(),
                self.policy.mass_removal_share
            ));
            self.held = removals.into_iter().collect();
            return;
        }
        if excessive {
            self.notices.push(format!(
                "mass removal confirmed by a second reconcile: removing {} items",
                removals.len()
            ));
        }
        self.mass_removal_seen = false;
        let held = std::mem::take(&mut self.held);
        self.enqueue_all(held);
    }
}
