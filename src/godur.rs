//! Go `time.Duration` strings, as LAPI writes them (`3h59m54.447176566s`, `-8.995662ms`,
//! `1.5µs`, `0s`) and as our config accepts them (`10s`, `15m`, `1h30m`, `500ms`).
//!
//! The grammar is Go's `time.ParseDuration`: an optional sign, then one or more
//! `<decimal><unit>` terms, units `ns us µs μs ms s m h`; a bare `0` is allowed.

use std::fmt;
use std::time::Duration;

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error("invalid duration {0:?}: expected terms like 10s, 15m, 1h30m or 500ms")]
    Syntax(String),
    #[error("invalid duration {0:?}: unknown unit (use ns, us, µs, ms, s, m or h)")]
    Unit(String),
    #[error("invalid duration {0:?}: out of range")]
    Overflow(String),
    #[error("invalid duration {0:?}: must not be negative")]
    Negative(String),
}

/// Parses a Go duration into signed nanoseconds (Go's own representation).
///
/// # Errors
/// Returns [`DurationError`] for anything `time.ParseDuration` would refuse.
pub fn parse_nanos(text: &str) -> Result<i64, DurationError> {
    let (negative, mut rest) = match text.as_bytes().first() {
        None => return Err(DurationError::Empty),
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        Some(_) => (false, text),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(DurationError::Syntax(text.to_owned()));
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let (nanos, tail) = parse_term(rest).ok_or_else(|| classify(text, rest))?;
        total = total
            .checked_add(nanos)
            .ok_or_else(|| DurationError::Overflow(text.to_owned()))?;
        rest = tail;
    }
    // Go allows exactly i64::MIN nanoseconds for negative values.
    let limit = if negative {
        1u128 << 63
    } else {
        (1u128 << 63) - 1
    };
    if total > limit {
        return Err(DurationError::Overflow(text.to_owned()));
    }
    let total = total as i128;
    Ok((if negative { -total } else { total }) as i64)
}

/// Parses a non-negative duration, as used in configuration files.
///
/// # Errors
/// Refuses negative durations on top of [`parse_nanos`]'s errors.
pub fn parse_std(text: &str) -> Result<Duration, DurationError> {
    let nanos = parse_nanos(text)?;
    if nanos < 0 {
        return Err(DurationError::Negative(text.to_owned()));
    }
    Ok(Duration::from_nanos(nanos as u64))
}

/// Formats a duration the short way an operator writes it (`10s`, `1m30s`, `250ms`).
pub fn format(duration: Duration) -> impl fmt::Display {
    struct Short(Duration);
    impl fmt::Display for Short {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let total_ms = self.0.as_millis();
            if total_ms == 0 {
                return write!(f, "0s");
            }
            let (h, m, s, ms) = (
                total_ms / 3_600_000,
                total_ms / 60_000 % 60,
                total_ms / 1000 % 60,
                total_ms % 1000,
            );
            if h > 0 {
                write!(f, "{h}h")?;
            }
            if m > 0 {
                write!(f, "{m}m")?;
            }
            match (s, ms) {
                (0, 0) => Ok(()),
                (s, 0) => write!(f, "{s}s"),
                (0, ms) if h == 0 && m == 0 => write!(f, "{ms}ms"),
                (s, ms) => write!(f, "{s}.{ms:03}s"),
            }
        }
    }
    Short(duration)
}

/// Parses one `<decimal><unit>` term; returns its nanoseconds and the rest of the input.
fn parse_term(input: &str) -> Option<(u128, &str)> {
    let bytes = input.as_bytes();
    let int_end = bytes
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(bytes.len());
    let (int_part, mut rest) = input.split_at(int_end);
    let mut frac_part = "";
    if let Some(after_dot) = rest.strip_prefix('.') {
        let frac_end = after_dot
            .bytes()
            .position(|b| !b.is_ascii_digit())
            .unwrap_or(after_dot.len());
        (frac_part, rest) = after_dot.split_at(frac_end);
    }
    if int_part.is_empty() && frac_part.is_empty() {
        return None;
    }
    // Digits and `.` are ASCII: a byte position is a char boundary.
    let unit_end = rest
        .bytes()
        .position(|b| b.is_ascii_digit() || b == b'.')
        .unwrap_or(rest.len());
    let (unit, tail) = rest.split_at(unit_end);
    let scale: u64 = match unit {
        "ns" => 1,
        "us" | "µs" | "μs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60 * 1_000_000_000,
        "h" => 3600 * 1_000_000_000,
        _ => return None,
    };
    // Digits beyond 30 overflow any sane duration; refuse them instead of wrapping.
    // Thirty digits fit a u128 (10³⁰ < 2¹²⁸), so the sum below cannot overflow.
    if int_part.len() > 30 {
        return None;
    }
    let whole = (int_part.bytes()).fold(0u128, |n, digit| n * 10 + u128::from(digit - b'0'));
    let mut nanos = whole.checked_mul(u128::from(scale))?;
    // Fractions beyond nanosecond precision are truncated, as Go does.
    let mut place = scale;
    for digit in frac_part.bytes().take(30) {
        place /= 10;
        if place == 0 {
            break;
        }
        nanos += u128::from(u64::from(digit - b'0') * place);
    }
    Some((nanos, tail))
}

/// Tells a bad unit from a malformed number, for a clearer error.
fn classify(text: &str, rest: &str) -> DurationError {
    let digits_end = rest
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(rest.len());
    let unit: String = rest[digits_end..]
        .chars()
        .take_while(|c| !c.is_ascii_digit() && *c != '.')
        .collect();
    if digits_end > 0 && !unit.is_empty() {
        DurationError::Unit(text.to_owned())
    } else {
        DurationError::Syntax(text.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn parses_what_lapi_sends() {
        let cases: &[(&str, i64)] = &[
            (
                "3h59m54.447176566s",
                3 * 3600 * S + 59 * 60 * S + 54 * S + 447_176_566,
            ),
            ("59m59.2s", 59 * 60 * S + 59 * S + 200_000_000),
            ("4.267836827s", 4 * S + 267_836_827),
            ("-8.995662ms", -8_995_662),
            ("-1.030220439s", -(S + 30_220_439)),
            ("0s", 0),
            ("0", 0),
            ("1.5µs", 1500),
            ("1.5μs", 1500),
            ("2us", 2000),
            ("7ns", 7),
            ("1h30m", 90 * 60 * S),
            ("1m0.5s", 60 * S + 500_000_000),
            ("+5s", 5 * S),
            ("500ms", 500_000_000),
            (".5s", 500_000_000),
            ("5.s", 5 * S),
            ("1h1m1s1ms1us1ns", 3661 * S + 1_001_001),
            ("-2562047h47m16.854775808s", i64::MIN),
            ("2562047h47m16.854775807s", i64::MAX),
        ];
        for (text, want) in cases {
            assert_eq!(parse_nanos(text), Ok(*want), "{text}");
        }
    }

    #[test]
    fn refuses_what_go_refuses() {
        for text in ["", "-", "5", "s", "1.2.3s", "5x", "5 s", "--5s", ".s", "1d"] {
            assert!(parse_nanos(text).is_err(), "{text:?} should be refused");
        }
        assert_eq!(
            parse_nanos("2562047h47m16.854775808s"),
            Err(DurationError::Overflow("2562047h47m16.854775808s".into()))
        );
        assert!(matches!(parse_nanos("5d"), Err(DurationError::Unit(_))));
    }

    #[test]
    fn config_durations_are_non_negative() {
        assert_eq!(parse_std("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_std("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_std("-1s"), Err(DurationError::Negative("-1s".into())));
    }

    #[test]
    fn formats_short() {
        let cases = [
            (Duration::from_secs(10), "10s"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_secs(3600), "1h"),
            (Duration::from_millis(1500), "1.500s"),
            (Duration::ZERO, "0s"),
        ];
        for (duration, want) in cases {
            assert_eq!(format(duration).to_string(), want);
        }
    }
}
