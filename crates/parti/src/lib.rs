//! # Parti
//!
//! Weighted partitions handed to a changing set of workers, coordinated only through NATS
//! JetStream key-value buckets.
//!
//! See the README for the architecture and the quick start.

pub mod assignment;
mod clock;
pub mod config;
pub mod consumer;
pub mod controller;
pub mod election;
pub mod error;
pub mod heartbeat;
pub mod manager;
pub mod partition;
pub mod records;
pub mod source;
pub mod stable_id;
pub mod state;
pub mod store;
pub mod strategy;

pub use assignment::{Assignment, AssignmentMap, Lifecycle};
pub use config::Config;
pub use consumer::{
    AckMode, ConsumerConfig, ConsumerHealth, ConsumerStatus, MessageHandler, WorkerConsumer,
    WorkerConsumerBuilder,
};
pub use election::{ElectionAgent, Elector, Leadership, NatsLeaseElection};
pub use error::{ConfigViolation, Error, Result, StoreError};
pub use heartbeat::{Heartbeater, MembershipEvent, MembershipWatcher};
pub use manager::hooks::{self, AlertLevel, Event, Hooks};
pub use manager::{Manager, ManagerBuilder};
pub use partition::{Partition, WorkerId};
pub use stable_id::{IdStatus, StableIdConfig, StableIdLease};
pub use state::{ClusterPhase, ScalingReason, State};
pub use strategy::{AssignmentStrategy, ConsistentHash, RoundRobin, WeightedConsistentHash};
