//! The sealer: chains committed audit records and signs checkpoints.
//!
//! Records are written by many units of work, on many replicas, in parallel; a gap-free chain
//! cannot be extended by all of them at once without serializing every write on one row. So
//! records are stored first (in their data's unit of work: durable, atomic, never blocked by
//! the chain), and a sealer extends the chain after them: under a database lock, so one sealer
//! at a time across every replica, it takes the committed records in the store's sealing order
//! (below the visibility horizon: none can later commit ahead of them), hashes each onto the
//! chain, and every `checkpoint_every` records or `checkpoint_interval` signs the head with the
//! Ed25519 key. After the unit commits, each sealed record goes out as an ECS line and each
//! checkpoint as a log line, so copies live outside the database.
//!
//! The window between a record's commit and its sealing (one sealing interval, 200 ms by
//! default) is the only time a record is stored but not yet chained.

use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use haven_audit::{AuditRecord, Checkpoint, GENESIS, chain_hash, ecs_line};
use haven_crypto::SigningKey;
use haven_domain::Timestamp;
use haven_store::{ChainLink, ResourceStore, StoreError, StoredCheckpoint, WriteTx, run_write};

/// Sealers of every replica serialize on this database lock key.
const SEAL_LOCK: i64 = 0x6861_7665_6e5f_6175; // "haven_au"

/// Where ECS lines and checkpoint lines go.
pub enum AuditOutput {
    Off,
    Stdout,
    /// Appended to a file (opened once).
    File(Mutex<std::fs::File>),
}

impl AuditOutput {
    fn write_lines(&self, lines: &[String]) {
        if lines.is_empty() {
            return;
        }
        let mut text = String::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
        for l in lines {
            text.push_str(l);
            text.push('\n');
        }
        let r = match self {
            AuditOutput::Off => Ok(()),
            AuditOutput::Stdout => std::io::stdout().lock().write_all(text.as_bytes()),
            // A writer that panicked mid-line leaves the file as it is; keep appending.
            AuditOutput::File(f) => f
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .write_all(text.as_bytes()),
        };
        if let Err(e) = r {
            tracing::error!(error = %e, "cannot write audit lines to the audit output");
        }
    }
}

impl std::fmt::Debug for AuditOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AuditOutput::Off => "off",
            AuditOutput::Stdout => "stdout",
            AuditOutput::File(_) => "file",
        })
    }
}

#[derive(Debug)]
pub struct SealerConfig {
    /// Records per sealing unit.
    pub batch: u32,
    /// Sign a checkpoint at least every this many records...
    pub checkpoint_every: u64,
    /// ...and after this long when records were sealed since the last one.
    pub checkpoint_interval: Duration,
    pub service_version: String,
}

impl Default for SealerConfig {
    fn default() -> Self {
        Self {
            batch: 2_000,
            checkpoint_every: 1_000,
            checkpoint_interval: Duration::from_secs(10),
            service_version: String::new(),
        }
    }
}

/// What one round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    pub sealed: u64,
    pub checkpoint: Option<u64>,
    pub head: u64,
}

pub struct Sealer {
    store: Arc<dyn ResourceStore>,
    key: Arc<SigningKey>,
    output: Arc<AuditOutput>,
    config: SealerConfig,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("key", &self.key)
            .field("output", &self.output)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Sealer {
    #[must_use]
    pub fn new(
        store: Arc<dyn ResourceStore>,
        key: SigningKey,
        output: AuditOutput,
        config: SealerConfig,
    ) -> Self {
        Self {
            store,
            key: Arc::new(key),
            output: Arc::new(output),
            config,
        }
    }

    /// Records per round: a round that sealed this many should be followed at once.
    #[must_use]
    pub fn batch(&self) -> u32 {
        self.config.batch
    }

    /// Seals what is committed and final, signing a checkpoint when one is due (`force`: sign
    /// one whenever the head has moved since the last, e.g. at shutdown).
    pub async fn round(&self, force: bool) -> Result<Round, StoreError> {
        let key = self.key.clone();
        let batch = self.config.batch;
        let every = self.config.checkpoint_every;
        let interval = self.config.checkpoint_interval;
        let (round, sealed_records, checkpoint) =
            run_write(self.store.as_ref(), move |tx: &mut dyn WriteTx| {
                Box::pin(async move {
                    tx.lock_criteria(SEAL_LOCK).await?;
                    let head = tx.audit_head().await?;
                    let (mut seq, mut prev, after) = match head {
                        Some(h) => {
                            let prev: [u8; 32] = h.hash.as_slice().try_into().map_err(|_| {
                                StoreError::Corrupt(format!(
                                    "audit chain link {} has a hash of {} bytes",
                                    h.seq,
                                    h.hash.len()
                                ))
                            })?;
                            (u64::try_from(h.seq).unwrap_or(0), prev, Some(h.pos))
                        }
                        None => (0, GENESIS, None),
                    };
                    let events = tx.unsealed_audit(after, batch).await?;
                    let mut links = Vec::with_capacity(events.len());
                    let mut records = Vec::with_capacity(events.len());
                    for e in events {
                        seq += 1;
                        let h = chain_hash(&prev, seq, &e.record);
                        links.push(ChainLink {
                            seq: i64::try_from(seq).map_err(StoreError::internal)?,
                            event_id: e.pos.id,
                            hash: h.to_vec(),
                        });
                        records.push((seq, e.record));
                        prev = h;
                    }
                    let sealed = links.len() as u64;
                    if !links.is_empty() {
                        tx.seal_audit(links).await?;
                    }
                    let now = Timestamp::now();
                    // Read under the lock: another replica may have signed one meanwhile.
                    let last_cp = tx
                        .audit_last_checkpoint()
                        .await?
                        .map(|(s, t)| (u64::try_from(s).unwrap_or(0), t));
                    let since_cp = seq.saturating_sub(last_cp.map_or(0, |c| c.0));
                    let due = since_cp > 0
                        && (force
                            || since_cp >= every
                            || last_cp.is_none_or(|c| {
                                now.micros() - c.1.micros()
                                    >= i64::try_from(interval.as_micros()).unwrap_or(i64::MAX)
                            }));
                    let checkpoint = if due {
                        let cp = Checkpoint::sign(seq, prev, now, &key);
                        tx.audit_checkpoint(StoredCheckpoint {
                            seq: i64::try_from(seq).map_err(StoreError::internal)?,
                            hash: cp.hash.to_vec(),
                            time: cp.time,
                            key_id: cp.key_id.clone(),
                            signature: cp.signature.to_vec(),
                        })
                        .await?;
                        Some(cp)
                    } else {
                        None
                    };
                    Ok::<_, StoreError>((
                        Round {
                            sealed,
                            checkpoint: checkpoint.as_ref().map(|c| c.seq),
                            head: seq,
                        },
                        records,
                        checkpoint,
                    ))
                })
            })
            .await?;
        // Committed: the copies outside the database.
        let mut lines: Vec<String> = sealed_records
            .iter()
            .filter_map(|(seq, bytes)| {
                AuditRecord::from_canonical(bytes)
                    .ok()
                    .map(|r| ecs_line(&r, Some(*seq), "haven", &self.config.service_version))
            })
            .collect();
        if let Some(cp) = &checkpoint {
            lines.push(cp.to_log_line());
        }
        self.output.write_lines(&lines);
        Ok(round)
    }
}
