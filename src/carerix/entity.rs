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

    /// The selection set of one record, exactly as in `docs/carerix-surface.md`.
    pub fn fields(self) -> String {
        let scalars: &[&str] = match self {
            Entity::Candidates => &[
                "_id",
                "_kind",
                "employeeID",
                "firstName",
                "lastName",
                "emailAddress",
                "visitCity",
                "creationDate",
                "modificationDate",
                "deleted",
            ],
            Entity::Vacancies => &[
                "_id",
                "_kind",
                "vacancyID",
                "jobTitle",
                "startDate",
                "endDate",
                "notes",
                "creationDate",
                "modificationDate",
                "deleted",
            ],
            Entity::Companies => &[
                "_id",
                "_kind",
                "companyID",
                "name",
                "kvkNumber",
                "emailAddress",
                "visitCity",
                "creationDate",
                "modificationDate",
                "deleted",
            ],
            Entity::Contacts => &[
                "_id",
                "_kind",
                "userID",
                "firstName",
                "lastName",
                "emailAddress",
                "jobTitle",
                "isContact",
                "creationDate",
                "modificationDate",
                "deleted",
            ],
            Entity::Placements => &[
                "_id",
                "_kind",
                "jobID",
                "name",
                "startDate",
                "endDate",
                "creationDate",
                "modificationDate",
                "deleted",
            ],
            Entity::Matches => {
                &["_id", "_kind", "title", "motivation", "notes", "creationDate", "modificationDate"]
            }
            Entity::Publications => &[
                "_id",
                "_kind",
                "publicationID",
                "publicationStart",
                "publicationEnd",
                "notes",
                "creationDate",
                "modificationDate",
                "deleted",
            ],
        };
        let mut out = scalars.join(" ");
        for relation in self.relations() {
            out.push(' ');
            out.push_str(relation);
            out.push(' ');
            out.push_str(REL);
        }
        out
    }

    /// The relation fields selected (each as `{ _id }`).
    pub fn relations(self) -> &'static [&'static str] {
        match self {
            Entity::Candidates | Entity::Companies => &[],
            Entity::Vacancies | Entity::Contacts => &["toCompany"],
            Entity::Placements => &["toEmployee", "toVacancy", "toCompany", "toMatch"],
            Entity::Matches => &["toEmployee", "toVacancy", "toCompany"],
            Entity::Publications => &["toVacancy"],
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
    fn exact_selections() {
        assert_eq!(
            Entity::Placements.fields(),
            "_id _kind jobID name startDate endDate creationDate modificationDate deleted \
             toEmployee { _id } toVacancy { _id } toCompany { _id } toMatch { _id }"
        );
        assert_eq!(
            Entity::Contacts.fields(),
            "_id _kind userID firstName lastName emailAddress jobTitle isContact creationDate \
             modificationDate deleted toCompany { _id }"
        );
    }

    #[test]
    fn json_schema_is_a_string_enum() {
        let schema = schemars::schema_for!(Entity);
        let json = serde_json::to_string(&schema).unwrap_or_default();
        assert!(json.contains("\"candidates\"") && json.contains("\"publications\""), "{json}");
    }
}
