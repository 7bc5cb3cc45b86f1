//! `[tls]`: Haven terminates TLS itself (issue 8), with rustls on aws-lc-rs.
//!
//! The profile is Mozilla's "intermediate" (server-side TLS guidelines v5): TLS 1.2 and 1.3
//! only; TLS 1.3 with AES-128-GCM, AES-256-GCM and ChaCha20-Poly1305; TLS 1.2 only ECDHE
//! (ECDSA or RSA certificates) with AES-GCM or ChaCha20-Poly1305; X25519, P-256 and P-384.
//! Every list is written out here rather than taken from rustls' defaults, so a dependency
//! update cannot widen the profile unnoticed. ALPN offers only `http/1.1` (Haven's axum has no
//! HTTP/2). rustls has no renegotiation, compression or session tickets for TLS 1.2 at all.
//!
//! Certificates are reloaded without a restart: a watcher re-reads the files every
//! `reload_seconds` and, when their content changed, builds the new key pair and swaps it into
//! the certificate resolver ([`ReloadingCert`], an `Arc` behind a lock, so a handshake sees the
//! old pair or the new one, never half of each). A new client CA file rebuilds the server
//! configuration the listener hands to new connections. A file that does not load (missing,
//! unparsable, key not matching the certificate, expired) is logged once as an error and the
//! old one is kept; connections already open keep what they negotiated.
//!
//! With `client_ca_file`, a client certificate signed by that CA is required (the handshake
//! fails without one); its names become a [`haven_http::PeerIdentity`] on each request
//! ([`listener`]).

pub mod listener;

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use rustls::crypto::CryptoProvider;
use rustls::crypto::aws_lc_rs::{cipher_suite as cs, kx_group};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use sha2::{Digest, Sha256};

use crate::config::TlsConfig;

/// The only application protocol offered (RFC 7301).
const ALPN_HTTP11: &[u8] = b"http/1.1";

/// aws-lc-rs with Mozilla's intermediate cipher suites and key-exchange groups only.
pub fn intermediate_provider() -> CryptoProvider {
    CryptoProvider {
        cipher_suites: vec![
            cs::TLS13_AES_128_GCM_SHA256,
            cs::TLS13_AES_256_GCM_SHA384,
            cs::TLS13_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ],
        kx_groups: vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1],
        ..rustls::crypto::aws_lc_rs::default_provider()
    }
}

/// The certificate resolver: one key pair for every name, swapped whole on reload.
#[derive(Debug)]
pub struct ReloadingCert(RwLock<Arc<CertifiedKey>>);

impl ReloadingCert {
    fn current(&self) -> Arc<CertifiedKey> {
        // A poisoned lock still holds a complete `Arc` (the writer only assigns one).
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn replace(&self, key: Arc<CertifiedKey>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = key;
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// What the log says about a loaded certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    pub subject: String,
    pub serial: String,
    /// Unix seconds.
    pub not_after: i64,
}

/// Reads a certificate chain and its key; checks that they match and that the certificate has
/// not expired.
pub fn load_key_pair(
    cert_pem: &[u8],
    key_pem: &[u8],
    provider: &CryptoProvider,
) -> Result<(Arc<CertifiedKey>, CertSummary), String> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the certificate file is not PEM: {e}"))?;
    let Some(leaf) = chain.first() else {
        return Err("the certificate file holds no certificate".into());
    };
    let summary = summarize(leaf)?;
    if summary.not_after < unix_now() {
        return Err(format!(
            "the certificate (serial {}) expired at {}",
            summary.serial,
            format_time(summary.not_after)
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| format!("the key file holds no PEM private key: {e}"))?;
    let certified = CertifiedKey::from_der(chain, key, provider)
        .map_err(|e| format!("the key does not fit the certificate: {e}"))?;
    Ok((Arc::new(certified), summary))
}

fn summarize(leaf: &CertificateDer<'_>) -> Result<CertSummary, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| format!("the certificate cannot be parsed: {e}"))?;
    Ok(CertSummary {
        subject: cert.subject().to_string(),
        serial: cert.raw_serial_as_string(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// A verifier that requires a client certificate chaining to a CA in `ca_pem`.
fn client_verifier(
    ca_pem: &[u8],
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| format!("the client CA file is not PEM: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("a client CA certificate is not usable: {e}"))?;
    }
    if roots.is_empty() {
        return Err("the client CA file holds no certificate".into());
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| format!("cannot verify clients with this CA: {e}"))
}

/// The files as read at one moment, and their digests (the key is not kept beyond its use).
struct Files {
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Option<Vec<u8>>,
}

impl Files {
    fn read(config: &TlsConfig) -> Result<Files, String> {
        let read = |what: &str, p: &Path| {
            std::fs::read(p).map_err(|e| format!("cannot read the {what} {}: {e}", p.display()))
        };
        Ok(Files {
            cert: read("tls.cert_file", &config.cert_file)?,
            key: read("tls.key_file", &config.key_file)?,
            ca: match &config.client_ca_file {
                Some(p) => Some(read("tls.client_ca_file", p)?),
                None => None,
            },
        })
    }

    fn pair_digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update((self.cert.len() as u64).to_be_bytes());
        h.update(&self.cert);
        h.update(&self.key);
        h.finalize().into()
    }

    fn ca_digest(&self) -> Option<[u8; 32]> {
        self.ca.as_ref().map(|c| Sha256::digest(c).into())
    }
}

/// Which file contents are loaded, and which failed (so a broken file is logged once, not at
/// every check).
#[derive(Default)]
struct Seen {
    pair: [u8; 32],
    ca: Option<[u8; 32]>,
    failed_pair: Option<[u8; 32]>,
    failed_ca: Option<[u8; 32]>,
    failed_read: Option<String>,
}

/// The TLS side of the listener: the current server configuration and what reloads it.
pub struct TlsServer {
    config: TlsConfig,
    provider: Arc<CryptoProvider>,
    resolver: Arc<ReloadingCert>,
    server: RwLock<Arc<ServerConfig>>,
    seen: Mutex<Seen>,
}

impl std::fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsServer")
            .field("cert_file", &self.config.cert_file)
            .field("mutual", &self.config.client_ca_file.is_some())
            .finish_non_exhaustive()
    }
}

impl TlsServer {
    /// Loads the configured files; any problem is an error naming the file and the setting.
    pub fn load(config: &TlsConfig) -> anyhow::Result<Arc<TlsServer>> {
        let provider = Arc::new(intermediate_provider());
        let files = Files::read(config).map_err(anyhow::Error::msg)?;
        let (key, summary) = load_key_pair(&files.cert, &files.key, &provider)
            .map_err(anyhow::Error::msg)
            .with_context(|| {
                format!(
                    "tls: cannot serve {} with {}",
                    config.cert_file.display(),
                    config.key_file.display()
                )
            })?;
        let verifier = match &files.ca {
            Some(ca) => Some(
                client_verifier(ca, &provider)
                    .map_err(anyhow::Error::msg)
                    .context("tls.client_ca_file")?,
            ),
            None => None,
        };
        let resolver = Arc::new(ReloadingCert(RwLock::new(key)));
        let server = server_config(&provider, &resolver, verifier)?;
        log_loaded(&summary, "loaded");
        Ok(Arc::new(TlsServer {
            config: config.clone(),
            provider,
            resolver,
            server: RwLock::new(Arc::new(server)),
            seen: Mutex::new(Seen {
                pair: files.pair_digest(),
                ca: files.ca_digest(),
                ..Seen::default()
            }),
        }))
    }

    /// The configuration a new connection's handshake uses.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.server
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether clients must present a certificate.
    pub fn mutual(&self) -> bool {
        self.config.client_ca_file.is_some()
    }

    /// Re-reads the files every `reload_seconds` and applies what changed, until the process
    /// ends. Reads run on the blocking pool (a file system may be slow).
    pub async fn watch(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(self.config.reload_seconds));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let this = self.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || this.reload()).await {
                tracing::error!(error = %e, "the TLS reload check failed");
            }
        }
    }

    /// One check of the files: swaps in a changed key pair or client CA when it loads, keeps
    /// the old one (and logs why, once per content) when it does not.
    pub fn reload(&self) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let files = match Files::read(&self.config) {
            Ok(f) => {
                seen.failed_read = None;
                f
            }
            Err(e) => {
                if seen.failed_read.as_deref() != Some(e.as_str()) {
                    tracing::error!(error = %e, "TLS files unreadable; still serving the loaded certificate");
                    seen.failed_read = Some(e);
                }
                return;
            }
        };
        let pair = files.pair_digest();
        if pair != seen.pair && seen.failed_pair != Some(pair) {
            match load_key_pair(&files.cert, &files.key, &self.provider) {
                Ok((key, summary)) => {
                    self.resolver.replace(key);
                    seen.pair = pair;
                    seen.failed_pair = None;
                    log_loaded(&summary, "reloaded");
                }
                Err(e) => {
                    seen.failed_pair = Some(pair);
                    tracing::error!(
                        error = %e,
                        cert_file = %self.config.cert_file.display(),
                        "the changed TLS certificate or key cannot be used; still serving the \
                         previous one"
                    );
                }
            }
        }
        let ca = files.ca_digest();
        if ca != seen.ca && seen.failed_ca != ca {
            let rebuilt = files
                .ca
                .as_deref()
                .map(|pem| client_verifier(pem, &self.provider))
                .transpose()
                .and_then(|v| {
                    server_config(&self.provider, &self.resolver, v).map_err(|e| e.to_string())
                });
            match rebuilt {
                Ok(server) => {
                    *self.server.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(server);
                    seen.ca = ca;
                    seen.failed_ca = None;
                    tracing::info!("TLS client CA reloaded; new connections are verified with it");
                }
                Err(e) => {
                    seen.failed_ca = ca;
                    tracing::error!(error = %e, "the changed client CA file cannot be used; still verifying clients with the previous one");
                }
            }
        }
    }
}

fn server_config(
    provider: &Arc<CryptoProvider>,
    resolver: &Arc<ReloadingCert>,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
) -> anyhow::Result<ServerConfig> {
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("the TLS provider lacks TLS 1.2 or 1.3")?;
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver.clone());
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(config)
}

fn log_loaded(summary: &CertSummary, what: &str) {
    let days = (summary.not_after - unix_now()) / 86_400;
    tracing::info!(
        subject = %summary.subject,
        serial = %summary.serial,
        not_after = %format_time(summary.not_after),
        "TLS certificate {what}"
    );
    if days < 14 {
        tracing::warn!(
            days,
            serial = %summary.serial,
            "the TLS certificate expires in less than 14 days; replace its files (they are \
             reloaded without a restart)"
        );
    }
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn format_time(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(not_after_days: i64) -> (String, String) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(400);
        params.not_after = now + time::Duration::days(not_after_days);
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn the_profile_is_mozilla_intermediate() {
        let p = intermediate_provider();
        let names: Vec<String> = p
            .cipher_suites
            .iter()
            .map(|s| format!("{:?}", s.suite()))
            .collect();
        assert_eq!(names.len(), 9, "{names:?}");
        for n in &names {
            assert!(
                n.starts_with("TLS13_") || n.starts_with("TLS_ECDHE_"),
                "{n} is not an intermediate suite"
            );
            assert!(
                n.contains("GCM") || n.contains("CHACHA20_POLY1305"),
                "{n} is not AEAD"
            );
        }
        let groups: Vec<String> = p
            .kx_groups
            .iter()
            .map(|g| format!("{:?}", g.name()))
            .collect();
        assert_eq!(groups, ["X25519", "secp256r1", "secp384r1"]);
    }

    #[test]
    fn a_key_pair_loads_only_when_it_matches_and_is_current() {
        let p = intermediate_provider();
        let (cert, key) = pair(30);
        let (_, summary) = load_key_pair(cert.as_bytes(), key.as_bytes(), &p).unwrap();
        assert!(summary.subject.is_empty() || summary.subject.contains("CN"));
        let (_, other_key) = pair(30);
        let e = load_key_pair(cert.as_bytes(), other_key.as_bytes(), &p).unwrap_err();
        assert!(e.contains("does not fit"), "{e}");
        let (old, old_key) = pair(-1);
        let e = load_key_pair(old.as_bytes(), old_key.as_bytes(), &p).unwrap_err();
        assert!(e.contains("expired"), "{e}");
        let e = load_key_pair(b"nothing", key.as_bytes(), &p).unwrap_err();
        assert!(e.contains("no certificate"), "{e}");
        let e = load_key_pair(cert.as_bytes(), b"", &p).unwrap_err();
        assert!(e.contains("no PEM private key"), "{e}");
    }

    #[test]
    fn reload_swaps_a_good_pair_and_keeps_the_old_one_for_a_bad_one() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        let (cert1, key1) = pair(30);
        std::fs::write(&c, &cert1).unwrap();
        std::fs::write(&k, &key1).unwrap();
        let server = TlsServer::load(&TlsConfig {
            cert_file: c.clone(),
            key_file: k.clone(),
            client_ca_file: None,
            reload_seconds: 1,
        })
        .unwrap();
        let served = |s: &TlsServer| s.resolver.current().cert[0].clone();
        let first = served(&server);
        // A certificate whose key has not been written yet: kept out.
        let (cert2, key2) = pair(60);
        std::fs::write(&c, &cert2).unwrap();
        server.reload();
        assert_eq!(served(&server), first);
        std::fs::write(&k, &key2).unwrap();
        server.reload();
        let second = served(&server);
        assert_ne!(second, first);
        assert_eq!(
            second.as_ref(),
            CertificateDer::from_pem_slice(cert2.as_bytes())
                .unwrap()
                .as_ref()
        );
        // A deleted file: the served pair stays.
        std::fs::remove_file(&k).unwrap();
        server.reload();
        assert_eq!(served(&server), second);
    }
}
