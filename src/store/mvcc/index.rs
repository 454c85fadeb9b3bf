//! The in-memory key index: for every key, the revisions at which it was written or deleted,
//! so a read at any uncompacted revision finds the right record by revision (etcd's treeIndex).
//! It holds no values; those live in the backend under their revision.
use std::collections::BTreeMap;
use std::ops::Bound;

use crate::store::types::Revision;

/// A revision with its position inside a transaction, as etcd's `revision{main, sub}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Rev {
    pub main: Revision,
    pub sub: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    rev: Rev,
    tombstone: bool,
}

/// Key → history of that key, ordered by revision.
#[derive(Default, Debug)]
pub struct Index {
    keys: BTreeMap<Vec<u8>, Vec<Entry>>,
}

/// Which keys a request names: one key, a half-open range, or everything from a key on.
#[derive(Clone, Debug)]
pub enum KeyRange<'a> {
    One(&'a [u8]),
    From(&'a [u8]),
    Between(&'a [u8], &'a [u8]),
}

impl<'a> KeyRange<'a> {
    /// Reads etcd's `key`/`range_end` convention: empty end = one key, `\0` = to the end.
    pub fn new(key: &'a [u8], range_end: &'a [u8]) -> Self {
        if range_end.is_empty() {
            KeyRange::One(key)
        } else if range_end == [0] {
            KeyRange::From(key)
        } else {
            KeyRange::Between(key, range_end)
        }
    }

    pub fn contains(&self, k: &[u8]) -> bool {
        match self {
            KeyRange::One(key) => k == *key,
            KeyRange::From(key) => k >= *key,
            KeyRange::Between(start, end) => k >= *start && k < *end,
        }
    }

    fn bounds(&self) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
        match *self {
            KeyRange::One(k) => (Bound::Included(k), Bound::Included(k)),
            KeyRange::From(k) => (Bound::Included(k), Bound::Unbounded),
            KeyRange::Between(s, e) => (Bound::Included(s), Bound::Excluded(e)),
        }
    }

    fn is_empty(&self) -> bool {
        matches!(self, KeyRange::Between(s, e) if s >= e)
    }
}

impl Index {
    pub fn put(&mut self, key: &[u8], rev: Rev) {
        self.push(key, rev, false);
    }

    pub fn tombstone(&mut self, key: &[u8], rev: Rev) {
        self.push(key, rev, true);
    }

    fn push(&mut self, key: &[u8], rev: Rev, tombstone: bool) {
        let entries = match self.keys.get_mut(key) {
            Some(e) => e,
            None => self.keys.entry(key.to_vec()).or_default(),
        };
        debug_assert!(entries.last().is_none_or(|e| e.rev < rev));
        entries.push(Entry { rev, tombstone });
    }

    /// The live version of `key` at main revision `at`, if any.
    pub fn get(&self, key: &[u8], at: Revision) -> Option<Rev> {
        self.keys.get(key).and_then(|e| visible(e, at))
    }

    /// Live keys in `range` at revision `at`, in key order, with the revision to read each from.
    pub fn range<'s>(
        &'s self,
        range: &KeyRange<'_>,
        at: Revision,
    ) -> impl DoubleEndedIterator<Item = (&'s [u8], Rev)> + 's {
        let iter = if range.is_empty() {
            None
        } else {
            Some(self.keys.range::<[u8], _>(range.bounds()))
        };
        iter.into_iter()
            .flatten()
            .filter_map(move |(k, e)| visible(e, at).map(|r| (k.as_slice(), r)))
    }

    /// The revision of the version before `rev` of `key`, when that version was live.
    pub fn previous(&self, key: &[u8], rev: Rev) -> Option<Rev> {
        let entries = self.keys.get(key)?;
        let pos = entries.partition_point(|e| e.rev < rev);
        let prev = entries.get(pos.checked_sub(1)?)?;
        (!prev.tombstone).then_some(prev.rev)
    }

    /// Forgets history older than `at`: keeps, per key, the newest version at or below `at`
    /// (so reads at `at` still work) unless it is a deletion. Returns the revisions whose
    /// records the backend may now drop.
    pub fn compact(&mut self, at: Revision) -> Vec<Rev> {
        let mut dropped = Vec::new();
        self.keys.retain(|_, entries| {
            let upto = entries.partition_point(|e| e.rev.main <= at);
            if upto == 0 {
                return true;
            }
            let keep_from = if entries[upto - 1].tombstone {
                upto
            } else {
                upto - 1
            };
            dropped.extend(entries.drain(..keep_from).map(|e| e.rev));
            !entries.is_empty()
        });
        dropped
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

fn visible(entries: &[Entry], at: Revision) -> Option<Rev> {
    let pos = entries.partition_point(|e| e.rev.main <= at);
    let e = entries.get(pos.checked_sub(1)?)?;
    (!e.tombstone).then_some(e.rev)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(main: i64) -> Rev {
        Rev { main, sub: 0 }
    }

    #[test]
    fn get_sees_the_version_live_at_a_revision() {
        let mut idx = Index::default();
        idx.put(b"a", rev(2));
        idx.put(b"a", rev(4));
        idx.tombstone(b"a", rev(6));
        idx.put(b"a", rev(8));
        assert_eq!(idx.get(b"a", 1), None);
        assert_eq!(idx.get(b"a", 3), Some(rev(2)));
        assert_eq!(idx.get(b"a", 5), Some(rev(4)));
        assert_eq!(idx.get(b"a", 7), None);
        assert_eq!(idx.get(b"a", 9), Some(rev(8)));
    }

    #[test]
    fn compaction_keeps_the_newest_version_at_the_compact_revision() {
        let mut idx = Index::default();
        idx.put(b"a", rev(2));
        idx.put(b"a", rev(3));
        idx.put(b"b", rev(4));
        idx.tombstone(b"b", rev(5));
        let mut dropped = idx.compact(5);
        dropped.sort();
        assert_eq!(dropped, vec![rev(2), rev(4), rev(5)]);
        assert_eq!(idx.get(b"a", 5), Some(rev(3)));
        assert_eq!(idx.get(b"b", 5), None);
        assert_eq!(idx.len(), 1);
    }

    #[test]
    fn range_between_and_from() {
        let mut idx = Index::default();
        for (i, k) in [b"a", b"b", b"c"].iter().enumerate() {
            idx.put(*k, rev(i as i64 + 2));
        }
        let keys: Vec<_> = idx
            .range(&KeyRange::new(b"a", b"c"), 10)
            .map(|(k, _)| k.to_vec())
            .collect();
        assert_eq!(keys, vec![b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(idx.range(&KeyRange::new(b"b", &[0]), 10).count(), 2);
        assert_eq!(idx.range(&KeyRange::new(b"c", b"a"), 10).count(), 0);
        assert_eq!(idx.range(&KeyRange::new(b"a", b"c"), 2).count(), 1);
    }
}
