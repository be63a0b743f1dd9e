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
