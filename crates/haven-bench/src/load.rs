//! The load engine: N connections, each looping one scenario's iteration until the window ends.
//!
//! Every connection is its own task with its own HTTP/1.1 keep-alive client, so "32 connections"
//! means 32 sockets with one request in flight each (closed-loop load, like wrk). Time is split
//! into a warm-up, which is run but not recorded, and the measured window. A request counts when
//! it *finishes* inside the window: that is the throughput definition that neither loses nor
//! double-counts work at the edges. Latency is recorded per HTTP interaction in an HDR histogram
//! (microseconds, 3 significant digits) so percentiles are exact to 0.1 % without keeping every
//! sample. Failures (transport errors and non-2xx answers) are counted over the whole run, warm-up
//! included, never panicked on; their latency is not mixed into the histogram.
//!
//! Every request carries the server's current access token ([`Client`]), so Haven's token check
//! is part of each measured request, as it is in service.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use reqwest::header::HeaderMap;
use reqwest::{IntoUrl, Method, RequestBuilder};

use crate::auth::Bearer;
use crate::scenarios::Workload;

/// How many distinct failure descriptions a run keeps for the report.
const KEPT_ERRORS: usize = 5;
/// A request that takes longer than this is a failure, so a stuck server cannot stall the run.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Load shape of one run.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub connections: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

/// Why an iteration stopped early.
#[derive(Debug)]
pub enum Halt {
    /// The window is over; the worker stops.
    Deadline,
    /// A request failed (already counted); the worker starts its next iteration.
    Failed,
}

/// A successful answer (its body was read to the end, so the connection can be reused).
#[derive(Debug)]
pub struct Reply {
    pub headers: HeaderMap,
}

/// One connection: a client with a single keep-alive socket and what it has recorded.
pub struct Conn {
    client: Client,
    pub base: Arc<str>,
    window_start: Instant,
    window_end: Instant,
    rec: Recorded,
}

/// What one connection (or, merged, a whole run) measured inside the window.
#[derive(Debug)]
pub struct Recorded {
    /// Latency of successful interactions, in microseconds.
    pub latency: Histogram<u64>,
    /// Successful interactions.
    pub ok: u64,
    /// Domain units carried by successful interactions (resources in an imported Bundle).
    pub units: u64,
    /// Completed iterations (a CRUD cycle, one Bundle).
    pub iterations: u64,
    /// Failed interactions, warm-up included.
    pub errors: u64,
    /// The first few distinct failures, for the report.
    pub error_samples: Vec<String>,
    /// Length of the measured window.
    pub seconds: f64,
}

impl Recorded {
    fn new(seconds: f64) -> anyhow::Result<Self> {
        Ok(Self {
            // 1 µs to 10 min, 3 significant digits.
            latency: Histogram::new_with_bounds(1, 600_000_000, 3)
                .context("cannot create the latency histogram")?,
            ok: 0,
            units: 0,
            iterations: 0,
            errors: 0,
            error_samples: Vec::new(),
            seconds,
        })
    }

    fn merge(&mut self, other: Recorded) -> anyhow::Result<()> {
        self.latency
            .add(&other.latency)
            .context("cannot merge latency histograms")?;
        self.ok += other.ok;
        self.units += other.units;
        self.iterations += other.iterations;
        self.errors += other.errors;
        for e in other.error_samples {
            if self.error_samples.len() < KEPT_ERRORS && !self.error_samples.contains(&e) {
                self.error_samples.push(e);
            }
        }
        Ok(())
    }

    /// Adds a later measurement of the same thing (another slice of the window): its
    /// interactions, and its length.
    pub fn append(&mut self, other: Recorded) -> anyhow::Result<()> {
        let seconds = other.seconds;
        self.merge(other)?;
        self.seconds += seconds;
        Ok(())
    }

    /// Successful interactions per second.
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.seconds
    }

    /// Units per second.
    pub fn unit_rate(&self) -> f64 {
        self.units as f64 / self.seconds
    }

    /// Iterations per second.
    pub fn iteration_rate(&self) -> f64 {
        self.iterations as f64 / self.seconds
    }

    /// A latency quantile in milliseconds (0 when nothing succeeded).
    pub fn quantile_ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }

    /// The slowest successful interaction in milliseconds.
    pub fn max_ms(&self) -> f64 {
        self.latency.max() as f64 / 1000.0
    }
}

impl Conn {
    fn in_window(&self, t: Instant) -> bool {
        t >= self.window_start && t < self.window_end
    }

    /// Sends a request and reads the whole body. `units` is credited when it succeeds.
    pub async fn send(
        &mut self,
        request: reqwest::RequestBuilder,
        units: u64,
    ) -> Result<Reply, Halt> {
        let start = Instant::now();
        if start >= self.window_end {
            return Err(Halt::Deadline);
        }
        let outcome = match request.send().await {
            Ok(response) => {
                let status = response.status();
                let headers = response.headers().clone();
                match response.bytes().await {
                    Ok(_) if status.is_success() => Ok(Reply { headers }),
                    Ok(body) => Err(format!(
                        "HTTP {status}: {}",
                        String::from_utf8_lossy(&body[..body.len().min(300)])
                    )),
                    Err(e) => Err(format!("reading the body failed: {e}")),
                }
            }
            Err(e) => Err(format!("request failed: {e}")),
        };
        let end = Instant::now();
        match outcome {
            Ok(reply) => {
                if self.in_window(end) {
                    let micros =
                        u64::try_from(end.duration_since(start).as_micros()).unwrap_or(u64::MAX);
                    self.rec.latency.saturating_record(micros.max(1));
                    self.rec.ok += 1;
                    self.rec.units += units;
                }
                Ok(reply)
            }
            Err(what) => {
                self.note_error(what);
                Err(Halt::Failed)
            }
        }
    }

    /// Counts a failure found after a request succeeded at the HTTP level (a malformed answer).
    pub fn fail(&mut self, what: String) -> Halt {
        self.note_error(what);
        Halt::Failed
    }

    fn note_error(&mut self, what: String) {
        self.rec.errors += 1;
        if self.rec.error_samples.len() < KEPT_ERRORS && !self.rec.error_samples.contains(&what) {
            self.rec.error_samples.push(what);
        }
    }

    pub fn get(&self, path: &str) -> RequestBuilder {
        self.client.get(format!("{}{path}", self.base))
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.base))
            .header(reqwest::header::CONTENT_TYPE, "application/fhir+json")
    }
}

/// An HTTP client of one server: every request it builds carries the server's current token.
/// The harness makes no request to a server but through one, so none can go out without it.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    bearer: Bearer,
}

impl Client {
    pub fn request(&self, method: Method, url: impl IntoUrl) -> RequestBuilder {
        self.bearer.authorize(self.http.request(method, url))
    }

    pub fn get(&self, url: impl IntoUrl) -> RequestBuilder {
        self.request(Method::GET, url)
    }

    pub fn put(&self, url: impl IntoUrl) -> RequestBuilder {
        self.request(Method::PUT, url)
    }
}

/// One keep-alive connection's client, sending `bearer`.
pub fn client(bearer: &Bearer) -> anyhow::Result<Client> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .tcp_nodelay(true)
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .context("cannot build the HTTP client")?;
    Ok(Client {
        http,
        bearer: bearer.clone(),
    })
}

/// Runs `workload` against `base` (e.g. `http://127.0.0.1:8080`) with the given shape, every
/// request carrying `bearer`.
pub async fn run(
    workload: Arc<Workload>,
    base: &str,
    bearer: &Bearer,
    shape: Shape,
) -> anyhow::Result<Recorded> {
    let base: Arc<str> = Arc::from(base);
    let window_start = Instant::now() + shape.warmup;
    let window_end = window_start + shape.duration;
    let seconds = shape.duration.as_secs_f64();
    let mut tasks = Vec::with_capacity(shape.connections);
    for worker in 0..shape.connections {
        let mut conn = Conn {
            client: client(bearer)?,
            base: base.clone(),
            window_start,
            window_end,
            rec: Recorded::new(seconds)?,
        };
        let workload = workload.clone();
        tasks.push(tokio::spawn(async move {
            let mut iteration = 0u64;
            loop {
                match workload.iteration(&mut conn, worker, iteration).await {
                    Ok(()) => {
                        if conn.in_window(Instant::now()) {
                            conn.rec.iterations += 1;
                        }
                    }
                    Err(Halt::Failed) => {}
                    Err(Halt::Deadline) => break,
                }
                iteration += 1;
            }
            conn.rec
        }));
    }
    let mut total = Recorded::new(seconds)?;
    // Bounded: every request has its own timeout, so workers end at most that long after the window.
    let limit = window_end + REQUEST_TIMEOUT + Duration::from_secs(5);
    for task in tasks {
        let left = limit.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, task).await {
            Ok(Ok(rec)) => total.merge(rec)?,
            Ok(Err(e)) => anyhow::bail!("a load worker failed: {e}"),
            Err(_) => anyhow::bail!("a load worker did not stop after the window ended"),
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn slices_add_up_to_one_window() {
        let mut total = Recorded::new(1.0).unwrap();
        total.ok = 100;
        total.latency.record(1_000).unwrap();
        let mut slice = Recorded::new(1.5).unwrap();
        slice.ok = 200;
        slice.errors = 1;
        slice.latency.record(3_000).unwrap();
        total.append(slice).unwrap();
        // 300 interactions in 2.5 s of measurement, both slices' latencies kept.
        assert!((total.seconds - 2.5).abs() < 1e-9);
        assert!((total.rate() - 120.0).abs() < 1e-9);
        assert_eq!(total.errors, 1);
        assert_eq!(total.latency.len(), 2);
    }

    /// A keep-alive HTTP/1.1 responder answering every (body-less) request with `status`.
    async fn responder(status: &'static str) -> String {
        guarded_responder(status, None).await
    }

    /// [`responder`], but a request without the header line `authorization: Bearer <token>`
    /// gets 401.
    async fn guarded_responder(status: &'static str, token: Option<&'static str>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    loop {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match socket.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        buf.drain(..end);
                        let allowed = token.is_none_or(|t| {
                            head.contains(&format!("\r\nauthorization: bearer {t}\r\n"))
                        });
                        let status = if allowed { status } else { "401 Unauthorized" };
                        let reply = format!("HTTP/1.1 {status}\r\ncontent-length: 2\r\n\r\nok");
                        if socket.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        format!("http://{addr}")
    }

    fn shape() -> Shape {
        Shape {
            connections: 3,
            warmup: Duration::from_millis(100),
            duration: Duration::from_millis(400),
        }
    }

    fn get() -> Arc<Workload> {
        Arc::new(Workload::Get { path: "/x".into() })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn successes_are_timed_inside_the_window() {
        let base = responder("200 OK").await;
        let rec = run(get(), &base, &Bearer::none(), shape()).await.unwrap();
        assert!(rec.ok > 10, "only {} requests", rec.ok);
        assert_eq!(rec.errors, 0);
        assert_eq!(rec.latency.len(), rec.ok);
        assert_eq!(rec.iterations, rec.ok);
        assert!((rec.rate() - rec.ok as f64 / 0.4).abs() < 1e-6);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_request_carries_the_token_and_a_401_is_a_failure() {
        let base = guarded_responder("200 OK", Some("t0k3n")).await;
        let rec = run(get(), &base, &Bearer::new("t0k3n").unwrap(), shape())
            .await
            .unwrap();
        assert!(rec.ok > 10, "only {} requests", rec.ok);
        assert_eq!(rec.errors, 0);
        let rec = run(get(), &base, &Bearer::none(), shape()).await.unwrap();
        assert_eq!(rec.ok, 0);
        assert!(rec.errors > 10);
        assert_eq!(rec.error_samples, ["HTTP 401 Unauthorized: ok"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failures_are_counted_not_timed() {
        let base = responder("404 Not Found").await;
        let rec = run(get(), &base, &Bearer::none(), shape()).await.unwrap();
        assert_eq!(rec.ok, 0);
        assert!(rec.errors > 10);
        assert_eq!(rec.latency.len(), 0);
        assert_eq!(rec.error_samples, ["HTTP 404 Not Found: ok"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_server_that_is_gone_is_an_error_and_the_run_still_ends() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let rec = run(
            get(),
            &format!("http://127.0.0.1:{port}"),
            &Bearer::none(),
            shape(),
        )
        .await
        .unwrap();
        assert_eq!(rec.ok, 0);
        assert!(rec.errors > 0);
    }
}
