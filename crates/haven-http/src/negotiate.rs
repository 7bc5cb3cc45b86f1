//! Content negotiation (R4 http.html#mime-type): `_format`, `Accept`, `Content-Type`, `Prefer`.
//!
//! Haven speaks FHIR JSON only. Asking for XML or Turtle is answered with 406, sending it with
//! 415, each with an OperationOutcome saying so.

use haven_service::{ReturnPreference, ServiceError};

pub(crate) const FHIR_JSON: &str = "application/fhir+json";
const JSON: &str = "application/json";

/// How to write the response.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Output {
    pub mime: &'static str,
    pub pretty: bool,
    /// The client named a FHIR format explicitly (so a Binary is returned as a resource).
    pub fhir_requested: bool,
}

fn media_type(s: &str) -> (String, Vec<(String, String)>) {
    let mut parts = s.split(';');
    let mt = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let params = parts
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| {
            (
                k.trim().to_ascii_lowercase(),
                v.trim().trim_matches('"').to_owned(),
            )
        })
        .collect();
    (mt, params)
}

fn version_ok(params: &[(String, String)]) -> bool {
    params
        .iter()
        .find(|(k, _)| k == "fhirversion")
        .is_none_or(|(_, v)| v == "4.0" || v == "4.0.1")
}

fn is_fhir_json(mt: &str) -> bool {
    matches!(mt, FHIR_JSON | "application/json+fhir")
}

/// Decides the response format from `_format` (which wins) and `Accept`.
pub(crate) fn output(
    format: Option<&str>,
    accept: Option<&str>,
    pretty: bool,
) -> Result<Output, ServiceError> {
    if let Some(f) = format {
        let (mt, params) = media_type(f);
        return match mt.as_str() {
            "json" | FHIR_JSON | "application/json+fhir" if version_ok(&params) => Ok(Output {
                mime: FHIR_JSON,
                pretty,
                fhir_requested: true,
            }),
            JSON => Ok(Output {
                mime: JSON,
                pretty,
                fhir_requested: true,
            }),
            _ => Err(ServiceError::NotAcceptable(format!(
                "_format={} is not supported; this server speaks FHIR JSON only (_format=json)",
                f.chars().take(60).collect::<String>()
            ))),
        };
    }
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return Ok(Output {
            mime: FHIR_JSON,
            pretty,
            fhir_requested: false,
        });
    };
    let mut best: Option<Output> = None;
    for range in accept.split(',') {
        let (mt, params) = media_type(range);
        let q_zero = params
            .iter()
            .any(|(k, v)| k == "q" && v.parse::<f32>().is_ok_and(|q| q <= 0.0));
        if q_zero || !version_ok(&params) {
            continue;
        }
        let candidate = if is_fhir_json(&mt) {
            Some((FHIR_JSON, true))
        } else if mt == JSON {
            Some((JSON, true))
        } else if mt == "*/*" || mt == "application/*" {
            Some((FHIR_JSON, false))
        } else {
            None
        };
        if let Some((mime, explicit)) = candidate {
            // An explicit FHIR type beats a wildcard.
            if best.is_none_or(|b| !b.fhir_requested && explicit) {
                best = Some(Output {
                    mime,
                    pretty,
                    fhir_requested: explicit,
                });
            }
        }
    }
    best.ok_or_else(|| {
        ServiceError::NotAcceptable(
            "none of the media types in Accept can be produced; this server returns application/fhir+json"
                .into(),
        )
    })
}

/// For a Binary read: may the native content be served, given `Accept`?
pub(crate) fn accepts_native(accept: Option<&str>, content_type: &str) -> bool {
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return true;
    };
    let (ct, _) = media_type(content_type);
    let ct_major = ct.split('/').next().unwrap_or("");
    accept.split(',').any(|range| {
        let (mt, params) = media_type(range);
        let q_zero = params
            .iter()
            .any(|(k, v)| k == "q" && v.parse::<f32>().is_ok_and(|q| q <= 0.0));
        !q_zero
            && (mt == "*/*"
                || mt == ct
                || mt.strip_suffix("/*").is_some_and(|major| major == ct_major))
    })
}

/// What a request body is, by its `Content-Type`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum BodyKind {
    FhirJson,
    JsonPatch,
    Other(String),
    Missing,
}

pub(crate) fn body_kind(content_type: Option<&str>) -> Result<BodyKind, ServiceError> {
    let Some(ct) = content_type.filter(|c| !c.trim().is_empty()) else {
        return Ok(BodyKind::Missing);
    };
    let (mt, params) = media_type(ct);
    let is_json = matches!(
        mt.as_str(),
        FHIR_JSON | JSON | "application/json+fhir" | "application/json-patch+json"
    );
    // Only JSON must be UTF-8; a Binary may hold text in any charset (it is stored as received).
    if is_json
        && let Some((_, cs)) = params.iter().find(|(k, _)| k == "charset")
        && !cs.eq_ignore_ascii_case("utf-8")
    {
        return Err(ServiceError::UnsupportedMedia(format!(
            "charset {} is not supported; FHIR JSON is UTF-8",
            cs.chars().take(30).collect::<String>()
        )));
    }
    if !version_ok(&params) {
        return Err(ServiceError::UnsupportedMedia(
            "this server speaks FHIR R4 (fhirVersion=4.0)".into(),
        ));
    }
    Ok(match mt.as_str() {
        FHIR_JSON | JSON | "application/json+fhir" => BodyKind::FhirJson,
        "application/json-patch+json" => BodyKind::JsonPatch,
        // The full content type, parameters included, is what a Binary keeps.
        _ => BodyKind::Other(ct.trim().to_owned()),
    })
}

/// `Prefer: handling=strict` (search.html#errors): unknown search parameters are errors.
pub(crate) fn strict_handling(prefer: Option<&str>) -> bool {
    prefer.is_some_and(|p| {
        p.split([',', ';']).any(|token| {
            token.split_once('=').is_some_and(|(k, v)| {
                k.trim().eq_ignore_ascii_case("handling")
                    && v.trim().trim_matches('"').eq_ignore_ascii_case("strict")
            })
        })
    })
}

/// `Prefer: return=...` (http.html#ops). Unknown preferences are ignored, as RFC 7240 asks.
pub(crate) fn return_preference(prefer: Option<&str>) -> ReturnPreference {
    let Some(p) = prefer else {
        return ReturnPreference::default();
    };
    for token in p.split([',', ';']) {
        if let Some((k, v)) = token.split_once('=')
            && k.trim().eq_ignore_ascii_case("return")
        {
            match v.trim().trim_matches('"') {
                "minimal" => return ReturnPreference::Minimal,
                "representation" => return ReturnPreference::Representation,
                "OperationOutcome" => return ReturnPreference::OperationOutcome,
                _ => {}
            }
        }
    }
    ReturnPreference::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_and_accept() {
        assert_eq!(output(None, None, false).unwrap().mime, FHIR_JSON);
        assert_eq!(
            output(Some("json"), Some("application/xml"), false)
                .unwrap()
                .mime,
            FHIR_JSON
        );
        assert_eq!(output(Some("xml"), None, false).unwrap_err().status(), 406);
        assert_eq!(
            output(Some("application/fhir+xml"), None, false)
                .unwrap_err()
                .status(),
            406
        );
        assert_eq!(
            output(None, Some("application/json"), false).unwrap().mime,
            JSON
        );
        assert_eq!(
            output(None, Some("application/fhir+json; fhirVersion=4.0"), false)
                .unwrap()
                .mime,
            FHIR_JSON
        );
        assert_eq!(
            output(None, Some("application/fhir+json; fhirVersion=5.0"), false)
                .unwrap_err()
                .status(),
            406
        );
        assert_eq!(
            output(None, Some("application/fhir+xml"), false)
                .unwrap_err()
                .status(),
            406
        );
        assert_eq!(
            output(None, Some("text/html, */*;q=0.8"), false)
                .unwrap()
                .mime,
            FHIR_JSON
        );
        assert_eq!(
            output(None, Some("application/json;q=0, text/plain"), false)
                .unwrap_err()
                .status(),
            406
        );
        let o = output(None, Some("*/*, application/json"), true).unwrap();
        assert!(o.fhir_requested && o.pretty);
        assert_eq!(o.mime, JSON);
    }

    #[test]
    fn native_binary() {
        assert!(accepts_native(None, "application/pdf"));
        assert!(accepts_native(Some("application/pdf"), "application/pdf"));
        assert!(accepts_native(Some("image/*"), "image/png"));
        assert!(!accepts_native(Some("image/*"), "application/pdf"));
        assert!(accepts_native(Some("*/*"), "text/plain"));
    }

    #[test]
    fn content_types() {
        assert_eq!(
            body_kind(Some("application/fhir+json; charset=utf-8")).unwrap(),
            BodyKind::FhirJson
        );
        assert_eq!(
            body_kind(Some("application/json")).unwrap(),
            BodyKind::FhirJson
        );
        assert_eq!(
            body_kind(Some("application/json-patch+json")).unwrap(),
            BodyKind::JsonPatch
        );
        assert_eq!(
            body_kind(Some("application/pdf")).unwrap(),
            BodyKind::Other("application/pdf".into())
        );
        assert_eq!(
            body_kind(Some("text/plain; charset=iso-8859-1")).unwrap(),
            BodyKind::Other("text/plain; charset=iso-8859-1".into())
        );
        assert_eq!(body_kind(None).unwrap(), BodyKind::Missing);
        assert_eq!(
            body_kind(Some("application/json; charset=latin1"))
                .unwrap_err()
                .status(),
            415
        );
    }

    #[test]
    fn prefer() {
        assert_eq!(
            return_preference(Some("return=minimal")),
            ReturnPreference::Minimal
        );
        assert_eq!(
            return_preference(Some("handling=strict, return=OperationOutcome")),
            ReturnPreference::OperationOutcome
        );
        assert_eq!(
            return_preference(Some("return=bogus")),
            ReturnPreference::Representation
        );
        assert_eq!(return_preference(None), ReturnPreference::Representation);
    }
}
