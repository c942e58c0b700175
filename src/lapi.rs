//! The CrowdSec Local API client: `GET /v1/decisions/stream` and nothing else.
//!
//! Wire types stay in this module. A response body is kept as one buffer and parsed
//! with borrowed strings, so a 100k-decision pull is held in memory once; callers get
//! [`DecisionRef`]s pointing into it.

use std::borrow::Cow;
use std::time::Duration;

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

    /// Pulls the decision stream with the configured filters.
    ///
    /// # Errors
    /// Transport failures, non-200 answers ([`Error::Forbidden`] for a bad key).
    pub async fn stream(&self, pull: Pull) -> Result<StreamBody, Error> {
        let mut request = self.http.get(&self.stream_url).query(&self.filters);
        if pull == Pull::Full {
            // Only the exact string `true` counts (docs/lapi.md §4.2).
            request = request.query(&[("startup", "true")]);
        }
        if let Some(key) = &self.api_key {
            request = request.header("X-Api-Key", key.expose());
        }
        let transport = |source| Error::Transport {
            url: self.stream_url.clone(),
            source,
        };
        let response = request.send().await.map_err(transport)?;
        let status = response.status().as_u16();
        if status == 403 {
            return Err(Error::Forbidden);
        }
        let body = response.bytes().await.map_err(transport)?;
        if status != 200 {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            return Err(Error::Status { status, body: text });
        }
        Ok(StreamBody(body))
    }

    /// Pushes usage metrics (`POST /v1/usage-metrics`, CrowdSec 1.6.3 and later).
    /// `Ok(false)`: this LAPI does not know the endpoint (404).
    ///
    /// # Errors
    /// As [`LapiClient::stream`].
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
    /// As [`LapiClient::stream`].
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

    /// Size of the body in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
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

    #[test]
    fn user_agent_has_exactly_one_slash() {
        assert_eq!(USER_AGENT.matches('/').count(), 1);
        assert!(USER_AGENT.starts_with("crowdsec-cloudflare-iplist-bouncer/v"));
    }
}
