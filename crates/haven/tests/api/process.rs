//! The process as an operator sees it: durability across a crash, graceful shutdown, refusing
//! unsafe listen addresses, `config check` and `healthcheck`.

use std::process::Stdio;
use std::time::Duration;

use futures::future::join_all;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{entries, haven, patient, spawn_app, spawn_app_in, with_id};

fn numbered_patient(i: usize) -> Value {
    let mut p = patient();
    p["name"][0]["family"] = json!(format!("Durable{i}"));
    p
}

#[tokio::test]
async fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut app = spawn_app_in(&data, &[]).await;

    let app_ref = &app;
    let creates = join_all(
        (0..50).map(|i| async move { app_ref.post_json("Patient", &numbered_patient(i)).await }),
    )
    .await;
    let mut acknowledged: Vec<Value> = creates
        .iter()
        .map(|r| {
            r.assert_status(201);
            r.json()
        })
        .collect();
    let updates = join_all(acknowledged.iter().take(10).map(|p| {
        let mut changed = p.clone();
        changed["active"] = json!(false);
        async move { app_ref.put(&changed).await }
    }))
    .await;
    for (slot, updated) in acknowledged.iter_mut().zip(updates) {
        assert_eq!(updated["meta"]["versionId"], "2");
        *slot = updated;
    }
    app.sigkill().await;

    let restarted = spawn_app_in(&data, &[]).await;
    for expected in &acknowledged {
        let id = expected["id"].as_str().unwrap();
        let resp = restarted.get(&format!("Patient/{id}")).await;
        resp.assert_status(200);
        assert_eq!(&resp.json(), expected, "Patient/{id} after the crash");
    }
    let history = restarted.get("_history?_count=100").await.json();
    assert_eq!(entries(&history).len(), 60);
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_request_finish_then_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut app = spawn_app_in(&data, &[]).await;
    let body = patient().to_string();
    let (first_half, second_half) = body.as_bytes().split_at(body.len() / 2);

    let mut stream = TcpStream::connect(&app.addr).await.unwrap();
    // A first request on the connection proves the server is serving it.
    let probe = format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", app.addr);
    stream.write_all(probe.as_bytes()).await.unwrap();
    let mut buf = [0_u8; 1024];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let head = format!(
        "POST /fhir/Patient HTTP/1.1\r\nHost: {}\r\nContent-Type: application/fhir+json\r\n\
         Authorization: Bearer {}\r\nContent-Length: {}\r\n\r\n",
        app.addr,
        app.token,
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(first_half).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    app.sigterm();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        TcpStream::connect(&app.addr).await.is_err(),
        "new connections must be refused once shutdown has begun"
    );
    stream.write_all(second_half).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("the in-flight request is answered and the connection closed")
        .unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");

    let status = app.wait_exit(Duration::from_secs(5)).await;
    assert!(
        status.success(),
        "exit status {status:?}; stderr: {}",
        app.stderr()
    );
    // The drain thread may read the last stdout line a moment after the exit.
    assert!(
        app.wait_for_log(|l| l.contains("\"stopped\""))
            .await
            .is_some(),
        "no 'stopped' log line in {:?}",
        app.logs()
    );

    // What was acknowledged during shutdown is stored.
    let location = response
        .lines()
        .find_map(|l| l.strip_prefix("location: "))
        .expect("a Location header")
        .trim()
        .to_owned();
    let id = location.split('/').rev().nth(2).unwrap().to_owned();
    let restarted = spawn_app_in(&data, &[]).await;
    restarted
        .get(&format!("Patient/{id}"))
        .await
        .assert_status(200);
}

/// Passwords and tokens must not cross a network in clear: a non-loopback address needs
/// `[tls]`, or a declared gateway (`behind_gateway` with `trusted_proxies` and an https
/// public URL) that terminates TLS in front. An https public URL alone no longer suffices.
#[tokio::test]
async fn non_loopback_addresses_need_tls_or_a_declared_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let https = ("HAVEN_PUBLIC_URL", "https://ehr.example.org/fhir");
    let gateway = ("HAVEN_BEHIND_GATEWAY", "true");
    for (listen, env, expected) in [
        ("0.0.0.0:0", vec![], "behind_gateway"),
        ("[::]:0", vec![https], "behind_gateway"),
        ("192.0.2.1:8080", vec![https], "[tls]"),
        ("0.0.0.0:0", vec![https, gateway], "trusted_proxies"),
        (
            "0.0.0.0:0",
            vec![
                ("HAVEN_PUBLIC_URL", "http://ehr.example.org/fhir"),
                gateway,
                ("HAVEN_TRUSTED_PROXIES", "10.0.0.0/8"),
            ],
            "https:// public_url",
        ),
    ] {
        let out = haven()
            .args(["serve", "--listen", listen, "--data-dir"])
            .arg(dir.path().join("data"))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{listen} {env:?} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{listen} {env:?}: {stderr}");
    }
    // Declared, the configuration is valid.
    let out = haven()
        .args(["config", "check", "--listen", "0.0.0.0:8080"])
        .envs([https, gateway, ("HAVEN_TRUSTED_PROXIES", "10.0.0.0/8")])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("behind_gateway = true"));
}

#[tokio::test]
async fn config_check_prints_the_effective_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let out = haven()
        .args(["config", "check"])
        .current_dir(dir.path())
        .output()
        .await
        .unwrap();

    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("listen = \"127.0.0.1:8080\""), "{printed}");
    assert!(printed.contains("[limits]"), "{printed}");

    let from_env = haven()
        .args(["config", "check"])
        .current_dir(dir.path())
        .env("HAVEN_LIMITS__MAX_BUNDLE_ENTRIES", "77")
        .output()
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&from_env.stdout).contains("max_bundle_entries = 77"));
}

#[tokio::test]
async fn config_check_rejects_invalid_values_clearly() {
    let cases = [
        ("HAVEN_LIMITS__MAX_JSON_DEPTH", "2", "max_json_depth"),
        ("HAVEN_LIMITS__MAX_BODY_BYTES", "lots", "max_body_bytes"),
        ("HAVEN_METRICS__TOKEN", "short", "16"),
        ("HAVEN_LISTN", "127.0.0.1:1", "listn"),
    ];
    for (key, value, mentioned) in cases {
        let out = haven()
            .args(["config", "check"])
            .env(key, value)
            .output()
            .await
            .unwrap();

        assert_eq!(out.status.code(), Some(2), "{key}={value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(mentioned), "{key}={value}: {stderr}");
        assert!(
            out.stdout.is_empty(),
            "nothing is printed for an invalid configuration"
        );
    }
}

#[tokio::test]
async fn config_check_redacts_secrets_read_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "file-secret-token-7f3a9c2e51";
    let token_file = dir.path().join("metrics-token");
    std::fs::write(&token_file, format!("{secret}\n")).unwrap();

    let out = haven()
        .args(["config", "check"])
        .env("HAVEN_METRICS__TOKEN_FILE", &token_file)
        .output()
        .await
        .unwrap();

    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("[redacted]"), "{stdout}");
    assert!(!stdout.contains(secret) && !stderr.contains(secret));
}

#[tokio::test]
async fn healthcheck_reports_a_running_server_healthy() {
    let app = spawn_app().await;

    let out = haven()
        .args(["healthcheck", "--listen", &app.addr])
        .output()
        .await
        .unwrap();

    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("healthy"));

    // --ready probes /readyz (the database answers) instead of /healthz.
    let out = haven()
        .args(["healthcheck", "--ready", "--listen", &app.addr])
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn healthcheck_fails_when_nothing_listens() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };

    let out = haven()
        .args(["healthcheck", "--listen", &closed])
        .output()
        .await
        .unwrap();

    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unhealthy"));
}

/// A restart keeps data and ids: the server reopens the same database.
#[tokio::test]
async fn restart_on_the_same_data_directory_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut app = spawn_app_in(&data, &[]).await;
    let stored = app.put(&with_id(patient(), "kept")).await;
    app.sigterm();
    assert!(app.wait_exit(Duration::from_secs(10)).await.success());

    let again = spawn_app_in(&app.data_dir, &[]).await;
    assert_eq!(again.get("Patient/kept").await.json(), stored);
    let updated = again.put(&stored).await;
    assert_eq!(updated["meta"]["versionId"], "2");
}
