//! The MVCC state machine: keys with revisions on sled, applied from the Raft log, read by
//! revision. Owns the backend layout and the in-memory key index; knows nothing about Raft
//! (it is told which log index it applies) nor about Kubernetes.
//!
//! Backend layout (one sled tree, so one `apply_batch` is atomic):
//! - `r` + main(8, BE) + sub(8, BE) → a `Record`: every version and deletion, by revision;
//! - `l` + id(8, BE) → a lease's granted TTL;
//! - `m/…` → metadata: applied index and term, compact revision, Raft membership.
pub mod index;
mod txn;

#[cfg(test)]
mod model_tests;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde::{Deserialize, Serialize};

use self::index::{Index, Rev};
use super::command::{self, Command, CommandResult};
use super::error::{Error, Result};
use super::types::*;

const META_APPLIED: &[u8] = b"m/applied";
const META_COMPACTED: &[u8] = b"m/compacted";
const META_CURRENT: &[u8] = b"m/current";
const META_MEMBERS: &[u8] = b"m/members";
const META_CONF: &[u8] = b"m/conf";

/// A stored version (or deletion) of a key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Record {
    pub kv: KeyValue,
    pub tombstone: bool,
}

/// Where the state machine stands in the Raft log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub index: u64,
    pub term: u64,
}

/// Membership as recorded by applied configuration changes.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Membership {
    pub members: Vec<Member>,
    /// raft-rs `ConfState`, protobuf-encoded.
    pub conf_state: Vec<u8>,
}

#[derive(Debug, Default)]
pub(crate) struct LeaseEntry {
    pub ttl: i64,
    pub keys: BTreeSet<Vec<u8>>,
}

#[derive(Debug)]
pub(crate) struct State {
    pub index: Index,
    pub current: Revision,
    pub compacted: Revision,
    pub leases: BTreeMap<i64, LeaseEntry>,
    pub applied: Applied,
    pub membership: Membership,
}

pub struct Mvcc {
    db: sled::Db,
    tree: sled::Tree,
    /// One writer (the apply loop), many readers; never held across an await.
    state: RwLock<State>,
}

/// The effects of applying one Raft entry: a result per command and the events to publish.
pub struct Applies {
    pub results: Vec<Result<CommandResult>>,
    pub events: Vec<Event>,
}

pub(crate) fn rev_key(rev: Rev) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = b'r';
    k[1..9].copy_from_slice(&rev.main.to_be_bytes());
    k[9..17].copy_from_slice(&rev.sub.to_be_bytes());
    k
}

fn parse_rev_key(k: &[u8]) -> Option<Rev> {
    if k.len() != 17 || k[0] != b'r' {
        return None;
    }
    let main = i64::from_be_bytes(k[1..9].try_into().ok()?);
    let sub = i64::from_be_bytes(k[9..17].try_into().ok()?);
    Some(Rev { main, sub })
}

fn lease_key(id: i64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'l';
    k[1..9].copy_from_slice(&id.to_be_bytes());
    k
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Corrupt(format!("{what}: {e}"))
}

impl Mvcc {
    /// Opens (or creates) the state database in `dir` and rebuilds the key index from it.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Self> {
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            // krab's own log is the durability point; sled's background flusher only adds
            // write volume (the apply loop flushes at checkpoints).
            .flush_every_ms(None)
            // LowSpace (the default) rewrites segments eagerly to reclaim space, multiplying
            // the bytes written — what wears out SD cards.
            .mode(sled::Mode::HighThroughput);
        // sled's file lock outlives a dropped handle for a moment (its background threads let
        // go of it), so a reopen in the same process waits briefly; a lock held longer means
        // another process uses this directory.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e))
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.to_string().contains("could not acquire lock") =>
                {
                    if std::time::Instant::now() > deadline {
                        return Err(Error::Io(format!(
                            "{} is in use by another process (another krab server on this \
                             data dir?)",
                            dir.display()
                        )));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(e.into()),
            }
        };
        let tree = (*db).clone();
        let state = load_state(&tree)?;
        Ok(Mvcc {
            db,
            tree,
            state: RwLock::new(state),
        })
    }

    fn read_state(&self) -> RwLockReadGuard<'_, State> {
        // A poisoned lock means a panic mid-apply; the state is rebuilt from disk on restart,
        // and readers may still look at the last consistent view.
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn current_revision(&self) -> Revision {
        self.read_state().current
    }

    pub fn compact_revision(&self) -> Revision {
        self.read_state().compacted
    }

    pub fn applied(&self) -> Applied {
        self.read_state().applied
    }

    pub fn membership(&self) -> Membership {
        self.read_state().membership.clone()
    }

    pub fn db_size(&self) -> i64 {
        self.db.size_on_disk().map(|s| s as i64).unwrap_or(0)
    }

    pub fn key_count(&self) -> usize {
        self.read_state().index.len()
    }

    /// Reads a range at a revision, as etcd's Range.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse> {
        let state = self.read_state();
        txn::range(&self.tree, &state, req, state.current)
    }

    /// Applies one committed Raft entry's commands in order, atomically on disk.
    pub fn apply(&self, applied: Applied, commands: &[Command]) -> Result<Applies> {
        let mut state = self.write_state();
        let mut staged = txn::Staged::default();
        let mut out = Applies {
            results: Vec::with_capacity(commands.len()),
            events: Vec::new(),
        };
        for cmd in commands {
            let r = txn::apply_command(&self.tree, &mut state, &mut staged, &mut out.events, cmd);
            out.results.push(r);
        }
        state.applied = applied;
        let mut batch = staged.batch;
        batch.insert(META_APPLIED, command::encode(&applied));
        batch.insert(META_CURRENT, &state.current.to_be_bytes()[..]);
        if let Err(e) = self.tree.apply_batch(batch) {
            // The in-memory view ran ahead of disk: rebuild it from disk so both agree, and
            // let the caller retry this entry.
            *state = load_state(&self.tree)?;
            return Err(e.into());
        }
        Ok(out)
    }

    /// Records an applied entry that changes no keys (empty or membership entries).
    pub fn apply_membership(&self, applied: Applied, membership: Option<Membership>) -> Result<()> {
        let mut state = self.write_state();
        let mut batch = sled::Batch::default();
        batch.insert(META_APPLIED, command::encode(&applied));
        if let Some(m) = &membership {
            batch.insert(META_MEMBERS, command::encode(&m.members));
            batch.insert(META_CONF, m.conf_state.clone());
        }
        self.tree.apply_batch(batch)?;
        state.applied = applied;
        if let Some(m) = membership {
            state.membership = m;
        }
        Ok(())
    }

    /// Makes everything applied so far durable: sled's flush, then an fdatasync of its files,
    /// because sled's flush alone (sync_file_range) does not survive a power cut.
    pub fn checkpoint(&self, dir: &Path) -> Result<Applied> {
        let applied = self.applied();
        self.db.flush()?;
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_file() {
                std::fs::File::open(&path)?.sync_data()?;
            }
        }
        std::fs::File::open(dir)?.sync_all()?;
        Ok(applied)
    }

    /// Lease ids with their granted TTLs (deadlines are kept by the lessor, not here).
    pub fn leases(&self) -> Vec<(i64, i64)> {
        self.read_state()
            .leases
            .iter()
            .map(|(id, l)| (*id, l.ttl))
            .collect()
    }

    pub fn lease(&self, id: i64) -> Option<(i64, Vec<Vec<u8>>)> {
        let state = self.read_state();
        state
            .leases
            .get(&id)
            .map(|l| (l.ttl, l.keys.iter().cloned().collect()))
    }

    /// Events with revision in `[from, to]`, in order; `Compacted` if `from` is gone.
    pub fn history(&self, from: Revision, to: Revision, limit: usize) -> Result<Vec<Event>> {
        let state = self.read_state();
        if from <= state.compacted {
            return Err(Error::Compacted {
                compact_revision: state.compacted,
            });
        }
        let start = rev_key(Rev { main: from, sub: 0 });
        let end = rev_key(Rev {
            main: to.saturating_add(1),
            sub: 0,
        });
        let mut events: Vec<Event> = Vec::new();
        let mut last_main = 0;
        for item in self.tree.range(start..end) {
            let (k, v) = item?;
            let rev = parse_rev_key(&k).ok_or_else(|| corrupt("revision key", "bad length"))?;
            // Stop only at a revision boundary so a transaction is never split.
            if events.len() >= limit && rev.main != last_main {
                break;
            }
            last_main = rev.main;
            let rec: Record = command::decode(&v).map_err(|e| corrupt("record", e))?;
            let prev_kv = state
                .index
                .previous(&rec.kv.key, rev)
                .and_then(|p| txn::read_record(&self.tree, p).ok().map(|r| r.kv));
            let kind = if rec.tombstone {
                EventKind::Delete
            } else {
                EventKind::Put
            };
            events.push(Event {
                kind,
                kv: rec.kv,
                prev_kv,
            });
        }
        Ok(events)
    }

    /// Every backend entry, for snapshots: (key, value) pairs in key order.
    pub fn export(&self) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>)>> + '_ {
        self.tree.iter().map(|r| {
            r.map(|(k, v)| (k.to_vec(), v.to_vec()))
                .map_err(Error::from)
        })
    }

    /// Replaces the whole state with a snapshot's entries (a follower catching up, or a
    /// restore), then rebuilds the index. `applied` is the snapshot's log position.
    pub fn replace(
        &self,
        entries: impl Iterator<Item = Result<(Vec<u8>, Vec<u8>)>>,
        applied: Applied,
    ) -> Result<()> {
        let mut state = self.write_state();
        self.tree.clear()?;
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for e in entries {
            let (k, v) = e?;
            batch.insert(k, v);
            n += 1;
            if n % 4096 == 0 {
                self.tree.apply_batch(std::mem::take(&mut batch))?;
            }
        }
        batch.insert(META_APPLIED, command::encode(&applied));
        self.tree.apply_batch(batch)?;
        *state = load_state(&self.tree)?;
        Ok(())
    }
}

/// Rebuilds the in-memory state by scanning the backend once.
fn load_state(tree: &sled::Tree) -> Result<State> {
    let meta = |key: &[u8]| -> Result<Option<sled::IVec>> { Ok(tree.get(key)?) };
    let applied = match meta(META_APPLIED)? {
        Some(v) => command::decode(&v).map_err(|e| corrupt("applied index", e))?,
        None => Applied::default(),
    };
    let read_rev = |v: Option<sled::IVec>, what: &str| -> Result<Option<Revision>> {
        v.map(|v| {
            <[u8; 8]>::try_from(v.as_ref())
                .map(i64::from_be_bytes)
                .map_err(|e| corrupt(what, e))
        })
        .transpose()
    };
    let compacted = read_rev(meta(META_COMPACTED)?, "compact revision")?.unwrap_or(0);
    let stored_current = read_rev(meta(META_CURRENT)?, "current revision")?.unwrap_or(1);
    let members = match meta(META_MEMBERS)? {
        Some(v) => command::decode(&v).map_err(|e| corrupt("members", e))?,
        None => Vec::new(),
    };
    let conf_state = meta(META_CONF)?.map(|v| v.to_vec()).unwrap_or_default();

    let mut index = Index::default();
    let mut current = stored_current.max(1);
    let mut lease_of: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
    for item in tree.scan_prefix(b"r") {
        let (k, v) = item?;
        let rev = parse_rev_key(&k).ok_or_else(|| corrupt("revision key", "bad length"))?;
        let rec: Record = command::decode(&v)
            .map_err(|e| corrupt(&format!("record at revision {}", rev.main), e))?;
        if rec.tombstone {
            index.tombstone(&rec.kv.key, rev);
            lease_of.remove(&rec.kv.key);
        } else {
            index.put(&rec.kv.key, rev);
            if rec.kv.lease != 0 {
                lease_of.insert(rec.kv.key.clone(), rec.kv.lease);
            } else {
                lease_of.remove(&rec.kv.key);
            }
        }
        current = current.max(rev.main);
    }
    let mut leases = BTreeMap::new();
    for item in tree.scan_prefix(b"l") {
        let (k, v) = item?;
        let id = <[u8; 8]>::try_from(&k[1..])
            .map(i64::from_be_bytes)
            .map_err(|e| corrupt("lease key", e))?;
        let ttl = <[u8; 8]>::try_from(v.as_ref())
            .map(i64::from_be_bytes)
            .map_err(|e| corrupt("lease ttl", e))?;
        leases.insert(
            id,
            LeaseEntry {
                ttl,
                keys: BTreeSet::new(),
            },
        );
    }
    for (key, id) in lease_of {
        if let Some(l) = leases.get_mut(&id) {
            l.keys.insert(key);
        }
    }
    Ok(State {
        index,
        current,
        compacted,
        leases,
        applied,
        membership: Membership {
            members,
            conf_state,
        },
    })
}

impl Mvcc {
    /// Writes a snapshot of the whole state as of now; applies wait while it is taken, so it
    /// is consistent (one revision, its leases and metadata).
    pub fn write_consistent_snapshot<W: std::io::Write>(&self, out: &mut W) -> Result<u64> {
        let _frozen = self.read_state();
        super::snapshot::write(out, self.export())
    }
}
