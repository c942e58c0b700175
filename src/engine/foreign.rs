//! Telling that another writer works on the same list (docs/hardening.md §5).
//!
//! Two bouncers on one list undo each other's work at every reconcile, and Cloudflare
//! refuses the writes of one while an operation of the other is pending. Neither is an
//! error on its own, so the writer feeds what it sees here, and a suspicion is raised
//! when the signs repeat: while it stands, the bouncer stops removing items (adds go on,
//! so no ban is lost) and says what to check.

use std::time::{Duration, Instant};

/// Signs needed within [`MEMORY`] to suspect another writer.
const SIGNS_TO_SUSPECT: usize = 2;
/// How long a sign counts; a suspicion ends this long after the last sign.
pub(super) const MEMORY: Duration = Duration::from_secs(30 * 60);

/// One thing only another writer explains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sign {
    /// A write was refused for a pending operation while none of ours could be pending.
    ForeignOperation,
    /// Items this bouncer added were gone again at the next read, the same ones twice.
    RepeatedDrift,
    /// Items with this bouncer's tag appeared that it did not write.
    ForeignTaggedItems,
}

impl Sign {
    fn describe(self) -> &'static str {
        match self {
            Sign::ForeignOperation => {
                "Cloudflare refused a write for a bulk operation this bouncer did not start"
            }
            Sign::RepeatedDrift => "items this bouncer added were removed again, twice over",
            Sign::ForeignTaggedItems => {
                "items carrying this bouncer's tag appeared that it did not write"
            }
        }
    }
}

/// What the writer has seen of other writers.
#[derive(Debug, Default)]
pub(super) struct ForeignWatch {
    signs: Vec<(Instant, Sign)>,
    /// The undone-items fingerprint of the last list read (desired items it held that
    /// are gone since), and whether this bouncer completed adds since.
    last_undone: u64,
    added_since_read: bool,
    /// An operation of ours may be pending (at start, a predecessor's may be too).
    own_op_uncertain: bool,
    suspected: bool,
}

/// A change in the suspicion, for the writer to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    Unchanged,
    /// Suspected now, with the reason.
    Suspected(String),
    Cleared,
}

impl ForeignWatch {
    /// At start nothing is known of operations a predecessor left pending.
    pub(super) fn new() -> ForeignWatch {
        ForeignWatch {
            own_op_uncertain: true,
            ..ForeignWatch::default()
        }
    }

    /// One of our operations completed: nothing of ours is pending any more.
    pub(super) fn own_operation_completed(&mut self, added: bool) {
        self.own_op_uncertain = false;
        self.added_since_read |= added;
    }

    /// One of our writes has an unknown outcome: what follows may be our own doing.
    pub(super) fn own_operation_uncertain(&mut self) {
        self.own_op_uncertain = true;
    }

    /// A write was refused because an operation is pending.
    pub(super) fn write_refused_for_pending(&mut self, now: Instant) -> Verdict {
        if self.own_op_uncertain {
            return self.judge(now);
        }
        self.sign(now, Sign::ForeignOperation)
    }

    /// A full list read: the fingerprint of the desired items the previous view held and
    /// this one lacks, and how many tagged items appeared unwritten.
    pub(super) fn list_read(
        &mut self,
        now: Instant,
        undone: u64,
        foreign_tagged: usize,
    ) -> Verdict {
        let repeated = undone != 0 && undone == self.last_undone && self.added_since_read;
        let uncertain = self.own_op_uncertain;
        self.last_undone = undone;
        self.added_since_read = false;
        if repeated {
            self.sign(now, Sign::RepeatedDrift)
        } else if foreign_tagged > 0 && !uncertain {
            self.sign(now, Sign::ForeignTaggedItems)
        } else {
            self.judge(now)
        }
    }

    fn sign(&mut self, now: Instant, sign: Sign) -> Verdict {
        self.signs.push((now, sign));
        self.judge(now)
    }

    /// Forgets old signs, and says whether the suspicion changed.
    pub(super) fn judge(&mut self, now: Instant) -> Verdict {
        self.signs
            .retain(|(at, _)| now.saturating_duration_since(*at) < MEMORY);
        let suspected = self.signs.len() >= SIGNS_TO_SUSPECT;
        let verdict = match (self.suspected, suspected) {
            (false, true) => {
                let mut reasons: Vec<&str> = self.signs.iter().map(|(_, s)| s.describe()).collect();
                reasons.dedup();
                Verdict::Suspected(reasons.join("; "))
            }
            (true, false) => Verdict::Cleared,
            _ => Verdict::Unchanged,
        };
        self.suspected = suspected;
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_sign_is_not_enough_and_two_are() {
        let now = Instant::now();
        let mut watch = ForeignWatch::new();
        // At start a predecessor's operation may be pending: no sign.
        assert_eq!(watch.write_refused_for_pending(now), Verdict::Unchanged);
        watch.own_operation_completed(true);
        assert_eq!(watch.write_refused_for_pending(now), Verdict::Unchanged);
        let verdict = watch.write_refused_for_pending(now);
        assert!(
            matches!(verdict, Verdict::Suspected(ref why) if why.contains("did not start")),
            "{verdict:?}"
        );
        assert_eq!(watch.judge(now + MEMORY), Verdict::Cleared);
    }

    #[test]
    fn the_same_drift_after_repairing_it_is_a_sign() {
        let now = Instant::now();
        let mut watch = ForeignWatch::new();
        watch.own_operation_completed(true);
        assert_eq!(watch.list_read(now, 42, 0), Verdict::Unchanged);
        // Not repaired in between: the same drift is no sign.
        assert_eq!(watch.list_read(now, 42, 0), Verdict::Unchanged);
        watch.own_operation_completed(true);
        assert_eq!(watch.list_read(now, 42, 0), Verdict::Unchanged);
        watch.own_operation_completed(true);
        assert!(matches!(watch.list_read(now, 42, 0), Verdict::Suspected(_)));
    }

    #[test]
    fn tagged_items_after_an_uncertain_write_are_ours() {
        let now = Instant::now();
        let mut watch = ForeignWatch::new();
        watch.own_operation_uncertain();
        assert_eq!(watch.list_read(now, 0, 5), Verdict::Unchanged);
        watch.own_operation_completed(false);
        assert_eq!(watch.list_read(now, 0, 5), Verdict::Unchanged);
        assert!(matches!(watch.list_read(now, 0, 5), Verdict::Suspected(_)));
    }
}
