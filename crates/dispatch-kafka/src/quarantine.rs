//! The headers a quarantined record carries in `dispatch.invalid`: what is wrong with it and
//! where it came from. Written by every role that quarantines, read by the people (and later
//! the API) inspecting the topic; one definition keeps the names identical everywhere.

use rdkafka::message::{BorrowedHeaders, Header, Headers, OwnedHeaders};

/// Header: a short, stable reason (`undecodable`, `unknown_type`, ...).
pub const HEADER_REASON: &str = "dispatch-error-reason";
/// Header: a sentence naming what is wrong.
pub const HEADER_ERROR: &str = "dispatch-error";
/// Header: the topic the record was read from.
pub const HEADER_SOURCE_TOPIC: &str = "dispatch-source-topic";
/// Header: its partition.
pub const HEADER_SOURCE_PARTITION: &str = "dispatch-source-partition";
/// Header: its offset.
pub const HEADER_SOURCE_OFFSET: &str = "dispatch-source-offset";
/// Header: present when the quarantined value was cut to fit the topic's `max.message.bytes`;
/// the original value's size in bytes (key and headers are always kept whole).
pub const HEADER_TRUNCATED_FROM_BYTES: &str = "dispatch-truncated-from-bytes";

/// An upper bound of what a record takes in a record batch beyond its key, value and header
/// bytes (the batch header, length prefixes, timestamp and offset deltas): what to leave free
/// when checking a record against a topic's `max.message.bytes` before producing it.
pub const RECORD_OVERHEAD_BYTES: usize = 256;
/// The same per header (its key and value length prefixes).
const HEADER_OVERHEAD_BYTES: usize = 10;

/// Where a quarantined record came from and why it was quarantined.
#[derive(Debug, Clone, Copy)]
pub struct QuarantineInfo<'a> {
    /// Short reason.
    pub reason: &'a str,
    /// What is wrong.
    pub error: &'a str,
    /// Source topic.
    pub topic: &'a str,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
}

/// The quarantine headers, followed by the record's original headers (kept for inspection).
pub fn headers(info: &QuarantineInfo<'_>, original: Option<&BorrowedHeaders>) -> OwnedHeaders {
    let (partition, offset) = (info.partition.to_string(), info.offset.to_string());
    let mut headers = OwnedHeaders::new();
    for (key, value) in [
        (HEADER_REASON, info.reason),
        (HEADER_ERROR, info.error),
        (HEADER_SOURCE_TOPIC, info.topic),
        (HEADER_SOURCE_PARTITION, partition.as_str()),
        (HEADER_SOURCE_OFFSET, offset.as_str()),
    ] {
        headers = headers.insert(Header {
            key,
            value: Some(value),
        });
    }
    if let Some(original) = original {
        for header in original.iter() {
            headers = headers.insert(Header {
                key: header.key,
                value: header.value,
            });
        }
    }
    headers
}

/// An upper bound of the bytes a record counts against a topic's `max.message.bytes`.
pub fn record_size(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: Option<&OwnedHeaders>,
) -> usize {
    let header_bytes: usize = headers.map_or(0, |headers| {
        headers
            .iter()
            .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len) + HEADER_OVERHEAD_BYTES)
            .sum()
    });
    RECORD_OVERHEAD_BYTES + key.map_or(0, <[u8]>::len) + value.map_or(0, <[u8]>::len) + header_bytes
}

/// Makes a quarantine record fit a topic that accepts at most `max_message_bytes`: the value
/// whole if it fits, else its first bytes with [`HEADER_TRUNCATED_FROM_BYTES`] added to the
/// headers. The key and headers are kept whole: they say what the record was.
pub fn fit<'v>(
    key: Option<&[u8]>,
    value: Option<&'v [u8]>,
    headers: OwnedHeaders,
    max_message_bytes: usize,
) -> (Option<&'v [u8]>, OwnedHeaders) {
    let Some(value) = value else {
        return (None, headers);
    };
    if record_size(key, Some(value), Some(&headers)) <= max_message_bytes {
        return (Some(value), headers);
    }
    let original = value.len().to_string();
    let headers = headers.insert(Header {
        key: HEADER_TRUNCATED_FROM_BYTES,
        value: Some(original.as_str()),
    });
    let room = max_message_bytes.saturating_sub(record_size(key, None, Some(&headers)));
    (Some(&value[..room.min(value.len())]), headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> QuarantineInfo<'static> {
        QuarantineInfo {
            reason: "too_large",
            error: "too large",
            topic: "posternity.events.image",
            partition: 1,
            offset: 7,
        }
    }

    #[test]
    fn a_value_that_fits_is_kept_whole() {
        let value = vec![7u8; 1000];
        let (kept, headers) = fit(Some(b"acc_1"), Some(&value), headers(&info(), None), 10_000);
        assert_eq!(kept, Some(&value[..]));
        assert!(headers.iter().all(|h| h.key != HEADER_TRUNCATED_FROM_BYTES));
    }

    #[test]
    fn a_value_too_large_is_cut_to_fit_and_marked_with_its_original_size() {
        let value = vec![7u8; 50_000];
        let limit = 10_000;
        let (kept, headers) = fit(Some(b"acc_1"), Some(&value), headers(&info(), None), limit);
        let kept = kept.expect("a value");
        assert!(!kept.is_empty() && kept.len() < value.len());
        assert_eq!(kept, &value[..kept.len()], "a prefix of the original");
        assert!(record_size(Some(b"acc_1"), Some(kept), Some(&headers)) <= limit);
        let marker = headers
            .iter()
            .find(|h| h.key == HEADER_TRUNCATED_FROM_BYTES)
            .and_then(|h| h.value)
            .expect("marked truncated");
        assert_eq!(marker, b"50000");
        assert!(
            headers.iter().any(|h| h.key == HEADER_REASON),
            "the quarantine headers stay"
        );
    }
}
