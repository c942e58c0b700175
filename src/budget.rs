//! Cloudflare's limits, respected on our side (docs/cloudflare-lists.md §4.3, §4.4):
//! a request budget every Cloudflare call waits on (`governor`), and the list-write
//! budgets over 12 hours, tracked and warned about before they are hit.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

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
}

impl RequestBudget {
    /// `per_minute` requests a minute on average, with bursts of up to a quarter of it.
    pub fn new(per_minute: u32) -> RequestBudget {
        let per_minute = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(per_minute.get().div_ceil(4)).unwrap_or(NonZeroU32::MIN);
        RequestBudget {
            limiter: RateLimiter::direct(Quota::per_minute(per_minute).allow_burst(burst)),
        }
    }

    /// Waits until one more request fits in the budget.
    pub async fn acquire(&self) {
        self.limiter.until_ready().await;
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
    }
}
