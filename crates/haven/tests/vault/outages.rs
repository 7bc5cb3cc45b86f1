//! A sealed, frozen or stopped Vault: `Unavailable` (503 upstream) with a message that says
//! what to do, within the configured timeout; and service resumes when Vault does.

use std::time::{Duration, Instant};

use haven_keys::{KeyError, KeyProvider};
use reqwest::Method;
use serde_json::json;

use crate::bao::Bao;

#[tokio::test]
async fn a_sealed_vault_is_unavailable_until_unsealed() {
    let Some(bao) = Bao::start().await else {
        return;
    };
    let vault = bao.root_provider().await;
    let (dek, wrapped) = vault.generate(b"Patient/1").await.unwrap();

    bao.api(Method::POST, "sys/seal", None)
        .await
        .expect_status(204);
    match vault.unwrap(&wrapped, b"Patient/1").await {
        Err(KeyError::Unavailable(m)) => {
            assert!(m.contains("sealed") && m.contains(&bao.address), "{m}");
            assert!(!m.contains(&bao.root), "{m}");
        }
        other => panic!("a sealed Vault answered: {other:?}"),
    }
    assert!(matches!(
        vault.generate(b"Patient/2").await,
        Err(KeyError::Unavailable(_))
    ));

    bao.api(
        Method::POST,
        "sys/unseal",
        Some(json!({ "key": bao.unseal_key() })),
    )
    .await
    .expect_status(200);
    assert_eq!(
        vault
            .unwrap(&wrapped, b"Patient/1")
            .await
            .unwrap()
            .secret_bytes(),
        dek.secret_bytes()
    );
    vault.generate(b"Patient/2").await.unwrap();
}

#[tokio::test]
async fn a_frozen_or_stopped_vault_is_unavailable_within_the_timeout() {
    let Some(mut bao) = Bao::start().await else {
        return;
    };
    let vault = bao.root_provider().await;
    let timeout = Duration::from_secs(3);
    let (_, wrapped) = vault.generate(b"x").await.unwrap();

    // Frozen (SIGSTOP): connections are accepted by the kernel and never answered.
    bao.signal("STOP");
    let started = Instant::now();
    let answer = vault.unwrap(&wrapped, b"x").await;
    let took = started.elapsed();
    bao.signal("CONT");
    match answer {
        Err(KeyError::Unavailable(m)) => {
            assert!(m.contains("did not answer within 3 s"), "{m}");
            assert!(m.contains("up and unsealed"), "{m}");
        }
        other => panic!("a frozen Vault answered: {other:?}"),
    }
    assert!(
        took >= timeout && took < timeout + Duration::from_secs(2),
        "{took:?}"
    );
    vault.unwrap(&wrapped, b"x").await.unwrap();

    // Stopped: refused connections, reported at once.
    bao.kill().await;
    for _ in 0..2 {
        let started = Instant::now();
        match vault.unwrap(&wrapped, b"x").await {
            Err(KeyError::Unavailable(m)) => {
                assert!(
                    m.contains(&bao.address) && m.contains("up and unsealed"),
                    "{m}"
                );
            }
            other => panic!("a stopped Vault answered: {other:?}"),
        }
        assert!(started.elapsed() < timeout, "{:?}", started.elapsed());
    }
    match vault.status().await {
        Err(KeyError::Unavailable(m)) => assert!(m.contains("cannot connect"), "{m}"),
        other => panic!("a stopped Vault answered: {other:?}"),
    }
}
