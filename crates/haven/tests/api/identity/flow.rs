//! The authorization-code flow as a SMART app and its user go through it (SMART App Launch
//! 2.x; RFC 6749 §4.1, RFC 7636 PKCE, RFC 9700 refresh-token rotation): the request checked
//! before anyone signs in, login with a TOTP second factor (enrolled at the first login),
//! recovery codes, consent, the code's redemption, the tokens, and what ends them.

use std::collections::BTreeMap;
use std::time::Duration;

use haven_crypto::{TotpSecret, totp_code};
use serde_json::Value;

use super::{
    APP, APP_SCOPE, Authorization, Browser, NO_CLINICIAN_MFA, PASSWORD, Page, Pkce, REDIRECT_URI,
    add_app, add_user, anonymous, approve, assert_invalid_token, assert_oauth_error, decode_jwt,
    fhir_get, fhir_post, now, password_flow, post_form, redeem, refresh, spawn_configured,
    suite_key, wait_for_status, with_assertion,
};
use crate::helpers::{SUITE_CLIENT, TestApp, assert_outcome, patient, spawn_app};

/// The user's authenticator app: codes for the current 30-second step, never for a step
/// already used (Haven accepts each step once, and one step either side of its clock).
pub(crate) struct Authenticator {
    secret: TotpSecret,
    last: Option<u64>,
}

impl Authenticator {
    pub(crate) fn new(base32: &str) -> Self {
        Self {
            secret: TotpSecret::from_base32(base32).expect("a base32 TOTP key"),
            last: None,
        }
    }

    /// A code the server accepts now (waits for the next step when it must).
    pub(crate) async fn next_code(&mut self) -> String {
        loop {
            let current = u64::try_from(now()).unwrap() / 30;
            let step = self.last.map_or(current, |l| (l + 1).max(current));
            if step <= current + 1 {
                self.last = Some(step);
                return totp_code(&self.secret, step);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// A code for a step the server does not accept now.
    pub(crate) fn wrong_code(&self) -> String {
        let current = u64::try_from(now()).unwrap() / 30;
        let valid: Vec<String> = (current - 1..=current + 1)
            .map(|s| totp_code(&self.secret, s))
            .collect();
        (current + 10..)
            .map(|s| totp_code(&self.secret, s))
            .find(|c| !valid.contains(c))
            .unwrap()
    }
}

/// Starts the app's authorization request and signs in with the password; returns the page
/// that follows (second factor, enrolment or consent).
async fn sign_in(browser: &mut Browser, authz: &Authorization, username: &str) -> Page {
    let login = browser.get(&authz.path()).await;
    login.assert_status(200);
    assert_eq!(login.title(), "Sign in", "{}", login.body);
    browser
        .post(
            "/oauth/login",
            &[
                ("csrf", &login.csrf()),
                ("username", username),
                ("password", PASSWORD),
            ],
        )
        .await
}

/// The first login of a user who must use a second factor: password, TOTP enrolment (with
/// a wrong first code refused), recovery codes. Returns the consent page's path too.
pub(crate) async fn enrol(
    browser: &mut Browser,
    authz: &Authorization,
    username: &str,
) -> (Authenticator, Vec<String>, String) {
    let page = sign_in(browser, authz, username).await;
    page.assert_status(200);
    assert_eq!(page.title(), "Set up a second factor", "{}", page.body);
    assert!(!browser.signed_in(), "a session before the second factor");
    let csrf = page.csrf();
    let mut auth = Authenticator::new(&page.element("secret").expect("the TOTP key is shown"));
    let bad = browser
        .post(
            "/oauth/enrol",
            &[("csrf", &csrf), ("code", &auth.wrong_code())],
        )
        .await;
    bad.assert_status(401);
    assert!(
        !browser.signed_in(),
        "a session after a wrong enrolment code"
    );
    // The same key is offered again, so the user can simply retry.
    assert_eq!(bad.title(), "Set up a second factor", "{}", bad.body);
    assert_eq!(bad.element("secret"), page.element("secret"));
    let done = browser
        .post(
            "/oauth/enrol",
            &[("csrf", &csrf), ("code", &auth.next_code().await)],
        )
        .await;
    done.assert_status(200);
    assert_eq!(done.title(), "Recovery codes", "{}", done.body);
    assert!(browser.signed_in());
    let codes = done.recovery_codes();
    assert_eq!(codes.len(), 10, "{}", done.body);
    let mut distinct = codes.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 10);
    let next = done
        .link("continue")
        .expect("a link on to the consent page");
    assert!(next.starts_with("/oauth/consent?request="), "{next}");
    (auth, codes, next)
}

#[tokio::test]
async fn the_code_flow_enrols_a_second_factor_and_issues_tokens_that_work() {
    let app = spawn_app().await;
    add_user(&app, "nina", "clinician").await;
    add_app(&app).await;
    let subject = app.create(&patient()).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let authz = Authorization::new(&app, APP_SCOPE);
    let mut browser = Browser::new(&app);
    let (_, _, next) = enrol(&mut browser, &authz, "nina").await;
    let consent = browser.get(&next).await;
    consent.assert_status(200);
    assert!(
        consent.body.contains("launch/patient"),
        "the scopes are shown: {}",
        consent.body
    );
    let params = approve(&app, &mut browser, &consent, &authz, &subject).await;

    let resp = redeem(&app, &params["code"], &authz.pkce.verifier).await;
    resp.assert_status(200);
    let tokens = resp.json();
    assert_eq!(tokens["token_type"], "Bearer");
    assert!(
        tokens["expires_in"]
            .as_i64()
            .is_some_and(|e| (1..=300).contains(&e)),
        "{tokens}"
    );
    assert_eq!(tokens["patient"], subject.as_str());
    let scope = tokens["scope"].as_str().unwrap();
    for s in [
        "openid",
        "fhirUser",
        "offline_access",
        "user/*.rs",
        "launch/patient",
    ] {
        assert!(scope.split(' ').any(|x| x == s), "{s} not granted: {scope}");
    }

    // The ID token: for this app, this login (nonce), with both factors.
    let (h, id) = decode_jwt(tokens["id_token"].as_str().expect("an ID token"));
    assert_eq!(h["alg"], "EdDSA");
    assert_eq!(id["iss"], app.root.as_str());
    assert_eq!(id["aud"], APP);
    assert_eq!(id["nonce"], authz.nonce.as_str());
    assert_eq!(id["preferred_username"], "nina");
    let amr: Vec<&str> = id["amr"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(amr.contains(&"pwd") && amr.contains(&"otp"), "{amr:?}");
    // The access token: for the FHIR base, with the patient context.
    let access = tokens["access_token"].as_str().unwrap();
    let (h, claims) = decode_jwt(access);
    assert_eq!(h["typ"], "at+jwt");
    assert_eq!(claims["aud"], app.base.as_str());
    assert_eq!(claims["sub"], id["sub"]);
    assert_eq!(claims["patient"], subject.as_str());

    // It reads (user/*.rs) and writes nothing.
    fhir_get(&app, access, "Patient").await.assert_status(200);
    fhir_get(&app, access, &format!("Patient/{subject}"))
        .await
        .assert_status(200);
    let resp = fhir_post(&app, access, "Patient", &patient()).await;
    assert_outcome(&resp, 403, "forbidden");
    assert!(
        resp.header("www-authenticate")
            .is_some_and(|c| c.contains("error=\"insufficient_scope\""))
    );

    // userinfo names the user.
    let info = anonymous()
        .get(format!("{}/oauth/userinfo", app.root))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(info.status(), 200);
    let info: Value = info.json().await.unwrap();
    assert_eq!(info["preferred_username"], "nina");
    assert_eq!(info["sub"], id["sub"]);

    // Refresh-token rotation: a refresh gives a new refresh token and a working access token;
    // the old refresh token used again is taken for stolen: refused, and its whole family
    // (the new one too) revoked (RFC 9700 §4.14.2).
    let old = tokens["refresh_token"]
        .as_str()
        .expect("a refresh token (offline_access)");
    let resp = refresh(&app, old).await;
    resp.assert_status(200);
    let rotated = resp.json();
    let new = rotated["refresh_token"]
        .as_str()
        .expect("a rotated refresh token");
    assert_ne!(new, old);
    fhir_get(&app, rotated["access_token"].as_str().unwrap(), "Patient")
        .await
        .assert_status(200);
    // A made-up secret for a known family id is just invalid: it revokes nothing.
    let family = new.split('.').next().unwrap();
    assert_oauth_error(
        &refresh(&app, &format!("{family}.made-up-secret")).await,
        400,
        "invalid_grant",
        "a forged secret",
    );
    let resp = refresh(&app, new).await;
    resp.assert_status(200);
    let new = resp.json()["refresh_token"].as_str().unwrap().to_owned();
    let new = new.as_str();
    assert_oauth_error(
        &refresh(&app, old).await,
        400,
        "invalid_grant",
        "the old refresh token again",
    );
    assert_oauth_error(
        &refresh(&app, new).await,
        400,
        "invalid_grant",
        "the new refresh token after reuse",
    );
}

#[tokio::test]
async fn authorization_requests_are_checked_before_anyone_signs_in() {
    let app = spawn_app().await;
    add_app(&app).await;
    let mut browser = Browser::new(&app);
    let plain = Pkce::new();

    // Errors sent back to the (registered) redirect URI, with state and iss.
    let cases: Vec<(&str, Authorization, &str)> = vec![
        (
            "no code_challenge",
            Authorization::new(&app, APP_SCOPE).with("code_challenge", None),
            "invalid_request",
        ),
        (
            "plain PKCE",
            Authorization::new(&app, APP_SCOPE)
                .with("code_challenge", Some(&plain.verifier))
                .with("code_challenge_method", Some("plain")),
            "invalid_request",
        ),
        (
            "no code_challenge_method (would mean plain)",
            Authorization::new(&app, APP_SCOPE).with("code_challenge_method", None),
            "invalid_request",
        ),
        (
            "response_type token",
            Authorization::new(&app, APP_SCOPE).with("response_type", Some("token")),
            "unsupported_response_type",
        ),
        (
            "another server's aud",
            Authorization::new(&app, APP_SCOPE).with("aud", Some("https://other.example/fhir")),
            "invalid_request",
        ),
        (
            "no allowed scope",
            Authorization::new(&app, "system/*.cruds"),
            "invalid_scope",
        ),
    ];
    for (what, authz, error) in cases {
        let page = browser.get(&authz.path()).await;
        let params = page.redirect_params();
        assert_eq!(
            params.get("error").map(String::as_str),
            Some(error),
            "{what}: {params:?}"
        );
        assert_eq!(params.get("state"), Some(&authz.state), "{what}");
        assert_eq!(params.get("iss"), Some(&app.root), "{what}");
        assert!(!params.contains_key("code"), "{what}");
    }
    // Without state: refused too (state is the client's CSRF protection).
    let page = browser
        .get(
            &Authorization::new(&app, APP_SCOPE)
                .with("state", None)
                .path(),
        )
        .await;
    let params = page.redirect_params();
    assert_eq!(
        params.get("error").map(String::as_str),
        Some("invalid_request"),
        "{params:?}"
    );
    assert!(!params.contains_key("code"));

    // A redirect URI that is not registered exactly, or an unknown client: an error page,
    // never a redirect (RFC 6749 §4.1.2.1).
    for (what, authz) in [
        (
            "another host",
            Authorization::new(&app, APP_SCOPE)
                .with("redirect_uri", Some("http://evil.example/cb")),
        ),
        (
            "a longer path",
            Authorization::new(&app, APP_SCOPE)
                .with("redirect_uri", Some(&format!("{REDIRECT_URI}x"))),
        ),
        (
            "an added query",
            Authorization::new(&app, APP_SCOPE).with(
                "redirect_uri",
                Some(&format!("{REDIRECT_URI}?next=http://evil.example")),
            ),
        ),
        (
            "a dot segment",
            Authorization::new(&app, APP_SCOPE)
                .with("redirect_uri", Some("http://127.0.0.1:9/cb/../evil")),
        ),
        (
            "no redirect_uri",
            Authorization::new(&app, APP_SCOPE).with("redirect_uri", None),
        ),
        (
            "an unknown client",
            Authorization::new(&app, APP_SCOPE).with("client_id", Some("nobody")),
        ),
        (
            "no client",
            Authorization::new(&app, APP_SCOPE).with("client_id", None),
        ),
    ] {
        let page = browser.get(&authz.path()).await;
        assert_eq!(page.status, 400, "{what}: {}", page.body);
        assert!(page.header("location").is_none(), "{what}: redirected");
        assert!(
            page.header("content-type")
                .is_some_and(|c| c.starts_with("text/html")),
            "{what}"
        );
    }
    // None of those started a login.
    assert!(browser.cookies.is_empty(), "{:?}", browser.cookies);
    // The same request done right does (the baseline).
    let page = browser
        .get(&Authorization::new(&app, APP_SCOPE).path())
        .await;
    page.assert_status(200);
    assert_eq!(page.title(), "Sign in");
    assert!(browser.cookies.contains_key("__Host-haven-login"));
}

#[tokio::test]
async fn later_logins_ask_for_the_second_factor_which_works_once_per_code() {
    let app = spawn_app().await;
    add_user(&app, "olga", "clinician").await;
    add_app(&app).await;
    let mut browser = Browser::new(&app);
    let (mut auth, recovery, next) =
        enrol(&mut browser, &Authorization::new(&app, APP_SCOPE), "olga").await;

    // Logout ends the session, on the server too: a copy of the cookie that worked before
    // is worth nothing after.
    let mut replay = Browser::new(&app);
    replay.cookies.insert(
        "__Host-haven-session".into(),
        browser.cookies["__Host-haven-session"].clone(),
    );
    replay.get(&next).await.assert_status(200);
    let out = browser.get("/oauth/logout").await;
    out.assert_status(200);
    assert!(!browser.signed_in(), "the cookie is cleared");
    replay.get(&next).await.assert_status(401);
    let page = replay
        .get(&Authorization::new(&app, APP_SCOPE).path())
        .await;
    assert_eq!(
        page.title(),
        "Sign in",
        "a logged-out session skipped the login"
    );

    // The next login asks for a code; a wrong one is refused.
    let authz = Authorization::new(&app, APP_SCOPE);
    let page = sign_in(&mut browser, &authz, "olga").await;
    page.assert_status(200);
    assert_eq!(page.title(), "Second factor", "{}", page.body);
    let csrf = page.csrf();
    let wrong = browser
        .post(
            "/oauth/mfa",
            &[("csrf", &csrf), ("code", &auth.wrong_code())],
        )
        .await;
    wrong.assert_status(401);
    assert!(!browser.signed_in());
    let code = auth.next_code().await;
    let consent = browser
        .post("/oauth/mfa", &[("csrf", &csrf), ("code", &code)])
        .await;
    consent.assert_status(200);
    assert!(browser.signed_in());
    let params = approve(&app, &mut browser, &consent, &authz, "p1").await;
    let tokens = redeem(&app, &params["code"], &authz.pkce.verifier).await;
    tokens.assert_status(200);
    let (_, id) = decode_jwt(tokens.json()["id_token"].as_str().unwrap());
    assert!(
        id["amr"].as_array().unwrap().iter().any(|m| m == "otp"),
        "{id}"
    );
    browser.get("/oauth/logout").await.assert_status(200);

    // The same code again, in a new login, still within its 30 s window: refused.
    let mfa = async |browser: &mut Browser, code: &str| {
        let page = sign_in(browser, &Authorization::new(&app, APP_SCOPE), "olga").await;
        assert_eq!(page.title(), "Second factor", "{}", page.body);
        browser
            .post("/oauth/mfa", &[("csrf", &page.csrf()), ("code", code)])
            .await
    };
    let page = mfa(&mut browser, &code).await;
    let step = auth.last.unwrap();
    assert!(
        u64::try_from(now()).unwrap() / 30 <= step + 1,
        "the replay came after the code's window: it proves nothing"
    );
    assert_eq!(page.status, 401, "a TOTP code replayed: {}", page.body);
    assert!(!browser.signed_in());
    // A recovery code works, once.
    let page = mfa(&mut browser, &recovery[0]).await;
    page.assert_status(200);
    assert_eq!(page.title(), "Allow access?");
    browser.get("/oauth/logout").await.assert_status(200);
    let page = mfa(&mut browser, &recovery[0]).await;
    assert_eq!(
        page.status, 401,
        "a recovery code used twice: {}",
        page.body
    );
    assert!(!browser.signed_in());
    let page = mfa(&mut browser, &recovery[1]).await;
    page.assert_status(200);
    assert!(browser.signed_in());
}

/// A code for [`APP`] from a browser that is signed in already.
async fn code_in_session(app: &TestApp, browser: &mut Browser, authz: &Authorization) -> String {
    let consent = browser.get(&authz.path()).await;
    consent.assert_status(200);
    approve(app, browser, &consent, authz, "").await["code"].clone()
}

#[tokio::test]
async fn a_code_is_redeemed_once_by_its_client_with_its_verifier() {
    let app = spawn_configured(NO_CLINICIAN_MFA).await;
    add_user(&app, "pat", "clinician").await;
    add_app(&app).await;
    super::cli(
        &app,
        &[
            "client",
            "add",
            "other-app",
            "--public",
            "--redirect-uri",
            REDIRECT_URI,
            "--scope",
            APP_SCOPE,
        ],
        None,
    )
    .await;
    let scope = "openid offline_access user/*.rs";
    let mut browser = Browser::new(&app);
    let authz = Authorization::new(&app, scope);
    let consent = sign_in(&mut browser, &authz, "pat").await;
    let code = approve(&app, &mut browser, &consent, &authz, "").await["code"].clone();

    // Replay: the second redemption fails, and what the first one issued is revoked (RFC 6749
    // §4.1.2: the code was stolen, so its tokens are suspect).
    let first = redeem(&app, &code, &authz.pkce.verifier).await;
    first.assert_status(200);
    let refresh_token = first.json()["refresh_token"].as_str().unwrap().to_owned();
    assert_oauth_error(
        &redeem(&app, &code, &authz.pkce.verifier).await,
        400,
        "invalid_grant",
        "code replay",
    );
    assert_oauth_error(
        &refresh(&app, &refresh_token).await,
        400,
        "invalid_grant",
        "refresh after code replay",
    );

    // A wrong verifier fails, and spends the code: no second guess.
    let authz = Authorization::new(&app, scope);
    let code = code_in_session(&app, &mut browser, &authz).await;
    assert_oauth_error(
        &redeem(&app, &code, &Pkce::new().verifier).await,
        400,
        "invalid_grant",
        "wrong verifier",
    );
    assert_oauth_error(
        &redeem(&app, &code, &authz.pkce.verifier).await,
        400,
        "invalid_grant",
        "after a wrong verifier",
    );

    // Without a verifier, with another redirect URI, or by another client: refused.
    let token_form = |code: &str,
                      verifier: Option<&str>,
                      redirect: &str,
                      client: &str|
     -> Vec<(String, String)> {
        let mut f = vec![
            ("grant_type".to_owned(), "authorization_code".to_owned()),
            ("code".to_owned(), code.to_owned()),
            ("redirect_uri".to_owned(), redirect.to_owned()),
            ("client_id".to_owned(), client.to_owned()),
        ];
        if let Some(v) = verifier {
            f.push(("code_verifier".to_owned(), v.to_owned()));
        }
        f
    };
    for (what, verifier, redirect, client) in [
        ("no verifier", false, REDIRECT_URI, APP),
        (
            "another redirect_uri",
            true,
            "http://127.0.0.1:9/other",
            APP,
        ),
        ("another client", true, REDIRECT_URI, "other-app"),
    ] {
        let authz = Authorization::new(&app, scope);
        let code = code_in_session(&app, &mut browser, &authz).await;
        let form = token_form(
            &code,
            verifier.then_some(authz.pkce.verifier.as_str()),
            redirect,
            client,
        );
        let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_oauth_error(
            &post_form(&app, "/oauth/token", &form).await,
            400,
            "invalid_grant",
            what,
        );
    }

    // Consent needs the session's CSRF token; a denial goes back as access_denied.
    let authz = Authorization::new(&app, scope);
    let consent = browser.get(&authz.path()).await;
    let request = consent.input("request").unwrap();
    let page = browser
        .post(
            "/oauth/consent",
            &[
                ("csrf", "forged"),
                ("request", &request),
                ("decision", "approve"),
            ],
        )
        .await;
    assert_eq!(page.status, 400, "{}", page.body);
    assert!(page.header("location").is_none());
    let page = browser
        .post(
            "/oauth/consent",
            &[
                ("csrf", &consent.csrf()),
                ("request", &request),
                ("decision", "deny"),
            ],
        )
        .await;
    let params: BTreeMap<String, String> = page.redirect_params();
    assert_eq!(
        params.get("error").map(String::as_str),
        Some("access_denied")
    );
    assert_eq!(params.get("state"), Some(&authz.state));
    assert!(!params.contains_key("code"));
    // Baseline: done right, a code from this session is redeemed.
    let authz = Authorization::new(&app, scope);
    let code = code_in_session(&app, &mut browser, &authz).await;
    redeem(&app, &code, &authz.pkce.verifier)
        .await
        .assert_status(200);
}

#[tokio::test]
async fn introspection_shows_live_tokens_to_confidential_clients_until_revoked() {
    let app = spawn_configured(NO_CLINICIAN_MFA).await;
    add_user(&app, "quinn", "clinician").await;
    add_app(&app).await;
    let tokens = password_flow(&app, "quinn", "openid offline_access user/*.rs", "").await;
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let refresh_token = tokens["refresh_token"].as_str().unwrap().to_owned();
    let key = suite_key(&app);
    let introspect = async |token: &str| -> Value {
        let assertion = key
            .sign(&super::assertion_claims(&app, SUITE_CLIENT))
            .unwrap();
        let resp = post_form(
            &app,
            "/oauth/introspect",
            &with_assertion(&[("token", token)], &assertion),
        )
        .await;
        resp.assert_status(200);
        resp.json()
    };

    let v = introspect(&access).await;
    assert_eq!(v["active"], true, "{v}");
    assert_eq!(v["client_id"], APP);
    assert_eq!(v["username"], "quinn");
    assert!(v["exp"].as_i64().is_some_and(|e| e > now()), "{v}");
    let v = introspect(&refresh_token).await;
    assert_eq!(v["active"], true, "{v}");
    assert_eq!(v["token_type"], "refresh_token");
    assert_eq!(
        introspect("not-a-token").await,
        serde_json::json!({ "active": false })
    );

    // Public clients may not introspect (they cannot authenticate).
    let resp = post_form(
        &app,
        "/oauth/introspect",
        &[("token", &access), ("client_id", APP)],
    )
    .await;
    assert_oauth_error(
        &resp,
        401,
        "invalid_client",
        "introspection by a public client",
    );

    // userinfo needs the openid scope and a user: the suite's client token has neither.
    let resp = anonymous()
        .get(format!("{}/oauth/userinfo", app.root))
        .bearer_auth(&app.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let resp = anonymous()
        .get(format!("{}/oauth/userinfo", app.root))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.headers().get("www-authenticate").is_some());

    // Revoked by the app: inactive, refused by the API, the refresh token dead too.
    for token in [&access, &refresh_token] {
        post_form(
            &app,
            "/oauth/revoke",
            &[("token", token), ("client_id", APP)],
        )
        .await
        .assert_status(200);
        assert_eq!(introspect(token).await["active"], false);
    }
    assert_invalid_token(
        &wait_for_status(&app, &access, "Patient", 401).await,
        "revoked",
    );
    assert_oauth_error(
        &refresh(&app, &refresh_token).await,
        400,
        "invalid_grant",
        "revoked refresh token",
    );
}
