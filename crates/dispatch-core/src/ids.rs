//! Identifiers: event ids, subscription ids and the deterministic delivery id.
//!
//! Event and subscription ids are UUIDv7 (time-ordered, so ids sort roughly by creation, which
//! helps anyone reading a topic) behind a readable prefix. A delivery id is a UUIDv5 of the
//! (event, subscription) pair: the fan-out computes the same id when it re-processes an event,
//! which is what lets receivers and the DLQ treat a re-run as the same delivery.

use std::time::{SystemTime, UNIX_EPOCH};

use rand::RngCore;
use uuid::{Builder, Uuid};

/// Prefix of event ids.
pub const EVENT_ID_PREFIX: &str = "evt_";
/// Prefix of subscription ids.
pub const SUBSCRIPTION_ID_PREFIX: &str = "sub_";
/// Prefix of delivery ids.
pub const DELIVERY_ID_PREFIX: &str = "dlv_";

/// Namespace of delivery ids (a fixed random UUID; changing it would change every delivery id).
const DELIVERY_NAMESPACE: Uuid = Uuid::from_u128(0x6c1f_2b0e_93d4_4a57_8e0b_5d2a_c7f1_9e34);

fn time_ordered(prefix: &str, now: SystemTime, rng: &mut impl RngCore) -> String {
    let millis = now
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let mut random = [0u8; 10];
    rng.fill_bytes(&mut random);
    let uuid = Builder::from_unix_timestamp_millis(millis, &random).into_uuid();
    format!("{prefix}{}", uuid.simple())
}

/// A new event id, `evt_` + 32 hex digits, ordered by `now`.
pub fn new_event_id(now: SystemTime, rng: &mut impl RngCore) -> String {
    time_ordered(EVENT_ID_PREFIX, now, rng)
}

/// A new subscription id, `sub_` + 32 hex digits, ordered by `now`.
pub fn new_subscription_id(now: SystemTime, rng: &mut impl RngCore) -> String {
    time_ordered(SUBSCRIPTION_ID_PREFIX, now, rng)
}

/// A new, unique delivery id (`dlv_` + 32 hex digits, ordered by `now`) for a delivery that is
/// not the fan-out's first of its (event, subscription) pair: a replay from the DLQ must not
/// share the id of the dead delivery, or its attempts and dead letter would be mixed up with it.
pub fn new_delivery_id(now: SystemTime, rng: &mut impl RngCore) -> String {
    time_ordered(DELIVERY_ID_PREFIX, now, rng)
}

/// The delivery id of `event_id` to `subscription_id`: the same inputs always give the same id.
pub fn delivery_id(event_id: &str, subscription_id: &str) -> String {
    // The separator cannot occur in either id, so ("a", "bc") and ("ab", "c") never collide.
    let name = format!("{event_id}\u{1f}{subscription_id}");
    let uuid = Uuid::new_v5(&DELIVERY_NAMESPACE, name.as_bytes());
    format!("{DELIVERY_ID_PREFIX}{}", uuid.simple())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rand::{SeedableRng, rngs::StdRng};

    use super::*;

    #[test]
    fn delivery_id_is_deterministic_and_pair_specific() {
        let a = delivery_id("evt_1", "sub_1");
        assert_eq!(a, delivery_id("evt_1", "sub_1"));
        assert!(a.starts_with("dlv_") && a.len() == 4 + 32, "{a}");
        assert_ne!(a, delivery_id("evt_1", "sub_2"));
        assert_ne!(a, delivery_id("evt_2", "sub_1"));
        assert_ne!(delivery_id("a", "bc"), delivery_id("ab", "c"));
    }

    #[test]
    fn event_ids_are_unique_and_ordered_by_time() {
        let mut rng = StdRng::seed_from_u64(7);
        let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let first = new_event_id(t0, &mut rng);
        let same_ms = new_event_id(t0, &mut rng);
        let later = new_event_id(t0 + Duration::from_millis(1), &mut rng);
        assert!(first.starts_with("evt_") && first.len() == 36, "{first}");
        assert_ne!(first, same_ms);
        assert!(later > first && later > same_ms);
        assert!(new_subscription_id(t0, &mut rng).starts_with("sub_"));
    }

    #[test]
    fn new_delivery_ids_are_unique_and_shaped_like_deterministic_ones() {
        let mut rng = StdRng::seed_from_u64(11);
        let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let a = new_delivery_id(t0, &mut rng);
        let b = new_delivery_id(t0, &mut rng);
        assert_ne!(a, b);
        assert_eq!(a.len(), delivery_id("evt_1", "sub_1").len());
        assert!(a.starts_with("dlv_"), "{a}");
        assert_ne!(a, delivery_id("evt_1", "sub_1"));
    }
}
