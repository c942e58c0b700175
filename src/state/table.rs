//! A map keyed by its entries' keys (an [`Item`], or a decision's key), laid out for
//! memory: the entries sit in one vector, and a hash index holds only their 4-byte
//! positions.
//!
//! A `HashMap<Item, V>` keeps every entry in its bucket array, which runs between 44%
//! and 87% full; at a million entries that is most of the memory the bouncer uses. Here
//! only the 5 bytes per bucket of the index pay for the load factor, and the vector's
//! unused tail is address space the kernel never backs.

use std::fmt;
use std::hash::{BuildHasher, Hash};

use hashbrown::hash_table::Entry;
use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;

/// An entry of an [`ItemTable`]: a value that carries its own key.
pub(super) trait Keyed {
    type Key: Hash + Eq;
    fn key(&self) -> &Self::Key;
}

/// Entries keyed by their key (mostly an item). Removal moves the last entry into the hole, so
/// positions are only stable between removals.
pub(super) struct ItemTable<E> {
    entries: Vec<E>,
    index: HashTable<u32>,
}

fn hash(key: &impl Hash) -> u64 {
    FxBuildHasher.hash_one(key)
}

/// A position as the index stores it. A table never holds 2³² entries: no list or
/// LAPI comes near, and memory would run out long before.
fn position(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}

impl<E: Keyed> ItemTable<E> {
    pub fn new() -> ItemTable<E> {
        ItemTable {
            entries: Vec::new(),
            index: HashTable::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Where `item`'s entry is, until the next removal.
    pub fn position_of(&self, item: &E::Key) -> Option<usize> {
        let entries = &self.entries;
        self.index
            .find(hash(item), |&i| entries[i as usize].key() == item)
            .map(|&i| i as usize)
    }

    pub fn get(&self, item: &E::Key) -> Option<&E> {
        self.position_of(item).map(|i| &self.entries[i])
    }

    pub fn get_mut(&mut self, item: &E::Key) -> Option<&mut E> {
        self.position_of(item).map(|i| &mut self.entries[i])
    }

    pub fn contains(&self, item: &E::Key) -> bool {
        self.position_of(item).is_some()
    }

    /// The entry for `item`, made by `make` if there is none; and whether it was made.
    pub fn get_or_insert_with(&mut self, item: E::Key, make: impl FnOnce() -> E) -> (&mut E, bool) {
        self.make_room();
        let entries = &self.entries;
        let slot = self.index.entry(
            hash(&item),
            |&i| entries[i as usize].key() == &item,
            |&j| hash(entries[j as usize].key()),
        );
        match slot {
            Entry::Occupied(found) => (&mut self.entries[*found.get() as usize], false),
            Entry::Vacant(vacant) => {
                let i = self.entries.len();
                vacant.insert(position(i));
                self.entries.push(make());
                (&mut self.entries[i], true)
            }
        }
    }

    /// Inserts `entry`, replacing (and returning) the entry for the same item.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn insert(&mut self, entry: E) -> Option<E> {
        self.insert_at(entry).1
    }

    /// Inserts `entry`, replacing (and returning) the entry for the same item; and where
    /// it now is. One hash and one probe.
    pub fn insert_at(&mut self, entry: E) -> (usize, Option<E>) {
        self.make_room();
        let entries = &self.entries;
        let slot = self.index.entry(
            hash(entry.key()),
            |&i| entries[i as usize].key() == entry.key(),
            |&j| hash(entries[j as usize].key()),
        );
        match slot {
            Entry::Occupied(found) => {
                let i = *found.get() as usize;
                (i, Some(std::mem::replace(&mut self.entries[i], entry)))
            }
            Entry::Vacant(vacant) => {
                let i = self.entries.len();
                vacant.insert(position(i));
                self.entries.push(entry);
                (i, None)
            }
        }
    }

    /// Makes room for `additional` more entries at once, so that filling the table to a
    /// size known in advance grows neither the vector nor the index.
    pub fn reserve(&mut self, additional: usize) {
        self.entries.reserve(additional);
        let wanted = self.entries.len().saturating_add(additional);
        if self.index.capacity() < wanted {
            self.rebuild(wanted);
        }
    }

    /// Makes room in the index for one more entry. A full index is built anew at twice
    /// the size from the entries in order, rather than grown in place: growing in place
    /// rehashes in bucket order, one cache miss into the entries for each; in order, the
    /// entries stream through the cache and only the (small) index is written at random.
    fn make_room(&mut self) {
        if self.index.len() < self.index.capacity() {
            return;
        }
        self.rebuild((self.entries.len() * 2).max(16));
    }

    /// Builds the index anew with room for `capacity` entries, from the entries in order.
    fn rebuild(&mut self, capacity: usize) {
        let entries = &self.entries;
        let mut index = HashTable::with_capacity(capacity);
        for (i, entry) in entries.iter().enumerate() {
            index.insert_unique(hash(entry.key()), position(i), |&j| {
                hash(entries[j as usize].key())
            });
        }
        self.index = index;
    }

    /// Removes and returns `item`'s entry.
    pub fn remove(&mut self, item: &E::Key) -> Option<E> {
        let entries = &self.entries;
        let found = self
            .index
            .find_entry(hash(item), |&i| entries[i as usize].key() == item)
            .ok()?;
        let (i, _) = found.remove();
        let last = self.entries.len() - 1;
        let removed = self.entries.swap_remove(i as usize);
        if (i as usize) < last {
            // The last entry moved into the hole: point its index slot at it.
            let moved = hash(self.entries[i as usize].key());
            if let Some(slot) = self.index.find_mut(moved, |&j| j as usize == last) {
                *slot = i;
            }
        }
        Some(removed)
    }

    pub fn iter(&self) -> std::slice::Iter<'_, E> {
        self.entries.iter()
    }

    /// The entries, by position.
    pub fn entries(&self) -> &[E] {
        &self.entries
    }

    pub fn entries_mut(&mut self) -> &mut [E] {
        &mut self.entries
    }

    pub fn items(&self) -> impl Iterator<Item = &E::Key> {
        self.entries.iter().map(Keyed::key)
    }
}

impl<E: Keyed> Default for ItemTable<E> {
    fn default() -> Self {
        ItemTable::new()
    }
}

impl<E> fmt::Debug for ItemTable<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ItemTable({} entries)", self.entries.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::item::Item;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[derive(Debug, Clone, Copy, PartialEq)]
    struct Entry(Item, u32);

    impl Keyed for Entry {
        type Key = Item;
        fn key(&self) -> &Item {
            &self.0
        }
    }

    fn item(n: u8) -> Item {
        Item::from_decision(&format!("10.0.0.{n}"), 64).unwrap()
    }

    proptest! {
        /// Any sequence of inserts and removes leaves the table agreeing with a
        /// `BTreeMap`, entry for entry, through the swaps removal makes.
        #[test]
        fn agrees_with_a_map(ops in prop::collection::vec((any::<bool>(), 0u8..40, any::<u32>()), 0..300)) {
            let mut table = ItemTable::new();
            let mut model = BTreeMap::new();
            for (insert, n, value) in ops {
                if insert {
                    let old = table.insert(Entry(item(n), value)).map(|e| e.1);
                    prop_assert_eq!(old, model.insert(item(n), value));
                } else {
                    let old = table.remove(&item(n)).map(|e| e.1);
                    prop_assert_eq!(old, model.remove(&item(n)));
                }
                prop_assert_eq!(table.len(), model.len());
            }
            for n in 0..40 {
                prop_assert_eq!(table.get(&item(n)).map(|e| e.1), model.get(&item(n)).copied());
                if let Some(i) = table.position_of(&item(n)) {
                    prop_assert_eq!(table.entries()[i].0, item(n));
                }
            }
            let mut items: Vec<Item> = table.items().copied().collect();
            items.sort();
            prop_assert_eq!(items, model.keys().copied().collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_reserved_table_does_not_grow_while_filled() {
        let mut table = ItemTable::new();
        table.insert(Entry(item(0), 0));
        table.reserve(39);
        let (entries, index) = (table.entries.capacity(), table.index.capacity());
        assert!(entries >= 40 && index >= 40);
        for n in 1..40 {
            table.insert(Entry(item(n), u32::from(n)));
        }
        assert_eq!(
            (table.entries.capacity(), table.index.capacity()),
            (entries, index)
        );
        for n in 0..40 {
            assert_eq!(table.get(&item(n)).map(|e| e.1), Some(u32::from(n)));
        }
    }

    #[test]
    fn get_or_insert_with_makes_once() {
        let mut table = ItemTable::new();
        let (entry, made) = table.get_or_insert_with(item(1), || Entry(item(1), 7));
        assert!(made);
        entry.1 = 8;
        let (entry, made) = table.get_or_insert_with(item(1), || Entry(item(1), 9));
        assert!(!made);
        assert_eq!(entry.1, 8);
        assert!(table.contains(&item(1)) && !table.contains(&item(2)));
        assert_eq!(table.get_mut(&item(1)).map(|e| e.1), Some(8));
    }
}
