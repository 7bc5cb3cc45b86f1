//! Random secrets for the identity provider (session ids, authorisation codes, refresh tokens,
//! recovery codes) and how they are keyed in storage.
//!
//! Storage never holds a bearer secret itself: it holds [`token_digest`] of it, so a leaked
//! database row cannot be replayed. A 256-bit random token needs no salt or slow hash; SHA-256
//! is enough because there is nothing to guess.
//!
//! The infallible functions here panic if the operating system's random number generator fails.
//! That cannot happen on a running Linux system (`getrandom(2)` only blocks before the pool is
//! seeded at boot), and handing out a predictable secret instead would be far worse than
//! stopping; fallible constructors elsewhere in this crate return [`CryptoError::Random`].

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use subtle::ConstantTimeEq as _;
use zeroize::Zeroizing;

use crate::{CryptoError, sha256};

/// Fills `buf` from the operating system's random number generator.
pub(crate) fn try_fill(buf: &mut [u8]) -> Result<(), CryptoError> {
    getrandom::fill(buf).map_err(|e| CryptoError::Random(e.to_string()))
}

/// Fills `buf` from the operating system's random number generator; see the module docs for why
/// a failure panics.
pub(crate) fn fill(buf: &mut [u8]) {
    if let Err(e) = getrandom::fill(buf) {
        panic!("the operating system's random number generator failed: {e}");
    }
}

/// `N` bytes from the operating system's random number generator.
#[must_use]
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    fill(&mut out);
    out
}

/// A fresh bearer secret: 32 random bytes (256 bits), base64url without padding (43 characters,
/// safe in URLs, headers and form bodies without escaping).
#[must_use]
pub fn random_token() -> String {
    let bytes = Zeroizing::new(random_bytes::<32>());
    URL_SAFE_NO_PAD.encode(bytes.as_slice())
}

/// SHA-256 of the token's UTF-8 bytes in lowercase hex (64 characters): the key under which a
/// secret is stored and looked up.
#[must_use]
pub fn token_digest(token: &str) -> String {
    hex_lower(&sha256(&[token.as_bytes()]))
}

pub(crate) fn hex_lower(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    out
}

/// Equality whose running time depends only on the lengths, never on where the first difference
/// is. Slices of different lengths are unequal (their lengths are not secret).
#[must_use]
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// Lowercase letters and digits without the look-alikes `0`/`o`, `1`/`l`/`i` (and therefore
/// without `O` and `I` too, since codes are lowercase): 31 symbols.
const RECOVERY_ALPHABET: &[u8; 31] = b"abcdefghjkmnpqrstuvwxyz23456789";
const RECOVERY_SYMBOLS: usize = 10;

/// A one-time MFA recovery code: 10 symbols from a 31-symbol unambiguous alphabet (about 49.5
/// bits), shown as `xxxxx-xxxxx`. Store it with [`token_digest`] of
/// [`normalize_recovery_code`]'s output, and normalise what the user types the same way.
#[must_use]
pub fn recovery_code() -> String {
    // Rejection sampling keeps every symbol equally likely: 248 = 8 * 31 is the largest multiple
    // of 31 that fits in a byte, so bytes 248..=255 are drawn again instead of biasing `% 31`.
    let mut symbols = Vec::with_capacity(RECOVERY_SYMBOLS);
    while symbols.len() < RECOVERY_SYMBOLS {
        let mut pool = Zeroizing::new([0u8; 16]);
        fill(pool.as_mut_slice());
        for &b in pool.iter() {
            if b < 248 && symbols.len() < RECOVERY_SYMBOLS {
                symbols.push(RECOVERY_ALPHABET[usize::from(b % 31)]);
            }
        }
    }
    let mut out = String::with_capacity(RECOVERY_SYMBOLS + 1);
    for (i, &s) in symbols.iter().enumerate() {
        if i == RECOVERY_SYMBOLS / 2 {
            out.push('-');
        }
        out.push(char::from(s));
    }
    out
}

/// What a user typed as a recovery code, in the canonical `xxxxx-xxxxx` form: case is ignored,
/// and spaces and dashes anywhere are dropped. `None` when it cannot be a recovery code (wrong
/// length or a symbol outside the alphabet), so the caller can refuse without a lookup.
#[must_use]
pub fn normalize_recovery_code(input: &str) -> Option<String> {
    let symbols: Vec<u8> = input
        .bytes()
        .filter(|b| !matches!(b, b' ' | b'-' | b'\t'))
        .map(|b| b.to_ascii_lowercase())
        .collect();
    if symbols.len() != RECOVERY_SYMBOLS || !symbols.iter().all(|b| RECOVERY_ALPHABET.contains(b)) {
        return None;
    }
    let (left, right) = symbols.split_at(RECOVERY_SYMBOLS / 2);
    Some(format!(
        "{}-{}",
        String::from_utf8_lossy(left),
        String::from_utf8_lossy(right)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_token_is_43_base64url_chars_and_fresh() {
        let a = random_token();
        let b = random_token();
        assert_eq!(a.len(), 43);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'),
            "{a}"
        );
        assert_eq!(URL_SAFE_NO_PAD.decode(&a).unwrap().len(), 32);
        assert_ne!(a, b);
    }

    #[test]
    fn random_bytes_fills_the_whole_array() {
        let a: [u8; 64] = random_bytes();
        let b: [u8; 64] = random_bytes();
        assert_ne!(a, b);
        // 64 zero bytes from a working RNG has probability 2^-512.
        assert_ne!(a, [0u8; 64]);
        let empty: [u8; 0] = random_bytes();
        assert!(empty.is_empty());
    }

    #[test]
    fn token_digest_is_lowercase_hex_sha256() {
        // FIPS 180-2: SHA-256("abc").
        assert_eq!(
            token_digest("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(token_digest("").len(), 64);
        assert_ne!(token_digest("abc"), token_digest("abd"));
    }

    #[test]
    fn constant_time_eq_compares_content_and_length() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret!"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    #[test]
    fn recovery_codes_have_the_documented_shape() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let code = recovery_code();
            assert_eq!(code.len(), 11, "{code}");
            assert_eq!(code.as_bytes()[5], b'-', "{code}");
            for (i, b) in code.bytes().enumerate() {
                if i != 5 {
                    assert!(RECOVERY_ALPHABET.contains(&b), "{code}");
                    assert!(!b"0Oo1lIi".contains(&b), "{code}");
                }
            }
            assert_eq!(normalize_recovery_code(&code).as_deref(), Some(&*code));
            seen.insert(code);
        }
        assert_eq!(seen.len(), 200, "recovery codes repeat");
    }

    #[test]
    fn recovery_code_normalisation() {
        assert_eq!(
            normalize_recovery_code(" ABCDE fghjk ").as_deref(),
            Some("abcde-fghjk")
        );
        assert_eq!(
            normalize_recovery_code("abcde-fghjk").as_deref(),
            Some("abcde-fghjk")
        );
        assert_eq!(
            normalize_recovery_code("abcdefghjk").as_deref(),
            Some("abcde-fghjk")
        );
        // Look-alikes are not in the alphabet, wrong lengths are refused.
        assert_eq!(normalize_recovery_code("abcde-fghj0"), None);
        assert_eq!(normalize_recovery_code("abcde-fghjl"), None);
        assert_eq!(normalize_recovery_code("abcde-fghj"), None);
        assert_eq!(normalize_recovery_code("abcde-fghjkm"), None);
        assert_eq!(normalize_recovery_code(""), None);
        assert_eq!(normalize_recovery_code("ééééé-ééééé"), None);
    }
}
