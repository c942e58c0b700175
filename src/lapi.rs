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
use crate::state::DecisionRef;

/// `User-Agent` LAPI splits on its single `/` into bouncer type and version (docs/lapi.md §4.7).
pub const USER_AGENT: &str = concat!(
    "crowdsec-cloudflare-iplist-bouncer/v",
    env!("CARGO_PKG_VERSION")
);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "LAPI refused the bouncer key (403 access forbidden): check crowdsec.api_key, or register \
         the bouncer with `cscli bouncers add crowdsec-cloudflare-iplist-bouncer` and use the key it prints"
    )]
    Forbidden,
    #[error("LAPI answered HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error("cannot reach LAPI at {url}: {source}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
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
}

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
        let mut builder = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .timeout(config.request_timeout)
            .connect_timeout(Duration::from_secs(10))
            .tls_danger_accept_invalid_certs(config.insecure_skip_verify);
        if let Some(ca) = &config.ca_cert_path {
            let pem = read(ca)?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|err| Error::Tls(format!("ca_cert_path {}: {err}", ca.display())))?;
            builder = builder.add_root_certificate(cert);
        }
        if let (Some(cert), Some(key)) = (&config.cert_path, &config.key_path) {
            let mut pem = read(cert)?;
            pem.extend_from_slice(b"\n");
            pem.extend_from_slice(&read(key)?);
            let identity = reqwest::Identity::from_pem(&pem)
                .map_err(|err| Error::Tls(format!("cert_path/key_path: {err}")))?;
            builder = builder.identity(identity);
        }
        let http = builder.build().map_err(|err| Error::Tls(err.to_string()))?;
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
        })
    }

    /// Pulls the decision stream and hands each decision to `sink` while the response
    /// arrives. Returns the sink and the body's size. On any error the sink is dropped:
    /// a failed or truncated pull gives nothing to apply.
    ///
    /// # Errors
    /// Transport failures, non-200 answers ([`Error::Forbidden`] for a bad key), and [`Error::Decode`] for a body that is not a complete
    /// decision stream.
    pub async fn stream_into<S: StreamSink + Send + 'static>(
        &self,
        pull: Pull,
        sink: S,
    ) -> Result<(S, u64), Error> {
        let mut response = self.send_stream(pull).await?;
        let transport = |source| Error::Transport {
            url: self.stream_url.clone(),
            source,
        };
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let parser = tokio::task::spawn_blocking(move || {
            let mut sink = sink;
            // serde_json reads byte by byte: std's BufReader makes that cheap.
            let reader = io::BufReader::with_capacity(64 * 1024, ChunkReader::new(rx));
            parse_reader(reader, &mut sink).map(|()| sink)
        });
        let mut size = 0u64;
        let mut failed = None;
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    size += chunk.len() as u64;
                    if tx.send(Ok(chunk)).await.is_err() {
                        break; // The parser stopped on an error; it reports it.
                    }
                }
                Ok(None) => break,
                Err(err) => {
                    let _ = tx.send(Err(io::Error::other("the response was cut"))).await;
                    failed = Some(err);
                    break;
                }
            }
        }
        drop(tx);
        let parsed = parser.await.map_err(|err| {
            Error::Decode(serde::de::Error::custom(format!("parser task: {err}")))
        })?;
        if let Some(err) = failed {
            return Err(transport(err));
        }
        Ok((parsed?, size))
    }

    /// Sends the stream request; a 200 answer is returned, unread.
    async fn send_stream(&self, pull: Pull) -> Result<reqwest::Response, Error> {
        let mut request = self.http.get(&self.stream_url).query(&self.filters);
        if pull == Pull::Full {
            // Only the exact string `true` counts (docs/lapi.md §4.2).
            request = request.query(&[("startup", "true")]);
        }
        if let Some(key) = &self.api_key {
            request = request.header("X-Api-Key", key.expose());
        }
        let response = request.send().await.map_err(|source| Error::Transport {
            url: self.stream_url.clone(),
            source,
        })?;
        match response.status().as_u16() {
            200 => Ok(response),
            403 => Err(Error::Forbidden),
            status => {
                let body = response.text().await.unwrap_or_default();
                Err(Error::Status {
                    status,
                    body: body.chars().take(200).collect(),
                })
            }
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
        let mut request = self.http.post(&url).json(payload);
        if let Some(key) = &self.api_key {
            request = request.header("X-Api-Key", key.expose());
        }
        let response = request
            .send()
            .await
            .map_err(|source| Error::Transport { url, source })?;
        match response.status().as_u16() {
            200..=299 => Ok(true),
            404 => Ok(false),
            403 => Err(Error::Forbidden),
            status => {
                let body = response.text().await.unwrap_or_default();
                Err(Error::Status {
                    status,
                    body: body.chars().take(200).collect(),
                })
            }
        }
    }

    /// Checks that LAPI accepts the key, without moving the stream's `last_pull`
    /// (see the `check` module).
    ///
    /// # Errors
    /// As [`LapiClient::stream_into`].
    pub async fn probe(&self) -> Result<(), Error> {
        let url = self.stream_url.replace("/decisions/stream", "/decisions");
        let mut request = self.http.head(&url).query(&[("ip", "127.0.0.1")]);
        if let Some(key) = &self.api_key {
            request = request.header("X-Api-Key", key.expose());
        }
        let response = request
            .send()
            .await
            .map_err(|source| Error::Transport { url, source })?;
        match response.status().as_u16() {
            200..=299 => Ok(()),
            403 => Err(Error::Forbidden),
            status => Err(Error::Status {
                status,
                body: String::new(),
            }),
        }
    }
}

/// Parses a decision stream from a reader, handing each decision to `sink`.
///
/// # Errors
/// [`Error::Decode`] when the input is not a complete decision stream; `sink` may then
/// have seen part of it.
pub fn parse_reader<R: io::Read, S: StreamSink>(reader: R, sink: &mut S) -> Result<(), Error> {
    parse(serde_json::Deserializer::from_reader(reader), sink)
}

/// Parses a decision stream held in memory, with borrowed strings where it can.
///
/// # Errors
/// As [`parse_reader`].
pub fn parse_slice<S: StreamSink>(body: &[u8], sink: &mut S) -> Result<(), Error> {
    parse(serde_json::Deserializer::from_slice(body), sink)
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

/// Feeds a parser on a blocking thread from the chunks of a response.
struct ChunkReader {
    rx: tokio::sync::mpsc::Receiver<io::Result<bytes::Bytes>>,
    current: bytes::Bytes,
}

impl ChunkReader {
    fn new(rx: tokio::sync::mpsc::Receiver<io::Result<bytes::Bytes>>) -> ChunkReader {
        ChunkReader {
            rx,
            current: bytes::Bytes::new(),
        }
    }
}

impl io::Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(err)) => return Err(err),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        bytes::Buf::advance(&mut self.current, n);
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

    #[test]
    fn user_agent_has_exactly_one_slash() {
        assert_eq!(USER_AGENT.matches('/').count(), 1);
        assert!(USER_AGENT.starts_with("crowdsec-cloudflare-iplist-bouncer/v"));
    }
}
