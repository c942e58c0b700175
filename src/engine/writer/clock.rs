//! When to poll a bulk operation: the first poll learned from the operations so far
//! ([`OpClock`]), later ones every [`NEXT_POLL`] while writes wait, else on a growing
//! interval (ARCHITECTURE.md, "Polling bulk operations").

use std::time::Duration;

/// After a first poll that found the operation pending, the next waits start here and
/// grow by [`POLL_GROWTH`] up to [`MAX_POLL`] (while writes wait behind the operation,
/// they stay here for a while). The first wait is learned: [`OpClock`].
pub(super) const NEXT_POLL: Duration = Duration::from_millis(150);
pub(super) const POLL_GROWTH: f64 = 1.5;
pub(super) const MAX_POLL: Duration = Duration::from_secs(2);

/// When to poll a bulk operation first, learned from the operations so far. One status
/// poll per operation is the floor; polling too early wastes requests, too late keeps
/// the next write waiting. Two aims track quantiles of the operations' durations, each
/// moving a little earlier each time an operation was done by it and a little later
/// each time one was not, so that it settles where its share of operations is still
/// pending:
///
/// - the late aim ([`LATE_PENDING_SHARE`]: a fifth still pending, the next poll
///   [`NEXT_POLL`] later finds nearly all done), for an operation nothing waits behind:
///   about 1.27 polls an operation with operations of 0.3–1.2 s;
/// - the early aim ([`EARLY_PENDING_SHARE`]: half still pending, then a poll every
///   [`NEXT_POLL`]), while writes wait behind the operation: each poll it saves them is
///   time they spend waiting. About twice the polls, and an operation seen done half as
///   late.
///
/// An operation seen done far beyond an aim (operations grew, e.g. with larger batches)
/// moves that aim there at once.
#[derive(Debug)]
pub(in crate::engine) struct OpClock {
    late: Aim,
    early: Aim,
}

/// One learned quantile of the operations' durations.
#[derive(Debug, Clone, Copy)]
struct Aim {
    at: Duration,
    /// The share of operations still pending at `at` that it settles at.
    pending_share: f64,
}

/// Before any operation was seen: one second, as Cloudflare's own Go SDK first waits.
const FIRST_POLL_START: Duration = Duration::from_secs(1);
const FIRST_POLL_MIN: Duration = Duration::from_millis(100);
const FIRST_POLL_MAX: Duration = Duration::from_secs(10);
/// The share of operations still pending at their first poll that the late aim settles at.
const LATE_PENDING_SHARE: f64 = 0.2;
/// … and the early aim.
const EARLY_PENDING_SHARE: f64 = 0.5;
/// How far one operation moves an aim (relative): `STEP × (1 − share)` later for a
/// pending one, `STEP × share` earlier for one done.
const STEP: f64 = 0.1;
/// An operation seen done beyond this multiple of an aim moves the aim to when it was
/// seen done.
const JUMP: f64 = 1.5;
/// A poll sent this close after an aim counts as sent at it (timers run a little late).
const AT_AIM: Duration = Duration::from_millis(25);

/// What the polls of one operation showed: when the last poll that found it pending
/// was sent, and when the one that found it done was.
#[derive(Debug, Clone, Copy)]
pub(in crate::engine) struct Polled {
    pub last_pending: Option<Duration>,
    pub done: Duration,
}

impl Default for OpClock {
    fn default() -> OpClock {
        OpClock {
            late: Aim {
                at: FIRST_POLL_START,
                pending_share: LATE_PENDING_SHARE,
            },
            early: Aim {
                at: FIRST_POLL_START.mul_f64(0.75),
                pending_share: EARLY_PENDING_SHARE,
            },
        }
    }
}

impl OpClock {
    /// The first poll of an operation nothing waits behind.
    pub(in crate::engine) fn first_poll(&self) -> Duration {
        self.late.at
    }

    /// The first poll of an operation writes wait behind (never after [`Self::first_poll`]).
    pub(in crate::engine) fn early_poll(&self) -> Duration {
        self.early.at.min(self.late.at)
    }

    pub(in crate::engine) fn learn(&mut self, polled: Polled) {
        let before = self.late.at;
        if self.late.learn(polled, true) {
            // Operations grew: the early aim moves with the late one. (On its own, the
            // longer half of ordinary operations would make it jump.)
            let grown = self.late.at.as_secs_f64() / before.as_secs_f64();
            self.early.at = self
                .early
                .at
                .mul_f64(grown)
                .clamp(FIRST_POLL_MIN, FIRST_POLL_MAX);
        } else {
            self.early.learn(polled, false);
        }
    }
}

impl Aim {
    /// Moves the aim by what one operation's polls showed; with `jump`, to when it was
    /// seen done if that is far beyond (then returns true).
    fn learn(&mut self, polled: Polled, jump: bool) -> bool {
        let Polled { last_pending, done } = polled;
        // How likely the operation was done by the aim: certain when a poll at or after
        // it saw it done, or one at or after it saw it pending; between a pending poll
        // before the aim and a done one after it, in proportion (an end anywhere between
        // them as likely).
        let from = last_pending.unwrap_or(Duration::ZERO);
        let done_by_aim = if done <= self.at + AT_AIM {
            1.0
        } else if from + AT_AIM >= self.at {
            0.0
        } else {
            ((self.at - from).as_secs_f64() / (done - from).as_secs_f64()).clamp(0.0, 1.0)
        };
        let jumped = jump && done_by_aim == 0.0 && done > self.at.mul_f64(JUMP);
        let aim = if jumped {
            done
        } else {
            // Done: `STEP × share` earlier; pending: `STEP × (1 − share)` later; weighed.
            self.at
                .mul_f64(1.0 + STEP * ((1.0 - self.pending_share) - done_by_aim))
        };
        self.at = aim.clamp(FIRST_POLL_MIN, FIRST_POLL_MAX);
        jumped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `n` operations whose durations `took` draws through `clock` as the writer
    /// polls them (first poll learned, later ones at [`NEXT_POLL`], growing); returns the
    /// polls per operation and the mean time from an operation's end to the poll that
    /// saw it.
    fn simulate(clock: &mut OpClock, n: u32, took: impl FnMut() -> Duration) -> (f64, f64) {
        simulate_as(clock, n, false, took)
    }

    /// [`simulate`], with writes waiting behind every operation when `behind`: the early
    /// aim, then a poll every [`NEXT_POLL`], as the writer polls then.
    fn simulate_as(
        clock: &mut OpClock,
        n: u32,
        behind: bool,
        mut took: impl FnMut() -> Duration,
    ) -> (f64, f64) {
        let (mut polls, mut late) = (0u32, Duration::ZERO);
        for _ in 0..n {
            let took = took();
            let first = if behind {
                clock.early_poll()
            } else {
                clock.first_poll()
            };
            let (mut at, mut step, mut k) = (first, NEXT_POLL, 1);
            let mut last_pending = None;
            while at < took {
                last_pending = Some(at);
                at += step;
                if !behind {
                    step = step.mul_f64(POLL_GROWTH).min(MAX_POLL);
                }
                k += 1;
            }
            polls += k;
            late += at - took;
            clock.learn(Polled {
                last_pending,
                done: at,
            });
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
    fn with_writes_waiting_the_polls_come_earlier_and_see_operations_done_sooner() {
        let mut clock = OpClock::default();
        let mut rng = fastrand::Rng::with_seed(11);
        let mut draw = || Duration::from_millis(rng.u64(300..=1200));
        // Mixed: the late aim still settles where it did, learning from both kinds.
        for round in 0..4000 {
            simulate_as(&mut clock, 1, round % 2 == 0, &mut draw);
        }
        let (early, late) = (clock.early_poll(), clock.first_poll());
        assert!(
            (Duration::from_millis(650)..=Duration::from_millis(850)).contains(&early),
            "early aim {early:?}"
        );
        assert!(
            (Duration::from_millis(900)..=Duration::from_millis(1150)).contains(&late),
            "late aim {late:?}"
        );
        let (per_op, seen_late) = simulate_as(&mut clock, 4000, true, &mut draw);
        let (idle_per_op, idle_late) = simulate_as(&mut clock, 4000, false, &mut draw);
        assert!(
            seen_late < 0.6 * idle_late,
            "{seen_late:.3} s against {idle_late:.3} s"
        );
        assert!(
            per_op < 2.5 && idle_per_op < 1.3,
            "{per_op} and {idle_per_op} polls"
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
        // The early aim came along: writes waiting behind are not polled for every
        // 150 ms from the old aim on.
        assert!(
            clock.early_poll() >= Duration::from_secs(2),
            "{:?}",
            clock.early_poll()
        );
        // And back, shorter again: the aim comes down a little with each.
        let before = clock.first_poll();
        simulate(&mut clock, 50, || Duration::from_millis(rng.u64(300..=600)));
        assert!(clock.first_poll() < before.mul_f64(0.5));
    }
}
