//! The monitoring configuration in `deploy/monitoring/` (Prometheus scrape configuration,
//! recording and alerting rules with their unit tests, Grafana dashboard), checked offline with
//! promtool and held against what a running Haven really exposes on `/metrics`. Renaming a
//! metric, or writing a rule against one that does not exist, fails this suite rather than
//! silently breaking an alert in production.
//!
//! Needs `promtool` and `jq` on the PATH (Debian: `apt-get install prometheus jq`).

#[allow(dead_code)]
#[path = "../api/helpers.rs"]
mod helpers;

mod artifacts;
mod live;
mod offline;
mod promql;
