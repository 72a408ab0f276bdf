//! The Carerix entities the operator syncs, and the exact GraphQL selections it uses for them.
//!
//! The table and the field lists follow `docs/carerix-surface.md` (the contract shared with the
//! `carerix-sim` emulator). Every selected field exists in the real Carerix schema; relations
//! select only `_id`. The documents themselves are built in [`super::graphql`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An entity kind the operator can sync, by its operator name (`spec.sync.entities`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Entity {
    /// Candidates (`CREmployee`).
    Candidates,
    /// Vacancies (`CRVacancy`).
    Vacancies,
    /// Companies (`CRCompany`).
    Companies,
    /// Contacts (`CRUser`, via `crContact*`).
    Contacts,
    /// Placements (`CRJob`; a Carerix "job" is a placement, not a vacancy).
    Placements,
    /// Matches (`CRMatch`).
    Matches,
    /// Vacancy publications (`CRPublication`).
    Publications,
}

/// The relation selection used for every relation: only the id.
const REL: &str = "{ _id }";

impl Entity {
    /// Every entity, in a stable order.
    pub const ALL: [Entity; 7] = [
        Entity::Candidates,
        Entity::Vacancies,
        Entity::Companies,
        Entity::Contacts,
        Entity::Placements,
        Entity::Matches,
        Entity::Publications,
    ];

    /// The operator name (`candidates`, `vacancies`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Entity::Candidates => "candidates",
            Entity::Vacancies => "vacancies",
            Entity::Companies => "companies",
            Entity::Contacts => "contacts",
            Entity::Placements => "placements",
            Entity::Matches => "matches",
            Entity::Publications => "publications",
        }
    }

    /// The Carerix GraphQL type (`CREmployee`, ...).
    pub fn carerix_type(self) -> &'static str {
        match self {
            Entity::Candidates => "CREmployee",
            Entity::Vacancies => "CRVacancy",
            Entity::Companies => "CRCompany",
            Entity::Contacts => "CRUser",
            Entity::Placements => "CRJob",
            Entity::Matches => "CRMatch",
            Entity::Publications => "CRPublication",
        }
    }

    /// The page query field (`crEmployeePage`, ...).
    pub fn page_query(self) -> &'static str {
        match self {
            Entity::Candidates => "crEmployeePage",
            Entity::Vacancies => "crVacancyPage",
            Entity::Companies => "crCompanyPage",
            Entity::Contacts => "crContactPage",
            Entity::Placements => "crJobPage",
            Entity::Matches => "crMatchPage",
            Entity::Publications => "crPublicationPage",
        }
    }

    /// The single-record query field (`crEmployee`, ...).
    pub fn single_query(self) -> &'static str {
        match self {
            Entity::Candidates => "crEmployee",
            Entity::Vacancies => "crVacancy",
            Entity::Companies => "crCompany",
            Entity::Contacts => "crContact",
            Entity::Placements => "crJob",
            Entity::Matches => "crMatch",
            Entity::Publications => "crPublication",
        }
    }

    /// The webhook event-type prefix (`cremployee` in `cremployee:updated`).
    pub fn event_prefix(self) -> &'static str {
        match self {
            Entity::Candidates => "cremployee",
            Entity::Vacancies => "crvacancy",
            Entity::Companies => "crcompany",
            Entity::Contacts => "crcontact",
            Entity::Placements => "crjob",
            Entity::Matches => "crmatch",
            Entity::Publications => "crpublication",
        }
    }

    /// The entity whose event prefix this is (case-insensitive), e.g. from `CREmployee:updated`.
    pub fn from_event_type(event_type: &str) -> Option<Entity> {
        let prefix = event_type.split(':').next().unwrap_or_default();
        Entity::ALL.into_iter().find(|e| e.event_prefix().eq_ignore_ascii_case(prefix))
    }

    /// The default selection of one record: every scalar field of the real Carerix type and the
    /// `_id` of every to-one relation ([`super::fields`], generated from the schema).
    pub fn fields(self) -> String {
        let t = super::fields::table(self);
        let mut out = t.scalars.join(" ");
        for relation in t.relations {
            out.push(' ');
            out.push_str(relation);
            out.push(' ');
            out.push_str(REL);
        }
        out
    }

    /// The selection of the named fields (scalars as they are, relations as `{ _id }`), plus what
    /// the sync needs whatever is asked: `_id`, `_kind`, `modificationDate`, `creationDate` (the
    /// comparison's order when no id sorts), `deleted` (where the type has it) and the own numeric
    /// id field.
    ///
    /// # Errors
    /// [`UnknownField`] for a name the type has neither as a scalar nor as a to-one relation.
    pub fn selection(self, names: &[String]) -> Result<String, UnknownField> {
        let t = super::fields::table(self);
        let mut wanted: Vec<&str> = vec!["_id", "_kind", "modificationDate", "creationDate"];
        if self.has_deleted_field() {
            wanted.push("deleted");
        }
        if let Some(f) = self.id_field() {
            wanted.push(f);
        }
        let mut out: Vec<String> = Vec::new();
        for w in wanted {
            out.push(w.to_string());
        }
        for n in names {
            let n = n.trim();
            if out.iter().any(|o| o == n || o.starts_with(&format!("{n} "))) {
                continue;
            }
            if t.scalars.contains(&n) {
                out.push(n.to_string());
            } else if t.relations.contains(&n) {
                out.push(format!("{n} {REL}"));
            } else {
                return Err(UnknownField { entity: self, field: n.to_string() });
            }
        }
        Ok(out.join(" "))
    }

    /// The to-one relations of the default selection (each as `{ _id }`).
    pub fn relations(self) -> &'static [&'static str] {
        super::fields::table(self).relations
    }

    /// The entity's own numeric id field (`employeeID`, declared `Int!` in the schema), if it has
    /// one (`CRMatch` has none).
    pub fn id_field(self) -> Option<&'static str> {
        match self {
            Entity::Candidates => Some("employeeID"),
            Entity::Vacancies => Some("vacancyID"),
            Entity::Companies => Some("companyID"),
            Entity::Contacts => Some("userID"),
            Entity::Placements => Some("jobID"),
            Entity::Publications => Some("publicationID"),
            Entity::Matches => None,
        }
    }

    /// Whether the type has a `deleted` field (the real `CRMatch` has none: a removed match is only
    /// seen by comparing ids).
    pub fn has_deleted_field(self) -> bool {
        !matches!(self, Entity::Matches)
    }
}

impl fmt::Display for Entity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A field the Carerix type does not have (as a scalar or a to-one relation).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} ({}) has no scalar field or to-one relation {field:?}; see docs/sync.md for how to list the fields", .entity.name(), .entity.carerix_type())]
pub struct UnknownField {
    /// The entity.
    pub entity: Entity,
    /// The name asked for.
    pub field: String,
}

/// An unknown entity name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown Carerix entity {0:?} (expected one of candidates, vacancies, companies, contacts, placements, matches, publications)"
)]
pub struct UnknownEntity(pub String);

impl FromStr for Entity {
    type Err = UnknownEntity;

    /// Parses an operator name (case-insensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Entity::ALL
            .into_iter()
            .find(|e| e.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownEntity(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for e in Entity::ALL {
            assert_eq!(e.to_string().parse::<Entity>(), Ok(e));
            assert_eq!(serde_json::to_value(e).ok(), Some(serde_json::Value::String(e.name().into())));
            assert_eq!(serde_json::from_value::<Entity>(e.name().into()).ok(), Some(e));
            assert_eq!(Entity::from_event_type(&format!("{}:updated", e.event_prefix())), Some(e));
        }
        assert!("jobs".parse::<Entity>().is_err());
        assert_eq!(Entity::from_event_type("CREmployee:created"), Some(Entity::Candidates));
        assert_eq!(Entity::from_event_type("crtodo:created"), None);
    }

    #[test]
    fn deleted_field_matches_selection() {
        for e in Entity::ALL {
            let has = e.fields().split_whitespace().any(|f| f == "deleted");
            assert_eq!(has, e.has_deleted_field(), "{e}");
        }
    }

    #[test]
    fn the_default_selection_copies_every_scalar_and_each_to_one_relation_id() {
        let placements = Entity::Placements.fields();
        for f in
            ["_id", "_kind", "jobID", "startDate", "endDate", "creationDate", "modificationDate", "deleted"]
        {
            assert!(placements.split_whitespace().any(|w| w == f), "{f} missing from {placements}");
        }
        assert!(placements.contains("toEmployee { _id }") && placements.contains("toVacancy { _id }"));
        assert!(Entity::Candidates.fields().split_whitespace().count() > 400);
    }

    #[test]
    fn a_named_selection_keeps_what_the_sync_needs_and_refuses_unknown_fields() {
        let sel = Entity::Candidates.selection(&["firstName".into(), "toStatusNode".into()]).expect("known");
        assert_eq!(
            sel,
            "_id _kind modificationDate creationDate deleted employeeID firstName toStatusNode { _id }"
        );
        assert_eq!(Entity::Matches.selection(&[]).expect("empty"), "_id _kind modificationDate creationDate");
        let err = Entity::Vacancies.selection(&["nope".into()]).expect_err("unknown");
        assert!(err.to_string().contains("CRVacancy") && err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn json_schema_is_a_string_enum() {
        let schema = schemars::schema_for!(Entity);
        let json = serde_json::to_string(&schema).unwrap_or_default();
        assert!(json.contains("\"candidates\"") && json.contains("\"publications\""), "{json}");
    }
}
