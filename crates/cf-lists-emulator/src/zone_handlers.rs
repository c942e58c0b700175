//! Handlers of the zone rulesets endpoints a `setup`/`cleanup` command needs
//! (docs/cloudflare-lists.md §9). Like `handlers.rs`, they run after the gate, take bodies as
//! bytes, and turn every rejection into a 400 envelope. Each counts in
//! `Counters::ruleset_requests`.

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use serde_json::Value;
use tokio::time::Instant;

use super::envelope::{code, success, ApiError};
use super::items::parse_json;
use super::rulesets::{optional, parse_rule, parse_rules, NewRule, NewRuleset, PHASE};
use super::state::{lock, Shared, State as EmulatorState};

type ApiResult = Result<Response, ApiError>;
type ZonePath = Result<Path<String>, PathRejection>;
/// `(zone_id, phase)` or `(zone_id, ruleset_id)`.
type PairPath = Result<Path<(String, String)>, PathRejection>;
type RulePath = Result<Path<(String, String, String)>, PathRejection>;

fn path_error(rejection: PathRejection) -> ApiError {
    ApiError::invalid(format!("invalid path: {rejection}"))
}

/// Zone ids are 32 lowercase hex chars; any such zone exists (no zone registry).
fn check_zone(zone_id: &str) -> Result<(), ApiError> {
    let hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    if zone_id.len() == 32 && zone_id.bytes().all(hex) {
        return Ok(());
    }
    let message = format!(
        "Could not route to /client/v4/zones/{zone_id}/rulesets, perhaps your object identifier is invalid?"
    );
    Err(ApiError::new(
        axum::http::StatusCode::NOT_FOUND,
        code::INVALID_OBJECT_ID,
        message,
    ))
}

fn entrypoint_not_found(phase: &str) -> ApiError {
    let message = format!("could not find entrypoint ruleset in the {phase} phase");
    ApiError::new(
        axum::http::StatusCode::NOT_FOUND,
        code::ENTRYPOINT_NOT_FOUND,
        message,
    )
}

fn only_our_phase(phase: &str) -> Result<(), ApiError> {
    if phase == PHASE {
        return Ok(());
    }
    Err(ApiError::invalid(format!(
        "phase {phase:?} is not emulated: only {PHASE}"
    )))
}

/// GET the entry point of a phase: the ruleset, or 404 10003 if the zone has none.
pub(crate) async fn get_entrypoint(State(shared): State<Shared>, path: PairPath) -> ApiResult {
    let Path((zone_id, phase)) = path.map_err(path_error)?;
    check_zone(&zone_id)?;
    let mut state = lock(&shared);
    state.counters.ruleset_requests += 1;
    let ruleset = state.zones.entrypoints.get(&zone_id);
    let ruleset = ruleset.filter(|_| phase == PHASE);
    Ok(success(
        ruleset.ok_or_else(|| entrypoint_not_found(&phase))?.json(),
    ))
}

/// PUT the entry point: replaces every rule, creating the entry point if missing
/// (docs/cloudflare-lists.md §9). Counted in `ruleset_replacements` whatever the outcome: a setup
/// command must not use it.
pub(crate) async fn put_entrypoint(
    State(shared): State<Shared>,
    path: PairPath,
    body: Bytes,
) -> ApiResult {
    let Path((zone_id, phase)) = path.map_err(path_error)?;
    check_zone(&zone_id)?;
    let mut guard = lock(&shared);
    let state = &mut *guard;
    state.counters.ruleset_requests += 1;
    state.counters.ruleset_replacements += 1;
    only_our_phase(&phase)?;
    let body = parse_json(&body)?;
    let Value::Object(object) = &body else {
        return Err(ApiError::invalid("request body must be a JSON object"));
    };
    let existing = state.zones.entrypoints.get(&zone_id);
    let new = NewRuleset {
        name: optional(object, "name", Value::as_str)?
            .or(existing.map(|ruleset| ruleset.name.as_str()))
            .unwrap_or("default")
            .to_owned(),
        description: optional(object, "description", Value::as_str)?
            .unwrap_or_default()
            .to_owned(),
        rules: parse_rules(&body, &state.store)?,
    };
    let now = state.now_text(Instant::now());
    Ok(success(state.zones.replace(&zone_id, new, &now).json()))
}

/// GET the rulesets of a zone, without their rules.
pub(crate) async fn list_rulesets(State(shared): State<Shared>, path: ZonePath) -> ApiResult {
    let Path(zone_id) = path.map_err(path_error)?;
    check_zone(&zone_id)?;
    let mut state = lock(&shared);
    state.counters.ruleset_requests += 1;
    let ruleset = state.zones.entrypoints.get(&zone_id);
    let summaries = ruleset.into_iter().map(|ruleset| ruleset.summary_json());
    Ok(success(Value::Array(summaries.collect())))
}

/// POST a ruleset: `{name, kind: "zone", phase, description?, rules?}`; only the entry
/// point of [`PHASE`] can be created, once.
pub(crate) async fn create_ruleset(
    State(shared): State<Shared>,
    path: ZonePath,
    body: Bytes,
) -> ApiResult {
    let Path(zone_id) = path.map_err(path_error)?;
    check_zone(&zone_id)?;
    let body = parse_json(&body)?;
    let mut guard = lock(&shared);
    let state = &mut *guard;
    state.counters.ruleset_requests += 1;
    let Value::Object(object) = &body else {
        return Err(ApiError::invalid("request body must be a JSON object"));
    };
    let kind = optional(object, "kind", Value::as_str)?;
    if kind != Some("zone") {
        return Err(ApiError::invalid("kind must be \"zone\""));
    }
    only_our_phase(optional(object, "phase", Value::as_str)?.unwrap_or_default())?;
    let name = optional(object, "name", Value::as_str)?.unwrap_or_default();
    if name.is_empty() {
        return Err(ApiError::invalid("name is required"));
    }
    let new = NewRuleset {
        name: name.to_owned(),
        description: optional(object, "description", Value::as_str)?
            .unwrap_or_default()
            .to_owned(),
        rules: parse_rules(&body, &state.store)?,
    };
    if state.zones.entrypoints.contains_key(&zone_id) {
        let message = format!("an entry point ruleset for the {PHASE} phase already exists");
        return Err(ApiError::bad_request(code::ENTRYPOINT_EXISTS, message));
    }
    let now = state.now_text(Instant::now());
    Ok(success(state.zones.create(&zone_id, new, &now).json()))
}

/// GET one ruleset with its rules.
pub(crate) async fn get_ruleset(State(shared): State<Shared>, path: PairPath) -> ApiResult {
    let Path((zone_id, ruleset_id)) = path.map_err(path_error)?;
    check_zone(&zone_id)?;
    let mut state = lock(&shared);
    state.counters.ruleset_requests += 1;
    let ruleset = state.zones.ruleset(&zone_id, &ruleset_id);
    Ok(success(
        ruleset
            .ok_or_else(|| ApiError::not_found("ruleset"))?
            .json(),
    ))
}

/// POST one rule: appended at the end, new ruleset version, answers the whole ruleset.
pub(crate) async fn add_rule(
    State(shared): State<Shared>,
    path: PairPath,
    body: Bytes,
) -> ApiResult {
    let Path((zone_id, ruleset_id)) = path.map_err(path_error)?;
    check_zone(&zone_id)?;
    let mut guard = lock(&shared);
    let state = &mut *guard;
    // Cloudflare can place a rule `before`/`after`/at `index`; a setup command has no
    // need to, so the emulator refuses rather than silently appending.
    let rule = rule_of(state, &zone_id, &ruleset_id, &body, "rules are appended")?;
    let now = state.now_text(Instant::now());
    let ruleset = state.zones.append(&zone_id, &ruleset_id, vec![rule], &now);
    Ok(success(
        ruleset
            .ok_or_else(|| ApiError::not_found("ruleset"))?
            .json(),
    ))
}

/// A rule's definition from a request body for an existing ruleset: counted, the ruleset
/// looked up, `position` refused (`placement` says what the emulator does instead).
fn rule_of(
    state: &mut EmulatorState,
    zone_id: &str,
    ruleset_id: &str,
    body: &[u8],
    placement: &str,
) -> Result<NewRule, ApiError> {
    state.counters.ruleset_requests += 1;
    if state.zones.ruleset(zone_id, ruleset_id).is_none() {
        return Err(ApiError::not_found("ruleset"));
    }
    let body = parse_json(body)?;
    if body.get("position").is_some() {
        return Err(ApiError::invalid(format!(
            "position is not emulated: {placement}"
        )));
    }
    parse_rule(&body, &state.store)
}

/// PATCH one rule: the body is the rule's whole new definition (fields left out take their
/// defaults, as Cloudflare says to include every field to keep); same id and place, new
/// rule and ruleset versions, answers the ruleset (docs/cloudflare-lists.md §9).
pub(crate) async fn update_rule(
    State(shared): State<Shared>,
    path: RulePath,
    body: Bytes,
) -> ApiResult {
    let Path((zone_id, ruleset_id, rule_id)) = path.map_err(path_error)?;
    check_zone(&zone_id)?;
    let mut guard = lock(&shared);
    let state = &mut *guard;
    // Cloudflare can also move a rule; a setup command only rewrites one in place.
    let rule = rule_of(
        state,
        &zone_id,
        &ruleset_id,
        &body,
        "rules keep their place",
    )?;
    let now = state.now_text(Instant::now());
    let ruleset = (state.zones).update_rule(&zone_id, &ruleset_id, &rule_id, rule, &now)?;
    Ok(success(ruleset.json()))
}

/// DELETE one rule (for a `cleanup` command): new ruleset version, answers the ruleset.
pub(crate) async fn delete_rule(State(shared): State<Shared>, path: RulePath) -> ApiResult {
    let Path((zone_id, ruleset_id, rule_id)) = path.map_err(path_error)?;
    check_zone(&zone_id)?;
    let mut guard = lock(&shared);
    let state = &mut *guard;
    state.counters.ruleset_requests += 1;
    let now = state.now_text(Instant::now());
    let ruleset = state
        .zones
        .remove_rule(&zone_id, &ruleset_id, &rule_id, &now)?;
    Ok(success(ruleset.json()))
}
