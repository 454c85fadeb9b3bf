//! Shared knowledge about Kubernetes objects that both the control plane and the agent need,
//! with no I/O: quantities.
pub mod quantity;
