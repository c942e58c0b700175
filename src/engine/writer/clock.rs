//! When to poll a bulk operation: the first poll learned from the operations so far
//! ([`OpClock`]), later ones on a growing interval.

use std::time::Duration;

/// After a first poll that found the operation pending, the next waits start here and
/// grow by [`POLL_GROWTH`] up to [`MAX_POLL`]. (The first wait is learned: [`OpClock`].)
/// The first poll sits near the end of most operations, so the next one follows closely.
pub(super) const NEXT_POLL: Duration = Duration::from_millis(150);
pub(super) const POLL_GROWTH: f64 = 1.5;
pub(super) const MAX_POLL: Duration = Duration::from_secs(2);

/// When to poll a bulk operation first, learned from the operations so far. One status
/// poll per operation is the floor; polling too early wastes requests, too late keeps
/// the next write waiting. The first poll tracks a quantile of the operations' durations:
/// it moves a little earlier each time an operation is already done at its first poll
/// and a little later each time one is not, so that it settles where
/// [`PENDING_SHARE`] of them are still pending (then the next poll, [`NEXT_POLL`]
/// later, finds nearly all done). An operation seen done far beyond the aim (operations
/// grew, e.g. with larger batches) moves the aim there at once.
///
/// With operations of 0.3–1.2 s this costs about 1.27 polls an operation and sees an
/// operation done 0.31 s after it ended on average; aiming at the longest recent
/// operation (1.23 polls) saw it 0.35 s after.
#[derive(Debug)]
pub(in crate::engine) struct OpClock {
    first_poll: Duration,
}

/// Before any operation was seen: one second, as Cloudflare's own Go SDK first waits.
const FIRST_POLL_START: Duration = Duration::from_secs(1);
const FIRST_POLL_MIN: Duration = Duration::from_millis(100);
const FIRST_POLL_MAX: Duration = Duration::from_secs(10);
/// The share of operations still pending at their first poll that the aim settles at.
const PENDING_SHARE: f64 = 0.2;
/// How far one operation moves the aim (relative): `STEP × (1 − PENDING_SHARE)` later
/// for a pending one, `STEP × PENDING_SHARE` earlier for one done.
const STEP: f64 = 0.1;
/// An operation seen done beyond this multiple of the aim moves the aim to when it was
/// seen done.
const JUMP: f64 = 1.5;

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
        let aim = if done_at_first_poll {
            self.first_poll.mul_f64(1.0 - STEP * PENDING_SHARE)
        } else if seen_done_after > self.first_poll.mul_f64(JUMP) {
            seen_done_after
        } else {
            self.first_poll.mul_f64(1.0 + STEP * (1.0 - PENDING_SHARE))
        };
        self.first_poll = aim.clamp(FIRST_POLL_MIN, FIRST_POLL_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `n` operations whose durations `took` draws through `clock` as the writer
    /// polls them (first poll learned, later ones at [`NEXT_POLL`], growing); returns the
    /// polls per operation and the mean time from an operation's end to the poll that
    /// saw it.
    fn simulate(clock: &mut OpClock, n: u32, mut took: impl FnMut() -> Duration) -> (f64, f64) {
        let (mut polls, mut late) = (0u32, Duration::ZERO);
        for _ in 0..n {
            let took = took();
            let (mut at, mut step, mut k) = (clock.first_poll(), NEXT_POLL, 1);
            while at < took {
                at += step;
                step = step.mul_f64(POLL_GROWTH).min(MAX_POLL);
                k += 1;
            }
            polls += k;
            late += at - took;
            clock.learn(k == 1, at);
        }
        (
            f64::from(polls) / f64::from(n),
            late.as_secs_f64() / f64::from(n),
        )
    }

    #[test]
    fn the_first_poll_settles_near_the_end_of_most_operations() {
        // Operations taking 0.3–1.2 s: the aim settles where a fifth are still pending,
        // and their next poll follows closely.
        let mut clock = OpClock::default();
        let mut rng = fastrand::Rng::with_seed(7);
        let (per_op, late) = simulate(&mut clock, 5000, || {
            Duration::from_millis(rng.u64(300..=1200))
        });
        // The requests target (writes + polls ≤ 1.2 × (writes + one poll each)) allows
        // 1.4 polls per operation; aim well under it.
        assert!(per_op < 1.3, "{per_op} polls per operation");
        // Aiming at the longest recent operation saw one done 0.35 s after its end.
        assert!(late < 0.33, "seen done {late:.3} s after the end");
        let aim = clock.first_poll();
        assert!(
            (Duration::from_millis(900)..=Duration::from_millis(1150)).contains(&aim),
            "{aim:?}"
        );
    }

    #[test]
    fn operations_that_grow_move_the_aim_at_once() {
        let mut clock = OpClock::default();
        let mut rng = fastrand::Rng::with_seed(3);
        simulate(&mut clock, 200, || {
            Duration::from_millis(rng.u64(300..=600))
        });
        assert!(clock.first_poll() < Duration::from_millis(600));
        // Ten times longer (batches grew): after a few, the first poll is there too.
        simulate(&mut clock, 3, || {
            Duration::from_millis(rng.u64(3000..=6000))
        });
        assert!(
            clock.first_poll() >= Duration::from_secs(3),
            "{:?}",
            clock.first_poll()
        );
        // And back, shorter again: the aim comes down a little with each.
        let before = clock.first_poll();
        simulate(&mut clock, 50, || Duration::from_millis(rng.u64(300..=600)));
        assert!(clock.first_poll() < before.mul_f64(0.5));
    }
}
