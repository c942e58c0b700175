//! A stateful emulator of the Cloudflare Lists API (account-level IP lists), used by the
//! integration tests in-process and by the demo as the `cf-lists-emulator` binary.
//!
//! It follows `docs/cloudflare-lists.md` (cited below by section), not a permissive mock: writes
//! are asynchronous bulk operations that complete after a latency, one operation may be in flight
//! per account, IPs are validated and stored in canonical form, pages are capped at 500 items.
//! Where the docs found no source (docs/cloudflare-lists.md §12) the behaviour is a switch in
//! [`Settings`] or is marked "unverified"/"invented" at the place it is implemented. Lists of
//! `kind: "ip"` and `kind: "asn"` (docs/cloudflare-lists.md §13) are implemented fully, sharing
//! the account's item quota; lists of the other kinds can be created but refuse item writes with
//! 10058.
//!
//! Besides the Lists API it serves the zone rulesets endpoints a `setup` command needs
//! (docs/cloudflare-lists.md §9: the `http_request_firewall_custom` entry point and its rules), and
//! it can misbehave on demand: failed, slow, malformed, lost or reset requests, stuck or failing
//! operations, reduced token permissions, a tighter rate limit (see `faults.rs`).
//!
//! # Layout
//! - `lib.rs`: the public types and the core of the [`Emulator`] handle.
//! - `http.rs`: the router and the gate every API request passes (auth, rate limit, faults).
//! - `handlers.rs`: one handler per Lists endpoint; `admin.rs`: the `/__emulator` surface.
//! - `zone_handlers.rs`: the rulesets endpoints; `rulesets.rs`: zone rulesets and rules.
//! - `state.rs`: the shared state, lazy advancing of operations, the write rules.
//! - `store.rs`: lists and items; `ops.rs`: bulk operations; `items.rs`: write validation.
//! - `canonical.rs`: IP parsing, item keys, canonical text, cursors; `envelope.rs`: responses
//!   and codes.
//! - `limits.rs`: the global rate limit; `clock.rs`: timestamps.
//! - `faults.rs`: injected faults and their handle methods; `conn.rs`: the listener and
//!   streams that let a fault reset a connection.

mod admin;
mod canonical;
mod clock;
mod conn;
mod envelope;
mod faults;
mod handlers;
mod http;
mod items;
mod limits;
mod ops;
mod rulesets;
mod state;
mod store;
mod zone_handlers;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use canonical::{ip_text, parse_item_ip, IpRules, ItemKey};
use conn::{FaultyListener, KillSwitch};
use state::{lock, Shared, State};
use store::Item;

/// What a write does while a bulk operation is pending or running (docs/cloudflare-lists.md §3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PendingWrite {
    /// Current docs: refused with 429, `Retry-After: 1`, code 10040 (code unverified).
    #[default]
    Reject,
    /// Older docs: accepted and executed FIFO after the operations before it.
    Queue,
}

/// What happens to a CIDR with host bits set, e.g. `1.1.1.1/24` (docs/cloudflare-lists.md §6.3,
/// unverified).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HostBits {
    /// Stored masked: `1.1.1.0/24`.
    #[default]
    Mask,
    /// Refused with 400, code 10035.
    Reject,
}

/// Whether an `asn` list takes AS number 0 (docs/cloudflare-lists.md §13, unverified): the schema
/// says "non-negative", Terraform's older provider refused anything below 1.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AsnZero {
    /// Refused with 400, code 10035, like any invalid ASN.
    #[default]
    Refuse,
    /// Stored like any other ASN.
    Accept,
}

/// How exceeding the account item quota is reported (docs/cloudflare-lists.md §4.1, unverified).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CapacityError {
    /// The operation ends `failed` with `list item limit exceeded`; nothing is applied.
    #[default]
    FailedOperation,
    /// Refused at submit with 400 and an invented code (10061).
    Sync,
}

/// What the API token is allowed to do (docs/cloudflare-lists.md §8). Refusals are 403 with code
/// 10000 `Authentication error`, as for a bad token.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permissions {
    /// Account Filter Lists Edit plus Zone WAF Edit: everything.
    #[default]
    Edit,
    /// Read only: GET works, every other method (item writes, list create/update/delete,
    /// ruleset writes) is refused.
    Read,
    /// A valid token without any of the needed permissions: every request is refused.
    None,
}

/// Configuration of one emulated account.
#[derive(Clone, Debug)]
pub struct Settings {
    /// 32 chars like a real account id (docs/cloudflare-lists.md §1).
    pub account_id: String,
    /// The only accepted `Authorization: Bearer` token.
    pub api_token: String,
    /// Bulk operation latency, drawn uniformly from `min..=max` per operation.
    pub op_latency: (Duration, Duration),
    /// Added to an operation's latency per item it writes (default zero: size-blind).
    /// Cloudflare's real scaling is unknown; this lets a benchmark charge large operations.
    pub op_item_cost: Duration,
    pub pending_write: PendingWrite,
    /// Largest accepted IPv6 prefix: 128 now, 64 before 2025-07 (docs/cloudflare-lists.md §6.1).
    pub ipv6_max_prefix: u8,
    pub host_bits: HostBits,
    pub asn_zero: AsnZero,
    pub capacity_error: CapacityError,
    /// Items across all lists of the account (docs/cloudflare-lists.md §4.1: 10,000 below
    /// Enterprise).
    pub account_item_limit: usize,
    /// Requests per [`Settings::rate_limit_window`]; `None` turns the global limit off
    /// (docs/cloudflare-lists.md §4.4: 1200 per 300 s).
    pub global_rate_limit: Option<u32>,
    /// The fixed window of the global rate limit: 300 s documented, shorter in tests.
    pub rate_limit_window: Duration,
    /// Send `Ratelimit` and `Ratelimit-Policy` on every answer
    /// (docs/cloudflare-lists.md §4.4, since 2025-09); `false` for an API without them.
    /// `Retry-After` on a 429 stays.
    pub rate_limit_headers: bool,
    /// What the API token may do.
    pub permissions: Permissions,
    /// `per_page` when absent; 25 is inferred (docs/cloudflare-lists.md §2.3).
    pub default_per_page: usize,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            account_id: "0123456789abcdef0123456789abcdef".to_owned(),
            api_token: "emulator-token".to_owned(),
            op_latency: (Duration::from_millis(300), Duration::from_millis(1200)),
            op_item_cost: Duration::ZERO,
            pending_write: PendingWrite::Reject,
            ipv6_max_prefix: 128,
            host_bits: HostBits::Mask,
            asn_zero: AsnZero::Refuse,
            capacity_error: CapacityError::FailedOperation,
            account_item_limit: 10_000,
            global_rate_limit: Some(1200),
            rate_limit_window: Duration::from_secs(300),
            rate_limit_headers: true,
            permissions: Permissions::Edit,
            default_per_page: 25,
        }
    }
}

impl Settings {
    /// The item IP rules selected by these settings.
    pub(crate) fn ip_rules(&self) -> IpRules {
        IpRules {
            ipv6_max_prefix: self.ipv6_max_prefix,
            host_bits: self.host_bits,
        }
    }
}

/// What the emulator has seen since start (or the last [`Emulator::reset_counters`]).
#[derive(Clone, Debug, Default, serde::Serialize, PartialEq, Eq)]
pub struct Counters {
    /// Every request under `/client/v4`, including refused ones; admin requests excluded.
    pub requests: u64,
    /// GET items pages.
    pub list_reads: u64,
    /// GET bulk operation status.
    pub status_polls: u64,
    /// Accepted POST/PUT/DELETE items (each created one bulk operation).
    pub writes: u64,
    /// Item writes refused after authentication: validation 400s, 429 pending, sync capacity.
    pub rejected_writes: u64,
    /// Item writes received while an operation was pending or running, in both modes.
    pub writes_while_pending: u64,
    /// GET items with `per_page` > 500.
    pub per_page_over_max: u64,
    /// Item creations, edits and deletions applied by completed operations
    /// (docs/cloudflare-lists.md §4.3).
    pub item_changes: u64,
    /// Requests refused by the global rate limit.
    pub rate_limited: u64,
    /// Every other request that reached a handler: list CRUD, GET one item, unknown routes.
    pub other: u64,
    /// Injected faults that fired: each failed, slow, malformed, lost or reset request, each
    /// reset connection, each operation failed, stuck or poisoned on purpose.
    pub faults_injected: u64,
    /// Requests to the zone rulesets endpoints that reached a handler.
    pub ruleset_requests: u64,
    /// PUT of a phase entry point, which replaces every rule of the zone
    /// (docs/cloudflare-lists.md §9: a setup command must not use it).
    pub ruleset_replacements: u64,
}

/// An item of the completed state, in API order.
#[derive(Clone, Debug, serde::Serialize, PartialEq, Eq)]
pub struct StoredItem {
    pub id: String,
    /// Canonical text as the API returns it (docs/cloudflare-lists.md §6.3).
    pub ip: String,
    pub comment: Option<String>,
}

/// An item of an `asn` list's completed state, in API order (docs/cloudflare-lists.md §13).
#[derive(Clone, Debug, serde::Serialize, PartialEq, Eq)]
pub struct StoredAsnItem {
    pub id: String,
    pub asn: u32,
    pub comment: Option<String>,
}

/// A rule of a zone's `http_request_firewall_custom` entry point (docs/cloudflare-lists.md §9).
#[derive(Clone, Debug, serde::Serialize, PartialEq, Eq)]
pub struct Rule {
    /// 32 lowercase hex chars.
    pub id: String,
    pub expression: String,
    /// One of `block`, `managed_challenge`, `js_challenge`, `challenge`, `skip`, `log`.
    pub action: String,
    /// Empty when none was given.
    pub description: String,
    pub enabled: bool,
}

/// True for a valid list name: `^[a-z0-9_]{1,50}$` (docs/cloudflare-lists.md §2.1,
/// lowercase as Cloudflare's Lists overview says).
pub fn is_valid_list_name(name: &str) -> bool {
    handlers::valid_list_name(name)
}

/// A running emulator: an axum server on its own task plus a handle on its state.
pub struct Emulator {
    shared: Shared,
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    server: JoinHandle<()>,
}

impl Emulator {
    /// Binds `bind` (use port 0 in tests) and serves the API on a spawned task.
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn start(settings: Settings, bind: SocketAddr) -> std::io::Result<Emulator> {
        let listener = tokio::net::TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let shared: Shared = Arc::new(Mutex::new(State::new(settings)));
        let listener = FaultyListener::new(listener, shared.clone());
        let app = http::router(shared.clone()).into_make_service_with_connect_info::<KillSwitch>();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = stopped.await;
            });
            if let Err(err) = serve.await {
                tracing::error!(error = %err, "emulator server failed");
            }
        });
        Ok(Emulator {
            shared,
            addr,
            stop,
            server,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/client/v4` (loopback when bound to an unspecified address).
    pub fn base_url(&self) -> String {
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        format!("http://{addr}/client/v4")
    }

    pub fn account_id(&self) -> String {
        self.state().settings.account_id.clone()
    }

    pub fn api_token(&self) -> String {
        self.state().settings.api_token.clone()
    }

    /// Creates an `ip` list and returns its id.
    ///
    /// # Panics
    /// If `name` is not a valid list name (`^[a-z0-9_]{1,50}$`).
    pub fn create_list(&self, name: &str) -> String {
        assert!(
            handlers::valid_list_name(name),
            "invalid list name {name:?}"
        );
        let mut state = self.state();
        state
            .create_list(name, "ip", None, Instant::now())
            .id
            .clone()
    }

    /// Creates a list of `kind` (`ip`, `asn`, `redirect` or `hostname`) and returns its id.
    ///
    /// # Panics
    /// If `name` is not a valid list name, or `kind` not one of the four kinds.
    pub fn create_list_of_kind(&self, name: &str, kind: &str) -> String {
        assert!(
            handlers::valid_list_name(name),
            "invalid list name {name:?}"
        );
        assert!(
            handlers::KINDS.contains(&kind),
            "invalid list kind {kind:?}"
        );
        let mut state = self.state();
        state
            .create_list(name, kind, None, Instant::now())
            .id
            .clone()
    }

    /// The completed items of an `asn` list in API order; empty if the list does not exist
    /// or is of another kind.
    pub fn asn_items(&self, list_id: &str) -> Vec<StoredAsnItem> {
        let state = self.state();
        state
            .store
            .list(list_id)
            .map(|list| list.stored_asn_items())
            .unwrap_or_default()
    }

    /// The completed items of an `ip` list in API order; empty if the list does not exist
    /// or is of another kind.
    pub fn items(&self, list_id: &str) -> Vec<StoredItem> {
        let state = self.state();
        state
            .store
            .list(list_id)
            .map(|list| list.stored_items())
            .unwrap_or_default()
    }

    /// Inserts or updates an item at once, as a dashboard edit would: no operation, no
    /// counters. The IP is canonicalised with the configured rules.
    ///
    /// # Panics
    /// If the IP is invalid under the settings or the list does not exist (test helper).
    pub fn insert_item(&self, list_id: &str, ip: &str, comment: Option<&str>) {
        let mut state = self.state();
        let rules = state.settings.ip_rules();
        let net = parse_item_ip(ip, rules)
            .unwrap_or_else(|err| panic!("insert_item: {}", err.message(0)));
        let now = state.now_text(Instant::now());
        let id = store::new_id(&mut state.rng);
        let list = state
            .store
            .list_mut(list_id)
            .unwrap_or_else(|| panic!("insert_item: no list {list_id}"));
        let item = list.items.entry(ItemKey::Ip(net)).or_insert_with(|| Item {
            id,
            comment: None,
            created_on: now.clone(),
            modified_on: now.clone(),
        });
        item.comment = comment.map(str::to_owned);
        item.modified_on = now;
        tracing::debug!(ip = %ip_text(&net), "item inserted by hand");
    }

    /// Removes an item at once, as a dashboard delete would: no operation, no counters.
    /// Returns whether the item was there.
    ///
    /// # Panics
    /// If the IP is invalid under the settings (test helper).
    pub fn remove_item(&self, list_id: &str, ip: &str) -> bool {
        let mut state = self.state();
        let rules = state.settings.ip_rules();
        let net = parse_item_ip(ip, rules)
            .unwrap_or_else(|err| panic!("remove_item: {}", err.message(0)));
        let list = state.store.list_mut(list_id);
        list.is_some_and(|list| list.items.remove(&ItemKey::Ip(net)).is_some())
    }

    pub fn counters(&self) -> Counters {
        self.state().counters.clone()
    }

    pub fn reset_counters(&self) {
        self.state().counters = Counters::default();
    }

    /// True while a bulk operation is pending or running.
    pub fn operation_pending(&self) -> bool {
        self.state().ops.busy()
    }

    /// Bulk operations created so far (accepted item writes), finished or not.
    pub fn operation_count(&self) -> u64 {
        self.state().ops.count()
    }

    /// Latency of operations created from now on.
    pub fn set_op_latency(&self, min: Duration, max: Duration) {
        self.state().settings.op_latency = (min, max.max(min));
    }

    /// Added per item to the latency of operations created from now on.
    pub fn set_op_item_cost(&self, per_item: Duration) {
        self.state().settings.op_item_cost = per_item;
    }

    /// `Ratelimit` and `Ratelimit-Policy` on every answer from now on, or none.
    pub fn set_rate_limit_headers(&self, on: bool) {
        self.state().settings.rate_limit_headers = on;
    }

    /// Stops the server and waits for it. Responses held back by a fault are released at
    /// once, so that no connection keeps the server alive.
    pub async fn shutdown(self) {
        lock(&self.shared).stopping.send_replace(true);
        let _ = self.stop.send(());
        let _ = self.server.await;
    }

    /// Locks the state after completing every operation that is due.
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        let mut state = lock(&self.shared);
        state.advance(Instant::now());
        state
    }
}
