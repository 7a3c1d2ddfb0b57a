//! The NATS JetStream KV implementation of [`Store`](super::Store).
