//! Readings of the INFERRED points of `API.md` that a sync depends on.
//!
//! Nothing public says how Carerix behaves on these points, so the emulator can play either legal
//! reading. [`Readings::default`] is the reading the sources lean to (see `docs/carerix-surface.md`);
//! [`Readings::hostile`] turns on every alternative at once, so a client that rests on a guess fails
//! its tests. The readings are set at start ([`crate::Config::readings`], `--hostile` and the
//! `--reading-*` flags) and at run time (`GET`/`PUT /admin/v1/readings`).

use serde::{Deserialize, Serialize};

/// How `_id` values sort and compare in `pageable.sort` and in qualifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum IdOrder {
    /// As numbers (`9 < 10`).
    #[default]
    Numeric,
    /// As text (`"10" < "9"`): `_id` is declared `ID`, a string.
    Text,
}

/// The switches. Every field has a serde default, so `PUT /admin/v1/readings` takes a partial object
/// on top of the current readings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Readings {
    /// `modificationDate` has whole seconds only, and several updates of one record within one
    /// second keep the same `modificationDate` (off: every update moves it to a later second).
    pub second_precision: bool,
    /// A page cap below the emulator's `page_cap` (`None`: the configured cap, default 100).
    pub page_cap: Option<usize>,
    /// How `_id` sorts and compares.
    pub id_order: IdOrder,
    /// `_id` is accepted in qualifiers (off: a qualifier naming `_id` is a GraphQL error).
    pub id_in_qualifier: bool,
    /// `_id` is accepted as a sort property (off: a GraphQL error).
    pub id_in_sort: bool,
    /// `modificationDate` sorts and compares by its Amsterdam wall-clock text, not by instant (the
    /// repeated autumn hour interleaves its two passes).
    pub wall_clock_order: bool,
    /// Milliseconds each GraphQL answer takes.
    pub latency_ms: u64,
    /// Entities without a `deleted` field (`CRMatch`) soft-delete: the record disappears from
    /// restricted queries but stays visible with `norestrict: true`, with no field saying so (off: a
    /// removed match is gone).
    pub hidden_soft_deletes: bool,
}

impl Default for Readings {
    fn default() -> Self {
        Readings {
            second_precision: false,
            page_cap: None,
            id_order: IdOrder::Numeric,
            id_in_qualifier: true,
            id_in_sort: true,
            wall_clock_order: false,
            latency_ms: 0,
            hidden_soft_deletes: false,
        }
    }
}

impl Readings {
    /// Every alternative reading at once (no latency; set `latency_ms` separately). The page cap
    /// is 37: below the 100 clients ask for, and not a divisor of it.
    pub fn hostile() -> Self {
        Readings {
            second_precision: true,
            page_cap: Some(37),
            id_order: IdOrder::Text,
            id_in_qualifier: false,
            id_in_sort: false,
            wall_clock_order: true,
            latency_ms: 0,
            hidden_soft_deletes: true,
        }
    }

    /// The effective page cap given the configured one.
    pub fn cap(&self, configured: usize) -> usize {
        self.page_cap.map_or(configured, |c| c.min(configured)).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_object_keeps_the_other_readings() {
        let r: Readings = serde_json::from_str(r#"{"id_in_qualifier": false}"#).expect("parses");
        assert!(!r.id_in_qualifier);
        assert!(r.id_in_sort && !r.second_precision);
        assert_eq!(Readings::hostile().cap(100), 37);
        assert_eq!(Readings::default().cap(100), 100);
    }
}
