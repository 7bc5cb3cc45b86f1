//! Logs and metrics set-up.
//!
//! Logs are JSON lines on stdout (one event per line) so a collector can ship them; each line
//! written while serving a request carries that request's id through the request span.
//! Metrics use the `metrics` facade with a Prometheus recorder; latency is a histogram with
//! fixed buckets so it can be aggregated across replicas.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::{Config, LogFormat};

pub fn init_logging(config: &Config) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&config.log.level).map_err(|e| {
        anyhow::anyhow!(
            "log.level '{}' is not a valid filter: {e}",
            config.log.level
        )
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let result = match config.log.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))
}

pub fn init_metrics() -> anyhow::Result<PrometheusHandle> {
    const LATENCY: [f64; 14] = [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    const UNITS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY)?
        .set_buckets_for_metric(Matcher::Full("haven_store_commit_units".into()), &UNITS)?
        .set_buckets_for_metric(
            Matcher::Full("haven_store_commit_audit_records".into()),
            &UNITS,
        )?
        .install_recorder()
        .map_err(|e| anyhow::anyhow!("cannot install the metrics recorder: {e}"))?;
    metrics::describe_counter!(
        "haven_http_requests_total",
        "FHIR requests by interaction, resource type and status"
    );
    metrics::describe_histogram!(
        "haven_http_request_duration_seconds",
        metrics::Unit::Seconds,
        "FHIR request latency by interaction and resource type"
    );
    metrics::describe_histogram!(
        "haven_store_commit_seconds",
        metrics::Unit::Seconds,
        "Time to run and durably commit one group of units of work"
    );
    metrics::describe_histogram!(
        "haven_store_commit_units",
        "Units of work made durable by one commit (group commit)"
    );
    metrics::describe_histogram!(
        "haven_store_commit_audit_records",
        "Audit records of reads made durable by one commit (embedded SQLite store)"
    );
    metrics::describe_gauge!(
        "haven_ready",
        "1 when the database answers (checked every 5 s), else 0"
    );
    metrics::describe_gauge!(
        "haven_search_index_stale",
        "1 when the search index was built with other search definitions (run haven reindex)"
    );
    metrics::describe_gauge!(
        "haven_audit_chain_head",
        "Sequence number of the newest sealed audit record"
    );
    metrics::describe_counter!(
        "haven_audit_sealed_total",
        "Audit records this process sealed into the hash chain"
    );
    metrics::describe_counter!(
        "haven_audit_checkpoints_total",
        "Signed audit checkpoints this process wrote"
    );
    metrics::describe_counter!(
        "haven_audit_write_failures_total",
        "Audit records that could not be stored (each refused its interaction with 503)"
    );
    metrics::describe_counter!(
        "haven_audit_seal_errors_total",
        "Audit sealing rounds that failed (retried)"
    );
    metrics::describe_counter!(
        "haven_logins_total",
        "Browser logins that completed (every factor passed, session created)"
    );
    metrics::describe_counter!(
        "haven_login_failures_total",
        "Failed login steps: step=login-failed (password) or mfa-failed (second factor)"
    );
    metrics::describe_counter!(
        "haven_account_lockouts_total",
        "Usernames locked after repeated failures"
    );
    metrics::describe_counter!(
        "haven_login_throttled_total",
        "Login attempts refused with 429: by=address or by=account"
    );
    metrics::describe_counter!(
        "haven_login_hash_rejected_total",
        "Logins refused with 503 because the password-hashing queue was full"
    );
    metrics::describe_counter!(
        "haven_tokens_issued_total",
        "Access tokens issued by the token endpoint"
    );
    metrics::describe_counter!(
        "haven_refresh_reuse_total",
        "Refresh-token families revoked because an old token or a redeemed code came back"
    );
    metrics::describe_counter!(
        "haven_token_rejections_total",
        "FHIR requests refused for an invalid, expired or revoked access token"
    );
    for step in ["login-failed", "mfa-failed"] {
        metrics::counter!("haven_login_failures_total", "step" => step).increment(0);
    }
    for by in ["address", "account"] {
        metrics::counter!("haven_login_throttled_total", "by" => by).increment(0);
    }
    // Counters exist from the start (at 0), so alert rules and dashboards see them before the
    // first event.
    for name in [
        "haven_logins_total",
        "haven_account_lockouts_total",
        "haven_login_hash_rejected_total",
        "haven_tokens_issued_total",
        "haven_refresh_reuse_total",
        "haven_token_rejections_total",
        "haven_audit_write_failures_total",
        "haven_audit_seal_errors_total",
        "haven_audit_sealed_total",
        "haven_audit_checkpoints_total",
    ] {
        metrics::counter!(name).increment(0);
    }
    Ok(handle)
}
