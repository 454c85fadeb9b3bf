//! Applying what Raft committed: entries to the state machine in log order, membership
//! changes to raft-rs and the member list, and snapshots from the leader. A part of the Raft
//! thread (`RaftNode`), split out to keep one idea per file.
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::prelude::*;

use super::{encode_pb, slow, RaftNode};
use crate::store::command::{self, Command, MemberChange, Proposal};
use crate::store::error::{Error, Result};
use crate::store::mvcc::{Applied, Mvcc};

impl RaftNode {
    pub(super) fn install_snapshot(&mut self, snap: Snapshot) -> Result<()> {
        let meta = snap.get_metadata().clone();
        tracing::info!(
            index = meta.index,
            term = meta.term,
            "installing a snapshot from the leader"
        );
        let entries = crate::store::snapshot::read(&snap.data[..], "raft snapshot")?;
        let applied = Applied {
            index: meta.index,
            term: meta.term,
        };
        self.mvcc.replace(entries.into_iter().map(Ok), applied)?;
        let mut membership = self.mvcc.membership();
        membership.conf_state = encode_pb(meta.get_conf_state());
        self.mvcc
            .apply_membership(applied, Some(membership.clone()))?;
        self.mvcc.checkpoint(&self.cfg.state_dir)?;
        let mut hs = self.node.store().mem.rl().hard_state().clone();
        hs.commit = hs.commit.max(meta.index);
        hs.term = hs.term.max(meta.term);
        self.wal.restart_at(meta.index, meta.term, &hs)?;
        self.persisted_hs = hs;
        self.node
            .mut_store()
            .mem
            .wl()
            .apply_snapshot(snap)
            .map_err(|e| Error::Corrupt(format!("installing snapshot: {e}")))?;
        self.transport.set_members(&membership.members);
        self.lessor.promote(self.mvcc.leases().into_iter());
        self.status.applied.store(meta.index, Ordering::Relaxed);
        Ok(())
    }

    pub(super) fn apply(&mut self, entries: Vec<Entry>) -> Result<()> {
        for entry in entries {
            let applied = Applied {
                index: entry.index,
                term: entry.term,
            };
            if applied.index <= self.mvcc.applied().index {
                continue; // already in the state machine (replayed after a restart)
            }
            match entry.get_entry_type() {
                EntryType::EntryNormal if entry.data.is_empty() => {
                    self.retry_apply(|m| m.apply_membership(applied, None))?;
                }
                EntryType::EntryNormal => {
                    let (proposer, batch): (u64, Vec<Proposal>) = command::decode(&entry.data)
                        .map_err(|e| Error::Corrupt(format!("log entry {}: {e}", entry.index)))?;
                    let commands: Vec<Command> = batch.iter().map(|p| p.command.clone()).collect();
                    let started = Instant::now();
                    let applies = self.retry_apply(|m| m.apply(applied, &commands))?;
                    slow("applying to the state database", started, commands.len());
                    for (p, result) in batch.iter().zip(applies.results) {
                        match (&p.command, &result) {
                            (Command::LeaseGrant { id, ttl }, Ok(_)) => {
                                self.lessor.granted(*id, *ttl)
                            }
                            (Command::LeaseRevoke { id }, _) => self.lessor.revoked(*id),
                            _ => {}
                        }
                        if proposer == self.cfg.id {
                            if let Some(reply) = self.pending.remove(&p.id) {
                                let _ = reply.send(result);
                            }
                        }
                    }
                    self.hub.publish(applies.events);
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    self.apply_conf_change(&entry, applied)?;
                }
            }
            self.status.applied.store(applied.index, Ordering::Relaxed);
            self.since_checkpoint += 1;
        }
        let applied = self.mvcc.applied().index;
        self.trim_memory_log(applied);
        let mut i = 0;
        while i < self.reads_waiting_apply.len() {
            if self.reads_waiting_apply[i].0 <= applied {
                let (index, w) = self.reads_waiting_apply.swap_remove(i);
                let _ = w.send(Ok(index));
            } else {
                i += 1;
            }
        }
        Ok(())
    }

    pub(super) fn apply_conf_change(&mut self, entry: &Entry, applied: Applied) -> Result<()> {
        let mut cc = ConfChange::default();
        if entry.get_entry_type() == EntryType::EntryConfChangeV2 {
            // Only produced by raft-rs itself when leaving a joint configuration.
            let mut v2 = ConfChangeV2::default();
            v2.merge_from_bytes(&entry.data)
                .map_err(|e| Error::Corrupt(format!("log entry {}: {e}", entry.index)))?;
            let cs = self
                .node
                .apply_conf_change(&v2)
                .map_err(|e| Error::Corrupt(format!("conf change {}: {e}", entry.index)))?;
            let mut m = self.mvcc.membership();
            m.conf_state = encode_pb(&cs);
            self.node.mut_store().mem.wl().set_conf_state(cs);
            return self.retry_apply(|mv| mv.apply_membership(applied, Some(m.clone())));
        }
        cc.merge_from_bytes(&entry.data)
            .map_err(|e| Error::Corrupt(format!("log entry {}: {e}", entry.index)))?;
        let change: MemberChange = command::decode(&cc.context)
            .map_err(|e| Error::Corrupt(format!("log entry {} context: {e}", entry.index)))?;
        let cs = self
            .node
            .apply_conf_change(&cc)
            .map_err(|e| Error::Corrupt(format!("conf change {}: {e}", entry.index)))?;
        let mut m = self.mvcc.membership();
        m.members.retain(|x| x.id != change.member.id);
        if cc.get_change_type() == ConfChangeType::AddNode {
            m.members.push(change.member.clone());
            tracing::info!(member = %change.member.name, id = change.member.id, "member added");
        } else {
            tracing::info!(member = %change.member.name, id = change.member.id, "member removed");
            if change.member.id == self.cfg.id {
                // As etcd does: a removed member stops, so a removed leader does not keep the
                // others from electing a new one.
                tracing::warn!("this member was removed from the cluster; stopping the store");
                self.removed = true;
            }
        }
        m.conf_state = encode_pb(&cs);
        self.node.mut_store().mem.wl().set_conf_state(cs);
        self.retry_apply(|mv| mv.apply_membership(applied, Some(m.clone())))?;
        self.transport.set_members(&m.members);
        if let Some(reply) = self.conf_waiters.remove(&cc.node_id) {
            let _ = reply.send(Ok(m.members.clone()));
        }
        Ok(())
    }

    /// Applies with retries on I/O errors (a full disk): the entry is durable in the log, so
    /// the state machine waits for space instead of diverging or crashing.
    pub(super) fn retry_apply<T>(&self, mut f: impl FnMut(&Mvcc) -> Result<T>) -> Result<T> {
        let mut delay = Duration::from_millis(50);
        loop {
            match f(&self.mvcc) {
                Ok(v) => return Ok(v),
                Err(e @ Error::Corrupt(_)) => return Err(e),
                Err(e) => {
                    if self.stop.load(Ordering::Relaxed) {
                        return Err(e);
                    }
                    tracing::error!(error = %e, "applying to the state database failed; retrying");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}
