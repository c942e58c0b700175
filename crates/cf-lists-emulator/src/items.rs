//! Synchronous validation of item write bodies (docs/cloudflare-lists.md §2.4–§2.6, §6): everything
//! that is refused with HTTP 400 before an operation is created.
//!
//! Pure functions from raw bytes to canonical items; no state, no time.

use std::collections::HashSet;

use serde_json::{Map, Value};

use super::canonical::{parse_item_ip, IpRules};
use super::envelope::{code, ApiError};
use super::store::NewItem;

/// Documented comment limit (docs/cloudflare-lists.md §6.5). Whether the API refuses longer ones is
/// unverified.
const MAX_COMMENT_CHARS: usize = 500;
/// Item kinds of the request schema (docs/cloudflare-lists.md §2.4); only `ip` is accepted by an IP
/// list.
const OTHER_KINDS: [&str; 3] = ["redirect", "hostname", "asn"];
/// Documented id length of list items (docs/cloudflare-lists.md §2.6, §5).
const ITEM_ID_LEN: usize = 32;

/// Parses `body` as JSON, mapping syntax errors to a 400 envelope.
pub(crate) fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|err| ApiError::invalid(format!("could not parse request body as JSON: {err}")))
}

/// Parses a POST/PUT body: a bare JSON array of `{"ip", "comment"?}`
/// (docs/cloudflare-lists.md §2.4).
pub(crate) fn parse_ip_items(body: &[u8], rules: IpRules) -> Result<Vec<NewItem>, ApiError> {
    let Value::Array(raw_items) = parse_json(body)? else {
        return Err(ApiError::invalid(
            "request body must be a JSON array of list items",
        ));
    };
    let objects = raw_items
        .iter()
        .enumerate()
        .map(|(position, raw)| match raw {
            Value::Object(object) => Ok(object),
            _ => Err(ApiError::invalid(format!(
                "list item at position {position} must be a JSON object"
            ))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    check_kinds(&objects)?;
    let mut seen = HashSet::new();
    let mut items = Vec::with_capacity(objects.len());
    for (position, object) in objects.into_iter().enumerate() {
        let item = parse_ip_item(position, object, rules)?;
        if !seen.insert(item.net) {
            // Duplicates are compared in canonical form: `1.2.3.4` and `1.2.3.4/32` are the
            // same item (docs/cloudflare-lists.md §6.4 says "likely"; unverified).
            return Err(ApiError::bad_request(
                code::DUPLICATE_ITEMS,
                "The add list items operation contains duplicate items",
            ));
        }
        items.push(item);
    }
    Ok(items)
}

/// Items of other kinds: 10056 if kinds are mixed, 10058 if all are foreign
/// (docs/cloudflare-lists.md §6.4).
fn check_kinds(objects: &[&Map<String, Value>]) -> Result<(), ApiError> {
    let kind_of = |object: &Map<String, Value>| {
        OTHER_KINDS
            .into_iter()
            .find(|kind| object.contains_key(*kind) && !object.contains_key("ip"))
    };
    let foreign = objects
        .iter()
        .filter(|object| kind_of(object).is_some())
        .count();
    if foreign == 0 {
        return Ok(());
    }
    if foreign < objects.len() {
        return Err(ApiError::bad_request(
            code::MIXED_ITEM_KINDS,
            "The add list items operation contains different types of list items",
        ));
    }
    Err(ApiError::bad_request(
        code::INCOMPATIBLE_ITEMS,
        "List items incompatible with list type",
    ))
}

fn parse_ip_item(
    position: usize,
    object: &Map<String, Value>,
    rules: IpRules,
) -> Result<NewItem, ApiError> {
    let invalid_ip = |message: String| ApiError::bad_request(code::INVALID_IP, message);
    let Some(Value::String(raw_ip)) = object.get("ip") else {
        return Err(invalid_ip(format!(
            "invalid value for ip at position {position}"
        )));
    };
    let net = parse_item_ip(raw_ip, rules).map_err(|err| invalid_ip(err.message(position)))?;
    let comment = match object.get("comment") {
        None | Some(Value::Null) => None,
        Some(Value::String(comment)) => Some(comment.clone()),
        Some(_) => {
            return Err(ApiError::invalid(format!(
                "comment at position {position} must be a string"
            )))
        }
    };
    if comment
        .as_ref()
        .is_some_and(|text| text.chars().count() > MAX_COMMENT_CHARS)
    {
        return Err(ApiError::invalid(format!(
            "comment at position {position} is longer than {MAX_COMMENT_CHARS} characters"
        )));
    }
    Ok(NewItem { net, comment })
}

/// Parses a DELETE body `{"items": [{"id": "<32 chars>"}]}`, `minItems: 1`
/// (docs/cloudflare-lists.md §2.6).
pub(crate) fn parse_delete_ids(body: &[u8]) -> Result<Vec<String>, ApiError> {
    let value = parse_json(body)?;
    let Some(Value::Array(raw_items)) = value.get("items") else {
        return Err(ApiError::invalid(
            "request body must be {\"items\": [{\"id\": ...}]}",
        ));
    };
    if raw_items.is_empty() {
        return Err(ApiError::invalid("items must contain at least 1 item"));
    }
    let id_at = |(position, raw): (usize, &Value)| match raw.get("id") {
        Some(Value::String(id)) if id.len() == ITEM_ID_LEN => Ok(id.clone()),
        _ => Err(ApiError::invalid(format!(
            "items[{position}].id must be a string of {ITEM_ID_LEN} characters"
        ))),
    };
    raw_items.iter().enumerate().map(id_at).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HostBits;

    const RULES: IpRules = IpRules {
        ipv6_max_prefix: 128,
        host_bits: HostBits::Mask,
    };

    fn error_code(body: &str) -> u32 {
        match parse_ip_items(body.as_bytes(), RULES) {
            Ok(_) => 0,
            Err(err) => err.code,
        }
    }

    #[test]
    fn write_bodies_are_validated() {
        assert_eq!(
            error_code(r#"[{"ip":"1.2.3.4","comment":"x"},{"ip":"10.0.0.0/8"}]"#),
            0
        );
        assert_eq!(error_code("[]"), 0);
        assert_eq!(error_code(r#"{"ip":"1.2.3.4"}"#), code::INVALID_REQUEST);
        assert_eq!(error_code("[{"), code::INVALID_REQUEST);
        assert_eq!(
            error_code(r#"[{"ip":"1.2.3.4"},{"ip":"1.2.3.4/32"}]"#),
            code::DUPLICATE_ITEMS
        );
        assert_eq!(error_code(r#"[{"ip":"nope"}]"#), code::INVALID_IP);
        assert_eq!(error_code(r#"[{"ip":4}]"#), code::INVALID_IP);
        assert_eq!(
            error_code(r#"[{"ip":"1.2.3.4"},{"asn":5}]"#),
            code::MIXED_ITEM_KINDS
        );
        assert_eq!(error_code(r#"[{"hostname":{}}]"#), code::INCOMPATIBLE_ITEMS);
        let long = "x".repeat(501);
        assert_eq!(
            error_code(&format!(r#"[{{"ip":"1.2.3.4","comment":"{long}"}}]"#)),
            code::INVALID_REQUEST
        );
    }

    #[test]
    fn delete_bodies_are_validated() {
        let id = "0123456789abcdef0123456789abcdef";
        let ok = format!(r#"{{"items":[{{"id":"{id}"}}]}}"#);
        assert_eq!(
            parse_delete_ids(ok.as_bytes()).unwrap(),
            vec![id.to_owned()]
        );
        assert!(parse_delete_ids(br#"{"items":[]}"#).is_err());
        assert!(parse_delete_ids(br#"{"items":[{"id":"short"}]}"#).is_err());
        assert!(parse_delete_ids(b"[]").is_err());
    }
}
