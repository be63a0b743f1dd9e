//! Standard Webhooks signatures (<https://www.standardwebhooks.com>): `whsec_` signing secrets,
//! the `webhook-id` / `webhook-timestamp` / `webhook-signature` headers a receiver gets, and
//! their verification (for the dev receiver and for tests).
//!
//! Following the specification exactly is what lets every receiver verify our deliveries with an
//! off-the-shelf Standard Webhooks (or Svix) library:
//!
//! - the signed content is `{webhook-id}.{webhook-timestamp}.{body}`, the body byte for byte;
//! - the signature is `v1,` + base64 (standard alphabet, padded) of HMAC-SHA256 over it;
//! - during secret rotation one signature per live secret, space-separated;
//! - a verifier accepts if any `v1` signature matches (compared in constant time), ignores other
//!   versions (`v1a` asymmetric signatures, future ones), and refuses timestamps outside a
//!   tolerance to stop replays.
//!
//! Secrets never appear in logs: [`SigningSecret`]'s `Debug` is redacted, it has no `Display`,
//! and errors never quote key material.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Name of the header carrying the message id (our event id, the same on every retry; receivers
/// deduplicate on it).
pub const HEADER_ID: &str = "webhook-id";
/// Name of the header carrying the unix time (seconds) of this attempt.
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
/// Name of the header carrying the space-separated signatures.
pub const HEADER_SIGNATURE: &str = "webhook-signature";

/// The prefix that marks a symmetric Standard Webhooks secret.
pub const SECRET_PREFIX: &str = "whsec_";
/// The version tag of HMAC-SHA256 signatures.
pub const SIGNATURE_VERSION: &str = "v1";

/// The shortest key accepted: the specification asks for at least 24 bytes (192 bits), and its
/// own test secrets are exactly that long.
pub const MIN_SECRET_BYTES: usize = 24;
/// The longest key accepted: the specification's maximum of 512 bits. (HMAC would hash a longer
/// key down anyway.)
pub const MAX_SECRET_BYTES: usize = 64;
/// How many random bytes [`SigningSecret::generate`] draws.
pub const GENERATED_SECRET_BYTES: usize = 32;

/// The default tolerance between a message's timestamp and the verifier's clock, in either
/// direction: 5 minutes, as in the specification's reference libraries.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);

type HmacSha256 = Hmac<Sha256>;

/// A symmetric signing secret: `whsec_` + base64 of the raw key bytes.
///
/// Its `Debug` prints `SigningSecret(whsec_…redacted)`; there is deliberately no `Display`, so a
/// secret cannot slip into a log line through `{}` or `%secret`. Use [`Self::as_str`] where the
/// secret must be shown (the admin API handing it to its owner).
#[derive(Clone)]
pub struct SigningSecret {
    key: Vec<u8>,
    /// The canonical `whsec_` form, kept so `as_str` can borrow it.
    encoded: String,
    /// The HMAC keyed once; signing clones it instead of re-deriving the padded keys.
    mac: HmacSha256,
}

/// Why a signing secret is refused. The messages never quote the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// Nothing after the optional `whsec_` prefix.
    #[error("the signing secret is empty")]
    Empty,
    /// Not base64 of the standard alphabet with padding.
    #[error("the signing secret is not `whsec_` followed by base64 (standard alphabet, padded)")]
    InvalidBase64,
    /// The key is shorter than [`MIN_SECRET_BYTES`].
    #[error(
        "the signing secret's key is {bytes} bytes long; at least {MIN_SECRET_BYTES} are required"
    )]
    TooShort {
        /// The key's length.
        bytes: usize,
    },
    /// The key is longer than [`MAX_SECRET_BYTES`].
    #[error(
        "the signing secret's key is {bytes} bytes long; at most {MAX_SECRET_BYTES} are allowed"
    )]
    TooLong {
        /// The key's length.
        bytes: usize,
    },
}

impl SigningSecret {
    /// A new secret of [`GENERATED_SECRET_BYTES`] random bytes. The generator must be a
    /// cryptographically secure one (`rand::rng()` in production; a seeded `StdRng` in tests).
    #[must_use]
    pub fn generate<R: rand::CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut key = [0_u8; GENERATED_SECRET_BYTES];
        rng.fill_bytes(&mut key);
        Self::from_valid_key(key.to_vec())
    }

    /// Reads a secret: `whsec_<base64>`, or the bare base64 as the specification's libraries
    /// also accept (surrounding whitespace is ignored). The key must be
    /// [`MIN_SECRET_BYTES`]..=[`MAX_SECRET_BYTES`] bytes long.
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let text = text.trim();
        let encoded = text.strip_prefix(SECRET_PREFIX).unwrap_or(text);
        if encoded.is_empty() {
            return Err(SecretError::Empty);
        }
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| SecretError::InvalidBase64)?;
        Self::from_bytes(&key)
    }

    /// A secret from raw key bytes, [`MIN_SECRET_BYTES`]..=[`MAX_SECRET_BYTES`] long.
    pub fn from_bytes(key: &[u8]) -> Result<Self, SecretError> {
        match key.len() {
            0 => Err(SecretError::Empty),
            bytes if bytes < MIN_SECRET_BYTES => Err(SecretError::TooShort { bytes }),
            bytes if bytes > MAX_SECRET_BYTES => Err(SecretError::TooLong { bytes }),
            _ => Ok(Self::from_valid_key(key.to_vec())),
        }
    }

    fn from_valid_key(key: Vec<u8>) -> Self {
        let encoded = format!("{SECRET_PREFIX}{}", STANDARD.encode(&key));
        let mac = HmacSha256::new_from_slice(&key).expect("HMAC accepts keys of any length");
        Self { key, encoded, mac }
    }

    /// The secret in its canonical `whsec_<base64>` form — the secret itself: never log it.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.encoded
    }

    /// The signature of one message with this secret; see [`sign`].
    #[must_use]
    pub fn sign(&self, msg_id: &str, timestamp_secs: i64, body: &[u8]) -> String {
        format!(
            "{SIGNATURE_VERSION},{}",
            STANDARD.encode(self.mac_of(msg_id, timestamp_secs, body))
        )
    }

    fn mac_of(&self, msg_id: &str, timestamp_secs: i64, body: &[u8]) -> [u8; 32] {
        let mut mac = self.mac.clone();
        // Fed in pieces: the body need not be copied, nor be UTF-8.
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp_secs.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.finalize().into_bytes().into()
    }
}

impl FromStr for SigningSecret {
    type Err = SecretError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningSecret(whsec_…redacted)")
    }
}

impl PartialEq for SigningSecret {
    /// Compares the keys in constant time, so comparing a guess with a secret leaks nothing.
    fn eq(&self, other: &Self) -> bool {
        self.key.ct_eq(&other.key).into()
    }
}

impl Eq for SigningSecret {}

/// The signature of one message: `v1,<base64 HMAC-SHA256(key, "{msg_id}.{timestamp}.{body}")>`.
///
/// `msg_id` must not contain a `.` (the specification's advice, so the signed content cannot be
/// ambiguous); our event ids never do.
#[must_use]
pub fn sign(secret: &SigningSecret, msg_id: &str, timestamp_secs: i64, body: &[u8]) -> String {
    secret.sign(msg_id, timestamp_secs, body)
}

/// The `webhook-signature` header value: one signature per live secret, space-separated, in the
/// order given (during rotation: the new secret and the previous one until it expires).
/// Empty when `secrets` is; [`WebhookHeaders::new`] refuses that case.
#[must_use]
pub fn signature_header(
    secrets: &[&SigningSecret],
    msg_id: &str,
    timestamp_secs: i64,
    body: &[u8],
) -> String {
    secrets
        .iter()
        .map(|secret| secret.sign(msg_id, timestamp_secs, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The three Standard Webhooks header values of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookHeaders {
    /// The `webhook-id` value: the event id.
    pub id: String,
    /// The `webhook-timestamp` value: unix seconds of this attempt.
    pub timestamp: String,
    /// The `webhook-signature` value: space-separated signatures.
    pub signature: String,
}

/// Refusal to build headers without any secret: an unsigned webhook would be unverifiable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the subscription has no live signing secret; webhooks are never sent unsigned")]
pub struct NoSigningSecret;

impl WebhookHeaders {
    /// Signs one attempt of message `msg_id` made at `timestamp_secs` (see [`unix_seconds`])
    /// with every live secret.
    pub fn new(
        secrets: &[&SigningSecret],
        msg_id: &str,
        timestamp_secs: i64,
        body: &[u8],
    ) -> Result<Self, NoSigningSecret> {
        if secrets.is_empty() {
            return Err(NoSigningSecret);
        }
        Ok(Self {
            id: msg_id.to_owned(),
            timestamp: timestamp_secs.to_string(),
            signature: signature_header(secrets, msg_id, timestamp_secs, body),
        })
    }

    /// The headers as `(name, value)` pairs, ready to be set on a request.
    #[must_use]
    pub fn pairs(&self) -> [(&'static str, &str); 3] {
        [
            (HEADER_ID, self.id.as_str()),
            (HEADER_TIMESTAMP, self.timestamp.as_str()),
            (HEADER_SIGNATURE, self.signature.as_str()),
        ]
    }
}

/// Unix seconds of a time (rounded down; negative before 1970), as `webhook-timestamp` carries.
#[must_use]
pub fn unix_seconds(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        Err(before) => {
            let before = before.duration();
            let whole = i64::try_from(before.as_secs()).unwrap_or(i64::MAX);
            let rounded_down = whole.saturating_add(i64::from(before.subsec_nanos() > 0));
            -rounded_down
        }
    }
}

/// The Standard Webhooks headers of a received request, as far as present. Header names are
/// case-insensitive in HTTP; look them up accordingly (an `http::HeaderMap` does).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReceivedHeaders<'a> {
    /// The `webhook-id` value.
    pub id: Option<&'a str>,
    /// The `webhook-timestamp` value.
    pub timestamp: Option<&'a str>,
    /// The `webhook-signature` value.
    pub signature: Option<&'a str>,
}

impl<'a> ReceivedHeaders<'a> {
    /// Reads the three headers through a lookup by (lowercase) header name.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<&'a str>) -> Self {
        Self {
            id: lookup(HEADER_ID),
            timestamp: lookup(HEADER_TIMESTAMP),
            signature: lookup(HEADER_SIGNATURE),
        }
    }
}

/// Why a received webhook does not verify. Header values are quoted with `{:?}` so a hostile
/// value cannot forge log lines.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A header is absent or empty.
    #[error("the {0} header is missing")]
    MissingHeader(&'static str),
    /// `webhook-timestamp` is not canonical integer unix seconds.
    #[error("the webhook-timestamp header {0:?} is not integer unix seconds")]
    InvalidTimestamp(String),
    /// `webhook-signature` holds nothing of the form `<version>,<signature>`.
    #[error("the webhook-signature header {0:?} has no `<version>,<signature>` entry")]
    MalformedSignatureHeader(String),
    /// `webhook-signature` holds signatures, but none of version `v1`.
    #[error("the webhook-signature header has no v1 signature")]
    NoSupportedSignature,
    /// No `v1` signature matches the secret: wrong secret, or the id, timestamp or body changed.
    #[error("no v1 signature matches: wrong secret, or the id, timestamp or body was altered")]
    NoMatchingSignature,
    /// The timestamp is more than the tolerance in the past (a replay, or a slow queue).
    #[error(
        "the webhook-timestamp {timestamp} is {age_secs}s old, more than the {tolerance_secs}s tolerance"
    )]
    TimestampTooOld {
        /// The message's timestamp.
        timestamp: i64,
        /// How far in the past it is, in seconds.
        age_secs: i128,
        /// The tolerance, in seconds.
        tolerance_secs: u64,
    },
    /// The timestamp is more than the tolerance in the future (a clock is wrong).
    #[error(
        "the webhook-timestamp {timestamp} is {ahead_secs}s in the future, more than the {tolerance_secs}s tolerance"
    )]
    TimestampTooNew {
        /// The message's timestamp.
        timestamp: i64,
        /// How far in the future it is, in seconds.
        ahead_secs: i128,
        /// The tolerance, in seconds.
        tolerance_secs: u64,
    },
}

/// A header's value, unless it is absent or blank.
fn present(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|value| !value.is_empty())
}

/// Verifies a received webhook against one secret (to accept several secrets, try each).
///
/// Checks, in order: the three headers are present and the timestamp is canonical integer
/// seconds; some `v1` signature matches (constant-time comparison; other versions are ignored);
/// the timestamp is within `tolerance` of `now` in either direction ([`DEFAULT_TOLERANCE`] is the
/// usual choice). The signature is checked before the timestamp so that "too old" / "too new"
/// is only ever reported for a genuine message — a clock-skew diagnosis, not a forgery's.
pub fn verify(
    secret: &SigningSecret,
    headers: &ReceivedHeaders<'_>,
    body: &[u8],
    now: SystemTime,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    let msg_id = present(headers.id).ok_or(VerifyError::MissingHeader(HEADER_ID))?;
    let timestamp_text =
        present(headers.timestamp).ok_or(VerifyError::MissingHeader(HEADER_TIMESTAMP))?;
    let signatures =
        present(headers.signature).ok_or(VerifyError::MissingHeader(HEADER_SIGNATURE))?;

    // Canonical only: the signed content contains the number as the sender wrote it, and a
    // sender following the specification writes plain decimal.
    let timestamp = timestamp_text
        .parse::<i64>()
        .ok()
        .filter(|parsed| parsed.to_string() == timestamp_text)
        .ok_or_else(|| VerifyError::InvalidTimestamp(timestamp_text.to_owned()))?;

    let expected = secret.mac_of(msg_id, timestamp, body);
    let mut any_entry = false;
    let mut any_v1 = false;
    let mut matched = false;
    for entry in signatures.split_ascii_whitespace() {
        let Some((version, signature)) = entry.split_once(',') else {
            continue;
        };
        any_entry = true;
        if version != SIGNATURE_VERSION {
            continue;
        }
        any_v1 = true;
        // Undecodable entries simply do not match.
        if let Ok(candidate) = STANDARD.decode(signature) {
            matched |= bool::from(candidate.ct_eq(&expected));
        }
    }
    if !any_entry {
        return Err(VerifyError::MalformedSignatureHeader(signatures.to_owned()));
    }
    if !any_v1 {
        return Err(VerifyError::NoSupportedSignature);
    }
    if !matched {
        return Err(VerifyError::NoMatchingSignature);
    }

    let age_secs = i128::from(unix_seconds(now)) - i128::from(timestamp);
    let tolerance_secs = tolerance.as_secs();
    if age_secs > i128::from(tolerance_secs) {
        return Err(VerifyError::TimestampTooOld {
            timestamp,
            age_secs,
            tolerance_secs,
        });
    }
    if -age_secs > i128::from(tolerance_secs) {
        return Err(VerifyError::TimestampTooNew {
            timestamp,
            ahead_secs: -age_secs,
            tolerance_secs,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    // The specification's published test vector, from the reference libraries' tests:
    // standard-webhooks/standard-webhooks, libraries/javascript/src/webhook.test.ts
    // ("sign function works").
    const VECTOR_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const VECTOR_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const VECTOR_TIMESTAMP: i64 = 1_614_265_330;
    const VECTOR_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const VECTOR_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn vector_secret() -> SigningSecret {
        SigningSecret::parse(VECTOR_SECRET).expect("the vector's secret is valid")
    }

    fn at(secs: i64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).expect("after 1970"))
    }

    fn headers<'a>(id: &'a str, timestamp: &'a str, signature: &'a str) -> ReceivedHeaders<'a> {
        ReceivedHeaders {
            id: Some(id),
            timestamp: Some(timestamp),
            signature: Some(signature),
        }
    }

    fn secret_from_seed(seed: u64) -> SigningSecret {
        SigningSecret::generate(&mut StdRng::seed_from_u64(seed))
    }

    #[test]
    fn reproduces_the_specification_test_vector() {
        let secret = vector_secret();
        assert_eq!(
            sign(&secret, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY),
            VECTOR_SIGNATURE
        );
        let timestamp = VECTOR_TIMESTAMP.to_string();
        let received = headers(VECTOR_ID, &timestamp, VECTOR_SIGNATURE);
        assert_eq!(
            verify(
                &secret,
                &received,
                VECTOR_BODY,
                at(VECTOR_TIMESTAMP),
                DEFAULT_TOLERANCE
            ),
            Ok(())
        );
    }

    #[test]
    fn reproduces_the_rust_reference_library_vector() {
        // standard-webhooks/standard-webhooks, libraries/rust/src/lib.rs (`test_sign`).
        let secret =
            SigningSecret::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").expect("valid secret");
        assert_eq!(
            secret.sign(
                "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                1_649_367_553,
                br#"{"email":"test@example.com","username":"test_user"}"#,
            ),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }

    #[test]
    fn bare_base64_secrets_are_accepted_and_normalised() {
        let bare = SigningSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("valid");
        assert_eq!(bare, vector_secret());
        assert_eq!(bare.as_str(), VECTOR_SECRET);
        let padded = SigningSecret::parse(&format!("  {VECTOR_SECRET}\n")).expect("valid");
        assert_eq!(padded.as_str(), VECTOR_SECRET);
        assert_eq!(VECTOR_SECRET.parse::<SigningSecret>(), Ok(vector_secret()));
    }

    #[test]
    fn generated_secrets_are_32_random_bytes_in_whsec_form() {
        let mut rng = StdRng::seed_from_u64(1);
        let first = SigningSecret::generate(&mut rng);
        let second = SigningSecret::generate(&mut rng);
        assert_ne!(first, second);
        assert!(first.as_str().starts_with("whsec_"));
        let encoded = first.as_str().trim_start_matches("whsec_");
        assert_eq!(STANDARD.decode(encoded).expect("base64").len(), 32);
        assert_eq!(first.as_str().len(), "whsec_".len() + 44);
        let reparsed = SigningSecret::parse(first.as_str()).expect("round trip");
        assert_eq!(reparsed, first);
        assert_eq!(reparsed.as_str(), first.as_str());
        // Production passes the thread-local CSPRNG.
        let fresh = SigningSecret::generate(&mut rand::rng());
        assert_ne!(fresh, first);
    }

    #[test]
    fn garbage_secrets_are_refused() {
        let key = |len: usize| STANDARD.encode(vec![7_u8; len]);
        let cases = [
            (String::new(), SecretError::Empty),
            ("whsec_".to_owned(), SecretError::Empty),
            ("   ".to_owned(), SecretError::Empty),
            ("whsec_not base64!".to_owned(), SecretError::InvalidBase64),
            ("whsec_%%%%".to_owned(), SecretError::InvalidBase64),
            // URL-safe alphabet and missing padding are not the standard encoding.
            (
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS_".to_owned(),
                SecretError::InvalidBase64,
            ),
            (
                format!("whsec_{}", key(32).trim_end_matches('=')),
                SecretError::InvalidBase64,
            ),
            (
                "whsk_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned(),
                SecretError::InvalidBase64,
            ),
            (
                format!("whsec_{}", key(16)),
                SecretError::TooShort { bytes: 16 },
            ),
            (
                format!("whsec_{}", key(23)),
                SecretError::TooShort { bytes: 23 },
            ),
            (
                format!("whsec_{}", key(65)),
                SecretError::TooLong { bytes: 65 },
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(
                SigningSecret::parse(&text),
                Err(expected.clone()),
                "{text:?}"
            );
        }
        assert!(SigningSecret::parse(&format!("whsec_{}", key(24))).is_ok());
        assert!(SigningSecret::parse(&format!("whsec_{}", key(64))).is_ok());
        assert_eq!(SigningSecret::from_bytes(&[]), Err(SecretError::Empty));
        assert_eq!(
            SecretError::TooShort { bytes: 16 }.to_string(),
            "the signing secret's key is 16 bytes long; at least 24 are required"
        );
    }

    #[test]
    fn debug_never_shows_the_key() {
        let secret = vector_secret();
        let debug = format!("{secret:?}");
        assert_eq!(debug, "SigningSecret(whsec_…redacted)");
        assert!(!debug.contains("MfKQ9r8G"));
        let nested = format!("{:?}", Some(vec![secret]));
        assert!(!nested.contains("MfKQ9r8G"), "{nested}");
        // Errors do not quote the secret either.
        let error = SigningSecret::parse("whsec_secret!material").expect_err("invalid");
        assert!(!error.to_string().contains("material"));
    }

    #[test]
    fn round_trip_with_a_binary_body() {
        let secret = secret_from_seed(2);
        let body = [0_u8, 159, 146, 150, 255, b'.', b'\n'];
        let signature = secret.sign("evt_01", 1_700_000_000, &body);
        assert_eq!(
            verify(
                &secret,
                &headers("evt_01", "1700000000", &signature),
                &body,
                at(1_700_000_000),
                DEFAULT_TOLERANCE
            ),
            Ok(())
        );
    }

    #[test]
    fn rotation_signs_with_every_secret_and_verifies_with_either() {
        let current = secret_from_seed(3);
        let previous = secret_from_seed(4);
        let stranger = secret_from_seed(5);
        let body = br#"{"id":"evt_1"}"#;
        let header = signature_header(&[&current, &previous], "evt_1", 1_700_000_000, body);
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(
            parts,
            [
                current.sign("evt_1", 1_700_000_000, body),
                previous.sign("evt_1", 1_700_000_000, body)
            ]
        );
        let received = headers("evt_1", "1700000000", &header);
        let now = at(1_700_000_030);
        assert_eq!(
            verify(&current, &received, body, now, DEFAULT_TOLERANCE),
            Ok(())
        );
        assert_eq!(
            verify(&previous, &received, body, now, DEFAULT_TOLERANCE),
            Ok(())
        );
        assert_eq!(
            verify(&stranger, &received, body, now, DEFAULT_TOLERANCE),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn tampering_with_body_id_or_timestamp_fails() {
        let secret = vector_secret();
        let now = at(VECTOR_TIMESTAMP);
        let ts = VECTOR_TIMESTAMP.to_string();
        let check = |id: &str, ts: &str, body: &[u8]| {
            verify(
                &secret,
                &headers(id, ts, VECTOR_SIGNATURE),
                body,
                now,
                DEFAULT_TOLERANCE,
            )
        };
        assert_eq!(check(VECTOR_ID, &ts, VECTOR_BODY), Ok(()));
        let tampered_body = br#"{"test": 2432232315}"#;
        assert_eq!(
            check(VECTOR_ID, &ts, tampered_body),
            Err(VerifyError::NoMatchingSignature)
        );
        assert_eq!(
            check("msg_p5jXN8AQM9LWM0D4loKWxJel", &ts, VECTOR_BODY),
            Err(VerifyError::NoMatchingSignature)
        );
        assert_eq!(
            check(VECTOR_ID, "1614265331", VECTOR_BODY),
            Err(VerifyError::NoMatchingSignature)
        );
        assert_eq!(
            check(VECTOR_ID, &ts, b""),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn timestamps_outside_the_tolerance_fail_in_both_directions() {
        let secret = vector_secret();
        let ts = VECTOR_TIMESTAMP.to_string();
        let received = headers(VECTOR_ID, &ts, VECTOR_SIGNATURE);
        let check = |now_secs: i64| {
            verify(
                &secret,
                &received,
                VECTOR_BODY,
                at(now_secs),
                DEFAULT_TOLERANCE,
            )
        };
        // Exactly at the tolerance still passes.
        assert_eq!(check(VECTOR_TIMESTAMP + 300), Ok(()));
        assert_eq!(check(VECTOR_TIMESTAMP - 300), Ok(()));
        assert_eq!(
            check(VECTOR_TIMESTAMP + 301),
            Err(VerifyError::TimestampTooOld {
                timestamp: VECTOR_TIMESTAMP,
                age_secs: 301,
                tolerance_secs: 300
            })
        );
        assert_eq!(
            check(VECTOR_TIMESTAMP - 301),
            Err(VerifyError::TimestampTooNew {
                timestamp: VECTOR_TIMESTAMP,
                ahead_secs: 301,
                tolerance_secs: 300
            })
        );
        assert_eq!(
            check(VECTOR_TIMESTAMP + 3600).map_err(|error| error.to_string()),
            Err(
                "the webhook-timestamp 1614265330 is 3600s old, more than the 300s tolerance"
                    .to_owned()
            )
        );
        // A custom tolerance.
        assert_eq!(
            verify(
                &secret,
                &received,
                VECTOR_BODY,
                at(VECTOR_TIMESTAMP + 3600),
                Duration::from_secs(3600)
            ),
            Ok(())
        );
    }

    #[test]
    fn extreme_timestamps_do_not_overflow() {
        let secret = vector_secret();
        for timestamp in [i64::MIN, i64::MAX, 0] {
            let signature = secret.sign(VECTOR_ID, timestamp, VECTOR_BODY);
            let text = timestamp.to_string();
            let result = verify(
                &secret,
                &headers(VECTOR_ID, &text, &signature),
                VECTOR_BODY,
                at(VECTOR_TIMESTAMP),
                DEFAULT_TOLERANCE,
            );
            assert!(
                matches!(
                    result,
                    Err(VerifyError::TimestampTooOld { .. } | VerifyError::TimestampTooNew { .. })
                ),
                "{timestamp}: {result:?}"
            );
        }
    }

    #[test]
    fn missing_and_malformed_headers_are_named() {
        let secret = vector_secret();
        let now = at(VECTOR_TIMESTAMP);
        let ts = VECTOR_TIMESTAMP.to_string();
        let complete = headers(VECTOR_ID, &ts, VECTOR_SIGNATURE);
        let check = |received: ReceivedHeaders<'_>| {
            verify(&secret, &received, VECTOR_BODY, now, DEFAULT_TOLERANCE)
        };
        assert_eq!(
            check(ReceivedHeaders {
                id: None,
                ..complete
            }),
            Err(VerifyError::MissingHeader("webhook-id"))
        );
        assert_eq!(
            check(ReceivedHeaders {
                id: Some("  "),
                ..complete
            }),
            Err(VerifyError::MissingHeader("webhook-id"))
        );
        assert_eq!(
            check(ReceivedHeaders {
                timestamp: None,
                ..complete
            }),
            Err(VerifyError::MissingHeader("webhook-timestamp"))
        );
        assert_eq!(
            check(ReceivedHeaders {
                signature: None,
                ..complete
            }),
            Err(VerifyError::MissingHeader("webhook-signature"))
        );
        for timestamp in ["hello", "1614265330.0", "+1614265330", "01614265330", "1e9"] {
            assert_eq!(
                check(ReceivedHeaders {
                    timestamp: Some(timestamp),
                    ..complete
                }),
                Err(VerifyError::InvalidTimestamp(timestamp.to_owned())),
                "{timestamp}"
            );
        }
        assert_eq!(
            check(ReceivedHeaders {
                signature: Some("garbage"),
                ..complete
            }),
            Err(VerifyError::MalformedSignatureHeader("garbage".to_owned()))
        );
        assert_eq!(
            VerifyError::MalformedSignatureHeader("x\ny".to_owned()).to_string(),
            "the webhook-signature header \"x\\ny\" has no `<version>,<signature>` entry"
        );
    }

    #[test]
    fn only_v1_signatures_count() {
        let secret = vector_secret();
        let now = at(VECTOR_TIMESTAMP);
        let ts = VECTOR_TIMESTAMP.to_string();
        let encoded = VECTOR_SIGNATURE.trim_start_matches("v1,");
        let check = |signature: &str| {
            verify(
                &secret,
                &headers(VECTOR_ID, &ts, signature),
                VECTOR_BODY,
                now,
                DEFAULT_TOLERANCE,
            )
        };
        // The right signature under another version does not count.
        assert_eq!(
            check(&format!("v2,{encoded} v1a,{encoded}")),
            Err(VerifyError::NoSupportedSignature)
        );
        // Among others, with extra spaces and an undecodable entry, it does.
        assert_eq!(
            check(&format!(
                "v1a,abc  v1,not*base64 v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= {VECTOR_SIGNATURE} v2,x"
            )),
            Ok(())
        );
        // Truncated signatures do not match.
        assert_eq!(check("v1,"), Err(VerifyError::NoMatchingSignature));
        assert_eq!(
            check(&VECTOR_SIGNATURE[..20]),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn webhook_headers_carry_id_timestamp_and_signatures() {
        let current = secret_from_seed(6);
        let previous = secret_from_seed(7);
        let body = br#"{"type":"webhook.test"}"#;
        let built = WebhookHeaders::new(&[&current, &previous], "evt_9", 1_700_000_000, body)
            .expect("has secrets");
        assert_eq!(built.id, "evt_9");
        assert_eq!(built.timestamp, "1700000000");
        assert_eq!(
            built.signature,
            signature_header(&[&current, &previous], "evt_9", 1_700_000_000, body)
        );
        let pairs = built.pairs();
        assert_eq!(
            pairs.map(|(name, _)| name),
            ["webhook-id", "webhook-timestamp", "webhook-signature"]
        );
        let received = ReceivedHeaders::from_lookup(|name| {
            pairs
                .iter()
                .find(|(header, _)| *header == name)
                .map(|(_, value)| *value)
        });
        assert_eq!(
            verify(
                &previous,
                &received,
                body,
                at(1_700_000_000),
                DEFAULT_TOLERANCE
            ),
            Ok(())
        );
        assert_eq!(
            WebhookHeaders::new(&[], "evt_9", 1_700_000_000, body),
            Err(NoSigningSecret)
        );
        assert_eq!(signature_header(&[], "evt_9", 1_700_000_000, body), "");
    }

    #[test]
    fn unix_seconds_round_down() {
        assert_eq!(unix_seconds(UNIX_EPOCH), 0);
        assert_eq!(unix_seconds(UNIX_EPOCH + Duration::from_millis(1_999)), 1);
        assert_eq!(unix_seconds(UNIX_EPOCH - Duration::from_secs(1)), -1);
        assert_eq!(unix_seconds(UNIX_EPOCH - Duration::from_millis(1_500)), -2);
        assert_eq!(unix_seconds(at(VECTOR_TIMESTAMP)), VECTOR_TIMESTAMP);
    }
}
