//! Carerix `NSCalendarDate` timestamps.
//!
//! Carerix writes `NSCalendarDate` values as `yyyy-MM-dd HH:mm:ss` in Amsterdam local time, with
//! no offset. This module converts them to and from [`DateTime<Utc>`] with `chrono-tz`, and is
//! explicit about the two daylight-saving transitions:
//!
//! - autumn (last Sunday of October): the hour 02:00–03:00 happens twice, so a local value is
//!   [`AmsterdamTime::Ambiguous`] with two UTC candidates; [`to_utc_earliest`] takes the first;
//! - spring (last Sunday of March): 02:00–03:00 does not exist. Such a value is
//!   [`AmsterdamTime::Skipped`] and resolved like `java.time` does: read with the offset in force
//!   before the gap (so `02:30` becomes `03:30` CEST).
//!
//! It leaves out the legacy REST format with an explicit offset (`... +0200`).

use chrono::{DateTime, LocalResult, NaiveDateTime, Offset, TimeZone, Utc};
use chrono_tz::{Europe::Amsterdam, Tz};

/// The `chrono` format of an `NSCalendarDate` string.
pub const NS_CALENDAR_DATE_FORMAT: &str = "%Y-%m-%d %H:%M:%S";

/// The time zone Carerix writes `NSCalendarDate` values in.
pub const CARERIX_TIME_ZONE: Tz = Amsterdam;

/// A timestamp that is not a valid `NSCalendarDate`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid NSCalendarDate {value:?} (expected yyyy-MM-dd HH:mm:ss): {reason}")]
pub struct TimeError {
    /// The value that was given.
    pub value: String,
    /// Why it was rejected.
    pub reason: String,
}

/// An Amsterdam local time resolved to UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AmsterdamTime {
    /// The local time maps to exactly one instant.
    Unique(DateTime<Utc>),
    /// The local time happened twice (the repeated autumn hour).
    Ambiguous {
        /// The first occurrence (still summer time, +02:00).
        earliest: DateTime<Utc>,
        /// The second occurrence (winter time, +01:00).
        latest: DateTime<Utc>,
    },
    /// The local time never happened (the skipped spring hour); `shifted` reads it with the
    /// offset in force before the gap, i.e. one hour later on the wall clock.
    Skipped {
        /// The resolved instant.
        shifted: DateTime<Utc>,
    },
}

impl AmsterdamTime {
    /// The earliest instant the local time may mean.
    pub fn earliest(&self) -> DateTime<Utc> {
        match *self {
            AmsterdamTime::Unique(t) => t,
            AmsterdamTime::Ambiguous { earliest, .. } => earliest,
            AmsterdamTime::Skipped { shifted } => shifted,
        }
    }

    /// The latest instant the local time may mean.
    pub fn latest(&self) -> DateTime<Utc> {
        match *self {
            AmsterdamTime::Unique(t) => t,
            AmsterdamTime::Ambiguous { latest, .. } => latest,
            AmsterdamTime::Skipped { shifted } => shifted,
        }
    }

    /// Every instant the local time may mean (one, or two for the repeated hour).
    pub fn candidates(&self) -> Vec<DateTime<Utc>> {
        match *self {
            AmsterdamTime::Ambiguous { earliest, latest } => vec![earliest, latest],
            other => vec![other.earliest()],
        }
    }
}

/// Parses an `NSCalendarDate` string (`yyyy-MM-dd HH:mm:ss`, Amsterdam local time).
///
/// # Errors
///
/// [`TimeError`] when the string does not have that format.
pub fn parse_ns_calendar_date(value: &str) -> Result<AmsterdamTime, TimeError> {
    let naive = NaiveDateTime::parse_from_str(value.trim(), NS_CALENDAR_DATE_FORMAT)
        .map_err(|e| TimeError { value: value.to_owned(), reason: e.to_string() })?;
    Ok(resolve_local(naive))
}

/// Resolves an Amsterdam wall-clock time to UTC.
pub fn resolve_local(naive: NaiveDateTime) -> AmsterdamTime {
    match CARERIX_TIME_ZONE.from_local_datetime(&naive) {
        LocalResult::Single(t) => AmsterdamTime::Unique(t.with_timezone(&Utc)),
        LocalResult::Ambiguous(a, b) => {
            let (a, b) = (a.with_timezone(&Utc), b.with_timezone(&Utc));
            AmsterdamTime::Ambiguous { earliest: a.min(b), latest: a.max(b) }
        }
        LocalResult::None => {
            // In the gap: use the offset in force just before it (one hour earlier on the wall
            // clock is always before the gap, the gap being one hour long).
            let before = naive - chrono::Duration::hours(1);
            let offset = CARERIX_TIME_ZONE
                .offset_from_local_datetime(&before)
                .earliest()
                .map_or_else(|| CARERIX_TIME_ZONE.offset_from_utc_datetime(&naive).fix(), |o| o.fix());
            let shifted = Utc.from_utc_datetime(&(naive - offset));
            AmsterdamTime::Skipped { shifted }
        }
    }
}

/// Parses an `NSCalendarDate` string and returns the earliest instant it may mean.
///
/// # Errors
///
/// [`TimeError`] when the string does not have the `yyyy-MM-dd HH:mm:ss` format.
pub fn to_utc_earliest(value: &str) -> Result<DateTime<Utc>, TimeError> {
    parse_ns_calendar_date(value).map(|t| t.earliest())
}

/// Formats an instant as an `NSCalendarDate` string in Amsterdam local time.
///
/// Two instants in the repeated autumn hour format to the same string.
pub fn format_ns_calendar_date(instant: DateTime<Utc>) -> String {
    instant.with_timezone(&CARERIX_TIME_ZONE).format(NS_CALENDAR_DATE_FORMAT).to_string()
}

/// The incremental-sync qualifier `modificationDate >= (NSCalendarDate) 'yyyy-MM-dd HH:mm:ss'`.
pub fn modified_since_qualifier(since: DateTime<Utc>) -> String {
    format!("modificationDate >= (NSCalendarDate) '{}'", format_ns_calendar_date(since))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).map(|d| d.with_timezone(&Utc)).unwrap_or_default()
    }

    #[test]
    fn winter_and_summer() {
        assert_eq!(to_utc_earliest("2025-01-15 12:00:00"), Ok(utc("2025-01-15T11:00:00Z")));
        assert_eq!(to_utc_earliest("2025-07-15 12:00:00"), Ok(utc("2025-07-15T10:00:00Z")));
        assert_eq!(format_ns_calendar_date(utc("2025-07-15T10:00:00Z")), "2025-07-15 12:00:00");
        assert_eq!(format_ns_calendar_date(utc("2025-01-15T11:00:00Z")), "2025-01-15 12:00:00");
    }

    #[test]
    fn autumn_2025_repeated_hour() {
        // 2025-10-26 03:00 CEST -> 02:00 CET.
        let t = parse_ns_calendar_date("2025-10-26 02:30:00");
        assert_eq!(
            t,
            Ok(AmsterdamTime::Ambiguous {
                earliest: utc("2025-10-26T00:30:00Z"),
                latest: utc("2025-10-26T01:30:00Z")
            })
        );
        assert_eq!(to_utc_earliest("2025-10-26 02:30:00"), Ok(utc("2025-10-26T00:30:00Z")));
        assert_eq!(t.map(|t| t.candidates().len()), Ok(2));
        assert_eq!(format_ns_calendar_date(utc("2025-10-26T00:30:00Z")), "2025-10-26 02:30:00");
        assert_eq!(format_ns_calendar_date(utc("2025-10-26T01:30:00Z")), "2025-10-26 02:30:00");
        assert_eq!(to_utc_earliest("2025-10-26 03:00:00"), Ok(utc("2025-10-26T02:00:00Z")));
        assert_eq!(to_utc_earliest("2025-10-26 01:59:59"), Ok(utc("2025-10-25T23:59:59Z")));
    }

    #[test]
    fn autumn_2026_repeated_hour() {
        // 2026-10-25 03:00 CEST -> 02:00 CET.
        assert_eq!(
            parse_ns_calendar_date("2026-10-25 02:00:00"),
            Ok(AmsterdamTime::Ambiguous {
                earliest: utc("2026-10-25T00:00:00Z"),
                latest: utc("2026-10-25T01:00:00Z")
            })
        );
        assert_eq!(
            parse_ns_calendar_date("2026-10-25 02:59:59").map(|t| t.latest()),
            Ok(utc("2026-10-25T01:59:59Z"))
        );
    }

    #[test]
    fn spring_2025_gap() {
        // 2025-03-30 02:00 CET -> 03:00 CEST: 02:xx does not exist.
        assert_eq!(
            parse_ns_calendar_date("2025-03-30 02:30:00"),
            Ok(AmsterdamTime::Skipped { shifted: utc("2025-03-30T01:30:00Z") })
        );
        assert_eq!(format_ns_calendar_date(utc("2025-03-30T01:30:00Z")), "2025-03-30 03:30:00");
        assert_eq!(to_utc_earliest("2025-03-30 01:59:59"), Ok(utc("2025-03-30T00:59:59Z")));
        assert_eq!(to_utc_earliest("2025-03-30 03:00:00"), Ok(utc("2025-03-30T01:00:00Z")));
    }

    #[test]
    fn spring_2026_gap() {
        // 2026-03-29 02:00 CET -> 03:00 CEST.
        assert_eq!(
            parse_ns_calendar_date("2026-03-29 02:00:00"),
            Ok(AmsterdamTime::Skipped { shifted: utc("2026-03-29T01:00:00Z") })
        );
        assert_eq!(to_utc_earliest("2026-03-29 02:59:59"), Ok(utc("2026-03-29T01:59:59Z")));
        assert_eq!(format_ns_calendar_date(utc("2026-03-29T00:59:59Z")), "2026-03-29 01:59:59");
        assert_eq!(format_ns_calendar_date(utc("2026-03-29T01:00:00Z")), "2026-03-29 03:00:00");
    }

    #[test]
    fn rejects_bad_values_and_builds_qualifier() {
        assert!(to_utc_earliest("2025-13-01 00:00:00").is_err());
        assert!(to_utc_earliest("2025-01-01T00:00:00Z").is_err());
        let err = to_utc_earliest("nope").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("nope"));
        assert_eq!(
            modified_since_qualifier(utc("2025-07-15T10:00:00Z")),
            "modificationDate >= (NSCalendarDate) '2025-07-15 12:00:00'"
        );
        // Round trip through the formatter.
        let t = utc("2026-06-01T08:09:10Z");
        assert_eq!(to_utc_earliest(&format_ns_calendar_date(t)), Ok(t));
    }
}
