//! Browser sessions end when idle too long and at their absolute limit, and with the account.
//! The clock is not waited for: the test ages the stored session record, as time would.

use std::sync::Arc;

use haven_domain::{Role, Timestamp};
use haven_identity::login::AfterPassword;
use haven_identity::records::{Session, kind};
use haven_identity::{EventContext, Identity, IdentitySettings, JsonFetcher, NewUser};
use haven_store::{Expect, ResourceStore, StoreError, run_write};
use haven_store_sqlite::{SqliteOptions, SqliteStore};
use serde_json::Value;

struct NoFetch;

#[async_trait::async_trait]
impl JsonFetcher for NoFetch {
    async fn get_json(&self, _url: &str) -> Result<Value, String> {
        Err("no network in this test".into())
    }
}

const PASSWORD: &str = "a long enough passphrase 7";

async fn identity() -> (Arc<Identity>, Arc<dyn ResourceStore>, tempfile::TempDir) {
    identity_with(vec![Role::Admin]).await
}

async fn identity_with(
    mfa_roles: Vec<Role>,
) -> (Arc<Identity>, Arc<dyn ResourceStore>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ResourceStore> = Arc::new(
        SqliteStore::open(&dir.path().join("haven.db"), SqliteOptions::default())
            .await
            .unwrap(),
    );
    let mut settings = IdentitySettings::new("http://127.0.0.1:1", "http://127.0.0.1:1/fhir");
    // By default no second factor for erin's role, so a password alone makes a session.
    settings.mfa_required_roles = mfa_roles;
    let identity = Identity::open(store.clone(), settings, Arc::new(NoFetch))
        .await
        .unwrap();
    identity
        .create_user(
            NewUser {
                username: "erin".into(),
                password: Some(PASSWORD.into()),
                roles: vec![Role::Clinician],
                display_name: None,
                email: None,
                fhir_user: None,
            },
            "test",
            &EventContext::cli(),
        )
        .await
        .unwrap();
    (identity, store, dir)
}

/// Signs erin in; returns the session cookie.
async fn sign_in(identity: &Identity) -> String {
    let start = identity.begin_login(None).await.unwrap();
    match identity
        .login_password(
            &start.cookie,
            &start.csrf,
            "erin",
            PASSWORD,
            &EventContext::cli(),
        )
        .await
        .unwrap()
    {
        AfterPassword::Session(s) => s.cookie,
        other => panic!("expected a session, got {other:?}"),
    }
}

/// Rewrites the stored session as if `idle` seconds passed since its last use and `age`
/// seconds since it was created.
async fn age_session(store: &dyn ResourceStore, cookie: &str, idle: i64, age: i64) {
    let key = haven_crypto::token_digest(cookie);
    run_write::<(), StoreError, _>(store, move |tx| {
        Box::pin(async move {
            let r = tx
                .record_get(kind::SESSION, &key)
                .await?
                .expect("the session");
            let mut s: Session = serde_json::from_slice(&r.body).unwrap();
            let now = Timestamp::now().micros() / 1_000_000;
            s.last_seen = now - idle;
            s.created = now - age;
            tx.record_put(
                kind::SESSION,
                &key,
                serde_json::to_vec(&s).unwrap(),
                r.expires,
                Expect::Version(r.version),
            )
            .await?;
            Ok(())
        })
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn an_idle_session_ends_after_fifteen_minutes() {
    let (identity, store, _dir) = identity().await;
    let cookie = sign_in(&identity).await;
    assert!(identity.session(&cookie).await.unwrap().is_some());
    // 14 minutes idle: still there (and its idle timer restarts).
    age_session(store.as_ref(), &cookie, 14 * 60, 14 * 60).await;
    assert!(identity.session(&cookie).await.unwrap().is_some());
    // 16 minutes idle: gone, and gone for good.
    age_session(store.as_ref(), &cookie, 16 * 60, 20 * 60).await;
    assert!(identity.session(&cookie).await.unwrap().is_none());
    let key = haven_crypto::token_digest(&cookie);
    assert!(
        store
            .record_get(kind::SESSION, &key)
            .await
            .unwrap()
            .is_none(),
        "an expired session is deleted, not only ignored"
    );
}

#[tokio::test]
async fn a_busy_session_still_ends_twelve_hours_after_login() {
    let (identity, store, _dir) = identity().await;
    let cookie = sign_in(&identity).await;
    age_session(store.as_ref(), &cookie, 30, 11 * 3600 + 59 * 60).await;
    assert!(identity.session(&cookie).await.unwrap().is_some());
    age_session(store.as_ref(), &cookie, 30, 12 * 3600 + 60).await;
    assert!(identity.session(&cookie).await.unwrap().is_none());
}

#[tokio::test]
async fn disabling_the_account_ends_its_sessions() {
    let (identity, _store, _dir) = identity().await;
    let cookie = sign_in(&identity).await;
    identity
        .disable_user("erin", "test", &EventContext::cli())
        .await
        .unwrap();
    assert!(identity.session(&cookie).await.unwrap().is_none());
    // A cookie that never was a session is simply no session.
    assert!(identity.session("forged").await.unwrap().is_none());
}

/// A right password does not buy fresh attempts at the second factor: failures of the second
/// factor accumulate across logins until the name is throttled, even though every password
/// was right (the counters are reset only when every factor passed).
#[tokio::test]
async fn second_factor_guesses_are_throttled_across_logins() {
    let (identity, _store, _dir) = identity_with(vec![Role::Clinician]).await;
    // erin enrols her second factor at her first login.
    let start = identity.begin_login(None).await.unwrap();
    let secret = match identity
        .login_password(
            &start.cookie,
            &start.csrf,
            "erin",
            PASSWORD,
            &EventContext::cli(),
        )
        .await
        .unwrap()
    {
        AfterPassword::Enrol { secret, .. } => secret,
        other => panic!("expected enrolment, got {other:?}"),
    };
    let totp = haven_crypto::TotpSecret::from_base32(&secret).unwrap();
    let now = Timestamp::now().micros() as u64 / 1_000_000;
    identity
        .login_enrol(
            &start.cookie,
            &start.csrf,
            &haven_crypto::totp_code(&totp, now / 30),
            &EventContext::cli(),
        )
        .await
        .unwrap();
    let mut throttled = false;
    for attempt in 0..12 {
        let start = identity.begin_login(None).await.unwrap();
        match identity
            .login_password(
                &start.cookie,
                &start.csrf,
                "erin",
                PASSWORD,
                &EventContext::cli(),
            )
            .await
        {
            Ok(AfterPassword::Mfa) => {}
            Ok(other) => panic!("attempt {attempt}: expected the second factor, got {other:?}"),
            Err(haven_identity::IdentityError::Throttled(_)) => {
                throttled = true;
                break;
            }
            Err(e) => panic!("attempt {attempt}: {e}"),
        }
        match identity
            .login_mfa(&start.cookie, &start.csrf, "000000", &EventContext::cli())
            .await
        {
            Err(haven_identity::IdentityError::InvalidMfaCode) => {}
            Err(haven_identity::IdentityError::Throttled(_)) => {
                throttled = true;
                break;
            }
            other => panic!("attempt {attempt}: a wrong code gave {other:?}"),
        }
    }
    assert!(
        throttled,
        "12 wrong second factors after right passwords were never throttled"
    );
}

/// A new password, a reset second factor or a disabled account ends the sessions the old
/// credentials opened.
#[tokio::test]
async fn changing_credentials_ends_existing_sessions() {
    let (identity, _store, _dir) = identity().await;
    let cookie = sign_in(&identity).await;
    identity
        .set_password(
            "erin",
            "another long passphrase 8".into(),
            "test",
            &EventContext::cli(),
        )
        .await
        .unwrap();
    assert!(identity.session(&cookie).await.unwrap().is_none());
    // Enabling a disabled account does not revive its sessions either.
    let start = identity.begin_login(None).await.unwrap();
    let cookie = match identity
        .login_password(
            &start.cookie,
            &start.csrf,
            "erin",
            "another long passphrase 8",
            &EventContext::cli(),
        )
        .await
        .unwrap()
    {
        AfterPassword::Session(s) => s.cookie,
        other => panic!("{other:?}"),
    };
    identity
        .disable_user("erin", "test", &EventContext::cli())
        .await
        .unwrap();
    identity
        .enable_user("erin", "test", &EventContext::cli())
        .await
        .unwrap();
    assert!(identity.session(&cookie).await.unwrap().is_none());
}
