//! The identity module under operational stress: a login flood must not starve FHIR traffic,
//! stronger hashing parameters re-hash passwords at login, and the identity provider and the
//! FHIR API run as separate processes on one database.

use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::future::join_all;
use reqwest::header;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::helpers::{TestApp, client_assertion, haven, spawn_app_with, spawn_server};

const PASSWORD: &str = "correct horse battery staple 42";

/// `haven user add NAME --role ROLE` with [`PASSWORD`] on stdin.
async fn add_user(app: &TestApp, name: &str, role: &str) {
    let mut child = app
        .cli()
        .args(["user", "add", name, "--role", role])
        .env("HAVEN_LOG__LEVEL", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(format!("{PASSWORD}\n").as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A plain HTTP client: no suite token, no redirects.
fn browser() -> reqwest::Client {
    crate::helpers::http_client()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// Opens a login form: (login cookie, csrf token).
async fn login_form(app: &TestApp) -> (String, String) {
    let resp = browser()
        .get(format!("{}/oauth/login", app.root))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let cookie = resp
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("__Host-haven-login="))
        .and_then(|c| c.split(';').next())
        .expect("a login cookie")
        .to_owned();
    let html = resp.text().await.unwrap();
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("a csrf field")
        .to_owned();
    (cookie, csrf)
}

/// Posts a login from a given client address (the gateway's `X-Forwarded-For`).
async fn post_login(
    app: &TestApp,
    form: &(String, String),
    user: &str,
    password: &str,
    from: &str,
) -> reqwest::Response {
    browser()
        .post(format!("{}/oauth/login", app.root))
        .header(header::COOKIE, &form.0)
        .header("x-forwarded-for", from)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(
            serde_urlencoded::to_string([
                ("csrf", form.1.as_str()),
                ("username", user),
                ("password", password),
            ])
            .unwrap(),
        )
        .send()
        .await
        .unwrap()
}

/// Hundreds of concurrent logins from as many addresses (each under its throttles, so each
/// reaches the password hasher): the hasher's bounded queue turns the excess away with 503 and
/// `Retry-After` at once, and FHIR reads keep being answered while the flood lasts.
#[tokio::test]
async fn a_login_flood_is_turned_away_and_does_not_starve_fhir_reads() {
    let app = spawn_app_with(&[
        ("HAVEN_TRUSTED_PROXIES", "127.0.0.1"),
        ("HAVEN_IDENTITY__MFA_REQUIRED_ROLES", "admin"),
    ])
    .await;
    let patient = app
        .create(&json!({"resourceType": "Patient", "gender": "other"}))
        .await;
    let path = format!("Patient/{}", patient["id"].as_str().unwrap());

    const LOGINS: usize = 160;
    let mut forms = Vec::new();
    for _ in 0..LOGINS {
        forms.push(login_form(&app).await);
    }
    let started = Instant::now();
    let flood = join_all(forms.iter().enumerate().map(|(i, f)| {
        let app = &app;
        async move {
            let from = format!("10.9.{}.{}", i / 250, i % 250 + 1);
            let resp = post_login(app, f, &format!("nobody{i}"), "wrong password 123", &from).await;
            let status = resp.status().as_u16();
            let retry = resp.headers().contains_key(header::RETRY_AFTER);
            (status, retry, started.elapsed())
        }
    }));
    let reads = async {
        // Let the flood fill the hasher first.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut took = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            let r = app.get(&path).await;
            r.assert_status(200);
            took.push((t.elapsed(), started.elapsed()));
        }
        took
    };
    let (logins, reads) = tokio::join!(flood, reads);

    let busy = logins.iter().filter(|(s, _, _)| *s == 503).count();
    let refused = logins.iter().filter(|(s, _, _)| *s == 401).count();
    assert_eq!(
        busy + refused,
        LOGINS,
        "every login is refused (401) or turned away (503): {:?}",
        logins.iter().map(|(s, _, _)| s).collect::<Vec<_>>()
    );
    assert!(
        busy > 0,
        "the bounded hashing queue never turned a login away"
    );
    assert!(
        logins
            .iter()
            .filter(|(s, _, _)| *s == 503)
            .all(|(_, r, _)| *r),
        "a 503 without Retry-After"
    );
    let flood_end = logins.iter().map(|(_, _, at)| *at).max().unwrap();
    let last_read = reads.iter().map(|(_, at)| *at).max().unwrap();
    let slowest = reads.iter().map(|(d, _)| *d).max().unwrap();
    // The reads finished while logins were still being hashed: they were not queued behind
    // the flood. (Generous bound: a debug build on two shared cores.)
    assert!(
        last_read < flood_end || slowest < Duration::from_secs(2),
        "FHIR reads waited for the login flood: slowest read {slowest:?}, reads done at \
         {last_read:?}, flood done at {flood_end:?}"
    );
    assert!(slowest < Duration::from_secs(5), "a read took {slowest:?}");
    eprintln!(
        "login flood: {busy} turned away (503), {refused} refused (401), flood {flood_end:?}; \
         20 FHIR reads done at {last_read:?}, slowest {slowest:?}"
    );
    // The flood was counted where operators look.
    let metrics = app.get_root("/metrics").await.text();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("haven_login_hash_rejected_total") && !l.ends_with(" 0")),
        "haven_login_hash_rejected_total did not count the turned-away logins"
    );
}

/// The account record's password hash, read from the database as an attacker with a copy
/// would see it (only to check its parameters).
async fn stored_hash(app: &TestApp, user: &str) -> String {
    let bodies: Vec<Vec<u8>> = match app.database_url() {
        Some(url) => {
            let pool = sqlx::PgPool::connect(&url).await.unwrap();
            sqlx::query_scalar("SELECT body FROM identity_record WHERE kind = 'account'")
                .fetch_all(&pool)
                .await
                .unwrap()
        }
        None => {
            let url = format!(
                "sqlite://{}?mode=ro",
                app.data_dir.join("haven.db").display()
            );
            let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
            sqlx::query_scalar("SELECT body FROM identity_record WHERE kind = 'account'")
                .fetch_all(&pool)
                .await
                .unwrap()
        }
    };
    bodies
        .iter()
        .map(|b| serde_json::from_slice::<Value>(b).unwrap())
        .find(|a| a["username"] == user)
        .and_then(|a| a["password_hash"].as_str().map(str::to_owned))
        .expect("the account has a password hash")
}

/// Raising the Argon2id parameters re-hashes a password at its next successful login (the
/// only moment it is known), and never at a failed one.
#[tokio::test]
async fn stronger_hash_parameters_rehash_passwords_at_login() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let env = [("HAVEN_IDENTITY__MFA_REQUIRED_ROLES", "admin")];
    let mut first = crate::helpers::spawn_app_in(&data, &env).await;
    add_user(&first, "carol", "clinician").await;
    let before = stored_hash(&first, "carol").await;
    assert!(before.contains("m=19456,t=2,p=1"), "{before}");
    // Stopped but kept: on PostgreSQL it holds the test's database for the restart.
    first.sigkill().await;

    let stronger = [
        ("HAVEN_IDENTITY__MFA_REQUIRED_ROLES", "admin"),
        ("HAVEN_IDENTITY__ARGON2_MEMORY_KIB", "24576"),
        ("HAVEN_IDENTITY__ARGON2_ITERATIONS", "3"),
    ];
    let mut app = crate::helpers::spawn_app_in(&data, &stronger).await;
    let form = login_form(&app).await;
    assert_eq!(
        post_login(&app, &form, "carol", "not the password 1", "127.0.0.1")
            .await
            .status(),
        401
    );
    assert_eq!(
        stored_hash(&app, "carol").await,
        before,
        "a failed login re-hashed"
    );
    let form = login_form(&app).await;
    let ok = post_login(&app, &form, "carol", PASSWORD, "127.0.0.1").await;
    assert_eq!(ok.status(), 200, "{}", ok.text().await.unwrap());
    let after = stored_hash(&app, "carol").await;
    assert!(after.contains("m=24576,t=3,p=1"), "not re-hashed: {after}");
    assert_ne!(after, before);
    app.sigkill().await;
}

/// `haven serve --role identity` and `--role fhir` as two processes on one database: the token
/// one issues is accepted by the other, and each serves only its own module.
#[tokio::test]
async fn identity_and_fhir_roles_run_as_separate_processes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Behind one gateway both have the same public address; the issuer and audience follow it.
    let env = [("HAVEN_PUBLIC_URL", "https://ehr.example.test/fhir")];
    let identity = spawn_server(&data, &env, &["--role", "identity"]).await;
    let fhir = spawn_server(&data, &env, &["--role", "fhir"]).await;

    let pem = std::fs::read_to_string(data.with_file_name("data.client.pem")).unwrap();
    let assertion = client_assertion(
        &pem,
        crate::helpers::SUITE_CLIENT,
        "https://ehr.example.test/oauth/token",
    );
    let resp = browser()
        .post(format!("{}/oauth/token", identity.root))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(
            serde_urlencoded::to_string([
                ("grant_type", "client_credentials"),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_assertion", assertion.as_str()),
            ])
            .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let token: Value = resp.json().await.unwrap();
    let token = token["access_token"].as_str().unwrap().to_owned();

    let read = browser()
        .get(format!("{}/fhir/Patient", fhir.root))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200, "{}", read.text().await.unwrap());
    // Each process serves its own module only.
    let no_fhir = browser()
        .get(format!("{}/fhir/Patient", identity.root))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(no_fhir.status(), 404);
    let no_token_endpoint = browser()
        .post(format!("{}/oauth/token", fhir.root))
        .send()
        .await
        .unwrap();
    assert_eq!(no_token_endpoint.status(), 404);
    // The FHIR process checks revocation against the shared database: a client revoked by the
    // administrator is refused there too.
    let out = haven()
        .args([
            "client",
            "revoke",
            crate::helpers::SUITE_CLIENT,
            "--data-dir",
        ])
        .arg(&data)
        .envs(
            fhir.database_url()
                .map(|u| ("HAVEN_DATABASE_URL".to_owned(), u)),
        )
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut refused = false;
    for _ in 0..50 {
        let r = browser()
            .get(format!("{}/fhir/Patient", fhir.root))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        if r.status() == 401 {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        refused,
        "the revoked client's token still works at the FHIR process"
    );
}

/// `haven identity rotate-key`: a replica started after the rotation signs with the new key;
/// the first replica accepts those tokens (it reloads the keys on an unknown `kid`), and tokens
/// signed with the old key keep working on both during the overlap. Both publish both keys.
#[tokio::test]
async fn signing_key_rotation_keeps_old_tokens_valid_and_spreads_to_every_replica() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Replicas behind one gateway: one public address, so one issuer and audience.
    let env = [("HAVEN_PUBLIC_URL", "https://ehr.example.test/fhir")];
    let first = crate::helpers::spawn_app_in(&data, &env).await;
    let old_token = first.token.clone();
    assert!(!old_token.is_empty(), "{}", first.stderr());
    let kid_of = |t: &str| -> String {
        use base64::Engine as _;
        let header = t.split('.').next().unwrap();
        let v: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(header)
                .unwrap(),
        )
        .unwrap();
        v["kid"].as_str().unwrap().to_owned()
    };
    let old_kid = kid_of(&old_token);

    let out = first
        .cli()
        .args(["identity", "rotate-key"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let second = crate::helpers::spawn_app_in(&data, &env).await;
    let new_token = second.token.clone();
    let new_kid = kid_of(&new_token);
    assert_ne!(
        old_kid, new_kid,
        "the replica started after the rotation signs with the old key"
    );

    for app in [&first, &second] {
        for token in [&old_token, &new_token] {
            let r = browser()
                .get(format!("{}/fhir/Patient", app.root))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            assert_eq!(
                r.status(),
                200,
                "{} refused a token: {}",
                app.root,
                r.text().await.unwrap()
            );
        }
    }
    let jwks: Value = browser()
        .get(format!("{}/.well-known/jwks.json", first.root))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k["kid"].as_str())
        .collect();
    assert!(
        kids.contains(&old_kid.as_str()) && kids.contains(&new_kid.as_str()),
        "{kids:?}"
    );
    // The rotation is in the audit trail, attributed to the operator.
    let first_saw = first
        .wait_for_log(|l| l.contains("\"signing-key-rotate\""))
        .await;
    let second_saw = second
        .logs()
        .iter()
        .any(|l| l.contains("\"signing-key-rotate\""));
    assert!(
        first_saw.is_some() || second_saw,
        "no signing-key-rotate audit line from either replica"
    );
}

/// `haven user reset-mfa`: the user enrols again at the next login; the reset is audited.
#[tokio::test]
async fn reset_mfa_makes_the_next_login_enrol_again() {
    let app = spawn_app_with(&[]).await;
    add_user(&app, "dora", "nurse").await;
    // First login: enrolment, completed.
    let form = login_form(&app).await;
    let page = post_login(&app, &form, "dora", PASSWORD, "127.0.0.1").await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    let secret = html
        .split("<code id=\"secret\">")
        .nth(1)
        .and_then(|r| r.split('<').next())
        .expect("an enrolment page with the key")
        .to_owned();
    let totp = haven_crypto::TotpSecret::from_base32(&secret).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let code = haven_crypto::totp_code(&totp, now / 30);
    let done = browser()
        .post(format!("{}/oauth/enrol", app.root))
        .header(header::COOKIE, &form.0)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(
            serde_urlencoded::to_string([("csrf", form.1.as_str()), ("code", code.as_str())])
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 200);
    assert!(done.text().await.unwrap().contains("recovery-codes"));
    // Second login: the second factor is asked for, not enrolment.
    let form = login_form(&app).await;
    let html = post_login(&app, &form, "dora", PASSWORD, "127.0.0.1")
        .await
        .text()
        .await
        .unwrap();
    assert!(html.contains("action=\"/oauth/mfa\""), "{html}");
    // After the reset, enrolment again.
    let out = app
        .cli()
        .args(["user", "reset-mfa", "dora"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let form = login_form(&app).await;
    let html = post_login(&app, &form, "dora", PASSWORD, "127.0.0.1")
        .await
        .text()
        .await
        .unwrap();
    assert!(html.contains("action=\"/oauth/enrol\""), "{html}");
    assert!(
        app.wait_for_log(|l| l.contains("\"mfa-reset\""))
            .await
            .is_some(),
        "the reset is not in the audit trail"
    );
}

/// Unauthenticated identity work is bounded per client address: past 600 login starts in a
/// minute an address gets 429 with `Retry-After`, while another address is still served.
#[tokio::test]
async fn unauthenticated_identity_requests_are_limited_per_address() {
    let app = spawn_app_with(&[("HAVEN_TRUSTED_PROXIES", "127.0.0.1")]).await;
    let start = |from: &'static str| {
        browser()
            .get(format!("{}/oauth/login", app.root))
            .header("x-forwarded-for", from)
            .send()
    };
    let mut limited_at = None;
    for i in 0..700 {
        let r = start("10.7.7.7").await.unwrap();
        if r.status() == 429 {
            assert!(r.headers().contains_key(header::RETRY_AFTER));
            limited_at = Some(i);
            break;
        }
        assert_eq!(r.status(), 200);
    }
    assert_eq!(
        limited_at,
        Some(600),
        "the 601st start in a minute is refused"
    );
    assert_eq!(start("10.7.7.8").await.unwrap().status(), 200);
}
