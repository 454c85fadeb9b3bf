//! Preemption (kube's DefaultPreemption PostFilter): when no node fits a pod, find nodes
//! where evicting lower-priority pods would make it fit, keep back ("reprieve") every
//! victim that is not needed, highest priority first and those a PodDisruptionBudget
//! protects before the rest, and choose the node with the fewest budget violations, then
//! the lowest highest-victim priority, the smallest priority sum, the fewest victims and
//! the most recently started victims. The caller nominates the node and evicts.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use super::affinity::AffinityState;
use super::cache::{Cache, NodeInfo, PodInfo};
use super::filter::{filter, PodState, Reject};
use super::spread::SpreadState;
use crate::resources::placement::label_selector_matches;

pub const NOT_HELPFUL: &str = "Preemption is not helpful for scheduling";
pub const NO_VICTIMS: &str = "No preemption victims found for incoming pod";

/// Where the pod will go once the victims are gone.
#[derive(Debug)]
pub struct Candidate {
    pub node: String,
    pub victims: Vec<Arc<PodInfo>>,
    pdb_violations: usize,
}

/// Whether the pod may preempt at all, or why not (kube's wording).
pub fn eligible(pod: &PodInfo, cache: &Cache) -> Result<(), String> {
    let spec = pod.pod.spec.as_ref();
    if spec.and_then(|s| s.preemption_policy.as_deref()) == Some("Never") {
        return Err("not eligible due to preemptionPolicy=Never.".into());
    }
    let nominated = pod
        .pod
        .status
        .as_ref()
        .and_then(|s| s.nominated_node_name.as_deref())
        .unwrap_or("");
    if let Some(node) = cache.nodes.get(nominated) {
        // Victims of an earlier preemption are still leaving: wait for them.
        let leaving = node
            .pods
            .iter()
            .any(|p| p.pod.metadata.deletion_timestamp.is_some() && p.priority < pod.priority);
        if leaving {
            return Err("not eligible due to a terminating pod on the nominated node.".into());
        }
    }
    Ok(())
}

/// Whether the pod fits on the node with the pods in `gone` taken away.
fn fits_without(state: &PodState, node: &NodeInfo, gone: &HashSet<String>, cache: &Cache) -> bool {
    let reduced = node.without(gone);
    let what_if = PodState {
        info: state.info.clone(),
        affinity: AffinityState::new(&state.info, cache, Some(gone)),
        spread: SpreadState::new(&state.info, cache, Some(gone)),
        volumes: Default::default(),
    };
    filter(&what_if, &reduced, cache).is_ok() && state.volumes.filter(node, cache).is_ok()
}

/// Budgets that a victim's eviction would break, counted down as victims are chosen.
struct Budgets {
    allowed: Vec<(Arc<k8s_openapi::api::policy::v1::PodDisruptionBudget>, i32)>,
}

impl Budgets {
    fn new(cache: &Cache) -> Budgets {
        Budgets {
            allowed: cache
                .budgets
                .iter()
                .map(|b| {
                    let n = b
                        .status
                        .as_ref()
                        .map(|s| s.disruptions_allowed)
                        .unwrap_or(0);
                    (b.clone(), n)
                })
                .collect(),
        }
    }

    /// Whether evicting the pod breaks a budget (and counts it against the budgets).
    fn violates(&mut self, pod: &Pod) -> bool {
        let ns = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let mut violated = false;
        for (b, allowed) in self.allowed.iter_mut() {
            if b.namespace().as_deref() != Some(ns.as_str()) {
                continue;
            }
            let Some(sel) = b.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
                continue;
            };
            if !label_selector_matches(sel, pod.labels()) {
                continue;
            }
            let disrupted = b
                .status
                .as_ref()
                .and_then(|s| s.disrupted_pods.as_ref())
                .is_some_and(|d| d.contains_key(&name));
            if disrupted {
                continue;
            }
            *allowed -= 1;
            if *allowed < 0 {
                violated = true;
            }
        }
        violated
    }
}

fn start_time(p: &PodInfo) -> Option<String> {
    p.pod
        .status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .map(|t| t.0.to_string())
}

/// The victims on one node, or None when evicting every lower-priority pod still would
/// not make room.
fn victims_on(state: &PodState, node: &NodeInfo, cache: &Cache) -> Option<Candidate> {
    let mut potential: Vec<Arc<PodInfo>> = node
        .pods
        .iter()
        .filter(|p| p.priority < state.info.priority)
        .cloned()
        .collect();
    if potential.is_empty() {
        return None;
    }
    let mut gone: HashSet<String> = potential.iter().map(|p| p.uid.clone()).collect();
    if !fits_without(state, node, &gone, cache) {
        return None;
    }
    // Most important first: higher priority, then earlier start.
    potential.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then_with(|| start_time(a).cmp(&start_time(b)))
    });
    let mut budgets = Budgets::new(cache);
    let (violating, safe): (Vec<_>, Vec<_>) = potential
        .into_iter()
        .partition(|p| budgets.violates(&p.pod));
    let mut victims = Vec::new();
    let mut pdb_violations = 0;
    for (p, breaks) in violating
        .into_iter()
        .map(|p| (p, true))
        .chain(safe.into_iter().map(|p| (p, false)))
    {
        gone.remove(&p.uid);
        if fits_without(state, node, &gone, cache) {
            continue;
        }
        gone.insert(p.uid.clone());
        if breaks {
            pdb_violations += 1;
        }
        victims.push(p);
    }
    Some(Candidate {
        node: node.name(),
        victims,
        pdb_violations,
    })
}

/// Chooses where to preempt, or kube's account of why nowhere (counted over all nodes).
pub fn find(
    state: &PodState,
    rejects: &BTreeMap<String, Reject>,
    cache: &Cache,
) -> Result<Candidate, String> {
    let mut reasons: HashMap<&str, usize> = HashMap::new();
    let mut candidates = Vec::new();
    for node in cache.schedulable() {
        let name = node.name();
        match rejects.get(&name) {
            Some(r) if r.resolvable => match victims_on(state, node, cache) {
                Some(c) => candidates.push(c),
                None => *reasons.entry(NO_VICTIMS).or_default() += 1,
            },
            _ => *reasons.entry(NOT_HELPFUL).or_default() += 1,
        }
    }
    let key = |c: &Candidate| {
        let highest = c
            .victims
            .iter()
            .map(|v| v.priority)
            .max()
            .unwrap_or(i32::MIN);
        let sum: i64 = c
            .victims
            .iter()
            .map(|v| i64::from(v.priority) + i64::from(i32::MAX) + 1)
            .sum();
        // The latest start among the most important victims: later is better.
        let latest = c
            .victims
            .iter()
            .filter(|v| v.priority == highest)
            .filter_map(|v| start_time(v))
            .min();
        (
            c.pdb_violations,
            highest,
            sum,
            c.victims.len(),
            std::cmp::Reverse(latest),
        )
    };
    candidates
        .into_iter()
        .min_by(|a, b| key(a).cmp(&key(b)))
        .ok_or_else(|| {
            let mut parts: Vec<String> = reasons
                .iter()
                .map(|(why, n)| format!("{n} {why}"))
                .collect();
            parts.sort();
            format!(
                "preemption: 0/{} nodes are available: {}.",
                cache.node_count(),
                parts.join(", ")
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cluster(nodes: &[&str]) -> Cache {
        let mut c = Cache::default();
        for n in nodes {
            c.set_node(Arc::new(
                serde_json::from_value(
                    json!({"metadata": {"name": n, "labels": {"kubernetes.io/hostname": n}},
                    "status": {"allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"},
                        "conditions": [{"type": "Ready", "status": "True"}]}}),
                )
                .unwrap(),
            ));
        }
        c
    }

    fn pod(name: &str, cpu: &str, prio: i32, start: &str) -> PodInfo {
        PodInfo::new(Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": "d", "uid": name, "labels": {"app": name}},
                "spec": {"priority": prio, "containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]},
                "status": {"startTime": start}}))
            .unwrap(),
        ))
    }

    fn rejects(c: &Cache, s: &PodState) -> BTreeMap<String, Reject> {
        c.schedulable()
            .filter_map(|n| filter(s, n, c).err().map(|r| (n.name(), r)))
            .collect()
    }

    fn state(c: &Cache, p: PodInfo) -> PodState {
        PodState::new(Arc::new(p), c).unwrap()
    }

    #[test]
    fn the_fewest_lowest_priority_victims_and_no_more() {
        let mut c = cluster(&["a", "b"]);
        c.assume(&pod("a-low", "1", 10, "2026-01-01T00:00:00Z"), "a");
        c.assume(&pod("a-mid", "1", 20, "2026-01-01T00:00:00Z"), "a");
        c.assume(&pod("b-low1", "1", 10, "2026-01-01T00:00:00Z"), "b");
        c.assume(&pod("b-low2", "1", 10, "2026-01-01T00:00:00Z"), "b");
        let s = state(&c, pod("vip", "1", 100, "2026-01-01T00:00:00Z"));
        let chosen = find(&s, &rejects(&c, &s), &c).unwrap();
        // On a, evicting a-low (priority 10) is enough; on b one of two priority-10 pods.
        // Both have highest victim priority 10 and one victim: the tie goes to node a
        // (the first), and exactly one pod is evicted.
        assert_eq!(chosen.victims.len(), 1);
        assert_eq!(chosen.victims[0].priority, 10);
        // A pod of priority 15 can only take a-low's or b's place, never a-mid's.
        let s = state(&c, pod("mid", "2", 15, "2026-01-01T00:00:00Z"));
        let chosen = find(&s, &rejects(&c, &s), &c).unwrap();
        assert_eq!(chosen.node, "b");
        assert_eq!(chosen.victims.len(), 2);
    }

    #[test]
    fn budgets_protect_where_they_can_and_equal_priority_never_preempts() {
        let mut c = cluster(&["a", "b"]);
        c.assume(&pod("guarded", "2", 10, "2026-01-01T00:00:00Z"), "a");
        c.assume(&pod("free", "2", 10, "2026-01-01T00:00:00Z"), "b");
        c.budgets.push(Arc::new(
            serde_json::from_value(json!({"metadata": {"name": "pdb", "namespace": "d"},
                "spec": {"selector": {"matchLabels": {"app": "guarded"}}},
                "status": {"disruptionsAllowed": 0, "currentHealthy": 1, "desiredHealthy": 1, "expectedPods": 1}}))
            .unwrap(),
        ));
        let s = state(&c, pod("vip", "1", 100, "2026-01-01T00:00:00Z"));
        let chosen = find(&s, &rejects(&c, &s), &c).unwrap();
        assert_eq!(chosen.node, "b");
        assert_eq!(chosen.victims[0].pod.name_any(), "free");
        let s = state(&c, pod("peer", "1", 10, "2026-01-01T00:00:00Z"));
        assert_eq!(
            find(&s, &rejects(&c, &s), &c).unwrap_err(),
            "preemption: 0/2 nodes are available: 2 No preemption victims found for incoming pod."
        );
        let mut never = pod("never", "1", 100, "2026-01-01T00:00:00Z");
        let mut p = (*never.pod).clone();
        p.spec.as_mut().unwrap().preemption_policy = Some("Never".into());
        never = PodInfo::new(Arc::new(p));
        assert_eq!(
            eligible(&never, &c).unwrap_err(),
            "not eligible due to preemptionPolicy=Never."
        );
    }
}
