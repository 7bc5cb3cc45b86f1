//! Wrapping, context binding, rotation, re-wrapping, retirement and key set-up.

use haven_keys::{KekStatus, KeyError, KeyProvider};
use reqwest::Method;
use serde_json::json;

use crate::bao::Bao;
use crate::vault::{VaultAuth, VaultSecret, VaultTransit};

/// The context `DataKeys` binds a wrapped key to: scope, 0, 8-byte key id.
fn context(scope: &str, id: u8) -> Vec<u8> {
    let mut c = scope.as_bytes().to_vec();
    c.push(0);
    c.extend_from_slice(&[id; 8]);
    c
}

#[tokio::test]
async fn wrapped_keys_open_only_under_their_context() {
    let Some(bao) = Bao::start().await else {
        return;
    };
    let vault = bao.root_provider().await;
    let ctx = context("Patient/1", 1);

    let (dek, wrapped) = vault.generate(&ctx).await.unwrap();
    assert!(wrapped.starts_with("vault:v1:"), "{wrapped}");
    let opened = vault.unwrap(&wrapped, &ctx).await.unwrap();
    assert_eq!(opened.secret_bytes(), dek.secret_bytes());
    assert_eq!(dek.secret_bytes().len(), 32);

    // Another scope, another key id, no context: refused, saying why.
    for other in [context("Patient/2", 1), context("Patient/1", 2), Vec::new()] {
        match vault.unwrap(&wrapped, &other).await {
            Err(KeyError::Refused(m)) => assert!(m.contains("context"), "{m}"),
            other => panic!("opened under another context: {other:?}"),
        }
    }
    // Transit's own decrypt refuses it without the associated data too (not only Haven).
    let raw = bao
        .api(
            Method::POST,
            "transit/decrypt/haven",
            Some(json!({ "ciphertext": wrapped })),
        )
        .await;
    assert_eq!(raw.status, 400, "{raw:?}");

    // A key wrapped by the keyring file is not Vault's to open.
    assert!(matches!(
        vault.unwrap("haven:v1:AAAA", &ctx).await,
        Err(KeyError::Refused(_))
    ));
    // Two data keys are two keys.
    let (second, _) = vault.generate(&ctx).await.unwrap();
    assert_ne!(second.secret_bytes(), dek.secret_bytes());
}

#[tokio::test]
async fn rotation_rewrap_and_retirement_destroy_old_versions() {
    let Some(bao) = Bao::start().await else {
        return;
    };
    let vault = bao.root_provider().await;
    let ctx = context("Patient/7", 7);
    let (dek, w1) = vault.generate(&ctx).await.unwrap();
    assert_eq!(
        vault.status().await.unwrap(),
        KekStatus {
            current: 1,
            min_decryption: 1
        }
    );

    assert_eq!(vault.rotate().await.unwrap(), 2);
    let (_, new) = vault.generate(&ctx).await.unwrap();
    assert!(new.starts_with("vault:v2:"), "{new}");
    let w2 = vault.rewrap(&w1, &ctx).await.unwrap();
    assert!(w2.starts_with("vault:v2:"), "{w2}");
    assert_eq!(
        vault.unwrap(&w2, &ctx).await.unwrap().secret_bytes(),
        dek.secret_bytes()
    );
    // The re-wrapped key stays bound to its context.
    assert!(matches!(
        vault.unwrap(&w2, &context("Patient/8", 7)).await,
        Err(KeyError::Refused(_))
    ));
    assert!(matches!(
        vault.rewrap(&w1, &context("Patient/8", 7)).await,
        Err(KeyError::Refused(_))
    ));
    assert_eq!(
        vault.status().await.unwrap(),
        KekStatus {
            current: 2,
            min_decryption: 1
        }
    );

    vault.retire_below(2).await.unwrap();
    match vault.unwrap(&w1, &ctx).await {
        Err(KeyError::Refused(m)) => assert!(m.contains("retired"), "{m}"),
        other => panic!("a retired version still opens: {other:?}"),
    }
    assert_eq!(
        vault.unwrap(&w2, &ctx).await.unwrap().secret_bytes(),
        dek.secret_bytes()
    );
    assert_eq!(
        vault.status().await.unwrap(),
        KekStatus {
            current: 2,
            min_decryption: 2
        }
    );
    // Trimmed, not only refused: version 1 is gone from Vault, and cannot be brought back.
    let key = bao.key("haven").await;
    assert_eq!(key["min_available_version"], 2, "{key}");
    assert!(key["keys"].get("1").is_none(), "{key}");
    let lower = bao
        .api(
            Method::POST,
            "transit/keys/haven/config",
            Some(json!({ "min_decryption_version": 1 })),
        )
        .await;
    assert_eq!(lower.status, 400, "{lower:?}");
    assert!(matches!(
        vault.unwrap(&w1, &ctx).await,
        Err(KeyError::Refused(_))
    ));

    // Retiring again, or below an already retired version, changes nothing; past the
    // current version is a mistake.
    vault.retire_below(2).await.unwrap();
    vault.retire_below(1).await.unwrap();
    assert!(matches!(
        vault.retire_below(3).await,
        Err(KeyError::Config(m)) if m.contains("current version")
    ));
    assert!(matches!(
        vault.retire_below(0).await,
        Err(KeyError::Config(_))
    ));
}

#[tokio::test]
async fn ensure_key_creates_a_suitable_key_once() {
    let Some(bao) = Bao::start().await else {
        return;
    };
    let vault =
        VaultTransit::new(bao.settings(VaultAuth::Token(VaultSecret::new(&bao.root)))).unwrap();
    match vault.status().await {
        Err(KeyError::Config(m)) => assert!(m.contains("haven keys init"), "{m}"),
        other => panic!("status of a missing key: {other:?}"),
    }
    match vault.generate(b"x").await {
        Err(KeyError::Config(m)) => assert!(m.contains("haven keys init"), "{m}"),
        other => panic!("generate under a missing key: {other:?}"),
    }
    assert!(vault.ensure_key().await.unwrap(), "created");
    assert!(!vault.ensure_key().await.unwrap(), "already there");
    let key = bao.key("haven").await;
    assert_eq!(key["type"], "aes256-gcm96");
    assert_eq!(key["exportable"], false);
    assert_eq!(key["deletion_allowed"], false);
    assert_eq!(key["derived"], false);
    assert_eq!(key["allow_plaintext_backup"], false);

    // Keys Haven must not use: wrong type, derived, exportable, deletable.
    let cases = [
        ("chacha", json!({ "type": "chacha20-poly1305" }), "type"),
        (
            "derived",
            json!({ "type": "aes256-gcm96", "derived": true }),
            "derived",
        ),
        (
            "exportable",
            json!({ "type": "aes256-gcm96", "exportable": true }),
            "exported",
        ),
        (
            "deletable",
            json!({ "type": "aes256-gcm96" }),
            "deletion_allowed",
        ),
    ];
    for (name, body, says) in cases {
        bao.api(Method::POST, &format!("transit/keys/{name}"), Some(body))
            .await;
        if name == "deletable" {
            bao.api(
                Method::POST,
                "transit/keys/deletable/config",
                Some(json!({ "deletion_allowed": true })),
            )
            .await
            .expect_status(200);
        }
        let mut settings = bao.settings(VaultAuth::Token(VaultSecret::new(&bao.root)));
        settings.key = name.to_owned();
        match VaultTransit::new(settings).unwrap().ensure_key().await {
            Err(KeyError::Config(m)) => assert!(m.contains(says), "{name}: {m}"),
            other => panic!("{name} accepted: {other:?}"),
        }
    }

    // No Transit at the configured mount.
    let mut settings = bao.settings(VaultAuth::Token(VaultSecret::new(&bao.root)));
    settings.mount = "elsewhere".into();
    match VaultTransit::new(settings).unwrap().status().await {
        Err(KeyError::Config(m)) => assert!(m.contains("secrets enable"), "{m}"),
        other => panic!("status without a mount: {other:?}"),
    }
}

#[tokio::test]
async fn tls_with_the_configured_ca() {
    let Some(bao) = Bao::start_tls().await else {
        return;
    };
    assert!(bao.address.starts_with("https://"));
    let vault = bao.root_provider().await;
    let ctx = context("Patient/1", 3);
    let (dek, wrapped) = vault.generate(&ctx).await.unwrap();
    assert_eq!(
        vault.unwrap(&wrapped, &ctx).await.unwrap().secret_bytes(),
        dek.secret_bytes()
    );

    // Without the CA, Vault's certificate is not trusted: unavailable, saying why.
    let mut settings = bao.settings(VaultAuth::Token(VaultSecret::new(&bao.root)));
    settings.ca_file = None;
    match VaultTransit::new(settings).unwrap().status().await {
        Err(KeyError::Unavailable(m)) => {
            assert!(m.contains("certificate") && !m.contains(&bao.root), "{m}");
        }
        other => panic!("an untrusted certificate was accepted: {other:?}"),
    }
}
