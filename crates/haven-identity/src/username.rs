//! Usernames: one canonical form for every spelling a person would read as the same name.
//!
//! A username is compared, indexed and throttled in its canonical form only, so `Alice`,
//! `ALICE` and fullwidth `ＡＬＩＣＥ` are one account and cannot be registered twice. The form
//! is `NFKC(lowercase(NFKC(trimmed)))`:
//!
//! - NFKC (Unicode compatibility normalization) folds compatibility look-alikes: fullwidth
//!   letters, ligatures (`ﬁ` → `fi`), the Kelvin sign (`K` → `K`), superscripts.
//! - `str::to_lowercase` then approximates Unicode full case folding. It is not identical
//!   (`ß` stays `ß` where case folding gives `ss`, and Cherokee folds to upper case), but it
//!   is total and stable, which is what a lookup key needs.
//! - NFKC again, because lowercasing can leave text that is no longer normalized.
//!
//! After folding a name has 1 to [`MAX_USERNAME_CHARS`] characters, each a letter, a digit
//! or one of `.`, `_`, `-`, `@` (so e-mail addresses work); combining marks are allowed after
//! the first character, since many scripts need them. Whitespace inside a name and control
//! characters are refused.
//!
//! Out of scope: confusables across scripts (Latin `a` and Cyrillic `а` stay different
//! names). Detecting them needs the Unicode confusables tables (UTS #39), and both names
//! still need their own password; an administrator creates accounts, not the public.

use std::fmt;

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

/// The longest username, in characters after normalization.
pub const MAX_USERNAME_CHARS: usize = 64;

/// Input longer than this (in bytes, before normalization) is refused without normalizing
/// it: no 64-character name needs more, and it bounds the work done on client input.
const MAX_INPUT_BYTES: usize = 1024;

/// Why a string is not a valid username. Messages never repeat the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsernameError {
    #[error("a username cannot be empty")]
    Empty,
    #[error("a username can be at most {MAX_USERNAME_CHARS} characters long")]
    TooLong,
    #[error("a username cannot contain spaces")]
    Whitespace,
    #[error("a username cannot contain control characters")]
    Control,
    /// The offending character, shown escaped (`'\u{202e}'`) by the message.
    #[error("a username can only contain letters, digits, '.', '_', '-' and '@', not {0:?}")]
    BadCharacter(char),
}

/// A username in canonical form; see the module docs.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Username(String);

impl Username {
    /// Trims, normalizes and checks a username as typed.
    ///
    /// # Errors
    /// Empty, too long, whitespace inside, control characters, other disallowed characters.
    pub fn parse(s: &str) -> Result<Self, UsernameError> {
        let trimmed = s.trim();
        if trimmed.is_empty() {
            return Err(UsernameError::Empty);
        }
        if trimmed.len() > MAX_INPUT_BYTES {
            return Err(UsernameError::TooLong);
        }
        let folded = fold(trimmed);
        for (i, c) in folded.chars().enumerate() {
            if c.is_control() {
                return Err(UsernameError::Control);
            }
            if c.is_whitespace() {
                return Err(UsernameError::Whitespace);
            }
            let allowed = c.is_alphanumeric()
                || matches!(c, '.' | '_' | '-' | '@')
                || (i > 0 && is_combining_mark(c));
            if !allowed {
                return Err(UsernameError::BadCharacter(c));
            }
        }
        match folded.chars().count() {
            0 => Err(UsernameError::Empty),
            n if n > MAX_USERNAME_CHARS => Err(UsernameError::TooLong),
            _ => Ok(Self(folded)),
        }
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Username {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// `NFKC(lowercase(NFKC(s)))`: the caseless, compatibility-folded form used for usernames and
/// for comparing passwords with the common-password list and the username.
pub(crate) fn fold(s: &str) -> String {
    let nfkc: String = s.nfkc().collect();
    nfkc.to_lowercase().nfkc().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> String {
        Username::parse(s).unwrap().as_str().to_owned()
    }

    #[test]
    fn case_and_compatibility_forms_collide() {
        assert_eq!(name("Alice"), "alice");
        assert_eq!(name("ALICE"), "alice");
        assert_eq!(name("ＡＬＩＣＥ"), "alice", "fullwidth");
        assert_eq!(name("ﬁona"), "fiona", "ligature");
        assert_eq!(name("\u{212A}ate"), "kate", "Kelvin sign");
        assert_eq!(name("Dr.Who_2@Example.ORG"), "dr.who_2@example.org");
        assert_eq!(name("ｊｏｈｎ．ｄｏｅ"), "john.doe", "fullwidth full stop");
        assert_eq!(name("x²"), "x2", "superscript");
        assert_eq!(
            Username::parse("Alice").unwrap(),
            Username::parse("ａｌｉｃｅ").unwrap()
        );
    }

    #[test]
    fn non_latin_names_and_marks() {
        assert_eq!(name("Ærøskøbing"), "ærøskøbing");
        assert_eq!(name("ΣΩΚΡΆΤΗΣ"), "σωκράτης");
        assert_eq!(name("जॉन"), "जॉन", "Devanagari with a vowel sign");
        // A decomposed é composes: one name, whatever the keyboard sent.
        assert_eq!(name("Rene\u{301}"), name("René"));
        assert!(matches!(
            Username::parse("\u{301}bob"),
            Err(UsernameError::BadCharacter('\u{301}'))
        ));
    }

    #[test]
    fn canonical_form_is_stable() {
        for s in [
            "Alice",
            "ＡＬＩＣＥ",
            "ﬁ",
            "\u{212A}",
            "İstanbul",
            "ẞtraße",
            "ǅemal",
            "ΣΑΣ",
            "ﬃx",
        ] {
            let once = name(s);
            assert_eq!(name(&once), once, "{s}");
        }
    }

    #[test]
    fn trims_but_refuses_inner_whitespace() {
        assert_eq!(name("  bob \t\n"), "bob");
        assert_eq!(
            name("\u{3000}bob\u{a0}"),
            "bob",
            "ideographic space, no-break space"
        );
        assert_eq!(Username::parse("bob smith"), Err(UsernameError::Whitespace));
        assert_eq!(
            Username::parse("bob\u{3000}smith"),
            Err(UsernameError::Whitespace)
        );
        assert_eq!(
            Username::parse("bob\u{a0}smith"),
            Err(UsernameError::Whitespace)
        );
    }

    #[test]
    fn refuses_control_and_other_characters() {
        assert_eq!(Username::parse("bob\u{0}"), Err(UsernameError::Control));
        assert_eq!(Username::parse("bob\tsmith"), Err(UsernameError::Control));
        assert_eq!(
            Username::parse("bo\u{1b}[31mb"),
            Err(UsernameError::Control)
        );
        assert_eq!(
            Username::parse("bob\u{202e}"),
            Err(UsernameError::BadCharacter('\u{202e}'))
        );
        assert_eq!(
            Username::parse("bob\u{200b}x"),
            Err(UsernameError::BadCharacter('\u{200b}'))
        );
        for bad in [
            "bob/admin",
            "bob:x",
            "b'ob",
            "<bob>",
            "bob+1",
            "bob😀",
            "a,b",
            "a%20b",
        ] {
            assert!(
                matches!(Username::parse(bad), Err(UsernameError::BadCharacter(_))),
                "{bad}"
            );
        }
        let message = Username::parse("bob\u{202e}").unwrap_err().to_string();
        assert!(message.contains("\\u{202e}"), "shown escaped: {message}");
    }

    #[test]
    fn length_limits() {
        assert_eq!(Username::parse(""), Err(UsernameError::Empty));
        assert_eq!(Username::parse("   "), Err(UsernameError::Empty));
        assert_eq!(name("a"), "a");
        assert_eq!(name(&"a".repeat(64)).len(), 64);
        assert_eq!(
            Username::parse(&"a".repeat(65)),
            Err(UsernameError::TooLong)
        );
        // Counted in characters after folding, not bytes.
        assert_eq!(name(&"é".repeat(64)).chars().count(), 64);
        assert_eq!(
            Username::parse(&"é".repeat(65)),
            Err(UsernameError::TooLong)
        );
        // A ligature that expands past the limit.
        assert_eq!(
            Username::parse(&"ﬃ".repeat(22)),
            Err(UsernameError::TooLong)
        );
        assert_eq!(name(&"ﬃ".repeat(21)).len(), 63);
        assert_eq!(
            Username::parse(&"a".repeat(100_000)),
            Err(UsernameError::TooLong)
        );
    }

    #[test]
    fn display_and_as_ref() {
        let u = Username::parse("Bob").unwrap();
        assert_eq!(u.to_string(), "bob");
        assert_eq!(u.as_ref(), "bob");
    }
}
