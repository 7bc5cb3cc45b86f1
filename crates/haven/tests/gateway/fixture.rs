//! A real nginx, rendered from `deploy/gateway/nginx.conf`, in front of a real Haven.
//!
//! Each test gets its own throwaway CA and server certificate (made with the `openssl` CLI), its
//! own nginx prefix (pid file, logs, temporary files) in a temporary directory, free loopback
//! ports, and its own Haven. Clients are the tools an operator would use: `curl` for HTTPS,
//! `openssl s_client` for raw bytes and protocol versions, `sslyze` for the TLS profile.
//!
//! A missing tool fails the test with the command that installs it: a gateway test that quietly
//! skipped would prove nothing.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::helpers::{self, TestApp};

/// What CI must install for this suite.
pub const INSTALL: &str = "apt-get install -y nginx-light openssl curl && pip install sslyze";

/// How long nginx may take to accept connections.
const NGINX_STARTUP: Duration = Duration::from_secs(10);

/// How long one client command (curl, openssl, sslyze) may run.
const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

/// The gateway template and its renderer, from the repository.
fn gateway_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/gateway")
}

/// The nginx binary: on `PATH`, or where Debian puts it (`/usr/sbin` is not on every `PATH`).
fn nginx_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join("nginx"));
    on_path
        .chain(["/usr/sbin/nginx".into(), "/usr/local/sbin/nginx".into()])
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("nginx is not installed; run: {INSTALL}"))
}

/// Runs a tool to completion, failing the test (with the install command) if it is missing.
pub async fn run(program: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("{program} is not installed; run: {INSTALL}")
        }
        Err(e) => panic!("cannot run {program}: {e}"),
    };
    // Held open until the tool exits: `s_client -quiet` must wait for the server's answer, not
    // stop at the end of its input.
    let mut _stdin = None;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        pipe.write_all(input).await.expect("write to the tool");
        _stdin = Some(pipe);
    }
    tokio::time::timeout(TOOL_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} did not finish within {TOOL_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("{program} failed: {e}"))
}

/// Runs a tool that must succeed; returns its stdout.
async fn run_ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args, None).await;
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

/// A throwaway certificate authority and a server certificate it signed, for `localhost` and
/// `127.0.0.1`. ECDSA P-256 with SHA-256 and 30 days of validity: inside Mozilla's
/// intermediate profile (which allows at most 366 days).
pub struct Pki {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    pub async fn generate(dir: &Path) -> Pki {
        let p = |name: &str| dir.join(name);
        let (ca, ca_key, csr, ext) = (p("ca.pem"), p("ca.key"), p("server.csr"), p("ext.cnf"));
        let (cert, key) = (p("server.pem"), p("server.key"));
        let ec = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
        let ca_args = format!(
            "req -x509 {ec} -sha256 -days 30 -addext basicConstraints=critical,CA:TRUE \
             -addext keyUsage=critical,keyCertSign,cRLSign"
        );
        #[rustfmt::skip]
        run_ok("openssl", &words(&ca_args, &[
            "-subj", "/CN=Haven gateway test CA",
            "-keyout", path_str(&ca_key), "-out", path_str(&ca),
        ])).await;
        #[rustfmt::skip]
        run_ok("openssl", &words(&format!("req -new {ec} -subj /CN=localhost"), &[
            "-keyout", path_str(&key), "-out", path_str(&csr),
        ])).await;
        std::fs::write(
            &ext,
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .unwrap();
        #[rustfmt::skip]
        run_ok("openssl", &words("x509 -req -set_serial 2 -days 30 -sha256", &[
            "-in", path_str(&csr), "-CA", path_str(&ca), "-CAkey", path_str(&ca_key),
            "-extfile", path_str(&ext), "-out", path_str(&cert),
        ])).await;
        Pki { ca, cert, key }
    }
}

/// A command line: `fixed` split at whitespace, then `tail` (arguments that may hold spaces).
fn words<'a>(fixed: &'a str, tail: &[&'a str]) -> Vec<&'a str> {
    fixed
        .split_whitespace()
        .chain(tail.iter().copied())
        .collect()
}

/// How to render the gateway for a test.
pub struct Options {
    /// `HAVEN_TRUSTED_PROXIES` of the Haven behind the gateway.
    pub trusted_proxies: &'static str,
    /// `render --proxy-bind`.
    pub proxy_bind: Option<&'static str>,
    pub rate: &'static str,
    pub burst: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            trusted_proxies: "127.0.0.1",
            proxy_bind: None,
            // High enough that no test but the rate-limit one ever meets it.
            rate: "100r/s",
            burst: 200,
        }
    }
}

/// nginx and the Haven behind it. Dropping it stops both.
pub struct Gateway {
    pub app: TestApp,
    pub tls_port: u16,
    pub http_port: u16,
    pub pki: Pki,
    prefix: PathBuf,
    nginx: Child,
    _dir: TempDir,
}

/// Free loopback ports, all different (each listener is held until all are chosen).
fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().unwrap().port())
}

impl Gateway {
    pub async fn start() -> Gateway {
        Gateway::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> Gateway {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let pki = Pki::generate(dir.path()).await;
        let prefix = dir.path().join("nginx");
        std::fs::create_dir(&prefix).unwrap();
        let [tls_port, http_port] = free_ports();

        // Haven tells clients the gateway's address, not its own (README: public_url).
        let public_url = format!("https://localhost:{tls_port}/fhir");
        let app = helpers::spawn_app_with(&[
            ("HAVEN_TRUSTED_PROXIES", options.trusted_proxies),
            ("HAVEN_PUBLIC_URL", &public_url),
        ])
        .await;

        let conf = prefix.join("nginx.conf");
        let user = run_ok("id", &["-un"]).await;
        let burst = options.burst.to_string();
        let tls_listen = format!("127.0.0.1:{tls_port}");
        let http_listen = format!("127.0.0.1:{http_port}");
        let render = gateway_dir().join("render");
        #[rustfmt::skip]
        let mut args = vec![
            "--cert", path_str(&pki.cert),
            "--key", path_str(&pki.key),
            "--listen-tls", &tls_listen,
            "--listen-http", &http_listen,
            "--upstream", &app.addr,
            "--prefix", path_str(&prefix),
            "--server-name", "localhost",
            // Workers as the test's own user: they must reach the private prefix.
            "--user", user.trim(),
            "--rate", options.rate,
            "--burst", &burst,
            "--out", path_str(&conf),
        ];
        if let Some(addr) = options.proxy_bind {
            args.extend(["--proxy-bind", addr]);
        }
        run_ok(path_str(&render), &args).await;

        let stderr = std::fs::File::create(prefix.join("nginx.stderr")).unwrap();
        let nginx = std::process::Command::new(nginx_binary())
            .args(["-p", path_str(&prefix), "-c", path_str(&conf)])
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start nginx ({e}); run: {INSTALL}"));
        let mut gateway = Gateway {
            app,
            tls_port,
            http_port,
            pki,
            prefix,
            nginx,
            _dir: dir,
        };
        gateway.wait_until_listening().await;
        gateway
    }

    async fn wait_until_listening(&mut self) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.nginx.try_wait().unwrap() {
                panic!(
                    "nginx exited ({status}): {}\n{}",
                    self.read("nginx.stderr"),
                    self.read("error.log")
                );
            }
            let tls = tokio::net::TcpStream::connect(("127.0.0.1", self.tls_port)).await;
            let http = tokio::net::TcpStream::connect(("127.0.0.1", self.http_port)).await;
            if tls.is_ok() && http.is_ok() {
                return;
            }
            assert!(
                started.elapsed() < NGINX_STARTUP,
                "nginx did not listen within {NGINX_STARTUP:?}: {}",
                self.read("nginx.stderr")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A file of the nginx prefix (empty when absent).
    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.prefix.join(name)).unwrap_or_default()
    }

    /// nginx's access log, one JSON object per request.
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        self.read("access.log")
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// The header line that carries the suite's access token (`Authorization: Bearer ...`).
    pub fn authorization(&self) -> String {
        format!("Authorization: Bearer {}", self.app.token)
    }

    /// `https://localhost:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.tls_port)
    }

    /// Sends one HTTPS request with curl (`args` are extra curl options) and reads the answer.
    /// Like `app.client`, curl sends the suite's access token (the FHIR API needs one), but
    /// only over TLS: a client does not send a token in clear to the redirecting port.
    pub async fn curl(&self, path: &str, args: &[&str]) -> HttpsResp {
        self.curl_url(&self.url(path), args).await
    }

    pub async fn curl_url(&self, url: &str, args: &[&str]) -> HttpsResp {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let head = self.prefix.join(format!("curl-{n}.head"));
        let body = self.prefix.join(format!("curl-{n}.body"));
        let resolve = format!("localhost:{}:127.0.0.1", self.tls_port);
        let authorization = self.authorization();
        #[rustfmt::skip]
        let mut all = vec![
            "-sS", "--cacert", path_str(&self.pki.ca), "--resolve", &resolve,
            "-D", path_str(&head), "-o", path_str(&body),
            "-w", "%{http_code} %{http_version}",
        ];
        if url.starts_with("https://") {
            all.extend(["-H", &authorization]);
        }
        all.extend_from_slice(args);
        all.push(url);
        let out = run("curl", &all, None).await;
        assert!(
            out.status.success(),
            "curl {url} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let written = String::from_utf8_lossy(&out.stdout).into_owned();
        let (status, version) = written.split_once(' ').expect("curl's write-out");
        let head = std::fs::read_to_string(&head).unwrap();
        // With `Expect: 100-continue` there are two header blocks; the last one is the answer.
        let last = head
            .split("\r\n\r\n")
            .filter(|b| !b.trim().is_empty())
            .last()
            .unwrap_or("");
        let headers = last
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        HttpsResp {
            status: status.parse().expect("a status code"),
            http_version: version.to_owned(),
            headers,
            body: std::fs::read(&body).unwrap_or_default(),
        }
    }

    /// Sends raw bytes over TLS (`openssl s_client -quiet`) and returns everything the gateway
    /// sent back until it closed the connection.
    pub async fn raw_tls(&self, request: &[u8]) -> String {
        let mut args = self.s_client();
        args.push("-quiet".into());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run("openssl", &args, Some(request)).await;
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A TLS handshake with `openssl s_client` and the given options; its output and success.
    pub async fn handshake(&self, options: &[&str]) -> (bool, String) {
        let args = self.s_client();
        let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
        args.extend_from_slice(options);
        let out = run("openssl", &args, None).await;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// `openssl s_client` connected to the TLS port, trusting only the test CA.
    fn s_client(&self) -> Vec<String> {
        let fixed = format!(
            "s_client -connect 127.0.0.1:{} -servername localhost -verify_return_error -CAfile",
            self.tls_port
        );
        words(&fixed, &[path_str(&self.pki.ca)])
            .into_iter()
            .map(str::to_owned)
            .collect()
    }

    /// How many FHIR requests Haven has answered (its "request completed" log lines).
    pub fn haven_requests(&self) -> usize {
        completed_requests(&self.app)
    }
}

pub fn completed_requests(app: &TestApp) -> usize {
    app.logs()
        .iter()
        .filter(|l| l.contains("\"request completed\""))
        .count()
}

impl Drop for Gateway {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers and exits (SIGKILL would orphan the workers).
        let _ = std::process::Command::new("kill")
            .args(["-s", "TERM", &self.nginx.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.nginx.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.nginx.kill();
        let _ = self.nginx.wait();
    }
}

/// An HTTPS response read by curl.
#[derive(Debug)]
pub struct HttpsResp {
    pub status: u16,
    /// `1.1` or `2`.
    pub http_version: String,
    /// Lower-case names, in order, repeated names kept.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpsResp {
    /// Every value of a header.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The value of a header that must appear at most once.
    #[track_caller]
    pub fn header(&self, name: &str) -> Option<&str> {
        let all = self.all(name);
        assert!(
            all.len() <= 1,
            "{name} appears {} times: {all:?}",
            all.len()
        );
        all.first().copied()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    #[track_caller]
    pub fn assert_status(&self, status: u16) -> &Self {
        assert_eq!(self.status, status, "body: {}", self.text());
        self
    }
}

/// The `request completed` line Haven logged for the request with this id, as JSON.
pub async fn haven_log_line(app: &TestApp, request_id: &str) -> serde_json::Value {
    let needle = format!("\"request_id\":\"{request_id}\"");
    let line = app
        .wait_for_log(|l| l.contains("\"request completed\"") && l.contains(&needle))
        .await
        .unwrap_or_else(|| panic!("Haven logged no request {request_id}: {:?}", app.logs()));
    serde_json::from_str(&line).unwrap()
}
