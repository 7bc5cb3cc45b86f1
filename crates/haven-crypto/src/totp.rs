//! Time-based one-time passwords (RFC 6238) as authenticator apps implement them: HMAC-SHA-1,
//! 6 digits, 30-second steps, a 160-bit secret (the size RFC 4226 section 4 recommends).
//!
//! The HOTP computation (RFC 4226 section 5.3) comes from `totp-rs`. Its own clock handling and
//! `check` are not used: Haven passes the time in (so tests and the caller's clock agree), accepts
//! one step of drift either way (RFC 6238 section 5.2), and makes every code single-use: a
//! verification returns the step it matched, the caller stores it, and later verifications only
//! accept later steps. Without that, a code seen over a shoulder or in a proxy log could be
//! replayed for up to 90 seconds.

use std::fmt;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use totp_rs::{Algorithm, Secret, TOTP};
use zeroize::{Zeroize as _, Zeroizing};

use crate::CryptoError;
use crate::random::{constant_time_eq, fill};

/// Length of a TOTP secret in bytes.
pub const TOTP_SECRET_LEN: usize = 20;
/// Seconds per TOTP step.
pub const TOTP_PERIOD_SECS: u64 = 30;
/// Digits per code.
pub const TOTP_DIGITS: usize = 6;
/// Base32 characters of an encoded secret (20 bytes = 160 bits = 32 five-bit symbols, no padding).
const BASE32_LEN: usize = 32;

/// A TOTP shared secret. Wiped on drop, not `Clone`, and `Debug` prints nothing of it.
pub struct TotpSecret {
    bytes: [u8; TOTP_SECRET_LEN],
}

impl TotpSecret {
    /// 20 fresh random bytes.
    #[must_use]
    pub fn generate() -> Self {
        let mut bytes = [0u8; TOTP_SECRET_LEN];
        fill(&mut bytes);
        Self { bytes }
    }

    #[must_use]
    pub fn from_bytes(bytes: [u8; TOTP_SECRET_LEN]) -> Self {
        Self { bytes }
    }

    /// The raw secret, for sealing before it is stored.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; TOTP_SECRET_LEN] {
        &self.bytes
    }

    /// RFC 4648 base32 as authenticator apps show it: case-insensitive, spaces, dashes and
    /// trailing `=` padding ignored. It must decode to exactly 20 bytes.
    pub fn from_base32(text: &str) -> Result<Self, CryptoError> {
        let mut compact: Zeroizing<String> = Zeroizing::new(
            text.chars()
                .filter(|c| !matches!(c, ' ' | '-' | '\t' | '\n' | '\r'))
                .map(|c| c.to_ascii_uppercase())
                .collect(),
        );
        while compact.ends_with('=') {
            compact.pop();
        }
        if !compact
            .bytes()
            .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
        {
            return Err(CryptoError::TotpSecretBase32);
        }
        if compact.len() != BASE32_LEN {
            return Err(CryptoError::TotpSecretLength {
                expected: BASE32_LEN,
                got: compact.len(),
            });
        }
        let encoded = Secret::Encoded(compact.to_string());
        let decoded = Zeroizing::new(
            encoded
                .to_bytes()
                .map_err(|_| CryptoError::TotpSecretBase32)?,
        );
        let bytes = <[u8; TOTP_SECRET_LEN]>::try_from(decoded.as_slice()).map_err(|_| {
            CryptoError::TotpSecretLength {
                expected: BASE32_LEN,
                got: compact.len(),
            }
        })?;
        Ok(Self { bytes })
    }

    /// Upper-case RFC 4648 base32 without padding (32 characters), for manual entry in an
    /// authenticator app. Wiped when dropped.
    #[must_use]
    pub fn to_base32(&self) -> Zeroizing<String> {
        let encoded = Secret::Raw(self.bytes.to_vec()).to_encoded();
        match &encoded {
            Secret::Encoded(text) => Zeroizing::new(text.clone()),
            // `to_encoded` of a raw secret is always `Encoded`; an empty string would only make
            // enrolment fail visibly, never leak anything.
            Secret::Raw(_) => Zeroizing::new(String::new()),
        }
    }
}

impl Drop for TotpSecret {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TotpSecret([redacted])")
    }
}

/// HOTP(secret, counter) with `digits` digits (RFC 4226 section 5.3, HMAC-SHA-1). `totp-rs`
/// divides the time it is given by its period; a period of one second makes that time the
/// counter itself, so every `u64` step is representable without multiplying by 30.
fn hotp(secret: &[u8], counter: u64, digits: usize) -> String {
    let totp = TOTP::new_unchecked(
        Algorithm::SHA1,
        digits,
        0,
        1,
        secret.to_vec(),
        None,
        String::new(),
    );
    totp.generate(counter)
}

/// The 6-digit code for time step `step` (`unix_time / 30`).
#[must_use]
pub fn totp_code(secret: &TotpSecret, step: u64) -> String {
    hotp(&secret.bytes, step, TOTP_DIGITS)
}

/// Checks a code typed by the user at `now_unix`. Returns the step it matched, which the caller
/// must store as the new `last_used_step`, or `None`.
///
/// A code is accepted for the current step and one step either side, and only for a step
/// strictly after `last_used_step`, so each code works once. `code` must be exactly 6 ASCII
/// digits (callers strip spaces the user typed); anything else is refused without computing.
/// Each candidate is compared in constant time and all three are always computed.
#[must_use]
pub fn verify_totp(
    secret: &TotpSecret,
    code: &str,
    now_unix: u64,
    last_used_step: Option<u64>,
) -> Option<u64> {
    if code.len() != TOTP_DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let now = now_unix / TOTP_PERIOD_SECS;
    let candidates = [now.checked_sub(1), Some(now), now.checked_add(1)];
    let mut matched = None;
    for step in candidates.into_iter().flatten() {
        let expected = Zeroizing::new(totp_code(secret, step));
        let equal = constant_time_eq(expected.as_bytes(), code.as_bytes());
        let fresh = last_used_step.is_none_or(|last| step > last);
        // Candidates are in increasing order: keep the earliest acceptable step, which leaves
        // the most room for the user's next code.
        if equal && fresh && matched.is_none() {
            matched = Some(step);
        }
    }
    matched
}

/// Characters left as they are in otpauth URI components: RFC 3986 unreserved ones.
const URI_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The enrolment URI for authenticator apps (Google Authenticator "Key Uri Format"):
/// `otpauth://totp/Issuer:account?secret=...&issuer=...&algorithm=SHA1&digits=6&period=30`, with
/// issuer and account percent-encoded (a space as `%20`). It contains the secret, so it is wiped
/// when dropped. The issuer should not contain `:`, which apps read as the label separator.
#[must_use]
pub fn otpauth_uri(secret: &TotpSecret, issuer: &str, account: &str) -> Zeroizing<String> {
    let issuer = utf8_percent_encode(issuer, URI_COMPONENT).to_string();
    let account = utf8_percent_encode(account, URI_COMPONENT);
    let secret = secret.to_base32();
    Zeroizing::new(format!(
        "otpauth://totp/{issuer}:{account}?secret={}&issuer={issuer}&algorithm=SHA1&digits={TOTP_DIGITS}&period={TOTP_PERIOD_SECS}",
        secret.as_str()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 Appendix B: the SHA-1 seed is the ASCII string "12345678901234567890".
    const RFC_SEED: &[u8; 20] = b"12345678901234567890";

    /// RFC 6238 Appendix B, SHA-1 column: (Unix time, 8-digit TOTP).
    const RFC_VECTORS: [(u64, &str); 6] = [
        (59, "94287082"),
        (1_111_111_109, "07081804"),
        (1_111_111_111, "14050471"),
        (1_234_567_890, "89005924"),
        (2_000_000_000, "69279037"),
        (20_000_000_000, "65353130"),
    ];

    fn rfc_secret() -> TotpSecret {
        TotpSecret::from_bytes(*RFC_SEED)
    }

    #[test]
    fn rfc6238_vectors_at_8_and_6_digits() {
        for (time, code8) in RFC_VECTORS {
            let step = time / TOTP_PERIOD_SECS;
            assert_eq!(hotp(RFC_SEED, step, 8), code8, "T={time}");
            // A 6-digit code is the value mod 10^6: the last six digits of the 8-digit one.
            assert_eq!(totp_code(&rfc_secret(), step), code8[2..], "T={time}");
        }
    }

    #[test]
    fn rfc4226_hotp_vectors() {
        // RFC 4226 Appendix D, same seed, counters 0..=9.
        let expected = [
            "755224", "287082", "359152", "969429", "338314", "254676", "287922", "162583",
            "399871", "520489",
        ];
        for (counter, code) in expected.iter().enumerate() {
            assert_eq!(totp_code(&rfc_secret(), counter as u64), *code);
        }
    }

    #[test]
    fn accepts_current_and_adjacent_steps_only() {
        let secret = rfc_secret();
        let now = 1_234_567_890;
        let step = now / TOTP_PERIOD_SECS;
        for delta in [-1i64, 0, 1] {
            let s = step.checked_add_signed(delta).unwrap();
            assert_eq!(
                verify_totp(&secret, &totp_code(&secret, s), now, None),
                Some(s),
                "delta {delta}"
            );
        }
        for delta in [-3i64, -2, 2, 3] {
            let s = step.checked_add_signed(delta).unwrap();
            assert_eq!(
                verify_totp(&secret, &totp_code(&secret, s), now, None),
                None,
                "delta {delta}"
            );
        }
        // Any second inside the step counts as that step.
        let start = step * TOTP_PERIOD_SECS;
        let code = totp_code(&secret, step);
        assert_eq!(verify_totp(&secret, &code, start, None), Some(step));
        assert_eq!(verify_totp(&secret, &code, start + 29, None), Some(step));
    }

    #[test]
    fn a_code_is_single_use() {
        let secret = TotpSecret::generate();
        let now = 1_700_000_000;
        let step = now / TOTP_PERIOD_SECS;
        let code = totp_code(&secret, step);
        let used = verify_totp(&secret, &code, now, None).unwrap();
        assert_eq!(used, step);
        // The same code again, even a few seconds later in the same window, is refused.
        assert_eq!(verify_totp(&secret, &code, now, Some(used)), None);
        assert_eq!(verify_totp(&secret, &code, now + 25, Some(used)), None);
        // An older code after a newer one was used is refused too.
        let previous = totp_code(&secret, step - 1);
        assert_eq!(verify_totp(&secret, &previous, now, Some(used)), None);
        // The next step's code is still accepted once.
        let next = totp_code(&secret, step + 1);
        assert_eq!(verify_totp(&secret, &next, now, Some(used)), Some(step + 1));
        assert_eq!(verify_totp(&secret, &next, now, Some(step + 1)), None);
    }

    #[test]
    fn malformed_codes_are_refused_without_panicking() {
        let secret = rfc_secret();
        let now = 1_234_567_890;
        let good = totp_code(&secret, now / TOTP_PERIOD_SECS);
        assert_eq!(good, "005924");
        for code in [
            "",
            "00592",
            "0059245",
            "00592a",
            "005 924",
            " 005924",
            "005924\n",
            "-05924",
            "+05924",
            "٠٠٥٩٢٤",
            "００５９２４",
            "94287082",
        ] {
            assert_eq!(verify_totp(&secret, code, now, None), None, "{code:?}");
        }
        assert_eq!(verify_totp(&secret, &good, now, None), Some(now / 30));
    }

    #[test]
    fn time_edges_do_not_overflow() {
        let secret = rfc_secret();
        let code = totp_code(&secret, 0);
        assert_eq!(verify_totp(&secret, &code, 0, None), Some(0));
        assert_eq!(verify_totp(&secret, &code, 10, Some(0)), None);
        let last = u64::MAX / TOTP_PERIOD_SECS;
        let code = totp_code(&secret, last);
        assert_eq!(verify_totp(&secret, &code, u64::MAX, None), Some(last));
        assert_eq!(totp_code(&secret, u64::MAX).len(), 6);
    }

    #[test]
    fn base32_round_trip_and_lenient_input() {
        let secret = rfc_secret();
        let text = secret.to_base32();
        assert_eq!(text.as_str(), "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
        let again = TotpSecret::from_base32(&text).unwrap();
        assert_eq!(again.as_bytes(), RFC_SEED);
        let spaced = "gezd gnbv gy3t qojq gezd gnbv gy3t qojq";
        assert_eq!(
            TotpSecret::from_base32(spaced).unwrap().as_bytes(),
            RFC_SEED
        );
        let padded = format!("{}====", text.as_str());
        assert_eq!(
            TotpSecret::from_base32(&padded).unwrap().as_bytes(),
            RFC_SEED
        );

        let fresh = TotpSecret::generate();
        assert_eq!(
            TotpSecret::from_base32(&fresh.to_base32())
                .unwrap()
                .as_bytes(),
            fresh.as_bytes()
        );
        assert_ne!(fresh.as_bytes(), TotpSecret::generate().as_bytes());
    }

    #[test]
    fn base32_errors() {
        assert_eq!(
            TotpSecret::from_base32("GEZDGNBVGY3TQOJQ").unwrap_err(),
            CryptoError::TotpSecretLength {
                expected: 32,
                got: 16
            }
        );
        assert_eq!(
            TotpSecret::from_base32("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJ1").unwrap_err(),
            CryptoError::TotpSecretBase32
        );
        assert_eq!(
            TotpSecret::from_base32("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJÉ").unwrap_err(),
            CryptoError::TotpSecretBase32
        );
        assert!(TotpSecret::from_base32("").is_err());
        let err = TotpSecret::from_base32("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQGE").unwrap_err();
        assert!(!err.to_string().contains("GEZD"), "{err}");
    }

    #[test]
    fn debug_is_redacted() {
        let secret = rfc_secret();
        let shown = format!("{secret:?}");
        assert_eq!(shown, "TotpSecret([redacted])");
        assert!(!shown.contains("GEZD"));
    }

    #[test]
    fn otpauth_uri_shape_and_encoding() {
        let secret = rfc_secret();
        let uri = otpauth_uri(&secret, "Haven EHR", "dr.jane+mfa@hospital.example");
        assert_eq!(
            uri.as_str(),
            "otpauth://totp/Haven%20EHR:dr.jane%2Bmfa%40hospital.example\
             ?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=Haven%20EHR\
             &algorithm=SHA1&digits=6&period=30"
        );
        let uri = otpauth_uri(&secret, "Ünï:&?=", "a/b#c");
        assert!(
            uri.starts_with("otpauth://totp/%C3%9Cn%C3%AF%3A%26%3F%3D:a%2Fb%23c?secret="),
            "{}",
            uri.as_str()
        );
        assert!(
            uri.contains("&issuer=%C3%9Cn%C3%AF%3A%26%3F%3D&"),
            "{}",
            uri.as_str()
        );
    }
}
