//! The end-to-end harness of `dispatch-bench`: the system as real `dispatchd` processes on the
//! real broker, a fleet of local receivers that keeps a ledger of what arrived, a publisher,
//! the machine's baseline limits, the benchmark scenarios (`e2e`) and the fault suite
//! (`faults`). The fault suite's short scenarios also run in `make test`
//! (`crates/dispatchd/tests/faults.rs`).

pub mod baseline;
pub mod burst;
pub mod client;
pub mod e2e;
pub mod faults;
pub mod fleet;
pub mod harness;
pub mod ledger;
pub mod nginx;
pub mod receiver;
pub mod system;
pub mod topics;
pub mod workload;
