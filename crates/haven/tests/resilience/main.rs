//! Crash and fault tests with real processes: `haven` killed with SIGKILL at random moments
//! under concurrent writes (both backends), and a PostgreSQL server stopped and restarted in the
//! middle of a write load. What was acknowledged must be there; nothing may be half there.
//!
//! `HAVEN_CRASH_ROUNDS` sets the rounds per backend (default 10; `scripts/nightly` runs more) and
//! `HAVEN_CRASH_SEED` replays a run (the seed is printed).

#[allow(dead_code)]
#[path = "../api/helpers.rs"]
mod helpers;

mod cluster;
mod crash;
mod db_faults;
mod load;
