//! Spawning the real `haven` binary and talking to it as a client would.
//!
//! Every test gets its own server process, port (`127.0.0.1:0`) and data directory, so tests run
//! in parallel without seeing each other's data. The server's stdout (JSON log lines) is drained
//! for the whole life of the process so tests can assert on what was logged.
//!
//! [`TestApp::send`] checks, on *every* response a test receives, the properties the server
//! promises for all responses: an `x-request-id`, the security headers, and for errors an
//! OperationOutcome that leaks no internal detail. A test therefore cannot forget them.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use haven_store_postgres::testing::TempDatabase;
use reqwest::header::{self, HeaderMap};
use reqwest::{Method, RequestBuilder};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

pub const FHIR_JSON: &str = "application/fhir+json";
pub const JSON_PATCH: &str = "application/json-patch+json";

/// How long a server may take to print its "listening" line.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// Text that must never reach a client: driver names, SQL, panics and file paths.
const LEAK_MARKERS: [&str; 6] = ["sqlite", "sqlx", "panicked", "/tmp/", "SELECT", "src/"];

/// A running `haven serve` process. Dropping it kills the process.
pub struct TestApp {
    /// FHIR base, e.g. `http://127.0.0.1:4242/fhir`.
    pub base: String,
    /// Server root, e.g. `http://127.0.0.1:4242`.
    pub root: String,
    /// `127.0.0.1:4242`.
    pub addr: String,
    /// Sends the suite's access token (a `system/*.cruds` backend client) on every request.
    pub client: reqwest::Client,
    /// The access token `client` sends (for clients a test builds itself).
    pub token: String,
    pub child: Child,
    pub data_dir: PathBuf,
    logs: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    /// Keeps the data directory alive while the server runs (absent with `spawn_app_in`).
    _dir: Option<TempDir>,
    /// With the PostgreSQL backend: the test's database, shared by restarts on the same data.
    _db: Option<Arc<TempDatabase>>,
}

/// The backend the suite runs against: `HAVEN_TEST_BACKEND=postgres` selects PostgreSQL (one
/// throwaway database per data directory, see `haven_store_postgres::testing`); otherwise the
/// embedded SQLite store.
/// A client builder. The workspace's reqwest has rustls without a crypto provider, so the
/// process's provider (aws-lc-rs, as in the binary) is installed first; building a client
/// without one panics.
pub fn http_client() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    reqwest::Client::builder()
}

pub fn postgres_backend() -> bool {
    std::env::var("HAVEN_TEST_BACKEND").is_ok_and(|b| b == "postgres")
}

/// The database behind a data directory, so a restart on the same directory finds its data.
pub async fn database_for(data_dir: &Path) -> Arc<TempDatabase> {
    static DATABASES: Mutex<Vec<(PathBuf, Weak<TempDatabase>)>> = Mutex::new(Vec::new());
    if let Some(db) = DATABASES
        .lock()
        .unwrap()
        .iter()
        .find(|(p, _)| p == data_dir)
        .and_then(|(_, w)| w.upgrade())
    {
        return db;
    }
    let db = Arc::new(TempDatabase::create().await);
    let mut all = DATABASES.lock().unwrap();
    all.retain(|(_, w)| w.strong_count() > 0);
    all.push((data_dir.to_owned(), Arc::downgrade(&db)));
    db
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// A response with its body already read.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    pub fn content_type(&self) -> &str {
        self.header("content-type").unwrap_or("")
    }

    /// Asserts the status, showing the body when it differs.
    #[track_caller]
    pub fn assert_status(&self, status: u16) -> &Self {
        assert_eq!(
            self.status,
            status,
            "unexpected status; body: {}",
            self.text()
        );
        self
    }
}

/// A `haven` command with no `HAVEN_*` variables inherited from the test environment.
pub fn haven() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_haven"));
    for (key, _) in std::env::vars() {
        if key.starts_with("HAVEN_") {
            cmd.env_remove(key);
        }
    }
    cmd.kill_on_drop(true);
    cmd
}

/// A server on a fresh data directory with the default configuration.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// A server on a fresh data directory with extra `HAVEN_*` environment.
pub async fn spawn_app_with(env: &[(&str, &str)]) -> TestApp {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let mut app = spawn_app_in(&dir.path().join("data"), env).await;
    app._dir = Some(dir);
    app
}

/// The suite's backend client and its key, registered once per data directory with the
/// real CLI (`haven client add --service`), as an operator would.
pub const SUITE_CLIENT: &str = "test-suite";

/// Where the suite client's private key (PKCS#8 PEM) is written for a data directory.
pub fn suite_key_path(data_dir: &Path) -> PathBuf {
    let mut name = data_dir.file_name().unwrap_or_default().to_os_string();
    name.push(".client.pem");
    data_dir.with_file_name(name)
}

/// The suite client's key per PostgreSQL database (by name): a second server on the same
/// database (another replica, or the same data as another role) reuses the registered client.
static SUITE_KEYS: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());

fn database_name(url: &str) -> String {
    url.rsplit('/')
        .next()
        .unwrap_or_default()
        .split('?')
        .next()
        .unwrap_or_default()
        .to_owned()
}

async fn register_suite_client(data_dir: &Path, db_url: Option<&str>, env: &[(&str, &str)]) {
    let key = suite_key_path(data_dir);
    if key.exists() {
        return;
    }
    if let Some(url) = db_url {
        let name = database_name(url);
        let known = SUITE_KEYS
            .lock()
            .unwrap()
            .iter()
            .find(|(n, p)| *n == name && p.exists())
            .map(|(_, p)| p.clone());
        if let Some(existing) = known {
            std::fs::copy(&existing, &key).expect("copy the suite client's key");
            return;
        }
    }
    let mut cmd = haven();
    if let Some(url) = db_url {
        cmd.env("HAVEN_DATABASE_URL", url);
    }
    let out = cmd
        .args([
            "client",
            "add",
            SUITE_CLIENT,
            "--service",
            "--scope",
            "system/*.cruds",
            "--generate-key",
        ])
        .arg(&key)
        .arg("--data-dir")
        .arg(data_dir)
        .envs(env.iter().copied())
        .env("HAVEN_LOG__LEVEL", "warn")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run haven client add");
    // A test of a configuration the server refuses fails here too; it then sees the
    // server's own refusal.
    if !out.status.success() {
        let _ = std::fs::remove_file(&key);
    } else if let Some(url) = db_url {
        SUITE_KEYS
            .lock()
            .unwrap()
            .push((database_name(url), key.clone()));
    }
}

/// Signs a client assertion with a PKCS#8 PEM key (what a SMART backend client does).
pub fn client_assertion(key_pem: &str, client: &str, audience: &str) -> String {
    use base64::Engine as _;
    let b64: String = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .expect("the key file is PEM");
    let key = haven_crypto::TokenSigningKey::from_pkcs8_der(format!("{client}-1"), &der)
        .expect("an Ed25519 PKCS#8 key");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    key.sign(&json!({
        "iss": client, "sub": client, "aud": audience,
        "iat": now, "exp": now + 240, "jti": uuid_like(),
    }))
    .expect("sign the assertion")
}

/// A random id for `jti`s.
pub fn uuid_like() -> String {
    haven_crypto::random_token()
}

/// Gets an access token for the suite's client from the running server. The assertion's
/// audience is the token endpoint the server announces (its public address, which may differ
/// from the address the test reaches it at).
async fn suite_token(root: &str, data_dir: &Path) -> Option<String> {
    let pem = std::fs::read_to_string(suite_key_path(data_dir)).ok()?;
    let http = http_client().build().ok()?;
    let discovery: Value = http
        .get(format!("{root}/.well-known/openid-configuration"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let audience = discovery["token_endpoint"].as_str()?.to_owned();
    let form = [
        ("grant_type", "client_credentials".to_owned()),
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".to_owned(),
        ),
        (
            "client_assertion",
            client_assertion(&pem, SUITE_CLIENT, &audience),
        ),
    ];
    let resp = http
        .post(format!("{root}/oauth/token"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string(form).unwrap())
        .send()
        .await
        .ok()?;
    let v: Value = resp.json().await.ok()?;
    v["access_token"].as_str().map(str::to_owned)
}

/// A server on an existing data directory (to restart on the same data).
pub async fn spawn_app_in(data_dir: &Path, env: &[(&str, &str)]) -> TestApp {
    spawn_server(data_dir, env, &[]).await
}

/// A server on an existing data directory with extra `haven serve` arguments
/// (`--role identity`).
pub async fn spawn_server(data_dir: &Path, env: &[(&str, &str)], serve_args: &[&str]) -> TestApp {
    let db = if postgres_backend() && !env.iter().any(|(k, _)| *k == "HAVEN_DATABASE_URL") {
        Some(database_for(data_dir).await)
    } else {
        None
    };
    let explicit_db = env
        .iter()
        .find(|(k, _)| *k == "HAVEN_DATABASE_URL")
        .map(|(_, v)| (*v).to_owned());
    register_suite_client(
        data_dir,
        db.as_ref()
            .map(|d| d.url.as_str())
            .or(explicit_db.as_deref()),
        env,
    )
    .await;
    let shared_keyring = env
        .iter()
        .any(|(k, _)| *k == "HAVEN_ENCRYPTION__KEYRING_PATH");
    if (db.is_some() || explicit_db.is_some())
        && !shared_keyring
        && !data_dir.join("keyring.toml").exists()
    {
        // On PostgreSQL Haven never creates a keyring by itself (replicas must share one).
        let out = haven()
            .args(["keys", "init", "--data-dir"])
            .arg(data_dir)
            .output()
            .await
            .expect("run haven keys init");
        assert!(out.status.success(), "haven keys init: {out:?}");
    }
    let mut command = haven();
    if let Some(db) = &db {
        command.env("HAVEN_DATABASE_URL", &db.url);
    }
    let mut child = command
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(serve_args)
        .env("HAVEN_LOG__FORMAT", "json")
        .env("HAVEN_LOG__LEVEL", "info")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the haven binary");
    let logs = Arc::new(Mutex::new(Vec::new()));
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let (ready_tx, ready_rx) = oneshot::channel();
    tokio::spawn(drain(
        child.stdout.take().expect("piped stdout"),
        logs.clone(),
        Some(ready_tx),
    ));
    tokio::spawn(drain(
        child.stderr.take().expect("piped stderr"),
        stderr.clone(),
        None,
    ));

    let listening: Value = match tokio::time::timeout(STARTUP_TIMEOUT, ready_rx).await {
        Ok(Ok(line)) => line,
        Ok(Err(_)) => panic!(
            "haven exited before listening; stderr: {:?}; stdout: {:?}",
            stderr.lock().unwrap(),
            logs.lock().unwrap()
        ),
        Err(_) => panic!("haven did not start listening within {STARTUP_TIMEOUT:?}"),
    };
    let addr = listening["address"].as_str().expect("address").to_owned();
    let base = listening["base_url"].as_str().expect("base_url").to_owned();
    let root = format!("http://{addr}");
    let token = suite_token(&root, data_dir).await.unwrap_or_default();
    let mut headers = HeaderMap::new();
    if !token.is_empty() {
        headers.insert(
            header::AUTHORIZATION,
            header::HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
    }
    let client = http_client()
        .timeout(Duration::from_secs(30))
        .default_headers(headers)
        .build()
        .expect("build an HTTP client");
    TestApp {
        token,
        root: format!("http://{addr}"),
        base,
        addr,
        client,
        child,
        data_dir: data_dir.to_owned(),
        logs,
        stderr,
        _dir: None,
        _db: db,
    }
}

/// Collects lines from a child's pipe; reports the "listening" line once it is seen.
async fn drain(
    pipe: impl AsyncRead + Unpin,
    sink: Arc<Mutex<Vec<String>>>,
    mut ready: Option<oneshot::Sender<Value>>,
) {
    let mut lines = BufReader::new(pipe).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if ready.is_some()
            && let Ok(v) = serde_json::from_str::<Value>(&line)
            && v["message"] == "haven listening"
            && let Some(tx) = ready.take()
        {
            let _ = tx.send(v);
        }
        sink.lock().unwrap().push(line);
    }
}

impl TestApp {
    /// An absolute URL for a path relative to the FHIR base (`Patient/1`, `metadata`).
    pub fn url(&self, path: &str) -> String {
        if path.is_empty() {
            self.base.clone()
        } else {
            format!("{}/{}", self.base, path.trim_start_matches('/'))
        }
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.url(path))
    }

    /// Sends a request and reads the whole response, checking what every response promises.
    pub async fn send(&self, request: RequestBuilder) -> Resp {
        self.send_with(&self.client, request).await
    }

    /// [`TestApp::send`] through another client: one with another access token, or none
    /// (`reqwest` adds a client's default headers when it executes a request, so a request
    /// built elsewhere would still carry the suite's token if `self.client` sent it).
    pub async fn send_with(&self, client: &reqwest::Client, request: RequestBuilder) -> Resp {
        let request = request.build().expect("a valid request");
        let method = request.method().clone();
        let path = request.url().path().to_owned();
        let resp = client
            .execute(request)
            .await
            .unwrap_or_else(|e| panic!("{method} {path} failed: {e}"));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.expect("read the body").to_vec();
        let resp = Resp {
            status,
            headers,
            body,
        };
        check_common_headers(&resp, &method, &path);
        if status >= 400 {
            assert_no_leak(&resp);
            if path != "/metrics" && method != Method::HEAD {
                assert_is_outcome(&resp);
            }
        }
        resp
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send(self.request(Method::GET, path)).await
    }

    /// GET of an absolute URL (e.g. a paging link).
    pub async fn get_url(&self, url: &str) -> Resp {
        self.send(self.client.get(url)).await
    }

    /// GET of a path under the server root (`/healthz`, `/metrics`).
    pub async fn get_root(&self, path: &str) -> Resp {
        self.send(self.client.get(format!("{}{path}", self.root)))
            .await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Resp {
        self.send(with_json(self.request(Method::POST, path), body))
            .await
    }

    pub async fn put_json(&self, path: &str, body: &Value) -> Resp {
        self.send(with_json(self.request(Method::PUT, path), body))
            .await
    }

    /// PATCH with a JSON Patch document.
    pub async fn patch(&self, path: &str, patch: &Value) -> Resp {
        self.send(
            self.request(Method::PATCH, path)
                .header(header::CONTENT_TYPE, JSON_PATCH)
                .body(patch.to_string()),
        )
        .await
    }

    pub async fn delete(&self, path: &str) -> Resp {
        self.send(self.request(Method::DELETE, path)).await
    }

    /// Creates a resource, asserting 201, and returns it as stored.
    pub async fn create(&self, resource: &Value) -> Value {
        let ty = resource["resourceType"].as_str().expect("resourceType");
        let resp = self.post_json(ty, resource).await;
        resp.assert_status(201);
        resp.json()
    }

    /// Creates or replaces `resource` at its own id (PUT), asserting success; returns it.
    pub async fn put(&self, resource: &Value) -> Value {
        let ty = resource["resourceType"].as_str().expect("resourceType");
        let id = resource["id"].as_str().expect("id");
        let resp = self.put_json(&format!("{ty}/{id}"), resource).await;
        assert!(
            resp.status == 200 || resp.status == 201,
            "PUT {ty}/{id}: {} {}",
            resp.status,
            resp.text()
        );
        resp.json()
    }

    /// A snapshot of the server's stdout lines so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Waits until a stdout line satisfies `pred` (log lines arrive a little after responses).
    pub async fn wait_for_log(&self, pred: impl Fn(&str) -> bool) -> Option<String> {
        for _ in 0..100 {
            if let Some(line) = self.logs().into_iter().find(|l| pred(l)) {
                return Some(line);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// A `haven` command against this server's data (data directory, and database on the
    /// PostgreSQL backend), for CLI subcommands.
    pub fn cli(&self) -> Command {
        let mut cmd = haven();
        cmd.arg("--data-dir").arg(&self.data_dir);
        if let Some(db) = &self._db {
            cmd.env("HAVEN_DATABASE_URL", &db.url);
        }
        cmd
    }

    /// The PostgreSQL database URL (PostgreSQL backend only).
    pub fn database_url(&self) -> Option<String> {
        self._db.as_ref().map(|d| d.url.clone())
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("the server is still running")
    }

    /// Sends SIGTERM (graceful shutdown).
    pub fn sigterm(&self) {
        send_signal(self.pid(), "TERM");
    }

    /// Kills the server at once (SIGKILL) and waits until it is gone.
    pub async fn sigkill(&mut self) {
        self.child.start_kill().expect("send SIGKILL");
        self.child.wait().await.expect("reap the server");
    }

    /// Waits for the process to exit, failing the test after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("haven did not exit within {timeout:?}"))
            .expect("wait for haven")
    }
}

/// Sends a signal with kill(1): the workspace forbids `unsafe` (so `libc::kill`) even in tests.
pub fn send_signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .status()
        .expect("run kill(1)");
    assert!(status.success(), "kill -s {signal} {pid} failed");
}

pub fn with_json(request: RequestBuilder, body: &Value) -> RequestBuilder {
    request
        .header(header::CONTENT_TYPE, FHIR_JSON)
        .body(body.to_string())
}

#[track_caller]
fn check_common_headers(resp: &Resp, method: &Method, path: &str) {
    let request_id = resp.header("x-request-id").unwrap_or("");
    assert!(
        !request_id.is_empty(),
        "{method} {path}: no x-request-id header"
    );
    assert_eq!(
        resp.header("cache-control"),
        Some("no-store"),
        "{method} {path}: PHI must not be cached"
    );
    assert_eq!(
        resp.header("x-content-type-options"),
        Some("nosniff"),
        "{method} {path}"
    );
}

/// Asserts that no internal detail (driver, SQL, panic, paths) appears in a response body.
#[track_caller]
pub fn assert_no_leak(resp: &Resp) {
    let text = resp.text();
    for marker in LEAK_MARKERS {
        assert!(
            !text.contains(marker),
            "response leaks internal detail ({marker}): {text}"
        );
    }
}

/// Asserts that a response is a FHIR JSON OperationOutcome with at least one issue.
#[track_caller]
pub fn assert_is_outcome(resp: &Resp) -> Value {
    assert!(
        resp.content_type().starts_with(FHIR_JSON),
        "an OperationOutcome must be application/fhir+json, got '{}'",
        resp.content_type()
    );
    let oo = resp.json();
    assert_eq!(oo["resourceType"], "OperationOutcome", "{oo}");
    let issues = oo["issue"].as_array().expect("issue array");
    assert!(!issues.is_empty(), "{oo}");
    for issue in issues {
        assert!(issue["severity"].is_string(), "{issue}");
        assert!(issue["code"].is_string(), "{issue}");
    }
    oo
}

/// Asserts an error response: its status, and an OperationOutcome with an issue of `code`.
#[track_caller]
pub fn assert_outcome(resp: &Resp, status: u16, code: &str) -> Value {
    resp.assert_status(status);
    let oo = assert_is_outcome(resp);
    assert!(
        issues(&oo).iter().any(|i| i["code"] == code),
        "expected an issue with code '{code}': {oo}"
    );
    oo
}

pub fn issues(outcome: &Value) -> &Vec<Value> {
    outcome["issue"].as_array().expect("OperationOutcome.issue")
}

/// The `expression` of every issue (each must have exactly one).
#[track_caller]
pub fn expressions(outcome: &Value) -> Vec<String> {
    issues(outcome)
        .iter()
        .map(|i| {
            i["expression"][0]
                .as_str()
                .unwrap_or_else(|| panic!("issue without expression: {i}"))
                .to_owned()
        })
        .collect()
}

/// Whether `s` is a FHIR `instant`: `YYYY-MM-DDThh:mm:ss[.f+](Z|+hh:mm|-hh:mm)`.
pub fn is_instant(s: &str) -> bool {
    fn digits(s: &str) -> bool {
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
    }
    let b = s.as_bytes();
    if b.len() < 20 {
        return false;
    }
    let fixed = digits(&s[0..4])
        && b[4] == b'-'
        && digits(&s[5..7])
        && b[7] == b'-'
        && digits(&s[8..10])
        && b[10] == b'T'
        && digits(&s[11..13])
        && b[13] == b':'
        && digits(&s[14..16])
        && b[16] == b':'
        && digits(&s[17..19]);
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return false;
        }
        rest = &frac[n..];
    }
    let zone = rest == "Z"
        || (rest.len() == 6
            && (rest.starts_with('+') || rest.starts_with('-'))
            && digits(&rest[1..3])
            && &rest[3..4] == ":"
            && digits(&rest[4..6]));
    fixed && zone
}

pub fn patient() -> Value {
    json!({
        "resourceType": "Patient",
        "active": true,
        "name": [{ "family": "Chalmers", "given": ["Peter", "James"] }],
        "gender": "male",
        "birthDate": "1974-12-25"
    })
}

pub fn observation(subject: &str) -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "code": { "coding": [{ "system": "http://loinc.org", "code": "29463-7" }] },
        "subject": { "reference": subject },
        "valueQuantity": { "value": 72.5, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg" }
    })
}

/// A resource with `id` set, for PUT.
pub fn with_id(mut resource: Value, id: &str) -> Value {
    resource["id"] = json!(id);
    resource
}

/// The entries of a Bundle (empty when it has none).
pub fn entries(bundle: &Value) -> &[Value] {
    bundle["entry"].as_array().map_or(&[], Vec::as_slice)
}

/// The URL of a Bundle link by relation.
pub fn link(bundle: &Value, relation: &str) -> Option<String> {
    bundle["link"]
        .as_array()?
        .iter()
        .find(|l| l["relation"] == relation)
        .and_then(|l| l["url"].as_str())
        .map(str::to_owned)
}

/// The query parameter `name` of an absolute URL.
pub fn query_param(url: &str, name: &str) -> Option<String> {
    reqwest::Url::parse(url)
        .ok()?
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Sends raw bytes over a new TCP connection and reads until the server closes it.
pub async fn raw_http(addr: &str, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write the request");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out))
        .await
        .expect("the server answers and closes")
        .expect("read the response");
    String::from_utf8_lossy(&out).into_owned()
}

/// Runs SQL against the server's database from outside, as an operator or attacker would.
pub async fn exec(app: &TestApp, sql: &str) {
    use sqlx::Connection as _;
    match app.database_url() {
        Some(url) => {
            let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(&mut c)
                .await
                .unwrap();
        }
        None => {
            let path = app.data_dir.join("haven.db");
            let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
                .await
                .unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(&mut c)
                .await
                .unwrap();
        }
    }
}
