//! Haven's HTTP layer (axum): the only crate that knows about HTTP.
//!
//! It owns routing of URLs to the service, content negotiation (`Accept`, `_format`,
//! `Content-Type`, `Prefer`), request limits, the error-to-OperationOutcome rendering, security
//! headers, request ids, client addresses, metrics and the health endpoints. It never touches
//! storage: every FHIR request goes through [`haven_service::FhirService`].

mod emergency;
mod erasure;
mod fhir;
mod identity;
mod middleware;
mod negotiate;
mod ops;
mod pages;
mod render;

use std::sync::Arc;

use axum::Router;
use axum::routing::{any, get, post};
use haven_identity::Identity;
use haven_service::FhirService;

pub use middleware::{ClientAddress, InvalidTrustedProxy, PeerIdentity, RequestId, TrustedProxies};

/// Renders the Prometheus exposition text; supplied by the binary, which owns the recorder.
pub type MetricsRender = Arc<dyn Fn() -> String + Send + Sync>;

#[derive(Clone)]
pub struct AppState {
    pub service: Arc<FhirService>,
    /// Validates access tokens for the FHIR API and, with the identity module, serves the
    /// OpenID provider.
    pub identity: Arc<Identity>,
    pub metrics: MetricsRender,
    /// When set, `/metrics` requires `Authorization: Bearer <token>`.
    pub metrics_token: Option<Arc<str>>,
    /// Peers whose `X-Forwarded-For` names the client (the gateway); empty trusts none.
    pub trusted_proxies: TrustedProxies,
}

/// Which modules this process serves (`haven serve --role`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Modules {
    /// The FHIR REST API under `/fhir`.
    pub fhir: bool,
    /// The OpenID provider: discovery, JWKS, `/oauth/*`.
    pub identity: bool,
}

impl Modules {
    pub const ALL: Modules = Modules {
        fhir: true,
        identity: true,
    };
}

/// Path prefix of the FHIR base.
pub const FHIR_BASE: &str = "/fhir";

/// Builds the application router for the given modules.
pub fn app(state: AppState, modules: Modules) -> Router {
    let mut router = Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics));
    if modules.identity {
        router = router
            .route(
                "/.well-known/openid-configuration",
                get(identity::openid_configuration),
            )
            .route("/.well-known/jwks.json", get(identity::jwks))
            .route(
                "/.well-known/smart-configuration",
                get(identity::smart_configuration),
            )
            .route("/oauth/authorize", get(identity::authorize))
            .route(
                "/oauth/login",
                get(identity::login_page).post(identity::login_submit),
            )
            .route("/oauth/mfa", post(identity::mfa_submit))
            .route("/oauth/enrol", post(identity::enrol_submit))
            .route(
                "/oauth/consent",
                get(identity::consent_get).post(identity::consent_submit),
            )
            .route("/oauth/token", post(identity::token))
            .route("/oauth/revoke", post(identity::revoke))
            .route("/oauth/introspect", post(identity::introspect))
            .route(
                "/oauth/userinfo",
                get(identity::userinfo).post(identity::userinfo),
            )
            .route(
                "/oauth/logout",
                get(identity::logout).post(identity::logout),
            );
    }
    if modules.fhir {
        // SMART discovery sits at the FHIR base too (App Launch 2.x §2.1), unauthenticated.
        router = router.route(
            &format!("{FHIR_BASE}/.well-known/smart-configuration"),
            get(identity::smart_configuration),
        );
        router = router
            .route(FHIR_BASE, any(fhir::handle))
            .route(&format!("{FHIR_BASE}/"), any(fhir::handle))
            .route(&format!("{FHIR_BASE}/{{*rest}}"), any(fhir::handle));
    }
    router
        .fallback(ops::not_found)
        .layer(axum::middleware::from_fn(middleware::security_headers))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            render::panic_response,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.trusted_proxies.clone(),
            middleware::request_id,
        ))
        .with_state(state)
}
