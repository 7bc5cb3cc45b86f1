//! The audit trail's keys, its sealer task, and `haven audit verify | report`.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use haven_audit::{AuditRecord, Break, BreakReason, Category, ChainVerifier, Checkpoint, Outcome};
use haven_crypto::{SigningKey, VerifyingKey};
use haven_domain::Timestamp;
use haven_service::audit::{AuditOutput, Sealer, SealerConfig};
use haven_store::{AuditEntry, ResourceStore, StoreError, WriteTx, run_write};

use crate::config::Config;

/// The checkpoint signing key: the configured secret, or the key generated (owner-only) in
/// the data directory on first use. A generated key file that others can read is refused:
/// whoever reads it can forge checkpoints.
pub fn signing_key(config: &Config) -> anyhow::Result<SigningKey> {
    if let Some(secret) = &config.audit.signing_key {
        return SigningKey::from_pem_or_raw(secret.expose().as_bytes())
            .context("audit.signing_key is not an Ed25519 key (base64 or PKCS#8 PEM)");
    }
    let path = config.audit_key_path();
    if !path.exists() {
        crate::config::ensure_data_dir(&config.data_dir).with_context(|| {
            format!(
                "cannot use the data directory {}",
                config.data_dir.display()
            )
        })?;
        let key = SigningKey::generate().context("cannot generate an audit signing key")?;
        write_private(&path, key.to_base64().as_bytes())
            .with_context(|| format!("cannot write the audit signing key to {}", path.display()))?;
        tracing::info!(path = %path.display(), key_id = %key.key_id(), "generated the audit signing key");
        return Ok(key);
    }
    check_private(&path)?;
    let bytes = std::fs::read(&path)
        .with_context(|| format!("cannot read the audit signing key {}", path.display()))?;
    SigningKey::from_pem_or_raw(&bytes)
        .with_context(|| format!("the audit signing key {} is not usable", path.display()))
}

pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

pub(crate) fn check_private(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read the audit signing key {}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "the audit signing key {} is readable by others (mode {mode:o}); run: chmod 600 {}",
            path.display(),
            path.display()
        );
    }
    Ok(())
}

/// The sealer of this process, configured.
pub async fn sealer(config: &Config, store: Arc<dyn ResourceStore>) -> anyhow::Result<Sealer> {
    let key = signing_key(config)?;
    if config.database_url.is_some() && config.audit.signing_key.is_none() {
        tracing::warn!(
            key_id = %key.key_id(),
            "audit checkpoints are signed with a key generated in this replica's data directory; \
             with several replicas set audit.signing_key (one mounted secret for all), or each \
             signs with its own key and `haven audit verify` needs every public key"
        );
    }
    let output = match config.audit.output.as_str() {
        "off" => AuditOutput::Off,
        "stdout" => AuditOutput::Stdout,
        path => AuditOutput::File(std::sync::Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open the audit output file {path}"))?,
        )),
    };
    Ok(Sealer::new(
        store,
        key,
        output,
        SealerConfig {
            checkpoint_every: config.audit.checkpoint_every,
            checkpoint_interval: Duration::from_secs(config.audit.checkpoint_interval_seconds),
            service_version: env!("CARGO_PKG_VERSION").to_owned(),
            ..SealerConfig::default()
        },
    ))
}

/// Seals every 200 ms (at once again when a round was full) until `stop`; then a last round
/// with a checkpoint, so a clean shutdown leaves the whole trail sealed and signed.
pub async fn run_sealer(sealer: Sealer, stop: tokio::sync::watch::Receiver<bool>) {
    let mut stop = stop;
    loop {
        let pause = match sealer.round(false).await {
            Ok(r) => {
                if r.sealed > 0 {
                    metrics::counter!("haven_audit_sealed_total").increment(r.sealed);
                }
                if r.checkpoint.is_some() {
                    metrics::counter!("haven_audit_checkpoints_total").increment(1);
                }
                metrics::gauge!("haven_audit_chain_head").set(r.head as f64);
                if r.sealed >= u64::from(sealer.batch()) {
                    Duration::ZERO
                } else {
                    Duration::from_millis(200)
                }
            }
            Err(e) => {
                metrics::counter!("haven_audit_seal_errors_total").increment(1);
                tracing::warn!(error = %e, "audit sealing failed; retrying in 1 s");
                Duration::from_secs(1)
            }
        };
        tokio::select! {
            _ = stop.changed() => break,
            () = tokio::time::sleep(pause) => {}
        }
    }
    match sealer.round(true).await {
        Ok(r) => tracing::info!(head = r.head, "audit trail sealed at shutdown"),
        Err(e) => tracing::warn!(error = %e, "final audit sealing round failed"),
    }
}

/// Records a security event (not about patient data) in its own unit.
async fn record_security(
    store: &dyn ResourceStore,
    action: &str,
    status: u16,
    detail: String,
) -> Result<(), StoreError> {
    record_operator(store, action, status, detail, Vec::new()).await
}

/// Records what an operator did at the command line (in its own unit).
async fn record_operator(
    store: &dyn ResourceStore,
    action: &str,
    status: u16,
    detail: String,
    patients: Vec<String>,
) -> Result<(), StoreError> {
    let entry = operator_entry(action, status, detail, patients);
    run_write(store, move |tx: &mut dyn WriteTx| {
        Box::pin(async move { tx.audit(entry).await })
    })
    .await
}

/// The audit record of something an operator did at the command line, for a unit of work.
/// The actor of a command an operator runs: their login name, role `operator`, `haven-cli`.
pub(crate) fn operator_actor() -> haven_audit::Actor {
    haven_audit::Actor {
        user: std::env::var("USER").ok(),
        role: Some("operator".into()),
        client: Some("haven-cli".into()),
    }
}

pub(crate) fn operator_entry(
    action: &str,
    status: u16,
    detail: String,
    patients: Vec<String>,
) -> AuditEntry {
    let time = Timestamp::now();
    let mut r = AuditRecord {
        time,
        category: Category::Security,
        action: action.to_owned(),
        status,
        outcome: Outcome::from_status(status),
        actor: operator_actor(),
        source_ip: None,
        request_id: None,
        purpose_of_use: None,
        entities: Vec::new(),
        patients,
        detail: Some(detail),
    };
    r.normalize();
    AuditEntry {
        time,
        patients: r.patients.clone(),
        record: r.canonical(),
    }
}

/// The first sequence number that is wrong: for missing links, the first missing one.
fn first_bad(b: &Break) -> u64 {
    match b.reason {
        BreakReason::Gap { expected } if expected < b.seq => expected,
        // The chain ends before a checkpoint: the first record missing is the one after its end.
        BreakReason::CheckpointBeyondEnd { last_seq } => last_seq + 1,
        _ => b.seq,
    }
}

fn to_checkpoint(c: &haven_store::StoredCheckpoint) -> Option<Checkpoint> {
    Some(Checkpoint {
        seq: u64::try_from(c.seq).ok()?,
        hash: c.hash.as_slice().try_into().ok()?,
        time: c.time,
        key_id: c.key_id.clone(),
        signature: c.signature.as_slice().try_into().ok()?,
    })
}

/// `haven audit verify`: checks the chain, its checkpoints (from the database and from log
/// copies), and names the first bad record. Exit status 1 when the trail is broken.
pub async fn verify(
    config: &Config,
    store: Arc<dyn ResourceStore>,
    public_keys: &[PathBuf],
    checkpoint_logs: &[PathBuf],
) -> anyhow::Result<bool> {
    let started = std::time::Instant::now();
    let mut keys: Vec<VerifyingKey> = Vec::new();
    if config.audit.signing_key.is_some() || config.audit_key_path().exists() {
        keys.push(signing_key(config)?.verifying_key());
    }
    for k in &config.audit.verify_keys {
        keys.push(VerifyingKey::from_base64(k).context("audit.verify_keys")?);
    }
    for p in public_keys {
        let text = std::fs::read_to_string(p)
            .with_context(|| format!("cannot read the public key {}", p.display()))?;
        keys.push(
            VerifyingKey::from_base64(text.trim())
                .with_context(|| format!("{} is not a base64 Ed25519 public key", p.display()))?,
        );
    }
    if keys.is_empty() {
        bail!(
            "no key to check checkpoints with: give --public-key, audit.verify_keys or the \
             signing key (audit.signing_key)"
        );
    }

    // Checkpoints: the database's, and the copies shipped in logs. A copy that disagrees with
    // the database is itself evidence of tampering.
    let mut by_seq: BTreeMap<u64, Checkpoint> = BTreeMap::new();
    for c in store.audit_checkpoints().await? {
        match to_checkpoint(&c) {
            Some(cp) => {
                by_seq.insert(cp.seq, cp);
            }
            None => {
                println!(
                    "audit trail BROKEN: the stored checkpoint at record {} is malformed",
                    c.seq
                );
                return Ok(false);
            }
        }
    }
    let from_db = by_seq.len();
    let mut from_logs = 0usize;
    for p in checkpoint_logs {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
        let before = from_logs;
        for cp in text.lines().filter_map(Checkpoint::from_log_line) {
            from_logs += 1;
            match by_seq.get(&cp.seq) {
                Some(db) if db != &cp => {
                    println!(
                        "audit trail BROKEN at record {}: the checkpoint stored in the database \
                         differs from the copy in {}; the database copy was altered",
                        cp.seq,
                        p.display()
                    );
                    return Ok(false);
                }
                Some(_) => {}
                None => {
                    by_seq.insert(cp.seq, cp);
                }
            }
        }
        if from_logs == before {
            bail!(
                "{} holds no Haven checkpoint line; give Haven's audit output (one JSON object per \
                 line, as written to audit.output), not an export in another shape",
                p.display()
            );
        }
    }
    // Seal what a stopped server left unsealed (as its next start would), so what remains
    // outside the chain afterwards is a real finding.
    if let Ok(key) = signing_key(config) {
        let sealer = Sealer::new(
            store.clone(),
            key,
            AuditOutput::Off,
            SealerConfig::default(),
        );
        loop {
            let r = sealer
                .round(false)
                .await
                .context("cannot seal pending records")?;
            if r.sealed < u64::from(sealer.batch()) {
                break;
            }
        }
    }
    let mut verifier = ChainVerifier::new(keys);
    verifier.expect_checkpoints(by_seq.into_values().collect());

    let mut after = 0i64;
    let mut last_progress = std::time::Instant::now();
    loop {
        let page = store.audit_links(after, 10_000).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for l in &page {
            let hash: [u8; 32] = l.hash.as_slice().try_into().unwrap_or([0; 32]);
            let seq = u64::try_from(l.seq).unwrap_or(0);
            if let Err(b) = verifier.link(seq, l.record.as_deref(), &hash) {
                println!("audit trail BROKEN at record {}: {b}", first_bad(&b));
                let _ = record_security(
                    store.as_ref(),
                    "audit-verify",
                    409,
                    format!("broken at {}", first_bad(&b)),
                )
                .await;
                return Ok(false);
            }
        }
        if last_progress.elapsed() >= Duration::from_secs(2) {
            eprintln!("audit verify: {after} records checked");
            last_progress = std::time::Instant::now();
        }
    }
    let report = match verifier.finish() {
        Ok(r) => r,
        Err(b) => {
            println!("audit trail BROKEN at record {}: {b}", first_bad(&b));
            let _ = record_security(
                store.as_ref(),
                "audit-verify",
                409,
                format!("broken at {}", first_bad(&b)),
            )
            .await;
            return Ok(false);
        }
    };
    let unsealed = store
        .audit_unsealed_before(Timestamp::from_micros(
            Timestamp::now().micros() - 60_000_000,
        ))
        .await?;
    println!(
        "audit trail intact: {} records, {} checkpoints checked ({from_db} stored, {from_logs} from logs), \
         signed through record {}, in {:.1} s",
        report.links,
        report.checkpoints_checked,
        report
            .sealed_through
            .map_or_else(|| "none".to_owned(), |s| s.to_string()),
        started.elapsed().as_secs_f64()
    );
    if let Some(last) = report.last_seq
        && report.sealed_through != Some(last)
    {
        println!(
            "note: records after {} are chained but not yet covered by a signed checkpoint",
            report.sealed_through.unwrap_or(0)
        );
    }
    if unsealed > 0 {
        println!(
            "audit trail BROKEN: {unsealed} records older than a minute are outside the chain \
             (sealing passed them by: a restored database, or links inserted out of order)"
        );
        let _ = record_security(
            store.as_ref(),
            "audit-verify",
            409,
            format!("{unsealed} records outside the chain"),
        )
        .await;
        return Ok(false);
    }
    let _ = record_security(
        store.as_ref(),
        "audit-verify",
        200,
        format!("intact through {}", report.last_seq.unwrap_or(0)),
    )
    .await;
    Ok(true)
}

/// Parses `2026-01-31` or an RFC 3339 instant.
pub fn parse_when(s: &str) -> anyhow::Result<Timestamp> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(dt) = time::OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(Timestamp::from_datetime(dt));
    }
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let d = time::Date::parse(s, &format).with_context(|| {
        format!("'{s}' is not a date (2026-01-31) or an instant (2026-01-31T12:00:00Z)")
    })?;
    Ok(Timestamp::from_datetime(d.midnight().assume_utc()))
}

/// `haven audit report`: the accounting of disclosures for one patient (HIPAA 164.528): who
/// accessed or received which of their records, when, and why.
pub async fn report(
    store: Arc<dyn ResourceStore>,
    patient: &str,
    since: Timestamp,
    until: Timestamp,
    json: bool,
) -> anyhow::Result<()> {
    // Producing a patient's accounting is itself an access to their data, and recorded first.
    record_operator(
        store.as_ref(),
        "audit-report",
        200,
        format!(
            "since={} until={}",
            since.to_instant_string(),
            until.to_instant_string()
        ),
        vec![patient.to_owned()],
    )
    .await
    .context("cannot record this report in the audit trail; nothing is shown")?;
    let mut rows = Vec::new();
    let mut after = 0i64;
    loop {
        let page = store
            .audit_for_patient(patient, since, until, after, 1_000)
            .await?;
        let Some(last) = page.last() else { break };
        after = last.id;
        for e in page {
            let r = AuditRecord::from_canonical(&e.record)
                .with_context(|| format!("audit record {} cannot be read", e.id))?;
            rows.push(r);
        }
    }
    let mut out = std::io::stdout().lock();
    if json {
        let items: Vec<serde_json::Value> =
            rows.iter().map(|r| disclosure_json(r, patient)).collect();
        serde_json::to_writer_pretty(
            &mut out,
            &serde_json::json!({
                "patient": patient,
                "since": since.to_instant_string(),
                "until": until.to_instant_string(),
                "disclosures": items,
            }),
        )?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "Accounting of disclosures for Patient/{patient}, {} to {}: {} accesses",
            since.to_instant_string(),
            until.to_instant_string(),
            rows.len()
        )?;
        writeln!(
            out,
            "{:<27} {:<20} {:<8} {:<22} {:<16} {:<12} records",
            "time", "action", "outcome", "who", "from", "purpose"
        )?;
        for r in &rows {
            let who = r
                .actor
                .user
                .clone()
                .or_else(|| r.actor.client.clone())
                .unwrap_or_else(|| "anonymous".into());
            writeln!(
                out,
                "{:<27} {:<20} {:<8} {:<22} {:<16} {:<12} {}",
                r.time.to_instant_string(),
                r.action,
                r.status,
                who,
                r.source_ip.as_deref().unwrap_or("-"),
                r.purpose_of_use.as_deref().unwrap_or("-"),
                records_of(r, patient),
            )?;
        }
    }
    Ok(())
}

/// The records of `r` to show in `patient`'s accounting: every resource when the access
/// concerned only this patient; otherwise a count, so one patient's report does not reveal
/// which resources of other patients the same search returned.
fn records_of(r: &AuditRecord, patient: &str) -> String {
    if r.patients.iter().all(|p| p == patient) {
        let list: Vec<String> = r
            .entities
            .iter()
            .map(|e| format!("{}/{}", e.resource_type, e.id))
            .collect();
        if list.is_empty() {
            "-".into()
        } else {
            list.join(" ")
        }
    } else {
        format!(
            "{} resources (an access that also returned other patients' data)",
            r.entities.len()
        )
    }
}

fn disclosure_json(r: &AuditRecord, patient: &str) -> serde_json::Value {
    serde_json::json!({
        "time": r.time.to_instant_string(),
        "action": r.action,
        "status": r.status,
        "outcome": r.outcome,
        "actor": r.actor,
        "source_ip": r.source_ip,
        "purpose_of_use": r.purpose_of_use,
        "request_id": r.request_id,
        "records": records_of(r, patient),
    })
}
