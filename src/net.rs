//! What both HTTP clients share, so that a hostile or broken peer meets the same limits
//! on either side (docs/hardening.md):
//!
//! - no redirects: a `3xx` is an error naming its `Location` (a redirect would carry the
//!   LAPI key to another host, and its answer would be taken for LAPI's);
//! - bodies read up to a cap, so a huge answer costs at most the cap;
//! - `Retry-After` in either form (seconds or an HTTP date), capped;
//! - transport errors described with their whole cause chain, and a hint for the TLS
//!   causes an operator can fix.

use std::time::{Duration, SystemTime};

/// `User-Agent` LAPI splits on its single `/` into bouncer type and version (docs/lapi.md §4.7).
pub const USER_AGENT: &str = concat!(
    "crowdsec-cloudflare-iplist-bouncer/v",
    env!("CARGO_PKG_VERSION")
);

/// The longest `Retry-After` honoured; a longer one is logged and cut to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// How much of an error answer is read (the rest is dropped with the connection).
pub const MAX_ERROR_BODY: usize = 64 * 1024;
/// The most a body's `Content-Length` makes [`read_capped`] set aside before any of it
/// arrives: a hostile header costs at most this.
const MAX_RESERVE: usize = 4 * 1024 * 1024;
/// How much of a `Location` or an error text is kept for a message.
const MAX_QUOTE: usize = 200;

/// Whether `url` names a loopback address (or `localhost`).
pub fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name == "localhost",
        None => false,
    }
}

/// A client builder with the settings both clients share: no redirects, the bouncer's
/// `User-Agent`, a connect timeout and a total request timeout.
pub fn client_builder(request_timeout: Duration) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(request_timeout)
        .connect_timeout(Duration::from_secs(10))
}

/// Why a body could not be read in full.
#[derive(Debug)]
pub enum ReadError {
    /// The body is longer than the cap; `partial` holds what was read before giving up.
    TooLarge {
        cap: usize,
        partial: Vec<u8>,
    },
    /// No byte arrived for this long.
    Stalled(Duration),
    Transport(reqwest::Error),
}

/// Reads a body up to `cap` bytes, waiting at most `idle` for each chunk.
///
/// # Errors
/// [`ReadError::TooLarge`] past the cap, [`ReadError::Stalled`] when a chunk takes longer
/// than `idle`, or the transport's error.
pub async fn read_capped(
    response: &mut reqwest::Response,
    cap: usize,
    idle: Duration,
) -> Result<Vec<u8>, ReadError> {
    // Room for the announced length (never more than the cap, nor than a page needs
    // before it shows it means it), so the body is not copied as it grows.
    let announced = response.content_length().unwrap_or(0);
    let room = usize::try_from(announced).map_or(MAX_RESERVE, |n| n.min(cap).min(MAX_RESERVE));
    let mut body = Vec::with_capacity(room);
    loop {
        let chunk = match tokio::time::timeout(idle, response.chunk()).await {
            Err(_) => return Err(ReadError::Stalled(idle)),
            Ok(Err(err)) => return Err(ReadError::Transport(err)),
            Ok(Ok(None)) => return Ok(body),
            Ok(Ok(Some(chunk))) => chunk,
        };
        if body.len() + chunk.len() > cap {
            let room = cap - body.len();
            body.extend_from_slice(&chunk[..room]);
            return Err(ReadError::TooLarge { cap, partial: body });
        }
        body.extend_from_slice(&chunk);
    }
}

/// The start of an error answer, as text for a message: at most [`MAX_ERROR_BODY`]
/// bytes are read, at most 200 characters kept. Never fails: a body that cannot be read
/// reads as empty.
pub async fn error_text(response: &mut reqwest::Response, idle: Duration) -> String {
    let body = match read_capped(response, MAX_ERROR_BODY, idle).await {
        Ok(body) | Err(ReadError::TooLarge { partial: body, .. }) => body,
        Err(_) => return String::new(),
    };
    quote(&String::from_utf8_lossy(&body))
}

/// Text cut to 200 characters, control characters replaced, for a log line.
pub fn quote(text: &str) -> String {
    text.chars()
        .take(MAX_QUOTE)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The `Location` of a redirect, quoted (or `(none)`).
pub fn location(response: &reqwest::Response) -> String {
    response
        .headers()
        .get(reqwest::header::LOCATION)
        .map(|value| quote(&String::from_utf8_lossy(value.as_bytes())))
        .unwrap_or_else(|| "(none)".to_owned())
}

/// `Retry-After` as asked (seconds or an HTTP date), and as honoured (capped at
/// [`MAX_RETRY_AFTER`]). `None` when absent or unreadable.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<RetryAfter> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(value, SystemTime::now())
}

/// A `Retry-After` value: what the server asked, and what the bouncer will wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter {
    pub asked: Duration,
    pub wait: Duration,
}

impl RetryAfter {
    pub fn was_capped(&self) -> bool {
        self.asked > self.wait
    }
}

fn parse_retry_after(value: &str, now: SystemTime) -> Option<RetryAfter> {
    let value = value.trim();
    let asked = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = httpdate::parse_http_date(value).ok()?;
            at.duration_since(now).unwrap_or(Duration::ZERO)
        }
    };
    Some(RetryAfter {
        asked,
        wait: asked.min(MAX_RETRY_AFTER),
    })
}

/// An error with every cause in its chain (`a: b: c`), so "error sending request" says
/// why, and a hint for a TLS cause an operator can fix, naming `keys` (the section of the
/// configuration whose `ca_cert_path` / `cert_path` apply, when it has them).
pub fn describe(err: &reqwest::Error, tls_keys: Option<&str>) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    if err.is_timeout() && !text.contains("timed out") {
        text.push_str(" (timed out)");
    }
    if let Some(hint) = tls_hint(&text, tls_keys) {
        text.push_str(" — ");
        text.push_str(&hint);
    }
    text
}

/// What to change for a TLS failure, judged from the error text.
fn tls_hint(text: &str, keys: Option<&str>) -> Option<String> {
    let lower = text.to_ascii_lowercase();
    let key = |name: &str| match keys {
        Some(section) => format!("{section}.{name}"),
        None => name.to_owned(),
    };
    if lower.contains("unknownissuer") || lower.contains("unknown issuer") {
        Some(match keys {
            Some(_) => format!(
                "the server's certificate is signed by an unknown CA: set {} to the CA that signed it",
                key("ca_cert_path")
            ),
            None => "the server's certificate is signed by an unknown CA".to_owned(),
        })
    } else if lower.contains("certificaterequired") || lower.contains("certificate required") {
        Some(format!(
            "the server requires a client certificate: set {} and {}",
            key("cert_path"),
            key("key_path")
        ))
    } else if lower.contains("expired") {
        Some("a certificate has expired (check its dates, and this machine's clock)".to_owned())
    } else if lower.contains("notvalidforname") || lower.contains("not valid for name") {
        Some(
            "the server's certificate does not name this host: use a name it holds in the URL"
                .to_owned(),
        )
    } else if lower.contains("badcertificate")
        || lower.contains("bad certificate")
        || lower.contains("unknownca")
        || lower.contains("unknown ca")
        || lower.contains("decrypterror")
    {
        Some(format!(
            "the server refused the client certificate: check {} and {}",
            key("cert_path"),
            key("key_path")
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates_and_is_capped() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            parse_retry_after(" 7 ", now),
            Some(RetryAfter {
                asked: Duration::from_secs(7),
                wait: Duration::from_secs(7)
            })
        );
        let huge = parse_retry_after("1000000000", now).expect("seconds");
        assert_eq!(huge.wait, MAX_RETRY_AFTER);
        assert!(huge.was_capped());
        let date = httpdate::fmt_http_date(now + Duration::from_secs(42));
        assert_eq!(
            parse_retry_after(&date, now).map(|r| r.wait),
            Some(Duration::from_secs(42))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(42));
        assert_eq!(
            parse_retry_after(&past, now).map(|r| r.wait),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn tls_hints_name_the_key() {
        let hint = tls_hint(
            "error sending request: invalid peer certificate: UnknownIssuer",
            Some("crowdsec"),
        )
        .expect("a hint");
        assert!(hint.contains("crowdsec.ca_cert_path"), "{hint}");
        let hint = tls_hint(
            "received fatal alert: CertificateRequired",
            Some("crowdsec"),
        )
        .expect("a hint");
        assert!(hint.contains("crowdsec.cert_path"), "{hint}");
        assert!(tls_hint("connection refused", Some("crowdsec")).is_none());
    }

    #[test]
    fn quotes_are_short_and_printable() {
        let text = quote(&format!("a\nb{}", "x".repeat(1000)));
        assert_eq!(text.chars().count(), 200);
        assert!(text.starts_with("a b"));
    }
}
