//! The GraphQL endpoint: validation with `apollo-compiler` against our own SDL
//! (`schema/carerix-sim.graphql`) and a small executor that walks the selection set over JSON records.
//!
//! Supported: the seven `crX`/`crXPage` queries, aliases, variables (coerced against the operation's
//! definitions), named and inline fragments, `__typename`. Introspection (`__schema`, `__type`) is not
//! served. Invalid documents yield HTTP 200 with `errors[].extensions.classification = "ValidationError"`.

use std::sync::{Arc, OnceLock};

use apollo_compiler::executable::{ExecutableDocument, Operation, Selection, SelectionSet};
use apollo_compiler::validation::Valid;
use apollo_compiler::{Node, Schema, ast};
use serde_json::{Map, Value, json};

use crate::model::{Entity, Record, Store};
use crate::qualifier;
use crate::readings::{IdOrder, Readings};

/// Our SDL.
pub const SDL: &str = include_str!("../schema/carerix-sim.graphql");

/// The parsed and validated schema (built once).
pub fn schema() -> Result<&'static Valid<Schema>, String> {
    static SCHEMA: OnceLock<Result<Valid<Schema>, String>> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Schema::parse_and_validate(SDL, "carerix-sim.graphql").map_err(|e| e.errors.to_string())
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// A GraphQL error body `{"errors":[{"message", "extensions":{"classification"}}]}`.
pub fn error_body(message: impl Into<String>, classification: &str) -> Value {
    json!({"errors": [{"message": message.into(), "extensions": {"classification": classification}}]})
}

/// A validated request ready to execute.
pub struct Prepared {
    doc: Valid<ExecutableDocument>,
    operation_name: Option<String>,
    variables: Map<String, Value>,
}

/// Parses and validates a request body. `Err` carries the GraphQL error body to send (HTTP 200).
pub fn prepare(body: &Value) -> Result<Prepared, Value> {
    let schema = schema().map_err(|e| error_body(format!("schema error: {e}"), "InternalError"))?;
    let Some(query) = body.get("query").and_then(Value::as_str) else {
        return Err(error_body("Request body must contain a 'query' string", "ValidationError"));
    };
    let operation_name = body.get("operationName").and_then(Value::as_str).map(str::to_owned);
    let doc = ExecutableDocument::parse_and_validate(schema, query, "query.graphql").map_err(|e| {
        let errors: Vec<Value> = e
            .errors
            .iter()
            .map(|d| json!({"message": d.error.to_string(), "extensions": {"classification": "ValidationError"}}))
            .collect();
        json!({ "errors": errors })
    })?;
    let raw_vars = match body.get("variables") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(error_body("'variables' must be an object", "ValidationError")),
    };
    let op = doc
        .operations
        .get(operation_name.as_deref())
        .map_err(|e| error_body(e.message().to_string(), "ValidationError"))?;
    let json_vars: apollo_compiler::response::JsonMap = serde_json::from_value(Value::Object(raw_vars))
        .map_err(|e| error_body(format!("bad variables: {e}"), "ValidationError"))?;
    let coerced = apollo_compiler::request::coerce_variable_values(schema, op, &json_vars)
        .map_err(|e| error_body(e.message().to_string(), "ValidationError"))?;
    let variables = match serde_json::to_value(coerced.into_inner()) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    Ok(Prepared { doc, operation_name, variables })
}

impl Prepared {
    fn operation(&self) -> Option<&Node<Operation>> {
        self.doc.operations.get(self.operation_name.as_deref()).ok()
    }

    /// The names of the root fields the operation selects (through fragments too).
    pub fn root_fields(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(op) = self.operation() {
            self.collect_fields(&op.selection_set, &mut out);
        }
        out
    }

    fn collect_fields(&self, set: &SelectionSet, out: &mut Vec<String>) {
        for sel in &set.selections {
            match sel {
                Selection::Field(f) => out.push(f.name.to_string()),
                Selection::InlineFragment(i) => self.collect_fields(&i.selection_set, out),
                Selection::FragmentSpread(s) => {
                    if let Some(frag) = self.doc.fragments.get(&s.fragment_name) {
                        self.collect_fields(&frag.selection_set, out);
                    }
                }
            }
        }
    }

    /// Executes against a tenant's store. Returns the response body.
    pub fn execute(&self, store: &Store, page_cap: usize) -> Value {
        self.execute_with(store, page_cap, &Readings::default())
    }

    /// Executes against a tenant's store under `readings`. Returns the response body.
    pub fn execute_with(&self, store: &Store, page_cap: usize, readings: &Readings) -> Value {
        let Some(op) = self.operation() else {
            return error_body("operation not found", "ValidationError");
        };
        let mut errors = Vec::new();
        let mut data = Map::new();
        self.exec_root(&op.selection_set, store, page_cap, readings, &mut data, &mut errors);
        let mut out = Map::new();
        out.insert("data".into(), Value::Object(data));
        if !errors.is_empty() {
            out.insert("errors".into(), Value::Array(errors));
        }
        Value::Object(out)
    }

    fn exec_root(
        &self,
        set: &SelectionSet,
        store: &Store,
        page_cap: usize,
        readings: &Readings,
        data: &mut Map<String, Value>,
        errors: &mut Vec<Value>,
    ) {
        for sel in &set.selections {
            let field = match sel {
                Selection::Field(f) => f,
                Selection::InlineFragment(i) => {
                    self.exec_root(&i.selection_set, store, page_cap, readings, data, errors);
                    continue;
                }
                Selection::FragmentSpread(s) => {
                    if let Some(frag) = self.doc.fragments.get(&s.fragment_name) {
                        self.exec_root(&frag.selection_set, store, page_cap, readings, data, errors);
                    }
                    continue;
                }
            };
            let key = field.alias.as_ref().unwrap_or(&field.name).to_string();
            if field.name == "__typename" {
                data.insert(key, json!("Query"));
                continue;
            }
            let args = self.arguments(&field.arguments);
            let result = match Entity::from_query_field(field.name.as_str()) {
                Some((entity, true)) => page_with(store, entity, &args, page_cap, readings),
                Some((entity, false)) => Ok(single(store, entity, &args)),
                None => Err(format!("Field '{}' is not served by carerix-sim", field.name)),
            };
            match result {
                Ok(v) => {
                    let ty = field.definition.ty.inner_named_type().to_string();
                    data.insert(key, self.project(&v, &field.selection_set, &ty));
                }
                Err(message) => {
                    data.insert(key.clone(), Value::Null);
                    errors.push(json!({"message": message, "path": [key],
                        "extensions": {"classification": "BAD_REQUEST"}}));
                }
            }
        }
    }

    fn arguments(&self, args: &[Node<ast::Argument>]) -> Map<String, Value> {
        args.iter().map(|a| (a.name.to_string(), self.value(&a.value))).collect()
    }

    fn value(&self, v: &ast::Value) -> Value {
        match v {
            ast::Value::Null => Value::Null,
            ast::Value::Enum(n) => Value::String(n.to_string()),
            ast::Value::Variable(n) => self.variables.get(n.as_str()).cloned().unwrap_or(Value::Null),
            ast::Value::String(s) => Value::String(s.clone()),
            ast::Value::Float(f) => json!(f.try_to_f64().unwrap_or_default()),
            ast::Value::Int(i) => i.as_str().parse::<i64>().map_or(Value::Null, |n| json!(n)),
            ast::Value::Boolean(b) => Value::Bool(*b),
            ast::Value::List(l) => Value::Array(l.iter().map(|x| self.value(x)).collect()),
            ast::Value::Object(o) => {
                Value::Object(o.iter().map(|(k, x)| (k.to_string(), self.value(x))).collect())
            }
        }
    }

    fn project(&self, v: &Value, set: &SelectionSet, ty: &str) -> Value {
        match v {
            Value::Array(items) => Value::Array(items.iter().map(|i| self.project(i, set, ty)).collect()),
            Value::Object(obj) => {
                let mut out = Map::new();
                self.project_into(obj, set, ty, &mut out);
                Value::Object(out)
            }
            other => other.clone(),
        }
    }

    fn project_into(
        &self,
        obj: &Map<String, Value>,
        set: &SelectionSet,
        ty: &str,
        out: &mut Map<String, Value>,
    ) {
        for sel in &set.selections {
            match sel {
                Selection::Field(f) => {
                    let key = f.alias.as_ref().unwrap_or(&f.name).to_string();
                    if f.name == "__typename" {
                        out.insert(key, json!(ty));
                        continue;
                    }
                    let child_ty = f.definition.ty.inner_named_type().to_string();
                    let raw = obj.get(f.name.as_str()).cloned().unwrap_or(Value::Null);
                    let projected = if f.selection_set.selections.is_empty() {
                        raw
                    } else {
                        self.project(&raw, &f.selection_set, &child_ty)
                    };
                    match (out.get_mut(&key), projected) {
                        (Some(Value::Object(existing)), Value::Object(more)) => existing.extend(more),
                        (_, p) => {
                            out.insert(key, p);
                        }
                    }
                }
                Selection::InlineFragment(i) => self.project_into(obj, &i.selection_set, ty, out),
                Selection::FragmentSpread(s) => {
                    if let Some(frag) = self.doc.fragments.get(&s.fragment_name) {
                        self.project_into(obj, &frag.selection_set, ty, out);
                    }
                }
            }
        }
    }
}

fn single(store: &Store, entity: Entity, args: &Map<String, Value>) -> Value {
    let id = args.get("_id").and_then(|v| match v {
        Value::String(s) => s.parse::<u64>().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    });
    id.and_then(|id| store.get(&entity).and_then(|m| m.get(&id))).map_or(Value::Null, Record::to_json)
}

/// Runs a page query: qualifier, `norestrict`, `pageable` (zero-based page, size default 20 capped at
/// `page_cap`, sort with a stable tie-break on the numeric id).
pub fn page(
    store: &Store,
    entity: Entity,
    args: &Map<String, Value>,
    page_cap: usize,
) -> Result<Value, String> {
    page_with(store, entity, args, page_cap, &Readings::default())
}

/// [`page`] under `readings`.
pub fn page_with(
    store: &Store,
    entity: Entity,
    args: &Map<String, Value>,
    page_cap: usize,
    readings: &Readings,
) -> Result<Value, String> {
    let norestrict = args.get("norestrict").and_then(Value::as_bool).unwrap_or(false);
    let q = match args.get("qualifier").and_then(Value::as_str) {
        Some(s) if !s.trim().is_empty() => Some(qualifier::parse(s, entity).map_err(|e| e.to_string())?),
        _ => None,
    };
    if !readings.id_in_qualifier && q.as_ref().is_some_and(|q| q.mentions("_id")) {
        return Err(format!(
            "Invalid qualifier: key path '_id' is not an attribute of {}",
            entity.type_name()
        ));
    }
    let pageable = args.get("pageable").cloned().unwrap_or(Value::Null);
    let page_no = pageable.get("page").and_then(Value::as_i64).unwrap_or(0).max(0) as usize;
    let size = pageable.get("size").and_then(Value::as_i64).unwrap_or(20).max(1) as usize;
    let size = size.min(readings.cap(page_cap.max(1)));
    let mut sort: Vec<(String, bool)> = Vec::new();
    if let Some(Value::Array(orders)) = pageable.get("sort") {
        for o in orders {
            let Some(prop) = o.get("property").and_then(Value::as_str) else {
                continue;
            };
            if entity.field_kind(prop).is_none() || (prop == "_id" && !readings.id_in_sort) {
                return Err(format!("Unknown sort property '{prop}' for {}", entity.type_name()));
            }
            sort.push((prop.to_string(), o.get("direction").and_then(Value::as_str) == Some("DESC")));
        }
    }
    let rows: Vec<&Record> = store
        .get(&entity)
        .map(|m| {
            m.values()
                .filter(|r| norestrict || !r.deleted)
                .filter(|r| q.as_ref().is_none_or(|q| q.matches_with(r, readings)))
                .collect()
        })
        .unwrap_or_default();
    let total = rows.len();
    let total_pages = total.div_ceil(size);
    let items: Vec<Value> = sorted_page(rows, &sort, readings, page_no.saturating_mul(size), size)
        .into_iter()
        .map(Record::to_json)
        .collect();
    let sort_str = if sort.is_empty() {
        Value::Null
    } else {
        json!(
            sort.iter()
                .map(|(p, d)| format!("{p}: {}", if *d { "DESC" } else { "ASC" }))
                .collect::<Vec<_>>()
                .join(",")
        )
    };
    Ok(json!({
        "first": page_no == 0,
        "last": page_no + 1 >= total_pages,
        "numberOfElements": items.len(),
        "page": page_no,
        "size": size,
        "sort": sort_str,
        "totalElements": total,
        "totalPages": total_pages,
        "items": items,
    }))
}

/// A sortable key: instants for the two record dates, numbers, then strings; nulls first.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum SortKey {
    Null,
    Num(i64),
    Str(String),
}

/// The rows `offset..offset + size` of `rows` in `sort` order (ties broken by `_id`). The sort keys
/// are computed once per row and only the rows up to the page's end are put in order, so a page
/// costs O(n) rather than O(n log n) lookups while the emulator's state is locked: a full sort of
/// 40 000 candidates per page made the emulator, not the client, the bottleneck of a benchmark.
fn sorted_page<'a>(
    rows: Vec<&'a Record>,
    sort: &[(String, bool)],
    readings: &Readings,
    offset: usize,
    size: usize,
) -> Vec<&'a Record> {
    let mut keyed: Vec<(Vec<SortKey>, &Record)> = rows
        .into_iter()
        .map(|r| {
            let mut keys: Vec<SortKey> = sort.iter().map(|(p, _)| sort_key(r, p, readings)).collect();
            keys.push(sort_key(r, "_id", readings));
            (keys, r)
        })
        .collect();
    let order = |a: &(Vec<SortKey>, &Record), b: &(Vec<SortKey>, &Record)| {
        for (i, (_, desc)) in sort.iter().enumerate() {
            let ord = a.0[i].cmp(&b.0[i]);
            let ord = if *desc { ord.reverse() } else { ord };
            if ord != std::cmp::Ordering::Equal {
                return ord;
            }
        }
        a.0[sort.len()].cmp(&b.0[sort.len()])
    };
    let end = offset.saturating_add(size);
    if end < keyed.len() {
        keyed.select_nth_unstable_by(end, order);
        keyed.truncate(end);
    }
    keyed.sort_by(order);
    keyed.into_iter().skip(offset).map(|(_, r)| r).collect()
}

fn sort_key(r: &Record, prop: &str, readings: &Readings) -> SortKey {
    let date = |t: chrono::DateTime<chrono::Utc>| {
        if readings.wall_clock_order {
            SortKey::Str(crate::dates::format(t))
        } else {
            SortKey::Num(t.timestamp())
        }
    };
    match prop {
        "_id" => match readings.id_order {
            IdOrder::Numeric => SortKey::Num(r.id as i64),
            IdOrder::Text => SortKey::Str(r.id.to_string()),
        },
        "creationDate" => date(r.creation),
        "modificationDate" => r.modification_date().map_or(SortKey::Null, date),
        "deleted" => SortKey::Num(i64::from(r.deleted)),
        _ => match r.fields.get(prop) {
            None | Some(Value::Null) => SortKey::Null,
            Some(Value::Number(n)) => SortKey::Num(n.as_i64().unwrap_or_default()),
            Some(Value::String(s)) => match crate::dates::parse(s) {
                Some(t) => SortKey::Num(t.timestamp()),
                None => SortKey::Str(s.clone()),
            },
            Some(Value::Object(o)) => o
                .get("_id")
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
                .map_or(SortKey::Null, SortKey::Num),
            Some(v) => SortKey::Str(v.to_string()),
        },
    }
}

/// Shared handle to the schema for callers that want it.
pub fn shared_schema() -> Option<Arc<Valid<Schema>>> {
    schema().ok().map(|s| Arc::new(s.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{SeedSpec, seed};
    use chrono::Utc;

    fn store() -> Store {
        let mut n = 1;
        seed("acme", &SeedSpec { seed: 1, records: 230, same_second_burst: 150, now: Utc::now() }, &mut n)
    }

    #[test]
    fn our_schema_is_valid() {
        assert!(schema().is_ok(), "{:?}", schema().err());
    }

    #[test]
    fn an_invalid_document_gets_a_validation_error() {
        let e = prepare(&json!({"query": "{ crEmployeePage { items { noSuchField } } }"}))
            .err()
            .expect("invalid");
        assert_eq!(e["errors"][0]["extensions"]["classification"], "ValidationError");
    }

    #[test]
    fn paging_walks_all_records_in_a_stable_order_even_within_one_second() {
        let s = store();
        let mut seen = Vec::new();
        for p in 0..3 {
            let args = json!({"norestrict": true, "pageable": {"page": p, "size": 100,
                "sort": [{"property": "modificationDate", "direction": "ASC"}]}});
            let Value::Object(args) = args else { panic!() };
            let v = page(&s, Entity::Employee, &args, 100).expect("page");
            assert_eq!(v["totalElements"], 230);
            assert_eq!(v["totalPages"], 3);
            assert_eq!(v["last"], p == 2);
            for i in v["items"].as_array().expect("items") {
                seen.push(i["_id"].as_str().expect("id").to_string());
            }
        }
        let mut dedup = seen.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(dedup.len(), 230);
    }

    #[test]
    fn every_page_holds_the_same_records_as_a_full_sort_would_give_it() {
        let s = store();
        let readings = Readings::default();
        for sort in [
            vec![("modificationDate".to_string(), false)],
            vec![("modificationDate".to_string(), true), ("employeeID".to_string(), false)],
            vec![("lastName".to_string(), false)],
        ] {
            let rows: Vec<&Record> = s[&Entity::Employee].values().collect();
            let mut full = rows.clone();
            full.sort_by(|a, b| {
                for (p, desc) in &sort {
                    let o = sort_key(a, p, &readings).cmp(&sort_key(b, p, &readings));
                    let o = if *desc { o.reverse() } else { o };
                    if o != std::cmp::Ordering::Equal {
                        return o;
                    }
                }
                a.id.cmp(&b.id)
            });
            let want: Vec<u64> = full.iter().map(|r| r.id).collect();
            let mut got = Vec::new();
            for offset in (0..rows.len() + 30).step_by(30) {
                got.extend(sorted_page(rows.clone(), &sort, &readings, offset, 30).iter().map(|r| r.id));
            }
            assert_eq!(got, want, "sorted by {sort:?}");
        }
    }

    #[test]
    fn page_size_is_capped_and_soft_deleted_records_are_hidden_by_default() {
        let s = store();
        let Value::Object(args) = json!({"pageable": {"size": 500}}) else { panic!() };
        let v = page(&s, Entity::Employee, &args, 100).expect("page");
        assert_eq!(v["size"], 100);
        let hidden = s[&Entity::Employee].values().filter(|r| r.deleted).count();
        assert_eq!(v["totalElements"], json!(230 - hidden));
    }

    #[test]
    fn aliases_fragments_variables_and_typename_are_served() {
        let s = store();
        let q = "query Q($q: String) { a: crEmployeePage(qualifier: $q, norestrict: true, pageable: {size: 1}) { __typename items { ...F } } }
                 fragment F on CREmployee { _id name: lastName __typename }";
        let p = prepare(&json!({"query": q, "variables": {"q": "_id = 300"}})).expect("valid");
        assert_eq!(p.root_fields(), vec!["crEmployeePage"]);
        let v = p.execute(&s, 100);
        assert_eq!(v["data"]["a"]["__typename"], "CREmployeePage");
        assert_eq!(v["data"]["a"]["items"][0]["_id"], "300");
        assert_eq!(v["data"]["a"]["items"][0]["__typename"], "CREmployee");
        assert!(v["data"]["a"]["items"][0]["name"].is_string());
    }

    #[test]
    fn a_bad_qualifier_is_a_graphql_error() {
        let p = prepare(&json!({"query": "{ crMatchPage(qualifier: \"deleted = 0\") { totalElements } }"}))
            .expect("valid");
        let v = p.execute(&store(), 100);
        assert!(v["errors"][0]["message"].as_str().expect("msg").contains("Invalid qualifier"));
    }

    /// Every type, field and argument of our SDL exists with the same type in the real schema.
    #[test]
    fn our_schema_is_a_subset_of_the_real_carerix_schema_read_from_shared_carerix_schema_graphql() {
        let path = std::env::var("CARERIX_SCHEMA").map(std::path::PathBuf::from).unwrap_or_else(|_| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/carerix/schema.graphql")
        });
        let Ok(real_sdl) = std::fs::read_to_string(&path) else {
            panic!(
                "the real Carerix schema is missing at {}: get it from github.com/jwvantriet/confair-api \
                 (docs/carerix-schema.graphql, see API.md §3.1) and put it there (do not copy it into this repo)",
                path.display()
            );
        };
        let real = Schema::parse(real_sdl, "schema.graphql").unwrap_or_else(|e| e.partial);
        let ours = schema().expect("our schema");
        for (name, ty) in &ours.types {
            if ty.is_built_in() {
                continue;
            }
            let Some(real_ty) = real.types.get(name) else {
                panic!("type {name} missing in the real schema")
            };
            use apollo_compiler::schema::ExtendedType as T;
            match (ty, real_ty) {
                (T::Object(o), T::Object(r)) => {
                    for (fname, f) in &o.fields {
                        let rf = r.fields.get(fname).unwrap_or_else(|| panic!("{name}.{fname} missing"));
                        assert_eq!(f.ty, rf.ty, "{name}.{fname} type differs");
                        for a in &f.arguments {
                            let ra = rf
                                .arguments
                                .iter()
                                .find(|x| x.name == a.name)
                                .unwrap_or_else(|| panic!("{name}.{fname}({}) missing", a.name));
                            assert_eq!(a.ty, ra.ty, "{name}.{fname}({}) type differs", a.name);
                        }
                        for ra in &rf.arguments {
                            if ra.ty.is_non_null() && ra.default_value.is_none() {
                                assert!(
                                    f.arguments.iter().any(|a| a.name == ra.name),
                                    "{name}.{fname} lacks required {}",
                                    ra.name
                                );
                            }
                        }
                    }
                }
                (T::InputObject(o), T::InputObject(r)) => {
                    for (fname, f) in &o.fields {
                        let rf = r.fields.get(fname).unwrap_or_else(|| panic!("{name}.{fname} missing"));
                        assert_eq!(f.ty, rf.ty, "{name}.{fname} type differs");
                    }
                    for (fname, rf) in &r.fields {
                        if rf.ty.is_non_null() && rf.default_value.is_none() {
                            assert!(o.fields.contains_key(fname), "{name} lacks required {fname}");
                        }
                    }
                }
                (T::Enum(o), T::Enum(r)) => {
                    for v in o.values.keys() {
                        assert!(r.values.contains_key(v), "{name}.{v} missing");
                    }
                }
                (T::Scalar(_), T::Scalar(_)) => {}
                _ => panic!("{name} has a different kind in the real schema"),
            }
        }
    }
}
