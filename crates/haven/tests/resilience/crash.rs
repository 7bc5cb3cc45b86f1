//! SIGKILL at random moments during concurrent writes, then restart and check.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use haven_store_postgres::testing::TempDatabase;

use crate::helpers::spawn_app_in;
use crate::load::{Ledger, Rng, verify, writer};

fn rounds() -> usize {
    std::env::var("HAVEN_CRASH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(10)
}

fn seed() -> u64 {
    let seed = std::env::var("HAVEN_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("crash test seed: HAVEN_CRASH_SEED={seed}");
    seed
}

async fn crash_rounds(env: &[(&str, &str)], data_dir: &std::path::Path, label: &str) {
    let mut rng = Rng::new(seed());
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    for round in 0..rounds() {
        let started = Instant::now();
        let mut app = spawn_app_in(data_dir, env).await;
        let startup = started.elapsed();
        assert!(
            startup < Duration::from_secs(10),
            "{label}: start-up after a crash took {startup:?}"
        );
        // Everything written before the previous crashes must still be there.
        let known = ledger.lock().unwrap().clone();
        verify(&app.client, &app.base, &known).await;

        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..6)
            .map(|w| {
                tokio::spawn(writer(
                    app.client.clone(),
                    app.base.clone(),
                    format!("{label}-r{round}-w{w}"),
                    ledger.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        let delay = 50 + rng.below(450);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        app.sigkill().await;
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.await.expect("writer task");
        }
    }
    let app = spawn_app_in(data_dir, env).await;
    let l = ledger.lock().unwrap().clone();
    assert!(
        l.acked.len() > 20,
        "{label}: the load acknowledged too little to prove anything ({})",
        l.acked.len()
    );
    eprintln!(
        "{label}: {} rounds, {} acknowledged resources, {} unanswered writes, {} transactions",
        rounds(),
        l.acked.len(),
        l.unknown.len(),
        l.transactions.len()
    );
    verify(&app.client, &app.base, &l).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_keeps_every_acknowledged_write_through_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    crash_rounds(&[], &dir.path().join("data"), "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_keeps_every_acknowledged_write_through_sigkill() {
    let db = TempDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    crash_rounds(
        &[("HAVEN_DATABASE_URL", &db.url)],
        &dir.path().join("data"),
        "postgres",
    )
    .await;
}
