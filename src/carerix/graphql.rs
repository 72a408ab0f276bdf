//! The GraphQL data API (`POST {api_url}/graphql/v1/graphql`): paged and single reads of the
//! [`Entity`] kinds, with the selections of `docs/carerix-surface.md`.
//!
//! Arguments are always passed as GraphQL variables, never interpolated into the document.
//! Mutations and the GraphQL webhook management API are left out (webhooks are managed through
//! REST, see [`super::webhooks`]).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::warn;

use super::client::{ApiRequest, CarerixClient, join};
use super::entity::Entity;
use super::error::{Error, Result};

/// The largest page Carerix serves.
pub const MAX_PAGE_SIZE: u32 = 100;

/// Sort direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "UPPERCASE")]
pub enum Direction {
    /// Ascending (Carerix's default).
    #[default]
    Asc,
    /// Descending.
    Desc,
}

/// A page to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    /// An EOF qualifier, e.g. `modificationDate >= (NSCalendarDate) '2025-01-01 00:00:00'`.
    pub qualifier: Option<String>,
    /// Zero-based page number.
    pub page: u32,
    /// Page size, 1..=100.
    pub size: u32,
    /// Sort orders (property, direction).
    pub sort: Vec<(String, Direction)>,
    /// Include soft-deleted records (`norestrict: true`).
    pub norestrict: bool,
}

impl Default for PageRequest {
    fn default() -> Self {
        PageRequest { qualifier: None, page: 0, size: MAX_PAGE_SIZE, sort: Vec::new(), norestrict: false }
    }
}

impl PageRequest {
    /// The GraphQL variables of this request.
    pub fn variables(&self) -> Value {
        let mut pageable = json!({ "page": self.page, "size": self.size });
        if !self.sort.is_empty() {
            pageable["sort"] = self
                .sort
                .iter()
                .map(|(property, direction)| json!({ "property": property, "direction": direction }))
                .collect();
        }
        json!({ "qualifier": self.qualifier, "pageable": pageable, "norestrict": self.norestrict })
    }
}

/// One page of records.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// The records, as selected by [`Entity::fields`].
    pub items: Vec<Value>,
    /// Zero-based page number.
    pub page: u32,
    /// Page size.
    pub size: u32,
    /// Records matching the qualifier.
    pub total_elements: u64,
    /// Pages in total.
    pub total_pages: u32,
    /// Whether this is the first page.
    pub first: bool,
    /// Whether this is the last page.
    pub last: bool,
    /// Items that came back `null` (left out of `items`). A page with null items is partial: it
    /// must never be taken as proof that a record is gone.
    pub null_items: usize,
    /// Whether the answer carried its own page metadata (`last` or `totalElements`).
    pub has_metadata: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPage {
    #[serde(default)]
    items: Option<Vec<Value>>,
    #[serde(default)]
    page: Option<u32>,
    #[serde(default)]
    size: Option<u32>,
    #[serde(default)]
    total_elements: Option<u64>,
    #[serde(default)]
    total_pages: Option<u32>,
    #[serde(default)]
    first: Option<bool>,
    #[serde(default)]
    last: Option<bool>,
}

impl RawPage {
    fn into_page(self, request: &PageRequest) -> Page {
        let raw = self.items.unwrap_or_default();
        let null_items = raw.iter().filter(|v| v.is_null()).count();
        let has_metadata = self.last.is_some() || self.total_elements.is_some();
        let items: Vec<Value> = raw.into_iter().filter(|v| !v.is_null()).collect();
        let page = self.page.unwrap_or(request.page);
        let size = self.size.unwrap_or(request.size);
        let total_elements = self.total_elements.unwrap_or(items.len() as u64);
        let total_pages = self.total_pages.unwrap_or_else(|| {
            if size == 0 {
                0
            } else {
                u32::try_from(total_elements.div_ceil(u64::from(size))).unwrap_or(u32::MAX)
            }
        });
        Page {
            first: self.first.unwrap_or(page == 0),
            last: self.last.unwrap_or(page.saturating_add(1) >= total_pages),
            items,
            page,
            size,
            total_elements,
            total_pages,
            null_items,
            has_metadata,
        }
    }
}

/// The page-query document of `entity`.
pub fn page_document(entity: Entity) -> String {
    let field = entity.page_query();
    format!(
        "query {name}($qualifier: String, $pageable: Pageable, $norestrict: Boolean) {{\n  \
         {field}(qualifier: $qualifier, pageable: $pageable, norestrict: $norestrict) {{\n    \
         first last numberOfElements page size sort totalElements totalPages\n    \
         items {{ {fields} }}\n  }}\n}}\n",
        name = operation_name(field),
        fields = entity.fields(),
    )
}

/// The page document of `entity` that selects only `_id` (for the comparison of ids that finds
/// hard deletes: a fraction of the bytes of a full page).
pub fn ids_page_document(entity: Entity) -> String {
    let field = entity.page_query();
    format!(
        "query {name}Ids($qualifier: String, $pageable: Pageable, $norestrict: Boolean) {{\n  \
         {field}(qualifier: $qualifier, pageable: $pageable, norestrict: $norestrict) {{\n    \
         first last numberOfElements page size sort totalElements totalPages\n    \
         items {{ _id }}\n  }}\n}}\n",
        name = operation_name(field),
    )
}

/// A page document of `entity` with the given selection of each item.
pub fn select_page_document(entity: Entity, selection: &str) -> String {
    let field = entity.page_query();
    format!(
        "query {name}Select($qualifier: String, $pageable: Pageable, $norestrict: Boolean) {{\n  \
         {field}(qualifier: $qualifier, pageable: $pageable, norestrict: $norestrict) {{\n    \
         first last numberOfElements page size sort totalElements totalPages\n    \
         items {{ {selection} }}\n  }}\n}}\n",
        name = operation_name(field),
    )
}

/// The single-record document of `entity`.
pub fn single_document(entity: Entity) -> String {
    let field = entity.single_query();
    format!(
        "query {name}($id: ID!) {{\n  {field}(_id: $id) {{ {fields} }}\n}}\n",
        name = operation_name(field),
        fields = entity.fields(),
    )
}

/// `crEmployeePage` → `OperatorCrEmployeePage`.
fn operation_name(field: &str) -> String {
    let mut chars = field.chars();
    let first = chars.next().map(|c| c.to_ascii_uppercase()).unwrap_or_default();
    format!("Operator{first}{}", chars.as_str())
}

/// Every GraphQL document the client can send, as (operation name, document).
pub fn all_documents() -> Vec<(String, String)> {
    Entity::ALL
        .into_iter()
        .flat_map(|e| {
            [
                (operation_name(e.page_query()), page_document(e)),
                (format!("{}Ids", operation_name(e.page_query())), ids_page_document(e)),
                (operation_name(e.single_query()), single_document(e)),
                (
                    format!("{}Select", operation_name(e.page_query())),
                    select_page_document(e, &e.id_field().map_or("_id".to_string(), |f| format!("_id {f}"))),
                ),
            ]
        })
        .collect()
}

/// The GraphQL data API; get one with [`CarerixClient::graphql`].
#[derive(Debug)]
pub struct GraphQlHandler<'c> {
    client: &'c CarerixClient,
}

#[derive(Deserialize)]
struct GraphQlResponse {
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    errors: Vec<GraphQlError>,
}

#[derive(Deserialize)]
struct GraphQlError {
    #[serde(default)]
    message: String,
    #[serde(default)]
    extensions: Option<Value>,
}

impl<'c> GraphQlHandler<'c> {
    pub(crate) fn new(client: &'c CarerixClient) -> Self {
        GraphQlHandler { client }
    }

    /// Reads one page of `entity`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] when `request.size` is 0 or above [`MAX_PAGE_SIZE`]; the token
    /// errors; [`Error::Api`] for a non-2xx answer (401 after one re-authentication, 403, 429 and
    /// 5xx after the client's retries); [`Error::GraphQl`] when Carerix returns errors and no page;
    /// [`Error::Decode`] for a malformed answer.
    pub async fn page(&self, entity: Entity, request: &PageRequest) -> Result<Page> {
        self.page_with(entity, request, &page_document(entity)).await
    }

    /// Reads one page of `entity` with only `_id` in each item.
    ///
    /// # Errors
    ///
    /// As for [`GraphQlHandler::page`].
    pub async fn page_ids(&self, entity: Entity, request: &PageRequest) -> Result<Page> {
        self.page_with(entity, request, &ids_page_document(entity)).await
    }

    /// Reads one page of `entity` selecting `selection` in each item (e.g. `_id employeeID`).
    ///
    /// # Errors
    ///
    /// As for [`GraphQlHandler::page`].
    pub async fn page_select(&self, entity: Entity, request: &PageRequest, selection: &str) -> Result<Page> {
        self.page_with(entity, request, &select_page_document(entity, selection)).await
    }

    async fn page_with(&self, entity: Entity, request: &PageRequest, document: &str) -> Result<Page> {
        let field = entity.page_query();
        if request.size == 0 || request.size > MAX_PAGE_SIZE {
            return Err(Error::InvalidArgument {
                operation: format!("graphql.{field}"),
                reason: format!("page size {} is not within 1..={MAX_PAGE_SIZE}", request.size),
            });
        }
        let value = self.query(field, document, request.variables()).await?;
        match value {
            Some(value) => serde_json::from_value::<RawPage>(value)
                .map(|raw| raw.into_page(request))
                .map_err(|e| Error::decode(&format!("graphql.{field}"), e)),
            None => Ok(RawPage {
                items: None,
                page: None,
                size: None,
                total_elements: Some(0),
                total_pages: Some(0),
                first: None,
                last: Some(true),
            }
            .into_page(request)),
        }
    }

    /// Reads one record of `entity` by its `_id` with the given selection; `None` when it does
    /// not exist.
    ///
    /// # Errors
    ///
    /// As for [`GraphQlHandler::get`].
    pub async fn get_select(&self, entity: Entity, id: &str, selection: &str) -> Result<Option<Value>> {
        let field = entity.single_query();
        let document = format!(
            "query {name}Select($id: ID!) {{\n  {field}(_id: $id) {{ {selection} }}\n}}\n",
            name = operation_name(field),
        );
        match self.query(field, &document, json!({ "id": id })).await {
            Err(e @ Error::GraphQl { .. }) if e.is_not_found() => Ok(None),
            other => other,
        }
    }

    /// Reads one record of `entity` by its `_id`; `None` when it does not exist.
    ///
    /// # Errors
    ///
    /// As for [`GraphQlHandler::page`], except that a GraphQL `NOT_FOUND` error yields `Ok(None)`.
    pub async fn get(&self, entity: Entity, id: &str) -> Result<Option<Value>> {
        match self.query(entity.single_query(), &single_document(entity), json!({ "id": id })).await {
            Err(e @ Error::GraphQl { .. }) if e.is_not_found() => Ok(None),
            other => other,
        }
    }

    /// Sends `document` and returns `data.{field}` (`None` when it is null).
    async fn query(&self, field: &str, document: &str, variables: Value) -> Result<Option<Value>> {
        let operation = format!("graphql.{field}");
        let url = join(&self.client.inner.api_url, &["graphql", "v1", "graphql"])?;
        let body = json!({ "query": document, "variables": variables });
        let response = self
            .client
            .execute(
                &operation,
                ApiRequest { method: reqwest::Method::POST, url, body: Some(&body), idempotent: true },
            )
            .await?;
        let parsed: GraphQlResponse =
            serde_json::from_slice(&response.body).map_err(|e| Error::decode(&operation, e))?;
        extract_field(&operation, field, parsed)
    }
}

fn extract_field(operation: &str, field: &str, response: GraphQlResponse) -> Result<Option<Value>> {
    let value = response.data.and_then(|mut d| d.get_mut(field).map(Value::take)).filter(|v| !v.is_null());
    if response.errors.is_empty() {
        return Ok(value);
    }
    if value.is_some() {
        // Partial result: keep the data, say that something was left out.
        warn!(operation, errors = response.errors.len(), "Carerix returned a partial GraphQL result");
        return Ok(value);
    }
    let classification = response.errors.iter().find_map(|e| {
        let ext = e.extensions.as_ref()?;
        ext.get("classification").or_else(|| ext.get("code")).and_then(Value::as_str).map(str::to_owned)
    });
    Err(Error::GraphQl {
        operation: operation.to_owned(),
        messages: response.errors.into_iter().map(|e| e.message).collect(),
        classification,
    })
}

impl CarerixClient {
    /// The GraphQL data API.
    pub fn graphql(&self) -> GraphQlHandler<'_> {
        GraphQlHandler::new(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apollo_compiler::validation::Valid;
    use apollo_compiler::{ExecutableDocument, Schema};

    const SCHEMA_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/carerix/schema.graphql");

    /// The shared real Carerix schema (`CARERIX_SCHEMA` overrides the path).
    fn shared_schema() -> Valid<Schema> {
        let path = std::env::var("CARERIX_SCHEMA").unwrap_or_else(|_| SCHEMA_PATH.to_string());
        let sdl = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "cannot read the real Carerix schema at {path}: {e}. It is the introspected SDL \
                 from jwvantriet/confair-api docs/carerix-schema.graphql (see /work/shared/carerix/API.md \
                 §3.1), shared outside the repository at ../shared/carerix/schema.graphql; set \
                 CARERIX_SCHEMA to its path when the checkout is elsewhere"
            )
        });
        match Schema::parse_and_validate(&sdl, "schema.graphql") {
            Ok(valid) => valid,
            Err(with_errors) => {
                // Lenient: the introspected SDL may not pass strict validation; validate the
                // executable documents against it anyway.
                eprintln!("schema has {} validation issue(s); using it leniently", with_errors.errors.len());
                Valid::assume_valid(with_errors.partial)
            }
        }
    }

    #[test]
    fn the_field_table_matches_the_shared_carerix_schema() {
        use apollo_compiler::schema::ExtendedType;
        let schema = shared_schema();
        for entity in Entity::ALL {
            let Some(ExtendedType::Object(ty)) = schema.types.get(entity.carerix_type()) else {
                panic!("{} is not an object type of the shared schema", entity.carerix_type());
            };
            let (mut scalars, mut relations) = (Vec::new(), Vec::new());
            for (name, field) in &ty.fields {
                if !field.arguments.is_empty() || field.ty.is_list() {
                    continue;
                }
                let target = field.ty.inner_named_type();
                match schema.types.get(target) {
                    Some(ExtendedType::Scalar(_) | ExtendedType::Enum(_)) => scalars.push(name.to_string()),
                    Some(ExtendedType::Object(o))
                        if o.fields.contains_key("_id") && !target.as_str().ends_with("Page") =>
                    {
                        relations.push(name.to_string())
                    }
                    _ => {}
                }
            }
            let table = crate::carerix::fields::table(entity);
            assert_eq!(
                table.scalars,
                scalars,
                "the scalar fields of {} differ from the schema: run carerix-sim/schema/generate_entities.py",
                entity.carerix_type()
            );
            assert_eq!(
                table.relations,
                relations,
                "the relations of {} differ from the schema: run carerix-sim/schema/generate_entities.py",
                entity.carerix_type()
            );
        }
    }

    #[test]
    fn documents_validate_against_the_real_schema_read_from_shared_carerix_schema_graphql() {
        let schema = shared_schema();
        // The validation is real: a field CRMatch lacks is rejected.
        let bad = "query Bad { crMatch(_id: \"1\") { _id deleted } }";
        assert!(ExecutableDocument::parse_and_validate(&schema, bad, "bad.graphql").is_err());
        let docs = all_documents();
        assert_eq!(docs.len(), 28);
        for (name, document) in docs {
            if let Err(e) =
                ExecutableDocument::parse_and_validate(&schema, &document, format!("{name}.graphql"))
            {
                panic!("{name} does not validate:\n{}\n{document}", e.errors);
            }
        }
    }

    #[test]
    fn page_variables() {
        let request = PageRequest {
            qualifier: Some("modificationDate >= (NSCalendarDate) '2025-01-01 00:00:00'".into()),
            page: 2,
            size: 50,
            sort: vec![("modificationDate".into(), Direction::Asc), ("_id".into(), Direction::Desc)],
            norestrict: true,
        };
        assert_eq!(
            request.variables(),
            json!({
                "qualifier": "modificationDate >= (NSCalendarDate) '2025-01-01 00:00:00'",
                "pageable": { "page": 2, "size": 50, "sort": [
                    { "property": "modificationDate", "direction": "ASC" },
                    { "property": "_id", "direction": "DESC" } ] },
                "norestrict": true
            })
        );
        let plain = PageRequest::default().variables();
        assert_eq!(
            plain,
            json!({ "qualifier": null, "pageable": { "page": 0, "size": 100 }, "norestrict": false })
        );
    }

    #[test]
    fn documents_use_variables() {
        let doc = page_document(Entity::Candidates);
        assert!(
            doc.contains(
                "crEmployeePage(qualifier: $qualifier, pageable: $pageable, norestrict: $norestrict)"
            )
        );
        assert!(doc.contains("items { _id _kind "));
        let doc = single_document(Entity::Contacts);
        assert!(doc.contains("crContact(_id: $id) { _id _kind "), "{doc}");
    }

    #[test]
    fn page_parsing() {
        let body = json!({ "data": { "crJobPage": {
            "first": true, "last": false, "numberOfElements": 2, "page": 0, "size": 2, "sort": null,
            "totalElements": 5, "totalPages": 3, "items": [ { "_id": "1" }, null, { "_id": "2" } ] } } });
        let parsed: GraphQlResponse = serde_json::from_value(body).unwrap_or_else(|e| panic!("{e}"));
        let value = extract_field("graphql.crJobPage", "crJobPage", parsed).ok().flatten();
        let page = serde_json::from_value::<RawPage>(value.unwrap_or_default())
            .map(|raw| raw.into_page(&PageRequest::default()))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(page.items.len(), 2);
        assert_eq!((page.page, page.size, page.total_elements, page.total_pages), (0, 2, 5, 3));
        assert!(page.first && !page.last);

        // Missing metadata is derived.
        let raw: RawPage =
            serde_json::from_value(json!({ "items": [ { "_id": "1" } ] })).unwrap_or_else(|e| panic!("{e}"));
        let page = raw.into_page(&PageRequest { page: 0, size: 10, ..PageRequest::default() });
        assert_eq!((page.total_elements, page.total_pages, page.first, page.last), (1, 1, true, true));
    }

    #[test]
    fn graphql_errors() {
        let parsed: GraphQlResponse = serde_json::from_value(json!({
            "data": { "crEmployee": null },
            "errors": [ { "message": "Access denied", "extensions": { "classification": "FORBIDDEN" } } ]
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let err = extract_field("graphql.crEmployee", "crEmployee", parsed).err();
        assert!(err.as_ref().is_some_and(Error::is_forbidden), "{err:?}");

        let parsed: GraphQlResponse = serde_json::from_value(json!({ "data": { "crEmployee": null } }))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(extract_field("op", "crEmployee", parsed), Ok(None)));

        let parsed: GraphQlResponse = serde_json::from_value(json!({
            "data": { "crEmployee": { "_id": "1" } }, "errors": [ { "message": "partial" } ] }))
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(extract_field("op", "crEmployee", parsed), Ok(Some(_))));
    }
}
