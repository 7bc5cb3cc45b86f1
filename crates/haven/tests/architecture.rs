//! Architecture invariants from ARCHITECTURE.md, checked against the real dependency graph.
//!
//! `cargo metadata` gives the resolved graph; for each workspace crate we check (1) its direct
//! dependencies on other workspace crates are exactly among those allowed, and (2) no crate it
//! pulls in at run time (normal dependencies, transitively) is on its forbidden list. Adding,
//! say, `sqlx` to `haven-fhir` or `haven-store-sqlite` to `haven-http` fails this test.

use std::collections::{BTreeSet, HashMap};
use std::process::Command;

use serde_json::Value;

/// (crate, workspace crates it may depend on directly, external crates it must never reach)
const RULES: &[(&str, &[&str], &[&str])] = &[
    (
        "haven-fhir",
        &[],
        &["tokio", "sqlx", "axum", "hyper", "tower", "reqwest", "mio"],
    ),
    (
        "haven-domain",
        &["haven-fhir"],
        &["tokio", "sqlx", "axum", "hyper", "tower", "reqwest", "mio"],
    ),
    // All cryptography, and nothing else: no I/O, no async.
    (
        "haven-crypto",
        &[],
        &["tokio", "sqlx", "axum", "hyper", "tower", "reqwest", "mio"],
    ),
    // The audit record, chain and checkpoints: pure logic over haven-crypto.
    (
        "haven-audit",
        &["haven-crypto", "haven-domain"],
        &["tokio", "sqlx", "axum", "hyper", "tower", "reqwest", "mio"],
    ),
    // Key management: providers, data keys as store records; no network I/O (the binary
    // supplies the Vault client) and no SQL.
    (
        "haven-keys",
        &["haven-crypto", "haven-domain", "haven-store"],
        &["sqlx", "axum", "hyper", "tower", "reqwest", "mio"],
    ),
    (
        "haven-store",
        &["haven-domain"],
        &["sqlx", "axum", "hyper", "tower", "reqwest"],
    ),
    // Key management over the store's records; the KEK providers that need the network
    // (Vault/OpenBao Transit) live in the binary, which owns the HTTP client.
    (
        "haven-keys",
        &["haven-crypto", "haven-domain", "haven-store"],
        &["sqlx", "axum", "hyper", "tower", "reqwest"],
    ),
    (
        "haven-store-sqlite",
        &["haven-domain", "haven-store"],
        &["axum", "hyper", "tower", "reqwest"],
    ),
    (
        "haven-store-postgres",
        &["haven-domain", "haven-store"],
        &["axum", "hyper", "tower", "reqwest"],
    ),
    (
        "haven-store-tests",
        &["haven-domain", "haven-store"],
        &["sqlx", "axum", "hyper"],
    ),
    (
        "haven-service",
        &[
            "haven-audit",
            "haven-crypto",
            "haven-domain",
            "haven-fhir",
            "haven-keys",
            "haven-store",
        ],
        &["sqlx", "axum", "hyper", "tower", "reqwest", "tokio"],
    ),
    // The identity provider: flows and token validation over the store's records; no HTTP
    // library (the binary supplies the fetcher of external issuers' keys).
    (
        "haven-identity",
        &["haven-audit", "haven-crypto", "haven-domain", "haven-store"],
        &["sqlx", "axum", "hyper", "tower", "reqwest"],
    ),
    (
        "haven-http",
        &["haven-domain", "haven-service", "haven-identity"],
        &["sqlx", "reqwest"],
    ),
    // The benchmark harness drives the binary over HTTP only; it never links Haven or a store.
    ("haven-bench", &[], &["sqlx", "axum"]),
    (
        "haven",
        &[
            "haven-domain",
            "haven-service",
            "haven-http",
            "haven-store",
            "haven-store-sqlite",
            "haven-store-postgres",
            "haven-audit",
            "haven-crypto",
            "haven-identity",
            "haven-keys",
        ],
        &[],
    ),
];

fn host_triple() -> String {
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("run rustc -vV");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("host triple")
        .to_owned()
}

fn metadata() -> Value {
    // Filtering to the host platform keeps `--offline` from needing other platforms' crates.
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            "--filter-platform",
            &host_triple(),
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("metadata JSON")
}

struct Graph {
    names: HashMap<String, String>,
    normal_deps: HashMap<String, Vec<String>>,
    workspace: HashMap<String, String>,
}

fn graph(meta: &Value) -> Graph {
    let names = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["id"].as_str().unwrap().to_owned(),
                p["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect::<HashMap<_, _>>();
    let workspace = meta["workspace_members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| {
            let id = id.as_str().unwrap().to_owned();
            (names[&id].clone(), id)
        })
        .collect();
    let mut normal_deps = HashMap::new();
    for node in meta["resolve"]["nodes"].as_array().unwrap() {
        let deps = node["deps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| {
                d["dep_kinds"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|k| k["kind"].is_null())
            })
            .map(|d| d["pkg"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>();
        normal_deps.insert(node["id"].as_str().unwrap().to_owned(), deps);
    }
    Graph {
        names,
        normal_deps,
        workspace,
    }
}

#[test]
fn crate_dependencies_follow_the_architecture() {
    let g = graph(&metadata());
    let mut failures = Vec::new();
    for name in g.workspace.keys() {
        if !RULES.iter().any(|(n, _, _)| n == name) {
            failures.push(format!("{name} is not described in the architecture rules; add it to ARCHITECTURE.md and this test"));
        }
    }
    for (name, allowed, forbidden) in RULES {
        let Some(id) = g.workspace.get(*name) else {
            failures.push(format!("{name} is in the rules but not in the workspace"));
            continue;
        };
        for dep in &g.normal_deps[id] {
            let dep_name = &g.names[dep];
            if dep_name.starts_with("haven") && !allowed.contains(&dep_name.as_str()) {
                failures.push(format!("{name} must not depend on {dep_name}"));
            }
        }
        // Everything reachable at run time.
        let mut seen = BTreeSet::new();
        let mut stack = vec![id.clone()];
        while let Some(cur) = stack.pop() {
            for dep in &g.normal_deps[&cur] {
                if seen.insert(dep.clone()) {
                    stack.push(dep.clone());
                }
            }
        }
        for dep in &seen {
            let dep_name = &g.names[dep];
            if forbidden.contains(&dep_name.as_str()) {
                failures.push(format!(
                    "{name} must not reach {dep_name} (directly or transitively)"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "architecture violations:\n  {}",
        failures.join("\n  ")
    );
}

#[test]
fn no_crate_allows_unsafe_code() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    assert!(
        manifest.contains("unsafe_code = \"forbid\""),
        "workspace lints must forbid unsafe code"
    );
    for entry in std::fs::read_dir(root.join("crates")).unwrap() {
        let dir = entry.unwrap().path();
        let m = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        assert!(
            m.contains("[lints]\nworkspace = true"),
            "{} must inherit the workspace lints",
            dir.display()
        );
    }
}
