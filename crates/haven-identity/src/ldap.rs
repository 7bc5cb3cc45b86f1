//! Authentication against the hospital's directory (LDAP or Active Directory).
//!
//! Haven does not copy the directory's passwords: it asks the directory. [`LdapDirectory`]
//! owns that conversation and nothing else (no accounts, no sessions, no HTTP):
//!
//! 1. connect (LDAPS, or StartTLS on `ldap://`; plain LDAP only when explicitly allowed,
//!    because a simple bind carries the password as it was typed);
//! 2. bind as the service account (or stay anonymous) and search the user under `user_base`
//!    with `user_filter`, the username inserted with RFC 4515 escaping so that `*` or `)(` in
//!    a username cannot widen the filter. Exactly one entry must match;
//! 3. refuse the account if it matches `disabled_filter`;
//! 4. bind as the user's DN with the password, on a *new* connection, so the service
//!    connection never changes identity. An empty password is refused before anything goes on
//!    the wire: RFC 4513 section 5.1.2 makes a simple bind with a DN and no password an
//!    "unauthenticated bind", which many servers answer with success;
//! 5. read the groups (a search under `group_base`, and the `memberOf` attribute that Active
//!    Directory and OpenLDAP's memberof overlay keep on the user entry) and map them to Haven
//!    roles through `role_map`.
//!
//! Every network step is bounded by `timeout_secs`; a directory that cannot be reached, whose
//! certificate does not verify, or that does not answer in time is [`LdapError::Unavailable`],
//! never a wrong password, so the caller can tell "try again later" from "denied".
//!
//! Known limit: an unknown username is answered after one search while a known one costs a
//! second bind, so response times can reveal which usernames exist. Rate limiting of login
//! attempts (in the HTTP layer) is what bounds that.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use haven_domain::Role;
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, LdapResult, Scope, SearchEntry, SearchOptions};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::Deserialize;

/// LDAP result codes (RFC 4511 appendix A) that change what Haven answers.
mod rc {
    pub const SUCCESS: u32 = 0;
    pub const SIZE_LIMIT_EXCEEDED: u32 = 4;
    pub const CONFIDENTIALITY_REQUIRED: u32 = 13;
    pub const NO_SUCH_OBJECT: u32 = 32;
    pub const INVALID_CREDENTIALS: u32 = 49;
}

/// Longest username sent to the directory; longer ones cannot be real and are refused unsent.
const MAX_USERNAME_BYTES: usize = 256;

/// `identity.ldap`: how Haven reaches the hospital's directory.
///
/// Defaults: `starttls = false`, `ca_file` none (the platform's CA store), anonymous search
/// (no `bind_dn`), `user_filter = "(&(objectClass=inetOrgPerson)(uid={username}))"`,
/// `group_base = ""` (no group search: `memberOf` only),
/// `group_filter = "(&(objectClass=groupOfNames)(member={dn}))"`, `group_name_attribute = "cn"`,
/// no `disabled_filter`, empty `role_map`, `timeout_secs = 5`, `require_tls = true`.
/// `url` and `user_base` have no default.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdapConfig {
    /// `ldaps://host[:port]` (TLS from the first byte, port 636 by default) or `ldap://host[:port]`
    /// (port 389; with `starttls` the connection is upgraded before anything else is sent).
    pub url: String,
    /// Upgrade an `ldap://` connection with the StartTLS operation (RFC 4511 section 4.14).
    #[serde(default)]
    pub starttls: bool,
    /// PEM file of the CA certificate(s) that signed the directory's certificate. Without it,
    /// the platform's CA store is used (which rarely holds a hospital's internal CA).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// DN of the service account that searches users and groups, e.g.
    /// `cn=haven,ou=services,dc=hospital,dc=example` (AD also takes `haven@hospital.example`).
    /// Without it, searches are anonymous.
    #[serde(default)]
    pub bind_dn: Option<String>,
    /// The service account's password. Secret: never shown by `Debug` nor logged.
    #[serde(default)]
    pub bind_password: Option<String>,
    /// Where users are searched (whole subtree), e.g. `ou=people,dc=hospital,dc=example`.
    pub user_base: String,
    /// Filter that finds one user; `{username}` is replaced by the typed username, escaped
    /// (RFC 4515). For Active Directory: `(&(objectClass=user)(sAMAccountName={username}))`.
    /// A literal brace is written `\7b` / `\7d`.
    #[serde(default = "default_user_filter")]
    pub user_filter: String,
    /// Where groups are searched (whole subtree). Empty: no group search, groups come from the
    /// user's `memberOf` only. When set, `memberOf` values outside it are ignored, so a group
    /// of the same name created elsewhere in the directory grants nothing.
    #[serde(default)]
    pub group_base: String,
    /// Filter that finds the user's groups; `{dn}` is the user's DN and `{username}` the typed
    /// username, both escaped. For `posixGroup`: `(&(objectClass=posixGroup)(memberUid={username}))`;
    /// for AD with nested groups: `(&(objectClass=group)(member:1.2.840.113556.1.4.1941:={dn}))`.
    #[serde(default = "default_group_filter")]
    pub group_filter: String,
    /// Attribute holding a group's name in the group search (the name `role_map` is keyed by).
    /// A `memberOf` value is named by the value of its first RDN (`CN=Nurses,OU=...` → `Nurses`).
    #[serde(default = "default_group_name_attribute")]
    pub group_name_attribute: String,
    /// Filter that, when the user's entry matches it, means the account is disabled. Active
    /// Directory: `(userAccountControl:1.2.840.113556.1.4.803:=2)` (the ACCOUNTDISABLE bit);
    /// OpenLDAP with ppolicy: `(pwdAccountLockedTime=*)`. Checked before the password, so a
    /// disabled account is reported as such rather than as a wrong password.
    #[serde(default)]
    pub disabled_filter: Option<String>,
    /// Directory group name → Haven roles (`admin`, `clinician`, `nurse`, `registrar`,
    /// `patient`, `auditor`). Group names match case-insensitively, as LDAP compares `cn`.
    /// Groups not listed grant nothing.
    #[serde(default)]
    pub role_map: BTreeMap<String, Vec<String>>,
    /// Bound on each network step (connect with TLS, bind, search), in seconds (1 to 300).
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Refuse `ldap://` without `starttls`. Only a directory reached over a network that
    /// nobody else can read may turn this off: every login sends a password.
    #[serde(default = "default_true")]
    pub require_tls: bool,
}

fn default_user_filter() -> String {
    "(&(objectClass=inetOrgPerson)(uid={username}))".to_owned()
}
fn default_group_filter() -> String {
    "(&(objectClass=groupOfNames)(member={dn}))".to_owned()
}
fn default_group_name_attribute() -> String {
    "cn".to_owned()
}
fn default_timeout_secs() -> u64 {
    5
}
fn default_true() -> bool {
    true
}

impl LdapConfig {
    /// A configuration with every default, for `url` and `user_base`.
    #[must_use]
    pub fn new(url: impl Into<String>, user_base: impl Into<String>) -> Self {
        LdapConfig {
            url: url.into(),
            starttls: false,
            ca_file: None,
            bind_dn: None,
            bind_password: None,
            user_base: user_base.into(),
            user_filter: default_user_filter(),
            group_base: String::new(),
            group_filter: default_group_filter(),
            group_name_attribute: default_group_name_attribute(),
            disabled_filter: None,
            role_map: BTreeMap::new(),
            timeout_secs: default_timeout_secs(),
            require_tls: true,
        }
    }
}

impl fmt::Debug for LdapConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LdapConfig")
            .field("url", &self.url)
            .field("starttls", &self.starttls)
            .field("ca_file", &self.ca_file)
            .field("bind_dn", &self.bind_dn)
            .field(
                "bind_password",
                &self.bind_password.as_ref().map(|_| "<redacted>"),
            )
            .field("user_base", &self.user_base)
            .field("user_filter", &self.user_filter)
            .field("group_base", &self.group_base)
            .field("group_filter", &self.group_filter)
            .field("group_name_attribute", &self.group_name_attribute)
            .field("disabled_filter", &self.disabled_filter)
            .field("role_map", &self.role_map)
            .field("timeout_secs", &self.timeout_secs)
            .field("require_tls", &self.require_tls)
            .finish()
    }
}

/// Why the directory did not authenticate someone. No message carries a password.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LdapError {
    /// Unknown user, wrong or empty password: deliberately one answer.
    #[error("the username or password is not correct")]
    InvalidCredentials,
    /// The account exists but the directory marks it disabled (`identity.ldap.disabled_filter`).
    #[error("the directory account is disabled: the directory's administrators can re-enable it")]
    Disabled,
    /// Several directory entries match the username: a configuration problem.
    #[error(
        "several directory entries match this username: make `identity.ldap.user_filter` \
         (under `identity.ldap.user_base`) match exactly one entry per user"
    )]
    Ambiguous,
    /// The directory could not be reached, its TLS certificate was not trusted, or it did not
    /// answer in time. Worth retrying later.
    #[error(
        "the directory is unavailable ({0}): check `identity.ldap.url`, `identity.ldap.ca_file`, \
         the network and the directory server"
    )]
    Unavailable(String),
    /// `identity.ldap` is wrong, found at start-up or on the directory's answer.
    #[error("identity.ldap configuration: {0}")]
    Config(String),
}

/// A person the directory vouched for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectoryUser {
    /// The entry's DN, as the directory spells it.
    pub dn: String,
    /// The username as typed (the directory matched it, usually ignoring case).
    pub username: String,
    /// `displayName`, else `cn`.
    pub display_name: Option<String>,
    /// `mail`.
    pub email: Option<String>,
    /// The user's group names, deduplicated ignoring case, sorted.
    pub groups: Vec<String>,
    /// Haven role names from `role_map`, deduplicated, sorted.
    pub roles: Vec<String>,
}

/// A checked [`LdapConfig`], ready to authenticate. Cheap to share (`Arc` it): every call opens
/// its own connections.
pub struct LdapDirectory {
    config: LdapConfig,
    /// Set when the connection uses TLS (LDAPS or StartTLS).
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
    /// `role_map` keyed by lowercased group name.
    roles_by_group: BTreeMap<String, BTreeSet<String>>,
    /// `group_base` parsed, to keep `memberOf` values inside it.
    group_base_dn: Option<Dn>,
}

impl fmt::Debug for LdapDirectory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LdapDirectory")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn config_error(msg: impl Into<String>) -> LdapError {
    LdapError::Config(msg.into())
}

impl LdapDirectory {
    /// Checks `config` and loads the CA file. Nothing is sent to the directory yet.
    ///
    /// # Errors
    /// [`LdapError::Config`] naming the setting to fix.
    pub fn new(config: LdapConfig) -> Result<Self, LdapError> {
        let tls_scheme = check_url(&config.url)?;
        if tls_scheme && config.starttls {
            return Err(config_error(
                "`identity.ldap.starttls` is for `ldap://` URLs; an `ldaps://` connection is already TLS",
            ));
        }
        let uses_tls = tls_scheme || config.starttls;
        if !uses_tls && config.require_tls {
            return Err(config_error(format!(
                "`identity.ldap.url` ({}) is plain LDAP and every login would send a password \
                 readable on the network: use `ldaps://`, or set `identity.ldap.starttls = true`, \
                 or (only on a network nobody else can read) `identity.ldap.require_tls = false`",
                config.url
            )));
        }
        match (&config.bind_dn, &config.bind_password) {
            (Some(dn), Some(pw)) if !dn.trim().is_empty() && !pw.is_empty() => {}
            (None, None) => {}
            (Some(_), Some(pw)) if pw.is_empty() => {
                // An empty password would make the service bind unauthenticated (see module docs).
                return Err(config_error("`identity.ldap.bind_password` is empty"));
            }
            _ => {
                return Err(config_error(
                    "`identity.ldap.bind_dn` and `identity.ldap.bind_password` go together: set both \
                     (non-empty) for a service account, or neither for anonymous search",
                ));
            }
        }
        if config.user_base.trim().is_empty() {
            return Err(config_error(
                "`identity.ldap.user_base` is empty: name the subtree holding the users, e.g. \
                 `ou=people,dc=hospital,dc=example`",
            ));
        }
        check_filter("user_filter", &config.user_filter, &["username"], true)?;
        let group_base_dn = if config.group_base.trim().is_empty() {
            None
        } else {
            check_filter(
                "group_filter",
                &config.group_filter,
                &["dn", "username"],
                true,
            )?;
            Some(Dn::parse(&config.group_base).ok_or_else(|| {
                config_error(format!(
                    "`identity.ldap.group_base` ({}) is not a DN",
                    config.group_base
                ))
            })?)
        };
        if !is_attribute_name(&config.group_name_attribute) {
            return Err(config_error(format!(
                "`identity.ldap.group_name_attribute` ({:?}) is not an attribute name",
                config.group_name_attribute
            )));
        }
        if let Some(filter) = &config.disabled_filter {
            check_filter("disabled_filter", filter, &[], false)?;
        }
        if !(1..=300).contains(&config.timeout_secs) {
            return Err(config_error(
                "`identity.ldap.timeout_secs` must be between 1 and 300",
            ));
        }
        let mut roles_by_group: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (group, roles) in &config.role_map {
            if group.trim().is_empty() {
                return Err(config_error(
                    "`identity.ldap.role_map` has an empty group name",
                ));
            }
            let entry = roles_by_group.entry(group.to_lowercase()).or_default();
            for role in roles {
                match Role::parse(role) {
                    Some(Role::Service) => {
                        return Err(config_error(format!(
                            "`identity.ldap.role_map.{group}`: `service` is for backend systems \
                             with their own key, not for people from the directory"
                        )));
                    }
                    Some(role) => {
                        entry.insert(role.as_str().to_owned());
                    }
                    None => {
                        let known: Vec<&str> = Role::ALL
                            .iter()
                            .filter(|r| r.is_human())
                            .map(|r| r.as_str())
                            .collect();
                        return Err(config_error(format!(
                            "`identity.ldap.role_map.{group}`: unknown role `{role}` (known: {})",
                            known.join(", ")
                        )));
                    }
                }
            }
        }
        let tls = if uses_tls {
            Some(tls_config(config.ca_file.as_ref())?)
        } else {
            if config.ca_file.is_some() {
                tracing::warn!(
                    url = %config.url,
                    "identity.ldap.ca_file is set but the directory connection does not use TLS"
                );
            }
            None
        };
        Ok(LdapDirectory {
            timeout: Duration::from_secs(config.timeout_secs),
            config,
            tls,
            roles_by_group,
            group_base_dn,
        })
    }

    /// The configuration this directory was built from.
    #[must_use]
    pub fn config(&self) -> &LdapConfig {
        &self.config
    }

    /// Checks `username` and `password` with the directory and returns who that is, with the
    /// roles their groups grant.
    ///
    /// # Errors
    /// [`LdapError::InvalidCredentials`] for an unknown user, a wrong or empty password;
    /// [`LdapError::Disabled`]; [`LdapError::Ambiguous`]; [`LdapError::Unavailable`] when the
    /// directory cannot answer; [`LdapError::Config`] when it refuses the service account or
    /// the configured bases do not exist.
    pub async fn authenticate(
        &self,
        username: &str,
        password: &str,
    ) -> Result<DirectoryUser, LdapError> {
        if password.is_empty() || !plausible_username(username) {
            return Err(LdapError::InvalidCredentials);
        }
        let mut service = self.service_connection().await?;
        let result = async {
            let entry = self
                .find_user(&mut service, username)
                .await?
                .ok_or(LdapError::InvalidCredentials)?;
            self.check_enabled(&mut service, &entry.dn).await?;
            self.bind_as_user(&entry.dn, password).await?;
            self.directory_user(&mut service, entry, username).await
        }
        .await;
        self.close(service).await;
        if let Err(error) = &result {
            tracing::debug!(username, %error, "directory authentication refused");
        }
        result
    }

    /// Finds `username` with the service account only (no password): to notice that a directory
    /// account was removed or disabled since it last logged in.
    ///
    /// # Errors
    /// [`LdapError::Disabled`] when the entry matches `disabled_filter`; otherwise as
    /// [`authenticate`](Self::authenticate) (never `InvalidCredentials`).
    pub async fn lookup(&self, username: &str) -> Result<Option<DirectoryUser>, LdapError> {
        if !plausible_username(username) {
            return Ok(None);
        }
        let mut service = self.service_connection().await?;
        let result = async {
            let Some(entry) = self.find_user(&mut service, username).await? else {
                return Ok(None);
            };
            match self.check_enabled(&mut service, &entry.dn).await {
                // Removed between the two searches: gone.
                Err(LdapError::InvalidCredentials) => return Ok(None),
                other => other?,
            }
            self.directory_user(&mut service, entry, username)
                .await
                .map(Some)
        }
        .await;
        self.close(service).await;
        result
    }

    /// Runs one network step under the configured timeout.
    async fn timed<T>(
        &self,
        step: &str,
        fut: impl Future<Output = ldap3::result::Result<T>>,
    ) -> Result<T, LdapError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(LdapError::Unavailable(format!("{step}: {error}"))),
            Err(_) => Err(LdapError::Unavailable(format!(
                "{step}: no answer within {} s (identity.ldap.timeout_secs)",
                self.config.timeout_secs
            ))),
        }
    }

    async fn connect(&self) -> Result<Ldap, LdapError> {
        // No ldap3 connection timeout: `timed` bounds connect, StartTLS and the handshake.
        let mut settings = LdapConnSettings::new().set_starttls(self.config.starttls);
        if let Some(tls) = &self.tls {
            // Always our own rustls configuration: ldap3's default would pick the process-wide
            // crypto provider, which is ambiguous when several are compiled in.
            settings = settings.set_config(Arc::clone(tls));
        }
        let (conn, ldap) = self
            .timed(
                "connecting",
                LdapConnAsync::with_settings(settings, &self.config.url),
            )
            .await?;
        tokio::spawn(async move {
            if let Err(error) = conn.drive().await {
                tracing::debug!(%error, "directory connection closed with an error");
            }
        });
        Ok(ldap)
    }

    /// A connection bound as the service account, or anonymous when none is configured.
    async fn service_connection(&self) -> Result<Ldap, LdapError> {
        let mut ldap = self.connect().await?;
        if let (Some(dn), Some(password)) = (&self.config.bind_dn, &self.config.bind_password) {
            let result = self
                .timed("service account bind", ldap.simple_bind(dn, password))
                .await?;
            match result.rc {
                rc::SUCCESS => {}
                rc::INVALID_CREDENTIALS => {
                    tracing::error!(bind_dn = %dn, "the directory refused Haven's service account");
                    self.close(ldap).await;
                    return Err(config_error(
                        "the directory refused the service account: check `identity.ldap.bind_dn` \
                         and `identity.ldap.bind_password`",
                    ));
                }
                _ => {
                    self.close(ldap).await;
                    return Err(answer_error("service account bind", &result));
                }
            }
        }
        Ok(ldap)
    }

    /// Best effort: tell the server we are done. Dropping the handle would close it too.
    async fn close(&self, mut ldap: Ldap) {
        let _ = tokio::time::timeout(Duration::from_secs(1), ldap.unbind()).await;
    }

    /// The entry `user_filter` finds for `username`; `None` if there is none.
    async fn find_user(
        &self,
        ldap: &mut Ldap,
        username: &str,
    ) -> Result<Option<SearchEntry>, LdapError> {
        let filter =
            fill(&self.config.user_filter, &[("username", username)]).map_err(config_error)?;
        let attrs = ["cn", "displayName", "mail", "memberOf"];
        // Two are enough to know the filter is ambiguous; no need to read the whole directory.
        ldap.with_search_options(SearchOptions::new().sizelimit(2));
        let search = ldap.search(&self.config.user_base, Scope::Subtree, &filter, attrs);
        let ldap3::SearchResult(items, result) = self.timed("searching the user", search).await?;
        // Search result references (AD's referrals to other partitions) are not entries.
        let mut entries: Vec<SearchEntry> = items
            .into_iter()
            .filter(|i| !i.is_ref() && !i.is_intermediate())
            .map(SearchEntry::construct)
            .collect();
        match result.rc {
            rc::SUCCESS if entries.len() <= 1 => Ok(entries.pop()),
            rc::SUCCESS | rc::SIZE_LIMIT_EXCEEDED => {
                tracing::error!(
                    username,
                    user_filter = %self.config.user_filter,
                    user_base = %self.config.user_base,
                    "several directory entries match one username: identity.ldap.user_filter must \
                     match exactly one entry per user"
                );
                Err(LdapError::Ambiguous)
            }
            rc::NO_SUCH_OBJECT => Err(config_error(format!(
                "`identity.ldap.user_base` ({}) does not exist in the directory",
                self.config.user_base
            ))),
            _ => Err(answer_error("searching the user", &result)),
        }
    }

    /// `Err(Disabled)` when the entry at `dn` matches `disabled_filter`.
    async fn check_enabled(&self, ldap: &mut Ldap, dn: &str) -> Result<(), LdapError> {
        let Some(filter) = &self.config.disabled_filter else {
            return Ok(());
        };
        // "1.1": no attributes, only whether the entry matches (RFC 4511 section 4.5.1.8).
        let search = ldap.search(dn, Scope::Base, filter, ["1.1"]);
        let ldap3::SearchResult(items, result) = self
            .timed("checking whether the account is disabled", search)
            .await?;
        match result.rc {
            rc::SUCCESS if items.iter().any(|i| !i.is_ref()) => Err(LdapError::Disabled),
            rc::SUCCESS => Ok(()),
            // Removed between the two searches.
            rc::NO_SUCH_OBJECT => Err(LdapError::InvalidCredentials),
            _ => Err(answer_error(
                "checking whether the account is disabled",
                &result,
            )),
        }
    }

    /// Binds as `dn` with `password` on a connection of its own, then closes it.
    async fn bind_as_user(&self, dn: &str, password: &str) -> Result<(), LdapError> {
        // Checked by the callers already; kept here because this is where it matters.
        if password.is_empty() || dn.is_empty() {
            return Err(LdapError::InvalidCredentials);
        }
        let mut ldap = self.connect().await?;
        let result = self
            .timed("user bind", ldap.simple_bind(dn, password))
            .await;
        self.close(ldap).await;
        let result = result?;
        match result.rc {
            rc::SUCCESS => Ok(()),
            rc::INVALID_CREDENTIALS => {
                // AD explains why in the text ("data 52e" wrong password, "data 775" locked...).
                tracing::debug!(dn, text = %result.text, "the directory refused the user's bind");
                Err(LdapError::InvalidCredentials)
            }
            _ => Err(answer_error("user bind", &result)),
        }
    }

    async fn directory_user(
        &self,
        ldap: &mut Ldap,
        entry: SearchEntry,
        username: &str,
    ) -> Result<DirectoryUser, LdapError> {
        let mut names = Vec::new();
        for value in attribute(&entry, "memberOf") {
            let Some(dn) = Dn::parse(value) else { continue };
            if self
                .group_base_dn
                .as_ref()
                .is_some_and(|base| !dn.is_under(base))
            {
                continue;
            }
            if let Some(name) = dn.first_value() {
                names.push(name.to_owned());
            }
        }
        if self.group_base_dn.is_some() {
            names.extend(self.search_groups(ldap, &entry.dn, username).await?);
        }
        let mut seen = BTreeSet::new();
        let mut groups: Vec<String> = names
            .into_iter()
            .filter(|n| seen.insert(n.to_lowercase()))
            .collect();
        groups.sort_by_key(|n| n.to_lowercase());
        let roles: BTreeSet<String> = groups
            .iter()
            .filter_map(|g| self.roles_by_group.get(&g.to_lowercase()))
            .flatten()
            .cloned()
            .collect();
        let first = |name: &str| attribute(&entry, name).first().map(|v| (*v).to_owned());
        Ok(DirectoryUser {
            display_name: first("displayName").or_else(|| first("cn")),
            email: first("mail"),
            dn: entry.dn.clone(),
            username: username.to_owned(),
            groups,
            roles: roles.into_iter().collect(),
        })
    }

    async fn search_groups(
        &self,
        ldap: &mut Ldap,
        dn: &str,
        username: &str,
    ) -> Result<Vec<String>, LdapError> {
        let filter = fill(
            &self.config.group_filter,
            &[("dn", dn), ("username", username)],
        )
        .map_err(config_error)?;
        let attr = self.config.group_name_attribute.as_str();
        let search = ldap.search(&self.config.group_base, Scope::Subtree, &filter, [attr]);
        let ldap3::SearchResult(items, result) =
            self.timed("searching the user's groups", search).await?;
        match result.rc {
            rc::SUCCESS => {}
            rc::SIZE_LIMIT_EXCEEDED => tracing::warn!(
                dn,
                "the directory's size limit cut the group search short: some roles may be missing"
            ),
            rc::NO_SUCH_OBJECT => {
                return Err(config_error(format!(
                    "`identity.ldap.group_base` ({}) does not exist in the directory",
                    self.config.group_base
                )));
            }
            _ => return Err(answer_error("searching the user's groups", &result)),
        }
        Ok(items
            .into_iter()
            .filter(|i| !i.is_ref() && !i.is_intermediate())
            .map(SearchEntry::construct)
            .filter_map(|group| attribute(&group, attr).first().map(|v| (*v).to_owned()))
            .collect())
    }
}

/// A directory answer that is neither success nor one of the cases handled where it arrives.
fn answer_error(step: &str, result: &LdapResult) -> LdapError {
    if result.rc == rc::CONFIDENTIALITY_REQUIRED {
        return config_error(
            "the directory requires TLS: use an `ldaps://` URL or `identity.ldap.starttls = true`",
        );
    }
    LdapError::Unavailable(format!(
        "{step}: the directory answered {} {}",
        result.rc, result.text
    ))
}

/// Values of an attribute, matching its name ignoring case (servers echo their own spelling).
fn attribute<'e>(entry: &'e SearchEntry, name: &str) -> Vec<&'e str> {
    entry
        .attrs
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .flat_map(|(_, values)| values.iter().map(String::as_str))
        .collect()
}

fn plausible_username(username: &str) -> bool {
    !username.trim().is_empty() && username.len() <= MAX_USERNAME_BYTES
}

/// Checks the URL's shape; returns whether its scheme is `ldaps`.
fn check_url(url: &str) -> Result<bool, LdapError> {
    let bad = |why: &str| {
        config_error(format!(
            "`identity.ldap.url` ({url}) {why}: write `ldaps://host[:port]` or `ldap://host[:port]`"
        ))
    };
    let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("is not a URL"))?;
    let tls = match scheme.to_ascii_lowercase().as_str() {
        "ldaps" => true,
        "ldap" => false,
        _ => return Err(bad("has a scheme other than ldap or ldaps")),
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if authority.is_empty() {
        return Err(bad("names no host"));
    }
    if authority.contains('@') || authority.chars().any(char::is_whitespace) {
        return Err(bad("has a malformed host"));
    }
    if !path.is_empty() {
        return Err(bad(
            "has a path or query (base DN, attributes, filter belong in their own settings)",
        ));
    }
    Ok(tls)
}

/// Checks that `filter`, with its placeholders filled, parses as an LDAP filter; `required`
/// asks for at least one of `allowed` placeholders.
fn check_filter(
    setting: &str,
    filter: &str,
    allowed: &[&str],
    required: bool,
) -> Result<(), LdapError> {
    let sample: Vec<(&str, &str)> = allowed.iter().map(|name| (*name, "sample")).collect();
    let filled = fill(filter, &sample)
        .map_err(|e| config_error(format!("`identity.ldap.{setting}`: {e}")))?;
    if required && filled == filter {
        let names: Vec<String> = allowed.iter().map(|n| format!("{{{n}}}")).collect();
        return Err(config_error(format!(
            "`identity.ldap.{setting}` ({filter}) must contain {}",
            names.join(" or ")
        )));
    }
    if ldap3::parse_filter(&filled).is_err() {
        return Err(config_error(format!(
            "`identity.ldap.{setting}` ({filter}) is not a valid LDAP filter"
        )));
    }
    Ok(())
}

/// Replaces each `{name}` in `template` with its value escaped for a filter (RFC 4515), in one
/// pass, so a value containing `{dn}` is never substituted again.
fn fill(template: &str, values: &[(&str, &str)]) -> Result<String, String> {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or("has a `{` without `}` (write a literal brace as \\7b)")?;
        let name = &after[..close];
        let (_, value) = values.iter().find(|(n, _)| *n == name).ok_or_else(|| {
            format!("unknown placeholder `{{{name}}}` (write a literal brace as \\7b)")
        })?;
        out.push_str(&ldap3::ldap_escape(*value));
        rest = &after[close + 1..];
    }
    if rest.contains('}') {
        return Err("has a `}` without `{` (write a literal brace as \\7d)".to_owned());
    }
    out.push_str(rest);
    Ok(out)
}

/// An attribute description: a name (`cn`, `displayName`, `x-foo`) or an OID (`2.5.4.3`).
fn is_attribute_name(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() => {
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        }
        Some(c) if c.is_ascii_digit() => name.chars().all(|c| c.is_ascii_digit() || c == '.'),
        _ => false,
    }
}

/// A distinguished name parsed enough to compare (RFC 4514): RDNs from the leaf up, each a set
/// of (lowercased type, value) pairs. Values keep their case for display; comparison lowercases.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Dn(Vec<Vec<(String, String)>>);

impl Dn {
    fn parse(dn: &str) -> Option<Dn> {
        let mut rdns = Vec::new();
        let mut rdn = Vec::new();
        let mut chars = dn.trim().chars().peekable();
        loop {
            let attr: String = chars.by_ref().take_while(|c| *c != '=').collect();
            let attr = attr.trim().to_ascii_lowercase();
            if attr.is_empty() {
                return None;
            }
            let mut value = Vec::<u8>::new();
            let mut end = None;
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        let next = chars.next()?;
                        if next.is_ascii_hexdigit() {
                            let low = chars.next()?;
                            let byte = u8::from_str_radix(&format!("{next}{low}"), 16).ok()?;
                            value.push(byte);
                        } else {
                            let mut buf = [0; 4];
                            value.extend_from_slice(next.encode_utf8(&mut buf).as_bytes());
                        }
                    }
                    ',' | ';' | '+' => {
                        end = Some(c);
                        break;
                    }
                    _ => {
                        let mut buf = [0; 4];
                        value.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    }
                }
            }
            let value = String::from_utf8(value).ok()?.trim().to_owned();
            rdn.push((attr, value));
            match end {
                Some('+') => continue,
                Some(_) => {
                    rdns.push(std::mem::take(&mut rdn));
                }
                None => {
                    rdns.push(rdn);
                    return Some(Dn(rdns));
                }
            }
            chars.peek()?;
        }
    }

    /// The value of the first RDN (a group's name, for `cn=Nurses,ou=groups,...`).
    fn first_value(&self) -> Option<&str> {
        self.0
            .first()
            .and_then(|rdn| rdn.first())
            .map(|(_, v)| v.as_str())
    }

    /// Whether this DN lies strictly below `base`.
    fn is_under(&self, base: &Dn) -> bool {
        let key = |rdn: &Vec<(String, String)>| {
            let mut pairs: Vec<(String, String)> = rdn
                .iter()
                .map(|(a, v)| (a.clone(), v.to_lowercase()))
                .collect();
            pairs.sort();
            pairs
        };
        self.0.len() > base.0.len()
            && self.0[self.0.len() - base.0.len()..]
                .iter()
                .map(key)
                .eq(base.0.iter().map(key))
    }
}

/// The rustls client configuration: the CA file's certificates, or the platform's.
fn tls_config(ca_file: Option<&PathBuf>) -> Result<Arc<rustls::ClientConfig>, LdapError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let shown = path.display();
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .map_err(|e| {
                    config_error(format!(
                        "`identity.ldap.ca_file` ({shown}) cannot be read: {e}"
                    ))
                })?;
            if certs.is_empty() {
                return Err(config_error(format!(
                    "`identity.ldap.ca_file` ({shown}) holds no PEM certificate"
                )));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| {
                    config_error(format!(
                        "`identity.ldap.ca_file` ({shown}) has an unusable certificate: {e}"
                    ))
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for error in &found.errors {
                tracing::warn!(%error, "could not read part of the platform's CA certificates");
            }
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(config_error(
                    "no platform CA certificates were found: set `identity.ldap.ca_file` to the \
                     directory's CA certificate (PEM)",
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| config_error(format!("TLS set-up failed: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    //! The private helpers. The public behaviour (configuration checks, the directory itself)
    //! is tested in `tests/ldap.rs` against a real slapd.
    use super::*;

    #[test]
    fn fill_escapes_values_and_substitutes_once() {
        let values = [("username", "a*)(uid=*"), ("dn", "{username}")];
        let filled = fill("(&(uid={username})(member={dn}))", &values).unwrap();
        assert_eq!(filled, r"(&(uid=a\2a\29\28uid=\2a)(member={username}))");
        assert!(
            fill("(uid={user})", &[("username", "x")])
                .unwrap_err()
                .contains("{user}")
        );
        assert!(fill("(uid={username)", &[("username", "x")]).is_err());
        assert!(fill("(uid=x})", &[]).is_err());
    }

    #[test]
    fn dn_parsing_handles_escapes_and_bases() {
        let dn =
            Dn::parse(r"CN=O'Brien\, Dana \28Locum\29,OU=Groups, DC=hospital,DC=example").unwrap();
        assert_eq!(dn.first_value(), Some("O'Brien, Dana (Locum)"));
        let base = Dn::parse("ou=groups,dc=Hospital,dc=example").unwrap();
        assert!(dn.is_under(&base));
        assert!(!base.is_under(&base));
        assert!(!dn.is_under(&Dn::parse("ou=other,dc=hospital,dc=example").unwrap()));
        assert_eq!(Dn::parse("cn=a+uid=b,dc=x").unwrap().0[0].len(), 2);
        assert!(Dn::parse("").is_none());
        assert!(Dn::parse("cn=a,").is_none());
        assert!(Dn::parse(r"cn=a\").is_none());
    }

    #[test]
    fn attribute_names() {
        for good in ["cn", "displayName", "x-haven-group", "2.5.4.3"] {
            assert!(is_attribute_name(good), "{good}");
        }
        for bad in ["", "c n", "-cn", "2.5.x", "cn;binary"] {
            assert!(!is_attribute_name(bad), "{bad}");
        }
    }
}
