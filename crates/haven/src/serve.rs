//! `haven serve` and `haven migrate`: wiring the store, service and HTTP layer together.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use haven_http::{AppState, Modules};
use haven_service::search::IndexStatus;
use haven_service::{FhirService, ServiceConfig};
use haven_store::ResourceStore;
use haven_store_postgres::{PgOptions, PgStore};
use haven_store_sqlite::{SqliteOptions, SqliteStore};
use tokio::net::TcpListener;

use crate::Role;
use crate::config::{self, Config};
use crate::telemetry;

fn modules(role: Role) -> Modules {
    match role {
        Role::All => Modules::ALL,
        Role::Fhir => Modules {
            fhir: true,
            identity: false,
        },
        Role::Identity => Modules {
            fhir: false,
            identity: true,
        },
    }
}

/// The store, sealing resource bodies at rest (unless the benchmark turned encryption off),
/// with its data keys.
pub(crate) async fn open_sealed(
    config: &Config,
) -> anyhow::Result<(Arc<dyn ResourceStore>, Option<Arc<haven_keys::DataKeys>>)> {
    open_sealed_for(config, false).await
}

async fn open_sealed_for(
    config: &Config,
    serving: bool,
) -> anyhow::Result<(Arc<dyn ResourceStore>, Option<Arc<haven_keys::DataKeys>>)> {
    if config.encryption.benchmark_off {
        return Ok((open_raw_store(config).await?, None));
    }
    // Keys first: a missing keyring stops the command before it touches the database.
    let keys = crate::keys_cmd::open_keys(config, serving)?;
    let raw = open_raw_store(config).await?;
    let sealed = haven_service::sealed::SealedStore::new(raw, keys.clone())
        .with_sensitive_systems(config.encryption.sensitive_identifier_systems.clone())
        .await
        .map_err(|e| anyhow::anyhow!("cannot prepare the identifier key: {e}"))?;
    Ok((Arc::new(sealed), Some(keys)))
}

/// The store every command uses: sealed (see [`open_sealed`]).
pub(crate) async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn ResourceStore>> {
    Ok(open_sealed(config).await?.0)
}

/// The store as the database holds it: bodies sealed, for commands that never read them.
pub(crate) async fn open_raw_store(config: &Config) -> anyhow::Result<Arc<dyn ResourceStore>> {
    if let Some(url) = &config.database_url {
        let options = PgOptions {
            statement_timeout: config.statement_timeout(),
            ..PgOptions::default()
        };
        let store = PgStore::connect(url.expose(), options)
            .await
            .context("cannot open the PostgreSQL database (check database_url and that the server is reachable)")?;
        return Ok(Arc::new(store));
    }
    config::ensure_data_dir(&config.data_dir).with_context(|| {
        format!(
            "cannot use the data directory {}",
            config.data_dir.display()
        )
    })?;
    let options = SqliteOptions {
        statement_timeout: config.statement_timeout(),
        ..SqliteOptions::default()
    };
    let store = SqliteStore::open(&config.database_path(), options)
        .await
        .with_context(|| format!("cannot open the database in {}", config.data_dir.display()))?;
    Ok(Arc::new(store))
}

pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    if let Some(url) = &config.database_url {
        let n = PgStore::migrate(url.expose())
            .await
            .context("cannot migrate the PostgreSQL database")?;
        println!("PostgreSQL database is at the latest schema ({n} migrations)");
        return Ok(());
    }
    config::ensure_data_dir(&config.data_dir).with_context(|| {
        format!(
            "cannot use the data directory {}",
            config.data_dir.display()
        )
    })?;
    let n = SqliteStore::migrate(&config.database_path()).await?;
    println!(
        "database {} is at the latest schema ({n} migrations)",
        config.database_path().display()
    );
    Ok(())
}

/// `haven reindex`: recomputes the search index, resumably, with progress on stderr.
pub async fn reindex(config: &Config, batch: u32, restart: bool) -> anyhow::Result<()> {
    let store = open_store(config).await?;
    let service = FhirService::new(
        store,
        ServiceConfig {
            limits: config.limits(),
            base_url: String::new(),
            audit_writes: true,
            policy: Arc::new(config.policy()?),
        },
    );
    let started = std::time::Instant::now();
    let mut last_print = std::time::Instant::now() - std::time::Duration::from_secs(10);
    let done = service
        .reindex(batch, restart, |p| {
            if p.done == 0 || last_print.elapsed().as_secs_f64() >= 1.0 || p.done >= p.total {
                last_print = std::time::Instant::now();
                let rate = p.done as f64 / started.elapsed().as_secs_f64().max(0.001);
                let pct = if p.total == 0 {
                    100.0
                } else {
                    p.done as f64 * 100.0 / p.total as f64
                };
                eprintln!(
                    "reindex: {}/{} resources ({pct:.1}%){}, {rate:.0}/s",
                    p.done,
                    p.total,
                    if p.resumed { ", resumed" } else { "" }
                );
            }
        })
        .await
        .map_err(|e| anyhow::anyhow!("reindex failed: {e}; run it again to resume"))?;
    service.shutdown().await;
    println!(
        "search index rebuilt: {} resources in {:.1} s (definitions {})",
        done.done,
        started.elapsed().as_secs_f64(),
        haven_service::search::fingerprint()
    );
    Ok(())
}

pub async fn run(config: Config, role: Role, audit_writes: bool) -> anyhow::Result<()> {
    // Signal handlers first: a SIGTERM that arrives right after start-up must still mean a
    // graceful shutdown, not the default action (termination).
    let shutdown = shutdown_signal()?;
    telemetry::init_logging(&config)?;
    // TLS files first: a certificate that does not load stops start-up before anything else.
    let tls = config
        .tls
        .as_ref()
        .map(crate::tls::TlsServer::load)
        .transpose()?;
    let scheme = config.scheme();
    let metrics = telemetry::init_metrics()?;
    let process = metrics_process::Collector::default();
    process.describe();
    // The identity module never reads resource bodies: it gets no keys.
    let (store, keys) = if role == Role::Identity {
        (open_raw_store(&config).await?, None)
    } else {
        open_sealed_for(&config, true).await?
    };

    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let local = listener.local_addr()?;
    let base_url = config
        .public_url
        .clone()
        .map(|u| u.trim_end_matches('/').to_owned())
        .unwrap_or_else(|| format!("{scheme}://{local}{}", haven_http::FHIR_BASE));
    let policy = Arc::new(config.policy()?);
    record_policy(&config, store.as_ref(), &policy).await?;
    let mut service = FhirService::new(
        store.clone(),
        ServiceConfig {
            limits: config.limits(),
            base_url: base_url.clone(),
            audit_writes,
            policy: policy.clone(),
        },
    );
    match &keys {
        Some(keys) => {
            service = service.with_keys(keys.clone());
            tokio::spawn(crate::keys_cmd::watch_keys(keys.clone(), store.clone()));
            tracing::info!(provider = %keys.provider().describe(), "encryption at rest on");
        }
        None if role == Role::Identity => {}
        None => tracing::warn!(
            "encryption at rest is OFF (--benchmark-without-encryption): bodies are stored in \
             clear; this mode exists only to measure what encryption costs"
        ),
    }
    let service = Arc::new(service);
    if !audit_writes {
        tracing::warn!(
            "audit records are OFF (--benchmark-without-audit): accesses are not recorded; \
             this mode exists only to measure what auditing costs"
        );
    }
    let root = config.public_url.as_deref().map_or_else(
        || format!("{scheme}://{local}"),
        |u| {
            u.trim_end_matches('/')
                .trim_end_matches(haven_http::FHIR_BASE)
                .to_owned()
        },
    );
    let identity = haven_identity::Identity::open(
        store.clone(),
        config.identity_settings(&root, &base_url)?,
        crate::identity_cmd::HttpFetcher::new()?,
    )
    .await
    .map_err(|e| anyhow::anyhow!("cannot start the identity module: {e}"))?;
    if role != Role::Fhir {
        match identity.has_users().await {
            Ok(false) => tracing::warn!(
                "no user accounts yet: create the first administrator with \
                 `haven user add <name> --role admin` (and a backend client with \
                 `haven client add <id> --service --generate-key <file> --scope 'system/*.rs'`)"
            ),
            Ok(true) => {}
            Err(e) => tracing::warn!(error = %e, "cannot check for user accounts"),
        }
    }
    tokio::spawn(purge_identity_records(identity.clone()));
    let sealer = crate::audit_cmd::sealer(&config, store.clone()).await?;
    let (seal_stop, seal_stop_rx) = tokio::sync::watch::channel(false);
    let sealing = tokio::spawn(crate::audit_cmd::run_sealer(sealer, seal_stop_rx));
    let state = AppState {
        service: service.clone(),
        identity,
        metrics: Arc::new(move || {
            // Process figures (RSS, CPU, open fds) are sampled when Prometheus scrapes.
            process.collect();
            metrics.render()
        }),
        metrics_token: config.metrics.token.as_ref().map(|t| Arc::from(t.expose())),
        trusted_proxies: config.trusted_proxies()?,
    };
    match service.index_status().await {
        Ok(IndexStatus::Current) => metrics::gauge!("haven_search_index_stale").set(0.0),
        Ok(IndexStatus::Stale) => {
            metrics::gauge!("haven_search_index_stale").set(1.0);
            tracing::warn!(
                "the search index was built with other search definitions (or by an older \
                 Haven); searches may miss resources until `haven reindex` has run"
            );
        }
        // The database may be briefly unreachable at start; readiness reports that.
        Err(e) => tracing::warn!(error = %e, "cannot check the search index version"),
    }
    tokio::spawn(watch_readiness(service.clone()));
    tokio::spawn(watch_backups(store.clone()));
    // Exported from the start, so an alert sees the first emergency access as an increase.
    metrics::describe_counter!(
        "haven_break_glass_total",
        "Emergency accesses (break-glass) opened through this process."
    );
    metrics::counter!("haven_break_glass_total").absolute(0);
    let router = haven_http::app(state, modules(role));
    let backend = if config.database_url.is_some() {
        "postgres"
    } else {
        "sqlite"
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let stopped = async move {
        let _ = stop_rx.await;
    };
    let mutual_tls = tls.as_ref().is_some_and(|t| t.mutual());
    // Connect info gives the middleware each request's TCP peer (see `trusted_proxies`).
    let server = match tls {
        Some(tls) => {
            use crate::tls::listener::{TlsListener, TlsPeer, for_tls};
            tokio::spawn(tls.clone().watch());
            let listener = TlsListener::new(listener, tls)?;
            let app = for_tls(router).into_make_service_with_connect_info::<TlsPeer>();
            tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(stopped)
                    .await
            })
        }
        None => {
            let app = router.into_make_service_with_connect_info::<SocketAddr>();
            tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(stopped)
                    .await
            })
        }
    };
    tracing::info!(
        address = %local,
        base_url = %base_url,
        role = ?role,
        backend,
        tls = config.tls.is_some(),
        mutual_tls,
        "haven listening"
    );

    shutdown.await;
    tracing::info!("shutdown requested; finishing in-flight requests");
    let _ = stop_tx.send(());
    let grace = Duration::from_secs(config.shutdown_grace_seconds);
    match tokio::time::timeout(grace, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::error!(error = %e, "server error during shutdown"),
        Ok(Err(e)) => tracing::error!(error = %e, "server task failed"),
        Err(_) => tracing::warn!(
            seconds = grace.as_secs(),
            "grace period over; closing remaining connections"
        ),
    }
    // In-flight requests are done: seal what they recorded, sign, then close the store.
    let _ = seal_stop.send(true);
    if tokio::time::timeout(Duration::from_secs(10), sealing)
        .await
        .is_err()
    {
        tracing::warn!("the final audit sealing round did not finish within 10 s");
    }
    service.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// Records a policy that differs from the one the database last saw (`policy-change`, with
/// its version and SHA-256), in the same unit as the new fingerprint: every change of who may
/// do what is in the audit trail.
async fn record_policy(
    config: &Config,
    store: &dyn ResourceStore,
    policy: &haven_domain::policy::Policy,
) -> anyhow::Result<()> {
    let (text, origin) = config.policy_text()?;
    let digest: String = haven_crypto::sha256(&[text.as_bytes()])
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if store.meta("policy_sha256").await?.as_deref() == Some(digest.as_str()) {
        return Ok(());
    }
    let version = policy.version();
    tracing::info!(version, sha256 = %digest, origin = %origin, "the role policy changed; recording it");
    let entry = haven_identity::events::security_entry(
        &haven_identity::EventContext::cli(),
        "policy-change",
        200,
        haven_audit::Actor {
            user: Some("haven".into()),
            role: None,
            client: None,
        },
        Some(format!("version={version} sha256={digest}")),
    );
    haven_store::run_write::<(), haven_store::StoreError, _>(store, move |tx| {
        Box::pin(async move {
            tx.set_meta("policy_sha256", Some(&digest)).await?;
            tx.audit(entry).await
        })
    })
    .await
    .context("cannot record the role policy in the audit trail")?;
    Ok(())
}

/// Deletes expired sessions, codes, throttles and revocations every minute.
async fn purge_identity_records(identity: Arc<haven_identity::Identity>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        if let Err(e) = identity.purge_expired().await {
            tracing::warn!(error = %e, "cannot purge expired identity records");
        }
    }
}

/// Keeps the `haven_ready` gauge current (1 when the database answers), so an alert can fire on
/// a server that receives no traffic.
async fn watch_readiness(service: Arc<FhirService>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        let ready = tokio::time::timeout(Duration::from_secs(3), service.ready())
            .await
            .is_ok_and(|r| r.is_ok());
        metrics::gauge!("haven_ready").set(if ready { 1.0 } else { 0.0 });
    }
}

/// Keeps `haven_backup_last_success_timestamp_seconds` current (0: no backup yet) from what
/// `haven backup` records in the database, so the backup-age alert sees backups made by any
/// host (a CronJob, an operator's shell).
async fn watch_backups(store: Arc<dyn ResourceStore>) {
    metrics::describe_gauge!(
        "haven_backup_last_success_timestamp_seconds",
        metrics::Unit::Seconds,
        "When the last verified backup (haven backup) finished, Unix time; 0 if never."
    );
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tick.tick().await;
        match store.meta(crate::backup_cmd::LAST_BACKUP_META).await {
            Ok(v) => {
                let micros = v.and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
                metrics::gauge!("haven_backup_last_success_timestamp_seconds")
                    .set(micros as f64 / 1e6);
            }
            Err(e) => tracing::debug!(error = %e, "cannot read the last backup time"),
        }
    }
}

/// Installs the SIGTERM and SIGINT handlers now and returns a future that completes on either.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
    })
}
