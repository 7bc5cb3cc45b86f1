//! The [`Identity`] service: shared state and the small helpers every flow uses.

use std::sync::Arc;
use std::time::Duration;

use haven_crypto::{random_token, token_digest};
use haven_domain::Timestamp;
use haven_store::{AuditEntry, ResourceStore, StoreError, run_write};
use serde::de::DeserializeOwned;

use crate::error::IdentityError;
use crate::hasher::Hasher;
use crate::keys::KeyRing;
use crate::ldap::LdapDirectory;
use crate::records::{Versioned, decode};
use crate::resource::Caches;
use crate::settings::IdentitySettings;
use crate::throttle::IpThrottle;

/// Haven's identity provider and token validator. One per process; cheap to share (`Arc`).
pub struct Identity {
    pub(crate) store: Arc<dyn ResourceStore>,
    pub(crate) settings: IdentitySettings,
    pub(crate) hasher: Hasher,
    pub(crate) keys: KeyRing,
    pub(crate) ip_throttle: IpThrottle,
    pub(crate) ldap: Option<LdapDirectory>,
    pub(crate) caches: Caches,
    pub(crate) external: crate::external::ExternalIssuers,
    /// Unauthenticated work per client address (login starts, authorization requests, failed
    /// client authentications).
    pub(crate) unauthenticated: crate::ratelimit::RateLimit,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("issuer", &self.settings.issuer)
            .finish_non_exhaustive()
    }
}

/// The scopes of a scope string, dropping what is not understood (an authorization server
/// grants only what it knows).
pub(crate) fn scopes_of(s: &str) -> haven_domain::scope::Scopes {
    haven_domain::scope::Scopes::parse(s)
        .map(|p| p.scopes)
        .unwrap_or_default()
}

/// Seconds since the Unix epoch.
pub(crate) fn now() -> i64 {
    Timestamp::now().micros() / 1_000_000
}

/// A store expiry `secs` from now.
pub(crate) fn expiry_in(d: Duration) -> Timestamp {
    Timestamp::from_micros(
        Timestamp::now()
            .micros()
            .saturating_add(i64::try_from(d.as_micros()).unwrap_or(i64::MAX / 2)),
    )
}

pub(crate) fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2)
}

/// A new secret and the digest it is stored under.
pub(crate) fn new_secret() -> (String, String) {
    let s = random_token();
    let d = token_digest(&s);
    (s, d)
}

impl Identity {
    /// Opens the identity module on a store: loads (or creates) the signing keys.
    ///
    /// # Errors
    /// When the store cannot be read, the hasher cannot start or the directory settings are
    /// invalid.
    /// `fetcher` fetches trusted external issuers' discovery documents and keys.
    pub async fn open(
        store: Arc<dyn ResourceStore>,
        settings: IdentitySettings,
        fetcher: Arc<dyn crate::external::JsonFetcher>,
    ) -> Result<Arc<Self>, IdentityError> {
        let hasher = Hasher::new(
            settings.password_params,
            settings.hash_concurrency,
            settings.hash_queue,
        )?;
        let keys = KeyRing::open(store.clone(), settings.signing_key_rotation).await?;
        let ldap = match &settings.ldap {
            Some(c) => Some(
                LdapDirectory::new(c.clone())
                    .map_err(|e| IdentityError::Invalid(format!("identity.ldap: {e}")))?,
            ),
            None => None,
        };
        let external = crate::external::ExternalIssuers::new(&settings, fetcher);
        Ok(Arc::new(Self {
            ip_throttle: IpThrottle::new(settings.ip_throttle, 100_000),
            unauthenticated: crate::ratelimit::RateLimit::new(600, 100_000),
            caches: Caches::new(settings.revocation_cache),
            store,
            hasher,
            keys,
            ldap,
            external,
            settings,
        }))
    }

    #[must_use]
    pub fn settings(&self) -> &IdentitySettings {
        &self.settings
    }

    /// Whether one more unauthenticated request (a login start, an authorization request, a
    /// client authentication) from this address fits its per-minute budget (600: a hospital's
    /// staff may share one address at shift change).
    #[must_use]
    pub fn allow_unauthenticated(&self, address: Option<&str>) -> bool {
        let ok = self.unauthenticated.allow(address);
        if !ok {
            metrics::counter!("haven_login_throttled_total", "by" => "address").increment(1);
        }
        ok
    }

    #[must_use]
    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }

    /// Reads a typed record outside a unit of work.
    pub(crate) async fn get<T: DeserializeOwned>(
        &self,
        kind: &str,
        key: &str,
    ) -> Result<Option<Versioned<T>>, StoreError> {
        match self.store.record_get(kind, key).await? {
            Some(r) => Ok(Some(decode(kind, r)?)),
            None => Ok(None),
        }
    }

    /// Records a security event in a unit of its own (for refusals that change nothing). If
    /// the record cannot be stored the caller's request fails: nothing is done unaudited.
    pub(crate) async fn record(&self, entry: AuditEntry) -> Result<(), IdentityError> {
        run_write::<(), StoreError, _>(self.store.as_ref(), move |tx| {
            Box::pin(async move { tx.audit(entry).await })
        })
        .await
        .map_err(IdentityError::from)
    }

    /// Deletes expired identity records (codes, sessions, throttles, revocations).
    ///
    /// # Errors
    /// When the store fails.
    pub async fn purge_expired(&self) -> Result<u64, IdentityError> {
        let now = Timestamp::now();
        Ok(
            run_write::<u64, StoreError, _>(self.store.as_ref(), move |tx| {
                Box::pin(async move { tx.record_purge_expired(now, 1000).await })
            })
            .await?,
        )
    }
}
