//! The hash chain and signed checkpoints.

use haven_crypto::{SigningKey, VerifyingKey, sha256};
use haven_domain::Timestamp;
use serde::{Deserialize, Serialize};

/// The `prev` hash of record 1.
pub const GENESIS: [u8; 32] = [0; 32];

const CHAIN_TAG: &[u8] = b"haven-audit-v1\0";
const CHECKPOINT_TAG: &[u8] = b"haven-audit-checkpoint-v1\0";
/// The key under which a checkpoint travels in a log line.
pub const CHECKPOINT_LOG_KEY: &str = "haven_audit_checkpoint";

/// `sha256("haven-audit-v1\0" || prev || seq (u64 BE) || len(canonical) (u64 BE) || canonical)`.
///
/// Every field but the last has a fixed width and the last is length-prefixed, so two different
/// (prev, seq, record) triples can never produce the same input to the hash.
#[must_use]
pub fn chain_hash(prev: &[u8; 32], seq: u64, canonical: &[u8]) -> [u8; 32] {
    let len = canonical.len() as u64;
    sha256(&[
        CHAIN_TAG,
        prev,
        &seq.to_be_bytes(),
        &len.to_be_bytes(),
        canonical,
    ])
}

/// A signed statement "the chain hash after record `seq` was `hash`", made at `time` by the key
/// named `key_id`. Serialized with the hash as lowercase hex, the time as an RFC 3339 instant
/// and the signature as base64.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub seq: u64,
    #[serde(with = "hex32")]
    pub hash: [u8; 32],
    #[serde(with = "instant")]
    pub time: Timestamp,
    pub key_id: String,
    #[serde(with = "base64_sig")]
    pub signature: [u8; 64],
}

impl Checkpoint {
    #[must_use]
    pub fn sign(seq: u64, hash: [u8; 32], time: Timestamp, key: &SigningKey) -> Self {
        let signature = key.sign(&signed_message(seq, &hash, time));
        Self {
            seq,
            hash,
            time,
            key_id: key.key_id(),
            signature,
        }
    }

    /// True if `key` is the key this checkpoint names and its signature covers seq, hash and
    /// time. Says nothing about whether the hash matches the chain: that is the verifier's job.
    #[must_use]
    pub fn verify(&self, key: &VerifyingKey) -> bool {
        key.key_id() == self.key_id && self.signature_valid(key)
    }

    pub(crate) fn signature_valid(&self, key: &VerifyingKey) -> bool {
        key.verify(
            &signed_message(self.seq, &self.hash, self.time),
            &self.signature,
        )
    }

    /// One JSON line, `{"haven_audit_checkpoint":{...}}`, for shipping a copy through the logs.
    #[must_use]
    pub fn to_log_line(&self) -> String {
        serde_json::to_string(&LogLine {
            haven_audit_checkpoint: self,
        })
        .expect("a checkpoint always serializes")
    }

    /// Finds a checkpoint written by [`Checkpoint::to_log_line`] in a log line, also when a log
    /// shipper prefixed it (a timestamp, a pod name). Any other line gives `None`.
    #[must_use]
    pub fn from_log_line(line: &str) -> Option<Self> {
        let start = line.find(&format!("{{\"{CHECKPOINT_LOG_KEY}\":"))?;
        let mut values =
            serde_json::Deserializer::from_str(&line[start..]).into_iter::<OwnedLogLine>();
        values.next()?.ok().map(|l| l.haven_audit_checkpoint)
    }
}

fn signed_message(seq: u64, hash: &[u8; 32], time: Timestamp) -> [u8; 74] {
    let mut msg = [0u8; 74];
    msg[..26].copy_from_slice(CHECKPOINT_TAG);
    msg[26..34].copy_from_slice(&seq.to_be_bytes());
    msg[34..66].copy_from_slice(hash);
    msg[66..].copy_from_slice(&time.micros().to_be_bytes());
    msg
}

#[derive(Serialize)]
struct LogLine<'a> {
    haven_audit_checkpoint: &'a Checkpoint,
}

#[derive(Deserialize)]
struct OwnedLogLine {
    haven_audit_checkpoint: Checkpoint,
}

mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub(crate) fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(&text, &mut out)
            .map_err(|_| D::Error::custom("hash must be 64 hex characters"))?;
        Ok(out)
    }
}

mod base64_sig {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub(crate) fn serialize<S: Serializer>(v: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        let text = String::deserialize(d)?;
        STANDARD
            .decode(text)
            .ok()
            .and_then(|v| <[u8; 64]>::try_from(v).ok())
            .ok_or_else(|| D::Error::custom("signature must be base64 of 64 bytes"))
    }
}

mod instant {
    use haven_domain::Timestamp;
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub(crate) fn serialize<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_instant_string())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let text = String::deserialize(d)?;
        Timestamp::parse_instant(&text).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_pem_or_raw(&[n; 32]).unwrap()
    }

    #[test]
    fn chain_hash_binds_every_input() {
        let h = chain_hash(&GENESIS, 1, b"abc");
        assert_eq!(h, chain_hash(&GENESIS, 1, b"abc"));
        assert_ne!(h, chain_hash(&GENESIS, 2, b"abc"));
        assert_ne!(h, chain_hash(&[1; 32], 1, b"abc"));
        assert_ne!(h, chain_hash(&GENESIS, 1, b"abd"));
        let expected = sha256(&[
            b"haven-audit-v1\0",
            &[0; 32],
            &1u64.to_be_bytes(),
            &3u64.to_be_bytes(),
            b"abc",
        ]);
        assert_eq!(h, expected);
    }

    #[test]
    fn checkpoint_signs_and_verifies() {
        let k = key(1);
        let t = Timestamp::parse_instant("2026-11-28T20:44:03.123456Z").unwrap();
        let cp = Checkpoint::sign(42, [7; 32], t, &k);
        assert_eq!(cp.key_id, k.key_id());
        assert!(cp.verify(&k.verifying_key()));
        assert!(!cp.verify(&key(2).verifying_key()));
        for tamper in [
            |c: &mut Checkpoint| c.seq += 1,
            |c: &mut Checkpoint| c.hash[0] ^= 1,
            |c: &mut Checkpoint| c.time = c.time.succ(),
            |c: &mut Checkpoint| c.signature[0] ^= 1,
        ] {
            let mut bad = cp.clone();
            tamper(&mut bad);
            assert!(!bad.verify(&k.verifying_key()));
        }
    }

    #[test]
    fn checkpoint_log_line_round_trips() {
        let k = key(1);
        let t = Timestamp::parse_instant("2026-11-28T20:44:03.123456Z").unwrap();
        let cp = Checkpoint::sign(42, [0xab; 32], t, &k);
        let line = cp.to_log_line();
        assert!(!line.contains('\n'));
        let prefix = format!(
            r#"{{"haven_audit_checkpoint":{{"seq":42,"hash":"{}","time":"2026-11-28T20:44:03.123456Z","key_id":"{}","signature":""#,
            "ab".repeat(32),
            k.key_id()
        );
        assert!(line.starts_with(&prefix), "{line}");
        assert_eq!(Checkpoint::from_log_line(&line), Some(cp.clone()));
        let shipped = format!("2026-11-28T20:44:04Z haven-0 stdout {line}");
        assert_eq!(Checkpoint::from_log_line(&shipped), Some(cp.clone()));

        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        let back: Checkpoint = serde_json::from_value(value[CHECKPOINT_LOG_KEY].clone()).unwrap();
        assert!(back.verify(&k.verifying_key()));

        assert_eq!(
            Checkpoint::from_log_line(r#"{"level":"INFO","msg":"started"}"#),
            None
        );
        assert_eq!(Checkpoint::from_log_line(""), None);
        assert_eq!(
            Checkpoint::from_log_line(r#"{"haven_audit_checkpoint":{"seq":1}}"#),
            None
        );
    }
}
