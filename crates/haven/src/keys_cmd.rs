//! Encryption keys: choosing the key provider from configuration, the server's background
//! re-wrapping after a rotation, and `haven keys init | status | rotate | rewrap | retire`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use haven_keys::{DataKeys, FileKeyring, KeyProvider};
use haven_store::ResourceStore;

use crate::config::Config;

/// DEKs re-wrapped per step (each in its own small unit of work).
const REWRAP_STEP: u32 = 200;

/// The configured key provider. With the default keyring location (inside the data
/// directory) a missing keyring is created, so `haven serve` works on a fresh machine; a
/// configured location must exist (`haven keys init`), so a mistyped path never silently
/// starts a second, empty key hierarchy.
pub fn open_provider(config: &Config) -> anyhow::Result<Arc<dyn KeyProvider>> {
    open_provider_for(config, false)
}

/// Like [`open_provider`]; `serve` creates the default keyring of an embedded (SQLite)
/// instance on first start. On PostgreSQL several replicas share the data, so they must share
/// one keyring that an operator made: Haven never invents one there.
pub fn open_provider_for(config: &Config, serving: bool) -> anyhow::Result<Arc<dyn KeyProvider>> {
    match config.encryption.provider.as_str() {
        "file" => {
            let (path, default) = config.keyring_path();
            let may_create = default && serving && config.database_url.is_none();
            if !path.exists() && !may_create {
                anyhow::bail!(
                    "no keyring at {}: create one with `haven keys init` (on PostgreSQL every \
                     replica must use the same keyring: set encryption.keyring_path to a shared \
                     secret file), or restore the keyring of the instance whose data this is",
                    path.display()
                );
            }
            if default && !path.exists() {
                crate::config::ensure_data_dir(&config.data_dir).with_context(|| {
                    format!(
                        "cannot use the data directory {}",
                        config.data_dir.display()
                    )
                })?;
                let ring = FileKeyring::create(&path)?;
                tracing::warn!(
                    keyring = %path.display(),
                    "created a new keyring beside the database (development default); in \
                     production set encryption.keyring_path to a file on another volume, or \
                     use Vault/OpenBao (encryption.provider = \"vault\")"
                );
                return Ok(Arc::new(ring));
            }
            Ok(Arc::new(FileKeyring::open(&path)?))
        }
        "vault" => Ok(Arc::new(crate::vault::VaultTransit::new(
            config.vault_settings()?,
        )?)),
        other => anyhow::bail!("encryption.provider must be file or vault, not '{other}'"),
    }
}

/// The data keys over the configured provider.
pub fn open_keys(config: &Config, serving: bool) -> anyhow::Result<Arc<DataKeys>> {
    Ok(Arc::new(DataKeys::new(
        open_provider_for(config, serving)?,
        Duration::from_secs(config.encryption.cache_seconds),
    )))
}

/// One full pass over the DEKs, re-wrapping those an older KEK version wraps. Returns
/// (examined, re-wrapped).
pub async fn rewrap_pass(
    keys: &DataKeys,
    store: &dyn ResourceStore,
    mut progress: impl FnMut(u64, u64),
) -> anyhow::Result<(u64, u64)> {
    let (mut examined, mut rewrapped) = (0, 0);
    let mut after: Option<String> = None;
    loop {
        let step = keys
            .rewrap_step(store, after.as_deref(), REWRAP_STEP)
            .await
            .map_err(|e| anyhow::anyhow!("re-wrapping data keys: {e}"))?;
        examined += step.examined;
        rewrapped += step.rewrapped;
        metrics::counter!("haven_keys_rewrapped_total").increment(step.rewrapped);
        progress(examined, rewrapped);
        match step.next {
            Some(n) => after = Some(n),
            None => return Ok((examined, rewrapped)),
        }
    }
}

/// The server's key watcher: notices a rotation (by `haven keys rotate`, possibly on another
/// replica) and re-wraps the data keys under the new version in the background, in small
/// units that never block requests for long. Exports the KEK version as a gauge.
pub async fn watch_keys(keys: Arc<DataKeys>, store: Arc<dyn ResourceStore>) {
    metrics::describe_gauge!(
        "haven_keys_kek_version",
        "The key-encryption key version new data keys are wrapped under."
    );
    metrics::describe_counter!(
        "haven_keys_rewrapped_total",
        "Data keys re-wrapped under a newer key-encryption key version by this process."
    );
    metrics::counter!("haven_keys_rewrapped_total").absolute(0);
    let mut done_for: Option<u32> = None;
    loop {
        if let Err(e) = keys.provider().refresh().await {
            tracing::warn!(error = %e, "cannot re-read the key provider");
        }
        match keys.provider().status().await {
            Ok(st) => {
                metrics::gauge!("haven_keys_kek_version").set(f64::from(st.current));
                if done_for != Some(st.current) {
                    let started = Instant::now();
                    match rewrap_pass(&keys, store.as_ref(), |_, _| {}).await {
                        Ok((examined, rewrapped)) => {
                            if rewrapped > 0 {
                                tracing::info!(
                                    version = st.current,
                                    examined,
                                    rewrapped,
                                    seconds = started.elapsed().as_secs_f64(),
                                    "data keys re-wrapped under the current key version"
                                );
                            }
                            done_for = Some(st.current);
                        }
                        Err(e) => tracing::warn!(error = %e, "re-wrapping paused; retrying"),
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "key provider status unavailable"),
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// `haven keys init`: creates the keyring (file provider) or checks the provider answers.
pub async fn init(config: &Config) -> anyhow::Result<()> {
    if config.encryption.provider == "file" {
        let (path, default) = config.keyring_path();
        if default {
            crate::config::ensure_data_dir(&config.data_dir).with_context(|| {
                format!(
                    "cannot use the data directory {}",
                    config.data_dir.display()
                )
            })?;
        } else if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        FileKeyring::create(&path)?;
        println!(
            "created keyring {} (key version 1, mode 0600); back it up apart from the database",
            path.display()
        );
        return Ok(());
    }
    let vault = crate::vault::VaultTransit::new(config.vault_settings()?)?;
    let created = vault.ensure_key().await?;
    let st = vault.status().await?;
    println!(
        "{}: {} (key version {})",
        vault.describe(),
        if created {
            "Transit key created"
        } else {
            "Transit key present"
        },
        st.current
    );
    Ok(())
}

/// `haven keys status`.
pub async fn status(config: &Config, store: &dyn ResourceStore) -> anyhow::Result<()> {
    let provider = open_provider(config)?;
    let st = provider.status().await?;
    let keys = DataKeys::new(provider.clone(), Duration::from_secs(1));
    let census = keys.census(store).await?;
    let total: u64 = census.values().sum();
    let current: u64 = census.get(&st.current).copied().unwrap_or(0);
    println!("provider:                {}", provider.describe());
    println!("current key version:     {}", st.current);
    println!("min decryption version:  {}", st.min_decryption);
    println!("data keys:               {total}");
    for (v, n) in &census {
        println!("  wrapped under v{v}:       {n}");
    }
    let pct = if total == 0 {
        100.0
    } else {
        current as f64 * 100.0 / total as f64
    };
    println!("re-wrapped to current:   {current}/{total} ({pct:.1}%)");
    Ok(())
}

/// `haven keys rotate`.
pub async fn rotate(config: &Config) -> anyhow::Result<()> {
    let provider = open_provider(config)?;
    let v = provider.rotate().await?;
    println!(
        "key version {v} is now current: new data keys are wrapped under it. Running servers \
         re-wrap the existing ones in the background within seconds (`haven keys status` \
         shows progress), or run `haven keys rewrap` now."
    );
    Ok(())
}

/// `haven keys rewrap`: re-wraps every data key under the current version, with progress;
/// safe to interrupt and run again.
pub async fn rewrap(config: &Config, store: &dyn ResourceStore) -> anyhow::Result<()> {
    let keys = DataKeys::new(open_provider(config)?, Duration::from_secs(1));
    let started = Instant::now();
    let mut last = Instant::now() - Duration::from_secs(10);
    let (examined, rewrapped) = rewrap_pass(&keys, store, |e, r| {
        if last.elapsed() >= Duration::from_secs(1) {
            last = Instant::now();
            eprintln!("rewrap: {e} data keys examined, {r} re-wrapped");
        }
    })
    .await?;
    println!(
        "{examined} data keys examined, {rewrapped} re-wrapped in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `haven keys retire`: makes key versions below the current one unusable (the keyring file
/// no longer holds them; Vault trims them), after checking that no data key needs them. A
/// database copy or backup made before can no longer be opened with this key provider.
pub async fn retire(config: &Config, store: &dyn ResourceStore) -> anyhow::Result<()> {
    let provider = open_provider(config)?;
    let st = provider.status().await?;
    let keys = DataKeys::new(provider.clone(), Duration::from_secs(1));
    // Two passes: a server that created a data key under the old version just before the
    // rotation may commit it after the first pass.
    for _ in 0..2 {
        rewrap_pass(&keys, store, |_, _| {}).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let census = keys.census(store).await?;
    let old: u64 = census
        .iter()
        .filter(|(v, _)| **v < st.current)
        .map(|(_, n)| n)
        .sum();
    if old > 0 {
        anyhow::bail!(
            "{old} data keys are still wrapped under versions below {}: run `haven keys rewrap` \
             and try again (nothing was retired)",
            st.current
        );
    }
    provider.retire_below(st.current).await?;
    println!(
        "key versions below {} retired: backups and database copies whose data keys they \
         wrap no longer open",
        st.current
    );
    Ok(())
}

fn operator() -> haven_service::Requester {
    haven_service::Requester {
        actor: crate::audit_cmd::operator_actor(),
        source_ip: None,
        request_id: None,
    }
}

fn patient_id(id: &str) -> anyhow::Result<haven_domain::ResourceId> {
    haven_domain::ResourceId::parse(id.trim_start_matches("Patient/"))
        .map_err(|e| anyhow::anyhow!("'{id}' is not a patient id: {e}"))
}

fn service(
    config: &Config,
    store: Arc<dyn ResourceStore>,
    keys: Option<Arc<DataKeys>>,
) -> anyhow::Result<haven_service::FhirService> {
    let s = haven_service::FhirService::new(
        store,
        haven_service::ServiceConfig {
            limits: config.limits(),
            base_url: String::new(),
            audit_writes: true,
            policy: Arc::new(config.policy()?),
        },
    );
    Ok(match keys {
        Some(k) => s.with_keys(k),
        None => s,
    })
}

/// `haven patient hold ID --reason ... [--lift]`.
pub async fn hold(config: &Config, id: &str, reason: &str, lift: bool) -> anyhow::Result<()> {
    let patient = patient_id(id)?;
    let (store, keys) = crate::serve::open_sealed(config).await?;
    let svc = service(config, store.clone(), keys)?;
    svc.legal_hold(&patient, !lift, reason, operator())
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.issues()[0].message))?;
    store.close().await;
    println!(
        "legal hold on Patient/{} {} (recorded in the audit trail)",
        patient.as_str(),
        if lift { "lifted" } else { "set" }
    );
    Ok(())
}

/// `haven patient erase ID --reason ...`: erases by destroying the patient's data key, then
/// (unless deferred) rotates the key-encryption key, re-wraps every other data key and
/// retires the old versions, so copies made before the erasure no longer open either.
pub async fn erase(
    config: &Config,
    id: &str,
    reason: &str,
    defer_retire: bool,
) -> anyhow::Result<()> {
    let patient = patient_id(id)?;
    let (store, keys) = crate::serve::open_sealed(config).await?;
    let Some(keys) = keys else {
        anyhow::bail!("erasure needs encryption at rest");
    };
    let svc = service(config, store.clone(), Some(keys.clone()))?;
    let report = svc
        .erase_patient(&patient, reason, operator())
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.issues()[0].message))?;
    println!(
        "Patient/{} erased: {} resources tombstoned, {} kept (sealed under another patient's key), data key {}; audit name {}",
        patient.as_str(),
        report.tombstoned,
        report.kept,
        if report.key_destroyed {
            "destroyed"
        } else {
            "already gone"
        },
        report.pseudonym
    );
    if defer_retire {
        println!(
            "key retirement deferred: backups and database copies made before this erasure \
             still open until `haven keys rotate` and `haven keys retire` have run"
        );
    } else {
        let provider = keys.provider().clone();
        let v = provider.rotate().await?;
        eprintln!("erase: key version {v} started; re-wrapping the other data keys");
        retire(config, store.as_ref()).await?;
    }
    store.close().await;
    Ok(())
}
