//! `haven user`, `haven client`, `haven identity` and `haven token`: administering accounts,
//! OAuth clients and signing keys on the database directly (no running server needed), and
//! getting an access token for a backend client.

use std::io::{BufRead as _, IsTerminal as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use base64::Engine as _;
use haven_domain::Role;
use haven_identity::records::ClientKind;
use haven_identity::{EventContext, Identity, NewClient, NewUser};
use serde_json::{Value, json};

use crate::config::Config;

/// Who made a change from the command line: the operating-system user, for the audit trail.
fn cli_actor() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    format!("cli:{}", user.chars().take(32).collect::<String>())
}

/// The server root clients use (for the issuer when none is configured).
pub fn server_root(config: &Config) -> String {
    match &config.public_url {
        Some(u) => u
            .trim_end_matches('/')
            .trim_end_matches(haven_http::FHIR_BASE)
            .to_owned(),
        None => format!("{}://{}", config.scheme(), config.listen),
    }
}

pub fn fhir_base(config: &Config) -> String {
    match &config.public_url {
        Some(u) => u.trim_end_matches('/').to_owned(),
        None => format!(
            "{}://{}{}",
            config.scheme(),
            config.listen,
            haven_http::FHIR_BASE
        ),
    }
}

/// Fetches trusted issuers' discovery documents and JWKS: 5 s, 256 KiB, no redirects.
pub struct HttpFetcher(reqwest::Client);

impl HttpFetcher {
    pub fn new() -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(Self(
            reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(5))
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
        )))
    }
}

#[async_trait::async_trait]
impl haven_identity::JsonFetcher for HttpFetcher {
    async fn get_json(&self, url: &str) -> Result<Value, String> {
        let resp = self.0.get(url).send().await.map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("{url} answered {}", resp.status()));
        }
        let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
        if bytes.len() > 256 * 1024 {
            return Err(format!("{url}: document larger than 256 KiB"));
        }
        serde_json::from_slice(&bytes).map_err(|_| format!("{url}: not JSON"))
    }
}

async fn open(config: &Config) -> anyhow::Result<Arc<Identity>> {
    let store = crate::serve::open_raw_store(config).await?;
    let settings = config.identity_settings(&server_root(config), &fhir_base(config))?;
    Identity::open(store, settings, HttpFetcher::new()?)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open the identity module: {e}"))
}

/// Reads a password: hidden prompt on a terminal (twice), else one line from stdin.
fn read_password(prompt: &str) -> anyhow::Result<String> {
    if std::io::stdin().is_terminal() {
        let p = rpassword::prompt_password(prompt).context("cannot read the password")?;
        let again = rpassword::prompt_password("Again: ").context("cannot read the password")?;
        if p != again {
            bail!("the two passwords differ");
        }
        Ok(p)
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from stdin")?;
        Ok(line.trim_end_matches(['\r', '\n']).to_owned())
    }
}

fn parse_roles(roles: &[String]) -> anyhow::Result<Vec<Role>> {
    roles
        .iter()
        .flat_map(|r| r.split(','))
        .map(|r| {
            Role::parse(r.trim()).ok_or_else(|| {
                anyhow::anyhow!(
                    "unknown role '{r}'; roles are admin, clinician, nurse, registrar, patient, auditor"
                )
            })
        })
        .collect()
}

pub struct UserAdd {
    pub username: String,
    pub roles: Vec<String>,
    pub name: Option<String>,
    pub email: Option<String>,
    pub fhir_user: Option<String>,
    pub directory: bool,
}

pub async fn user_add(config: &Config, a: UserAdd) -> anyhow::Result<()> {
    let identity = open(config).await?;
    let roles = parse_roles(&a.roles)?;
    let password = if a.directory {
        None
    } else {
        Some(read_password(&format!("Password for {}: ", a.username))?)
    };
    let account = identity
        .create_user(
            NewUser {
                username: a.username,
                password,
                roles,
                display_name: a.name,
                email: a.email,
                fhir_user: a.fhir_user,
            },
            &cli_actor(),
            &EventContext::cli(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!(
        "created user {} ({}), roles {}",
        account.username,
        account.id,
        account
            .roles
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join(",")
    );
    if identity.settings().mfa_required(&account.roles) {
        println!("MFA is required for these roles: the first login sets up an authenticator app");
    }
    Ok(())
}

pub async fn user_list(config: &Config, json_out: bool) -> anyhow::Result<()> {
    let identity = open(config).await?;
    let users = identity
        .list_users()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if json_out {
        let v: Vec<Value> = users
            .iter()
            .map(|u| {
                json!({
                    "id": u.id, "username": u.username, "roles": u.roles,
                    "disabled": u.disabled, "mfa": u.has_mfa(),
                    "source": match u.source { haven_identity::records::AccountSource::Local => "local", _ => "ldap" },
                    "fhirUser": u.fhir_user,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{:<24} {:<28} {:<8} {:<5} {:<6}",
        "USERNAME", "ROLES", "STATUS", "MFA", "SOURCE"
    );
    for u in users {
        println!(
            "{:<24} {:<28} {:<8} {:<5} {:<6}",
            u.username,
            u.roles
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(","),
            if u.disabled { "disabled" } else { "active" },
            if u.has_mfa() { "yes" } else { "no" },
            match u.source {
                haven_identity::records::AccountSource::Local => "local",
                _ => "ldap",
            }
        );
    }
    Ok(())
}

#[derive(Clone, Copy, Debug)]
pub enum UserChange {
    Disable,
    Enable,
    ResetMfa,
    SetPassword,
}

pub async fn user_change(
    config: &Config,
    username: &str,
    change: UserChange,
) -> anyhow::Result<()> {
    let identity = open(config).await?;
    let by = cli_actor();
    let ctx = EventContext::cli();
    let r = match change {
        UserChange::Disable => identity.disable_user(username, &by, &ctx).await,
        UserChange::Enable => identity.enable_user(username, &by, &ctx).await,
        UserChange::ResetMfa => identity.reset_mfa(username, &by, &ctx).await,
        UserChange::SetPassword => {
            let p = read_password(&format!("New password for {username}: "))?;
            identity.set_password(username, p, &by, &ctx).await
        }
    };
    let a = r.map_err(|e| anyhow::anyhow!("{e}"))?;
    let what = match change {
        UserChange::Disable => "disabled (its tokens stop working within seconds)",
        UserChange::Enable => "enabled",
        UserChange::ResetMfa => "has no second factor now; the next login enrols a new one",
        UserChange::SetPassword => "has a new password",
    };
    println!("user {} {what}", a.username);
    Ok(())
}

pub struct ClientAdd {
    pub id: String,
    pub name: Option<String>,
    pub public: bool,
    pub service: bool,
    pub redirect_uris: Vec<String>,
    pub jwks: Option<PathBuf>,
    pub generate_key: Option<PathBuf>,
    pub scope: String,
    pub offline: bool,
}

/// Writes a new Ed25519 key pair's private half as PKCS#8 PEM (owner-only) and returns the
/// public JWKS to register.
fn generate_client_key(path: &Path, client: &str) -> anyhow::Result<Value> {
    let kid = format!("{client}-1");
    let key = haven_crypto::TokenSigningKey::generate(&kid)
        .map_err(|e| anyhow::anyhow!("cannot generate a key: {e}"))?;
    let der = key.to_pkcs8_der();
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_slice());
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    crate::audit_cmd::write_private(path, pem.as_bytes())
        .with_context(|| format!("cannot write {} (it must not exist yet)", path.display()))?;
    Ok(json!({ "keys": [key.public_jwk()] }))
}

pub async fn client_add(config: &Config, a: ClientAdd) -> anyhow::Result<()> {
    if a.public && a.service {
        bail!(
            "a client is either --public (an app used by people) or --service (a backend system)"
        );
    }
    let jwks = match (&a.jwks, &a.generate_key) {
        (Some(_), Some(_)) => bail!("give either --jwks or --generate-key"),
        (Some(p), None) => Some(
            serde_json::from_slice(
                &std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?,
            )
            .with_context(|| format!("{} is not a JSON Web Key Set", p.display()))?,
        ),
        (None, Some(_)) | (None, None) => None,
    };
    let identity = open(config).await?;
    let jwks = match (&a.generate_key, jwks) {
        (Some(path), _) => Some(generate_client_key(path, &a.id)?),
        (None, j) => j,
    };
    let (kind, grants, role) = if a.service {
        (
            ClientKind::Confidential,
            vec!["client_credentials".to_owned()],
            Some(Role::Service),
        )
    } else {
        let mut g = vec!["authorization_code".to_owned()];
        if a.offline {
            g.push("refresh_token".into());
        }
        (
            if a.public {
                ClientKind::Public
            } else {
                ClientKind::Confidential
            },
            g,
            None,
        )
    };
    let client = identity
        .create_client(
            NewClient {
                id: a.id.clone(),
                name: a.name.unwrap_or_else(|| a.id.clone()),
                kind,
                redirect_uris: a.redirect_uris,
                jwks,
                scope: a.scope,
                grant_types: grants,
                role,
            },
            &cli_actor(),
            &EventContext::cli(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!(
        "registered client {} ({:?}), scope: {}",
        client.id, client.kind, client.scope
    );
    if let Some(p) = &a.generate_key {
        println!(
            "private key written to {} (keep it secret; it signs the client's assertions)",
            p.display()
        );
    }
    Ok(())
}

pub async fn client_list(config: &Config) -> anyhow::Result<()> {
    let identity = open(config).await?;
    println!(
        "{:<24} {:<13} {:<8} {:<30} SCOPE",
        "CLIENT", "KIND", "STATUS", "GRANTS"
    );
    for c in identity
        .list_clients()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
    {
        println!(
            "{:<24} {:<13} {:<8} {:<30} {}",
            c.id,
            format!("{:?}", c.kind).to_lowercase(),
            if c.revoked { "revoked" } else { "active" },
            c.grant_types.join(","),
            c.scope
        );
    }
    Ok(())
}

pub async fn client_revoke(config: &Config, id: &str) -> anyhow::Result<()> {
    let identity = open(config).await?;
    identity
        .revoke_client(id, &cli_actor(), &EventContext::cli())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!(
        "client {id} revoked: it gets no new tokens, and its tokens are refused within seconds"
    );
    Ok(())
}

pub async fn rotate_key(config: &Config) -> anyhow::Result<()> {
    let identity = open(config).await?;
    let kid = identity
        .rotate_signing_key(&cli_actor(), &EventContext::cli())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!(
        "new token signing key {kid}; the previous key stays published for {} h so tokens it signed keep working",
        haven_identity::keys::PUBLISH_OVERLAP.as_secs() / 3600
    );
    Ok(())
}

/// Reads a PKCS#8 PEM private key file.
fn read_pem_der(path: &Path) -> anyhow::Result<Vec<u8>> {
    crate::audit_cmd::check_private(path)?;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let b64: String = text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .join("");
    base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .with_context(|| format!("{} is not a PKCS#8 PEM key", path.display()))
}

/// `haven token`: SMART Backend Services client credentials with `private_key_jwt`; prints
/// the access token.
pub async fn token(
    config: &Config,
    client: &str,
    key: &Path,
    scope: Option<&str>,
    url: Option<&str>,
) -> anyhow::Result<()> {
    let root = url.map_or_else(
        || server_root(config),
        |u| u.trim_end_matches('/').to_owned(),
    );
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(15))
        .build()?;
    let discovery: Value = http
        .get(format!("{root}/.well-known/openid-configuration"))
        .send()
        .await
        .with_context(|| {
            format!(
                "cannot reach {root} (is the server running? use --url with Haven's own http:// \
                 address, e.g. http://127.0.0.1:8080)"
            )
        })?
        .error_for_status()?
        .json()
        .await?;
    let token_endpoint = discovery["token_endpoint"]
        .as_str()
        .context("the server's discovery document has no token_endpoint")?;
    let der = read_pem_der(key)?;
    let signer = haven_crypto::TokenSigningKey::from_pkcs8_der(format!("{client}-1"), &der)
        .map_err(|e| anyhow::anyhow!("{}: {e}", key.display()))?;
    let now = haven_domain::Timestamp::now().micros() / 1_000_000;
    let assertion = signer
        .sign(&json!({
            "iss": client, "sub": client, "aud": token_endpoint,
            "iat": now, "exp": now + 240, "jti": haven_crypto::random_token(),
        }))
        .map_err(|e| anyhow::anyhow!("cannot sign the assertion: {e}"))?;
    let mut form = vec![
        ("grant_type", "client_credentials".to_owned()),
        (
            "client_assertion_type",
            haven_identity::oauth::JWT_BEARER.to_owned(),
        ),
        ("client_assertion", assertion),
    ];
    if let Some(s) = scope {
        form.push(("scope", s.to_owned()));
    }
    // The assertion names the token endpoint the server announces (its public address, which
    // may be a gateway's); the request goes to the address given, e.g. loopback beside it.
    let post_to = format!("{root}/oauth/token");
    let resp = http
        .post(&post_to)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string(&form)?)
        .send()
        .await?;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!(
            "the token endpoint refused: {} ({})",
            body["error"].as_str().unwrap_or("?"),
            body["error_description"].as_str().unwrap_or("")
        );
    }
    println!("{}", body["access_token"].as_str().unwrap_or_default());
    Ok(())
}
