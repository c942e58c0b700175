//! One handler per Lists API endpoint (docs/cloudflare-lists.md §2, table of endpoints). Handlers
//! run after the gate in `http.rs`, so the request is authenticated and the state already advanced.
//!
//! Request input is never trusted: bodies arrive as bytes and are parsed here or in
//! `items.rs`, and extractor rejections become 400 envelopes.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::canonical::decode_cursor;
use super::envelope::{code, success, success_with_info, ApiError};
use super::items::parse_json;
use super::state::{lock, Shared, WriteKind};
use super::store::{item_json, PageQuery};

/// Documented `per_page` bounds of GET items (docs/cloudflare-lists.md §2.3, OpenAPI minimum 1,
/// maximum 500).
const MAX_PER_PAGE: usize = 500;
/// Documented list name length and description length (docs/cloudflare-lists.md §2.1).
const MAX_NAME_LEN: usize = 50;
const MAX_DESCRIPTION_LEN: usize = 500;
/// The four list kinds of the schema (docs/cloudflare-lists.md §2.1). Only `ip` and `asn` lists
/// take items here (docs/cloudflare-lists.md §13).
pub(crate) const KINDS: [&str; 4] = ["ip", "redirect", "hostname", "asn"];

type ApiResult = Result<Response, ApiError>;
type ListPath = Result<Path<(String, String)>, PathRejection>;
type ItemPath = Result<Path<(String, String, String)>, PathRejection>;

fn path_error(rejection: PathRejection) -> ApiError {
    ApiError::invalid(format!("invalid path: {rejection}"))
}

/// GET lists: every list, no pagination (docs/cloudflare-lists.md §2.1).
pub(crate) async fn list_lists(State(shared): State<Shared>) -> ApiResult {
    let mut state = lock(&shared);
    state.counters.other += 1;
    let lists = state.store.lists.iter();
    let lists = lists.map(|list| state.list_json(list)).collect();
    Ok(success(Value::Array(lists)))
}

/// POST lists: `{"name", "kind", "description"?}` (docs/cloudflare-lists.md §2.1).
pub(crate) async fn create_list(State(shared): State<Shared>, body: Bytes) -> ApiResult {
    let body = parse_json(&body)?;
    let mut state = lock(&shared);
    state.counters.other += 1;
    let name = match body.get("name") {
        Some(Value::String(name)) if valid_list_name(name) => name.clone(),
        _ => {
            return Err(ApiError::invalid(
                "name is required and must match ^[a-z0-9_]{1,50}$",
            ))
        }
    };
    let kind = match body.get("kind") {
        Some(Value::String(kind)) if KINDS.contains(&kind.as_str()) => kind.clone(),
        _ => {
            return Err(ApiError::invalid(
                "kind is required: ip, redirect, hostname or asn",
            ))
        }
    };
    let description = parse_description(&body)?;
    if state.store.lists.iter().any(|list| list.name == name) {
        // Invented code; that names are unique per account is inferred from `$name` refs.
        let message = format!("a list named {name} already exists");
        return Err(ApiError::bad_request(code::DUPLICATE_LIST_NAME, message));
    }
    let list = state.create_list(&name, &kind, description, Instant::now());
    // No rule can reference a list before it exists, and a referenced list is never deleted.
    Ok(success(list.json(0)))
}

/// Cloudflare's Lists overview: lowercase letters, digits, underscore; max 50
/// (docs/cloudflare-lists.md §2.1).
pub(crate) fn valid_list_name(name: &str) -> bool {
    let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_';
    !name.is_empty() && name.len() <= MAX_NAME_LEN && name.bytes().all(allowed)
}

fn parse_description(body: &Value) -> Result<Option<String>, ApiError> {
    match body.get("description") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if text.chars().count() <= MAX_DESCRIPTION_LEN => {
            Ok(Some(text.clone()))
        }
        Some(_) => Err(ApiError::invalid(format!(
            "description must be a string of at most {MAX_DESCRIPTION_LEN} characters"
        ))),
    }
}

/// GET one list, with `num_items` (docs/cloudflare-lists.md §2.1).
pub(crate) async fn get_list(State(shared): State<Shared>, path: ListPath) -> ApiResult {
    let Path((_, list_id)) = path.map_err(path_error)?;
    let mut state = lock(&shared);
    state.counters.other += 1;
    let list = state
        .store
        .list(&list_id)
        .ok_or_else(|| ApiError::not_found("list"))?;
    Ok(success(state.list_json(list)))
}

/// PUT one list: only `description` can change (docs/cloudflare-lists.md §2.1).
pub(crate) async fn update_list(
    State(shared): State<Shared>,
    path: ListPath,
    body: Bytes,
) -> ApiResult {
    let Path((_, list_id)) = path.map_err(path_error)?;
    let body = parse_json(&body)?;
    let description = parse_description(&body)?;
    let mut guard = lock(&shared);
    // A plain `&mut State`, so that the list and the zones can be borrowed side by side.
    let state = &mut *guard;
    state.counters.other += 1;
    let now_text = state.now_text(Instant::now());
    let list = state
        .store
        .list_mut(&list_id)
        .ok_or_else(|| ApiError::not_found("list"))?;
    list.description = description;
    list.modified_on = now_text;
    let list = &*list;
    Ok(success(list.json(state.zones.referencing(&list.name))))
}

/// DELETE one list → `{"id"}` (docs/cloudflare-lists.md §2.1), refused while a zone rule references
/// it.
pub(crate) async fn delete_list(State(shared): State<Shared>, path: ListPath) -> ApiResult {
    let Path((_, list_id)) = path.map_err(path_error)?;
    let mut state = lock(&shared);
    state.counters.other += 1;
    let list = state
        .store
        .list(&list_id)
        .ok_or_else(|| ApiError::not_found("list"))?;
    if state.zones.referencing(&list.name) > 0 {
        // Observed code and message (docs/cloudflare-lists.md §2.1, §7); the HTTP status is not
        // documented.
        let message = "filters.api.ip_list_in_use";
        return Err(ApiError::bad_request(code::LIST_IN_USE, message));
    }
    state.store.lists.retain(|list| list.id != list_id);
    Ok(success(json!({ "id": list_id })))
}

/// GET items: `per_page`, `cursor`, `search` (docs/cloudflare-lists.md §2.3). Only completed
/// changes are visible.
pub(crate) async fn get_items(
    State(shared): State<Shared>,
    path: ListPath,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> ApiResult {
    let Path((_, list_id)) = path.map_err(path_error)?;
    let Query(query) = query.map_err(|err| ApiError::invalid(format!("invalid query: {err}")))?;
    let mut state = lock(&shared);
    state.counters.list_reads += 1;
    let per_page = match query.get("per_page") {
        None => state.settings.default_per_page,
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=MAX_PER_PAGE).contains(&n) => n,
            parsed => {
                if parsed.is_ok_and(|n| n > MAX_PER_PAGE) {
                    state.counters.per_page_over_max += 1;
                }
                let message = format!("per_page must be an integer from 1 to {MAX_PER_PAGE}");
                return Err(ApiError::invalid(message));
            }
        },
    };
    let cursor = match query.get("cursor").filter(|text| !text.is_empty()) {
        None => None,
        Some(text) => Some(decode_cursor(text).ok_or_else(|| ApiError::invalid("invalid cursor"))?),
    };
    let list = state
        .store
        .list(&list_id)
        .ok_or_else(|| ApiError::not_found("list"))?;
    // A cursor of an IP list means nothing in an ASN list, and the other way round.
    let first = list.items.keys().next();
    if let (Some((_, at)), Some(first)) = (&cursor, first) {
        if !at.same_kind(first) {
            return Err(ApiError::invalid("invalid cursor"));
        }
    }
    let page_query = PageQuery {
        per_page,
        cursor,
        search: query.get("search").map(String::as_str),
    };
    let (items, result_info) = list.page(&page_query);
    Ok(success_with_info(items, result_info))
}

/// POST items: async upsert (docs/cloudflare-lists.md §2.4).
pub(crate) async fn post_items(
    State(shared): State<Shared>,
    path: ListPath,
    body: Bytes,
) -> ApiResult {
    write(shared, path, WriteKind::Upsert, body)
}

/// PUT items: async replace-all, `[]` accepted (docs/cloudflare-lists.md §2.5).
pub(crate) async fn put_items(
    State(shared): State<Shared>,
    path: ListPath,
    body: Bytes,
) -> ApiResult {
    write(shared, path, WriteKind::Replace, body)
}

/// DELETE items: async delete by id (docs/cloudflare-lists.md §2.6).
pub(crate) async fn delete_items(
    State(shared): State<Shared>,
    path: ListPath,
    body: Bytes,
) -> ApiResult {
    write(shared, path, WriteKind::Delete, body)
}

fn write(shared: Shared, path: ListPath, kind: WriteKind, body: Bytes) -> ApiResult {
    let Path((_, list_id)) = path.map_err(path_error)?;
    let mut state = lock(&shared);
    let operation_id = state.submit_write(&list_id, kind, &body, Instant::now())?;
    tracing::debug!(%operation_id, ?kind, %list_id, "bulk operation created");
    // HTTP 200 as in the OpenAPI; the endpoints page says 201 (docs/cloudflare-lists.md §3,
    // unverified).
    Ok(success(json!({ "operation_id": operation_id })))
}

/// GET one item; 404 if it is not (yet) in the completed state (docs/cloudflare-lists.md §2.2).
pub(crate) async fn get_item(State(shared): State<Shared>, path: ItemPath) -> ApiResult {
    let Path((_, list_id, item_id)) = path.map_err(path_error)?;
    let mut state = lock(&shared);
    state.counters.other += 1;
    let list = state
        .store
        .list(&list_id)
        .ok_or_else(|| ApiError::not_found("list"))?;
    let (key, item) = list
        .find_item(&item_id)
        .ok_or_else(|| ApiError::not_found("list item"))?;
    Ok(success(item_json(key, item)))
}

/// GET bulk operation status (docs/cloudflare-lists.md §2.7); the path is per account, not per
/// list.
pub(crate) async fn get_operation(State(shared): State<Shared>, path: ListPath) -> ApiResult {
    let Path((_, operation_id)) = path.map_err(path_error)?;
    let now = Instant::now();
    let mut state = lock(&shared);
    state.counters.status_polls += 1;
    state.advance(now);
    let status = state.ops.status_json(&operation_id, now);
    Ok(success(
        status.ok_or_else(|| ApiError::not_found("bulk operation"))?,
    ))
}
