//! Password hashing off the async executor, with bounded concurrency.
//!
//! Argon2id at OWASP parameters takes ~19 MiB and tens of milliseconds of one core per hash. A
//! login flood must not starve FHIR traffic or exhaust memory, so at most `concurrency` hashes
//! run at once (on tokio's blocking pool) and at most `queue` more may wait; beyond that a
//! login is refused at once with [`HashError::Busy`] (503 + Retry-After) instead of queueing
//! without bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use haven_crypto::PasswordParams;
use tokio::sync::Semaphore;

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("too many logins at once; try again in a few seconds")]
    Busy,
    #[error("password hashing failed: {0}")]
    Failed(String),
}

#[derive(Clone)]
pub struct Hasher {
    slots: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    queue: usize,
    params: PasswordParams,
    /// A hash of a random secret: unknown users are checked against it, so they cost what a
    /// real user costs (no timing difference).
    dummy: Arc<str>,
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hasher")
            .field("available", &self.slots.available_permits())
            .finish_non_exhaustive()
    }
}

/// Decrements the waiting count however the wait ends.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Hasher {
    /// # Errors
    /// When the dummy hash cannot be computed (the OS random source failed).
    pub fn new(
        params: PasswordParams,
        concurrency: usize,
        queue: usize,
    ) -> Result<Self, HashError> {
        let dummy =
            haven_crypto::dummy_hash(params).map_err(|e| HashError::Failed(e.to_string()))?;
        Ok(Self {
            slots: Arc::new(Semaphore::new(concurrency.max(1))),
            waiting: Arc::new(AtomicUsize::new(0)),
            queue,
            params,
            dummy: dummy.into(),
        })
    }

    #[must_use]
    pub fn params(&self) -> PasswordParams {
        self.params
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashError> {
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.queue {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            metrics::counter!("haven_login_hash_rejected_total").increment(1);
            return Err(HashError::Busy);
        }
        let waiting = Waiting(&self.waiting);
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| HashError::Busy)?;
        drop(waiting);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        })
        .await
        .map_err(|e| HashError::Failed(e.to_string()))
    }

    /// Hashes a new password.
    pub async fn hash(&self, password: String) -> Result<String, HashError> {
        let params = self.params;
        self.run(move || haven_crypto::hash_password(&password, params))
            .await?
            .map_err(|e| HashError::Failed(e.to_string()))
    }

    /// Checks a password against a stored hash, or against the dummy hash when there is no
    /// account (`None`), so both take the same time. Returns false for the dummy.
    pub async fn verify(&self, password: String, phc: Option<String>) -> Result<bool, HashError> {
        let real = phc.is_some();
        let phc = phc.unwrap_or_else(|| self.dummy.to_string());
        let ok = self
            .run(move || haven_crypto::verify_password(&password, &phc))
            .await?
            // A stored hash that does not parse is a failed login, not a crash.
            .unwrap_or(false);
        Ok(ok && real)
    }

    /// Whether a stored hash should be recomputed at the current parameters.
    #[must_use]
    pub fn needs_rehash(&self, phc: &str) -> bool {
        haven_crypto::needs_rehash(phc, self.params)
    }
}
