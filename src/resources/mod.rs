//! Shared knowledge about Kubernetes objects that both the control plane and the agent need,
//! with no I/O (but the time zone database): quantities, where pods may be placed, cron
//! schedules, which volume serves which claim.
pub mod cron_schedule;
pub mod duration;
pub mod placement;
pub mod pod_resources;
pub mod quantity;
pub mod quota;
pub mod storage;
