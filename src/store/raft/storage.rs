//! raft-rs's view of the log: entries kept in memory (mirroring the durable WAL), and
//! snapshots produced on demand from the state machine for members that fell behind.
use std::sync::Arc;

use raft::prelude::*;
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

use crate::store::mvcc::Mvcc;
use crate::store::snapshot;

pub struct LogStorage {
    pub mem: raft::storage::MemStorage,
    mvcc: Arc<Mvcc>,
}

impl LogStorage {
    pub fn new(mvcc: Arc<Mvcc>) -> Self {
        LogStorage {
            mem: raft::storage::MemStorage::new(),
            mvcc,
        }
    }
}

impl Storage for LogStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.mem.initial_state()
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.mem.entries(low, high, max_size, context)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.mem.term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.mem.first_index()
    }

    fn last_index(&self) -> raft::Result<u64> {
        self.mem.last_index()
    }

    /// A snapshot of the state machine as applied now. Called on the Raft thread, so no apply
    /// runs while it is taken.
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let applied = self.mvcc.applied();
        if applied.index < request_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let mut data = Vec::new();
        snapshot::write(&mut data, self.mvcc.export())
            .map_err(|e| raft::Error::Store(StorageError::Other(Box::new(e))))?;
        let membership = self.mvcc.membership();
        let mut conf_state = ConfState::default();
        protobuf::Message::merge_from_bytes(&mut conf_state, &membership.conf_state)
            .map_err(|e| raft::Error::Store(StorageError::Other(Box::new(e))))?;
        let mut snap = Snapshot {
            data: data.into(),
            ..Default::default()
        };
        let meta = snap.mut_metadata();
        meta.index = applied.index;
        meta.term = applied.term;
        meta.set_conf_state(conf_state);
        Ok(snap)
    }
}
