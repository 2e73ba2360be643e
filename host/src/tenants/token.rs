//! Bearer tokens: made here, stored by the operator only as SHA-256 hashes.

use sha2::{Digest, Sha256};

/// What every token opbox makes starts with, so that a leaked one is easy to
/// recognise (and to search for in logs and repositories).
pub const TOKEN_PREFIX: &str = "opbox_";

/// The SHA-256 of a token: what the host keeps and compares.
pub type TokenHash = [u8; 32];

/// A fresh token: the prefix and 32 random bytes from the operating system,
/// in hex.
pub fn new_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(format!("{TOKEN_PREFIX}{}", to_hex(&bytes)))
}

/// The hash of `token`.
pub fn hash_token(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// The hash of `token` as the config writes it: 64 lowercase hex digits.
pub fn hash_token_hex(token: &str) -> String {
    to_hex(&hash_token(token))
}

/// Reads a hash written as 64 hex digits (either case).
pub fn parse_hash(hex: &str) -> Option<TokenHash> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut hash = [0u8; 32];
    for (byte, pair) in hash.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(hash)
}

fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut hex, byte| {
        let _ = write!(hex, "{byte:02x}");
        hex
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_fresh_and_hash_round_trips() {
        let (a, b) = (new_token().unwrap(), new_token().unwrap());
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == TOKEN_PREFIX.len() + 64);
        let hex = hash_token_hex(&a);
        assert_eq!(parse_hash(&hex), Some(hash_token(&a)));
        assert_eq!(parse_hash(&hex.to_uppercase()), Some(hash_token(&a)));
    }

    #[test]
    fn known_sha256() {
        // `printf abc | sha256sum`
        assert_eq!(
            hash_token_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn malformed_hashes_are_refused() {
        for bad in ["", "abc", &"g".repeat(64), &"a".repeat(63), &"é".repeat(32)] {
            assert_eq!(parse_hash(bad), None, "{bad:?}");
        }
    }
}
