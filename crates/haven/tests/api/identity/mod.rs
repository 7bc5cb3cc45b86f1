//! Haven's identity provider and resource server, used as a browser, an app and a backend
//! client would use them, and attacked as an attacker would.
//!
//! - `resource`: the FHIR API as a resource server (RFC 6750 bearer tokens, SMART scopes).
//! - `tokens`: forged and tampered access tokens (RFC 8725 attacks), Haven's own and those of a
//!   trusted external issuer, and tokens that stop working (revoked, disabled, client revoked).
//! - `login`: the login form: user enumeration, brute-force throttling, CSRF and origin checks.
//! - `flow`: the authorization-code flow with PKCE, TOTP enrolment and use, consent, refresh
//!   rotation, introspection and logout (SMART App Launch, RFC 6749/7636/9700).
//! - `clients`: client credentials with `private_key_jwt` (SMART Backend Services, RFC 7523).
//!
//! What they share: `browser` (a cookie-handling browser and the flow's steps), `forge` (a JWS
//! forger and a stand-in for an external OpenID provider's JWKS endpoint), and here, servers
//! with a configuration file, CLI shortcuts and requests without the suite's token.

mod browser;
mod clients;
pub(crate) mod flow;
mod forge;
mod login;
mod resource;
mod tokens;

pub use browser::{Authorization, Browser, Page, Pkce, approve, password_flow, redeem, refresh};
pub use forge::{Forger, KeyServer, hs256, signing_input};

use std::ops::Deref;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::header::{self, HeaderMap};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;

use crate::helpers::{Resp, TestApp, spawn_app_with, suite_key_path};

/// The SMART app the flows use: a public client (PKCE) with refresh tokens.
pub const APP: &str = "app";
pub const REDIRECT_URI: &str = "http://127.0.0.1:9/cb";
pub const APP_SCOPE: &str = "openid fhirUser offline_access user/*.rs launch/patient";
/// Every test user's password (long enough, not a common one, without the username).
pub const PASSWORD: &str = "plum-harbour-ledger-93";
/// Clinicians sign in with a password only (MFA stays required for admins): for the tests
/// about passwords and tokens, where a second factor would only add steps.
pub const NO_CLINICIAN_MFA: &str = "[identity]\nmfa_required_roles = [\"admin\"]\n";

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The header and claims of a compact JWS, unverified.
pub fn decode_jwt(token: &str) -> (Value, Value) {
    let part = |i: usize| -> Value {
        let text = token.split('.').nth(i).expect("a compact JWS");
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(text).expect("base64url")).expect("JSON")
    };
    (part(0), part(1))
}

/// A server started with a TOML configuration file (`HAVEN_CONFIG`), which lives as long as
/// the server.
pub struct Server {
    pub app: TestApp,
    _config: tempfile::TempDir,
}

impl Deref for Server {
    type Target = TestApp;
    fn deref(&self) -> &TestApp {
        &self.app
    }
}

pub async fn spawn_configured(toml: &str) -> Server {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("haven.toml");
    std::fs::write(&path, toml).expect("write the configuration");
    let app = spawn_app_with(&[("HAVEN_CONFIG", path.to_str().unwrap())]).await;
    assert!(
        !app.token.is_empty(),
        "the suite client got no token: {}",
        app.stderr()
    );
    Server { app, _config: dir }
}

/// Runs `haven <args>` on the server's data, with `stdin` as its input; fails the test unless
/// it succeeds. Returns its stdout.
pub async fn cli(app: &TestApp, args: &[&str], stdin: Option<&str>) -> String {
    let mut cmd = app.cli();
    cmd.args(args)
        .env("HAVEN_LOG__LEVEL", "warn")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run haven");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        pipe.write_all(format!("{input}\n").as_bytes())
            .await
            .expect("write to haven's stdin");
    }
    let out = child.wait_with_output().await.expect("wait for haven");
    assert!(
        out.status.success(),
        "haven {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `haven user add NAME --role ROLE` with [`PASSWORD`].
pub async fn add_user(app: &TestApp, username: &str, role: &str) {
    cli(
        app,
        &["user", "add", username, "--role", role],
        Some(PASSWORD),
    )
    .await;
}

/// Registers [`APP`].
pub async fn add_app(app: &TestApp) {
    cli(
        app,
        &[
            "client",
            "add",
            APP,
            "--public",
            "--redirect-uri",
            REDIRECT_URI,
            "--scope",
            APP_SCOPE,
            "--refresh",
        ],
        None,
    )
    .await;
}

/// Registers a backend client with a new key pair; returns the private key's file.
pub async fn add_service(app: &TestApp, id: &str, scope: &str) -> PathBuf {
    let key = app.data_dir.with_file_name(format!("{id}.pem"));
    cli(
        app,
        &[
            "client",
            "add",
            id,
            "--service",
            "--scope",
            scope,
            "--generate-key",
            key.to_str().unwrap(),
        ],
        None,
    )
    .await;
    key
}

// ---------------------------------------------------------------------------------------------
// Talking to the identity endpoints and the FHIR API without the suite's token.
// ---------------------------------------------------------------------------------------------

/// An HTTP client that sends no token and follows no redirect.
pub fn anonymous() -> reqwest::Client {
    crate::helpers::http_client()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// An HTTP client that sends `Authorization: Bearer <token>` on every request.
pub fn bearer(token: &str) -> reqwest::Client {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::AUTHORIZATION,
        header::HeaderValue::from_str(&format!("Bearer {token}")).expect("a header-safe token"),
    );
    crate::helpers::http_client()
        .default_headers(headers)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// GET of a FHIR path with `token` (through [`TestApp::send_with`], so every answer is checked).
pub async fn fhir_get(app: &TestApp, token: &str, path: &str) -> Resp {
    app.send_with(&bearer(token), bearer(token).get(app.url(path)))
        .await
}

/// POST of a FHIR resource with `token`.
pub async fn fhir_post(app: &TestApp, token: &str, path: &str, body: &Value) -> Resp {
    let client = bearer(token);
    let request = crate::helpers::with_json(client.post(app.url(path)), body);
    app.send_with(&client, request).await
}

/// Asserts a 401 from the FHIR API that tells the client its token is bad (RFC 6750 §3.1).
#[track_caller]
pub fn assert_invalid_token(resp: &Resp, what: &str) {
    assert_eq!(
        resp.status,
        401,
        "{what}: expected 401, got {}: {}",
        resp.status,
        resp.text()
    );
    crate::helpers::assert_outcome(resp, 401, "login");
    let challenge = resp.header("www-authenticate").unwrap_or("");
    assert!(
        challenge.starts_with("Bearer realm=\"haven\"")
            && challenge.contains("error=\"invalid_token\""),
        "{what}: challenge {challenge:?}"
    );
}

/// Waits until `GET path` with `token` answers `status` (revocations reach a replica's cache
/// within `revocation_cache_ms`, 2 s by default); fails after 5 s.
pub async fn wait_for_status(app: &TestApp, token: &str, path: &str, status: u16) -> Resp {
    let start = std::time::Instant::now();
    loop {
        let resp = fhir_get(app, token, path).await;
        if resp.status == status {
            return resp;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "GET {path} still answers {} after 5 s: {}",
            resp.status,
            resp.text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// POSTs a form to an identity endpoint with no token, checking what every answer there
/// promises: a request id, and `no-store` (RFC 6749 §5.1: token responses are not cached).
pub async fn post_form(app: &TestApp, path: &str, form: &[(&str, &str)]) -> Resp {
    let resp = anonymous()
        .post(format!("{}{path}", app.root))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string(form).unwrap())
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    let resp = Resp {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        body: resp.bytes().await.unwrap().to_vec(),
    };
    assert!(
        resp.header("x-request-id").is_some(),
        "POST {path}: no x-request-id"
    );
    assert_eq!(
        resp.header("cache-control"),
        Some("no-store"),
        "POST {path}"
    );
    crate::helpers::assert_no_leak(&resp);
    resp
}

/// Asserts an OAuth error answer (RFC 6749 §5.2): status, JSON `error`, and on 401 a
/// `WWW-Authenticate` challenge.
#[track_caller]
pub fn assert_oauth_error(resp: &Resp, status: u16, code: &str, what: &str) {
    assert_eq!(resp.status, status, "{what}: {}", resp.text());
    assert!(
        resp.content_type().starts_with("application/json"),
        "{what}: content type {}",
        resp.content_type()
    );
    assert_eq!(resp.json()["error"], code, "{what}: {}", resp.text());
    if status == 401 {
        assert!(
            resp.header("www-authenticate")
                .is_some_and(|c| c.starts_with("Bearer")),
            "{what}: a 401 needs a challenge"
        );
    }
}

/// The signing key of a backend client, from its PKCS#8 PEM file (kid as `haven client add
/// --generate-key` registers it: `<client>-1`).
pub fn client_key(path: &std::path::Path, client: &str) -> haven_crypto::TokenSigningKey {
    let pem = std::fs::read_to_string(path).expect("read the client key");
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .expect("PEM");
    haven_crypto::TokenSigningKey::from_pkcs8_der(format!("{client}-1"), &der).expect("a key")
}

/// The suite client's signing key for a server.
pub fn suite_key(app: &TestApp) -> haven_crypto::TokenSigningKey {
    client_key(&suite_key_path(&app.data_dir), crate::helpers::SUITE_CLIENT)
}

/// Claims of a client assertion that the token endpoint accepts (SMART Backend Services).
pub fn assertion_claims(app: &TestApp, client: &str) -> Value {
    let t = now();
    json!({
        "iss": client, "sub": client, "aud": format!("{}/oauth/token", app.root),
        "iat": t, "exp": t + 240, "jti": haven_crypto::random_token(),
    })
}

/// The form fields that authenticate a confidential client with `assertion`.
pub fn with_assertion<'a>(
    form: &[(&'a str, &'a str)],
    assertion: &'a str,
) -> Vec<(&'a str, &'a str)> {
    let mut f = form.to_vec();
    f.push((
        "client_assertion_type",
        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
    ));
    f.push(("client_assertion", assertion));
    f
}

/// An access token for a backend client (client credentials), asserting success.
pub async fn service_token(
    app: &TestApp,
    client: &str,
    key: &haven_crypto::TokenSigningKey,
) -> String {
    let assertion = key.sign(&assertion_claims(app, client)).unwrap();
    let resp = post_form(
        app,
        "/oauth/token",
        &with_assertion(&[("grant_type", "client_credentials")], &assertion),
    )
    .await;
    resp.assert_status(200);
    resp.json()["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned()
}

/// Waits for the sealed audit record of `action` on the server's ECS output (stdout) whose
/// `user.name` is `user`.
pub async fn audit_line(app: &TestApp, action: &str, user: &str) -> Option<Value> {
    app.wait_for_log(|l| {
        serde_json::from_str::<Value>(l)
            .is_ok_and(|v| v["event"]["action"] == action && v["user"]["name"] == user)
    })
    .await
    .map(|l| serde_json::from_str(&l).unwrap())
}
