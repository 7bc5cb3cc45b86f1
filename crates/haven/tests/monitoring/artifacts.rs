//! Reading the files under `deploy/monitoring/`: the rules (names, expressions, fields) and the
//! dashboard's queries, plus running promtool.
//!
//! The rules file is read with a deliberately small line-based reader rather than a YAML crate
//! (none is a dependency): it understands the shape `haven.rules.yml` is written in (one rule per
//! `- record:`/`- alert:` item, `expr:` inline or as a `|` block) and fails loudly on anything
//! else, so it cannot silently skip an expression.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// `deploy/monitoring/` in this checkout.
pub fn monitoring_dir() -> PathBuf {
    repo_root().join("deploy/monitoring")
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Runs `promtool` with `args`, feeding `stdin`; fails the test with the install hint when
/// promtool is missing.
pub fn promtool(args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}", missing_tool("promtool", "prometheus", &e)));
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(input.as_bytes())
            .expect("write to promtool");
    }
    child.wait_with_output().expect("wait for promtool")
}

/// The message for a tool that cannot be started.
pub fn missing_tool(tool: &str, package: &str, error: &std::io::Error) -> String {
    if error.kind() == std::io::ErrorKind::NotFound {
        format!(
            "`{tool}` is not on the PATH; the monitoring tests need it: apt-get install {package}"
        )
    } else {
        format!("cannot run `{tool}`: {error}")
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Record,
    Alert,
}

/// One rule of `rules/haven.rules.yml`.
#[derive(Debug)]
pub struct Rule {
    pub kind: Kind,
    pub name: String,
    pub expr: String,
    /// The rule's lines, for its other fields.
    lines: Vec<String>,
}

impl Rule {
    /// The value of the first `key:` line inside the rule (labels and annotations included),
    /// unquoted.
    pub fn field(&self, key: &str) -> Option<String> {
        let prefix = format!("{key}:");
        self.lines.iter().find_map(|line| {
            let value = line.trim_start().strip_prefix(&prefix)?.trim();
            Some(unquote(value))
        })
    }
}

fn unquote(value: &str) -> String {
    if let Some(inner) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        inner.replace("\\\"", "\"")
    } else if let Some(inner) = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        inner.replace("''", "'")
    } else {
        value.to_owned()
    }
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

pub fn rules() -> Vec<Rule> {
    parse_rules(&read(&monitoring_dir().join("rules/haven.rules.yml")))
}

pub fn parse_rules(text: &str) -> Vec<Rule> {
    // Each rule's lines: from its `- record:`/`- alert:` line to the next rule or group.
    let mut blocks: Vec<(Kind, String, Vec<String>)> = Vec::new();
    for line in text.lines() {
        let item = line.trim_start();
        let start = [("- record:", Kind::Record), ("- alert:", Kind::Alert)]
            .into_iter()
            .find_map(|(prefix, kind)| Some((kind, item.strip_prefix(prefix)?)));
        if let Some((kind, name)) = start {
            blocks.push((kind, unquote(name.trim()), Vec::new()));
        } else if item.starts_with("- name:") {
            blocks.push((Kind::Record, String::new(), Vec::new())); // a group: closes the rule
        } else if let Some((_, _, lines)) = blocks.last_mut() {
            lines.push(line.to_owned());
        }
    }
    blocks
        .into_iter()
        .filter(|(_, name, _)| !name.is_empty())
        .map(|(kind, name, lines)| {
            let expr = block_expr(&lines)
                .unwrap_or_else(|| panic!("rule {name}: no `expr:` this reader understands"));
            Rule {
                kind,
                name,
                expr,
                lines,
            }
        })
        .collect()
}

/// The `expr:` of a rule's lines: inline, or a `|`/`>` block of the lines indented deeper.
fn block_expr(lines: &[String]) -> Option<String> {
    let at = lines
        .iter()
        .position(|l| l.trim_start().starts_with("expr:"))?;
    let key_indent = indent(&lines[at]);
    let value = lines[at].trim_start()["expr:".len()..].trim();
    if !value.starts_with(['|', '>']) {
        assert!(
            !value.starts_with(['"', '\'']) && !value.is_empty(),
            "expr `{value}`: write expressions plain or as a `|` block"
        );
        return Some(value.to_owned());
    }
    let body: Vec<&str> = lines[at + 1..]
        .iter()
        .take_while(|l| l.trim().is_empty() || indent(l) > key_indent)
        .map(|l| l.trim())
        .filter(|l| !l.is_empty())
        .collect();
    (!body.is_empty()).then(|| body.join("\n"))
}

pub fn dashboard() -> Value {
    let path = monitoring_dir().join("grafana/haven-dashboard.json");
    serde_json::from_str(&read(&path))
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Every PromQL query of the dashboard, with where it is: panel targets (rows' nested panels
/// too) and the selectors of `label_values(selector, label)` template variables.
pub fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    fn panels<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in list.as_array().into_iter().flatten() {
            out.push(panel);
            panels(&panel["panels"], out);
        }
    }
    let mut all = Vec::new();
    panels(&dashboard["panels"], &mut all);
    let mut queries = Vec::new();
    for panel in all {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                queries.push((
                    format!("panel \"{}\"", panel["title"].as_str().unwrap_or("?")),
                    expr.to_owned(),
                ));
            }
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let query = match &variable["query"] {
            Value::Object(q) => q.get("query").and_then(Value::as_str),
            other => other.as_str(),
        };
        let selector = query
            .and_then(|q| q.strip_prefix("label_values("))
            .and_then(|q| q.strip_suffix(')'))
            .and_then(|q| q.rsplit_once(','))
            .map(|(selector, _label)| selector.trim());
        if let Some(selector) = selector {
            queries.push((
                format!("variable ${}", variable["name"].as_str().unwrap_or("?")),
                selector.to_owned(),
            ));
        }
    }
    queries
}

#[test]
fn the_rules_reader_handles_inline_and_block_expressions() {
    let rules = parse_rules(
        "groups:\n  - name: g\n    rules:\n      - record: a:b:c\n        expr: sum(x)\n      \
         - alert: A\n        expr: |\n          y\n            / z\n\n        for: 1m\n        \
         labels:\n          severity: warning\n  - name: h\n    rules:\n      - alert: 'B'\n        \
         expr: >-\n          up == 0\n        annotations:\n          summary: \"say \\\"hi\\\"\"\n",
    );
    let seen: Vec<(Kind, &str, &str)> = rules
        .iter()
        .map(|r| (r.kind, r.name.as_str(), r.expr.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            (Kind::Record, "a:b:c", "sum(x)"),
            (Kind::Alert, "A", "y\n/ z"),
            (Kind::Alert, "B", "up == 0"),
        ]
    );
    assert_eq!(rules[1].field("severity").as_deref(), Some("warning"));
    assert_eq!(rules[2].field("summary").as_deref(), Some("say \"hi\""));
    assert_eq!(rules[0].field("severity"), None);
}

#[test]
fn the_rules_file_has_the_rules_this_reader_expects() {
    let rules = rules();
    let text = read(&monitoring_dir().join("rules/haven.rules.yml"));
    let items = text
        .lines()
        .filter(|l| {
            let l = l.trim_start();
            l.starts_with("- record:") || l.starts_with("- alert:")
        })
        .count();
    assert_eq!(rules.len(), items, "every rule was read");
    assert!(rules.iter().any(|r| r.kind == Kind::Alert));
    assert!(rules.iter().any(|r| r.kind == Kind::Record));
}
