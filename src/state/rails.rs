//! The rails on what reaches the list: capacity admission by priority, and the
//! mass-removal guard. Part of [`SyncState`]; no IO.

use super::{Desired, Intent, Look, SyncState};
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
    /// first. Items whose admission changed are queued. Cheap when under capacity, and
    /// when nothing changed since the last time.
    pub fn rebalance(&mut self) {
        let Some(changed) = self.admit(true) else {
            return;
        };
        // Removals first: at capacity, an add only fits once something left.
        // Admission is by value; the write is on the value's list.
        // Each key is looked up once: for its lane, then for its write.
        let keys = (changed.into_iter()).filter_map(|item| {
            let key = item.on(self.lane_of(&item)?);
            Some((key, self.look(&key)))
        });
        let keys: Vec<(Item, Look)> = keys.collect();
        let (removals, adds): (Vec<_>, Vec<_>) =
            (keys.into_iter()).partition(|(_, look)| look.intent == Some(Intent::Remove));
        for (key, look) in removals.into_iter().chain(adds) {
            self.enqueue_looked(key, false, look);
        }
        if self.over_capacity {
            // Items left out for capacity were queued when they became desired: drop
            // them from the queue now rather than hold them until their turn.
            self.drop_settled();
        }
    }

    /// Recomputes admission if anything it depends on changed; returns the items whose
    /// admission changed (when `report` asks for them), or `None` when it was up to date.
    pub(super) fn admit(&mut self, report: bool) -> Option<Vec<Item>> {
        if !std::mem::take(&mut self.admission_stale) {
            return None;
        }
        let (was_over, was_left_out) = (self.over_capacity, self.left_out());
        let over = self.desired.len() > self.capacity;
        let left_out = |desired: &Desired| -> Vec<Item> {
            if !report {
                return Vec::new();
            }
            (desired.items.iter())
                .filter(|wanted| !wanted.admitted())
                .map(|wanted| *wanted.item())
                .collect()
        };
        let changed = if over {
            let ranks: Vec<u32> = (self.desired.labels.all())
                .map(|origin| u32::try_from(self.policy.origin_rank(origin)).unwrap_or(u32::MAX))
                .collect();
            let flipped = self
                .desired
                .admit(self.capacity, &ranks, report && was_over);
            if was_over {
                flipped
            } else {
                left_out(&self.desired)
            }
        } else if was_over {
            left_out(&self.desired)
        } else {
            Vec::new()
        };
        self.over_capacity = over;
        let now_left_out = self.left_out();
        if was_left_out != now_left_out && now_left_out > 0 {
            self.notices.push(format!(
                "{now_left_out} desired items are left out: the list may hold {} \
                 (cloudflare.capacity minus the account's other lists); the highest-priority \
                 ones are kept",
                self.capacity
            ));
        } else if was_left_out > 0 && now_left_out == 0 {
            self.notices
                .push("every desired item fits in the list again".into());
        }
        Some(changed)
    }

    /// Desired items left out because the list is full.
    pub(super) fn left_out(&self) -> usize {
        if self.over_capacity {
            self.desired.len() - self.desired.admitted_count()
        } else {
            0
        }
    }

    /// After a full list read: if the diff would remove more than
    /// `mass_removal_share` of the list and more than `mass_removal_min_items`, hold those
    /// removals until the next reconcile. If that one still wants them, they go ahead.
    /// A LAPI that was wiped or restored from an old backup cannot unban everyone at once.
    pub(super) fn guard_mass_removal(&mut self) {
        let removals: Vec<Item> = (self.listed.items())
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
            let held: Vec<Item> = self.held.iter().copied().collect();
            // Queued, they no longer count as pending.
            self.enqueue_all(held);
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
