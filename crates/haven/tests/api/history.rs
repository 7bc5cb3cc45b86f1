//! History at instance, type and system level with paging, `_since`, `_at` and `_count`
//! (R4 http.html#history).

use std::collections::HashSet;

use serde_json::{Value, json};

use crate::helpers::{
    TestApp, assert_outcome, entries, link, patient, query_param, spawn_app, spawn_app_with,
    with_id,
};

/// (fullUrl, ETag) of every entry, for comparing pages.
fn keys(bundle: &Value) -> Vec<(String, String)> {
    entries(bundle)
        .iter()
        .map(|e| {
            let url = e["fullUrl"].as_str().unwrap_or("").to_owned();
            let etag = e["response"]["etag"].as_str().unwrap_or("-").to_owned();
            (url, etag)
        })
        .collect()
}

/// Follows `next` links from `first` until the end, returning the entry keys page by page.
async fn walk(
    app: &TestApp,
    first: &str,
    between_pages: impl AsyncFn(usize),
) -> Vec<Vec<(String, String)>> {
    let mut pages = Vec::new();
    let mut url = Some(app.url(first));
    while let Some(u) = url {
        let page = app.get_url(&u).await;
        page.assert_status(200);
        let bundle = page.json();
        assert_eq!(bundle["type"], "history");
        pages.push(keys(&bundle));
        between_pages(pages.len()).await;
        url = link(&bundle, "next");
        assert!(pages.len() < 100, "paging does not end");
    }
    pages
}

#[tokio::test]
async fn instance_history_lists_every_change_newest_first() {
    let app = spawn_app().await;
    let created = app.create(&patient()).await;
    let id = created["id"].as_str().unwrap();
    let path = format!("Patient/{id}");
    let mut v2 = created.clone();
    v2["active"] = json!(false);
    app.put(&v2).await;
    app.patch(
        &path,
        &json!([{ "op": "replace", "path": "/gender", "value": "other" }]),
    )
    .await
    .assert_status(200);
    app.delete(&path).await.assert_status(204);

    let resp = app.get(&format!("{path}/_history")).await;

    resp.assert_status(200);
    let bundle = resp.json();
    assert_eq!(bundle["resourceType"], "Bundle");
    assert_eq!(bundle["type"], "history");
    let list = entries(&bundle);
    let methods: Vec<&str> = list
        .iter()
        .map(|e| e["request"]["method"].as_str().unwrap())
        .collect();
    assert_eq!(methods, ["DELETE", "PATCH", "PUT", "POST"]);
    let etags: Vec<&str> = list
        .iter()
        .map(|e| e["response"]["etag"].as_str().unwrap())
        .collect();
    assert_eq!(etags, ["W/\"4\"", "W/\"3\"", "W/\"2\"", "W/\"1\""]);
    assert!(
        list[0].get("resource").is_none(),
        "a deletion has no resource"
    );
    assert!(
        list[0]["response"]["status"]
            .as_str()
            .unwrap()
            .starts_with("204")
    );
    assert!(
        list[3]["response"]["status"]
            .as_str()
            .unwrap()
            .starts_with("201")
    );
    assert_eq!(list[3]["resource"], created);
    assert_eq!(list[1]["resource"]["gender"], "other");
    for e in list {
        assert_eq!(e["fullUrl"], format!("{}/{path}", app.base));
        assert!(e["response"]["lastModified"].is_string());
    }
}

#[tokio::test]
async fn type_and_system_history_cover_their_scope() {
    let app = spawn_app().await;
    let p1 = app.put(&with_id(patient(), "p1")).await;
    app.put(&with_id(patient(), "p2")).await;
    app.create(&json!({ "resourceType": "Organization", "name": "Acme" }))
        .await;
    app.put(&p1).await;

    let patients = app.get("Patient/_history").await.json();
    let urls: Vec<String> = keys(&patients).into_iter().map(|(u, _)| u).collect();
    assert_eq!(
        urls,
        [
            format!("{}/Patient/p1", app.base),
            format!("{}/Patient/p2", app.base),
            format!("{}/Patient/p1", app.base)
        ]
    );

    let system = app.get("_history").await.json();
    let types: Vec<&str> = entries(&system)
        .iter()
        .map(|e| e["resource"]["resourceType"].as_str().unwrap())
        .collect();
    assert_eq!(types.len(), 4);
    assert!(types.contains(&"Organization"));

    let empty = app.get("Encounter/_history").await.json();
    assert!(entries(&empty).is_empty());
    assert_outcome(&app.get("Foo/_history").await, 404, "not-supported");
}

#[tokio::test]
async fn paging_visits_every_entry_once_even_while_writes_happen() {
    let app = spawn_app().await;
    for i in 0..7 {
        app.put(&with_id(patient(), &format!("p{i}"))).await;
    }
    let unpaged = keys(&app.get("_history").await.json());
    assert_eq!(unpaged.len(), 7);

    let pages = walk(&app, "_history?_count=2", async |page: usize| {
        // New versions land between pages; they are newer than the walk and must not shift it.
        app.put(&with_id(patient(), &format!("late{page}"))).await;
    })
    .await;

    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 2, 1]);
    let walked: Vec<(String, String)> = pages.into_iter().flatten().collect();
    assert_eq!(walked, unpaged, "no duplicates, no gaps, same order");
    let distinct: HashSet<_> = walked.iter().collect();
    assert_eq!(distinct.len(), walked.len());
}

#[tokio::test]
async fn previous_link_returns_the_page_before() {
    let app = spawn_app().await;
    for i in 0..5 {
        app.put(&with_id(patient(), &format!("p{i}"))).await;
    }
    let first = app.get("Patient/_history?_count=2").await.json();
    assert_eq!(
        query_param(&link(&first, "self").unwrap(), "_count").as_deref(),
        Some("2")
    );
    let second = app.get_url(&link(&first, "next").unwrap()).await.json();

    let back = app
        .get_url(&link(&second, "previous").expect("previous link"))
        .await;

    back.assert_status(200);
    assert_eq!(keys(&back.json()), keys(&first));
    assert!(link(&back.json(), "next").is_some());
    let restart = app.get_url(&link(&second, "first").unwrap()).await.json();
    assert_eq!(keys(&restart), keys(&first));
}

/// History keeps growing, so even the newest page links to what may come after it: a client
/// following changes asks that link again later and gets exactly the versions written since.
#[tokio::test]
async fn the_newest_page_links_to_versions_written_after_it() {
    let app = spawn_app().await;
    for i in 0..3 {
        app.put(&with_id(patient(), &format!("p{i}"))).await;
    }
    let newest = app.get("Patient/_history?_count=10").await.json();
    assert_eq!(keys(&newest).len(), 3);
    let feed = link(&newest, "previous").expect("the newest page links to newer versions");
    let nothing_yet = app.get_url(&feed).await.json();
    assert!(keys(&nothing_yet).is_empty());
    assert_eq!(
        link(&nothing_yet, "previous").as_deref(),
        Some(feed.as_str()),
        "an empty newer page links to itself"
    );
    for i in 3..5 {
        app.put(&with_id(patient(), &format!("p{i}"))).await;
    }
    let since = app.get_url(&feed).await.json();
    assert_eq!(keys(&since).len(), 2, "{since}");
    let again = app
        .get_url(&link(&since, "previous").expect("and onwards"))
        .await
        .json();
    assert!(keys(&again).is_empty());
}

#[tokio::test]
async fn bad_paging_parameters_are_rejected() {
    let app = spawn_app().await;
    for query in [
        "_count=0",
        "_count=-1",
        "_count=lots",
        "_cursor=zzz",
        "_since=yesterday",
        "_since=2024-01-01",
        "_at=soon",
    ] {
        let resp = app.get(&format!("_history?{query}")).await;
        assert_outcome(&resp, 400, "invalid");
    }
}

#[tokio::test]
async fn since_keeps_versions_from_that_instant_on() {
    let app = spawn_app().await;
    app.put(&with_id(patient(), "old")).await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let recent = app.put(&with_id(patient(), "recent")).await;
    let since = recent["meta"]["lastUpdated"].as_str().unwrap();

    let url = format!("{}/_history", app.base);
    let resp = app
        .send(app.client.get(url).query(&[("_since", since)]))
        .await;

    resp.assert_status(200);
    let got = keys(&resp.json());
    assert_eq!(
        got,
        [(format!("{}/Patient/recent", app.base), "W/\"1\"".to_owned())]
    );
    let future = app
        .send(
            app.client
                .get(format!("{}/_history", app.base))
                .query(&[("_since", "2999-01-01T00:00:00Z")]),
        )
        .await;
    assert!(entries(&future.json()).is_empty());
    // A link carries _since along, so the next page keeps the filter.
    assert_eq!(
        query_param(&link(&resp.json(), "self").unwrap(), "_since").as_deref(),
        Some(since)
    );
}

/// Versions of `Patient/p` current at `at`.
async fn versions_at(app: &TestApp, at: &str) -> Vec<String> {
    let resp = app
        .send(
            app.client
                .get(app.url("Patient/p/_history"))
                .query(&[("_at", at)]),
        )
        .await;
    resp.assert_status(200);
    entries(&resp.json())
        .iter()
        .map(|e| {
            e["resource"]["meta"]["versionId"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn at_with_date_precision_selects_versions_current_that_day() {
    let app = spawn_app().await;
    let v1 = app.put(&with_id(patient(), "p")).await;
    app.put(&v1).await;
    let today = &v1["meta"]["lastUpdated"].as_str().unwrap()[..10];

    assert_eq!(versions_at(&app, today).await, ["2", "1"]);
    assert_eq!(versions_at(&app, "2999-01-01").await, ["2"]);
    assert_eq!(versions_at(&app, "2999").await, ["2"]);
    assert!(versions_at(&app, "1999-06-30").await.is_empty());
}

/// A version is current at the very instant it was written (its `lastUpdated`).
#[tokio::test]
async fn at_an_exact_instant_includes_the_version_written_then() {
    let app = spawn_app().await;
    let v1 = app.put(&with_id(patient(), "p")).await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    app.put(&v1).await;
    let written = v1["meta"]["lastUpdated"].as_str().unwrap();

    assert_eq!(versions_at(&app, written).await, ["1"], "_at={written}");
}

#[tokio::test]
async fn count_is_clamped_to_the_maximum_page_size() {
    let app = spawn_app_with(&[
        ("HAVEN_LIMITS__MAX_PAGE_SIZE", "5"),
        ("HAVEN_LIMITS__DEFAULT_PAGE_SIZE", "5"),
    ])
    .await;
    for i in 0..7 {
        app.put(&with_id(patient(), &format!("p{i}"))).await;
    }

    let page = app.get("_history?_count=100").await.json();

    assert_eq!(entries(&page).len(), 5);
    assert_eq!(
        query_param(&link(&page, "self").unwrap(), "_count").as_deref(),
        Some("5")
    );
    let rest = app
        .get_url(&link(&page, "next").expect("next"))
        .await
        .json();
    assert_eq!(entries(&rest).len(), 2);
    assert!(link(&rest, "next").is_none());
    assert_eq!(
        entries(&app.get("_history").await.json()).len(),
        5,
        "default page size"
    );
}
