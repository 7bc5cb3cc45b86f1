//! `haven backup`, `haven backup verify` and `haven restore`: consistent online backups in a
//! portable format with a signed manifest, checked end to end before they are trusted.
//!
//! A backup is a directory:
//! - one gzip-compressed NDJSON file per table of `haven_store::backup::TABLES`, one JSON array
//!   per row (integers as numbers, text as strings, bytes as base64, NULL as null);
//! - `manifest.json`: format, time, source, for each file its row count, size and SHA-256, the
//!   resources per type, the audit chain's head, the keys involved, and an Ed25519 signature
//!   over all of it by the audit signing key.
//!
//! The format is the same for both stores, so a backup of the embedded store restores into
//! PostgreSQL and back. It is written to `<dir>.partial` and renamed into place only after it
//! has been read back and verified, so an interrupted backup leaves no directory that looks
//! complete, and re-running it starts afresh.
//!
//! Verification (also the first thing a restore does, while it restores, inside the restore's
//! one transaction): the manifest's signature by a trusted key; each file's hash and row
//! count; every row's shape; each resource body naming its own type and id (a body sealed at
//! rest: its header, the rest is checked when it is opened); the audit chain
//! recomputed link by link with its signed checkpoints, ending at the manifest's head. A
//! flipped byte anywhere fails one of these, and a restore then commits nothing.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use haven_audit::{ChainVerifier, Checkpoint};
use haven_crypto::{SigningKey, VerifyingKey};
use haven_domain::Timestamp;
use haven_store::backup::{self, BackupSink, ColKind, RestoreSource, TableSpec};
use haven_store::sql::SqlArg;
use haven_store::{ResourceStore, StoreError, WriteTx, run_write};
use haven_store_postgres::PgStore;
use haven_store_sqlite::backup as sqlite_backup;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::audit_cmd;
use crate::config::Config;
use crate::serve;

/// The manifest's format name; a reader refuses any other.
const FORMAT: &str = "haven-backup/1";
const MANIFEST: &str = "manifest.json";
/// Largest manifest read (it lists eight files and the resource types).
const MANIFEST_LIMIT: u64 = 1 << 20;
/// Largest row line read back (a resource body is capped far below this by the server).
const LINE_LIMIT: usize = 64 << 20;
/// Where the time of the last successful backup is kept (read by `haven serve` for the
/// `haven_backup_last_success_timestamp_seconds` gauge).
pub const LAST_BACKUP_META: &str = "backup.last_success";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub format: String,
    /// RFC 3339, UTC.
    pub created: String,
    pub haven_version: String,
    pub source: Source,
    pub tables: Vec<TableEntry>,
    /// Current (not deleted) resources per type.
    pub resources: BTreeMap<String, u64>,
    pub audit: AuditSummary,
    pub keys: Keys,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Source {
    /// `sqlite` or `postgresql`.
    pub backend: String,
    /// The search definitions the source's index was built with; the restore rebuilds the
    /// index with its own.
    pub search_definitions: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TableEntry {
    pub name: String,
    pub file: String,
    pub rows: u64,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditSummary {
    /// The last chain link: its sequence number and hash (hex); `null` for an empty chain.
    pub head_seq: Option<u64>,
    pub head_hash: Option<String>,
    /// The newest signed checkpoint's sequence number.
    pub checkpoint_seq: Option<u64>,
    /// Events recorded but not yet chained when the snapshot was taken.
    pub unsealed: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Keys {
    /// Key ids of the checkpoints in the backup (audit signing keys).
    pub audit_checkpoint_keys: Vec<String>,
    /// Key ids (`kid`) of the identity provider's token signing keys in the backup.
    pub identity_signing_keys: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Signature {
    pub alg: String,
    pub key_id: String,
    /// Base64 of the Ed25519 signature over the manifest without this field.
    pub value: String,
}

impl Manifest {
    /// The bytes the signature covers: the manifest without its signature, as serialised.
    fn signed_bytes(&self) -> Vec<u8> {
        let mut unsigned = self.clone();
        unsigned.signature = None;
        serde_json::to_vec(&unsigned).unwrap_or_default()
    }

    fn table(&self, name: &str) -> anyhow::Result<&TableEntry> {
        self.tables
            .iter()
            .find(|t| t.name == name)
            .with_context(|| format!("the manifest lists no file for table {name}"))
    }
}

fn file_name(table: &TableSpec) -> String {
    format!("{}.ndjson.gz", table.name)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A writer that hashes and counts what passes through it.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes and counts what it reads.
struct HashingReader<R> {
    inner: R,
    hash: Sha256,
    bytes: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

fn encode_row(row: &[SqlArg]) -> serde_json::Value {
    use serde_json::Value;
    Value::Array(
        row.iter()
            .map(|v| match v {
                SqlArg::Int(i) => Value::from(*i),
                SqlArg::OptInt(i) => i.map_or(Value::Null, Value::from),
                SqlArg::Text(s) => Value::from(s.as_str()),
                SqlArg::OptText(s) => s.as_deref().map_or(Value::Null, Value::from),
                SqlArg::Float(f) => Value::from(*f),
                SqlArg::Blob(b) => Value::from(B64.encode(b)),
                SqlArg::OptBlob(b) => b.as_ref().map_or(Value::Null, |b| B64.encode(b).into()),
            })
            .collect(),
    )
}

fn decode_row(line: &[u8], kinds: &[ColKind]) -> Result<Vec<SqlArg>, String> {
    use serde_json::Value;
    let Value::Array(values) =
        serde_json::from_slice::<Value>(line).map_err(|e| format!("not JSON: {e}"))?
    else {
        return Err("not a JSON array".into());
    };
    if values.len() != kinds.len() {
        return Err(format!("{} values, not {}", values.len(), kinds.len()));
    }
    values
        .into_iter()
        .zip(kinds)
        .enumerate()
        .map(|(i, (v, k))| {
            let bad = || format!("value {} is not {k:?}", i + 1);
            let int = |v: &Value| v.as_i64().ok_or_else(bad);
            let text = |v: Value| match v {
                Value::String(s) => Ok(s),
                _ => Err(bad()),
            };
            let blob = |v: Value| match v {
                Value::String(s) => B64.decode(s).map_err(|_| bad()),
                _ => Err(bad()),
            };
            Ok(match (k, v) {
                (ColKind::OptInt, Value::Null) => SqlArg::OptInt(None),
                (ColKind::OptText, Value::Null) => SqlArg::OptText(None),
                (ColKind::OptBlob, Value::Null) => SqlArg::OptBlob(None),
                (ColKind::Int, v) => SqlArg::Int(int(&v)?),
                (ColKind::OptInt, v) => SqlArg::OptInt(Some(int(&v)?)),
                (ColKind::Text, v) => SqlArg::Text(text(v)?),
                (ColKind::OptText, v) => SqlArg::OptText(Some(text(v)?)),
                (ColKind::Blob, v) => SqlArg::Blob(blob(v)?),
                (ColKind::OptBlob, v) => SqlArg::OptBlob(Some(blob(v)?)),
            })
        })
        .collect()
}

fn as_int(v: &SqlArg) -> i64 {
    match v {
        SqlArg::Int(i) | SqlArg::OptInt(Some(i)) => *i,
        _ => 0,
    }
}

fn as_text(v: &SqlArg) -> &str {
    match v {
        SqlArg::Text(s) | SqlArg::OptText(Some(s)) => s,
        _ => "",
    }
}

fn as_bytes(v: &SqlArg) -> Option<&[u8]> {
    match v {
        SqlArg::Blob(b) | SqlArg::OptBlob(Some(b)) => Some(b),
        _ => None,
    }
}

/// Progress on stderr, at most every two seconds.
struct Progress {
    verb: &'static str,
    started: Instant,
    last: Instant,
}

impl Progress {
    fn new(verb: &'static str) -> Self {
        let now = Instant::now();
        Self {
            verb,
            started: now,
            last: now,
        }
    }

    fn tick(&mut self, table: &str, rows: u64, of: Option<u64>) {
        if self.last.elapsed() < Duration::from_secs(2) {
            return;
        }
        self.last = Instant::now();
        let rate = rows as f64 / self.started.elapsed().as_secs_f64().max(0.001);
        match of {
            Some(total) => eprintln!(
                "{}: {table} {rows}/{total} rows ({:.0}%), {:.0} s elapsed",
                self.verb,
                rows as f64 * 100.0 / total.max(1) as f64,
                self.started.elapsed().as_secs_f64()
            ),
            None => eprintln!("{}: {table} {rows} rows, {rate:.0} rows/s", self.verb),
        }
    }
}

/// Writes tables into files in a directory and gathers what the manifest says of them.
struct DirSink {
    dir: PathBuf,
    current: Option<(GzEncoder<Hashing<BufWriter<File>>>, u64)>,
    tables: Vec<TableEntry>,
    resources: BTreeMap<String, u64>,
    audit: AuditSummary,
    keys: Keys,
    progress: Progress,
    table: &'static str,
}

fn io_err(e: impl std::fmt::Display) -> StoreError {
    // Not a database fault, but the export stops on it all the same; the message reaches the
    // operator as is.
    StoreError::Internal(format!("writing the backup failed: {e}"))
}

impl BackupSink for DirSink {
    fn begin(&mut self, table: &'static TableSpec) -> Result<(), StoreError> {
        let file = create_private(&self.dir.join(file_name(table))).map_err(io_err)?;
        let hashing = Hashing {
            inner: BufWriter::with_capacity(1 << 20, file),
            hash: Sha256::new(),
            bytes: 0,
        };
        self.current = Some((GzEncoder::new(hashing, Compression::fast()), 0));
        self.table = table.name;
        Ok(())
    }

    fn row(&mut self, row: Vec<SqlArg>) -> Result<(), StoreError> {
        match self.table {
            "resource" if as_int(&row[4]) == 0 => {
                *self
                    .resources
                    .entry(as_text(&row[0]).to_owned())
                    .or_default() += 1;
            }
            "audit_sealed" => {
                self.audit.head_seq = u64::try_from(as_int(&row[0])).ok();
                self.audit.head_hash = as_bytes(&row[2]).map(hex);
            }
            "audit_checkpoint" => {
                self.audit.checkpoint_seq = u64::try_from(as_int(&row[0])).ok();
                let key = as_text(&row[3]).to_owned();
                if !self.keys.audit_checkpoint_keys.contains(&key) {
                    self.keys.audit_checkpoint_keys.push(key);
                }
            }
            "audit_unsealed" => self.audit.unsealed += 1,
            "identity_record" if as_text(&row[0]) == "signing-key" => {
                self.keys
                    .identity_signing_keys
                    .push(as_text(&row[1]).to_owned());
            }
            _ => {}
        }
        let (w, rows) = self
            .current
            .as_mut()
            .ok_or_else(|| io_err("no table open"))?;
        let mut line = serde_json::to_vec(&encode_row(&row)).map_err(io_err)?;
        line.push(b'\n');
        w.write_all(&line).map_err(io_err)?;
        *rows += 1;
        let n = *rows;
        self.progress.tick(self.table, n, None);
        Ok(())
    }

    fn end(&mut self, table: &'static TableSpec) -> Result<(), StoreError> {
        let (w, rows) = self.current.take().ok_or_else(|| io_err("no table open"))?;
        let mut hashing = w.finish().map_err(io_err)?;
        hashing.flush().map_err(io_err)?;
        let Hashing { inner, hash, bytes } = hashing;
        let file = inner.into_inner().map_err(io_err)?;
        file.sync_all().map_err(io_err)?;
        self.tables.push(TableEntry {
            name: table.name.to_owned(),
            file: file_name(table),
            rows,
            bytes,
            sha256: hex(&hash.finalize()),
        });
        Ok(())
    }
}

/// Keys trusted to sign manifests and checkpoints: the configured audit signing key, the
/// configured `audit.verify_keys`, and any given on the command line.
fn trusted_keys(config: &Config, public_keys: &[PathBuf]) -> anyhow::Result<Vec<VerifyingKey>> {
    let mut keys = Vec::new();
    if config.audit.signing_key.is_some() || config.audit_key_path().exists() {
        keys.push(audit_cmd::signing_key(config)?.verifying_key());
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
    Ok(keys)
}

/// A new file only its owner can read.
fn create_private(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// `haven-backup-20261129T093000Z`: a backup's directory name for `--into`, sorting by time.
pub fn timestamped_name() -> String {
    let t = Timestamp::now().to_datetime();
    format!(
        "haven-backup-{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Whether `name` is what [`timestamped_name`] makes (optionally with `.partial`).
fn is_timestamped(name: &str) -> bool {
    let base = name.strip_suffix(".partial").unwrap_or(name);
    let Some(stamp) = base.strip_prefix("haven-backup-") else {
        return false;
    };
    let b = stamp.as_bytes();
    b.len() == 16
        && b[8] == b'T'
        && b[15] == b'Z'
        && b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit)
}

/// `--keep N`: removes all but the `keep` newest timestamped backups in `dir`, and the
/// `.partial` directories failed runs left there. `just_made` is never removed. Directories
/// with other names are not touched.
pub fn prune(dir: &Path, just_made: &Path, keep: usize) -> anyhow::Result<()> {
    let mut complete = Vec::new();
    let mut partial = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !is_timestamped(&name) || !entry.file_type()?.is_dir() {
            continue;
        }
        if name.ends_with(".partial") {
            partial.push(entry.path());
        } else {
            complete.push(entry.path());
        }
    }
    complete.sort();
    let excess = complete.len().saturating_sub(keep);
    for path in complete.into_iter().take(excess).chain(partial) {
        if path == just_made {
            continue;
        }
        std::fs::remove_dir_all(&path)
            .with_context(|| format!("cannot remove the old backup {}", path.display()))?;
        eprintln!("backup: removed {}", path.display());
    }
    Ok(())
}

/// `haven backup --out DIR`.
pub async fn create(config: &Config, out: &Path) -> anyhow::Result<()> {
    if out.exists() {
        bail!(
            "{} already exists; a backup never overwrites another: choose a new directory",
            out.display()
        );
    }
    let key: SigningKey = audit_cmd::signing_key(config)?;
    let partial = with_suffix(out, ".partial");
    if partial.exists() {
        eprintln!(
            "backup: removing {} left by an interrupted backup",
            partial.display()
        );
        std::fs::remove_dir_all(&partial)
            .with_context(|| format!("cannot remove {}", partial.display()))?;
    }
    // Owner-only: a backup holds patient data (sealed) and the identity provider's keys.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&partial)
        .with_context(|| format!("cannot create {}", partial.display()))?;

    // The backup copies what is stored (sealed bodies, wrapped data keys): it needs no key.
    let store = serve::open_raw_store(config).await?;
    let started = Instant::now();
    let created = Timestamp::now();
    let mut sink = DirSink {
        dir: partial.clone(),
        current: None,
        tables: Vec::new(),
        resources: BTreeMap::new(),
        audit: AuditSummary::default(),
        keys: Keys::default(),
        progress: Progress::new("backup"),
        table: "",
    };
    let exported = store.backup(&mut sink).await;
    if let Err(e) = exported {
        store.close().await;
        bail!("the backup could not be read from the database: {e}; run it again");
    }
    let mut manifest = Manifest {
        format: FORMAT.to_owned(),
        created: created.to_instant_string(),
        haven_version: env!("CARGO_PKG_VERSION").to_owned(),
        source: Source {
            backend: if config.database_url.is_some() {
                "postgresql".into()
            } else {
                "sqlite".into()
            },
            search_definitions: haven_service::search::fingerprint().to_owned(),
        },
        tables: sink.tables,
        resources: sink.resources,
        audit: sink.audit,
        keys: sink.keys,
        signature: None,
    };
    manifest.signature = Some(Signature {
        alg: "Ed25519".into(),
        key_id: key.key_id(),
        value: B64.encode(key.sign(&manifest.signed_bytes())),
    });
    let text = serde_json::to_vec_pretty(&manifest)?;
    let mut f = create_private(&partial.join(MANIFEST))?;
    f.write_all(&text)?;
    f.sync_all()?;
    drop(f);
    let written = started.elapsed();

    // Read it all back before calling it a backup.
    let keys = vec![key.verifying_key()];
    let checked = Instant::now();
    let trusted = with_extra_keys(config, keys)?;
    if let Err(e) = verify_dir(&partial, &trusted) {
        store.close().await;
        bail!(
            "the backup in {} does not verify: {e:#}; it was kept for inspection and is not a \
             usable backup",
            partial.display()
        );
    }
    std::fs::rename(&partial, out)
        .with_context(|| format!("cannot move {} to {}", partial.display(), out.display()))?;
    if let Some(parent) = out.parent() {
        sync_dir(if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        });
    }

    let rows: u64 = manifest.tables.iter().map(|t| t.rows).sum();
    let bytes: u64 = manifest.tables.iter().map(|t| t.bytes).sum();
    let detail = format!(
        "backup {} rows, audit head {}",
        rows,
        manifest.audit.head_seq.unwrap_or(0)
    );
    let stamp = created.micros().to_string();
    let recorded = run_write(store.as_ref(), move |tx: &mut dyn WriteTx| {
        Box::pin(async move {
            tx.set_meta(LAST_BACKUP_META, Some(&stamp)).await?;
            tx.audit(audit_cmd::operator_entry("backup", 200, detail, Vec::new()))
                .await
        })
    })
    .await;
    store.close().await;
    recorded.context("the backup is complete, but recording it in the database failed")?;
    println!(
        "backup written to {}: {} resources ({} versions), {} audit records, {} accounts and \
         other identity records; {:.1} MiB in {:.1} s, verified in {:.1} s",
        out.display(),
        manifest.resources.values().sum::<u64>(),
        manifest.table("resource_version")?.rows,
        manifest.table("audit_sealed")?.rows + manifest.table("audit_unsealed")?.rows,
        manifest.table("identity_record")?.rows,
        bytes as f64 / (1024.0 * 1024.0),
        written.as_secs_f64(),
        checked.elapsed().as_secs_f64()
    );
    Ok(())
}

fn with_extra_keys(
    config: &Config,
    mut keys: Vec<VerifyingKey>,
) -> anyhow::Result<Vec<VerifyingKey>> {
    keys.extend(trusted_keys(config, &[])?);
    Ok(keys)
}

/// Reads a backup's manifest and checks its signature against `keys`.
fn read_manifest(dir: &Path, keys: &[VerifyingKey]) -> anyhow::Result<Manifest> {
    let path = dir.join(MANIFEST);
    let mut text = Vec::new();
    File::open(&path)
        .with_context(|| format!("{} is not a Haven backup: no {MANIFEST}", dir.display()))?
        .take(MANIFEST_LIMIT)
        .read_to_end(&mut text)?;
    let manifest: Manifest = serde_json::from_slice(&text)
        .with_context(|| format!("{} is damaged: it is not a Haven manifest", path.display()))?;
    if manifest.format != FORMAT {
        bail!(
            "{} is in format '{}', which this Haven does not read (it reads {FORMAT})",
            dir.display(),
            manifest.format
        );
    }
    let Some(sig) = &manifest.signature else {
        bail!("the manifest is not signed: the backup cannot be trusted");
    };
    let Some(key) = keys.iter().find(|k| k.key_id() == sig.key_id) else {
        bail!(
            "the manifest is signed by key {}, which is not trusted here; configure that audit \
             signing key (audit.signing_key), list its public key in audit.verify_keys, or give \
             it with --public-key",
            sig.key_id
        );
    };
    let signature: [u8; 64] = B64
        .decode(&sig.value)
        .ok()
        .and_then(|s| s.try_into().ok())
        .context("the manifest's signature is malformed: the backup was altered")?;
    if sig.alg != "Ed25519" || !key.verify(&manifest.signed_bytes(), &signature) {
        bail!("the manifest's signature does not verify: the manifest was altered");
    }
    // The manifest must list exactly the tables this format has, in order.
    let names: Vec<&str> = manifest.tables.iter().map(|t| t.name.as_str()).collect();
    let expected: Vec<&str> = backup::TABLES.iter().map(|t| t.name).collect();
    if names != expected {
        bail!("the manifest lists tables {names:?}, not {expected:?}");
    }
    Ok(manifest)
}

/// What verification counted, for the report.
#[derive(Debug, Default)]
struct Checked {
    rows: u64,
    links: u64,
    checkpoints: u64,
    sealed_through: Option<u64>,
}

/// Reads a backup table by table, checking everything (see the module documentation). It is
/// the restore's row source, so a restore checks as it goes and refuses before committing.
struct Reader<'a> {
    dir: PathBuf,
    manifest: &'a Manifest,
    keys: Vec<VerifyingKey>,
    open: Option<OpenTable>,
    verifier: Option<ChainVerifier>,
    checkpoints: Vec<Checkpoint>,
    checked: Checked,
    progress: Progress,
}

struct OpenTable {
    name: &'static str,
    kinds: Vec<ColKind>,
    lines: BufReader<GzDecoder<HashingReader<BufReader<File>>>>,
    rows: u64,
    buf: Vec<u8>,
}

impl<'a> Reader<'a> {
    fn new(
        dir: &Path,
        manifest: &'a Manifest,
        keys: Vec<VerifyingKey>,
        verb: &'static str,
    ) -> Self {
        Self {
            dir: dir.to_owned(),
            manifest,
            keys,
            open: None,
            verifier: None,
            checkpoints: Vec::new(),
            checked: Checked::default(),
            progress: Progress::new(verb),
        }
    }

    fn entry(&self, name: &str) -> anyhow::Result<&'a TableEntry> {
        self.manifest.table(name)
    }

    fn open(&mut self, table: &'static TableSpec) -> anyhow::Result<()> {
        let entry = self.entry(table.name)?;
        if entry.file != file_name(table) {
            bail!(
                "the manifest names file {} for table {}",
                entry.file,
                table.name
            );
        }
        let path = self.dir.join(&entry.file);
        let file = File::open(&path).with_context(|| format!("{} is missing", path.display()))?;
        let hashing = HashingReader {
            inner: BufReader::with_capacity(1 << 20, file),
            hash: Sha256::new(),
            bytes: 0,
        };
        self.open = Some(OpenTable {
            name: table.name,
            kinds: table.kinds(),
            lines: BufReader::with_capacity(1 << 20, GzDecoder::new(hashing)),
            rows: 0,
            buf: Vec::new(),
        });
        if table.name == backup::AUDIT_SEALED.name {
            let mut v = ChainVerifier::new(self.keys.clone());
            v.expect_checkpoints(std::mem::take(&mut self.checkpoints));
            self.verifier = Some(v);
        }
        Ok(())
    }

    /// The file is read to its end: compare with the manifest, finish the table's checks.
    fn close(&mut self, mut t: OpenTable) -> anyhow::Result<()> {
        let entry = self.entry(t.name)?;
        // Drain whatever the gzip stream holds after the last line, so the hash covers the
        // whole file.
        std::io::copy(&mut t.lines, &mut std::io::sink())?;
        let decoder = t.lines.into_inner();
        let mut hashing = decoder.into_inner();
        std::io::copy(&mut hashing, &mut std::io::sink())?;
        let digest = hex(&hashing.hash.finalize());
        if digest != entry.sha256 || hashing.bytes != entry.bytes {
            bail!(
                "{} does not match the manifest (SHA-256 {digest}, {} bytes; expected {}, {} \
                 bytes): the file was altered or damaged",
                entry.file,
                hashing.bytes,
                entry.sha256,
                entry.bytes
            );
        }
        if t.rows != entry.rows {
            bail!(
                "{} holds {} rows, the manifest says {}",
                entry.file,
                t.rows,
                entry.rows
            );
        }
        if t.name == backup::AUDIT_SEALED.name {
            let verifier = self
                .verifier
                .take()
                .context("the audit chain was not read")?;
            let report = verifier
                .finish()
                .map_err(|b| anyhow::anyhow!("the audit trail in the backup is broken: {b}"))?;
            let head_hash = report.last_seq.map(|_| hex(&report.head));
            if report.last_seq != self.manifest.audit.head_seq
                || head_hash != self.manifest.audit.head_hash
            {
                bail!(
                    "the audit chain in the backup ends at record {:?}, the manifest says {:?}",
                    report.last_seq,
                    self.manifest.audit.head_seq
                );
            }
            self.checked.links = report.links;
            self.checked.checkpoints = report.checkpoints_checked;
            self.checked.sealed_through = report.sealed_through;
        }
        Ok(())
    }

    fn next(&mut self, table: &'static TableSpec) -> anyhow::Result<Option<Vec<SqlArg>>> {
        if self.open.as_ref().is_none_or(|t| t.name != table.name) {
            if let Some(t) = self.open.take() {
                self.close(t)?;
            }
            self.open(table)?;
        }
        let t = self.open.as_mut().context("no table open")?;
        t.buf.clear();
        let n = (&mut t.lines)
            .take(LINE_LIMIT as u64 + 1)
            .read_until(b'\n', &mut t.buf)
            .with_context(|| format!("{} cannot be read: it is damaged", table.name))?;
        if n == 0 {
            let t = self.open.take().context("no table open")?;
            self.close(t)?;
            return Ok(None);
        }
        if n > LINE_LIMIT {
            bail!("{}: a row is longer than {LINE_LIMIT} bytes", table.name);
        }
        t.rows += 1;
        let at = t.rows;
        // A file longer than its manifest says is refused as soon as it is: a crafted file
        // cannot make the restore write (or verify hold) more than the signed manifest allows.
        let entry_rows = self.entry(table.name)?.rows;
        let entry_bytes = self.entry(table.name)?.bytes;
        let t = self.open.as_mut().context("no table open")?;
        let read_bytes = t.lines.get_ref().get_ref().bytes;
        if t.rows > entry_rows || read_bytes > entry_bytes {
            bail!(
                "{} holds more than the manifest says ({} rows, {} bytes): the file was altered \
                 or damaged",
                table.name,
                entry_rows,
                entry_bytes
            );
        }
        let line = t.buf.strip_suffix(b"\n").unwrap_or(&t.buf);
        let row = decode_row(line, &t.kinds)
            .map_err(|e| anyhow::anyhow!("{} row {at}: {e}", table.name))?;
        self.check_row(table, &row, at)?;
        self.checked.rows += 1;
        let of = self.entry(table.name)?.rows;
        self.progress.tick(table.name, at, Some(of));
        Ok(Some(row))
    }

    fn check_row(&mut self, table: &TableSpec, row: &[SqlArg], at: u64) -> anyhow::Result<()> {
        match table.name {
            "resource_version" => {
                let (ty, id, kind) = (as_text(&row[1]), as_text(&row[2]), as_int(&row[5]));
                match (kind, as_bytes(&row[6])) {
                    (3, None) => {}
                    // Sealed at rest: the header must parse; the type, id and version are
                    // bound into the ciphertext and checked when it is opened after restore.
                    (0..=2, Some(body)) if haven_service::sealed::is_sealed(body) => {
                        haven_service::sealed::sealed_header(body).map_err(|_| {
                            anyhow::anyhow!(
                                "resource_version row {at}: the sealed body's header is damaged"
                            )
                        })?;
                    }
                    (0..=2, Some(body)) => {
                        #[derive(Deserialize)]
                        struct Head<'b> {
                            #[serde(rename = "resourceType", borrow)]
                            resource_type: &'b str,
                            #[serde(borrow)]
                            id: &'b str,
                        }
                        let head: Head<'_> = serde_json::from_slice(body).map_err(|_| {
                            anyhow::anyhow!("resource_version row {at}: the body is not a resource")
                        })?;
                        if head.resource_type != ty || head.id != id {
                            bail!(
                                "resource_version row {at}: the body is {}/{}, the row says {ty}/{id}",
                                head.resource_type,
                                head.id
                            );
                        }
                    }
                    _ => bail!("resource_version row {at}: body and change kind disagree"),
                }
            }
            "audit_checkpoint" => {
                let cp = Checkpoint {
                    seq: u64::try_from(as_int(&row[0])).unwrap_or(0),
                    hash: as_bytes(&row[1])
                        .and_then(|b| b.try_into().ok())
                        .context("audit_checkpoint: a hash is not 32 bytes")?,
                    time: Timestamp::from_micros(as_int(&row[2])),
                    key_id: as_text(&row[3]).to_owned(),
                    signature: as_bytes(&row[4])
                        .and_then(|b| b.try_into().ok())
                        .context("audit_checkpoint: a signature is not 64 bytes")?,
                };
                self.checkpoints.push(cp);
            }
            "audit_sealed" => {
                let v = self
                    .verifier
                    .as_mut()
                    .context("the audit chain was not opened")?;
                let hash: [u8; 32] = as_bytes(&row[2])
                    .and_then(|b| b.try_into().ok())
                    .context("audit_sealed: a hash is not 32 bytes")?;
                let seq = u64::try_from(as_int(&row[0])).unwrap_or(0);
                v.link(seq, as_bytes(&row[4]), &hash)
                    .map_err(|b| anyhow::anyhow!("the audit trail in the backup is broken: {b}"))?;
            }
            _ => {}
        }
        Ok(())
    }
}

impl RestoreSource for Reader<'_> {
    fn next_row(&mut self, table: &'static TableSpec) -> Result<Option<Vec<SqlArg>>, StoreError> {
        // The message is the operator's; `StoreError` only carries it to the restore's caller.
        self.next(table)
            .map_err(|e| StoreError::Corrupt(format!("{e:#}")))
    }
}

/// Checks a whole backup; returns what it checked.
fn verify_dir(dir: &Path, keys: &[VerifyingKey]) -> anyhow::Result<(Manifest, Checked)> {
    let manifest = read_manifest(dir, keys)?;
    let checked = {
        let mut reader = Reader::new(dir, &manifest, keys.to_vec(), "verify");
        for table in backup::TABLES {
            while reader.next(table)?.is_some() {}
        }
        reader.checked
    };
    Ok((manifest, checked))
}

/// `haven backup verify DIR`: exit status 1 when the backup does not verify.
pub fn verify(config: &Config, dir: &Path, public_keys: &[PathBuf]) -> anyhow::Result<bool> {
    let keys = trusted_keys(config, public_keys)?;
    if keys.is_empty() {
        bail!(
            "no key to check the backup's signature with: give --public-key, audit.verify_keys \
             or the audit signing key (audit.signing_key)"
        );
    }
    let started = Instant::now();
    match verify_dir(dir, &keys) {
        Ok((manifest, checked)) => {
            println!(
                "backup {} verified: {} rows in {} files, {} resources, audit chain intact \
                 through record {} ({} checkpoints checked), made {} from {}, signed by {}, \
                 in {:.1} s",
                dir.display(),
                checked.rows,
                manifest.tables.len(),
                manifest.resources.values().sum::<u64>(),
                manifest.audit.head_seq.unwrap_or(0),
                checked.checkpoints,
                manifest.created,
                manifest.source.backend,
                manifest
                    .signature
                    .as_ref()
                    .map_or("?", |s| s.key_id.as_str()),
                started.elapsed().as_secs_f64()
            );
            Ok(true)
        }
        Err(e) => {
            println!("backup {} does NOT verify: {e:#}", dir.display());
            Ok(false)
        }
    }
}

/// `haven restore DIR`: into a fresh instance (the configured database must hold no data).
pub async fn restore(config: &Config, dir: &Path, public_keys: &[PathBuf]) -> anyhow::Result<()> {
    let keys = trusted_keys(config, public_keys)?;
    if keys.is_empty() {
        bail!(
            "no key to check the backup's signature with: configure the audit signing key the \
             backup was made with (audit.signing_key), or give its public key with --public-key"
        );
    }
    let manifest = read_manifest(dir, &keys)?;
    let started = Instant::now();
    let mut reader = Reader::new(dir, &manifest, keys, "restore");
    let result = match &config.database_url {
        Some(url) => PgStore::restore(url.expose(), &mut reader).await,
        None => {
            crate::config::ensure_data_dir(&config.data_dir).with_context(|| {
                format!(
                    "cannot use the data directory {}",
                    config.data_dir.display()
                )
            })?;
            sqlite_backup::restore(&config.database_path(), &mut reader).await
        }
    };
    let counts = match result {
        Ok(c) => c,
        Err(StoreError::Corrupt(msg)) => {
            bail!("restore refused, nothing was written: {msg}")
        }
        Err(e) => bail!("restore failed, nothing was written: {e}"),
    };
    let loaded = started.elapsed();
    let rows: u64 = counts.tables.iter().map(|(_, n)| n).sum();
    eprintln!(
        "restore: {rows} rows written in {:.1} s; rebuilding the search index",
        loaded.as_secs_f64()
    );
    serve::reindex(config, 500, true).await.context(
        "the data is restored, but rebuilding the search index failed; run `haven reindex`",
    )?;

    let store: Arc<dyn ResourceStore> = serve::open_store(config).await?;
    let detail = format!(
        "restored {rows} rows from a backup made {} (audit head {})",
        manifest.created,
        manifest.audit.head_seq.unwrap_or(0)
    );
    let recorded = run_write(store.as_ref(), move |tx: &mut dyn WriteTx| {
        Box::pin(async move {
            tx.audit(audit_cmd::operator_entry(
                "restore",
                200,
                detail,
                Vec::new(),
            ))
            .await
        })
    })
    .await;
    store.close().await;
    recorded
        .context("the data is restored, but recording the restore in the audit trail failed")?;
    println!(
        "restored {} resources ({} rows) from {} (made {} on {}) in {:.1} s ({:.1} s loading, \
         the rest re-indexing)",
        manifest.resources.values().sum::<u64>(),
        rows,
        dir.display(),
        manifest.created,
        manifest.source.backend,
        started.elapsed().as_secs_f64(),
        loaded.as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_timestamped_backups_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let names = [
            "haven-backup-20260101T000000Z",
            "haven-backup-20260102T000000Z",
            "haven-backup-20260103T000000Z",
            "haven-backup-20260102T120000Z.partial",
            "haven-backup-keepme",
            "other",
        ];
        for n in names {
            std::fs::create_dir(dir.path().join(n)).unwrap();
        }
        let newest = dir.path().join("haven-backup-20260103T000000Z");
        prune(dir.path(), &newest, 2).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "haven-backup-20260102T000000Z",
                "haven-backup-20260103T000000Z",
                "haven-backup-keepme",
                "other"
            ]
        );
        assert!(is_timestamped(&timestamped_name()));
    }

    #[test]
    fn rows_round_trip_through_their_json_form() {
        let kinds = [
            ColKind::Int,
            ColKind::OptInt,
            ColKind::Text,
            ColKind::OptText,
            ColKind::Blob,
            ColKind::OptBlob,
            ColKind::OptBlob,
        ];
        let row = vec![
            SqlArg::Int(-7),
            SqlArg::OptInt(None),
            SqlArg::Text("Patient".into()),
            SqlArg::OptText(Some("x".into())),
            SqlArg::Blob(vec![0, 255, 10]),
            SqlArg::OptBlob(None),
            SqlArg::OptBlob(Some(b"{}".to_vec())),
        ];
        let line = serde_json::to_vec(&encode_row(&row)).unwrap();
        assert_eq!(decode_row(&line, &kinds).unwrap(), row);
    }

    #[test]
    fn malformed_rows_are_named() {
        let kinds = [ColKind::Int, ColKind::Blob];
        assert!(decode_row(b"[1]", &kinds).unwrap_err().contains("1 values"));
        assert!(
            decode_row(b"[\"a\", \"AA==\"]", &kinds)
                .unwrap_err()
                .contains("value 1")
        );
        assert!(
            decode_row(b"[1, \"not base64!\"]", &kinds)
                .unwrap_err()
                .contains("value 2")
        );
        assert!(decode_row(b"{}", &kinds).unwrap_err().contains("array"));
    }

    #[test]
    fn the_signature_covers_every_field() {
        let key = SigningKey::generate().unwrap();
        let mut m = Manifest {
            format: FORMAT.into(),
            created: "2026-01-01T00:00:00Z".into(),
            haven_version: "0".into(),
            source: Source {
                backend: "sqlite".into(),
                search_definitions: "f".into(),
            },
            tables: Vec::new(),
            resources: BTreeMap::from([("Patient".to_owned(), 3)]),
            audit: AuditSummary::default(),
            keys: Keys::default(),
            signature: None,
        };
        let sig = key.sign(&m.signed_bytes());
        m.signature = Some(Signature {
            alg: "Ed25519".into(),
            key_id: key.key_id(),
            value: B64.encode(sig),
        });
        assert!(key.verifying_key().verify(&m.signed_bytes(), &sig));
        m.resources.insert("Patient".into(), 4);
        assert!(!key.verifying_key().verify(&m.signed_bytes(), &sig));
    }
}
