//! Kafka for Posternity Dispatch.
