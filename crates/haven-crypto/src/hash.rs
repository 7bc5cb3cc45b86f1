//! SHA-256 over several slices without concatenating them first.

use sha2::{Digest, Sha256};

/// SHA-256 of the concatenation of `parts`. Callers that hash framed data (a domain tag, fixed
/// width integers, a payload) pass the pieces as they are; nothing is copied.
#[must_use]
pub fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_known_vector_and_ignores_split_points() {
        // FIPS 180-2 example: SHA-256("abc").
        let expected = [
            0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40, 0xde, 0x5d, 0xae,
            0x22, 0x23, 0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61,
            0xf2, 0x00, 0x15, 0xad,
        ];
        assert_eq!(sha256(&[b"abc"]), expected);
        assert_eq!(sha256(&[b"a", b"", b"bc"]), expected);
        assert_ne!(sha256(&[b"abd"]), expected);
    }
}
