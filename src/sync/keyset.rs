//! Keyset pagination over `(modificationDate, _id)` and the daylight-saving rules around it.
//!
//! Carerix paginates by offset only, and a record modified during a sync moves to the end of the
//! `modificationDate` order, shifting every later offset. The sync therefore never asks for a page
//! other than 0: each query starts strictly after the last record it stored (the *cursor*), so a
//! record that moves ends up after the cursor and is read again, and nothing is skipped.
//!
//! `modificationDate` is Amsterdam wall-clock time with second precision. Two traps follow:
//! - many records share one second (more than a page): the cursor carries the `_id` as a tie
//!   breaker, `modificationDate > W OR (modificationDate = W AND _id > ID)`;
//! - in the repeated autumn hour (02:00–03:00 on the last Sunday of October) a wall-clock value
//!   means two instants. Carerix sorts by the real instant, so the cursor is kept as an instant and
//!   written with its offset (`'2025-10-26 02:10:00 +0100'`). The instant of each returned record
//!   is reconstructed from the order: the earliest reading of its wall-clock value that is not
//!   before the previous record. As a second line of defence an incremental pass whose watermark
//!   is within an hour of a fall-back transition starts one hour earlier ([`lookback_start`]).

use std::cmp::Ordering;

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Europe::Amsterdam;

use crate::carerix::time::{AmsterdamTime, parse_ns_calendar_date};

/// Page size of every sync query (Carerix's maximum).
pub const PAGE_SIZE: u32 = 100;

/// Where a pass continues: after the record with this instant and id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    /// The instant of the last stored record's `modificationDate`.
    pub at: DateTime<Utc>,
    /// Its `_id`; `None` means "every record at `at` is still to come".
    pub id: Option<String>,
}

/// Compares Carerix ids: numerically when both are numbers (Carerix ids are), else as text.
pub fn cmp_ids(a: &str, b: &str) -> Ordering {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        _ => a.cmp(b),
    }
}

/// An id as a qualifier literal: a bare number when numeric, else a quoted string.
pub fn id_literal(id: &str) -> String {
    if !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) {
        id.to_string()
    } else {
        format!("'{}'", id.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

/// An instant as an `NSCalendarDate` literal with its Amsterdam offset, which is exact even in
/// the repeated autumn hour.
pub fn date_literal(at: DateTime<Utc>) -> String {
    format!("(NSCalendarDate) '{}'", at.with_timezone(&Amsterdam).format("%Y-%m-%d %H:%M:%S %z"))
}

/// The qualifier of the next page after `cursor` (`None`: from the beginning).
pub fn modified_after(cursor: Option<&Cursor>) -> Option<String> {
    let c = cursor?;
    let date = date_literal(c.at);
    Some(match &c.id {
        Some(id) => {
            format!("modificationDate > {date} OR (modificationDate = {date} AND _id > {})", id_literal(id))
        }
        None => format!("modificationDate >= {date}"),
    })
}

/// The qualifier of the next page of the id listing (full comparison).
pub fn id_after(last: Option<&str>) -> Option<String> {
    last.map(|id| format!("_id > {}", id_literal(id)))
}

/// A qualifier that selects the given ids (`_id = 1 OR _id = 2 ...`).
pub fn ids_qualifier<'a>(ids: impl IntoIterator<Item = &'a str>) -> String {
    ids.into_iter().map(|id| format!("_id = {}", id_literal(id))).collect::<Vec<_>>().join(" OR ")
}

/// Reconstructs the instant of a record from its wall-clock `modificationDate`, given the key of
/// the record before it in Carerix's order: the earliest reading whose key `(instant, id)` is
/// after `prev`. Falls back to the latest reading when none is (which Carerix's order rules out).
pub fn resolve_instant(
    local: &str,
    id: &str,
    prev: Option<(&DateTime<Utc>, Option<&str>)>,
) -> Option<DateTime<Utc>> {
    let parsed = parse_ns_calendar_date(local).ok()?;
    let candidates = parsed.candidates();
    let Some((prev_at, prev_id)) = prev else {
        return Some(parsed.earliest());
    };
    let after = |c: &DateTime<Utc>| match c.cmp(prev_at) {
        Ordering::Greater => true,
        Ordering::Equal => prev_id.is_none_or(|p| cmp_ids(id, p) != Ordering::Less),
        Ordering::Less => false,
    };
    Some(candidates.iter().copied().find(after).unwrap_or_else(|| parsed.latest()))
}

/// Whether a wall-clock value lies in the repeated autumn hour (two instants).
pub fn is_ambiguous(local: &str) -> bool {
    matches!(parse_ns_calendar_date(local), Ok(AmsterdamTime::Ambiguous { .. }))
}

/// The fall-back transitions (01:00 UTC on the last Sunday of October) around the year of `t`.
fn fall_backs_near(t: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    use chrono::{Datelike, NaiveDate, TimeZone};
    let year = t.year();
    let mut out = Vec::new();
    for y in [year - 1, year, year + 1] {
        let Some(oct31) = NaiveDate::from_ymd_opt(y, 10, 31) else {
            continue;
        };
        let back = oct31.weekday().num_days_from_sunday();
        let sunday = oct31 - Duration::days(i64::from(back));
        if let Some(at) = sunday.and_hms_opt(1, 0, 0) {
            // 01:00 UTC: the clock goes from 03:00 CEST back to 02:00 CET
            out.push(Utc.from_utc_datetime(&at));
        }
    }
    out
}

/// Where an incremental pass starts. When a fall-back transition lies within
/// `[watermark - 1h, now]`, local-time order and real order may differ around the watermark, so
/// the pass starts one hour earlier (and re-upserts what it reads again, idempotently).
pub fn lookback_start(watermark: &Cursor, now: DateTime<Utc>) -> Cursor {
    let from = watermark.at - Duration::hours(1);
    if fall_backs_near(watermark.at).into_iter().any(|t| t >= from && t <= now) {
        Cursor { at: from, id: None }
    } else {
        watermark.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc)).expect("rfc3339")
    }

    #[test]
    fn the_first_page_has_no_qualifier() {
        assert_eq!(modified_after(None), None);
    }

    #[test]
    fn the_keyset_qualifier_breaks_ties_on_the_numeric_id() {
        let c = Cursor { at: utc("2025-06-01T10:00:00Z"), id: Some("4711".into()) };
        assert_eq!(
            modified_after(Some(&c)).as_deref(),
            Some(
                "modificationDate > (NSCalendarDate) '2025-06-01 12:00:00 +0200' OR \
                 (modificationDate = (NSCalendarDate) '2025-06-01 12:00:00 +0200' AND _id > 4711)"
            )
        );
        let open = Cursor { at: utc("2025-01-01T10:00:00Z"), id: None };
        assert_eq!(
            modified_after(Some(&open)).as_deref(),
            Some("modificationDate >= (NSCalendarDate) '2025-01-01 11:00:00 +0100'")
        );
    }

    #[test]
    fn the_second_pass_of_the_repeated_hour_is_written_with_its_own_offset() {
        assert_eq!(date_literal(utc("2025-10-26T00:10:00Z")), "(NSCalendarDate) '2025-10-26 02:10:00 +0200'");
        assert_eq!(date_literal(utc("2025-10-26T01:10:00Z")), "(NSCalendarDate) '2025-10-26 02:10:00 +0100'");
    }

    #[test]
    fn non_numeric_ids_are_quoted_and_escaped() {
        assert_eq!(id_literal("12"), "12");
        assert_eq!(id_literal("a'b"), "'a\\'b'");
        assert_eq!(ids_qualifier(["1", "2"]), "_id = 1 OR _id = 2");
        assert_eq!(id_after(Some("9")).as_deref(), Some("_id > 9"));
    }

    #[test]
    fn ids_compare_as_numbers() {
        assert_eq!(cmp_ids("9", "10"), Ordering::Less);
        assert_eq!(cmp_ids("b", "a"), Ordering::Greater);
    }

    #[test]
    fn a_repeated_wall_clock_time_resolves_after_the_previous_record() {
        // first pass 02:50 (+0200), then a record at 02:10 must be in the second pass (+0100)
        let prev = utc("2025-10-26T00:50:00Z");
        let t = resolve_instant("2025-10-26 02:10:00", "3", Some((&prev, Some("2")))).expect("parses");
        assert_eq!(t, utc("2025-10-26T01:10:00Z"));
        // without a previous record the earliest reading is taken
        assert_eq!(resolve_instant("2025-10-26 02:10:00", "3", None), Some(utc("2025-10-26T00:10:00Z")));
        // the same second as the cursor with a higher id stays at that second
        let same = utc("2025-06-01T10:00:00Z");
        assert_eq!(resolve_instant("2025-06-01 12:00:00", "5", Some((&same, Some("4")))), Some(same));
        assert!(is_ambiguous("2025-10-26 02:59:59"));
        assert!(!is_ambiguous("2025-10-26 03:00:00"));
    }

    #[test]
    fn the_lookback_applies_only_near_a_fall_back_transition() {
        let now = utc("2026-03-01T00:00:00Z");
        let near = Cursor { at: utc("2025-10-26T01:30:00Z"), id: Some("7".into()) };
        assert_eq!(lookback_start(&near, now), Cursor { at: utc("2025-10-26T00:30:00Z"), id: None });
        let before = Cursor { at: utc("2025-10-26T00:30:00Z"), id: Some("7".into()) };
        assert_eq!(lookback_start(&before, now).at, utc("2025-10-25T23:30:00Z"));
        let after = Cursor { at: utc("2025-11-15T00:00:00Z"), id: Some("7".into()) };
        assert_eq!(lookback_start(&after, now), after);
        // a watermark from before a transition that has happened since looks back too
        let summer = Cursor { at: utc("2025-07-01T00:00:00Z"), id: Some("7".into()) };
        assert_eq!(lookback_start(&summer, now).at, utc("2025-06-30T23:00:00Z"));
        // the transition has not happened yet: no lookback
        let soon = Cursor { at: utc("2025-10-26T00:30:00Z"), id: None };
        assert_eq!(lookback_start(&soon, utc("2025-10-26T00:40:00Z")), soon);
    }
}
