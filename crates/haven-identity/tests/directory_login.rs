//! The login flow (`Identity::login_password`, the second factor and its enrolment) for users
//! of the hospital directory, against a real OpenLDAP `slapd` ([`common::slapd::Slapd`]) and
//! a SQLite store in a temporary directory.
//!
//! `tests/ldap.rs` covers what the directory answers; these tests cover what Haven does with
//! the answer: the local copy of a directory account (created at first login, roles refreshed
//! at every login, disabled when the directory disables or removes it), the second factor
//! Haven still demands, throttling, a directory outage, and local accounts that shadow a
//! directory name. The audit trail is read back from the store's unsealed events (no sealer
//! runs here).
//!
//! `HAVEN_SKIP_LDAP_TESTS=1` skips them, as it does `tests/ldap.rs`.

mod common;

use std::sync::Arc;

use common::slapd::{PEOPLE, Slapd, config};
use haven_audit::AuditRecord;
use haven_crypto::{PasswordParams, TotpSecret, totp_code};
use haven_domain::Role;
use haven_identity::ldap::LdapConfig;
use haven_identity::login::{AfterPassword, LoginStart};
use haven_identity::records::AccountSource;
use haven_identity::throttle::ThrottlePolicy;
use haven_identity::{
    EventContext, Identity, IdentityError, IdentitySettings, JsonFetcher, NewUser,
};
use haven_store::{ResourceStore, StoreError, WriteTx, run_write};
use haven_store_sqlite::{SqliteOptions, SqliteStore};

/// No trusted external issuers here: nothing is ever fetched.
struct NoFetch;

#[async_trait::async_trait]
impl JsonFetcher for NoFetch {
    async fn get_json(&self, url: &str) -> Result<serde_json::Value, String> {
        Err(format!("these tests fetch nothing ({url})"))
    }
}

/// An identity provider on its own database, with the directory configured.
struct Haven {
    identity: Arc<Identity>,
    store: Arc<dyn ResourceStore>,
    _db: tempfile::TempDir,
}

async fn haven(ldap: LdapConfig) -> Haven {
    let db = tempfile::tempdir().unwrap();
    let store: Arc<dyn ResourceStore> = Arc::new(
        SqliteStore::open(&db.path().join("haven.db"), SqliteOptions::default())
            .await
            .unwrap(),
    );
    let mut settings = IdentitySettings::new("https://ehr.test", "https://ehr.test/fhir");
    // Cheap hashes: these tests are about the directory, not Argon2's cost.
    settings.password_params = PasswordParams {
        m_kib: 1024,
        t: 1,
        p: 1,
    };
    // A long first delay, so the throttle test cannot pass by the clock ticking over.
    settings.account_throttle = ThrottlePolicy {
        base_delay_secs: 60,
        ..ThrottlePolicy::default()
    };
    settings.ldap = Some(ldap);
    assert!(
        settings.mfa_required(&[Role::Clinician]) && settings.mfa_required(&[Role::Nurse]),
        "the defaults these tests rely on: every human role needs a second factor"
    );
    let identity = Identity::open(store.clone(), settings, Arc::new(NoFetch))
        .await
        .unwrap();
    Haven {
        identity,
        store,
        _db: db,
    }
}

fn ctx() -> EventContext {
    EventContext {
        request_id: Some("directory-login-test".into()),
        // No address: only the per-username throttle applies.
        source_ip: None,
    }
}

impl Haven {
    /// A fresh login form, then its password step.
    async fn password(
        &self,
        username: &str,
        password: &str,
    ) -> (LoginStart, Result<AfterPassword, IdentityError>) {
        let start = self.identity.begin_login(None).await.unwrap();
        let outcome = self
            .identity
            .login_password(&start.cookie, &start.csrf, username, password, &ctx())
            .await;
        (start, outcome)
    }

    /// Logs in a user who has no second factor yet and enrols one; returns the TOTP secret and
    /// the session cookie.
    async fn enrol(&self, username: &str, password: &str) -> (TotpSecret, String) {
        let (start, outcome) = self.password(username, password).await;
        let AfterPassword::Enrol { secret, .. } = outcome.unwrap() else {
            panic!("{username}: expected an enrolment");
        };
        let secret = TotpSecret::from_base32(&secret).unwrap();
        let (session, recovery) = self
            .identity
            .login_enrol(
                &start.cookie,
                &start.csrf,
                &totp_code(&secret, now() / 30),
                &ctx(),
            )
            .await
            .unwrap();
        assert_eq!(recovery.len(), haven_identity::login::RECOVERY_CODES);
        (secret, session.cookie)
    }

    async fn account(&self, username: &str) -> haven_identity::records::Account {
        self.identity
            .find_user(username)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{username} has no local account"))
    }

    /// Every audit event recorded so far, oldest first.
    async fn audit(&self) -> Vec<AuditRecord> {
        let events = run_write::<_, StoreError, _>(self.store.as_ref(), |tx: &mut dyn WriteTx| {
            Box::pin(async move { tx.unsealed_audit(None, 10_000).await })
        })
        .await
        .unwrap();
        events
            .iter()
            .map(|e| AuditRecord::from_canonical(&e.record).unwrap())
            .collect()
    }

    /// The audit events with this action, as (user, detail).
    async fn events(&self, action: &str) -> Vec<(Option<String>, Option<String>)> {
        self.audit()
            .await
            .into_iter()
            .filter(|r| r.action == action)
            .map(|r| (r.actor.user, r.detail))
            .collect()
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn some(s: &str) -> Option<String> {
    Some(s.to_owned())
}

fn ldap_source(uid: &str) -> AccountSource {
    AccountSource::Ldap {
        dn: format!("uid={uid},{PEOPLE}"),
    }
}

#[tokio::test]
async fn a_directory_user_gets_an_account_at_first_login_and_must_enrol() {
    let Some(slapd) = Slapd::start() else { return };
    let haven = haven(config(&slapd)).await;
    assert!(haven.identity.find_user("alice").await.unwrap().is_none());

    let (start, outcome) = haven.password("alice", "alice-pw").await;
    // clinician needs a second factor, and a new account has none.
    let (secret, uri) = match outcome {
        Ok(AfterPassword::Enrol { secret, uri, .. }) => (secret, uri),
        other => panic!("expected an enrolment, got {other:?}"),
    };
    assert!(uri.contains("alice"), "{uri}");
    let alice = haven.account("alice").await;
    assert_eq!(alice.source, ldap_source("alice"));
    assert_eq!(alice.roles, vec![Role::Clinician]);
    assert!(
        alice.password_hash.is_none(),
        "the directory keeps the password"
    );
    assert_eq!(alice.display_name.as_deref(), Some("Dr Alice Adams"));
    assert_eq!(alice.email.as_deref(), Some("alice@hospital.example"));
    assert!(!alice.disabled && !alice.has_mfa());

    let secret = TotpSecret::from_base32(&secret).unwrap();
    let (session, recovery) = haven
        .identity
        .login_enrol(
            &start.cookie,
            &start.csrf,
            &totp_code(&secret, now() / 30),
            &ctx(),
        )
        .await
        .unwrap();
    assert_eq!(recovery.len(), haven_identity::login::RECOVERY_CODES);
    let (session, account) = haven
        .identity
        .session(&session.cookie)
        .await
        .unwrap()
        .expect("a session");
    assert_eq!(account.id, alice.id);
    assert_eq!(session.amr, vec!["ldap".to_owned(), "otp".to_owned()]);
    assert!(haven.account("alice").await.has_mfa());

    assert_eq!(
        haven.events("user-create").await,
        vec![(some("directory"), some("user=alice source=ldap"))]
    );
    assert_eq!(
        haven.events("login").await,
        vec![(some("alice"), some("amr=ldap+otp"))]
    );
    let actions: Vec<String> = haven.audit().await.into_iter().map(|r| r.action).collect();
    // The first signing key is made when the identity module opens.
    assert_eq!(
        actions,
        [
            "signing-key-rotate",
            "user-create",
            "login-password",
            "mfa-enrol",
            "login"
        ],
        "in the order they happened"
    );
}

#[tokio::test]
async fn an_enrolled_directory_user_is_asked_for_the_second_factor() {
    let Some(slapd) = Slapd::start() else { return };
    let haven = haven(config(&slapd)).await;
    let (secret, _) = haven.enrol("alice", "alice-pw").await;

    let (start, outcome) = haven.password("alice", "alice-pw").await;
    assert!(
        matches!(outcome, Ok(AfterPassword::Mfa)),
        "the directory's password is one factor only: {outcome:?}"
    );
    let mfa = |code: String| {
        let identity = haven.identity.clone();
        let (cookie, csrf) = (start.cookie.clone(), start.csrf.clone());
        async move { identity.login_mfa(&cookie, &csrf, &code, &ctx()).await }
    };
    assert!(matches!(
        mfa("000000".into()).await,
        Err(IdentityError::InvalidMfaCode)
    ));
    // The enrolment used this step's code (single use): the next step's is within the window.
    let session = mfa(totp_code(&secret, now() / 30 + 1)).await.unwrap();
    let (session, _) = haven
        .identity
        .session(&session.cookie)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(session.amr, vec!["ldap".to_owned(), "otp".to_owned()]);
    assert_eq!(
        haven.events("user-create").await.len(),
        1,
        "the second login reuses the account"
    );
}

#[tokio::test]
async fn a_wrong_directory_password_is_invalid_credentials_and_throttles_the_name() {
    let Some(slapd) = Slapd::start() else { return };
    let haven = haven(config(&slapd)).await;

    // Three free attempts, then the fourth failure makes the next attempt wait (60 s here).
    for attempt in 1..=4 {
        let (_, outcome) = haven.password("alice", "not-alice-pw").await;
        assert!(
            matches!(outcome, Err(IdentityError::InvalidCredentials)),
            "attempt {attempt}: {outcome:?}"
        );
    }
    let (_, outcome) = haven.password("alice", "alice-pw").await;
    assert!(
        matches!(outcome, Err(IdentityError::Throttled(wait)) if wait > 0),
        "even the right password waits: {outcome:?}"
    );
    assert!(
        haven.identity.find_user("alice").await.unwrap().is_none(),
        "no account from failed logins"
    );
    assert_eq!(
        haven.events("login-failed").await,
        vec![(some("alice"), None); 4]
    );

    // A name the directory does not know gets the same answer as a wrong password.
    let (_, outcome) = haven.password("mallory", "alice-pw").await;
    assert!(matches!(outcome, Err(IdentityError::InvalidCredentials)));
    assert!(haven.identity.find_user("mallory").await.unwrap().is_none());
}

#[tokio::test]
async fn a_group_change_in_the_directory_reaches_the_roles_at_the_next_login() {
    let Some(slapd) = Slapd::start() else { return };
    let haven = haven(config(&slapd)).await;
    let (_, outcome) = haven.password("bob", "bob-pw").await;
    assert!(matches!(outcome, Ok(AfterPassword::Enrol { .. })));
    let before = haven.account("bob").await;
    assert_eq!(before.roles, vec![Role::Clinician, Role::Nurse]);

    slapd.remove_member("nurses", &format!("uid=bob,{PEOPLE}"));
    // Nothing changes until Bob logs in again (Haven does not poll the directory).
    assert_eq!(haven.account("bob").await.roles, before.roles);
    let (_, outcome) = haven.password("bob", "bob-pw").await;
    assert!(matches!(outcome, Ok(AfterPassword::Enrol { .. })));
    let after = haven.account("bob").await;
    assert_eq!(after.roles, vec![Role::Clinician]);
    assert_eq!(after.id, before.id, "the same account, refreshed");
}

#[tokio::test]
async fn a_user_disabled_in_the_directory_is_refused_like_a_wrong_password_and_disabled_here() {
    let Some(slapd) = Slapd::start() else { return };
    // Carol's seed entry says `description: disabled`; here a different value disables, so she
    // can log in first, as she could before the hospital suspended her.
    let mut c = config(&slapd);
    c.disabled_filter = Some("(description=suspended)".into());
    let haven = haven(c).await;
    let (_, session) = haven.enrol("carol", "carol-pw").await;
    assert!(haven.identity.session(&session).await.unwrap().is_some());
    assert!(!haven.account("carol").await.disabled);

    slapd.admin(
        "ldapmodify",
        &[],
        &format!(
            "dn: uid=carol,{PEOPLE}\nchangetype: modify\nreplace: description\ndescription: suspended\n"
        ),
    );
    // Not `Disabled`: that would tell anyone which names exist and are suspended.
    let (_, outcome) = haven.password("carol", "carol-pw").await;
    assert!(
        matches!(outcome, Err(IdentityError::InvalidCredentials)),
        "{outcome:?}"
    );
    let carol = haven.account("carol").await;
    assert!(carol.disabled, "the local copy follows the directory");
    assert!(
        haven.identity.session(&session).await.unwrap().is_none(),
        "her open session ends with it"
    );
    assert_eq!(
        haven.events("user-disable").await,
        vec![(some("directory"), some("user=carol source=ldap"))]
    );
    // A wrong password gets the same answer.
    let (_, outcome) = haven.password("carol", "wrong").await;
    assert!(matches!(outcome, Err(IdentityError::InvalidCredentials)));
    assert_eq!(haven.events("user-disable").await.len(), 1, "disabled once");
}

#[tokio::test]
async fn a_user_removed_from_the_directory_is_disabled_here_at_the_next_attempt() {
    let Some(slapd) = Slapd::start() else { return };
    let haven = haven(config(&slapd)).await;
    let (_, bob_session) = haven.enrol("bob", "bob-pw").await;
    let (_, alice_session) = haven.enrol("alice", "alice-pw").await;

    // A wrong password alone must not disable anyone.
    let (_, outcome) = haven.password("alice", "not-alice-pw").await;
    assert!(matches!(outcome, Err(IdentityError::InvalidCredentials)));
    assert!(!haven.account("alice").await.disabled);
    assert!(
        haven
            .identity
            .session(&alice_session)
            .await
            .unwrap()
            .is_some()
    );

    slapd.admin("ldapdelete", &[&format!("uid=bob,{PEOPLE}")], "");
    let (_, outcome) = haven.password("bob", "bob-pw").await;
    assert!(
        matches!(outcome, Err(IdentityError::InvalidCredentials)),
        "{outcome:?}"
    );
    assert!(
        haven.account("bob").await.disabled,
        "gone from the directory: disabled here (docs/IDENTITY.md)"
    );
    assert!(
        haven
            .identity
            .session(&bob_session)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        haven.events("user-disable").await,
        vec![(some("directory"), some("user=bob source=ldap"))]
    );
}

#[tokio::test]
async fn a_local_account_is_checked_locally_even_when_the_directory_knows_the_name() {
    let Some(slapd) = Slapd::start() else { return };
    let haven = haven(config(&slapd)).await;
    let local_pw = "a local passphrase, not the directory one";
    haven
        .identity
        .create_user(
            NewUser {
                username: "alice".into(),
                password: Some(local_pw.into()),
                roles: vec![Role::Nurse],
                display_name: None,
                email: None,
                fhir_user: None,
            },
            "cli",
            &EventContext::cli(),
        )
        .await
        .unwrap();

    // The directory would accept this one: it is not asked.
    let (_, outcome) = haven.password("alice", "alice-pw").await;
    assert!(
        matches!(outcome, Err(IdentityError::InvalidCredentials)),
        "{outcome:?}"
    );
    let (start, outcome) = haven.password("alice", local_pw).await;
    let secret = match outcome {
        Ok(AfterPassword::Enrol { secret, .. }) => secret,
        other => panic!("expected an enrolment, got {other:?}"),
    };
    let alice = haven.account("alice").await;
    assert_eq!(alice.source, AccountSource::Local);
    assert_eq!(alice.roles, vec![Role::Nurse], "not the directory's groups");
    assert!(alice.password_hash.is_some());
    assert!(
        alice.display_name.is_none(),
        "nothing copied from the directory"
    );

    let secret = TotpSecret::from_base32(&secret).unwrap();
    let (session, _) = haven
        .identity
        .login_enrol(
            &start.cookie,
            &start.csrf,
            &totp_code(&secret, now() / 30),
            &ctx(),
        )
        .await
        .unwrap();
    let (session, _) = haven
        .identity
        .session(&session.cookie)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(session.amr, vec!["pwd".to_owned(), "otp".to_owned()]);
    assert!(
        !slapd.log().contains(&format!("uid=alice,{PEOPLE}")),
        "the directory never saw Alice"
    );
}

#[tokio::test]
async fn a_directory_outage_stops_directory_users_but_not_local_ones() {
    let Some(mut slapd) = Slapd::start() else {
        return;
    };
    let haven = haven(config(&slapd)).await;
    haven.enrol("alice", "alice-pw").await;
    haven
        .identity
        .create_user(
            NewUser {
                username: "zoe".into(),
                password: Some("a local passphrase for the admin".into()),
                roles: vec![Role::Admin],
                display_name: None,
                email: None,
                fhir_user: None,
            },
            "cli",
            &EventContext::cli(),
        )
        .await
        .unwrap();

    slapd.stop();
    // With an account (from an earlier login) and without one alike; more often than the
    // throttle allows failures: an outage is nobody's failed attempt.
    for name in ["alice", "bob", "alice", "bob", "alice", "bob"] {
        let (_, outcome) = haven.password(name, &format!("{name}-pw")).await;
        assert!(
            matches!(outcome, Err(IdentityError::DirectoryUnavailable)),
            "{name}: {outcome:?}"
        );
    }
    let alice = haven.account("alice").await;
    assert!(!alice.disabled, "an outage is not a removal");
    assert!(haven.identity.find_user("bob").await.unwrap().is_none());
    assert!(haven.events("login-failed").await.is_empty());

    let (_, outcome) = haven
        .password("zoe", "a local passphrase for the admin")
        .await;
    assert!(
        matches!(outcome, Ok(AfterPassword::Enrol { .. })),
        "local accounts do not need the directory: {outcome:?}"
    );
    let (_, outcome) = haven.password("zoe", "wrong").await;
    assert!(matches!(outcome, Err(IdentityError::InvalidCredentials)));
}

/// A directory user in no mapped group (erin is only in `porters`, and in a `clinicians` group
/// outside `group_base`) has no role in Haven: the right password does not sign her in, with
/// or without a second factor, and the refusal is recorded.
#[tokio::test]
async fn a_directory_user_without_a_mapped_role_cannot_sign_in() {
    let Some(slapd) = Slapd::start() else { return };
    let haven = haven(config(&slapd)).await;
    let (_, outcome) = haven.password("erin", "erin-pw").await;
    assert!(matches!(outcome, Err(IdentityError::NoRole)), "{outcome:?}");
    assert!(haven.account("erin").await.roles.is_empty());
    let refused = haven.events("login-refused").await;
    assert_eq!(refused.len(), 1, "{refused:?}");
}

/// One directory person is one Haven account, whatever spelling of the name the directory
/// accepts: with a filter that matches the uid or the mail address, signing in by mail after
/// enrolling by uid asks for the enrolled second factor instead of creating a second account
/// without one.
#[tokio::test]
async fn another_spelling_of_a_directory_name_finds_the_same_account() {
    let Some(slapd) = Slapd::start() else { return };
    let mut c = config(&slapd);
    c.user_filter = "(&(objectClass=inetOrgPerson)(|(uid={username})(mail={username})))".into();
    let haven = haven(c).await;
    haven.enrol("alice", "alice-pw").await;
    let (_, outcome) = haven.password("alice@hospital.example", "alice-pw").await;
    assert!(
        matches!(outcome, Ok(AfterPassword::Mfa)),
        "a second spelling must not start a fresh enrolment: {outcome:?}"
    );
    assert_eq!(
        haven.events("user-create").await.len(),
        1,
        "one account only"
    );
}
