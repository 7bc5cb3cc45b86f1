//! The metric names a PromQL expression selects, so they can be compared with a live scrape.
//!
//! Not a PromQL parser (promtool checks syntax): a lexer that skips strings, label matchers,
//! range brackets, numbers and Grafana variables, and keeps each identifier that is neither a
//! function (followed by `(`), a keyword, nor inside a `by`/`without`/`on`/`ignoring`/`group_*`
//! label list. What remains in valid PromQL is a metric name.

use std::collections::BTreeSet;

/// Aggregation operators, binary keywords and modifiers: never metric names.
const KEYWORDS: [&str; 26] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "atan2",
    "inf",
];

/// Keywords followed by a parenthesised list of label names.
const LABEL_LISTS: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => i = skip_string(&chars, i),
            '{' => i = skip_group(&chars, i, '{', '}'),
            '[' => i = skip_group(&chars, i, '[', ']'),
            '#' => {
                // A comment runs to the end of the line.
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '$' => {
                // A Grafana variable: $name or ${name}.
                i += 1;
                while i < chars.len() && (is_ident(chars[i]) || chars[i] == '{' || chars[i] == '}')
                {
                    i += 1;
                }
            }
            c if c.is_ascii_digit()
                || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) =>
            {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len() && is_ident(chars[i]) {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut next = i;
                while next < chars.len() && chars[next].is_whitespace() {
                    next += 1;
                }
                let call = chars.get(next) == Some(&'(');
                let lower = word.to_ascii_lowercase();
                if LABEL_LISTS.contains(&lower.as_str()) && call {
                    i = skip_group(&chars, next, '(', ')');
                } else if !call && !KEYWORDS.contains(&lower.as_str()) && lower != "nan" {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Index after the string starting at `start` (backslash escapes in `"` and `'` strings).
fn skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' if quote != '`' => i += 2,
            c if c == quote => return i + 1,
            _ => i += 1,
        }
    }
    i
}

/// Index after the group opened at `start`, skipping strings and nested groups.
fn skip_group(chars: &[char], start: usize, open: char, close: char) -> usize {
    let mut depth = 0;
    let mut i = start;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => {
                i = skip_string(chars, i);
                continue;
            }
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::metric_names;

    fn names(expr: &str) -> Vec<String> {
        metric_names(expr).into_iter().collect()
    }

    #[test]
    fn selectors_functions_and_aggregations() {
        assert_eq!(
            names(
                "histogram_quantile(0.99, sum by (job, le) (rate(a_bucket{status=~\"5..\", x='}'}[5m])))"
            ),
            ["a_bucket"]
        );
        assert_eq!(
            names("sum(rate(a_total[5m])) by (le) / ignoring(status) group_left(x) b_total"),
            ["a_total", "b_total"]
        );
        assert_eq!(names("absent(up{job=\"haven\"})"), ["up"]);
        assert_eq!(names("topk(10, sum without (instance) (m))"), ["m"]);
    }

    #[test]
    fn recorded_series_keywords_numbers_and_modifiers() {
        assert_eq!(
            names("job:x:ratio_rate5m > 0.02 and on() vector(1) or c offset 5m > bool 1e-3"),
            ["c", "job:x:ratio_rate5m"]
        );
        assert_eq!(names("a == 1 unless b < Inf and NaN != d"), ["a", "b", "d"]);
    }

    #[test]
    fn grafana_variables_and_subqueries() {
        assert_eq!(
            names(
                "sum(increase(m{job=~\"$job\", i=~\"${instance}\"}[$__rate_interval])) / max_over_time(n[1h:5m])"
            ),
            ["m", "n"]
        );
        assert_eq!(names("rate(m[$__range])"), ["m"]);
    }
}
