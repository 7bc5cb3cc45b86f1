//! Where the key-encryption keys (KEKs) live: one trait, two providers.
//!
//! A provider never hands out a KEK. It wraps fresh data keys under its newest KEK version,
//! unwraps them, re-wraps them under the newest version after a rotation, and retires old
//! versions. A wrapped key is text of the form `<prefix>:v<version>:<payload>` (Vault Transit's
//! own ciphertext format, which the keyring file copies), so the version a DEK is wrapped
//! under can be read without asking the provider.

use async_trait::async_trait;
use haven_crypto::AeadKey;

/// What went wrong with a key operation. Messages name the provider and what to do; they never
/// hold key material or wrapped keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The provider cannot be reached or is sealed; retry later (503).
    #[error("key provider unavailable: {0}")]
    Unavailable(String),
    /// The provider refused: a retired key version, lost permission, a wrapped key that does
    /// not open under its context.
    #[error("key provider refused: {0}")]
    Refused(String),
    /// Configuration or keyring-file problem found at start-up or by a command.
    #[error("{0}")]
    Config(String),
}

/// The state of the KEK as `haven keys status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KekStatus {
    /// New data keys are wrapped under this version.
    pub current: u32,
    /// Data keys wrapped under an older version no longer open.
    pub min_decryption: u32,
}

/// A holder of key-encryption keys.
#[async_trait]
pub trait KeyProvider: Send + Sync + 'static {
    /// For messages and `haven keys status`: the kind and where (never a credential).
    fn describe(&self) -> String;

    /// A fresh data key and its wrapped form under the current KEK, bound to `context`.
    async fn generate(&self, context: &[u8]) -> Result<(AeadKey, String), KeyError>;

    /// The data key inside `wrapped`; `context` must be the one it was wrapped with.
    async fn unwrap(&self, wrapped: &str, context: &[u8]) -> Result<AeadKey, KeyError>;

    /// `wrapped` re-wrapped under the current KEK version (after a rotation).
    async fn rewrap(&self, wrapped: &str, context: &[u8]) -> Result<String, KeyError>;

    async fn status(&self) -> Result<KekStatus, KeyError>;

    /// Starts a new KEK version; new data keys are wrapped under it. Returns it.
    async fn rotate(&self) -> Result<u32, KeyError>;

    /// Makes versions below `version` unusable for unwrapping (and destroys them where the
    /// provider can).
    async fn retire_below(&self, version: u32) -> Result<(), KeyError>;

    /// Re-reads state another process may have changed (a rotation by `haven keys rotate`).
    async fn refresh(&self) -> Result<(), KeyError> {
        Ok(())
    }
}

/// The KEK version of a wrapped key (`prefix:v7:...` -> 7).
#[must_use]
pub fn wrapped_version(wrapped: &str) -> Option<u32> {
    let mut parts = wrapped.splitn(3, ':');
    let _prefix = parts.next()?;
    let v = parts.next()?.strip_prefix('v')?;
    parts.next()?;
    v.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::wrapped_version;

    #[test]
    fn versions_are_read_from_wrapped_keys() {
        assert_eq!(wrapped_version("vault:v3:abc"), Some(3));
        assert_eq!(wrapped_version("haven:v12:Zm9v"), Some(12));
        assert_eq!(wrapped_version("haven:12:Zm9v"), None);
        assert_eq!(wrapped_version("vault:v3"), None);
        assert_eq!(wrapped_version(""), None);
    }
}
