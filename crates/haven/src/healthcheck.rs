//! `haven healthcheck [--ready]`: a dependency-free probe of `/healthz` (or `/readyz`), for
//! images without a shell or curl.
//!
//! With `[tls]` the probe speaks TLS and trusts exactly the certificate in `tls.cert_file`
//! (pinned: it checks its own server, whatever CA signed it). With mutual TLS it has no client
//! certificate, so it cannot send a request: the liveness probe counts a handshake that ends in
//! the server's `certificate_required` alert as alive; `--ready` cannot be answered and fails
//! with the reason.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::config::{Config, TlsConfig};

pub fn run(config: &Config, ready: bool) -> ExitCode {
    let path = if ready { "/readyz" } else { "/healthz" };
    match probe(config, path, ready) {
        Ok(()) => {
            println!("healthy");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("haven: unhealthy: {e}");
            ExitCode::FAILURE
        }
    }
}

fn probe(config: &Config, path: &str, ready: bool) -> Result<(), String> {
    let mut addr = config.listen;
    // A wildcard listen address is reached through loopback.
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let timeout = Duration::from_secs(3);
    let s = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let Some(tls) = &config.tls else {
        return get(s, addr, path);
    };
    let mut stream = tls_stream(s, addr, tls)?;
    if tls.client_ca_file.is_none() {
        return get(stream, addr, path);
    }
    // Mutual TLS: no request, only the handshake (with the pinned certificate) and the server's
    // verdict on the missing client certificate. (Writing a request first would race that
    // verdict and could meet a closed connection instead.)
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Err(e) if certificate_required(&e) && !ready => Ok(()),
        Err(e) if certificate_required(&e) => Err(format!(
            "{addr} requires a client certificate (mutual TLS), so readiness cannot be probed \
             from here; use a TCP probe, or probe through a client with a certificate"
        )),
        Err(e) => Err(format!("no TLS answer from {addr}: {e}")),
        Ok(_) => Err(format!(
            "{addr} did not ask for a client certificate, though tls.client_ca_file is set"
        )),
    }
}

/// The server's `certificate_required` alert (TLS 1.3, RFC 8446 §4.4.2.4).
fn certificate_required(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|r| {
            matches!(
                r,
                rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired)
            )
        })
}

fn get(mut s: impl Read + Write, addr: SocketAddr, path: &str) -> Result<(), String> {
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .and_then(|()| s.flush())
    .map_err(|e| format!("cannot send to {addr}: {e}"))?;
    let mut buf = [0u8; 64];
    let n = s
        .read(&mut buf)
        .map_err(|e| format!("no answer from {addr}: {e}"))?;
    let head = String::from_utf8_lossy(&buf[..n]);
    if head.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        Err(format!(
            "{addr}{path} answered: {}",
            head.lines().next().unwrap_or("")
        ))
    }
}

fn tls_stream(
    tcp: TcpStream,
    addr: SocketAddr,
    tls: &TlsConfig,
) -> Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>, String> {
    let leaf = CertificateDer::pem_file_iter(&tls.cert_file)
        .ok()
        .and_then(|mut certs| certs.next())
        .and_then(Result::ok)
        .ok_or_else(|| format!("cannot read a certificate from {}", tls.cert_file.display()))?;
    let provider = Arc::new(crate::tls::intermediate_provider());
    let verifier = Arc::new(Pinned {
        leaf,
        algorithms: provider.signature_verification_algorithms,
    });
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    let conn = rustls::ClientConnection::new(Arc::new(client), ServerName::from(addr.ip()))
        .map_err(|e| e.to_string())?;
    Ok(rustls::StreamOwned::new(conn, tcp))
}

/// Trusts one certificate: the server's own, read from its configuration. (Just after the file
/// changed and before the server reloaded it, the probe fails; the next one passes.)
#[derive(Debug)]
struct Pinned {
    leaf: CertificateDer<'static>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.leaf.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the server presents another certificate than tls.cert_file".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
