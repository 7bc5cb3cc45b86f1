//! Configuration: typed, layered, validated once at start-up.
//!
//! Layers, later wins: built-in defaults -> TOML file (`--config` / `HAVEN_CONFIG`) ->
//! `HAVEN_*` environment (`__` separates sections: `HAVEN_LIMITS__MAX_BODY_BYTES`) ->
//! `HAVEN_*_FILE` (the value is read from that file, for secrets mounted by Kubernetes) ->
//! command-line flags. Unknown keys are errors, so a typo cannot silently fall back to a default.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Value as FigValue};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A secret setting: never printed, logged or serialized in clear.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[redacted]")
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to listen on. A non-loopback address needs `[tls]` (Haven terminates TLS), or
    /// `behind_gateway` (a gateway does): tokens and passwords never cross a network in clear.
    pub listen: SocketAddr,
    /// Directory holding the embedded database (created with owner-only permissions).
    pub data_dir: PathBuf,
    /// PostgreSQL connection URL (`postgres://user@host/db`). When set, Haven stores data in
    /// PostgreSQL instead of the embedded SQLite database. Secret: it may hold a password.
    pub database_url: Option<Secret>,
    /// Public base URL of the FHIR API (used in `Location` and `fullUrl`); defaults to
    /// `http://<listen>/fhir` (`https://` with `[tls]`).
    pub public_url: Option<String>,
    /// Seconds to let in-flight requests finish after SIGTERM before exiting.
    pub shutdown_grace_seconds: u64,
    /// Addresses or CIDR blocks of the gateway(s) in front of Haven: only a peer in this list
    /// may name the client in `X-Forwarded-For`. A TOML array, or one comma-separated string
    /// (`HAVEN_TRUSTED_PROXIES=127.0.0.1,10.0.0.0/8`). Empty: the TCP peer is the client.
    #[serde(deserialize_with = "list_or_comma_separated")]
    pub trusted_proxies: Vec<String>,
    /// The gateway terminates TLS; plain HTTP only from it. Lets Haven listen on a non-loopback
    /// address without `[tls]`; needs `trusted_proxies` (the gateway) and an https `public_url`.
    pub behind_gateway: bool,
    pub limits: LimitsConfig,
    /// Haven terminates TLS itself (docs/OPERATIONS.md, "TLS in Haven itself").
    pub tls: Option<TlsConfig>,
    pub log: LogConfig,
    pub metrics: MetricsConfig,
    pub audit: AuditConfig,
    pub identity: IdentityConfig,
    pub authorization: AuthorizationConfig,
    pub encryption: EncryptionConfig,
}

/// Encryption at rest (`[encryption]`): where the key-encryption keys live, how long
/// unwrapped data keys are cached, which identifier systems are pseudonymised in the index.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EncryptionConfig {
    /// `file` (a keyring file) or `vault` (HashiCorp Vault / OpenBao Transit).
    pub provider: String,
    /// The keyring file of the `file` provider. Default: `keyring.toml` in `data_dir`,
    /// created on first start; in production keep it on another volume (a Kubernetes Secret),
    /// so a copy of the database directory is not also a copy of its keys.
    pub keyring_path: Option<PathBuf>,
    /// How long an unwrapped data key is kept in memory (1 to 3600 s; default 300): the
    /// longest a replica serves from cache while the key provider is down, and the longest it
    /// takes a replica to notice an erasure made by another.
    pub cache_seconds: u64,
    /// Identifier systems (national ids, MRNs) whose values the search index holds only as
    /// keyed HMACs: searchable by exact system|value, never readable. A TOML array, or one
    /// comma-separated string.
    #[serde(deserialize_with = "list_or_comma_separated")]
    pub sensitive_identifier_systems: Vec<String>,
    /// Vault / OpenBao Transit (`provider = "vault"`).
    pub vault: Option<VaultSection>,
    /// Set only by `haven serve --benchmark-without-encryption` (never from configuration):
    /// bodies stored in clear, to measure what encryption costs.
    #[serde(skip)]
    pub benchmark_off: bool,
}

/// `[encryption.vault]`: where the Transit key is and how Haven logs in.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VaultSection {
    /// `https://vault.example.org:8200`; `http://` only to a loopback address.
    pub address: String,
    /// Transit's mount path (default `transit`) and the key's name (default `haven`).
    pub mount: String,
    pub key: String,
    /// `token`, `approle` or `kubernetes`.
    pub auth: String,
    /// With `auth = "token"` (secret: `HAVEN_ENCRYPTION__VAULT__TOKEN_FILE`).
    pub token: Option<Secret>,
    /// With `auth = "approle"` (the secret id is secret: `..._SECRET_ID_FILE`).
    pub role_id: Option<String>,
    pub secret_id: Option<Secret>,
    /// With `auth = "kubernetes"`: the Vault role, the service-account token file and the
    /// auth mount (default `kubernetes`).
    pub kubernetes_role: Option<String>,
    pub kubernetes_token_path: Option<PathBuf>,
    pub kubernetes_mount: Option<String>,
    /// PEM CA certificate(s) Vault's certificate is checked against (default: the system's).
    pub ca_path: Option<PathBuf>,
    /// `X-Vault-Namespace`.
    pub namespace: Option<String>,
    /// Per request, connection included (default 5000 ms).
    pub timeout_ms: u64,
}

impl Default for VaultSection {
    fn default() -> Self {
        Self {
            address: String::new(),
            mount: "transit".into(),
            key: "haven".into(),
            auth: "token".into(),
            token: None,
            role_id: None,
            secret_id: None,
            kubernetes_role: None,
            kubernetes_token_path: None,
            kubernetes_mount: None,
            ca_path: None,
            namespace: None,
            timeout_ms: 5_000,
        }
    }
}

impl Default for EncryptionConfig {
    fn default() -> Self {
        Self {
            provider: "file".into(),
            keyring_path: None,
            cache_seconds: 300,
            sensitive_identifier_systems: Vec::new(),
            vault: None,
            benchmark_off: false,
        }
    }
}

/// `[tls]`: certificate and key served, optional mutual TLS, reload without restart.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain (PEM), server certificate first, then intermediates.
    pub cert_file: PathBuf,
    /// Its private key (PEM: PKCS#8, SEC1 or PKCS#1).
    pub key_file: PathBuf,
    /// Mutual TLS: every client must present a certificate signed by a CA in this PEM file.
    /// It identifies the calling service (logged); the bearer token still decides access.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// Seconds between checks of the three files; a changed, valid certificate is served
    /// without a restart, a broken one is logged and the old one kept (1 to 3600; default 10).
    #[serde(default = "default_tls_reload_seconds")]
    pub reload_seconds: u64,
}

fn default_tls_reload_seconds() -> u64 {
    10
}

/// `[authorization]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthorizationConfig {
    /// The role policy (TOML); default: the shipped `policy/default.toml`. Check a new one
    /// with `haven policy check FILE`; a changed policy is recorded in the audit trail at start.
    pub policy_file: Option<PathBuf>,
    /// Roles that may open emergency access (break-glass); default: clinician. A TOML array,
    /// or in the environment one comma-separated string.
    #[serde(deserialize_with = "list_or_comma_separated")]
    pub break_glass_roles: Vec<String>,
    /// How long an emergency access lasts (default 3600 s; 5 to 86400).
    pub break_glass_seconds: u64,
}

impl Default for AuthorizationConfig {
    fn default() -> Self {
        Self {
            policy_file: None,
            break_glass_roles: vec!["clinician".into()],
            break_glass_seconds: 3600,
        }
    }
}

/// The identity provider and token validation (`[identity]`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// The issuer URL (`iss`): the server root as clients reach it. Default: `public_url`
    /// without its `/fhir` path, or `http://<listen address>`.
    pub issuer: Option<String>,
    /// Access-token lifetime (60 to 900 s; default 300).
    pub access_token_seconds: u64,
    /// Refresh-token lifetime without `offline_access` (default 12 h).
    pub refresh_token_seconds: u64,
    /// Refresh-token lifetime with `offline_access` (default 30 days).
    pub offline_refresh_token_seconds: u64,
    /// Browser sessions end after this long without use (default 15 min)...
    pub session_idle_seconds: u64,
    /// ...and at the latest this long after login (default 12 h).
    pub session_absolute_seconds: u64,
    /// Roles that must pass a second factor (default: every human role). A TOML array, or
    /// in the environment one comma-separated string.
    #[serde(deserialize_with = "list_or_comma_separated")]
    pub mfa_required_roles: Vec<String>,
    /// Shortest password accepted (NIST SP 800-63B: at least 8; default 12).
    pub password_min_length: usize,
    /// Argon2id memory in KiB (at least 19456, the OWASP minimum) and passes (at least 2).
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    /// Password hashes computed at once; each takes `argon2_memory_kib` of memory.
    pub login_concurrency: usize,
    /// The token signing key is replaced after this many days (0: only by `haven identity
    /// rotate-key`).
    pub signing_key_rotation_days: u64,
    /// How long a replica trusts a cached "token not revoked, user not disabled" answer.
    pub revocation_cache_ms: u64,
    /// The hospital directory (LDAP / Active Directory).
    pub ldap: Option<LdapSection>,
    /// External OpenID providers whose access tokens are accepted.
    pub trusted_issuers: Vec<TrustedIssuerSection>,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            issuer: None,
            access_token_seconds: 300,
            refresh_token_seconds: 12 * 3600,
            offline_refresh_token_seconds: 30 * 24 * 3600,
            session_idle_seconds: 15 * 60,
            session_absolute_seconds: 12 * 3600,
            mfa_required_roles: haven_domain::Role::ALL
                .into_iter()
                .filter(|r| r.is_human())
                .map(|r| r.as_str().to_owned())
                .collect(),
            password_min_length: 12,
            argon2_memory_kib: 19_456,
            argon2_iterations: 2,
            login_concurrency: 2,
            signing_key_rotation_days: 30,
            revocation_cache_ms: 2_000,
            ldap: None,
            trusted_issuers: Vec::new(),
        }
    }
}

/// `[identity.ldap]`: see `haven_identity::ldap::LdapConfig` for each setting.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdapSection {
    pub url: String,
    #[serde(default)]
    pub starttls: bool,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub bind_dn: Option<String>,
    /// Secret: use `HAVEN_IDENTITY__LDAP__BIND_PASSWORD_FILE`.
    #[serde(default)]
    pub bind_password: Option<Secret>,
    pub user_base: String,
    #[serde(default)]
    pub user_filter: Option<String>,
    #[serde(default)]
    pub group_base: String,
    #[serde(default)]
    pub group_filter: Option<String>,
    #[serde(default)]
    pub group_name_attribute: Option<String>,
    #[serde(default)]
    pub disabled_filter: Option<String>,
    /// Directory group -> Haven roles.
    #[serde(default)]
    pub role_map: std::collections::BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    #[serde(default)]
    pub require_tls: Option<bool>,
}

/// `[[identity.trusted_issuers]]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedIssuerSection {
    pub issuer: String,
    #[serde(default)]
    pub jwks_uri: Option<String>,
    #[serde(default)]
    pub audience: Option<String>,
    /// Claim with roles or groups (dotted path, e.g. `realm_access.roles`).
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// Claim value -> Haven role.
    #[serde(default)]
    pub role_map: std::collections::BTreeMap<String, String>,
    #[serde(default = "default_username_claim")]
    pub username_claim: String,
}

fn default_roles_claim() -> String {
    "roles".into()
}

fn default_username_claim() -> String {
    "preferred_username".into()
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Ed25519 key that signs audit checkpoints (secret: base64, or PKCS#8 PEM; use
    /// `HAVEN_AUDIT__SIGNING_KEY_FILE` to read it from a mounted secret). Unset: a key is
    /// generated once at `<data_dir>/audit-signing.key` (owner-only). Every replica of one
    /// database must use the same key.
    pub signing_key: Option<Secret>,
    /// Where every sealed record goes as an ECS JSON line, with the checkpoints: `stdout`,
    /// `off`, or an absolute file path (appended to).
    pub output: String,
    /// Sign a checkpoint at least every this many records...
    pub checkpoint_every: u64,
    /// ...and at least this often while records arrive.
    pub checkpoint_interval_seconds: u64,
    /// Further public keys (base64) `haven audit verify` trusts for checkpoints, e.g. keys
    /// used before a rotation.
    #[serde(deserialize_with = "list_or_comma_separated")]
    pub verify_keys: Vec<String>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            signing_key: None,
            output: "stdout".into(),
            checkpoint_every: 1_000,
            checkpoint_interval_seconds: 10,
            verify_keys: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_body_bytes: usize,
    pub max_json_depth: usize,
    pub max_bundle_entries: usize,
    pub default_page_size: u32,
    pub max_page_size: u32,
    /// Longest a single database statement may run, in milliseconds, on either backend; a
    /// query cut off answers 503 with `Retry-After`.
    pub statement_timeout_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `tracing` filter, e.g. `info` or `haven=debug,info`.
    pub level: String,
    pub format: LogFormat,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Bearer token required on `/metrics` (secret; use `HAVEN_METRICS__TOKEN_FILE`).
    pub token: Option<Secret>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./haven-data"),
            database_url: None,
            public_url: None,
            shutdown_grace_seconds: 30,
            trusted_proxies: Vec::new(),
            behind_gateway: false,
            limits: LimitsConfig::default(),
            tls: None,
            log: LogConfig::default(),
            metrics: MetricsConfig::default(),
            audit: AuditConfig::default(),
            identity: IdentityConfig::default(),
            authorization: AuthorizationConfig::default(),
            encryption: EncryptionConfig::default(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let l = haven_service::Limits::default();
        Self {
            max_body_bytes: l.max_body_bytes,
            max_json_depth: l.max_json_depth,
            max_bundle_entries: l.max_bundle_entries,
            default_page_size: l.default_page_size,
            max_page_size: l.max_page_size,
            statement_timeout_ms: 5_000,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Json,
        }
    }
}

/// Values given on the command line; they override every other layer.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub config_file: Option<PathBuf>,
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("cannot read {var} ({path}): {reason}")]
    SecretFile {
        var: String,
        path: String,
        reason: String,
    },
    #[error("{0}")]
    Invalid(String),
}

const PREFIX: &str = "HAVEN_";

/// Loads the configuration from every layer, using the process environment.
pub fn load(overrides: &Overrides) -> Result<Config, ConfigError> {
    load_from(overrides, &std::env::vars().collect::<Vec<_>>())
}

/// Loads the configuration with an explicit environment (testable without touching the process).
pub fn load_from(overrides: &Overrides, env: &[(String, String)]) -> Result<Config, ConfigError> {
    let mut fig = Figment::from(Serialized::defaults(Config::default()));
    let file = overrides.config_file.clone().or_else(|| {
        env.iter()
            .find(|(k, _)| k == "HAVEN_CONFIG")
            .map(|(_, v)| PathBuf::from(v))
    });
    if let Some(path) = file {
        if !path.exists() {
            return Err(ConfigError::MissingFile(path));
        }
        fig = fig.merge(Toml::file_exact(path));
    }
    let vars: Vec<(String, String)> = env
        .iter()
        .filter(|(k, _)| k.starts_with(PREFIX) && k != "HAVEN_CONFIG")
        .cloned()
        .collect();
    // Plain HAVEN_* variables (a setting named `*_file` is one: its value is the path).
    let indirect = |k: &str| k.ends_with("_FILE") && !names_file_key(k);
    let plain: Vec<(String, String)> = vars.iter().filter(|(k, _)| !indirect(k)).cloned().collect();
    fig = fig.merge(env_provider(&plain));
    // HAVEN_*_FILE: the value comes from the named file.
    let mut from_files = Vec::new();
    for (k, path) in vars.iter().filter(|(k, _)| indirect(k)) {
        let content = std::fs::read_to_string(path).map_err(|e| ConfigError::SecretFile {
            var: k.clone(),
            path: path.clone(),
            reason: e.kind().to_string(),
        })?;
        let key = k.trim_end_matches("_FILE").to_owned();
        from_files.push((key, content.trim_end_matches(['\n', '\r']).to_owned()));
    }
    fig = fig.merge(env_provider(&from_files));
    // Command-line flags.
    let mut cli = Dict::new();
    if let Some(l) = &overrides.listen {
        cli.insert("listen".into(), FigValue::from(l.clone()));
    }
    if let Some(d) = &overrides.data_dir {
        cli.insert("data_dir".into(), FigValue::from(d.display().to_string()));
    }
    fig = fig.merge(Serialized::defaults(cli));

    let config: Config = fig
        .extract()
        .map_err(|e| ConfigError::Invalid(describe(e)))?;
    config.validate()?;
    // The process environment too: the PostgreSQL driver reads PGSSLMODE and PGHOST from it.
    crate::hops::refuse_clear_hops(&config, |k| {
        env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    })
    .map_err(ConfigError::Invalid)?;
    Ok(config)
}

/// Settings whose own name ends in `_file`. `HAVEN_TLS__CERT_FILE=/p` sets `tls.cert_file`; it
/// is not the `*_FILE` indirection (which would read `tls.cert` from `/p`). A test keeps the
/// list complete.
const FILE_KEYS: [&str; 5] = [
    "authorization.policy_file",
    "identity.ldap.ca_file",
    "tls.cert_file",
    "tls.key_file",
    "tls.client_ca_file",
];

fn names_file_key(var: &str) -> bool {
    let key = var[PREFIX.len()..].to_ascii_lowercase().replace("__", ".");
    FILE_KEYS.contains(&key.as_str())
}

/// A figment provider over a fixed set of `HAVEN_*` pairs (not the live process environment).
fn env_provider(pairs: &[(String, String)]) -> Serialized<Dict> {
    let mut root = Dict::new();
    for (k, v) in pairs {
        let path: Vec<String> = k[PREFIX.len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        insert_path(&mut root, &path, parse_env_value(v));
    }
    Serialized::defaults(root)
}

fn parse_env_value(v: &str) -> FigValue {
    // Same typing rules as figment's Env provider: numbers and booleans are recognised.
    v.parse::<FigValue>()
        .unwrap_or_else(|_| FigValue::from(v.to_owned()))
}

fn insert_path(dict: &mut Dict, path: &[String], value: FigValue) {
    match path {
        [] => {}
        [last] => {
            dict.insert(last.clone(), value);
        }
        [head, rest @ ..] => {
            let entry = dict
                .entry(head.clone())
                .or_insert_with(|| FigValue::from(Dict::new()));
            if let FigValue::Dict(_, inner) = entry {
                insert_path(inner, rest, value);
            } else {
                let mut inner = Dict::new();
                insert_path(&mut inner, rest, value);
                *entry = FigValue::from(inner);
            }
        }
    }
}

/// A list given as an array (TOML file, `HAVEN_X=[a,b]`) or as one comma-separated string
/// (`HAVEN_X=a,b`, the usual form in an environment).
fn list_or_comma_separated<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct ListVisitor;
    impl<'de> serde::de::Visitor<'de> for ListVisitor {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of strings or one comma-separated string")
        }

        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect())
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(item) = seq.next_element::<String>()? {
                out.push(item);
            }
            Ok(out)
        }
    }
    d.deserialize_any(ListVisitor)
}

fn describe(e: figment::Error) -> String {
    let mut out = Vec::new();
    for err in e {
        let key = if err.path.is_empty() {
            String::new()
        } else {
            format!("'{}': ", err.path.join("."))
        };
        let source = err
            .metadata
            .as_ref()
            .map(|m| format!(" (from {})", m.name))
            .unwrap_or_default();
        out.push(format!("{key}{}{source}", err.kind));
    }
    format!("invalid configuration: {}", out.join("; "))
}

impl Config {
    /// The role policy's text and where it came from.
    pub fn policy_text(&self) -> anyhow::Result<(String, String)> {
        match &self.authorization.policy_file {
            Some(p) => Ok((
                std::fs::read_to_string(p).map_err(|e| {
                    anyhow::anyhow!("cannot read authorization.policy_file {}: {e}", p.display())
                })?,
                p.display().to_string(),
            )),
            None => Ok((
                haven_domain::policy::DEFAULT_POLICY.to_owned(),
                "the shipped policy/default.toml".into(),
            )),
        }
    }

    /// The parsed role policy.
    pub fn policy(&self) -> anyhow::Result<haven_domain::policy::Policy> {
        let (text, origin) = self.policy_text()?;
        haven_domain::policy::Policy::parse(&text)
            .map_err(|e| anyhow::anyhow!("the role policy ({origin}) is invalid: {e}"))
    }

    fn validate_identity(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let i = &self.identity;
        if !(60..=900).contains(&i.access_token_seconds) {
            return bad(
                "identity.access_token_seconds must be between 60 and 900 (short-lived tokens)"
                    .into(),
            );
        }
        if !(60..=86_400).contains(&i.session_idle_seconds)
            || !(i.session_idle_seconds..=7 * 86_400).contains(&i.session_absolute_seconds)
        {
            return bad(
                "identity: need 60 <= session_idle_seconds <= session_absolute_seconds <= 604800"
                    .into(),
            );
        }
        if i.refresh_token_seconds < 60 || i.offline_refresh_token_seconds < i.refresh_token_seconds
        {
            return bad(
                "identity: need 60 <= refresh_token_seconds <= offline_refresh_token_seconds"
                    .into(),
            );
        }
        for r in &self.authorization.break_glass_roles {
            if haven_domain::Role::parse(r).is_none() {
                return bad(format!(
                    "authorization.break_glass_roles: unknown role '{r}'"
                ));
            }
        }
        if !(5..=86_400).contains(&self.authorization.break_glass_seconds) {
            return bad("authorization.break_glass_seconds must be between 5 and 86400".into());
        }
        for r in &i.mfa_required_roles {
            if haven_domain::Role::parse(r).is_none() {
                return bad(format!("identity.mfa_required_roles: unknown role '{r}'"));
            }
        }
        if !(8..=64).contains(&i.password_min_length) {
            return bad(
                "identity.password_min_length must be between 8 and 64 (NIST SP 800-63B)".into(),
            );
        }
        if i.argon2_memory_kib < 19_456 || i.argon2_iterations < 2 {
            return bad("identity: Argon2id needs at least argon2_memory_kib = 19456 and argon2_iterations = 2 (OWASP)".into());
        }
        if !(1..=64).contains(&i.login_concurrency) {
            return bad("identity.login_concurrency must be between 1 and 64".into());
        }
        if i.revocation_cache_ms > 60_000 {
            return bad("identity.revocation_cache_ms must be at most 60000".into());
        }
        if let Some(iss) = &i.issuer
            && !(iss.starts_with("https://") || iss.starts_with("http://"))
        {
            return bad("identity.issuer must be an http(s) URL".into());
        }
        for t in &i.trusted_issuers {
            for role in t.role_map.values() {
                if haven_domain::Role::parse(role).is_none() {
                    return bad(format!("identity.trusted_issuers: unknown role '{role}'"));
                }
            }
        }
        Ok(())
    }

    /// The identity settings for a server reached at `root` (scheme and authority).
    pub fn identity_settings(
        &self,
        root: &str,
        fhir_base: &str,
    ) -> anyhow::Result<haven_identity::IdentitySettings> {
        use std::time::Duration;
        let i = &self.identity;
        let issuer = i
            .issuer
            .clone()
            .unwrap_or_else(|| root.trim_end_matches('/').to_owned());
        let mut s = haven_identity::IdentitySettings::new(issuer, fhir_base);
        s.access_token_ttl = Duration::from_secs(i.access_token_seconds);
        s.refresh_ttl = Duration::from_secs(i.refresh_token_seconds);
        s.offline_refresh_ttl = Duration::from_secs(i.offline_refresh_token_seconds);
        s.session_idle = Duration::from_secs(i.session_idle_seconds);
        s.session_absolute = Duration::from_secs(i.session_absolute_seconds);
        s.mfa_required_roles = i
            .mfa_required_roles
            .iter()
            .filter_map(|r| haven_domain::Role::parse(r))
            .collect();
        s.break_glass_roles = self
            .authorization
            .break_glass_roles
            .iter()
            .filter_map(|r| haven_domain::Role::parse(r))
            .collect();
        s.break_glass_duration = Duration::from_secs(self.authorization.break_glass_seconds);
        s.password_policy.min_len = i.password_min_length;
        s.password_params = haven_crypto::PasswordParams {
            m_kib: i.argon2_memory_kib,
            t: i.argon2_iterations,
            p: 1,
        };
        s.hash_concurrency = i.login_concurrency;
        s.signing_key_rotation = Duration::from_secs(i.signing_key_rotation_days * 86_400);
        s.revocation_cache = Duration::from_millis(i.revocation_cache_ms);
        if let Some(l) = &i.ldap {
            let mut value = serde_json::json!({
                "url": l.url,
                "starttls": l.starttls,
                "user_base": l.user_base,
                "group_base": l.group_base,
                "role_map": l.role_map,
            });
            let set = |v: &mut serde_json::Value, k: &str, x: Option<serde_json::Value>| {
                if let Some(x) = x {
                    v[k] = x;
                }
            };
            set(
                &mut value,
                "ca_file",
                l.ca_file.as_ref().map(|p| serde_json::json!(p)),
            );
            set(
                &mut value,
                "bind_dn",
                l.bind_dn.as_ref().map(|p| serde_json::json!(p)),
            );
            set(
                &mut value,
                "bind_password",
                l.bind_password
                    .as_ref()
                    .map(|p| serde_json::json!(p.expose())),
            );
            set(
                &mut value,
                "user_filter",
                l.user_filter.as_ref().map(|p| serde_json::json!(p)),
            );
            set(
                &mut value,
                "group_filter",
                l.group_filter.as_ref().map(|p| serde_json::json!(p)),
            );
            set(
                &mut value,
                "group_name_attribute",
                l.group_name_attribute
                    .as_ref()
                    .map(|p| serde_json::json!(p)),
            );
            set(
                &mut value,
                "disabled_filter",
                l.disabled_filter.as_ref().map(|p| serde_json::json!(p)),
            );
            set(
                &mut value,
                "timeout_secs",
                l.timeout_secs.map(|p| serde_json::json!(p)),
            );
            set(
                &mut value,
                "require_tls",
                l.require_tls.map(|p| serde_json::json!(p)),
            );
            s.ldap = Some(
                serde_json::from_value(value).map_err(|e| anyhow::anyhow!("identity.ldap: {e}"))?,
            );
        }
        s.trusted_issuers = i
            .trusted_issuers
            .iter()
            .map(|t| haven_identity::TrustedIssuer {
                issuer: t.issuer.clone(),
                jwks_uri: t.jwks_uri.clone(),
                audience: t.audience.clone(),
                roles_claim: t.roles_claim.clone(),
                role_map: t
                    .role_map
                    .iter()
                    .filter_map(|(k, v)| haven_domain::Role::parse(v).map(|r| (k.clone(), r)))
                    .collect(),
                username_claim: t.username_claim.clone(),
            })
            .collect();
        Ok(s)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        self.validate_listen()?;
        self.validate_identity()?;
        if let Some(url) = &self.database_url
            && !(url.expose().starts_with("postgres://")
                || url.expose().starts_with("postgresql://"))
        {
            return bad(
                "database_url must be a PostgreSQL URL (postgres://user@host:5432/db); leave it unset for the embedded database"
                    .into(),
            );
        }
        if self.data_dir.as_os_str().is_empty() {
            return bad("data_dir must not be empty".into());
        }
        let l = &self.limits;
        if !(1024..=1 << 30).contains(&l.max_body_bytes) {
            return bad(format!(
                "limits.max_body_bytes must be between 1024 and 1073741824, not {}",
                l.max_body_bytes
            ));
        }
        if !(8..=127).contains(&l.max_json_depth) {
            return bad(format!(
                "limits.max_json_depth must be between 8 and 127, not {}",
                l.max_json_depth
            ));
        }
        if !(1..=100_000).contains(&l.max_bundle_entries) {
            return bad(format!(
                "limits.max_bundle_entries must be between 1 and 100000, not {}",
                l.max_bundle_entries
            ));
        }
        if l.max_page_size == 0 || l.default_page_size == 0 || l.default_page_size > l.max_page_size
        {
            return bad("limits: need 0 < default_page_size <= max_page_size".into());
        }
        if !(100..=600_000).contains(&l.statement_timeout_ms) {
            return bad(format!(
                "limits.statement_timeout_ms must be between 100 and 600000, not {}",
                l.statement_timeout_ms
            ));
        }
        if let Some(url) = &self.public_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return bad(format!(
                "public_url must start with http:// or https://, not '{url}'"
            ));
        }
        self.trusted_proxies()?;
        let e = &self.encryption;
        if !matches!(e.provider.as_str(), "file" | "vault") {
            return bad(format!(
                "encryption.provider must be file or vault, not '{}'",
                e.provider
            ));
        }
        if !(1..=3_600).contains(&e.cache_seconds) {
            return bad("encryption.cache_seconds must be between 1 and 3600".into());
        }
        if e.provider == "vault" {
            self.vault_settings()?;
        }
        let a = &self.audit;
        if !(a.output == "stdout" || a.output == "off" || a.output.starts_with('/')) {
            return bad(format!(
                "audit.output must be stdout, off or an absolute file path, not '{}'",
                a.output
            ));
        }
        if !(1..=1_000_000).contains(&a.checkpoint_every) {
            return bad("audit.checkpoint_every must be between 1 and 1000000".into());
        }
        if !(1..=3_600).contains(&a.checkpoint_interval_seconds) {
            return bad("audit.checkpoint_interval_seconds must be between 1 and 3600".into());
        }
        for k in &a.verify_keys {
            haven_crypto::VerifyingKey::from_base64(k)
                .map_err(|e| ConfigError::Invalid(format!("audit.verify_keys: {e}")))?;
        }
        if self.log.level.trim().is_empty() {
            return bad("log.level must not be empty (e.g. info)".into());
        }
        if let Some(t) = &self.metrics.token
            && t.expose().len() < 16
        {
            return bad("metrics.token must be at least 16 characters".into());
        }
        Ok(())
    }

    /// Plain HTTP only on loopback or behind a declared gateway; otherwise TLS here.
    fn validate_listen(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let https_public_url = self
            .public_url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://"));
        if let Some(t) = &self.tls {
            if !(1..=3600).contains(&t.reload_seconds) {
                return bad("tls.reload_seconds must be between 1 and 3600".into());
            }
            if self.public_url.is_some() && !https_public_url {
                return bad("with [tls], public_url must start with https://".into());
            }
            return Ok(());
        }
        if self.listen.ip().is_loopback() {
            return Ok(());
        }
        if !self.behind_gateway {
            return bad(format!(
                "refusing to serve plain HTTP on {}: passwords and tokens would cross the \
                 network in clear. Configure [tls] (cert_file, key_file; `haven dev-certs` makes \
                 a local set), or, when a gateway in front terminates TLS, set \
                 behind_gateway = true with trusted_proxies naming it; or listen on 127.0.0.1",
                self.listen
            ));
        }
        if self.trusted_proxies.is_empty() {
            return bad(format!(
                "behind_gateway = true needs trusted_proxies: the address or network of the \
                 gateway that terminates TLS and alone sends plain HTTP to {} \
                 (e.g. trusted_proxies = [\"10.244.0.0/16\"])",
                self.listen
            ));
        }
        if !https_public_url {
            return bad(
                "behind_gateway = true needs an https:// public_url: the address clients reach \
                 the gateway at (e.g. https://ehr.example.org/fhir)"
                    .into(),
            );
        }
        Ok(())
    }

    /// The parsed `trusted_proxies` (checked by `validate`, so an error here means a bad entry).
    pub fn trusted_proxies(&self) -> Result<haven_http::TrustedProxies, ConfigError> {
        haven_http::TrustedProxies::parse(self.trusted_proxies.iter().map(String::as_str))
            .map_err(|e| ConfigError::Invalid(format!("trusted_proxies: {e}")))
    }

    /// `https` when Haven terminates TLS itself, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    pub fn statement_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.limits.statement_timeout_ms)
    }

    /// Where the generated audit signing key lives when none is configured.
    pub fn audit_key_path(&self) -> PathBuf {
        self.data_dir.join("audit-signing.key")
    }

    /// The database file inside the data directory.
    /// The Vault/OpenBao settings of `encryption.provider = "vault"`, checked.
    pub fn vault_settings(&self) -> Result<crate::vault::VaultSettings, ConfigError> {
        use crate::vault::{VaultAuth, VaultSecret, VaultSettings, check_address};
        let bad = |m: String| ConfigError::Invalid(format!("encryption.vault: {m}"));
        let Some(v) = &self.encryption.vault else {
            return Err(bad(
                "provider \"vault\" needs an [encryption.vault] section with at least address and auth".into(),
            ));
        };
        check_address(&v.address).map_err(bad)?;
        let auth = match v.auth.as_str() {
            "token" => VaultAuth::Token(VaultSecret::new(
                v.token
                    .as_ref()
                    .ok_or_else(|| {
                        bad(
                            "auth = \"token\" needs token (or HAVEN_ENCRYPTION__VAULT__TOKEN_FILE)"
                                .into(),
                        )
                    })?
                    .expose(),
            )),
            "approle" => VaultAuth::AppRole {
                role_id: v
                    .role_id
                    .clone()
                    .ok_or_else(|| bad("auth = \"approle\" needs role_id".into()))?,
                secret_id: VaultSecret::new(
                    v.secret_id
                        .as_ref()
                        .ok_or_else(|| bad("auth = \"approle\" needs secret_id".into()))?
                        .expose(),
                ),
            },
            "kubernetes" => {
                let mut a =
                    VaultAuth::kubernetes(v.kubernetes_role.clone().ok_or_else(|| {
                        bad("auth = \"kubernetes\" needs kubernetes_role".into())
                    })?);
                if let VaultAuth::Kubernetes {
                    jwt_file, mount, ..
                } = &mut a
                {
                    if let Some(p) = &v.kubernetes_token_path {
                        jwt_file.clone_from(p);
                    }
                    if let Some(m) = &v.kubernetes_mount {
                        mount.clone_from(m);
                    }
                }
                a
            }
            other => {
                return Err(bad(format!(
                    "auth must be token, approle or kubernetes, not '{other}'"
                )));
            }
        };
        if !(100..=60_000).contains(&v.timeout_ms) {
            return Err(bad("timeout_ms must be between 100 and 60000".into()));
        }
        let mut s = VaultSettings::new(v.address.clone(), auth);
        s.mount.clone_from(&v.mount);
        s.key.clone_from(&v.key);
        s.ca_file.clone_from(&v.ca_path);
        s.namespace.clone_from(&v.namespace);
        s.timeout = std::time::Duration::from_millis(v.timeout_ms);
        Ok(s)
    }

    /// The keyring file of the `file` key provider, and whether it is the default one.
    pub fn keyring_path(&self) -> (PathBuf, bool) {
        match &self.encryption.keyring_path {
            Some(p) => (p.clone(), false),
            None => (self.data_dir.join("keyring.toml"), true),
        }
    }

    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("haven.db")
    }

    pub fn limits(&self) -> haven_service::Limits {
        haven_service::Limits {
            max_body_bytes: self.limits.max_body_bytes,
            max_json_depth: self.limits.max_json_depth,
            max_bundle_entries: self.limits.max_bundle_entries,
            // A default above the maximum is clamped like any `_count`.
            default_page_size: self.limits.default_page_size.min(self.limits.max_page_size),
            max_page_size: self.limits.max_page_size,
        }
    }

    /// The configuration as TOML, with secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// Creates the data directory with owner-only permissions if it does not exist.
pub fn ensure_data_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let meta = std::fs::metadata(dir)?;
    if !meta.is_dir() {
        return Err(std::io::Error::other(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            dir = %dir.display(),
            "the data directory is readable by other users; run: chmod 700 {}",
            dir.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_are_valid() {
        let c = load_from(&Overrides::default(), &[]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.data_dir, PathBuf::from("./haven-data"));
        assert_eq!(c.limits.max_body_bytes, 8 * 1024 * 1024);
        assert_eq!(c.limits.max_bundle_entries, 1000);
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("haven.toml");
        std::fs::write(&file, "listen = \"127.0.0.1:9000\"\ndata_dir = \"/from/file\"\n[limits]\nmax_bundle_entries = 10\n").unwrap();
        let secret = dir.path().join("token");
        std::fs::write(&secret, "s3cret-token-0123456789\n").unwrap();
        let e = env(&[
            ("HAVEN_DATA_DIR", "/from/env"),
            ("HAVEN_LIMITS__MAX_BUNDLE_ENTRIES", "20"),
            ("HAVEN_METRICS__TOKEN_FILE", secret.to_str().unwrap()),
            (
                "HAVEN_DATABASE_URL",
                "postgres://haven:pa55word@db.internal:5432/haven?sslmode=verify-full",
            ),
            ("UNRELATED", "x"),
        ]);
        let o = Overrides {
            config_file: Some(file.clone()),
            listen: None,
            data_dir: None,
        };
        let c = load_from(&o, &e).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:9000"); // file over default
        assert_eq!(c.data_dir, PathBuf::from("/from/env")); // env over file
        assert_eq!(c.limits.max_bundle_entries, 20);
        assert_eq!(
            c.metrics.token.as_ref().unwrap().expose(),
            "s3cret-token-0123456789"
        );
        let o = Overrides {
            config_file: Some(file),
            listen: Some("127.0.0.1:9100".into()),
            data_dir: Some("/from/cli".into()),
        };
        let c = load_from(&o, &e).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:9100"); // flag over everything
        assert_eq!(c.data_dir, PathBuf::from("/from/cli"));
        // Secrets never appear in the printed configuration.
        let printed = c.to_redacted_toml();
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(!printed.contains("pa55word"), "{printed}");
        assert!(c.database_url.is_some());
        assert!(printed.contains("[redacted]"));
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn bad_values_are_explained() {
        let err = |pairs: &[(&str, &str)]| {
            load_from(&Overrides::default(), &env(pairs))
                .unwrap_err()
                .to_string()
        };
        assert!(err(&[("HAVEN_LISTEN", "0.0.0.0:8080")]).contains("behind_gateway"));
        assert!(
            err(&[("HAVEN_IDENTITY__ACCESS_TOKEN_SECONDS", "3600")])
                .contains("access_token_seconds")
        );
        assert!(err(&[("HAVEN_IDENTITY__ARGON2_MEMORY_KIB", "1024")]).contains("argon2"));
        assert!(err(&[("HAVEN_LISTEN", "not-an-address")]).contains("listen"));
        assert!(err(&[("HAVEN_LISTN", "127.0.0.1:1")]).contains("listn"));
        assert!(err(&[("HAVEN_LIMITS__MAX_JSON_DEPTH", "2")]).contains("max_json_depth"));
        assert!(err(&[("HAVEN_LIMITS__MAX_BODY_BYTES", "lots")]).contains("max_body_bytes"));
        assert!(
            err(&[("HAVEN_METRICS__TOKEN_FILE", "/nonexistent/token")])
                .contains("HAVEN_METRICS__TOKEN_FILE")
        );
        assert!(err(&[("HAVEN_METRICS__TOKEN", "short")]).contains("16"));
        assert!(err(&[("HAVEN_DATABASE_URL", "mysql://x/y")]).contains("PostgreSQL URL"));
        let missing = load_from(
            &Overrides {
                config_file: Some("/nonexistent.toml".into()),
                ..Overrides::default()
            },
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(missing.contains("does not exist"));
    }

    /// docs/configuration.md must describe every key the configuration has.
    #[test]
    fn reference_documents_every_key() {
        let doc = include_str!("../../../docs/configuration.md");
        let c = Config {
            tls: Some(TlsConfig {
                cert_file: "/c.pem".into(),
                key_file: "/k.pem".into(),
                client_ca_file: Some("/ca.pem".into()),
                reload_seconds: 10,
            }),
            public_url: Some("http://x".into()),
            database_url: Some(Secret("postgres://h/db".into())),
            metrics: MetricsConfig {
                token: Some(Secret("0123456789abcdef".into())),
            },
            ..Config::default()
        };
        let value = toml::Value::try_from(&c).unwrap();
        let mut keys = Vec::new();
        for (k, v) in value.as_table().unwrap() {
            match v.as_table() {
                Some(t) => keys.extend(t.keys().map(|sub| format!("{k}.{sub}"))),
                None => keys.push(k.clone()),
            }
        }
        assert!(keys.len() >= 12, "{keys:?}");
        for key in keys {
            assert!(
                doc.contains(&format!("| `{key}` |")),
                "docs/configuration.md lacks `{key}`"
            );
        }
    }

    /// Every setting named `*_file` is in FILE_KEYS, so its variable is not taken for a
    /// `*_FILE` indirection; and such a variable sets the path.
    #[test]
    fn settings_named_file_are_plain_paths_in_the_environment() {
        let mut c = Config {
            tls: Some(TlsConfig {
                cert_file: "/c".into(),
                key_file: "/k".into(),
                client_ca_file: Some("/ca".into()),
                reload_seconds: 10,
            }),
            ..Config::default()
        };
        c.authorization.policy_file = Some("/p".into());
        c.identity.ldap = Some(LdapSection {
            url: "ldaps://x".into(),
            starttls: false,
            ca_file: Some("/ldap-ca".into()),
            bind_dn: None,
            bind_password: None,
            user_base: "dc=x".into(),
            user_filter: None,
            group_base: String::new(),
            group_filter: None,
            group_name_attribute: None,
            disabled_filter: None,
            role_map: Default::default(),
            timeout_secs: None,
            require_tls: None,
        });
        fn walk(prefix: &str, v: &toml::Value, out: &mut Vec<String>) {
            if let Some(t) = v.as_table() {
                for (k, v) in t {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            } else {
                out.push(prefix.to_owned());
            }
        }
        let mut keys = Vec::new();
        walk("", &toml::Value::try_from(&c).unwrap(), &mut keys);
        let mut named_file: Vec<&str> = keys
            .iter()
            .map(String::as_str)
            .filter(|k| k.ends_with("_file"))
            .collect();
        named_file.sort_unstable();
        let mut listed = FILE_KEYS.to_vec();
        listed.sort_unstable();
        assert_eq!(named_file, listed);

        let c = load_from(
            &Overrides::default(),
            &env(&[
                ("HAVEN_TLS__CERT_FILE", "/etc/haven/tls.crt"),
                ("HAVEN_TLS__KEY_FILE", "/etc/haven/tls.key"),
            ]),
        )
        .unwrap();
        assert_eq!(
            c.tls.unwrap().cert_file,
            PathBuf::from("/etc/haven/tls.crt")
        );
    }

    #[test]
    fn trusted_proxies_from_every_layer() {
        let proxies = |file: Option<&str>, pairs: &[(&str, &str)]| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("haven.toml");
            let o = Overrides {
                config_file: file.map(|f| {
                    std::fs::write(&path, f).unwrap();
                    path.clone()
                }),
                ..Overrides::default()
            };
            load_from(&o, &env(pairs)).map(|c| c.trusted_proxies)
        };
        assert!(proxies(None, &[]).unwrap().is_empty());
        assert_eq!(
            proxies(
                None,
                &[("HAVEN_TRUSTED_PROXIES", "127.0.0.1, 10.0.0.0/8,fd00::/8")]
            )
            .unwrap(),
            ["127.0.0.1", "10.0.0.0/8", "fd00::/8"]
        );
        assert_eq!(
            proxies(None, &[("HAVEN_TRUSTED_PROXIES", "::1")]).unwrap(),
            ["::1"]
        );
        assert_eq!(
            proxies(None, &[("HAVEN_TRUSTED_PROXIES", "[127.0.0.1, \"::1\"]")]).unwrap(),
            ["127.0.0.1", "::1"]
        );
        assert!(
            proxies(None, &[("HAVEN_TRUSTED_PROXIES", "")])
                .unwrap()
                .is_empty()
        );
        let file = "trusted_proxies = [\"10.1.0.0/16\", \"::1\"]\n";
        assert_eq!(proxies(Some(file), &[]).unwrap(), ["10.1.0.0/16", "::1"]);
        // The environment replaces the file's list.
        assert_eq!(
            proxies(Some(file), &[("HAVEN_TRUSTED_PROXIES", "192.0.2.1")]).unwrap(),
            ["192.0.2.1"]
        );
        let c = load_from(
            &Overrides::default(),
            &env(&[("HAVEN_TRUSTED_PROXIES", "127.0.0.1")]),
        )
        .unwrap();
        assert!(!c.trusted_proxies().unwrap().is_empty());
        // A bad entry is named, with the reason.
        let err = |pairs: &[(&str, &str)]| proxies(None, pairs).unwrap_err().to_string();
        let e = err(&[("HAVEN_TRUSTED_PROXIES", "127.0.0.1,gateway.local")]);
        assert!(
            e.contains("trusted_proxies") && e.contains("'gateway.local'"),
            "{e}"
        );
        assert!(err(&[("HAVEN_TRUSTED_PROXIES", "10.0.0.0/40")]).contains("prefix length"));
        assert!(err(&[("HAVEN_TRUSTED_PROXIES", "0.0.0.0/0")]).contains("every address"));
        assert!(err(&[("HAVEN_TRUSTED_PROXIES", "7")]).contains("trusted_proxies"));
        let e = proxies(Some("trusted_proxies = 5\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("trusted_proxies"), "{e}");
    }

    /// Plain HTTP beyond loopback only from a declared gateway (issue 8); TLS anywhere.
    #[test]
    fn non_loopback_listen_needs_tls_or_a_declared_gateway() {
        let load = |pairs: &[(&str, &str)]| load_from(&Overrides::default(), &env(pairs));
        let err = |pairs: &[(&str, &str)]| load(pairs).unwrap_err().to_string();
        let listen = ("HAVEN_LISTEN", "0.0.0.0:8080");
        let https = ("HAVEN_PUBLIC_URL", "https://ehr.example.org/fhir");
        let gateway = ("HAVEN_BEHIND_GATEWAY", "true");
        let proxies = ("HAVEN_TRUSTED_PROXIES", "10.244.0.0/16");
        // An https public_url alone no longer suffices (the old rule): nothing says who may
        // send plain HTTP.
        let e = err(&[listen, https]);
        assert!(e.contains("[tls]") && e.contains("behind_gateway"), "{e}");
        assert!(err(&[("HAVEN_LISTEN", "[::]:8080"), https]).contains("behind_gateway"));
        assert!(err(&[("HAVEN_LISTEN", "192.0.2.1:8080"), https]).contains("behind_gateway"));
        let e = err(&[listen, https, gateway]);
        assert!(e.contains("needs trusted_proxies"), "{e}");
        let e = err(&[listen, gateway, proxies]);
        assert!(e.contains("https:// public_url"), "{e}");
        let e = err(&[
            listen,
            gateway,
            proxies,
            ("HAVEN_PUBLIC_URL", "http://x/fhir"),
        ]);
        assert!(e.contains("https:// public_url"), "{e}");
        let c = load(&[listen, https, gateway, proxies]).unwrap();
        assert!(c.behind_gateway && c.tls.is_none());
        // With TLS, any address; an http public_url would contradict it.
        let cert = ("HAVEN_TLS__CERT_FILE", "/etc/haven/tls.crt");
        let key = ("HAVEN_TLS__KEY_FILE", "/etc/haven/tls.key");
        let c = load(&[listen, cert, key]).unwrap();
        let tls = c.tls.unwrap();
        assert_eq!(tls.reload_seconds, 10);
        assert!(tls.client_ca_file.is_none());
        assert!(
            err(&[listen, cert, key, ("HAVEN_PUBLIC_URL", "http://x/fhir")]).contains("https://")
        );
        assert!(
            err(&[listen, cert, key, ("HAVEN_TLS__RELOAD_SECONDS", "0")])
                .contains("reload_seconds")
        );
        assert!(err(&[listen, cert]).contains("key_file"));
        // Loopback needs neither.
        assert!(load(&[("HAVEN_LISTEN", "127.0.0.1:8080")]).is_ok());
    }

    /// Encrypted hops: a remote database only with verified TLS; a remote plain LDAP
    /// directory only with StartTLS.
    #[test]
    fn remote_hops_in_clear_are_refused() {
        let load = |pairs: &[(&str, &str)]| load_from(&Overrides::default(), &env(pairs));
        let db = |url: &str| ("HAVEN_DATABASE_URL", url.to_owned());
        let err = |pairs: &[(&str, String)]| {
            let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            load(&pairs).unwrap_err().to_string()
        };
        let ok = |pairs: &[(&str, String)]| {
            let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            load(&pairs)
                .map(|_| ())
                .unwrap_or_else(|e| panic!("{pairs:?}: {e}"));
        };
        let e = err(&[db("postgres://haven:pa55word@db.internal:5432/haven")]);
        assert!(
            e.contains("db.internal") && e.contains("sslmode=verify-full"),
            "{e}"
        );
        assert!(!e.contains("pa55word"), "the password leaked: {e}");
        let e = err(&[db("postgres://haven@db.internal/haven?sslmode=require")]);
        assert!(e.contains("sslmode=require"), "{e}");
        ok(&[db(
            "postgres://haven@db.internal/haven?sslmode=verify-full&sslrootcert=/ca.crt",
        )]);
        ok(&[db("postgres://haven@127.0.0.1:5432/haven")]);
        ok(&[db("postgres://haven@localhost/haven")]);
        // The driver's own environment counts, as the driver reads it.
        ok(&[
            db("postgres://haven@db.internal/haven"),
            ("PGSSLMODE", "verify-full".into()),
        ]);
        assert!(
            err(&[db("postgres:///haven"), ("PGHOST", "db.internal".into())])
                .contains("db.internal")
        );
        let ldap = |url: &str, starttls: bool| {
            vec![
                ("HAVEN_IDENTITY__LDAP__URL", url.to_owned()),
                (
                    "HAVEN_IDENTITY__LDAP__USER_BASE",
                    "ou=people,dc=example,dc=org".to_owned(),
                ),
                ("HAVEN_IDENTITY__LDAP__STARTTLS", starttls.to_string()),
                // The directory module's own rule is not what is tested here.
                ("HAVEN_IDENTITY__LDAP__REQUIRE_TLS", "false".to_owned()),
            ]
        };
        let e = err(&ldap("ldap://dc1.example.org", false));
        assert!(e.contains("identity.ldap") && e.contains("starttls"), "{e}");
        ok(&ldap("ldap://dc1.example.org", true));
        ok(&ldap("ldaps://dc1.example.org", false));
        ok(&ldap("ldap://127.0.0.1:3389", false));
    }

    #[test]
    fn ipv6_loopback_is_accepted() {
        let c = load_from(
            &Overrides::default(),
            &env(&[("HAVEN_LISTEN", "[::1]:8081")]),
        )
        .unwrap();
        assert!(c.listen.ip().is_loopback());
    }
}
