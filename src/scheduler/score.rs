//! Scoring the feasible nodes with kube-scheduler's default plugins and weights:
//! NodeResourcesFit/LeastAllocated (1), NodeResourcesBalancedAllocation (1), ImageLocality
//! (1), TaintToleration PreferNoSchedule (3), NodeAffinity preferred terms (2),
//! InterPodAffinity preferred terms (2) and PodTopologySpread ScheduleAnyway (2), each
//! normalised to 0..100; ties are broken at random, as kube's reservoir sampling does.
use rand::Rng;

use super::cache::{Cache, NodeInfo, PodInfo};
use super::filter::PodState;
use crate::resources::placement::{term_admits, tolerated};

const MAX: f64 = 100.0;
const MB: f64 = 1024.0 * 1024.0;

/// The node to bind to among the feasible ones.
pub fn pick(state: &PodState, feasible: &[&NodeInfo], cache: &Cache) -> Option<String> {
    if feasible.len() <= 1 {
        return feasible.first().map(|n| n.name());
    }
    let scores = totals(state, feasible, cache);
    let best = scores.iter().copied().fold(f64::MIN, f64::max);
    let top: Vec<usize> = (0..feasible.len())
        .filter(|i| (scores[*i] - best).abs() < 1e-9)
        .collect();
    let i = top[rand::thread_rng().gen_range(0..top.len())];
    Some(feasible[i].name())
}

/// Every node's weighted score.
pub fn totals(state: &PodState, feasible: &[&NodeInfo], cache: &Cache) -> Vec<f64> {
    let pod = &state.info;
    let mut total: Vec<f64> = feasible
        .iter()
        .map(|n| least_allocated(pod, n) + balanced(pod, n) + image_locality(pod, n, cache))
        .collect();
    let taints: Vec<f64> = feasible
        .iter()
        .map(|n| intolerable_taints(pod, n))
        .collect();
    add_weighted(&mut total, &reverse(&taints), 3.0);
    let affinity: Vec<f64> = feasible
        .iter()
        .map(|n| preferred_node_affinity(pod, n))
        .collect();
    add_weighted(&mut total, &by_max(&affinity), 2.0);
    let pods: Vec<f64> = feasible
        .iter()
        .map(|n| state.affinity.score(n) as f64)
        .collect();
    add_weighted(&mut total, &min_max(&pods), 2.0);
    if state.spread.has_soft() {
        let raw: Vec<Option<f64>> = feasible.iter().map(|n| state.spread.raw_score(n)).collect();
        add_weighted(&mut total, &spread_normalised(&raw), 2.0);
    }
    total
}

fn add_weighted(total: &mut [f64], scores: &[f64], weight: f64) {
    for (t, s) in total.iter_mut().zip(scores) {
        *t += s * weight;
    }
}

/// LeastAllocated over cpu and memory with kube's non-zero request defaults.
fn least_allocated(pod: &PodInfo, node: &NodeInfo) -> f64 {
    let part = |used: i128, want: i128, cap: i128| {
        if cap <= 0 || used + want > cap {
            return 0.0;
        }
        (cap - used - want) as f64 * MAX / cap as f64
    };
    let cpu = part(node.nonzero.0, pod.nonzero.0, node.allocatable("cpu"));
    let mem = part(node.nonzero.1, pod.nonzero.1, node.allocatable("memory"));
    (cpu + mem) / 2.0
}

/// BalancedAllocation: 100 × (1 − the standard deviation of the cpu and memory fractions).
fn balanced(pod: &PodInfo, node: &NodeInfo) -> f64 {
    let fraction = |res: &str| {
        let cap = node.allocatable(res);
        if cap <= 0 {
            return 1.0;
        }
        let used = node.requested.get(res).copied().unwrap_or(0)
            + pod.requests.get(res).copied().unwrap_or(0);
        (used as f64 / cap as f64).min(1.0)
    };
    let (c, m) = (fraction("cpu"), fraction("memory"));
    (1.0 - (c - m).abs() / 2.0) * MAX
}

/// The names an image may be listed under on a node.
fn image_names(image: &str) -> Vec<String> {
    let last = image.rsplit('/').next().unwrap_or(image);
    let tagged = if image.contains('@') || last.contains(':') {
        image.to_string()
    } else {
        format!("{image}:latest")
    };
    let first = tagged.split('/').next().unwrap_or("");
    let has_registry = tagged.contains('/')
        && (first.contains('.') || first.contains(':') || first == "localhost");
    let mut names = vec![tagged.clone()];
    if !has_registry {
        if tagged.contains('/') {
            names.push(format!("docker.io/{tagged}"));
        } else {
            names.push(format!("docker.io/library/{tagged}"));
        }
    }
    names
}

/// ImageLocality: the sizes of the pod's images already on the node, scaled by how widely
/// they are spread, between 23 MB and 1000 MB per container.
fn image_locality(pod: &PodInfo, node: &NodeInfo, cache: &Cache) -> f64 {
    let Some(spec) = pod.pod.spec.as_ref() else {
        return 0.0;
    };
    let images: Vec<Vec<String>> = spec
        .containers
        .iter()
        .filter_map(|c| c.image.as_deref())
        .map(image_names)
        .collect();
    if images.is_empty() {
        return 0.0;
    }
    let size_on = |n: &NodeInfo, names: &[String]| -> Option<f64> {
        n.node
            .as_ref()?
            .status
            .as_ref()?
            .images
            .as_ref()?
            .iter()
            .find(|i| i.names.iter().flatten().any(|x| names.contains(x)))
            .map(|i| i.size_bytes.unwrap_or(0) as f64)
    };
    let total_nodes = cache.node_count().max(1) as f64;
    let mut sum = 0.0;
    for names in &images {
        if let Some(size) = size_on(node, names) {
            let with = cache
                .schedulable()
                .filter(|n| size_on(n, names).is_some())
                .count() as f64;
            sum += size * with / total_nodes;
        }
    }
    let (lo, hi) = (
        23.0 * MB * images.len() as f64,
        1000.0 * MB * images.len() as f64,
    );
    (sum.clamp(lo, hi) - lo) * MAX / (hi - lo)
}

fn intolerable_taints(pod: &PodInfo, node: &NodeInfo) -> f64 {
    let tolerations: Vec<_> = pod
        .tolerations()
        .iter()
        .filter(|t| {
            t.effect
                .as_deref()
                .is_none_or(|e| e.is_empty() || e == "PreferNoSchedule")
        })
        .cloned()
        .collect();
    node.node
        .as_ref()
        .and_then(|n| n.spec.as_ref())
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .filter(|t| t.effect == "PreferNoSchedule" && !tolerated(&tolerations, t))
        .count() as f64
}

fn preferred_node_affinity(pod: &PodInfo, node: &NodeInfo) -> f64 {
    let Some(n) = node.node.as_ref() else {
        return 0.0;
    };
    pod.pod
        .spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .into_iter()
        .flatten()
        .filter(|t| term_admits(&t.preference, n))
        .map(|t| f64::from(t.weight))
        .sum()
}

/// Fewer is better: the most gets 0, none gets 100.
fn reverse(raw: &[f64]) -> Vec<f64> {
    let max = raw.iter().copied().fold(0.0, f64::max);
    raw.iter()
        .map(|r| if max > 0.0 { MAX - r * MAX / max } else { MAX })
        .collect()
}

fn by_max(raw: &[f64]) -> Vec<f64> {
    let max = raw.iter().copied().fold(0.0, f64::max);
    raw.iter()
        .map(|r| if max > 0.0 { r * MAX / max } else { 0.0 })
        .collect()
}

fn min_max(raw: &[f64]) -> Vec<f64> {
    let max = raw.iter().copied().fold(f64::MIN, f64::max);
    let min = raw.iter().copied().fold(f64::MAX, f64::min);
    raw.iter()
        .map(|r| {
            if max > min {
                (r - min) * MAX / (max - min)
            } else {
                0.0
            }
        })
        .collect()
}

/// PodTopologySpread's normalisation: the emptiest domain scores 100; nodes without the
/// topology keys 0.
fn spread_normalised(raw: &[Option<f64>]) -> Vec<f64> {
    let present: Vec<f64> = raw.iter().flatten().copied().collect();
    let max = present.iter().copied().fold(0.0, f64::max);
    let min = present.iter().copied().fold(f64::MAX, f64::min);
    raw.iter()
        .map(|r| match r {
            None => 0.0,
            Some(_) if max <= 0.0 => MAX,
            Some(s) => MAX * (max + min - s) / max,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    fn node(name: &str, cpu: &str, spec: serde_json::Value) -> NodeInfo {
        NodeInfo {
            node: Some(Arc::new(
                serde_json::from_value(json!({"metadata": {"name": name, "labels": {"disk": name}},
                    "spec": spec,
                    "status": {"allocatable": {"cpu": cpu, "memory": "4Gi", "pods": "110"},
                        "images": [{"names": ["docker.io/library/big:latest"], "sizeBytes": 900_000_000}]}}))
                .unwrap(),
            )),
            ..Default::default()
        }
    }

    fn pod(spec: serde_json::Value) -> PodInfo {
        let mut p = json!({"metadata": {"name": "p", "namespace": "d", "uid": "p"},
            "spec": {"containers": [{"name": "c", "image": "nginx"}]}});
        for (k, v) in spec.as_object().unwrap() {
            p["spec"][k] = v.clone();
        }
        PodInfo::new(Arc::new(serde_json::from_value(p).unwrap()))
    }

    fn state(p: PodInfo) -> PodState {
        PodState::new(Arc::new(p), &Cache::default()).unwrap()
    }

    #[test]
    fn pods_without_requests_still_go_to_the_emptier_node() {
        let (a, mut b) = (node("a", "2", json!({})), node("b", "2", json!({})));
        b.add(Arc::new(pod(json!({}))));
        // No requests at all: kube's defaults (100m, 200Mi) still tell the nodes apart.
        let s = state(pod(json!({})));
        assert_eq!(pick(&s, &[&a, &b], &Cache::default()), Some("a".into()));
    }

    #[test]
    fn preferences_and_prefer_no_schedule_taints_steer() {
        let a = node(
            "a",
            "2",
            json!({"taints": [{"key": "spot", "effect": "PreferNoSchedule"}]}),
        );
        let b = node("b", "2", json!({}));
        let s = state(pod(json!({})));
        assert_eq!(pick(&s, &[&a, &b], &Cache::default()), Some("b".into()));
        let prefers_a = state(pod(
            json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 100, "preference": {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["a"]}]}}]}}}),
        ));
        // Node affinity (2 × 100) outweighs the taint (3 × 100)? No: kube's weights make
        // the taint win, so the pod still lands on b unless it tolerates the taint.
        assert_eq!(
            pick(&prefers_a, &[&a, &b], &Cache::default()),
            Some("b".into())
        );
        let tolerant = state(pod(json!({
            "tolerations": [{"key": "spot", "operator": "Exists", "effect": "PreferNoSchedule"}],
            "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 100, "preference": {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["a"]}]}}]}}})));
        assert_eq!(
            pick(&tolerant, &[&a, &b], &Cache::default()),
            Some("a".into())
        );
    }

    #[test]
    fn image_names_normalise_like_docker_references() {
        assert_eq!(
            image_names("busybox"),
            ["busybox:latest", "docker.io/library/busybox:latest"]
        );
        assert_eq!(
            image_names("registry.local:5000/x/y:1"),
            ["registry.local:5000/x/y:1"]
        );
        assert_eq!(
            image_names("team/app"),
            ["team/app:latest", "docker.io/team/app:latest"]
        );
        let big = pod(json!({"containers": [{"name": "c", "image": "big"}]}));
        let mut cache = Cache::default();
        let n = node("a", "2", json!({}));
        cache.set_node(n.node.clone().unwrap());
        assert!(image_locality(&big, &n, &cache) > 80.0);
        assert_eq!(image_locality(&pod(json!({})), &n, &cache), 0.0);
    }
}
