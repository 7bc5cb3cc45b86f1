//! How Haven talks to Vault: the TLS client, the token and its lifetime, and the mapping of
//! Vault's answers to `KeyError`.
//!
//! **Transport.** rustls on aws-lc-rs with this module's own configuration (the `ca_file`, else
//! the platform's CA store); plain `http` only to a loopback address ([`super::check_address`]).
//! No redirect is followed: reqwest does not strip `X-Vault-Token` from a redirect, and a
//! standby node redirects to the active one, which the address should name directly. Answers
//! are at most 1 MiB. Key bytes Haven holds are wiped (`Zeroizing`); the HTTP library's own
//! buffers are not.
//!
//! **Credentials.** A configured token, or an AppRole or Kubernetes login that yields one. A
//! login token is replaced by a new login once two thirds of its TTL have passed; a configured
//! token is renewed then (if renewable; its TTL comes from `lookup-self`). A 403 triggers one
//! new login and one retry before it is reported, so an expired or revoked login token heals
//! itself; a configured token cannot, and its 403 is reported at once. The Kubernetes
//! service-account token is read from its file at every login (the kubelet rotates it). Logins
//! are serialised: concurrent requests wait for one login instead of starting their own.
//! Credentials are `VaultSecret`s: `Debug` prints `[redacted]`, and Vault's error text is
//! scrubbed of them before it reaches a message.
//!
//! | Vault's answer                                            | `KeyError`                        |
//! |-----------------------------------------------------------|-----------------------------------|
//! | no connection, timeout, 5xx, 429, 503 (sealed), redirect  | `Unavailable` (retry later)       |
//! | 400 on decrypt (retired version, wrong context, damaged)  | `Refused`                         |
//! | 403 (after one new login)                                 | `Refused`, naming the policy path |
//! | 404 (no such key or mount), a missing key                 | `Config`                          |
//! | a success that ignored a parameter (`associated_data`)    | `Config`                          |
//! | other 4xx                                                 | `Refused`                         |

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use haven_keys::KeyError;
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::{Op, VaultAuth, VaultSecret, VaultTransit};

/// Vault's answers are small; anything larger is not Vault.
const MAX_ANSWER: usize = 1024 * 1024;

/// The body of a Kubernetes login.
fn kubernetes_login_body(role: &str, jwt: &str) -> Value {
    json!({ "role": role, "jwt": jwt })
}

/// The service-account token, trimmed (the kubelet writes it without a newline; people don't).
fn read_jwt(path: &Path) -> Result<Zeroizing<String>, KeyError> {
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
        KeyError::Config(format!(
            "cannot read the Kubernetes service-account token {} ({e}): mount a projected \
             service-account token there, or set `jwt_file`",
            path.display()
        ))
    })?);
    Ok(Zeroizing::new(text.trim().to_owned()))
}

/// The rustls configuration: the CA file's certificates, or the platform's; aws-lc-rs.
pub(super) fn tls_config(
    ca_file: Option<&Path>,
    https: bool,
) -> Result<rustls::ClientConfig, KeyError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    if let Some(path) = ca_file {
        let shown = path.display();
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .map_err(|e| KeyError::Config(format!("Vault ca_file {shown} cannot be read: {e}")))?;
        if certs.is_empty() {
            return Err(KeyError::Config(format!(
                "Vault ca_file {shown} holds no PEM certificate"
            )));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| {
                KeyError::Config(format!(
                    "Vault ca_file {shown} has an unusable certificate: {e}"
                ))
            })?;
        }
    } else if https {
        let found = rustls_native_certs::load_native_certs();
        for error in &found.errors {
            tracing::warn!(%error, "could not read part of the platform's CA certificates");
        }
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            return Err(KeyError::Config(
                "no platform CA certificates were found: set the Vault `ca_file` to the CA \
                 certificate (PEM) of Vault's TLS certificate"
                    .into(),
            ));
        }
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| KeyError::Config(format!("TLS set-up for Vault failed: {e}")))
    .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

/// The client token and when to renew or replace it.
#[derive(Default)]
pub(super) struct Session {
    token: Option<VaultSecret>,
    /// Renew (configured token) or log in again (AppRole, Kubernetes) from then; `None`: never.
    refresh_at: Option<Instant>,
    renewable: bool,
    /// A configured token's TTL has been looked up.
    looked_up: bool,
    /// Bumped by every login: a 403 triggers a new login only if none happened since.
    generation: u64,
}

#[derive(Deserialize)]
struct AuthInfo {
    client_token: String,
    #[serde(default)]
    lease_duration: u64,
    #[serde(default)]
    renewable: bool,
}

#[derive(Deserialize)]
struct TokenLookup {
    #[serde(default)]
    ttl: u64,
    #[serde(default)]
    renewable: bool,
}

/// What every Vault answer may carry besides its data.
#[derive(Deserialize, Default)]
pub(super) struct Notes {
    #[serde(default)]
    pub(super) errors: Vec<String>,
    #[serde(default)]
    warnings: Option<Vec<String>>,
}

/// Why Transit would not decrypt, in words an operator can act on.
fn decrypt_refusal(said: &str, who: &str) -> String {
    if said.contains("too old") || said.contains("disallowed by policy") {
        format!(
            "the data key is wrapped under a retired key version (below min_decryption_version on {who}): it no longer opens"
        )
    } else if said.contains("too new") {
        format!(
            "the data key is wrapped under a key version {who} does not have (another Vault, or an older copy of the key?)"
        )
    } else if said.contains("authentication failed") {
        "the wrapped data key does not open under its context (it belongs to another scope, or was altered)".to_owned()
    } else {
        format!("{who} would not decrypt the data key: {said}")
    }
}

impl VaultTransit {
    pub(super) fn who(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("Vault/OpenBao at {} (namespace {ns})", self.address),
            None => format!("Vault/OpenBao at {}", self.address),
        }
    }

    /// What the token's policy must grant for `op`.
    fn needs(&self, op: Op) -> String {
        let (m, k) = (&self.mount, &self.key);
        let what = match op {
            Op::Generate => format!("update on {m}/datakey/plaintext/{k}"),
            Op::Decrypt => format!("update on {m}/decrypt/{k}"),
            Op::Encrypt => format!("update on {m}/encrypt/{k}"),
            Op::Read => format!("read on {m}/keys/{k}"),
            Op::Rotate => format!("update on {m}/keys/{k}/rotate"),
            Op::Retire => format!("update on {m}/keys/{k}/config and {m}/keys/{k}/trim"),
            Op::Create => format!("create and update on {m}/keys/{k}"),
        };
        format!(
            "check that the token's policy grants {what} (serving needs update on \
             {m}/datakey/plaintext/{k}, {m}/encrypt/{k} and {m}/decrypt/{k}, and read on {m}/keys/{k})"
        )
    }

    /// Vault's own error text, without any credential of ours, bounded.
    pub(super) fn scrub(&self, mut text: String) -> String {
        let secrets: Vec<&str> = match &self.auth {
            VaultAuth::Token(t) => vec![t.expose()],
            VaultAuth::AppRole { role_id, secret_id } => vec![secret_id.expose(), role_id],
            VaultAuth::Kubernetes { .. } => vec![],
        };
        for s in secrets.into_iter().filter(|s| s.len() >= 4) {
            text = text.replace(s, "[redacted]");
        }
        if text.len() > 300 {
            let mut cut = 300;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push('…');
        }
        text
    }

    /// One request; the answer's status and body. Transport failures are `Unavailable`.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        token: Option<&VaultSecret>,
    ) -> Result<(StatusCode, Vec<u8>), KeyError> {
        let url = self
            .base
            .join(path)
            .map_err(|e| KeyError::Config(format!("bad Vault path {path}: {e}")))?;
        let mut req = self.http.request(method, url);
        if let Some(t) = token {
            let mut value = reqwest::header::HeaderValue::from_str(t.expose()).map_err(|_| {
                KeyError::Config("the Vault token is not a valid header value".into())
            })?;
            value.set_sensitive(true);
            req = req.header("X-Vault-Token", value);
        }
        if let Some(ns) = &self.namespace {
            req = req.header("X-Vault-Namespace", ns);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| self.transport(&e))?;
        let status = resp.status();
        if resp.content_length().is_some_and(|n| n > MAX_ANSWER as u64) {
            return Err(KeyError::Unavailable(format!(
                "{} sent an oversized answer to {path}",
                self.who()
            )));
        }
        let bytes = resp.bytes().await.map_err(|e| self.transport(&e))?;
        Ok((status, bytes.into()))
    }

    fn transport(&self, e: &reqwest::Error) -> KeyError {
        let mut cause = String::new();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            cause.push_str(": ");
            cause.push_str(&s.to_string());
            source = s.source();
        }
        let who = self.who();
        KeyError::Unavailable(if e.is_timeout() {
            format!(
                "{who} did not answer within {} s: is Vault/OpenBao up and unsealed?",
                self.timeout.as_secs_f32()
            )
        } else if e.is_connect() {
            format!(
                "cannot connect to {who}{cause}: is Vault/OpenBao up and unsealed, and the address right?"
            )
        } else {
            format!("request to {who} failed{cause}: is Vault/OpenBao up and unsealed?")
        })
    }

    /// A request with the session's token: one new login and one retry after a 403.
    pub(super) async fn call_raw(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Vec<u8>), KeyError> {
        let (token, generation) = self.token().await?;
        let answer = self.send(method.clone(), path, body, Some(&token)).await?;
        if answer.0 != StatusCode::FORBIDDEN || !self.login_again(generation).await? {
            return Ok(answer);
        }
        let (token, _) = self.token().await?;
        self.send(method, path, body, Some(&token)).await
    }

    /// A request whose answer must be a success; the answer's `data`.
    pub(super) async fn call(
        &self,
        op: Op,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, KeyError> {
        let (status, bytes) = self.call_raw(method, path, body).await?;
        // The answer may hold a data key (datakey, decrypt): wiped once `data` is taken out.
        let bytes = Zeroizing::new(bytes);
        self.judge(op, path, status, &bytes)
    }

    /// Maps an answer to its `data` or to a `KeyError` (the table in the module docs).
    pub(super) fn judge(
        &self,
        op: Op,
        path: &str,
        status: StatusCode,
        bytes: &[u8],
    ) -> Result<Value, KeyError> {
        let notes: Notes = serde_json::from_slice(bytes).unwrap_or_default();
        let said = self.scrub(notes.errors.join("; "));
        let who = self.who();
        if status.is_success() {
            if let Some(w) = notes
                .warnings
                .iter()
                .flatten()
                .find(|w| w.contains("ignored") && w.contains("parameters"))
            {
                return Err(KeyError::Config(format!(
                    "{who} ignored a parameter Haven relies on ({}): Haven needs a Transit that \
                     supports associated_data (OpenBao 2, a current Vault)",
                    self.scrub(w.clone())
                )));
            }
            // Moved, not copied, into the caller's type (a data key ends in `Zeroizing`).
            let mut answer: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
            return Ok(answer
                .get_mut("data")
                .map(Value::take)
                .unwrap_or(Value::Null));
        }
        Err(match status.as_u16() {
            403 => KeyError::Refused(format!(
                "permission denied by {who} for {path}: {}",
                self.needs(op)
            )),
            503 if said.contains("sealed") => KeyError::Unavailable(format!(
                "{who} is sealed: unseal it (is Vault/OpenBao up and unsealed?)"
            )),
            429 | 500..=599 => KeyError::Unavailable(format!(
                "{who} answered {status} to {path} ({said}): is Vault/OpenBao up and unsealed?"
            )),
            300..=399 => KeyError::Unavailable(format!(
                "{who} redirected {path} (a standby node?): set the address to the active node \
                 or to the load balancer in front of the cluster"
            )),
            404 if said.contains("no handler for route") => KeyError::Config(format!(
                "no secrets engine at {}/ on {who}: enable Transit there (bao secrets enable -path={} transit)",
                self.mount, self.mount
            )),
            404 => KeyError::Config(format!(
                "Transit key {}/{} does not exist on {who}: create it with `haven keys init`",
                self.mount, self.key
            )),
            400 if said.contains("encryption key not found") => KeyError::Config(format!(
                "Transit key {}/{} does not exist on {who}: create it with `haven keys init`",
                self.mount, self.key
            )),
            400 if matches!(op, Op::Decrypt) => KeyError::Refused(decrypt_refusal(&said, &who)),
            _ => KeyError::Refused(format!("{who} refused {path} ({status}): {said}")),
        })
    }

    /// The token to send and the login generation it belongs to.
    async fn token(&self) -> Result<(VaultSecret, u64), KeyError> {
        let mut s = self.session.lock().await;
        let due = s.refresh_at.is_some_and(|at| Instant::now() >= at);
        if let VaultAuth::Token(configured) = &self.auth {
            if s.token.is_none() {
                s.token = Some(configured.clone());
            }
            if !s.looked_up {
                self.look_up(&mut s).await?;
            } else if due && s.renewable {
                self.renew(&mut s).await?;
            }
        } else if s.token.is_none() || due {
            self.login(&mut s).await?;
        }
        let token = s
            .token
            .clone()
            .ok_or_else(|| KeyError::Config("no Vault token".into()))?;
        Ok((token, s.generation))
    }

    /// After a 403: a new login unless one happened since `generation`. False for a
    /// configured token (nothing to log in with).
    async fn login_again(&self, generation: u64) -> Result<bool, KeyError> {
        if matches!(self.auth, VaultAuth::Token(_)) {
            return Ok(false);
        }
        let mut s = self.session.lock().await;
        if s.generation == generation {
            self.login(&mut s).await?;
        }
        Ok(true)
    }

    fn schedule(s: &mut Session, ttl_secs: u64, renewable: bool) {
        s.renewable = renewable;
        s.refresh_at = (ttl_secs > 0)
            .then(|| Instant::now() + Duration::from_secs(ttl_secs).mul_f64(2.0 / 3.0));
    }

    /// A configured token's TTL (`auth/token/lookup-self`, in Vault's default policy). A token
    /// that may not look itself up is used until it is refused.
    async fn look_up(&self, s: &mut Session) -> Result<(), KeyError> {
        let token = s.token.clone();
        let (status, bytes) = self
            .send(Method::GET, "auth/token/lookup-self", None, token.as_ref())
            .await?;
        s.looked_up = true;
        if status.is_success()
            && let Ok(data) = self.data::<TokenLookup>(&bytes)
        {
            Self::schedule(s, data.ttl, data.renewable);
        } else if status.is_server_error() {
            s.looked_up = false;
            return self
                .judge(Op::Read, "auth/token/lookup-self", status, &bytes)
                .map(drop);
        }
        Ok(())
    }

    async fn renew(&self, s: &mut Session) -> Result<(), KeyError> {
        let token = s.token.clone();
        let (status, bytes) = self
            .send(
                Method::POST,
                "auth/token/renew-self",
                Some(&json!({})),
                token.as_ref(),
            )
            .await?;
        match self.auth_info(&bytes) {
            Some(auth) if status.is_success() => {
                Self::schedule(s, auth.lease_duration, auth.renewable)
            }
            // Not renewable after all, or at its maximum TTL: use it until it is refused.
            _ => s.refresh_at = None,
        }
        Ok(())
    }

    /// Logs in with AppRole or Kubernetes and keeps the new token.
    async fn login(&self, s: &mut Session) -> Result<(), KeyError> {
        let (path, body, kind) = match &self.auth {
            VaultAuth::Token(_) => return Ok(()),
            VaultAuth::AppRole { role_id, secret_id } => (
                "auth/approle/login".to_owned(),
                json!({ "role_id": role_id, "secret_id": secret_id.expose() }),
                "AppRole",
            ),
            VaultAuth::Kubernetes {
                role,
                jwt_file,
                mount,
            } => {
                let jwt = read_jwt(jwt_file)?;
                (
                    format!("auth/{}/login", mount.trim_matches('/')),
                    kubernetes_login_body(role, &jwt),
                    "Kubernetes",
                )
            }
        };
        let (status, bytes) = self.send(Method::POST, &path, Some(&body), None).await?;
        // A refused login is about the credentials, not about Transit (404: no such auth mount).
        if matches!(status.as_u16(), 400 | 401 | 403 | 404) {
            let notes: Notes = serde_json::from_slice(&bytes).unwrap_or_default();
            let hint = if kind == "AppRole" {
                "check role_id and secret_id (a secret id may have expired or been used up)"
            } else {
                "check the role's bound service account and namespace, and that the auth method is enabled at this mount"
            };
            return Err(KeyError::Refused(format!(
                "{kind} login at {} ({path}) was refused ({}): {hint}",
                self.who(),
                self.scrub(notes.errors.join("; "))
            )));
        }
        self.judge(Op::Read, &path, status, &bytes)?;
        let auth = self.auth_info(&bytes).ok_or_else(|| {
            KeyError::Refused(format!(
                "{} answered the {kind} login without a token",
                self.who()
            ))
        })?;
        s.token = Some(VaultSecret::new(auth.client_token));
        s.generation += 1;
        Self::schedule(s, auth.lease_duration, auth.renewable);
        Ok(())
    }

    fn auth_info(&self, bytes: &[u8]) -> Option<AuthInfo> {
        #[derive(Deserialize)]
        struct WithAuth {
            auth: Option<AuthInfo>,
        }
        serde_json::from_slice::<WithAuth>(bytes).ok()?.auth
    }

    fn data<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, KeyError> {
        #[derive(Deserialize)]
        struct WithData<T> {
            data: T,
        }
        serde_json::from_slice::<WithData<T>>(bytes)
            .map(|w| w.data)
            .map_err(|_| KeyError::Refused(format!("unexpected answer from {}", self.who())))
    }

    pub(super) fn parse<T: DeserializeOwned>(&self, data: Value) -> Result<T, KeyError> {
        serde_json::from_value(data)
            .map_err(|_| KeyError::Refused(format!("unexpected answer from {}", self.who())))
    }
}

#[cfg(test)]
mod tests {
    use super::super::DEFAULT_JWT_FILE;
    use super::*;

    #[test]
    fn kubernetes_login_sends_role_and_the_file_token() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "eyJhbGciOi.eyJzdWIi.c2ln\n").unwrap();
        let jwt = read_jwt(&file).unwrap();
        assert_eq!(
            kubernetes_login_body("haven", &jwt),
            json!({ "role": "haven", "jwt": "eyJhbGciOi.eyJzdWIi.c2ln" })
        );
        let missing = read_jwt(&dir.path().join("absent"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("service-account token"), "{missing}");
        let VaultAuth::Kubernetes {
            jwt_file, mount, ..
        } = VaultAuth::kubernetes("haven")
        else {
            panic!("not Kubernetes");
        };
        assert_eq!(jwt_file, Path::new(DEFAULT_JWT_FILE));
        assert_eq!(mount, "kubernetes");
    }

    #[test]
    fn decrypt_refusals_say_what_happened() {
        let who = "Vault/OpenBao at http://127.0.0.1:8200";
        assert!(
            decrypt_refusal(
                "ciphertext or signature version is disallowed by policy (too old)",
                who
            )
            .contains("retired")
        );
        assert!(decrypt_refusal("cipher: message authentication failed", who).contains("context"));
        assert!(
            decrypt_refusal("invalid ciphertext: version is too new", who)
                .contains("does not have")
        );
    }
}
