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

/// Page size the sync asks for (Carerix's documented maximum). Carerix may serve fewer: page ends
/// come from each page's own metadata, never from comparing its length with this.
pub const PAGE_SIZE: u32 = 100;

/// The oldest instant a pass asks for. Starting from it (`modificationDate >= ...`) instead of
/// with no qualifier keeps records whose `modificationDate` is null out of the keyset order; the
/// null sweep reads them.
pub fn epoch() -> DateTime<Utc> {
    DateTime::<Utc>::UNIX_EPOCH
}

/// How records that share one `modificationDate` second are ordered and skipped past.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tie {
    /// The entity's own numeric id field (`employeeID`, declared `Int!`: numeric order is a fact).
    Field(&'static str),
    /// `_id` (in Carerix's own order, whatever it is; the keyset only needs sort and compare to
    /// agree).
    Id,
    /// No usable tie breaker: a second holding more than a page is read by offset pages of
    /// `modificationDate = S`.
    Offset,
}

impl Tie {
    /// The preferred tie breaker of an entity.
    pub fn preferred(id_field: Option<&'static str>) -> Tie {
        id_field.map_or(Tie::Id, Tie::Field)
    }

    /// The next one to try when Carerix refuses or misorders this one.
    pub fn fallback(self) -> Tie {
        match self {
            Tie::Field(_) => Tie::Id,
            Tie::Id | Tie::Offset => Tie::Offset,
        }
    }

    /// The sort property, if any.
    pub fn property(self) -> Option<&'static str> {
        match self {
            Tie::Field(f) => Some(f),
            Tie::Id => Some("_id"),
            Tie::Offset => None,
        }
    }

    /// The tie value of a record, as text (`None` for [`Tie::Offset`] or when absent).
    pub fn value_of(self, record: &serde_json::Value) -> Option<String> {
        let v = record.get(self.property()?)?;
        match v {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }

    fn literal(self, value: &str) -> String {
        match self {
            Tie::Field(_) if value.parse::<i64>().is_ok() => value.to_string(),
            _ => id_literal(value),
        }
    }
}

/// Where a pass continues.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum After {
    /// Every record at the instant is still to come (`>=`).
    Inclusive,
    /// Records at the instant after this tie value are still to come.
    Tie(String),
    /// Every record at the instant has been read (`>`).
    Exclusive,
}

/// Where a pass continues: the instant of the last stored record's `modificationDate`, and how
/// far into that second it got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    /// The instant.
    pub at: DateTime<Utc>,
    /// How far into that second.
    pub after: After,
}

impl Cursor {
    /// The start of everything from `at` on.
    pub fn from(at: DateTime<Utc>) -> Self {
        Cursor { at, after: After::Inclusive }
    }
}

/// Compares Carerix ids: numerically when both are numbers, else as text. Used only where
/// nothing depends on Carerix agreeing (ordering a batch, the DST reconstruction).
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

/// The qualifier of the next page after `cursor`, breaking ties with `tie`.
pub fn modified_after(cursor: &Cursor, tie: Tie) -> String {
    let date = date_literal(cursor.at);
    match (&cursor.after, tie.property()) {
        (After::Tie(v), Some(p)) => {
            format!("modificationDate > {date} OR (modificationDate = {date} AND {p} > {})", tie.literal(v))
        }
        (After::Exclusive, _) => format!("modificationDate > {date}"),
        _ => format!("modificationDate >= {date}"),
    }
}

/// The qualifier of one second (read by offset pages when no tie breaker works).
pub fn within_second(at: DateTime<Utc>) -> String {
    format!("modificationDate = {}", date_literal(at))
}

/// The qualifier of the records whose `modificationDate` is null.
pub const NULL_DATE: &str = "modificationDate = nil";

/// The qualifier of the next page of the id listing (full comparison) after tie value `last`.
pub fn tie_after(tie: Tie, last: Option<&str>) -> Option<String> {
    let p = tie.property()?;
    last.map(|v| format!("{p} > {}", tie.literal(v)))
}

/// A qualifier that selects records by tie value (`employeeID = 1 OR employeeID = 2 ...`).
pub fn tie_qualifier<'a>(tie: Tie, values: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let p = tie.property()?;
    Some(values.into_iter().map(|v| format!("{p} = {}", tie.literal(v))).collect::<Vec<_>>().join(" OR "))
}

/// Whether `next` is strictly further than `prev` (the progress guard).
pub fn advanced(prev: &Cursor, next: &Cursor) -> bool {
    fn rank(a: &After) -> u8 {
        match a {
            After::Inclusive => 0,
            After::Tie(_) => 1,
            After::Exclusive => 2,
        }
    }
    match next.at.cmp(&prev.at) {
        Ordering::Greater => true,
        Ordering::Less => false,
        Ordering::Equal => match (&prev.after, &next.after) {
            (After::Tie(a), After::Tie(b)) => a != b,
            (a, b) => rank(b) > rank(a),
        },
    }
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
        Cursor::from(from)
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
    fn the_keyset_qualifier_breaks_ties_on_the_own_numeric_id_field() {
        let c = Cursor { at: utc("2025-06-01T10:00:00Z"), after: After::Tie("4711".into()) };
        assert_eq!(
            modified_after(&c, Tie::Field("employeeID")),
            "modificationDate > (NSCalendarDate) '2025-06-01 12:00:00 +0200' OR \
             (modificationDate = (NSCalendarDate) '2025-06-01 12:00:00 +0200' AND employeeID > 4711)"
        );
        let open = Cursor::from(utc("2025-01-01T10:00:00Z"));
        assert_eq!(
            modified_after(&open, Tie::Offset),
            "modificationDate >= (NSCalendarDate) '2025-01-01 11:00:00 +0100'"
        );
        let past = Cursor { after: After::Exclusive, ..open };
        assert_eq!(
            modified_after(&past, Tie::Id),
            "modificationDate > (NSCalendarDate) '2025-01-01 11:00:00 +0100'"
        );
    }

    #[test]
    fn ties_fall_back_from_the_own_field_to_id_to_offsets() {
        assert_eq!(Tie::preferred(Some("jobID")).fallback(), Tie::Id);
        assert_eq!(Tie::preferred(None), Tie::Id);
        assert_eq!(Tie::Id.fallback().fallback(), Tie::Offset);
        let rec = serde_json::json!({"_id": "12", "jobID": 12});
        assert_eq!(Tie::Field("jobID").value_of(&rec).as_deref(), Some("12"));
        assert_eq!(Tie::Offset.value_of(&rec), None);
        assert_eq!(tie_qualifier(Tie::Field("jobID"), ["1", "2"]).as_deref(), Some("jobID = 1 OR jobID = 2"));
        assert_eq!(tie_after(Tie::Id, Some("a")).as_deref(), Some("_id > 'a'"));
    }

    #[test]
    fn the_progress_guard_sees_a_cursor_that_did_not_move() {
        let at = utc("2025-06-01T10:00:00Z");
        let a = Cursor { at, after: After::Tie("5".into()) };
        assert!(!advanced(&a, &a));
        assert!(advanced(&a, &Cursor { at, after: After::Tie("6".into()) }));
        assert!(advanced(&Cursor::from(at), &Cursor { at, after: After::Exclusive }));
        assert!(!advanced(&Cursor { at, after: After::Exclusive }, &Cursor::from(at)));
        assert!(advanced(&a, &Cursor::from(at + Duration::seconds(1))));
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
        let near = Cursor { at: utc("2025-10-26T01:30:00Z"), after: After::Tie("7".into()) };
        assert_eq!(lookback_start(&near, now), Cursor::from(utc("2025-10-26T00:30:00Z")));
        let before = Cursor { at: utc("2025-10-26T00:30:00Z"), after: After::Tie("7".into()) };
        assert_eq!(lookback_start(&before, now).at, utc("2025-10-25T23:30:00Z"));
        let after = Cursor { at: utc("2025-11-15T00:00:00Z"), after: After::Tie("7".into()) };
        assert_eq!(lookback_start(&after, now), after);
        // a watermark from before a transition that has happened since looks back too
        let summer = Cursor { at: utc("2025-07-01T00:00:00Z"), after: After::Tie("7".into()) };
        assert_eq!(lookback_start(&summer, now).at, utc("2025-06-30T23:00:00Z"));
        // the transition has not happened yet: no lookback
        let soon = Cursor::from(utc("2025-10-26T00:30:00Z"));
        assert_eq!(lookback_start(&soon, utc("2025-10-26T00:40:00Z")), soon);
    }
}
