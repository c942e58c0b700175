//! Synchronous validation of item write bodies (docs/cloudflare-lists.md §2.4–§2.6, §6, §13):
//! everything that is refused with HTTP 400 before an operation is created.
//!
//! Pure functions from raw bytes to canonical items; no state, no time.

use std::collections::HashSet;

use serde_json::{Map, Value};

use super::canonical::{parse_item_ip, IpRules, ItemKey};
use super::envelope::{code, ApiError};
use super::store::NewItem;
use super::AsnZero;

/// Documented comment limit (docs/cloudflare-lists.md §6.5). Whether the API refuses longer ones is
/// unverified.
const MAX_COMMENT_CHARS: usize = 500;
/// Item kinds of the request schema, which are also the list kinds (docs/cloudflare-lists.md §2.4):
/// an item is of the kind whose field it carries.
const ITEM_KINDS: [&str; 4] = ["ip", "redirect", "hostname", "asn"];
/// Documented id length of list items (docs/cloudflare-lists.md §2.6, §5).
const ITEM_ID_LEN: usize = 32;
/// Code of a refused ASN. Invented by analogy with the observed `invalid value for ip at
/// position N` (10035): no refusal of an ASN has been found (docs/cloudflare-lists.md §13).
const INVALID_ASN: u32 = code::INVALID_IP;

/// What the items of a write may be: the list's kind and the rules of that kind.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ItemRules {
    Ip(IpRules),
    Asn(AsnZero),
}

impl ItemRules {
    fn kind(self) -> &'static str {
        match self {
            ItemRules::Ip(_) => "ip",
            ItemRules::Asn(_) => "asn",
        }
    }
}

/// Parses `body` as JSON, mapping syntax errors to a 400 envelope.
pub(crate) fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|err| ApiError::invalid(format!("could not parse request body as JSON: {err}")))
}

/// Parses a POST/PUT body: a bare JSON array of `{"ip", "comment"?}` for an IP list
/// (docs/cloudflare-lists.md §2.4), of `{"asn", "comment"?}` for an ASN list
/// (docs/cloudflare-lists.md §13).
pub(crate) fn parse_items(body: &[u8], rules: ItemRules) -> Result<Vec<NewItem>, ApiError> {
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
    check_kinds(&objects, rules.kind())?;
    let mut seen = HashSet::new();
    let mut items = Vec::with_capacity(objects.len());
    for (position, object) in objects.into_iter().enumerate() {
        let key = match rules {
            ItemRules::Ip(ip_rules) => parse_ip(position, object, ip_rules)?,
            ItemRules::Asn(zero) => parse_asn(position, object, zero)?,
        };
        let comment = parse_comment(position, object)?;
        if !seen.insert(key) {
            // Duplicates are compared in canonical form: `1.2.3.4` and `1.2.3.4/32` are the
            // same item (docs/cloudflare-lists.md §6.4 says "likely"; unverified).
            return Err(ApiError::bad_request(
                code::DUPLICATE_ITEMS,
                "The add list items operation contains duplicate items",
            ));
        }
        items.push(NewItem { key, comment });
    }
    Ok(items)
}

/// Items of another kind than the list's: 10056 if kinds are mixed, 10058 if all are foreign
/// (docs/cloudflare-lists.md §6.4).
fn check_kinds(objects: &[&Map<String, Value>], list_kind: &str) -> Result<(), ApiError> {
    // An item carrying the list's own field is of the list's kind, whatever else it carries.
    let foreign = |object: &&&Map<String, Value>| {
        !object.contains_key(list_kind) && ITEM_KINDS.iter().any(|kind| object.contains_key(*kind))
    };
    let foreign = objects.iter().filter(foreign).count();
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

fn parse_ip(
    position: usize,
    object: &Map<String, Value>,
    rules: IpRules,
) -> Result<ItemKey, ApiError> {
    let invalid_ip = |message: String| ApiError::bad_request(code::INVALID_IP, message);
    let Some(Value::String(raw_ip)) = object.get("ip") else {
        return Err(invalid_ip(format!(
            "invalid value for ip at position {position}"
        )));
    };
    let net = parse_item_ip(raw_ip, rules).map_err(|err| invalid_ip(err.message(position)))?;
    Ok(ItemKey::Ip(net))
}

/// An ASN is a JSON integer from 0 (or 1, see [`AsnZero`]) to 4294967295: the schema's
/// "non-negative 32 bit integer" (docs/cloudflare-lists.md §13). A string, a fraction or a
/// number out of range is refused; the messages are invented.
fn parse_asn(
    position: usize,
    object: &Map<String, Value>,
    zero: AsnZero,
) -> Result<ItemKey, ApiError> {
    let head = format!("invalid value for asn at position {position}");
    let invalid = |detail: &str| ApiError::bad_request(INVALID_ASN, format!("{head}: {detail}"));
    let number = match object.get("asn") {
        Some(Value::Number(number)) => number,
        _ => return Err(invalid("an ASN must be a JSON integer")),
    };
    let asn = match number.as_u64() {
        Some(n) => u32::try_from(n).map_err(|_| invalid("an ASN is at most 4294967295"))?,
        None if number.is_i64() => return Err(invalid("an ASN cannot be negative")),
        None => return Err(invalid("an ASN must be a JSON integer")),
    };
    if asn == 0 && zero == AsnZero::Refuse {
        return Err(invalid("an ASN is at least 1"));
    }
    Ok(ItemKey::Asn(asn))
}

fn parse_comment(position: usize, object: &Map<String, Value>) -> Result<Option<String>, ApiError> {
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
    Ok(comment)
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
        code_for(body, ItemRules::Ip(RULES))
    }

    fn code_for(body: &str, rules: ItemRules) -> u32 {
        match parse_items(body.as_bytes(), rules) {
            Ok(_) => 0,
            Err(err) => err.code,
        }
    }

    /// The ASNs parsed from `body` by an `asn` list that refuses 0.
    fn asns(body: &str) -> Result<Vec<u32>, String> {
        let items = parse_items(body.as_bytes(), ItemRules::Asn(AsnZero::Refuse));
        let items = items.map_err(|err| err.message)?;
        let asn = |item: NewItem| match item.key {
            ItemKey::Asn(asn) => Ok(asn),
            ItemKey::Ip(net) => Err(format!("an IP {net} in an asn list")),
        };
        items.into_iter().map(asn).collect()
    }

    #[test]
    fn asn_bodies_are_validated() {
        let body = r#"[{"asn":13335,"comment":"x"},{"asn":1},{"asn":4294967295}]"#;
        assert_eq!(asns(body), Ok(vec![13335, 1, u32::MAX]));
        let asn_code = |body: &str| code_for(body, ItemRules::Asn(AsnZero::Refuse));
        assert_eq!(asn_code("[]"), 0);
        for refused in [
            r#"[{"asn":"13335"}]"#,
            r#"[{"asn":13335.5}]"#,
            r#"[{"asn":-1}]"#,
            r#"[{"asn":4294967296}]"#,
            r#"[{"asn":0}]"#,
            r#"[{"asn":null}]"#,
            r#"[{"comment":"no value"}]"#,
        ] {
            assert_eq!(asn_code(refused), INVALID_ASN, "{refused}");
        }
        let zero_accepted = code_for(r#"[{"asn":0}]"#, ItemRules::Asn(AsnZero::Accept));
        assert_eq!(zero_accepted, 0);
        assert_eq!(asn_code(r#"[{"asn":5},{"asn":5}]"#), code::DUPLICATE_ITEMS);
        assert_eq!(asn_code(r#"[{"ip":"1.2.3.4"}]"#), code::INCOMPATIBLE_ITEMS);
        assert_eq!(
            asn_code(r#"[{"asn":5},{"ip":"1.2.3.4"}]"#),
            code::MIXED_ITEM_KINDS
        );
        let long = "x".repeat(501);
        assert_eq!(
            asn_code(&format!(r#"[{{"asn":5,"comment":"{long}"}}]"#)),
            code::INVALID_REQUEST
        );
        let message = asns(r#"[{"asn":1},{"asn":"2"}]"#).unwrap_err();
        assert!(
            message.starts_with("invalid value for asn at position 1"),
            "{message}"
        );
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
