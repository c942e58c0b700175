//! The CrowdSec Local API client: `GET /v1/decisions/stream` and nothing else.
//!
//! Wire types stay in this module. The daemon parses a response while it arrives
//! ([`LapiClient::stream_into`]): chunks go to a parser on a blocking thread, which hands
//! each decision to a [`StreamSink`], so a million-decision pull is never held in memory
//! as text, nor as a list of parsed decisions. [`StreamBody`] parses a body already in
//! memory, with borrowed strings (tools, benchmarks, tests).

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::time::Duration;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::config::{CrowdsecConfig, Secret};
use crate::item::Item;
use crate::net::ReadError;
use crate::state::DecisionRef;

pub use crate::net::USER_AGENT;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "LAPI refused the bouncer key (403 access forbidden): check crowdsec.api_key, or register \
         the bouncer with `cscli bouncers add crowdsec-cloudflare-iplist-bouncer` and use the key it prints"
    )]
    Forbidden,
    #[error("LAPI answered HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error(
        "LAPI at {url} answered HTTP {status} redirecting to {location}: the bouncer never follows \
         redirects (the key would go along); set crowdsec.api_url to LAPI's own address"
    )]
    Redirect {
        url: String,
        status: u16,
        location: String,
    },
    #[error("cannot reach LAPI at {url}: {detail}")]
    Transport { url: String, detail: String },
    #[error(
        "LAPI at {url} sent nothing for {}s in the middle of its answer (timed out; \
         LAPI or the network in between stalls)", .idle.as_secs()
    )]
    Stalled { url: String, idle: Duration },
    #[error("LAPI sent a response that is not a decision stream: {0}")]
    Decode(#[source] serde_json::Error),
    #[error("crowdsec TLS settings: {0}")]
    Tls(String),
}

/// Whether a pull is a full snapshot or a delta since the last pull.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pull {
    /// `startup=true`: every active decision (docs/lapi.md §4.2).
    Full,
    /// Changes since this key's `last_pull` (docs/lapi.md §4.3).
    Delta,
}

pub struct LapiClient {
    http: reqwest::Client,
    stream_url: String,
    api_key: Option<Secret>,
    filters: Vec<(&'static str, String)>,
    /// Longest wait for the next chunk of an answer.
    read_idle: Duration,
    /// The stream's filters, for reads whose endpoint does not apply them.
    filter: std::sync::Arc<Filter>,
}

/// The stream's filters (docs/lapi.md §4.5), applied to `GET /v1/decisions`'s answer.
#[derive(Debug, Clone)]
struct Filter {
    /// Lowercase; `ip`, `range`, `country`, `as` match case-insensitively, others exactly.
    scopes: Vec<String>,
    origins: Vec<String>,
    containing: Vec<String>,
    not_containing: Vec<String>,
}

impl Filter {
    fn matches(&self, d: &DecisionRef<'_>) -> bool {
        let known = ["ip", "range", "country", "as"];
        let scope_ok = self.scopes.iter().any(|s| {
            if known.contains(&s.to_ascii_lowercase().as_str()) {
                s.eq_ignore_ascii_case(d.scope)
            } else {
                s == d.scope
            }
        });
        let scenario = d.scenario.to_lowercase();
        scope_ok
            && (self.origins.is_empty() || self.origins.iter().any(|o| o == d.origin))
            && (self.containing.is_empty() || self.containing.iter().any(|c| scenario.contains(c)))
            && !self.not_containing.iter().any(|c| scenario.contains(c))
    }
}

/// A sink that sees only the decisions the stream would have sent.
struct Filtered<S> {
    sink: S,
    filter: std::sync::Arc<Filter>,
}

impl<S: StreamSink> StreamSink for Filtered<S> {
    fn new_decision(&mut self, decision: DecisionRef<'_>) {
        if self.filter.matches(&decision) {
            self.sink.new_decision(decision);
        }
    }

    fn deleted_decision(&mut self, decision: DecisionRef<'_>) {
        if self.filter.matches(&decision) {
            self.sink.deleted_decision(decision);
        }
    }
}

/// Longest silence in the middle of an answer before the pull is given up (LAPI streams
/// a big pull in pages: a healthy one never pauses this long).
pub const READ_IDLE: Duration = Duration::from_secs(30);
/// Longest string in a decision stream that is kept whole; the rest of a longer one is
/// dropped while parsing (labels are cut far shorter later; values are never this long).
pub const MAX_STREAM_STRING: usize = 4096;

/// Receives decisions as a stream response is parsed.
pub trait StreamSink {
    fn new_decision(&mut self, decision: DecisionRef<'_>);
    fn deleted_decision(&mut self, decision: DecisionRef<'_>);
}

/// A stream response body; parse it with [`StreamBody::parse`].
pub struct StreamBody(bytes::Bytes);

/// A parsed stream response, borrowing from its [`StreamBody`].
pub struct Stream<'a> {
    wire: WireStream<'a>,
}

#[derive(Deserialize)]
struct WireStream<'a> {
    #[serde(borrow, default)]
    new: Option<Vec<WireDecision<'a>>>,
    #[serde(borrow, default)]
    deleted: Option<Vec<WireDecision<'a>>>,
}

#[derive(Deserialize)]
struct WireDecision<'a> {
    #[serde(borrow, default)]
    scope: Cow<'a, str>,
    #[serde(borrow, default)]
    value: Cow<'a, str>,
    #[serde(borrow, default, rename = "type")]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    origin: Cow<'a, str>,
    #[serde(borrow, default)]
    scenario: Cow<'a, str>,
    #[serde(borrow, default)]
    duration: Cow<'a, str>,
}

impl WireDecision<'_> {
    fn as_ref(&self) -> DecisionRef<'_> {
        DecisionRef {
            scope: &self.scope,
            value: &self.value,
            kind: &self.kind,
            origin: &self.origin,
            scenario: &self.scenario,
            duration: &self.duration,
        }
    }
}

impl LapiClient {
    /// # Errors
    /// [`Error::Tls`] when a certificate or key file cannot be read or used.
    pub fn new(config: &CrowdsecConfig) -> Result<LapiClient, Error> {
        let mut builder = crate::net::client_builder(config.request_timeout)
            .tls_danger_accept_invalid_certs(config.insecure_skip_verify);
        if let Some(ca) = &config.ca_cert_path {
            let pem = read(ca)?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|err| {
                Error::Tls(format!("crowdsec.ca_cert_path {}: {err}", ca.display()))
            })?;
            if certs.is_empty() {
                return Err(Error::Tls(format!(
                    "crowdsec.ca_cert_path {} holds no PEM certificate (-----BEGIN CERTIFICATE-----): \
                     point it at the CA that signed LAPI's certificate",
                    ca.display()
                )));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let (Some(cert), Some(key)) = (&config.cert_path, &config.key_path) {
            let mut pem = read(cert)?;
            pem.extend_from_slice(b"\n");
            pem.extend_from_slice(&read(key)?);
            let identity = reqwest::Identity::from_pem(&pem)
                .map_err(|err| Error::Tls(format!("crowdsec.cert_path/key_path: {err}")))?;
            builder = builder.identity(identity);
        }
        let http = builder
            .build()
            .map_err(|err| Error::Tls(crate::net::describe(&err, Some("crowdsec"))))?;
        let join = |values: &[String]| values.join(",");
        let mut filters = vec![("scopes", join(&config.scopes))];
        for (name, values) in [
            ("origins", &config.origins),
            ("scenarios_containing", &config.scenarios_containing),
            ("scenarios_not_containing", &config.scenarios_not_containing),
        ] {
            if !values.is_empty() {
                filters.push((name, join(values)));
            }
        }
        Ok(LapiClient {
            http,
            stream_url: format!("{}v1/decisions/stream", config.api_url),
            api_key: config.api_key.clone(),
            filters,
            read_idle: config.request_timeout.min(READ_IDLE),
            filter: std::sync::Arc::new(Filter {
                scopes: config.scopes.clone(),
                origins: config.origins.clone(),
                containing: lower(&config.scenarios_containing),
                not_containing: lower(&config.scenarios_not_containing),
            }),
        })
    }

    /// Pulls the decision stream and hands each decision to `sink` while the response
    /// arrives. Returns the sink and the body's size. On any error the sink is dropped:
    /// a failed or truncated pull gives nothing to apply.
    ///
    /// # Errors
    /// Transport failures, non-200 answers ([`Error::Forbidden`] for a bad key,
    /// [`Error::Redirect`] for a `3xx`), [`Error::Stalled`] when the answer stops
    /// arriving, and [`Error::Decode`] for a body that is not a complete decision stream.
    pub async fn stream_into<S: StreamSink + Send + 'static>(
        &self,
        pull: Pull,
        sink: S,
    ) -> Result<(S, u64), Error> {
        let mut request = self.http.get(&self.stream_url).query(&self.filters);
        if pull == Pull::Full {
            // Only the exact string `true` counts (docs/lapi.md §4.2).
            request = request.query(&[("startup", "true")]);
        }
        self.read_into(request, &self.stream_url, BodyShape::Stream, sink)
            .await
    }

    /// Reads LAPI's active decisions through `GET /v1/decisions`, handing each to
    /// `sink` as new. Unlike the stream, LAPI runs the whole query before it answers
    /// (so a database error is a 500, never a short list). It selects nothing by the
    /// stream's `last_pull`, but moves one older than a minute (docs/lapi.md §5, §9.3).
    /// `item`: only decisions on it
    /// (`ip=` for an address, `range=…&contains=false` for a network); `None`: all.
    ///
    /// # Errors
    /// As [`LapiClient::stream_into`].
    pub async fn active_into<S: StreamSink + Send + 'static>(
        &self,
        item: Option<&Item>,
        sink: S,
    ) -> Result<(S, u64), Error> {
        let url = self.stream_url.replace("/decisions/stream", "/decisions");
        // This endpoint knows none of the stream's filters (all scopes, no dedup): the
        // same filters are applied here, as the stream applies them.
        let mut request = self.http.get(&url);
        if let Some(item) = item {
            request = match (item.net(), item.asn()) {
                (Some(net), _) if net.prefix_len() == net.max_prefix_len() => {
                    request.query(&[("ip", net.addr().to_string())])
                }
                (Some(net), _) => {
                    request.query(&[("range", net.to_string()), ("contains", "false".into())])
                }
                // `scope` and `value` filter exactly (docs/lapi.md §5).
                (None, asn) => request.query(&[
                    ("scope", "AS".to_string()),
                    ("value", asn.unwrap_or_default().to_string()),
                ]),
            };
        }
        let sink = Filtered {
            sink,
            filter: self.filter.clone(),
        };
        let (filtered, size) = self.read_into(request, &url, BodyShape::List, sink).await?;
        Ok((filtered.sink, size))
    }

    /// Sends `request` and parses its answer into `sink` while it arrives.
    async fn read_into<S: StreamSink + Send + 'static>(
        &self,
        request: reqwest::RequestBuilder,
        url: &str,
        shape: BodyShape,
        sink: S,
    ) -> Result<(S, u64), Error> {
        let mut response = self.send(request, url).await?;
        // A short answer (a poll's deltas, mostly) is read whole and parsed here: handing
        // it to a parser thread would cost more than parsing it.
        if response
            .content_length()
            .is_some_and(|length| length <= INLINE_BODY as u64)
        {
            let body =
                match crate::net::read_capped(&mut response, INLINE_BODY, self.read_idle).await {
                    Ok(body) => body,
                    Err(ReadError::Transport(err)) => return Err(self.transport(url, &err)),
                    Err(ReadError::Stalled(idle)) => {
                        return Err(Error::Stalled {
                            url: url.to_owned(),
                            idle,
                        })
                    }
                    Err(ReadError::TooLarge { cap, .. }) => {
                        return Err(Error::Decode(serde::de::Error::custom(format!(
                            "the answer is longer than its Content-Length ({cap} bytes)"
                        ))))
                    }
                };
            let mut sink = sink;
            Framer::new(ReadFeed(body.as_slice())).run(shape, &mut sink)?;
            return Ok((sink, body.len() as u64));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let parser = tokio::task::spawn_blocking(move || {
            let mut sink = sink;
            Framer::new(ChunkFeed(rx))
                .run(shape, &mut sink)
                .map(|()| sink)
        });
        let mut size = 0u64;
        let mut failed = None;
        loop {
            match tokio::time::timeout(self.read_idle, response.chunk()).await {
                Ok(Ok(Some(chunk))) => {
                    size += chunk.len() as u64;
                    if tx.send(Ok(chunk)).await.is_err() {
                        break; // The parser stopped on an error; it reports it.
                    }
                }
                Ok(Ok(None)) => break,
                Ok(Err(err)) => {
                    let _ = tx.send(Err(io::Error::other("the response was cut"))).await;
                    failed = Some(self.transport(url, &err));
                    break;
                }
                Err(_) => {
                    let _ = tx.send(Err(io::Error::other("the response stalled"))).await;
                    failed = Some(Error::Stalled {
                        url: url.to_owned(),
                        idle: self.read_idle,
                    });
                    break;
                }
            }
        }
        drop(tx);
        let parsed = parser.await.map_err(|err| {
            Error::Decode(serde::de::Error::custom(format!("parser task: {err}")))
        })?;
        if let Some(err) = failed {
            return Err(err);
        }
        Ok((parsed?, size))
    }

    /// Sends a request with the key; a 2xx answer is returned unread, anything else is
    /// an error (a 404 too: callers that expect one look at [`Error::Status`]).
    async fn send(
        &self,
        mut request: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<reqwest::Response, Error> {
        if let Some(key) = &self.api_key {
            request = request.header("X-Api-Key", key.expose());
        }
        let mut response = request
            .send()
            .await
            .map_err(|err| self.transport(url, &err))?;
        match response.status().as_u16() {
            200..=299 => Ok(response),
            403 => Err(Error::Forbidden),
            status @ 300..=399 => Err(Error::Redirect {
                url: url.to_owned(),
                status,
                location: crate::net::location(&response),
            }),
            status => Err(Error::Status {
                status,
                body: crate::net::error_text(&mut response, self.read_idle).await,
            }),
        }
    }

    fn transport(&self, url: &str, err: &reqwest::Error) -> Error {
        Error::Transport {
            url: url.to_owned(),
            detail: crate::net::describe(err, Some("crowdsec")),
        }
    }

    /// Pushes usage metrics (`POST /v1/usage-metrics`, CrowdSec 1.6.3 and later).
    /// `Ok(false)`: this LAPI does not know the endpoint (404).
    ///
    /// # Errors
    /// As [`LapiClient::stream_into`].
    pub async fn push_usage_metrics(&self, payload: &serde_json::Value) -> Result<bool, Error> {
        let url = self
            .stream_url
            .replace("/decisions/stream", "/usage-metrics");
        match self.send(self.http.post(&url).json(payload), &url).await {
            Ok(_) => Ok(true),
            Err(Error::Status { status: 404, .. }) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Whether this client authenticates with a client certificate (no key).
    pub fn uses_certificate(&self) -> bool {
        self.api_key.is_none()
    }

    /// Checks that LAPI accepts the key, without moving the stream's `last_pull`
    /// (see the `check` module).
    ///
    /// # Errors
    /// As [`LapiClient::stream_into`].
    pub async fn probe(&self) -> Result<(), Error> {
        let url = self.stream_url.replace("/decisions/stream", "/decisions");
        let request = self.http.head(&url).query(&[("ip", "127.0.0.1")]);
        self.send(request, &url).await.map(|_| ())
    }
}

/// Cuts every JSON string of a stream to at most `cap` bytes while it passes, dropping
/// the rest up to the closing quote. Only string contents are touched, whole characters
/// and whole escapes at a time (a surrogate pair stays a pair), so valid JSON stays
/// valid and nothing else changes.
struct StringCap<R> {
    inner: R,
    cap: usize,
    buf: Vec<u8>,
    in_string: bool,
    /// Bytes of the current string kept so far.
    len: usize,
    /// The rest of the current string is dropped.
    dropping: bool,
    /// Bytes of the current escape still to come (`None`: not in an escape).
    escape: Option<Escape>,
    /// The last kept escape was a high surrogate: its pair must be kept too.
    force_escape: bool,
}

#[derive(Clone, Copy)]
struct Escape {
    /// Bytes seen after the backslash.
    seen: u8,
    keep: bool,
    unicode: bool,
    high_surrogate: bool,
}

impl<R: io::Read> StringCap<R> {
    fn new(inner: R, cap: usize) -> StringCap<R> {
        StringCap {
            inner,
            cap,
            buf: vec![0; 16 * 1024],
            in_string: false,
            len: 0,
            dropping: false,
            escape: None,
            force_escape: false,
        }
    }

    /// How many bytes at the start of `bytes` [`StringCap::keep`] would pass on without
    /// a change but to `len`; counts them kept.
    fn plain_run(&mut self, bytes: &[u8]) -> usize {
        if self.escape.is_some() || self.dropping {
            return 0;
        }
        if !self.in_string {
            return memchr::memchr(b'"', bytes).unwrap_or(bytes.len());
        }
        let run = memchr::memchr2(b'"', b'\\', bytes).unwrap_or(bytes.len());
        // Each byte of the run adds one to `len`; every check on the way passes while
        // the run's end still leaves room for a 4-byte character.
        let run = run.min(self.cap.saturating_sub(self.len + 4));
        self.len += run;
        run
    }

    /// Whether to pass `byte` on.
    fn keep(&mut self, byte: u8) -> bool {
        if !self.in_string {
            if byte == b'"' {
                (self.in_string, self.len, self.dropping) = (true, 0, false);
                self.force_escape = false;
            }
            return true;
        }
        if let Some(mut escape) = self.escape {
            escape.seen += 1;
            match escape.seen {
                1 => escape.unicode = byte == b'u',
                // `\uD800`–`\uDBFF` start a surrogate pair.
                2 => escape.high_surrogate = byte.eq_ignore_ascii_case(&b'd'),
                3 => {
                    escape.high_surrogate &= matches!(byte, b'8'..=b'9' | b'a'..=b'b' | b'A'..=b'B')
                }
                _ => {}
            }
            let done = !escape.unicode || escape.seen == 5;
            self.escape = (!done).then_some(escape);
            if done {
                self.force_escape = escape.keep && escape.unicode && escape.high_surrogate;
            }
            return escape.keep;
        }
        match byte {
            b'"' => {
                self.in_string = false;
                true
            }
            b'\\' => {
                let keep = self.force_escape || (!self.dropping && self.len + 12 <= self.cap);
                self.force_escape = false;
                self.dropping |= !keep;
                if keep {
                    self.len += 6;
                }
                self.escape = Some(Escape {
                    seen: 0,
                    keep,
                    unicode: false,
                    high_surrogate: false,
                });
                keep
            }
            _ if self.dropping => false,
            // A character's continuation bytes follow its first byte.
            _ if byte & 0xC0 == 0x80 => {
                self.len += 1;
                true
            }
            _ if self.len + 4 <= self.cap => {
                self.len += 1;
                true
            }
            _ => {
                self.dropping = true;
                false
            }
        }
    }
}

impl<R: io::Read> io::Read for StringCap<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let mut buf = std::mem::take(&mut self.buf);
        let read = self.read_via(&mut buf, out);
        self.buf = buf;
        read
    }
}

impl<R: io::Read> StringCap<R> {
    /// [`io::Read::read`] through `buf`, the reads' buffer (taken out of `self`).
    fn read_via(&mut self, buf: &mut [u8], out: &mut [u8]) -> io::Result<usize> {
        loop {
            let want = out.len().min(buf.len());
            if want == 0 {
                return Ok(0);
            }
            let n = self.inner.read(&mut buf[..want])?;
            if n == 0 {
                return Ok(0);
            }
            let mut written = 0;
            let mut i = 0;
            while i < n {
                // Runs the state machine would pass untouched are copied whole: outside
                // strings up to the next quote, inside one up to the next quote or
                // backslash while the run still fits the cap.
                let run = self.plain_run(&buf[i..n]);
                if run > 0 {
                    out[written..written + run].copy_from_slice(&buf[i..i + run]);
                    (written, i) = (written + run, i + run);
                    continue;
                }
                let byte = buf[i];
                if self.keep(byte) {
                    out[written] = byte;
                    written += 1;
                }
                i += 1;
            }
            if written > 0 {
                return Ok(written);
            }
        }
    }
}

/// Parses a decision stream from a reader, handing each decision to `sink` (as
/// [`LapiClient::stream_into`] parses an answer: strings cut to [`MAX_STREAM_STRING`]).
///
/// # Errors
/// [`Error::Decode`] when the input is not a complete decision stream; `sink` may then
/// have seen part of it.
pub fn parse_reader<R: io::Read, S: StreamSink>(reader: R, sink: &mut S) -> Result<(), Error> {
    Framer::new(ReadFeed(reader)).run(BodyShape::Stream, sink)
}

/// Parses a decision stream held in memory, with borrowed strings where it can.
///
/// # Errors
/// As [`parse_reader`].
pub fn parse_slice<S: StreamSink>(body: &[u8], sink: &mut S) -> Result<(), Error> {
    parse(serde_json::Deserializer::from_slice(body), sink)
}

/// Parses `GET /v1/decisions`'s answer (a list of decisions, or `null`), handing each
/// to `sink` as new.
///
/// # Errors
/// As [`parse_reader`].
pub fn parse_list<R: io::Read, S: StreamSink>(reader: R, sink: &mut S) -> Result<(), Error> {
    Framer::new(ReadFeed(reader)).run(BodyShape::List, sink)
}

/// What an answer holds: a stream object, or a plain list of decisions.
#[derive(Clone, Copy)]
enum BodyShape {
    Stream,
    List,
}

fn parse<'de, R: serde_json::de::Read<'de>, S: StreamSink>(
    mut deserializer: serde_json::Deserializer<R>,
    sink: &mut S,
) -> Result<(), Error> {
    Body { sink }
        .deserialize(&mut deserializer)
        .map_err(Error::Decode)?;
    deserializer.end().map_err(Error::Decode)
}

/// The top-level object: `new` and `deleted` go to the sink, anything else is skipped.
struct Body<'s, S> {
    sink: &'s mut S,
}

impl<'de, S: StreamSink> DeserializeSeed<'de> for Body<'_, S> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de, S: StreamSink> Visitor<'de> for Body<'_, S> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a decision stream object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            match &*key {
                "new" => map.next_value_seed(Decisions {
                    sink: &mut *self.sink,
                    deleted: false,
                })?,
                "deleted" => map.next_value_seed(Decisions {
                    sink: &mut *self.sink,
                    deleted: true,
                })?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// A `new` or `deleted` list: `null` or an array of decisions.
struct Decisions<'s, S> {
    sink: &'s mut S,
    deleted: bool,
}

impl<'de, S: StreamSink> DeserializeSeed<'de> for Decisions<'_, S> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_option(self)
    }
}

impl<'de, S: StreamSink> Visitor<'de> for Decisions<'_, S> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("null or a list of decisions")
    }

    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(wire) = seq.next_element::<WireDecision<'de>>()? {
            if self.deleted {
                self.sink.deleted_decision(wire.as_ref());
            } else {
                self.sink.new_decision(wire.as_ref());
            }
        }
        Ok(())
    }
}

/// Where the bytes of an answer come from, chunk by chunk.
trait Feed {
    /// Appends the next chunk to `buf`; false at the end of the answer.
    fn fill(&mut self, buf: &mut Vec<u8>) -> io::Result<bool>;
}

/// The chunks of a response, sent by the task that reads it.
struct ChunkFeed(tokio::sync::mpsc::Receiver<io::Result<bytes::Bytes>>);

impl Feed for ChunkFeed {
    fn fill(&mut self, buf: &mut Vec<u8>) -> io::Result<bool> {
        loop {
            match self.0.blocking_recv() {
                Some(Ok(chunk)) if chunk.is_empty() => {}
                Some(Ok(chunk)) => {
                    buf.extend_from_slice(&chunk);
                    return Ok(true);
                }
                Some(Err(err)) => return Err(err),
                None => return Ok(false),
            }
        }
    }
}

/// Any reader, 64 KiB at a time.
struct ReadFeed<R>(R);

impl<R: io::Read> Feed for ReadFeed<R> {
    fn fill(&mut self, buf: &mut Vec<u8>) -> io::Result<bool> {
        let start = buf.len();
        buf.resize(start + 64 * 1024, 0);
        let read = loop {
            match self.0.read(&mut buf[start..]) {
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                read => break read,
            }
        };
        buf.truncate(start + *read.as_ref().unwrap_or(&0));
        Ok(read? > 0)
    }
}

/// An answer whose `Content-Length` is at most this is read whole and parsed on the
/// task that reads it (see `LapiClient::read_into`).
const INLINE_BODY: usize = 64 * 1024;

/// A decision's raw JSON up to this size, with no string longer than
/// [`FAST_STRING`], is parsed in place; anything else goes through [`StringCap`].
const FAST_ELEMENT: usize = 64 * 1024;
/// The longest raw string [`StringCap`] would surely pass whole: it counts an escape as
/// 6 bytes (the longest raw form is 2 bytes a character, `\n`) and stops 12 bytes short.
const FAST_STRING: usize = (MAX_STREAM_STRING - 12) / 3;

/// The streaming parser of LAPI's answers. It follows the answer's outer structure (the
/// stream's object with `new` and `deleted`, or `GET /v1/decisions`'s list) itself, and
/// hands serde_json each decision's raw JSON as one slice, found by a scan that tracks
/// only strings and nesting: decisions are parsed with borrowed strings, at the speed of
/// an answer held in memory, while the answer is held only a chunk (and one decision)
/// at a time. A decision with a long string, or a huge one, is parsed byte by byte
/// through a [`StringCap`] instead, and an unknown key's value is skipped the same way,
/// so neither is ever held whole.
struct Framer<F> {
    feed: F,
    buf: Vec<u8>,
    /// Where the unparsed bytes of `buf` start.
    pos: usize,
    eof: bool,
}

/// A top-level key of the stream object.
enum Key {
    New,
    Deleted,
    Other,
}

/// How far a [`Scan`] got.
enum Scanned {
    /// The decision's raw JSON is this long.
    Complete(usize),
    /// It goes on past the bytes at hand.
    More,
    /// It is too long, or holds a long string: parse it with a cap.
    Slow,
}

/// Finds where a JSON object ends, across reads: nesting outside strings, and the end of
/// each string (escapes skipped).
#[derive(Default)]
struct Scan {
    /// Bytes scanned from the object's start.
    at: usize,
    depth: u32,
    in_string: bool,
    string_len: usize,
}

impl Scan {
    /// Scans on in `bytes`, the object from its first byte (a `{`).
    fn run(&mut self, bytes: &[u8]) -> Scanned {
        while self.at < bytes.len() {
            if self.at > FAST_ELEMENT {
                return Scanned::Slow;
            }
            if self.in_string {
                match memchr::memchr2(b'"', b'\\', &bytes[self.at..]) {
                    None => {
                        self.string_len += bytes.len() - self.at;
                        self.at = bytes.len();
                    }
                    Some(run) => {
                        self.string_len += run;
                        self.at += run;
                        if bytes[self.at] == b'"' {
                            self.at += 1;
                            self.in_string = false;
                        } else if self.at + 1 < bytes.len() {
                            self.at += 2;
                            self.string_len += 2;
                        } else {
                            // A backslash last: look at it again with what follows.
                            break;
                        }
                    }
                }
                if self.string_len > FAST_STRING {
                    return Scanned::Slow;
                }
                continue;
            }
            match bytes[self.at] {
                b'"' => (self.in_string, self.string_len) = (true, 0),
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 0 {
                        return Scanned::Complete(self.at + 1);
                    }
                }
                _ => {}
            }
            self.at += 1;
        }
        Scanned::More
    }
}

fn syntax(what: &str) -> Error {
    Error::Decode(serde::de::Error::custom(what))
}

/// Parses one decision's JSON. The slice is checked as UTF-8 once, whole, and parsed as
/// text; serde_json's slice reader would check every string on its own. Invalid UTF-8
/// goes to the slice reader, for its error.
fn from_utf8_slice<'a>(raw: &'a [u8]) -> Result<WireDecision<'a>, Error> {
    match std::str::from_utf8(raw) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(raw),
    }
    .map_err(Error::Decode)
}

fn truncated() -> Error {
    syntax("the answer ends part-way (EOF while parsing)")
}

impl<F: Feed> Framer<F> {
    fn new(feed: F) -> Framer<F> {
        Framer {
            feed,
            buf: Vec::with_capacity(64 * 1024),
            pos: 0,
            eof: false,
        }
    }

    /// Reads the next chunk, dropping the bytes parsed so far (`pos` becomes 0: offsets
    /// from `pos` stay valid); false at the end of the answer.
    fn more(&mut self) -> Result<bool, Error> {
        if self.eof {
            return Ok(false);
        }
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let more = (self.feed.fill(&mut self.buf))
            .map_err(|err| Error::Decode(serde_json::Error::io(err)))?;
        self.eof = !more;
        Ok(more)
    }

    /// The next byte after whitespace, not consumed; `None` at the end of the answer.
    fn peek(&mut self) -> Result<Option<u8>, Error> {
        loop {
            while let Some(&byte) = self.buf.get(self.pos) {
                if !matches!(byte, b' ' | b'\t' | b'\n' | b'\r') {
                    return Ok(Some(byte));
                }
                self.pos += 1;
            }
            if !self.more()? {
                return Ok(None);
            }
        }
    }

    /// At least `n` bytes from `pos`, unless the answer ends first.
    fn want(&mut self, n: usize) -> Result<bool, Error> {
        while self.buf.len() - self.pos < n {
            if !self.more()? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn run<S: StreamSink>(&mut self, shape: BodyShape, sink: &mut S) -> Result<(), Error> {
        match shape {
            BodyShape::Stream => self.object(sink)?,
            BodyShape::List => self.decisions(sink, false)?,
        }
        match self.peek()? {
            None => Ok(()),
            Some(_) => Err(syntax("trailing characters after the answer")),
        }
    }

    /// The stream's object: `new` and `deleted` to the sink, other keys skipped.
    fn object<S: StreamSink>(&mut self, sink: &mut S) -> Result<(), Error> {
        if self.peek()? != Some(b'{') {
            return Err(syntax("expected a decision stream object"));
        }
        self.pos += 1;
        if self.peek()? == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            let key = self.key()?;
            if self.peek()? != Some(b':') {
                return Err(syntax("expected `:` after a key"));
            }
            self.pos += 1;
            match key {
                Key::New => self.decisions(sink, false)?,
                Key::Deleted => self.decisions(sink, true)?,
                Key::Other => self.skip_value()?,
            }
            match self.peek()? {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(());
                }
                Some(_) => return Err(syntax("expected `,` or `}` in the stream object")),
                None => return Err(truncated()),
            }
        }
    }

    /// A key of the stream object. One longer than any key the bouncer reads is passed
    /// over without being kept.
    fn key(&mut self) -> Result<Key, Error> {
        const LONGEST: usize = 64;
        match self.peek()? {
            Some(b'"') => {}
            Some(_) => return Err(syntax("expected a key")),
            None => return Err(truncated()),
        }
        let mut off = 1;
        let mut long = false;
        loop {
            let bytes = &self.buf[self.pos + off..];
            match memchr::memchr2(b'"', b'\\', bytes) {
                Some(run) if bytes[run] == b'"' => {
                    off += run + 1;
                    break;
                }
                Some(run) if run + 1 < bytes.len() => {
                    off += run + 2;
                    continue;
                }
                Some(run) => off += run,
                None => off += bytes.len(),
            }
            if off > LONGEST {
                (self.pos, off, long) = (self.pos + off, 0, true);
            }
            if !self.more()? {
                return Err(truncated());
            }
        }
        let raw = &self.buf[self.pos..self.pos + off];
        self.pos += off;
        if long {
            return Ok(Key::Other);
        }
        let key: Cow<'_, str> = serde_json::from_slice(raw).map_err(Error::Decode)?;
        Ok(match &*key {
            "new" => Key::New,
            "deleted" => Key::Deleted,
            _ => Key::Other,
        })
    }

    /// `null` or a list of decisions, each handed to `sink`.
    fn decisions<S: StreamSink>(&mut self, sink: &mut S, deleted: bool) -> Result<(), Error> {
        match self.peek()? {
            Some(b'n') => {
                if !self.want(4)? {
                    return Err(truncated());
                }
                if &self.buf[self.pos..self.pos + 4] != b"null" {
                    return Err(syntax("expected null or a list of decisions"));
                }
                self.pos += 4;
                return Ok(());
            }
            Some(b'[') => self.pos += 1,
            Some(_) => return Err(syntax("expected null or a list of decisions")),
            None => return Err(truncated()),
        }
        if self.peek()? == Some(b']') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.decision(sink, deleted)?;
            match self.peek()? {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(());
                }
                Some(_) => return Err(syntax("expected `,` or `]` in a list of decisions")),
                None => return Err(truncated()),
            }
        }
    }

    /// One decision, handed to `sink`.
    fn decision<S: StreamSink>(&mut self, sink: &mut S, deleted: bool) -> Result<(), Error> {
        let deliver = |sink: &mut S, wire: &WireDecision<'_>| {
            if deleted {
                sink.deleted_decision(wire.as_ref());
            } else {
                sink.new_decision(wire.as_ref());
            }
        };
        match self.peek()? {
            Some(b'{') => {}
            Some(b'"' | b'[') => {
                let wire = self.capped::<WireDecision<'static>>()?;
                deliver(sink, &wire);
                return Ok(());
            }
            Some(_) => {
                let len = self.scalar()?;
                let raw = &self.buf[self.pos..self.pos + len];
                let wire: WireDecision<'_> = serde_json::from_slice(raw).map_err(Error::Decode)?;
                deliver(sink, &wire);
                self.pos += len;
                return Ok(());
            }
            None => return Err(truncated()),
        }
        let mut scan = Scan::default();
        loop {
            match scan.run(&self.buf[self.pos..]) {
                Scanned::Complete(len) => {
                    let raw = &self.buf[self.pos..self.pos + len];
                    let wire: WireDecision<'_> = from_utf8_slice(raw)?;
                    deliver(sink, &wire);
                    self.pos += len;
                    return Ok(());
                }
                Scanned::Slow => {
                    let wire = self.capped::<WireDecision<'static>>()?;
                    deliver(sink, &wire);
                    return Ok(());
                }
                Scanned::More => {
                    if !self.more()? {
                        return Err(truncated());
                    }
                }
            }
        }
    }

    /// The value of a key the bouncer does not read, passed over without being kept.
    fn skip_value(&mut self) -> Result<(), Error> {
        match self.peek()? {
            Some(b'{' | b'[' | b'"') => self.capped::<IgnoredAny>().map(|_| ()),
            Some(_) => {
                let len = self.scalar()?;
                let raw = &self.buf[self.pos..self.pos + len];
                serde_json::from_slice::<IgnoredAny>(raw).map_err(Error::Decode)?;
                self.pos += len;
                Ok(())
            }
            None => Err(truncated()),
        }
    }

    /// The length of the number, `true`, `false` or `null` (or garbage) at `pos`: up to
    /// the next delimiter.
    fn scalar(&mut self) -> Result<usize, Error> {
        const LONGEST: usize = 4096;
        let mut len = 0;
        loop {
            let bytes = &self.buf[self.pos + len..];
            match bytes
                .iter()
                .position(|b| matches!(b, b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r'))
            {
                Some(end) => return Ok(len + end),
                None => len += bytes.len(),
            }
            if len > LONGEST {
                return Err(syntax(
                    "a value of over 4 KiB where a decision was expected",
                ));
            }
            if !self.more()? {
                return Ok(len);
            }
        }
    }

    /// Parses one value with `parse` from the bytes at `pos` on, byte by byte, every
    /// string cut to [`MAX_STREAM_STRING`] while it passes: nothing of it is kept but
    /// what `parse` keeps.
    fn capped<T: Deserialize<'static>>(&mut self) -> Result<T, Error> {
        let mut failed = None;
        let reader = StringCap::new(
            Consume {
                framer: self,
                failed: &mut failed,
            },
            MAX_STREAM_STRING,
        );
        let mut deserializer = serde_json::Deserializer::from_reader(reader);
        let parsed = T::deserialize(&mut deserializer);
        drop(deserializer);
        if let Some(err) = failed {
            return Err(err);
        }
        parsed.map_err(Error::Decode)
    }
}

/// Reads a [`Framer`]'s bytes from `pos` on, consuming them, exactly as many as asked.
struct Consume<'a, F> {
    framer: &'a mut Framer<F>,
    /// An error of the feed, kept whole.
    failed: &'a mut Option<Error>,
}

impl<F: Feed> io::Read for Consume<'_, F> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let framer = &mut *self.framer;
        if framer.pos == framer.buf.len() {
            match framer.more() {
                Ok(true) => {}
                Ok(false) => return Ok(0),
                Err(err) => {
                    *self.failed = Some(err);
                    return Err(io::Error::other("the answer could not be read"));
                }
            }
        }
        let n = out.len().min(framer.buf.len() - framer.pos);
        out[..n].copy_from_slice(&framer.buf[framer.pos..framer.pos + n]);
        framer.pos += n;
        Ok(n)
    }
}

impl StreamBody {
    /// A body read elsewhere (benchmarks, tools).
    pub fn from_bytes(body: bytes::Bytes) -> StreamBody {
        StreamBody(body)
    }

    /// # Errors
    /// [`Error::Decode`] when the body is not a decision stream (truncated, garbage).
    pub fn parse(&self) -> Result<Stream<'_>, Error> {
        let wire: WireStream<'_> = serde_json::from_slice(&self.0).map_err(Error::Decode)?;
        Ok(Stream { wire })
    }
}

impl<'a> Stream<'a> {
    /// Decisions LAPI reports as new (`null` reads as none).
    pub fn new_decisions(&self) -> impl Iterator<Item = DecisionRef<'_>> {
        self.wire.new.iter().flatten().map(WireDecision::as_ref)
    }

    /// Decisions LAPI reports as deleted or expired.
    pub fn deleted_decisions(&self) -> impl Iterator<Item = DecisionRef<'_>> {
        self.wire.deleted.iter().flatten().map(WireDecision::as_ref)
    }

    pub fn counts(&self) -> (usize, usize) {
        (
            self.wire.new.as_ref().map_or(0, Vec::len),
            self.wire.deleted.as_ref().map_or(0, Vec::len),
        )
    }
}

fn lower(values: &[String]) -> Vec<String> {
    values.iter().map(|v| v.to_lowercase()).collect()
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|err| Error::Tls(format!("cannot read {}: {err}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &'static str) -> Vec<(String, String)> {
        let body = StreamBody(bytes::Bytes::from_static(body.as_bytes()));
        let stream = body.parse().expect("valid stream");
        stream
            .deleted_decisions()
            .map(|d| ("deleted".to_owned(), d.value.to_owned()))
            .chain(
                stream
                    .new_decisions()
                    .map(|d| ("new".to_owned(), d.value.to_owned())),
            )
            .collect()
    }

    #[test]
    fn parses_null_lists_as_empty() {
        assert!(parse(r#"{"deleted":null,"new":null}"#).is_empty());
        assert!(parse(r#"{}"#).is_empty());
    }

    #[test]
    fn parses_the_exact_lapi_shape() {
        let body = r#"{"deleted":[{"duration":"-8.995662ms","id":1,"origin":"cscli","scenario":"manual 'ban' from 'test-machine'","scope":"Ip","type":"ban","value":"1.2.3.4"}],"new":[{"duration":"3h59m54.447176566s","id":2,"origin":"cscli","scenario":"a \"quoted\" scenario","scope":"Range","type":"ban","value":"10.0.0.0/24","uuid":"extra-field"}]}"#;
        let body = StreamBody(bytes::Bytes::from_static(body.as_bytes()));
        let stream = body.parse().expect("valid stream");
        let new: Vec<DecisionRef<'_>> = stream.new_decisions().collect();
        assert_eq!(new.len(), 1);
        assert_eq!(new[0].scope, "Range");
        assert_eq!(new[0].scenario, "a \"quoted\" scenario");
        assert_eq!(new[0].duration, "3h59m54.447176566s");
        assert_eq!(stream.counts(), (1, 1));
    }

    #[test]
    fn refuses_truncated_or_garbage_bodies() {
        for body in [r#"{"deleted":null,"new":[{"value":"1.2"#, "<html>", ""] {
            let body = StreamBody(bytes::Bytes::from_static(body.as_bytes()));
            assert!(body.parse().is_err(), "{:?}", body.0);
        }
    }

    proptest::proptest! {
        #[test]
        fn any_body_parses_or_fails_cleanly(body in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let body = StreamBody(bytes::Bytes::from(body));
            if let Ok(stream) = body.parse() {
                let _ = stream.new_decisions().count() + stream.deleted_decisions().count();
            }
        }

        #[test]
        fn decisions_with_any_strings_round_trip(value in ".{0,30}", scenario in ".{0,30}") {
            let json = serde_json::json!({"deleted": null, "new": [{"value": value, "scenario": scenario, "scope": "Ip", "type": "ban", "origin": "cscli", "duration": "1h", "id": 1}]});
            let body = StreamBody(bytes::Bytes::from(json.to_string()));
            let stream = body.parse().expect("valid JSON parses");
            let decision = stream.new_decisions().next().expect("one decision");
            proptest::prop_assert_eq!(decision.value, value.as_str());
            proptest::prop_assert_eq!(decision.scenario, scenario.as_str());
        }
    }

    /// Passes `json` through a [`StringCap`] of `cap` bytes, reading a few bytes at a time.
    fn capped(json: &str, cap: usize) -> String {
        struct Trickle<'a>(&'a [u8]);
        impl io::Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = buf.len().min(self.0.len()).min(3);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut out = Vec::new();
        io::Read::read_to_end(&mut StringCap::new(Trickle(json.as_bytes()), cap), &mut out)
            .expect("in-memory reads do not fail");
        String::from_utf8(out).expect("whole characters are kept")
    }

    /// The byte-by-byte reference: [`StringCap::keep`] on each byte.
    fn capped_by_byte(json: &str, cap: usize) -> String {
        let mut cap = StringCap::new(io::empty(), cap);
        let kept: Vec<u8> = json.bytes().filter(|&b| cap.keep(b)).collect();
        String::from_utf8(kept).expect("whole characters are kept")
    }

    /// Passes `json` through a [`StringCap`] in one read.
    fn capped_whole(json: &str, cap: usize) -> String {
        let mut out = Vec::new();
        io::Read::read_to_end(&mut StringCap::new(json.as_bytes(), cap), &mut out)
            .expect("in-memory reads do not fail");
        String::from_utf8(out).expect("whole characters are kept")
    }

    proptest::proptest! {
        #[test]
        fn string_cap_copies_runs_exactly_as_byte_by_byte(
            texts in proptest::collection::vec("\\PC{0,60}", 1..6),
            cap in 1usize..40,
        ) {
            let json = serde_json::to_string(&texts).expect("serialises")
                .replace('😀', "\\ud83d\\ude00");
            let reference = capped_by_byte(&json, cap);
            proptest::prop_assert_eq!(&capped_whole(&json, cap), &reference);
            proptest::prop_assert_eq!(&capped(&json, cap), &reference);
        }
    }

    #[test]
    fn string_cap_keeps_short_strings_and_cuts_long_ones() {
        let json = r#"{"a":"short","b":"0123456789abcdefghij","c":[1,"x\"y"]}"#;
        assert_eq!(capped(json, 64), json);
        let cut: serde_json::Value = serde_json::from_str(&capped(json, 8)).expect("valid JSON");
        // A character starts only while 4 bytes (the longest UTF-8 character) still fit.
        assert_eq!(cut["a"], "short");
        assert_eq!(cut["b"], "01234");
        assert_eq!(cut["c"][0], 1, "numbers and structure are untouched");
    }

    proptest::proptest! {
        #[test]
        fn string_cap_keeps_json_valid_and_strings_short(text in "\\PC{0,40}", cap in 10usize..30) {
            // Escapes, surrogate pairs (\u escapes of astral characters) and multi-byte
            // characters, cut anywhere: still valid JSON, each string a prefix within the cap.
            let value = serde_json::json!({"k": text, "astral": "😀é\u{1}"});
            let json = serde_json::to_string(&value).expect("serialises")
                .replace('😀', "\\ud83d\\ude00");
            let out: serde_json::Value = serde_json::from_str(&capped(&json, cap))
                .expect("still valid JSON");
            for (key, original) in [("k", text.as_str()), ("astral", "😀é\u{1}")] {
                let kept = out[key].as_str().expect("a string");
                proptest::prop_assert!(original.starts_with(kept), "{kept:?} of {original:?}");
                proptest::prop_assert!(kept.len() <= cap + 4 || kept == original && original.len() <= cap + 4);
            }
        }
    }

    #[derive(Default)]
    struct Collect(Vec<(bool, String, String)>);

    impl StreamSink for Collect {
        fn new_decision(&mut self, d: DecisionRef<'_>) {
            self.0
                .push((false, d.value.to_owned(), d.duration.to_owned()));
        }
        fn deleted_decision(&mut self, d: DecisionRef<'_>) {
            self.0
                .push((true, d.value.to_owned(), d.duration.to_owned()));
        }
    }

    #[test]
    fn streaming_and_in_memory_parses_agree_and_refuse_truncation() {
        let body = br#"{"deleted":[{"duration":"-1s","id":1,"origin":"cscli","scenario":"a\u0041","scope":"Ip","type":"ban","value":"1.1.1.1"}],"new":[{"duration":"1h","id":2,"origin":"cscli","scenario":"s","scope":"Ip","type":"ban","value":"2.2.2.2","extra":{"nested":[1,2]}}],"later":null}"#;
        let (mut from_reader, mut from_slice) = (Collect::default(), Collect::default());
        parse_reader(&body[..], &mut from_reader).expect("valid");
        parse_slice(body, &mut from_slice).expect("valid");
        assert_eq!(from_reader.0, from_slice.0);
        assert_eq!(
            from_reader.0,
            [
                (true, "1.1.1.1".into(), "-1s".into()),
                (false, "2.2.2.2".into(), "1h".into())
            ]
        );
        for cut in [10, body.len() / 2, body.len() - 1] {
            assert!(
                parse_reader(&body[..cut], &mut Collect::default()).is_err(),
                "cut at {cut}"
            );
        }
        assert!(parse_reader(&b"{\"new\":null} trailing"[..], &mut Collect::default()).is_err());
    }

    /// Every field of every decision a sink saw, in order.
    #[derive(Default, Debug, PartialEq)]
    struct Everything(Vec<(bool, [String; 6])>);

    impl Everything {
        fn push(&mut self, deleted: bool, d: &DecisionRef<'_>) {
            let fields = [d.scope, d.value, d.kind, d.origin, d.scenario, d.duration];
            self.0.push((deleted, fields.map(str::to_owned)));
        }
    }

    impl StreamSink for Everything {
        fn new_decision(&mut self, d: DecisionRef<'_>) {
            self.push(false, &d);
        }
        fn deleted_decision(&mut self, d: DecisionRef<'_>) {
            self.push(true, &d);
        }
    }

    /// Hands out a body in chunks of the given sizes, round and round.
    struct Chunked<'a> {
        body: &'a [u8],
        sizes: Vec<usize>,
        n: usize,
    }

    impl io::Read for Chunked<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let size = self.sizes[self.n % self.sizes.len()];
            self.n += 1;
            let n = buf.len().min(self.body.len()).min(size);
            buf[..n].copy_from_slice(&self.body[..n]);
            self.body = &self.body[n..];
            Ok(n)
        }
    }

    /// The parse as it was before the framer: serde_json reading through a
    /// [`StringCap`], byte by byte.
    fn reference(body: &[u8], shape: BodyShape) -> Result<Everything, ()> {
        let mut sink = Everything::default();
        let mut deserializer =
            serde_json::Deserializer::from_reader(StringCap::new(body, MAX_STREAM_STRING));
        let parsed = match shape {
            BodyShape::Stream => Body { sink: &mut sink }.deserialize(&mut deserializer),
            BodyShape::List => Decisions {
                sink: &mut sink,
                deleted: false,
            }
            .deserialize(&mut deserializer),
        };
        parsed.and_then(|()| deserializer.end()).map_err(|_| ())?;
        Ok(sink)
    }

    fn framed(body: &[u8], sizes: Vec<usize>, shape: BodyShape) -> Result<Everything, ()> {
        let mut sink = Everything::default();
        let feed = ReadFeed(Chunked { body, sizes, n: 0 });
        Framer::new(feed).run(shape, &mut sink).map_err(|_| ())?;
        Ok(sink)
    }

    /// A string for a decision field: short mostly, sometimes past the cap, with escapes
    /// and characters of every width.
    fn field() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            6 => "[a-z0-9./:]{0,12}",
            2 => "\\PC{0,20}",
            1 => ("[a-z\"\\\\é😀\u{1}]{1,4}", 1000usize..2000).prop_map(|(s, n)| s.repeat(n)),
        ]
    }

    fn decision() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        (
            proptest::collection::vec(field(), 6),
            any::<u32>(),
            any::<bool>(),
        )
            .prop_map(|(f, id, extra)| {
                let mut d = serde_json::json!({
                    "duration": f[0], "id": id, "origin": f[1], "scenario": f[2],
                    "scope": f[3], "type": f[4], "value": f[5],
                });
                if extra {
                    d["uuid"] =
                        serde_json::json!({"nested": [1, "two", {"three": null}], "s": f[2]});
                }
                d
            })
    }

    fn decisions() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        prop_oneof![
            1 => Just(serde_json::Value::Null),
            4 => proptest::collection::vec(decision(), 0..6).prop_map(serde_json::Value::from),
        ]
    }

    proptest::proptest! {
        // Bodies with strings past the cap are large: fewer cases than the default.
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(96))]

        /// Whatever the chunks, the framer sees what serde_json saw through the cap:
        /// the same decisions, strings cut the same way, unknown keys skipped.
        #[test]
        fn the_framer_agrees_with_serde_through_the_cap(
            new in decisions(),
            deleted in decisions(),
            other in proptest::option::of(prop_oneof_values()),
            pretty in proptest::bool::ANY,
            sizes in proptest::collection::vec(1usize..300, 1..5),
        ) {
            let mut body = serde_json::Map::new();
            body.insert("deleted".into(), deleted);
            if let Some(other) = other {
                body.insert("later".into(), other);
            }
            body.insert("new".into(), new.clone());
            let body = serde_json::Value::Object(body);
            let text = if pretty {
                serde_json::to_string_pretty(&body)
            } else {
                serde_json::to_string(&body)
            }
            .expect("serialises")
            .replace('😀', "\\ud83d\\ude00");
            let expected = reference(text.as_bytes(), BodyShape::Stream).expect("valid");
            proptest::prop_assert_eq!(&framed(text.as_bytes(), sizes.clone(), BodyShape::Stream), &Ok(expected));
            let list = serde_json::to_string(&new).expect("serialises");
            proptest::prop_assert_eq!(
                framed(list.as_bytes(), sizes, BodyShape::List),
                reference(list.as_bytes(), BodyShape::List)
            );
        }

        /// Cut anywhere, or garbled, an answer fails as it did (or parses the same).
        #[test]
        fn the_framer_fails_where_serde_failed(
            new in decisions(),
            cut in proptest::num::usize::ANY,
            garble in proptest::option::of((proptest::num::usize::ANY, proptest::num::u8::ANY)),
            size in 1usize..100,
        ) {
            let mut text = serde_json::to_vec(&serde_json::json!({"deleted": null, "new": new}))
                .expect("serialises");
            match garble {
                Some((at, byte)) => {
                    let at = at % text.len();
                    text[at] = byte;
                }
                None => text.truncate(cut % text.len()),
            }
            let (framed, reference) = (framed(&text, vec![size], BodyShape::Stream), reference(&text, BodyShape::Stream));
            if let Ok(expected) = reference {
                proptest::prop_assert_eq!(framed, Ok(expected));
            } else {
                proptest::prop_assert!(framed.is_err(), "{:?}", String::from_utf8_lossy(&text));
            }
        }
    }

    fn prop_oneof_values() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        prop_oneof![
            Just(serde_json::json!(null)),
            Just(serde_json::json!(12.5e3)),
            Just(serde_json::json!(true)),
            field().prop_map(serde_json::Value::from),
            decision(),
            Just(serde_json::json!([[[]], {"a": [1, 2, {"b": "c"}]}])),
        ]
    }

    #[test]
    fn the_framer_keeps_nothing_of_huge_fields_and_skips_unknown_keys() {
        let huge = "x".repeat(1 << 20);
        let body = format!(
            r#"{{"{huge}":1,"other":{{"k":["{huge}"]}},"new":[{{"value":"1.2.3.4","scenario":"{huge}","scope":"Ip","id":1}},{{"value":"5.6.7.8"}}]}}"#
        );
        let got = framed(body.as_bytes(), vec![4096], BodyShape::Stream).expect("valid");
        assert_eq!(
            got,
            reference(body.as_bytes(), BodyShape::Stream).expect("valid")
        );
        assert_eq!(got.0.len(), 2);
        assert_eq!(got.0[0].1[1], "1.2.3.4");
        assert!(got.0[0].1[4].len() <= MAX_STREAM_STRING, "cut to the cap");
        assert_eq!(got.0[1].1[1], "5.6.7.8");
        for bad in [
            &b"[]"[..],
            b"{\"new\":[1]}",
            b"{\"new\":[{}],}",
            b"{\"new\":[{},]}",
            b"null",
            b"{} {}",
        ] {
            assert!(
                framed(bad, vec![7], BodyShape::Stream).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            framed(b" null ", vec![2], BodyShape::List),
            Ok(Everything::default())
        );
    }

    #[test]
    fn user_agent_has_exactly_one_slash() {
        assert_eq!(USER_AGENT.matches('/').count(), 1);
        assert!(USER_AGENT.starts_with("crowdsec-cloudflare-iplist-bouncer/v"));
    }
}
