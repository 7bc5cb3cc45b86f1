//! The slapd fixture the directory tests share (`tests/ldap.rs` for `LdapDirectory` itself,
//! `tests/directory_login.rs` for the login flow on top of it).
//!
//! [`Slapd::start`] starts a private OpenLDAP `slapd` (Debian packages `slapd` and `ldap-utils`):
//! its own `slapd.conf` (from `tests/ldap/slapd.conf.in`) in a temporary directory, seeded with
//! `slapadd` from `tests/ldap/seed.ldif`, listening on free loopback ports for `ldap://` (with
//! StartTLS) and `ldaps://`, with a CA and server certificate made by rcgen. The guard kills it
//! when the test ends. Tests change the directory with `ldapmodify`/`ldapdelete` as the rootdn
//! ([`Slapd::admin`]), as an administrator would.
//!
//! Without slapd the tests that need it fail, saying what to install;
//! `HAVEN_SKIP_LDAP_TESTS=1` makes [`Slapd::start`] return `None` so they skip.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use haven_identity::ldap::LdapConfig;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

pub const BASE: &str = "dc=hospital,dc=example";
pub const PEOPLE: &str = "ou=people,dc=hospital,dc=example";
pub const GROUPS: &str = "ou=groups,dc=hospital,dc=example";
pub const ROOT_DN: &str = "cn=admin,dc=hospital,dc=example";
pub const ROOT_PW: &str = "admin-secret";
pub const SERVICE_DN: &str = "cn=haven,ou=services,dc=hospital,dc=example";
pub const SERVICE_PW: &str = "svc-pw";

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/ldap")
        .join(name)
}

fn skip_requested() -> bool {
    std::env::var("HAVEN_SKIP_LDAP_TESTS").is_ok_and(|v| v == "1")
}

/// Finds an OpenLDAP program in PATH or the Debian locations (sbin is not always in PATH).
pub fn program(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into(), "/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not installed, and the LDAP tests need a real OpenLDAP server: \
                 `apt-get install -y slapd ldap-utils` (Debian), or set HAVEN_SKIP_LDAP_TESTS=1 \
                 to skip them"
            )
        })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes a private CA (`ca.pem`) and a server certificate for 127.0.0.1 and localhost
/// (`server.pem`, `server-key.pem`) into `dir`.
pub fn make_certificates(dir: &Path) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Haven test hospital CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();

    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &ca).unwrap();

    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
    write_private(&dir.join("server-key.pem"), &key.serialize_pem());
}

/// Key files readable by their owner only (slapd runs as the same user, root here).
fn write_private(path: &Path, contents: &str) {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    file.write_all(contents.as_bytes()).unwrap();
}

/// A running slapd, killed on drop.
pub struct Slapd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub ldap_port: u16,
    pub ldaps_port: u16,
}

impl Slapd {
    /// Starts a seeded slapd; `None` when HAVEN_SKIP_LDAP_TESTS=1.
    pub fn start() -> Option<Slapd> {
        if skip_requested() {
            eprintln!("HAVEN_SKIP_LDAP_TESTS=1: skipping a test that needs slapd");
            return None;
        }
        let slapd = program("slapd");
        let mut dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("db")).unwrap();
        make_certificates(dir.path());
        let template = std::fs::read_to_string(fixture("slapd.conf.in")).unwrap();
        let conf = dir.path().join("slapd.conf");
        std::fs::write(
            &conf,
            template.replace("@DIR@", dir.path().to_str().unwrap()),
        )
        .unwrap();
        let seeded = Command::new(program("slapadd"))
            .arg("-q")
            .arg("-f")
            .arg(&conf)
            .arg("-l")
            .arg(fixture("seed.ldif"))
            .output()
            .unwrap();
        assert!(
            seeded.status.success(),
            "slapadd failed: {}",
            String::from_utf8_lossy(&seeded.stderr)
        );

        // A port found free may be taken again before slapd binds it: try a few times.
        let mut last_log = String::new();
        for _ in 0..3 {
            let (ldap_port, ldaps_port) = (free_port(), free_port());
            let log = std::fs::File::create(dir.path().join("slapd.log")).unwrap();
            let child = Command::new(&slapd)
                .arg("-f")
                .arg(&conf)
                .arg("-h")
                .arg(format!(
                    "ldap://127.0.0.1:{ldap_port}/ ldaps://127.0.0.1:{ldaps_port}/"
                ))
                // In the foreground, logging connections and operations (256 = stats).
                .args(["-d", "256"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap();
            let mut server = Slapd {
                child: Some(child),
                dir,
                ldap_port,
                ldaps_port,
            };
            if server.wait_ready() {
                return Some(server);
            }
            last_log = server.log();
            server.stop();
            dir = std::mem::replace(&mut server.dir, tempfile::tempdir().unwrap());
        }
        panic!("slapd did not start; its log:\n{last_log}");
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                eprintln!("slapd exited early ({status})");
                return false;
            }
            let up = |port| TcpStream::connect(("127.0.0.1", port)).is_ok();
            if up(self.ldap_port) && up(self.ldaps_port) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn ldap_url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.ldap_port)
    }

    pub fn ldaps_url(&self) -> String {
        format!("ldaps://127.0.0.1:{}", self.ldaps_port)
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("slapd.log")).unwrap_or_default()
    }

    /// Runs an OpenLDAP client tool as the rootdn, feeding it `input`.
    pub fn admin(&self, tool: &str, args: &[&str], input: &str) {
        let mut child = Command::new(program(tool))
            .args(["-x", "-H", &self.ldap_url(), "-D", ROOT_DN, "-w", ROOT_PW])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{tool} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn remove_member(&self, group: &str, member: &str) {
        let ldif = format!(
            "dn: cn={group},{GROUPS}\nchangetype: modify\ndelete: member\nmember: {member}\n"
        );
        self.admin("ldapmodify", &[], &ldif);
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The configuration most tests use: LDAPS with the test CA, the service account, group search
/// under ou=groups plus memberOf, `(description=disabled)` for disabled accounts.
pub fn config(slapd: &Slapd) -> LdapConfig {
    let mut c = LdapConfig::new(slapd.ldaps_url(), PEOPLE);
    c.ca_file = Some(slapd.ca_file());
    c.bind_dn = Some(SERVICE_DN.into());
    c.bind_password = Some(SERVICE_PW.into());
    c.group_base = GROUPS.into();
    c.disabled_filter = Some("(description=disabled)".into());
    // "NURSES": group names match ignoring case, as LDAP compares cn.
    c.role_map = BTreeMap::from([
        ("clinicians".to_owned(), vec!["clinician".to_owned()]),
        ("NURSES".to_owned(), vec!["nurse".to_owned()]),
    ]);
    c.timeout_secs = 2;
    c
}
