//! The global API rate limit (docs/cloudflare-lists.md §4.4): a fixed window, 300 s by default
//! ([`super::Settings::rate_limit_window`]), per account. Once the window's budget is spent,
//! every request is refused until the window ends ("all API calls for the next five minutes
//! will be blocked").

use std::collections::HashMap;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use tokio::time::Instant;

/// Outcome of counting one request against the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Served; `remaining` requests left, window resets in `reset` seconds.
    Allowed { remaining: u32, reset: u64 },
    /// Refused with 429; `Retry-After` = seconds left in the window.
    Limited { retry_after: u64 },
}

/// A fixed-window request counter; the window opens on the first request.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    limit: u32,
    window: Duration,
    window_start: Option<Instant>,
    used: u32,
}

impl RateLimiter {
    /// `window` is clamped to at least 1 ms so that it always ends.
    pub(crate) fn new(limit: u32, window: Duration) -> RateLimiter {
        RateLimiter {
            limit,
            window: window.max(Duration::from_millis(1)),
            window_start: None,
            used: 0,
        }
    }

    /// Counts one request at `now`.
    pub(crate) fn check(&mut self, now: Instant) -> Verdict {
        let start = match self.window_start {
            Some(start) if now < start + self.window => start,
            _ => {
                self.used = 0;
                self.window_start = Some(now);
                now
            }
        };
        self.used = self.used.saturating_add(1);
        let reset = ceil_secs((start + self.window).saturating_duration_since(now));
        if self.used > self.limit {
            Verdict::Limited {
                retry_after: reset.max(1),
            }
        } else {
            Verdict::Allowed {
                remaining: self.limit - self.used,
                reset,
            }
        }
    }
}

/// Most tokens counted apart; requests with any further token share one window, so a
/// flood of made-up tokens cannot grow the map.
const MAX_TOKENS: usize = 1024;

/// The global limit counted per API token, as Cloudflare counts it
/// (docs/cloudflare-lists.md §4.4): each token presented (valid or not) has its own
/// window of `limit` requests.
#[derive(Debug)]
pub(crate) struct TokenLimits {
    limit: u32,
    window: Duration,
    tokens: HashMap<String, RateLimiter>,
}

impl TokenLimits {
    pub(crate) fn new(limit: u32, window: Duration) -> TokenLimits {
        TokenLimits {
            limit,
            window,
            tokens: HashMap::new(),
        }
    }

    /// Counts one request made with `token` (`""` without one) at `now`.
    pub(crate) fn check(&mut self, token: &str, now: Instant) -> Verdict {
        let key = if self.tokens.contains_key(token) || self.tokens.len() < MAX_TOKENS {
            token
        } else {
            ""
        };
        let (limit, window) = (self.limit, self.window);
        self.tokens
            .entry(key.to_owned())
            .or_insert_with(|| RateLimiter::new(limit, window))
            .check(now)
    }

    pub(crate) fn limit(&self) -> u32 {
        self.limit
    }

    /// The window in whole seconds (rounded up), as the headers and message state it.
    pub(crate) fn window_secs(&self) -> u64 {
        ceil_secs(self.window.max(Duration::from_millis(1)))
    }
}

fn ceil_secs(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

/// The message of the global 429 (observed, docs/cloudflare-lists.md §4.4), for `limit` requests
/// per `window`.
pub(crate) fn limited_message(limit: u32, window_secs: u64) -> String {
    format!(
        "More than {limit} requests per {window_secs} seconds reached. Please wait and consider throttling your request speed"
    )
}

/// Adds `Ratelimit` and `Ratelimit-Policy` (docs/cloudflare-lists.md §4.4: "always returned").
pub(crate) fn add_headers(headers: &mut HeaderMap, limit: u32, window_secs: u64, verdict: Verdict) {
    let (remaining, reset) = match verdict {
        Verdict::Allowed { remaining, reset } => (remaining, reset),
        Verdict::Limited { retry_after } => (0, retry_after),
    };
    let pairs = [
        ("ratelimit", format!("\"default\";r={remaining};t={reset}")),
        (
            "ratelimit-policy",
            format!("\"default\";q={limit};w={window_secs}"),
        ),
    ];
    for (name, value) in pairs {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_token_has_its_own_window() {
        let t0 = Instant::now();
        let mut limits = TokenLimits::new(2, Duration::from_secs(60));
        assert!(matches!(
            limits.check("a", t0),
            Verdict::Allowed { remaining: 1, .. }
        ));
        assert!(matches!(
            limits.check("a", t0),
            Verdict::Allowed { remaining: 0, .. }
        ));
        assert!(matches!(limits.check("a", t0), Verdict::Limited { .. }));
        // Another token still has its whole quota.
        assert!(matches!(
            limits.check("b", t0),
            Verdict::Allowed { remaining: 1, .. }
        ));
    }

    #[test]
    fn window_blocks_then_reopens() {
        let t0 = Instant::now();
        let window = Duration::from_secs(300);
        let mut limiter = RateLimiter::new(2, window);
        assert_eq!(
            limiter.check(t0),
            Verdict::Allowed {
                remaining: 1,
                reset: 300
            }
        );
        assert_eq!(
            limiter.check(t0),
            Verdict::Allowed {
                remaining: 0,
                reset: 300
            }
        );
        let later = t0 + Duration::from_millis(100_500);
        assert_eq!(limiter.check(later), Verdict::Limited { retry_after: 200 });
        let next_window = t0 + window;
        assert_eq!(
            limiter.check(next_window),
            Verdict::Allowed {
                remaining: 1,
                reset: 300
            }
        );
    }
}
