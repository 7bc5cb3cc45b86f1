//! Haven terminating TLS itself (`[tls]`, issue 8): the real binary, certificates from its own
//! `haven dev-certs`, probed with `openssl s_client`, curl and sslyze. The same profile as the
//! nginx gateway (`tls.rs`): TLS 1.2 and 1.3 only, Mozilla intermediate suites; plus mutual TLS,
//! the client certificate's name in the access log, certificate reload without a restart, and
//! a bounded handshake.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::io::AsyncReadExt;

use crate::fixture::run;
use crate::helpers::{self, TestApp};
use crate::tls::{compliance_issues, sslyze};

/// How long a changed certificate may take to be served (`reload_seconds` is 1 here).
const RELOAD_WAIT: Duration = Duration::from_secs(15);

/// `haven dev-certs --out DIR [--client NAME]`, as an operator runs it.
async fn dev_certs(out: &Path, client: Option<&str>) {
    let mut cmd = helpers::haven();
    cmd.arg("dev-certs").arg("--out").arg(out);
    if let Some(c) = client {
        cmd.args(["--client", c]);
    }
    let done = cmd.output().await.expect("run haven dev-certs");
    let stdout = String::from_utf8_lossy(&done.stdout);
    assert!(
        done.status.success(),
        "haven dev-certs failed: {}",
        String::from_utf8_lossy(&done.stderr)
    );
    // It prints the configuration to use.
    assert!(stdout.contains("[tls]"), "{stdout}");
    assert!(stdout.contains("HAVEN_TLS__CERT_FILE="), "{stdout}");
}

fn s(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

/// A Haven serving TLS with a development CA (and, for mutual TLS, requiring client
/// certificates from it), its certificates, and the `[tls]` environment it runs with.
struct Native {
    app: TestApp,
    certs: PathBuf,
    env: Vec<(String, String)>,
    port: u16,
    dir: TempDir,
}

impl Native {
    async fn start(mutual: bool) -> Native {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        dev_certs(&certs, Some("lab")).await;
        // Served from copies, so a test can replace them as an operator (or cert-manager) would.
        let served = dir.path().join("served");
        std::fs::create_dir(&served).unwrap();
        for f in ["server.pem", "server.key"] {
            std::fs::copy(certs.join(f), served.join(f)).unwrap();
        }
        let mut env = vec![
            ("HAVEN_TLS__CERT_FILE", served.join("server.pem")),
            ("HAVEN_TLS__KEY_FILE", served.join("server.key")),
        ];
        if mutual {
            env.push(("HAVEN_TLS__CLIENT_CA_FILE", certs.join("ca.pem")));
        }
        let mut env: Vec<(String, String)> = env
            .into_iter()
            .map(|(k, v)| (k.to_owned(), s(&v).to_owned()))
            .collect();
        env.push(("HAVEN_TLS__RELOAD_SECONDS".into(), "1".into()));
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let app = helpers::spawn_app_with(&pairs).await;
        let port = app.addr.rsplit(':').next().unwrap().parse().unwrap();
        Native {
            app,
            certs,
            env,
            port,
            dir,
        }
    }

    fn cert(&self, name: &str) -> String {
        s(&self.certs.join(name)).to_owned()
    }

    /// `openssl s_client` to Haven with `options`, trusting the development CA; success and
    /// everything it printed.
    async fn handshake(&self, options: &[&str]) -> (bool, String) {
        let connect = format!("127.0.0.1:{}", self.port);
        let ca = self.cert("ca.pem");
        let mut args = vec![
            "s_client",
            "-connect",
            &connect,
            "-servername",
            "localhost",
            "-verify_return_error",
            "-CAfile",
            &ca,
        ];
        args.extend_from_slice(options);
        let out = run("openssl", &args, None).await;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// curl `https://127.0.0.1:PORT{path}` with the development CA and `args`; curl's exit
    /// code, the HTTP status (0 without an answer), headers and body.
    async fn curl(&self, path: &str, args: &[&str]) -> (Option<i32>, u16, String) {
        let url = format!("https://127.0.0.1:{}{path}", self.port);
        let ca = self.cert("ca.pem");
        let mut all = vec!["-sS", "-i", "--max-time", "20", "--cacert", &ca];
        all.extend_from_slice(args);
        all.push(&url);
        let out = run("curl", &all, None).await;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let status = text
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let err = String::from_utf8_lossy(&out.stderr);
        (out.status.code(), status, format!("{text}{err}"))
    }

    /// The certificate Haven serves now, as base64 DER (no verification: it may be from a new
    /// CA).
    async fn served_cert(&self) -> String {
        let connect = format!("127.0.0.1:{}", self.port);
        let out = run(
            "openssl",
            &["s_client", "-connect", &connect, "-servername", "localhost"],
            None,
        )
        .await;
        pem_body(&String::from_utf8_lossy(&out.stdout)).unwrap_or_else(|| {
            panic!(
                "no certificate in: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// `haven healthcheck [--ready]` with the server's own configuration.
    async fn healthcheck(&self, ready: bool) -> (bool, String) {
        let mut cmd = helpers::haven();
        cmd.args([
            "healthcheck",
            "--listen",
            &format!("127.0.0.1:{}", self.port),
        ]);
        if ready {
            cmd.arg("--ready");
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let out = cmd.output().await.unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }
}

/// The base64 body of the first PEM certificate in `text`, whitespace removed.
fn pem_body(text: &str) -> Option<String> {
    let start = text.find("-----BEGIN CERTIFICATE-----")? + "-----BEGIN CERTIFICATE-----".len();
    let end = start + text[start..].find("-----END CERTIFICATE-----")?;
    Some(text[start..end].split_whitespace().collect())
}

#[tokio::test]
async fn only_tls_1_2_and_1_3_with_intermediate_suites() {
    let h = Native::start(false).await;
    // Legacy protocols: `@SECLEVEL=0` lets OpenSSL 3 offer them at all, so the refusal is the
    // server's. (rustls answers a hello without TLS 1.2 or 1.3 with a handshake_failure alert,
    // where nginx sends protocol_version; either way nothing is negotiated.)
    for legacy in ["-tls1", "-tls1_1"] {
        let (ok, out) = h
            .handshake(&[legacy, "-cipher", "DEFAULT:@SECLEVEL=0"])
            .await;
        assert!(!ok, "{legacy} was accepted: {out}");
        assert!(
            out.contains("alert handshake failure") || out.contains("alert protocol version"),
            "{legacy}: expected the server's alert: {out}"
        );
        assert!(out.contains("Cipher is (NONE)"), "{legacy}: {out}");
    }
    for (version, name) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let (ok, out) = h
            .handshake(&[
                version,
                "-verify_hostname",
                "localhost",
                "-alpn",
                "h2,http/1.1",
            ])
            .await;
        assert!(ok, "{version} failed: {out}");
        assert!(out.contains(&format!("New, {name}, Cipher is")), "{out}");
        assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
        // Only HTTP/1.1 is offered, whatever the client prefers.
        assert!(out.contains("ALPN protocol: http/1.1"), "{out}");
        if version == "-tls1_2" {
            assert!(out.contains("Cipher is ECDHE-ECDSA-"), "{out}");
        }
    }
    // Not in the intermediate profile: RSA key exchange, CBC, SHA-1 MACs.
    for cipher in [
        "AES128-SHA",
        "ECDHE-ECDSA-AES128-SHA",
        "ECDHE-ECDSA-AES256-SHA384",
    ] {
        let (ok, out) = h.handshake(&["-tls1_2", "-cipher", cipher]).await;
        assert!(!ok, "{cipher} was accepted: {out}");
        assert!(out.contains("alert handshake failure"), "{cipher}: {out}");
    }
    // HTTP over it, with HSTS; the plain port is gone.
    let (code, status, text) = h.curl("/fhir/metadata", &[]).await;
    assert_eq!((code, status), (Some(0), 200), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("strict-transport-security: max-age=63072000"),
        "{text}"
    );
    let plain = reqwest::get(format!("http://127.0.0.1:{}/healthz", h.port)).await;
    assert!(plain.is_err(), "plain HTTP was answered: {plain:?}");
    // The start-up line says so, and the base URL is https.
    let started = h
        .app
        .logs()
        .into_iter()
        .find(|l| l.contains("haven listening"))
        .unwrap();
    assert!(started.contains("\"tls\":true"), "{started}");
    assert!(h.app.base.starts_with("https://"), "{}", h.app.base);
    // The container health check speaks TLS, trusting exactly the configured certificate.
    for ready in [false, true] {
        let (ok, out) = h.healthcheck(ready).await;
        assert!(ok, "healthcheck (ready: {ready}): {out}");
    }
}

#[tokio::test]
async fn sslyze_finds_mozilla_intermediate_compliance() {
    let h = Native::start(false).await;
    let ca = h.cert("ca.pem");
    let (ok, report, json) = sslyze(h.port, &["--certinfo_ca_file", &ca]).await;
    assert!(ok, "{report}");
    assert!(report.contains("OK - Compliant."), "{report}");
    assert!(compliance_issues(&report).is_empty(), "{report}");
    let r = &json["server_scan_results"][0]["scan_result"];
    for (field, supported) in [
        ("ssl_2_0_cipher_suites", false),
        ("ssl_3_0_cipher_suites", false),
        ("tls_1_0_cipher_suites", false),
        ("tls_1_1_cipher_suites", false),
        ("tls_1_2_cipher_suites", true),
        ("tls_1_3_cipher_suites", true),
    ] {
        assert_eq!(
            r[field]["result"]["is_tls_version_supported"], supported,
            "{field}: {}",
            r[field]
        );
    }
    let accepted = |field: &str| -> Vec<String> {
        r[field]["result"]["accepted_cipher_suites"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["cipher_suite"]["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let mut tls12 = accepted("tls_1_2_cipher_suites");
    tls12.sort();
    // An ECDSA certificate (dev-certs): the ECDSA half of the configured list.
    assert_eq!(
        tls12,
        [
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        ]
    );
    assert_eq!(accepted("tls_1_3_cipher_suites").len(), 3);
    let curves: Vec<&str> = r["elliptic_curves"]["result"]["supported_curves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(curves, ["X25519", "secp256r1", "secp384r1"]);
    assert_eq!(
        r["tls_compression"]["result"]["supports_compression"],
        false
    );
    assert_eq!(
        r["heartbleed"]["result"]["is_vulnerable_to_heartbleed"],
        false
    );
    let reneg = &r["session_renegotiation"]["result"];
    assert_eq!(reneg["is_vulnerable_to_client_renegotiation_dos"], false);

    // Without the development CA, the one objection is trust, as for the gateway.
    let (ok, report, _) = sslyze(h.port, &[]).await;
    assert!(!ok, "{report}");
    assert_eq!(
        compliance_issues(&report),
        ["certificate_path_validation"],
        "{report}"
    );
}

#[tokio::test]
async fn mutual_tls_requires_a_client_certificate_from_the_configured_ca() {
    let h = Native::start(true).await;
    // No certificate: the handshake is refused (TLS 1.3 reports it after the client's Finished,
    // so curl sees an alert or a reset, never an HTTP answer).
    let (code, status, text) = h.curl("/fhir/metadata", &[]).await;
    assert_ne!(code, Some(0), "{text}");
    assert_eq!(status, 0, "{text}");
    // A certificate from another CA: refused too.
    let other = h.dir.path().join("other");
    dev_certs(&other, Some("lab")).await;
    let (cert, key) = (other.join("client-lab.pem"), other.join("client-lab.key"));
    let (code, status, text) = h
        .curl("/fhir/metadata", &["--cert", s(&cert), "--key", s(&key)])
        .await;
    assert_ne!(code, Some(0), "{text}");
    assert_eq!(status, 0, "{text}");
    // The development client certificate gets through; its name is in the access log line.
    let (cert, key) = (h.cert("client-lab.pem"), h.cert("client-lab.key"));
    let (code, status, text) = h
        .curl(
            "/fhir/metadata",
            &["--cert", &cert, "--key", &key, "-H", "X-Request-Id: mtls-1"],
        )
        .await;
    assert_eq!((code, status), (Some(0), 200), "{text}");
    let line = crate::fixture::haven_log_line(&h.app, "mtls-1").await;
    assert_eq!(line["span"]["peer_certificate"], "dns:lab", "{line}");
    assert_eq!(line["span"]["client_address"], "127.0.0.1", "{line}");
    // Without a client certificate the health check can only see the TLS listener answer.
    let (ok, out) = h.healthcheck(false).await;
    assert!(ok, "{out}");
    let (ok, out) = h.healthcheck(true).await;
    assert!(!ok && out.contains("mutual TLS"), "{out}");
}

#[tokio::test]
async fn a_replaced_certificate_is_served_without_a_restart() {
    let h = Native::start(false).await;
    let served_dir = h.dir.path().join("served");
    let first = pem_body(&std::fs::read_to_string(served_dir.join("server.pem")).unwrap()).unwrap();
    assert_eq!(h.served_cert().await, first);
    let pid = h.app.pid();

    // A new certificate and key (another serial, another validity), written in place.
    let next = h.dir.path().join("next");
    dev_certs(&next, None).await;
    std::fs::copy(next.join("server.key"), served_dir.join("server.key")).unwrap();
    std::fs::copy(next.join("server.pem"), served_dir.join("server.pem")).unwrap();
    let second = pem_body(&std::fs::read_to_string(next.join("server.pem")).unwrap()).unwrap();
    assert_ne!(first, second);
    let started = Instant::now();
    while h.served_cert().await != second {
        assert!(
            started.elapsed() < RELOAD_WAIT,
            "the new certificate was not served within {RELOAD_WAIT:?}: {:?}",
            h.app.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(h.app.pid(), pid, "the server restarted");
    assert!(
        h.app
            .wait_for_log(|l| l.contains("TLS certificate reloaded"))
            .await
            .is_some()
    );

    // A broken certificate is refused and logged; the last good one stays.
    std::fs::write(served_dir.join("server.pem"), "not a certificate\n").unwrap();
    let line = h
        .app
        .wait_for_log(|l| l.contains("cannot be used") && l.contains("ERROR"))
        .await;
    assert!(line.is_some(), "no error logged: {:?}", h.app.logs());
    assert_eq!(h.served_cert().await, second);
    let (code, status, text) = h
        .curl("/healthz", &["--cacert", s(&next.join("ca.pem"))])
        .await;
    assert_eq!((code, status), (Some(0), 200), "{text}");
}

#[tokio::test]
async fn a_silent_client_is_dropped_after_the_handshake_timeout() {
    let h = Native::start(false).await;
    let mut silent = tokio::net::TcpStream::connect(("127.0.0.1", h.port))
        .await
        .unwrap();
    // Others are not held up by it.
    let (code, status, text) = h.curl("/healthz", &[]).await;
    assert_eq!((code, status), (Some(0), 200), "{text}");
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(20), silent.read(&mut buf))
        .await
        .expect("the server kept a silent connection open for 20 s");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let waited = started.elapsed();
    assert!(
        (Duration::from_secs(7)..Duration::from_secs(13)).contains(&waited),
        "closed after {waited:?}, expected about 10 s"
    );
}

#[tokio::test]
async fn sigterm_stops_a_tls_server_cleanly() {
    let mut h = Native::start(false).await;
    // One connection served and kept alive, one still in its handshake: neither holds up the
    // shutdown (axum closes idle connections; handshakes die with the accept task).
    let (code, status, text) = h.curl("/healthz", &[]).await;
    assert_eq!((code, status), (Some(0), 200), "{text}");
    let _silent = tokio::net::TcpStream::connect(("127.0.0.1", h.port))
        .await
        .unwrap();
    h.app.sigterm();
    let status = h.app.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{status:?}: {}", h.app.stderr());
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", h.port))
            .await
            .is_err(),
        "the port still accepts connections"
    );
    assert!(
        h.app
            .wait_for_log(|l| l.contains("\"stopped\""))
            .await
            .is_some()
    );
}
