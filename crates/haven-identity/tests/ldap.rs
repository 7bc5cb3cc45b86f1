//! `haven_identity::ldap` against a real OpenLDAP `slapd`.
//!
//! Each test starts its own seeded slapd ([`common::slapd::Slapd`]: LDAPS and StartTLS with a
//! test CA, `tests/ldap/seed.ldif`); tests that change the directory do it with
//! `ldapmodify`/`ldapdelete` as the rootdn, as an administrator would. The login flow on top
//! of the directory is tested in `tests/directory_login.rs`.
//!
//! Without slapd these tests fail, saying what to install; `HAVEN_SKIP_LDAP_TESTS=1` skips the
//! ones that need it (the configuration checks still run).

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use common::slapd::{
    BASE, GROUPS, PEOPLE, SERVICE_DN, SERVICE_PW, Slapd, config, make_certificates,
};
use haven_identity::ldap::{DirectoryUser, LdapConfig, LdapDirectory, LdapError};

fn directory(config: LdapConfig) -> LdapDirectory {
    LdapDirectory::new(config).unwrap()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

async fn roles_of(dir: &LdapDirectory, username: &str, password: &str) -> Vec<String> {
    dir.authenticate(username, password).await.unwrap().roles
}

fn config_error(config: LdapConfig) -> String {
    match LdapDirectory::new(config) {
        Err(LdapError::Config(msg)) => msg,
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

#[tokio::test]
async fn right_password_maps_groups_to_roles() {
    let Some(slapd) = Slapd::start() else { return };
    let dir = directory(config(&slapd));

    let alice = dir.authenticate("alice", "alice-pw").await.unwrap();
    assert_eq!(
        alice,
        DirectoryUser {
            dn: format!("uid=alice,{PEOPLE}"),
            username: "alice".into(),
            display_name: Some("Dr Alice Adams".into()),
            email: Some("alice@hospital.example".into()),
            groups: strings(&["clinicians"]),
            roles: strings(&["clinician"]),
        }
    );

    let bob = dir.authenticate("bob", "bob-pw").await.unwrap();
    assert_eq!(bob.groups, strings(&["clinicians", "nurses"]));
    assert_eq!(bob.roles, strings(&["clinician", "nurse"]));
    assert_eq!(
        bob.display_name.as_deref(),
        Some("Bob Brown"),
        "cn when there is no displayName"
    );

    // Dana's DN has a comma and parentheses, and she has no memberOf: the nurse role can only
    // come from the group search, with her DN escaped into the filter.
    let dana = dir.authenticate("dana", "dana-pw").await.unwrap();
    // slapd spells the escaped comma `\2C`; either is the same DN.
    assert_eq!(dana.dn, format!(r"cn=O'Brien\2C Dana (Locum),{PEOPLE}"));
    assert_eq!(dana.roles, strings(&["nurse"]));

    // Erin is in `porters` (not mapped) and in a `clinicians` group outside group_base: no role.
    let erin = dir.authenticate("erin", "erin-pw").await.unwrap();
    assert_eq!(erin.groups, strings(&["porters"]));
    assert!(erin.roles.is_empty());
}

#[tokio::test]
async fn memberof_alone_serves_active_directory_style_setups() {
    let Some(slapd) = Slapd::start() else { return };
    let mut c = config(&slapd);
    c.group_base = String::new();
    let dir = directory(c);
    assert_eq!(
        roles_of(&dir, "bob", "bob-pw").await,
        strings(&["clinician", "nurse"])
    );
    // No group search: Dana's groups (held only on the group entries) are not seen.
    assert!(
        dir.authenticate("dana", "dana-pw")
            .await
            .unwrap()
            .groups
            .is_empty()
    );
    // Without group_base, a memberOf anywhere in the directory counts (documented).
    assert_eq!(
        roles_of(&dir, "erin", "erin-pw").await,
        strings(&["clinician"])
    );
}

#[tokio::test]
async fn wrong_password_and_unknown_user_are_invalid_credentials() {
    let Some(slapd) = Slapd::start() else { return };
    let dir = directory(config(&slapd));
    assert_eq!(
        dir.authenticate("alice", "bob-pw").await,
        Err(LdapError::InvalidCredentials)
    );
    assert_eq!(
        dir.authenticate("alice", "alice-pw ").await,
        Err(LdapError::InvalidCredentials)
    );
    assert_eq!(
        dir.authenticate("mallory", "alice-pw").await,
        Err(LdapError::InvalidCredentials)
    );
    assert_eq!(
        dir.authenticate("", "alice-pw").await,
        Err(LdapError::InvalidCredentials)
    );
    assert_eq!(
        dir.authenticate(&"a".repeat(1000), "x").await,
        Err(LdapError::InvalidCredentials)
    );
}

#[tokio::test]
async fn empty_password_is_refused_without_a_bind() {
    let Some(mut slapd) = Slapd::start() else {
        return;
    };
    let dir = directory(config(&slapd));
    assert_eq!(
        dir.authenticate("alice", "").await,
        Err(LdapError::InvalidCredentials)
    );
    // The same password works, and slapd logs that bind: the check below can see binds.
    dir.authenticate("alice", "alice-pw").await.unwrap();
    // slapd's stats log has one `BIND dn="..." method=128` line per simple bind request.
    let alice_bind = format!("BIND dn=\"uid=alice,{PEOPLE}\" method=128");
    let deadline = Instant::now() + Duration::from_secs(5);
    let log = loop {
        let log = slapd.log();
        if log.contains(&alice_bind) || Instant::now() > deadline {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        log.matches(&alice_bind).count(),
        1,
        "exactly the one real bind:\n{log}"
    );

    // Nothing is sent at all: with the directory gone, still a plain refusal.
    slapd.stop();
    assert_eq!(
        dir.authenticate("alice", "").await,
        Err(LdapError::InvalidCredentials)
    );
}

#[tokio::test]
async fn disabled_account_is_refused() {
    let Some(slapd) = Slapd::start() else { return };
    let dir = directory(config(&slapd));
    assert_eq!(
        dir.authenticate("carol", "carol-pw").await,
        Err(LdapError::Disabled)
    );
    // Checked before the password (AD refuses a disabled account's bind whatever the password).
    assert_eq!(
        dir.authenticate("carol", "wrong").await,
        Err(LdapError::Disabled)
    );
    assert_eq!(dir.lookup("carol").await, Err(LdapError::Disabled));
    // Without a disabled_filter the directory's own answer is all there is: Carol gets in.
    let mut c = config(&slapd);
    c.disabled_filter = None;
    assert_eq!(
        roles_of(&directory(c), "carol", "carol-pw").await,
        strings(&["clinician"])
    );
}

#[tokio::test]
async fn filter_metacharacters_in_usernames_cannot_widen_the_search() {
    let Some(slapd) = Slapd::start() else { return };
    let dir = directory(config(&slapd));
    // Unescaped, each of these would find Alice (or everyone) and her password would let them in.
    for username in [
        "*",
        "al*",
        "a*e",
        ")(uid=*",
        "alice)(|(uid=*",
        "*)(uid=alice",
        "alice\\",
        "alice\0",
    ] {
        assert_eq!(
            dir.authenticate(username, "alice-pw").await,
            Err(LdapError::InvalidCredentials),
            "username {username:?}"
        );
        assert_eq!(
            dir.lookup(username).await,
            Ok(None),
            "username {username:?}"
        );
    }
    assert!(
        slapd
            .log()
            .contains(r#"filter="(&(objectClass=inetOrgPerson)(uid=al\2A))""#)
    );
}

#[tokio::test]
async fn a_filter_matching_several_entries_is_a_configuration_problem() {
    let Some(slapd) = Slapd::start() else { return };
    let mut c = config(&slapd);
    c.user_filter = "(|(uid={username})(objectClass=inetOrgPerson))".into();
    let dir = directory(c);
    assert_eq!(
        dir.authenticate("alice", "alice-pw").await,
        Err(LdapError::Ambiguous)
    );
    assert_eq!(dir.lookup("alice").await, Err(LdapError::Ambiguous));
}

#[tokio::test]
async fn ldaps_and_starttls_verify_the_ca_file() {
    let Some(slapd) = Slapd::start() else { return };
    let ldaps = directory(config(&slapd));
    assert_eq!(
        roles_of(&ldaps, "alice", "alice-pw").await,
        strings(&["clinician"])
    );

    let mut c = config(&slapd);
    c.url = slapd.ldap_url();
    c.starttls = true;
    let starttls = directory(c);
    assert_eq!(
        roles_of(&starttls, "alice", "alice-pw").await,
        strings(&["clinician"])
    );

    // The host name is checked against the certificate too (SAN localhost).
    let mut c = config(&slapd);
    c.url = format!("ldaps://localhost:{}", slapd.ldaps_port);
    assert_eq!(
        roles_of(&directory(c), "bob", "bob-pw").await,
        strings(&["clinician", "nurse"])
    );
}

#[tokio::test]
async fn an_untrusted_certificate_makes_the_directory_unavailable() {
    let Some(slapd) = Slapd::start() else { return };
    let other = tempfile::tempdir().unwrap();
    make_certificates(other.path());
    let other_ca = other.path().join("ca.pem");

    for starttls in [false, true] {
        let mut c = config(&slapd);
        c.ca_file = Some(other_ca.clone());
        if starttls {
            c.url = slapd.ldap_url();
            c.starttls = true;
        }
        let dir = directory(c);
        match dir.authenticate("alice", "alice-pw").await {
            Err(LdapError::Unavailable(msg)) => {
                assert!(
                    !msg.contains("alice-pw") && !msg.contains(SERVICE_PW),
                    "{msg}"
                );
            }
            other => panic!("starttls={starttls}: expected Unavailable, got {other:?}"),
        }
        assert!(matches!(
            dir.lookup("alice").await,
            Err(LdapError::Unavailable(_))
        ));
    }
}

#[tokio::test]
async fn plain_ldap_only_when_tls_is_explicitly_not_required() {
    let Some(slapd) = Slapd::start() else { return };
    let mut c = config(&slapd);
    c.url = slapd.ldap_url();
    c.ca_file = None;
    assert!(config_error(c.clone()).contains("require_tls"));
    c.require_tls = false;
    assert_eq!(
        roles_of(&directory(c), "bob", "bob-pw").await,
        strings(&["clinician", "nurse"])
    );
}

#[tokio::test]
async fn a_stopped_directory_is_unavailable() {
    let Some(mut slapd) = Slapd::start() else {
        return;
    };
    let dir = directory(config(&slapd));
    dir.authenticate("alice", "alice-pw").await.unwrap();
    slapd.stop();
    let started = Instant::now();
    match dir.authenticate("alice", "alice-pw").await {
        Err(LdapError::Unavailable(msg)) => assert!(!msg.contains("alice-pw"), "{msg}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(matches!(
        dir.lookup("alice").await,
        Err(LdapError::Unavailable(_))
    ));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

/// A server that accepts connections and never answers: each step must give up after
/// `timeout_secs`. No slapd needed.
#[tokio::test]
async fn a_silent_directory_times_out() {
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let ca = tempfile::tempdir().unwrap();
    make_certificates(ca.path());
    let cases = [
        (format!("ldaps://127.0.0.1:{port}"), false, true), // the TLS handshake hangs
        (format!("ldap://127.0.0.1:{port}"), true, true),   // the StartTLS request hangs
        (format!("ldap://127.0.0.1:{port}"), false, false), // the service bind hangs
    ];
    // Concurrently: each case waits out its timeout.
    let mut running = Vec::new();
    for (url, starttls, require_tls) in cases {
        let mut c = LdapConfig::new(url.clone(), PEOPLE);
        c.ca_file = Some(ca.path().join("ca.pem"));
        c.starttls = starttls;
        c.require_tls = require_tls;
        c.bind_dn = Some(SERVICE_DN.into());
        c.bind_password = Some(SERVICE_PW.into());
        c.timeout_secs = 1;
        let dir = directory(c);
        running.push(tokio::spawn(async move {
            let started = Instant::now();
            let outcome = dir.authenticate("alice", "alice-pw").await;
            (url, starttls, outcome, started.elapsed())
        }));
    }
    for case in running {
        let (url, starttls, outcome, took) = case.await.unwrap();
        match outcome {
            Err(LdapError::Unavailable(msg)) => assert!(msg.contains("timeout_secs"), "{msg}"),
            other => panic!("{url} starttls={starttls}: expected Unavailable, got {other:?}"),
        }
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(3),
            "{url} starttls={starttls}: {took:?}"
        );
    }
    drop(silent);
}

#[tokio::test]
async fn lookup_follows_removal_from_the_directory() {
    let Some(slapd) = Slapd::start() else { return };
    let dir = directory(config(&slapd));
    let bob = dir.lookup("bob").await.unwrap().unwrap();
    assert_eq!(bob.roles, strings(&["clinician", "nurse"]));
    assert_eq!(dir.lookup("mallory").await, Ok(None));

    slapd.admin("ldapdelete", &[&format!("uid=bob,{PEOPLE}")], "");
    assert_eq!(dir.lookup("bob").await, Ok(None));
    assert_eq!(
        dir.authenticate("bob", "bob-pw").await,
        Err(LdapError::InvalidCredentials)
    );
}

#[tokio::test]
async fn removal_from_a_group_takes_the_role_away_at_the_next_login() {
    let Some(slapd) = Slapd::start() else { return };
    let dir = directory(config(&slapd));
    let mut memberof_only = config(&slapd);
    memberof_only.group_base = String::new();
    let memberof_only = directory(memberof_only);
    assert_eq!(
        roles_of(&dir, "bob", "bob-pw").await,
        strings(&["clinician", "nurse"])
    );

    // The memberof overlay updates Bob's memberOf too, as AD would: both paths must agree.
    slapd.remove_member("nurses", &format!("uid=bob,{PEOPLE}"));
    assert_eq!(
        roles_of(&dir, "bob", "bob-pw").await,
        strings(&["clinician"])
    );
    assert_eq!(
        roles_of(&memberof_only, "bob", "bob-pw").await,
        strings(&["clinician"])
    );
    assert_eq!(
        dir.lookup("bob").await.unwrap().unwrap().roles,
        strings(&["clinician"])
    );

    slapd.remove_member("clinicians", &format!("uid=bob,{PEOPLE}"));
    let bob = dir.authenticate("bob", "bob-pw").await.unwrap();
    assert!(bob.roles.is_empty() && bob.groups.is_empty(), "{bob:?}");
}

#[tokio::test]
async fn directory_side_configuration_mistakes_are_reported_as_such() {
    let Some(slapd) = Slapd::start() else { return };

    let mut c = config(&slapd);
    c.bind_password = Some("not-the-password".into());
    match directory(c).authenticate("alice", "alice-pw").await {
        Err(LdapError::Config(msg)) => {
            assert!(
                msg.contains("bind_dn") && !msg.contains("not-the-password"),
                "{msg}"
            );
        }
        other => panic!("expected a configuration error, got {other:?}"),
    }

    let mut c = config(&slapd);
    c.user_base = format!("ou=staff,{BASE}");
    match directory(c).authenticate("alice", "alice-pw").await {
        Err(LdapError::Config(msg)) => assert!(msg.contains("user_base"), "{msg}"),
        other => panic!("expected a configuration error, got {other:?}"),
    }

    let mut c = config(&slapd);
    c.group_base = format!("ou=teams,{BASE}");
    match directory(c).authenticate("alice", "alice-pw").await {
        Err(LdapError::Config(msg)) => assert!(msg.contains("group_base"), "{msg}"),
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

// Configuration checks: no directory needed.

/// A configuration that passes, with a CA file (so it does not depend on the platform's CAs).
fn valid_config(ca_dir: &Path) -> LdapConfig {
    let mut c = LdapConfig::new("ldaps://ldap.hospital.example", PEOPLE);
    c.ca_file = Some(ca_dir.join("ca.pem"));
    c
}

#[test]
fn configuration_is_checked_at_construction() {
    let ca = tempfile::tempdir().unwrap();
    make_certificates(ca.path());
    assert!(LdapDirectory::new(valid_config(ca.path())).is_ok());
    let with = |change: &dyn Fn(&mut LdapConfig)| {
        let mut c = valid_config(ca.path());
        change(&mut c);
        c
    };
    let ok = |change: &dyn Fn(&mut LdapConfig)| LdapDirectory::new(with(change)).map(|_| ());
    let err = |change: &dyn Fn(&mut LdapConfig)| config_error(with(change));

    assert!(err(&|c| c.url = "http://ldap.hospital.example".into()).contains("identity.ldap.url"));
    assert!(err(&|c| c.url = "ldaps://".into()).contains("no host"));
    assert!(err(&|c| c.url = "ldaps://h/dc=x??sub".into()).contains("path"));
    assert!(err(&|c| c.url = "ldap://h".into()).contains("require_tls"));
    assert!(err(&|c| c.starttls = true).contains("starttls"));
    assert_eq!(
        ok(&|c| {
            c.url = "ldap://h:389".into();
            c.starttls = true;
        }),
        Ok(())
    );
    assert_eq!(
        ok(&|c| {
            c.url = "ldap://h".into();
            c.require_tls = false;
        }),
        Ok(())
    );
    assert!(err(&|c| c.user_filter = "(uid=alice)".into()).contains("{username}"));
    assert!(err(&|c| c.user_filter = "(uid={username}".into()).contains("not a valid"));
    assert!(err(&|c| c.user_filter = "(uid={user})".into()).contains("{user}"));
    assert!(err(&|c| c.bind_dn = Some(SERVICE_DN.into())).contains("bind_password"));
    assert!(err(&|c| c.bind_password = Some(SERVICE_PW.into())).contains("bind_dn"));
    assert!(
        err(&|c| {
            c.bind_dn = Some(SERVICE_DN.into());
            c.bind_password = Some(String::new());
        })
        .contains("empty")
    );
    assert!(err(&|c| c.user_base = " ".into()).contains("user_base"));
    assert!(
        err(&|c| {
            c.group_base = GROUPS.into();
            c.group_filter = "(objectClass=groupOfNames)".into();
        })
        .contains("{dn}")
    );
    assert!(
        err(&|c| c.disabled_filter = Some("(description=x".into())).contains("disabled_filter")
    );
    assert!(err(&|c| c.group_name_attribute = "c n".into()).contains("group_name_attribute"));
    assert!(err(&|c| c.timeout_secs = 0).contains("timeout_secs"));
    assert!(
        err(&|c| {
            c.role_map.insert("nurses".into(), vec!["nurze".into()]);
        })
        .contains("unknown role `nurze`")
    );
    assert!(
        err(&|c| {
            c.role_map.insert("robots".into(), vec!["service".into()]);
        })
        .contains("service")
    );
    assert!(err(&|c| c.ca_file = Some("/nonexistent/ca.pem".into())).contains("ca_file"));
    let empty = ca.path().join("empty.pem");
    std::fs::write(&empty, "no certificate here\n").unwrap();
    assert!(err(&|c| c.ca_file = Some(empty.clone())).contains("no PEM certificate"));
}

#[test]
fn configuration_deserializes_with_defaults_and_refuses_unknown_fields() {
    let c: LdapConfig =
        serde_json::from_str(r#"{"url": "ldaps://h", "user_base": "ou=people,dc=x"}"#).unwrap();
    assert_eq!(
        c.user_filter,
        "(&(objectClass=inetOrgPerson)(uid={username}))"
    );
    assert_eq!(c.group_filter, "(&(objectClass=groupOfNames)(member={dn}))");
    assert_eq!(c.group_name_attribute, "cn");
    assert_eq!(c.group_base, "");
    assert_eq!(c.timeout_secs, 5);
    assert!(c.require_tls && !c.starttls && c.bind_dn.is_none() && c.disabled_filter.is_none());
    let unknown = serde_json::from_str::<LdapConfig>(
        r#"{"url": "ldaps://h", "user_base": "x", "bind_pw": "x"}"#,
    );
    assert!(unknown.unwrap_err().to_string().contains("bind_pw"));
}

#[test]
fn the_service_password_is_never_shown() {
    let ca = tempfile::tempdir().unwrap();
    make_certificates(ca.path());
    let mut c = valid_config(ca.path());
    c.bind_dn = Some(SERVICE_DN.into());
    c.bind_password = Some("hunter2-very-secret".into());
    let shown = format!("{c:?}");
    assert!(
        !shown.contains("hunter2") && shown.contains("<redacted>"),
        "{shown}"
    );
    let dir = LdapDirectory::new(c).unwrap();
    assert!(!format!("{dir:?}").contains("hunter2"));
}

#[test]
fn error_messages_say_what_to_check() {
    assert!(
        LdapError::Unavailable("connecting: refused".into())
            .to_string()
            .contains("identity.ldap.url")
    );
    assert!(
        LdapError::Ambiguous
            .to_string()
            .contains("identity.ldap.user_filter")
    );
    assert!(LdapError::Disabled.to_string().contains("disabled"));
}
