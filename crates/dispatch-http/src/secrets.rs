//! Which of a subscription's signing secrets sign an attempt: every secret that parses and has
//! not expired, newest first (the order the subscription keeps them in).

use std::time::SystemTime;

use dispatch_core::signing::SigningSecret;
use dispatch_core::timestamp::to_system_time;
use dispatch_proto::dispatch::v1::Subscription;

/// The secrets that sign an attempt made at `now`: those without `expires_at`, or expiring
/// after `now`. A secret that does not parse, or whose `expires_at` is malformed, is skipped with
/// a warning naming the subscription and the secret's position (never the secret). An empty
/// result means the subscription cannot be delivered to: webhooks are never sent unsigned.
#[must_use]
pub fn live_secrets(subscription: &Subscription, now: SystemTime) -> Vec<SigningSecret> {
    subscription
        .secrets
        .iter()
        .enumerate()
        .filter_map(|(index, stored)| {
            if let Some(expires_at) = &stored.expires_at {
                match to_system_time(expires_at) {
                    Some(expires_at) if expires_at <= now => return None,
                    Some(_) => {}
                    None => {
                        tracing::warn!(
                            subscription_id = %subscription.id,
                            secret_index = index,
                            "skipping a signing secret whose expires_at is out of range"
                        );
                        return None;
                    }
                }
            }
            match SigningSecret::parse(&stored.secret) {
                Ok(secret) => Some(secret),
                Err(error) => {
                    tracing::warn!(
                        subscription_id = %subscription.id,
                        secret_index = index,
                        %error,
                        "skipping a signing secret that does not parse"
                    );
                    None
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use dispatch_core::timestamp::from_system_time;
    use dispatch_proto::dispatch::v1::SigningSecret as StoredSecret;
    use dispatch_proto::wkt::Timestamp;

    use super::*;

    fn secret(byte: u8) -> SigningSecret {
        SigningSecret::from_bytes(&[byte; 32]).expect("32 bytes is a valid key")
    }

    fn stored(secret: &SigningSecret, expires_at: Option<SystemTime>) -> StoredSecret {
        StoredSecret {
            secret: secret.as_str().to_owned(),
            created_at: None,
            expires_at: expires_at.map(from_system_time),
        }
    }

    #[test]
    fn keeps_current_and_unexpired_secrets_in_order() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let (current, rotating, expired, just_expired) =
            (secret(1), secret(2), secret(3), secret(4));
        let subscription = Subscription {
            id: "sub_1".into(),
            secrets: vec![
                stored(&current, None),
                stored(&rotating, Some(now + Duration::from_secs(60))),
                stored(&expired, Some(now - Duration::from_secs(60))),
                stored(&just_expired, Some(now)),
                StoredSecret {
                    secret: "whsec_not-base64!".into(),
                    ..StoredSecret::default()
                },
                StoredSecret {
                    secret: secret(5).as_str().to_owned(),
                    created_at: None,
                    expires_at: Some(Timestamp {
                        seconds: 0,
                        nanos: -1,
                    }),
                },
            ],
            ..Subscription::default()
        };
        assert_eq!(live_secrets(&subscription, now), vec![current, rotating]);
    }

    #[test]
    fn no_secrets_means_none_live() {
        let subscription = Subscription::default();
        assert!(live_secrets(&subscription, SystemTime::now()).is_empty());
    }
}
