//! FHIR search conformance over HTTP (R4 search.html), table-driven.
//!
//! Each test stores a small set of fixture resources under ids it chooses (PUT), then runs a
//! table of rows `(query, expected ids)`: every row asserts exactly which fixtures match, not
//! how many. The expectations come from the R4 specification, with the section named next
//! to the rows where the rule is subtle. All mismatching rows of a table are reported
//! together, so one failure shows the whole picture.
//!
//! Queries are written decoded (`Patient?identifier=http://x|1`) and encoded here the way a
//! client would (`|` as `%7C`, `+` as `%2B`); `{base}` stands for the server's FHIR base.

mod dates;
mod includes;
mod lifecycle;
mod meta;
mod paging;
mod quantities;
mod references;
mod results;
mod text_and_tokens;

use std::collections::BTreeSet;

use serde_json::Value;

use crate::helpers::{TestApp, entries, link};

/// A table row: a search relative to the base, and the fixtures it must return. An expected
/// entry written `Type/id` is compared with the entry's type and id (system-level searches);
/// a bare `id` with its id only.
pub type Row<'a> = (&'a str, &'a [&'a str]);

/// Stores every fixture under its own id, asserting success.
pub async fn put_all(app: &TestApp, fixtures: &[Value]) {
    for fixture in fixtures {
        app.put(fixture).await;
    }
}

/// The absolute URL of a search written `Type?name=value&...` (decoded), encoded as a form.
pub fn search_url(app: &TestApp, query: &str) -> String {
    let query = query.replace("{base}", &app.base);
    let (path, qs) = query.split_once('?').unwrap_or((query.as_str(), ""));
    let mut url = reqwest::Url::parse(&app.url(path)).expect("a valid search URL");
    if !qs.is_empty() {
        let mut pairs = url.query_pairs_mut();
        for pair in qs.split('&') {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            pairs.append_pair(name, value);
        }
    }
    url.to_string()
}

/// Runs a search, asserting 200 and a searchset Bundle; returns the Bundle.
pub async fn search(app: &TestApp, query: &str) -> Value {
    let resp = app.get_url(&search_url(app, query)).await;
    assert_eq!(resp.status, 200, "GET {query}: {}", resp.text());
    let bundle = resp.json();
    assert_eq!(bundle["resourceType"], "Bundle", "GET {query}");
    assert_eq!(bundle["type"], "searchset", "GET {query}");
    bundle
}

/// `Type/id` of every entry whose `search.mode` is `mode`, in Bundle order.
pub fn refs(bundle: &Value, mode: &str) -> Vec<String> {
    entries(bundle)
        .iter()
        .filter(|e| e["search"]["mode"] == mode)
        .map(|e| {
            format!(
                "{}/{}",
                e["resource"]["resourceType"].as_str().unwrap_or("?"),
                e["resource"]["id"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

/// The ids of the matches, in Bundle order.
pub fn ids(bundle: &Value) -> Vec<String> {
    entries(bundle)
        .iter()
        .filter(|e| e["search"]["mode"] == "match")
        .map(|e| e["resource"]["id"].as_str().unwrap_or("?").to_owned())
        .collect()
}

/// Runs every row and fails with the list of rows whose matches differ from the expectation.
pub async fn check(app: &TestApp, rows: &[Row<'_>]) {
    let mut failures = Vec::new();
    for (query, expected) in rows {
        let resp = app.get_url(&search_url(app, query)).await;
        if resp.status != 200 {
            failures.push(format!(
                "{query}\n    status {}: {}",
                resp.status,
                resp.text()
            ));
            continue;
        }
        let bundle = resp.json();
        if bundle["type"] != "searchset" || link(&bundle, "next").is_some() {
            failures.push(format!("{query}\n    not a single searchset page"));
            continue;
        }
        let typed = expected.iter().any(|e| e.contains('/'));
        let got: BTreeSet<String> = if typed {
            refs(&bundle, "match").into_iter().collect()
        } else {
            ids(&bundle).into_iter().collect()
        };
        let want: BTreeSet<String> = expected.iter().map(|s| (*s).to_owned()).collect();
        if got != want {
            failures.push(format!(
                "{query}\n    expected {want:?}\n    got      {got:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}
