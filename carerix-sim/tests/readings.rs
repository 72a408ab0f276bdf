//! Each reading of an INFERRED data-API point, played both ways over real HTTP.

use std::time::{Duration, Instant};

use carerix_sim::{ClientConfig, Config, Entity, IdOrder, Readings, SimHandle, TenantConfig};
use serde_json::{Map, Value, json};

async fn start(tweak: impl FnOnce(&mut Config)) -> SimHandle {
    let mut c = Config::for_tests();
    c.records_per_entity = 30;
    c.same_second_burst = 0;
    c.rate_limit_per_sec = 1000;
    c.tenants.push(TenantConfig { name: "acme".into(), webhooks_activated: false });
    c.clients.push(ClientConfig { tenant: "acme".into(), client_id: "c".into(), secret: "s".into() });
    tweak(&mut c);
    carerix_sim::spawn(c).await.expect("spawn")
}

fn url(h: &SimHandle, path: &str) -> String {
    h.base_url().join(path).expect("url").to_string()
}

async fn token(h: &SimHandle) -> String {
    let r = reqwest::Client::new()
        .post(url(h, "auth/realms/acme/protocol/openid-connect/token"))
        .form(&[("grant_type", "client_credentials"), ("client_id", "c"), ("client_secret", "s")])
        .send()
        .await
        .expect("send");
    r.json::<Value>().await.expect("json")["access_token"].as_str().expect("token").to_string()
}

/// Runs `crXPage` and returns the whole answer body.
async fn page(h: &SimHandle, field: &str, variables: Value, items: &str) -> Value {
    let query = format!(
        "query($qualifier: String, $pageable: Pageable, $norestrict: Boolean) {{ \
         {field}(qualifier: $qualifier, pageable: $pageable, norestrict: $norestrict) \
         {{ last size totalElements numberOfElements items {{ {items} }} }} }}"
    );
    let t = token(h).await;
    reqwest::Client::new()
        .post(url(h, "graphql/v1/graphql"))
        .bearer_auth(t)
        .json(&json!({"query": query, "variables": variables}))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json")
}

fn ids(body: &Value, field: &str) -> Vec<String> {
    body["data"][field]["items"]
        .as_array()
        .map(|a| a.iter().filter_map(|i| i["_id"].as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

fn set(h: &SimHandle, f: impl FnOnce(&mut Readings)) {
    let mut r = h.sim().readings();
    f(&mut r);
    h.sim().set_readings(r);
}

fn first_candidate(h: &SimHandle) -> u64 {
    h.sim().list_records("acme", Entity::Employee).expect("records")[0]["_id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("id")
}

fn name(v: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("firstName".into(), json!(v));
    m
}

#[tokio::test]
async fn with_second_precision_two_updates_in_one_second_keep_one_modification_date() {
    let h = start(|_| {}).await;
    let id = first_candidate(&h);
    let s = h.sim();
    let a = s.update_record("acme", Entity::Employee, id, name("A")).expect("update");
    let b = s.update_record("acme", Entity::Employee, id, name("B")).expect("update");
    assert_ne!(a["modificationDate"], b["modificationDate"], "default: every update moves to a later second");

    set(&h, |r| r.second_precision = true);
    // retry across a second boundary: two updates right after each other share their second
    let mut same = false;
    for _ in 0..5 {
        let a = s.update_record("acme", Entity::Employee, id, name("C")).expect("update");
        let b = s.update_record("acme", Entity::Employee, id, name("D")).expect("update");
        if a["modificationDate"] == b["modificationDate"] {
            same = true;
            break;
        }
    }
    assert!(same, "second precision: two quick updates keep one modificationDate");
}

#[tokio::test]
async fn a_page_cap_below_the_requested_size_serves_fewer_items_and_says_so_in_the_metadata() {
    let h = start(|_| {}).await;
    let vars = json!({"pageable": {"page": 0, "size": 100}, "norestrict": true});
    let full = page(&h, "crVacancyPage", vars.clone(), "_id").await;
    assert_eq!(ids(&full, "crVacancyPage").len(), 30);
    set(&h, |r| r.page_cap = Some(7));
    let capped = page(&h, "crVacancyPage", vars, "_id").await;
    assert_eq!(ids(&capped, "crVacancyPage").len(), 7);
    assert_eq!(capped["data"]["crVacancyPage"]["size"], 7);
    assert_eq!(capped["data"]["crVacancyPage"]["totalElements"], 30);
    assert_eq!(capped["data"]["crVacancyPage"]["last"], false);
}

#[tokio::test]
async fn ids_sort_as_numbers_by_default_and_as_text_in_the_text_reading() {
    let h = start(|c| c.records_per_entity = 12).await;
    let vars = json!({"norestrict": true,
        "pageable": {"page": 0, "size": 100, "sort": [{"property": "_id", "direction": "ASC"}]}});
    let numeric = ids(&page(&h, "crCompanyPage", vars.clone(), "_id").await, "crCompanyPage");
    let mut by_number = numeric.clone();
    by_number.sort_by_key(|i| i.parse::<u64>().unwrap_or_default());
    assert_eq!(numeric, by_number);
    set(&h, |r| r.id_order = IdOrder::Text);
    let text = ids(&page(&h, "crCompanyPage", vars, "_id").await, "crCompanyPage");
    let mut by_text = text.clone();
    by_text.sort();
    assert_eq!(text, by_text);
    // qualifiers compare as text too: "1000" < "2" as text, not as numbers
    let q = json!({"qualifier": "_id < 2", "pageable": {"page": 0, "size": 100}, "norestrict": true});
    assert_eq!(ids(&page(&h, "crCompanyPage", q.clone(), "_id").await, "crCompanyPage").len(), 12);
    set(&h, |r| r.id_order = IdOrder::Numeric);
    assert!(ids(&page(&h, "crCompanyPage", q, "_id").await, "crCompanyPage").is_empty());
}

#[tokio::test]
async fn id_in_qualifiers_and_sort_is_accepted_by_default_and_refused_in_the_strict_reading() {
    let h = start(|_| {}).await;
    let q = json!({"qualifier": "_id > 1", "pageable": {"page": 0, "size": 5}});
    let s = json!({"pageable": {"page": 0, "size": 5, "sort": [{"property": "_id"}]}});
    assert!(page(&h, "crJobPage", q.clone(), "_id").await.get("errors").is_none());
    assert!(page(&h, "crJobPage", s.clone(), "_id").await.get("errors").is_none());
    set(&h, |r| r.id_in_qualifier = false);
    let refused = page(&h, "crJobPage", q, "_id").await;
    assert!(refused["errors"][0]["message"].as_str().is_some_and(|m| m.contains("_id")), "{refused}");
    assert!(refused["data"]["crJobPage"].is_null());
    assert!(page(&h, "crJobPage", s.clone(), "_id").await.get("errors").is_none());
    set(&h, |r| r.id_in_sort = false);
    assert!(page(&h, "crJobPage", s, "_id").await.get("errors").is_some());
    // the own numeric id field still works
    let own = json!({"qualifier": "jobID > 1", "pageable": {"page": 0, "size": 5, "sort": [{"property": "jobID"}]}});
    assert!(page(&h, "crJobPage", own, "_id").await.get("errors").is_none());
}

#[tokio::test]
async fn a_null_modification_date_matches_no_date_qualifier_and_a_future_one_stays_in_the_future() {
    let h = start(|_| {}).await;
    let id = first_candidate(&h);
    let s = h.sim();
    let rec = s.set_modification_date("acme", Entity::Employee, id, None).expect("set");
    assert!(rec["modificationDate"].is_null());
    let since = json!({"qualifier": "modificationDate >= (NSCalendarDate) '2000-01-01 00:00:00'",
        "pageable": {"page": 0, "size": 100}});
    let nil = json!({"qualifier": "modificationDate = nil", "pageable": {"page": 0, "size": 100}});
    assert!(
        !ids(&page(&h, "crEmployeePage", since.clone(), "_id").await, "crEmployeePage")
            .contains(&id.to_string())
    );
    assert_eq!(ids(&page(&h, "crEmployeePage", nil, "_id").await, "crEmployeePage"), vec![id.to_string()]);
    // an update gives it a date again
    s.update_record("acme", Entity::Employee, id, name("Back")).expect("update");
    assert!(ids(&page(&h, "crEmployeePage", since, "_id").await, "crEmployeePage").contains(&id.to_string()));
    let future = chrono::Utc::now() + chrono::Duration::days(400);
    let rec = s.set_modification_date("acme", Entity::Employee, id, Some(future)).expect("set");
    assert_eq!(rec["modificationDate"], json!(carerix_sim::dates::format(future)));
}

#[tokio::test]
async fn the_repeated_autumn_hour_sorts_by_instant_by_default_and_by_wall_clock_in_the_other_reading() {
    let h = start(|_| {}).await;
    let s = h.sim();
    let all = s.list_records("acme", Entity::Company).expect("records");
    let a: u64 = all[0]["_id"].as_str().and_then(|x| x.parse().ok()).expect("id");
    let b: u64 = all[1]["_id"].as_str().and_then(|x| x.parse().ok()).expect("id");
    // a: 02:50 in the first pass (+0200); b: 02:10 in the second pass (+0100), an instant later
    let first = carerix_sim::dates::parse("2025-10-26 02:50:00 +0200").expect("date");
    let second = carerix_sim::dates::parse("2025-10-26 02:10:00 +0100").expect("date");
    s.set_modification_date("acme", Entity::Company, a, Some(first)).expect("set");
    s.set_modification_date("acme", Entity::Company, b, Some(second)).expect("set");
    let vars = json!({"qualifier": "modificationDate >= (NSCalendarDate) '2025-10-26 00:00:00' AND modificationDate < (NSCalendarDate) '2025-10-26 04:00:00'",
        "pageable": {"page": 0, "size": 100, "sort": [{"property": "modificationDate"}]}});
    let by_instant = ids(&page(&h, "crCompanyPage", vars.clone(), "_id").await, "crCompanyPage");
    let pos = |v: &[String], id: u64| v.iter().position(|x| *x == id.to_string()).expect("listed");
    assert!(pos(&by_instant, a) < pos(&by_instant, b), "{by_instant:?}");
    set(&h, |r| r.wall_clock_order = true);
    let by_clock = ids(&page(&h, "crCompanyPage", vars, "_id").await, "crCompanyPage");
    assert!(pos(&by_clock, b) < pos(&by_clock, a), "{by_clock:?}");
}

#[tokio::test]
async fn answers_take_the_configured_latency() {
    // Two seconds: far above what a debug build on a busy machine needs for the request itself.
    let h = start(|c| c.readings.latency_ms = 2000).await;
    let vars = json!({"pageable": {"page": 0, "size": 1}});
    let t = Instant::now();
    page(&h, "crMatchPage", vars.clone(), "_id").await;
    assert!(t.elapsed() >= Duration::from_millis(2000));
    set(&h, |r| r.latency_ms = 0);
    let t = Instant::now();
    page(&h, "crMatchPage", vars, "_id").await;
    assert!(t.elapsed() < Duration::from_millis(2000));
}

#[tokio::test]
async fn a_removed_match_is_gone_by_default_and_hidden_but_listed_with_norestrict_in_the_other_reading() {
    let h = start(|_| {}).await;
    let s = h.sim();
    let matches = s.list_records("acme", Entity::Match).expect("records");
    assert!(matches.iter().all(|m| m.get("deleted").is_none()), "CRMatch has no deleted field");
    let id = |i: usize| matches[i]["_id"].as_str().expect("id").to_string();
    let restricted = json!({"pageable": {"page": 0, "size": 100}});
    let all = json!({"pageable": {"page": 0, "size": 100}, "norestrict": true});
    s.soft_delete_record("acme", Entity::Match, id(0).parse().expect("n")).expect("delete");
    assert!(!ids(&page(&h, "crMatchPage", all.clone(), "_id").await, "crMatchPage").contains(&id(0)));
    set(&h, |r| r.hidden_soft_deletes = true);
    s.soft_delete_record("acme", Entity::Match, id(1).parse().expect("n")).expect("delete");
    assert!(!ids(&page(&h, "crMatchPage", restricted, "_id").await, "crMatchPage").contains(&id(1)));
    assert!(ids(&page(&h, "crMatchPage", all, "_id").await, "crMatchPage").contains(&id(1)));
    assert_eq!(s.deleted_ids("acme", Entity::Match).expect("ids"), vec![id(1).parse::<u64>().expect("n")]);
}

#[tokio::test]
async fn the_admin_api_reads_and_sets_readings_and_the_hostile_preset() {
    let h = start(|_| {}).await;
    let c = reqwest::Client::new();
    let r: Value = c
        .put(url(&h, "admin/v1/readings"))
        .json(&json!({"id_in_qualifier": false, "latency_ms": 5}))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(r["id_in_qualifier"], false);
    assert_eq!(r["id_in_sort"], true);
    assert_eq!(h.sim().readings().latency_ms, 5);
    let bad = c.put(url(&h, "admin/v1/readings")).json(&json!({"nope": 1})).send().await.expect("send");
    assert_eq!(bad.status(), 400);
    c.put(url(&h, "admin/v1/readings")).json(&json!({"preset": "hostile"})).send().await.expect("send");
    assert_eq!(h.sim().readings(), Readings::hostile());
    let id = first_candidate(&h);
    let r = c
        .put(url(&h, &format!("admin/v1/tenants/acme/records/candidates/{id}/modification-date")))
        .json(&json!({"value": null}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    assert!(h.sim().get_record("acme", Entity::Employee, id).expect("record")["modificationDate"].is_null());
}
