//! Haven's identity provider: accounts with Argon2id passwords and TOTP second factors,
//! throttled logins, browser sessions, the OAuth 2.0 / OpenID Connect / SMART App Launch flows
//! with PKCE, refresh-token rotation with reuse detection, client credentials with
//! `private_key_jwt`, the hospital directory (LDAP), trusted external issuers, and the
//! validation of access tokens for the FHIR API.
//!
//! No HTTP library: `haven-http` renders the pages and endpoints and calls [`Identity`]. State
//! lives in the shared database (`haven_store::records`), so any replica can continue any
//! login and every replica validates the same tokens. Every security event is written to the
//! audit trail in the same unit of work as the change it describes.

pub mod admin;
mod core;
pub mod emergency;
pub mod error;
pub mod events;
pub mod external;
pub mod hasher;
pub mod keys;
pub mod ldap;
pub mod login;
pub mod oauth;
pub mod password_policy;
pub mod qr;
pub mod ratelimit;
pub mod records;
pub mod resource;
pub mod settings;
pub mod throttle;
pub mod username;

pub use admin::{NewClient, NewUser};
pub use core::Identity;
pub use error::{IdentityError, OAuthError};
pub use events::EventContext;
pub use external::JsonFetcher;
pub use settings::{IdentitySettings, TrustedIssuer};
