//! InterPodAffinity: required pod affinity and anti-affinity (the incoming pod's, and the
//! anti-affinity of pods already placed against it) as a filter, and the preferred terms
//! of both sides as a score, counted per topology domain (`topologyKey` = node label
//! value) as kube-scheduler counts them.
use std::collections::{HashMap, HashSet};

use k8s_openapi::api::core::v1::{PodAffinityTerm, WeightedPodAffinityTerm};

use super::cache::{Cache, NodeInfo, PodInfo};
use super::filter::Reject;
use crate::resources::placement::label_selector_matches;

/// A (topologyKey, value) domain.
type Domain = (String, String);

/// The incoming pod's terms and the counts its filter and score need.
#[derive(Default)]
pub struct AffinityState {
    required: Vec<PodAffinityTerm>,
    /// Per domain, existing pods matching all of the pod's required affinity terms.
    affinity: HashMap<Domain, i64>,
    /// Per domain, existing pods matching one of the pod's required anti-affinity terms.
    anti: HashMap<Domain, i64>,
    /// Domains where a placed pod's required anti-affinity refuses this pod.
    existing_anti: HashSet<Domain>,
    /// Whether the pod matches its own required affinity terms (the first of a group).
    self_match: bool,
    /// Preferred-term score per domain (both directions).
    preferred: HashMap<Domain, i64>,
}

fn terms(pod: &PodInfo) -> (&[PodAffinityTerm], &[PodAffinityTerm]) {
    let a = pod.pod.spec.as_ref().and_then(|s| s.affinity.as_ref());
    let aff = a
        .and_then(|a| a.pod_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_deref()
        })
        .unwrap_or_default();
    let anti = a
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_deref()
        })
        .unwrap_or_default();
    (aff, anti)
}

fn preferred(pod: &PodInfo) -> (&[WeightedPodAffinityTerm], &[WeightedPodAffinityTerm]) {
    let a = pod.pod.spec.as_ref().and_then(|s| s.affinity.as_ref());
    let aff = a
        .and_then(|a| a.pod_affinity.as_ref())
        .and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_deref()
        })
        .unwrap_or_default();
    let anti = a
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_deref()
        })
        .unwrap_or_default();
    (aff, anti)
}

/// Whether a pod has any inter-pod (anti-)affinity at all.
pub fn has_affinity(pod: &PodInfo) -> bool {
    pod.pod
        .spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .is_some_and(|a| a.pod_affinity.is_some() || a.pod_anti_affinity.is_some())
}

/// Whether a term (of a pod in namespace `owner_ns`) selects `target`: the target is in
/// one of the term's namespaces (the owner's own when none are named) and its labels match
/// the selector (a missing selector selects nothing).
fn term_selects(term: &PodAffinityTerm, owner_ns: &str, target: &PodInfo, cache: &Cache) -> bool {
    let target_ns = target.namespace();
    let names = term.namespaces.as_deref().unwrap_or_default();
    let in_ns = match &term.namespace_selector {
        None => {
            if names.is_empty() {
                target_ns == owner_ns
            } else {
                names.iter().any(|n| n == target_ns)
            }
        }
        Some(sel) => {
            names.iter().any(|n| n == target_ns)
                || cache
                    .namespaces
                    .get(target_ns)
                    .is_some_and(|labels| label_selector_matches(sel, labels))
        }
    };
    in_ns
        && term
            .label_selector
            .as_ref()
            .is_some_and(|sel| label_selector_matches(sel, target.labels()))
}

fn domain_of(node: &NodeInfo, key: &str) -> Option<Domain> {
    node.labels().get(key).map(|v| (key.to_string(), v.clone()))
}

impl AffinityState {
    /// Counts over every placed pod except those in `without` (preemption's what-if).
    pub fn new(pod: &PodInfo, cache: &Cache, without: Option<&HashSet<String>>) -> Self {
        let (aff, anti) = terms(pod);
        let (pref_aff, pref_anti) = preferred(pod);
        let mine =
            !aff.is_empty() || !anti.is_empty() || !pref_aff.is_empty() || !pref_anti.is_empty();
        let ns = pod.namespace();
        let mut s = AffinityState {
            required: aff.to_vec(),
            self_match: !aff.is_empty() && aff.iter().all(|t| term_selects(t, ns, pod, cache)),
            ..Default::default()
        };
        for node in cache.schedulable() {
            for e in &node.pods {
                if e.uid == pod.uid || without.is_some_and(|w| w.contains(&e.uid)) {
                    continue;
                }
                let theirs = has_affinity(e);
                if !mine && !theirs {
                    continue;
                }
                if !aff.is_empty() && aff.iter().all(|t| term_selects(t, ns, e, cache)) {
                    for t in aff {
                        if let Some(d) = domain_of(node, &t.topology_key) {
                            *s.affinity.entry(d).or_default() += 1;
                        }
                    }
                }
                for t in anti.iter().filter(|t| term_selects(t, ns, e, cache)) {
                    if let Some(d) = domain_of(node, &t.topology_key) {
                        *s.anti.entry(d).or_default() += 1;
                    }
                }
                for t in pref_aff
                    .iter()
                    .filter(|t| term_selects(&t.pod_affinity_term, ns, e, cache))
                {
                    if let Some(d) = domain_of(node, &t.pod_affinity_term.topology_key) {
                        *s.preferred.entry(d).or_default() += i64::from(t.weight);
                    }
                }
                for t in pref_anti
                    .iter()
                    .filter(|t| term_selects(&t.pod_affinity_term, ns, e, cache))
                {
                    if let Some(d) = domain_of(node, &t.pod_affinity_term.topology_key) {
                        *s.preferred.entry(d).or_default() -= i64::from(t.weight);
                    }
                }
                if !theirs {
                    continue;
                }
                // The placed pod's side: its required anti-affinity refuses us; its
                // affinity (required counts as weight 1, kube's hardPodAffinityWeight) and
                // preferred terms pull or push.
                let e_ns = e.namespace();
                let (e_aff, e_anti) = terms(e);
                for t in e_anti.iter().filter(|t| term_selects(t, e_ns, pod, cache)) {
                    if let Some(d) = domain_of(node, &t.topology_key) {
                        s.existing_anti.insert(d);
                    }
                }
                for t in e_aff.iter().filter(|t| term_selects(t, e_ns, pod, cache)) {
                    if let Some(d) = domain_of(node, &t.topology_key) {
                        *s.preferred.entry(d).or_default() += 1;
                    }
                }
                let (e_pref_aff, e_pref_anti) = preferred(e);
                for (t, sign) in e_pref_aff
                    .iter()
                    .map(|t| (t, 1))
                    .chain(e_pref_anti.iter().map(|t| (t, -1)))
                {
                    if term_selects(&t.pod_affinity_term, e_ns, pod, cache) {
                        if let Some(d) = domain_of(node, &t.pod_affinity_term.topology_key) {
                            *s.preferred.entry(d).or_default() += sign * i64::from(t.weight);
                        }
                    }
                }
            }
        }
        s
    }

    /// kube's order: the pod's affinity, its anti-affinity, then placed pods' anti-affinity.
    pub fn filter(&self, node: &NodeInfo) -> Result<(), Reject> {
        if !self.required.is_empty() {
            let mut all_there = true;
            for t in &self.required {
                match domain_of(node, &t.topology_key) {
                    None => {
                        return Err(Reject::fixed("node(s) didn't match pod affinity rules"));
                    }
                    Some(d) => {
                        if self.affinity.get(&d).copied().unwrap_or(0) <= 0 {
                            all_there = false;
                        }
                    }
                }
            }
            let first_of_group = self.affinity.is_empty() && self.self_match;
            if !all_there && !first_of_group {
                return Err(Reject::fixed("node(s) didn't match pod affinity rules"));
            }
        }
        if self
            .anti
            .iter()
            .any(|(d, n)| *n > 0 && node.labels().get(&d.0) == Some(&d.1))
        {
            return Err(Reject::resolvable(
                "node(s) didn't match pod anti-affinity rules",
            ));
        }
        if !self.existing_anti.is_empty()
            && node
                .labels()
                .iter()
                .any(|(k, v)| self.existing_anti.contains(&(k.clone(), v.clone())))
        {
            return Err(Reject::resolvable(
                "node(s) didn't satisfy existing pods anti-affinity rules",
            ));
        }
        Ok(())
    }

    /// The raw preferred score of a node: the sum over its domains.
    pub fn score(&self, node: &NodeInfo) -> i64 {
        if self.preferred.is_empty() {
            return 0;
        }
        node.labels()
            .iter()
            .filter_map(|(k, v)| self.preferred.get(&(k.clone(), v.clone())))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    fn cluster() -> Cache {
        let mut c = Cache::default();
        for (n, zone) in [("a", "z1"), ("b", "z1"), ("c", "z2")] {
            c.set_node(Arc::new(
                serde_json::from_value(json!({"metadata": {"name": n,
                    "labels": {"kubernetes.io/hostname": n, "zone": zone}}}))
                .unwrap(),
            ));
        }
        c
    }

    fn pod(name: &str, labels: serde_json::Value, affinity: serde_json::Value) -> PodInfo {
        PodInfo::new(Arc::new(
            serde_json::from_value(
                json!({"metadata": {"name": name, "namespace": "d", "uid": name, "labels": labels},
                "spec": {"containers": [], "affinity": affinity}}),
            )
            .unwrap(),
        ))
    }

    fn place(c: &mut Cache, p: PodInfo, node: &str) {
        c.assume(&p, node);
    }

    fn term(app: &str, key: &str) -> serde_json::Value {
        json!({"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": key})
    }

    fn fits(c: &Cache, p: &PodInfo) -> Vec<String> {
        let s = AffinityState::new(p, c, None);
        c.schedulable()
            .filter(|n| s.filter(n).is_ok())
            .map(|n| n.name())
            .collect()
    }

    #[test]
    fn required_affinity_follows_the_matching_pods_domain_and_lets_the_first_one_in() {
        let mut c = cluster();
        let web = |n: &str| {
            pod(
                n,
                json!({"app": "web"}),
                json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term("web", "zone")]}}),
            )
        };
        // The first of a self-affine group goes anywhere.
        assert_eq!(fits(&c, &web("w1")), ["a", "b", "c"]);
        place(&mut c, web("w1"), "c");
        assert_eq!(fits(&c, &web("w2")), ["c"]);
        // A pod that does not match its own term waits for a match.
        let cache_pod = pod(
            "x",
            json!({"app": "x"}),
            json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term("db", "zone")]}}),
        );
        assert!(fits(&c, &cache_pod).is_empty());
    }

    #[test]
    fn anti_affinity_both_ways_and_namespaces() {
        let mut c = cluster();
        let spread = |n: &str| {
            pod(
                n,
                json!({"app": "db"}),
                json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term("db", "kubernetes.io/hostname")]}}),
            )
        };
        place(&mut c, spread("d1"), "a");
        assert_eq!(fits(&c, &spread("d2")), ["b", "c"]);
        // A plain pod matching the placed pod's anti-affinity is kept off its node too.
        let plain = pod("p", json!({"app": "db"}), json!(null));
        let s = AffinityState::new(&plain, &c, None);
        assert_eq!(
            s.filter(&c.nodes["a"]).unwrap_err().reasons,
            ["node(s) didn't satisfy existing pods anti-affinity rules"]
        );
        // Terms only see their own namespace unless told otherwise.
        let other_ns = PodInfo::new(Arc::new(
            serde_json::from_value(json!({"metadata": {"name": "o", "namespace": "other", "uid": "o", "labels": {"app": "db"}},
                "spec": {"containers": []}}))
            .unwrap(),
        ));
        assert_eq!(
            AffinityState::new(&other_ns, &c, None).filter(&c.nodes["a"]),
            Ok(())
        );
        // Preemption's what-if: without d1, node a is free again.
        let gone = HashSet::from(["d1".to_string()]);
        let s = AffinityState::new(&spread("d2"), &c, Some(&gone));
        assert_eq!(s.filter(&c.nodes["a"]), Ok(()));
    }

    #[test]
    fn preferred_terms_score_their_domains() {
        let mut c = cluster();
        place(
            &mut c,
            pod("cache", json!({"app": "cache"}), json!(null)),
            "c",
        );
        let near = pod(
            "n",
            json!({}),
            json!({"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 10, "podAffinityTerm": term("cache", "zone")}]}}),
        );
        let s = AffinityState::new(&near, &c, None);
        assert_eq!(s.score(&c.nodes["c"]), 10);
        assert_eq!(s.score(&c.nodes["a"]), 0);
    }
}
