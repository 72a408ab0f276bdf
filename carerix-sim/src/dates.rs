//! `NSCalendarDate` handling: Carerix renders dates as `yyyy-MM-dd HH:mm:ss` in Amsterdam local time.
//!
//! Records keep their timestamps as UTC instants, so comparisons stay correct across DST changes; only
//! rendering converts to local time. A local time in the repeated autumn hour is ambiguous: qualifier
//! literals without an offset resolve to the *earlier* instant (the first pass, `+0200`), which makes
//! `>=` watermarks inclusive rather than lossy.

use chrono::{DateTime, FixedOffset, LocalResult, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Europe::Amsterdam;

/// The format of `NSCalendarDate` strings.
pub const FORMAT: &str = "%Y-%m-%d %H:%M:%S";

/// Renders an instant as Amsterdam local time.
pub fn format(t: DateTime<Utc>) -> String {
    t.with_timezone(&Amsterdam).format(FORMAT).to_string()
}

/// Parses `yyyy-MM-dd HH:mm:ss` with an optional ` +zzzz` offset; without one, Amsterdam local time
/// (earliest instant when ambiguous, the instant after the gap when non-existent).
pub fn parse(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::<FixedOffset>::parse_from_str(s, "%Y-%m-%d %H:%M:%S %z") {
        return Some(t.with_timezone(&Utc));
    }
    let naive = NaiveDateTime::parse_from_str(s, FORMAT).ok()?;
    local_to_utc(naive)
}

/// Resolves a naive Amsterdam local time to UTC (earliest when ambiguous).
pub fn local_to_utc(naive: NaiveDateTime) -> Option<DateTime<Utc>> {
    match Amsterdam.from_local_datetime(&naive) {
        LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
        LocalResult::Ambiguous(a, _) => Some(a.with_timezone(&Utc)),
        LocalResult::None => {
            let later = naive + chrono::Duration::hours(1);
            Amsterdam.from_local_datetime(&later).earliest().map(|t| t.with_timezone(&Utc))
        }
    }
}

/// The UTC instant at which the last October DST change before `now` starts its repeated hour
/// (i.e. local 02:00 +0200 on the last Sunday of October).
pub fn last_october_fallback(now: DateTime<Utc>) -> DateTime<Utc> {
    use chrono::Datelike;
    let year = now.with_timezone(&Amsterdam).year();
    for y in [year, year - 1] {
        // DST ends at 01:00 UTC on the last Sunday of October.
        let Some(oct31) = chrono::NaiveDate::from_ymd_opt(y, 10, 31) else {
            continue;
        };
        let back = oct31.weekday().num_days_from_sunday();
        let sunday = oct31 - chrono::Duration::days(i64::from(back));
        let Some(at) = sunday.and_hms_opt(0, 0, 0) else {
            continue;
        };
        let t = Utc.from_utc_datetime(&at);
        if t < now {
            return t;
        }
    }
    now
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ambiguous_local_time_resolves_to_the_first_pass() {
        let t = parse("2025-10-26 02:30:00").expect("parses");
        assert_eq!(t, parse("2025-10-26 02:30:00 +0200").expect("parses"));
        assert!(t < parse("2025-10-26 02:10:00 +0100").expect("parses"));
    }

    #[test]
    fn both_passes_of_the_repeated_hour_render_the_same_local_string() {
        let a = parse("2025-10-26 02:30:00 +0200").expect("parses");
        let b = parse("2025-10-26 02:30:00 +0100").expect("parses");
        assert_eq!(format(a), "2025-10-26 02:30:00");
        assert_eq!(format(b), "2025-10-26 02:30:00");
        assert_eq!((b - a).num_hours(), 1);
    }

    #[test]
    fn summer_and_winter_times_use_their_own_offsets() {
        assert_eq!(parse("2025-07-01 12:00:00").expect("parses").to_rfc3339(), "2025-07-01T10:00:00+00:00");
        assert_eq!(parse("2025-01-01 12:00:00").expect("parses").to_rfc3339(), "2025-01-01T11:00:00+00:00");
    }

    #[test]
    fn the_last_october_change_is_found() {
        let now = parse("2026-03-01 00:00:00").expect("parses");
        assert_eq!(format(last_october_fallback(now)), "2025-10-26 02:00:00");
    }
}
