//! How the Raft thread reaches its peers. The trait keeps the Raft driver independent of the
//! network; `peer` implements it over gRPC, and tests can route messages in memory.
use raft::prelude::Message;

use crate::store::types::Member;

pub trait Transport: Send + Sync {
    /// Queues messages for delivery; never blocks. Raft tolerates loss, so a full queue drops.
    fn send(&self, msgs: Vec<Message>);
    /// The current membership, so the transport knows where each member is.
    fn set_members(&self, members: &[Member]);
}

/// A transport for a store with no peers (a single server).
pub struct NoPeers;

impl Transport for NoPeers {
    fn send(&self, msgs: Vec<Message>) {
        if !msgs.is_empty() {
            tracing::debug!(count = msgs.len(), "no peers to send raft messages to");
        }
    }
    fn set_members(&self, _: &[Member]) {}
}
