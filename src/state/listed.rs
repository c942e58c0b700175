//! What the list holds as far as the bouncer knows: each item, whether it is the
//! bouncer's own, and its Cloudflare id once a read or search has shown it. Packed:
//! Cloudflare ids are 32 hex characters, kept as 16 bytes, so an entry is 35 bytes; an
//! id of another shape is kept as text on the side.

use rustc_hash::FxHashMap as HashMap;

use super::table::{ItemTable, Keyed};
use crate::item::Item;

/// `Listed::flags`: the id is known.
const HAS_ID: u8 = 1;
/// `Listed::flags`: the id is not 32 hex characters; it is in `ListedItems::text_ids`.
const TEXT_ID: u8 = 2;
/// `Listed::flags`: carries the bouncer's tag (or was added by it).
const OURS: u8 = 4;

#[derive(Debug, Clone, Copy)]
pub(super) struct Listed {
    item: Item,
    id: [u8; 16],
    flags: u8,
}

impl Keyed for Listed {
    type Key = Item;
    fn key(&self) -> &Item {
        &self.item
    }
}

impl Listed {
    pub fn item(&self) -> &Item {
        &self.item
    }

    pub fn ours(&self) -> bool {
        self.flags & OURS != 0
    }

    pub fn has_id(&self) -> bool {
        self.flags & HAS_ID != 0
    }
}

/// The listed items. See the module docs.
#[derive(Debug, Default)]
pub(super) struct ListedItems {
    table: ItemTable<Listed>,
    text_ids: HashMap<Item, Box<str>>,
}

impl ListedItems {
    /// Makes room for `additional` more items (a list read whose size is known).
    pub fn reserve(&mut self, additional: usize) {
        self.table.reserve(additional);
    }

    /// Records `item` as listed, with its id if known, replacing what was recorded.
    /// One probe of the table.
    pub fn insert(&mut self, item: Item, id: Option<&str>, ours: bool) {
        let listed = Listed {
            item,
            id: [0; 16],
            flags: if ours { OURS } else { 0 },
        };
        let (i, old) = self.table.insert_at(listed);
        if old.is_some_and(|old| old.flags & TEXT_ID != 0) {
            self.text_ids.remove(&item);
        }
        if let Some(id) = id {
            record_id(&mut self.table.entries_mut()[i], &mut self.text_ids, id);
        }
    }

    /// Records the id of a listed item; false if the item is not listed.
    pub fn set_id(&mut self, item: &Item, id: &str) -> bool {
        let Some(listed) = self.table.get_mut(item) else {
            return false;
        };
        record_id(listed, &mut self.text_ids, id);
        true
    }

    /// Forgets `item`; false if it was not listed.
    pub fn remove(&mut self, item: &Item) -> bool {
        match self.table.remove(item) {
            Some(listed) => {
                if listed.flags & TEXT_ID != 0 {
                    self.text_ids.remove(item);
                }
                true
            }
            None => false,
        }
    }

    pub fn get(&self, item: &Item) -> Option<&Listed> {
        self.table.get(item)
    }

    pub fn contains(&self, item: &Item) -> bool {
        self.table.contains(item)
    }

    /// The Cloudflare id of `item`, if it is listed and its id is known.
    pub fn id(&self, item: &Item) -> Option<Box<str>> {
        let listed = self.table.get(item).filter(|l| l.has_id())?;
        if listed.flags & TEXT_ID != 0 {
            return self.text_ids.get(item).cloned();
        }
        let mut text = String::with_capacity(32);
        for byte in listed.id {
            for nibble in [byte >> 4, byte & 0xf] {
                text.push(char::from_digit(u32::from(nibble), 16).unwrap_or('0'));
            }
        }
        Some(text.into())
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Listed> {
        self.table.iter()
    }

    pub fn items(&self) -> impl Iterator<Item = &Item> {
        self.table.items()
    }
}

/// Records `id` as `listed`'s: packed when it has Cloudflare's shape, else in `text_ids`.
fn record_id(listed: &mut Listed, text_ids: &mut HashMap<Item, Box<str>>, id: &str) {
    listed.flags |= HAS_ID;
    match parse_hex_id(id) {
        Some(bytes) => {
            listed.id = bytes;
            if listed.flags & TEXT_ID != 0 {
                listed.flags &= !TEXT_ID;
                text_ids.remove(&listed.item);
            }
        }
        None => {
            listed.flags |= TEXT_ID;
            text_ids.insert(listed.item, id.into());
        }
    }
}

/// 32 lowercase hex characters as 16 bytes; `None` for any other shape.
fn parse_hex_id(id: &str) -> Option<[u8; 16]> {
    let digits = id.as_bytes();
    if digits.len() != 32 {
        return None;
    }
    let nibble = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    let mut bytes = [0u8; 16];
    for (byte, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(text: &str) -> Item {
        Item::from_decision(text, 64).unwrap()
    }

    #[test]
    fn ids_round_trip_in_either_shape() {
        let mut listed = ListedItems::default();
        let hex = "2c0fc9fa937b11eaa1b71c4d701ab86e";
        listed.insert(item("1.2.3.4"), Some(hex), true);
        listed.insert(item("1.2.3.5"), Some("Not-Hex_ID"), false);
        listed.insert(
            item("1.2.3.6"),
            Some("2C0FC9FA937B11EAA1B71C4D701AB86E"),
            false,
        );
        listed.insert(item("1.2.3.7"), None, true);
        assert_eq!(listed.id(&item("1.2.3.4")).as_deref(), Some(hex));
        assert_eq!(listed.id(&item("1.2.3.5")).as_deref(), Some("Not-Hex_ID"));
        assert_eq!(
            listed.id(&item("1.2.3.6")).as_deref(),
            Some("2C0FC9FA937B11EAA1B71C4D701AB86E"),
            "uppercase is not Cloudflare's shape: kept verbatim"
        );
        assert_eq!(listed.id(&item("1.2.3.7")), None);
        assert!(listed.get(&item("1.2.3.4")).unwrap().ours());
        assert!(!listed.get(&item("1.2.3.5")).unwrap().ours());
        assert_eq!(listed.text_ids.len(), 2);

        // A text id replaced by a hex one, and a removal, leave nothing on the side.
        assert!(listed.set_id(&item("1.2.3.5"), hex));
        assert_eq!(listed.id(&item("1.2.3.5")).as_deref(), Some(hex));
        assert!(listed.remove(&item("1.2.3.6")));
        assert!(!listed.remove(&item("1.2.3.6")));
        assert!(listed.text_ids.is_empty());
        assert!(!listed.set_id(&item("9.9.9.9"), hex));
        assert_eq!(listed.len(), 3);
    }

    #[test]
    fn entries_are_packed() {
        assert_eq!(std::mem::size_of::<Listed>(), 35);
    }
}
