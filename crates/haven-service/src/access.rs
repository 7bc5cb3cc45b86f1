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
//! Until patient compartments are enforced, a role confined to its compartment (`patient`),
//! `patient/` scopes and granular scopes (`?category=...`) grant nothing, so no token can
//! reach other patients' data through a check that does not exist yet. A type or action
//! outside the caller's bounds is 403: it reveals nothing the caller did not already know
//! (the resource types of FHIR are public).

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
        Route::Capabilities | Route::Validate(..) | Route::Bundle => Vec::new(),
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

/// Refuses the interaction unless the caller's scopes allow it. Haven's own commands run
/// without a principal and are not checked here.
pub(crate) fn check(
    policy: &haven_domain::policy::Policy,
    ctx: &RequestContext,
    route: &Route,
) -> Result<(), ServiceError> {
    let Some(p) = ctx.principal.as_deref() else {
        return Ok(());
    };
    let needs = needs(route);
    if !needs.is_empty() && p.roles.is_empty() {
        return Err(ServiceError::Forbidden(
            "this account has no role in Haven; ask an administrator to grant one".into(),
        ));
    }
    for (ty, action) in needs {
        let name = ty.unwrap_or("*");
        match policy.decide(&p.roles, name, action) {
            Decision::Allowed => {}
            Decision::InCompartment => {
                return Err(ServiceError::Forbidden(
                    "this role may see only its own patient record, which this server cannot \
                     confine requests to yet"
                        .into(),
                ));
            }
            Decision::Denied => {
                return Err(ServiceError::Forbidden(format!(
                    "the role {} may not {} {name}",
                    p.role_names(),
                    verb(action)
                )));
            }
        }
        // A granular scope (`?category=...`) grants only what matches its filter; until the
        // filters are applied to results (issue 6) it grants nothing.
        let ok = contexts(p)
            .iter()
            .any(|c| p.scopes.grant(*c, name, action) == Grant::Unrestricted);
        if !ok {
            let prefix = contexts(p)[0].as_str();
            return Err(ServiceError::InsufficientScope(format!(
                "the access token's scopes do not allow this; it needs {prefix}/{name}.{}",
                letter(action)
            )));
        }
    }
    Ok(())
}
