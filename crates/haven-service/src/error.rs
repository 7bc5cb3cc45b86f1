//! The service's error type and its one mapping to HTTP status and FHIR issue type.
//!
//! | variant               | status | issue code      | when                                              |
//! |-----------------------|--------|-----------------|---------------------------------------------------|
//! | `Malformed`           | 400    | structure       | body is not JSON, duplicate keys, too deep         |
//! | `BadRequest`          | 400    | invalid         | bad id, bad parameter, resourceType/id mismatch    |
//! | `Invalid`             | 400    | (per issue)     | resource fails R4 StructureDefinition validation   |
//! | `Unauthenticated`     | 401    | login           | no, or no valid, access token (+WWW-Authenticate)  |
//! | `Forbidden`           | 403    | forbidden       | the caller may not do this (e.g. write AuditEvent) |
//! | `InsufficientScope`   | 403    | forbidden       | the token's scopes do not allow the interaction    |
//! | `UnknownType`         | 404    | not-supported   | path names no R4 resource type                     |
//! | `NotFound`            | 404    | not-found       | no such resource or version                        |
//! | `MethodNotAllowed`    | 405    | not-supported   | interaction not offered at that path               |
//! | `NotAcceptable`       | 406    | not-supported   | `Accept`/`_format` asks for a format we lack       |
//! | `WriteRace`           | 409    | conflict        | lost a write race (retried before it is returned)  |
//! | `Conflict`            | 409    | conflict        | erasure of a patient under a legal hold            |
//! | `Gone`                | 410    | deleted         | resource (or version) was deleted, or erased       |
//! | `PreconditionFailed`  | 412    | conflict        | `If-Match` names a stale version                   |
//! | `TooLarge`            | 413    | too-long        | body or Bundle over the configured limit           |
//! | `UnsupportedMedia`    | 415    | not-supported   | `Content-Type` we do not read                      |
//! | `Unprocessable`       | 422    | business-rule   | valid FHIR that breaks a server rule               |
//! | `Unavailable`         | 503    | transient       | database or key provider unreachable (+Retry-After) |
//! | `OutcomeUnknown`      | 500    | exception       | connection lost while committing: saved or not     |
//! | `Internal`            | 500    | exception       | a bug; details go to the log only                  |
//!
//! Messages are written for the client: they say what was wrong and what to do, and never
//! carry SQL, driver text, file paths or panic messages.

use haven_domain::{Timestamp, VersionId};
use haven_fhir::{Issue, IssueCode, Severity};
use haven_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("malformed request body: {0}")]
    Malformed(String),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("resource failed validation ({} issues)", .0.len())]
    Invalid(Vec<Issue>),
    #[error("unknown resource type '{0}'")]
    UnknownType(String),
    #[error("not found: {0}")]
    NotFound(String),
    /// No valid access token; the text says why (RFC 6750 `error_description`), `error` is
    /// `invalid_token` unless no token was sent at all (`None`).
    #[error("unauthenticated: {message}")]
    Unauthenticated {
        error: Option<&'static str>,
        message: String,
    },
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The token is valid but its scopes do not cover the interaction (RFC 6750
    /// `insufficient_scope`); the text names the scope that would.
    #[error("insufficient scope: {0}")]
    InsufficientScope(String),
    #[error("method not allowed: {0}")]
    MethodNotAllowed(String),
    #[error("not acceptable: {0}")]
    NotAcceptable(String),
    /// Another writer created the same version at the same instant. The service retries the
    /// unit of work; only a race lost repeatedly reaches the client.
    #[error("lost a write race")]
    WriteRace,
    #[error("gone: {message}")]
    Gone {
        message: String,
        version: Option<VersionId>,
        last_updated: Option<Timestamp>,
    },
    /// The request conflicts with the resource's state (e.g. erasure under a legal hold).
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("precondition failed: {0}")]
    PreconditionFailed(String),
    #[error("too large: {0}")]
    TooLarge(String),
    #[error("unsupported media type: {0}")]
    UnsupportedMedia(String),
    #[error("unprocessable: {0}")]
    Unprocessable(String),
    #[error("service unavailable")]
    Unavailable,
    /// The database connection was lost while committing. Not a 503: a client that retried a
    /// create on Retry-After could store it twice.
    #[error("commit outcome unknown")]
    OutcomeUnknown,
    #[error("internal error")]
    Internal,
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(detail) => {
                tracing::warn!(%detail, "database or key provider unavailable");
                ServiceError::Unavailable
            }
            StoreError::VersionConflict(detail) => {
                tracing::info!(%detail, "lost a write race");
                ServiceError::WriteRace
            }
            StoreError::CommitOutcomeUnknown(detail) => {
                tracing::error!(%detail, "lost the database while committing");
                ServiceError::OutcomeUnknown
            }
            StoreError::Erased(_) => {
                // Not the scope: it names the erased patient.
                tracing::info!("read of erased data");
                ServiceError::Gone {
                    message: "this record was erased (its encryption key was destroyed on request); it cannot be read".into(),
                    version: None,
                    last_updated: None,
                }
            }
            StoreError::Corrupt(detail) | StoreError::Internal(detail) => {
                tracing::error!(%detail, "store error");
                ServiceError::Internal
            }
        }
    }
}

impl ServiceError {
    /// The HTTP status for this error (see the table above).
    #[must_use]
    pub fn status(&self) -> u16 {
        match self {
            ServiceError::Malformed(_) | ServiceError::BadRequest(_) | ServiceError::Invalid(_) => {
                400
            }
            ServiceError::Unauthenticated { .. } => 401,
            ServiceError::Forbidden(_) | ServiceError::InsufficientScope(_) => 403,
            ServiceError::UnknownType(_) | ServiceError::NotFound(_) => 404,
            ServiceError::MethodNotAllowed(_) => 405,
            ServiceError::NotAcceptable(_) => 406,
            ServiceError::WriteRace | ServiceError::Conflict(_) => 409,
            ServiceError::Gone { .. } => 410,
            ServiceError::PreconditionFailed(_) => 412,
            ServiceError::TooLarge(_) => 413,
            ServiceError::UnsupportedMedia(_) => 415,
            ServiceError::Unprocessable(_) => 422,
            ServiceError::Internal | ServiceError::OutcomeUnknown => 500,
            ServiceError::Unavailable => 503,
        }
    }

    /// The OperationOutcome issues describing this error.
    #[must_use]
    pub fn issues(&self) -> Vec<Issue> {
        let one = |code: IssueCode, message: String| {
            vec![Issue {
                severity: Severity::Error,
                code,
                location: String::new(),
                message,
            }]
        };
        match self {
            ServiceError::Invalid(issues) => issues.clone(),
            ServiceError::Malformed(m) => one(IssueCode::Structure, m.clone()),
            ServiceError::BadRequest(m) => one(IssueCode::Invalid, m.clone()),
            ServiceError::UnknownType(t) => one(
                IssueCode::NotSupported,
                format!(
                    "'{t}' is not an R4 resource type this server knows; see /metadata for the list"
                ),
            ),
            ServiceError::NotFound(m) => one(IssueCode::NotFound, m.clone()),
            ServiceError::Forbidden(m) | ServiceError::InsufficientScope(m) => {
                one(IssueCode::Forbidden, m.clone())
            }
            ServiceError::Unauthenticated { message, .. } => one(IssueCode::Login, message.clone()),
            ServiceError::MethodNotAllowed(m)
            | ServiceError::NotAcceptable(m)
            | ServiceError::UnsupportedMedia(m) => one(IssueCode::NotSupported, m.clone()),
            ServiceError::PreconditionFailed(m) | ServiceError::Conflict(m) => {
                one(IssueCode::Conflict, m.clone())
            }
            ServiceError::WriteRace => one(
                IssueCode::Conflict,
                "the resource was changed by another request at the same time; read it again and retry"
                    .into(),
            ),
            ServiceError::Gone { message, .. } => one(IssueCode::Deleted, message.clone()),
            ServiceError::TooLarge(m) => one(IssueCode::TooLong, m.clone()),
            ServiceError::Unprocessable(m) => one(IssueCode::BusinessRule, m.clone()),
            ServiceError::Unavailable => one(
                IssueCode::Transient,
                "the database or the key service is temporarily unavailable; retry after a few seconds"
                    .into(),
            ),
            ServiceError::OutcomeUnknown => one(
                IssueCode::Exception,
                "the database connection was lost while saving; the change may or may not have been stored: read the resource before retrying"
                    .into(),
            ),
            ServiceError::Internal => one(
                IssueCode::Exception,
                "an internal error occurred; it has been logged with this request's id".into(),
            ),
        }
    }

    /// The OperationOutcome resource for this error.
    #[must_use]
    pub fn to_operation_outcome(&self) -> serde_json::Value {
        crate::outcome::operation_outcome(&self.issues())
    }
}
