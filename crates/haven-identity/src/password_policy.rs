//! Which new passwords Haven accepts: NIST SP 800-63B §5.1.1.2 (memorized secret verifiers).
//!
//! Length is what counts: at least [`PasswordPolicy::min_len`] (default 12, never below
//! NIST's 8) and at most [`PasswordPolicy::max_len`] (default 128) Unicode code points after
//! NFKC, so a password typed on another keyboard or pasted from another program still counts
//! the same. There are no composition rules (no "one digit, one symbol"): §5.1.1.2 says not
//! to impose them. Instead a password is refused when it is
//!
//! - in the bundled list of common and breached passwords (`data/common-passwords.txt.xz`,
//!   see `data/README.md`), compared case-insensitively;
//! - the username, or contains it (usernames of 3 or more characters; for `name@domain`
//!   usernames the part before `@` too);
//! - one character or a short pattern (up to 4 characters) repeated, or a run of consecutive
//!   characters (`abcdefghijkl`, `123456789012`, `987654321098`).
//!
//! Comparisons use the same caseless, NFKC form as usernames ([`crate::username`]). Errors
//! name the rule, never the password.
//!
//! The list is decompressed into memory at first use (~18,000 entries, a few hundred KB);
//! call [`preload`] at start-up so the first password change does not pay for it.

use std::collections::HashSet;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;

use crate::username::fold;

/// NIST SP 800-63B §5.1.1.2: memorized secrets chosen by the subscriber are at least 8
/// characters. The bundled list keeps only entries of at least this length.
pub const NIST_MIN_LEN: usize = 8;

/// §5.1.1.2: verifiers SHOULD permit at least 64 characters.
const NIST_MAX_AT_LEAST: usize = 64;

/// Beyond this a password is refused before any work is done on it.
const MAX_MAX_LEN: usize = 1024;

/// The longest pattern whose repetition counts as repetitive (`abab…`, `123123…`).
const MAX_REPEATED_UNIT: usize = 4;

/// The list, built by the steps in `data/README.md`: lowercase, sorted, one per line.
static COMMON_PASSWORDS_XZ: &[u8] = include_bytes!("../data/common-passwords.txt.xz");

/// Length limits for new passwords; the other rules are fixed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PasswordPolicy {
    /// Fewest code points (after NFKC). Values below [`NIST_MIN_LEN`] are treated as 8.
    pub min_len: usize,
    /// Most code points (after NFKC).
    pub max_len: usize,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        Self {
            min_len: 12,
            max_len: 128,
        }
    }
}

/// Why a configured policy is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("password min_len must be at least {NIST_MIN_LEN} (NIST SP 800-63B 5.1.1.2), not {0}")]
    MinTooSmall(usize),
    #[error(
        "password max_len must be at least min_len and at least {NIST_MAX_AT_LEAST} (NIST SP 800-63B 5.1.1.2), and at most {MAX_MAX_LEN}; got {0}"
    )]
    BadMax(usize),
}

/// Which rule a password broke. The message is meant for the person choosing it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordRejected {
    #[error("the password must be at least {min} characters long")]
    TooShort { min: usize },
    #[error("the password must be at most {max} characters long")]
    TooLong { max: usize },
    #[error("the password must not be one character or a short pattern repeated")]
    Repetitive,
    #[error(
        "the password must not be a run of consecutive characters such as 'abcdef…' or '123456…'"
    )]
    Sequential,
    #[error("the password must not contain the username")]
    ContainsUsername,
    #[error(
        "this password appears in lists of breached/common passwords; choose a longer passphrase"
    )]
    Common,
}

impl PasswordPolicy {
    /// Checks a configured policy at start-up.
    ///
    /// # Errors
    /// `min_len` below 8; `max_len` below `min_len` or 64, or above 1024.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.min_len < NIST_MIN_LEN {
            return Err(PolicyError::MinTooSmall(self.min_len));
        }
        if self.max_len < self.min_len.max(NIST_MAX_AT_LEAST) || self.max_len > MAX_MAX_LEN {
            return Err(PolicyError::BadMax(self.max_len));
        }
        Ok(())
    }

    /// Checks a new password for `username` (as typed or canonical: it is folded here).
    ///
    /// # Errors
    /// The first rule the password breaks, in the order: length, repetition, sequence,
    /// username, common-password list.
    pub fn check(&self, password: &str, username: &str) -> Result<(), PasswordRejected> {
        let min = self.min_len.max(NIST_MIN_LEN);
        let max = self.max_len.clamp(min, MAX_MAX_LEN);
        // NFKC composes at most 4 code points into one, and a code point is at most 4 bytes:
        // a password this many bytes long cannot fit, and is not worth normalizing.
        if password.len() > max.saturating_mul(4 * 4) {
            return Err(PasswordRejected::TooLong { max });
        }
        let length = password.nfkc().count();
        if length < min {
            return Err(PasswordRejected::TooShort { min });
        }
        if length > max {
            return Err(PasswordRejected::TooLong { max });
        }
        let folded: Vec<char> = fold(password).chars().collect();
        if is_repetitive(&folded) {
            return Err(PasswordRejected::Repetitive);
        }
        if is_sequential(&folded) {
            return Err(PasswordRejected::Sequential);
        }
        let folded: String = folded.into_iter().collect();
        if contains_username(&folded, username) {
            return Err(PasswordRejected::ContainsUsername);
        }
        if common_passwords().contains(folded.as_str()) {
            return Err(PasswordRejected::Common);
        }
        Ok(())
    }
}

/// Decompresses the common-password list now rather than at the first password check.
pub fn preload() {
    common_passwords();
}

fn common_passwords() -> &'static HashSet<Box<str>> {
    static LIST: OnceLock<HashSet<Box<str>>> = OnceLock::new();
    LIST.get_or_init(|| {
        let mut text = Vec::new();
        // The file is part of the binary and a unit test decompresses it: failing here means
        // the build itself is broken, and checking passwords without the list would be worse.
        lzma_rs::xz_decompress(&mut &COMMON_PASSWORDS_XZ[..], &mut text)
            .expect("the bundled common-password list is valid xz");
        let text = String::from_utf8(text).expect("the bundled common-password list is UTF-8");
        text.lines()
            .filter(|l| !l.is_empty())
            .map(Box::from)
            .collect()
    })
}

/// One unit of 1 to [`MAX_REPEATED_UNIT`] characters, repeated to fill the whole password.
fn is_repetitive(chars: &[char]) -> bool {
    (1..=MAX_REPEATED_UNIT.min(chars.len() / 2)).any(|unit| {
        chars.len().is_multiple_of(unit) && chars.chunks(unit).all(|c| c == &chars[..unit])
    })
}

/// Every character one more (or every one one less) than the one before, digits and ASCII
/// letters wrapping around (`…7890123`, `…xyzabc`), as on a keyboard row of digits.
fn is_sequential(chars: &[char]) -> bool {
    fn step(a: char, b: char) -> Option<i8> {
        let next = |c: char| match c {
            '9' => Some('0'),
            'z' => Some('a'),
            c => char::from_u32(u32::from(c) + 1),
        };
        if next(a) == Some(b) {
            Some(1)
        } else if next(b) == Some(a) {
            Some(-1)
        } else {
            None
        }
    }
    let Some(first) = chars.windows(2).next().and_then(|w| step(w[0], w[1])) else {
        return false;
    };
    chars.windows(2).all(|w| step(w[0], w[1]) == Some(first))
}

/// Whether the (folded) password contains the username, or the local part of an e-mail
/// style username; parts shorter than 3 characters are not checked, as they occur by chance.
fn contains_username(folded_password: &str, username: &str) -> bool {
    let name = fold(username.trim());
    let local = name.split_once('@').map(|(local, _)| local);
    [Some(name.as_str()), local]
        .into_iter()
        .flatten()
        .any(|part| part.chars().count() >= 3 && folded_password.contains(part))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(password: &str) -> Result<(), PasswordRejected> {
        PasswordPolicy::default().check(password, "jdoe")
    }

    /// NIST's floor: lets the shorter list entries be tested.
    fn eight() -> PasswordPolicy {
        PasswordPolicy {
            min_len: 8,
            max_len: 128,
        }
    }

    #[test]
    fn bundled_list_loads() {
        let list = common_passwords();
        assert_eq!(list.len(), 17_950, "data/README.md states the count");
        assert!(list.iter().all(|p| p.chars().count() >= NIST_MIN_LEN));
        assert!(list.iter().all(|p| p.to_lowercase() == **p));
        for entry in [
            "password",
            "password1234",
            "iloveyou",
            "trustno1",
            "qwertyuiop",
            "123456789012",
        ] {
            assert!(list.contains(entry), "{entry}");
        }
    }

    #[test]
    fn common_passwords_are_refused_whatever_the_case() {
        for pw in [
            "password", "Password", "PASSWORD", "iloveyou", "trustno1", "passw0rd",
        ] {
            assert_eq!(
                eight().check(pw, "jdoe"),
                Err(PasswordRejected::Common),
                "{pw}"
            );
        }
        for pw in [
            "Password1234",
            "qwerty123456",
            "1qaz2wsx3edc",
            "leavemealone",
            "Administrator",
        ] {
            assert_eq!(check(pw), Err(PasswordRejected::Common), "{pw}");
        }
        // Compared after NFKC: fullwidth letters do not dodge the list.
        assert_eq!(
            check("Ｐａｓｓｗｏｒｄ１２３４"),
            Err(PasswordRejected::Common)
        );
        let message = check("Password1234").unwrap_err().to_string();
        assert!(message.contains("breached/common passwords"));
        assert!(
            !message.to_lowercase().contains("password1234"),
            "never echoed"
        );
    }

    #[test]
    fn long_passphrases_are_accepted() {
        assert_eq!(check("correct horse battery staple"), Ok(()));
        assert_eq!(check("Tram 14 to the harbour, then the ferry"), Ok(()));
        assert_eq!(check("grüne Äpfel für Øystein"), Ok(()));
    }

    #[test]
    fn length_is_counted_in_code_points_after_nfkc() {
        assert_eq!(
            check("short pass"),
            Err(PasswordRejected::TooShort { min: 12 })
        );
        assert_eq!(check("kite sunset!"), Ok(()), "exactly 12");
        assert_eq!(check("ﬁve ﬁgs tea"), Ok(()), "11 as typed, 13 after NFKC");
        assert_eq!(
            check("ééééx ééééy"),
            Err(PasswordRejected::TooShort { min: 12 })
        );
        assert_eq!(
            check("e\u{301}e\u{301}e\u{301}e\u{301}e\u{301}e\u{301}x"),
            Err(PasswordRejected::TooShort { min: 12 })
        );
        let at_max = format!("river{}", "q7".repeat(70))
            .chars()
            .take(128)
            .collect::<String>();
        assert_eq!(at_max.chars().count(), 128);
        assert_eq!(check(&at_max), Ok(()));
        assert_eq!(
            check(&format!("{at_max}x")),
            Err(PasswordRejected::TooLong { max: 128 })
        );
        assert_eq!(
            check(&"x".repeat(1 << 20)),
            Err(PasswordRejected::TooLong { max: 128 })
        );
    }

    #[test]
    fn min_len_never_drops_below_eight() {
        let lax = PasswordPolicy {
            min_len: 4,
            max_len: 128,
        };
        assert_eq!(
            lax.check("tr4m!x", "jdoe"),
            Err(PasswordRejected::TooShort { min: 8 })
        );
        assert_eq!(lax.validate(), Err(PolicyError::MinTooSmall(4)));
        assert_eq!(PasswordPolicy::default().validate(), Ok(()));
        let bad_max = PasswordPolicy {
            min_len: 12,
            max_len: 32,
        };
        assert_eq!(bad_max.validate(), Err(PolicyError::BadMax(32)));
    }

    #[test]
    fn the_username_is_refused_inside_the_password() {
        let p = PasswordPolicy::default();
        assert_eq!(
            p.check("alicealicealice!", "alice"),
            Err(PasswordRejected::ContainsUsername)
        );
        assert_eq!(
            p.check("my name is ALICE ok", "Alice"),
            Err(PasswordRejected::ContainsUsername)
        );
        assert_eq!(
            p.check("ｊｄｏｅ is my login", "jdoe"),
            Err(PasswordRejected::ContainsUsername)
        );
        assert_eq!(
            p.check("jane.doe.rocks.2024", "jane.doe@hospital.example"),
            Err(PasswordRejected::ContainsUsername),
        );
        assert_eq!(
            p.check("jane.doe@hospital.example", "Jane.Doe@Hospital.example"),
            Err(PasswordRejected::ContainsUsername)
        );
        // Short names occur by chance and are not checked.
        assert_eq!(p.check("a quiet evening walk", "al"), Ok(()));
        assert_eq!(p.check("a quiet evening walk", "ev@x"), Ok(()));
    }

    #[test]
    fn repetition_is_refused() {
        assert_eq!(check("aaaaaaaaaaaa"), Err(PasswordRejected::Repetitive));
        assert_eq!(check("AAAAAAaaaaaa"), Err(PasswordRejected::Repetitive));
        assert_eq!(check("ééééééééééééé"), Err(PasswordRejected::Repetitive));
        assert_eq!(check("abababababab"), Err(PasswordRejected::Repetitive));
        assert_eq!(check("x1y!x1y!x1y!"), Err(PasswordRejected::Repetitive));
        assert_eq!(check("123123123123"), Err(PasswordRejected::Repetitive));
        // A five-character unit is not a short pattern.
        assert_eq!(check("kite!kite!kite!"), Ok(()));
        assert_eq!(check("aaaaaaaaaaab"), Ok(()));
    }

    #[test]
    fn sequences_are_refused() {
        for pw in [
            "abcdefghijkl",
            "ABCDEFGHIJKL",
            "123456789012",
            "210987654321",
            "lkjihgfedcba",
            "wxyzabcdefgh",
            "789012345678",
        ] {
            assert_eq!(check(pw), Err(PasswordRejected::Sequential), "{pw}");
        }
        assert_eq!(check("abcdefghijkm"), Ok(()));
        assert_eq!(check("abcdef123456"), Ok(()));
    }
}
