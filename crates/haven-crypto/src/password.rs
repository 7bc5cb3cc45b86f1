//! Password hashing with Argon2id (RFC 9106), stored as PHC strings
//! (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`), so each hash carries its own parameters and
//! old hashes keep verifying after the parameters are raised.
//!
//! Every function here is CPU- and memory-heavy on purpose (tens of milliseconds, ~19 MiB at the
//! OWASP minimum) and synchronous: callers run them on a blocking pool with a bound on how many
//! run at once, never on an async executor thread.
//!
//! Login for an unknown user must cost the same as for a known one, or response times tell an
//! attacker which accounts exist: verify the password against [`dummy_hash`] (computed once at
//! start-up) and refuse whatever the result.

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use zeroize::Zeroizing;

use crate::CryptoError;
use crate::random::try_fill;

/// Salt length in bytes (RFC 9106 section 3.1 recommends 16).
const SALT_LEN: usize = 16;
/// Output length in bytes of the hashes we write; shorter stored outputs ask for a rehash.
const OUTPUT_LEN: usize = Params::DEFAULT_OUTPUT_LEN;

/// Argon2id cost parameters: memory in KiB, iterations, lanes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordParams {
    pub m_kib: u32,
    pub t: u32,
    pub p: u32,
}

impl PasswordParams {
    /// The minimum of the OWASP Password Storage Cheat Sheet for Argon2id: 19 MiB of memory,
    /// 2 iterations, 1 lane.
    pub const OWASP: Self = Self {
        m_kib: 19_456,
        t: 2,
        p: 1,
    };

    fn hasher(self) -> Result<Argon2<'static>, CryptoError> {
        let params = Params::new(self.m_kib, self.t, self.p, Some(OUTPUT_LEN))
            .map_err(|e| CryptoError::PasswordParams(e.to_string()))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }
}

impl Default for PasswordParams {
    /// [`PasswordParams::OWASP`].
    fn default() -> Self {
        Self::OWASP
    }
}

/// Hashes `password` with Argon2id, `params` and a fresh 16-byte random salt; returns the PHC
/// string to store. The password is hashed as its UTF-8 bytes exactly as given: any Unicode
/// normalisation is the caller's policy and must be the same at enrolment and at login.
pub fn hash_password(password: &str, params: PasswordParams) -> Result<String, CryptoError> {
    let hasher = params.hasher()?;
    let mut salt = [0u8; SALT_LEN];
    try_fill(&mut salt)?;
    let salt =
        SaltString::encode_b64(&salt).map_err(|e| CryptoError::PasswordHashing(e.to_string()))?;
    let phc = hasher
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| CryptoError::PasswordHashing(e.to_string()))?;
    Ok(phc.to_string())
}

/// Whether `password` matches the stored PHC string. The hash is recomputed with the stored
/// algorithm, version and parameters and compared in constant time inside `argon2`. A wrong
/// password is `Ok(false)`; a PHC string that cannot be parsed or is not an Argon2 hash is an
/// error (the stored data is broken, which the caller should log, not treat as a wrong password).
pub fn verify_password(password: &str, phc: &str) -> Result<bool, CryptoError> {
    let parsed = parse_phc(phc)?;
    match Argon2::default().verify_password(password.as_bytes(), &parsed) {
        Ok(()) => Ok(true),
        Err(argon2::password_hash::Error::Password) => Ok(false),
        Err(argon2::password_hash::Error::Algorithm) => {
            Err(CryptoError::PasswordHashFormat("not an Argon2 hash"))
        }
        Err(_) => Err(CryptoError::PasswordHashFormat("invalid Argon2 parameters")),
    }
}

fn parse_phc(phc: &str) -> Result<PasswordHash<'_>, CryptoError> {
    let parsed =
        PasswordHash::new(phc).map_err(|_| CryptoError::PasswordHashFormat("not a PHC string"))?;
    if parsed.salt.is_none() || parsed.hash.is_none() {
        return Err(CryptoError::PasswordHashFormat("salt or hash missing"));
    }
    Ok(parsed)
}

/// Whether a stored hash should be replaced (after a successful login, while the plaintext is at
/// hand): true when it is not Argon2id version 19, when any of its memory, iterations or lanes is
/// below `params`, when its salt or output is shorter than what we write, or when it cannot be
/// parsed at all.
#[must_use]
pub fn needs_rehash(phc: &str, params: PasswordParams) -> bool {
    let Ok(parsed) = parse_phc(phc) else {
        return true;
    };
    if parsed.algorithm != argon2::ARGON2ID_IDENT || parsed.version != Some(Version::V0x13.into()) {
        return true;
    }
    let Ok(stored) = Params::try_from(&parsed) else {
        return true;
    };
    let salt_len = parsed.salt.map_or(0, |salt| {
        let mut buf = [0u8; 64];
        salt.decode_b64(&mut buf).map_or(0, <[u8]>::len)
    });
    let output_len = parsed.hash.map_or(0, |h| h.len());
    stored.m_cost() < params.m_kib
        || stored.t_cost() < params.t
        || stored.p_cost() < params.p
        || salt_len < SALT_LEN
        || output_len < OUTPUT_LEN
}

/// A valid hash, with `params`, of a random secret nobody knows. Verifying any password against
/// it costs what a real verification costs and always fails: use it for unknown users.
pub fn dummy_hash(params: PasswordParams) -> Result<String, CryptoError> {
    let mut secret = Zeroizing::new([0u8; 32]);
    try_fill(secret.as_mut_slice())?;
    let secret = Zeroizing::new(STANDARD_NO_PAD.encode(secret.as_slice()));
    hash_password(&secret, params)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small parameters keep the suite fast on two cores; the OWASP set is exercised once.
    const FAST: PasswordParams = PasswordParams {
        m_kib: 64,
        t: 1,
        p: 1,
    };

    #[test]
    fn owasp_is_the_default_and_round_trips() {
        assert_eq!(PasswordParams::default(), PasswordParams::OWASP);
        assert_eq!(
            (
                PasswordParams::OWASP.m_kib,
                PasswordParams::OWASP.t,
                PasswordParams::OWASP.p
            ),
            (19_456, 2, 1)
        );
        let phc = hash_password("correct horse battery staple", PasswordParams::OWASP).unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(verify_password("correct horse battery staple", &phc).unwrap());
        assert!(!needs_rehash(&phc, PasswordParams::OWASP));
    }

    #[test]
    fn wrong_password_is_false_not_an_error() {
        let phc = hash_password("hunter2", FAST).unwrap();
        assert!(verify_password("hunter2", &phc).unwrap());
        assert!(!verify_password("hunter3", &phc).unwrap());
        assert!(!verify_password("", &phc).unwrap());
        assert!(!verify_password("hunter2 ", &phc).unwrap());
    }

    #[test]
    fn salts_are_fresh() {
        let a = hash_password("same", FAST).unwrap();
        let b = hash_password("same", FAST).unwrap();
        assert_ne!(a, b);
        assert!(verify_password("same", &a).unwrap());
        assert!(verify_password("same", &b).unwrap());
    }

    #[test]
    fn unicode_passwords_are_hashed_as_given() {
        let password = "pässwörd 🔐 日本語";
        let phc = hash_password(password, FAST).unwrap();
        assert!(verify_password(password, &phc).unwrap());
        assert!(!verify_password("passwörd 🔐 日本語", &phc).unwrap());
        // NFC "é" and NFD "e\u{301}" are different bytes: normalisation is the caller's job.
        let nfc = hash_password("caf\u{e9}", FAST).unwrap();
        assert!(!verify_password("cafe\u{301}", &nfc).unwrap());
    }

    #[test]
    fn rehash_when_weaker_in_any_dimension_or_not_argon2id() {
        let base = PasswordParams {
            m_kib: 128,
            t: 2,
            p: 2,
        };
        let phc = hash_password("pw", base).unwrap();
        assert!(!needs_rehash(&phc, base));
        assert!(!needs_rehash(&phc, FAST), "stronger than asked is fine");
        assert!(needs_rehash(&phc, PasswordParams { m_kib: 256, ..base }));
        assert!(needs_rehash(&phc, PasswordParams { t: 3, ..base }));
        assert!(needs_rehash(&phc, PasswordParams { p: 3, ..base }));

        // Argon2i and Argon2d hashes of the same shape still verify, but ask to be replaced.
        for algorithm in [Algorithm::Argon2i, Algorithm::Argon2d] {
            let params = Params::new(128, 2, 2, Some(32)).unwrap();
            let salt = SaltString::encode_b64(&[7u8; 16]).unwrap();
            let other = Argon2::new(algorithm, Version::V0x13, params)
                .hash_password(b"pw", &salt)
                .unwrap()
                .to_string();
            assert!(verify_password("pw", &other).unwrap(), "{other}");
            assert!(needs_rehash(&other, base), "{other}");
        }
        // Version 0x10 of Argon2id.
        let params = Params::new(128, 2, 2, Some(32)).unwrap();
        let salt = SaltString::encode_b64(&[7u8; 16]).unwrap();
        let v10 = Argon2::new(Algorithm::Argon2id, Version::V0x10, params)
            .hash_password(b"pw", &salt)
            .unwrap()
            .to_string();
        assert!(needs_rehash(&v10, base), "{v10}");
        // A short salt or a short output.
        let params = Params::new(128, 2, 2, Some(16)).unwrap();
        let short_salt = SaltString::encode_b64(&[7u8; 8]).unwrap();
        let short = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(b"pw", &short_salt)
            .unwrap()
            .to_string();
        assert!(verify_password("pw", &short).unwrap());
        assert!(needs_rehash(&short, base), "{short}");
        // Unparseable input always asks for a new hash.
        assert!(needs_rehash("", base));
        assert!(needs_rehash("$2b$12$abcdefghijklmnopqrstuv", base));
    }

    #[test]
    fn malformed_hashes_are_errors_not_panics() {
        let good = hash_password("pw", FAST).unwrap();
        let no_hash = good.rsplit_once('$').unwrap().0.to_owned();
        let cases = [
            "",
            "plaintext",
            "$",
            "$argon2id$",
            "$argon2id$v=19$m=64,t=1,p=1$",
            no_hash.as_str(),
            "$argon2id$v=19$m=abc,t=1,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",
            "$argon2id$v=19$m=1,t=1,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",
            "$argon2id$v=19$m=64,t=0,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",
            "$argon2id$v=19$m=64,t=1,p=1$!!!$aGFzaGhhc2hoYXNoaGFzaA",
            "$scrypt$ln=15,r=8,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",
            "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW",
        ];
        for phc in cases {
            let got = verify_password("pw", phc);
            assert!(
                matches!(got, Err(CryptoError::PasswordHashFormat(_))),
                "{phc:?} gave {got:?}"
            );
            assert!(needs_rehash(phc, FAST), "{phc:?}");
        }
    }

    #[test]
    fn invalid_params_are_errors() {
        for params in [
            PasswordParams {
                m_kib: 1,
                t: 1,
                p: 1,
            },
            PasswordParams {
                m_kib: 64,
                t: 0,
                p: 1,
            },
            PasswordParams {
                m_kib: 64,
                t: 1,
                p: 0,
            },
        ] {
            assert!(matches!(
                hash_password("pw", params),
                Err(CryptoError::PasswordParams(_))
            ));
            assert!(dummy_hash(params).is_err());
        }
    }

    #[test]
    fn dummy_hash_is_valid_and_matches_nothing_obvious() {
        let dummy = dummy_hash(FAST).unwrap();
        assert!(dummy.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{dummy}");
        assert!(!needs_rehash(&dummy, FAST));
        for guess in ["", "password", "dummy", "\0"] {
            assert!(!verify_password(guess, &dummy).unwrap());
        }
        assert_ne!(dummy, dummy_hash(FAST).unwrap());
    }

    #[test]
    fn errors_do_not_quote_the_hash() {
        let phc = "$argon2id$v=19$m=64,t=1,p=1$c2VjcmV0c2FsdA$!!notbase64!!";
        let err = verify_password("pw", phc).unwrap_err().to_string();
        assert!(!err.contains("c2VjcmV0c2FsdA"), "{err}");
        assert!(!err.contains("notbase64"), "{err}");
    }
}
