//! `deploy/local/up` and `down`: the whole system on one machine (Haven, the nginx gateway,
//! Prometheus), started as a newcomer would, then used through the gateway with a token.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn script(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../deploy/local/{name}"))
}

#[tokio::test]
async fn the_local_stack_serves_fhir_through_the_gateway_and_is_scraped() {
    if std::process::Command::new("prometheus")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("prometheus is missing: scripts/install-test-tools installs it");
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("stack");
    let (haven, tls, http, prom) = (free_port(), free_port(), free_port(), free_port());
    let env = |cmd: &mut Command| {
        cmd.env("STACK_DIR", &state)
            .env("STACK_HAVEN_BIN", env!("CARGO_BIN_EXE_haven"))
            .env("STACK_HAVEN_PORT", haven.to_string())
            .env("STACK_TLS_PORT", tls.to_string())
            .env("STACK_HTTP_PORT", http.to_string())
            .env("STACK_PROM_PORT", prom.to_string())
            .stdin(Stdio::null());
        for (k, _) in std::env::vars() {
            if k.starts_with("HAVEN_") {
                cmd.env_remove(k);
            }
        }
    };
    let mut up = Command::new(script("up"));
    env(&mut up);
    let out = tokio::time::timeout(Duration::from_secs(120), up.output())
        .await
        .expect("deploy/local/up finished")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let result = async {
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("Haven is up."), "{stdout}");
        // The three commands the script prints, as a newcomer would run them.
        let key = state.join("demo-key.pem");
        // `helpers::haven()` drops the HAVEN_* variables of the test environment.
        let add = crate::helpers::haven()
            .args([
                "client",
                "add",
                "demo",
                "--service",
                "--scope",
                "system/*.cruds",
                "--generate-key",
            ])
            .arg(&key)
            .arg("--data-dir")
            .arg(state.join("data"))
            .output()
            .await
            .unwrap();
        assert!(
            add.status.success(),
            "{}",
            String::from_utf8_lossy(&add.stderr)
        );
        let token = crate::helpers::haven()
            .args(["token", "--client", "demo", "--key"])
            .arg(&key)
            .args(["--url", &format!("http://127.0.0.1:{haven}")])
            .output()
            .await
            .unwrap();
        assert!(
            token.status.success(),
            "{}",
            String::from_utf8_lossy(&token.stderr)
        );
        let token = String::from_utf8_lossy(&token.stdout).trim().to_owned();
        // The suite's HTTP client speaks no TLS; curl does (-k: the stack's self-signed cert).
        let curl = |auth: Option<String>| {
            let mut c = std::process::Command::new("curl");
            c.args(["-sk", "-o", "/dev/null", "-w", "%{http_code}"]);
            if let Some(a) = auth {
                c.args(["-H", &format!("Authorization: Bearer {a}")]);
            }
            c.arg(format!("https://localhost:{tls}/fhir/Patient"));
            String::from_utf8_lossy(&c.output().unwrap().stdout).into_owned()
        };
        assert_eq!(
            curl(None),
            "401",
            "the gateway serves Haven, which wants a token"
        );
        assert_eq!(curl(Some(token)), "200");
        // Prometheus scrapes Haven (the first scrape may take a moment).
        let mut up_seen = false;
        for _ in 0..60 {
            let q = reqwest::get(format!(
                "http://127.0.0.1:{prom}/api/v1/query?query=up%7Bjob%3D%22haven%22%7D"
            ))
            .await;
            if let Ok(r) = q
                && r.text().await.unwrap_or_default().contains("\"1\"]")
            {
                up_seen = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert!(up_seen, "Prometheus never saw Haven up");
    }
    .await;
    let mut down = Command::new(script("down"));
    env(&mut down);
    let stopped = down.output().await.unwrap();
    assert!(stopped.status.success());
    // Nothing keeps listening.
    for port in [haven, tls, prom] {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "port {port} still open after deploy/local/down"
        );
    }
    result
}
