use std::fmt;

/// What can go wrong in a store. Driver errors are kept as text for the server log only; the
/// HTTP layer maps every variant to a fixed, detail-free OperationOutcome.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or is shutting down; the request may be retried.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A concurrent writer created the same version first (optimistic locking lost the race).
    #[error("version conflict on {0}")]
    VersionConflict(String),
    /// The connection was lost while committing: the unit may or may not be durable.
    #[error("commit outcome unknown: {0}")]
    CommitOutcomeUnknown(String),
    /// Data in the database does not have the shape Haven wrote.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The data key that sealed this data was destroyed (the patient was erased): the data
    /// exists only as ciphertext nobody can open. Names the key scope.
    #[error("data erased: the key of {0} was destroyed")]
    Erased(String),
    /// Anything else from the driver.
    #[error("database error: {0}")]
    Internal(String),
}

impl StoreError {
    /// Wraps a driver error, keeping its text for logs.
    pub fn internal(e: impl fmt::Display) -> Self {
        StoreError::Internal(e.to_string())
    }
}
