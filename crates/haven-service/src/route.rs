//! Routing: from an HTTP-agnostic (method, path) pair to the FHIR interaction it names.
//!
//! The same parser serves the REST endpoint and the `request.url` of Bundle entries, so a
//! transaction entry means exactly what the equivalent HTTP call means (R4 http.html#transaction).

use haven_domain::{Interaction, ResourceId, ResourceType, VersionId};

use crate::ServiceError;
use crate::search::SearchScope;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
}

impl Method {
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "PATCH" => Method::Patch,
            "DELETE" => Method::Delete,
            _ => return None,
        })
    }

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }
}

/// A FHIR interaction with the identifiers from its URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    Capabilities,
    /// `POST [base]` with a batch or transaction Bundle.
    Bundle,
    HistorySystem,
    Create(ResourceType),
    HistoryType(ResourceType),
    Validate(ResourceType, Option<ResourceId>),
    Read(ResourceType, ResourceId),
    Vread(ResourceType, ResourceId, VersionId),
    Update(ResourceType, ResourceId),
    Patch(ResourceType, ResourceId),
    Delete(ResourceType, ResourceId),
    HistoryInstance(ResourceType, ResourceId),
    /// A search: `GET [base]/[type]`, `POST [base]/[type]/_search`, `GET [base]`,
    /// `POST [base]/_search`, `GET [base]/Patient/[id]/[type]`.
    Search(SearchScope),
    /// `GET [base]/Patient/[id]/$everything`.
    Everything(ResourceId),
    /// `GET [base]/Patient/[id]/$disclosures`: the patient's accounting of disclosures, as
    /// AuditEvents (auditor role).
    Disclosures(ResourceId),
    /// `PUT [base]/[type]?criteria`: conditional update.
    ConditionalUpdate(ResourceType),
    /// `DELETE [base]/[type]?criteria`: conditional delete.
    ConditionalDelete(ResourceType),
}

impl Route {
    #[must_use]
    pub fn interaction(&self) -> Interaction {
        match self {
            Route::Capabilities => Interaction::Capabilities,
            Route::Bundle => Interaction::Batch,
            Route::HistorySystem => Interaction::HistorySystem,
            Route::Create(_) => Interaction::Create,
            Route::HistoryType(_) => Interaction::HistoryType,
            Route::Validate(..) => Interaction::Validate,
            Route::Read(..) => Interaction::Read,
            Route::Vread(..) => Interaction::Vread,
            Route::Update(..) => Interaction::Update,
            Route::Patch(..) => Interaction::Patch,
            Route::Delete(..) => Interaction::Delete,
            Route::HistoryInstance(..) => Interaction::HistoryInstance,
            Route::Search(SearchScope::System) => Interaction::SearchSystem,
            Route::Search(_) => Interaction::SearchType,
            Route::Everything(_) => Interaction::Everything,
            Route::Disclosures(_) => Interaction::Disclosures,
            Route::ConditionalUpdate(_) => Interaction::Update,
            Route::ConditionalDelete(_) => Interaction::Delete,
        }
    }

    #[must_use]
    pub fn resource_type(&self) -> Option<ResourceType> {
        match self {
            Route::Capabilities
            | Route::Bundle
            | Route::HistorySystem
            | Route::Search(SearchScope::System) => None,
            Route::Search(SearchScope::Type(t) | SearchScope::Compartment { ty: t, .. }) => {
                Some(*t)
            }
            Route::Everything(_) => ResourceType::parse("Patient"),
            Route::Disclosures(_) => ResourceType::parse("AuditEvent"),
            Route::Create(t)
            | Route::HistoryType(t)
            | Route::Validate(t, _)
            | Route::ConditionalUpdate(t)
            | Route::ConditionalDelete(t) => Some(*t),
            Route::Read(t, _)
            | Route::Vread(t, _, _)
            | Route::Update(t, _)
            | Route::Patch(t, _)
            | Route::Delete(t, _)
            | Route::HistoryInstance(t, _) => Some(*t),
        }
    }

    /// Whether this interaction reads a request body.
    #[must_use]
    pub fn takes_body(&self) -> bool {
        matches!(
            self,
            Route::Bundle
                | Route::Create(_)
                | Route::Validate(..)
                | Route::Update(..)
                | Route::ConditionalUpdate(_)
                | Route::Patch(..)
        )
    }
}

fn parse_type(s: &str) -> Result<ResourceType, ServiceError> {
    ResourceType::parse(s).ok_or_else(|| ServiceError::UnknownType(s.chars().take(64).collect()))
}

fn parse_id(s: &str) -> Result<ResourceId, ServiceError> {
    ResourceId::parse(s).map_err(|e| ServiceError::BadRequest(e.to_string()))
}

fn not_allowed(method: Method, what: &str, allowed: &str) -> ServiceError {
    ServiceError::MethodNotAllowed(format!(
        "{} is not supported on {what}; allowed: {allowed} (see /metadata)",
        method.as_str()
    ))
}

/// Routes a request path (relative to the FHIR base, without query string; segments already
/// percent-decoded) to an interaction. REST and Bundle entries both come through here, so the
/// rule for `AuditEvent` holds on every path.
pub fn route(method: Method, segments: &[&str]) -> Result<Route, ServiceError> {
    let r = route_of(method, segments)?;
    guard_audit_events(&r)?;
    Ok(r)
}

/// `AuditEvent` is Haven's own trail: never written through the API (HIPAA 164.312(b): the
/// records must not be alterable by those they record). It is read through its own view
/// (`audit_view`: read, vread, search, `$disclosures`), which the access check opens to the
/// auditor role only.
fn guard_audit_events(r: &Route) -> Result<(), ServiceError> {
    if r.resource_type().is_none_or(|t| t.as_str() != "AuditEvent") {
        return Ok(());
    }
    match r {
        Route::Validate(_, None)
        | Route::Read(..)
        | Route::Vread(..)
        | Route::Search(SearchScope::Type(_))
        | Route::Disclosures(_) => Ok(()),
        Route::Create(_)
        | Route::Update(..)
        | Route::ConditionalUpdate(_)
        | Route::Patch(..)
        | Route::Delete(..)
        | Route::ConditionalDelete(_) => Err(ServiceError::Forbidden(
            "AuditEvent records are written only by Haven's audit trail; they cannot be \
             created, changed or deleted through the API"
                .into(),
        )),
        _ => Err(ServiceError::Forbidden(
            "AuditEvent supports read, vread and search (GET AuditEvent?...), and \
             Patient/[id]/$disclosures; audit records have no history: they never change"
                .into(),
        )),
    }
}

fn route_of(method: Method, segments: &[&str]) -> Result<Route, ServiceError> {
    use Method::{Delete, Get, Head, Patch, Post, Put};
    let get = matches!(method, Get | Head);
    match segments {
        [] => match method {
            Post => Ok(Route::Bundle),
            Get | Head => Ok(Route::Search(SearchScope::System)),
            _ => Err(not_allowed(
                method,
                "the server base",
                "GET (search), POST (batch/transaction)",
            )),
        },
        ["_search"] => match method {
            Post => Ok(Route::Search(SearchScope::System)),
            _ => Err(not_allowed(method, "/_search", "POST")),
        },
        ["metadata"] => match get {
            true => Ok(Route::Capabilities),
            false => Err(not_allowed(method, "/metadata", "GET")),
        },
        ["_history"] => match get {
            true => Ok(Route::HistorySystem),
            false => Err(not_allowed(method, "/_history", "GET")),
        },
        [t] => {
            let t = parse_type(t)?;
            match method {
                Post => Ok(Route::Create(t)),
                Get | Head => Ok(Route::Search(SearchScope::Type(t))),
                Put => Ok(Route::ConditionalUpdate(t)),
                Delete => Ok(Route::ConditionalDelete(t)),
                Patch => Err(not_allowed(
                    method,
                    &format!("/{t}"),
                    "GET (search), POST (create), PUT and DELETE with search criteria",
                )),
            }
        }
        [t, "_history"] => {
            let t = parse_type(t)?;
            match get {
                true => Ok(Route::HistoryType(t)),
                false => Err(not_allowed(method, &format!("/{t}/_history"), "GET")),
            }
        }
        [t, "_search"] => {
            let t = parse_type(t)?;
            match method {
                Post => Ok(Route::Search(SearchScope::Type(t))),
                _ => Err(not_allowed(method, &format!("/{t}/_search"), "POST")),
            }
        }
        [t, "$validate"] => {
            let t = parse_type(t)?;
            match method {
                Post => Ok(Route::Validate(t, None)),
                _ => Err(not_allowed(method, &format!("/{t}/$validate"), "POST")),
            }
        }
        [t, id] => {
            let t = parse_type(t)?;
            let id = parse_id(id)?;
            match method {
                Get | Head => Ok(Route::Read(t, id)),
                Put => Ok(Route::Update(t, id)),
                Patch => Ok(Route::Patch(t, id)),
                Delete => Ok(Route::Delete(t, id)),
                Post => Err(not_allowed(
                    method,
                    &format!("/{t}/[id]"),
                    "GET, PUT, PATCH, DELETE",
                )),
            }
        }
        [t, id, "_history"] => {
            let t = parse_type(t)?;
            let id = parse_id(id)?;
            match get {
                true => Ok(Route::HistoryInstance(t, id)),
                false => Err(not_allowed(method, &format!("/{t}/[id]/_history"), "GET")),
            }
        }
        [t, id, "$validate"] => {
            let t = parse_type(t)?;
            let id = parse_id(id)?;
            match method {
                Post => Ok(Route::Validate(t, Some(id))),
                _ => Err(not_allowed(method, &format!("/{t}/[id]/$validate"), "POST")),
            }
        }
        ["Patient", id, "$disclosures"] => {
            let id = parse_id(id)?;
            match get {
                true => Ok(Route::Disclosures(id)),
                false => Err(not_allowed(method, "/Patient/[id]/$disclosures", "GET")),
            }
        }
        ["Patient", id, "$everything"] => {
            let id = parse_id(id)?;
            match get {
                true => Ok(Route::Everything(id)),
                false => Err(not_allowed(method, "/Patient/[id]/$everything", "GET")),
            }
        }
        ["Patient", id, t] => {
            let id = parse_id(id)?;
            let ty = parse_type(t)?;
            match get {
                true => Ok(Route::Search(SearchScope::Compartment { patient: id, ty })),
                false => Err(not_allowed(method, &format!("/Patient/[id]/{ty}"), "GET")),
            }
        }
        [t, id, "_history", v] => {
            let t = parse_type(t)?;
            let id = parse_id(id)?;
            let v = VersionId::parse(v).map_err(|e| ServiceError::BadRequest(e.to_string()))?;
            match get {
                true => Ok(Route::Vread(t, id, v)),
                false => Err(not_allowed(
                    method,
                    &format!("/{t}/[id]/_history/[vid]"),
                    "GET",
                )),
            }
        }
        _ => Err(ServiceError::NotFound(
            "no FHIR interaction is served at this path; see /metadata".into(),
        )),
    }
}

/// The methods `route` accepts for a path, for the `Allow` header of a 405 (RFC 9110 15.5.6).
#[must_use]
pub fn allowed_methods(segments: &[&str]) -> Vec<Method> {
    [
        Method::Get,
        Method::Head,
        Method::Post,
        Method::Put,
        Method::Patch,
        Method::Delete,
    ]
    .into_iter()
    .filter(|m| route(*m, segments).is_ok())
    .collect()
}

/// Decoded query-string pairs, in order.
pub type QueryPairs = Vec<(String, String)>;

/// Splits a relative URL (as in `Bundle.entry.request.url`) into decoded path segments and
/// query pairs.
pub fn split_url(url: &str) -> Result<(Vec<String>, QueryPairs), ServiceError> {
    let (path, query) = match url.split_once('?') {
        Some((p, q)) => (p, q),
        None => (url, ""),
    };
    let segments = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| ServiceError::BadRequest("the URL is not valid UTF-8".into()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
        .map_err(|_| ServiceError::BadRequest("the query string cannot be parsed".into()))?;
    Ok((segments, pairs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(method: Method, path: &str) -> Result<Route, ServiceError> {
        let (segs, _) = split_url(path).unwrap();
        let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
        route(method, &segs)
    }

    #[test]
    fn routes_every_interaction() {
        assert_eq!(r(Method::Get, "metadata").unwrap(), Route::Capabilities);
        assert_eq!(r(Method::Post, "").unwrap(), Route::Bundle);
        assert_eq!(r(Method::Get, "_history").unwrap(), Route::HistorySystem);
        assert!(matches!(
            r(Method::Post, "Patient").unwrap(),
            Route::Create(_)
        ));
        assert!(matches!(
            r(Method::Get, "Patient/_history").unwrap(),
            Route::HistoryType(_)
        ));
        assert!(matches!(
            r(Method::Get, "Patient/a1").unwrap(),
            Route::Read(..)
        ));
        assert!(matches!(
            r(Method::Head, "Patient/a1").unwrap(),
            Route::Read(..)
        ));
        assert!(matches!(
            r(Method::Put, "Patient/a1").unwrap(),
            Route::Update(..)
        ));
        assert!(matches!(
            r(Method::Patch, "Patient/a1").unwrap(),
            Route::Patch(..)
        ));
        assert!(matches!(
            r(Method::Delete, "Patient/a1").unwrap(),
            Route::Delete(..)
        ));
        assert!(matches!(
            r(Method::Get, "Patient/a1/_history").unwrap(),
            Route::HistoryInstance(..)
        ));
        assert!(matches!(
            r(Method::Get, "Patient/a1/_history/2").unwrap(),
            Route::Vread(..)
        ));
        assert!(matches!(
            r(Method::Post, "Patient/$validate").unwrap(),
            Route::Validate(_, None)
        ));
        assert!(matches!(
            r(Method::Post, "Patient/a/$validate").unwrap(),
            Route::Validate(_, Some(_))
        ));
    }

    #[test]
    fn rejects_what_is_not_served() {
        assert_eq!(r(Method::Get, "Nonsense/1").unwrap_err().status(), 404);
        assert_eq!(r(Method::Get, "patient/1").unwrap_err().status(), 404);
        assert_eq!(r(Method::Post, "Patient/1").unwrap_err().status(), 405);
        assert_eq!(r(Method::Delete, "metadata").unwrap_err().status(), 405);
        assert_eq!(
            r(Method::Get, "Patient/bad%20id").unwrap_err().status(),
            400
        );
        assert_eq!(
            r(Method::Get, "Patient/a/_history/x").unwrap_err().status(),
            400
        );
        assert_eq!(
            r(Method::Get, "Patient/a/b/c/d/e").unwrap_err().status(),
            404
        );
    }

    proptest! {
        #[test]
        fn routing_never_panics(method in 0usize..6, path in "[A-Za-z0-9_/$%.?=&-]{0,80}") {
            let m = [Method::Get, Method::Head, Method::Post, Method::Put, Method::Patch, Method::Delete][method];
            if let Ok((segs, _)) = split_url(&path) {
                let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
                let _ = route(m, &segs);
            }
        }
    }
}
