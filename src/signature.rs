//! Standard Webhooks signatures (<https://www.standardwebhooks.com>), the scheme Supabase's auth
//! hooks and Svix use, for both directions: requests to our webhook listener are verified with
//! it, and our alert webhook POSTs are signed with it, so one verifier serves both.
//!
//! A message is signed as `base64(HMAC-SHA256(key, "<webhook-id>.<webhook-timestamp>.<body>"))`
//! and sent as `webhook-signature: v1,<signature>`; several space-separated `v1,` signatures may
//! be sent (during a key rotation). The key is the base64 part of a `whsec_…` secret. A leaf:
//! nothing of ours is imported.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};

type HmacSha256 = Hmac<sha2_hmac::Sha256>;

/// The header names of the scheme.
pub const ID_HEADER: &str = "webhook-id";
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
pub const SIGNATURE_HEADER: &str = "webhook-signature";
/// The prefix of a secret in its text form.
pub const SECRET_PREFIX: &str = "whsec_";
/// How far a timestamp may be from now, either way, before a message is refused as stale.
pub const TIMESTAMP_TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// A new secret: `whsec_` and the base64 of 24 random bytes (192 bits).
pub fn generate_secret() -> String {
    let mut key = [0u8; 24];
    getrandom::fill(&mut key).expect("the OS random source is available");
    format!("{SECRET_PREFIX}{}", STANDARD.encode(key))
}

/// The HMAC key of a secret: the decoded base64 after `whsec_`; a secret without the prefix
/// (an operator's own alerts secret) is used as its bytes.
pub fn key_of(secret: &str) -> Vec<u8> {
    match secret.strip_prefix(SECRET_PREFIX) {
        Some(encoded) => STANDARD
            .decode(encoded)
            .unwrap_or_else(|_| secret.as_bytes().to_vec()),
        None => secret.as_bytes().to_vec(),
    }
}

/// `v1,<base64 signature>` of a message, the value of the signature header.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    format!(
        "v1,{}",
        STANDARD.encode(mac(key, id, timestamp, body).finalize().into_bytes())
    )
}

fn mac(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// Why a message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A header of the scheme is missing or not of its form.
    Malformed,
    /// The timestamp is further from now than [`TIMESTAMP_TOLERANCE`].
    Stale,
    /// No `v1` signature matches any of the keys.
    BadSignature,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Malformed => {
                "missing or malformed webhook-id, webhook-timestamp or webhook-signature header"
            }
            Refusal::Stale => "webhook-timestamp is more than 5 minutes from now",
            Refusal::BadSignature => "no webhook-signature matches the hook's secret",
        }
    }
}

/// Checks a message's headers against `keys` (the current secret's and, during a rotation's
/// grace, the previous one's): the timestamp within the tolerance of `now`, and at least one
/// `v1,` signature matching one key, compared in constant time.
pub fn verify(
    keys: &[Vec<u8>],
    id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
    now: SystemTime,
) -> Result<(), Refusal> {
    if id.is_empty() {
        return Err(Refusal::Malformed);
    }
    let timestamp: i64 = timestamp.trim().parse().map_err(|_| Refusal::Malformed)?;
    let now = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    if timestamp.abs_diff(now) > TIMESTAMP_TOLERANCE.as_secs() {
        return Err(Refusal::Stale);
    }
    let candidates: Vec<Vec<u8>> = signatures
        .split_whitespace()
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|s| STANDARD.decode(s).ok())
        .collect();
    if candidates.is_empty() {
        return Err(Refusal::Malformed);
    }
    let matches = keys.iter().any(|key| {
        candidates.iter().any(|candidate| {
            mac(key, id, timestamp, body)
                .verify_slice(candidate)
                .is_ok()
        })
    });
    if matches {
        Ok(())
    } else {
        Err(Refusal::BadSignature)
    }
}

/// Equality of two secrets in time that depends on their length only.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Seconds since the epoch, as `webhook-timestamp` carries them.
pub fn unix_seconds(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks reference libraries.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: i64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;

    fn at(seconds: i64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds as u64)
    }

    #[test]
    fn the_reference_example_signs_to_its_published_signature() {
        assert_eq!(
            sign(&key_of(SECRET), ID, TIMESTAMP, BODY),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn a_matching_signature_among_several_is_accepted_and_anything_else_refused() {
        let key = key_of(SECRET);
        let keys = [key.clone()];
        let good = sign(&key, ID, TIMESTAMP, BODY);
        let other = sign(&key_of(&generate_secret()), ID, TIMESTAMP, BODY);
        let both = format!("{other} {good}");
        let now = at(TIMESTAMP + 10);
        assert_eq!(verify(&keys, ID, "1614265330", &both, BODY, now), Ok(()));
        assert_eq!(
            verify(&keys, ID, "1614265330", &other, BODY, now),
            Err(Refusal::BadSignature)
        );
        assert_eq!(
            verify(&keys, ID, "1614265330", &good, b"{}", now),
            Err(Refusal::BadSignature)
        );
        assert_eq!(
            verify(&keys, "msg_other", "1614265330", &good, BODY, now),
            Err(Refusal::BadSignature)
        );
        assert_eq!(
            verify(&keys, ID, "1614265330", &good, BODY, at(TIMESTAMP + 301)),
            Err(Refusal::Stale)
        );
        assert_eq!(
            verify(&keys, ID, "1614265330", &good, BODY, at(TIMESTAMP - 301)),
            Err(Refusal::Stale)
        );
        assert_eq!(
            verify(&keys, ID, "soon", &good, BODY, now),
            Err(Refusal::Malformed)
        );
        assert_eq!(
            verify(&keys, ID, "1614265330", "v2,abc", BODY, now),
            Err(Refusal::Malformed)
        );
    }

    #[test]
    fn generated_secrets_are_distinct_and_of_the_standard_form() {
        let (a, b) = (generate_secret(), generate_secret());
        assert_ne!(a, b);
        assert!(a.starts_with(SECRET_PREFIX));
        assert_eq!(key_of(&a).len(), 24);
        assert!(constant_time_eq(a.as_bytes(), a.as_bytes()));
        assert!(!constant_time_eq(a.as_bytes(), b.as_bytes()));
    }
}
