//! The scope check: does the caller's access token allow this interaction at all?
//!
//! Called for every interaction before storage is touched, for REST requests and for every
//! entry of a batch or transaction alike. It answers from the token's SMART scopes only:
//! `system/` scopes for a client acting for itself, `user/` scopes for a person. Roles,
//! patient compartments, consent and break-glass refine this decision (issue 6); until
//! compartments are enforced, `patient/` scopes grant nothing here, so a patient-context
//! token cannot reach other patients' data through a missing check, and granular scopes
//! (`patient/Observation.rs?category=...`) grant nothing until their filters are applied.

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
pub(crate) fn check(ctx: &RequestContext, route: &Route) -> Result<(), ServiceError> {
    let Some(p) = ctx.principal.as_deref() else {
        return Ok(());
    };
    for (ty, action) in needs(route) {
        let name = ty.unwrap_or("*");
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
