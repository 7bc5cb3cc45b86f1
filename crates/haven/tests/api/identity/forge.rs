//! Forging tokens: signing any header and claims with keys the test holds, HS256 keyed with a
//! public key, and a stand-in for an OpenID provider's JWKS endpoint.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::b64;

/// An Ed25519 key that signs whatever header and claims it is given (EdDSA, RFC 8037): the
/// external issuer's real key, or an attacker's.
pub struct Forger {
    key: haven_crypto::SigningKey,
}

impl Forger {
    pub fn new() -> Self {
        Self {
            key: haven_crypto::SigningKey::generate().unwrap(),
        }
    }

    /// The public key's raw bytes.
    pub fn public(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    pub fn jwk(&self, kid: &str) -> Value {
        json!({ "kty": "OKP", "crv": "Ed25519", "x": b64(&self.public()), "kid": kid, "alg": "EdDSA", "use": "sig" })
    }

    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = signing_input(header, claims);
        format!("{input}.{}", b64(&self.key.sign(input.as_bytes())))
    }
}

pub fn signing_input(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

/// HMAC-SHA256 (RFC 2104) over Haven's SHA-256, to forge HS256 tokens keyed with a public key
/// (the algorithm-confusion attack); written here rather than adding an HMAC crate for a test.
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&haven_crypto::sha256(&[key]));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let ipad: Vec<u8> = block.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = block.iter().map(|b| b ^ 0x5c).collect();
    let inner = haven_crypto::sha256(&[&ipad, msg]);
    haven_crypto::sha256(&[&opad, &inner])
}

/// An HS256 token over `header` and `claims` keyed with `secret`.
pub fn hs256(secret: &[u8], header: &Value, claims: &Value) -> String {
    let input = signing_input(header, claims);
    format!("{input}.{}", b64(&hmac_sha256(secret, input.as_bytes())))
}

/// A stand-in for an OpenID provider's key endpoint: serves fixed JSON documents by path over
/// plain HTTP on 127.0.0.1 and records every path requested (to prove Haven never fetched a
/// URL a token named).
pub struct KeyServer {
    pub url: String,
    pub requests: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for KeyServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl KeyServer {
    pub async fn start(documents: Vec<(&str, Value)>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let documents: Arc<BTreeMap<String, String>> = Arc::new(
            documents
                .into_iter()
                .map(|(p, v)| (p.to_owned(), v.to_string()))
                .collect(),
        );
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let documents = documents.clone();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head);
                    let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                    seen.lock().unwrap().push(path.clone());
                    let (status, body) = match documents.get(&path) {
                        Some(b) => ("200 OK", b.clone()),
                        None => ("404 Not Found", "{}".to_owned()),
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(resp.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Self {
            url,
            requests,
            task,
        }
    }

    pub fn requested(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}
