//! History at instance, type and system level (R4 http.html#history), with `_count`, `_since`,
//! `_at` and keyset paging links that stay stable while new versions are written.

use haven_domain::Timestamp;
use haven_store::{HistoryCursor, HistoryQuery, HistoryScope, Period, StoredVersion};

use crate::wire::{
    BundleOut, Entry, EntryRequest, EntryResponse, Link, bundle_meta, raw, status_line,
};
use crate::{FhirResponse, FhirService, Route, ServiceError};

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
                    // `b<tx>.<seq>` or `a<tx>.<seq>` (see `HistoryPos`).
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
        // History keeps growing, so every page links to what is newer than it, even the newest
        // (possibly empty then): a client following changes asks that link again later. An
        // empty newer page links to itself.
        let newer_than = page
            .entries
            .first()
            .map(|first| first.pos)
            .or(match cursor {
                Some(HistoryCursor::After(p)) => Some(p),
                _ => None,
            });
        if let Some(pos) = newer_than {
            link.push(Link {
                relation: "previous",
                url: link_to(Some(format!("a{pos}"))),
            });
        }
        if page.has_older
            && let Some(last) = page.entries.last()
        {
            link.push(Link {
                relation: "next",
                url: link_to(Some(format!("b{}", last.pos))),
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
                search: None,
            });
        }
        let bundle = BundleOut {
            resource_type: "Bundle",
            id: uuid::Uuid::new_v4().to_string(),
            meta: bundle_meta(),
            kind: "history",
            total: None,
            link,
            entry,
        };
        Ok(FhirResponse::json(200, bundle.to_bytes()?))
    }
}
