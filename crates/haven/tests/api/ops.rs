//! The CapabilityStatement, health probes, metrics, request ids and security headers.

use std::collections::HashSet;

use reqwest::Method;
use reqwest::header::AUTHORIZATION;
use serde_json::Value;

use crate::helpers::{patient, spawn_app, spawn_app_with, with_id};

const METRICS_TOKEN: &str = "metrics-scraper-token-abcdefgh";

#[tokio::test]
async fn capability_statement_lists_every_r4_type() {
    let app = spawn_app().await;

    let resp = app.get("metadata").await;

    resp.assert_status(200);
    assert!(resp.content_type().starts_with("application/fhir+json"));
    let cs = resp.json();
    assert_eq!(cs["resourceType"], "CapabilityStatement");
    assert_eq!(cs["fhirVersion"], "4.0.1");
    assert_eq!(cs["kind"], "instance");
    assert_eq!(cs["status"], "active");
    assert!(
        cs["format"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "application/fhir+json")
    );
    let rest = &cs["rest"][0];
    assert_eq!(rest["mode"], "server");
    let resources = rest["resource"].as_array().unwrap();
    // Every R4 type; AuditEvent is Haven's own audit trail, read-only (tests/api/audit_view.rs).
    assert_eq!(resources.len(), 146);
    let types: HashSet<&str> = resources
        .iter()
        .map(|r| r["type"].as_str().unwrap())
        .collect();
    assert_eq!(types.len(), 146, "each type once");
    assert!(types.contains("AuditEvent"));
    for ty in [
        "Patient",
        "Observation",
        "Encounter",
        "Binary",
        "Bundle",
        "Parameters",
    ] {
        assert!(types.contains(ty), "{ty}");
    }
    let expected = [
        "read",
        "vread",
        "update",
        "patch",
        "delete",
        "history-instance",
        "history-type",
        "create",
        "search-type",
    ];
    for r in resources.iter().filter(|r| r["type"] != "AuditEvent") {
        let codes: Vec<&str> = r["interaction"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["code"].as_str().unwrap())
            .collect();
        assert_eq!(codes, expected, "{}", r["type"]);
    }
    let system: Vec<&str> = rest["interaction"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["code"].as_str().unwrap())
        .collect();
    for code in ["transaction", "batch", "history-system", "search-system"] {
        assert!(system.contains(&code), "{system:?}");
    }
    // Every search parameter offered is listed with its definition and type.
    let patient = resources
        .iter()
        .find(|r| r["type"] == "Patient")
        .expect("Patient");
    let revincludes = patient["searchRevInclude"].as_array().unwrap();
    assert!(
        revincludes.iter().any(|r| r == "Observation:subject"),
        "{revincludes:?}"
    );
    assert!(
        patient["searchInclude"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "Patient:general-practitioner"),
        "{}",
        patient["searchInclude"]
    );
    let params = patient["searchParam"].as_array().unwrap();
    for (name, kind) in [
        ("birthdate", "date"),
        ("name", "string"),
        ("identifier", "token"),
    ] {
        assert!(
            params
                .iter()
                .any(|p| p["name"] == name && p["type"] == kind),
            "{name}: {params:?}"
        );
    }
    let head = app.send(app.request(Method::HEAD, "metadata")).await;
    head.assert_status(200);
}

#[tokio::test]
async fn health_probes_answer() {
    let app = spawn_app().await;
    let healthz = app.get_root("/healthz").await;
    healthz.assert_status(200);
    assert_eq!(healthz.json()["status"], "ok");
    let readyz = app.get_root("/readyz").await;
    readyz.assert_status(200);
    assert_eq!(readyz.json()["status"], "ready");
}

#[tokio::test]
async fn metrics_count_requests_by_closed_labels_only() {
    let app = spawn_app().await;
    let created = app.create(&patient()).await;
    let server_id = created["id"].as_str().unwrap().to_owned();
    app.put(&with_id(patient(), "client-id-visible-nowhere"))
        .await;
    app.get(&format!("Patient/{server_id}"))
        .await
        .assert_status(200);
    app.get("Patient/no-such-patient-id")
        .await
        .assert_status(404);
    app.get("Frobnicator/1").await.assert_status(404);

    let resp = app.get_root("/metrics").await;

    resp.assert_status(200);
    assert!(resp.content_type().starts_with("text/plain"));
    let text = resp.text();
    assert!(text.contains("haven_http_requests_total{"), "{text}");
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("haven_http_requests_total{")
                && l.contains("interaction=\"create\"")
                && l.contains("resource_type=\"Patient\"")
                && l.contains("status=\"201\"")
        })
        .unwrap_or_else(|| panic!("no create/Patient/201 counter in {text}"));
    assert!(line.ends_with(" 1"), "{line}");
    assert!(text.contains("status=\"404\""), "{text}");
    assert!(
        text.contains("haven_http_request_duration_seconds_bucket"),
        "{text}"
    );
    for secret in [
        server_id.as_str(),
        "client-id-visible-nowhere",
        "no-such-patient-id",
        "Frobnicator",
    ] {
        assert!(!text.contains(secret), "metrics leak '{secret}'");
    }
}

#[tokio::test]
async fn metrics_can_require_a_bearer_token() {
    let app = spawn_app_with(&[("HAVEN_METRICS__TOKEN", METRICS_TOKEN)]).await;
    app.get("metadata").await.assert_status(200);
    let scrape = |auth: Option<String>| {
        let mut request = app.client.get(format!("{}/metrics", app.root));
        if let Some(a) = auth {
            request = request.header(AUTHORIZATION, a);
        }
        app.send(request)
    };

    scrape(None).await.assert_status(401);
    scrape(Some("Bearer wrong-token-0123456789".into()))
        .await
        .assert_status(401);
    scrape(Some(format!("Bearer {METRICS_TOKEN}x")))
        .await
        .assert_status(401);
    scrape(Some(format!("Basic {METRICS_TOKEN}")))
        .await
        .assert_status(401);
    let ok = scrape(Some(format!("Bearer {METRICS_TOKEN}"))).await;
    ok.assert_status(200);
    assert!(
        ok.text().contains("haven_http_requests_total{"),
        "{}",
        ok.text()
    );
    // The token protects metrics only; the probes stay open for the orchestrator.
    app.get_root("/healthz").await.assert_status(200);
}

#[tokio::test]
async fn request_ids_are_echoed_and_logged() {
    let app = spawn_app().await;

    let resp = app
        .send(
            app.request(Method::GET, "metadata")
                .header("x-request-id", "abc-123"),
        )
        .await;

    assert_eq!(resp.header("x-request-id"), Some("abc-123"));
    let line = app
        .wait_for_log(|l| l.contains("abc-123"))
        .await
        .unwrap_or_else(|| panic!("no log line for abc-123 in {:?}", app.logs()));
    let entry: Value = serde_json::from_str(&line).expect("log lines are JSON");
    assert_eq!(entry["span"]["request_id"], "abc-123", "{line}");
    assert_eq!(entry["span"]["interaction"], "capabilities", "{line}");

    let generated = app.get("metadata").await;
    let id = generated.header("x-request-id").unwrap();
    assert_eq!(id.len(), 36, "a fresh UUID: {id}");
    assert_ne!(
        id,
        app.get("metadata").await.header("x-request-id").unwrap()
    );
}

#[tokio::test]
async fn unsafe_request_ids_are_replaced() {
    let app = spawn_app().await;
    let long = "a".repeat(65);
    let hostile = [
        "abc 123 injected-space",
        "abc\tinjected-tab",
        "abc%0Ainjected-newline",
        "{\"level\":\"ERROR\",\"injected\":1}",
        long.as_str(),
    ];
    for value in hostile {
        let resp = app
            .send(
                app.request(Method::GET, "metadata")
                    .header("x-request-id", value),
            )
            .await;
        let echoed = resp.header("x-request-id").unwrap();
        assert_ne!(echoed, value);
        assert_eq!(echoed.len(), 36, "replaced by a UUID: {echoed}");
    }
    // Log lines arrive in order: once the last request's line is in, all earlier ones are.
    let last = app.get("metadata").await;
    let last_id = last.header("x-request-id").unwrap().to_owned();
    assert!(app.wait_for_log(|l| l.contains(&last_id)).await.is_some());
    for line in app.logs() {
        assert!(
            !line.contains("injected"),
            "client text reached the log: {line}"
        );
        assert!(!line.contains(&long), "{line}");
    }
}

#[tokio::test]
async fn security_headers_are_on_every_kind_of_response() {
    let app = spawn_app().await;
    let responses = [
        app.get("metadata").await,
        app.get("Patient/nobody").await,
        app.get_root("/healthz").await,
        app.get_root("/metrics").await,
        app.get_root("/nowhere").await,
        app.post_json("Patient", &patient()).await,
    ];
    for resp in responses {
        // `send` checked cache-control and nosniff; these complete the set.
        assert_eq!(resp.header("x-frame-options"), Some("DENY"));
        assert_eq!(resp.header("referrer-policy"), Some("no-referrer"));
        assert_eq!(resp.header("cache-control"), Some("no-store"));
        assert_eq!(resp.header("x-content-type-options"), Some("nosniff"));
        assert!(resp.header("x-request-id").is_some());
    }
}
