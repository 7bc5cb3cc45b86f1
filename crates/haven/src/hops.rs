//! Encrypted hops (issue 8): at start-up, Haven refuses a configuration that would carry
//! patient data, passwords or tokens to another server over a network in clear.
//!
//! A hop to a loopback address never leaves the machine (or the pod), so it may be plain. Any
//! other host must be reached with TLS that authenticates the server: a MITM-able TLS
//! (`sslmode=require`, which verifies no certificate) counts as clear here, because an attacker
//! on the path reads it all the same.
//!
//! The checks look only at what the configuration says; they do not connect. [`remote_in_clear`]
//! is the general rule for one URL (any service Haven talks to: the database, the directory, a
//! key service); [`refuse_clear_hops`] applies it to the configured ones.

use std::net::IpAddr;

use crate::config::Config;

/// Whether `host` (a name, an IPv4 address, or an IPv6 address with or without brackets) is
/// this machine: `localhost`, `127.0.0.0/8`, `::1` and `::ffff:127.0.0.0/104`. Other names
/// (`*.localhost` included, which not every resolver keeps local) are not.
pub fn is_loopback_host(host: &str) -> bool {
    let h = host.strip_prefix('[').unwrap_or(host);
    let h = h.strip_suffix(']').unwrap_or(h);
    let h = h.strip_suffix('.').unwrap_or(h);
    if h.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match h.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => v4.is_loopback(),
        Ok(IpAddr::V6(v6)) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        Err(_) => false,
    }
}

/// Why `url` would reach a remote host without verified TLS, or `None` when it does not (TLS
/// with server authentication, or a loopback host). The reason names the host and the scheme,
/// never the URL itself, which may hold a password.
///
/// - `https`, `ldaps`: TLS, verified by the client's trust store.
/// - `http`, `ldap`: clear unless loopback. (LDAP's StartTLS is not in the URL; the caller
///   checks it.)
/// - `postgres`, `postgresql`: clear unless loopback, a Unix socket, or `sslmode=verify-full`.
/// - anything else: cannot be judged, so refused.
pub fn remote_in_clear(url: &str) -> Option<String> {
    in_clear(url, &|_| None)
}

/// [`remote_in_clear`], with the environment a driver falls back to (`PGHOST`, `PGHOSTADDR`,
/// `PGSSLMODE` for PostgreSQL, as sqlx and libpq read them when the URL says nothing).
fn in_clear(url: &str, env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return Some("is not a URL, so it cannot be shown to use TLS".into());
    };
    let scheme = parsed.scheme().to_ascii_lowercase();
    let host = parsed
        .host_str()
        .filter(|h| !h.is_empty())
        .map(str::to_owned);
    match scheme.as_str() {
        "https" | "ldaps" => None,
        "http" | "ldap" => match host {
            Some(h) if is_loopback_host(&h) => None,
            Some(h) => Some(format!(
                "{scheme}:// to {h} crosses the network in clear; use {scheme}s://"
            )),
            None => Some(format!("{scheme}:// without a host")),
        },
        "postgres" | "postgresql" => postgres_in_clear(&parsed, host, env),
        other => Some(format!(
            "Haven cannot tell whether a {other}:// connection is encrypted"
        )),
    }
}

/// PostgreSQL: the effective host is the last `host`/`hostaddr` parameter, else the URL's
/// host, else `PGHOSTADDR`/`PGHOST`, else the local default; the effective mode the last
/// `sslmode`, else `PGSSLMODE`, else the driver's default `prefer` (which accepts any
/// certificate, or none).
fn postgres_in_clear(
    url: &reqwest::Url,
    host: Option<String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<String> {
    let (mut host, mut mode) = (host, None);
    for (k, v) in url.query_pairs() {
        match &*k {
            "host" | "hostaddr" => host = Some(v.into_owned()),
            "sslmode" | "ssl-mode" => mode = Some(v.into_owned()),
            _ => {}
        }
    }
    let host = host
        .or_else(|| env("PGHOSTADDR"))
        .or_else(|| env("PGHOST"))
        .filter(|h| !h.is_empty());
    let local = match &host {
        None => true,
        // A Unix socket directory, plain or percent-encoded in the authority.
        Some(h) => h.starts_with('/') || h.to_ascii_lowercase().starts_with("%2f"),
    };
    if local || host.as_deref().is_some_and(is_loopback_host) {
        return None;
    }
    let mode = mode
        .or_else(|| env("PGSSLMODE"))
        .unwrap_or_else(|| "prefer".into());
    if mode == "verify-full" {
        return None;
    }
    Some(format!(
        "the database at {} is reached with sslmode={mode}, which does not verify the server: \
         add sslmode=verify-full&sslrootcert=<the CA file> to database_url (or set \
         PGSSLMODE=verify-full and PGSSLROOTCERT)",
        host.unwrap_or_default()
    ))
}

/// Refuses the configured hops that would cross a network in clear, with the setting to fix.
/// `env` is the process environment (the PostgreSQL driver's fall-backs).
pub fn refuse_clear_hops(
    config: &Config,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(), String> {
    if let Some(url) = &config.database_url
        && let Some(why) = in_clear(url.expose(), &env)
    {
        return Err(format!("database_url: {why}"));
    }
    if let Some(ldap) = &config.identity.ldap {
        let plain = ldap.url.to_ascii_lowercase().starts_with("ldap://");
        if !(plain && ldap.starttls)
            && let Some(why) = remote_in_clear(&ldap.url)
        {
            return Err(format!(
                "identity.ldap.url: {why}, or set identity.ldap.starttls = true: every login \
                 sends a password to the directory"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost",
            "LOCALHOST",
            "localhost.",
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "[::1]",
            "::ffff:127.0.0.1",
            "[0:0:0:0:0:0:0:1]",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "db.internal",
            "localhost.example.org",
            "foo.localhost",
            "10.0.0.1",
            "0.0.0.0",
            "::",
            "[fe80::1]",
            "::ffff:10.0.0.1",
            "",
            "128.0.0.1",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }

    #[test]
    fn urls_in_clear() {
        let clear = |u: &str| remote_in_clear(u).unwrap_or_else(|| panic!("{u} passed"));
        for ok in [
            "https://vault.example.org:8200",
            "ldaps://dc1.example.org",
            "http://127.0.0.1:8200",
            "http://localhost:8200/v1",
            "http://[::1]:8200",
            "ldap://127.0.0.1:389",
            "postgres://haven@db.example.org/haven?sslmode=verify-full",
            "postgresql://haven:pw@db.example.org:5432/haven?sslrootcert=/ca.crt&sslmode=verify-full",
            "postgres://haven@127.0.0.1/haven",
            "postgres://haven@[::1]:5432/haven?sslmode=disable",
            "postgres:///haven",
            "postgres://%2Fvar%2Frun%2Fpostgresql/haven",
            "postgres:///haven?host=/var/run/postgresql",
            "postgres://haven@db.example.org/haven?host=localhost",
        ] {
            assert_eq!(remote_in_clear(ok), None, "{ok}");
        }
        assert!(clear("http://vault.example.org:8200").contains("vault.example.org"));
        assert!(clear("ldap://dc1.example.org").contains("ldaps://"));
        for mode in ["disable", "allow", "prefer", "require", "verify-ca"] {
            let why = clear(&format!(
                "postgres://haven:s3cret@db.example.org/haven?sslmode={mode}"
            ));
            assert!(why.contains(&format!("sslmode={mode}")), "{why}");
            assert!(!why.contains("s3cret"), "{why}");
        }
        assert!(clear("postgres://haven@db.example.org/haven").contains("sslmode=prefer"));
        // The last parameter wins, as the driver applies them in order.
        assert!(
            clear("postgres://h@db.example.org/d?sslmode=verify-full&sslmode=require")
                .contains("require")
        );
        assert!(clear("postgres://h@localhost/d?host=db.example.org").contains("db.example.org"));
        assert!(clear("postgres://h@localhost/d?hostaddr=192.0.2.7").contains("192.0.2.7"));
        assert!(clear("ftp://files.example.org").contains("ftp"));
        assert!(clear("not a url").contains("not a URL"));
    }

    #[test]
    fn the_postgres_drivers_environment_counts() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let remote = "postgres://haven@db.example.org/haven";
        assert!(in_clear(remote, &env(&[("PGSSLMODE", "verify-full")])).is_none());
        assert!(in_clear(remote, &env(&[("PGSSLMODE", "require")])).is_some());
        // The URL's own mode wins over the environment.
        let url = "postgres://haven@db.example.org/haven?sslmode=require";
        assert!(in_clear(url, &env(&[("PGSSLMODE", "verify-full")])).is_some());
        assert!(in_clear("postgres:///haven", &env(&[("PGHOST", "db.example.org")])).is_some());
        assert!(in_clear("postgres:///haven", &env(&[("PGHOST", "/run/postgresql")])).is_none());
        assert!(
            in_clear(
                "postgres:///haven",
                &env(&[("PGHOSTADDR", "192.0.2.9"), ("PGHOST", "localhost")])
            )
            .is_some()
        );
    }
}
