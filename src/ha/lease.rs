//! The three Lease calls (docs/high-availability.md §2): `GET` the object, `POST` it when
//! absent, `PUT` it back with the `resourceVersion` last read. Nothing else of the
//! Kubernetes API is used, so no Kubernetes client crate is.
//!
//! The HTTP client keeps the limits of the bouncer's other clients (`net.rs`): no
//! redirects (the bearer token would go along), capped bodies, a short timeout.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

use crate::config::{HaConfig, Secret};

/// The annotation where the leader records the bulk operation it has pending, so that a
/// successor can wait it out (Cloudflare allows one pending operation per account).
pub const OPERATION_ANNOTATION: &str = "crowdsec-cloudflare-iplist-bouncer/operation";
/// How often the token file is read again (projected tokens rotate; kube-rs: 60 s).
const TOKEN_REREAD: Duration = Duration::from_secs(60);
/// The largest Lease answer read: a Lease is a few hundred bytes.
const MAX_BODY: usize = 256 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// `409`: the object changed since it was read (or, on create, it exists).
    #[error("the Lease changed since it was read (HTTP 409 Conflict)")]
    Conflict,
    #[error("{0}")]
    Other(String),
}

/// The part of a Lease the election reads and writes (`spec`, and the operation
/// annotation).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    /// Empty: nobody holds it (released, or never held).
    pub holder: String,
    pub lease_duration_s: u64,
    pub acquire_time: Option<String>,
    pub renew_time: Option<String>,
    pub transitions: u64,
    /// The holder's pending bulk operation, if it recorded one.
    pub operation: Option<String>,
}

/// A Lease as read: the whole object, so that a `PUT` sends back what it does not
/// touch (labels, owner references, other annotations) as it was.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseObject {
    raw: Value,
}

impl LeaseObject {
    /// # Errors
    /// When the JSON is not a Lease with a `metadata.resourceVersion`.
    pub fn from_json(raw: Value) -> Result<LeaseObject, ApiError> {
        let object = LeaseObject { raw };
        if object.resource_version().is_empty() {
            return Err(ApiError::Other(
                "the API server answered with an object without metadata.resourceVersion".into(),
            ));
        }
        Ok(object)
    }

    pub fn resource_version(&self) -> &str {
        self.raw["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
    }

    pub fn record(&self) -> Record {
        let spec = &self.raw["spec"];
        let text = |v: &Value| v.as_str().map(str::to_owned);
        Record {
            holder: spec["holderIdentity"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            lease_duration_s: spec["leaseDurationSeconds"].as_u64().unwrap_or(0),
            acquire_time: text(&spec["acquireTime"]),
            renew_time: text(&spec["renewTime"]),
            transitions: spec["leaseTransitions"].as_u64().unwrap_or(0),
            operation: text(&self.raw["metadata"]["annotations"][OPERATION_ANNOTATION])
                .filter(|op| !op.is_empty()),
        }
    }

    /// The object to `PUT`: this one with `record` written into it.
    pub fn with_record(&self, record: &Record) -> Value {
        let mut raw = self.raw.clone();
        raw["spec"] = spec_json(record);
        let metadata = &mut raw["metadata"];
        if !metadata["annotations"].is_object() {
            metadata["annotations"] = json!({});
        }
        if let Some(annotations) = metadata["annotations"].as_object_mut() {
            match &record.operation {
                Some(op) => {
                    annotations.insert(OPERATION_ANNOTATION.into(), Value::String(op.clone()));
                }
                None => {
                    annotations.remove(OPERATION_ANNOTATION);
                }
            }
        }
        raw
    }
}

fn spec_json(record: &Record) -> Value {
    let mut spec = json!({
        "holderIdentity": record.holder,
        "leaseDurationSeconds": record.lease_duration_s,
        "leaseTransitions": record.transitions,
    });
    if let Some(t) = &record.acquire_time {
        spec["acquireTime"] = Value::String(t.clone());
    }
    if let Some(t) = &record.renew_time {
        spec["renewTime"] = Value::String(t.clone());
    }
    spec
}

/// `now` as a Kubernetes `MicroTime`: RFC 3339 in UTC with microseconds.
pub fn micro_time(now: SystemTime) -> String {
    humantime::format_rfc3339_micros(now).to_string()
}

/// What the election needs of the API server.
pub trait LeaseApi: Send + Sync {
    /// The Lease, or `None` when it does not exist.
    fn get(&self) -> impl Future<Output = Result<Option<LeaseObject>, ApiError>> + Send;
    /// Creates the Lease; [`ApiError::Conflict`] when it already exists.
    fn create(&self, record: &Record)
        -> impl Future<Output = Result<LeaseObject, ApiError>> + Send;
    /// Replaces `previous` (by its `resourceVersion`) with `record` written into it;
    /// [`ApiError::Conflict`] when it changed since.
    fn replace(
        &self,
        previous: &LeaseObject,
        record: &Record,
    ) -> impl Future<Output = Result<LeaseObject, ApiError>> + Send;
}

/// The Lease API over HTTP(S), with the pod's service-account token.
pub struct HttpLeaseApi {
    http: reqwest::Client,
    /// `…/namespaces/{ns}/leases`
    collection: String,
    /// `…/namespaces/{ns}/leases/{name}`
    object: String,
    namespace: String,
    name: String,
    token_file: PathBuf,
    token: Mutex<Option<(Secret, Instant)>>,
}

impl HttpLeaseApi {
    /// # Errors
    /// The CA file cannot be read or holds no certificate, or the client cannot be built.
    pub fn new(config: &HaConfig) -> Result<HttpLeaseApi, String> {
        crate::install_tls_provider();
        // A call must leave time for another try before the renew deadline.
        let timeout = (config.renew_deadline / 2)
            .min(config.retry_period * 2)
            .max(Duration::from_millis(500));
        let mut builder = crate::net::client_builder(timeout);
        if let Some(ca) = &config.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|err| format!("ha.ca_file {}: cannot read it: {err}", ca.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|err| format!("ha.ca_file {}: {err}", ca.display()))?;
            if certs.is_empty() {
                return Err(format!(
                    "ha.ca_file {} holds no PEM certificate: point it at the cluster's CA \
                     (in a pod: /var/run/secrets/kubernetes.io/serviceaccount/ca.crt)",
                    ca.display()
                ));
            }
            // Only the cluster's CA: the token must reach the cluster's API server only.
            builder = builder.tls_certs_only(certs);
        }
        let http = builder
            .build()
            .map_err(|err| crate::net::describe(&err, None))?;
        let collection = format!(
            "{}/apis/coordination.k8s.io/v1/namespaces/{}/leases",
            config.api_server, config.namespace
        );
        Ok(HttpLeaseApi {
            object: format!("{collection}/{}", config.lease_name),
            collection,
            namespace: config.namespace.clone(),
            name: config.lease_name.clone(),
            http,
            token_file: config.token_file.clone(),
            token: Mutex::new(None),
        })
    }

    /// The token, read from its file at most [`TOKEN_REREAD`] ago.
    fn token(&self, fresh: bool) -> Result<Secret, ApiError> {
        let mut cached = self.token.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((token, read_at)) = cached.as_ref() {
            if !fresh && read_at.elapsed() < TOKEN_REREAD {
                return Ok(token.clone());
            }
        }
        let text = std::fs::read_to_string(&self.token_file).map_err(|err| {
            ApiError::Other(format!(
                "cannot read the service-account token {}: {err} (set ha.token_file, or mount \
                 the service account's token)",
                self.token_file.display()
            ))
        })?;
        let token = Secret::new(text.trim().to_owned());
        if token.expose().is_empty() {
            return Err(ApiError::Other(format!(
                "the service-account token {} is empty",
                self.token_file.display()
            )));
        }
        *cached = Some((token.clone(), Instant::now()));
        Ok(token)
    }

    async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Vec<u8>), ApiError> {
        let mut fresh = false;
        loop {
            let token = self.token(fresh)?;
            let mut request = self
                .http
                .request(method.clone(), url)
                .bearer_auth(token.expose())
                .header("Accept", "application/json");
            if let Some(body) = body {
                request = request.json(body);
            }
            let mut response = request
                .send()
                .await
                .map_err(|err| ApiError::Other(crate::net::describe(&err, None)))?;
            let status = response.status().as_u16();
            if (300..400).contains(&status) {
                return Err(ApiError::Other(format!(
                    "the API server answered HTTP {status} redirecting to {}: redirects are \
                     never followed (the token would go along); check ha.api_server",
                    crate::net::location(&response)
                )));
            }
            // A rotated token: read the file again, once.
            if status == 401 && !fresh {
                fresh = true;
                continue;
            }
            let bytes = crate::net::read_capped(&mut response, MAX_BODY, Duration::from_secs(10))
                .await
                .map_err(|err| match err {
                    crate::net::ReadError::TooLarge { cap, .. } => {
                        ApiError::Other(format!("the API server's answer is over {cap} bytes"))
                    }
                    crate::net::ReadError::Stalled(_) => {
                        ApiError::Other("the API server's answer stalled".into())
                    }
                    crate::net::ReadError::Transport(err) => {
                        ApiError::Other(crate::net::describe(&err, None))
                    }
                })?;
            return Ok((status, bytes));
        }
    }

    fn object_from(&self, what: &str, status: u16, bytes: &[u8]) -> Result<LeaseObject, ApiError> {
        match status {
            200 | 201 => {
                let raw: Value = serde_json::from_slice(bytes).map_err(|err| {
                    ApiError::Other(format!(
                        "{what}: the API server's answer is not JSON: {err}"
                    ))
                })?;
                LeaseObject::from_json(raw)
            }
            409 => Err(ApiError::Conflict),
            _ => Err(ApiError::Other(status_error(what, status, bytes))),
        }
    }
}

/// An error answer, with the `Status` object's message when there is one.
fn status_error(what: &str, status: u16, bytes: &[u8]) -> String {
    let message = serde_json::from_slice::<Value>(bytes)
        .ok()
        .and_then(|v| v["message"].as_str().map(crate::net::quote))
        .unwrap_or_default();
    let hint = match status {
        401 => " (the service-account token was refused)",
        403 => {
            " (the service account may not do this: the Role needs get and update on this \
             Lease, and create on leases)"
        }
        _ => "",
    };
    if message.is_empty() {
        format!("{what}: HTTP {status}{hint}")
    } else {
        format!("{what}: HTTP {status}: {message}{hint}")
    }
}

impl LeaseApi for HttpLeaseApi {
    async fn get(&self) -> Result<Option<LeaseObject>, ApiError> {
        let (status, bytes) = self.send(reqwest::Method::GET, &self.object, None).await?;
        if status == 404 {
            return Ok(None);
        }
        self.object_from("reading the Lease", status, &bytes)
            .map(Some)
    }

    async fn create(&self, record: &Record) -> Result<LeaseObject, ApiError> {
        let mut body = json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": spec_json(record),
        });
        if let Some(op) = &record.operation {
            body["metadata"]["annotations"] = json!({ OPERATION_ANNOTATION: op });
        }
        let (status, bytes) = self
            .send(reqwest::Method::POST, &self.collection, Some(&body))
            .await?;
        self.object_from("creating the Lease", status, &bytes)
    }

    async fn replace(
        &self,
        previous: &LeaseObject,
        record: &Record,
    ) -> Result<LeaseObject, ApiError> {
        let body = previous.with_record(record);
        let (status, bytes) = self
            .send(reqwest::Method::PUT, &self.object, Some(&body))
            .await?;
        self.object_from("updating the Lease", status, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_put_keeps_what_it_does_not_touch() {
        let read = LeaseObject::from_json(json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": "l", "namespace": "ns", "resourceVersion": "7",
                         "labels": {"app": "x"},
                         "annotations": {"other": "kept", OPERATION_ANNOTATION: "op-1"}},
            "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15, "leaseTransitions": 2,
                     "renewTime": "2026-12-02T10:00:00.000000Z"}
        }))
        .unwrap();
        let record = read.record();
        assert_eq!(record.holder, "a");
        assert_eq!(record.operation.as_deref(), Some("op-1"));
        assert_eq!(record.transitions, 2);
        let next = Record {
            holder: "b".into(),
            operation: None,
            ..record
        };
        let put = read.with_record(&next);
        assert_eq!(put["metadata"]["resourceVersion"], "7");
        assert_eq!(put["metadata"]["labels"]["app"], "x");
        assert_eq!(put["metadata"]["annotations"]["other"], "kept");
        assert!(put["metadata"]["annotations"]
            .get(OPERATION_ANNOTATION)
            .is_none());
        assert_eq!(put["spec"]["holderIdentity"], "b");
        assert!(put["spec"].get("acquireTime").is_none());
    }

    #[test]
    fn an_object_without_resource_version_is_refused() {
        assert!(LeaseObject::from_json(json!({"metadata": {}})).is_err());
    }

    #[test]
    fn micro_time_has_microseconds() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_micros(1_764_672_000_123_456);
        assert_eq!(micro_time(t), "2025-12-02T10:40:00.123456Z");
    }
}
