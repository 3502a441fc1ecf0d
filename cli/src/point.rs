//! Points in a table's history as the command line writes them: times
//! (RFC 3339, milliseconds since the epoch, `now`, or a duration back from
//! now such as `-5m`), and points that are either a version or a time.
//!
//! Parsing takes "now" as an input so that it is deterministic; the clap
//! value parsers pass the wall clock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::DateTime;

/// A point in history as the user gave it: a version of one partition, or
/// a commit time in milliseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Point {
    /// A version (meaningful within one partition).
    Version(u64),
    /// Milliseconds since the Unix epoch.
    TimeMs(u64),
}

/// The wall clock in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Parses a TIME: RFC 3339 (`2024-05-01T12:00:00Z`), milliseconds since the
/// epoch (`1714564800000` or `@1714564800000`), `now`, or a duration back
/// from now (`-5m`, `-1h30m`, `-90s`, `-500ms`, `-2d`).
pub fn parse_time(s: &str, now_ms: u64) -> Result<u64, String> {
    let s = s.trim();
    if s == "now" {
        return Ok(now_ms);
    }
    if let Some(rest) = s.strip_prefix('-') {
        let back = parse_duration(rest)?;
        return Ok(now_ms.saturating_sub(back.as_millis() as u64));
    }
    let digits = s.strip_prefix('@').unwrap_or(s);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return digits.parse::<u64>().map_err(|e| format!("`{s}`: {e}"));
    }
    let t = DateTime::parse_from_rfc3339(s).map_err(|e| {
        format!(
            "`{s}` is not a time ({e}): use RFC 3339 (2024-05-01T12:00:00Z), \
             milliseconds since the epoch (1714564800000), `now`, or a duration back from now (-5m)"
        )
    })?;
    u64::try_from(t.timestamp_millis()).map_err(|_| format!("`{s}` is before 1970"))
}

/// Parses a POINT: a bare integer is a version; anything else is a TIME,
/// where milliseconds since the epoch must be written `@1714564800000`.
pub fn parse_point(s: &str, now_ms: u64) -> Result<Point, String> {
    let t = s.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t
            .parse::<u64>()
            .map(Point::Version)
            .map_err(|e| format!("`{s}`: {e}"));
    }
    parse_time(t, now_ms).map(Point::TimeMs)
}

/// Parses a duration made of `<number><unit>` parts, units `ms`, `s`, `m`,
/// `h`, `d` (`90s`, `1h30m`, `500ms`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("`{s}` is not a duration: write e.g. 500ms, 30s, 5m, 1h30m or 2d");
    let mut total = Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let n_end = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if n_end == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..n_end].parse().map_err(|_| bad())?;
        rest = &rest[n_end..];
        let u_end = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit_ms = match &rest[..u_end] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        rest = &rest[u_end..];
        total += Duration::from_millis(n.checked_mul(unit_ms).ok_or_else(bad)?);
    }
    Ok(total)
}

/// Formats milliseconds since the epoch as RFC 3339 in UTC, to the
/// millisecond.
pub fn format_time(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| format!("@{ms}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_714_564_800_000; // 2024-05-01T12:00:00Z

    #[test]
    fn times() {
        assert_eq!(parse_time("2024-05-01T12:00:00Z", 0), Ok(NOW));
        assert_eq!(parse_time("2024-05-01T14:00:00.5+02:00", 0), Ok(NOW + 500));
        assert_eq!(parse_time("1714564800000", 0), Ok(NOW));
        assert_eq!(parse_time("@1714564800000", 0), Ok(NOW));
        assert_eq!(parse_time("now", NOW), Ok(NOW));
        assert_eq!(parse_time("-5m", NOW), Ok(NOW - 300_000));
        assert_eq!(parse_time("-1h30m", NOW), Ok(NOW - 5_400_000));
        assert_eq!(parse_time("-500ms", NOW), Ok(NOW - 500));
        assert!(parse_time("yesterday", NOW).is_err());
        assert!(parse_time("-5x", NOW).is_err());
        assert!(parse_time("-", NOW).is_err());
        assert_eq!(format_time(NOW + 7), "2024-05-01T12:00:00.007Z");
    }

    #[test]
    fn points() {
        assert_eq!(parse_point("12", NOW), Ok(Point::Version(12)));
        assert_eq!(parse_point("@12", NOW), Ok(Point::TimeMs(12)));
        assert_eq!(parse_point("-2s", NOW), Ok(Point::TimeMs(NOW - 2_000)));
        assert_eq!(
            parse_point("2024-05-01T12:00:00Z", 0),
            Ok(Point::TimeMs(NOW))
        );
        assert!(parse_point("v12", NOW).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("").is_err());
    }
}
