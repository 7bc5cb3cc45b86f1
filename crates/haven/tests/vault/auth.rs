//! Credentials: a configured token (renewed before it expires), AppRole and Kubernetes logins
//! (a new login when the token nears its end or is refused), and what a policy that lacks a
//! permission looks like.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use haven_keys::{KeyError, KeyProvider};
use reqwest::Method;
use serde_json::{Value, json};

use crate::bao::{Bao, serving_policy};
use crate::vault::{VaultAuth, VaultSecret, VaultTransit};

#[tokio::test]
async fn approle_logs_in_and_logs_in_again_when_its_token_is_revoked() {
    let Some(bao) = Bao::start().await else {
        return;
    };
    bao.root_provider().await;
    bao.put_policy("haven", &serving_policy("haven")).await;
    let (role_id, secret_id) = bao.approle("haven", "haven", "1h").await;
    let vault = VaultTransit::new(bao.settings(VaultAuth::AppRole {
        role_id,
        secret_id: VaultSecret::new(secret_id.clone()),
    }))
    .unwrap();
    assert!(!format!("{vault:?}").contains(&secret_id));

    let (dek, wrapped) = vault.generate(b"Patient/1").await.unwrap();
    assert_eq!(
        vault
            .unwrap(&wrapped, b"Patient/1")
            .await
            .unwrap()
            .secret_bytes(),
        dek.secret_bytes()
    );
    assert_eq!(vault.status().await.unwrap().current, 1);

    // An operator revokes the token Haven holds: the next call is refused once (403), Haven
    // logs in again and the call succeeds.
    assert_eq!(bao.revoke_tokens_with_policy("haven").await, 1);
    assert_eq!(
        vault
            .unwrap(&wrapped, b"Patient/1")
            .await
            .unwrap()
            .secret_bytes(),
        dek.secret_bytes()
    );
    assert_eq!(
        bao.revoke_tokens_with_policy("haven").await,
        1,
        "one new login"
    );
}

#[tokio::test]
async fn approle_tokens_are_replaced_before_they_expire() {
    let Some(bao) = Bao::start().await else {
        return;
    };
    bao.root_provider().await;
    bao.put_policy("haven", &serving_policy("haven")).await;
    // Tokens live 6 s and cannot be renewed past that.
    let (role_id, secret_id) = bao.approle("haven", "haven", "6s").await;
    let vault = VaultTransit::new(bao.settings(VaultAuth::AppRole {
        role_id,
        secret_id: VaultSecret::new(secret_id),
    }))
    .unwrap();
    let (_, wrapped) = vault.generate(b"x").await.unwrap();
    assert_eq!(bao.tokens_with_policy("haven").await, 1);
    // Past two thirds of the token's life, before its end: the call logs in again although
    // its token still works (the first token lives on for another 1.7 s, beside the new one).
    tokio::time::sleep(Duration::from_millis(4300)).await;
    vault.unwrap(&wrapped, b"x").await.unwrap();
    assert_eq!(bao.tokens_with_policy("haven").await, 2, "no early login");
    // The first token has expired; the second is in use.
    tokio::time::sleep(Duration::from_millis(4300)).await;
    vault.unwrap(&wrapped, b"x").await.unwrap();
}

#[tokio::test]
async fn wrong_approle_secret_is_refused_without_repeating_it() {
    let Some(bao) = Bao::start().await else {
        return;
    };
    bao.root_provider().await;
    bao.put_policy("haven", &serving_policy("haven")).await;
    let (role_id, _) = bao.approle("haven", "haven", "1h").await;
    let wrong = "wrong-secret-id-0123456789";
    let vault = VaultTransit::new(bao.settings(VaultAuth::AppRole {
        role_id,
        secret_id: VaultSecret::new(wrong),
    }))
    .unwrap();
    match vault.generate(b"x").await {
        Err(KeyError::Refused(m)) => {
            assert!(
                m.contains("AppRole login") && m.contains("secret_id"),
                "{m}"
            );
            assert!(!m.contains(wrong), "{m}");
        }
        other => panic!("a wrong secret id logged in: {other:?}"),
    }
}

#[tokio::test]
async fn a_policy_without_decrypt_is_refused_naming_the_grant() {
    let Some(bao) = Bao::start().await else {
        return;
    };
    bao.root_provider().await;
    let no_decrypt: String = serving_policy("haven")
        .lines()
        .filter(|l| !l.contains("decrypt"))
        .collect::<Vec<_>>()
        .join("\n");
    bao.put_policy("wraps-only", &no_decrypt).await;
    let (role_id, secret_id) = bao.approle("wraps-only", "wraps-only", "1h").await;
    let vault = VaultTransit::new(bao.settings(VaultAuth::AppRole {
        role_id,
        secret_id: VaultSecret::new(secret_id.clone()),
    }))
    .unwrap();
    let (_, wrapped) = vault.generate(b"x").await.unwrap();
    match vault.unwrap(&wrapped, b"x").await {
        Err(KeyError::Refused(m)) => {
            assert!(m.contains("permission denied"), "{m}");
            assert!(m.contains("update on transit/decrypt/haven"), "{m}");
            assert!(!m.contains(&secret_id), "{m}");
        }
        other => panic!("decrypt without permission: {other:?}"),
    }
    // The refused call logged in again once, then gave up: two logins in all, not one per
    // attempt.
    assert_eq!(bao.revoke_tokens_with_policy("wraps-only").await, 2);
}

#[tokio::test]
async fn a_configured_token_is_renewed_before_it_expires() {
    let Some(bao) = Bao::start().await else {
        return;
    };
    bao.root_provider().await;
    bao.put_policy("haven", &serving_policy("haven")).await;
    // A renewable 6 s token with the default policy (lookup-self, renew-self) and Haven's.
    let token = bao
        .api(
            Method::POST,
            "auth/token/create",
            Some(
                json!({ "policies": ["default", "haven"], "ttl": "6s", "explicit_max_ttl": "60s" }),
            ),
        )
        .await
        .expect_status(200)
        .body["auth"]["client_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let vault =
        VaultTransit::new(bao.settings(VaultAuth::Token(VaultSecret::new(&token)))).unwrap();
    let (_, wrapped) = vault.generate(b"x").await.unwrap();
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(4300)).await;
        // A configured token cannot be replaced: without renewal the second call would fail.
        vault.unwrap(&wrapped, b"x").await.unwrap();
    }

    // Revoked: refused, with no second attempt possible and the token not in the message.
    bao.api(
        Method::POST,
        "auth/token/revoke",
        Some(json!({ "token": token })),
    )
    .await
    .expect_status(204);
    match vault.unwrap(&wrapped, b"x").await {
        Err(KeyError::Refused(m)) => assert!(
            m.contains("permission denied") && !m.contains(&token),
            "{m}"
        ),
        other => panic!("a revoked token still works: {other:?}"),
    }
}

/// A Kubernetes API server reduced to `TokenReview`: it vouches for every token as the
/// service account `haven` in namespace `haven`, and remembers the tokens it was shown.
async fn token_review_stand_in() -> (String, Arc<Mutex<Vec<String>>>) {
    use axum::routing::post;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let app = axum::Router::new().route(
        "/apis/authentication.k8s.io/v1/tokenreviews",
        post(move |axum::Json(review): axum::Json<Value>| {
            let log = log.clone();
            async move {
                let token = review["spec"]["token"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                log.lock().unwrap().push(token);
                (
                    axum::http::StatusCode::CREATED,
                    axum::Json(json!({
                        "apiVersion": "authentication.k8s.io/v1",
                        "kind": "TokenReview",
                        "status": {
                            "authenticated": true,
                            "user": {
                                "username": "system:serviceaccount:haven:haven",
                                "uid": "0b6f1a2e-haven",
                                "groups": ["system:serviceaccounts", "system:serviceaccounts:haven"]
                            }
                        }
                    })),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), seen)
}

/// A service-account token as the kubelet mounts it (unsigned here: the stand-in vouches).
fn service_account_jwt(serial: u32) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
    let claims = URL_SAFE_NO_PAD.encode(
        json!({
            "iss": "kubernetes/serviceaccount",
            "sub": "system:serviceaccount:haven:haven",
            "kubernetes.io/serviceaccount/namespace": "haven",
            "kubernetes.io/serviceaccount/service-account.name": "haven",
            "kubernetes.io/serviceaccount/service-account.uid": "0b6f1a2e-haven",
            "serial": serial,
        })
        .to_string(),
    );
    format!("{header}.{claims}.c2lnbmF0dXJl")
}

/// OpenBao insists on a CA certificate for the Kubernetes API even when it speaks plain http
/// to it; this throwaway self-signed one is parsed and never used.
const STAND_IN_CA: &str = "-----BEGIN CERTIFICATE-----
MIIByDCCAW2gAwIBAgIUdYUHbUReKP5opk7hk0dkx/6V2QwwCgYIKoZIzj0EAwIw
ODE2MDQGA1UEAwwtaGF2ZW4gdGVzdCBzdGFuZC1pbiBmb3IgdGhlIEt1YmVybmV0
ZXMgQVBJIENBMCAXDTI2MTEyOTEyMzczNVoYDzIxMjYxMTA1MTIzNzM1WjA4MTYw
NAYDVQQDDC1oYXZlbiB0ZXN0IHN0YW5kLWluIGZvciB0aGUgS3ViZXJuZXRlcyBB
UEkgQ0EwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAATr2CoV/NJyUxgyOpKGBTNL
HfAXS3s6E9YUuadzYzQOBFuZ5NCxy3VAsb0chq3NjL7FPRf2a+6Du+D9kdxEP7Ed
o1MwUTAdBgNVHQ4EFgQUJZQ5cYtcbFBDL1gHCm/RQkHvbXQwHwYDVR0jBBgwFoAU
JZQ5cYtcbFBDL1gHCm/RQkHvbXQwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQD
AgNJADBGAiEArFvIApC72qxrOoiGt+AbvsfTuKpvXkJwgJFAlcrJ4AYCIQD0ewMe
x4MZ6CO/8Eu2iOM8J7LXPSd47XlPtZbrtzIDAA==
-----END CERTIFICATE-----
";

#[tokio::test]
async fn kubernetes_login_reads_the_service_account_token_at_each_login() {
    let Some(bao) = Bao::start().await else {
        return;
    };
    bao.root_provider().await;
    bao.put_policy("haven", &serving_policy("haven")).await;
    let (api, seen) = token_review_stand_in().await;
    bao.api(
        Method::POST,
        "sys/auth/k8s",
        Some(json!({ "type": "kubernetes" })),
    )
    .await
    .expect_status(204);
    bao.api(
        Method::POST,
        "auth/k8s/config",
        Some(json!({
            "kubernetes_host": api,
            "kubernetes_ca_cert": STAND_IN_CA,
            "disable_local_ca_jwt": true,
            "token_reviewer_jwt": "reviewer",
        })),
    )
    .await
    .expect_status(204);
    bao.api(
        Method::POST,
        "auth/k8s/role/haven",
        Some(json!({
            "bound_service_account_names": ["haven"],
            "bound_service_account_namespaces": ["haven"],
            "token_policies": ["haven"],
            "token_ttl": "1h",
        })),
    )
    .await
    .expect_status(204);

    let jwt_file = bao.dir.path().join("sa-token");
    std::fs::write(&jwt_file, service_account_jwt(1)).unwrap();
    let vault = VaultTransit::new(bao.settings(VaultAuth::Kubernetes {
        role: "haven".into(),
        jwt_file: jwt_file.clone(),
        mount: "k8s".into(),
    }))
    .unwrap();
    let (dek, wrapped) = vault.generate(b"Patient/1").await.unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![service_account_jwt(1)]);

    // The kubelet rotates the file; after the token is revoked Haven logs in with the new one.
    std::fs::write(&jwt_file, format!("{}\n", service_account_jwt(2))).unwrap();
    assert_eq!(bao.revoke_tokens_with_policy("haven").await, 1);
    assert_eq!(
        vault
            .unwrap(&wrapped, b"Patient/1")
            .await
            .unwrap()
            .secret_bytes(),
        dek.secret_bytes()
    );
    assert_eq!(
        *seen.lock().unwrap(),
        vec![service_account_jwt(1), service_account_jwt(2)]
    );

    // A role the service account is not bound to: refused, with what to check.
    let other = VaultTransit::new(bao.settings(VaultAuth::Kubernetes {
        role: "nobody".into(),
        jwt_file,
        mount: "k8s".into(),
    }))
    .unwrap();
    match other.status().await {
        Err(KeyError::Refused(m)) => assert!(m.contains("Kubernetes login"), "{m}"),
        other => panic!("an unknown role logged in: {other:?}"),
    }
}
