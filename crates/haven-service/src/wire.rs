//! The JSON shapes of the Bundles Haven writes (history, batch-response, transaction-response),
//! serialized straight from stored bytes: resources are embedded as raw JSON, never re-parsed
//! into a tree.

use bytes::Bytes;
use haven_domain::Timestamp;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::ServiceError;

#[derive(Serialize)]
pub(crate) struct Link {
    pub relation: &'static str,
    pub url: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EntryRequest {
    pub method: &'static str,
    pub url: String,
}

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EntryResponse {
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<serde_json::Value>,
}

/// `Bundle.entry.search` of a searchset.
#[derive(Serialize)]
pub(crate) struct EntrySearch {
    pub mode: &'static str,
}

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Entry<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub full_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search: Option<EntrySearch>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<EntryRequest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<EntryResponse>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BundleOut<'a> {
    pub resource_type: &'static str,
    pub id: String,
    pub meta: serde_json::Value,
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub link: Vec<Link>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub entry: Vec<Entry<'a>>,
}

impl BundleOut<'_> {
    pub(crate) fn to_bytes(&self) -> Result<Bytes, ServiceError> {
        serde_json::to_vec(self)
            .map(Bytes::from)
            .map_err(|_| ServiceError::Internal)
    }
}

pub(crate) fn bundle_meta() -> serde_json::Value {
    serde_json::json!({ "lastUpdated": Timestamp::now().to_instant_string() })
}

/// Embeds stored JSON without re-parsing it into a tree.
pub(crate) fn raw(body: &[u8]) -> Result<&RawValue, ServiceError> {
    serde_json::from_slice(body).map_err(|_| ServiceError::Internal)
}

pub(crate) fn status_line(code: u16) -> String {
    let reason = match code {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        410 => "Gone",
        412 => "Precondition Failed",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    };
    if reason.is_empty() {
        code.to_string()
    } else {
        format!("{code} {reason}")
    }
}
