//! Paging through search results with the Bundle's links (R4 http.html#paging,
//! search.html#count): every match once, forwards and backwards, while the data changes.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::{ids, put_all, search, search_url};
use crate::helpers::{TestApp, link, spawn_app};

fn patient(id: &str, family: &str, given: &str) -> Value {
    json!({ "resourceType": "Patient", "id": id, "active": true,
            "name": [{ "family": family, "given": [given] }] })
}

/// Seven "Pager" patients with given names out of id order, and two others.
fn fixtures() -> Vec<Value> {
    let mut all: Vec<Value> = ["Gus", "Ann", "Eve", "Bob", "Dan", "Fay", "Cid"]
        .iter()
        .enumerate()
        .map(|(i, given)| patient(&format!("p{}", i + 1), "Pager", given))
        .collect();
    all.push(patient("x1", "Other", "Amy"));
    all.push(patient("x2", "Other", "Zed"));
    all
}

struct Walk {
    /// Match ids, page by page.
    pages: Vec<Vec<String>>,
    last: Value,
}

/// Follows `relation` links from `url` to the end, calling `between` after each page.
async fn walk(
    app: &TestApp,
    url: String,
    relation: &str,
    mut between: impl AsyncFnMut(&[Vec<String>]),
) -> Walk {
    let mut pages = Vec::new();
    let mut next = Some(url);
    let mut last = Value::Null;
    while let Some(u) = next {
        let resp = app.get_url(&u).await;
        resp.assert_status(200);
        let bundle = resp.json();
        assert_eq!(bundle["type"], "searchset");
        pages.push(ids(&bundle));
        between(&pages).await;
        next = link(&bundle, relation);
        last = bundle;
        assert!(pages.len() < 50, "paging does not end");
    }
    Walk { pages, last }
}

/// How often each id was seen.
fn tally(pages: &[Vec<String>]) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for id in pages.iter().flatten() {
        *seen.entry(id.clone()).or_default() += 1;
    }
    seen
}

#[tokio::test]
async fn next_and_previous_links_visit_every_match_once() {
    let app = spawn_app().await;
    put_all(&app, &fixtures()).await;

    let forward = walk(
        &app,
        search_url(&app, "Patient?family=pager&_count=3"),
        "next",
        async |_| {},
    )
    .await;

    let sizes: Vec<usize> = forward.pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, [3, 3, 1], "{:?}", forward.pages);
    let seen = tally(&forward.pages);
    assert_eq!(seen.len(), 7, "{seen:?}");
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");
    assert!(seen.keys().all(|id| id.starts_with('p')), "{seen:?}");

    // Back from the last page: the same pages in reverse.
    let back = link(&forward.last, "previous").expect("the last page links back");
    let backward = walk(&app, back, "previous", async |_| {}).await;
    let mut expected: Vec<Vec<String>> = forward.pages[..forward.pages.len() - 1].to_vec();
    expected.reverse();
    assert_eq!(backward.pages, expected);
    assert!(link(&backward.last, "previous").is_none());

    let first_link = link(&forward.last, "first").expect("a first link");
    let first = app.get_url(&first_link).await.json();
    assert_eq!(ids(&first), forward.pages[0]);
}

/// `_total=accurate` is the number of matches on every page, not of the page.
#[tokio::test]
async fn every_page_carries_the_accurate_total() {
    let app = spawn_app().await;
    put_all(&app, &fixtures()).await;
    let mut totals = Vec::new();

    let mut next = Some(search_url(
        &app,
        "Patient?family=pager&_count=3&_total=accurate",
    ));
    while let Some(u) = next {
        let bundle = app.get_url(&u).await.json();
        totals.push(bundle["total"].clone());
        next = link(&bundle, "next");
        assert!(totals.len() < 10, "paging does not end");
    }

    assert_eq!(totals, [json!(7), json!(7), json!(7)]);
}

#[tokio::test]
async fn sorted_paging_keeps_the_order_across_pages() {
    let app = spawn_app().await;
    put_all(&app, &fixtures()).await;
    let whole = ids(&search(&app, "Patient?family=pager&_sort=-given").await);
    assert_eq!(whole, ["p1", "p6", "p3", "p5", "p7", "p4", "p2"]);

    let paged = walk(
        &app,
        search_url(&app, "Patient?family=pager&_sort=-given&_count=2"),
        "next",
        async |_| {},
    )
    .await;

    assert_eq!(paged.pages.concat(), whole);
    let back = walk(
        &app,
        link(&paged.last, "previous").unwrap(),
        "previous",
        async |_| {},
    )
    .await;
    let mut reversed: Vec<String> = back.pages.iter().rev().flatten().cloned().collect();
    reversed.extend(paged.pages.last().unwrap().iter().cloned());
    assert_eq!(reversed, whole);
}

/// Writes between page fetches: a new matching patient, an update of a patient already seen
/// and of one not yet seen. Every patient that existed at the start is seen exactly once.
async fn page_while_writing(query: &str) {
    let app = spawn_app().await;
    put_all(&app, &fixtures()).await;
    let originals: Vec<String> = (1..=7).map(|i| format!("p{i}")).collect();
    let mut created = 0;

    let walked = walk(
        &app,
        search_url(&app, query),
        "next",
        async |pages: &[Vec<String>]| {
            created += 1;
            app.put(&patient(&format!("new{created}"), "Pager", "Abe"))
                .await;
            let seen: Vec<&String> = pages.iter().flatten().collect();
            let unseen = originals.iter().find(|id| !seen.contains(id));
            for id in [seen.first().copied(), unseen].into_iter().flatten() {
                let mut current = app.get(&format!("Patient/{id}")).await.json();
                current["active"] = json!(!current["active"].as_bool().unwrap_or(true));
                app.put(&current).await;
            }
        },
    )
    .await;

    let seen = tally(&walked.pages);
    for id in &originals {
        assert_eq!(seen.get(id), Some(&1), "{id} in {:?}", walked.pages);
    }
    assert!(
        seen.values().all(|n| *n == 1),
        "an entry was repeated: {:?}",
        walked.pages
    );
}

#[tokio::test]
async fn paging_is_stable_while_resources_change() {
    page_while_writing("Patient?family=pager&_count=2").await;
}

#[tokio::test]
async fn sorted_paging_is_stable_while_resources_change() {
    page_while_writing("Patient?family=pager&_sort=given&_count=2").await;
}

#[tokio::test]
async fn a_forged_cursor_is_refused() {
    let app = spawn_app().await;
    put_all(&app, &fixtures()).await;

    let resp = app
        .get_url(&search_url(
            &app,
            "Patient?family=pager&_cursor=not-a-cursor",
        ))
        .await;

    resp.assert_status(400);
}

/// Keyset paging across ties and missing values: each sorted walk, forwards and back, gives
/// the order of the unpaged search.
#[tokio::test]
async fn paging_across_ties_and_missing_sort_values() {
    let app = spawn_app().await;
    put_all(&app, &fixtures()).await;
    let born = |id: &str, date: Option<&str>| {
        let mut p = patient(id, "Pager", "Hal");
        if let Some(d) = date {
            p["birthDate"] = json!(d);
        }
        p
    };
    put_all(
        &app,
        &[
            born("b1", Some("1990-01-01")),
            born("b2", None),
            born("b3", Some("1980-01-01")),
            born("b4", None),
            born("b5", Some("1990-01-01")),
            born("b6", None),
        ],
    )
    .await;
    let mut failures = Vec::new();

    for sort in [
        "birthdate",
        "-birthdate",
        "family",
        "-family,birthdate",
        "given,-birthdate",
    ] {
        let whole = ids(&search(&app, &format!("Patient?family=pager&_sort={sort}")).await);
        for count in [1, 2, 4] {
            let query = format!("Patient?family=pager&_sort={sort}&_count={count}");
            let forward = walk(&app, search_url(&app, &query), "next", async |_| {}).await;
            if forward.pages.concat() != whole {
                failures.push(format!("{query}: forward {:?} vs {whole:?}", forward.pages));
                continue;
            }
            if let Some(back) = link(&forward.last, "previous") {
                let backward = walk(&app, back, "previous", async |_| {}).await;
                let mut order: Vec<String> =
                    backward.pages.iter().rev().flatten().cloned().collect();
                order.extend(forward.pages.last().unwrap().iter().cloned());
                if order != whole {
                    failures.push(format!("{query}: backward {order:?} vs {whole:?}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
