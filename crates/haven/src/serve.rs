//! `haven serve` and `haven migrate`: wiring the store, service and HTTP layer together.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use haven_http::{AppState, Modules};
use haven_service::{FhirService, ServiceConfig};
use haven_store::ResourceStore;
use haven_store_sqlite::{SqliteOptions, SqliteStore};
use tokio::net::TcpListener;

use crate::Role;
use crate::config::{self, Config};
use crate::telemetry;

fn modules(role: Role) -> Modules {
    match role {
        Role::All | Role::Fhir => Modules { fhir: true },
    }
}

async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn ResourceStore>> {
    config::ensure_data_dir(&config.data_dir).with_context(|| {
        format!(
            "cannot use the data directory {}",
            config.data_dir.display()
        )
    })?;
    let store = SqliteStore::open(&config.database_path(), SqliteOptions::default())
        .await
        .with_context(|| format!("cannot open the database in {}", config.data_dir.display()))?;
    Ok(Arc::new(store))
}

pub async fn migrate(config: &Config) -> anyhow::Result<()> {
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

pub async fn run(config: Config, role: Role) -> anyhow::Result<()> {
    telemetry::init_logging(&config)?;
    let metrics = telemetry::init_metrics()?;
    let store = open_store(&config).await?;

    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let local = listener.local_addr()?;
    let base_url = config
        .public_url
        .clone()
        .map(|u| u.trim_end_matches('/').to_owned())
        .unwrap_or_else(|| format!("http://{local}{}", haven_http::FHIR_BASE));
    let service = Arc::new(FhirService::new(
        store,
        ServiceConfig {
            limits: config.limits(),
            base_url: base_url.clone(),
        },
    ));
    let state = AppState {
        service: service.clone(),
        metrics: Arc::new(move || metrics.render()),
        metrics_token: config.metrics.token.as_ref().map(|t| Arc::from(t.expose())),
    };
    let app = haven_http::app(state, modules(role));
    tracing::info!(address = %local, base_url = %base_url, role = ?role, data_dir = %config.data_dir.display(), "haven listening");

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stop_rx.await;
            })
            .await
    });
    shutdown_signal().await;
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
    service.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
