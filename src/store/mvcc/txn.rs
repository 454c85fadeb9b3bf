//! Transaction evaluation: compares, ranges and writes at one revision, following etcd's
//! applier (mvcc/kvstore_txn.go and etcdserver/apply.go) for what counts and what bumps the
//! revision.
use std::collections::HashMap;

use super::index::{KeyRange, Rev};
use super::{corrupt, lease_key, rev_key, LeaseEntry, Record, State, META_COMPACTED};
use crate::store::command::{self, Command, CommandResult};
use crate::store::error::{Error, Result};
use crate::store::types::*;

pub(crate) fn read_record(tree: &sled::Tree, rev: Rev) -> Result<Record> {
    let v = tree
        .get(rev_key(rev))?
        .ok_or_else(|| corrupt("index", format!("no record at revision {}", rev.main)))?;
    command::decode(&v).map_err(|e| corrupt(&format!("record at revision {}", rev.main), e))
}

/// Where records are read from: the backend, or the backend overlaid with what the entry
/// being applied has written but not yet committed to disk.
pub(crate) trait Records {
    fn record(&self, rev: Rev) -> Result<Record>;
}

impl Records for sled::Tree {
    fn record(&self, rev: Rev) -> Result<Record> {
        read_record(self, rev)
    }
}

/// Writes of one Raft entry (possibly many commands) on their way to one atomic batch.
#[derive(Default)]
pub(crate) struct Staged {
    pub batch: sled::Batch,
    records: HashMap<Rev, Record>,
}

impl Staged {
    fn insert(&mut self, rev: Rev, rec: Record) {
        self.batch.insert(&rev_key(rev)[..], command::encode(&rec));
        self.records.insert(rev, rec);
    }
}

/// Reads through the staged writes of the entry being applied.
pub(crate) struct Overlay<'a> {
    pub tree: &'a sled::Tree,
    pub staged: &'a Staged,
}

impl Records for Overlay<'_> {
    fn record(&self, rev: Rev) -> Result<Record> {
        match self.staged.records.get(&rev) {
            Some(r) => Ok(r.clone()),
            None => read_record(self.tree, rev),
        }
    }
}

/// A write transaction in progress: the revision it will commit at and what it wrote so far.
struct Writer<'a> {
    tree: &'a sled::Tree,
    staged: &'a mut Staged,
    events: &'a mut Vec<Event>,
    main: Revision,
    sub: i64,
}

impl Records for Writer<'_> {
    fn record(&self, rev: Rev) -> Result<Record> {
        Overlay {
            tree: self.tree,
            staged: self.staged,
        }
        .record(rev)
    }
}

impl Writer<'_> {
    fn next_rev(&mut self) -> Rev {
        let r = Rev {
            main: self.main,
            sub: self.sub,
        };
        self.sub += 1;
        r
    }
}

pub(crate) fn apply_command(
    tree: &sled::Tree,
    state: &mut State,
    staged: &mut Staged,
    events: &mut Vec<Event>,
    cmd: &Command,
) -> Result<CommandResult> {
    match cmd {
        Command::Txn(req) => {
            let main = state.current + 1;
            let mut w = Writer {
                tree,
                staged,
                events,
                main,
                sub: 0,
            };
            let succeeded = compare_all(&w, state, &req.compare)?;
            let ops = if succeeded {
                &req.success
            } else {
                &req.failure
            };
            check_ops(state, ops)?;
            let responses = run_ops(&mut w, state, ops)?;
            if w.sub > 0 {
                state.current = main;
            }
            let revision = state.current;
            Ok(CommandResult::Txn(TxnResponse {
                revision,
                succeeded,
                responses: fill_revision(responses, revision),
            }))
        }
        Command::Compact { revision } => {
            if *revision <= state.compacted {
                return Err(Error::Compacted {
                    compact_revision: state.compacted,
                });
            }
            if *revision > state.current {
                return Err(Error::FutureRevision {
                    current: state.current,
                });
            }
            for rev in state.index.compact(*revision) {
                staged.batch.remove(&rev_key(rev)[..]);
                staged.records.remove(&rev);
            }
            state.compacted = *revision;
            staged
                .batch
                .insert(META_COMPACTED, &revision.to_be_bytes()[..]);
            Ok(CommandResult::Compacted {
                revision: state.current,
            })
        }
        Command::LeaseGrant { id, ttl } => {
            if state.leases.contains_key(id) {
                return Err(Error::LeaseExists);
            }
            state.leases.insert(
                *id,
                LeaseEntry {
                    ttl: *ttl,
                    keys: Default::default(),
                },
            );
            staged
                .batch
                .insert(&lease_key(*id)[..], &ttl.to_be_bytes()[..]);
            Ok(CommandResult::LeaseGranted {
                id: *id,
                ttl: *ttl,
                revision: state.current,
            })
        }
        Command::LeaseRevoke { id } => {
            let lease = state.leases.remove(id).ok_or(Error::LeaseNotFound)?;
            staged.batch.remove(&lease_key(*id)[..]);
            let main = state.current + 1;
            let mut w = Writer {
                tree,
                staged,
                events,
                main,
                sub: 0,
            };
            for key in &lease.keys {
                delete_key(&mut w, state, key, false)?;
            }
            if w.sub > 0 {
                state.current = main;
            }
            Ok(CommandResult::LeaseRevoked {
                revision: state.current,
            })
        }
    }
}

/// Range responses inside a write transaction report the transaction's revision.
fn fill_revision(responses: Vec<TxnOpResponse>, revision: Revision) -> Vec<TxnOpResponse> {
    responses
        .into_iter()
        .map(|r| match r {
            TxnOpResponse::Range(mut rr) => {
                rr.revision = revision;
                TxnOpResponse::Range(rr)
            }
            TxnOpResponse::Put(mut p) => {
                p.revision = revision;
                TxnOpResponse::Put(p)
            }
            TxnOpResponse::Delete(mut d) => {
                d.revision = revision;
                TxnOpResponse::Delete(d)
            }
            TxnOpResponse::Txn(mut t) => {
                t.revision = revision;
                t.responses = fill_revision(t.responses, revision);
                TxnOpResponse::Txn(t)
            }
        })
        .collect()
}

/// Checks, before anything is written, what would make the chosen branch fail half-way:
/// a lease that does not exist, or ignore_value/ignore_lease on a missing key.
fn check_ops(state: &State, ops: &[TxnOp]) -> Result<()> {
    for op in ops {
        match op {
            TxnOp::Put(p) => {
                if p.lease != 0 && !p.ignore_lease && !state.leases.contains_key(&p.lease) {
                    return Err(Error::LeaseNotFound);
                }
                if (p.ignore_value || p.ignore_lease)
                    && state.index.get(&p.key, state.current).is_none()
                {
                    return Err(Error::InvalidArgument("key not found".into()));
                }
            }
            TxnOp::Range(r) if r.revision > state.current => {
                return Err(Error::FutureRevision {
                    current: state.current,
                })
            }
            TxnOp::Range(r) if r.revision > 0 && r.revision <= state.compacted => {
                return Err(Error::Compacted {
                    compact_revision: state.compacted,
                })
            }
            TxnOp::Txn(t) => {
                check_ops(state, &t.success)?;
                check_ops(state, &t.failure)?;
            }
            _ => {}
        }
    }
    Ok(())
}

fn run_ops(w: &mut Writer<'_>, state: &mut State, ops: &[TxnOp]) -> Result<Vec<TxnOpResponse>> {
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        out.push(match op {
            TxnOp::Range(r) => {
                // Reads inside a transaction see its earlier writes.
                TxnOpResponse::Range(range(&*w, state, r, w.main)?)
            }
            TxnOp::Put(p) => TxnOpResponse::Put(put(w, state, p)?),
            TxnOp::Delete(d) => {
                let keys: Vec<Vec<u8>> = state
                    .index
                    .range(&KeyRange::new(&d.key, &d.range_end), w.main)
                    .map(|(k, _)| k.to_vec())
                    .collect();
                let mut resp = DeleteResponse::default();
                for key in keys {
                    if let Some(prev) = delete_key(w, state, &key, d.prev_kv)? {
                        resp.prev_kvs.push(prev);
                    }
                    resp.deleted += 1;
                }
                TxnOpResponse::Delete(resp)
            }
            TxnOp::Txn(t) => {
                let succeeded = compare_all(&*w, state, &t.compare)?;
                let branch = if succeeded { &t.success } else { &t.failure };
                TxnOpResponse::Txn(TxnResponse {
                    revision: 0,
                    succeeded,
                    responses: run_ops(w, state, branch)?,
                })
            }
        });
    }
    Ok(out)
}

fn put(w: &mut Writer<'_>, state: &mut State, p: &PutRequest) -> Result<PutResponse> {
    let prev = match state.index.get(&p.key, w.main) {
        Some(rev) => Some(w.record(rev)?.kv),
        None => None,
    };
    let rev = w.next_rev();
    let (create_revision, version) = match &prev {
        Some(kv) => (kv.create_revision, kv.version + 1),
        None => (rev.main, 1),
    };
    let value = match (&prev, p.ignore_value) {
        (Some(kv), true) => kv.value.clone(),
        _ => p.value.clone(),
    };
    let lease = match (&prev, p.ignore_lease) {
        (Some(kv), true) => kv.lease,
        _ => p.lease,
    };
    let kv = KeyValue {
        key: p.key.clone(),
        create_revision,
        mod_revision: rev.main,
        version,
        value,
        lease,
    };
    let old_lease = prev.as_ref().map(|kv| kv.lease).unwrap_or(0);
    if old_lease != lease {
        if let Some(l) = state.leases.get_mut(&old_lease) {
            l.keys.remove(&p.key);
        }
    }
    if let Some(l) = state.leases.get_mut(&lease) {
        l.keys.insert(p.key.clone());
    }
    let rec = Record {
        kv: kv.clone(),
        tombstone: false,
    };
    w.staged.insert(rev, rec);
    state.index.put(&p.key, rev);
    w.events.push(Event {
        kind: EventKind::Put,
        kv,
        prev_kv: prev.clone(),
    });
    Ok(PutResponse {
        revision: rev.main,
        prev_kv: if p.prev_kv { prev } else { None },
    })
}

/// Deletes one live key; returns its last version when `want_prev`.
fn delete_key(
    w: &mut Writer<'_>,
    state: &mut State,
    key: &[u8],
    want_prev: bool,
) -> Result<Option<KeyValue>> {
    let Some(prev_rev) = state.index.get(key, w.main) else {
        return Ok(None);
    };
    let prev = w.record(prev_rev)?.kv;
    let rev = w.next_rev();
    if let Some(l) = state.leases.get_mut(&prev.lease) {
        l.keys.remove(key);
    }
    let kv = KeyValue {
        key: key.to_vec(),
        mod_revision: rev.main,
        ..Default::default()
    };
    let rec = Record {
        kv: kv.clone(),
        tombstone: true,
    };
    w.staged.insert(rev, rec);
    state.index.tombstone(key, rev);
    w.events.push(Event {
        kind: EventKind::Delete,
        kv,
        prev_kv: Some(prev.clone()),
    });
    Ok(want_prev.then_some(prev))
}

fn compare_all(src: &impl Records, state: &State, compares: &[Compare]) -> Result<bool> {
    for c in compares {
        if !compare_one(src, state, c)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// etcd's `applyCompare`: every key in the compare's range must satisfy it; a missing key
/// compares as zero values, except that a value compare on a missing key fails.
fn compare_one(src: &impl Records, state: &State, c: &Compare) -> Result<bool> {
    let range = KeyRange::new(&c.key, &c.range_end);
    let revs: Vec<Rev> = state
        .index
        .range(&range, state.current)
        .map(|(_, r)| r)
        .collect();
    if revs.is_empty() {
        if matches!(c.target, CompareTarget::Value(_)) {
            return Ok(false);
        }
        return Ok(compare_kv(&KeyValue::default(), c));
    }
    for rev in revs {
        if !compare_kv(&src.record(rev)?.kv, c) {
            return Ok(false);
        }
    }
    Ok(true)
}

fn compare_kv(kv: &KeyValue, c: &Compare) -> bool {
    use std::cmp::Ordering;
    let ord = match &c.target {
        CompareTarget::Version(v) => kv.version.cmp(v),
        CompareTarget::CreateRevision(v) => kv.create_revision.cmp(v),
        CompareTarget::ModRevision(v) => kv.mod_revision.cmp(v),
        CompareTarget::Value(v) => kv.value.as_slice().cmp(v.as_slice()),
        CompareTarget::Lease(v) => kv.lease.cmp(v),
    };
    match c.result {
        CompareResult::Equal => ord == Ordering::Equal,
        CompareResult::NotEqual => ord != Ordering::Equal,
        CompareResult::Greater => ord == Ordering::Greater,
        CompareResult::Less => ord == Ordering::Less,
    }
}

/// etcd's Range: `view` is the newest revision visible (the current one, or a transaction's
/// own revision for reads inside it).
pub(crate) fn range(
    src: &impl Records,
    state: &State,
    req: &RangeRequest,
    view: Revision,
) -> Result<RangeResponse> {
    let at = if req.revision > 0 {
        if req.revision > state.current {
            return Err(Error::FutureRevision {
                current: state.current,
            });
        }
        if req.revision < state.compacted {
            return Err(Error::Compacted {
                compact_revision: state.compacted,
            });
        }
        req.revision
    } else {
        view
    };
    let range = KeyRange::new(&req.key, &req.range_end);
    let filtered = req.min_mod_revision > 0
        || req.max_mod_revision > 0
        || req.min_create_revision > 0
        || req.max_create_revision > 0;
    let mut order = req.sort_order;
    if order == SortOrder::None && req.sort_target != SortTarget::Key {
        order = SortOrder::Ascend;
    }
    let natural = req.sort_target == SortTarget::Key && order != SortOrder::Descend;
    let reverse_keys = req.sort_target == SortTarget::Key && order == SortOrder::Descend;
    let limit = if req.limit > 0 {
        req.limit as usize
    } else {
        usize::MAX
    };

    let count = state.index.range(&range, at).count() as i64;
    let mut resp = RangeResponse {
        revision: state.current,
        kvs: Vec::new(),
        more: false,
        count,
    };
    if req.count_only {
        return Ok(resp);
    }
    let load = |rev: Rev| -> Result<KeyValue> {
        let mut kv = src.record(rev)?.kv;
        if req.keys_only {
            kv.value = Vec::new();
        }
        Ok(kv)
    };
    if (natural || reverse_keys) && !filtered {
        let iter: Box<dyn Iterator<Item = (&[u8], Rev)>> = if reverse_keys {
            Box::new(state.index.range(&range, at).rev())
        } else {
            Box::new(state.index.range(&range, at))
        };
        for (_, rev) in iter.take(limit) {
            resp.kvs.push(load(rev)?);
        }
        resp.more = (resp.kvs.len() as i64) < count;
        return Ok(resp);
    }
    let mut kvs = Vec::new();
    for (_, rev) in state.index.range(&range, at) {
        let kv = load(rev)?;
        let keep = (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
            && (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
            && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
            && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision);
        if keep {
            kvs.push(kv);
        }
    }
    if order != SortOrder::None {
        match req.sort_target {
            SortTarget::Key => kvs.sort_by(|a, b| a.key.cmp(&b.key)),
            SortTarget::Version => kvs.sort_by_key(|kv| kv.version),
            SortTarget::Create => kvs.sort_by_key(|kv| kv.create_revision),
            SortTarget::Mod => kvs.sort_by_key(|kv| kv.mod_revision),
            SortTarget::Value => kvs.sort_by(|a, b| a.value.cmp(&b.value)),
        }
        if order == SortOrder::Descend {
            kvs.reverse();
        }
    }
    resp.more = kvs.len() > limit;
    kvs.truncate(limit);
    resp.kvs = kvs;
    Ok(resp)
}
