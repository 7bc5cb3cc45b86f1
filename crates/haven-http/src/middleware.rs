//! Cross-cutting middleware: request ids and client addresses (with a tracing span), and
//! security headers.
//!
//! The client address is the TCP peer, unless the peer is one of the configured trusted proxies
//! (the gateway in front of Haven): then it is the right-most `X-Forwarded-For` hop that is not
//! itself a trusted proxy. Hops to the left of that one were written by the client and prove
//! nothing; an untrusted peer's `X-Forwarded-For` is ignored entirely.
//!
//! When Haven terminates mutual TLS itself, the binary puts the verified client certificate's
//! names in each request as a [`PeerIdentity`]; it is logged with the request. It names the
//! calling service at the transport level only: access is still decided by the bearer token.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

/// The id of the current request: the client's `X-Request-Id` when it is a short token, else a
/// fresh UUID. Every log line of the request carries it, and the response echoes it.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

const X_REQUEST_ID: &str = "x-request-id";

fn acceptable_client_id(v: &str) -> bool {
    // Only short tokens: a client must not be able to inject log content through this header.
    !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Gives the request its id and client address (both request extensions) and runs it inside a
/// span carrying both, so every log line of the request names them.
pub(crate) async fn request_id(
    State(trusted): State<TrustedProxies>,
    mut req: Request,
    next: Next,
) -> Response {
    // Absent only when the router is served without connect info (unit tests of other layers).
    let client = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| trusted.client_address(peer.ip(), req.headers()));
    if let Some(ip) = client {
        req.extensions_mut().insert(ClientAddress(ip));
    }
    let id = req
        .headers()
        .get(X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| acceptable_client_id(v))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    req.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        client_address = tracing::field::Empty,
        peer_certificate = tracing::field::Empty,
        method = %req.method(),
        interaction = tracing::field::Empty,
        resource_type = tracing::field::Empty,
    );
    if let Some(ip) = client {
        span.record("client_address", tracing::field::display(ip));
    }
    if let Some(peer) = req.extensions().get::<PeerIdentity>() {
        span.record("peer_certificate", tracing::field::display(peer));
    }
    let is_fhir = req.uri().path().starts_with(crate::FHIR_BASE);
    let started = Instant::now();
    let mut resp = next.run(req).instrument(span.clone()).await;
    if is_fhir {
        record_request(&span, &resp, started.elapsed().as_secs_f64());
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(X_REQUEST_ID, v);
    }
    resp
}

/// Metric labels of a FHIR request, set by the handler as a response extension. A response
/// without it (e.g. from a panicking handler) is counted as interaction "unknown".
#[derive(Clone, Copy, Debug)]
pub(crate) struct RequestLabels {
    pub interaction: &'static str,
    pub resource_type: &'static str,
}

/// Counts the request and writes its access log line, inside the request's span. Label values
/// come from closed sets only: never an id or any client text.
fn record_request(span: &tracing::Span, resp: &Response, elapsed: f64) {
    let labels = resp
        .extensions()
        .get::<RequestLabels>()
        .copied()
        .unwrap_or(RequestLabels {
            interaction: "unknown",
            resource_type: "none",
        });
    let status = resp.status().as_u16();
    metrics::counter!(
        "haven_http_requests_total",
        "interaction" => labels.interaction,
        "resource_type" => labels.resource_type,
        "status" => status.to_string()
    )
    .increment(1);
    metrics::histogram!(
        "haven_http_request_duration_seconds",
        "interaction" => labels.interaction,
        "resource_type" => labels.resource_type
    )
    .record(elapsed);
    span.record("interaction", labels.interaction);
    span.record("resource_type", labels.resource_type);
    span.in_scope(|| tracing::info!(status, duration_ms = elapsed * 1000.0, "request completed"));
}

/// Headers every response carries. PHI must not be cached by intermediaries or browsers, and
/// content must never be sniffed into something executable.
pub(crate) async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

/// The address of the client that sent the current request (see the module docs for how it is
/// found). A request extension, for audit records and rate decisions; also logged on every line
/// of the request as `client_address`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddress(pub IpAddr);

/// The names in the client certificate a mutual-TLS connection was verified with (subject
/// common name, DNS and URI subject alternative names), as a request extension.
///
/// It identifies the calling service at the transport level (which CA signed it is the
/// listener's business); it grants nothing: authorization stays with the bearer token. Names
/// with characters outside printable ASCII are dropped by [`PeerIdentity::new`], so a
/// certificate cannot write control characters into a log line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    pub common_name: Option<String>,
    pub dns_names: Vec<String>,
    pub uris: Vec<String>,
}

impl PeerIdentity {
    pub fn new(common_name: Option<String>, dns_names: Vec<String>, uris: Vec<String>) -> Self {
        let printable = |s: &String| {
            !s.is_empty() && s.len() <= 256 && s.bytes().all(|b| (0x20..0x7f).contains(&b))
        };
        PeerIdentity {
            common_name: common_name.filter(printable),
            dns_names: dns_names.into_iter().filter(printable).collect(),
            uris: uris.into_iter().filter(printable).collect(),
        }
    }

    /// The one name a log line shows: a URI SAN (e.g. a SPIFFE id) first, then a DNS SAN,
    /// then the common name.
    pub fn name(&self) -> Option<String> {
        self.uris
            .first()
            .map(|u| format!("uri:{u}"))
            .or_else(|| self.dns_names.first().map(|d| format!("dns:{d}")))
            .or_else(|| self.common_name.as_ref().map(|c| format!("cn:{c}")))
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name().as_deref().unwrap_or("unnamed"))
    }
}

const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// The peers whose `X-Forwarded-For` Haven believes: the gateway(s) in front of it. Empty (the
/// default) means no peer is trusted and the TCP peer is always the client.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(Arc<[Network]>);

/// An IP network: an address and a prefix length (a single address has the full length).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Network {
    addr: IpAddr,
    prefix: u8,
}

/// A `trusted_proxies` entry that is not an IP address or CIDR block, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidTrustedProxy {
    pub entry: String,
    pub reason: &'static str,
}

impl fmt::Display for InvalidTrustedProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "'{}' {}", self.entry, self.reason)
    }
}

impl std::error::Error for InvalidTrustedProxy {}

impl TrustedProxies {
    /// Parses addresses (`10.0.0.5`, `::1`) and CIDR blocks (`10.0.0.0/8`, `fd00::/8`).
    pub fn parse<'a>(
        entries: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, InvalidTrustedProxy> {
        let networks = entries
            .into_iter()
            .map(str::parse)
            .collect::<Result<Vec<Network>, _>>()?;
        Ok(Self(networks.into()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(ip))
    }

    /// The client address of a request that arrived from `peer` with `headers`.
    ///
    /// A trusted peer's `X-Forwarded-For` hops (all header lines, in order) are read from the
    /// right: the first hop that is not a trusted proxy is the client. Malformed hops are skipped;
    /// only trusted proxies write to the right of the client's own hop, so nothing the client sent
    /// can be reached by skipping. When every hop is a trusted proxy the left-most one is the
    /// client (as nginx's `real_ip_recursive` does); with no usable hop, the peer is.
    pub fn client_address(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.contains(peer) {
            return peer;
        }
        let hops: Vec<IpAddr> = headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .filter_map(parse_hop)
            .collect();
        hops.iter()
            .rev()
            .find(|ip| !self.contains(**ip))
            .or(hops.first())
            .copied()
            .unwrap_or(peer)
    }
}

/// One `X-Forwarded-For` hop: an address, optionally with a port (`1.2.3.4:80`, `[::1]:80`) or
/// in brackets (`[::1]`). Anything else (`unknown`, obfuscated ids, garbage) is `None`.
fn parse_hop(raw: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(raw).ok()?.trim_matches([' ', '\t']);
    let ip = s
        .parse::<IpAddr>()
        .or_else(|_| s.parse::<SocketAddr>().map(|a| a.ip()))
        .or_else(|_| {
            s.strip_prefix('[')
                .and_then(|v| v.strip_suffix(']'))
                .unwrap_or("")
                .parse::<IpAddr>()
        })
        .ok()?;
    Some(ip.to_canonical())
}

impl Network {
    fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                (u32::from(net) ^ u32::from(ip)) & mask_v4(self.prefix) == 0
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                (u128::from(net) ^ u128::from(ip)) & mask_v6(self.prefix) == 0
            }
            _ => false,
        }
    }
}

fn mask_v4(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask_v6(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl FromStr for Network {
    type Err = InvalidTrustedProxy;

    fn from_str(entry: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| InvalidTrustedProxy {
            entry: entry.to_owned(),
            reason,
        };
        let (addr, prefix) = match entry.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (entry.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| {
            invalid("is not an IP address or CIDR block (e.g. 10.0.0.5, 10.0.0.0/8, fd00::/8)")
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| invalid("has an invalid prefix length"))?,
        };
        if prefix == 0 {
            return Err(invalid(
                "would trust every address, so any client could forge its address",
            ));
        }
        let network = Network { addr, prefix };
        let host_bits_clear = match addr {
            IpAddr::V4(a) => u32::from(a) & !mask_v4(prefix) == 0,
            IpAddr::V6(a) => u128::from(a) & !mask_v6(prefix) == 0,
        };
        if !host_bits_clear {
            return Err(invalid(
                "has host bits set after the prefix; write the network address (e.g. 10.0.0.0/8)",
            ));
        }
        Ok(network)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(entries: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(entries.iter().copied()).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(
                X_FORWARDED_FOR,
                HeaderValue::from_bytes(v.as_bytes()).unwrap(),
            );
        }
        h
    }

    /// The client address for a request from `peer` carrying `headers`.
    fn client(t: &TrustedProxies, peer: &str, headers: &[&str]) -> IpAddr {
        t.client_address(ip(peer), &xff(headers))
    }

    #[test]
    fn untrusted_peers_cannot_forge_their_address() {
        let none = TrustedProxies::default();
        assert_eq!(
            client(&none, "203.0.113.9", &["6.6.6.6"]),
            ip("203.0.113.9")
        );
        let t = trusted(&["10.0.0.0/8"]);
        assert_eq!(client(&t, "203.0.113.9", &["6.6.6.6"]), ip("203.0.113.9"));
        assert_eq!(
            client(&t, "203.0.113.9", &["10.1.1.1, 6.6.6.6"]),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn a_trusted_peer_names_the_client() {
        let t = trusted(&["127.0.0.1"]);
        assert_eq!(
            client(&t, "127.0.0.1", &["198.51.100.7"]),
            ip("198.51.100.7")
        );
        // Without the header the gateway itself is the client.
        assert_eq!(client(&t, "127.0.0.1", &[]), ip("127.0.0.1"));
    }

    #[test]
    fn spoofed_hops_left_of_the_client_are_ignored() {
        // The client sent "6.6.6.6"; an appending gateway added the real address.
        let t = trusted(&["10.0.0.0/8"]);
        assert_eq!(
            client(&t, "10.0.0.2", &["6.6.6.6, 198.51.100.7"]),
            ip("198.51.100.7")
        );
        // Also when the client sent its own header line.
        assert_eq!(
            client(&t, "10.0.0.2", &["6.6.6.6", "198.51.100.7"]),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn chains_of_trusted_proxies_are_walked_from_the_right() {
        let t = trusted(&["10.0.0.0/8", "192.168.1.1"]);
        assert_eq!(
            client(
                &t,
                "10.0.0.2",
                &["6.6.6.6, 198.51.100.7, 192.168.1.1, 10.9.9.9"]
            ),
            ip("198.51.100.7")
        );
        // Split over several header lines, in order.
        assert_eq!(
            client(
                &t,
                "10.0.0.2",
                &["6.6.6.6, 198.51.100.7", "192.168.1.1", "10.9.9.9"]
            ),
            ip("198.51.100.7")
        );
        // Every hop trusted: the left-most one is the best we know.
        assert_eq!(
            client(&t, "10.0.0.2", &["10.3.3.3, 192.168.1.1"]),
            ip("10.3.3.3")
        );
    }

    #[test]
    fn malformed_hops_are_skipped() {
        let t = trusted(&["10.0.0.0/8"]);
        for garbage in [
            "198.51.100.7, unknown",
            "198.51.100.7, , ,",
            "198.51.100.7,_hidden",
            "198.51.100.7, 10.0.0.300",
            "198.51.100.7, 1.2.3.4.5",
            "198.51.100.7, fe80::1%eth0",
            "198.51.100.7, \"1.2.3.4\"",
        ] {
            assert_eq!(
                client(&t, "10.0.0.2", &[garbage]),
                ip("198.51.100.7"),
                "{garbage}"
            );
        }
        // Non-UTF-8 bytes in one hop spoil only that hop.
        let mut h = HeaderMap::new();
        h.append(
            X_FORWARDED_FOR,
            HeaderValue::from_bytes(b"198.51.100.7, \xff\xfe").unwrap(),
        );
        assert_eq!(t.client_address(ip("10.0.0.2"), &h), ip("198.51.100.7"));
        // Nothing usable at all: the peer.
        assert_eq!(
            client(&t, "10.0.0.2", &["unknown, ,garbage"]),
            ip("10.0.0.2")
        );
        assert_eq!(client(&t, "10.0.0.2", &[""]), ip("10.0.0.2"));
    }

    #[test]
    fn hops_with_ports_and_brackets() {
        let t = trusted(&["10.0.0.0/8"]);
        assert_eq!(
            client(&t, "10.0.0.2", &["198.51.100.7:4711"]),
            ip("198.51.100.7")
        );
        assert_eq!(
            client(&t, "10.0.0.2", &["[2001:db8::7]:443"]),
            ip("2001:db8::7")
        );
        assert_eq!(
            client(&t, "10.0.0.2", &["[2001:db8::7]"]),
            ip("2001:db8::7")
        );
        assert_eq!(
            client(&t, "10.0.0.2", &["\t2001:db8::7 "]),
            ip("2001:db8::7")
        );
    }

    #[test]
    fn ipv6_and_mapped_addresses() {
        let t = trusted(&["fd00::/8", "::1"]);
        assert_eq!(client(&t, "::1", &["2001:db8::7"]), ip("2001:db8::7"));
        assert_eq!(
            client(&t, "fd12:3456::1", &["2001:db8::7, fd00::9"]),
            ip("2001:db8::7")
        );
        assert_eq!(client(&t, "2001:db8::99", &["6.6.6.6"]), ip("2001:db8::99"));
        // An IPv4 peer seen through an IPv6 socket is the IPv4 address.
        let t = trusted(&["127.0.0.1"]);
        assert_eq!(
            client(&t, "::ffff:127.0.0.1", &["198.51.100.7"]),
            ip("198.51.100.7")
        );
        assert_eq!(
            client(&t, "::ffff:203.0.113.9", &["6.6.6.6"]),
            ip("203.0.113.9")
        );
        // A mapped hop is a trusted IPv4 proxy too.
        assert_eq!(
            client(&t, "127.0.0.1", &["198.51.100.7, ::ffff:127.0.0.1"]),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn networks_match_by_prefix() {
        let n: Network = "192.168.0.0/16".parse().unwrap();
        assert!(n.contains(ip("192.168.255.1")));
        assert!(!n.contains(ip("192.169.0.1")));
        assert!(!n.contains(ip("::1")));
        let n: Network = "2001:db8::/32".parse().unwrap();
        assert!(n.contains(ip("2001:db8:ffff::1")));
        assert!(!n.contains(ip("2001:db9::1")));
        let n: Network = "10.1.2.3/32".parse().unwrap();
        assert!(n.contains(ip("10.1.2.3")) && !n.contains(ip("10.1.2.4")));
        let n: Network = "128.0.0.0/1".parse().unwrap();
        assert!(n.contains(ip("255.1.1.1")) && !n.contains(ip("127.0.0.1")));
    }

    #[test]
    fn bad_entries_are_refused_with_the_reason() {
        let err = |e: &str| TrustedProxies::parse([e]).unwrap_err().to_string();
        assert!(err("gateway.local").contains("not an IP address"));
        assert!(err("10.0.0.0/33").contains("prefix length"));
        assert!(err("fd00::/129").contains("prefix length"));
        assert!(err("10.0.0.0/x").contains("prefix length"));
        assert!(err("0.0.0.0/0").contains("every address"));
        assert!(err("::/0").contains("every address"));
        assert!(err("10.0.0.1/8").contains("host bits"));
        assert!(err("").contains("not an IP address"));
        assert!(TrustedProxies::parse(["10.0.0.1", " ::1 ", "fd00::/8"]).is_ok());
    }

    #[test]
    fn peer_identity_prefers_uri_then_dns_then_cn_and_drops_unprintable_names() {
        let p = PeerIdentity::new(
            Some("svc".into()),
            vec!["svc.example.org".into()],
            vec!["spiffe://example.org/lab".into()],
        );
        assert_eq!(p.to_string(), "uri:spiffe://example.org/lab");
        let p = PeerIdentity::new(Some("svc".into()), vec!["svc.example.org".into()], vec![]);
        assert_eq!(p.to_string(), "dns:svc.example.org");
        let p = PeerIdentity::new(
            Some("svc\n\"forged\"".into()),
            vec!["a\u{7f}".into()],
            vec![],
        );
        assert_eq!(p, PeerIdentity::default());
        assert_eq!(p.to_string(), "unnamed");
    }

    /// The middleware puts the address in the request extensions, from the connection's peer
    /// (`ConnectInfo`, which `axum::serve` adds with `into_make_service_with_connect_info`).
    #[tokio::test]
    async fn the_middleware_sets_the_client_address() {
        use axum::Router;
        use axum::body::Body;
        use axum::routing::get;
        use tower::ServiceExt;

        async fn show(client: Option<axum::Extension<ClientAddress>>) -> String {
            client.map_or_else(|| "none".into(), |c| c.0.0.to_string())
        }
        let app = Router::new()
            .route("/", get(show))
            .layer(axum::middleware::from_fn_with_state(
                trusted(&["127.0.0.1"]),
                request_id,
            ));
        for (peer, expected) in [
            (Some("127.0.0.1"), "198.51.100.7"),
            (Some("192.0.2.1"), "192.0.2.1"),
            (None, "none"),
        ] {
            let mut req = axum::http::Request::get("/")
                .header(X_FORWARDED_FOR, "6.6.6.6, 198.51.100.7")
                .body(Body::empty())
                .unwrap();
            if let Some(peer) = peer {
                req.extensions_mut()
                    .insert(ConnectInfo(SocketAddr::new(ip(peer), 40000)));
            }
            let resp = app.clone().oneshot(req).await.unwrap();
            let body = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
            assert_eq!(body, expected.as_bytes(), "peer {peer:?}");
        }
    }
}
