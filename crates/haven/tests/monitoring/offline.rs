//! Checks that need no server: `deploy/monitoring/check` (promtool and the dashboard), and the
//! promises each alert makes to whoever is paged by it.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use crate::artifacts::{
    Kind, dashboard, dashboard_queries, monitoring_dir, read, repo_root, rules,
};
use crate::promql::metric_names;

#[test]
fn the_monitoring_check_script_passes() {
    let script = monitoring_dir().join("check");
    // Through bash, so a checkout that lost the executable bit still runs it.
    let output = Command::new("bash")
        .arg(&script)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.code() == Some(2) {
        // The script's own message names the missing tool and its package.
        panic!("{stderr}(CI installs them with: apt-get install -y prometheus jq)");
    }
    assert!(
        output.status.success(),
        "deploy/monitoring/check failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains("check: all monitoring checks passed"),
        "{stdout}"
    );
}

/// GitHub's anchor for a Markdown heading: lower case, spaces to hyphens, punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn every_alert_has_a_severity_a_message_and_a_runbook_section() {
    let operations = read(&repo_root().join("docs/OPERATIONS.md"));
    let anchors: BTreeSet<String> = operations
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|l| anchor(l.trim_start_matches('#')))
        .collect();
    let alerts: Vec<_> = rules()
        .into_iter()
        .filter(|r| r.kind == Kind::Alert)
        .collect();
    assert!(!alerts.is_empty());
    for alert in alerts {
        let name = &alert.name;
        let severity = alert.field("severity").unwrap_or_default();
        assert!(
            ["critical", "warning", "info"].contains(&severity.as_str()),
            "{name}: severity '{severity}'"
        );
        assert!(alert.field("for").is_some(), "{name}: no `for:`");
        for key in ["summary", "description"] {
            assert!(
                alert.field(key).is_some_and(|v| !v.is_empty()),
                "{name}: no {key}"
            );
        }
        let runbook = alert.field("runbook_url").unwrap_or_default();
        let section = runbook
            .strip_prefix("docs/OPERATIONS.md#")
            .unwrap_or_else(|| {
                panic!("{name}: runbook_url '{runbook}' is not docs/OPERATIONS.md#...")
            });
        assert_eq!(section, name.to_lowercase(), "{name}: runbook anchor");
        assert!(
            anchors.contains(section),
            "{name}: docs/OPERATIONS.md has no heading '{name}' (anchor #{section})"
        );
    }
}

#[test]
fn every_alert_has_unit_tests_where_it_fires_and_where_it_does_not() {
    let tests = read(&monitoring_dir().join("rules/haven.rules.test.yml"));
    let lines: Vec<&str> = tests.lines().map(str::trim).collect();
    // alertname -> (cases expecting no alert, cases expecting alerts)
    let mut cases: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(name) = line.strip_prefix("alertname:") else {
            continue;
        };
        let expected = lines[i + 1..]
            .iter()
            .find_map(|l| l.strip_prefix("exp_alerts:"))
            .unwrap_or_else(|| panic!("alertname {name} without exp_alerts"));
        let entry = cases.entry(name.trim()).or_default();
        if expected.trim() == "[]" {
            entry.0 += 1;
        } else {
            entry.1 += 1;
        }
    }
    for alert in rules().iter().filter(|r| r.kind == Kind::Alert) {
        let (quiet, firing) = cases.get(alert.name.as_str()).copied().unwrap_or_default();
        assert!(
            quiet > 0 && firing > 0,
            "{}: haven.rules.test.yml needs a case where it fires ({firing}) and one where it \
             does not ({quiet})",
            alert.name
        );
    }
}

#[test]
fn every_recorded_series_used_is_recorded_by_a_rule() {
    let rules = rules();
    let recorded: BTreeSet<&str> = rules
        .iter()
        .filter(|r| r.kind == Kind::Record)
        .map(|r| r.name.as_str())
        .collect();
    let mut used: Vec<(String, String)> = rules
        .iter()
        .map(|r| (format!("rule {}", r.name), r.expr.clone()))
        .collect();
    used.extend(dashboard_queries(&dashboard()));
    for (place, expr) in used {
        for name in metric_names(&expr).into_iter().filter(|n| n.contains(':')) {
            assert!(
                recorded.contains(name.as_str()),
                "{place} uses {name}, which no rule records"
            );
        }
    }
}
