//! Property test: random operation sequences applied to the state machine and to a plain
//! in-memory model of etcd's semantics must agree on every answer, and a reopen from disk
//! must rebuild the same state.
use std::collections::BTreeMap;

use proptest::prelude::*;

use super::index::KeyRange;
use super::{Applied, Mvcc};
use crate::store::command::{Command, CommandResult};
use crate::store::types::*;
use crate::store::Error;

#[derive(Clone, Debug)]
enum Op {
    Put(usize, u8),
    Delete(usize, bool),
    CasPut(usize, i64, u8),
    Compact(i64),
    Get(usize, i64),
    Range(usize, i64),
}

const KEYS: [&str; 5] = ["a", "ab", "b", "b/1", "c"];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..KEYS.len(), any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
        2 => (0..KEYS.len(), any::<bool>()).prop_map(|(k, p)| Op::Delete(k, p)),
        2 => (0..KEYS.len(), 0i64..12, any::<u8>()).prop_map(|(k, r, v)| Op::CasPut(k, r, v)),
        1 => (0i64..14).prop_map(Op::Compact),
        3 => (0..KEYS.len(), 0i64..14).prop_map(|(k, r)| Op::Get(k, r)),
        2 => (0..KEYS.len(), 0i64..14).prop_map(|(k, r)| Op::Range(k, r)),
    ]
}

#[derive(Default)]
struct Model {
    hist: BTreeMap<Vec<u8>, Vec<(i64, Option<KeyValue>)>>,
    current: i64,
    compacted: i64,
}

impl Model {
    fn at(&self, key: &[u8], rev: i64) -> Option<KeyValue> {
        self.hist
            .get(key)?
            .iter()
            .rev()
            .find(|(r, _)| *r <= rev)
            .and_then(|(_, kv)| kv.clone())
    }

    fn read_rev(&self, rev: i64) -> Result<i64, Error> {
        if rev > self.current {
            return Err(Error::FutureRevision {
                current: self.current,
            });
        }
        if rev > 0 && rev < self.compacted {
            return Err(Error::Compacted {
                compact_revision: self.compacted,
            });
        }
        Ok(if rev == 0 { self.current } else { rev })
    }

    fn range(&self, range: &KeyRange<'_>, rev: i64) -> Result<Vec<KeyValue>, Error> {
        let at = self.read_rev(rev)?;
        Ok(self
            .hist
            .keys()
            .filter(|k| range.contains(k))
            .filter_map(|k| self.at(k, at))
            .collect())
    }

    fn put(&mut self, key: &[u8], value: Vec<u8>) -> i64 {
        let rev = self.current + 1;
        let prev = self.at(key, self.current);
        let kv = KeyValue {
            key: key.to_vec(),
            create_revision: prev.as_ref().map(|p| p.create_revision).unwrap_or(rev),
            mod_revision: rev,
            version: prev.as_ref().map(|p| p.version + 1).unwrap_or(1),
            value,
            lease: 0,
        };
        self.hist
            .entry(key.to_vec())
            .or_default()
            .push((rev, Some(kv)));
        self.current = rev;
        rev
    }

    fn delete(&mut self, range: &KeyRange<'_>) -> i64 {
        let live: Vec<Vec<u8>> = self
            .hist
            .keys()
            .filter(|k| range.contains(k) && self.at(k, self.current).is_some())
            .cloned()
            .collect();
        if live.is_empty() {
            return 0;
        }
        let rev = self.current + 1;
        for k in &live {
            self.hist.entry(k.clone()).or_default().push((rev, None));
        }
        self.current = rev;
        live.len() as i64
    }
}

fn prefix_of(k: &str) -> (Vec<u8>, Vec<u8>) {
    (k.as_bytes().to_vec(), prefix_end(k.as_bytes()))
}

fn txn_result(r: crate::store::Result<CommandResult>) -> crate::store::Result<TxnResponse> {
    match r? {
        CommandResult::Txn(t) => Ok(t),
        other => panic!("unexpected {other:?}"),
    }
}

fn same_error(a: &Error, b: &Error) -> bool {
    matches!(
        (a, b),
        (Error::Compacted { .. }, Error::Compacted { .. })
            | (Error::FutureRevision { .. }, Error::FutureRevision { .. })
    )
}

fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let mvcc = Mvcc::open(dir.path(), 1 << 20).unwrap();
    let mut model = Model {
        current: 1,
        ..Default::default()
    };
    let mut index = 1;
    let mut apply = |mvcc: &Mvcc, cmd: Command| {
        index += 1;
        let mut out = mvcc.apply(Applied { index, term: 1 }, &[cmd]).unwrap();
        out.results.remove(0)
    };
    for op in ops {
        match op {
            Op::Put(k, v) => {
                let key = KEYS[k].as_bytes().to_vec();
                let r = txn_result(apply(
                    &mvcc,
                    Command::Txn(TxnRequest::single(TxnOp::Put(PutRequest {
                        key: key.clone(),
                        value: vec![v],
                        ..Default::default()
                    }))),
                ))
                .unwrap();
                assert_eq!(r.revision, model.put(&key, vec![v]));
            }
            Op::Delete(k, as_prefix) => {
                let (key, end) = if as_prefix {
                    prefix_of(KEYS[k])
                } else {
                    (KEYS[k].as_bytes().to_vec(), vec![])
                };
                let r = txn_result(apply(
                    &mvcc,
                    Command::Txn(TxnRequest::single(TxnOp::Delete(DeleteRequest {
                        key: key.clone(),
                        range_end: end.clone(),
                        prev_kv: false,
                    }))),
                ))
                .unwrap();
                let deleted = model.delete(&KeyRange::new(&key, &end));
                match &r.responses[0] {
                    TxnOpResponse::Delete(d) => assert_eq!(d.deleted, deleted),
                    other => panic!("unexpected {other:?}"),
                }
                assert_eq!(r.revision, model.current);
            }
            Op::CasPut(k, expect, v) => {
                let key = KEYS[k].as_bytes().to_vec();
                let txn = TxnRequest {
                    compare: vec![Compare {
                        key: key.clone(),
                        range_end: vec![],
                        result: CompareResult::Equal,
                        target: CompareTarget::ModRevision(expect),
                    }],
                    success: vec![TxnOp::Put(PutRequest {
                        key: key.clone(),
                        value: vec![v],
                        ..Default::default()
                    })],
                    failure: vec![],
                };
                let r = txn_result(apply(&mvcc, Command::Txn(txn))).unwrap();
                let actual = model
                    .at(&key, model.current)
                    .map(|kv| kv.mod_revision)
                    .unwrap_or(0);
                assert_eq!(r.succeeded, actual == expect);
                if r.succeeded {
                    model.put(&key, vec![v]);
                }
                assert_eq!(r.revision, model.current);
            }
            Op::Compact(rev) => {
                let got = apply(&mvcc, Command::Compact { revision: rev });
                let want = if rev <= model.compacted {
                    Err(Error::Compacted {
                        compact_revision: model.compacted,
                    })
                } else if rev > model.current {
                    Err(Error::FutureRevision {
                        current: model.current,
                    })
                } else {
                    model.compacted = rev;
                    Ok(())
                };
                match (got, want) {
                    (Ok(_), Ok(())) => {}
                    (Err(a), Err(b)) => assert!(same_error(&a, &b), "{a:?} vs {b:?}"),
                    (a, b) => panic!("compact {rev}: store {a:?}, model {b:?}"),
                }
            }
            Op::Get(k, rev) | Op::Range(k, rev) => {
                let (key, end) = if matches!(op, Op::Range(..)) {
                    prefix_of(KEYS[k])
                } else {
                    (KEYS[k].as_bytes().to_vec(), vec![])
                };
                let got = mvcc.range(&RangeRequest {
                    key: key.clone(),
                    range_end: end.clone(),
                    revision: rev,
                    ..Default::default()
                });
                let want = model.range(&KeyRange::new(&key, &end), rev);
                match (got, want) {
                    (Ok(g), Ok(w)) => {
                        assert_eq!(g.kvs, w);
                        assert_eq!(g.count, w.len() as i64);
                        assert_eq!(g.revision, model.current);
                    }
                    (Err(a), Err(b)) => assert!(same_error(&a, &b), "{a:?} vs {b:?}"),
                    (a, b) => panic!("range {key:?} at {rev}: store {a:?}, model {b:?}"),
                }
            }
        }
    }
    // What is on disk rebuilds the same state.
    drop(mvcc);
    let reopened = Mvcc::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(reopened.current_revision(), model.current);
    assert_eq!(reopened.compact_revision(), model.compacted);
    let all = reopened
        .range(&RangeRequest {
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        })
        .unwrap();
    let want = model.range(&KeyRange::From(&[0]), 0).unwrap();
    assert_eq!(all.kvs, want);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]
    #[test]
    fn the_store_agrees_with_a_model_of_etcd(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops);
    }
}
