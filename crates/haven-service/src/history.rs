//! History at instance, type and system level (R4 http.html#history), with `_count`, `_since`,
//! `_at` and keyset paging links that stay stable while new versions are written.

use bytes::Bytes;
use haven_domain::Timestamp;
use haven_store::{HistoryCursor, HistoryQuery, HistoryScope, Period, StoredVersion};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::{FhirResponse, FhirService, Route, ServiceError};

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

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Entry<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub full_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<&'a RawValue>,
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

fn change_status(v: &StoredVersion) -> u16 {
    match v.change {
        haven_store::ChangeKind::Create => 201,
        haven_store::ChangeKind::Delete => 204,
        _ => 200,
    }
}

fn bad(param: &str, why: &str) -> ServiceError {
    ServiceError::BadRequest(format!("invalid {param}: {why}"))
}

impl FhirService {
    pub(crate) async fn history(
        &self,
        route: &Route,
        params: &[(String, String)],
    ) -> Result<FhirResponse, ServiceError> {
        let (scope, path) = match route {
            Route::HistorySystem => (HistoryScope::System, "_history".to_owned()),
            Route::HistoryType(t) => (HistoryScope::Type(*t), format!("{t}/_history")),
            Route::HistoryInstance(t, id) => (
                HistoryScope::Instance(*t, id.clone()),
                format!("{t}/{id}/_history"),
            ),
            _ => return Err(ServiceError::Internal),
        };
        let limits = &self.config.limits;
        let mut count = limits.default_page_size;
        let mut since = None;
        let mut at = None;
        let mut cursor = None;
        // Parameters echoed in paging links, in a fixed order.
        let mut kept: Vec<(&str, String)> = Vec::new();
        for (k, v) in params {
            match k.as_str() {
                "_count" => {
                    let n: u32 = v
                        .parse()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| bad("_count", "use a positive integer"))?;
                    // Clamped, not refused: the page size is the server's to choose.
                    count = n.min(limits.max_page_size);
                }
                "_since" => {
                    since = Some(Timestamp::parse_instant(v).map_err(|_| {
                        bad(
                            "_since",
                            "use an instant with a time zone, e.g. 2026-01-31T12:00:00Z",
                        )
                    })?);
                    kept.push(("_since", v.clone()));
                }
                "_at" => {
                    let dt = haven_fhir::primitives::parse_datetime(v).map_err(|_| {
                        bad(
                            "_at",
                            "use a FHIR date or dateTime, e.g. 2026-01-31 or 2026-01-31T12:00:00Z",
                        )
                    })?;
                    at = Some(Period {
                        start: Timestamp::from_datetime(dt.start()),
                        end: Timestamp::from_datetime(dt.end_exclusive()),
                    });
                    kept.push(("_at", v.clone()));
                }
                "_cursor" => {
                    let parsed = v
                        .strip_prefix('b')
                        .and_then(|n| n.parse().ok())
                        .map(HistoryCursor::Before)
                        .or_else(|| {
                            v.strip_prefix('a')
                                .and_then(|n| n.parse().ok())
                                .map(HistoryCursor::After)
                        })
                        .ok_or_else(|| bad("_cursor", "use the links of a previous page"))?;
                    cursor = Some(parsed);
                }
                // Unknown parameters are ignored; the self link shows what was applied.
                _ => {}
            }
        }
        kept.push(("_count", count.to_string()));
        let page = self
            .store
            .history(&HistoryQuery {
                scope,
                since,
                at,
                count,
                cursor,
                // The same budget as a request body: a page is never much larger than what a
                // client may send.
                max_bytes: limits.max_body_bytes.max(1 << 20),
            })
            .await?;

        let base = &self.config.base_url;
        let link_to = |cur: Option<String>| {
            let mut pairs: Vec<(&str, String)> = kept.clone();
            if let Some(c) = cur {
                pairs.push(("_cursor", c));
            }
            let qs = serde_urlencoded::to_string(&pairs).unwrap_or_default();
            format!("{base}/{path}?{qs}")
        };
        let mut link = vec![Link {
            relation: "self",
            url: link_to(cursor.map(|c| match c {
                HistoryCursor::Before(s) => format!("b{s}"),
                HistoryCursor::After(s) => format!("a{s}"),
            })),
        }];
        link.push(Link {
            relation: "first",
            url: link_to(None),
        });
        if page.has_newer
            && let Some(first) = page.entries.first()
        {
            link.push(Link {
                relation: "previous",
                url: link_to(Some(format!("a{}", first.seq))),
            });
        }
        if page.has_older
            && let Some(last) = page.entries.last()
        {
            link.push(Link {
                relation: "next",
                url: link_to(Some(format!("b{}", last.seq))),
            });
        }
        let mut entry = Vec::with_capacity(page.entries.len());
        for e in &page.entries {
            let v = &e.version;
            let status = change_status(v);
            entry.push(Entry {
                full_url: Some(format!("{base}/{}/{}", v.resource_type, v.id)),
                resource: v.body.as_deref().map(raw).transpose()?,
                request: Some(EntryRequest {
                    method: v.change.method(),
                    url: if status == 201 {
                        v.resource_type.to_string()
                    } else {
                        format!("{}/{}", v.resource_type, v.id)
                    },
                }),
                response: Some(EntryResponse {
                    status: status_line(status),
                    etag: Some(v.version.etag()),
                    last_modified: Some(v.last_updated.to_instant_string()),
                    ..EntryResponse::default()
                }),
            });
        }
        let bundle = BundleOut {
            resource_type: "Bundle",
            id: uuid::Uuid::new_v4().to_string(),
            meta: bundle_meta(),
            kind: "history",
            link,
            entry,
        };
        Ok(FhirResponse::json(200, bundle.to_bytes()?))
    }
}
