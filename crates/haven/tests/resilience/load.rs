//! A write load whose outcome is recorded per request, and the checks run after a crash.
//!
//! Writers use client-chosen ids (update-as-create and transaction PUT entries), so even a
//! request whose answer was lost can be looked for afterwards.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

/// A small deterministic PRNG (xorshift64*), so a failing run can be replayed from its seed.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What the writers know: acknowledged versions and attempts whose answer never came.
#[derive(Clone, Default)]
pub struct Ledger {
    /// id -> (acknowledged version, marker written in that version)
    pub acked: HashMap<String, (u64, String)>,
    /// Resources whose latest write was sent but not answered (may or may not exist).
    pub unknown: Vec<String>,
    /// Transactions: the ids of their entries, and whether they were acknowledged.
    pub transactions: Vec<(Vec<String>, bool)>,
    /// Writes refused with 503 while the database was away.
    pub unavailable: usize,
}

pub fn patient(id: &str, marker: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "id": id,
        "active": true,
        "name": [{"text": marker, "family": "Crash"}]
    })
}

fn version_of(v: &Value) -> u64 {
    v["meta"]["versionId"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Runs one writer until `stop` is set or the server goes away. Each iteration creates a new
/// patient, updates it with If-Match, and every third iteration sends a 3-entry transaction.
pub async fn writer(
    client: reqwest::Client,
    base: String,
    tag: String,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut k = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) && k < 10_000 {
        k += 1;
        let id = format!("{tag}-{k}");
        // 1. update-as-create
        let marker = format!("{id}-v1");
        match put(&client, &base, &patient(&id, &marker), None).await {
            Outcome::Ok(v) => {
                ledger.lock().unwrap().acked.insert(id.clone(), (v, marker));
            }
            Outcome::Unavailable => {
                ledger.lock().unwrap().unavailable += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Outcome::Unknown => {
                ledger.lock().unwrap().unknown.push(id);
                continue;
            }
            Outcome::Lost => {
                ledger.lock().unwrap().unknown.push(id);
                return;
            }
        }
        // 2. update guarded by If-Match
        let marker2 = format!("{id}-v2");
        match put(&client, &base, &patient(&id, &marker2), Some(1)).await {
            Outcome::Ok(v) => {
                ledger
                    .lock()
                    .unwrap()
                    .acked
                    .insert(id.clone(), (v, marker2));
            }
            Outcome::Unavailable => ledger.lock().unwrap().unavailable += 1,
            Outcome::Unknown => ledger.lock().unwrap().unknown.push(id.clone()),
            Outcome::Lost => {
                ledger.lock().unwrap().unknown.push(id);
                return;
            }
        }
        // 3. a transaction, all or nothing
        if k.is_multiple_of(3) {
            let ids: Vec<String> = (0..3).map(|e| format!("{tag}-tx{k}-{e}")).collect();
            let bundle = json!({
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": ids.iter().map(|i| json!({
                    "resource": patient(i, &format!("{i}-v1")),
                    "request": {"method": "PUT", "url": format!("Patient/{i}")}
                })).collect::<Vec<_>>()
            });
            let resp = client
                .post(&base)
                .header("content-type", "application/fhir+json")
                .body(bundle.to_string())
                .send()
                .await;
            let acked = match resp {
                Ok(r) if r.status().as_u16() == 200 => true,
                Ok(r) if r.status().as_u16() == 503 => {
                    ledger.lock().unwrap().unavailable += 1;
                    false
                }
                // Outcome unknown: all or nothing must still hold, checked as unacknowledged.
                Ok(r) if r.status().as_u16() == 500 => false,
                Ok(r) => panic!("transaction answered {}", r.status()),
                Err(_) => {
                    ledger.lock().unwrap().transactions.push((ids, false));
                    return;
                }
            };
            let mut l = ledger.lock().unwrap();
            if acked {
                for i in &ids {
                    l.acked.insert(i.clone(), (1, format!("{i}-v1")));
                }
            }
            l.transactions.push((ids, acked));
        }
    }
}

pub enum Outcome {
    Ok(u64),
    Unavailable,
    /// Answered 500 "outcome unknown": the write may or may not be stored; the server lives on.
    Unknown,
    Lost,
}

async fn put(
    client: &reqwest::Client,
    base: &str,
    resource: &Value,
    if_match: Option<u64>,
) -> Outcome {
    let id = resource["id"].as_str().unwrap();
    let mut req = client
        .put(format!("{base}/Patient/{id}"))
        .header("content-type", "application/fhir+json")
        .body(resource.to_string());
    if let Some(v) = if_match {
        req = req.header("if-match", format!("W/\"{v}\""));
    }
    match req.send().await {
        Ok(r) => match r.status().as_u16() {
            200 | 201 => match r.json::<Value>().await {
                Ok(v) => Outcome::Ok(version_of(&v)),
                Err(_) => Outcome::Lost,
            },
            503 => Outcome::Unavailable,
            // The database went away while committing: saved or not, the server cannot know.
            500 => Outcome::Unknown,
            other => panic!("PUT Patient/{id} answered {other}"),
        },
        Err(_) => Outcome::Lost,
    }
}

/// Checks everything the ledger knows against a (restarted) server.
pub async fn verify(client: &reqwest::Client, base: &str, ledger: &Ledger) {
    for (id, (version, marker)) in &ledger.acked {
        // The acknowledged version is readable with the content that was acknowledged...
        let r = client
            .get(format!("{base}/Patient/{id}/_history/{version}"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status().as_u16(),
            200,
            "acknowledged Patient/{id} v{version} is missing"
        );
        let body: Value = r.json().await.unwrap();
        assert_eq!(
            body["name"][0]["text"],
            marker.as_str(),
            "Patient/{id} v{version} has other content"
        );
        // ...and the current version is that one or a later one.
        let cur: Value = client
            .get(format!("{base}/Patient/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(
            version_of(&cur) >= *version,
            "Patient/{id} went back from v{version}"
        );
        check_history(client, base, id).await;
    }
    for id in &ledger.unknown {
        let r = client
            .get(format!("{base}/Patient/{id}"))
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        assert!(
            s == 200 || s == 404,
            "Patient/{id} (unanswered write) is in state {s}"
        );
        if s == 200 {
            check_history(client, base, id).await;
        }
    }
    for (ids, acked) in &ledger.transactions {
        let mut present = 0;
        for id in ids {
            let s = client
                .get(format!("{base}/Patient/{id}"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16();
            assert!(s == 200 || s == 404, "Patient/{id}: {s}");
            if s == 200 {
                present += 1;
            }
        }
        if *acked {
            assert_eq!(
                present,
                ids.len(),
                "an acknowledged transaction lost entries: {ids:?}"
            );
        } else {
            assert!(
                present == 0 || present == ids.len(),
                "a transaction is half there: {present} of {ids:?}"
            );
        }
    }
}

/// A resource's history must hold versions n, n-1, ..., 1 with the newest equal to its head.
async fn check_history(client: &reqwest::Client, base: &str, id: &str) {
    let h: Value = client
        .get(format!("{base}/Patient/{id}/_history?_count=1000"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let versions: Vec<u64> = h["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            e["response"]["etag"]
                .as_str()
                .unwrap()
                .trim_start_matches("W/\"")
                .trim_end_matches('"')
                .parse()
                .unwrap()
        })
        .collect();
    let n = versions.len() as u64;
    let expected: Vec<u64> = (1..=n).rev().collect();
    assert_eq!(
        versions, expected,
        "Patient/{id} has a broken version chain"
    );
}
