//! Account and client administration (the `haven user` and `haven client` commands, and the
//! first-start setup). Every change is recorded in the audit trail in the same unit of work.

use haven_audit::Actor;
use haven_domain::{Role, scope::Scopes};
use haven_store::{Expect, StoreError, WriteTx, run_write};
use serde_json::Value;

use crate::core::{Identity, now};
use crate::error::IdentityError;
use crate::events::{EventContext, security_entry};
use crate::records::{
    Account, AccountSource, Client, ClientKind, UsernameIndex, kind, tx_get, tx_put,
};
use crate::username::Username;

/// A new local or directory account.
#[derive(Clone, Debug)]
pub struct NewUser {
    pub username: String,
    /// `None` for a directory account (the directory checks the password).
    pub password: Option<String>,
    pub roles: Vec<Role>,
    pub display_name: Option<String>,
    pub email: Option<String>,
    pub fhir_user: Option<String>,
}

/// A new OAuth client.
#[derive(Clone, Debug)]
pub struct NewClient {
    pub id: String,
    pub name: String,
    pub kind: ClientKind,
    pub redirect_uris: Vec<String>,
    pub jwks: Option<Value>,
    pub scope: String,
    pub grant_types: Vec<String>,
    pub role: Option<Role>,
}

/// Who made an administrative change (an admin's username, or `cli` for the operator at the
/// machine).
fn admin_actor(by: &str) -> Actor {
    Actor {
        user: Some(by.to_owned()),
        role: Some("admin".into()),
        client: None,
    }
}

async fn account_by_name(
    tx: &mut dyn WriteTx,
    username: &Username,
) -> Result<Option<crate::records::Versioned<Account>>, StoreError> {
    let Some(idx) = tx_get::<UsernameIndex>(tx, kind::USERNAME, username.as_str()).await? else {
        return Ok(None);
    };
    tx_get::<Account>(tx, kind::ACCOUNT, &idx.value.user_id).await
}

fn fhir_user_ok(s: &str) -> bool {
    let Some((ty, id)) = s.split_once('/') else {
        return false;
    };
    matches!(
        ty,
        "Practitioner" | "PractitionerRole" | "Patient" | "RelatedPerson" | "Person"
    ) && haven_domain::ResourceId::parse(id).is_ok()
}

impl Identity {
    /// Creates an account. The password must pass the policy; usernames are unique after
    /// normalization, so `ALICE` and `ａｌｉｃｅ` are the same name.
    ///
    /// # Errors
    /// Invalid username, password or fhirUser; an existing name; store failures.
    pub async fn create_user(
        &self,
        new: NewUser,
        by: &str,
        ctx: &EventContext,
    ) -> Result<Account, IdentityError> {
        let username = Username::parse(&new.username)
            .map_err(|e| IdentityError::Invalid(format!("username: {e}")))?;
        if new.roles.is_empty() {
            return Err(IdentityError::Invalid(
                "give the user at least one role (--role clinician, ...)".into(),
            ));
        }
        if new.roles.contains(&Role::Service) {
            return Err(IdentityError::Invalid(
                "the service role is for clients (haven client add --service), not people".into(),
            ));
        }
        if let Some(f) = &new.fhir_user
            && !fhir_user_ok(f)
        {
            return Err(IdentityError::Invalid(
                "fhirUser must look like Practitioner/ID, PractitionerRole/ID, Patient/ID, RelatedPerson/ID or Person/ID".into(),
            ));
        }
        let (source, password_hash) = match new.password {
            Some(p) => {
                self.settings
                    .password_policy
                    .check(&p, username.as_str())
                    .map_err(|e| IdentityError::Invalid(format!("password: {e}")))?;
                (AccountSource::Local, Some(self.hasher.hash(p).await?))
            }
            None => (AccountSource::Ldap { dn: String::new() }, None),
        };
        let t = now();
        let account = Account {
            id: uuid::Uuid::new_v4().to_string(),
            username: username.as_str().to_owned(),
            display_name: new.display_name,
            email: new.email,
            roles: new.roles,
            source,
            password_hash,
            disabled: false,
            totp: None,
            recovery_codes: Vec::new(),
            fhir_user: new.fhir_user,
            created: t,
            updated: t,
        };
        let entry = security_entry(
            ctx,
            "user-create",
            201,
            admin_actor(by),
            Some(format!(
                "user={} roles={}",
                account.username,
                account
                    .roles
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            )),
        );
        let a = account.clone();
        run_write::<(), IdentityError, _>(self.store.as_ref(), move |tx| {
            Box::pin(async move {
                let idx = UsernameIndex {
                    user_id: a.id.clone(),
                };
                match tx_put(tx, kind::USERNAME, &a.username, &idx, None, Expect::Absent).await {
                    Ok(_) => {}
                    Err(StoreError::VersionConflict(_)) => {
                        return Err(IdentityError::Exists(format!("user {}", a.username)));
                    }
                    Err(e) => return Err(e.into()),
                }
                tx_put(tx, kind::ACCOUNT, &a.id, &a, None, Expect::Absent).await?;
                tx.audit(entry).await?;
                Ok(())
            })
        })
        .await?;
        Ok(account)
    }

    /// An account by (unnormalized) username.
    ///
    /// # Errors
    /// Store failures.
    pub async fn find_user(&self, username: &str) -> Result<Option<Account>, IdentityError> {
        let Ok(name) = Username::parse(username) else {
            return Ok(None);
        };
        let Some(idx) = self
            .get::<UsernameIndex>(kind::USERNAME, name.as_str())
            .await?
        else {
            return Ok(None);
        };
        Ok(self
            .get::<Account>(kind::ACCOUNT, &idx.value.user_id)
            .await?
            .map(|v| v.value))
    }

    /// Every account, by user id.
    ///
    /// # Errors
    /// Store failures.
    pub async fn list_users(&self) -> Result<Vec<Account>, IdentityError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .store
                .record_list(kind::ACCOUNT, after.as_deref(), 200)
                .await?;
            let done = page.len() < 200;
            for (k, r) in page {
                after = Some(k);
                out.push(crate::records::decode::<Account>(kind::ACCOUNT, r)?.value);
            }
            if done {
                break;
            }
        }
        out.sort_by(|a, b| a.username.cmp(&b.username));
        Ok(out)
    }

    /// Changes an account under compare-and-swap and records `action`.
    async fn change_user(
        &self,
        username: &str,
        action: &'static str,
        by: &str,
        ctx: &EventContext,
        change: impl FnOnce(&mut Account) -> Result<(), IdentityError> + Send + 'static,
    ) -> Result<Account, IdentityError> {
        let name = Username::parse(username)
            .map_err(|_| IdentityError::NotFound(format!("user {username}")))?;
        let actor = admin_actor(by);
        let ctx = ctx.clone();
        let result = run_write::<Account, IdentityError, _>(self.store.as_ref(), move |tx| {
            Box::pin(async move {
                let Some(mut a) = account_by_name(tx, &name).await? else {
                    return Err(IdentityError::NotFound(format!("user {}", name.as_str())));
                };
                change(&mut a.value)?;
                a.value.updated = now();
                tx_put(
                    tx,
                    kind::ACCOUNT,
                    &a.value.id.clone(),
                    &a.value,
                    None,
                    Expect::Version(a.version),
                )
                .await?;
                tx.audit(security_entry(
                    &ctx,
                    action,
                    200,
                    actor,
                    Some(format!("user={}", a.value.username)),
                ))
                .await?;
                Ok(a.value)
            })
        })
        .await?;
        self.caches.forget_user(&result.id);
        // A changed credential or a disabled account ends what the old one opened: every
        // browser session and refresh-token family of the user.
        if matches!(action, "user-disable" | "mfa-reset" | "password-set") {
            self.end_user_access(&result.id).await?;
        }
        Ok(result)
    }

    /// Deletes the user's sessions and revokes their refresh-token families.
    async fn end_user_access(&self, user_id: &str) -> Result<(), IdentityError> {
        let mut sessions = Vec::new();
        let mut families = Vec::new();
        for (kind_name, out) in [
            (kind::SESSION, &mut sessions),
            (kind::REFRESH, &mut families),
        ] {
            let mut after: Option<String> = None;
            loop {
                let page = self
                    .store
                    .record_list(kind_name, after.as_deref(), 500)
                    .await?;
                let done = page.len() < 500;
                for (key, r) in page {
                    let owner = serde_json::from_slice::<serde_json::Value>(&r.body)
                        .ok()
                        .and_then(|v| v.get("user_id").and_then(|u| u.as_str()).map(str::to_owned));
                    if owner.as_deref() == Some(user_id) {
                        out.push(key.clone());
                    }
                    after = Some(key);
                }
                if done {
                    break;
                }
            }
        }
        if sessions.is_empty() && families.is_empty() {
            return Ok(());
        }
        run_write::<(), IdentityError, _>(self.store.as_ref(), move |tx| {
            Box::pin(async move {
                for key in sessions {
                    tx.record_delete(kind::SESSION, &key).await?;
                }
                for key in families {
                    if let Some(mut f) =
                        tx_get::<crate::records::RefreshFamily>(tx, kind::REFRESH, &key).await?
                        && !f.value.revoked
                    {
                        f.value.revoked = true;
                        let exp = f.expires;
                        tx_put(
                            tx,
                            kind::REFRESH,
                            &key,
                            &f.value,
                            exp,
                            Expect::Version(f.version),
                        )
                        .await?;
                    }
                }
                Ok(())
            })
        })
        .await
    }

    /// Disables an account: its logins fail, its refresh tokens stop working and its access
    /// tokens are refused within the revocation cache time.
    ///
    /// # Errors
    /// Unknown user, store failures.
    pub async fn disable_user(
        &self,
        username: &str,
        by: &str,
        ctx: &EventContext,
    ) -> Result<Account, IdentityError> {
        self.change_user(username, "user-disable", by, ctx, |a| {
            a.disabled = true;
            Ok(())
        })
        .await
    }

    /// Enables a disabled account.
    ///
    /// # Errors
    /// Unknown user, store failures.
    pub async fn enable_user(
        &self,
        username: &str,
        by: &str,
        ctx: &EventContext,
    ) -> Result<Account, IdentityError> {
        self.change_user(username, "user-enable", by, ctx, |a| {
            a.disabled = false;
            Ok(())
        })
        .await
    }

    /// Removes a user's second factor and recovery codes; they enrol again at next login.
    ///
    /// # Errors
    /// Unknown user, store failures.
    pub async fn reset_mfa(
        &self,
        username: &str,
        by: &str,
        ctx: &EventContext,
    ) -> Result<Account, IdentityError> {
        self.change_user(username, "mfa-reset", by, ctx, |a| {
            a.totp = None;
            a.recovery_codes.clear();
            Ok(())
        })
        .await
    }

    /// Sets a new password (checked against the policy).
    ///
    /// # Errors
    /// Policy refusal, unknown user, store failures.
    pub async fn set_password(
        &self,
        username: &str,
        password: String,
        by: &str,
        ctx: &EventContext,
    ) -> Result<Account, IdentityError> {
        let name = Username::parse(username)
            .map_err(|_| IdentityError::NotFound(format!("user {username}")))?;
        self.settings
            .password_policy
            .check(&password, name.as_str())
            .map_err(|e| IdentityError::Invalid(format!("password: {e}")))?;
        let hash = self.hasher.hash(password).await?;
        self.change_user(username, "password-set", by, ctx, move |a| {
            if a.source != AccountSource::Local {
                return Err(IdentityError::Invalid(
                    "this account's password is kept by the directory".into(),
                ));
            }
            a.password_hash = Some(hash);
            Ok(())
        })
        .await
    }

    /// Registers a client.
    ///
    /// # Errors
    /// Invalid settings (a public client without redirect URIs, a confidential one without
    /// keys, an `http:` redirect to anything but loopback), an existing id, store failures.
    pub async fn create_client(
        &self,
        new: NewClient,
        by: &str,
        ctx: &EventContext,
    ) -> Result<Client, IdentityError> {
        if new.id.is_empty()
            || new.id.len() > 64
            || !new
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(IdentityError::Invalid(
                "client id: 1 to 64 characters of A-Z a-z 0-9 - _ .".into(),
            ));
        }
        for g in &new.grant_types {
            if !matches!(
                g.as_str(),
                "authorization_code" | "refresh_token" | "client_credentials"
            ) {
                return Err(IdentityError::Invalid(format!("unknown grant type {g}")));
            }
        }
        let code_flow = new.grant_types.iter().any(|g| g == "authorization_code");
        if code_flow && new.redirect_uris.is_empty() {
            return Err(IdentityError::Invalid(
                "a client using the authorization code flow needs at least one --redirect-uri"
                    .into(),
            ));
        }
        for uri in &new.redirect_uris {
            check_redirect_uri(uri)?;
        }
        if new.kind == ClientKind::Public
            && new.grant_types.iter().any(|g| g == "client_credentials")
        {
            return Err(IdentityError::Invalid(
                "client credentials need a confidential client (give its public keys with --jwks)"
                    .into(),
            ));
        }
        if new.kind == ClientKind::Confidential {
            let Some(jwks) = &new.jwks else {
                return Err(IdentityError::Invalid(
                    "a confidential client needs its public keys (JWKS) for private_key_jwt".into(),
                ));
            };
            haven_crypto::VerificationKeys::from_jwks(jwks)
                .map_err(|e| IdentityError::Invalid(format!("client JWKS: {e}")))?;
        }
        let scopes = Scopes::parse_strict(&new.scope)
            .map_err(|e| IdentityError::Invalid(format!("scope: {e}")))?;
        let client = Client {
            id: new.id,
            name: new.name,
            kind: new.kind,
            redirect_uris: new.redirect_uris,
            jwks: new.jwks,
            scope: scopes.to_string(),
            grant_types: new.grant_types,
            role: new.role,
            revoked: false,
            created: now(),
        };
        let entry = security_entry(
            ctx,
            "client-create",
            201,
            admin_actor(by),
            Some(format!("client={}", client.id)),
        );
        let c = client.clone();
        run_write::<(), IdentityError, _>(self.store.as_ref(), move |tx| {
            Box::pin(async move {
                match tx_put(tx, kind::CLIENT, &c.id, &c, None, Expect::Absent).await {
                    Ok(_) => {}
                    Err(StoreError::VersionConflict(_)) => {
                        return Err(IdentityError::Exists(format!("client {}", c.id)));
                    }
                    Err(e) => return Err(e.into()),
                }
                tx.audit(entry).await?;
                Ok(())
            })
        })
        .await?;
        Ok(client)
    }

    /// Every client, by id.
    ///
    /// # Errors
    /// Store failures.
    pub async fn list_clients(&self) -> Result<Vec<Client>, IdentityError> {
        let page = self.store.record_list(kind::CLIENT, None, 10_000).await?;
        page.into_iter()
            .map(|(_, r)| Ok(crate::records::decode::<Client>(kind::CLIENT, r)?.value))
            .collect()
    }

    /// A client by id.
    ///
    /// # Errors
    /// Store failures.
    pub async fn client(&self, id: &str) -> Result<Option<Client>, IdentityError> {
        if id.is_empty() || id.len() > 64 {
            return Ok(None);
        }
        Ok(self.get::<Client>(kind::CLIENT, id).await?.map(|v| v.value))
    }

    /// Revokes a client: it can get no new tokens, and its tokens are refused.
    ///
    /// # Errors
    /// Unknown client, store failures.
    pub async fn revoke_client(
        &self,
        id: &str,
        by: &str,
        ctx: &EventContext,
    ) -> Result<(), IdentityError> {
        let id = id.to_owned();
        let actor = admin_actor(by);
        let ctx = ctx.clone();
        let cid = id.clone();
        run_write::<(), IdentityError, _>(self.store.as_ref(), move |tx| {
            Box::pin(async move {
                let Some(mut c) = tx_get::<Client>(tx, kind::CLIENT, &id).await? else {
                    return Err(IdentityError::NotFound(format!("client {id}")));
                };
                c.value.revoked = true;
                tx_put(
                    tx,
                    kind::CLIENT,
                    &id,
                    &c.value,
                    None,
                    Expect::Version(c.version),
                )
                .await?;
                tx.audit(security_entry(
                    &ctx,
                    "client-revoke",
                    200,
                    actor,
                    Some(format!("client={id}")),
                ))
                .await?;
                Ok(())
            })
        })
        .await?;
        self.caches.forget_client(&cid);
        Ok(())
    }

    /// Whether any account exists (the first start prints how to create the first admin).
    ///
    /// # Errors
    /// Store failures.
    pub async fn has_users(&self) -> Result<bool, IdentityError> {
        Ok(!self
            .store
            .record_list(kind::ACCOUNT, None, 1)
            .await?
            .is_empty())
    }

    /// Starts a new token signing key now (the old one stays published for the overlap).
    ///
    /// # Errors
    /// Store failures.
    pub async fn rotate_signing_key(
        &self,
        by: &str,
        ctx: &EventContext,
    ) -> Result<String, IdentityError> {
        Ok(self.keys.rotate(admin_actor(by), ctx).await?)
    }
}

/// Redirect URIs: absolute, no fragment; `https`, or `http` to a loopback host only (native
/// apps, RFC 8252 §7.3), or a private-use scheme with a dot (`com.example.app:/cb`).
pub(crate) fn check_redirect_uri(uri: &str) -> Result<(), IdentityError> {
    let bad = |why: &str| IdentityError::Invalid(format!("redirect URI {uri}: {why}"));
    if uri.len() > 512 || uri.contains('#') || uri.chars().any(char::is_whitespace) {
        return Err(bad(
            "must be at most 512 characters, without a fragment or spaces",
        ));
    }
    let Some((scheme, rest)) = uri.split_once(':') else {
        return Err(bad("must be absolute"));
    };
    // No user information: `http://127.0.0.1:80@evil.example/` names evil.example.
    let authority = rest
        .strip_prefix("//")
        .map(|r| r.split(['/', '?']).next().unwrap_or(""))
        .unwrap_or("");
    if authority.contains('@') || authority.contains('\\') {
        return Err(bad(
            "must not carry user information ('@') in its host part",
        ));
    }
    match scheme {
        "https" => Ok(()),
        "http" => {
            let host = rest
                .trim_start_matches("//")
                .split(['/', '?'])
                .next()
                .unwrap_or("");
            let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
            if matches!(host, "127.0.0.1" | "localhost" | "[::1]") {
                Ok(())
            } else {
                Err(bad(
                    "plain http is allowed for loopback addresses only; use https",
                ))
            }
        }
        s if s.contains('.') => Ok(()),
        _ => Err(bad(
            "use https, loopback http, or a reverse-domain private scheme",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::check_redirect_uri;

    #[test]
    fn redirect_uris_are_checked() {
        for ok in [
            "https://app.example/cb",
            "http://127.0.0.1:9/cb",
            "http://localhost/cb",
            "http://[::1]:8000/cb",
            "com.example.app:/oauth",
        ] {
            assert!(check_redirect_uri(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://evil.example/cb",
            "http://127.0.0.1:80@evil.example/cb",
            "https://app.example@evil.example/cb",
            "http://127.0.0.1\\@evil.example/",
            "https://app.example/cb#frag",
            "/relative",
            "javascript:alert(1)",
        ] {
            assert!(check_redirect_uri(bad).is_err(), "{bad}");
        }
    }
}
