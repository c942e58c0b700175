//! Wall-clock timestamps derived from `tokio::time::Instant`, so that `created_on`,
//! `modified_on` and `completed` stay consistent with the (possibly paused) tokio clock that
//! drives operation deadlines and the rate-limit window.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Maps tokio instants to RFC 3339 UTC strings.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    wall_base: Duration,
    mono_base: Instant,
}

impl Clock {
    pub(crate) fn new() -> Clock {
        let wall_base = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Clock {
            wall_base,
            mono_base: Instant::now(),
        }
    }

    /// `at` as seconds since the Unix epoch (for timelines a script lines up with its own).
    pub(crate) fn unix_secs(&self, at: Instant) -> f64 {
        (self.wall_base + at.saturating_duration_since(self.mono_base)).as_secs_f64()
    }

    /// `at` as e.g. `2021-10-01T05:20:00.123456Z` (the docs' examples use fractional seconds).
    pub(crate) fn rfc3339(&self, at: Instant) -> String {
        let since_epoch = self.wall_base + at.saturating_duration_since(self.mono_base);
        let secs = since_epoch.as_secs();
        let micros = since_epoch.subsec_micros();
        let (year, month, day) = civil_from_days(secs / 86_400);
        let rem = secs % 86_400;
        let (hour, minute, second) = (rem / 3600, rem % 3600 / 60, rem % 60);
        format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{micros:06}Z")
    }
}

/// Days since 1970-01-01 to (year, month, day); Howard Hinnant's `civil_from_days`,
/// restricted to dates after the epoch.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::civil_from_days;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
    }
}
