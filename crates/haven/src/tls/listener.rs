//! The TLS listener: TCP accept, handshakes off the accept path, and what a connection tells the
//! application about its peer.
//!
//! It is an [`axum::serve::Listener`], so `axum::serve` still runs the connections (HTTP/1.1
//! through hyper) and its graceful shutdown. Accepting and handshaking are split: one task
//! accepts TCP connections and starts a handshake task for each, bounded in time
//! ([`HANDSHAKE_TIMEOUT`]) and in number ([`MAX_HANDSHAKES`]), so a slow or silent client holds
//! one socket for seconds at most and never delays anyone else's connection. Finished
//! handshakes reach axum through a channel.
//!
//! Each connection's [`TlsPeer`] (the TCP peer address, and with mutual TLS the client
//! certificate's names) is its axum connect info; [`for_tls`] turns it into the
//! `ConnectInfo<SocketAddr>` the HTTP middleware reads (so `trusted_proxies` works as without
//! TLS) and a [`PeerIdentity`] request extension, and adds HSTS to every response.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::serve::IncomingStream;
use haven_http::PeerIdentity;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use x509_parser::extensions::GeneralName;

use super::TlsServer;

/// Longest a client may take from TCP connect to a finished handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at once; further connections wait in the kernel's backlog.
pub const MAX_HANDSHAKES: usize = 512;

/// What the application learns about a TLS connection's peer.
#[derive(Clone, Debug)]
pub struct TlsPeer {
    pub addr: SocketAddr,
    /// The verified client certificate's names (mutual TLS only).
    pub identity: Option<PeerIdentity>,
}

impl Connected<IncomingStream<'_, TlsListener>> for TlsPeer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// Accepted, handshaken TLS connections.
pub struct TlsListener {
    incoming: mpsc::Receiver<(TlsStream<TcpStream>, TlsPeer)>,
    local: SocketAddr,
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl TlsListener {
    /// Starts accepting on `tcp`; the accept task ends when the listener is dropped (axum
    /// drops it when a graceful shutdown begins).
    pub fn new(tcp: TcpListener, tls: Arc<TlsServer>) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, incoming) = mpsc::channel(64);
        tokio::spawn(accept_loop(tcp, tls, tx));
        Ok(TlsListener { incoming, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = TlsPeer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.incoming.recv().await {
            Some(conn) => conn,
            // The accept task only ends once this receiver is gone; until axum stops calling
            // accept, there is nothing more to hand out.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(TlsPeer {
            addr: self.local,
            identity: None,
        })
    }
}

type Handshaken = mpsc::Sender<(TlsStream<TcpStream>, TlsPeer)>;

async fn accept_loop(tcp: TcpListener, tls: Arc<TlsServer>, tx: Handshaken) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let permit = tokio::select! {
            p = handshakes.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            () = tx.closed() => return,
        };
        let (stream, addr) = tokio::select! {
            r = tcp.accept() => match r {
                Ok(conn) => conn,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
            () = tx.closed() => return,
        };
        // TLS writes small records; waiting to coalesce them only adds latency.
        let _ = stream.set_nodelay(true);
        let acceptor = TlsAcceptor::from(tls.current());
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let identity = peer_identity(tls.get_ref().1);
                    let _ = tx.send((tls, TlsPeer { addr, identity })).await;
                }
                // Scanners and clients with the wrong certificate fail here all day: not
                // worth more than a debug line each.
                Ok(Err(e)) => tracing::debug!(peer = %addr, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(peer = %addr, "TLS handshake timed out"),
            }
        });
    }
}

/// Per-connection errors (the peer gave up before accept) need no pause; others (out of file
/// descriptors) do, or the loop would spin.
async fn accept_error(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "cannot accept connections; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// The names of the client certificate the handshake verified, if one was presented.
fn peer_identity(conn: &rustls::ServerConnection) -> Option<PeerIdentity> {
    let leaf = conn.peer_certificates()?.first()?;
    Some(certificate_names(leaf.as_ref()))
}

/// The subject common name and the DNS and URI subject alternative names of a certificate.
/// A certificate the verifier accepted but this parser does not is "unnamed", not refused.
pub fn certificate_names(der: &[u8]) -> PeerIdentity {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return PeerIdentity::default();
    };
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .map(str::to_owned);
    let (mut dns, mut uris) = (Vec::new(), Vec::new());
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => dns.push((*d).to_owned()),
                GeneralName::URI(u) => uris.push((*u).to_owned()),
                _ => {}
            }
        }
    }
    PeerIdentity::new(cn, dns, uris)
}

/// Serves `router` over TLS: with the connect info the HTTP layer expects (the TCP peer as
/// `ConnectInfo<SocketAddr>`, the client certificate's names as a [`PeerIdentity`]), and with
/// `Strict-Transport-Security` on every response, as the gateway sends it (two years, RFC 6797):
/// a browser that once reached Haven over TLS never tries plain HTTP to it again.
pub fn for_tls(router: Router) -> Router {
    router
        .layer(axum::middleware::map_response(hsts))
        .layer(axum::middleware::map_request(move_peer))
}

async fn hsts(mut resp: axum::response::Response) -> axum::response::Response {
    resp.headers_mut().insert(
        axum::http::header::STRICT_TRANSPORT_SECURITY,
        axum::http::HeaderValue::from_static("max-age=63072000"),
    );
    resp
}

async fn move_peer(mut req: Request) -> Request {
    if let Some(ConnectInfo(peer)) = req.extensions_mut().remove::<ConnectInfo<TlsPeer>>() {
        req.extensions_mut().insert(ConnectInfo(peer.addr));
        if let Some(identity) = peer.identity {
            req.extensions_mut().insert(identity);
        }
    }
    req
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_subject_and_the_alternative_names() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["lab.example.org".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "lab-system");
        params.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://example.org/lab".try_into().unwrap(),
        ));
        let cert = params.self_signed(&key).unwrap();
        let id = certificate_names(cert.der());
        assert_eq!(id.common_name.as_deref(), Some("lab-system"));
        assert_eq!(id.dns_names, ["lab.example.org"]);
        assert_eq!(id.uris, ["spiffe://example.org/lab"]);
        assert_eq!(certificate_names(b"junk"), PeerIdentity::default());
    }
}
