//! The completed state of the account: lists and their items (docs/cloudflare-lists.md §2.1, §2.2,
//! and docs/cloudflare-lists.md §13 for ASN items), how a completed bulk operation changes them
//! (docs/cloudflare-lists.md §2.4–§2.6), and paging (docs/cloudflare-lists.md §2.3).
//!
//! Nothing here knows about time, operations in flight or HTTP: callers pass timestamps in.

use std::collections::BTreeMap;
use std::ops::Bound;

use serde_json::{json, Map, Value};

use super::canonical::{encode_cursor, ip_text, Direction, ItemKey};
use super::{StoredAsnItem, StoredItem};

/// A new 32-char lowercase hex id, the shape of every id in the docs' examples
/// (docs/cloudflare-lists.md §2.1).
pub(crate) fn new_id(rng: &mut fastrand::Rng) -> String {
    format!("{:016x}{:016x}", rng.u64(..), rng.u64(..))
}

/// An item as submitted in a POST/PUT body, already validated and canonical.
#[derive(Clone, Debug)]
pub(crate) struct NewItem {
    pub key: ItemKey,
    pub comment: Option<String>,
}

/// What a bulk operation does to one list once it completes.
#[derive(Clone, Debug)]
pub(crate) enum Change {
    /// POST: upsert by canonical IP or ASN, comment overwritten, id kept
    /// (docs/cloudflare-lists.md §2.4).
    Upsert(Vec<NewItem>),
    /// PUT: replace everything (docs/cloudflare-lists.md §2.5).
    Replace(Vec<NewItem>),
    /// DELETE by item id (docs/cloudflare-lists.md §2.6). Unknown ids are ignored (unverified).
    Delete(Vec<String>),
}

impl Change {
    /// How many items the change names.
    pub(crate) fn len(&self) -> u32 {
        let n = match self {
            Change::Upsert(items) | Change::Replace(items) => items.len(),
            Change::Delete(ids) => ids.len(),
        };
        u32::try_from(n).unwrap_or(u32::MAX)
    }
}

/// A stored list item; its key (the canonical network or the ASN) lives in [`List::items`].
#[derive(Clone, Debug)]
pub(crate) struct Item {
    pub id: String,
    pub comment: Option<String>,
    pub created_on: String,
    pub modified_on: String,
}

#[derive(Clone, Debug)]
pub(crate) struct List {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub kind: String,
    pub created_on: String,
    pub modified_on: String,
    /// Keyed by canonical network or ASN, in the documented item order (see [`ItemKey`]).
    pub items: BTreeMap<ItemKey, Item>,
}

/// One page of GET items.
pub(crate) struct PageQuery<'a> {
    pub per_page: usize,
    pub cursor: Option<(Direction, ItemKey)>,
    /// Prefix match on the canonical IP text (docs/cloudflare-lists.md §2.3, §6.2), exact match
    /// on an ASN (docs/cloudflare-lists.md §13).
    pub search: Option<&'a str>,
}

impl List {
    /// The list object; `num_referencing_filters` is counted by the caller over zone rules.
    pub(crate) fn json(&self, num_referencing_filters: usize) -> Value {
        let mut list = json!({
            "id": self.id, "name": self.name, "kind": self.kind,
            "num_items": self.items.len(), "num_referencing_filters": num_referencing_filters,
            "created_on": self.created_on, "modified_on": self.modified_on,
        });
        if let (Some(description), Some(map)) = (&self.description, list.as_object_mut()) {
            map.insert("description".into(), json!(description));
        }
        list
    }

    pub(crate) fn find_item(&self, item_id: &str) -> Option<(&ItemKey, &Item)> {
        self.items.iter().find(|(_, item)| item.id == item_id)
    }

    /// The IP items, in API order.
    pub(crate) fn stored_items(&self) -> Vec<StoredItem> {
        let to_stored = |(key, item): (&ItemKey, &Item)| match key {
            ItemKey::Ip(net) => Some(StoredItem {
                id: item.id.clone(),
                ip: ip_text(net),
                comment: item.comment.clone(),
            }),
            ItemKey::Asn(_) => None,
        };
        self.items.iter().filter_map(to_stored).collect()
    }

    /// The ASN items, in API order.
    pub(crate) fn stored_asn_items(&self) -> Vec<StoredAsnItem> {
        let to_stored = |(key, item): (&ItemKey, &Item)| match key {
            ItemKey::Asn(asn) => Some(StoredAsnItem {
                id: item.id.clone(),
                asn: *asn,
                comment: item.comment.clone(),
            }),
            ItemKey::Ip(_) => None,
        };
        self.items.iter().filter_map(to_stored).collect()
    }

    /// Returns `(items, result_info)` for one page. `before` is set on every non-empty page,
    /// `after` only when more matching items follow (docs/cloudflare-lists.md §2.3: absent on the
    /// last page).
    pub(crate) fn page(&self, query: &PageQuery<'_>) -> (Value, Value) {
        let matches = |entry: &(&ItemKey, &Item)| query.search.is_none_or(|s| entry.0.matches(s));
        let page: Vec<(&ItemKey, &Item)> = match query.cursor {
            None => self
                .items
                .iter()
                .filter(matches)
                .take(query.per_page)
                .collect(),
            Some((Direction::After, key)) => self
                .items
                .range((Bound::Excluded(key), Bound::Unbounded))
                .filter(matches)
                .take(query.per_page)
                .collect(),
            Some((Direction::Before, key)) => {
                let mut page: Vec<_> = self
                    .items
                    .range(..key)
                    .rev()
                    .filter(matches)
                    .take(query.per_page)
                    .collect();
                page.reverse();
                page
            }
        };
        let mut cursors = Map::new();
        if let (Some(first), Some(last)) = (page.first(), page.last()) {
            cursors.insert(
                "before".into(),
                json!(encode_cursor(Direction::Before, first.0)),
            );
            let more = self
                .items
                .range((Bound::Excluded(*last.0), Bound::Unbounded))
                .any(|entry| matches(&entry));
            if more {
                cursors.insert(
                    "after".into(),
                    json!(encode_cursor(Direction::After, last.0)),
                );
            }
        }
        let items = page
            .into_iter()
            .map(|(key, item)| item_json(key, item))
            .collect();
        (Value::Array(items), json!({ "cursors": cursors }))
    }

    /// Applies a completed operation; returns the number of item modifications it made
    /// (each create, edit or delete counts, docs/cloudflare-lists.md §4.3).
    pub(crate) fn apply(&mut self, change: Change, now: &str, rng: &mut fastrand::Rng) -> u64 {
        match change {
            Change::Upsert(items) => self.upsert(items, now, rng),
            Change::Replace(items) => {
                // Whether ids survive a replace is unverified (docs/cloudflare-lists.md §12): fresh
                // ids are the stricter choice, a client must not rely on old ids after a PUT.
                let removed = self.items.len() as u64;
                self.items.clear();
                removed + self.upsert(items, now, rng)
            }
            Change::Delete(ids) => {
                let before = self.items.len();
                self.items.retain(|_, item| !ids.contains(&item.id));
                (before - self.items.len()) as u64
            }
        }
    }

    fn upsert(&mut self, items: Vec<NewItem>, now: &str, rng: &mut fastrand::Rng) -> u64 {
        let count = items.len() as u64;
        for NewItem { key, comment } in items {
            let item = self.items.entry(key).or_insert_with(|| Item {
                id: new_id(rng),
                comment: None,
                created_on: now.to_owned(),
                modified_on: now.to_owned(),
            });
            item.comment = comment;
            item.modified_on = now.to_owned();
        }
        if count > 0 {
            self.modified_on = now.to_owned();
        }
        count
    }

    /// Number of items this list would hold after `change`.
    pub(crate) fn len_after(&self, change: &Change) -> usize {
        match change {
            Change::Upsert(items) => {
                let new = items
                    .iter()
                    .filter(|item| !self.items.contains_key(&item.key));
                self.items.len() + new.count()
            }
            Change::Replace(items) => items.len(),
            Change::Delete(ids) => {
                let hit = self.items.values().filter(|item| ids.contains(&item.id));
                self.items.len() - hit.count()
            }
        }
    }
}

/// The JSON of one item (docs/cloudflare-lists.md §2.2): `ip` as canonical text, `asn` as a JSON
/// number (docs/cloudflare-lists.md §13).
pub(crate) fn item_json(key: &ItemKey, item: &Item) -> Value {
    let mut value = json!({
        "id": item.id, "created_on": item.created_on, "modified_on": item.modified_on,
    });
    if let Some(map) = value.as_object_mut() {
        match key {
            ItemKey::Ip(net) => map.insert("ip".into(), json!(ip_text(net))),
            ItemKey::Asn(asn) => map.insert("asn".into(), json!(asn)),
        };
    }
    if let (Some(comment), Some(map)) = (&item.comment, value.as_object_mut()) {
        map.insert("comment".into(), json!(comment));
    }
    value
}

/// All lists of the single emulated account, in creation order.
#[derive(Debug, Default)]
pub(crate) struct Store {
    pub lists: Vec<List>,
}

impl Store {
    pub(crate) fn list(&self, list_id: &str) -> Option<&List> {
        self.lists.iter().find(|list| list.id == list_id)
    }

    pub(crate) fn list_mut(&mut self, list_id: &str) -> Option<&mut List> {
        self.lists.iter_mut().find(|list| list.id == list_id)
    }

    /// Whether a list is named `name`: rule expressions reference lists by name
    /// (docs/cloudflare-lists.md §9).
    pub(crate) fn has_list_named(&self, name: &str) -> bool {
        self.lists.iter().any(|list| list.name == name)
    }

    /// Items across all lists: the account quota counts them all (docs/cloudflare-lists.md §4.1).
    pub(crate) fn total_items(&self) -> usize {
        self.lists.iter().map(|list| list.items.len()).sum()
    }

    /// Account total after `change` is applied to `list_id` (`None` if the list is gone).
    pub(crate) fn total_after(&self, list_id: &str, change: &Change) -> Option<usize> {
        let list = self.list(list_id)?;
        Some(self.total_items() - list.items.len() + list.len_after(change))
    }
}
