//! The `vault` key provider: key-encryption keys in HashiCorp Vault or OpenBao Transit.
//!
//! Haven keeps one Transit key (`aes256-gcm96`, not derived, not exportable, not deletable) and
//! asks Vault to wrap and unwrap data keys with it; the KEK never leaves Vault. A wrapped key is
//! Transit's own ciphertext (`vault:v3:...`), so `haven_keys::wrapped_version` reads its version.
//! This module lives in the binary because it owns an HTTP client: `haven-keys` does no I/O.
//!
//! **Binding a wrapped key to its context.** `DataKeys` binds each wrapped DEK to its scope and
//! key id (`context`). Transit could do that with a *derived* key (the context selects a key) or
//! with AEAD *associated data* on a plain key. Haven uses `associated_data`; what OpenBao 2.7.2
//! does with it was tested (`tests/vault/`), and decided the shape of each operation:
//! - `datakey/plaintext` and `decrypt` honour it: a key wrapped for one context does not open
//!   under another or under none (400, "message authentication failed"). So `generate` is one
//!   call, and the DEK comes from Vault's random generator.
//! - `rewrap` does not: it ignores the parameter ("Endpoint ignored these unrecognized
//!   parameters") and cannot open what was wrapped with it. So `rewrap` is `decrypt` followed by
//!   `encrypt`; the DEK passes through Haven's memory, as it does on every unwrap.
//! - A server that ignored `associated_data` on `datakey` or `encrypt` would silently drop the
//!   binding; Haven refuses any answer whose warnings say a parameter was ignored.
//!
//! How Haven talks to Vault (TLS, tokens and their lifetimes, answers mapped to `KeyError`) is
//! in [`client`].

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use haven_crypto::AeadKey;
use haven_keys::{KekStatus, KeyError, KeyProvider, wrapped_version};
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use serde_json::json;
use zeroize::Zeroizing;

// An explicit path: the integration tests compile this file as a module of their own crate,
// where the default would be looked for elsewhere.
#[path = "vault/client.rs"]
mod client;

use client::{Notes, Session, tls_config};

/// Where Transit is mounted unless configured.
pub const DEFAULT_MOUNT: &str = "transit";
/// The Transit key's name unless configured.
pub const DEFAULT_KEY: &str = "haven";
/// Where Kubernetes mounts a pod's service-account token.
pub const DEFAULT_JWT_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// Where the Kubernetes auth method is mounted unless configured.
pub const DEFAULT_KUBERNETES_MOUNT: &str = "kubernetes";
/// How long one request to Vault may take unless configured.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// The only key type Haven accepts: AES-256-GCM honours `associated_data`.
const KEY_TYPE: &str = "aes256-gcm96";

/// A credential (token, AppRole secret id): never printed, wiped when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct VaultSecret(Zeroizing<String>);

impl VaultSecret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(Zeroizing::new(value.into()))
    }

    fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for VaultSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// How Haven gets a Vault token.
#[derive(Clone, Debug)]
pub enum VaultAuth {
    /// A token given in the configuration.
    Token(VaultSecret),
    /// `auth/approle/login` with a role id and a secret id.
    AppRole {
        role_id: String,
        secret_id: VaultSecret,
    },
    /// `auth/<mount>/login` with the pod's service-account token (read at every login).
    Kubernetes {
        role: String,
        jwt_file: PathBuf,
        mount: String,
    },
}

impl VaultAuth {
    /// Kubernetes login as `role` with the default token file and mount.
    #[must_use]
    pub fn kubernetes(role: impl Into<String>) -> Self {
        Self::Kubernetes {
            role: role.into(),
            jwt_file: PathBuf::from(DEFAULT_JWT_FILE),
            mount: DEFAULT_KUBERNETES_MOUNT.to_owned(),
        }
    }
}

/// Where the Transit key is and how to reach it.
#[derive(Clone, Debug)]
pub struct VaultSettings {
    /// `https://vault.example.org:8200` (`http://` only to a loopback address).
    pub address: String,
    /// Transit's mount path (default `transit`).
    pub mount: String,
    /// The Transit key's name (default `haven`).
    pub key: String,
    pub auth: VaultAuth,
    /// PEM CA certificate(s) Vault's certificate is checked against; default: the platform's.
    pub ca_file: Option<PathBuf>,
    /// Vault Enterprise / OpenBao namespace (`X-Vault-Namespace`).
    pub namespace: Option<String>,
    /// Per request, connection included.
    pub timeout: Duration,
}

impl VaultSettings {
    /// Settings with the defaults for everything but the address and the credentials.
    #[must_use]
    pub fn new(address: impl Into<String>, auth: VaultAuth) -> Self {
        Self {
            address: address.into(),
            mount: DEFAULT_MOUNT.to_owned(),
            key: DEFAULT_KEY.to_owned(),
            auth,
            ca_file: None,
            namespace: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// Checks a Vault address: a URL without credentials or path, `https`, or `http` to loopback.
pub fn check_address(address: &str) -> Result<(), String> {
    let url = Url::parse(address).map_err(|e| {
        format!("the Vault address is not a URL ({e}): write it as https://vault.example.org:8200")
    })?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "the Vault address must not hold credentials: configure them under `auth`".into(),
        );
    }
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "the Vault address {address} has scheme {}: write it as https://host:port",
            url.scheme()
        ));
    }
    if url.query().is_some() || url.fragment().is_some() || !matches!(url.path(), "" | "/") {
        return Err(format!(
            "the Vault address {address} has a path or query: give only scheme, host and port (Haven adds /v1/)"
        ));
    }
    let host = url.host_str().unwrap_or_default();
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback());
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(format!(
            "the Vault address {address} is plain http to another machine: the token and every data key \
             would cross the network in clear; use https (with `ca_file` for a private CA)"
        )),
    }
}

/// A mount path or key name: letters, digits, `_`, `-`, `.`; `/` between segments for a path.
fn check_name(what: &str, value: &str, path: bool) -> Result<(), KeyError> {
    let ok = !value.is_empty()
        && value.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        })
        && (path || !value.contains('/'));
    if ok {
        Ok(())
    } else {
        Err(KeyError::Config(format!(
            "Vault {what} `{value}` is not valid: use letters, digits, `_`, `-` and `.`{}",
            if path {
                ", with `/` between segments"
            } else {
                ""
            }
        )))
    }
}

/// What an operation needs from the token's policy (for 403 messages).
#[derive(Clone, Copy, Debug)]
enum Op {
    Generate,
    Decrypt,
    Encrypt,
    Read,
    Rotate,
    Retire,
    Create,
}

#[derive(Deserialize)]
struct KeyInfo {
    #[serde(rename = "type")]
    kind: String,
    latest_version: u32,
    min_decryption_version: u32,
    #[serde(default)]
    min_encryption_version: u32,
    #[serde(default)]
    min_available_version: u32,
    #[serde(default)]
    derived: bool,
    #[serde(default)]
    exportable: bool,
    #[serde(default)]
    allow_plaintext_backup: bool,
    #[serde(default)]
    deletion_allowed: bool,
}

#[derive(Deserialize)]
struct Wrapped {
    ciphertext: String,
}

#[derive(Deserialize)]
struct Plain {
    plaintext: String,
}

#[derive(Deserialize)]
struct WrappedPlain {
    ciphertext: String,
    plaintext: String,
}

/// The KEK in a Vault/OpenBao Transit key.
pub struct VaultTransit {
    http: reqwest::Client,
    base: Url,
    address: String,
    mount: String,
    key: String,
    namespace: Option<String>,
    auth: VaultAuth,
    timeout: Duration,
    session: tokio::sync::Mutex<Session>,
}

impl std::fmt::Debug for VaultTransit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VaultTransit({})", self.describe())
    }
}

fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// A key from Vault's base64 `plaintext`, wiping the intermediate copies.
fn key_from_plaintext(plaintext: String) -> Result<AeadKey, KeyError> {
    let text = Zeroizing::new(plaintext);
    let bytes =
        Zeroizing::new(STANDARD.decode(text.as_bytes()).map_err(|_| {
            KeyError::Refused("Vault returned a data key that is not base64".into())
        })?);
    AeadKey::from_bytes(&bytes).map_err(|e| KeyError::Refused(format!("Vault returned {e}")))
}

impl VaultTransit {
    /// Checks the settings and builds the client; no request is made.
    pub fn new(settings: VaultSettings) -> Result<Self, KeyError> {
        check_address(&settings.address).map_err(KeyError::Config)?;
        let mount = settings.mount.trim_matches('/').to_owned();
        check_name("mount", &mount, true)?;
        check_name("key name", &settings.key, false)?;
        if let Some(ns) = &settings.namespace {
            check_name("namespace", ns.trim_matches('/'), true)?;
        }
        match &settings.auth {
            VaultAuth::AppRole { role_id, .. } if role_id.is_empty() => {
                return Err(KeyError::Config(
                    "the Vault AppRole role_id is empty".into(),
                ));
            }
            VaultAuth::Kubernetes { role, mount, .. } => {
                check_name("Kubernetes role", role, false)?;
                check_name("Kubernetes auth mount", mount.trim_matches('/'), true)?;
            }
            _ => {}
        }
        if settings.timeout.is_zero() {
            return Err(KeyError::Config(
                "the Vault timeout must be above zero".into(),
            ));
        }
        let address = settings.address.trim_end_matches('/').to_owned();
        let base = Url::parse(&format!("{address}/v1/"))
            .map_err(|e| KeyError::Config(format!("the Vault address is not a URL: {e}")))?;
        let tls = tls_config(settings.ca_file.as_deref(), base.scheme() == "https")?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("haven/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| KeyError::Config(format!("cannot build the Vault HTTP client: {e}")))?;
        Ok(Self {
            http,
            base,
            address,
            mount,
            key: settings.key,
            namespace: settings
                .namespace
                .map(|n| n.trim_matches('/').to_owned())
                .filter(|n| !n.is_empty()),
            auth: settings.auth,
            timeout: settings.timeout,
            session: tokio::sync::Mutex::new(Session::default()),
        })
    }

    /// Creates the Transit key if it is missing (`haven keys init`); true if it was created.
    /// An existing key must suit Haven: `aes256-gcm96`, not derived, never exportable, not
    /// deletable.
    pub async fn ensure_key(&self) -> Result<bool, KeyError> {
        if let Some(info) = self.key_info_opt().await? {
            self.check_key(&info)?;
            return Ok(false);
        }
        let body =
            json!({ "type": KEY_TYPE, "exportable": false, "allow_plaintext_backup": false });
        self.call(Op::Create, Method::POST, &self.keys_path(""), Some(&body))
            .await?;
        let info = self.key_info().await?;
        self.check_key(&info)?;
        Ok(true)
    }

    fn check_key(&self, k: &KeyInfo) -> Result<(), KeyError> {
        let name = format!("Transit key {}/{}", self.mount, self.key);
        let problem = if k.kind != KEY_TYPE {
            Some(format!(
                "is of type {}; Haven needs {KEY_TYPE} (associated data binds each data key to its owner)",
                k.kind
            ))
        } else if k.derived {
            Some("is a derived key; Haven binds context with associated data and needs a key that is not derived".to_owned())
        } else if k.exportable || k.allow_plaintext_backup {
            Some("can be exported or backed up in plaintext, so the key-encryption key could leave Vault; create a new key without those options".to_owned())
        } else if k.deletion_allowed {
            Some(format!(
                "may be deleted, which would make every stored record unreadable: set deletion_allowed=false on {}/keys/{}/config",
                self.mount, self.key
            ))
        } else {
            None
        };
        match problem {
            Some(p) => Err(KeyError::Config(format!("{name} on {} {p}", self.who()))),
            None => Ok(()),
        }
    }

    fn keys_path(&self, suffix: &str) -> String {
        format!("{}/keys/{}{suffix}", self.mount, self.key)
    }

    fn op_path(&self, op: &str) -> String {
        format!("{}/{op}/{}", self.mount, self.key)
    }

    async fn key_info_opt(&self) -> Result<Option<KeyInfo>, KeyError> {
        let path = self.keys_path("");
        let (status, bytes) = self.call_raw(Method::GET, &path, None).await?;
        if status == StatusCode::NOT_FOUND {
            let notes: Notes = serde_json::from_slice(&bytes).unwrap_or_default();
            if !notes
                .errors
                .iter()
                .any(|e| e.contains("no handler for route"))
            {
                return Ok(None);
            }
        }
        let data = self.judge(Op::Read, &path, status, &bytes)?;
        self.parse(data).map(Some)
    }

    async fn key_info(&self) -> Result<KeyInfo, KeyError> {
        self.key_info_opt().await?.ok_or_else(|| {
            KeyError::Config(format!(
                "Transit key {}/{} does not exist on {}: create it with `haven keys init`",
                self.mount,
                self.key,
                self.who()
            ))
        })
    }

    fn check_wrapped(&self, wrapped: &str) -> Result<(), KeyError> {
        if wrapped.starts_with("vault:") && wrapped_version(wrapped).is_some() {
            Ok(())
        } else {
            Err(KeyError::Refused(format!(
                "not a Transit-wrapped data key (it should begin with vault:v<N>:); {} cannot open it",
                self.describe()
            )))
        }
    }

    async fn encrypt(&self, key: &AeadKey, context: &[u8]) -> Result<String, KeyError> {
        let body = json!({ "plaintext": b64(key.secret_bytes()), "associated_data": b64(context) });
        let data = self
            .call(
                Op::Encrypt,
                Method::POST,
                &self.op_path("encrypt"),
                Some(&body),
            )
            .await?;
        let w: Wrapped = self.parse(data)?;
        self.check_wrapped(&w.ciphertext)?;
        Ok(w.ciphertext)
    }
}

#[async_trait]
impl KeyProvider for VaultTransit {
    fn describe(&self) -> String {
        format!("Transit key {}/{} on {}", self.mount, self.key, self.who())
    }

    async fn generate(&self, context: &[u8]) -> Result<(AeadKey, String), KeyError> {
        let body = json!({ "associated_data": b64(context), "bits": 256 });
        let data = self
            .call(
                Op::Generate,
                Method::POST,
                &format!("{}/datakey/plaintext/{}", self.mount, self.key),
                Some(&body),
            )
            .await?;
        let got: WrappedPlain = self.parse(data)?;
        self.check_wrapped(&got.ciphertext)?;
        Ok((key_from_plaintext(got.plaintext)?, got.ciphertext))
    }

    async fn unwrap(&self, wrapped: &str, context: &[u8]) -> Result<AeadKey, KeyError> {
        self.check_wrapped(wrapped)?;
        let body = json!({ "ciphertext": wrapped, "associated_data": b64(context) });
        let data = self
            .call(
                Op::Decrypt,
                Method::POST,
                &self.op_path("decrypt"),
                Some(&body),
            )
            .await?;
        let got: Plain = self.parse(data)?;
        key_from_plaintext(got.plaintext)
    }

    /// `decrypt` then `encrypt`: Transit's `rewrap` ignores `associated_data` (module docs).
    async fn rewrap(&self, wrapped: &str, context: &[u8]) -> Result<String, KeyError> {
        let key = self.unwrap(wrapped, context).await?;
        self.encrypt(&key, context).await
    }

    async fn status(&self) -> Result<KekStatus, KeyError> {
        let k = self.key_info().await?;
        Ok(KekStatus {
            current: k.latest_version,
            min_decryption: k.min_decryption_version,
        })
    }

    async fn rotate(&self) -> Result<u32, KeyError> {
        self.call(Op::Rotate, Method::POST, &self.keys_path("/rotate"), None)
            .await?;
        Ok(self.key_info().await?.latest_version)
    }

    /// Raises `min_decryption_version` (and `min_encryption_version`) to `version`, then trims
    /// the key so the older versions are destroyed, not only refused.
    async fn retire_below(&self, version: u32) -> Result<(), KeyError> {
        let k = self.key_info().await?;
        if version == 0 || version > k.latest_version {
            return Err(KeyError::Config(format!(
                "cannot retire below version {version}: the current version of {} is {}",
                self.describe(),
                k.latest_version
            )));
        }
        if version > k.min_decryption_version || version > k.min_encryption_version {
            let body = json!({
                "min_decryption_version": version.max(k.min_decryption_version),
                "min_encryption_version": version.max(k.min_encryption_version),
            });
            self.call(
                Op::Retire,
                Method::POST,
                &self.keys_path("/config"),
                Some(&body),
            )
            .await?;
        }
        if version > k.min_available_version {
            let body = json!({ "min_available_version": version });
            self.call(
                Op::Retire,
                Method::POST,
                &self.keys_path("/trim"),
                Some(&body),
            )
            .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The pure helpers. The provider itself is tested against a real OpenBao in
    //! `tests/vault/`.
    use super::*;

    #[test]
    fn addresses_need_tls_unless_loopback() {
        for ok in [
            "https://vault.example.org:8200",
            "https://vault.example.org:8200/",
            "https://10.0.0.5",
            "http://127.0.0.1:8200",
            "http://127.8.0.1:8200",
            "http://[::1]:8200",
            "http://localhost:8200",
            "http://LOCALHOST:8200",
        ] {
            assert_eq!(check_address(ok), Ok(()), "{ok}");
        }
        for (bad, says) in [
            ("http://vault.example.org:8200", "plain http"),
            ("http://10.0.0.5:8200", "plain http"),
            ("http://localhost.example.org", "plain http"),
            ("ftp://vault.example.org", "scheme ftp"),
            ("vault.example.org:8200", "scheme vault.example.org"),
            ("https://vault.example.org/v1/", "path"),
            ("https://vault.example.org?x=1", "path or query"),
            ("not a url", "not a URL"),
        ] {
            let err = check_address(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
        let err = check_address("https://user:hunter2@vault.example.org").unwrap_err();
        assert!(
            err.contains("credentials") && !err.contains("hunter2"),
            "{err}"
        );
    }

    #[test]
    fn mount_and_key_names_cannot_escape_their_path() {
        assert!(check_name("mount", "transit", true).is_ok());
        assert!(check_name("mount", "team-a/transit_1.x", true).is_ok());
        for bad in ["", "a//b", "../sys", "a/../b", "a b", "a?b", "a%2fb"] {
            assert!(check_name("mount", bad, true).is_err(), "{bad}");
        }
        assert!(check_name("key name", "haven-kek", false).is_ok());
        assert!(check_name("key name", "a/b", false).is_err());
    }

    #[test]
    fn debug_output_holds_no_credential() {
        let settings = VaultSettings::new(
            "http://127.0.0.1:8200",
            VaultAuth::AppRole {
                role_id: "role-1".into(),
                secret_id: VaultSecret::new("s3cret-id-value"),
            },
        );
        let shown = format!("{settings:?}");
        assert!(
            !shown.contains("s3cret-id-value") && shown.contains("[redacted]"),
            "{shown}"
        );
        let token = VaultSettings::new(
            "http://127.0.0.1:8200",
            VaultAuth::Token(VaultSecret::new("hvs.token-value")),
        );
        assert!(!format!("{token:?}").contains("hvs.token-value"));
        let provider = VaultTransit::new(token).unwrap();
        assert!(!format!("{provider:?}").contains("hvs.token-value"));
        assert_eq!(
            provider.scrub("bad token hvs.token-value".into()),
            "bad token [redacted]"
        );
    }

    #[test]
    fn settings_are_checked_before_any_request() {
        let auth = || VaultAuth::Token(VaultSecret::new("t"));
        let mut s = VaultSettings::new("http://vault.internal:8200", auth());
        assert!(
            matches!(VaultTransit::new(s.clone()), Err(KeyError::Config(m)) if m.contains("plain http"))
        );
        s.address = "http://127.0.0.1:8200".into();
        s.key = "a/b".into();
        assert!(matches!(
            VaultTransit::new(s.clone()),
            Err(KeyError::Config(_))
        ));
        s.key = "haven".into();
        s.ca_file = Some(PathBuf::from("/nonexistent/ca.pem"));
        assert!(matches!(VaultTransit::new(s), Err(KeyError::Config(m)) if m.contains("ca_file")));
    }
}
