//! Shared knowledge about Kubernetes objects that both the control plane and the agent need,
//! with no I/O: quantities and where pods may be placed.
pub mod placement;
pub mod quantity;
