//! # Parti
//!
//! Weighted partitions handed to a changing set of workers, coordinated only through NATS
//! JetStream key-value buckets.
//!
//! See the README for the architecture and the quick start.

pub mod assignment;
pub mod error;
pub mod partition;
pub mod state;
pub mod store;

pub use assignment::{Assignment, AssignmentMap, Lifecycle};
pub use error::{ConfigViolation, Error, Result, StoreError};
pub use partition::{Partition, WorkerId};
pub use state::{ClusterPhase, ScalingReason, State};
