//! A running Haven's `/metrics`: the exposition passes `promtool check metrics`, and it has every
//! Haven metric the rules and the dashboard select.

use std::collections::BTreeSet;

use serde_json::json;

use crate::artifacts::{dashboard, dashboard_queries, promtool, rules};
use crate::helpers::{patient, spawn_app};
use crate::promql::metric_names;

/// Metrics that come from elsewhere: Prometheus's `up` and the standard exporters the rules use
/// (node_exporter, kubelet, kube-state-metrics, cert-manager, the blackbox exporter's probes).
fn external(name: &str) -> bool {
    name == "up"
        || ["node_", "kubelet_", "kube_", "certmanager_", "probe_"]
            .iter()
            .any(|p| name.starts_with(p))
}

/// Starts Haven, makes requests with the outcomes the metrics label (a create that commits, a
/// read, a 404 and a 400), and returns its `/metrics` page.
async fn exercised_scrape() -> String {
    let app = spawn_app().await;
    let created = app.create(&patient()).await;
    let id = created["id"].as_str().expect("id");
    app.get(&format!("Patient/{id}")).await.assert_status(200);
    app.get("Patient/no-such-patient").await.assert_status(404);
    app.post_json(
        "Patient",
        &json!({"resourceType": "Patient", "birthDate": "1974-13-45"}),
    )
    .await
    .assert_status(400);
    let resp = app.get_root("/metrics").await;
    resp.assert_status(200);
    resp.text()
}

/// The series names of an exposition, and the names its `# HELP`/`# TYPE` lines describe.
fn exposed_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| {
            let line = line
                .strip_prefix("# HELP ")
                .or_else(|| line.strip_prefix("# TYPE "))
                .unwrap_or(line);
            if line.starts_with('#') {
                return None;
            }
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            (end > 0).then(|| line[..end].to_owned())
        })
        .collect()
}

#[tokio::test]
async fn the_live_exposition_passes_promtool_lint() {
    let text = exercised_scrape().await;

    let output = promtool(&["check", "metrics"], Some(&text));

    let problems = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && problems.trim().is_empty(),
        "promtool check metrics finds problems in Haven's /metrics ({}):\n{problems}\n\
         --- exposition ---\n{text}",
        output.status
    );
}

#[tokio::test]
async fn every_haven_metric_in_the_rules_and_the_dashboard_is_exposed() {
    let text = exercised_scrape().await;
    let exposed = exposed_names(&text);
    let mut queries: Vec<(String, String)> = rules()
        .into_iter()
        .map(|r| (format!("rule {}", r.name), r.expr))
        .collect();
    queries.extend(dashboard_queries(&dashboard()));

    let mut checked = BTreeSet::new();
    let mut missing = Vec::new();
    for (place, expr) in &queries {
        // Recorded series (level:metric:op) are checked offline against the recording rules.
        for name in metric_names(expr)
            .into_iter()
            .filter(|n| !n.contains(':') && !external(n))
        {
            if !exposed.contains(&name) {
                missing.push(format!("{place}: {name}"));
            }
            checked.insert(name);
        }
    }

    assert!(
        missing.is_empty(),
        "the rules or the dashboard select metrics a running Haven does not expose:\n{}\n\
         exposed: {exposed:?}",
        missing.join("\n")
    );
    // The comparison really covered Haven's own metrics (a reader bug would make it vacuous).
    // Both stores report their commits (PostgreSQL one unit per commit).
    for name in [
        "haven_http_requests_total",
        "haven_http_request_duration_seconds_bucket",
        "haven_store_commit_seconds_bucket",
        "haven_store_commit_units_sum",
        "haven_ready",
    ] {
        assert!(checked.contains(name), "no rule or panel uses {name}");
    }
}

#[test]
fn exposed_names_reads_series_and_metadata_lines() {
    let names = exposed_names(
        "# HELP a_total Requests\n# TYPE a_total counter\na_total{x=\"1\"} 3\n\n\
         b_bucket{le=\"+Inf\"} 1\nc 2\n# EOF\n",
    );
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(names, ["a_total", "b_bucket", "c"]);
}
