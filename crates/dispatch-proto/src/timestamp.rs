//! `google.protobuf.Timestamp` with the proto3 JSON mapping as the specification writes it:
//! RFC 3339, "Z-normalized", with 0, 3, 6 or 9 fractional digits. (`pbjson_types::Timestamp`
//! writes `+00:00` instead of `Z`; receivers see these strings, so we keep the exact form.)

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A point in time: seconds and nanoseconds since the Unix epoch, UTC.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, ::prost::Message)]
#[prost(skip_debug)]
pub struct Timestamp {
    /// Seconds since 1970-01-01T00:00:00Z (may be negative).
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    /// Non-negative fractions of a second, 0..=999_999_999.
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

impl Timestamp {
    /// The proto3 JSON text of this timestamp; `None` outside years 0001–9999 or with
    /// out-of-range nanos.
    pub fn to_rfc3339(&self) -> Option<String> {
        if !(0..1_000_000_000).contains(&self.nanos) {
            return None;
        }
        let total = i128::from(self.seconds) * 1_000_000_000 + i128::from(self.nanos);
        let at = OffsetDateTime::from_unix_timestamp_nanos(total).ok()?;
        if !(1..=9999).contains(&at.year()) {
            return None;
        }
        let nanos = self.nanos;
        let fraction = if nanos == 0 {
            String::new()
        } else if nanos % 1_000_000 == 0 {
            format!(".{:03}", nanos / 1_000_000)
        } else if nanos % 1_000 == 0 {
            format!(".{:06}", nanos / 1_000)
        } else {
            format!(".{nanos:09}")
        };
        Some(format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{fraction}Z",
            at.year(),
            u8::from(at.month()),
            at.day(),
            at.hour(),
            at.minute(),
            at.second()
        ))
    }

    /// Parses RFC 3339 text with any offset.
    pub fn parse_rfc3339(text: &str) -> Result<Self, time::error::Parse> {
        let total = OffsetDateTime::parse(text, &Rfc3339)?.unix_timestamp_nanos();
        Ok(Timestamp {
            seconds: total.div_euclid(1_000_000_000) as i64,
            nanos: total.rem_euclid(1_000_000_000) as i32,
        })
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_rfc3339() {
            Some(text) => write!(f, "Timestamp({text})"),
            None => write!(f, "Timestamp({}s, {}ns)", self.seconds, self.nanos),
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.to_rfc3339() {
            Some(text) => serializer.serialize_str(&text),
            None => Err(serde::ser::Error::custom(format!(
                "timestamp {}s {}ns is outside 0001-01-01..9999-12-31",
                self.seconds, self.nanos
            ))),
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Rfc3339Visitor;
        impl Visitor<'_> for Rfc3339Visitor {
            type Value = Timestamp;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 3339 timestamp such as \"2026-11-26T22:00:00Z\"")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Timestamp, E> {
                Timestamp::parse_rfc3339(text)
                    .map_err(|e| E::custom(format!("{text:?} is not an RFC 3339 timestamp: {e}")))
            }
        }
        deserializer.deserialize_str(Rfc3339Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_z_normalized_with_0_3_6_or_9_digits() {
        let cases = [
            (0, "2026-11-26T22:00:00Z"),
            (123_000_000, "2026-11-26T22:00:00.123Z"),
            (123_456_000, "2026-11-26T22:00:00.123456Z"),
            (123_456_789, "2026-11-26T22:00:00.123456789Z"),
        ];
        for (nanos, text) in cases {
            let ts = Timestamp {
                seconds: 1_795_730_400,
                nanos,
            };
            assert_eq!(serde_json::to_value(ts).expect("in range"), text);
            let back: Timestamp = serde_json::from_value(text.into()).expect("parses");
            assert_eq!(back, ts);
        }
        let offset: Timestamp =
            serde_json::from_value("2026-11-26T23:00:00+01:00".into()).expect("parses");
        assert_eq!(offset.seconds, 1_795_730_400);
        let err = serde_json::from_value::<Timestamp>("tomorrow".into()).expect_err("garbage");
        assert!(err.to_string().contains("tomorrow"), "{err}");
        assert!(
            serde_json::to_value(Timestamp {
                seconds: i64::MAX,
                nanos: 0
            })
            .is_err()
        );
    }
}
