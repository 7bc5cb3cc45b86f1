//! The token signing keys: one signs, several are published.
//!
//! Keys live in the shared database (record kind `signing-key`), so every replica signs with
//! the same key and publishes the same JWKS. Rotation with overlap: a new key starts signing,
//! the previous one stops signing but stays in the JWKS for [`PUBLISH_OVERLAP`], longer than
//! any token it signed can live, so tokens already issued keep validating. Rotation happens when
//! the active key is older than the configured period, or on demand (`haven identity
//! rotate-key`).

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use haven_crypto::{TokenSigningKey, VerificationKeys};
use haven_domain::Timestamp;
use haven_store::{Expect, ResourceStore, StoreError, WriteTx, run_write};
use serde_json::{Value, json};

use crate::events::{EventContext, security_entry};
use crate::records::{SigningKeyRecord, decode, kind, tx_get, tx_put};
use haven_audit::Actor;

/// How long a retired key stays published: longer than the longest-lived token it signed (an
/// ID token or access token, minutes) with a wide margin for clock skew and cached JWKS.
pub const PUBLISH_OVERLAP: Duration = Duration::from_secs(24 * 3600);

/// How often the ring re-reads the keys (another replica may have rotated).
const RELOAD_EVERY: Duration = Duration::from_secs(60);
/// Least time between reloads caused by an unknown `kid`.
const RELOAD_ON_MISS: Duration = Duration::from_secs(5);

struct State {
    signer: Arc<TokenSigningKey>,
    signer_since: i64,
    verify: Arc<VerificationKeys>,
    jwks: Arc<Value>,
    loaded: Instant,
}

pub struct KeyRing {
    store: Arc<dyn ResourceStore>,
    rotation: Duration,
    state: RwLock<State>,
    /// When an unknown `kid` last caused a reload (bounds reloads under a flood of forged
    /// tokens, without delaying the first one after another replica rotated).
    last_miss: std::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing").finish_non_exhaustive()
    }
}

fn now_secs() -> i64 {
    Timestamp::now().micros() / 1_000_000
}

fn new_kid() -> String {
    let t = time::OffsetDateTime::now_utc();
    let rand = haven_crypto::random_token();
    format!(
        "{:04}{:02}{:02}-{}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        &rand[..8]
    )
}

/// Creates a new signing key and retires the current one(s), in one unit of work.
async fn create_key(tx: &mut dyn WriteTx) -> Result<String, StoreError> {
    let now = now_secs();
    let kid = new_kid();
    let key = TokenSigningKey::generate(&kid)
        .map_err(|e| StoreError::Internal(format!("cannot generate a signing key: {e}")))?;
    let record = SigningKeyRecord {
        kid: kid.clone(),
        pkcs8: STANDARD.encode(key.to_pkcs8_der().as_slice()),
        public_jwk: key.public_jwk(),
        created: now,
        active_from: now,
        retired: None,
    };
    tx_put(tx, kind::SIGNING_KEY, &kid, &record, None, Expect::Absent).await?;
    Ok(kid)
}

async fn all_keys(store: &dyn ResourceStore) -> Result<Vec<SigningKeyRecord>, StoreError> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .record_list(kind::SIGNING_KEY, after.as_deref(), 100)
            .await?;
        let done = page.len() < 100;
        for (key, r) in page {
            after = Some(key);
            out.push(decode::<SigningKeyRecord>(kind::SIGNING_KEY, r)?.value);
        }
        if done {
            return Ok(out);
        }
    }
}

/// The signer: the newest key that is not retired.
fn signer_of(keys: &[SigningKeyRecord]) -> Option<&SigningKeyRecord> {
    keys.iter()
        .filter(|k| k.retired.is_none())
        .max_by_key(|k| (k.active_from, k.kid.clone()))
}

fn build_state(keys: &[SigningKeyRecord]) -> Result<State, StoreError> {
    let now = now_secs();
    let signer =
        signer_of(keys).ok_or_else(|| StoreError::Internal("no active signing key".into()))?;
    let der = STANDARD
        .decode(&signer.pkcs8)
        .map_err(|_| StoreError::Corrupt("signing key is not base64".into()))?;
    let key = TokenSigningKey::from_pkcs8_der(&signer.kid, &der)
        .map_err(|e| StoreError::Corrupt(format!("signing key {}: {e}", signer.kid)))?;
    let overlap = i64::try_from(PUBLISH_OVERLAP.as_secs()).unwrap_or(i64::MAX);
    let published: Vec<Value> = keys
        .iter()
        .filter(|k| k.retired.is_none_or(|r| r + overlap > now))
        .map(|k| k.public_jwk.clone())
        .collect();
    let jwks = json!({ "keys": published });
    let verify = VerificationKeys::from_jwks(&jwks)
        .map_err(|e| StoreError::Corrupt(format!("published keys: {e}")))?;
    Ok(State {
        signer: Arc::new(key),
        signer_since: signer.active_from,
        verify: Arc::new(verify),
        jwks: Arc::new(jwks),
        loaded: Instant::now(),
    })
}

impl KeyRing {
    /// Loads the keys, creating the first one (or a successor, when the active key is older
    /// than `rotation`).
    ///
    /// # Errors
    /// When the store cannot be read or written.
    pub async fn open(
        store: Arc<dyn ResourceStore>,
        rotation: Duration,
    ) -> Result<Self, StoreError> {
        let state = Self::load(store.as_ref(), rotation).await?;
        Ok(Self {
            store,
            rotation,
            state: RwLock::new(state),
            last_miss: std::sync::Mutex::new(None),
        })
    }

    async fn load(store: &dyn ResourceStore, rotation: Duration) -> Result<State, StoreError> {
        let keys = all_keys(store).await?;
        let due = match signer_of(&keys) {
            None => true,
            Some(k) => {
                !rotation.is_zero()
                    && now_secs() - k.active_from
                        >= i64::try_from(rotation.as_secs()).unwrap_or(i64::MAX)
            }
        };
        if due {
            rotate_in(store, None).await?;
            return build_state(&all_keys(store).await?);
        }
        build_state(&keys)
    }

    /// Starts a new signing key now; the previous one stays published for the overlap.
    ///
    /// # Errors
    /// When the store cannot be written.
    pub async fn rotate(&self, actor: Actor, ctx: &EventContext) -> Result<String, StoreError> {
        let kid = rotate_in(self.store.as_ref(), Some((actor, ctx.clone()))).await?;
        self.reload().await?;
        Ok(kid)
    }

    async fn reload(&self) -> Result<(), StoreError> {
        let state = Self::load(self.store.as_ref(), self.rotation).await?;
        *self
            .state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = state;
        Ok(())
    }

    fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self
            .state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Reloads when the keys are older than a minute (call before signing or verifying).
    pub async fn refresh_if_stale(&self) {
        if self.read(|s| s.loaded.elapsed() >= RELOAD_EVERY)
            && let Err(e) = self.reload().await
        {
            tracing::warn!(error = %e, "cannot reload the token signing keys; using the loaded ones");
        }
    }

    /// Reloads after an unknown `kid` (another replica rotated), at most every few seconds.
    pub async fn refresh_on_miss(&self) -> bool {
        {
            let mut last = self
                .last_miss
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if last.is_some_and(|t| t.elapsed() < RELOAD_ON_MISS) {
                return false;
            }
            *last = Some(Instant::now());
        }
        self.reload().await.is_ok()
    }

    #[must_use]
    pub fn signer(&self) -> Arc<TokenSigningKey> {
        self.read(|s| s.signer.clone())
    }

    #[must_use]
    pub fn verification_keys(&self) -> Arc<VerificationKeys> {
        self.read(|s| s.verify.clone())
    }

    /// The published JWKS document.
    #[must_use]
    pub fn jwks(&self) -> Arc<Value> {
        self.read(|s| s.jwks.clone())
    }

    /// (kid, active since) of the signer.
    #[must_use]
    pub fn active(&self) -> (String, i64) {
        self.read(|s| (s.signer.kid().to_owned(), s.signer_since))
    }
}

/// Retires every active key and creates a new one, under the record lock of each.
/// The event is recorded in the same unit; an automatic rotation records itself as Haven's.
async fn rotate_in(
    store: &dyn ResourceStore,
    by: Option<(Actor, EventContext)>,
) -> Result<String, StoreError> {
    let (actor, ctx) = by.unwrap_or_else(|| {
        (
            Actor {
                user: Some("haven".into()),
                role: None,
                client: None,
            },
            EventContext::cli(),
        )
    });
    let existing: Vec<String> = all_keys(store)
        .await?
        .into_iter()
        .filter(|k| k.retired.is_none())
        .map(|k| k.kid)
        .collect();
    run_write(store, move |tx| {
        Box::pin(async move {
            let now = now_secs();
            for kid in existing {
                if let Some(mut k) = tx_get::<SigningKeyRecord>(tx, kind::SIGNING_KEY, &kid).await?
                    && k.value.retired.is_none()
                {
                    k.value.retired = Some(now);
                    let expires = Timestamp::from_micros(
                        (now + i64::try_from(PUBLISH_OVERLAP.as_secs()).unwrap_or(0)) * 1_000_000,
                    );
                    tx_put(
                        tx,
                        kind::SIGNING_KEY,
                        &kid,
                        &k.value,
                        Some(expires),
                        Expect::Version(k.version),
                    )
                    .await?;
                }
            }
            let kid = create_key(tx).await?;
            tx.audit(security_entry(
                &ctx,
                "signing-key-rotate",
                200,
                actor,
                Some(format!("kid={kid}")),
            ))
            .await?;
            Ok(kid)
        })
    })
    .await
}
