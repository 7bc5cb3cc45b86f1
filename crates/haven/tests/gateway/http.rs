//! HTTPS through the gateway: FHIR works end to end, every response carries the security
//! headers exactly once, and the gateway's own limits (body size, rate, plain HTTP, /metrics,
//! Haven down) answer as documented.

use crate::fixture::{Gateway, HttpsResp, Options};
use crate::helpers::patient;

const FHIR_JSON: &str = "Content-Type: application/fhir+json";

/// The headers the gateway promises on every HTTPS response, its own errors included.
#[track_caller]
fn assert_security_headers(resp: &HttpsResp) {
    assert_eq!(
        resp.header("strict-transport-security"),
        Some("max-age=63072000")
    );
    assert_eq!(resp.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(resp.header("x-frame-options"), Some("DENY"));
    assert_eq!(resp.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(resp.header("server"), Some("nginx"), "no version");
    let id = resp.header("x-request-id").expect("x-request-id");
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    assert!(resp.header("content-security-policy").is_some());
}

#[tokio::test]
async fn fhir_create_and_read_over_https() {
    let gw = Gateway::start().await;
    for version in ["--http1.1", "--http2"] {
        let body = patient().to_string();
        let created = gw
            .curl(
                "/fhir/Patient",
                &[version, "-H", FHIR_JSON, "--data-binary", &body],
            )
            .await;
        created.assert_status(201);
        assert_eq!(created.http_version, version.trim_start_matches("--http"));
        assert_security_headers(&created);
        // Haven names the gateway's URL (public_url), not its own loopback address.
        let location = created.header("location").expect("location");
        assert!(
            location.starts_with(&gw.url("/fhir/Patient/")),
            "{location}"
        );
        let id = created.json()["id"].as_str().unwrap().to_owned();

        let read = gw.curl(&format!("/fhir/Patient/{id}"), &[version]).await;
        read.assert_status(200);
        assert_security_headers(&read);
        assert_eq!(read.json()["name"], patient()["name"]);
        assert_eq!(read.header("etag"), Some("W/\"1\""));
        // Haven's own headers pass through untouched.
        assert_eq!(read.header("cache-control"), Some("no-store"));
        // The strict policy, since Haven set none for JSON.
        assert!(
            read.header("content-security-policy")
                .unwrap()
                .starts_with("default-src 'none'; frame-ancestors 'none'")
        );
        // The id nginx logged is the id Haven logged and answered with.
        let request_id = read.header("x-request-id").unwrap().to_owned();
        let line = crate::fixture::haven_log_line(&gw.app, &request_id).await;
        assert_eq!(line["span"]["interaction"], "read");
        assert!(
            gw.access_log()
                .iter()
                .any(|l| l["request_id"] == request_id && l["status"] == 200)
        );
    }
}

#[tokio::test]
async fn native_binary_keeps_havens_sandbox_policy() {
    let gw = Gateway::start().await;
    let created = gw
        .curl(
            "/fhir/Binary",
            &[
                "-H",
                "Content-Type: text/html",
                "--data-binary",
                "<script>alert(1)</script>",
            ],
        )
        .await;
    created.assert_status(201);
    let id = created.json()["id"].as_str().unwrap().to_owned();
    let native = gw
        .curl(&format!("/fhir/Binary/{id}"), &["-H", "Accept: text/html"])
        .await;
    native.assert_status(200);
    assert_security_headers(&native);
    assert_eq!(
        native.header("content-security-policy"),
        Some("default-src 'none'; sandbox")
    );
}

#[tokio::test]
async fn bodies_over_havens_limit_stop_at_the_gateway() {
    let gw = Gateway::start().await;
    let dir = tempfile::tempdir().unwrap();
    let limit = 8 * 1024 * 1024; // Haven's default limits.max_body_bytes
    for (size, reaches_haven) in [(limit + 1, false), (limit, true)] {
        let file = dir.path().join(format!("body-{size}"));
        std::fs::write(&file, vec![b' '; size]).unwrap();
        let before = gw.haven_requests();
        let data = format!("@{}", file.display());
        let resp = gw
            .curl("/fhir/Patient", &["-H", FHIR_JSON, "--data-binary", &data])
            .await;
        assert_security_headers(&resp);
        if reaches_haven {
            // Exactly at the limit the body passes nginx; Haven reads it and refuses it as
            // FHIR (blank JSON), not as too large.
            resp.assert_status(400);
            assert_eq!(resp.json()["resourceType"], "OperationOutcome");
            let line =
                crate::fixture::haven_log_line(&gw.app, resp.header("x-request-id").unwrap()).await;
            assert_eq!(line["status"], 400);
        } else {
            resp.assert_status(413);
            assert!(
                resp.header("content-type")
                    .unwrap()
                    .starts_with("application/fhir+json")
            );
            let oo = resp.json();
            assert_eq!(oo["resourceType"], "OperationOutcome");
            assert_eq!(oo["issue"][0]["code"], "too-costly");
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            assert_eq!(
                gw.haven_requests(),
                before,
                "Haven must not see the request"
            );
        }
    }
}

#[tokio::test]
async fn plain_http_only_redirects_and_metrics_stay_inside() {
    let gw = Gateway::start().await;
    let url = format!("http://127.0.0.1:{}/fhir/Patient?name=x", gw.http_port);
    let resp = gw.curl_url(&url, &[]).await;
    resp.assert_status(301);
    assert_eq!(
        resp.header("location"),
        Some(format!("https://127.0.0.1:{}/fhir/Patient?name=x", gw.tls_port).as_str())
    );
    assert_eq!(resp.header("server"), Some("nginx"));
    // HSTS over plain HTTP means nothing to browsers (RFC 6797 8.1); it is sent over TLS.
    assert_eq!(resp.header("strict-transport-security"), None);
    assert_eq!(gw.haven_requests(), 0);

    // Prometheus scrapes Haven on loopback; the gateway does not expose /metrics.
    let metrics = gw.curl("/metrics", &[]).await;
    metrics.assert_status(404);
    assert_security_headers(&metrics);
    assert!(!metrics.text().contains("haven_http_requests_total"));
    gw.curl("/healthz", &[]).await.assert_status(200);
}

#[tokio::test]
async fn bursts_beyond_the_rate_get_429() {
    let gw = Gateway::start_with(Options {
        // One request a minute: nothing refills while the test runs, so the count is exact.
        rate: "1r/m",
        burst: 3,
        ..Options::default()
    })
    .await;
    // One curl process, one kept-alive connection, twelve requests as fast as it can.
    let url = gw.url("/fhir/metadata");
    let mut args = vec!["-w", "%{http_code}\\n"];
    for _ in 0..12 {
        args.extend(["-o", "/dev/null", &url]);
    }
    let resolve = format!("localhost:{}:127.0.0.1", gw.tls_port);
    let ca = gw.pki.ca.display().to_string();
    let mut all = vec!["-sS", "--cacert", &ca, "--resolve", &resolve];
    all.extend(args);
    let out = crate::fixture::run("curl", &all, None).await;
    let codes: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(codes.len(), 12, "{codes:?}");
    let ok = codes.iter().filter(|c| *c == "200").count();
    let limited = codes.iter().filter(|c| *c == "429").count();
    // The first request plus the burst of 3.
    assert_eq!(ok, 4, "{codes:?}");
    assert_eq!(ok + limited, 12, "{codes:?}");
    assert_eq!(gw.haven_requests(), ok);

    let limited = gw.curl("/fhir/metadata", &[]).await;
    limited.assert_status(429);
    assert_security_headers(&limited);
    assert_eq!(limited.json()["issue"][0]["code"], "throttled");
}

#[tokio::test]
async fn haven_down_is_a_fhir_503() {
    let mut gw = Gateway::start().await;
    gw.app.sigkill().await;
    let resp = gw.curl("/fhir/metadata", &[]).await;
    resp.assert_status(503);
    assert_security_headers(&resp);
    assert_eq!(resp.header("retry-after"), Some("5"));
    assert_eq!(resp.json()["issue"][0]["code"], "transient");
}
