//! PostgreSQL goes away in the middle of a write load and comes back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cluster::Cluster;
use crate::helpers::spawn_app_with;
use crate::load::{Ledger, verify, writer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_gives_fast_503s_and_service_resumes_with_nothing_lost() {
    let cluster = Cluster::start_new();
    let url = cluster.url();
    let app = spawn_app_with(&[("HAVEN_DATABASE_URL", &url)]).await;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            tokio::spawn(writer(
                app.client.clone(),
                app.base.clone(),
                format!("fault-w{w}"),
                ledger.clone(),
                stop.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(800)).await;

    cluster.stop_immediate();
    // While the database is away: fast 503 with Retry-After and a clean OperationOutcome.
    for _ in 0..3 {
        let t = Instant::now();
        let r = app.get("Patient/fault-w0-1").await;
        let took = t.elapsed();
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(
            took < Duration::from_secs(2),
            "a request took {took:?} to fail"
        );
        assert_eq!(r.header("retry-after"), Some("5"));
        let oo = r.json();
        assert_eq!(oo["issue"][0]["code"], "transient");
        let text = r.text().to_lowercase();
        for leak in ["postgres", "connection refused", "sqlx", "io error", "5432"] {
            assert!(!text.contains(leak), "driver detail leaked: {text}");
        }
    }
    assert_eq!(app.get_root("/readyz").await.status, 503);
    assert_eq!(app.get_root("/healthz").await.status, 200);
    tokio::time::sleep(Duration::from_secs(1)).await;

    cluster.start();
    let back = Instant::now();
    loop {
        if app.get_root("/readyz").await.status == 200
            && app.get("Patient/fault-w0-1").await.status != 503
        {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "service did not resume within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "service resumed {:?} after the database returned",
        back.elapsed()
    );
    // Writers keep going a little on the recovered database, then stop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }
    let l = ledger.lock().unwrap().clone();
    assert!(
        l.unavailable > 0,
        "the outage was not noticed by the writers"
    );
    assert!(
        l.acked.len() > 10,
        "too few acknowledged writes: {}",
        l.acked.len()
    );
    verify(&app.client, &app.base, &l).await;
    // The recovered server still accepts writes.
    let r = app
        .post_json("Patient", &serde_json::json!({"resourceType": "Patient"}))
        .await;
    assert_eq!(r.status, 201);
    let _: Value = r.json();
}
