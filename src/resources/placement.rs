//! Where a pod may run, as both the scheduler and the DaemonSet controller judge it: node
//! selectors, required node affinity and tolerations of taints; and label selectors, as
//! the scheduler, NetworkPolicy and disruption budgets match pods. No I/O.
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Node, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;

/// Whether some toleration of the list tolerates the taint.
pub fn tolerated(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| tolerates(t, taint))
}

/// Whether a toleration tolerates a taint (kube's `ToleratesTaint`).
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = t.effect.as_deref().filter(|e| !e.is_empty()) {
        if effect != taint.effect {
            return false;
        }
    }
    match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => t
            .key
            .as_deref()
            .is_none_or(|k| k.is_empty() || k == taint.key),
        _ => {
            t.key.as_deref() == Some(taint.key.as_str())
                && t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
    }
}

/// One node selector requirement against labels (In, NotIn, Exists, DoesNotExist, Gt, Lt).
pub fn requirement_matches(r: &NodeSelectorRequirement, labels: &BTreeMap<String, String>) -> bool {
    let v = labels.get(&r.key);
    let values = r.values.clone().unwrap_or_default();
    match r.operator.as_str() {
        "In" => v.is_some_and(|v| values.contains(v)),
        "NotIn" => !v.is_some_and(|v| values.contains(v)),
        "Exists" => v.is_some(),
        "DoesNotExist" => v.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(w)) = (
                v.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|w| w.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if r.operator == "Gt" {
                v > w
            } else {
                v < w
            }
        }
        _ => false,
    }
}

/// Whether a pod's nodeSelector and required node affinity (matchExpressions on labels,
/// matchFields on `metadata.name`) admit a node.
pub fn node_selector_matches(pod: &Pod, node: &Node) -> bool {
    let labels = node.labels();
    let spec = pod.spec.as_ref();
    let selector_ok = spec
        .and_then(|s| s.node_selector.as_ref())
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let required = spec
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    selector_ok && required.is_none_or(|r| node_selector_admits(r, node))
}

/// Whether a NodeSelector (its terms ORed) admits a node.
pub fn node_selector_admits(sel: &NodeSelector, node: &Node) -> bool {
    sel.node_selector_terms
        .iter()
        .any(|term| term_admits(term, node))
}

/// Whether one NodeSelectorTerm (its requirements ANDed) admits a node; an empty term
/// admits none, as kube documents.
pub fn term_admits(term: &NodeSelectorTerm, node: &Node) -> bool {
    let labels = node.labels();
    let empty = term.match_expressions.as_ref().is_none_or(Vec::is_empty)
        && term.match_fields.as_ref().is_none_or(Vec::is_empty);
    !empty
        && term
            .match_expressions
            .iter()
            .flatten()
            .all(|e| requirement_matches(e, labels))
        && term.match_fields.iter().flatten().all(|f| {
            f.key == "metadata.name"
                && requirement_matches(
                    f,
                    &BTreeMap::from([("metadata.name".to_string(), node.name_any())]),
                )
        })
}

/// A label selector against labels (matchLabels and matchExpressions; empty matches all).
pub fn label_selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = sel.match_expressions.iter().flatten().all(|e| {
        let value = labels.get(&e.key);
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    labels_ok && exprs_ok
}
