//! The seven Carerix entities we serve, their records and deterministic seeding.
//!
//! A record keeps `creationDate`/`modificationDate` as UTC instants and every other field as JSON
//! (relations as `{"_id": "..."}`, other dates as `NSCalendarDate` strings).

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::dates;

/// One of the served Carerix entities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Entity {
    /// Candidates (`CREmployee`).
    Employee,
    /// Vacancies (`CRVacancy`).
    Vacancy,
    /// Companies (`CRCompany`).
    Company,
    /// Contacts (`CRUser` via `crContact`).
    Contact,
    /// Placements (`CRJob`).
    Job,
    /// Matches (`CRMatch`).
    Match,
    /// Publications (`CRPublication`).
    Publication,
}

/// How a field is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// A string.
    Str,
    /// An integer.
    Int,
    /// An `NSCalendarDate`.
    Date,
    /// A relation holding `{"_id"}` of another entity.
    Rel(Entity),
}

impl Entity {
    /// All entities, in seeding order (relations point backwards).
    pub const ALL: [Entity; 7] = [
        Entity::Company,
        Entity::Employee,
        Entity::Vacancy,
        Entity::Contact,
        Entity::Match,
        Entity::Job,
        Entity::Publication,
    ];

    /// The GraphQL type name (`CREmployee`, ..., `CRUser` for contacts).
    pub fn type_name(self) -> &'static str {
        match self {
            Entity::Employee => "CREmployee",
            Entity::Vacancy => "CRVacancy",
            Entity::Company => "CRCompany",
            Entity::Contact => "CRUser",
            Entity::Job => "CRJob",
            Entity::Match => "CRMatch",
            Entity::Publication => "CRPublication",
        }
    }

    /// The query stem: `crEmployee` / `crEmployeePage` etc.
    pub fn query_name(self) -> &'static str {
        match self {
            Entity::Employee => "crEmployee",
            Entity::Vacancy => "crVacancy",
            Entity::Company => "crCompany",
            Entity::Contact => "crContact",
            Entity::Job => "crJob",
            Entity::Match => "crMatch",
            Entity::Publication => "crPublication",
        }
    }

    /// The lower-case event prefix (`cremployee`, ..., `crcontact`).
    pub fn event_prefix(self) -> String {
        self.query_name().to_lowercase()
    }

    /// The operator's plural name (`candidates`, ...).
    pub fn operator_name(self) -> &'static str {
        match self {
            Entity::Employee => "candidates",
            Entity::Vacancy => "vacancies",
            Entity::Company => "companies",
            Entity::Contact => "contacts",
            Entity::Job => "placements",
            Entity::Match => "matches",
            Entity::Publication => "publications",
        }
    }

    /// Looks an entity up by type name, query name, event prefix or operator name (case-insensitive).
    pub fn parse(s: &str) -> Option<Entity> {
        let l = s.to_lowercase();
        Entity::ALL
            .into_iter()
            .find(|e| e.type_name().to_lowercase() == l || e.event_prefix() == l || e.operator_name() == l)
    }

    /// Finds the entity for a root query field name and whether it is the page query.
    pub fn from_query_field(name: &str) -> Option<(Entity, bool)> {
        Entity::ALL.into_iter().find_map(|e| {
            if name == e.query_name() {
                Some((e, false))
            } else if name.strip_suffix("Page") == Some(e.query_name()) {
                Some((e, true))
            } else {
                None
            }
        })
    }

    /// Whether the type has a `deleted` field (CRMatch has none: removing a match hard-deletes it).
    pub fn has_deleted(self) -> bool {
        self != Entity::Match
    }

    /// The numeric human id field (`employeeID`, ...), if any.
    pub fn id_field(self) -> Option<&'static str> {
        match self {
            Entity::Employee => Some("employeeID"),
            Entity::Vacancy => Some("vacancyID"),
            Entity::Company => Some("companyID"),
            Entity::Contact => Some("userID"),
            Entity::Job => Some("jobID"),
            Entity::Publication => Some("publicationID"),
            Entity::Match => None,
        }
    }

    /// The stored fields besides `_id`, `_kind`, `creationDate`, `modificationDate`, `deleted`.
    pub fn fields(self) -> &'static [(&'static str, FieldKind)] {
        use FieldKind::*;
        match self {
            Entity::Employee => &[
                ("employeeID", Int),
                ("firstName", Str),
                ("lastName", Str),
                ("emailAddress", Str),
                ("visitCity", Str),
            ],
            Entity::Vacancy => &[
                ("vacancyID", Int),
                ("jobTitle", Str),
                ("startDate", Date),
                ("endDate", Date),
                ("notes", Str),
                ("toCompany", Rel(Entity::Company)),
            ],
            Entity::Company => &[
                ("companyID", Int),
                ("name", Str),
                ("kvkNumber", Str),
                ("emailAddress", Str),
                ("visitCity", Str),
            ],
            Entity::Contact => &[
                ("userID", Int),
                ("firstName", Str),
                ("lastName", Str),
                ("emailAddress", Str),
                ("jobTitle", Str),
                ("isContact", Int),
                ("toCompany", Rel(Entity::Company)),
            ],
            Entity::Job => &[
                ("jobID", Int),
                ("name", Str),
                ("startDate", Date),
                ("endDate", Date),
                ("toEmployee", Rel(Entity::Employee)),
                ("toVacancy", Rel(Entity::Vacancy)),
                ("toCompany", Rel(Entity::Company)),
                ("toMatch", Rel(Entity::Match)),
            ],
            Entity::Match => &[
                ("title", Str),
                ("motivation", Str),
                ("notes", Str),
                ("toEmployee", Rel(Entity::Employee)),
                ("toVacancy", Rel(Entity::Vacancy)),
                ("toCompany", Rel(Entity::Company)),
            ],
            Entity::Publication => &[
                ("publicationID", Int),
                ("publicationStart", Date),
                ("publicationEnd", Date),
                ("notes", Str),
                ("toVacancy", Rel(Entity::Vacancy)),
            ],
        }
    }

    /// The kind of a field by name, including the common ones.
    pub fn field_kind(self, name: &str) -> Option<FieldKind> {
        match name {
            "_id" => Some(FieldKind::Int),
            "_kind" => Some(FieldKind::Str),
            "creationDate" | "modificationDate" => Some(FieldKind::Date),
            "deleted" if self.has_deleted() => Some(FieldKind::Int),
            _ => self.fields().iter().find(|(n, _)| *n == name).map(|(_, k)| *k),
        }
    }
}

/// One stored record.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Numeric id (rendered as a string `_id`).
    pub id: u64,
    /// The entity.
    pub entity: Entity,
    /// Soft-deleted (`deleted: 1`).
    pub deleted: bool,
    /// `creationDate`.
    pub creation: DateTime<Utc>,
    /// `modificationDate`.
    pub modification: DateTime<Utc>,
    /// Other fields.
    pub fields: Map<String, Value>,
}

impl Record {
    /// The full JSON form as the GraphQL layer serves it (before selection).
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("_id".into(), Value::String(self.id.to_string()));
        m.insert("_kind".into(), Value::String(self.entity.type_name().into()));
        m.insert("creationDate".into(), Value::String(dates::format(self.creation)));
        m.insert("modificationDate".into(), Value::String(dates::format(self.modification)));
        if self.entity.has_deleted() {
            m.insert("deleted".into(), json!(i32::from(self.deleted)));
        }
        for (k, v) in &self.fields {
            m.insert(k.clone(), v.clone());
        }
        Value::Object(m)
    }
}

impl Record {
    /// `modificationDate` as served: `None` when the data has it null.
    pub fn modification_date(&self) -> Option<DateTime<Utc>> {
        match self.fields.get("modificationDate") {
            Some(Value::Null) => None,
            _ => Some(self.modification),
        }
    }
}

/// The `modificationDate` of a change at `now` to a record last modified at `prev`. With
/// `second_precision` it is `now` cut to whole seconds, and can equal `prev` (several versions in
/// one second); otherwise it is `now`, at least one second after `prev`.
pub fn next_modification(prev: DateTime<Utc>, now: DateTime<Utc>, second_precision: bool) -> DateTime<Utc> {
    if second_precision {
        let whole = DateTime::<Utc>::from_timestamp(now.timestamp(), 0).unwrap_or(now);
        return whole.max(prev);
    }
    let floor = prev + Duration::seconds(1);
    if now.timestamp() > prev.timestamp() { now } else { floor }
}

/// All records of one tenant.
pub type Store = BTreeMap<Entity, BTreeMap<u64, Record>>;

const FIRST: &[&str] = &[
    "Daan", "Sem", "Lucas", "Levi", "Finn", "Noah", "Milan", "Bram", "Jesse", "Thijs", "Emma", "Julia",
    "Sophie", "Tess", "Zoë", "Sara", "Anna", "Fleur", "Lotte", "Eva", "Femke", "Sanne", "Ruben", "Joris",
];
const LAST: &[&str] = &[
    "de Jong",
    "Jansen",
    "de Vries",
    "van den Berg",
    "van Dijk",
    "Bakker",
    "Janssen",
    "Visser",
    "Smit",
    "Meijer",
    "de Boer",
    "Mulder",
    "de Groot",
    "Bos",
    "Vos",
    "Peters",
    "Hendriks",
    "van Leeuwen",
    "Dekker",
    "Brouwer",
    "de Wit",
    "Dijkstra",
    "Smits",
    "de Graaf",
];
const CITIES: &[&str] = &[
    "Amsterdam",
    "Rotterdam",
    "Utrecht",
    "Den Haag",
    "Eindhoven",
    "Groningen",
    "Tilburg",
    "Almere",
    "Breda",
    "Nijmegen",
    "Apeldoorn",
    "Haarlem",
    "Arnhem",
    "Zwolle",
    "Leiden",
    "Maastricht",
];
const COMPANY_A: &[&str] =
    &["Bouwbedrijf", "Techniek", "Logistiek", "Zorggroep", "Installatie", "Transport", "Metaal", "Software"];
const COMPANY_B: &[&str] = &["Holland", "Noord", "Delta", "Rijnmond", "Veluwe", "Brabant", "Lage Landen"];
const COMPANY_SUFFIX: &[&str] = &["B.V.", "N.V.", "& Zn.", "Groep", "Partners"];
const TITLES: &[&str] = &[
    "Magazijnmedewerker",
    "Heftruckchauffeur",
    "Verpleegkundige",
    "Software Engineer",
    "Monteur",
    "Administratief medewerker",
    "Accountmanager",
    "Lasser",
    "Projectleider",
    "Recruiter",
    "Planner",
    "Elektricien",
    "Klantenservice medewerker",
    "Productiemedewerker",
];

fn pick<'a>(rng: &mut StdRng, list: &[&'a str]) -> &'a str {
    list[rng.random_range(0..list.len())]
}

fn email(first: &str, last: &str, n: u64) -> String {
    let clean = |s: &str| -> String {
        s.chars().filter(|c| c.is_ascii_alphanumeric()).collect::<String>().to_lowercase()
    };
    format!("{}.{}{}@example.nl", clean(first), clean(last), n % 100)
}

/// Seeding parameters.
#[derive(Debug, Clone)]
pub struct SeedSpec {
    /// Base seed (mixed with the tenant name).
    pub seed: u64,
    /// Records per entity.
    pub records: usize,
    /// How many candidates share one `modificationDate` second.
    pub same_second_burst: usize,
    /// "Now" for the spread (timestamps lie in the year before the start of this day).
    pub now: DateTime<Utc>,
}

fn tenant_seed(seed: u64, tenant: &str) -> u64 {
    tenant.bytes().fold(seed ^ 0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// Generates a deterministic record set for a tenant. Ids are numeric and unique per tenant.
///
/// Each entity gets `records` records whose `modificationDate` is spread over the past year; in each
/// entity up to six records fall into the repeated hour of the last October DST change (three per
/// pass) and, for candidates, `same_second_burst` records share one second.
pub fn seed(tenant: &str, spec: &SeedSpec, next_id: &mut u64) -> Store {
    let mut rng = StdRng::seed_from_u64(tenant_seed(spec.seed, tenant));
    let mut store = Store::new();
    let secs = spec.now.timestamp();
    let day_start = DateTime::<Utc>::from_timestamp(secs - secs.rem_euclid(86_400), 0).unwrap_or(spec.now);
    let fallback = dates::last_october_fallback(spec.now);
    let burst_at = day_start - Duration::days(40) + Duration::hours(9);
    for entity in Entity::ALL {
        let mut ids: Vec<u64> = Vec::new();
        for i in 0..spec.records {
            let id = *next_id;
            *next_id += 1;
            let modification = if entity == Entity::Employee && i < spec.same_second_burst {
                burst_at
            } else if spec.records - i <= 6 {
                // the last six: three in the first pass (+0200), three in the second (+0100)
                let k = (spec.records - i - 1) as i64;
                let pass = if k >= 3 { Duration::hours(1) } else { Duration::zero() };
                fallback + pass + Duration::minutes(10 * (k % 3) + 5) + Duration::seconds(k)
            } else {
                day_start - Duration::seconds(rng.random_range(60..365 * 86_400))
            };
            let creation = modification - Duration::seconds(rng.random_range(0..200 * 86_400));
            let mut fields = Map::new();
            if let Some(f) = entity.id_field() {
                fields.insert(f.into(), json!(id));
            }
            let first = pick(&mut rng, FIRST);
            let last = pick(&mut rng, LAST);
            let start = dates::format(modification + Duration::days(rng.random_range(7..90)));
            let end = dates::format(modification + Duration::days(rng.random_range(120..400)));
            let rel = |store: &Store, e: Entity, rng: &mut StdRng| -> Value {
                match store.get(&e).filter(|m| !m.is_empty()) {
                    Some(m) => {
                        let keys: Vec<&u64> = m.keys().collect();
                        json!({"_id": keys[rng.random_range(0..keys.len())].to_string()})
                    }
                    None => Value::Null,
                }
            };
            match entity {
                Entity::Employee | Entity::Contact => {
                    fields.insert("firstName".into(), json!(first));
                    fields.insert("lastName".into(), json!(last));
                    fields.insert("emailAddress".into(), json!(email(first, last, id)));
                    if entity == Entity::Employee {
                        fields.insert("visitCity".into(), json!(pick(&mut rng, CITIES)));
                    } else {
                        fields.insert("jobTitle".into(), json!(pick(&mut rng, TITLES)));
                        fields.insert("isContact".into(), json!(1));
                        fields.insert("toCompany".into(), rel(&store, Entity::Company, &mut rng));
                    }
                }
                Entity::Company => {
                    let name = format!(
                        "{} {} {}",
                        pick(&mut rng, COMPANY_A),
                        pick(&mut rng, COMPANY_B),
                        pick(&mut rng, COMPANY_SUFFIX)
                    );
                    let domain: String =
                        name.chars().filter(|c| c.is_ascii_alphanumeric()).collect::<String>().to_lowercase();
                    fields.insert("name".into(), json!(name));
                    fields.insert(
                        "kvkNumber".into(),
                        json!(format!("{:08}", rng.random_range(10_000_000..99_999_999u32))),
                    );
                    fields.insert("emailAddress".into(), json!(format!("info@{domain}.nl")));
                    fields.insert("visitCity".into(), json!(pick(&mut rng, CITIES)));
                }
                Entity::Vacancy => {
                    fields.insert("jobTitle".into(), json!(pick(&mut rng, TITLES)));
                    fields.insert("startDate".into(), json!(start));
                    fields.insert("endDate".into(), json!(end));
                    fields
                        .insert("notes".into(), json!(format!("Fulltime, regio {}", pick(&mut rng, CITIES))));
                    fields.insert("toCompany".into(), rel(&store, Entity::Company, &mut rng));
                }
                Entity::Match => {
                    fields.insert("title".into(), json!(format!("{first} {last}")));
                    fields.insert("motivation".into(), json!("Goede match op ervaring en regio"));
                    fields.insert("notes".into(), json!("Voorgesteld aan klant"));
                    fields.insert("toEmployee".into(), rel(&store, Entity::Employee, &mut rng));
                    fields.insert("toVacancy".into(), rel(&store, Entity::Vacancy, &mut rng));
                    fields.insert("toCompany".into(), rel(&store, Entity::Company, &mut rng));
                }
                Entity::Job => {
                    fields.insert("name".into(), json!(pick(&mut rng, TITLES)));
                    fields.insert("startDate".into(), json!(start));
                    fields.insert("endDate".into(), json!(end));
                    fields.insert("toEmployee".into(), rel(&store, Entity::Employee, &mut rng));
                    fields.insert("toVacancy".into(), rel(&store, Entity::Vacancy, &mut rng));
                    fields.insert("toCompany".into(), rel(&store, Entity::Company, &mut rng));
                    fields.insert("toMatch".into(), rel(&store, Entity::Match, &mut rng));
                }
                Entity::Publication => {
                    fields.insert("publicationStart".into(), json!(start));
                    fields.insert("publicationEnd".into(), json!(end));
                    fields.insert("notes".into(), json!("Gepubliceerd op website"));
                    fields.insert("toVacancy".into(), rel(&store, Entity::Vacancy, &mut rng));
                }
            }
            let deleted = entity.has_deleted() && rng.random_range(0..25) == 0;
            ids.push(id);
            store
                .entry(entity)
                .or_default()
                .insert(id, Record { id, entity, deleted, creation, modification, fields });
        }
    }
    store
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> SeedSpec {
        SeedSpec { seed: 7, records: 200, same_second_burst: 150, now: Utc::now() }
    }

    #[test]
    fn seeding_is_deterministic_for_a_seed() {
        let (mut a, mut b) = (1000, 1000);
        assert_eq!(seed("acme", &spec(), &mut a), seed("acme", &spec(), &mut b));
    }

    #[test]
    fn candidates_contain_a_same_second_burst_larger_than_a_page() {
        let mut n = 1000;
        let store = seed("acme", &spec(), &mut n);
        let mut counts: BTreeMap<DateTime<Utc>, usize> = BTreeMap::new();
        for r in store[&Entity::Employee].values() {
            *counts.entry(r.modification).or_default() += 1;
        }
        assert!(counts.values().any(|c| *c > 100));
    }

    #[test]
    fn records_fall_in_both_passes_of_the_repeated_october_hour() {
        let mut n = 1000;
        let store = seed("acme", &spec(), &mut n);
        let fb = dates::last_october_fallback(Utc::now());
        let in_pass = |from: DateTime<Utc>| {
            store[&Entity::Vacancy]
                .values()
                .filter(|r| r.modification >= from && r.modification < from + Duration::hours(1))
                .count()
        };
        assert!(in_pass(fb) >= 3);
        assert!(in_pass(fb + Duration::hours(1)) >= 3);
    }

    #[test]
    fn relations_point_at_existing_records() {
        let mut n = 1000;
        let store = seed("acme", &spec(), &mut n);
        for r in store[&Entity::Job].values() {
            for (f, target) in [("toEmployee", Entity::Employee), ("toMatch", Entity::Match)] {
                let id: u64 = r.fields[f]["_id"].as_str().and_then(|s| s.parse().ok()).expect("id");
                assert!(store[&target].contains_key(&id));
            }
        }
    }
}
