//! Lease deadlines. Leases themselves (id, TTL, attached keys) are replicated state; their
//! deadlines are not: the leader keeps them in memory, refreshes them on keep-alive, and
//! proposes a revoke when one passes. A new leader grants every lease a full TTL again,
//! as etcd's lessor does on promotion.
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// Shortest TTL granted: etcd's 1.5 election timeouts, rounded up to whole seconds.
pub const MIN_TTL: i64 = 2;
pub const MAX_TTL: i64 = 9_000_000_000;

#[derive(Default)]
pub struct Lessor {
    deadlines: HashMap<i64, (Instant, i64)>,
    /// Revokes proposed and not yet applied, so they are proposed once.
    revoking: HashSet<i64>,
}

impl Lessor {
    pub fn granted(&mut self, id: i64, ttl: i64) {
        self.deadlines.insert(id, (deadline(ttl), ttl));
    }

    pub fn revoked(&mut self, id: i64) {
        self.deadlines.remove(&id);
        self.revoking.remove(&id);
    }

    /// Every lease gets a full TTL from now (on promotion to leader and at start).
    pub fn promote(&mut self, leases: impl Iterator<Item = (i64, i64)>) {
        self.deadlines.clear();
        self.revoking.clear();
        for (id, ttl) in leases {
            self.granted(id, ttl);
        }
    }

    pub fn keep_alive(&mut self, id: i64) -> Option<i64> {
        let entry = self.deadlines.get_mut(&id)?;
        entry.0 = deadline(entry.1);
        Some(entry.1)
    }

    /// Seconds left, rounded up; None for an unknown lease.
    pub fn remaining(&self, id: i64) -> Option<i64> {
        let (at, _) = self.deadlines.get(&id)?;
        let left = at.saturating_duration_since(Instant::now());
        Some(left.as_millis().div_ceil(1000) as i64)
    }

    /// Leases past their deadline that have no revoke in flight; marks them as revoking.
    pub fn take_expired(&mut self) -> Vec<i64> {
        let now = Instant::now();
        let expired: Vec<i64> = self
            .deadlines
            .iter()
            .filter(|(id, (at, _))| *at <= now && !self.revoking.contains(id))
            .map(|(id, _)| *id)
            .collect();
        self.revoking.extend(expired.iter().copied());
        expired
    }

    /// Forgets in-flight revokes (after losing leadership, the next leader decides).
    pub fn demote(&mut self) {
        self.revoking.clear();
    }
}

fn deadline(ttl: i64) -> Instant {
    Instant::now() + Duration::from_secs(ttl.clamp(0, MAX_TTL) as u64)
}
