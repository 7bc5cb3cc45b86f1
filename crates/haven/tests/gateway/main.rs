//! The TLS gateway (`deploy/gateway`) tested as deployed: the template rendered by its own
//! script, run by a real nginx in front of the real `haven` binary, and probed with curl,
//! `openssl s_client` and sslyze.
//!
//! `tls_native` checks the same TLS profile, and mutual TLS and certificate reload, with Haven
//! terminating TLS itself (`[tls]`), no nginx involved.
//!
//! Needs nginx (1.22 or newer), openssl, curl and sslyze on the machine; a missing one fails
//! the test with the install command (`fixture::INSTALL`).

#[allow(dead_code)]
#[path = "../api/helpers.rs"]
mod helpers;

mod fixture;
mod forwarded;
mod http;
mod local_stack;
mod smuggling;
mod tls;
mod tls_native;
