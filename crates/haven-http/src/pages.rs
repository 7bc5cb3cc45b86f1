//! The identity provider's few server-rendered pages: login, second factor, enrolment,
//! recovery codes, consent, and errors. Plain HTML forms, no script; every dynamic value is
//! escaped, and every form carries its CSRF token.

use std::fmt::Write;

/// Escapes text for HTML element content and attribute values.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<title>{t} · Haven</title><style>\
body{{font-family:system-ui,sans-serif;max-width:28rem;margin:3rem auto;padding:0 1rem;color:#222}}\
label{{display:block;margin:.8rem 0 .2rem}}input[type=text],input[type=password]{{width:100%;padding:.5rem;box-sizing:border-box}}\
button{{margin-top:1rem;padding:.5rem 1.2rem}}.error{{color:#a00}}code{{font-size:1.1rem}}\
</style></head><body><h1>{t}</h1>{body}</body></html>",
        t = esc(title)
    )
}

pub(crate) fn login(csrf: &str, client: Option<&str>, error: Option<&str>) -> String {
    let mut b = String::new();
    if let Some(c) = client {
        let _ = write!(
            b,
            "<p>Sign in to continue to <strong>{}</strong>.</p>",
            esc(c)
        );
    }
    if let Some(e) = error {
        let _ = write!(b, "<p class=\"error\" role=\"alert\">{}</p>", esc(e));
    }
    let _ = write!(
        b,
        "<form method=\"post\" action=\"/oauth/login\">\
<input type=\"hidden\" name=\"csrf\" value=\"{}\">\
<label for=\"username\">Username</label><input type=\"text\" id=\"username\" name=\"username\" autocomplete=\"username\" required autofocus>\
<label for=\"password\">Password</label><input type=\"password\" id=\"password\" name=\"password\" autocomplete=\"current-password\" required>\
<button type=\"submit\">Sign in</button></form>",
        esc(csrf)
    );
    page("Sign in", &b)
}

pub(crate) fn mfa(csrf: &str, error: Option<&str>) -> String {
    let mut b = String::from(
        "<p>Enter the 6-digit code from your authenticator app, or one of your recovery codes.</p>",
    );
    if let Some(e) = error {
        let _ = write!(b, "<p class=\"error\" role=\"alert\">{}</p>", esc(e));
    }
    let _ = write!(
        b,
        "<form method=\"post\" action=\"/oauth/mfa\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
<label for=\"code\">Code</label><input type=\"text\" id=\"code\" name=\"code\" inputmode=\"numeric\" autocomplete=\"one-time-code\" required autofocus>\
<button type=\"submit\">Verify</button></form>",
        esc(csrf)
    );
    page("Second factor", &b)
}

pub(crate) fn enrol(
    csrf: &str,
    secret: &str,
    uri: &str,
    qr_svg: &str,
    error: Option<&str>,
) -> String {
    use base64::Engine;
    let img = base64::engine::general_purpose::STANDARD.encode(qr_svg.as_bytes());
    let mut b = String::from(
        "<p>Your role requires a second factor. Scan this code with an authenticator app \
(or enter the key by hand), then type the 6-digit code it shows.</p>",
    );
    if let Some(e) = error {
        let _ = write!(b, "<p class=\"error\" role=\"alert\">{}</p>", esc(e));
    }
    let _ = write!(
        b,
        "<p><img alt=\"QR code of the authenticator key\" width=\"200\" height=\"200\" src=\"data:image/svg+xml;base64,{img}\"></p>\
<p>Key: <code id=\"secret\">{}</code></p><p><a href=\"{}\">Open in an authenticator app</a></p>\
<form method=\"post\" action=\"/oauth/enrol\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
<label for=\"code\">Code</label><input type=\"text\" id=\"code\" name=\"code\" inputmode=\"numeric\" autocomplete=\"one-time-code\" required autofocus>\
<button type=\"submit\">Confirm</button></form>",
        esc(secret),
        esc(uri),
        esc(csrf)
    );
    page("Set up a second factor", &b)
}

pub(crate) fn recovery_codes(codes: &[String], next: &str) -> String {
    let mut b = String::from(
        "<p>Keep these recovery codes somewhere safe. Each works once if you lose your \
authenticator. They are not shown again.</p><ul id=\"recovery-codes\">",
    );
    for c in codes {
        let _ = write!(b, "<li><code>{}</code></li>", esc(c));
    }
    let _ = write!(
        b,
        "</ul><p><a id=\"continue\" href=\"{}\">Continue</a></p>",
        esc(next)
    );
    page("Recovery codes", &b)
}

pub(crate) struct Consent<'a> {
    pub csrf: &'a str,
    pub request: &'a str,
    pub client: &'a str,
    pub user: &'a str,
    pub scopes: Vec<String>,
    pub needs_patient: bool,
    pub error: Option<&'a str>,
}

pub(crate) fn consent(c: &Consent<'_>) -> String {
    let mut b = String::new();
    let _ = write!(
        b,
        "<p>Signed in as <strong>{}</strong>. <strong>{}</strong> asks for:</p><ul>",
        esc(c.user),
        esc(c.client)
    );
    for s in &c.scopes {
        let _ = write!(b, "<li><code>{}</code></li>", esc(s));
    }
    b.push_str("</ul>");
    if let Some(e) = c.error {
        let _ = write!(b, "<p class=\"error\" role=\"alert\">{}</p>", esc(e));
    }
    let _ = write!(
        b,
        "<form method=\"post\" action=\"/oauth/consent\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
<input type=\"hidden\" name=\"request\" value=\"{}\">",
        esc(c.csrf),
        esc(c.request)
    );
    if c.needs_patient {
        b.push_str(
            "<label for=\"patient\">Patient (FHIR id)</label>\
<input type=\"text\" id=\"patient\" name=\"patient\" required>",
        );
    }
    b.push_str(
        "<button type=\"submit\" name=\"decision\" value=\"approve\">Allow</button> \
<button type=\"submit\" name=\"decision\" value=\"deny\">Deny</button></form>",
    );
    page("Allow access?", &b)
}

pub(crate) fn message(title: &str, text: &str) -> String {
    page(title, &format!("<p>{}</p>", esc(text)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_values_are_escaped() {
        let html = login("\"><script>", Some("<b>app</b>"), Some("x & y"));
        assert!(!html.contains("<script>"));
        assert!(html.contains("&lt;b&gt;app&lt;/b&gt;"));
        assert!(html.contains("x &amp; y"));
    }
}
