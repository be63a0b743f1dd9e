//! Generated protobuf types of Posternity's domain events and of Dispatch's own records, with
//! proto3 JSON (serde) implementations. Nothing hand-written lives here but the module tree.
//!
//! The sources are `proto/posternity/events/v1/events.proto` and
//! `proto/posternity/dispatch/v1/dispatch.proto`; producers in other languages compile the same
//! files with their own `protoc`.

/// `posternity.events.v1`: the `Event` envelope and one payload message per catalog type.
pub mod events {
    /// Version 1 of the event contract.
    #[allow(missing_docs, clippy::all, missing_debug_implementations)]
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/posternity.events.v1.rs"));
        include!(concat!(env!("OUT_DIR"), "/posternity.events.v1.serde.rs"));
    }
}

/// `posternity.dispatch.v1`: subscriptions, delivery tasks, attempt records, dead letters.
pub mod dispatch {
    /// Version 1 of Dispatch's records.
    #[allow(missing_docs, clippy::all, missing_debug_implementations)]
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/posternity.dispatch.v1.rs"));
        include!(concat!(env!("OUT_DIR"), "/posternity.dispatch.v1.serde.rs"));
    }
}

mod timestamp;

/// The well-known types the records use, with proto3 JSON.
pub mod wkt {
    pub use crate::timestamp::Timestamp;
}
/// Re-exported so users encode and decode with the same prost version.
pub use prost;

/// The serialized `FileDescriptorSet` of both files, for reflection and tooling.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));
