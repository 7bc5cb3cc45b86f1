//! The `file` provider: KEK versions in a keyring file on the machine (a Kubernetes Secret
//! mounted read-only, or a file only the `haven` user can read).
//!
//! ```toml
//! # Haven keyring: key-encryption keys. Owner-only (0600). Back it up apart from the database.
//! min_decryption_version = 1
//! [[keys]]
//! version = 1
//! created = "2026-11-29T12:00:00Z"
//! key = "<32 bytes, base64>"
//! ```
//!
//! Haven refuses a keyring that others may read or its group may write (group read is how a
//! Kubernetes Secret reaches a non-root pod): a database copy plus a
//! world-readable keyring is a plaintext copy. Rotation appends a version and retirement removes
//! old versions (their key bytes are gone from the file: what they wrapped no longer opens).
//! Each change replaces the file atomically (write, fsync, rename); a running server notices the
//! change on its next [`KeyProvider::refresh`] or when it meets a version it does not know.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::SystemTime;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use haven_crypto::AeadKey;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::provider::{KekStatus, KeyError, KeyProvider, wrapped_version};

const PREFIX: &str = "haven";
const WRAP_AAD: &[u8] = b"haven-dek-v1\0";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyringFile {
    min_decryption_version: u32,
    keys: Vec<KeyEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    version: u32,
    created: String,
    key: String,
}

impl Drop for KeyEntry {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

struct Loaded {
    keys: BTreeMap<u32, AeadKey>,
    min: u32,
    stamp: Option<(SystemTime, u64)>,
}

/// KEK versions from a keyring file.
pub struct FileKeyring {
    path: PathBuf,
    state: RwLock<Loaded>,
}

impl std::fmt::Debug for FileKeyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FileKeyring({})", self.path.display())
    }
}

fn cfg(path: &Path, what: impl std::fmt::Display) -> KeyError {
    KeyError::Config(format!("keyring {}: {what}", path.display()))
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

fn check_permissions(path: &Path) -> Result<(), KeyError> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(path).map_err(|e| {
        cfg(
            path,
            format!("cannot read it ({e}); create one with `haven keys init --keyring FILE`"),
        )
    })?;
    let mode = meta.permissions().mode() & 0o777;
    // Group read is allowed: a Kubernetes Secret is mounted root:<fsGroup> 0440 for the pod.
    if mode & 0o027 != 0 {
        return Err(cfg(
            path,
            format!(
                "others may read it or its group may change it (mode {mode:o}); a keyring must be readable by its owner (and at most its group) only: chmod 600 {}",
                path.display()
            ),
        ));
    }
    Ok(())
}

fn load(path: &Path) -> Result<Loaded, KeyError> {
    check_permissions(path)?;
    let before = stamp(path);
    let text = Zeroizing::new(
        std::fs::read_to_string(path).map_err(|e| cfg(path, format!("cannot read it: {e}")))?,
    );
    let file: KeyringFile =
        toml::from_str(&text).map_err(|e| cfg(path, format!("not a Haven keyring: {e}")))?;
    let mut keys = BTreeMap::new();
    for k in &file.keys {
        let bytes = Zeroizing::new(
            STANDARD
                .decode(k.key.trim())
                .map_err(|_| cfg(path, format!("key version {} is not base64", k.version)))?,
        );
        let key = AeadKey::from_bytes(&bytes)
            .map_err(|e| cfg(path, format!("key version {}: {e}", k.version)))?;
        if k.version == 0 || keys.insert(k.version, key).is_some() {
            return Err(cfg(
                path,
                format!("key version {} is zero or repeated", k.version),
            ));
        }
    }
    let Some(&current) = keys.keys().next_back() else {
        return Err(cfg(path, "it holds no key"));
    };
    if file.min_decryption_version == 0 || file.min_decryption_version > current {
        return Err(cfg(
            path,
            format!(
                "min_decryption_version {} is outside 1..={current}",
                file.min_decryption_version
            ),
        ));
    }
    Ok(Loaded {
        keys,
        min: file.min_decryption_version,
        stamp: before,
    })
}

/// Writes a keyring atomically with owner-only permissions.
fn store(path: &Path, loaded: &Loaded, created: &BTreeMap<u32, String>) -> Result<(), KeyError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = KeyringFile {
        min_decryption_version: loaded.min,
        keys: loaded
            .keys
            .iter()
            .map(|(v, k)| KeyEntry {
                version: *v,
                created: created.get(v).cloned().unwrap_or_else(now_rfc3339),
                key: STANDARD.encode(k.secret_bytes()),
            })
            .collect(),
    };
    let body = Zeroizing::new(format!(
        "# Haven keyring: key-encryption keys. Keep it owner-only (0600) and back it up apart\n\
         # from the database: a database copy with this file is a plaintext copy.\n{}",
        toml::to_string(&file).map_err(|e| cfg(path, e))?
    ));
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| cfg(path, format!("cannot write {}: {e}", tmp.display())))?;
    f.write_all(body.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| cfg(path, format!("cannot write {}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(|e| cfg(path, format!("cannot replace it: {e}")))?;
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        })
    {
        let _ = d.sync_all();
    }
    Ok(())
}

fn created_dates(path: &Path) -> BTreeMap<u32, String> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| toml::from_str::<KeyringFile>(&t).ok())
        .map(|f| {
            f.keys
                .iter()
                .map(|k| (k.version, k.created.clone()))
                .collect()
        })
        .unwrap_or_default()
}

fn aad(context: &[u8]) -> Vec<u8> {
    let mut a = WRAP_AAD.to_vec();
    a.extend_from_slice(context);
    a
}

impl FileKeyring {
    /// Creates a new keyring with one random key (version 1). Refuses to overwrite.
    pub fn create(path: &Path) -> Result<Self, KeyError> {
        if path.exists() {
            return Err(cfg(
                path,
                "it already exists; Haven never overwrites a keyring (its keys may be the only way to read a backup)",
            ));
        }
        let key = AeadKey::generate().map_err(|e| cfg(path, e))?;
        let loaded = Loaded {
            keys: BTreeMap::from([(1, key)]),
            min: 1,
            stamp: None,
        };
        store(path, &loaded, &BTreeMap::new())?;
        Self::open(path)
    }

    /// Opens a keyring; refuses one that group or others may access.
    pub fn open(path: &Path) -> Result<Self, KeyError> {
        let loaded = load(path)?;
        Ok(Self {
            path: path.to_owned(),
            state: RwLock::new(loaded),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Loaded> {
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Loaded> {
        self.state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn reload(&self) -> Result<(), KeyError> {
        let now = stamp(&self.path);
        if now.is_some() && now == self.read().stamp {
            return Ok(());
        }
        let fresh = load(&self.path)?;
        *self.write() = fresh;
        Ok(())
    }

    /// Serializes changes of the keyring between processes (two rotations at once would each
    /// write their own new version under the same number): an exclusive lock on
    /// `<keyring>.lock`, held from re-reading the file to replacing it.
    fn change_lock(&self) -> Result<std::fs::File, KeyError> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = self.path.with_extension("lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| cfg(&self.path, format!("cannot open {}: {e}", path.display())))?;
        f.lock()
            .map_err(|e| cfg(&self.path, format!("cannot lock {}: {e}", path.display())))?;
        Ok(f)
    }

    fn wrap_current(&self, key: &AeadKey, context: &[u8]) -> Result<String, KeyError> {
        let st = self.read();
        let (v, kek) = st
            .keys
            .iter()
            .next_back()
            .ok_or_else(|| cfg(&self.path, "it holds no key"))?;
        let sealed = kek
            .wrap(&aad(context), key)
            .map_err(|e| KeyError::Refused(e.to_string()))?;
        Ok(format!("{PREFIX}:v{v}:{}", URL_SAFE_NO_PAD.encode(sealed)))
    }

    fn unwrap_now(&self, wrapped: &str, context: &[u8]) -> Result<Option<AeadKey>, KeyError> {
        let version = wrapped_version(wrapped)
            .filter(|_| wrapped.starts_with("haven:"))
            .ok_or_else(|| KeyError::Refused("not a keyring-wrapped data key".into()))?;
        let st = self.read();
        if version < st.min {
            return Err(KeyError::Refused(format!(
                "the data key is wrapped under key version {version}, retired (min_decryption_version {})",
                st.min
            )));
        }
        let Some(kek) = st.keys.get(&version) else {
            return Ok(None);
        };
        let payload = wrapped.splitn(3, ':').nth(2).unwrap_or_default();
        let sealed = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| KeyError::Refused("the wrapped data key is not base64".into()))?;
        kek.unwrap_key(&aad(context), &sealed)
            .map(Some)
            .map_err(|e| KeyError::Refused(e.to_string()))
    }
}

#[async_trait]
impl KeyProvider for FileKeyring {
    fn describe(&self) -> String {
        format!("keyring file {}", self.path.display())
    }

    async fn generate(&self, context: &[u8]) -> Result<(AeadKey, String), KeyError> {
        // A new data key goes under the newest version: a rotation (and retirement) by another
        // process must be seen now, not at the next refresh. One stat when nothing changed.
        self.reload()?;
        let key = AeadKey::generate().map_err(|e| KeyError::Unavailable(e.to_string()))?;
        let wrapped = self.wrap_current(&key, context)?;
        Ok((key, wrapped))
    }

    async fn unwrap(&self, wrapped: &str, context: &[u8]) -> Result<AeadKey, KeyError> {
        if let Some(k) = self.unwrap_now(wrapped, context)? {
            return Ok(k);
        }
        // A version this process has not seen: another process rotated; read the file again.
        self.reload()?;
        self.unwrap_now(wrapped, context)?.ok_or_else(|| {
            KeyError::Refused(format!(
                "the data key is wrapped under a key version {} does not hold",
                self.describe()
            ))
        })
    }

    async fn rewrap(&self, wrapped: &str, context: &[u8]) -> Result<String, KeyError> {
        self.reload()?;
        let key = self.unwrap(wrapped, context).await?;
        self.wrap_current(&key, context)
    }

    async fn status(&self) -> Result<KekStatus, KeyError> {
        let st = self.read();
        Ok(KekStatus {
            current: st.keys.keys().next_back().copied().unwrap_or(0),
            min_decryption: st.min,
        })
    }

    async fn rotate(&self) -> Result<u32, KeyError> {
        let _lock = self.change_lock()?;
        self.reload()?;
        let created = created_dates(&self.path);
        let mut st = self.write();
        let next = st.keys.keys().next_back().copied().unwrap_or(0) + 1;
        let key = AeadKey::generate().map_err(|e| cfg(&self.path, e))?;
        st.keys.insert(next, key);
        store(&self.path, &st, &created)?;
        st.stamp = stamp(&self.path);
        Ok(next)
    }

    async fn retire_below(&self, version: u32) -> Result<(), KeyError> {
        let _lock = self.change_lock()?;
        self.reload()?;
        let created = created_dates(&self.path);
        let mut st = self.write();
        let current = st.keys.keys().next_back().copied().unwrap_or(0);
        if version == 0 || version > current {
            return Err(cfg(
                &self.path,
                format!("cannot retire below version {version}: the current version is {current}"),
            ));
        }
        st.keys.retain(|v, _| *v >= version);
        st.min = version;
        store(&self.path, &st, &created)?;
        st.stamp = stamp(&self.path);
        Ok(())
    }

    async fn refresh(&self) -> Result<(), KeyError> {
        self.reload()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[tokio::test]
    async fn create_wrap_rotate_rewrap_retire() {
        let d = dir();
        let path = d.path().join("keyring.toml");
        let ring = FileKeyring::create(&path).unwrap();
        let (dek, w1) = ring.generate(b"Patient/1").await.unwrap();
        assert!(w1.starts_with("haven:v1:"), "{w1}");
        assert_eq!(
            ring.unwrap(&w1, b"Patient/1").await.unwrap().secret_bytes(),
            dek.secret_bytes()
        );
        assert!(matches!(
            ring.unwrap(&w1, b"Patient/2").await,
            Err(KeyError::Refused(_))
        ));

        assert_eq!(ring.rotate().await.unwrap(), 2);
        let w2 = ring.rewrap(&w1, b"Patient/1").await.unwrap();
        assert!(w2.starts_with("haven:v2:"), "{w2}");
        ring.retire_below(2).await.unwrap();
        assert!(matches!(
            ring.unwrap(&w1, b"Patient/1").await,
            Err(KeyError::Refused(_))
        ));
        assert_eq!(
            ring.unwrap(&w2, b"Patient/1").await.unwrap().secret_bytes(),
            dek.secret_bytes()
        );
        // The retired key is gone from the file, not only marked.
        let reopened = FileKeyring::open(&path).unwrap();
        assert_eq!(
            reopened.status().await.unwrap(),
            KekStatus {
                current: 2,
                min_decryption: 2
            }
        );
        assert!(
            !std::fs::read_to_string(&path)
                .unwrap()
                .contains("version = 1")
        );
    }

    #[tokio::test]
    async fn another_process_rotation_is_picked_up() {
        let d = dir();
        let path = d.path().join("keyring.toml");
        let server = FileKeyring::create(&path).unwrap();
        let cli = FileKeyring::open(&path).unwrap();
        cli.rotate().await.unwrap();
        let (_, w) = cli.generate(b"x").await.unwrap();
        assert!(w.starts_with("haven:v2:"));
        assert!(server.unwrap(&w, b"x").await.is_ok());
        server.refresh().await.unwrap();
        assert_eq!(server.status().await.unwrap().current, 2);
    }

    #[test]
    fn refuses_readable_keyrings_and_overwrites() {
        use std::os::unix::fs::PermissionsExt as _;
        let d = dir();
        let path = d.path().join("keyring.toml");
        FileKeyring::create(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(FileKeyring::create(&path).is_err());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = FileKeyring::open(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(
            FileKeyring::open(&path).is_ok(),
            "group read (a Kubernetes Secret) is allowed"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o604)).unwrap();
        assert!(FileKeyring::open(&path).is_err());
    }
}
