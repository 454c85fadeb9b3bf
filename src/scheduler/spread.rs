//! PodTopologySpread: `DoNotSchedule` constraints as a filter (a node's domain may not
//! exceed the least populated domain by more than maxSkew, minDomains counted),
//! `ScheduleAnyway` ones as a score favouring emptier domains; `matchLabelKeys`,
//! `nodeAffinityPolicy` (Honor) and `nodeTaintsPolicy` (Ignore) as kube defaults them.
use std::collections::{HashMap, HashSet};

use k8s_openapi::api::core::v1::TopologySpreadConstraint;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

use super::cache::{Cache, NodeInfo, PodInfo};
use super::filter::Reject;
use crate::resources::placement::{label_selector_matches, node_selector_matches, tolerated};

struct Constraint {
    max_skew: i64,
    key: String,
    selector: LabelSelector,
    min_domains: usize,
    honor_affinity: bool,
    honor_taints: bool,
    /// Matching pods per domain value (every counted domain present, maybe with 0).
    counts: HashMap<String, i64>,
    self_match: i64,
}

impl Constraint {
    fn new(c: &TopologySpreadConstraint, pod: &PodInfo) -> Constraint {
        let mut selector = c.label_selector.clone().unwrap_or_default();
        // matchLabelKeys: the incoming pod's values of those keys join the selector.
        for key in c.match_label_keys.iter().flatten() {
            if let Some(v) = pod.labels().get(key) {
                selector
                    .match_expressions
                    .get_or_insert_with(Vec::new)
                    .push(LabelSelectorRequirement {
                        key: key.clone(),
                        operator: "In".into(),
                        values: Some(vec![v.clone()]),
                    });
            }
        }
        let self_match = i64::from(
            c.label_selector.is_some() && label_selector_matches(&selector, pod.labels()),
        );
        Constraint {
            max_skew: i64::from(c.max_skew.max(1)),
            key: c.topology_key.clone(),
            selector,
            min_domains: c.min_domains.unwrap_or(1).max(1) as usize,
            honor_affinity: c.node_affinity_policy.as_deref() != Some("Ignore"),
            honor_taints: c.node_taints_policy.as_deref() == Some("Honor"),
            counts: HashMap::new(),
            self_match,
        }
    }

    /// Whether a node's pods count towards this constraint's domains.
    fn counts_node(&self, pod: &PodInfo, node: &NodeInfo) -> bool {
        let Some(n) = node.node.as_ref() else {
            return false;
        };
        if self.honor_affinity && !node_selector_matches(&pod.pod, n) {
            return false;
        }
        if self.honor_taints {
            let tolerations = pod.tolerations();
            let untolerated = n
                .spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .into_iter()
                .flatten()
                .filter(|t| t.effect != "PreferNoSchedule")
                .any(|t| !tolerated(tolerations, t));
            if untolerated {
                return false;
            }
        }
        true
    }

    fn count(&mut self, pod: &PodInfo, cache: &Cache, without: Option<&HashSet<String>>) {
        for node in cache.schedulable() {
            let Some(value) = node.labels().get(&self.key) else {
                continue;
            };
            if !self.counts_node(pod, node) {
                continue;
            }
            let matching = node
                .pods
                .iter()
                .filter(|e| {
                    e.uid != pod.uid
                        && !without.is_some_and(|w| w.contains(&e.uid))
                        && e.pod.metadata.deletion_timestamp.is_none()
                        && e.namespace() == pod.namespace()
                        && label_selector_matches(&self.selector, e.labels())
                })
                .count() as i64;
            *self.counts.entry(value.clone()).or_default() += matching;
        }
    }

    fn min(&self) -> i64 {
        if self.counts.len() < self.min_domains {
            return 0;
        }
        self.counts.values().copied().min().unwrap_or(0)
    }
}

#[derive(Default)]
pub struct SpreadState {
    hard: Vec<Constraint>,
    soft: Vec<Constraint>,
}

impl SpreadState {
    pub fn new(pod: &PodInfo, cache: &Cache, without: Option<&HashSet<String>>) -> SpreadState {
        let mut s = SpreadState::default();
        for c in pod
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.topology_spread_constraints.as_ref())
            .into_iter()
            .flatten()
        {
            let mut constraint = Constraint::new(c, pod);
            constraint.count(pod, cache, without);
            if c.when_unsatisfiable == "ScheduleAnyway" {
                s.soft.push(constraint);
            } else {
                s.hard.push(constraint);
            }
        }
        s
    }

    pub fn filter(&self, node: &NodeInfo) -> Result<(), Reject> {
        for c in &self.hard {
            let Some(value) = node.labels().get(&c.key) else {
                return Err(Reject::fixed(
                    "node(s) didn't match pod topology spread constraints (missing required label)",
                ));
            };
            let here = c.counts.get(value).copied().unwrap_or(0);
            if here + c.self_match - c.min() > c.max_skew {
                return Err(Reject::resolvable(
                    "node(s) didn't match pod topology spread constraints",
                ));
            }
        }
        Ok(())
    }

    pub fn has_soft(&self) -> bool {
        !self.soft.is_empty()
    }

    /// The raw score of a node (lower is better), or None when it lacks a topology key.
    pub fn raw_score(&self, node: &NodeInfo) -> Option<f64> {
        let mut total = 0.0;
        for c in &self.soft {
            let value = node.labels().get(&c.key)?;
            let weight = ((c.counts.len() + 2) as f64).ln();
            let here = c.counts.get(value).copied().unwrap_or(0);
            total += here as f64 * weight + (c.max_skew - 1) as f64;
        }
        Some(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    fn cluster() -> Cache {
        let mut c = Cache::default();
        for (n, zone) in [("a", "z1"), ("b", "z1"), ("c", "z2"), ("nolabel", "")] {
            let labels = if zone.is_empty() {
                json!({"kubernetes.io/hostname": n})
            } else {
                json!({"kubernetes.io/hostname": n, "zone": zone})
            };
            c.set_node(Arc::new(
                serde_json::from_value(json!({"metadata": {"name": n, "labels": labels}})).unwrap(),
            ));
        }
        c
    }

    fn pod(name: &str, constraints: serde_json::Value) -> PodInfo {
        PodInfo::new(Arc::new(
            serde_json::from_value(
                json!({"metadata": {"name": name, "namespace": "d", "uid": name,
                "labels": {"app": "web", "rev": "1"}},
                "spec": {"containers": [], "topologySpreadConstraints": constraints}}),
            )
            .unwrap(),
        ))
    }

    fn hard(key: &str, skew: i32) -> serde_json::Value {
        json!([{"maxSkew": skew, "topologyKey": key, "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": {"matchLabels": {"app": "web"}}}])
    }

    fn fits(c: &Cache, p: &PodInfo) -> Vec<String> {
        let s = SpreadState::new(p, c, None);
        c.schedulable()
            .filter(|n| s.filter(n).is_ok())
            .map(|n| n.name())
            .collect()
    }

    #[test]
    fn zones_fill_evenly_within_max_skew() {
        let mut c = cluster();
        assert_eq!(fits(&c, &pod("p0", hard("zone", 1))), ["a", "b", "c"]);
        c.assume(&pod("p1", hard("zone", 1)), "a");
        // z1 has one, z2 none: only z2 keeps the skew within 1.
        assert_eq!(fits(&c, &pod("p2", hard("zone", 1))), ["c"]);
        c.assume(&pod("p2", hard("zone", 1)), "c");
        assert_eq!(fits(&c, &pod("p3", hard("zone", 1))), ["a", "b", "c"]);
        let s = SpreadState::new(&pod("p3", hard("zone", 1)), &c, None);
        assert_eq!(
            s.filter(&c.nodes["nolabel"]).unwrap_err().reasons,
            ["node(s) didn't match pod topology spread constraints (missing required label)"]
        );
    }

    #[test]
    fn min_domains_holds_pods_back_until_enough_domains_exist() {
        let mut c = cluster();
        let constraint = json!([{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule",
            "minDomains": 3, "labelSelector": {"matchLabels": {"app": "web"}}}]);
        c.assume(&pod("p1", constraint.clone()), "a");
        c.assume(&pod("p2", constraint.clone()), "c");
        // Two zones < minDomains 3: the global minimum counts as 0, so skew 1+1-0 > 1.
        assert!(fits(&c, &pod("p3", constraint)).is_empty());
    }

    #[test]
    fn match_label_keys_split_the_count_by_revision_and_soft_constraints_score() {
        let mut c = cluster();
        let by_rev = json!([{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": {"matchLabels": {"app": "web"}}, "matchLabelKeys": ["rev"]}]);
        let old = PodInfo::new(Arc::new(
            serde_json::from_value(
                json!({"metadata": {"name": "old", "namespace": "d", "uid": "old",
                "labels": {"app": "web", "rev": "0"}}, "spec": {"containers": []}}),
            )
            .unwrap(),
        ));
        c.assume(&old, "a");
        // The rev=0 pod on a does not count against a rev=1 pod.
        assert_eq!(fits(&c, &pod("p", by_rev)), ["a", "b", "c", "nolabel"]);
        let soft = json!([{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": {"app": "web"}}}]);
        let s = SpreadState::new(&pod("q", soft), &c, None);
        assert!(s.raw_score(&c.nodes["a"]).unwrap() > s.raw_score(&c.nodes["b"]).unwrap());
    }
}
