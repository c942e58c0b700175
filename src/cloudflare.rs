//! The Cloudflare Lists API client (docs/cloudflare-lists.md §1–§3).
//!
//! One small `async fn` per endpoint over one request helper that handles auth, the v4
//! envelope and errors. Wire types stay in this module; callers see [`ListInfo`],
//! [`ListedItem`] and [`OpStatus`]. ASN lists have their own reads and writes in `asn.rs`
//! (docs/cloudflare-lists.md §13), over the same helper.

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use tracing::warn;

use crate::budget::RequestBudget;
use crate::config::{CloudflareConfig, ListRef, Secret};
use crate::item::Item;
use crate::net::ReadError;
use crate::telemetry::Telemetry;

mod asn;
mod rulesets;

pub use asn::{AsnPage, ListedAsn};
pub use rulesets::{
    check_host, is_rule_expression, rule_expression, Rule, Ruleset, MAX_EXPRESSION_CHARS,
};

/// The largest page the API serves (docs/cloudflare-lists.md §2.3).
pub const MAX_PER_PAGE: usize = 500;
/// The largest answer read: a page of 500 items with the longest comments is well under.
const MAX_BODY: usize = 16 << 20;
/// Longest silence in the middle of an answer.
const READ_IDLE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// 429: the global request limit, or a write while a bulk operation is pending.
    #[error("Cloudflare rate limited the request (HTTP 429{}): {}", retry_hint(.retry_after), messages(.errors))]
    RateLimited {
        retry_after: Option<Duration>,
        errors: Vec<ApiMessage>,
    },
    /// Cloudflare answered, and said no.
    #[error("Cloudflare refused {what} (HTTP {status}): {}{}", messages(.errors), auth_hint(*.status, .errors))]
    Api {
        what: &'static str,
        status: u16,
        errors: Vec<ApiMessage>,
    },
    #[error("cannot reach Cloudflare for {what}: {detail}")]
    Transport { what: &'static str, detail: String },
    #[error(
        "Cloudflare answered {what} with HTTP {status} redirecting to {location}: the bouncer \
         never follows redirects (the token would go along); check cloudflare.api_url"
    )]
    Redirect {
        what: &'static str,
        status: u16,
        location: String,
    },
    #[error("Cloudflare sent an unexpected answer to {what}: {detail}")]
    Decode { what: &'static str, detail: String },
    #[error("no IP list {0:?} in this account: create it (`setup` does, or Manage Account > Configurations > Lists) or fix cloudflare.list_name / list_id")]
    ListNotFound(String),
    #[error("no ASN list {0:?} in this account: create one of kind asn (Manage Account > Configurations > Lists; ASN lists need an Enterprise plan)")]
    AsnListNotFound(String),
    #[error("list {name:?} is a {kind} list; the bouncer needs {}", .wanted.needed())]
    WrongKind {
        name: String,
        kind: String,
        wanted: ListKind,
    },
    /// Not sent: this instance does not hold the Lease, or its last renewal is too old
    /// for the write to end inside the window (`ha.rs`).
    #[error("{what} not sent: this instance is not the elected writer (or its lease renewal is overdue)")]
    Fenced { what: &'static str },
}

impl Error {
    /// How long Cloudflare asked us to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether this is Cloudflare's account-wide limit (1 200 requests / 5 minutes),
    /// which blocks every call for the rest of its window, rather than a write refused
    /// while a bulk operation is pending.
    pub fn is_global_limit(&self) -> bool {
        match self {
            Error::RateLimited { errors, .. } => errors
                .iter()
                .any(|e| e.code != 10040 && e.message.contains("requests per")),
            _ => false,
        }
    }

    /// Whether a write that failed this way may still have been accepted (so an operation
    /// may be pending): the answer was lost, garbled, or came from a failing edge.
    pub fn may_have_been_accepted(&self) -> bool {
        match self {
            Error::Transport { .. } | Error::Decode { .. } => true,
            Error::Api { status, .. } => *status >= 500,
            _ => false,
        }
    }

    /// Whether the token lacks access (invalid, or without the needed permission).
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            Error::Api {
                status: 401 | 403,
                ..
            }
        ) || matches!(self, Error::Api { errors, .. } if errors.iter().any(|e| e.code == 10000))
    }

    /// Whether retrying the same request could succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::RateLimited { .. } | Error::Transport { .. } | Error::Decode { .. } => true,
            Error::Api { status, .. } => *status >= 500,
            Error::Redirect { .. } => true,
            Error::ListNotFound(_)
            | Error::AsnListNotFound(_)
            | Error::WrongKind { .. }
            | Error::Fenced { .. } => false,
        }
    }
}

/// One entry of an envelope's `errors` or `messages`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ApiMessage {
    #[serde(default)]
    pub code: i64,
    #[serde(default)]
    pub message: String,
}

fn messages(errors: &[ApiMessage]) -> String {
    if errors.is_empty() {
        return "no error detail".to_owned();
    }
    let parts: Vec<String> = errors
        .iter()
        .map(|e| format!("{} ({})", e.message, e.code))
        .collect();
    parts.join("; ")
}

fn retry_hint(retry_after: &Option<Duration>) -> String {
    retry_after.map_or_else(String::new, |d| format!(", retry after {}s", d.as_secs()))
}

fn auth_hint(status: u16, errors: &[ApiMessage]) -> &'static str {
    if status == 403 || status == 401 || errors.iter().any(|e| e.code == 10000) {
        " — check cloudflare.api_token, cloudflare.account_id, and that the token has the permission \
         Account > Account Filter Lists > Edit"
    } else {
        ""
    }
}

/// Guards a paged read against a cursor that repeats or never ends: a read that sees a
/// cursor twice, or far more pages than the list's size allows, fails as a whole (and a
/// failed read changes nothing).
pub struct PageGuard {
    seen: rustc_hash::FxHashSet<String>,
    pages: u64,
    /// The pages the list's size needs.
    expected: u64,
    max_pages: u64,
}

/// Pages a read may take beyond what the list's size needs (items added meanwhile).
const EXTRA_PAGES: u64 = 10;

impl PageGuard {
    /// For a list of `num_items` items (as the account's list of lists reports it).
    pub fn new(num_items: u64) -> PageGuard {
        let expected = num_items.div_ceil(MAX_PER_PAGE as u64);
        PageGuard {
            seen: rustc_hash::FxHashSet::default(),
            pages: 0,
            expected,
            max_pages: expected * 2 + EXTRA_PAGES,
        }
    }

    /// The pages still to read, the next one included, as far as the list's size says
    /// (at least the next one).
    pub fn left(&self) -> u64 {
        self.expected.saturating_sub(self.pages).max(1)
    }

    /// Counts a page read; `next` is the cursor it gave.
    ///
    /// # Errors
    /// [`Error::Decode`] for a repeated cursor, or too many pages.
    pub fn next_page(&mut self, next: Option<&str>) -> Result<(), Error> {
        self.pages += 1;
        let Some(next) = next else {
            return Ok(());
        };
        if !self.seen.insert(next.to_owned()) {
            return Err(Error::Decode {
                what: "reading list items",
                detail: format!(
                    "the pagination cursor repeated after {} pages, so the read would never end; \
                     nothing was changed, and the read is retried",
                    self.pages
                ),
            });
        }
        if self.pages >= self.max_pages {
            return Err(Error::Decode {
                what: "reading list items",
                detail: format!(
                    "{} pages and more to come, far more than the list's size allows; \
                     nothing was changed, and the read is retried",
                    self.pages
                ),
            });
        }
        Ok(())
    }
}

/// The kinds of list the bouncer writes to (docs/cloudflare-lists.md §2.1, §13).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    /// Items `{"ip": …}`, matched by `ip.src in $name`.
    Ip,
    /// Items `{"asn": N}`, matched by `ip.src.asnum in $name`.
    Asn,
}

impl ListKind {
    /// The `kind` of the API.
    pub fn as_str(self) -> &'static str {
        match self {
            ListKind::Ip => "ip",
            ListKind::Asn => "asn",
        }
    }

    fn needed(self) -> &'static str {
        match self {
            ListKind::Ip => "an IP list (kind ip)",
            ListKind::Asn => "an ASN list (kind asn)",
        }
    }
}

/// A list as the account holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListInfo {
    pub id: String,
    pub name: String,
    pub kind: String,
    pub num_items: u64,
}

/// An item as a list read returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedItem {
    pub id: String,
    pub ip: String,
    pub comment: Option<String>,
}

/// Where a bulk operation stands (docs/cloudflare-lists.md §2.7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpStatus {
    Pending,
    Completed,
    Failed(String),
}

#[derive(Deserialize)]
struct Envelope<T> {
    #[serde(default)]
    success: bool,
    #[serde(default)]
    errors: Vec<ApiMessage>,
    result: Option<T>,
    #[serde(default)]
    result_info: Option<ResultInfo>,
}

#[derive(Deserialize, Default)]
struct ResultInfo {
    #[serde(default)]
    cursors: Option<Cursors>,
}

#[derive(Deserialize, Default)]
struct Cursors {
    #[serde(default)]
    after: Option<String>,
}

#[derive(Deserialize)]
struct WireList {
    id: String,
    name: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    num_items: f64,
}

/// An item of a page as the answer holds it: its strings borrowed from the body (only
/// one with an escape in it is copied).
#[derive(Deserialize)]
struct WireItem<'a> {
    #[serde(borrow)]
    id: Text<'a>,
    #[serde(default, borrow)]
    ip: Option<Text<'a>>,
    #[serde(default, borrow)]
    comment: Option<Text<'a>>,
}

/// A JSON string borrowed from the body when it has no escape, copied when it has.
/// (serde's own `Cow<str>` always copies inside an `Option`.)
struct Text<'a>(std::borrow::Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor<'a>(std::marker::PhantomData<&'a str>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visitor<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Text<'a>, E> {
                Ok(Text(std::borrow::Cow::Borrowed(text)))
            }
            fn visit_str<E>(self, text: &str) -> Result<Text<'a>, E> {
                Ok(Text(std::borrow::Cow::Owned(text.to_owned())))
            }
        }
        deserializer.deserialize_str(Visitor(std::marker::PhantomData))
    }
}

/// An item of a page, borrowed from the answer while it is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListedItemRef<'a> {
    pub id: &'a str,
    pub ip: &'a str,
    pub comment: Option<&'a str>,
}

impl ListedItemRef<'_> {
    /// An owned copy, for a caller that keeps the items.
    pub fn to_listed(self) -> ListedItem {
        ListedItem {
            id: self.id.to_owned(),
            ip: self.ip.to_owned(),
            comment: self.comment.map(str::to_owned),
        }
    }
}

#[derive(Deserialize)]
struct WireOperationId {
    operation_id: String,
}

#[derive(Deserialize)]
struct WireOperation {
    status: String,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Serialize)]
struct NewItem<'a> {
    /// Written as the item's text straight into the body, no `String` an item.
    #[serde(serialize_with = "as_text")]
    ip: Item,
    comment: &'a str,
}

fn as_text<S: serde::Serializer>(item: &Item, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(item)
}

#[derive(Serialize)]
struct DeleteItems<'a> {
    items: Vec<ItemId<'a>>,
}

#[derive(Serialize)]
struct ItemId<'a> {
    id: &'a str,
}

pub struct CloudflareClient {
    http: reqwest::Client,
    api_url: String,
    account_url: String,
    token: Secret,
    budget: Arc<RequestBudget>,
    telemetry: Arc<Telemetry>,
    /// With high availability: writes only inside the leader's window.
    fence: Option<Arc<crate::ha::Ha>>,
    request_timeout: Duration,
}

impl CloudflareClient {
    /// # Errors
    /// Fails only if the HTTP client cannot be built (no TLS provider).
    pub fn new(
        config: &CloudflareConfig,
        telemetry: Arc<Telemetry>,
    ) -> Result<CloudflareClient, Error> {
        crate::install_tls_provider();
        let http = crate::net::client_builder(config.request_timeout)
            .build()
            .map_err(|err| Error::Transport {
                what: "client setup",
                detail: crate::net::describe(&err, None),
            })?;
        Ok(CloudflareClient {
            http,
            api_url: config.api_url.clone(),
            account_url: format!("{}/accounts/{}", config.api_url, config.account_id),
            token: config.api_token.clone(),
            budget: Arc::new(RequestBudget::new(config.max_requests_per_minute)),
            telemetry,
            fence: None,
            request_timeout: config.request_timeout,
        })
    }

    /// From now on, a write is sent only while `ha` says this instance leads, with a
    /// timeout that ends inside its window (`ha.rs`).
    pub fn fence_with(&mut self, ha: Arc<crate::ha::Ha>) {
        self.fence = Some(ha);
    }

    /// Every list of the account (one request; the API does not paginate it).
    ///
    /// # Errors
    /// The request's error.
    pub async fn lists(&self) -> Result<Vec<ListInfo>, Error> {
        let url = format!("{}/rules/lists", self.account_url);
        let (lists, _) = self
            .call::<Vec<WireList>, ()>(
                "listing the account's lists",
                reqwest::Method::GET,
                url,
                None,
            )
            .await?;
        Ok(lists.into_iter().map(ListInfo::from).collect())
    }

    /// Finds the configured list and checks it is an IP list.
    ///
    /// # Errors
    /// [`Error::ListNotFound`], [`Error::WrongKind`], or the request's error.
    pub async fn find_list(&self, list: &ListRef) -> Result<ListInfo, Error> {
        choose_list(&self.lists().await?, list)
    }

    /// Finds a list and checks it is of kind `wanted`.
    ///
    /// # Errors
    /// As [`choose_list_of_kind`], or the request's error.
    pub async fn find_list_of_kind(
        &self,
        list: &ListRef,
        wanted: ListKind,
    ) -> Result<ListInfo, Error> {
        choose_list_of_kind(&self.lists().await?, list, wanted)
    }

    /// Reads one page of items (`per_page` = 500); returns the items and the next cursor.
    ///
    /// # Errors
    /// The request's error.
    pub async fn items_page(
        &self,
        list_id: &str,
        cursor: Option<&str>,
        search: Option<&str>,
    ) -> Result<(Vec<ListedItem>, Option<String>), Error> {
        let mut items = Vec::new();
        let next = self
            .items_page_each(list_id, cursor, search, |item| items.push(item.to_listed()))
            .await?;
        Ok((items, next))
    }

    /// Says that the next request leads `requests` more of one paged read (itself
    /// included), so that the request budget hands them out in groups
    /// ([`RequestBudget::lead`]).
    pub fn lead(&self, requests: u64) {
        self.budget.lead(requests);
    }

    /// One page of a list's items, each handed to `each` as it is decoded (its strings
    /// borrowed from the answer); returns the cursor of the next page, if any.
    ///
    /// # Errors
    /// The request's error.
    pub async fn items_page_each(
        &self,
        list_id: &str,
        cursor: Option<&str>,
        search: Option<&str>,
        each: impl FnMut(ListedItemRef<'_>),
    ) -> Result<Option<String>, Error> {
        let mut url = format!(
            "{}/rules/lists/{list_id}/items?per_page={MAX_PER_PAGE}",
            self.account_url
        );
        for (name, value) in [("cursor", cursor), ("search", search)] {
            if let Some(value) = value {
                url.push_str(&format!("&{name}={}", encode(value)));
            }
        }
        let what = "reading list items";
        self.call_with::<(), _>(what, reqwest::Method::GET, url, None, |answer| {
            let (items, info) = answer.open::<Vec<WireItem<'_>>>()?;
            Ok(page_of(&items, info, each))
        })
        .await
    }

    /// Finds one item's id with `search` (a prefix match: `1.2.3.4` also finds
    /// `1.2.3.40`, so results are compared exactly, whatever lane `item` is on). `None`:
    /// not on the list.
    ///
    /// # Errors
    /// The request's error.
    pub async fn find_item(&self, list_id: &str, item: Item) -> Result<Option<String>, Error> {
        let text = item.to_string();
        let mut cursor = None;
        // A search finds an item and the few it prefixes.
        let mut pages = PageGuard::new(0);
        loop {
            let (items, next) = self
                .items_page(list_id, cursor.as_deref(), Some(&text))
                .await?;
            pages.next_page(next.as_deref())?;
            let found = items
                .into_iter()
                .find(|listed| Item::from_cloudflare(&listed.ip) == Some(item.bare()));
            if let Some(found) = found {
                return Ok(Some(found.id));
            }
            match next {
                Some(next) => cursor = Some(next),
                None => return Ok(None),
            }
        }
    }

    /// Starts a bulk add (upsert); returns the operation id.
    ///
    /// # Errors
    /// The request's error.
    pub async fn add_items(
        &self,
        list_id: &str,
        items: &[(Item, Arc<str>)],
    ) -> Result<String, Error> {
        let body: Vec<NewItem<'_>> = items
            .iter()
            .map(|(item, comment)| NewItem { ip: *item, comment })
            .collect();
        self.submit_items("adding list items", reqwest::Method::POST, list_id, &body)
            .await
    }

    /// Starts a bulk delete by item id; returns the operation id.
    ///
    /// # Errors
    /// The request's error.
    pub async fn delete_items(&self, list_id: &str, ids: &[&str]) -> Result<String, Error> {
        let body = DeleteItems {
            items: ids.iter().map(|id| ItemId { id }).collect(),
        };
        self.submit_items(
            "deleting list items",
            reqwest::Method::DELETE,
            list_id,
            &body,
        )
        .await
    }

    /// Sends one bulk write of a list's items (any kind); returns its operation id.
    async fn submit_items<B: Serialize>(
        &self,
        what: &'static str,
        method: reqwest::Method,
        list_id: &str,
        body: &B,
    ) -> Result<String, Error> {
        let url = format!("{}/rules/lists/{list_id}/items", self.account_url);
        let (op, _) = self
            .call::<WireOperationId, _>(what, method, url, Some(body))
            .await?;
        Ok(op.operation_id)
    }

    /// Reads a bulk operation's status.
    ///
    /// # Errors
    /// The request's error; an unknown status is a [`Error::Decode`].
    pub async fn operation(&self, op_id: &str) -> Result<OpStatus, Error> {
        let url = format!("{}/rules/lists/bulk_operations/{op_id}", self.account_url);
        let (op, _) = self
            .call::<WireOperation, ()>("reading a bulk operation", reqwest::Method::GET, url, None)
            .await?;
        match op.status.as_str() {
            "pending" | "running" => Ok(OpStatus::Pending),
            "completed" => Ok(OpStatus::Completed),
            "failed" => Ok(OpStatus::Failed(
                op.error.unwrap_or_else(|| "no error message".into()),
            )),
            other => Err(Error::Decode {
                what: "reading a bulk operation",
                detail: format!("unknown status {other:?}"),
            }),
        }
    }

    /// Sends one request, unwraps the v4 envelope, and records the outcome.
    async fn call<T: DeserializeOwned, B: Serialize>(
        &self,
        what: &'static str,
        method: reqwest::Method,
        url: String,
        body: Option<&B>,
    ) -> Result<(T, Option<ResultInfo>), Error> {
        self.call_with(what, method, url, body, |answer| answer.open::<T>())
            .await
    }

    /// [`call`](Self::call), with the answer's body decoded by `decode` while it is in
    /// hand, so that what it decodes may borrow from it.
    async fn call_with<B: Serialize, R>(
        &self,
        what: &'static str,
        method: reqwest::Method,
        url: String,
        body: Option<&B>,
        decode: impl FnOnce(Answer<'_>) -> Result<R, Error>,
    ) -> Result<R, Error> {
        let result = self.call_once(what, method, url, body, decode).await;
        // Not sent: says nothing about Cloudflare.
        if matches!(result, Err(Error::Fenced { .. })) {
            return result;
        }
        let class = match &result {
            Ok(_) => "2xx",
            Err(Error::RateLimited { .. }) => "429",
            Err(Error::Api { status, .. }) if *status >= 500 => "5xx",
            Err(Error::Api { .. }) => "4xx",
            Err(_) => "error",
        };
        self.telemetry
            .metrics
            .cloudflare_request(endpoint_label(what), class);
        let mut health = self.telemetry.health();
        match &result {
            Ok(_) => health.cloudflare_succeeded(),
            // A missing operation or item is an answer, not a failing Cloudflare.
            Err(Error::Api { status: 404, .. }) => health.cloudflare_succeeded(),
            Err(err) => health.cloudflare_failed(err.to_string()),
        }
        result
    }

    async fn call_once<B: Serialize, R>(
        &self,
        what: &'static str,
        method: reqwest::Method,
        url: String,
        body: Option<&B>,
        decode: impl FnOnce(Answer<'_>) -> Result<R, Error>,
    ) -> Result<R, Error> {
        self.budget.acquire().await;
        // The fence is checked after the budget's wait, just before sending.
        let timeout = match &self.fence {
            Some(ha) if method != reqwest::Method::GET => {
                let window = ha
                    .write_window(tokio::time::Instant::now())
                    .ok_or(Error::Fenced { what })?;
                window.min(self.request_timeout)
            }
            _ => self.request_timeout,
        };
        let mut request = self
            .http
            .request(method, &url)
            .timeout(timeout)
            .bearer_auth(self.token.expose());
        if let Some(body) = body {
            request = request.json(body);
        }
        let transport = |err: &reqwest::Error| Error::Transport {
            what,
            detail: crate::net::describe(err, None),
        };
        let mut response = request.send().await.map_err(|err| transport(&err))?;
        let status = response.status().as_u16();
        self.budget.observe(status, response.headers());
        if (300..400).contains(&status) {
            return Err(Error::Redirect {
                what,
                status,
                location: crate::net::location(&response),
            });
        }
        let retry_after = crate::net::retry_after(response.headers()).map(|after| {
            if after.was_capped() {
                warn!(
                    asked_s = after.asked.as_secs(),
                    wait_s = after.wait.as_secs(),
                    "Cloudflare's Retry-After is longer than the bouncer ever waits; waiting the capped time"
                );
            }
            after.wait
        });
        // Success answers are pages of at most 500 items; error answers are short.
        let cap = if (200..300).contains(&status) {
            MAX_BODY
        } else {
            crate::net::MAX_ERROR_BODY
        };
        let bytes = match crate::net::read_capped(&mut response, cap, READ_IDLE).await {
            Ok(bytes) => bytes,
            Err(ReadError::Transport(err)) => return Err(transport(&err)),
            Err(ReadError::Stalled(idle)) => {
                return Err(Error::Transport {
                    what,
                    detail: format!(
                        "the answer stopped for {}s part-way (timed out)",
                        idle.as_secs()
                    ),
                })
            }
            Err(ReadError::TooLarge { cap, .. }) if (200..300).contains(&status) => {
                return Err(Error::Decode {
                    what,
                    detail: format!("the answer is larger than {} MiB", cap >> 20),
                })
            }
            // The start of a long error answer is enough to report it.
            Err(ReadError::TooLarge { partial, .. }) => partial,
        };
        decode(Answer {
            what,
            status,
            retry_after,
            bytes: &bytes,
        })
    }
}

/// An answer read in full, not yet decoded.
struct Answer<'a> {
    what: &'static str,
    status: u16,
    retry_after: Option<Duration>,
    bytes: &'a [u8],
}

impl<'a> Answer<'a> {
    /// The envelope's result (which may borrow from the body) and its `result_info`; or
    /// the error the answer carries.
    fn open<T: Deserialize<'a>>(self) -> Result<(T, Option<ResultInfo>), Error> {
        let Answer {
            what,
            status,
            retry_after,
            bytes,
        } = self;
        let envelope: Result<Envelope<T>, _> = from_json(bytes);
        if status == 429 {
            let errors = envelope.map(|e| e.errors).unwrap_or_default();
            return Err(Error::RateLimited {
                retry_after,
                errors,
            });
        }
        let envelope = match envelope {
            Ok(envelope) => envelope,
            Err(err) if (200..300).contains(&status) => {
                return Err(Error::Decode {
                    what,
                    detail: err.to_string(),
                })
            }
            Err(_) => {
                let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
                let errors = vec![ApiMessage {
                    code: 0,
                    message: text,
                }];
                return Err(Error::Api {
                    what,
                    status,
                    errors,
                });
            }
        };
        // The list write throttle (10040) has been seen inside a 200 body
        // (docs/cloudflare-lists.md §3).
        if envelope.errors.iter().any(|e| e.code == 10040) {
            return Err(Error::RateLimited {
                retry_after,
                errors: envelope.errors,
            });
        }
        if !(200..300).contains(&status) || !envelope.success {
            return Err(Error::Api {
                what,
                status,
                errors: envelope.errors,
            });
        }
        let result = envelope.result.ok_or_else(|| Error::Decode {
            what,
            detail: "success without a result".into(),
        })?;
        Ok((result, envelope.result_info))
    }
}

/// JSON from a body: checked as UTF-8 once, whole, rather than string by string (a
/// body that is not UTF-8 is parsed as bytes, for serde_json's own error).
fn from_json<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, serde_json::Error> {
    match std::str::from_utf8(bytes) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(bytes),
    }
}

/// Hands a page's items (those with an `ip`) to `each`; the cursor of the next page, if
/// any.
fn page_of(
    items: &[WireItem<'_>],
    info: Option<ResultInfo>,
    mut each: impl FnMut(ListedItemRef<'_>),
) -> Option<String> {
    for item in items {
        if let Some(ip) = &item.ip {
            each(ListedItemRef {
                id: &item.id.0,
                ip: &ip.0,
                comment: item.comment.as_ref().map(|c| &*c.0),
            });
        }
    }
    info.and_then(|info| info.cursors)
        .and_then(|cursors| cursors.after)
        .filter(|after| !after.is_empty() && !items.is_empty())
}

/// Decodes a successful answer to a page read as [`CloudflareClient::items_page`] does
/// (for benchmarks and tools).
///
/// # Errors
/// [`Error::Decode`] for an answer that is not a page of items.
pub fn decode_items_page(
    body: &[u8],
    each: impl FnMut(ListedItemRef<'_>),
) -> Result<Option<String>, Error> {
    let what = "reading list items";
    let envelope: Envelope<Vec<WireItem<'_>>> = from_json(body).map_err(|err| Error::Decode {
        what,
        detail: err.to_string(),
    })?;
    let items = envelope.result.ok_or_else(|| Error::Decode {
        what,
        detail: "success without a result".into(),
    })?;
    Ok(page_of(&items, envelope.result_info, each))
}

impl From<WireList> for ListInfo {
    fn from(list: WireList) -> ListInfo {
        ListInfo {
            id: list.id,
            name: list.name,
            kind: list.kind,
            num_items: list.num_items.max(0.0) as u64,
        }
    }
}

/// Picks the configured list among the account's lists, and checks it is an IP list.
///
/// # Errors
/// [`Error::ListNotFound`] or [`Error::WrongKind`].
pub fn choose_list(lists: &[ListInfo], list: &ListRef) -> Result<ListInfo, Error> {
    choose_list_of_kind(lists, list, ListKind::Ip)
}

/// Picks a list among the account's lists, and checks it is of kind `wanted`.
///
/// # Errors
/// [`Error::ListNotFound`] (an IP list) or [`Error::AsnListNotFound`], or
/// [`Error::WrongKind`].
pub fn choose_list_of_kind(
    lists: &[ListInfo],
    list: &ListRef,
    wanted: ListKind,
) -> Result<ListInfo, Error> {
    let found = lists.iter().find(|l| match list {
        ListRef::Id(id) => &l.id == id,
        ListRef::Name(name) => &l.name == name,
    });
    let info = match found {
        Some(info) => info.clone(),
        None => {
            let (ListRef::Id(wanted_ref) | ListRef::Name(wanted_ref)) = list;
            return Err(match wanted {
                ListKind::Ip => Error::ListNotFound(wanted_ref.clone()),
                ListKind::Asn => Error::AsnListNotFound(wanted_ref.clone()),
            });
        }
    };
    if info.kind != wanted.as_str() {
        return Err(Error::WrongKind {
            name: info.name,
            kind: info.kind,
            wanted,
        });
    }
    Ok(info)
}

/// The metric label of a call, from a fixed set.
fn endpoint_label(what: &str) -> &'static str {
    match what {
        "listing the account's lists" => "lists",
        "reading the list" => "list",
        "creating the list" => "list_create",
        "reading list items" => "items_read",
        "adding list items" => "items_add",
        "deleting list items" => "items_delete",
        "reading a bulk operation" => "operation",
        w if w.contains("rule") => "rulesets",
        _ => "other",
    }
}

/// Percent-encodes a query value (cursors are opaque; searches contain `/` and `:`).
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_decodes_borrowed_and_escaped_strings_alike() {
        let body = br#"{"success":true,"errors":[],"result":[
            {"id":"2c0fc9fa937b11eaa1b71c4d701ab86e","ip":"10.0.0.1","comment":"plain"},
            {"id":"a\u0062c","ip":"10.0.0.\u0032","comment":"caf\u00e9 \"q\""},
            {"id":"no-ip","comment":"an ASN list's item"},
            {"id":"d","ip":"10.0.0.3"}
        ],"result_info":{"cursors":{"after":"next"}}}"#;
        let mut seen = Vec::new();
        let next = decode_items_page(body, |item| seen.push(item.to_listed())).unwrap();
        assert_eq!(next.as_deref(), Some("next"));
        let listed = |id: &str, ip: &str, comment: Option<&str>| ListedItem {
            id: id.into(),
            ip: ip.into(),
            comment: comment.map(Into::into),
        };
        assert_eq!(
            seen,
            [
                listed(
                    "2c0fc9fa937b11eaa1b71c4d701ab86e",
                    "10.0.0.1",
                    Some("plain")
                ),
                listed("abc", "10.0.0.2", Some("café \"q\"")),
                listed("d", "10.0.0.3", None),
            ]
        );
        // A string where a string belongs, and nothing else.
        let wrong = br#"{"success":true,"result":[{"id":7,"ip":"10.0.0.1"}]}"#;
        assert!(decode_items_page(wrong, |_| {}).is_err());
        // Not UTF-8: an error, as before the body was checked whole.
        let bytes = b"{\"success\":true,\"result\":[{\"id\":\"\xff\",\"ip\":\"10.0.0.1\"}]}";
        let err = decode_items_page(bytes, |_| {}).unwrap_err();
        assert!(err.to_string().contains("reading list items"), "{err}");
        // No cursor after an empty page.
        let empty = br#"{"success":true,"result":[],"result_info":{"cursors":{"after":"x"}}}"#;
        assert_eq!(decode_items_page(empty, |_| {}).unwrap(), None);
    }

    #[test]
    fn a_repeating_or_endless_cursor_fails_the_read() {
        let mut guard = PageGuard::new(1000);
        guard.next_page(Some("a")).expect("first page");
        guard.next_page(Some("b")).expect("second page");
        let err = guard.next_page(Some("a")).expect_err("repeated");
        assert!(
            err.to_string().contains("cursor repeated after 3 pages"),
            "{err}"
        );
        let mut guard = PageGuard::new(1000);
        let endless = (0..100).try_for_each(|i| guard.next_page(Some(&i.to_string())));
        let err = endless.expect_err("endless");
        assert!(err.to_string().contains("14 pages and more"), "{err}");
        let mut guard = PageGuard::new(1000);
        for i in 0..5 {
            guard
                .next_page(Some(&i.to_string()))
                .expect("within the list's size");
        }
        guard.next_page(None).expect("the last page");
    }

    #[test]
    fn a_read_knows_the_pages_it_has_left() {
        let mut guard = PageGuard::new(1001);
        assert_eq!(guard.left(), 3, "500 + 500 + 1");
        guard.next_page(Some("a")).expect("first page");
        assert_eq!(guard.left(), 2);
        guard.next_page(Some("b")).expect("second page");
        guard.next_page(Some("c")).expect("items added meanwhile");
        assert_eq!(guard.left(), 1, "at least the next page");
        assert_eq!(PageGuard::new(0).left(), 1);
    }

    #[test]
    fn encodes_query_values() {
        assert_eq!(encode("2001:db8::/64"), "2001%3Adb8%3A%3A%2F64");
        assert_eq!(encode("abc-_.~"), "abc-_.~");
        assert_eq!(encode("a+b=c&d"), "a%2Bb%3Dc%26d");
    }

    #[test]
    fn errors_name_the_fix() {
        let err = Error::Api {
            what: "adding list items",
            status: 403,
            errors: vec![ApiMessage {
                code: 10000,
                message: "Authentication error".into(),
            }],
        };
        let text = err.to_string();
        assert!(text.contains("Authentication error (10000)"), "{text}");
        assert!(text.contains("Account Filter Lists > Edit"), "{text}");
        assert!(!err.is_retryable());
        let limited = Error::RateLimited {
            retry_after: Some(Duration::from_secs(7)),
            errors: vec![],
        };
        assert!(limited.is_retryable());
        assert_eq!(limited.retry_after(), Some(Duration::from_secs(7)));
        assert!(limited.to_string().contains("retry after 7s"));
    }
}
