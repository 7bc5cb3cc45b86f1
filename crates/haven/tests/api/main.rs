//! Haven's one integration-test binary: every test starts the real `haven` executable on its
//! own port and data directory and talks to it over HTTP (or runs a CLI subcommand), exactly as
//! a client or operator would. Modules follow the areas of the FHIR RESTful API (R4 http.html)
//! plus the operational surface.

mod audit;
mod audit_view;
mod authorization;
mod backup;
mod binary;
mod bundle;
mod compartment;
mod conditional;
mod consent;
mod crud;
mod encryption;
mod errors_limits;
mod helpers;
mod history;
mod identity;
mod identity_ops;
mod negotiation;
mod ops;
mod process;
mod reindex;
mod search;
mod validation;
