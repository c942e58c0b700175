//! When to poll a bulk operation: the first poll learned from the operations so far
//! ([`OpClock`]), later ones on a growing interval.

use std::time::Duration;

/// After a first poll that found the operation pending, the next waits start here and
/// grow by [`POLL_GROWTH`] up to [`MAX_POLL`]. (The first wait is learned: [`OpClock`].)
pub(super) const NEXT_POLL: Duration = Duration::from_millis(100);
pub(super) const POLL_GROWTH: f64 = 1.5;
pub(super) const MAX_POLL: Duration = Duration::from_secs(2);
/// When to poll a bulk operation first, learned from the operations so far. One status
/// poll per operation is the floor; polling too early wastes requests, too late adds
/// latency. The first poll aims at the longest recent operation: when an operation is
/// already done at its first poll, the aim moves 3% earlier; when it is still pending,
/// the aim moves to when it was seen done.
#[derive(Debug)]
pub(in crate::engine) struct OpClock {
    first_poll: Duration,
}

/// Before any operation was seen: one second, as Cloudflare's own Go SDK first waits.
const FIRST_POLL_START: Duration = Duration::from_secs(1);
const FIRST_POLL_MIN: Duration = Duration::from_millis(100);
const FIRST_POLL_MAX: Duration = Duration::from_secs(10);

impl Default for OpClock {
    fn default() -> OpClock {
        OpClock {
            first_poll: FIRST_POLL_START,
        }
    }
}

impl OpClock {
    pub(in crate::engine) fn first_poll(&self) -> Duration {
        self.first_poll
    }

    pub(in crate::engine) fn learn(&mut self, done_at_first_poll: bool, seen_done_after: Duration) {
        self.first_poll = if done_at_first_poll {
            self.first_poll.mul_f64(0.97).max(FIRST_POLL_MIN)
        } else {
            seen_done_after.clamp(FIRST_POLL_MIN, FIRST_POLL_MAX)
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_poll_settles_near_the_longest_operations() {
        // Operations taking 0.3–1.2 s: the aim climbs to the slow ones, then drifts down
        // while they are done in time, and most operations need one poll.
        let mut clock = OpClock::default();
        let mut rng = fastrand::Rng::with_seed(7);
        let mut polls = 0;
        for _ in 0..1000 {
            let took = Duration::from_millis(rng.u64(300..=1200));
            let first = clock.first_poll();
            if took <= first {
                polls += 1;
                clock.learn(true, first);
            } else {
                // Later polls at 100 ms, 150 ms, ...: seen done a little after it was.
                let (mut at, mut step, mut n) = (first, NEXT_POLL, 1);
                while at < took {
                    at += step;
                    step = step.mul_f64(POLL_GROWTH);
                    n += 1;
                }
                polls += n;
                clock.learn(false, at);
            }
        }
        // The requests target (writes + polls ≤ 1.2 × (writes + one poll each)) allows
        // 1.4 polls per operation; aim well under it.
        let per_op = f64::from(polls) / 1000.0;
        assert!(per_op < 1.3, "{per_op} polls per operation");
        assert!(
            clock.first_poll() <= Duration::from_millis(1500),
            "{:?}",
            clock.first_poll()
        );
    }
}
