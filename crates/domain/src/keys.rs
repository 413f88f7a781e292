//! API keys: the second factor an instance presents (`authorization:
//! Bearer <key>`) on top of its client certificate. A key is 32 random
//! bytes, shown once when issued; the hub stores only a random salt and
//! SHA-256(salt || key). Because keys are random and long (unlike
//! passwords), a fast hash is enough: guessing is hopeless either way.

use ring::rand::{SecureRandom, SystemRandom};

use crate::error::{Error, Result};
use crate::model::{ApiKey, UnixMillis};

/// What every key starts with, so leaked keys are easy to recognise.
pub const KEY_PREFIX: &str = "lhk_";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn random(len: usize) -> Result<Vec<u8>> {
    let mut bytes = vec![0u8; len];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::Internal("no randomness available".into()))?;
    Ok(bytes)
}

fn digest(salt: &str, key: &str) -> String {
    let mut input = Vec::with_capacity(salt.len() + key.len());
    input.extend_from_slice(salt.as_bytes());
    input.extend_from_slice(key.as_bytes());
    hex(ring::digest::digest(&ring::digest::SHA256, &input).as_ref())
}

/// A new key for `instance_id`: the key (to show once) and what to store.
pub fn issue(instance_id: &str, issued_by: &str, now: UnixMillis) -> Result<(String, ApiKey)> {
    let key = format!("{KEY_PREFIX}{}", hex(&random(32)?));
    let salt = hex(&random(16)?);
    let hash = digest(&salt, &key);
    Ok((
        key,
        ApiKey {
            instance_id: instance_id.to_string(),
            salt,
            hash,
            issued_at: now,
            issued_by: issued_by.to_string(),
        },
    ))
}

/// Whether `key` is the one `stored` was issued for (constant time).
pub fn verify(stored: &ApiKey, key: &str) -> bool {
    let computed = digest(&stored.salt, key);
    computed.len() == stored.hash.len()
        && computed
            .bytes()
            .zip(stored.hash.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// The key in an `authorization: Bearer <key>` header value.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, key) = header.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_keys_verify_and_others_do_not() {
        let (key, stored) = issue("a", "ops", 1).unwrap();
        assert!(key.starts_with(KEY_PREFIX) && key.len() == KEY_PREFIX.len() + 64);
        assert!(verify(&stored, &key));
        assert!(!verify(&stored, "lhk_wrong"));
        let (other, _) = issue("a", "ops", 1).unwrap();
        assert_ne!(key, other, "keys are random");
        assert!(
            !stored.hash.contains(&key[KEY_PREFIX.len()..]),
            "the key is not stored"
        );
    }

    #[test]
    fn bearer_header() {
        assert_eq!(bearer("Bearer lhk_1"), Some("lhk_1"));
        assert_eq!(bearer("bearer  lhk_1 "), Some("lhk_1"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("lhk_1"), None);
    }
}
