//! The scheduling queue, as kube-scheduler's: an active queue ordered by priority (then
//! arrival), a backoff queue (1 s doubling to 10 s per failed attempt) and the
//! unschedulable pods, which wait for a cluster event that could make them fit (or 5 min)
//! before they are tried again. A pod is in exactly one place at a time; while the loop
//! works on it, it is "in flight".
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;

use super::cache::{key_of, priority};

const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// kube's podMaxInUnschedulablePodsDuration.
const MAX_UNSCHEDULABLE: Duration = Duration::from_secs(300);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Place {
    Active(u64),
    Backoff,
    /// Since when, and whether a pod being placed or relabelled could help (affinity,
    /// spreading, host ports) rather than only room or node changes.
    Unschedulable(Instant, bool),
    InFlight,
}

struct Entry {
    pod: Arc<Pod>,
    place: Place,
    attempts: u32,
    last_attempt: Option<Instant>,
    /// The move count when the pod was popped: a move since means the cluster changed
    /// while the pod was being judged, so a failure goes to backoff, not unschedulable.
    popped_at_move: u64,
}

impl Entry {
    fn backoff_until(&self) -> Option<Instant> {
        let last = self.last_attempt?;
        let shift = self.attempts.saturating_sub(1).min(16);
        Some(last + (INITIAL_BACKOFF * (1u32 << shift)).min(MAX_BACKOFF))
    }
}

#[derive(Default)]
pub struct SchedulingQueue {
    entries: HashMap<String, Entry>,
    active: BinaryHeap<(i32, Reverse<u64>, String)>,
    backoff: BinaryHeap<Reverse<(Instant, String)>>,
    seq: u64,
    moves: u64,
}

impl SchedulingQueue {
    /// A pending pod as the watch shows it: new pods go active; an unschedulable pod whose
    /// spec or labels changed is worth another try.
    pub fn upsert(&mut self, pod: Arc<Pod>) {
        let key = key_of(&pod);
        match self.entries.get_mut(&key) {
            None => {
                self.entries.insert(
                    key.clone(),
                    Entry {
                        pod,
                        place: Place::Backoff,
                        attempts: 0,
                        last_attempt: None,
                        popped_at_move: 0,
                    },
                );
                self.activate(&key);
            }
            Some(e) => {
                let changed = e.pod.spec != pod.spec
                    || e.pod.metadata.labels != pod.metadata.labels
                    || e.pod.metadata.uid != pod.metadata.uid;
                e.pod = pod;
                if changed && matches!(e.place, Place::Unschedulable(..)) {
                    self.requeue(&key);
                }
            }
        }
    }

    pub fn remove(&mut self, key: &str) {
        // Heap entries left behind are skipped when they surface.
        self.entries.remove(key);
    }

    pub fn keys(&self) -> impl Iterator<Item = String> + '_ {
        self.entries.keys().cloned()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The pod to try next, if one is ready (backoffs that ran out join the active queue).
    pub fn pop(&mut self, now: Instant) -> Option<Arc<Pod>> {
        self.flush(now);
        while let Some((_, Reverse(seq), key)) = self.active.pop() {
            let Some(e) = self.entries.get_mut(&key) else {
                continue;
            };
            if e.place != Place::Active(seq) {
                continue;
            }
            e.place = Place::InFlight;
            e.attempts += 1;
            e.last_attempt = Some(now);
            e.popped_at_move = self.moves;
            return Some(e.pod.clone());
        }
        None
    }

    /// When a backing-off or long-unschedulable pod next becomes ready.
    pub fn next_ready(&self) -> Option<Instant> {
        let backoff = self.backoff.peek().map(|Reverse((t, _))| *t);
        let unschedulable = self
            .entries
            .values()
            .filter_map(|e| match e.place {
                Place::Unschedulable(since, _) => Some(since + MAX_UNSCHEDULABLE),
                _ => None,
            })
            .min();
        match (backoff, unschedulable) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The pod was bound: it leaves the queue.
    pub fn done(&mut self, key: &str) {
        self.entries.remove(key);
    }

    /// No node fits the pod: it waits for a cluster event (or backs off if one came while
    /// it was in flight).
    pub fn unschedulable(&mut self, key: &str, now: Instant, pod_dependent: bool) {
        let moved = self
            .entries
            .get(key)
            .map(|e| e.popped_at_move != self.moves);
        match moved {
            Some(true) => self.back_off(key),
            Some(false) => {
                if let Some(e) = self.entries.get_mut(key) {
                    e.place = Place::Unschedulable(now, pod_dependent);
                }
            }
            None => {}
        }
    }

    /// The attempt failed for another reason (an API error): back off and retry.
    pub fn error(&mut self, key: &str) {
        self.back_off(key);
    }

    /// A cluster event that could make pods fit: every unschedulable pod goes back, to the
    /// active queue or to backoff if its backoff has not run out.
    pub fn move_all(&mut self, now: Instant) {
        self.move_where(now, |_| true);
    }

    /// A placed pod appeared or was relabelled: only pods that wait on other pods (kube's
    /// queueing hint for AssignedPodAdd/Update) go back.
    pub fn move_pod_dependent(&mut self, now: Instant) {
        self.move_where(now, |dependent| dependent);
    }

    fn move_where(&mut self, now: Instant, which: impl Fn(bool) -> bool) {
        self.moves += 1;
        let keys: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| matches!(e.place, Place::Unschedulable(_, d) if which(d)))
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            self.requeue_at(&k, now);
        }
    }

    fn requeue(&mut self, key: &str) {
        self.requeue_at(key, Instant::now());
    }

    fn requeue_at(&mut self, key: &str, now: Instant) {
        let until = self.entries.get(key).and_then(Entry::backoff_until);
        match until {
            Some(t) if t > now => self.back_off(key),
            _ => self.activate(key),
        }
    }

    fn back_off(&mut self, key: &str) {
        let Some(e) = self.entries.get_mut(key) else {
            return;
        };
        e.place = Place::Backoff;
        let until = e.backoff_until().unwrap_or_else(Instant::now);
        self.backoff.push(Reverse((until, key.to_string())));
    }

    fn activate(&mut self, key: &str) {
        let Some(e) = self.entries.get_mut(key) else {
            return;
        };
        self.seq += 1;
        e.place = Place::Active(self.seq);
        self.active
            .push((priority(&e.pod), Reverse(self.seq), key.to_string()));
    }

    fn flush(&mut self, now: Instant) {
        while let Some(Reverse((t, _))) = self.backoff.peek() {
            if *t > now {
                break;
            }
            let Some(Reverse((_, key))) = self.backoff.pop() else {
                break;
            };
            if self
                .entries
                .get(&key)
                .is_some_and(|e| e.place == Place::Backoff)
            {
                self.activate(&key);
            }
        }
        let stale: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| {
                matches!(e.place, Place::Unschedulable(since, _) if now >= since + MAX_UNSCHEDULABLE)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            self.activate(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, prio: i32) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(
                json!({"metadata": {"name": name, "namespace": "d", "uid": name},
                "spec": {"priority": prio, "containers": []}}),
            )
            .unwrap(),
        )
    }

    #[test]
    fn higher_priority_first_then_arrival() {
        let mut q = SchedulingQueue::default();
        q.upsert(pod("low", 0));
        q.upsert(pod("high", 100));
        q.upsert(pod("low2", 0));
        let now = Instant::now();
        let order: Vec<String> = std::iter::from_fn(|| q.pop(now))
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(order, ["high", "low", "low2"]);
    }

    #[test]
    fn unschedulable_pods_wait_for_an_event_then_respect_their_backoff() {
        let mut q = SchedulingQueue::default();
        q.upsert(pod("p", 0));
        let t0 = Instant::now();
        assert!(q.pop(t0).is_some());
        q.unschedulable("d/p", t0, false);
        assert!(
            q.pop(t0 + Duration::from_secs(5)).is_none(),
            "waits for an event"
        );
        // Status updates of its own do not wake it.
        q.upsert(pod("p", 0));
        assert!(q.pop(t0 + Duration::from_secs(5)).is_none());
        // An event after its 1 s backoff makes it active at once.
        q.move_all(t0 + Duration::from_secs(5));
        let p = q.pop(t0 + Duration::from_secs(5));
        assert!(p.is_some());
        // Second failure, then an event at once: backoff of 2 s first.
        let t1 = t0 + Duration::from_secs(5);
        q.unschedulable("d/p", t1, false);
        q.move_all(t1);
        assert!(q.pop(t1 + Duration::from_millis(1500)).is_none());
        assert!(q.pop(t1 + Duration::from_secs(2)).is_some());
        // Long unschedulable pods are retried after 5 minutes regardless.
        let t2 = t1 + Duration::from_secs(2);
        q.unschedulable("d/p", t2, false);
        assert!(q.pop(t2 + Duration::from_secs(299)).is_none());
        assert!(q.pop(t2 + Duration::from_secs(300)).is_some());
    }

    #[test]
    fn an_event_during_an_attempt_sends_a_failure_back_off_not_to_wait() {
        let mut q = SchedulingQueue::default();
        q.upsert(pod("p", 0));
        let t0 = Instant::now();
        assert!(q.pop(t0).is_some());
        q.move_all(t0);
        q.unschedulable("d/p", t0, false);
        assert!(q.pop(t0 + Duration::from_secs(1)).is_some());
        q.error("d/p");
        q.remove("d/p");
        assert!(q.pop(t0 + Duration::from_secs(60)).is_none());
        assert_eq!(q.len(), 0);
    }
}
