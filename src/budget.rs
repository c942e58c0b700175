//! Cloudflare's limits, respected on our side (docs/cloudflare-lists.md §4.3, §4.4):
//! a request budget every Cloudflare call waits on (`governor`, the configured ceiling),
//! paced further by what Cloudflare's own rate-limit headers say is left of the token's
//! quota ([`HeaderPace`]), and the list-write budgets over 12 hours, tracked and warned
//! about before they are hit.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::header::HeaderMap;
use tracing::debug;

/// Cloudflare: at most 30 000 list-write requests per 12 hours.
pub const WRITE_REQUESTS_PER_12H: u64 = 30_000;
/// Cloudflare: at most 1 000 000 list item changes per 12 hours.
pub const ITEM_CHANGES_PER_12H: u64 = 1_000_000;
const WINDOW: Duration = Duration::from_secs(12 * 3600);
/// Share of a 12-hour budget at which the bouncer starts warning.
const WARN_SHARE: f64 = 0.8;

/// The request budget shared by every Cloudflare call.
pub struct RequestBudget {
    limiter: DefaultDirectRateLimiter,
    clock: DefaultClock,
    /// How often the limiter earns one more request.
    interval: Duration,
    /// The limiter's burst: the most requests it ever has in hand.
    burst: u32,
    /// Requests of one paged read still to come, this one included, as the caller said
    /// before the next request ([`RequestBudget::lead`]); taken by that request.
    run: AtomicU32,
    pace: Mutex<HeaderPace>,
}

impl RequestBudget {
    /// `per_minute` requests a minute on average, with bursts of up to a quarter of it.
    pub fn new(per_minute: u32) -> RequestBudget {
        let per_minute = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(per_minute.get().div_ceil(4)).unwrap_or(NonZeroU32::MIN);
        let clock = DefaultClock::default();
        let quota = Quota::per_minute(per_minute).allow_burst(burst);
        RequestBudget {
            limiter: RateLimiter::direct_with_clock(quota, clock.clone()),
            clock,
            interval: quota.replenish_interval(),
            burst: burst.get(),
            run: AtomicU32::new(0),
            pace: Mutex::new(HeaderPace::default()),
        }
    }

    /// Says that the next request leads `requests` more of one paged read (itself
    /// included), to be sent back to back. When it has to wait for the budget, it waits
    /// until all of them fit (at most a burst's worth), and the rest then go at once.
    ///
    /// The same rate, a fraction of the wake-ups: past the burst, a read of 200 pages at
    /// 240 a minute wakes 3 times, not 140, and each wake-up of an idle process costs
    /// about half a millisecond of CPU (cold caches, the runtime waking). The read ends
    /// when it would have one page at a time, since its last group is what is left; the
    /// pages before it are only read later. A wait is at most a burst's worth of
    /// intervals: 15 s whatever the rate.
    pub fn lead(&self, requests: u64) {
        let requests = u32::try_from(requests).unwrap_or(u32::MAX);
        self.run.store(requests, Ordering::Relaxed);
    }

    /// Waits until one more request fits in the budget: the configured rate first, then
    /// the pace the last rate-limit headers call for.
    ///
    /// Waits on tokio's timer, not governor's `until_ready` (whose timer is a thread of
    /// its own, woken and waking a worker for every wait).
    pub async fn acquire(&self) {
        // Whether this request leads a group of a paged read: then it waits until the
        // whole group fits (the limiter earns one every interval), and takes one.
        let group = self.run.swap(0, Ordering::Relaxed).clamp(1, self.burst);
        while let Err(not_until) = self.limiter.check() {
            let rest = self.interval * (group - 1);
            tokio::time::sleep(not_until.wait_time_from(self.clock.now()) + rest).await;
        }
        let delay = self.pace().next_request(Instant::now());
        if !delay.is_zero() {
            debug!(
                wait_ms = delay.as_millis() as u64,
                "pacing by Cloudflare's rate-limit headers"
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// Takes in an answer's rate-limit headers (`status` for a 429's `Retry-After`).
    pub fn observe(&self, status: u16, headers: &HeaderMap) {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let now = Instant::now();
        let seen = match (header("ratelimit"), status) {
            (Some(limit), _) => parse_ratelimit(limit, header("ratelimit-policy")),
            // Without the headers, a 429's Retry-After says the quota is spent.
            (None, 429) => crate::net::retry_after(headers).map(|after| Seen {
                remaining: 0,
                reset: after.wait,
                quota: None,
            }),
            (None, _) => None,
        };
        if let Some(seen) = seen {
            self.pace().observe(seen, now);
        }
    }

    fn pace(&self) -> std::sync::MutexGuard<'_, HeaderPace> {
        self.pace
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What one answer's headers said of the token's quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// `r`: requests left in the window.
    pub remaining: u32,
    /// `t`: until the window resets.
    pub reset: Duration,
    /// `q` of the matching `Ratelimit-Policy`, when given.
    pub quota: Option<u32>,
}

/// Parses `Ratelimit: "default";r=50;t=30` (several comma-separated limits: the one with
/// the fewest requests left) and the `q` of the `Ratelimit-Policy` of the same name.
pub fn parse_ratelimit(limit: &str, policy: Option<&str>) -> Option<Seen> {
    let params = |entry: &str| {
        let mut parts = entry.split(';').map(str::trim);
        let name = parts
            .next()
            .unwrap_or_default()
            .trim_matches('"')
            .to_owned();
        let mut values = [None, None, None, None];
        for part in parts {
            if let Some((key, value)) = part.split_once('=') {
                let slot = match key.trim() {
                    "r" => 0,
                    "t" => 1,
                    "q" => 2,
                    "w" => 3,
                    _ => continue,
                };
                values[slot] = value.trim().parse::<u64>().ok();
            }
        }
        (name, values)
    };
    let (name, values) = limit
        .split(',')
        .map(params)
        .filter(|(_, v)| v[0].is_some() && v[1].is_some())
        .min_by_key(|(_, v)| v[0])?;
    let quota = policy.and_then(|policy| {
        policy
            .split(',')
            .map(params)
            .find(|(policy_name, _)| *policy_name == name)
            .and_then(|(_, v)| v[2])
    });
    Some(Seen {
        remaining: u32::try_from(values[0]?).unwrap_or(u32::MAX),
        reset: Duration::from_secs(values[1]?.min(3600)),
        quota: quota.map(|q| u32::try_from(q).unwrap_or(u32::MAX)),
    })
}

/// Requests are paced once what the window would keep at its end, at the others' rate,
/// falls below this share of the quota; above it only the configured budget paces them.
const SLOW_BELOW_SHARE: f64 = 0.5;
/// Without a policy header: pace below this many requests left.
const SLOW_BELOW: f64 = 120.0;
/// Left for other clients of the same token: 2% of the quota, at least this many.
const RESERVE_MIN: u32 = 2;
/// The floor of progress: however little is left, one request at least this often. (It
/// also keeps a wait far inside the writer's wedge margin; a quota spent for longer is
/// met by Cloudflare's own `Retry-After`.)
const MAX_HOLD: Duration = Duration::from_secs(60);
/// The others' rate is measured over at least this long, so that a burst of theirs
/// (another bouncer's list read) is not taken for their pace.
const RATE_SPAN: Duration = Duration::from_secs(10);

/// Paces requests by the last `Ratelimit` header (docs/cloudflare-lists.md §4.4), which
/// counts every client of the token, not only this one. From how `r` falls beyond this
/// client's own requests it learns the others' rate; while the window would end with
/// more than half its quota left at that rate, it adds nothing. Below that, this
/// client's share of what is left (remaining, less what the others will take before the
/// reset, less a 2% reserve) is spread evenly over the time to the reset; with no share
/// left, it waits for the reset. Never longer than [`MAX_HOLD`] for one request.
#[derive(Debug, Default)]
pub struct HeaderPace {
    last: Option<(Seen, Instant)>,
    /// Requests let through since the last headers were seen.
    sent_since: u32,
    /// When the last request was let through (after its wait).
    last_sent: Option<Instant>,
    /// Where the others' rate is measured from: headers, when, and requests let through
    /// since.
    anchor: Option<(Seen, Instant, u32)>,
    /// The other clients' requests per second.
    others_per_s: f64,
}

impl HeaderPace {
    pub fn observe(&mut self, seen: Seen, now: Instant) {
        let mut anchor = self.anchor.unwrap_or((seen, now, 0));
        anchor.2 = anchor.2.saturating_add(self.sent_since);
        let (from, at, ours) = anchor;
        let same_window = now < at + from.reset && seen.remaining <= from.remaining;
        if !same_window {
            anchor = (seen, now, 0);
        } else if now.duration_since(at) >= RATE_SPAN {
            let others = (from.remaining - seen.remaining).saturating_sub(ours);
            self.others_per_s = f64::from(others) / now.duration_since(at).as_secs_f64();
            anchor = (seen, now, 0);
        }
        self.anchor = Some(anchor);
        self.last = Some((seen, now));
        self.sent_since = 0;
    }

    /// How long the request about to be sent at `now` waits; counts it as sent then.
    pub fn next_request(&mut self, now: Instant) -> Duration {
        let delay = self
            .spacing(now)
            .map_or(Duration::ZERO, |(spacing, seen_at)| {
                let next = self.last_sent.unwrap_or(seen_at) + spacing;
                next.saturating_duration_since(now)
            });
        self.sent_since = self.sent_since.saturating_add(1);
        self.last_sent = Some(now + delay);
        delay
    }

    /// The spacing the last headers call for (and when they were seen), `None` when
    /// they call for none.
    fn spacing(&self, now: Instant) -> Option<(Duration, Instant)> {
        let (seen, at) = self.last?;
        let left = (at + seen.reset).checked_duration_since(now)?;
        if left.is_zero() {
            return None;
        }
        let elapsed = now.duration_since(at).as_secs_f64();
        let remaining =
            f64::from(seen.remaining) - f64::from(self.sent_since) - self.others_per_s * elapsed;
        let at_reset = remaining - self.others_per_s * left.as_secs_f64();
        let slow_below = seen
            .quota
            .map_or(SLOW_BELOW, |q| f64::from(q) * SLOW_BELOW_SHARE);
        if at_reset > slow_below {
            return None;
        }
        let reserve = seen
            .quota
            .map_or(RESERVE_MIN, |q| (q / 50).max(RESERVE_MIN));
        let share = at_reset - f64::from(reserve);
        let spacing = if share < 1.0 {
            left
        } else {
            left.div_f64(share)
        };
        Some((spacing.min(MAX_HOLD), at))
    }
}

/// List writes in the last 12 hours, for warnings and metrics.
#[derive(Debug, Default)]
pub struct WriteBudget {
    /// (when, items changed) of each write in the window, oldest first.
    writes: VecDeque<(Instant, u64)>,
    items: u64,
    warned: bool,
}

/// What a recorded write means for the budgets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteUsage {
    pub requests: u64,
    pub items: u64,
    /// Set once when usage crosses the warning share of a budget.
    pub warning: Option<String>,
}

impl WriteBudget {
    /// Records one write of `items` item changes at `now`.
    pub fn record(&mut self, items: u64, now: Instant) -> WriteUsage {
        while let Some(&(at, n)) = self.writes.front() {
            if now.duration_since(at) < WINDOW {
                break;
            }
            self.writes.pop_front();
            self.items -= n;
        }
        self.writes.push_back((now, items));
        self.items += items;
        let requests = self.writes.len() as u64;
        let high = requests as f64 >= WRITE_REQUESTS_PER_12H as f64 * WARN_SHARE
            || self.items as f64 >= ITEM_CHANGES_PER_12H as f64 * WARN_SHARE;
        let warning = match (high, self.warned) {
            (true, false) => Some(format!(
                "Cloudflare list-write budget nearly used: {requests} of {WRITE_REQUESTS_PER_12H} write \
                 requests and {} of {ITEM_CHANGES_PER_12H} item changes in the last 12 hours; \
                 decisions may churn too fast (consider a longer update_frequency or fewer origins)",
                self.items
            )),
            _ => None,
        };
        self.warned = high;
        WriteUsage {
            requests,
            items: self.items,
            warning,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(remaining: u32, reset_s: u64, quota: u32) -> Seen {
        Seen {
            remaining,
            reset: Duration::from_secs(reset_s),
            quota: Some(quota),
        }
    }

    #[test]
    fn parses_cloudflare_rate_limit_headers() {
        assert_eq!(
            parse_ratelimit("\"default\";r=50;t=30", Some("\"default\";q=1200;w=300")),
            Some(seen(50, 30, 1200))
        );
        // Several limits: the tightest; its policy by name.
        let parsed = parse_ratelimit(
            "\"burst\";r=80;t=20, \"default\";r=7;t=100",
            Some("\"burst\";q=100;w=60, \"default\";q=1200;w=300"),
        );
        assert_eq!(parsed, Some(seen(7, 100, 1200)));
        assert_eq!(
            parse_ratelimit("\"default\";r=5;t=9", None).map(|s| s.quota),
            Some(None)
        );
        for bad in ["", "default", "\"default\";r=x;t=3", "\"default\";t=3"] {
            assert_eq!(parse_ratelimit(bad, None), None, "{bad:?}");
        }
    }

    #[test]
    fn header_pace_adds_nothing_while_plenty_is_left() {
        let now = Instant::now();
        let mut pace = HeaderPace::default();
        assert_eq!(pace.next_request(now), Duration::ZERO, "no headers yet");
        pace.observe(seen(900, 200, 1200), now);
        for _ in 0..10 {
            assert_eq!(pace.next_request(now), Duration::ZERO);
        }
    }

    #[test]
    fn header_pace_slows_as_the_quota_falls_never_below_the_floor() {
        let now = Instant::now();
        let spacing_at = |remaining: u32| {
            let mut pace = HeaderPace::default();
            pace.observe(seen(remaining, 120, 1200), now);
            let first = pace.next_request(now);
            pace.next_request(now) - first
        };
        // Reserve 24: 120 s over 600 - 1 - 24, then fewer left, then only the reserve.
        let (half, low, spent) = (spacing_at(600), spacing_at(64), spacing_at(20));
        assert!(
            half > Duration::from_millis(150) && half < Duration::from_millis(300),
            "{half:?}"
        );
        assert!(
            low > Duration::from_secs(2) && low < Duration::from_secs(4),
            "{low:?}"
        );
        assert!(half < low && low < spent, "{half:?} {low:?} {spent:?}");
        assert_eq!(spent, MAX_HOLD, "the floor of progress");
        // Once the window has reset, nothing is held back.
        let mut pace = HeaderPace::default();
        pace.observe(seen(0, 10, 1200), now);
        assert_eq!(
            pace.next_request(now + Duration::from_secs(11)),
            Duration::ZERO
        );
    }

    #[test]
    fn header_pace_leaves_room_for_what_other_clients_take() {
        // 1 000 left, 200 s to the reset: plenty, alone.
        let t0 = Instant::now();
        let mut pace = HeaderPace::default();
        pace.observe(seen(1000, 200, 1200), t0);
        assert_eq!(pace.next_request(t0), Duration::ZERO);
        // 10 s later 929 left: 70 went to another client of the token, 7 a second. At
        // that rate it takes 7 × 190 = 1 330 before the reset: nothing is left for us, so
        // the next request waits, though r alone says plenty: MAX_HOLD after the last.
        let t1 = t0 + Duration::from_secs(10);
        pace.observe(seen(929, 190, 1200), t1);
        assert!(
            (pace.others_per_s - 7.0).abs() < 0.01,
            "{}",
            pace.others_per_s
        );
        assert_eq!(pace.next_request(t1), MAX_HOLD - Duration::from_secs(10));
        // A slower neighbour (1 a second): our share spread over the window.
        let mut pace = HeaderPace::default();
        pace.observe(seen(700, 100, 1200), t0);
        // A burst of 10 in a second is not yet a rate.
        pace.observe(seen(690, 99, 1200), t0 + Duration::from_secs(1));
        assert!(pace.others_per_s.abs() < f64::EPSILON);
        pace.observe(seen(690, 90, 1200), t1);
        let first = pace.next_request(t1);
        let spacing = pace.next_request(t1) - first;
        // (690 - 1 - 90 - 24) ≈ 575 requests over 90 s.
        assert!(
            spacing > Duration::from_millis(150) && spacing < Duration::from_millis(200),
            "{spacing:?}"
        );
    }

    #[test]
    fn header_pace_counts_its_own_requests_until_new_headers_come() {
        let now = Instant::now();
        let mut pace = HeaderPace::default();
        // Just above the line: the first requests pass, then its own count pulls it under.
        pace.observe(seen(602, 300, 1200), now);
        assert_eq!(pace.next_request(now), Duration::ZERO);
        assert_eq!(pace.next_request(now), Duration::ZERO);
        assert!(pace.next_request(now) > Duration::ZERO);
        pace.observe(seen(1100, 300, 1200), now);
        assert_eq!(
            pace.next_request(now + Duration::from_secs(1)),
            Duration::ZERO
        );
    }

    #[test]
    fn a_429_without_headers_holds_requests_until_retry_after() {
        let budget = RequestBudget::new(240);
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", "7".parse().unwrap());
        budget.observe(429, &headers);
        let wait = budget.pace().next_request(Instant::now());
        wait.checked_sub(Duration::from_secs(6)).expect("about 7 s");
        // A success without headers changes nothing.
        budget.observe(200, &HeaderMap::new());
        assert!(budget.pace().last.is_some());
    }

    #[test]
    fn write_budget_slides_over_twelve_hours_and_warns_once() {
        let mut budget = WriteBudget::default();
        let start = Instant::now();
        let first = budget.record(500_000, start);
        assert_eq!(
            (first.requests, first.items, first.warning),
            (1, 500_000, None)
        );
        let second = budget.record(400_000, start + Duration::from_secs(60));
        assert!(second.warning.is_some(), "900k of 1M items is past 80%");
        let third = budget.record(1, start + Duration::from_secs(120));
        assert_eq!(third.warning, None, "warned once");
        let later = budget.record(1, start + WINDOW + Duration::from_secs(61));
        assert_eq!(
            (later.requests, later.items),
            (2, 2),
            "old writes left the window"
        );
        assert_eq!(later.warning, None);
    }

    #[tokio::test]
    async fn a_paged_read_past_the_burst_goes_in_groups() {
        // 1200 a minute: one every 50 ms, bursts of 300.
        let budget = RequestBudget::new(1200);
        for _ in 0..300 {
            budget.acquire().await;
        }
        // The burst is spent: the first of the last 8 pages waits until all 8 fit...
        let lead = Instant::now();
        budget.lead(8);
        budget.acquire().await;
        let waited = lead.elapsed();
        assert!(
            waited >= Duration::from_millis(300),
            "the group's first waits for 8 × 50 ms, not 50 ms: {waited:?}"
        );
        // ...and the other 7 go at once (one at a time: 7 × 50 ms).
        let rest = Instant::now();
        for left in (1..8).rev() {
            budget.lead(left);
            budget.acquire().await;
        }
        assert!(
            rest.elapsed() < Duration::from_millis(200),
            "the group's other 7 went at once: {:?}",
            rest.elapsed()
        );
        // A request that leads nothing waits one interval.
        let single = Instant::now();
        budget.acquire().await;
        assert!(single.elapsed() < Duration::from_millis(200));
    }

    #[tokio::test]
    async fn request_budget_allows_a_burst_then_paces() {
        // governor keeps real time: 120 a minute is one every 500 ms, bursts of 30.
        let budget = RequestBudget::new(120);
        let burst = Instant::now();
        for _ in 0..30 {
            budget.acquire().await;
        }
        assert!(
            burst.elapsed() < Duration::from_millis(250),
            "the burst goes at once"
        );
        let paced = Instant::now();
        budget.acquire().await;
        assert!(
            paced.elapsed() >= Duration::from_millis(300),
            "the 31st request waits"
        );
        // On tokio's timer: no timer thread of governor's (futures-timer) was started.
        let threads = std::fs::read_dir("/proc/self/task").unwrap();
        let names: Vec<String> = threads
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
            .collect();
        assert!(!names.is_empty());
        assert!(
            !names.iter().any(|name| name.trim() == "futures-timer"),
            "{names:?}"
        );
    }
}
