//! A browser for the identity pages, and the pieces of the authorization-code flow a SMART
//! app performs around it (PKCE, the authorization request, consent, redeeming the code).
//!
//! Cookies are handled by hand: they are `Secure`, so reqwest's cookie store would not send
//! them over plain http, and handling them here lets every `Set-Cookie` be checked.

use std::collections::BTreeMap;

use reqwest::header::{self, HeaderMap};
use serde_json::Value;

use super::{APP, PASSWORD, REDIRECT_URI, anonymous, b64, post_form};
use crate::helpers::{Resp, TestApp};

/// A page (or redirect) the browser received.
#[derive(Debug)]
pub struct Page {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

impl Page {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    #[track_caller]
    pub fn assert_status(&self, status: u16) -> &Self {
        assert_eq!(
            self.status, status,
            "unexpected status; page: {}",
            self.body
        );
        self
    }

    /// The value of the form field `name` (a hidden input).
    pub fn input(&self, name: &str) -> Option<String> {
        let marker = format!("name=\"{name}\" value=\"");
        let start = self.body.find(&marker)? + marker.len();
        let len = self.body[start..].find('"')?;
        Some(unescape(&self.body[start..start + len]))
    }

    /// The form's CSRF token.
    #[track_caller]
    pub fn csrf(&self) -> String {
        self.input("csrf")
            .unwrap_or_else(|| panic!("no csrf field on the page: {}", self.body))
    }

    /// The text of the element with `id` (e.g. the TOTP key in `<code id="secret">`).
    pub fn element(&self, id: &str) -> Option<String> {
        let marker = format!("id=\"{id}\">");
        let start = self.body.find(&marker)? + marker.len();
        let len = self.body[start..].find('<')?;
        Some(unescape(&self.body[start..start + len]))
    }

    /// The `href` of the link with `id`.
    pub fn link(&self, id: &str) -> Option<String> {
        let marker = format!("id=\"{id}\" href=\"");
        let start = self.body.find(&marker)? + marker.len();
        let len = self.body[start..].find('"')?;
        Some(unescape(&self.body[start..start + len]))
    }

    /// The recovery codes listed on the page after an enrolment.
    pub fn recovery_codes(&self) -> Vec<String> {
        let Some(list) = self.body.split("<ul id=\"recovery-codes\">").nth(1) else {
            return Vec::new();
        };
        let list = list.split("</ul>").next().unwrap_or("");
        list.split("<li><code>")
            .skip(1)
            .filter_map(|item| item.split("</code>").next())
            .map(unescape)
            .collect()
    }

    /// Which page this is, by its heading.
    pub fn title(&self) -> &str {
        self.body
            .split("<h1>")
            .nth(1)
            .and_then(|t| t.split("</h1>").next())
            .unwrap_or("")
    }

    /// The query parameters of a redirect to the client: asserts a 303 to [`REDIRECT_URI`].
    #[track_caller]
    pub fn redirect_params(&self) -> BTreeMap<String, String> {
        assert_eq!(self.status, 303, "expected a redirect; page: {}", self.body);
        let to = self.header("location").expect("a Location header");
        assert!(
            to.starts_with(&format!("{REDIRECT_URI}?")),
            "redirect to {to}"
        );
        reqwest::Url::parse(to)
            .unwrap()
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }
}

/// A browser's view of the identity pages: its own cookie jar, an optional `Origin` for form
/// posts, no redirects followed.
pub struct Browser {
    root: String,
    http: reqwest::Client,
    pub cookies: BTreeMap<String, String>,
    /// Sent as `Origin` on form posts (browsers send it on cross-site and most same-site posts).
    pub origin: Option<String>,
}

impl Browser {
    pub fn new(app: &TestApp) -> Self {
        Self {
            root: app.root.clone(),
            http: anonymous(),
            cookies: BTreeMap::new(),
            origin: None,
        }
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{path}", self.root)
        }
    }

    fn cookie_header(&self) -> Option<String> {
        (!self.cookies.is_empty()).then(|| {
            self.cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    pub async fn get(&mut self, path: &str) -> Page {
        let mut req = self.http.get(self.url(path));
        if let Some(c) = self.cookie_header() {
            req = req.header(header::COOKIE, c);
        }
        self.finish(req, path).await
    }

    pub async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let mut req = self
            .http
            .post(self.url(path))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string(form).unwrap());
        if let Some(c) = self.cookie_header() {
            req = req.header(header::COOKIE, c);
        }
        if let Some(o) = &self.origin {
            req = req.header(header::ORIGIN, o);
        }
        self.finish(req, path).await
    }

    async fn finish(&mut self, req: reqwest::RequestBuilder, path: &str) -> Page {
        let resp = req.send().await.unwrap_or_else(|e| panic!("{path}: {e}"));
        let page = Page {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            body: resp.text().await.unwrap(),
        };
        assert!(
            page.header("x-request-id").is_some(),
            "{path}: no x-request-id"
        );
        assert_eq!(page.header("cache-control"), Some("no-store"), "{path}");
        assert!(
            !["sqlite", "sqlx", "panicked", "SELECT"]
                .iter()
                .any(|m| page.body.contains(m)),
            "{path} leaks internal detail: {}",
            page.body
        );
        if page
            .header("content-type")
            .is_some_and(|c| c.starts_with("text/html"))
        {
            // Pages run no script and cannot be framed (clickjacking of the consent button).
            let csp = page.header("content-security-policy").unwrap_or("");
            assert!(
                csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
                "{path}: content security policy {csp:?}"
            );
        }
        for set in page.headers.get_all(header::SET_COOKIE) {
            let set = set.to_str().unwrap();
            let (pair, attrs) = set.split_once(';').unwrap_or((set, ""));
            let (name, value) = pair.split_once('=').expect("name=value");
            // `__Host-`: Secure, Path=/, no Domain, so no other host or path can set or read it.
            for needed in ["Path=/", "Secure", "HttpOnly", "SameSite="] {
                assert!(
                    attrs.contains(needed),
                    "{path}: cookie without {needed}: {set}"
                );
            }
            assert!(
                name.starts_with("__Host-") && !attrs.contains("Domain"),
                "{set}"
            );
            if attrs.contains("Max-Age=0") || value.is_empty() {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
        page
    }

    /// Whether the browser holds a session cookie.
    pub fn signed_in(&self) -> bool {
        self.cookies.contains_key("__Host-haven-session")
    }
}

// The authorization-code flow's pieces.

/// A PKCE pair (RFC 7636 §4.1-4.2, S256).
pub struct Pkce {
    pub verifier: String,
    pub challenge: String,
}

impl Pkce {
    pub fn new() -> Self {
        let verifier = haven_crypto::random_token();
        let challenge = b64(&haven_crypto::sha256(&[verifier.as_bytes()]));
        Self {
            verifier,
            challenge,
        }
    }
}

/// An authorization request of [`APP`], as a SMART app builds it.
pub struct Authorization {
    pub params: Vec<(String, String)>,
    pub pkce: Pkce,
    pub state: String,
    pub nonce: String,
}

impl Authorization {
    pub fn new(app: &TestApp, scope: &str) -> Self {
        let pkce = Pkce::new();
        let state = haven_crypto::random_token();
        let nonce = haven_crypto::random_token();
        let params = [
            ("response_type", "code"),
            ("client_id", APP),
            ("redirect_uri", REDIRECT_URI),
            ("scope", scope),
            ("state", &state),
            ("nonce", &nonce),
            ("code_challenge", &pkce.challenge),
            ("code_challenge_method", "S256"),
            ("aud", &app.base),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        Self {
            params,
            pkce,
            state,
            nonce,
        }
    }

    /// The same request with `name` set to `value` (or removed, with `None`).
    pub fn with(mut self, name: &str, value: Option<&str>) -> Self {
        self.params.retain(|(k, _)| k != name);
        if let Some(v) = value {
            self.params.push((name.to_owned(), v.to_owned()));
        }
        self
    }

    pub fn path(&self) -> String {
        format!(
            "/oauth/authorize?{}",
            serde_urlencoded::to_string(&self.params).unwrap()
        )
    }
}

/// Approves the consent page `page` (choosing `patient` when the app asks for one); returns
/// the parameters of the redirect to the app, after checking its `state` and `iss`.
pub async fn approve(
    app: &TestApp,
    browser: &mut Browser,
    page: &Page,
    authz: &Authorization,
    patient: &str,
) -> BTreeMap<String, String> {
    assert_eq!(
        page.title(),
        "Allow access?",
        "not the consent page: {}",
        page.body
    );
    let request = page.input("request").expect("the request id");
    let csrf = page.csrf();
    let redirect = browser
        .post(
            "/oauth/consent",
            &[
                ("csrf", &csrf),
                ("request", &request),
                ("decision", "approve"),
                ("patient", patient),
            ],
        )
        .await;
    let params = redirect.redirect_params();
    assert_eq!(
        params.get("state"),
        Some(&authz.state),
        "state comes back unchanged"
    );
    // RFC 9207: the issuer in the authorization response (mix-up attacks).
    assert_eq!(params.get("iss"), Some(&app.root));
    assert!(params.contains_key("code"), "{params:?}");
    params
}

/// Redeems a code at the token endpoint as [`APP`] (a public client).
pub async fn redeem(app: &TestApp, code: &str, verifier: &str) -> Resp {
    post_form(
        app,
        "/oauth/token",
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT_URI),
            ("code_verifier", verifier),
            ("client_id", APP),
        ],
    )
    .await
}

/// Uses a refresh token as [`APP`].
pub async fn refresh(app: &TestApp, token: &str) -> Resp {
    post_form(
        app,
        "/oauth/token",
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", token),
            ("client_id", APP),
        ],
    )
    .await
}

/// The whole flow for a user who signs in with a password only (servers with
/// [`NO_CLINICIAN_MFA`]): authorize, log in, approve, redeem. Returns the token response.
pub async fn password_flow(app: &TestApp, username: &str, scope: &str, patient: &str) -> Value {
    let authz = Authorization::new(app, scope);
    let mut browser = Browser::new(app);
    let login = browser.get(&authz.path()).await;
    login.assert_status(200);
    let consent = browser
        .post(
            "/oauth/login",
            &[
                ("csrf", &login.csrf()),
                ("username", username),
                ("password", PASSWORD),
            ],
        )
        .await;
    consent.assert_status(200);
    let params = approve(app, &mut browser, &consent, &authz, patient).await;
    let resp = redeem(app, &params["code"], &authz.pkce.verifier).await;
    resp.assert_status(200);
    resp.json()
}
