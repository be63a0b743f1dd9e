//! Conversions between protobuf `Timestamp`, `SystemTime` and RFC 3339 text.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dispatch_proto::wkt::Timestamp;
use time::OffsetDateTime;

/// A `SystemTime` as a protobuf `Timestamp`.
pub fn from_system_time(at: SystemTime) -> Timestamp {
    let (seconds, nanos) = match at.duration_since(UNIX_EPOCH) {
        Ok(after) => (after.as_secs() as i64, after.subsec_nanos() as i32),
        Err(before) => {
            // Before the epoch: protobuf keeps nanos non-negative and borrows from seconds.
            let before = before.duration();
            let mut seconds = -(before.as_secs() as i64);
            let mut nanos = before.subsec_nanos() as i32;
            if nanos > 0 {
                seconds -= 1;
                nanos = 1_000_000_000 - nanos;
            }
            (seconds, nanos)
        }
    };
    Timestamp { seconds, nanos }
}

/// A protobuf `Timestamp` as a `SystemTime`; `None` when it is out of range or malformed.
pub fn to_system_time(ts: &Timestamp) -> Option<SystemTime> {
    let nanos = u32::try_from(ts.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)?;
    if ts.seconds >= 0 {
        UNIX_EPOCH.checked_add(Duration::new(ts.seconds as u64, nanos))
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(ts.seconds.unsigned_abs()))?
            .checked_add(Duration::from_nanos(u64::from(nanos)))
    }
}

/// Unix milliseconds of a timestamp (for latency arithmetic and compact displays).
pub fn unix_millis(ts: &Timestamp) -> i64 {
    ts.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(ts.nanos / 1_000_000))
}

/// RFC 3339 in UTC with millisecond precision, e.g. `2026-11-26T22:00:00.123Z` — the format of
/// the receiver's `created_at`. `None` when the timestamp is outside what RFC 3339 can express.
pub fn format_rfc3339_millis(ts: &Timestamp) -> Option<String> {
    let nanos = i128::from(ts.seconds) * 1_000_000_000 + i128::from(ts.nanos);
    let at = OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()?;
    let (year, month, day) = (at.year(), u8::from(at.month()), at.day());
    if !(0..=9999).contains(&year) {
        return None;
    }
    Some(format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        at.hour(),
        at.minute(),
        at.second(),
        at.millisecond()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_system_time() {
        for (seconds, nanos) in [(0, 0), (1_800_000_000, 123_456_789), (-5, 250_000_000)] {
            let ts = Timestamp { seconds, nanos };
            let back = from_system_time(to_system_time(&ts).expect("in range"));
            assert_eq!(back, ts);
        }
        assert!(
            to_system_time(&Timestamp {
                seconds: 1,
                nanos: -1
            })
            .is_none()
        );
        assert!(
            to_system_time(&Timestamp {
                seconds: 1,
                nanos: 1_000_000_000
            })
            .is_none()
        );
    }

    #[test]
    fn formats_millisecond_utc_and_parses_offsets() {
        let ts = Timestamp::parse_rfc3339("2026-11-26T23:00:00.123456+01:00").expect("valid");
        assert_eq!(
            format_rfc3339_millis(&ts).as_deref(),
            Some("2026-11-26T22:00:00.123Z")
        );
        assert_eq!(unix_millis(&ts), 1_795_730_400_123);
        assert!(Timestamp::parse_rfc3339("yesterday").is_err());
        assert!(
            format_rfc3339_millis(&Timestamp {
                seconds: i64::MAX,
                nanos: 0
            })
            .is_none()
        );
    }
}
