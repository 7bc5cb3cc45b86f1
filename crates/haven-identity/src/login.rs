//! The browser login: password, then the second factor (or its enrolment), then a session.
//!
//! A login runs in a *pending login* (its own cookie and CSRF token); only after every factor
//! passed is a session created, under a new id: a session id known before login (fixation) is
//! worth nothing. Failures are throttled per client address (in memory) and per username (in
//! the database, for names with and without an account alike, so throttling does not reveal
//! which names exist); unknown users are checked against a dummy hash so they take as long as
//! real ones, and every outcome is written to the audit trail.

use haven_audit::Actor;
use haven_crypto::{TotpSecret, constant_time_eq, recovery_code, token_digest, verify_totp};
use haven_store::{Expect, StoreError, run_write};

use crate::core::{Identity, expiry_in, new_secret, now, secs};
use crate::error::IdentityError;
use crate::events::{EventContext, security_entry, user_actor};
use crate::ldap::LdapError;
use crate::records::{
    Account, AccountSource, PendingLogin, Session, TotpEnrolment, UsernameIndex, Versioned, kind,
    tx_get, tx_put,
};
use crate::throttle::Throttle;
use crate::username::Username;

/// How many recovery codes an enrolment issues.
pub const RECOVERY_CODES: usize = 10;

/// A login form to show: set `cookie` (HttpOnly) and put `csrf` in the form.
#[derive(Debug)]
pub struct LoginStart {
    pub cookie: String,
    pub csrf: String,
}

/// A new session: set `cookie`, continue with `auth_request` (if the login served one).
#[derive(Debug)]
pub struct SessionStart {
    pub cookie: String,
    pub csrf: String,
    pub auth_request: Option<String>,
}

/// What follows a correct password.
#[derive(Debug)]
pub enum AfterPassword {
    /// Ask for the TOTP or a recovery code.
    Mfa,
    /// MFA is required but not set up: show the secret (as otpauth URI and QR code) and ask
    /// for a first code.
    Enrol {
        secret: String,
        uri: String,
        qr_svg: String,
    },
    /// No second factor needed: logged in.
    Session(SessionStart),
}

impl Identity {
    /// Starts a login (optionally serving an authorization request).
    ///
    /// # Errors
    /// Store failures.
    pub async fn begin_login(
        &self,
        auth_request: Option<String>,
    ) -> Result<LoginStart, IdentityError> {
        let (cookie, digest) = new_secret();
        let (csrf, _) = new_secret();
        let pending = PendingLogin {
            auth_request,
            csrf: csrf.clone(),
            user_id: None,
            amr: Vec::new(),
            created: now(),
            enrolling: None,
        };
        let expires = expiry_in(self.settings.login_ttl);
        run_write::<i64, StoreError, _>(self.store.as_ref(), move |tx| {
            Box::pin(async move {
                tx_put(
                    tx,
                    kind::LOGIN,
                    &digest,
                    &pending,
                    Some(expires),
                    Expect::Absent,
                )
                .await
            })
        })
        .await?;
        Ok(LoginStart { cookie, csrf })
    }

    /// The pending login behind a cookie, if it is current and `csrf` matches.
    async fn pending(
        &self,
        cookie: &str,
        csrf: &str,
    ) -> Result<(String, Versioned<PendingLogin>), IdentityError> {
        if cookie.is_empty() || cookie.len() > 128 {
            return Err(IdentityError::LoginExpired);
        }
        let digest = token_digest(cookie);
        let Some(p) = self.get::<PendingLogin>(kind::LOGIN, &digest).await? else {
            return Err(IdentityError::LoginExpired);
        };
        if now() - p.value.created > secs(self.settings.login_ttl)
            || !constant_time_eq(p.value.csrf.as_bytes(), csrf.as_bytes())
        {
            return Err(IdentityError::LoginExpired);
        }
        Ok((digest, p))
    }

    /// The authorization request a pending login serves (to show the client's name).
    ///
    /// # Errors
    /// Unknown or expired login.
    pub async fn login_auth_request(
        &self,
        cookie: &str,
        csrf: &str,
    ) -> Result<Option<String>, IdentityError> {
        Ok(self.pending(cookie, csrf).await?.1.value.auth_request)
    }

    /// Fails when the client address or the username is throttled.
    pub(crate) async fn check_throttles(
        &self,
        name: &str,
        ip: Option<&str>,
    ) -> Result<(), IdentityError> {
        let t = u64::try_from(now()).unwrap_or(0);
        if let Some(ip) = ip
            && let Err(wait) = self.ip_throttle.check(ip, t)
        {
            metrics::counter!("haven_login_throttled_total", "by" => "address").increment(1);
            return Err(IdentityError::Throttled(wait.0));
        }
        if let Some(th) = self.get::<Throttle>(kind::THROTTLE, name).await?
            && let Err(wait) = th.value.check(&self.settings.account_throttle, t)
        {
            metrics::counter!("haven_login_throttled_total", "by" => "account").increment(1);
            return Err(IdentityError::Throttled(wait.0));
        }
        Ok(())
    }

    /// Counts a failed attempt (password or second factor) and records it; a lock that
    /// starts now is recorded as its own event.
    pub(crate) async fn fail_attempt(
        &self,
        name: &str,
        action: &'static str,
        ctx: &EventContext,
    ) -> Result<(), IdentityError> {
        let t = u64::try_from(now()).unwrap_or(0);
        if let Some(ip) = ctx.source_ip.as_deref() {
            self.ip_throttle.record_failure(ip, t);
        }
        metrics::counter!("haven_login_failures_total", "step" => action).increment(1);
        let name = name.to_owned();
        let policy = self.settings.account_throttle;
        let ctx = ctx.clone();
        let keep = expiry_in(std::time::Duration::from_secs(24 * 3600));
        run_write::<(), IdentityError, _>(self.store.as_ref(), move |tx| {
            Box::pin(async move {
                let current = tx_get::<Throttle>(tx, kind::THROTTLE, &name).await?;
                let (mut th, expect) = match current {
                    Some(v) => (v.value, Expect::Version(v.version)),
                    None => (Throttle::default(), Expect::Absent),
                };
                let was_locked = th.check(&policy, t).is_err() && th.locked_until > t;
                th.record_failure(&policy, t);
                let locked = th.locked_until > t && !was_locked;
                tx_put(tx, kind::THROTTLE, &name, &th, Some(keep), expect).await?;
                let actor = Actor {
                    user: Some(name.clone()),
                    role: None,
                    client: None,
                };
                tx.audit(security_entry(&ctx, action, 401, actor.clone(), None))
                    .await?;
                if locked {
                    metrics::counter!("haven_account_lockouts_total").increment(1);
                    tx.audit(security_entry(
                        &ctx,
                        "account-locked",
                        429,
                        actor,
                        Some(format!("failures={}", th.failures)),
                    ))
                    .await?;
                }
                Ok(())
            })
        })
        .await
    }

    /// Checks username and password.
    ///
    /// # Errors
    /// [`IdentityError::InvalidCredentials`] for a wrong password and an unknown user alike;
    /// `Throttled`, `Disabled`, `LoginExpired`, `Busy`, `DirectoryUnavailable`.
    pub async fn login_password(
        &self,
        cookie: &str,
        csrf: &str,
        username: &str,
        password: &str,
        ctx: &EventContext,
    ) -> Result<AfterPassword, IdentityError> {
        let (digest, pending) = self.pending(cookie, csrf).await?;
        // A name that cannot be normalized is checked like an unknown one.
        let name = Username::parse(username).map_or_else(
            |_| format!("invalid:{}", token_digest(username)),
            |u| u.as_str().to_owned(),
        );
        self.check_throttles(&name, ctx.source_ip.as_deref())
            .await?;
        let account = match self.get::<UsernameIndex>(kind::USERNAME, &name).await? {
            Some(idx) => {
                self.get::<Account>(kind::ACCOUNT, &idx.value.user_id)
                    .await?
            }
            None => None,
        };
        let directory = self.ldap.as_ref().filter(|_| {
            account
                .as_ref()
                .is_none_or(|a| matches!(a.value.source, AccountSource::Ldap { .. }))
        });
        let account = if password.is_empty() || password.len() > 1024 {
            // Cost the same as a real check; never send an empty password to a directory.
            let _ = self.hasher.verify(password.to_owned(), None).await?;
            None
        } else if let Some(dir) = directory {
            match dir.authenticate(&name, password).await {
                Ok(user) => Some(self.sync_directory_account(account, user, ctx).await?),
                Err(LdapError::InvalidCredentials) => {
                    self.notice_directory_removal(dir, &name, account.as_ref(), ctx)
                        .await?;
                    None
                }
                // The directory reports a disabled account before checking the password
                // (Active Directory refuses its bind either way): answering "disabled" would
                // tell anyone which names are disabled, so it is a failed login like any other.
                Err(LdapError::Disabled) => {
                    if let Some(a) = &account
                        && !a.value.disabled
                    {
                        self.mark_directory_disabled(a, ctx).await?;
                    }
                    None
                }
                Err(e) => {
                    tracing::error!(error = %e, "the directory cannot authenticate");
                    let actor = haven_audit::Actor {
                        user: Some(name.clone()),
                        role: None,
                        client: None,
                    };
                    // Recorded when possible; the login is refused either way.
                    if let Err(e) = self
                        .record(security_entry(
                            ctx,
                            "login-refused",
                            503,
                            actor,
                            Some("directory-unavailable".into()),
                        ))
                        .await
                    {
                        tracing::warn!(error = %e, "cannot record a login refused for a directory outage");
                    }
                    return Err(IdentityError::DirectoryUnavailable);
                }
            }
        } else {
            let hash = account.as_ref().and_then(|a| a.value.password_hash.clone());
            if self.hasher.verify(password.to_owned(), hash).await? {
                account
            } else {
                None
            }
        };
        let Some(mut account) = account else {
            self.fail_attempt(&name, "login-failed", ctx).await?;
            return Err(IdentityError::InvalidCredentials);
        };
        let actor = user_actor(&account.value.username, &account.value.roles, None);
        if account.value.disabled {
            self.record(security_entry(
                ctx,
                "login-refused",
                403,
                actor,
                Some("disabled".into()),
            ))
            .await?;
            return Err(IdentityError::Disabled);
        }
        // A directory user in no mapped group has no role: nothing to sign in for (and no
        // role that would require a second factor).
        if account.value.roles.is_empty() {
            self.record(security_entry(
                ctx,
                "login-refused",
                403,
                actor,
                Some("no-role".into()),
            ))
            .await?;
            return Err(IdentityError::NoRole);
        }
        // The throttles are reset only when every factor has passed (`start_session`): a right
        // password must not buy fresh attempts at the second factor.
        // Parameters rose since this hash was made: store a stronger one now that we know
        // the password.
        let rehash = match &account.value.password_hash {
            Some(h) if self.hasher.needs_rehash(h) => {
                Some(self.hasher.hash(password.to_owned()).await?)
            }
            _ => None,
        };
        let mut amr = vec![if directory.is_some() { "ldap" } else { "pwd" }.to_owned()];
        let mfa_needed =
            account.value.has_mfa() || self.settings.mfa_required(&account.value.roles);
        let mut pending = pending;
        let next = if !mfa_needed {
            None
        } else if account.value.has_mfa() {
            Some(AfterPassword::Mfa)
        } else {
            let secret = TotpSecret::generate();
            let b32 = secret.to_base32().to_string();
            let uri =
                haven_crypto::otpauth_uri(&secret, "Haven", &account.value.username).to_string();
            let qr_svg = crate::qr::svg(&uri)?;
            pending.value.enrolling = Some(b32.clone());
            Some(AfterPassword::Enrol {
                secret: b32,
                uri,
                qr_svg,
            })
        };
        if next.is_none() {
            amr.dedup();
        }
        pending.value.user_id = Some(account.value.id.clone());
        pending.value.amr = amr.clone();
        let ctx2 = ctx.clone();
        let pend = pending.value.clone();
        let pv = pending.version;
        let pexp = pending.expires;
        let dg = digest.clone();
        if let Some(h) = rehash {
            account.value.password_hash = Some(h);
        }
        let acc = account.clone();
        run_write::<(), IdentityError, _>(self.store.as_ref(), move |tx| {
            Box::pin(async move {
                tx_put(tx, kind::LOGIN, &dg, &pend, pexp, Expect::Version(pv)).await?;
                tx_put(
                    tx,
                    kind::ACCOUNT,
                    &acc.value.id.clone(),
                    &acc.value,
                    None,
                    Expect::Version(acc.version),
                )
                .await?;
                tx.audit(security_entry(&ctx2, "login-password", 200, actor, None))
                    .await?;
                Ok(())
            })
        })
        .await?;
        match next {
            Some(n) => Ok(n),
            None => Ok(AfterPassword::Session(
                self.start_session(&digest, &pending.value, &account.value, amr, ctx)
                    .await?,
            )),
        }
    }

    /// Creates or refreshes the local account of a directory user (roles follow the
    /// directory's groups at every login).
    async fn sync_directory_account(
        &self,
        existing: Option<Versioned<Account>>,
        user: crate::ldap::DirectoryUser,
        ctx: &EventContext,
    ) -> Result<Versioned<Account>, IdentityError> {
        let roles: Vec<haven_domain::Role> = user
            .roles
            .iter()
            .filter_map(|r| haven_domain::Role::parse(r))
            .filter(|r| r.is_human())
            .collect();
        let name = Username::parse(&user.username)
            .map_err(|e| IdentityError::Invalid(format!("directory username: {e}")))?;
        let t = now();
        // One directory person is one Haven account: a second spelling of the name (a mail
        // address, a case-folded variant the directory matches) finds the account by its DN,
        // with its second factor, instead of creating a fresh one without.
        let dn_key = haven_crypto::token_digest(&user.dn.to_lowercase());
        let existing = match existing {
            Some(a) => {
                if let AccountSource::Ldap { dn } = &a.value.source
                    && !dn.is_empty()
                    && !dn.eq_ignore_ascii_case(&user.dn)
                {
                    tracing::warn!(
                        user = %a.value.username,
                        "a directory login matched another directory entry than this account's; refused"
                    );
                    return Err(IdentityError::InvalidCredentials);
                }
                Some(a)
            }
            None => match self
                .get::<UsernameIndex>(kind::DIRECTORY_DN, &dn_key)
                .await?
            {
                Some(idx) => {
                    self.get::<Account>(kind::ACCOUNT, &idx.value.user_id)
                        .await?
                }
                None => None,
            },
        };
        let (account, expect, created) = match existing {
            Some(mut a) => {
                a.value.roles = roles;
                a.value.source = AccountSource::Ldap {
                    dn: user.dn.clone(),
                };
                a.value.display_name = user.display_name.clone().or(a.value.display_name);
                a.value.email = user.email.clone().or(a.value.email);
                a.value.updated = t;
                (a.value, Expect::Version(a.version), false)
            }
            None => (
                Account {
                    id: uuid::Uuid::new_v4().to_string(),
                    username: name.as_str().to_owned(),
                    display_name: user.display_name.clone(),
                    email: user.email.clone(),
                    roles,
                    source: AccountSource::Ldap {
                        dn: user.dn.clone(),
                    },
                    password_hash: None,
                    disabled: false,
                    totp: None,
                    recovery_codes: Vec::new(),
                    fhir_user: None,
                    created: t,
                    updated: t,
                },
                Expect::Absent,
                true,
            ),
        };
        let a = account.clone();
        let ctx = ctx.clone();
        let version = run_write::<i64, IdentityError, _>(self.store.as_ref(), move |tx| {
            Box::pin(async move {
                let idx = UsernameIndex {
                    user_id: a.id.clone(),
                };
                // Link the DN to this account (once; a second account for it is refused).
                match tx_get::<UsernameIndex>(tx, kind::DIRECTORY_DN, &dn_key).await? {
                    Some(linked) if linked.value.user_id != a.id => {
                        return Err(IdentityError::InvalidCredentials);
                    }
                    Some(_) => {}
                    None => {
                        tx_put(tx, kind::DIRECTORY_DN, &dn_key, &idx, None, Expect::Absent).await?;
                    }
                }
                if created {
                    tx_put(tx, kind::USERNAME, &a.username, &idx, None, Expect::Absent).await?;
                    tx.audit(security_entry(
                        &ctx,
                        "user-create",
                        201,
                        Actor {
                            user: Some("directory".into()),
                            role: None,
                            client: None,
                        },
                        Some(format!("user={} source=ldap", a.username)),
                    ))
                    .await?;
                }
                Ok(tx_put(tx, kind::ACCOUNT, &a.id.clone(), &a, None, expect).await?)
            })
        })
        .await?;
        self.caches.forget_user(&account.id);
        Ok(Versioned {
            version,
            value: account,
            expires: None,
        })
    }

    /// After the directory refused a password: disables Haven's copy of an account whose entry
    /// is gone (or was disabled meanwhile), so that its sessions end with it.
    ///
    /// The directory answers a wrong password and a missing entry alike, so it is asked again
    /// with the service account only ([`crate::ldap::LdapDirectory::lookup`]). It is asked
    /// whether or not the name has a local account, so the time a refusal takes does not tell
    /// which directory users have logged in to Haven. An error here leaves the account as it
    /// is: the login already failed, and an outage is not a removal.
    async fn notice_directory_removal(
        &self,
        dir: &crate::ldap::LdapDirectory,
        name: &str,
        account: Option<&Versioned<Account>>,
        ctx: &EventContext,
    ) -> Result<(), IdentityError> {
        let gone = match dir.lookup(name).await {
            Ok(None) | Err(LdapError::Disabled) => true,
            Ok(Some(_)) => false,
            Err(e) => {
                tracing::warn!(error = %e, "the directory cannot say whether an account still exists");
                false
            }
        };
        if gone
            && let Some(a) = account
            && !a.value.disabled
        {
            self.mark_directory_disabled(a, ctx).await?;
        }
        Ok(())
    }

    /// The directory says this account is disabled: so is Haven's copy, at once.
    async fn mark_directory_disabled(
        &self,
        account: &Versioned<Account>,
        ctx: &EventContext,
    ) -> Result<(), IdentityError> {
        let mut a = account.value.clone();
        a.disabled = true;
        a.updated = now();
        let v = account.version;
        let ctx = ctx.clone();
        let id = a.id.clone();
        run_write::<(), IdentityError, _>(self.store.as_ref(), move |tx| {
            Box::pin(async move {
                tx_put(
                    tx,
                    kind::ACCOUNT,
                    &a.id.clone(),
                    &a,
                    None,
                    Expect::Version(v),
                )
                .await?;
                tx.audit(security_entry(
                    &ctx,
                    "user-disable",
                    200,
                    Actor {
                        user: Some("directory".into()),
                        role: None,
                        client: None,
                    },
                    Some(format!("user={} source=ldap", a.username)),
                ))
                .await?;
                Ok(())
            })
        })
        .await?;
        self.caches.forget_user(&id);
        Ok(())
    }

    /// Checks a TOTP code or a recovery code for a login whose password was right.
    ///
    /// # Errors
    /// `InvalidMfaCode` (counted like a wrong password), `Throttled`, `LoginExpired`.
    pub async fn login_mfa(
        &self,
        cookie: &str,
        csrf: &str,
        code: &str,
        ctx: &EventContext,
    ) -> Result<SessionStart, IdentityError> {
        let (digest, pending) = self.pending(cookie, csrf).await?;
        let Some(user_id) = pending.value.user_id.clone() else {
            return Err(IdentityError::LoginExpired);
        };
        let Some(account) = self.get::<Account>(kind::ACCOUNT, &user_id).await? else {
            return Err(IdentityError::LoginExpired);
        };
        let name = account.value.username.clone();
        self.check_throttles(&name, ctx.source_ip.as_deref())
            .await?;
        let code = code.trim().replace(' ', "");
        let t = u64::try_from(now()).unwrap_or(0);
        let mut updated = account.value.clone();
        let mut method = "otp";
        let ok = match &account.value.totp {
            Some(totp) if totp.confirmed && code.len() == 6 => {
                let secret = TotpSecret::from_base32(&totp.secret)
                    .map_err(|e| IdentityError::Internal(e.to_string()))?;
                match verify_totp(&secret, &code, t, totp.last_step) {
                    Some(step) => {
                        if let Some(tp) = updated.totp.as_mut() {
                            tp.last_step = Some(step);
                        }
                        true
                    }
                    None => false,
                }
            }
            _ => {
                let d = token_digest(&code.to_lowercase());
                let before = updated.recovery_codes.len();
                updated
                    .recovery_codes
                    .retain(|c| !constant_time_eq(c.as_bytes(), d.as_bytes()));
                method = "recovery";
                updated.recovery_codes.len() < before
            }
        };
        if !ok {
            self.fail_attempt(&name, "mfa-failed", ctx).await?;
            return Err(IdentityError::InvalidMfaCode);
        }
        // The account version guards single use: a second login racing with the same code
        // loses the compare-and-swap.
        let v = account.version;
        let ctx2 = ctx.clone();
        let actor = user_actor(&updated.username, &updated.roles, None);
        let u = updated.clone();
        let remaining = updated.recovery_codes.len();
        let stored = run_write::<(), IdentityError, _>(self.store.as_ref(), move |tx| {
            Box::pin(async move {
                tx_put(
                    tx,
                    kind::ACCOUNT,
                    &u.id.clone(),
                    &u,
                    None,
                    Expect::Version(v),
                )
                .await?;
                tx.audit(security_entry(
                    &ctx2,
                    "mfa-success",
                    200,
                    actor,
                    Some(if method == "recovery" {
                        format!("method=recovery-code remaining={remaining}")
                    } else {
                        "method=totp".into()
                    }),
                ))
                .await?;
                Ok(())
            })
        })
        .await;
        match stored {
            Ok(()) => {}
            Err(IdentityError::Store(StoreError::VersionConflict(_))) => {
                self.fail_attempt(&name, "mfa-failed", ctx).await?;
                return Err(IdentityError::InvalidMfaCode);
            }
            Err(e) => return Err(e),
        }
        let mut amr = pending.value.amr.clone();
        amr.push(if method == "otp" { "otp" } else { "mfa" }.to_owned());
        self.start_session(&digest, &pending.value, &updated, amr, ctx)
            .await
    }

    /// The enrolment a pending login is offering (secret, otpauth URI, QR code), to show the
    /// page again after a wrong first code.
    ///
    /// # Errors
    /// Unknown or expired login.
    pub async fn pending_enrolment(
        &self,
        cookie: &str,
        csrf: &str,
    ) -> Result<Option<(String, String, String)>, IdentityError> {
        let (_, pending) = self.pending(cookie, csrf).await?;
        let (Some(user_id), Some(secret_b32)) = (pending.value.user_id, pending.value.enrolling)
        else {
            return Ok(None);
        };
        let Some(account) = self.get::<Account>(kind::ACCOUNT, &user_id).await? else {
            return Ok(None);
        };
        let secret = TotpSecret::from_base32(&secret_b32)
            .map_err(|e| IdentityError::Internal(e.to_string()))?;
        let uri = haven_crypto::otpauth_uri(&secret, "Haven", &account.value.username).to_string();
        let qr = crate::qr::svg(&uri)?;
        Ok(Some((secret_b32, uri, qr)))
    }

    /// Confirms a TOTP enrolment with a first code; returns the session and the recovery
    /// codes (shown once, stored only as digests).
    ///
    /// # Errors
    /// `InvalidMfaCode`, `Throttled`, `LoginExpired`.
    pub async fn login_enrol(
        &self,
        cookie: &str,
        csrf: &str,
        code: &str,
        ctx: &EventContext,
    ) -> Result<(SessionStart, Vec<String>), IdentityError> {
        let (digest, pending) = self.pending(cookie, csrf).await?;
        let (Some(user_id), Some(secret_b32)) = (
            pending.value.user_id.clone(),
            pending.value.enrolling.clone(),
        ) else {
            return Err(IdentityError::LoginExpired);
        };
        let Some(account) = self.get::<Account>(kind::ACCOUNT, &user_id).await? else {
            return Err(IdentityError::LoginExpired);
        };
        let name = account.value.username.clone();
        self.check_throttles(&name, ctx.source_ip.as_deref())
            .await?;
        let secret = TotpSecret::from_base32(&secret_b32)
            .map_err(|e| IdentityError::Internal(e.to_string()))?;
        let t = u64::try_from(now()).unwrap_or(0);
        let Some(step) = verify_totp(&secret, code.trim(), t, None) else {
            self.fail_attempt(&name, "mfa-failed", ctx).await?;
            return Err(IdentityError::InvalidMfaCode);
        };
        let codes: Vec<String> = (0..RECOVERY_CODES).map(|_| recovery_code()).collect();
        let mut updated = account.value.clone();
        if updated.has_mfa() {
            // Enrolled meanwhile (another tab): this enrolment is void.
            return Err(IdentityError::LoginExpired);
        }
        updated.totp = Some(TotpEnrolment {
            secret: secret_b32,
            confirmed: true,
            last_step: Some(step),
        });
        updated.recovery_codes = codes
            .iter()
            .map(|c| token_digest(&c.to_lowercase()))
            .collect();
        updated.updated = now();
        let v = account.version;
        let ctx2 = ctx.clone();
        let actor = user_actor(&updated.username, &updated.roles, None);
        let u = updated.clone();
        run_write::<(), IdentityError, _>(self.store.as_ref(), move |tx| {
            Box::pin(async move {
                tx_put(
                    tx,
                    kind::ACCOUNT,
                    &u.id.clone(),
                    &u,
                    None,
                    Expect::Version(v),
                )
                .await?;
                tx.audit(security_entry(
                    &ctx2,
                    "mfa-enrol",
                    200,
                    actor,
                    Some("method=totp".into()),
                ))
                .await?;
                Ok(())
            })
        })
        .await?;
        let mut amr = pending.value.amr.clone();
        amr.push("otp".into());
        let session = self
            .start_session(&digest, &pending.value, &updated, amr, ctx)
            .await?;
        Ok((session, codes))
    }

    /// Ends the pending login and creates the session under a new id.
    async fn start_session(
        &self,
        login_digest: &str,
        pending: &PendingLogin,
        account: &Account,
        amr: Vec<String>,
        ctx: &EventContext,
    ) -> Result<SessionStart, IdentityError> {
        let (cookie, digest) = new_secret();
        let (csrf, _) = new_secret();
        let t = now();
        let session = Session {
            user_id: account.id.clone(),
            created: t,
            last_seen: t,
            auth_time: t,
            amr: amr.clone(),
            csrf: csrf.clone(),
        };
        let expires = expiry_in(self.settings.session_absolute);
        let login = login_digest.to_owned();
        let username = account.username.clone();
        if let Some(ip) = ctx.source_ip.as_deref() {
            self.ip_throttle.record_success(ip);
        }
        let actor = user_actor(&account.username, &account.roles, None);
        let ctx = ctx.clone();
        run_write::<(), IdentityError, _>(self.store.as_ref(), move |tx| {
            Box::pin(async move {
                if !tx.record_delete(kind::LOGIN, &login).await? {
                    // The same login finished twice (double submit): only one session.
                    return Err(IdentityError::LoginExpired);
                }
                // Every factor passed: the failures before no longer count.
                tx.record_delete(kind::THROTTLE, &username).await?;
                tx_put(
                    tx,
                    kind::SESSION,
                    &digest,
                    &session,
                    Some(expires),
                    Expect::Absent,
                )
                .await?;
                tx.audit(security_entry(
                    &ctx,
                    "login",
                    200,
                    actor,
                    Some(format!("amr={}", amr.join("+"))),
                ))
                .await?;
                Ok(())
            })
        })
        .await?;
        metrics::counter!("haven_logins_total").increment(1);
        Ok(SessionStart {
            cookie,
            csrf,
            auth_request: pending.auth_request.clone(),
        })
    }

    /// The session behind a cookie, if it is within its idle and absolute limits and its
    /// account is enabled. Refreshes its idle timer (at most once a minute).
    ///
    /// # Errors
    /// Store failures.
    pub async fn session(&self, cookie: &str) -> Result<Option<(Session, Account)>, IdentityError> {
        if cookie.is_empty() || cookie.len() > 128 {
            return Ok(None);
        }
        let digest = token_digest(cookie);
        let Some(s) = self.get::<Session>(kind::SESSION, &digest).await? else {
            return Ok(None);
        };
        let t = now();
        if t - s.value.last_seen > secs(self.settings.session_idle)
            || t - s.value.created > secs(self.settings.session_absolute)
        {
            let d = digest.clone();
            let _ = run_write::<bool, StoreError, _>(self.store.as_ref(), move |tx| {
                Box::pin(async move { tx.record_delete(kind::SESSION, &d).await })
            })
            .await;
            return Ok(None);
        }
        let Some(account) = self.get::<Account>(kind::ACCOUNT, &s.value.user_id).await? else {
            return Ok(None);
        };
        if account.value.disabled {
            return Ok(None);
        }
        if t - s.value.last_seen >= 60 {
            let mut session = s.value.clone();
            session.last_seen = t;
            let v = s.version;
            let d = digest.clone();
            let expires = s.expires;
            // A lost race only means another request refreshed it.
            let _ = run_write::<i64, StoreError, _>(self.store.as_ref(), move |tx| {
                Box::pin(async move {
                    tx_put(tx, kind::SESSION, &d, &session, expires, Expect::Version(v)).await
                })
            })
            .await;
        }
        Ok(Some((s.value, account.value)))
    }

    /// Ends a browser session (logout).
    ///
    /// # Errors
    /// Store failures.
    pub async fn end_session(
        &self,
        cookie: &str,
        ctx: &EventContext,
    ) -> Result<bool, IdentityError> {
        let Some((_, account)) = self.session(cookie).await? else {
            return Ok(false);
        };
        let digest = token_digest(cookie);
        let actor = user_actor(&account.username, &account.roles, None);
        let ctx = ctx.clone();
        run_write::<bool, IdentityError, _>(self.store.as_ref(), move |tx| {
            Box::pin(async move {
                let gone = tx.record_delete(kind::SESSION, &digest).await?;
                tx.audit(security_entry(&ctx, "logout", 200, actor, None))
                    .await?;
                Ok(gone)
            })
        })
        .await
    }
}
