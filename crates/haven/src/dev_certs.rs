//! `haven dev-certs`: a local certificate authority, a server certificate and client
//! certificates, to try `[tls]` and mutual TLS on one machine. Never for production: the CA key
//! sits next to the certificates it signed.
//!
//! ECDSA P-256 with SHA-256 throughout. Leaf certificates last 365 days (Mozilla's intermediate
//! profile allows at most 366) and carry the key usages a TLS peer checks: server
//! certificates `serverAuth` with the hosts as subject alternative names (IP addresses as IP
//! SANs), client certificates `clientAuth` with the name as common name and DNS SAN. Existing
//! files are never overwritten; private keys are written owner-only (0600).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SerialNumber,
};
use time::{Duration, OffsetDateTime};

const CA_DAYS: i64 = 3 * 365;
const LEAF_DAYS: i64 = 365;

/// One file to write.
struct Output {
    path: PathBuf,
    contents: String,
    secret: bool,
}

pub fn run(out: &Path, hosts: &[String], clients: &[String]) -> anyhow::Result<()> {
    if hosts.is_empty() {
        bail!("give at least one host for the server certificate (--hosts localhost,127.0.0.1)");
    }
    for c in clients {
        if c.is_empty()
            || !c
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            bail!("client name '{c}': use letters, digits, '-', '_' and '.' (it names files)");
        }
    }
    let now = OffsetDateTime::now_utc();
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "Haven development CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut ca, now, CA_DAYS);
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, &ca_key);

    let server_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut server = CertificateParams::new(hosts.to_vec())
        .context("--hosts: each must be a DNS name or an IP address")?;
    server
        .distinguished_name
        .push(DnType::CommonName, hosts[0].as_str());
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.use_authority_key_identifier_extension = true;
    validity(&mut server, now, LEAF_DAYS);
    let server_cert = server.signed_by(&server_key, &issuer)?;

    let mut files = vec![
        output(out, "ca.pem", ca_cert.pem(), false),
        output(out, "ca.key", ca_key.serialize_pem(), true),
        output(out, "server.pem", server_cert.pem(), false),
        output(out, "server.key", server_key.serialize_pem(), true),
    ];
    for name in clients {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(vec![name.clone()])
            .with_context(|| format!("client name '{name}'"))?;
        params
            .distinguished_name
            .push(DnType::CommonName, name.as_str());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, now, LEAF_DAYS);
        let cert = params.signed_by(&key, &issuer)?;
        files.push(output(
            out,
            &format!("client-{name}.pem"),
            cert.pem(),
            false,
        ));
        files.push(output(
            out,
            &format!("client-{name}.key"),
            key.serialize_pem(),
            true,
        ));
    }

    if let Some(existing) = files.iter().find(|f| f.path.exists()) {
        bail!(
            "{} exists; dev-certs never overwrites files: choose another --out directory",
            existing.path.display()
        );
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(out)
        .with_context(|| format!("cannot create {}", out.display()))?;
    for f in &files {
        write_new(f)?;
    }

    let p = |name: &str| out.join(name).display().to_string();
    println!(
        "Development certificates in {} (not for production).",
        out.display()
    );
    println!("\n# Haven's configuration (TOML):");
    println!("[tls]");
    println!("cert_file = \"{}\"", p("server.pem"));
    println!("key_file = \"{}\"", p("server.key"));
    if clients.is_empty() {
        println!(
            "# client_ca_file = \"{}\"   # mutual TLS: see --client",
            p("ca.pem")
        );
    } else {
        println!("client_ca_file = \"{}\"", p("ca.pem"));
    }
    println!("\n# or in the environment:");
    println!("HAVEN_TLS__CERT_FILE={}", p("server.pem"));
    println!("HAVEN_TLS__KEY_FILE={}", p("server.key"));
    if !clients.is_empty() {
        println!("HAVEN_TLS__CLIENT_CA_FILE={}", p("ca.pem"));
    }
    let host = &hosts[0];
    let mut curl = format!("curl --cacert {}", p("ca.pem"));
    if let Some(c) = clients.first() {
        curl.push_str(&format!(
            " --cert {} --key {}",
            p(&format!("client-{c}.pem")),
            p(&format!("client-{c}.key"))
        ));
    }
    println!("\n# a client trusting the development CA:");
    println!("{curl} https://{host}:8080/healthz");
    Ok(())
}

fn validity(params: &mut CertificateParams, now: OffsetDateTime, days: i64) {
    // An hour back absorbs clock skew between this machine and the one that checks it.
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(days) - Duration::hours(2);
    let mut serial = haven_crypto::random_bytes::<16>();
    serial[0] &= 0x7f;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
}

fn output(dir: &Path, name: &str, contents: String, secret: bool) -> Output {
    Output {
        path: dir.join(name),
        contents,
        secret,
    }
}

fn write_new(f: &Output) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if f.secret { 0o600 } else { 0o644 })
        .open(&f.path)
        .with_context(|| format!("cannot create {}", f.path.display()))?;
    file.write_all(f.contents.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", f.path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn makes_a_ca_server_and_clients_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("certs");
        run(
            &out,
            &["localhost".into(), "127.0.0.1".into()],
            &["lab".into()],
        )
        .unwrap();
        for (name, mode) in [
            ("ca.pem", 0o644),
            ("ca.key", 0o600),
            ("server.pem", 0o644),
            ("server.key", 0o600),
            ("client-lab.pem", 0o644),
            ("client-lab.key", 0o600),
        ] {
            let meta = std::fs::metadata(out.join(name)).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, mode, "{name}");
        }
        // The server pair is what `[tls]` loads.
        let provider = crate::tls::intermediate_provider();
        let read = |n: &str| std::fs::read(out.join(n)).unwrap();
        let (_, summary) =
            crate::tls::load_key_pair(&read("server.pem"), &read("server.key"), &provider).unwrap();
        assert!(summary.subject.contains("localhost"), "{summary:?}");
        let days = (summary.not_after - OffsetDateTime::now_utc().unix_timestamp()) / 86_400;
        assert!((363..=365).contains(&days), "{days}");
        let client = crate::tls::listener::certificate_names(
            rustls::pki_types::pem::PemObject::from_pem_slice(&read("client-lab.pem"))
                .map(|c: rustls::pki_types::CertificateDer<'_>| c.to_vec())
                .unwrap()
                .as_slice(),
        );
        assert_eq!(client.common_name.as_deref(), Some("lab"));

        let before = read("ca.key");
        let e = run(&out, &["localhost".into()], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("never overwrites"), "{e}");
        assert_eq!(read("ca.key"), before);
        assert!(run(&dir.path().join("x"), &[], &[]).is_err());
        assert!(
            run(
                &dir.path().join("y"),
                &["localhost".into()],
                &["../evil".into()]
            )
            .is_err()
        );
    }
}
