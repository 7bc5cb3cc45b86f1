//! Fills a data directory with a sealed audit trail of N records, to measure `haven audit
//! verify` at scale (docs/PERFORMANCE.md, "Audit trail"):
//!
//! ```sh
//! cargo run --release -p haven --example audit_trail_load -- /tmp/audit-1m 1000000
//! time target/release/haven audit verify --data-dir /tmp/audit-1m
//! ```
//!
//! Records are realistic in size (a read of one Observation about one patient, with request id
//! and client address), written 10,000 per unit of work, then sealed and checkpointed by the same
//! sealer `haven serve` runs. Re-running on the same directory adds N more.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::sync::Arc;

use haven_audit::{Actor, AuditRecord, Category, Entity, Outcome};
use haven_crypto::SigningKey;
use haven_domain::Timestamp;
use haven_service::audit::{AuditOutput, Sealer, SealerConfig};
use haven_store::{AuditEntry, ResourceStore, StoreError, WriteTx, run_write};
use haven_store_sqlite::{SqliteOptions, SqliteStore};

fn record(i: u64) -> AuditEntry {
    let time = Timestamp::now();
    let patient = format!("p{}", i % 50_000);
    let mut r = AuditRecord {
        time,
        category: Category::Data,
        action: "read".into(),
        status: 200,
        outcome: Outcome::Success,
        actor: Actor::default(),
        source_ip: Some("10.1.2.3".into()),
        request_id: Some(format!("00000000-0000-4000-8000-{i:012}")),
        purpose_of_use: None,
        entities: vec![Entity {
            resource_type: "Observation".into(),
            id: format!("obs-{i}"),
            version: Some(1),
        }],
        patients: vec![patient],
        detail: None,
    };
    r.normalize();
    AuditEntry {
        time,
        patients: r.patients.clone(),
        record: r.canonical(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().unwrap_or_else(|| "/tmp/audit-1m".into()));
    let n: u64 = args.next().map_or(Ok(1_000_000), |s| s.parse())?;
    std::fs::create_dir_all(&dir)?;
    let key_path = dir.join("audit-signing.key");
    let key = if key_path.exists() {
        SigningKey::from_pem_or_raw(&std::fs::read(&key_path)?)?
    } else {
        let key = SigningKey::generate()?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key_path)?;
        f.write_all(key.to_base64().as_bytes())?;
        key
    };
    let store: Arc<dyn ResourceStore> =
        Arc::new(SqliteStore::open(&dir.join("haven.db"), SqliteOptions::default()).await?);
    let started = std::time::Instant::now();
    let mut written = 0;
    while written < n {
        let batch = (n - written).min(10_000);
        let from = written;
        run_write(store.as_ref(), move |tx: &mut dyn WriteTx| {
            Box::pin(async move {
                for i in from..from + batch {
                    tx.audit(record(i)).await?;
                }
                Ok::<_, StoreError>(())
            })
        })
        .await?;
        written += batch;
        eprint!("\rwritten {written}/{n}");
    }
    eprintln!(" in {:.1} s", started.elapsed().as_secs_f64());
    let sealer = Sealer::new(
        store.clone(),
        key,
        AuditOutput::Off,
        SealerConfig {
            batch: 20_000,
            ..SealerConfig::default()
        },
    );
    let started = std::time::Instant::now();
    loop {
        let r = sealer.round(false).await?;
        eprint!("\rsealed through {}", r.head);
        if r.sealed == 0 {
            break;
        }
    }
    let r = sealer.round(true).await?;
    eprintln!(
        "\nsealed {} records in {:.1} s (head {})",
        n,
        started.elapsed().as_secs_f64(),
        r.head
    );
    store.close().await;
    Ok(())
}
