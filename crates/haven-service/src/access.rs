//! The access check: may this caller do this interaction at all?
//!
//! Called for every interaction before storage is touched, for REST requests and for every
//! entry of a batch or transaction alike. Effective permission = role policy ∩ token scopes
//! (deny by default):
//! - the **role policy** (`haven_domain::policy`, a data file) must allow the action on the
//!   type for one of the caller's roles;
//! - a **scope** of the token must allow it too: `system/` scopes for a client acting for
//!   itself, `user/` scopes for a person.
//!
//! A role confined to its compartment (`patient`) and `patient/` scopes with a launch context
//! confine the caller to one patient's compartment (`confine`). Granular scopes
//! (`?category=...`) grant nothing until their filters are applied to results. A type or
//! action outside the caller's bounds is 403: it reveals nothing the caller did not already
//! know (the resource types of FHIR are public).

use haven_domain::policy::Decision;
use haven_domain::scope::{Action, Context, Grant};
use haven_domain::{Principal, PrincipalKind};

use crate::search::SearchScope;
use crate::{RequestContext, Route, ServiceError};

/// The actions a route needs, on which resource type (`None`: every type, `*`).
fn needs(route: &Route) -> Vec<(Option<&'static str>, Action)> {
    let ty = |t: &haven_domain::ResourceType| Some(t.as_str());
    match route {
        // The capability statement and validation touch no data.
        Route::Capabilities | Route::Validate(_, None) | Route::Bundle => Vec::new(),
        // `$validate` of a stored resource reads it.
        Route::Validate(t, Some(_)) => vec![(ty(t), Action::Read)],
        Route::Read(t, _) | Route::Vread(t, _, _) | Route::HistoryInstance(t, _) => {
            vec![(ty(t), Action::Read)]
        }
        Route::HistoryType(t) => vec![(ty(t), Action::Read), (ty(t), Action::Search)],
        Route::HistorySystem => vec![(None, Action::Read), (None, Action::Search)],
        Route::Search(SearchScope::System) => vec![(None, Action::Search)],
        Route::Search(SearchScope::Type(t)) => vec![(ty(t), Action::Search)],
        Route::Search(SearchScope::Compartment { ty: t, .. }) => {
            vec![(ty(t), Action::Search)]
        }
        Route::Everything(_) => vec![(Some("Patient"), Action::Read), (None, Action::Search)],
        Route::Disclosures(_) => vec![(Some("AuditEvent"), Action::Search)],
        Route::Create(t) => vec![(ty(t), Action::Create)],
        Route::Update(t, _) | Route::Patch(t, _) => vec![(ty(t), Action::Update)],
        // A conditional update may create.
        Route::ConditionalUpdate(t) => vec![
            (ty(t), Action::Update),
            (ty(t), Action::Create),
            (ty(t), Action::Search),
        ],
        Route::Delete(t, _) => vec![(ty(t), Action::Delete)],
        Route::ConditionalDelete(t) => vec![(ty(t), Action::Delete), (ty(t), Action::Search)],
    }
}

fn verb(a: Action) -> &'static str {
    match a {
        Action::Create => "create",
        Action::Read => "read",
        Action::Update => "update",
        Action::Delete => "delete",
        Action::Search => "search",
    }
}

fn letter(a: Action) -> &'static str {
    match a {
        Action::Create => "c",
        Action::Read => "r",
        Action::Update => "u",
        Action::Delete => "d",
        Action::Search => "s",
    }
}

/// The scope contexts that count for this principal.
fn contexts(p: &Principal) -> &'static [Context] {
    match p.kind {
        PrincipalKind::Client => &[Context::System],
        PrincipalKind::User => &[Context::User],
    }
}

/// What a caller may reach once an interaction is allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Confinement {
    /// Whatever the interaction names.
    Unconfined,
    /// Only the Patient compartment of this patient (R4 CompartmentDefinition `patient`).
    Patient(String),
    /// An update of the caller's own Patient record that may change only these elements
    /// (the policy's `own_patient_fields`).
    OwnPatientFields(Vec<String>),
}

/// The patient a caller is (its `fhirUser`), for a role confined to its own record.
fn own_patient(p: &Principal) -> Option<&str> {
    p.fhir_user
        .as_deref()
        .and_then(|f| f.strip_prefix("Patient/"))
}

/// Refuses the interaction unless the caller's role policy and scopes both allow it, and says
/// whether the caller is confined to a patient's compartment: by its role (`patient`:
/// confined to the patient it is) or by its scopes (`patient/` scopes: confined to the patient
/// of its launch context). Haven's own commands run without a principal and are not checked.
pub(crate) fn check(
    policy: &haven_domain::policy::Policy,
    ctx: &RequestContext,
    route: &Route,
) -> Result<Confinement, ServiceError> {
    let Some(p) = ctx.principal.as_deref() else {
        return Ok(Confinement::Unconfined);
    };
    let needs = needs(route);
    if route
        .resource_type()
        .is_some_and(|t| t.as_str() == "AuditEvent")
    {
        return audit_view_access(p, &needs);
    }
    if let Some(fields) = own_patient_update(policy, p, route)? {
        return Ok(Confinement::OwnPatientFields(fields));
    }
    if !needs.is_empty() && p.roles.is_empty() {
        return Err(ServiceError::Forbidden(
            "this account has no role in Haven; ask an administrator to grant one".into(),
        ));
    }
    let (mut by_role, mut by_scope) = (false, false);
    for (ty, action) in needs {
        let name = ty.unwrap_or("*");
        match policy.decide(&p.roles, name, action) {
            Decision::Allowed => {}
            Decision::InCompartment => by_role = true,
            Decision::Denied => {
                return Err(ServiceError::Forbidden(format!(
                    "the role {} may not {} {name}",
                    p.role_names(),
                    verb(action)
                )));
            }
        }
        // A granular scope (`?category=...`) grants only what matches its filter; until the
        // filters are applied to results it grants nothing.
        let unconfined = contexts(p)
            .iter()
            .any(|c| p.scopes.grant(*c, name, action) == Grant::Unrestricted);
        if unconfined {
            continue;
        }
        let in_patient_context = p.kind == PrincipalKind::User
            && p.patient.is_some()
            && p.scopes.grant(Context::Patient, name, action) == Grant::Unrestricted;
        if in_patient_context {
            by_scope = true;
            continue;
        }
        // Granular scopes (`Observation.rs?category=vital-signs`) allow reads and searches of
        // what matches their filter; `scope_filter` gives the filter to apply.
        if filterable(route) {
            if contexts(p)
                .iter()
                .any(|c| matches!(p.scopes.grant(*c, name, action), Grant::Filtered(_)))
            {
                continue;
            }
            if p.kind == PrincipalKind::User
                && p.patient.is_some()
                && matches!(
                    p.scopes.grant(Context::Patient, name, action),
                    Grant::Filtered(_)
                )
            {
                by_scope = true;
                continue;
            }
        }
        let prefix = contexts(p)[0].as_str();
        return Err(ServiceError::InsufficientScope(format!(
            "the access token's scopes do not allow this; it needs {prefix}/{name}.{}",
            letter(action)
        )));
    }
    let role_patient = own_patient(p);
    let scope_patient = p.patient.as_deref();
    match (by_role, by_scope) {
        (false, false) => Ok(Confinement::Unconfined),
        (true, _) => match (role_patient, scope_patient) {
            (Some(me), Some(ctx)) if me != ctx => Err(ServiceError::Forbidden(
                "a patient's token may name only the patient's own record".into(),
            )),
            (Some(me), _) => Ok(Confinement::Patient(me.to_owned())),
            (None, _) => Err(ServiceError::Forbidden(
                "this account has the patient role but is linked to no Patient record (fhirUser); \
                 ask an administrator to link it"
                    .into(),
            )),
        },
        (false, true) => Ok(Confinement::Patient(
            scope_patient.unwrap_or_default().to_owned(),
        )),
    }
}

/// A person updating their own Patient record where the role policy allows no update but names
/// elements they may change (`own_patient_fields`): allowed, for those elements only, with a
/// scope that allows updating Patient. `None`: not such a request.
fn own_patient_update(
    policy: &haven_domain::policy::Policy,
    p: &Principal,
    route: &Route,
) -> Result<Option<Vec<String>>, ServiceError> {
    let (Route::Update(t, id) | Route::Patch(t, id)) = route else {
        return Ok(None);
    };
    if t.as_str() != "Patient" || own_patient(p) != Some(id.as_str()) {
        return Ok(None);
    }
    if policy.decide(&p.roles, "Patient", Action::Update) != Decision::InCompartment
        && policy.decide(&p.roles, "Patient", Action::Update) != Decision::Denied
    {
        return Ok(None);
    }
    let fields = policy.own_patient_fields(&p.roles);
    if fields.is_empty() {
        return Ok(None);
    }
    let scoped = [Context::User, Context::Patient]
        .iter()
        .any(|c| p.scopes.grant(*c, "Patient", Action::Update) == Grant::Unrestricted);
    if !scoped {
        return Err(ServiceError::InsufficientScope(
            "the access token's scopes do not allow this; it needs patient/Patient.u".into(),
        ));
    }
    Ok(Some(fields.into_iter().map(str::to_owned).collect()))
}

/// Interactions a granular scope can allow: reads of one resource and searches of one type.
fn filterable(route: &Route) -> bool {
    matches!(
        route,
        Route::Read(..)
            | Route::Vread(..)
            | Route::Search(SearchScope::Type(_) | SearchScope::Compartment { .. })
    )
}

/// What a granular scope lets the caller see of one type: resources matching any one of
/// these search criteria.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ScopeFilter {
    pub resource_type: String,
    pub alternatives: Vec<Vec<(String, String)>>,
}

impl ScopeFilter {
    /// The criteria as search parameters to add to a search (AND): one filter as it is, or
    /// several on the same single parameter as one comma-separated value (OR).
    pub(crate) fn as_search_params(&self) -> Result<Vec<(String, String)>, ServiceError> {
        if let [one] = self.alternatives.as_slice() {
            return Ok(one.clone());
        }
        let name = self.alternatives[0].first().map(|(k, _)| k.clone());
        let same = self
            .alternatives
            .iter()
            .all(|a| a.len() == 1 && Some(&a[0].0) == name.as_ref());
        match (same, name) {
            (true, Some(name)) => Ok(vec![(
                name,
                self.alternatives
                    .iter()
                    .map(|a| a[0].1.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
            )]),
            _ => Err(ServiceError::Forbidden(format!(
                "the access token's granular scopes for {} cannot be combined into one search; \
                 ask for one of them",
                self.resource_type
            ))),
        }
    }
}

/// The filter a granular scope puts on this interaction, when no unfiltered scope allows it
/// (`None`: nothing to filter). Call after [`check`] allowed the interaction.
pub(crate) fn scope_filter(ctx: &RequestContext, route: &Route) -> Option<ScopeFilter> {
    let p = ctx.principal.as_deref()?;
    if !filterable(route) {
        return None;
    }
    let ty = route.resource_type()?;
    let name = ty.as_str();
    let action = match route {
        Route::Read(..) | Route::Vread(..) => Action::Read,
        _ => Action::Search,
    };
    let mut all_contexts: Vec<Context> = contexts(p).to_vec();
    if p.kind == PrincipalKind::User && p.patient.is_some() {
        all_contexts.push(Context::Patient);
    }
    let mut alternatives = Vec::new();
    for c in all_contexts {
        match p.scopes.grant(c, name, action) {
            Grant::Unrestricted => return None,
            Grant::Filtered(fs) => {
                alternatives.extend(fs.into_iter().map(|f| f.pairs().to_vec()));
            }
            Grant::Denied => {}
        }
    }
    (!alternatives.is_empty()).then(|| ScopeFilter {
        resource_type: name.to_owned(),
        alternatives,
    })
}

/// The audit trail's own rule, outside the role policy (which never grants `AuditEvent`): a
/// person with the auditor role, whose token's scopes allow reading `AuditEvent`
/// (`user/AuditEvent.rs`). Backend clients and every other role are refused, even with `*`
/// scopes.
fn audit_view_access(
    p: &Principal,
    needs: &[(Option<&'static str>, Action)],
) -> Result<Confinement, ServiceError> {
    if p.kind != PrincipalKind::User || !p.roles.contains(&haven_domain::Role::Auditor) {
        return Err(ServiceError::Forbidden(
            "only the auditor role reads the audit trail".into(),
        ));
    }
    for (_, action) in needs {
        if p.scopes.grant(Context::User, "AuditEvent", *action) != Grant::Unrestricted {
            return Err(ServiceError::InsufficientScope(format!(
                "the access token's scopes do not allow this; it needs user/AuditEvent.{}",
                letter(*action)
            )));
        }
    }
    Ok(Confinement::Unconfined)
}

/// The resource types a search's parameters reach besides the searched type: `_include`
/// targets, `_revinclude` sources, `_has` types and chained parameters' targets. `None` stands
/// for "any type". Deliberately an over-approximation: anything that goes further than one
/// typed hop (a chain of chains, a chain inside `_has`, `_has` inside a chain, an untyped
/// chain) counts as reaching every type, so only a caller who may read everything may use it.
fn reached_types(query: &[(String, String)]) -> Vec<Option<String>> {
    let mut out = Vec::new();
    for (k, _) in query {
        let base = k.split(':').next().unwrap_or(k);
        if base == "_include" || base == "_revinclude" {
            // What they add is filtered from the answer instead (`filter_includes`).
            continue;
        }
        if let Some(rest) = k.strip_prefix("_has:") {
            // _has:Type:ref:param — one level with a plain parameter names one type.
            let parts: Vec<&str> = rest.splitn(3, ':').collect();
            match parts.as_slice() {
                [ty, _, param] if !param.contains('.') && !param.contains("_has") => {
                    out.push(Some((*ty).to_owned()));
                }
                _ => out.push(None),
            }
            continue;
        }
        if k.contains('.') {
            // param:Type.target-param reaches Type; anything longer, or untyped, reaches any.
            let hops: Vec<&str> = k.split('.').collect();
            let typed = hops[0].split_once(':').map(|(_, t)| t.to_owned());
            if hops.len() == 2 && !hops[1].contains("_has") && !hops[1].contains(':') {
                out.push(typed);
            } else {
                out.push(None);
            }
        }
    }
    out
}

/// Refuses a search whose `_has` or chained parameters reach a type the caller may not read
/// and search: such criteria would tell what the unreadable resources hold (which patients
/// have an Observation with this code), so they are refused, not filtered. What `_include` and
/// `_revinclude` add is filtered instead (`filter_includes`).
pub(crate) fn check_reach(
    policy: &haven_domain::policy::Policy,
    ctx: &RequestContext,
    query: &[(String, String)],
) -> Result<(), ServiceError> {
    let Some(p) = ctx.principal.as_deref() else {
        return Ok(());
    };
    for ty in reached_types(query) {
        let name = ty.as_deref().unwrap_or("*");
        for action in [Action::Read, Action::Search] {
            let role_ok = policy.decide(&p.roles, name, action) == Decision::Allowed;
            let scope_ok = contexts(p)
                .iter()
                .any(|c| p.scopes.grant(*c, name, action) == Grant::Unrestricted);
            if !(role_ok && scope_ok) {
                return Err(ServiceError::Forbidden(format!(
                    "this search reaches {} resources, which this caller may not {}; name the \
                     target type where a parameter allows it (e.g. _include=Observation:subject:Patient)",
                    if name == "*" { "any type of" } else { name },
                    verb(action)
                )));
            }
        }
    }
    Ok(())
}

/// Whether the caller may read resources of `ty` (role and scope, unconfined).
fn may_read(policy: &haven_domain::policy::Policy, p: &Principal, ty: &str) -> bool {
    policy.decide(&p.roles, ty, Action::Read) == Decision::Allowed
        && contexts(p)
            .iter()
            .any(|c| p.scopes.grant(*c, ty, Action::Read) == Grant::Unrestricted)
}

/// Leaves out of a search answer the resources `_include` and `_revinclude` added that the
/// caller may not read (a registrar's `Patient?_revinclude=Observation:subject` gives the
/// Patients without their Observations). Returns the types left out.
pub(crate) fn filter_includes(
    policy: &haven_domain::policy::Policy,
    ctx: &RequestContext,
    query: &[(String, String)],
    resp: &mut crate::FhirResponse,
) -> Vec<String> {
    let Some(p) = ctx.principal.as_deref() else {
        return Vec::new();
    };
    let includes = query.iter().any(|(k, _)| {
        let base = k.split(':').next().unwrap_or(k);
        base == "_include" || base == "_revinclude"
    });
    let Some(body) = resp.body.as_deref().filter(|_| includes) else {
        return Vec::new();
    };
    let Ok(serde_json::Value::Object(mut bundle)) = serde_json::from_slice(body) else {
        return Vec::new();
    };
    let Some(serde_json::Value::Array(entries)) = bundle.remove("entry") else {
        return Vec::new();
    };
    let mut dropped: Vec<(String, String)> = Vec::new();
    let kept: Vec<serde_json::Value> = entries
        .into_iter()
        .filter(|e| {
            let included = e["search"]["mode"] == "include";
            let ty = e["resource"]["resourceType"].as_str().unwrap_or_default();
            if included && !may_read(policy, p, ty) {
                dropped.push((
                    ty.to_owned(),
                    e["resource"]["id"].as_str().unwrap_or_default().to_owned(),
                ));
                false
            } else {
                true
            }
        })
        .collect();
    bundle.insert("entry".into(), serde_json::Value::Array(kept));
    if dropped.is_empty() {
        return Vec::new();
    }
    if let Ok(b) = serde_json::to_vec(&bundle) {
        resp.body = Some(bytes::Bytes::from(b));
    }
    if let Some(t) = resp.audit.as_mut() {
        t.entities
            .retain(|e| !dropped.contains(&(e.resource_type.clone(), e.id.clone())));
    }
    let mut types: Vec<String> = dropped.into_iter().map(|(t, _)| t).collect();
    types.sort_unstable();
    types.dedup();
    types
}

/// Search criteria that an interaction runs on the caller's behalf (a conditional create's
/// `If-None-Exist`, a transaction's conditional reference): the caller must be allowed to
/// search `ty` unconfined, and every side door of the criteria, since the outcome (created or
/// not, resolved or 412) tells what matched.
pub(crate) fn check_criteria(
    policy: &haven_domain::policy::Policy,
    ctx: &RequestContext,
    ty: haven_domain::ResourceType,
    query: &str,
) -> Result<(), ServiceError> {
    if ctx.principal.is_none() {
        return Ok(());
    }
    let search = Route::Search(SearchScope::Type(ty));
    if scope_filter(ctx, &search).is_some() {
        return Err(ServiceError::Forbidden(
            "conditional interactions are not available to a token whose granular scopes \
             allow searching this type only in part"
                .into(),
        ));
    }
    match check(policy, ctx, &search)? {
        Confinement::Unconfined => {}
        Confinement::Patient(_) | Confinement::OwnPatientFields(_) => {
            return Err(ServiceError::Forbidden(
                "conditional interactions are not available to a caller confined to one \
                 patient's record"
                    .into(),
            ));
        }
    }
    let query = query.strip_prefix('?').unwrap_or(query);
    let pairs = crate::split_url(&format!("?{query}"))?.1;
    check_reach(policy, ctx, &pairs)
}

#[cfg(test)]
mod tests {
    use super::reached_types;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn side_doors_name_the_types_they_reach() {
        let t = |pairs: &[(&str, &str)]| reached_types(&q(pairs));
        // Includes are filtered from the answer, not refused: they reach nothing here.
        assert!(t(&[("_include", "Observation:subject:Patient")]).is_empty());
        assert!(t(&[("_include:iterate", "*")]).is_empty());
        assert!(t(&[("_revinclude", "Observation:subject")]).is_empty());
        assert_eq!(
            t(&[("_has:Observation:subject:_has:AuditEvent:entity:type", "x")]),
            vec![None]
        );
        assert_eq!(
            t(&[("_has:Encounter:subject:code", "x")]),
            vec![Some("Encounter".into())]
        );
        // A chain inside _has, _has inside a chain, two hops: every type.
        assert_eq!(
            t(&[("_has:Encounter:subject:diagnosis.code", "x")]),
            vec![None]
        );
        assert_eq!(
            t(&[("subject:Patient._has:Condition:subject:code", "x")]),
            vec![None]
        );
        assert_eq!(
            t(&[("subject:Patient.general-practitioner.name", "x")]),
            vec![None]
        );
        assert_eq!(
            t(&[(
                "subject:Patient.general-practitioner:Practitioner.name",
                "x"
            )]),
            vec![None]
        );
        assert_eq!(
            t(&[("subject:Patient.name", "x")]),
            vec![Some("Patient".into())]
        );
        assert_eq!(t(&[("subject.name", "x")]), vec![None]);
        assert!(t(&[("code", "x"), ("_count", "5")]).is_empty());
    }
}
