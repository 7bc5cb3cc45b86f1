//! Fixtures shared by the integration tests (each `tests/*.rs` is its own crate and includes
//! this module with `mod common;`).

// Each test binary uses a different part of the fixtures; what one leaves unused is not dead.
#![allow(dead_code)]

pub mod slapd;
