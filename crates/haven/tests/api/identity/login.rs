//! The login form under attack: whether a username exists must not show (same status, page
//! and time), guessing one account's password slows down and then locks it (NIST SP 800-63B
//! §5.2.2; the policy is in `haven_identity::throttle`: 3 free failures, then 1 s doubling,
//! a 15-minute lock at the 10th), and a form only counts when it carries its CSRF token and
//! comes from Haven's own origin.

use std::time::{Duration, Instant};

use super::{Browser, NO_CLINICIAN_MFA, PASSWORD, Page, add_user, audit_line, spawn_configured};

/// A login page's body without the values that differ per login (the CSRF token).
fn without_csrf(page: &Page, csrf: &str) -> String {
    page.body.replace(csrf, "CSRF")
}

/// Posts the login form of a fresh login page; returns the answer, its time and the CSRF
/// token the form carried.
async fn attempt(
    browser: &mut Browser,
    username: &str,
    password: &str,
) -> (Page, Duration, String) {
    let form = browser.get("/oauth/login").await;
    form.assert_status(200);
    let csrf = form.csrf();
    let start = Instant::now();
    let page = browser
        .post(
            "/oauth/login",
            &[
                ("csrf", &csrf),
                ("username", username),
                ("password", password),
            ],
        )
        .await;
    (page, start.elapsed(), csrf)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test]
async fn an_unknown_user_and_a_wrong_password_look_the_same() {
    let app = spawn_configured(NO_CLINICIAN_MFA).await;
    add_user(&app, "ivan", "clinician").await;
    let mut browser = Browser::new(&app);
    let (mut unknown, mut wrong) = (Vec::new(), Vec::new());
    let mut reference: Option<String> = None;
    for i in 0..8 {
        // A new name each time (names are throttled whether or not they exist), and the real
        // account's throttle reset by a success after every three failures (3 are free).
        let name = format!("nobody-{i}-{}", &haven_crypto::random_token()[..8]);
        for (username, password, times) in [
            (name.as_str(), PASSWORD, &mut unknown),
            ("ivan", "not-the-password-at-all", &mut wrong),
        ] {
            let (page, took, csrf) = attempt(&mut browser, username, password).await;
            page.assert_status(401);
            assert!(
                page.header("set-cookie").is_none(),
                "a failed login sets no cookie: {:?}",
                page.header("set-cookie")
            );
            assert!(!browser.signed_in());
            let body = without_csrf(&page, &csrf);
            assert!(body.contains("wrong username or password"), "{body}");
            match &reference {
                None => reference = Some(body),
                Some(r) => assert_eq!(&body, r, "the page differs for {username}"),
            }
            times.push(took);
        }
        if i % 3 == 2 {
            let (page, _, _) = attempt(&mut browser, "ivan", PASSWORD).await;
            page.assert_status(200);
            assert_eq!(page.title(), "Signed in");
            browser.cookies.clear();
        }
    }
    // Both cost one Argon2id verification (a dummy hash for unknown users), which dominates.
    let (u, w) = (median(unknown), median(wrong));
    assert!(
        u * 2 >= w && w * 2 >= u,
        "median time for an unknown user {u:?} vs a wrong password {w:?}"
    );
}

async fn post_login(browser: &mut Browser, csrf: &str, username: &str, password: &str) -> Page {
    browser
        .post(
            "/oauth/login",
            &[
                ("csrf", csrf),
                ("username", username),
                ("password", password),
            ],
        )
        .await
}

/// The `Retry-After` of a 429.
#[track_caller]
fn retry_after(page: &Page) -> u64 {
    page.assert_status(429);
    page.header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("a 429 without Retry-After: {:?}", page.headers))
}

#[tokio::test]
async fn guessing_one_accounts_password_slows_down_then_locks_it() {
    let app = spawn_configured(NO_CLINICIAN_MFA).await;
    add_user(&app, "judy", "clinician").await;
    add_user(&app, "ken", "clinician").await;
    let mut browser = Browser::new(&app);
    let csrf = browser.get("/oauth/login").await.csrf();

    // Three failures cost nothing.
    for _ in 0..3 {
        post_login(&mut browser, &csrf, "judy", "wrong-guess-0001")
            .await
            .assert_status(401);
    }
    // From the fourth on, each failure makes the next attempt wait 1 s, doubling: a probe right
    // after a failure is refused with the wait. The server counts whole seconds, so a probe
    // may land in the next second (one second less to wait, or, for a 1 s wait, none: then
    // the probe is itself a counted failure, which is why short waits are probed with a wrong
    // password). Longer waits are probed with the right one: a wait holds for it too.
    let mut failures = 3u32;
    let mut observed = Vec::new();
    while failures < 10 {
        let page = post_login(&mut browser, &csrf, "judy", "wrong-guess-0002").await;
        if page.status == 429 {
            tokio::time::sleep(Duration::from_secs(retry_after(&page))).await;
            continue;
        }
        page.assert_status(401);
        failures += 1;
        if failures == 10 {
            break;
        }
        let delay = 1u64 << (failures - 4);
        let probe = if delay >= 4 {
            PASSWORD
        } else {
            "wrong-guess-0003"
        };
        let page = post_login(&mut browser, &csrf, "judy", probe).await;
        if page.status == 401 && delay == 1 {
            failures += 1;
            continue;
        }
        let wait = retry_after(&page);
        assert!(
            (delay.saturating_sub(1).max(1)..=delay).contains(&wait),
            "after {failures} failures: Retry-After {wait}, expected {delay}"
        );
        observed.push((failures, wait));
        tokio::time::sleep(Duration::from_secs(wait)).await;
    }
    assert!(observed.len() >= 4, "too few delays seen: {observed:?}");
    assert!(!browser.signed_in());
    // The tenth failure locks the account for 15 minutes, for the right password too.
    let wait = retry_after(&post_login(&mut browser, &csrf, "judy", PASSWORD).await);
    assert!((850..=900).contains(&wait), "locked for {wait} s");
    assert!(!browser.signed_in());
    // The lock is in the audit trail.
    let line = audit_line(&app, "account-locked", "judy")
        .await
        .expect("an account-locked audit record for judy");
    assert_eq!(line["event"]["outcome"], "failure", "{line}");
    // It is the account that is locked, not the address: another user signs in from it.
    let mut other = Browser::new(&app);
    let other_csrf = other.get("/oauth/login").await.csrf();
    post_login(&mut other, &other_csrf, "ken", PASSWORD)
        .await
        .assert_status(200);
    assert!(other.signed_in());
}

#[tokio::test]
async fn a_login_form_needs_its_csrf_token_and_haven_as_its_origin() {
    let app = spawn_configured(NO_CLINICIAN_MFA).await;
    add_user(&app, "leo", "clinician").await;
    let mut browser = Browser::new(&app);
    let csrf = browser.get("/oauth/login").await.csrf();
    let mut elsewhere = Browser::new(&app);
    let other_csrf = elsewhere.get("/oauth/login").await.csrf();
    fn with(token: Option<&str>) -> Vec<(&str, &str)> {
        let mut f = vec![("username", "leo"), ("password", PASSWORD)];
        if let Some(t) = token {
            f.push(("csrf", t));
        }
        f
    }

    for (what, token) in [
        ("no csrf", None),
        ("a wrong csrf", Some("not-the-token")),
        ("another login's csrf", Some(other_csrf.as_str())),
    ] {
        let page = browser.post("/oauth/login", &with(token)).await;
        assert_eq!(page.status, 400, "{what}: {}", page.body);
        assert!(!browser.signed_in(), "{what}");
    }
    // The right token without the login's cookie (another browser, or a forged form).
    let mut no_cookie = Browser::new(&app);
    let page = no_cookie.post("/oauth/login", &with(Some(&csrf))).await;
    assert_eq!(page.status, 400, "{}", page.body);
    assert!(!no_cookie.signed_in());
    // A post from another site, with everything else right.
    for origin in ["https://evil.example", "null", "http://127.0.0.1:1"] {
        browser.origin = Some(origin.to_owned());
        let page = browser.post("/oauth/login", &with(Some(&csrf))).await;
        assert_eq!(page.status, 403, "Origin {origin}: {}", page.body);
        assert!(!browser.signed_in(), "Origin {origin}");
    }
    // From Haven's own origin with the right token: signed in, so the refusals were the
    // token's and the origin's.
    browser.origin = Some(app.root.clone());
    let page = browser.post("/oauth/login", &with(Some(&csrf))).await;
    page.assert_status(200);
    assert!(browser.signed_in());
}
