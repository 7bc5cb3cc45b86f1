//! What a search returns: the searchset Bundle, `_count`, `_sort`, `_total`, `_summary`,
//! `_elements`, POST `_search`, and how unknown parameters and malformed values are
//! handled (R4 search.html#return, http.html#search, search.html#errors).

use reqwest::Method;
use serde_json::{Value, json};

use super::{ids, put_all, search, search_url};
use crate::helpers::{
    TestApp, assert_is_outcome, entries, link, query_param, spawn_app, spawn_app_with,
};

const SUBSETTED: &str = "SUBSETTED";

/// Five patients with distinct birth dates and names, two of them missing one.
fn patients() -> Vec<Value> {
    let p = |id: &str, family: Option<&str>, given: &str, birth: Option<&str>| {
        let mut p = json!({ "resourceType": "Patient", "id": id, "gender": "female" });
        if let Some(f) = family {
            p["name"] = json!([{ "family": f, "given": [given] }]);
        }
        if let Some(b) = birth {
            p["birthDate"] = json!(b);
        }
        p
    };
    let mut s1 = p("s1", Some("Adams"), "Zoe", Some("1990-05-01"));
    s1["text"] = json!({ "status": "generated",
                         "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Zoe Adams</div>" });
    s1["maritalStatus"] = json!({ "text": "Married" });
    s1["communication"] = json!([{ "language": { "text": "English" } }]);
    vec![
        s1,
        p("s2", Some("Baker"), "Amy", Some("1980-01-01")),
        p("s3", Some("Baker"), "Carl", Some("2000-07-07")),
        p("s4", Some("Clark"), "Dora", None),
        p("s5", None, "", Some("1985-03-03")),
    ]
}

async fn app_with_patients() -> TestApp {
    let app = spawn_app().await;
    put_all(&app, &patients()).await;
    app
}

/// The single match of a search, as returned.
async fn only_match(app: &TestApp, query: &str) -> Value {
    let bundle = search(app, query).await;
    let list = entries(&bundle);
    assert_eq!(list.len(), 1, "{query}: {bundle}");
    list[0]["resource"].clone()
}

fn is_subsetted(resource: &Value) -> bool {
    resource["meta"]["tag"]
        .as_array()
        .is_some_and(|tags| tags.iter().any(|t| t["code"] == SUBSETTED))
}

#[tokio::test]
async fn searchset_bundle_shape() {
    let app = app_with_patients().await;

    let bundle = search(&app, "Patient?family=baker").await;

    assert!(bundle["id"].is_string(), "{bundle}");
    let own = link(&bundle, "self").expect("a self link");
    assert!(own.starts_with(&format!("{}/Patient?", app.base)), "{own}");
    assert_eq!(query_param(&own, "family").as_deref(), Some("baker"));
    let list = entries(&bundle);
    assert_eq!(list.len(), 2, "{bundle}");
    for entry in list {
        let id = entry["resource"]["id"].as_str().unwrap();
        assert_eq!(entry["fullUrl"], format!("{}/Patient/{id}", app.base));
        assert_eq!(entry["search"]["mode"], "match");
        let read = app.get(&format!("Patient/{id}")).await.json();
        assert_eq!(
            entry["resource"], read,
            "an entry holds the resource as stored"
        );
    }
    let none = search(&app, "Patient?family=nobody").await;
    assert!(entries(&none).is_empty(), "{none}");
}

#[tokio::test]
async fn count_limits_the_page() {
    let app = app_with_patients().await;

    let two = search(&app, "Patient?_count=2&_sort=birthdate").await;
    assert_eq!(ids(&two), ["s2", "s5"]);
    let next = link(&two, "next").expect("a next link");
    assert_eq!(query_param(&next, "_count").as_deref(), Some("2"));

    let all = search(&app, "Patient?_count=10").await;
    assert_eq!(entries(&all).len(), 5);
    assert!(link(&all, "next").is_none(), "{all}");
}

/// `_count` above the server's maximum is clamped, not refused (search.html#count: the
/// server may return fewer than asked for).
#[tokio::test]
async fn count_is_clamped_to_the_largest_page() {
    let app = spawn_app_with(&[
        ("HAVEN_LIMITS__DEFAULT_PAGE_SIZE", "2"),
        ("HAVEN_LIMITS__MAX_PAGE_SIZE", "3"),
    ])
    .await;
    put_all(&app, &patients()).await;

    let default = search(&app, "Patient").await;
    assert_eq!(entries(&default).len(), 2, "{default}");
    let clamped = search(&app, "Patient?_count=100").await;
    assert_eq!(entries(&clamped).len(), 3, "{clamped}");
    assert!(link(&clamped, "next").is_some(), "{clamped}");
}

/// search.html#sort: keys in order, `-` for descending. Resources without a value for a
/// key come after those with one, in either direction.
#[tokio::test]
async fn sort_by_one_or_several_keys() {
    let app = app_with_patients().await;
    let rows: &[(&str, &[&str])] = &[
        ("Patient?_sort=birthdate", &["s2", "s5", "s1", "s3", "s4"]),
        ("Patient?_sort=-birthdate", &["s3", "s1", "s5", "s2", "s4"]),
        (
            "Patient?_sort=family,given",
            &["s1", "s2", "s3", "s4", "s5"],
        ),
        (
            "Patient?_sort=family,-given",
            &["s1", "s3", "s2", "s4", "s5"],
        ),
        (
            "Patient?_sort=-family,birthdate",
            &["s4", "s2", "s3", "s1", "s5"],
        ),
        (
            "Patient?_sort=-family,-birthdate",
            &["s4", "s3", "s2", "s1", "s5"],
        ),
        ("Patient?_sort=_id", &["s1", "s2", "s3", "s4", "s5"]),
        ("Patient?_sort=-_id", &["s5", "s4", "s3", "s2", "s1"]),
        ("Patient?family=baker&_sort=-given", &["s3", "s2"]),
    ];
    let mut failures = Vec::new();
    for (query, expected) in rows {
        let got = ids(&search(&app, query).await);
        if got != *expected {
            failures.push(format!("{query}: expected {expected:?}, got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn total_accurate_and_none() {
    let app = app_with_patients().await;

    let accurate = search(&app, "Patient?_count=2&_total=accurate").await;
    assert_eq!(accurate["total"], 5, "{accurate}");
    assert_eq!(entries(&accurate).len(), 2);
    let filtered = search(&app, "Patient?family=baker&_count=1&_total=accurate").await;
    assert_eq!(filtered["total"], 2, "{filtered}");
    let none = search(&app, "Patient?_count=2&_total=none").await;
    assert!(none.get("total").is_none(), "{none}");
    assert_eq!(entries(&none).len(), 2);
}

/// search.html#summary. `true`: the elements marked summary; `text`: text, id, meta and the
/// mandatory top-level elements; `data`: everything but the text; `count`: the total only.
/// Subsetted resources SHOULD carry the SUBSETTED tag so nobody saves them back.
#[tokio::test]
async fn summary_modes() {
    let app = app_with_patients().await;
    let full = app.get("Patient/s1").await.json();

    let summary = only_match(&app, "Patient?_id=s1&_summary=true").await;
    assert_eq!(summary["name"], full["name"]);
    assert_eq!(summary["birthDate"], full["birthDate"]);
    assert_eq!(summary["gender"], full["gender"]);
    for absent in ["text", "maritalStatus", "communication"] {
        assert!(summary.get(absent).is_none(), "{absent}: {summary}");
    }
    assert!(is_subsetted(&summary), "{summary}");

    let text = only_match(&app, "Patient?_id=s1&_summary=text").await;
    assert_eq!(text["text"], full["text"]);
    let keys: Vec<&String> = text.as_object().unwrap().keys().collect();
    assert!(
        keys.iter()
            .all(|k| ["resourceType", "id", "meta", "text"].contains(&k.as_str())),
        "{text}"
    );
    assert!(is_subsetted(&text), "{text}");

    let data = only_match(&app, "Patient?_id=s1&_summary=data").await;
    assert!(data.get("text").is_none(), "{data}");
    assert_eq!(data["maritalStatus"], full["maritalStatus"]);
    assert_eq!(data["communication"], full["communication"]);
    assert!(is_subsetted(&data), "{data}");

    let whole = only_match(&app, "Patient?_id=s1&_summary=false").await;
    assert_eq!(whole, full);

    let count = search(&app, "Patient?_summary=count").await;
    assert_eq!(count["total"], 5, "{count}");
    assert!(entries(&count).is_empty(), "{count}");
    let count = search(&app, "Patient?family=baker&_summary=count").await;
    assert_eq!(count["total"], 2, "{count}");
    assert!(entries(&count).is_empty(), "{count}");
}

/// `_summary=text` keeps the mandatory top-level elements (Observation.status and .code);
/// `_summary=true` drops elements not marked summary (Observation.note).
#[tokio::test]
async fn summary_keeps_mandatory_and_summary_elements() {
    let app = spawn_app().await;
    app.put(&json!({
        "resourceType": "Observation", "id": "o1", "status": "final",
        "code": { "text": "Weight" }, "subject": { "reference": "Patient/s1" },
        "note": [{ "text": "after lunch" }],
        "text": { "status": "generated",
                  "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Weight</div>" }
    }))
    .await;

    let text = only_match(&app, "Observation?_id=o1&_summary=text").await;
    assert_eq!(text["status"], "final", "{text}");
    assert_eq!(text["code"]["text"], "Weight", "{text}");
    assert!(text["text"].is_object(), "{text}");
    for absent in ["subject", "note"] {
        assert!(text.get(absent).is_none(), "{absent}: {text}");
    }

    let summary = only_match(&app, "Observation?_id=o1&_summary=true").await;
    assert_eq!(summary["subject"]["reference"], "Patient/s1", "{summary}");
    assert_eq!(summary["status"], "final", "{summary}");
    assert!(summary.get("note").is_none(), "{summary}");
}

/// search.html#elements: only the listed top-level elements (plus id, meta and mandatory
/// elements), tagged SUBSETTED.
#[tokio::test]
async fn elements_selects_top_level_elements() {
    let app = app_with_patients().await;
    let full = app.get("Patient/s1").await.json();

    let some = only_match(&app, "Patient?_id=s1&_elements=birthDate,gender").await;

    assert_eq!(some["birthDate"], full["birthDate"]);
    assert_eq!(some["gender"], full["gender"]);
    assert_eq!(some["id"], "s1");
    let keys: Vec<&String> = some.as_object().unwrap().keys().collect();
    assert!(
        keys.iter().all(|k| {
            ["resourceType", "id", "meta", "birthDate", "gender"].contains(&k.as_str())
        }),
        "{some}"
    );
    assert!(is_subsetted(&some), "{some}");
}

/// http.html#search: `POST [type]/_search` with a form body means the same as GET, and the
/// parameters may be split between the URL and the body.
#[tokio::test]
async fn post_search_equals_get() {
    let app = app_with_patients().await;
    let form = |path: &str, body: &str| {
        app.request(Method::POST, path)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_owned())
    };
    let get = ids(&search(&app, "Patient?family=baker&_sort=-given").await);
    assert_eq!(get, ["s3", "s2"]);

    let post = app
        .send(form("Patient/_search", "family=baker&_sort=-given"))
        .await;
    post.assert_status(200);
    let bundle = post.json();
    assert_eq!(bundle["type"], "searchset");
    assert_eq!(ids(&bundle), get);

    let split = app
        .send(form("Patient/_search?_sort=-given", "family=baker"))
        .await;
    split.assert_status(200);
    assert_eq!(ids(&split.json()), get);

    let and = app
        .send(form("Patient/_search?family=baker", "given=amy"))
        .await;
    and.assert_status(200);
    assert_eq!(
        ids(&and.json()),
        ["s2"],
        "URL and body parameters are ANDed"
    );

    let system = app
        .send(form("_search", "_type=Patient&family=baker&_sort=-given"))
        .await;
    system.assert_status(200);
    assert_eq!(ids(&system.json()), get);

    let encoded = app
        .send(form(
            "Patient/_search",
            "birthdate=ge1990-01-01&_sort=birthdate",
        ))
        .await;
    encoded.assert_status(200);
    assert_eq!(ids(&encoded.json()), ["s1", "s3"]);
}

/// search.html#errors: by default a server ignores parameters it does not know, says so in
/// an OperationOutcome entry (`search.mode = outcome`), and leaves them out of the self link.
#[tokio::test]
async fn unknown_parameters_are_ignored_and_reported() {
    let app = app_with_patients().await;

    let bundle = search(&app, "Patient?family=baker&frobnicate=1&_sort=given").await;

    assert_eq!(
        ids(&bundle),
        ["s2", "s3"],
        "the unknown parameter is ignored"
    );
    let outcomes: Vec<&Value> = entries(&bundle)
        .iter()
        .filter(|e| e["search"]["mode"] == "outcome")
        .collect();
    assert_eq!(outcomes.len(), 1, "{bundle}");
    assert_eq!(outcomes[0]["resource"]["resourceType"], "OperationOutcome");
    assert!(
        outcomes[0]["resource"].to_string().contains("frobnicate"),
        "the outcome names the parameter: {}",
        outcomes[0]
    );
    let own = link(&bundle, "self").unwrap();
    assert!(query_param(&own, "frobnicate").is_none(), "{own}");
    assert_eq!(query_param(&own, "family").as_deref(), Some("baker"));

    let clean = search(&app, "Patient?family=baker").await;
    assert!(
        entries(&clean)
            .iter()
            .all(|e| e["search"]["mode"] == "match"),
        "no outcome when nothing was ignored: {clean}"
    );
}

/// `Prefer: handling=strict` (search.html#errors): an unknown parameter is an error.
#[tokio::test]
async fn strict_handling_refuses_unknown_parameters() {
    let app = app_with_patients().await;
    let with_prefer = |query: &str, prefer: &str| {
        app.client
            .get(search_url(&app, query))
            .header("prefer", prefer)
    };

    let strict = app
        .send(with_prefer(
            "Patient?family=baker&frobnicate=1",
            "handling=strict",
        ))
        .await;
    strict.assert_status(400);
    assert!(
        assert_is_outcome(&strict)
            .to_string()
            .contains("frobnicate")
    );

    // _format and _pretty are general parameters, not unknown ones (http.html#parameters).
    let known = app
        .send(with_prefer(
            "Patient?family=baker&_format=json&_pretty=true",
            "handling=strict",
        ))
        .await;
    known.assert_status(200);
    assert_eq!(ids(&known.json()).len(), 2);

    let lenient = app
        .send(with_prefer(
            "Patient?family=baker&frobnicate=1",
            "handling=lenient",
        ))
        .await;
    lenient.assert_status(200);
    assert_eq!(ids(&lenient.json()).len(), 2);
}

/// A malformed value is a 400 with an OperationOutcome: ignoring it would return more than
/// the client asked for.
#[tokio::test]
async fn malformed_values_are_refused() {
    let app = app_with_patients().await;
    let queries = [
        "Patient?birthdate=not-a-date",
        "Patient?birthdate=2020-13-01",
        "Patient?_lastUpdated=yesterday",
        "Patient?gender:missing=perhaps",
        "Patient?_count=abc",
        "Patient?_count=-1",
        "Patient?_total=maybe",
        "Patient?_summary=maybe",
        "RiskAssessment?probability=abc",
        "Observation?value-quantity=abc||mg",
        "Observation?component-code-value-quantity=8480-6",
    ];
    let mut failures = Vec::new();
    for query in queries {
        let resp = app.get_url(&search_url(&app, query)).await;
        if resp.status != 400 {
            failures.push(format!("{query}: {} {}", resp.status, resp.text()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `xx2020` is neither a date nor a prefix and a date: ignoring the criterion (as an
/// unsupported parameter) returns every patient instead of those asked for.
#[tokio::test]
async fn an_unknown_comparison_prefix_is_refused() {
    let app = app_with_patients().await;

    let mut failures = Vec::new();
    for query in [
        "Patient?birthdate=xx2020",
        "RiskAssessment?probability=xx0.5",
        "Observation?value-quantity=xx5.4",
    ] {
        let resp = app.get_url(&search_url(&app, query)).await;
        if resp.status != 400 {
            failures.push(format!("{query}: {}", resp.status));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
