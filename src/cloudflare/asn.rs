//! Lists of kind `asn` (docs/cloudflare-lists.md §13): reading their items page by page, adding
//! items with comments, deleting them by id. Requests go through the client's one helper, so
//! they share its authentication, request budget, fence, metrics and errors; the IP paths in
//! `cloudflare.rs` are untouched by this module.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{encode, CloudflareClient, Error, PageGuard, MAX_PER_PAGE};

/// An item of an ASN list as a read returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedAsn {
    pub id: String,
    pub asn: u32,
    pub comment: Option<String>,
}

/// One page of an ASN list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AsnPage {
    pub items: Vec<ListedAsn>,
    /// Items whose `asn` is missing or no AS number: counted, never guessed at.
    pub unreadable: usize,
    /// The cursor of the next page; `None` on the last.
    pub next: Option<String>,
}

#[derive(Deserialize)]
struct WireAsnItem {
    id: String,
    #[serde(default)]
    asn: Option<Value>,
    #[serde(default)]
    comment: Option<String>,
}

#[derive(Serialize)]
struct NewAsnItem<'a> {
    asn: u32,
    comment: &'a str,
}

impl CloudflareClient {
    /// Reads one page (`per_page` = 500) of an ASN list. `search` finds one AS number: for ASN
    /// lists the API matches it exactly, not as a prefix (docs/cloudflare-lists.md §13).
    ///
    /// # Errors
    /// The request's error.
    pub async fn asn_items_page(
        &self,
        list_id: &str,
        cursor: Option<&str>,
        search: Option<u32>,
    ) -> Result<AsnPage, Error> {
        let mut url = format!(
            "{}/rules/lists/{list_id}/items?per_page={MAX_PER_PAGE}",
            self.account_url
        );
        if let Some(cursor) = cursor {
            url.push_str(&format!("&cursor={}", encode(cursor)));
        }
        if let Some(asn) = search {
            url.push_str(&format!("&search={asn}"));
        }
        let (wire, info) = self
            .call::<Vec<WireAsnItem>, ()>("reading list items", reqwest::Method::GET, url, None)
            .await?;
        let next = info
            .and_then(|info| info.cursors)
            .and_then(|cursors| cursors.after)
            .filter(|after| !after.is_empty() && !wire.is_empty());
        let mut page = AsnPage {
            next,
            ..AsnPage::default()
        };
        for item in wire {
            match item.asn.as_ref().and_then(read_asn) {
                Some(asn) => page.items.push(ListedAsn {
                    id: item.id,
                    asn,
                    comment: item.comment,
                }),
                None => page.unreadable += 1,
            }
        }
        Ok(page)
    }

    /// Reads a whole ASN list of about `num_items` items (as the account's list of lists
    /// reports it), page by page; a cursor that repeats or never ends fails the read
    /// ([`PageGuard`]). Returns the items and how many were unreadable.
    ///
    /// # Errors
    /// The first page's error, or [`Error::Decode`] from the guard.
    pub async fn read_asn_list(
        &self,
        list_id: &str,
        num_items: u64,
    ) -> Result<(Vec<ListedAsn>, usize), Error> {
        let mut guard = PageGuard::new(num_items);
        let (mut items, mut unreadable) = (Vec::new(), 0);
        let mut cursor = None;
        loop {
            let page = self
                .asn_items_page(list_id, cursor.as_deref(), None)
                .await?;
            guard.next_page(page.next.as_deref())?;
            items.extend(page.items);
            unreadable += page.unreadable;
            match page.next {
                Some(next) => cursor = Some(next),
                None => return Ok((items, unreadable)),
            }
        }
    }

    /// Finds one AS number's item id. `None`: not on the list.
    ///
    /// # Errors
    /// The request's error.
    pub async fn find_asn_item(&self, list_id: &str, asn: u32) -> Result<Option<String>, Error> {
        let mut cursor = None;
        // An exact search finds one item; a page or two allows for a lenient server.
        let mut guard = PageGuard::new(0);
        loop {
            let page = self
                .asn_items_page(list_id, cursor.as_deref(), Some(asn))
                .await?;
            guard.next_page(page.next.as_deref())?;
            if let Some(found) = page.items.into_iter().find(|item| item.asn == asn) {
                return Ok(Some(found.id));
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => return Ok(None),
            }
        }
    }

    /// Starts a bulk add (upsert) of AS numbers with their comments; returns the operation
    /// id. Comments go as given: the caller keeps them within 500 characters
    /// (docs/cloudflare-lists.md §6.5).
    ///
    /// # Errors
    /// The request's error (AS number 0 may be refused, docs/cloudflare-lists.md §13).
    pub async fn add_asn_items(
        &self,
        list_id: &str,
        items: &[(u32, Arc<str>)],
    ) -> Result<String, Error> {
        let body: Vec<NewAsnItem<'_>> = items
            .iter()
            .map(|(asn, comment)| NewAsnItem { asn: *asn, comment })
            .collect();
        self.submit_items("adding list items", reqwest::Method::POST, list_id, &body)
            .await
    }

    /// Starts a bulk delete of ASN items by id; returns the operation id. The body is the
    /// same as for IP items (docs/cloudflare-lists.md §2.6).
    ///
    /// # Errors
    /// The request's error.
    pub async fn delete_asn_items(&self, list_id: &str, ids: &[&str]) -> Result<String, Error> {
        self.delete_items(list_id, ids).await
    }
}

/// An AS number as a list read gives it: a JSON integer from 0 to 2^32 − 1, or (leniently)
/// the same number as a string of digits.
fn read_asn(value: &Value) -> Option<u32> {
    match value {
        Value::Number(number) => u32::try_from(number.as_u64()?).ok(),
        Value::String(text) if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => {
            text.parse().ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn reads_as_numbers_leniently_and_nothing_else() {
        assert_eq!(read_asn(&json!(13335)), Some(13335));
        assert_eq!(read_asn(&json!(4_294_967_295u64)), Some(u32::MAX));
        assert_eq!(read_asn(&json!("64512")), Some(64512));
        for unreadable in [
            json!(4_294_967_296u64),
            json!(-1),
            json!(1.5),
            json!("AS13335"),
            json!(""),
            json!("+1"),
            json!(null),
            json!([1]),
        ] {
            assert_eq!(read_asn(&unreadable), None, "{unreadable}");
        }
    }
}
