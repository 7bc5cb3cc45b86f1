//! TLS: only 1.2 and 1.3, only AEAD suites with ECDHE, no session tickets, and sslyze's verdict
//! against Mozilla's "intermediate" profile.

use serde_json::Value;

use crate::fixture::{Gateway, INSTALL, run};

/// A legacy protocol attempt. `@SECLEVEL=0` lets our own client offer TLS 1.0/1.1 at all
/// (OpenSSL 3 refuses them at its default level), so the refusal seen is the server's: a
/// `protocol_version` alert.
async fn refused(gw: &Gateway, version: &str) {
    let (ok, out) = gw
        .handshake(&[version, "-cipher", "DEFAULT:@SECLEVEL=0"])
        .await;
    assert!(!ok, "{version} was accepted: {out}");
    assert!(
        out.contains("alert protocol version"),
        "{version}: expected the server's protocol_version alert: {out}"
    );
}

#[tokio::test]
async fn only_tls_1_2_and_1_3_with_aead_suites() {
    let gw = Gateway::start().await;
    refused(&gw, "-tls1").await;
    refused(&gw, "-tls1_1").await;

    for (version, name) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let (ok, out) = gw
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
        assert!(out.contains("ALPN protocol: h2"), "{out}");
        if version == "-tls1_2" {
            assert!(out.contains("Cipher is ECDHE-ECDSA-"), "{out}");
            // ssl_session_tickets off: no ticket, so forward secrecy does not hang on a
            // long-lived ticket key.
            assert!(!out.contains("TLS session ticket:"), "{out}");
        }
    }

    // TLS 1.2 CBC suites (and anything not ECDHE with AES-GCM or ChaCha20) are refused.
    for cipher in ["ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA384"] {
        let (ok, out) = gw.handshake(&["-tls1_2", "-cipher", cipher]).await;
        assert!(!ok, "{cipher} was accepted: {out}");
        assert!(out.contains("alert handshake failure"), "{cipher}: {out}");
    }
}

/// Runs sslyze against `localhost:port` (at 127.0.0.1); returns its success, its report and its
/// JSON result. Also used against Haven's own TLS (`tls_native`).
pub async fn sslyze(port: u16, extra: &[&str]) -> (bool, String, Value) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("sslyze.json");
    let target = format!("localhost:{port}{{127.0.0.1}}");
    let mut args = vec![
        "-m",
        "sslyze",
        "--mozilla_config=intermediate",
        "--http_headers",
        "--json_out",
        json.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    args.push(&target);
    let out = run("python3", &args, None).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named sslyze"),
        "sslyze is not installed; run: {INSTALL}"
    );
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    let result: Value = serde_json::from_slice(
        &std::fs::read(&json).unwrap_or_else(|e| panic!("no sslyze JSON ({e}): {report}{stderr}")),
    )
    .unwrap();
    (out.status.success(), report, result)
}

/// The compliance issues sslyze lists (`* name: explanation` under its compliance heading).
pub fn compliance_issues(report: &str) -> Vec<String> {
    report
        .split("COMPLIANCE AGAINST TLS CONFIGURATION")
        .nth(1)
        .unwrap_or_else(|| panic!("no compliance section: {report}"))
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("* "))
        .filter_map(|l| l.split(':').next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn sslyze_finds_mozilla_intermediate_compliance() {
    let gw = Gateway::start().await;

    // With the throwaway CA as a trust store, sslyze finds nothing to object to.
    let ca = gw.pki.ca.to_str().unwrap().to_owned();
    let (ok, report, json) = sslyze(gw.tls_port, &["--certinfo_ca_file", &ca]).await;
    assert!(ok, "{report}");
    assert!(report.contains("OK - Compliant."), "{report}");
    assert!(compliance_issues(&report).is_empty(), "{report}");

    let server = &json["server_scan_results"][0];
    assert_eq!(server["scan_status"], "COMPLETED", "{server}");
    let r = &server["scan_result"];
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
    // An ECDSA certificate: the ECDSA half of the configured list.
    for suite in accepted("tls_1_2_cipher_suites") {
        assert!(
            [
                "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
                "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
            ]
            .contains(&suite.as_str()),
            "{suite}"
        );
    }
    assert_eq!(accepted("tls_1_2_cipher_suites").len(), 3);
    assert_eq!(accepted("tls_1_3_cipher_suites").len(), 3);
    let curves: Vec<&str> = r["elliptic_curves"]["result"]["supported_curves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(curves, ["X25519", "secp256r1", "secp384r1"]);
    assert_eq!(
        r["tls_fallback_scsv"]["result"]["supports_fallback_scsv"],
        true
    );
    assert_eq!(
        r["tls_compression"]["result"]["supports_compression"],
        false
    );
    assert_eq!(
        r["heartbleed"]["result"]["is_vulnerable_to_heartbleed"],
        false
    );
    assert_eq!(
        r["openssl_ccs_injection"]["result"]["is_vulnerable_to_ccs_injection"],
        false
    );
    assert_eq!(
        r["tls_extended_master_secret"]["result"]["supports_ems_extension"],
        true
    );
    let reneg = &r["session_renegotiation"]["result"];
    assert_eq!(reneg["supports_secure_renegotiation"], true);
    assert_eq!(reneg["is_vulnerable_to_client_renegotiation_dos"], false);
    // sslyze's HSTS check is off in its Mozilla checker (its TODO); checked here instead.
    assert_eq!(
        r["http_headers"]["result"]["strict_transport_security_header"]["max_age"],
        63_072_000
    );
    let trust: Vec<(String, bool)> = r["certificate_info"]["result"]["certificate_deployments"][0]
        ["path_validation_results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["trust_store"]["name"].as_str().unwrap().to_owned(),
                p["was_validation_successful"].as_bool().unwrap(),
            )
        })
        .collect();
    assert!(
        trust.contains(&("Supplied CA file".to_owned(), true)),
        "{trust:?}"
    );

    // Without it the one objection is trust: the public stores do not know the throwaway CA.
    let (ok, report, _) = sslyze(gw.tls_port, &[]).await;
    assert!(!ok, "{report}");
    assert_eq!(
        compliance_issues(&report),
        ["certificate_path_validation"],
        "{report}"
    );
}
